"""Synthetic images and videos for tests: seeded scenes of coloured shapes, written with Pillow / PyAV."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np


def scene(seed: int, width: int = 320, height: int = 240, shapes: int = 12) -> np.ndarray:
    """(height, width, 3) uint8: a background colour and `shapes` random ellipses / rectangles."""
    from PIL import Image, ImageDraw

    rng = np.random.default_rng(seed)
    img = Image.new("RGB", (width, height), tuple(int(c) for c in rng.integers(0, 256, 3)))
    draw = ImageDraw.Draw(img)
    for _ in range(shapes):
        x0, y0 = int(rng.integers(0, width)), int(rng.integers(0, height))
        x1, y1 = x0 + int(rng.integers(10, width // 2)), y0 + int(rng.integers(10, height // 2))
        shape = draw.ellipse if rng.integers(0, 2) else draw.rectangle
        shape((x0, y0, x1, y1), fill=tuple(int(c) for c in rng.integers(0, 256, 3)))
    return np.asarray(img)


def moving_shapes(seed: int, frames: int, width: int = 160, height: int = 120) -> np.ndarray:
    """(frames, height, width, 3) uint8: six shapes moving at constant seeded speeds."""
    from PIL import Image, ImageDraw

    rng = np.random.default_rng(seed)
    bg = tuple(int(c) for c in rng.integers(0, 256, 3))
    shapes = [(int(rng.integers(0, width)), int(rng.integers(0, height)), int(rng.integers(10, 50)),
               int(rng.integers(-6, 7)), int(rng.integers(-6, 7)),
               tuple(int(c) for c in rng.integers(0, 256, 3)), bool(rng.integers(0, 2))) for _ in range(6)]
    out = []
    for t in range(frames):
        img = Image.new("RGB", (width, height), bg)
        draw = ImageDraw.Draw(img)
        for x, y, size, vx, vy, colour, round_ in shapes:
            box = (x + vx * t, y + vy * t, x + vx * t + size, y + vy * t + size)
            (draw.ellipse if round_ else draw.rectangle)(box, fill=colour)
        out.append(np.asarray(img))
    return np.stack(out)


def numbered_frames(frames: int, width: int = 64, height: int = 48, step: int = 4) -> np.ndarray:
    """(frames, height, width, 3) uint8 where frame j is flat grey level step * j (mod 256): each
    frame's number can be read back after coding (step 4: frames 0-63)."""
    levels = (np.arange(frames) * step % 256).astype(np.uint8)
    return np.broadcast_to(levels[:, None, None, None], (frames, height, width, 3)).copy()


def write_video(path: Path, frames: np.ndarray, fps: float = 15, crf: int = 18,
                size: tuple[int, int] | None = None, codec: str = "libx264", faststart: bool = False) -> Path:
    """Encode RGB `frames` (T, H, W, 3) as H.264 yuv420p at `fps` (optionally scaled to `size` = (w, h));
    `faststart` puts the MP4 index first (a truncated copy then still opens)."""
    import av
    from fractions import Fraction

    path.parent.mkdir(parents=True, exist_ok=True)
    height, width = frames.shape[1:3]
    width, height = size or (width, height)
    options = {"movflags": "faststart"} if faststart else {}
    with av.open(str(path), "w", options=options) as container:
        stream = container.add_stream(codec, rate=Fraction(fps).limit_denominator(1001))
        stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
        stream.options = {"crf": str(crf)} if codec == "libx264" else {}
        for rgb in frames:
            frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(rgb), format="rgb24")
            if size:
                frame = frame.reformat(width=width, height=height)
            for packet in stream.encode(frame):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return path


def recompressed(rgb: np.ndarray, scale: float = 0.6, quality: int = 60) -> bytes:
    """JPEG bytes of `rgb` downscaled by `scale` (Lanczos) at JPEG `quality`: a near-duplicate copy."""
    from PIL import Image

    img = Image.fromarray(rgb)
    img = img.resize((max(1, int(img.width * scale)), max(1, int(img.height * scale))), Image.LANCZOS)
    buf = io.BytesIO()
    img.save(buf, "JPEG", quality=quality)
    return buf.getvalue()
