#!/usr/bin/env python
"""Throughput benchmark: pipeline vs pure inference vs the naive per-file loop, side by side.

    python benchmarks/throughput.py --quick          # under 5 minutes on 2 cores
    python benchmarks/throughput.py                  # full: 20 files x 30 s, every model
    python benchmarks/throughput.py --device cuda --files 869 --seconds 30

Three measurements on one synthetic corpus, same models, same weights (architecture-identical
seeded random weights where the real ones are absent: fine for speed, never for accuracy):

1. pure inference: every model's `extract` on audio already decoded and resampled in memory;
2. pipeline: `pipeline.Runner` end to end (decode, resample, extract, write, report);
3. naive loop: for each file and each model, `librosa.load(path, sr=model rate)` (decode and
   resample every time, as researchers' scripts do), extract, `np.save`; models loaded once.

Prints a table, writes JSON (--json), and ends with one line
`pipeline_overhead=<pipeline / pure inference> naive_speedup=<naive / pipeline>`.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
import _checkout  # noqa: E402,F401  (the checkout as the package embedkit)

from embedkit import audio_io  # noqa: E402
from embedkit import pipeline  # noqa: E402
from embedkit import registry  # noqa: E402
from embedkit.extractors.base import WeightsError  # noqa: E402

# (name, params) per model; quick mode swaps in lighter settings where noted.
FULL_MODELS = {
    "openl3": {},
    "crepe": {"capacity": "full"},
    "madmom": {},
    "mert": {},
    "clmr": {},
    "melspec": {},
}
QUICK_OVERRIDES = {"crepe": {"capacity": "tiny"}}


def cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def track(i: int, seconds: float, sr: int, rng: np.random.Generator) -> np.ndarray:
    """Track i of the corpus: (N, 2) float32, a gliding tone, clicks and noise drawn from `rng`."""
    t = np.arange(int(seconds * sr)) / sr
    f0 = 110.0 * 2 ** (rng.integers(0, 24) / 12)
    melody = 0.3 * np.sin(2 * np.pi * f0 * t * (1 + 0.01 * np.sin(2 * np.pi * 0.5 * t)))
    clicks = (np.sin(2 * np.pi * (2 + i % 3) * t) > 0.995) * rng.standard_normal(t.size) * 0.5
    noise = 0.02 * rng.standard_normal(t.size)
    return np.stack([melody + clicks + noise, melody - clicks + noise], 1).astype(np.float32)


def make_corpus(folder: Path, n_files: int, seconds: float, sr: int = 44100) -> list[Path]:
    """Stereo 44.1 kHz 16-bit WAVs of music-like synthetic audio (notes + clicks + noise)."""
    import soundfile as sf

    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    rng = np.random.default_rng(0)
    for i in range(n_files):
        p = folder / f"track_{i:04d}.wav"
        sf.write(p, track(i, seconds, sr, rng), sr, subtype="PCM_16")
        paths.append(p)
    return paths


def build_models(names: list[str], quick: bool, device: str) -> dict:
    models = {}
    for name in names:
        params = {**FULL_MODELS.get(name, {}), **(QUICK_OVERRIDES.get(name, {}) if quick else {})}
        ex = registry.create(name, device=device, **params)
        try:
            ex.load()
            weights = "real"
        except WeightsError:
            ex = registry.create(name, device=device, weights_path="random", **params)
            ex.load()
            weights = "random (architecture-identical)"
        models[name] = (ex, weights)
    return models


def pure_inference(models: dict, paths: list[Path]) -> dict[str, float]:
    decoded = [audio_io.load(p) for p in paths]
    inputs = {name: [d.at(*ex.resample_key) for d in decoded] for name, (ex, _) in models.items()}
    times = {}
    for name, (ex, _) in models.items():
        ex.extract(inputs[name][0][: ex.sample_rate * 2], ex.sample_rate)  # warm-up (first-call allocations)
        t0 = time.perf_counter()
        for audio in inputs[name]:
            ex.extract(audio, ex.sample_rate)
        times[name] = time.perf_counter() - t0
    return times


def run_pipeline(models: dict, audio_dir: Path, out: Path) -> tuple[float, dict]:
    jobs = [pipeline.ModelJob(name, ex) for name, (ex, _) in models.items()]
    runner = pipeline.Runner(jobs, pipeline.RunOptions(audio_dir, out, progress=False, overwrite=True),
                             log=lambda m: None)
    t0 = time.perf_counter()
    stats = runner.run()
    wall = time.perf_counter() - t0
    if stats.failures:
        raise RuntimeError(f"pipeline failures: {stats.failures[:3]}")
    return wall, {name: m.wall_seconds for name, m in stats.models.items()}


def naive_loop(models: dict, paths: list[Path], out: Path) -> tuple[float, dict[str, float]]:
    import librosa

    per_model = {name: 0.0 for name in models}
    t_start = time.perf_counter()
    for path in paths:
        for name, (ex, _) in models.items():
            t0 = time.perf_counter()
            audio, _sr = librosa.load(path, sr=ex.sample_rate, mono=True)
            feats = ex.extract(audio, ex.sample_rate)
            (out / name).mkdir(parents=True, exist_ok=True)
            np.save(out / name / (path.stem + ".npy"), feats.data)
            per_model[name] += time.perf_counter() - t0
    return time.perf_counter() - t_start, per_model


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true",
                    help="small corpus and light settings (< 5 min on 2 cores)")
    ap.add_argument("--files", type=int, help="number of files (default 20; quick: 3)")
    ap.add_argument("--seconds", type=float, help="seconds per file (default 30; quick: 8)")
    ap.add_argument("--models", nargs="+", help="models (default: every registered one)")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--skip_naive", action="store_true", help="skip the naive loop (slow on big corpora)")
    ap.add_argument("--json", type=Path, help="write results here")
    args = ap.parse_args()
    n_files = args.files or (3 if args.quick else 20)
    seconds = args.seconds or (8.0 if args.quick else 30.0)
    # default: the audio models (image and video models have their own benchmarks)
    names = args.models or [n for n in registry.available() if registry.get(n).modality == "audio"]

    import torch

    torch.set_num_threads(len(os.sched_getaffinity(0)))
    work = Path(tempfile.mkdtemp(prefix="embedkit-bench-"))
    try:
        paths = make_corpus(work / "audio", n_files, seconds)
        models = build_models(names, args.quick, args.device)
        pure = pure_inference(models, paths)
        pipe_wall, pipe_models = run_pipeline(models, work / "audio", work / "pipeline")
        naive_wall, naive_models = (None, {})
        if not args.skip_naive:
            naive_wall, naive_models = naive_loop(models, paths, work / "naive")
        peak_rss_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    finally:
        shutil.rmtree(work, ignore_errors=True)

    audio_seconds = n_files * seconds
    pure_total = sum(pure.values())
    rows = []
    for name in models:
        rows.append({
            "model": name,
            "weights": models[name][1],
            "params": models[name][0].config,
            "pure_inference_s": round(pure[name], 3),
            "seconds_per_audio_second": round(pure[name] / audio_seconds, 4),
            "realtime_factor": round(audio_seconds / pure[name], 2),
            "pipeline_model_s": round(pipe_models.get(name, float("nan")), 3),
            "naive_model_s": round(naive_models[name], 3) if naive_models else None,
            "naive_ratio": round(naive_models[name] / pipe_models[name], 3) if naive_models else None,
        })
    result = {
        "date": time.strftime("%Y-%m-%d"),
        "machine": f"{cpu_name()}, {len(os.sched_getaffinity(0))} cores, "
                   f"torch {torch.__version__}, device {args.device}",
        "corpus": f"{n_files} files x {seconds:g} s (44.1 kHz stereo WAV)",
        "mode": "quick" if args.quick else "full",
        "models": rows,
        "pure_inference_total_s": round(pure_total, 3),
        "pipeline_wall_s": round(pipe_wall, 3),
        "naive_wall_s": None if naive_wall is None else round(naive_wall, 3),
        "pipeline_overhead": round(pipe_wall / pure_total, 3),
        "naive_speedup": None if naive_wall is None else round(naive_wall / pipe_wall, 3),
        "peak_rss_mb": round(peak_rss_mb, 1),
    }
    print(f"{result['corpus']}, {result['machine']}")
    print(f"{'model':<9}{'weights':<10}{'s/audio s':>10}{'x RT':>8}"
          f"{'pipeline s':>12}{'naive s':>10}{'naive/pipe':>12}")
    for r in rows:
        print(f"{r['model']:<9}{r['weights'].split()[0]:<10}{r['seconds_per_audio_second']:>10.4f}"
              f"{r['realtime_factor']:>8.1f}{r['pipeline_model_s']:>12.2f}"
              f"{(r['naive_model_s'] or float('nan')):>10.2f}{(r['naive_ratio'] or float('nan')):>12.2f}")
    print(f"pure inference {pure_total:.2f} s, pipeline {pipe_wall:.2f} s, naive "
          f"{'-' if naive_wall is None else f'{naive_wall:.2f}'} s, peak RSS {peak_rss_mb:.0f} MB")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(result, indent=2) + "\n")
    print(f"pipeline_overhead={result['pipeline_overhead']} naive_speedup={result['naive_speedup']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
