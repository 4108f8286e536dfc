"""madmom plugin: parity with madmom's own test vectors, through our decode path."""

import numpy as np
import pytest

from embedkit import audio_io, registry
from tests.conftest import click_track, reference

pytestmark = pytest.mark.parity


def test_reproduces_upstream_beat_activations():
    wav = reference("madmom", "sample.wav")
    ref = np.load(reference("madmom", "sample.beats_blstm.npz"))
    decoded = audio_io.load(wav)
    assert decoded.sample_rate == 44100
    ex = registry.create("madmom")
    feats = ex.extract(decoded.at(ex.sample_rate, ex.resample_method), ex.sample_rate)
    assert feats.data.dtype == np.float32
    assert feats.data.shape == ref["activations"].shape
    np.testing.assert_allclose(feats.data, ref["activations"], atol=1e-5, rtol=0)
    assert ex.output_spec().frames_per_second == float(ref["fps"])
    np.testing.assert_allclose(feats.timestamps, np.arange(len(feats.data)) / 100)


def test_dbn_beats_match_upstream_tracker():
    wav = reference("madmom", "sample.wav")
    expected = np.loadtxt(reference("madmom", "sample.dbn_beat_tracker.txt"))
    ex = registry.create("madmom", beats=True)
    decoded = audio_io.load(wav)
    feats = ex.extract(decoded.audio, decoded.sample_rate)
    np.testing.assert_allclose(feats.extras["beats"], expected, atol=1e-6)


def test_resampled_input_gives_same_activations():
    """The 22.05 kHz copy of the sample, resampled to 44.1 kHz by us, still finds the same peaks."""
    ref = np.load(reference("madmom", "sample.beats_blstm.npz"))["activations"]
    decoded = audio_io.load(reference("madmom", "sample_22050.wav"))
    ex = registry.create("madmom")
    act = ex.extract(decoded.at(44100, ex.resample_method), 44100).data
    assert abs(len(act) - len(ref)) <= 1
    n = min(len(act), len(ref))
    assert np.corrcoef(act[:n], ref[:n])[0, 1] > 0.95


def test_click_track_tempo():
    """Beats found on a synthetic 120 BPM click track are 0.5 s apart."""
    audio = click_track(120, 8.0)
    feats = registry.create("madmom", beats=True).extract(audio, 44100)
    intervals = np.diff(feats.extras["beats"])
    assert len(intervals) >= 8
    assert abs(np.median(intervals) - 0.5) < 0.02
