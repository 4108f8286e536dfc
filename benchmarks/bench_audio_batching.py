"""Short audio files through the driver: their items packed across files vs each file on its own calls.

    python benchmarks/bench_audio_batching.py                     # CPU, ~4 min on 2 cores
    python benchmarks/bench_audio_batching.py --json benchmarks/results/audio_batching.json
    python benchmarks/bench_audio_batching.py --device cuda --clips 512

`embedkit.run` (the local executor, as run_extraction.py runs it) over a folder of synthesized
short clips (tones with noise, 44.1 kHz WAV), per case at the plugin's default batch size: files
packed (the driver's default: a short file's windows or frames share calls with its neighbours')
against the same batch size with packing off (each file on its own calls, as before packing; set
in this process only, by hiding the plugin's `audio_items`). The two settings interleave repeat
by repeat so a shared machine's load falls on both alike; best and median wall time, the report's
forward_passes and items_per_forward, and whether the arrays are the same bytes.

Cases (weights: OpenL3 random, architecture-identical; CREPE its real full weights):
- openl3 (mel256, hop 0.1 s) on 1 s clips: 6 windows a file; calls of 16 windows on CUDA (on the
  CPU one window per call: nothing to pack there; `--cpu-call-size 16` sets the calls of 16 it
  made before, in this process);
- crepe full on 0.25 s clips: 26 frames a file, calls of 32 frames on the CPU (256 on CUDA).

--call-sizes 1 4 16: the OpenL3 plugin's `extract` on one 30 s signal at each CPU call size
(windows per network call, set in this process), float32 and bfloat16 (where the CPU has the
units), interleaved: how its CPU call size was chosen; the outputs' bytes are compared too.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
import _checkout  # noqa: E402,F401  (the checkout as the package embedkit)

import embedkit  # noqa: E402
from bench_image_batching import cpu_name, speedups, summary  # noqa: E402

CASES = {
    "openl3": ({"openl3": {"weights": "random"}}, 1.0),
    "crepe": ({"crepe": {"capacity": "full"}}, 0.25),
}


def write_clips(folder: Path, n: int, seconds: float, sr: int = 44100) -> None:
    import soundfile as sf

    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    t = np.arange(int(seconds * sr)) / sr
    for i in range(n):
        x = 0.4 * np.sin(2 * np.pi * 110 * 2 ** (i % 24 / 12) * t) + 0.02 * rng.standard_normal(t.size)
        sf.write(folder / f"c{i:04d}.wav", x.astype(np.float32), sr)


def one_run(folder: Path, model: dict, device: str, threads: int, packed: bool) -> dict:
    from embedkit import registry
    from embedkit.extractors.base import Extractor

    (name,) = model
    cls = registry.get(model[name].get("extractor", name))
    saved = cls.__dict__.get("audio_items")
    out = Path(tempfile.mkdtemp(prefix="bench_audio_batching_"))
    try:
        if not packed:  # each file on its own calls: the driver sees a plugin that does not pack
            cls.audio_items = Extractor.audio_items
        t0 = time.perf_counter()
        stats = embedkit.run(folder, out, models=model, log=lambda msg: None, device=device,
                             torch_threads=threads)
        wall = time.perf_counter() - t0
        (m,) = stats.models.values()
        assert m.ok and not stats.failures, stats.render()
        arrays = {p.name: p.read_bytes() for p in sorted((out / name).glob("*.npy"))}
        return {"wall_s": wall, "forward_passes": m.forward_passes,
                "items_per_forward": m.items_per_forward, "arrays": arrays}
    finally:
        if saved is not None:
            cls.audio_items = saved
        shutil.rmtree(out, ignore_errors=True)


def compare(name: str, clips: int, repeats: int, device: str, threads: int, tmp: Path) -> dict:
    model, seconds = CASES[name]
    folder = tmp / name
    write_clips(folder, clips, seconds)
    one_run(folder, model, device, threads, True)  # warm-up: load, first-call kernels
    one_run(folder, model, device, threads, False)
    runs: dict[str, list[dict]] = {"packed": [], "per_file": []}
    for r in range(repeats):
        for what in (("packed", "per_file") if r % 2 == 0 else ("per_file", "packed")):
            runs[what].append(one_run(folder, model, device, threads, what == "packed"))
    row: dict = {"model": name, "clips": clips, "clip_seconds": seconds,
                 "same_bytes": runs["packed"][0]["arrays"] == runs["per_file"][0]["arrays"],
                 **{what: summary(got, clips, "files") for what, got in runs.items()}}
    p, s = row["packed"], row["per_file"]
    row.update(speedups(p, s))
    print(f"{name:<8} {clips} x {seconds} s: packed {p['files_per_s_median']:.2f} files/s "
          f"({p['forward_passes']} passes of {p['items_per_forward']})  per file "
          f"{s['files_per_s_median']:.2f} files/s ({s['forward_passes']} passes of "
          f"{s['items_per_forward']})  "
          f"x{row['speedup_median']:.2f} median, x{row['speedup_best']:.2f} best; same bytes: "
          f"{row['same_bytes']}", flush=True)
    return row


def call_sizes(sizes: list[int], repeats: int, threads: int) -> dict:
    import torch

    from embedkit import registry
    from embedkit.extractors import base

    torch.set_num_threads(threads)
    sr = 48000
    t = np.arange(30 * sr) / sr
    x = (0.3 * np.sin(2 * np.pi * 440 * t) + 0.05 * np.random.default_rng(0).standard_normal(t.size))
    x = x.astype(np.float32)
    out: dict = {"signal_s": 30, "windows": None, "precisions": {}}
    for precision in ("float32", "bfloat16") if base.cpu_bfloat16_units() else ("float32",):
        plugins = {}
        for size in sizes:
            ex = registry.create("openl3", weights_path="random", precision=precision)
            ex.cpu_call_size = size
            ex.extract(x[:3 * sr], sr)  # warm-up of the shape
            plugins[size] = ex
        seconds: dict[int, list[float]] = {size: [] for size in sizes}
        arrays = {}
        for r in range(repeats):
            for size in sizes if r % 2 == 0 else sizes[::-1]:
                t0 = time.perf_counter()
                arrays[size] = plugins[size].extract(x, sr).data
                seconds[size].append(time.perf_counter() - t0)
        out["windows"] = int(arrays[sizes[0]].shape[0])
        med = {size: statistics.median(v) for size, v in seconds.items()}
        out["precisions"][precision] = {
            "median_s": {str(k): round(v, 3) for k, v in med.items()},
            "vs_calls_of_16": {str(k): round(med[16] / v, 3) for k, v in med.items()} if 16 in med else None,
            "same_bytes": all(a.tobytes() == arrays[sizes[0]].tobytes() for a in arrays.values())}
        print(f"openl3 {precision} on 30 s, median s by CPU call size: "
              f"{out['precisions'][precision]['median_s']}; same bytes: "
              f"{out['precisions'][precision]['same_bytes']}", flush=True)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--clips", type=int, default=32)
    ap.add_argument("--repeats", type=int, default=4)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--threads", type=int, default=len(os.sched_getaffinity(0)))
    ap.add_argument("--models", nargs="*", default=list(CASES), choices=list(CASES))
    ap.add_argument("--cpu-call-size", type=int, help="openl3's CPU call size in this process")
    ap.add_argument("--call-sizes", type=int, nargs="*", default=[], help="see above")
    ap.add_argument("--json", type=Path)
    args = ap.parse_args()
    load = os.getloadavg()
    print(f"{cpu_name()}, {args.threads} torch thread(s), device {args.device}; load average before "
          f"{load[0]:.2f} {load[1]:.2f} {load[2]:.2f}", flush=True)
    if args.cpu_call_size:
        from embedkit import registry

        registry.get("openl3").cpu_call_size = args.cpu_call_size
    extra = {}
    if args.call_sizes:
        extra["openl3_cpu_call_sizes"] = call_sizes(args.call_sizes, args.repeats, args.threads)
    with tempfile.TemporaryDirectory() as tmp:
        rows = [compare(n, args.clips, args.repeats, args.device, args.threads, Path(tmp))
                for n in args.models]
    after = os.getloadavg()
    print(f"load average after {after[0]:.2f} {after[1]:.2f} {after[2]:.2f}")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps({
            "cpu": cpu_name(), "device": args.device, "threads": args.threads, "repeats": args.repeats,
            "date": time.strftime("%Y-%m-%d %H:%M"), "load_before": load, "load_after": after,
            "openl3_cpu_call_size": args.cpu_call_size, "rows": rows, **extra}, indent=2) + "\n")


if __name__ == "__main__":
    main()
