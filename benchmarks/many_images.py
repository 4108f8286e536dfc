#!/usr/bin/env python
"""A folder of 50,000 tiny images: does the run stay bounded, and what does it cost per file?

    python benchmarks/many_images.py                     # 50,000 images of 32x24 px (~10 min on 2 cores)
    python benchmarks/many_images.py --images 5000 --run-images 500

Four runs of `run_extraction.py` (subprocesses, as a user runs it), each's wall time and the
driver's and its decode workers' peak RSS (ru_maxrss of the process and of its children):

1. `--decode_only --models resnet18` over all the images (the preflight: listing, decoding, the
   bad-file report), and the same over a tenth of them: peak memory against the collection's size;
2. `--models resnet18` (random weights, packed across files) over `--run-images` of them, then the
   same command again (everything done: planning, completeness checks and the report only).

Images are PNGs of random pixels (each its own seed) with one bad file (not an image) among them.
Writes benchmarks/results/many_images.json.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent

RUN = r"""
import resource, sys
sys.argv = ["run_extraction.py", *sys.argv[1:]]
sys.path.insert(0, {root!r})
import run_extraction
try:
    rc = run_extraction.main(sys.argv[1:])
except SystemExit as exc:
    rc = exc.code
print("PEAK_KB", resource.getrusage(resource.RUSAGE_SELF).ru_maxrss,
      resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss, flush=True)
sys.exit(rc)
"""


def write_images(folder: Path, n: int, w: int, h: int) -> float:
    from PIL import Image

    t0 = time.perf_counter()
    for i in range(n):
        sub = folder / f"d{i // 1000:03d}"  # 1,000 per folder (what a real collection looks like)
        sub.mkdir(parents=True, exist_ok=True)
        px = np.random.default_rng(i).integers(0, 256, (h, w, 3), dtype=np.uint8)
        Image.fromarray(px).save(sub / f"im{i:06d}.png", compress_level=1)
    (folder / "d000" / "not_an_image.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"garbage" * 10)
    return time.perf_counter() - t0


def run(args: list[str], log: Path) -> dict:
    t0 = time.perf_counter()
    res = subprocess.run([sys.executable, "-c", RUN.format(root=str(ROOT)), "--no_progress", *args],
                         cwd=ROOT, capture_output=True, text=True)
    wall = time.perf_counter() - t0
    log.write_text(res.stdout + res.stderr)
    peak = res.stdout.split("PEAK_KB")[-1].split() if "PEAK_KB" in res.stdout else ["0", "0"]
    return {"rc": res.returncode, "wall_s": round(wall, 2),
            "driver_peak_rss_mb": round(int(peak[0]) / 1024, 1),
            "worker_peak_rss_mb": round(int(peak[1]) / 1024, 1)}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--images", type=int, default=50000)
    ap.add_argument("--run-images", type=int, default=2000, help="images the resnet18 run embeds")
    ap.add_argument("--size", type=int, nargs=2, default=[32, 24], metavar=("W", "H"))
    ap.add_argument("--json", type=Path, default=HERE / "results" / "many_images.json")
    args = ap.parse_args()
    out: dict = {"date": time.strftime("%Y-%m-%d %H:%M"), "images": args.images,
                 "size": f"{args.size[0]}x{args.size[1]} PNG", "cores": len(os.sched_getaffinity(0)),
                 "loadavg_start": [round(v, 2) for v in os.getloadavg()]}
    with tempfile.TemporaryDirectory(prefix="many_images_") as tmp:
        tmp = Path(tmp)
        big = tmp / "all"
        out["write_s"] = round(write_images(big, args.images, *args.size), 1)
        tenth = tmp / "tenth"  # hard links: the same files, a tenth of the folders
        for d in sorted(big.iterdir())[: max(1, len(list(big.iterdir())) // 10)]:
            (tenth / d.name).mkdir(parents=True)
            for p in d.iterdir():
                os.link(p, tenth / d.name / p.name)
        n_tenth = sum(1 for _ in tenth.rglob("*.png"))
        cfg = tmp / "r.yaml"
        cfg.write_text("models:\n  resnet18:\n    weights: random\n")
        common = ["--config", str(cfg), "--recursive", "--torch_threads", str(len(os.sched_getaffinity(0)))]
        for name, folder, n in (("decode_only_all", big, args.images), ("decode_only_tenth", tenth, n_tenth)):
            r = run([*common, "--audio_dir", str(folder), "--output_base", str(tmp / name), "--decode_only"],
                    tmp / f"{name}.log")
            rep = json.loads((tmp / name / "decode_only_report.json").read_text())
            fed = rep["models"].get("resnet18", {})
            r.update(files=rep["files"], bad_files=rep["bad_files"],
                     images_per_s_this_run=fed.get("images_per_second_this_run"))
            out[name] = r
            print(name, r, flush=True)
        sub = tmp / "subset"
        sub.mkdir()
        for p in sorted(big.rglob("*.png"))[: args.run_images]:
            os.link(p, sub / p.name)
        for name in ("run", "rerun"):
            r = run([*common, "--audio_dir", str(sub), "--output_base", str(tmp / "out")],
                    tmp / f"{name}.log")
            rep = json.loads((tmp / "out" / "run_report.json").read_text())
            m = rep["models"]["resnet18"]
            r.update(ok=m["ok"], failed=m["failed"], skipped=m["skipped"], forward_passes=m["forward_passes"],
                     items_per_forward=m["items_per_forward"],
                     images_per_s=round(m["ok"] / r["wall_s"], 1) if m["ok"] else None)
            out[name] = r
            print(name, r, flush=True)
    out["loadavg_end"] = [round(v, 2) for v in os.getloadavg()]
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(out, indent=1) + "\n")
    print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
