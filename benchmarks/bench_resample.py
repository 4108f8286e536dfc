"""Cost of resampling in float64 (what OpenL3's reference does) against float32, per audio second.

    python benchmarks/bench_resample.py            # ~1 minute on 2 cores
    python benchmarks/bench_resample.py --seconds 20 --repeats 3

On one music-like signal at 44.1 kHz, written as a stereo float32 WAV (its float32 mono mix
is inexact, so decoding with a residual keeps one) and as a stereo 16-bit WAV (exact: none):
1. decoding: `audio_io.decode_mono` without and with the residual;
2. resampling with resampy's kaiser_best to 48 kHz (OpenL3) and 16 kHz (CREPE): resampy's own
   call (float32 input, float32 loop), ours in float32 and in float64 (blocks), float64 with
   the residual.
Methods alternate within each repeat (the machine is shared); medians are reported.
Writes benchmarks/results/resample_precision.json and prints a markdown table.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import soundfile as sf

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
import _checkout  # noqa: E402,F401  (the checkout as the package embedkit)

from embedkit import audio_io  # noqa: E402


def music(seconds: float, sr: int) -> np.ndarray:
    """(n, 2) chords with a pulse and a little noise, different per channel."""
    t = np.arange(int(seconds * sr)) / sr
    rng = np.random.default_rng(0)
    chans = []
    for c in range(2):
        x = sum(0.15 * np.sin(2 * np.pi * f * (1 + 0.01 * c) * t) for f in (220, 277.2, 329.6, 440))
        chans.append(x * (0.6 + 0.4 * (np.sin(2 * np.pi * 2 * t) > 0)) + 0.01 * rng.standard_normal(t.size))
    return np.stack(chans, 1)


def timed(fn) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seconds", type=float, default=60.0)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--json", type=Path, default=ROOT / "benchmarks" / "results" / "resample_precision.json")
    a = ap.parse_args()
    import resampy

    sr = 44100
    with tempfile.TemporaryDirectory() as tmp:
        paths = {"float32 stereo": Path(tmp) / "f.wav", "16-bit stereo": Path(tmp) / "i.wav"}
        sig = music(a.seconds, sr)
        sf.write(paths["float32 stereo"], sig, sr, subtype="FLOAT")
        sf.write(paths["16-bit stereo"], sig, sr, subtype="PCM_16")
        x, _, lo = audio_io.decode_mono(paths["float32 stereo"], residual=True)
        # compile every kernel first; resampy's float32 call before any float64 one, so that its
        # gufunc has a float32 loop (see audio_io.resampy_resample)
        short = x[: sr // 10]
        resampy.resample(short, sr, 48000)
        for p in audio_io.PRECISIONS:
            audio_io.resample(short, sr, 48000, "kaiser_best", p)
        cases = {}
        for name, path in paths.items():
            for residual in (False, True):
                cases[f"decode {name}, residual={residual}"] = (
                    lambda path=path, residual=residual: audio_io.decode_mono(path, residual))
        for rate in (48000, 16000):
            cases[f"{rate // 1000} kHz: resampy.resample (float32 loop)"] = (
                lambda rate=rate: resampy.resample(x, sr, rate))
            for p in audio_io.PRECISIONS:
                cases[f"{rate // 1000} kHz: ours, {p}"] = (
                    lambda rate=rate, p=p: audio_io.resample(x, sr, rate, "kaiser_best", p))
            cases[f"{rate // 1000} kHz: ours, float64 + residual"] = (
                lambda rate=rate: audio_io.resample(x, sr, rate, "kaiser_best", "float64", lo))
        times: dict[str, list[float]] = {k: [] for k in cases}
        for _ in range(a.repeats):
            for name, fn in cases.items():
                times[name].append(timed(fn))
    rows = {k: 1000 * statistics.median(v) / a.seconds for k, v in times.items()}
    print(f"| what ({a.seconds:.0f} s at 44.1 kHz, median of {a.repeats}) | ms per audio s |")
    print("|---|---|")
    for k, v in rows.items():
        print(f"| {k} | {v:.2f} |")
    a.json.parent.mkdir(parents=True, exist_ok=True)
    a.json.write_text(json.dumps({
        "date": time.strftime("%Y-%m-%d"), "machine": platform.processor() or platform.machine(),
        "command": " ".join(sys.argv), "seconds": a.seconds, "repeats": a.repeats,
        "ms_per_audio_second": rows, "resampy": resampy.__version__,
    }, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
