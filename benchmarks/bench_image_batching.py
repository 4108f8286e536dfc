"""Images per second through the driver: images of several files per forward pass vs one per forward.

    python benchmarks/bench_image_batching.py                       # CPU, ~5 min on 2 cores
    python benchmarks/bench_image_batching.py --images 64 --json benchmarks/results/image_batching.json
    python benchmarks/bench_image_batching.py --device cuda --images 512

`embedkit.run` (the local executor, as run_extraction.py runs it) over a folder of synthesized
640x480 JPEG scenes, for resnet18 and openl3_image (architecture-identical random weights: speed
does not depend on the values), at the plugins' default batch size (files packed across, the
report's forward_passes / items_per_forward say how) and at `batch_size: 1` (one image per
forward), interleaved repeat by repeat so a shared machine's load falls on both alike; best and
median wall time per setting (models loaded before timing: the process caches them).

--call-sizes 1 2 16: also the packed run with each of these items per network call on the CPU
(the plugin's `cpu_call_size`, set in this process only), interleaved with one file per forward:
how a plugin's CPU call size is chosen (openl3_image's 1).

Video (--videos N): N short videos (320x240, 15 fps) through resnet18 at frame_rate 5, at the
default batch size (`batch_size` frames per call, each video's last frames packed with the next
videos') vs `batch_size: 1`; and (--video-packing) the same default run against each video on its
own calls (the packing across files switched off in this process: the plugin seen without
`forward_items`), interleaved.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Callable

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
import _checkout  # noqa: E402,F401  (the checkout as the package embedkit)

import embedkit  # noqa: E402


def cpu_name() -> str:
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def write_images(folder: Path, n: int) -> None:
    from PIL import Image

    sys.path.insert(0, str(ROOT))
    from tests.media_synth import scene

    folder.mkdir(parents=True, exist_ok=True)
    for i in range(n):
        Image.fromarray(scene(i, 640, 480, shapes=20)).save(folder / f"im{i:04d}.jpg", quality=90)


def write_videos(folder: Path, n: int, seconds: float) -> None:
    from tests.media_synth import moving_shapes, write_video

    folder.mkdir(parents=True, exist_ok=True)
    for i in range(n):
        write_video(folder / f"v{i:03d}.mp4", moving_shapes(i, int(seconds * 15), 320, 240), fps=15)


def one_run(folder: Path, model: dict, batch_size: int | None, device: str, threads: int) -> dict:
    out = Path(tempfile.mkdtemp(prefix="bench_batching_"))
    try:
        settings = {"device": device, "torch_threads": threads}
        if batch_size is not None:
            settings["batch_size"] = batch_size
        t0 = time.perf_counter()
        stats = embedkit.run(folder, out, models=model, log=lambda msg: None, **settings)
        wall = time.perf_counter() - t0
        (m,) = stats.models.values()
        assert m.ok and not stats.failures, stats.render()
        return {"wall_s": wall, "ok": m.ok, "forward_passes": m.forward_passes,
                "items_per_forward": m.items_per_forward, "inference_s": m.inference_seconds}
    finally:
        shutil.rmtree(out, ignore_errors=True)


def summary(got: list[dict], items: int, unit: str) -> dict:
    """One setting's interleaved runs: best and median wall time, the rates, the report's passes."""
    walls = [r["wall_s"] for r in got]
    return {"best_wall_s": round(min(walls), 3), "median_wall_s": round(statistics.median(walls), 3),
            f"{unit}_per_s_best": round(items / min(walls), 2),
            f"{unit}_per_s_median": round(items / statistics.median(walls), 2),
            "forward_passes": got[0]["forward_passes"], "items_per_forward": got[0]["items_per_forward"]}


def speedups(fast: dict, slow: dict) -> dict:
    """How much faster `fast` ran than `slow` (summary()s), best and median."""
    return {"speedup_best": round(slow["best_wall_s"] / fast["best_wall_s"], 3),
            "speedup_median": round(slow["median_wall_s"] / fast["median_wall_s"], 3)}


def interleaved(name: str, items: int, unit: str, repeats: int, fast: tuple[str, Callable[[], dict]],
                slow: tuple[str, Callable[[], dict]]) -> dict:
    """Two settings of one run, each warmed up, then `repeats` rounds alternating which goes first:
    their summary()s and how much faster `fast` ran."""
    cases = dict([fast, slow])
    for go in cases.values():
        go()  # warm-up: load, first-call kernels of each shape
    runs: dict[str, list[dict]] = {what: [] for what in cases}
    for r in range(repeats):
        for what in (list(cases) if r % 2 == 0 else list(cases)[::-1]):
            runs[what].append(cases[what]())
    row: dict = {"model": name, unit: items,
                 **{what: summary(got, items, unit) for what, got in runs.items()}}
    f, s = row[fast[0]], row[slow[0]]
    row.update(speedups(f, s))
    print(f"{name:<28} {fast[0]} {f[f'{unit}_per_s_best']:>8.2f} {unit}/s ({f['forward_passes']} passes, "
          f"{f['items_per_forward']} items each)   {slow[0]} {s[f'{unit}_per_s_best']:>8.2f} {unit}/s "
          f"({s['forward_passes']} passes)   x{row['speedup_best']:.2f} best, "
          f"x{row['speedup_median']:.2f} median", flush=True)
    return row


def compare(name: str, folder: Path, model: dict, items: int, repeats: int, device: str,
            threads: int, unit: str) -> dict:
    """The default batch size (files packed) vs `batch_size: 1`."""
    return interleaved(name, items, unit, repeats,
                       ("batched", lambda: one_run(folder, model, None, device, threads)),
                       ("one_per_forward", lambda: one_run(folder, model, 1, device, threads)))


def call_sizes(name: str, folder: Path, items: int, repeats: int, threads: int, sizes: list[int]) -> dict:
    """Packed (default batch_size) at each CPU call size vs one file per forward, interleaved."""
    from embedkit import registry

    cls, model = registry.get(name), {name: {"weights": "random"}}
    saved = cls.cpu_call_size
    cases = {"one per forward": (1, saved), **{f"packed, calls of {c}": (None, c) for c in sizes}}

    def go(case):
        cls.cpu_call_size = cases[case][1]
        return one_run(folder, model, cases[case][0], "cpu", threads)["wall_s"]

    try:
        for case in cases:
            go(case)  # warm-up of each shape
        walls: dict[str, list[float]] = {c: [] for c in cases}
        for r in range(repeats):
            for case in (list(cases) if r % 2 == 0 else list(cases)[::-1]):
                walls[case].append(go(case))
    finally:
        cls.cpu_call_size = saved
    base = statistics.median(walls["one per forward"])
    row = {"model": name, "images": items, "call_sizes": {
        c: {"best_images_per_s": round(items / min(w), 2),
            "median_images_per_s": round(items / statistics.median(w), 2),
            "vs_one_per_forward_median": round(base / statistics.median(w), 3)} for c, w in walls.items()}}
    for c, v in row["call_sizes"].items():
        print(f"{name:<14} {c:<22} best {v['best_images_per_s']:>6.2f} images/s, median "
              f"{v['median_images_per_s']:>6.2f} (x{v['vs_one_per_forward_median']:.2f})", flush=True)
    return row


def video_packing(folder: Path, frames: int, repeats: int, device: str, threads: int) -> dict:
    """resnet18 on the videos: last frames packed across videos vs each video on its own calls."""
    from embedkit.extractors.base import Extractor
    from embedkit.extractors.resnet18 import ResNet18

    model = {"resnet18": {"weights": "random", "frame_rate": 5.0}}
    own = ResNet18.forward_items

    def go(packed: bool) -> dict:
        ResNet18.forward_items = own if packed else Extractor.forward_items
        try:
            return one_run(folder, model, None, device, threads)
        finally:
            ResNet18.forward_items = own

    return interleaved("resnet18 video, packing across videos", frames, "frames", repeats,
                       ("packed", lambda: go(True)), ("per_video", lambda: go(False)))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--images", type=int, default=48)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--videos", type=int, default=6)
    ap.add_argument("--video-seconds", type=float, default=2.0)
    ap.add_argument("--video-packing", action="store_true",
                    help="also the videos with their last frames packed across videos vs per video")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--threads", type=int, default=len(os.sched_getaffinity(0)))
    ap.add_argument("--models", nargs="*", default=["resnet18", "openl3_image"])
    ap.add_argument("--call-sizes", type=int, nargs="*", default=[],
                    help="packed runs with these CPU call sizes too (see above)")
    ap.add_argument("--json", type=Path)
    args = ap.parse_args()
    load = os.getloadavg()
    print(f"{cpu_name()}, {args.threads} torch thread(s), device {args.device}; load average before "
          f"{load[0]:.2f} {load[1]:.2f} {load[2]:.2f}", flush=True)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        images = Path(tmp) / "images"
        write_images(images, args.images)
        for name in args.models:
            rows.append(compare(name, images, {name: {"weights": "random"}}, args.images, args.repeats,
                                args.device, args.threads, "images"))
        for name in args.models if args.call_sizes else []:
            rows.append(call_sizes(name, images, args.images, args.repeats, args.threads, args.call_sizes))
        if args.videos:
            videos = Path(tmp) / "videos"
            write_videos(videos, args.videos, args.video_seconds)
            frames = args.videos * int(args.video_seconds * 5)
            rows.append(compare("resnet18 video, 5 frames/s", videos,
                                {"resnet18": {"weights": "random", "frame_rate": 5.0}}, frames,
                                args.repeats, args.device, args.threads, "frames"))
            if args.video_packing:
                rows.append(video_packing(videos, frames, args.repeats, args.device, args.threads))
    after = os.getloadavg()
    print(f"load average after {after[0]:.2f} {after[1]:.2f} {after[2]:.2f}")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps({
            "cpu": cpu_name(), "device": args.device, "threads": args.threads, "images": args.images,
            "repeats": args.repeats, "load_before": load, "load_after": after, "rows": rows},
            indent=2) + "\n")


if __name__ == "__main__":
    main()
