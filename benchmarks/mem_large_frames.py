"""Peak memory of streaming a video with very large frames (the size guard's second half).

    python benchmarks/mem_large_frames.py              # 6000x4000, 48 frames (~1 min to encode)
    python benchmarks/mem_large_frames.py --width 8000 --height 8000 --frames 64

Encodes a synthetic H.264 video, then streams every frame through `media.iter_frames` in a fresh
process per variant, converting each chunk to RGB at full size (what a frame model asking for
the native size receives), and prints peak RSS:

- bounded: the run's chunking (at most FRAME_CHUNK_PIXELS pixels per chunk);
- 16 frames: chunks of 16 whatever the frame size (the chunking before the bound).

Writes benchmarks/results/mem_large_frames.json.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

READ = """
import resource, sys, time
sys.path.insert(0, {root!r})
import _checkout
from embedkit import media
t = time.perf_counter()
info, chunks = media.iter_frames({path!r}, chunk_pixels={chunk_pixels})
n = largest = 0
for c in chunks:
    c.rgb()
    n += len(c)
    largest = max(largest, len(c))
print(n, largest, resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, time.perf_counter() - t)
"""


def encode(path: Path, width: int, height: int, frames: int) -> None:
    import av
    import numpy as np

    with av.open(str(path), "w") as c:
        s = c.add_stream("libx264", rate=10)
        s.width, s.height, s.pix_fmt = width, height, "yuv420p"
        s.options = {"preset": "ultrafast", "crf": "30"}
        rng = np.random.default_rng(0)
        base = rng.integers(0, 255, (height // 8, width // 8, 3), dtype=np.uint8).repeat(8, 0).repeat(8, 1)
        for i in range(frames):
            for p in s.encode(av.VideoFrame.from_ndarray(np.roll(base, i * 8, axis=1), format="rgb24")):
                c.mux(p)
        for p in s.encode():
            c.mux(p)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--width", type=int, default=6000)
    ap.add_argument("--height", type=int, default=4000)
    ap.add_argument("--frames", type=int, default=48)
    args = ap.parse_args()
    sys.path.insert(0, str(ROOT))
    import _checkout  # noqa: F401

    from embedkit import media

    results = {"width": args.width, "height": args.height, "frames": args.frames, "variants": {}}
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "large.mp4"
        encode(path, args.width, args.height, args.frames)
        for name, chunk_pixels in (("bounded", media.FRAME_CHUNK_PIXELS),
                                   ("16 frames", 16 * args.width * args.height)):
            code = READ.format(root=str(ROOT), path=str(path), chunk_pixels=chunk_pixels)
            out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
            n, largest, peak_mb, seconds = out.stdout.split()
            results["variants"][name] = {"frames": int(n), "largest_chunk": int(largest),
                                         "peak_rss_mb": round(float(peak_mb)),
                                         "seconds": round(float(seconds), 1)}
    print(f"| {args.width}x{args.height}, {args.frames} frames | largest chunk | peak RSS | seconds |")
    print("|---|---|---|---|")
    for name, r in results["variants"].items():
        print(f"| {name} | {r['largest_chunk']} | {r['peak_rss_mb']} MB | {r['seconds']} |")
    out_path = ROOT / "benchmarks" / "results" / "mem_large_frames.json"
    out_path.write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()
