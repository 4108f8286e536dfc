"""Peak memory of decoding + resampling a long file, float64 (with the residual) vs float32.

    python benchmarks/mem_resample.py                      # 20 min stereo 44.1 kHz float32 WAV, ~3 min
    python benchmarks/mem_resample.py --minutes 5 --work /tmp/mem

The float64 path (`audio_io.load(path, residual=True).at(48000, "kaiser_best", "float64")`,
what the driver does for OpenL3) must hold the float32 mono signal, its float32 residual and
the float32 output, never a float64 copy of the whole signal. Each case runs in a fresh
process: imports and a warm-up call (the plan and the compiled per-sample pass, both dtypes) first,
then the process's peak RSS growth (`ru_maxrss` after minus current RSS before) is reported
next to the sizes of the arrays it must hold (the resampler's own work buffers are a few
MB per block, whatever the length). A float32 stereo file is the worst case: its
float32 channel mean is inexact, so the residual is kept for the whole file.
Writes benchmarks/results/mem_resample.json.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import soundfile as sf

ROOT = Path(__file__).resolve().parents[1]

CASE = r"""
import json, resource, sys, time
import numpy as np
sys.path.insert(0, sys.argv[1])
import _checkout  # noqa: E402,F401  (the checkout as the package embedkit)
from embedkit import audio_io

def rss_mb():
    with open("/proc/self/status") as f:
        return next(int(l.split()[1]) for l in f if l.startswith("VmRSS")) / 1024

for p in ("float32", "float64"):  # build the plan and compile the per-sample pass before measuring
    audio_io.resampy_resample(np.zeros(48000, np.float32), 44100, 48000, "kaiser_best", p, np.float32)
path, precision = sys.argv[2], sys.argv[3]
before = rss_mb()
t0 = time.perf_counter()
d = audio_io.load(path, residual=precision == "float64")
t1 = time.perf_counter()
decoded_peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
y = d.at(48000, "kaiser_best", precision)
t2 = time.perf_counter()
print(json.dumps({
    "rss_before_mb": before, "peak_after_decode_mb": decoded_peak,
    "peak_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
    "mono_mb": d.audio.nbytes / 2**20, "residual_mb": 0 if d.residual is None else d.residual.nbytes / 2**20,
    "output_mb": y.nbytes / 2**20, "decode_s": t1 - t0, "resample_s": t2 - t1}))
"""


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--minutes", type=float, default=20.0)
    ap.add_argument("--work", type=Path, default=Path("/tmp/embedkit_mem_resample"))
    ap.add_argument("--json", type=Path, default=ROOT / "benchmarks" / "results" / "mem_resample.json")
    a = ap.parse_args()
    a.work.mkdir(parents=True, exist_ok=True)
    path, sr = a.work / f"stereo_f32_{a.minutes:g}min.wav", 44100
    n = int(a.minutes * 60 * sr)
    if not path.exists() or sf.info(str(path)).frames != n:
        rng = np.random.default_rng(0)
        with sf.SoundFile(str(path), "w", sr, 2, "FLOAT") as f:  # written in blocks: no whole-file array here
            for i in range(0, n, 1 << 20):
                t = np.arange(i, min(n, i + (1 << 20))) / sr
                x = 0.3 * np.sin(2 * np.pi * 220 * t) + 0.05 * rng.standard_normal(t.shape)
                f.write(np.stack([x, 0.5 * np.sin(2 * np.pi * 330 * t) + 0.5 * x], 1).astype(np.float32))
    results: dict = {"date": time.strftime("%Y-%m-%d"), "command": " ".join(sys.argv),
                     "file": f"{a.minutes:g} min, stereo, 44.1 kHz, float32 WAV", "seconds": n / sr,
                     "cases": {}}
    for precision in ("float32", "float64"):
        out = subprocess.run([sys.executable, "-c", CASE, str(ROOT), str(path), precision],
                             check=True, capture_output=True, text=True).stdout
        r = json.loads(out.strip().splitlines()[-1])
        r["growth_mb"] = r["peak_mb"] - r["rss_before_mb"]
        r["held_arrays_mb"] = r["mono_mb"] + r["residual_mb"] + r["output_mb"]
        results["cases"][precision] = r
        print(f"{precision}: peak RSS growth {r['growth_mb']:.0f} MB (after decoding "
              f"{r['peak_after_decode_mb'] - r['rss_before_mb']:.0f} MB); arrays held: "
              f"mono {r['mono_mb']:.0f} + residual {r['residual_mb']:.0f} + output {r['output_mb']:.0f} "
              f"= {r['held_arrays_mb']:.0f} MB; "
              f"decode {r['decode_s']:.1f} s, resample {r['resample_s']:.1f} s", flush=True)
    f64_copy = n * 8 / 2**20
    g32, g64 = results["cases"]["float32"]["growth_mb"], results["cases"]["float64"]["growth_mb"]
    results["float64_signal_copy_mb"] = f64_copy
    print(f"float64 - float32 growth: {g64 - g32:.0f} MB (the residual: "
          f"{results['cases']['float64']['residual_mb']:.0f} MB; "
          f"a float64 copy of the signal would be {f64_copy:.0f} MB)")
    a.json.parent.mkdir(parents=True, exist_ok=True)
    a.json.write_text(json.dumps(results, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
