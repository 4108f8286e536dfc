"""Feeding the models: the CPU side (decode + resampling) of the original script's five audio
models (openl3, crepe, madmom, mert, clmr), resampy per file against `--decode_only`.

    python benchmarks/feed.py                     # 16 files x 30 s, stereo 44.1 kHz: ~3 min on 2 cores
    python benchmarks/feed.py --files 8 --workers 0 1 2

(a) resampy per file: what the original script did, in one thread: per model, read the file
    (soundfile, channel mean), resample it to the model's rate with resampy (kaiser_best, the
    resampler of librosa < 0.10 and of openl3 / crepe; kaiser_fast given too); madmom takes
    44.1 kHz as it is.
(b) `run_extraction.py --decode_only` on the same folder with 0, 1, 2 (= all here) decode workers:
    the driver's decode and resampling for the same models (polyphase.py / soxr, each file
    decoded once, each (rate, method) once), no model loaded. Rate = audio seconds per wall
    second of the run (the report's `audio_seconds_per_second_this_run`).
Every thread pool runs one thread (OMP/MKL/OPENBLAS/NUMBA = 1). Writes
benchmarks/results/feed.json; prints a markdown table and the projection for 869 x 30 s on 16 cores.
"""

from __future__ import annotations

import os

for _v in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS", "NUMBA_NUM_THREADS"):
    os.environ[_v] = "1"

import argparse  # noqa: E402
import json  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(HERE))
import _checkout  # noqa: E402,F401  (the checkout as the package embedkit)

from throughput import cpu_name, make_corpus  # noqa: E402

MODELS = ["openl3", "crepe", "madmom", "mert", "clmr"]
RATES = {"openl3": 48000, "crepe": 16000, "madmom": 44100, "mert": 24000, "clmr": 22050}


def resampy_per_file(files: list[Path], filt: str) -> float:
    """Seconds for the original script's CPU side over `files`, one thread."""
    import numpy as np
    import resampy
    import soundfile as sf

    t0 = time.perf_counter()
    for path in files:
        for model in MODELS:
            x, sr = sf.read(path, dtype="float64" if model == "openl3" else "float32", always_2d=True)
            x = x.mean(axis=1)
            if sr != RATES[model]:
                x = resampy.resample(x, sr, RATES[model], filter=filt)
            np.asarray(x)
    return time.perf_counter() - t0


def decode_only(folder: Path, out: Path, workers: int, empty: Path) -> dict:
    env = {**os.environ, "EMBEDKIT_CACHE": str(empty), "HF_HOME": str(empty), "TORCH_HOME": str(empty),
           "EMBEDKIT_OFFLINE": "1"}  # no weights anywhere: the preflight needs none
    t0 = time.perf_counter()
    res = subprocess.run([sys.executable, str(ROOT / "run_extraction.py"), "--no_progress", "--decode_only",
                          "--audio_dir", str(folder), "--output_base", str(out), "--models", *MODELS,
                          "--decode_workers", str(workers)], capture_output=True, text=True, env=env)
    wall = time.perf_counter() - t0
    if res.returncode != 0:
        raise SystemExit(f"--decode_only failed ({res.returncode}): {res.stderr[-2000:]}")
    report = json.loads((out / "decode_only_report.json").read_text())
    report["process_wall_seconds"] = round(wall, 3)
    return report


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--files", type=int, default=16)
    p.add_argument("--seconds", type=float, default=30.0)
    p.add_argument("--workers", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--target-files", type=int, default=869)
    p.add_argument("--target-cores", type=int, default=16)
    args = p.parse_args()
    load_before = os.getloadavg()
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        files = make_corpus(tmp / "audio", args.files, args.seconds)
        audio = args.files * args.seconds
        (tmp / "empty").mkdir()
        rows = {}
        for filt in ("kaiser_best", "kaiser_fast"):
            resampy_per_file(files[:1], filt)  # numba compiles resampy's kernel once (not counted)
            s = resampy_per_file(files, filt)
            rows[f"resampy {filt} per file per model, 1 thread"] = {"seconds": round(s, 3),
                                                                    "audio_seconds_per_second": audio / s}
        reports = {}
        for w in args.workers:
            rep = reports[w] = decode_only(tmp / "audio", tmp / f"out{w}", w, tmp / "empty")
            rows[f"--decode_only, {w} decode worker(s)" if w else "--decode_only, in-process (0 workers)"] = {
                "seconds": rep["wall_seconds"], "process_wall_seconds": rep["process_wall_seconds"],
                "audio_seconds_per_second": rep["audio_seconds_per_second_this_run"]}
    load_after = os.getloadavg()
    base = rows["resampy kaiser_best per file per model, 1 thread"]["audio_seconds_per_second"]
    fast = rows["resampy kaiser_fast per file per model, 1 thread"]["audio_seconds_per_second"]
    print(f"| {args.files} x {args.seconds:g} s stereo 44.1 kHz, 5 models | wall s | audio s/s | "
          "vs resampy kaiser_best | vs kaiser_fast |\n|---|---|---|---|---|")
    for name, r in rows.items():
        rate = r["audio_seconds_per_second"]
        print(f"| {name} | {r['seconds']:.2f} | {rate:.1f} | {rate / base:.1f}x | {rate / fast:.1f}x |")
    # the projection: per-stage one-core rates of the in-process run, the workers the default leaves
    stages = reports[min(reports)]["stages"]
    per_file = sum(args.seconds / st["audio_seconds_per_second"] for st in stages.values())
    workers = args.target_cores - 2  # the default beside a GPU run: main thread and writer keep a core each
    ours = args.target_files * per_file / workers
    theirs = args.target_files * args.seconds / base
    print(f"\nstages (one core, s per {args.seconds:g} s file): "
          + ", ".join(f"{k} {args.seconds / v['audio_seconds_per_second']:.3f}" for k, v in stages.items()))
    print(f"projection {args.target_files} x {args.seconds:g} s on {args.target_cores} cores: ours "
          f"{ours:.0f} s ({workers} workers, {per_file:.3f} CPU s per file), resampy per file (1 thread) "
          f"{theirs:.0f} s")
    out = HERE / "results" / "feed.json"
    out.parent.mkdir(exist_ok=True)
    out.write_text(json.dumps({
        "cpu": cpu_name(), "cores": len(os.sched_getaffinity(0)), "load_before": load_before,
        "load_after": load_after, "files": args.files, "seconds": args.seconds, "rows": rows,
        "stages_one_core": stages, "reports": reports,
        "projection": {"files": args.target_files, "cores": args.target_cores, "workers": workers,
                       "cpu_seconds_per_file": per_file, "ours_seconds": ours,
                       "resampy_per_file_seconds": theirs}}, indent=1))
    print(f"load average before {load_before}, after {load_after}; wrote {out}")


if __name__ == "__main__":
    main()
