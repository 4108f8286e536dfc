"""Speed of the OpenL3 plugin: seconds of compute per second of audio.

Synthetic audio (seeded noise plus a chirp), architecture-identical random
weights unless --weights is given (speed does not depend on the values).
Prints, per input representation, the whole extraction time per audio second
and how it splits between the front-end and the network.

    python benchmarks/bench_openl3.py                       # mel128, mel256, linear; 10 s; hop 0.1
    python benchmarks/bench_openl3.py --reprs mel256 --seconds 30 --frontend librosa
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import _checkout  # noqa: E402,F401  (the checkout as the package embedkit)

from embedkit import registry  # noqa: E402
from embedkit.openl3 import network as net  # noqa: E402
from embedkit.openl3 import preprocessing as pre  # noqa: E402

# Multiply-accumulates of one window's convolutions, counted from the layer shapes.
def conv_flops(input_repr: str) -> float:
    f, t = pre.spectrogram_shape(input_repr)
    c_in = (1,) + net.CHANNELS[:-1]
    total = 0.0
    for i, (a, b) in enumerate(zip(c_in, net.CHANNELS)):
        total += 2 * 9 * a * b * f * t
        if i in (1, 3, 5):
            f, t = f // 2, t // 2
    return total


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--reprs", nargs="+", default=["mel128", "mel256", "linear"], choices=pre.INPUT_REPRS)
    ap.add_argument("--seconds", type=float, default=10.0, help="audio duration (default 10)")
    ap.add_argument("--hop", type=float, default=0.1, help="hop_size in seconds (default 0.1)")
    ap.add_argument("--frontend", default="kapre", choices=pre.FRONTENDS)
    ap.add_argument("--batch-size", type=int, default=None, help="windows per batch (plugin default)")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    ap.add_argument("--weights", default="random", help="weights path, or 'random' (default)")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    rng = np.random.default_rng(0)
    n = int(args.seconds * pre.TARGET_SR)
    t = np.arange(n) / pre.TARGET_SR
    audio = (0.1 * rng.standard_normal(n) + 0.3 * np.sin(2 * np.pi * (200 + 400 * t) * t)).astype(np.float32)

    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    print(
        f"openl3 benchmark: {args.seconds:g} s of audio, hop {args.hop} s, frontend {args.frontend}, "
        f"device {args.device}, torch {torch.__version__}, {torch.get_num_threads()} threads, "
        f"{os.cpu_count()} cores, load average {load:.2f} at start, weights {args.weights}"
    )
    head = ("input_repr", "windows", "s/audio s", "front-end", "network", "GFLOP/s")
    print(f"{head[0]:<10} {head[1]:>7} {head[2]:>10} {head[3]:>10} {head[4]:>9} {head[5]:>8}")
    for r in args.reprs:
        ex = registry.create(
            "openl3", device=args.device, weights_path=args.weights, batch_size=args.batch_size,
            input_repr=r, hop_size=args.hop, frontend=args.frontend,
        )
        ex.load()
        ex.extract(audio[: pre.WINDOW], pre.TARGET_SR)  # warm-up (allocator, oneDNN kernels)

        # Split: time the front-end on its own over the same chunks the plugin makes.
        hop_len = pre.hop_samples(args.hop)
        chunks = list(pre.iter_window_chunks(audio, hop_len, True, ex.batch_size))
        src = audio.astype(np.float64) if args.frontend == "librosa" else audio
        t0 = time.perf_counter()
        for _, seg, starts in pre.iter_window_chunks(src, hop_len, True, ex.batch_size):
            pre.spectrogram_chunk(seg, starts, r, args.frontend)
        t_front = time.perf_counter() - t0

        t0 = time.perf_counter()
        feats = ex.extract(audio, pre.TARGET_SR)
        t_all = time.perf_counter() - t0
        n_win = feats.data.shape[0]
        assert n_win == sum(len(s) for _, _, s in chunks)
        gflops = conv_flops(r) * n_win / max(t_all - t_front, 1e-9) / 1e9
        print(
            f"{r:<10} {n_win:>7} {t_all / args.seconds:>10.3f} {t_front / args.seconds:>10.3f} "
            f"{(t_all - t_front) / args.seconds:>9.3f} {gflops:>8.1f}"
        )
    print(
        "s/audio s: whole extraction per second of audio; front-end: spectrograms alone; "
        "network: the rest. FLOPs: convolutions only, 2 per multiply-add."
    )


if __name__ == "__main__":
    main()
