"""polyphase.py: resampy's filters as polyphase matrix products, against resampy itself.

The truth is resampy 0.4.3: `resampy.resample` (float64, and float32 as in a fresh process
through `polyphase.resampy_loop`, which runs resampy's own numba loop and is compared with a
fresh process's resampy bit for bit in test_audio_io), plus `by_formula` below: resampy's
per-sample formula written out in NumPy with no periodicity, giving each output's terms, so
that each sample's error bound (module docstring of polyphase) can be checked sample by sample:
  float64: |ours - resampy| <= (2 n + 3) eps64 S + (c_max (n + 2) u32 + 1e-11) S_delta
  float32: |ours - resampy| <= (2 n + 3) u32 S + (c_max (n + 2) u32 + 1e-11) S_delta
with n the sample's taps, S = sum |w_i x_i|, S_delta = sum |delta_i x_i| and c_max the drift
bound of resampy's float64 time, 8e-16 (n_in + 1) num_table.
"""

from __future__ import annotations

import numpy as np
import pytest
import resampy
from resampy.filters import get_filter

from embedkit import polyphase

EPS64, U32 = 2.0**-53, 2.0**-24
# the plugins' rates: files at these rates, models at those
RATES = [(a, b) for a in (22050, 44100, 48000, 32000, 8000, 96000)
         for b in (16000, 24000, 22050, 44100, 48000) if a != b]
FILTERS = ("kaiser_best", "kaiser_fast")


def by_formula(x: np.ndarray, sr_in: int, sr_out: int, filter: str) -> tuple:
    """resampy's loop as formulas, all outputs at once (float64): (y, S, S_delta, n_taps)."""
    ratio = float(sr_out) / sr_in
    win, nt, _ = get_filter(filter)
    if ratio < 1:
        win = ratio * win
    delta = np.diff(win, append=win[-1])
    scale, step, nwin = min(1.0, ratio), int(min(1.0, ratio) * nt), win.shape[0]
    n_out = int(x.shape[0] * float(sr_out) / float(sr_in))
    tr = np.arange(n_out) * (1.0 / ratio)
    n = tr.astype(np.int64)
    frac = scale * (tr - n)
    y, S, Sd, taps = (np.zeros(n_out) for _ in range(4))
    xp = np.r_[x.astype(np.float64), 0.0]  # index -1: a zero for taps past either end
    for f, sign in ((frac, -1), (scale - frac, 1)):  # left wing x[n - i], right wing x[n + 1 + k]
        idx = f * nt
        off = idx.astype(np.int64)
        eta = idx - off
        k_max = (nwin - off) // step
        for k in range(int(k_max.max())):
            j = n - k if sign < 0 else n + 1 + k
            live = (k < k_max) & (j >= 0) & (j < x.shape[0])
            o = np.where(live, off + k * step, 0)
            w = win[o] + eta * delta[o]
            xv = xp[np.where(live, j, -1)]
            y += np.where(live, w * xv, 0.0)
            S += np.where(live, np.abs(w * xv), 0.0)
            Sd += np.where(live, np.abs(delta[o] * xv), 0.0)
            taps += live
    return y, S, Sd, taps


def bound(x, sr_in, sr_out, filter, unit: float) -> np.ndarray:
    """Each output's bound on |ours - resampy| (module docstring), unit: eps64 or u32."""
    _, S, Sd, n = by_formula(x, sr_in, sr_out, filter)
    c_max = 8e-16 * (x.shape[0] + 1) * get_filter(filter)[1]
    return (2 * n + 3) * unit * S + (c_max * (n + 2) * U32 + 1e-11) * Sd


def material(n: int, sr: int, seed: int) -> np.ndarray:
    """Noise, tones (one near the output band's edge) and a chirp: no exactly representable sums."""
    rng = np.random.default_rng(seed)
    t = np.arange(n) / sr
    x = (0.3 * np.sin(2 * np.pi * 440 * t) + 0.2 * np.sin(2 * np.pi * 0.45 * min(sr, 16000) * t)
         + 0.1 * np.sin(2 * np.pi * (100 * t + 0.2 * sr * t * t)) + 0.1 * rng.standard_normal(n))
    return x


def test_by_formula_is_resampy():
    """The per-sample formula (this file's truth for the bounds) gives resampy's float64 samples."""
    x = material(9001, 44100, 0)
    for sr_out in (48000, 16000):
        y = by_formula(x, 44100, sr_out, "kaiser_best")[0]
        want = resampy.resample(x, 44100, sr_out)
        assert np.abs(y - want).max() <= 1e-14 * np.abs(want).max()


@pytest.mark.parametrize("filter", FILTERS)
@pytest.mark.parametrize("sr_in, sr_out", RATES)
def test_float64_equals_resampy(sr_in, sr_out, filter):
    """Within 1e-12 of max |y| and within each sample's bound, at every rate the plugins use."""
    x = material(sr_in // 5 + 7, sr_in, sr_in + sr_out)
    want = resampy.resample(x, sr_in, sr_out, filter=filter)
    got = polyphase.resample(x, sr_in, sr_out, filter)
    assert got.dtype == np.float64 and got.shape == want.shape
    err = np.abs(got - want)
    assert err.max() <= 1e-12 * np.abs(want).max()
    assert (err <= bound(x, sr_in, sr_out, filter, EPS64)).all()


@pytest.mark.parametrize("filter", FILTERS)
@pytest.mark.parametrize("sr_in, sr_out", [(44100, 48000), (44100, 16000), (22050, 16000), (48000, 16000),
                                           (8000, 16000), (96000, 48000), (48000, 22050), (32000, 44100)])
def test_float32_within_its_bound(sr_in, sr_out, filter):
    """float32 (crepe's): each sample within (2n + 3) u32 sum|w x| (+ the drift term's) of
    resampy's float32 loop; measured ~7 u32 sum|w x|, about as far as resampy's own float32
    samples are from the exact sums."""
    x = material(sr_in // 5 + 11, sr_in, sr_in * 3 + sr_out).astype(np.float32)
    want = polyphase.resampy_loop(x, sr_in, sr_out, filter, "float32")
    got = polyphase.resample(x, sr_in, sr_out, filter)
    assert got.dtype == np.float32 and got.shape == want.shape
    err = np.abs(got.astype(np.float64) - want)
    b = bound(x, sr_in, sr_out, filter, U32)
    assert (err <= b).all()
    _, S, _, _ = by_formula(x, sr_in, sr_out, filter)
    assert (err <= 32 * U32 * S).all()  # far inside the bound: ~7 measured


def test_irregular_samples_take_their_own_taps(monkeypatch):
    """Where resampy's float64 time rounds a sample across a table entry or an input sample,
    that sample's own taps are used (extra columns): at rates where it happens often."""
    seen = []
    original = polyphase._irregular

    def spy(*args):
        irregular = original(*args)
        seen.append(irregular[0].shape[0])
        return irregular

    monkeypatch.setattr(polyphase, "_irregular", spy)
    for sr_in, sr_out in ((48000, 22050), (32000, 22050), (96000, 44100)):
        seen.clear()
        x = material(sr_in // 2, sr_in, 5)
        want = resampy.resample(x, sr_in, sr_out)
        got = polyphase.resample(x, sr_in, sr_out)
        assert sum(seen) > 0.05 * want.shape[0]
        assert np.abs(got - want).max() <= 1e-12 * np.abs(want).max()


def test_long_signals_follow_resampys_time_rounding():
    """Far into a long file resampy's float64 times drift ~1e-9 samples from the exact ratio:
    outputs there equal resampy's loop on the same span (5 minutes at 44.1 kHz)."""
    rng = np.random.default_rng(7)
    x = (0.2 * rng.standard_normal(44100 * 300)).astype(np.float32)
    for sr_out in (48000, 16000):
        got = polyphase.resample(x, 44100, sr_out, precision="float64")
        t1 = got.shape[0]
        span = (t1 - 3000, t1)
        want = polyphase.resampy_loop(x, 44100, sr_out, "kaiser_best", "float64", span=span)
        assert np.abs(got[span[0]:] - want).max() <= 1e-12 * np.abs(want).max()
        mid = (t1 // 2, t1 // 2 + 3000)
        want = polyphase.resampy_loop(x, 44100, sr_out, "kaiser_best", "float64", span=mid)
        assert np.abs(got[mid[0]:mid[1]] - want).max() <= 1e-12 * np.abs(want).max()


def test_blocks_and_residual(monkeypatch):
    """Many small blocks give resampy's whole-signal samples; a residual is added in float64."""
    monkeypatch.setattr(polyphase, "_BLOCK_OUT", 1)  # the least: 16 rows a block
    for sr_in, sr_out in ((44100, 48000), (44100, 16000), (22050, 48000), (16000, 44100)):
        x = material(sr_in // 3 + 5, sr_in, 1).astype(np.float32)
        residual = (np.random.default_rng(1).standard_normal(x.shape[0]) * 1e-9).astype(np.float32)
        want = resampy.resample(x.astype(np.float64) + residual, sr_in, sr_out)
        got = polyphase.resample(x, sr_in, sr_out, precision="float64", residual=residual)
        assert got.dtype == np.float64
        assert np.abs(got - want).max() <= 1e-12 * np.abs(want).max()
        got32 = polyphase.resample(x, sr_in, sr_out, precision="float64", out_dtype=np.float32,
                                   residual=residual)
        np.testing.assert_array_equal(got32, got.astype(np.float32))
    with pytest.raises(ValueError, match="residual"):
        polyphase.resample(x, 44100, 48000, precision="float32", residual=residual)


@pytest.mark.parametrize("sr_in, sr_out", [(44100, 48000), (44100, 16000), (96000, 16000), (8000, 48000)])
def test_short_signals(sr_in, sr_out):
    """Signals shorter than the filter: resampy's samples (its wings truncated at both ends);
    too short for one output: resampy's ValueError."""
    for n in (1, 2, 3, 7, 40, 150, 700):
        x = material(n, sr_in, n)
        try:
            want = resampy.resample(x, sr_in, sr_out)
        except ValueError as e:
            with pytest.raises(ValueError, match="too small"):
                polyphase.resample(x, sr_in, sr_out)
            assert "too small" in str(e)
            continue
        got = polyphase.resample(x, sr_in, sr_out)
        assert got.shape == want.shape
        assert np.abs(got - want).max() <= 1e-12 * np.abs(want).max()


def test_channels_along_leading_axes():
    """(..., n): each channel as resampy resamples it along its default axis -1."""
    x = np.stack([material(7000, 44100, s) for s in range(6)]).reshape(3, 2, 7000)
    want = resampy.resample(x, 44100, 16000, axis=-1)
    got = polyphase.resample(x, 44100, 16000)
    assert got.shape == want.shape == (3, 2, 2539)
    assert np.abs(got - want).max() <= 1e-12 * np.abs(want).max()
    got32 = polyphase.resample(x.astype(np.float32), 44100, 16000)
    assert got32.dtype == np.float32
    for i in np.ndindex(3, 2):
        np.testing.assert_array_equal(got32[i], polyphase.resample(x[i].astype(np.float32), 44100, 16000))


def test_rates_without_a_short_period_run_resampys_loop():
    """Non-integer rates and ratios with a long period: resampy's own loop, bit for bit."""
    x = material(5000, 44100, 3)
    for sr_in, sr_out in ((44100.5, 48000), (44100, 48001), (44100, 16000.25)):
        assert not polyphase.supported(sr_in, sr_out)
        np.testing.assert_array_equal(polyphase.resample(x, sr_in, sr_out),
                                      resampy.resample(x, sr_in, sr_out))
    assert polyphase.supported(44100.0, 48000.0) and not polyphase.supported(44100, 48000, "sinc_window")
    with pytest.raises(ValueError, match="precision"):
        polyphase.resample(x, 44100, 48000, precision="float16")
    with pytest.raises(ValueError, match="sample rate"):
        polyphase.resample(x, 0, 48000)


def test_non_finite_input_reaches_what_resampy_reaches():
    """NaN and inf spread exactly to the outputs whose taps read them (as in resampy), not
    to a whole product's window; the other outputs are unchanged."""
    x = material(20000, 44100, 9)
    x[5000], x[12000] = np.nan, np.inf
    want = resampy.resample(x, 44100, 48000)
    got = polyphase.resample(x, 44100, 48000)
    np.testing.assert_array_equal(np.isnan(got), np.isnan(want))
    np.testing.assert_array_equal(np.isinf(got), np.isinf(want))
    fin = np.isfinite(want)
    assert np.abs(got[fin] - want[fin]).max() <= 1e-12 * np.abs(want[fin]).max()


@pytest.mark.parametrize("sr_in, sr_out", [(44100, 48000), (44100, 16000), (48000, 22050), (8000, 16000)])
def test_torch_equals_resampy(sr_in, sr_out):
    """The torch version (for a run on CUDA), here on the CPU: the same bounds."""
    import torch

    x = material(sr_in // 4 + 3, sr_in, 11)
    want = resampy.resample(x, sr_in, sr_out)
    got = polyphase.resample_torch(torch.from_numpy(x), sr_in, sr_out, block_out=3000)
    assert got.dtype == torch.float64 and tuple(got.shape) == want.shape
    assert np.abs(got.numpy() - want).max() <= 1e-12 * np.abs(want).max()
    x32 = x.astype(np.float32)
    got32 = polyphase.resample_torch(torch.from_numpy(x32), sr_in, sr_out)
    assert got32.dtype == torch.float32
    err = np.abs(got32.numpy().astype(np.float64) - polyphase.resampy_loop(x32, sr_in, sr_out))
    assert (err <= bound(x32, sr_in, sr_out, "kaiser_best", U32)).all()
    # from a float32 tensor in float64, with the residual (the driver's float32 audio for
    # openl3's arithmetic)
    lo = (np.random.default_rng(1).standard_normal(x32.shape[0]) * 1e-9).astype(np.float32)
    got = polyphase.resample_torch(torch.from_numpy(x32), sr_in, sr_out, precision="float64",
                                   residual=torch.from_numpy(lo))
    want = resampy.resample(x32.astype(np.float64) + lo, sr_in, sr_out)
    assert np.abs(got.numpy() - want).max() <= 1e-12 * np.abs(want).max()


def test_torch_non_finite_and_unsupported_rates():
    import torch

    x = material(9000, 44100, 2)
    x[4000] = np.nan
    want = resampy.resample(x, 44100, 16000)
    got = polyphase.resample_torch(torch.from_numpy(x), 44100, 16000).numpy()
    np.testing.assert_array_equal(np.isnan(got), np.isnan(want))
    fin = np.isfinite(want)
    assert np.abs(got[fin] - want[fin]).max() <= 1e-12 * np.abs(want[fin]).max()
    x = material(3000, 44100, 2)
    np.testing.assert_array_equal(polyphase.resample_torch(torch.from_numpy(x), 44100, 48001).numpy(),
                                  resampy.resample(x, 44100, 48001))
