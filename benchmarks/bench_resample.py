"""resampy's kaiser_best against ours (polyphase products), side by side, on one core.

    python benchmarks/bench_resample.py                  # 30 s at 44.1 kHz, 7 repeats: ~3 min on 2 cores
    python benchmarks/bench_resample.py --seconds 30 --repeats 9

Every thread pool runs one thread (OMP/MKL/OPENBLAS/NUMBA_NUM_THREADS=1, set before numpy is
imported), so each case uses one core. On a music-like stereo signal at 44.1 kHz written as a
float32 WAV and decoded as the driver does (float32 mono mix plus the residual openl3's float64
mix keeps), for 48 kHz (OpenL3) and 16 kHz (CREPE):
- resampy 0.4.3 itself: `resampy.resample` on the float32 signal (its float32 loop: that call
  runs first, as in crepe's own process) and on the float64 signal (its float64 loop);
- ours (`audio_io.resample`, i.e. `polyphase.resample`): float32, float64, float64 + residual.
Cases alternate within each repeat (the machine is shared); per case the median and the
minimum of CPU seconds (process time: one thread, so one core's work) and wall seconds.
Speed-up = resampy's time / ours, float32 against resampy's float32 loop, float64 against its
float64 loop. Also the differences on this signal: max |ours - resampy| / max |resampy| and,
per sample, |ours - resampy| / (u sum_i |w_i x_i|) (u = 2^-53 resp. 2^-24; the sums from
resampy's formula written out, tests/test_polyphase.by_formula).
Writes benchmarks/results/resample_speed.json and prints markdown tables.
"""

from __future__ import annotations

import os

for _v in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS", "NUMBA_NUM_THREADS"):
    os.environ[_v] = "1"

import argparse  # noqa: E402
import json  # noqa: E402
import platform  # noqa: E402
import statistics  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402
import soundfile as sf  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
import _checkout  # noqa: E402,F401  (the checkout as the package embedkit)

from embedkit import audio_io, polyphase  # noqa: E402


def music(seconds: float, sr: int) -> np.ndarray:
    """(n, 2) chords with a pulse and a little noise, different per channel."""
    t = np.arange(int(seconds * sr)) / sr
    rng = np.random.default_rng(0)
    chans = []
    for c in range(2):
        x = sum(0.15 * np.sin(2 * np.pi * f * (1 + 0.01 * c) * t) for f in (220, 277.2, 329.6, 440))
        chans.append(x * (0.6 + 0.4 * (np.sin(2 * np.pi * 2 * t) > 0)) + 0.01 * rng.standard_normal(t.size))
    return np.stack(chans, 1)


def timed(fn) -> tuple[float, float]:
    c0, w0 = time.process_time(), time.perf_counter()
    fn()
    return time.process_time() - c0, time.perf_counter() - w0


def cpu_name() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            return next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        return platform.processor() or platform.machine()


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seconds", type=float, default=30.0)
    ap.add_argument("--repeats", type=int, default=7)
    ap.add_argument("--json", type=Path, default=ROOT / "benchmarks" / "results" / "resample_speed.json")
    a = ap.parse_args()
    import resampy

    sr = 44100
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "f.wav"
        sf.write(path, music(a.seconds, sr), sr, subtype="FLOAT")
        x32, _, lo = audio_io.decode_mono(path, residual=True)
    x64 = x32.astype(np.float64)
    x64r = x64 + lo
    # compile resampy's loops: float32 first (crepe's process), then float64
    resampy.resample(x32[: sr // 10], sr, 48000)
    resampy.resample(x64[: sr // 10], sr, 48000)
    cases: dict = {}
    for rate in (48000, 16000):
        k = f"{rate // 1000} kHz"
        cases[f"{k}: resampy, float32"] = lambda rate=rate: resampy.resample(x32, sr, rate)
        cases[f"{k}: resampy, float64"] = lambda rate=rate: resampy.resample(x64, sr, rate)
        cases[f"{k}: ours, float32"] = lambda rate=rate: audio_io.resample(
            x32, sr, rate, "kaiser_best", "float32")
        cases[f"{k}: ours, float64"] = lambda rate=rate: audio_io.resample(
            x32, sr, rate, "kaiser_best", "float64", out_dtype=np.float64)
        cases[f"{k}: ours, float64 + residual"] = lambda rate=rate: audio_io.resample(
            x32, sr, rate, "kaiser_best", "float64", lo)
        audio_io.resample(x32[: sr // 10], sr, rate, "kaiser_best", "float32")  # build the plans
    cpu: dict = {k: [] for k in cases}
    wall: dict = {k: [] for k in cases}
    for _ in range(a.repeats):
        for name, fn in cases.items():
            c, w = timed(fn)
            cpu[name].append(c)
            wall[name].append(w)
    res: dict = {"cases": {}, "speedup": {}, "accuracy": {}}
    for k in cases:
        res["cases"][k] = {"cpu_s_median": statistics.median(cpu[k]), "cpu_s_min": min(cpu[k]),
                           "wall_s_median": statistics.median(wall[k]), "wall_s_min": min(wall[k])}
    for rate in (48000, 16000):
        k = f"{rate // 1000} kHz"
        for p, ours in (("float32", "float32"), ("float64", "float64"), ("float64", "float64 + residual")):
            r, o = res["cases"][f"{k}: resampy, {p}"], res["cases"][f"{k}: ours, {ours}"]
            res["speedup"][f"{k}, {ours}"] = {m: r[m] / o[m] for m in r}
    # differences on this signal
    from tests.test_polyphase import by_formula

    for rate in (48000, 16000):
        k = f"{rate // 1000} kHz"
        _, S, _, n = by_formula(x32, sr, rate, "kaiser_best")
        b64 = resampy.resample(x64, sr, rate)
        a64 = polyphase.resample(x32, sr, rate, precision="float64")
        b32 = polyphase.resampy_loop(x32, sr, rate, "kaiser_best", "float32")  # resampy's float32 loop
        a32 = polyphase.resample(x32, sr, rate)
        br = resampy.resample(x64r, sr, rate)
        ar = polyphase.resample(x32, sr, rate, precision="float64", residual=lo)
        _, Sr, _, _ = by_formula(x64r, sr, rate, "kaiser_best")
        for name, got, want, unit, s in (("float64", a64, b64, 2.0**-53, S),
                                         ("float64 + residual", ar, br, 2.0**-53, Sr),
                                         ("float32", a32.astype(float), b32.astype(float), 2.0**-24, S)):
            err = np.abs(got - want)
            res["accuracy"][f"{k}, {name}"] = {
                "max_abs_over_max_abs": float(err.max() / np.abs(want).max()),
                "max_per_sample_over_u_sum_abs_terms": float((err / (unit * s)).max()),
                "rigorous_bound_over_u_sum_abs_terms": float(2 * n.max() + 3),
                "samples_differing": float((got != want).mean()),
            }
    print(f"| {a.seconds:g} s at 44.1 kHz, one core, {a.repeats} repeats | CPU ms (median / min) | "
          f"wall ms (median / min) |")
    print("|---|---|---|")
    for k, v in res["cases"].items():
        print(f"| {k} | {1e3 * v['cpu_s_median']:.1f} / {1e3 * v['cpu_s_min']:.1f} | "
              f"{1e3 * v['wall_s_median']:.1f} / {1e3 * v['wall_s_min']:.1f} |")
    print("\n| speed-up (resampy / ours) | CPU, medians | CPU, minima | wall, medians |")
    print("|---|---|---|---|")
    for k, v in res["speedup"].items():
        print(f"| {k} | {v['cpu_s_median']:.1f}x | {v['cpu_s_min']:.1f}x | {v['wall_s_median']:.1f}x |")
    print("\n| difference to resampy | max abs / max abs | per sample / (u sum abs terms) | bound |")
    print("|---|---|---|---|")
    for k, v in res["accuracy"].items():
        print(f"| {k} | {v['max_abs_over_max_abs']:.2e} | {v['max_per_sample_over_u_sum_abs_terms']:.2f} | "
              f"{v['rigorous_bound_over_u_sum_abs_terms']:.0f} |")
    res.update({"date": time.strftime("%Y-%m-%d"), "cpu": cpu_name(), "cores": os.cpu_count(),
                "load_average": os.getloadavg(), "command": " ".join(sys.argv), "seconds": a.seconds,
                "repeats": a.repeats, "resampy": resampy.__version__, "numpy": np.__version__})
    a.json.parent.mkdir(parents=True, exist_ok=True)
    a.json.write_text(json.dumps(res, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
