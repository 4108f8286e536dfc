"""Frames of a video on a regular time grid: the decoded frame nearest to each time k / rate.

Shared by the frame models (resnet18 with `frame_rate`, r3d18 at 15 fps); not a plugin
(the registry skips modules whose name starts with "_").

Rule (torchvision's Kinetics clips resample a video to 15 fps; the reference data of
r3d18 picks by nearest presentation time, which also holds for variable frame rates):
grid times t_k = k / rate seconds from the first frame (k = 0, 1, ...), for every
t_k before the video's end, end = last frame's time + one frame duration (1 / the
stream's average rate; the mean frame interval where the container gives none); each
t_k takes the frame whose presentation time is nearest, a tie going to the later frame.
For a constant-rate video of T frames at `fps` this is K = ceil(T * rate / fps) times and
frame j_k = min(T - 1, floor(k * fps / rate + 1/2)).

Frames arrive chunk by chunk (`media.FrameChunk`); a grid time between two chunks is
decided when the next chunk arrives, so the previous chunk is kept until then.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

# Presentation times closer than this (seconds) count as a tie; frames are >= 1 ms apart.
TIE_SECONDS = 1e-6


@dataclass
class Pick:
    """Grid time k / rate is shown by frame `index` (presentation time `pts` s), position `pos` in `chunk`."""

    k: int
    index: int
    pts: float
    chunk: Any
    pos: int


class FrameGrid:
    """Streaming nearest-frame selection at `rate` frames per second (see the module doc)."""

    def __init__(self, rate: float, fps: float | None = None) -> None:
        if not rate > 0:
            raise ValueError(f"frame rate must be > 0, got {rate!r}")
        self.rate = float(rate)
        self.fps = fps if fps and fps > 0 else None
        self.k = 0  # next grid index to decide
        self._prev: tuple[Any, int, float, int] | None = None  # (chunk, pos, pts, index)
        self._first_pts: float | None = None
        self._frames = 0

    def _time(self, k: int) -> float:
        return k / self.rate

    def add(self, chunk: Any) -> list[Pick]:
        """Picks decided once `chunk`'s frames are known (they may point into the previous chunk)."""
        picks: list[Pick] = []
        for pos in range(len(chunk)):
            pts, index = float(chunk.pts[pos]), int(chunk.index[pos])
            if self._first_pts is None:
                self._first_pts = pts
            self._frames += 1
            while self._time(self.k) <= pts + TIE_SECONDS:
                t = self._time(self.k)
                prev = self._prev
                if prev is not None and t - prev[2] < pts - t - TIE_SECONDS:
                    picks.append(Pick(self.k, prev[3], prev[2], prev[0], prev[1]))
                else:
                    picks.append(Pick(self.k, index, pts, chunk, pos))
                self.k += 1
            self._prev = (chunk, pos, pts, index)
        return picks

    def end_seconds(self) -> float:
        """Where the grid stops: the last frame's time plus one frame duration."""
        if self._prev is None:
            return 0.0
        last = self._prev[2]
        if self.fps:
            step = 1.0 / self.fps
        elif self._frames > 1 and self._first_pts is not None and last > self._first_pts:
            step = (last - self._first_pts) / (self._frames - 1)
        else:
            step = 1.0 / self.rate  # one frame and no rate known: it stands for one grid step
        return last + step

    def finish(self) -> list[Pick]:
        """The grid times after the last frame's presentation time, up to the video's end."""
        if self._prev is None:
            return []
        chunk, pos, pts, index = self._prev
        end = self.end_seconds()
        picks = []
        while self._time(self.k) < end - TIE_SECONDS:
            picks.append(Pick(self.k, index, pts, chunk, pos))
            self.k += 1
        self._prev = None
        return picks


def pick_rgb(picks: list[Pick]) -> list[np.ndarray]:
    """The (H, W, 3) uint8 frames of `picks` (sizes may change mid-stream), converted once per frame."""
    out: list[np.ndarray | None] = [None] * len(picks)
    by_chunk: dict[int, list[int]] = {}
    for i, p in enumerate(picks):
        by_chunk.setdefault(id(p.chunk), []).append(i)
    for members in by_chunk.values():
        chunk = picks[members[0]].chunk
        frames = chunk.rgb(select=[picks[i].pos for i in members])
        for i, frame in zip(members, frames):
            out[i] = frame
    return out  # type: ignore[return-value]
