"""extractors/_frames.py: the nearest frame to each time k / rate, decided chunk by chunk.

Truth: for a constant-rate video, the closed form of the reference data's clip rule
(torchvision_random/README: K = ceil(T * rate / fps), j_k = min(T - 1, floor(k * fps / rate + 1/2)),
computed here with exact fractions); for irregular times, a brute-force argmin over all frames.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from fractions import Fraction

import numpy as np
import pytest

from embedkit.extractors._frames import FrameGrid, pick_rgb


@dataclass
class FakeChunk:
    """The parts of media.FrameChunk the grid reads: pts (s), index, len, rgb(select)."""

    pts: np.ndarray
    index: np.ndarray

    def __len__(self) -> int:
        return len(self.pts)

    def rgb(self, select=None):
        return np.stack([np.full((2, 3, 3), self.index[i] % 256, np.uint8) for i in select])


def run(pts: np.ndarray, rate: float, fps: float | None, chunk: int) -> list:
    grid = FrameGrid(rate, fps)
    picks = []
    for s in range(0, len(pts), chunk):
        picks += grid.add(FakeChunk(pts[s:s + chunk], np.arange(s, min(len(pts), s + chunk))))
    return picks + grid.finish()


@pytest.mark.parametrize("fps", [Fraction(25), Fraction(30), Fraction(24), Fraction(30000, 1001),
                                 Fraction(60), Fraction(10), Fraction(45, 2), Fraction(12)])
@pytest.mark.parametrize("chunk", [1, 7, 16, 1000])
def test_constant_rate_matches_closed_form(fps, chunk):
    frames, rate = 75, 15
    pts = np.array([float(Fraction(j) / fps) for j in range(frames)])
    picks = run(pts, rate, float(fps), chunk)
    k_total = math.ceil(Fraction(frames * rate) / fps)
    want = [min(frames - 1, math.floor(Fraction(k) * fps / rate + Fraction(1, 2))) for k in range(k_total)]
    assert [p.k for p in picks] == list(range(k_total))
    assert [p.index for p in picks] == want  # 22.5 fps has exact ties: they go to the later frame
    assert all(p.pts == pts[p.index] for p in picks)


def test_irregular_times_take_the_nearest_frame():
    rng = np.random.default_rng(3)
    pts = np.concatenate([[0.0], np.cumsum(rng.uniform(0.005, 0.2, 59))])
    picks = run(pts, 4.0, None, 5)
    mean_step = pts[-1] / (len(pts) - 1)
    assert len(picks) == math.ceil((pts[-1] + mean_step) * 4.0 - 1e-9)
    for p in picks:
        d = np.abs(pts - p.k / 4.0)
        assert d[p.index] == d.min()


def test_rate_above_fps_repeats_frames_and_single_frame_video():
    pts = np.arange(10) / 5.0  # 5 fps, 2 s
    picks = run(pts, 15, 5.0, 4)
    assert len(picks) == 30 and [p.index for p in picks[:6]] == [0, 0, 1, 1, 1, 2]
    one = run(np.zeros(1), 15, 25.0, 16)  # one frame at 25 fps lasts 0.04 s: one grid time
    assert [p.index for p in one] == [0]
    assert [p.index for p in run(np.zeros(1), 2, None, 16)] == [0]


def test_pick_rgb_reads_each_frame_from_its_own_chunk():
    pts = np.arange(20) / 25.0
    picks = run(pts, 15, 25.0, 6)  # picks cross chunk boundaries
    frames = pick_rgb(picks)
    assert [int(f[0, 0, 0]) for f in frames] == [p.index for p in picks]
    with pytest.raises(ValueError, match="> 0"):
        FrameGrid(0)
