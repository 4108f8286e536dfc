#!/usr/bin/env python
"""MERT speed, stitching deviation and memory on synthetic audio (seeded random weights by default).

    python benchmarks/bench_mert.py                           # 95M, 30 s of audio, CPU
    python benchmarks/bench_mert.py --seconds 60 --deviation  # + windowed vs whole-file pass on 60 s
    python benchmarks/bench_mert.py --model m-a-p/MERT-v1-330M --device cuda --batch-size 16
    python benchmarks/bench_mert.py --weights /path/to/MERT-v1-95M   # real weights, if you have them
    python benchmarks/bench_mert.py --tiny --seconds 3600 --pooling mean   # peak memory, 1 h file

Random weights are architecture-identical (same shapes, same FLOPs): right for
speed and memory, meaningless for accuracy; the deviation they show is the
deviation of *that* random network, which only bounds nothing about real
weights. `--tiny` swaps in a 2-layer, 32-wide network with MERT's frame geometry
(for memory and windowing tests without the cost of the full model).
"""

from __future__ import annotations

import argparse
import json
import platform
import resource
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
import _checkout  # noqa: E402,F401  (the checkout as the package embedkit)

from embedkit import registry  # noqa: E402
from embedkit.extractors import mert as M  # noqa: E402

SR = M.SAMPLE_RATE


def music_like(seconds: float, seed: int = 0) -> np.ndarray:
    """Notes with harmonics changing every 0.5 s, a click track and a little noise, at 24 kHz."""
    rng = np.random.default_rng(seed)
    n = int(seconds * SR)
    out = np.empty(n, np.float32)
    step = SR // 2
    for start in range(0, n, step):
        t = np.arange(min(step, n - start)) / SR
        f0 = 110.0 * 2 ** (rng.integers(0, 36) / 12)
        note = sum(0.3 / k * np.sin(2 * np.pi * k * f0 * t) for k in range(1, 5)) * np.exp(-3 * t)
        out[start : start + t.size] = note
    out[:: SR // 4] += 0.5  # clicks
    for start in range(0, n, 1 << 20):  # noise in chunks: no full-length float64 temporaries
        block = out[start : start + (1 << 20)]
        block += 0.01 * rng.standard_normal(block.size).astype(np.float32)
    return out


class PeakRss:
    """Peak resident memory (GiB) of this process while the block runs, sampled every 20 ms."""

    def __enter__(self) -> "PeakRss":
        import threading

        self.peak = self.start = self._rss()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, self._rss())

    def _run(self) -> None:
        while not self._stop.wait(0.02):
            self.peak = max(self.peak, self._rss())

    @staticmethod
    def _rss() -> float:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * resource.getpagesize() / 2**30


def tiny_checkpoint_folder() -> str:
    """A folder with a 2-layer MERT-format config (architecture only, for weights=random)."""
    cfg = dict(M.KNOWN_CONFIGS[M.DEFAULT_MODEL])
    cfg.update(hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64,
               conv_dim=[32] * 7, num_conv_pos_embeddings=16, num_conv_pos_embedding_groups=4)
    folder = Path(tempfile.mkdtemp(prefix="mert-tiny-"))
    (folder / "config.json").write_text(json.dumps(cfg))
    return str(folder)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default=M.DEFAULT_MODEL, help="architecture (hub id or local folder)")
    ap.add_argument("--weights", default="random", help="'random' (default) or a local checkpoint folder")
    ap.add_argument("--tiny", action="store_true", help="2-layer 32-wide network with MERT's frame geometry")
    ap.add_argument("--seconds", type=float, default=30.0, help="length of the synthetic signal")
    ap.add_argument("--repeat", type=int, default=2, help="timed runs (the best is reported)")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--batch-size", type=int, default=None, help="windows per forward pass (CUDA only)")
    ap.add_argument("--window", type=float, default=None, help="window_seconds (plugin default if omitted)")
    ap.add_argument("--overlap", type=float, default=None, help="overlap_seconds (plugin default if omitted)")
    ap.add_argument("--layers", default="last", help="last | all | comma-separated indices")
    ap.add_argument("--pooling", default="none", choices=("none", "mean"))
    ap.add_argument("--deviation", action="store_true", help="also compare with one whole-file pass")
    args = ap.parse_args()

    layers: object = args.layers
    if args.layers not in ("last", "all"):
        layers = [int(x) for x in args.layers.split(",")]
    params: dict = {"model": tiny_checkpoint_folder() if args.tiny else args.model, "layers": layers,
                    "pooling": args.pooling}
    if args.window is not None:
        params["window_seconds"] = args.window
    if args.overlap is not None:
        params["overlap_seconds"] = args.overlap
    ex = registry.create("mert", device=args.device, weights_path=args.weights, batch_size=args.batch_size,
                         **params)

    import torch

    t0 = time.perf_counter()
    net = ex.load()
    load_s = time.perf_counter() - t0
    audio = music_like(args.seconds)
    ex.extract(audio[: SR * 2], SR)  # warm-up
    best = float("inf")
    for _ in range(args.repeat):
        with PeakRss() as mem:
            t0 = time.perf_counter()
            feats = ex.extract(audio, SR)
            best = min(best, time.perf_counter() - t0)
    print(f"model: {args.model if not args.tiny else 'tiny (2 x 32)'}, weights: {args.weights}, "
          f"{net.num_layers} layers x {net.hidden_size}, device {args.device}, torch threads "
          f"{torch.get_num_threads()}, {platform.processor() or platform.machine()}")
    print(f"params: window {ex.config['window_seconds']} s, overlap {ex.config['overlap_seconds']} s, "
          f"layers {ex.config['layers']}, pooling {ex.config['pooling']}, batch_size {ex.batch_size}")
    print(f"load: {load_s:.2f} s; output {feats.data.shape} {feats.data.dtype}")
    print(f"extract {args.seconds:g} s of audio: {best:.2f} s (best of {args.repeat}) = "
          f"{best / args.seconds:.4f} s per audio second ({args.seconds / best:.1f}x real time)")
    print(f"resident memory during extract: {mem.start:.2f} GiB before (model + "
          f"{audio.nbytes / 2**30:.2f} GiB input), peak {mem.peak:.2f} GiB (+{mem.peak - mem.start:.2f} GiB)")

    if args.deviation:
        whole_ex = registry.create("mert", device=args.device, weights_path=args.weights,
                                   **{**params, "window_seconds": min(600.0, args.seconds + 1.0),
                                      "overlap_seconds": 0.0})
        t0 = time.perf_counter()
        whole = whole_ex.extract(audio, SR)
        whole_s = time.perf_counter() - t0
        a, b = feats.data, whole.data
        assert a.shape == b.shape, (a.shape, b.shape)
        if feats.timestamps is not None:
            assert np.array_equal(feats.timestamps, whole.timestamps)
        diff = np.abs(a - b)
        rel = np.linalg.norm(a - b) / np.linalg.norm(b)
        print(f"whole-file pass: {whole_s:.2f} s; same shape {a.shape} and timestamps")
        print(f"windowed vs whole-file: max |diff| {diff.max():.4g}, mean |diff| {diff.mean():.4g}, "
              f"max |whole| {np.abs(b).max():.4g}, relative L2 {rel:.4g}")
        if a.ndim >= 2 and args.pooling == "none":
            last_a, last_b = (a[-1], b[-1]) if a.ndim == 3 else (a, b)
            norms = np.linalg.norm(last_a, axis=1) * np.linalg.norm(last_b, axis=1)
            cos = np.sum(last_a * last_b, 1) / norms
            print(f"per-frame cosine similarity (last selected layer): min {cos.min():.5f}, "
                  f"mean {cos.mean():.5f}, frames below 0.99: {(cos < 0.99).mean():.1%}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
