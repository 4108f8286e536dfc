"""Time the CLMR extractor on synthetic audio; prints seconds of compute per second of audio.

    python benchmarks/bench_clmr.py                       # 60 s of audio, random weights, CPU
    python benchmarks/bench_clmr.py --seconds 600 --device cuda --batch-size 64
    python benchmarks/bench_clmr.py --weights ~/.cache/embedkit/clmr/clmr_checkpoint_10000.pt

Random weights (architecture-identical) cost exactly what the real ones cost; the numbers
are about speed only.
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import _checkout  # noqa: E402,F401  (the checkout as the package embedkit)

from embedkit import registry  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seconds", type=float, default=60.0, help="length of the synthetic signal (s)")
    ap.add_argument("--device", default="cpu", help="cpu, cuda, cuda:N or auto")
    ap.add_argument("--batch-size", type=int, default=None, help="clips per forward pass on CUDA")
    ap.add_argument("--weights", default="random", help="checkpoint path, or 'random'")
    ap.add_argument("--repeats", type=int, default=3, help="timed runs after one warm-up; the best is kept")
    ap.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    ext = registry.create("clmr", device=args.device, weights_path=args.weights, batch_size=args.batch_size)
    t0 = time.perf_counter()
    ext.load()
    load_s = time.perf_counter() - t0

    rng = np.random.default_rng(0)
    audio = (0.1 * rng.standard_normal(int(args.seconds * ext.sample_rate))).astype(np.float32)
    ext.extract(audio[: 2 * 59049], ext.sample_rate)  # warm-up (kernel selection, CUDA context)
    times = []
    for _ in range(args.repeats):
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        feats = ext.extract(audio, ext.sample_rate)
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        times.append(time.perf_counter() - t0)
    best = min(times)
    print(f"clmr  device={args.device} batch_size={ext.batch_size} weights={args.weights} "
          f"torch={torch.__version__} threads={torch.get_num_threads()} cpus={os.cpu_count()} "
          f"machine={platform.machine()}")
    print(f"load {load_s:.2f} s; {args.seconds:.0f} s audio -> {feats.data.shape} in {best:.2f} s "
          f"(runs: {', '.join(f'{t:.2f}' for t in times)})")
    print(f"seconds per audio second: {best / args.seconds:.4f}  (x{args.seconds / best:.1f} real time)")


if __name__ == "__main__":
    main()
