#!/usr/bin/env python
"""The original script's job on a GPU machine: its audio models over 869 x 30 s, the GPU sampled.

    python benchmarks/gpu.py                               # on a GPU machine: 869 x 30 s
    python benchmarks/gpu.py --files 200                   # a shorter run
    python benchmarks/gpu.py --device cpu --files 3 --seconds 4 --models crepe clmr   # the script's dry run

What a user runs, measured as they would see it (benchmarks/gpu_check.sh runs it on a lent machine):

1. corpus: stereo 44.1 kHz 16-bit WAVs of throughput.py's music-like synthetic audio (notes,
   clicks, noise; each file its own seed), written by a process pool;
2. preflight: `run_extraction.py --decode_only` over the corpus (decode workers at their default):
   the CPU side's feed rate per model, its ceiling;
3. the run: `run_extraction.py --config <these models> --device <device>` in a subprocess (resampy's
   filters on the GPU unless --resample_on cpu), every
   model with `weights: random` (architecture-identical, seeded: speed, never accuracy), while
   `nvidia-smi` samples the GPU's utilization and memory every 0.2 s; from run_report.json per
   model: seconds, forward passes, items per forward pass;
4. each model alone on the device: `extract` on one file's audio already decoded and resampled
   (after a warm-up call), files per second: the measured rate that replaces the assumed
   E = 100 TFLOP/s of BENCHMARKS.md's throughput model.

madmom (a CPU model) is not in the default set: the run's main thread calls the models one after
another, so its 2-3 CPU s per file would stand in for the GPU's time; add it with --models to see
a mixed run. Writes benchmarks/results/gpu.json (--json) and prints the table for BENCHMARKS.md.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(HERE))  # throughput.py's corpus
import _checkout  # noqa: E402,F401  (the checkout as the package embedkit)

DEFAULT_MODELS = ("openl3", "crepe", "mert", "clmr")
KEYS = ("ok", "failed", "inference_seconds", "resample_seconds", "wall_seconds", "forward_passes",
        "items_per_forward")
PARAMS = {"crepe": {"capacity": "full"}}  # the original script's settings; the rest at their defaults


def write_file(args: tuple) -> str:
    """File i of the corpus: throughput.py's music-like track, drawn from its own seed (the files
    are written in parallel)."""
    import soundfile as sf

    from throughput import track

    folder, i, seconds, sr = args
    path = Path(folder) / f"track_{i:04d}.wav"
    sf.write(path, track(i, seconds, sr, np.random.default_rng(i)), sr, subtype="PCM_16")
    return str(path)


def make_corpus(folder: Path, n: int, seconds: float, sr: int = 44100) -> float:
    folder.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    with ProcessPoolExecutor(max_workers=max(1, len(os.sched_getaffinity(0)))) as pool:
        list(pool.map(write_file, [(str(folder), i, seconds, sr) for i in range(n)], chunksize=8))
    return time.perf_counter() - t0


class GpuSampler:
    """nvidia-smi's utilization (%) and memory used (MiB) every `ms` milliseconds, in a thread."""

    def __init__(self, ms: int = 200) -> None:
        self.samples: list[tuple[float, float, float]] = []
        self.proc = None
        if shutil.which("nvidia-smi"):
            self.proc = subprocess.Popen(
                ["nvidia-smi", "--query-gpu=utilization.gpu,memory.used", "--format=csv,noheader,nounits",
                 f"-lms={ms}", "-i", "0"], stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
            self.thread = threading.Thread(target=self._read, daemon=True)
            self.thread.start()

    def _read(self) -> None:
        for line in self.proc.stdout:
            try:
                util, mem = (float(v) for v in line.strip().split(","))
            except ValueError:
                continue
            self.samples.append((time.perf_counter(), util, mem))

    def stop(self) -> dict | None:
        if self.proc is None:
            return None
        self.proc.terminate()
        self.proc.wait()
        if not self.samples:
            return {"samples": 0}
        util = np.array([s[1] for s in self.samples])
        return {"samples": len(util), "util_mean_pct": round(float(util.mean()), 1),
                "util_median_pct": float(np.median(util)),
                "share_of_samples_busy": round(float(np.mean(util > 0)), 3),
                "share_of_samples_at_least_80pct": round(float(np.mean(util >= 80)), 3),
                "memory_max_mib": max(s[2] for s in self.samples)}


def cli(args: list[str], log: Path) -> tuple[float, int]:
    t0 = time.perf_counter()
    with open(log, "w") as f:
        rc = subprocess.call([sys.executable, str(ROOT / "run_extraction.py"), *args], stdout=f,
                             stderr=subprocess.STDOUT)
    return time.perf_counter() - t0, rc


def config_yaml(models: list[str], precision: str | None) -> str:
    lines = ["models:"]
    for name in models:
        lines.append(f"  {name}:")
        for k, v in {**PARAMS.get(name, {}), **({"weights": "random"} if name != "madmom" else {}),
                     **({"precision": precision} if precision and name != "madmom" else {})}.items():
            lines.append(f"    {k}: {v}")
    return "\n".join(lines) + "\n"


def alone(models: list[str], device: str, audio_path: Path, repeats: int, precision: str | None) -> dict:
    """Each model's `extract` on one decoded file, `repeats` times after a warm-up: files/s."""
    from embedkit import audio_io, registry

    decoded = audio_io.load(audio_path, residual=True)
    out = {}
    for name in models:
        kw = {**PARAMS.get(name, {}), **({"precision": precision} if precision and name != "madmom" else {})}
        ex = registry.create(name, device=device, weights_path=None if name == "madmom" else "random", **kw)
        ex.load()
        x = decoded.at(*ex.resample_key)
        ex.extract(x, ex.sample_rate)
        sync = _sync(device)
        times = []
        for _ in range(repeats):
            sync()
            t0 = time.perf_counter()
            ex.extract(x, ex.sample_rate)
            sync()
            times.append(time.perf_counter() - t0)
        med = statistics.median(times)
        out[name] = {"median_s_per_file": round(med, 4), "files_per_s": round(1 / med, 2),
                     "forward_batch_size": getattr(ex, "batch_size", None),
                     "autocast": ex.provenance().get("autocast")}
        del ex
    return out


def _sync(device: str):
    if device.startswith("cuda"):
        import torch

        return torch.cuda.synchronize
    return lambda: None


def machine(device: str) -> dict:
    info = {"cpu_cores": len(os.sched_getaffinity(0)), "python": platform.python_version()}
    try:
        import torch

        info["torch"] = torch.__version__
        if device.startswith("cuda") and torch.cuda.is_available():
            info["gpu"] = torch.cuda.get_device_name(0)
            info["cuda"] = torch.version.cuda
    except ImportError:
        pass
    if shutil.which("nvidia-smi"):
        q = ["nvidia-smi", "--query-gpu=name,driver_version,memory.total", "--format=csv,noheader"]
        info["nvidia_smi"] = subprocess.run(q, capture_output=True, text=True).stdout.strip()
    return info


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--files", type=int, default=869)
    ap.add_argument("--seconds", type=float, default=30.0)
    ap.add_argument("--models", nargs="+", default=list(DEFAULT_MODELS))
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--precision", help="every model's precision (default: the plugins' own: float16 "
                    "autocast on CUDA)")
    ap.add_argument("--resample_on", default="auto", choices=("auto", "cpu", "device"),
                    help="the run's --resample_on (auto: openl3's and crepe's resampy filters on the GPU; "
                         "cpu: in the decode workers, to compare)")
    ap.add_argument("--repeats", type=int, default=5, help="timed calls per model alone")
    ap.add_argument("--work", type=Path, help="keep the corpus and outputs here (default: a temporary one)")
    ap.add_argument("--json", type=Path, default=HERE / "results" / "gpu.json")
    args = ap.parse_args()

    if args.device.startswith("cuda"):
        import torch

        if not torch.cuda.is_available():
            print("gpu.py: no CUDA device here; --device cpu runs this script dry", file=sys.stderr)
            return 2
    work = args.work or Path(tempfile.mkdtemp(prefix="embedkit-gpu-"))
    corpus, out = work / "audio", work / "out"
    result = {"date": time.strftime("%Y-%m-%d %H:%M"), "machine": machine(args.device),
              "corpus": f"{args.files} files x {args.seconds:g} s, stereo 44.1 kHz 16-bit WAV",
              "device": args.device, "models": args.models, "precision": args.precision or "plugin default",
              "resample_on": args.resample_on}
    def save() -> None:  # after each stage: a run cut short by its time limit keeps what it measured
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(result, indent=1) + "\n")

    try:
        result["corpus_write_s"] = round(make_corpus(corpus, args.files, args.seconds), 2)
        cfg = work / "gpu.yaml"
        cfg.write_text(config_yaml(args.models, args.precision))
        common = ["--config", str(cfg), "--audio_dir", str(corpus), "--device", args.device, "--no_progress"]

        wall, rc = cli([*common, "--decode_only", "--output_base", str(work / "preflight")],
                       work / "preflight.log")
        pre = json.loads((work / "preflight" / "decode_only_report.json").read_text())
        result["preflight"] = {"wall_s": round(wall, 2), "rc": rc, "report": pre}
        print(f"preflight: {wall:.1f} s (rc {rc})", flush=True)
        save()

        sampler = GpuSampler()
        wall, rc = cli([*common, "--output_base", str(out), "--resample_on", args.resample_on],
                       work / "run.log")
        gpu = sampler.stop()
        report = json.loads((out / "run_report.json").read_text())
        audio_s = args.files * args.seconds
        result["run"] = {"wall_s": round(wall, 2), "rc": rc, "files_per_s": round(args.files / wall, 3),
                         "audio_s_per_s": round(audio_s / wall, 1), "gpu": gpu,
                         "models": {n: {k: m.get(k) for k in KEYS} for n, m in report["models"].items()}}
        print(f"run: {wall:.1f} s (rc {rc}), {args.files / wall:.2f} files/s, GPU {gpu}", flush=True)
        if rc != 0:
            print((work / "run.log").read_text()[-3000:], file=sys.stderr)
        save()

        result["alone"] = alone(args.models, args.device, sorted(corpus.glob("*.wav"))[0], args.repeats,
                                args.precision)
    finally:
        if args.work is None:
            shutil.rmtree(work, ignore_errors=True)

    print(f"\n{result['corpus']}; {result['machine']}")
    pf = result["preflight"]["report"]
    print("| model | run: inference s | forward passes | items per forward | alone: s per file "
          "| alone: files/s | preflight: audio s/s fed |")
    print("|---|---|---|---|---|---|---|")
    for n in args.models:
        r, a = result["run"]["models"].get(n, {}), result["alone"][n]
        fed = pf["models"].get(n, {}).get("audio_seconds_per_second_this_run")
        print(f"| {n} | {round(r.get('inference_seconds') or 0, 3)} | {r.get('forward_passes')} | "
              f"{r.get('items_per_forward')} | {a['median_s_per_file']} | {a['files_per_s']} | {fed} |")
    print(f"preflight {result['preflight']['wall_s']} s ({pf['decode_workers']} decode workers, "
          f"{pf['audio_seconds_per_second_this_run']} audio s/s, {pf['bad_files']} bad files); run "
          f"{result['run']['wall_s']} s ({result['run']['files_per_s']} files/s, "
          f"{result['run']['audio_s_per_s']} audio s/s); GPU {result['run']['gpu']}")
    save()
    print(f"wrote {args.json}")
    return 0 if result["run"]["rc"] == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
