"""melspec: known spectra of synthesized signals, and an independent librosa computation."""

import librosa
import numpy as np
import pytest

from embedkit import registry
from embedkit.extractors.base import ConfigError
from tests.conftest import tone

SR = 16000


def mel_band_of(freq: float, n_mels: int, fmax: float = 8000.0) -> int:
    """Index of the mel band whose centre is nearest to `freq` (Slaney mel scale)."""
    centres = librosa.mel_frequencies(n_mels=n_mels + 2, fmin=0.0, fmax=fmax, htk=False)[1:-1]
    return int(np.argmin(np.abs(centres - freq)))


@pytest.mark.parametrize("freq", [250.0, 1000.0, 3000.0])
def test_pure_tone_peaks_in_its_mel_band(freq):
    feats = registry.create("melspec", normalize="none").extract(tone(freq, 1.0, SR), SR)
    band = np.argmax(feats.data[10:-10].mean(axis=0))
    assert abs(band - mel_band_of(freq, 64)) <= 1


def test_matches_librosa_power_mel_in_db():
    rng = np.random.default_rng(1)
    audio = rng.standard_normal(SR * 2).astype(np.float32) * 0.1
    ex = registry.create("melspec", normalize="none", n_mels=40, n_fft=512, hop_length=256)
    ours = ex.extract(audio, SR).data
    ref = librosa.feature.melspectrogram(
        y=audio.astype(np.float64), sr=SR, n_fft=512, hop_length=256, n_mels=40, fmax=8000.0,
        center=True, pad_mode="constant", power=2.0, window="hann",
    )
    ref_db = 10 * np.log10(np.maximum(ref, 1e-10)).T
    assert ours.shape == ref_db.shape == (1 + len(audio) // 256, 40)
    np.testing.assert_allclose(ours, ref_db, atol=1e-3)


def test_amplitude_scaling_shifts_db_by_20log10():
    audio = tone(500.0, 0.5, SR, amp=0.1)
    ex = registry.create("melspec", normalize="none")
    a = ex.extract(audio, SR).data
    b = ex.extract(audio * 10, SR).data
    strong = a > a.max() - 30  # bins well above the 1e-10 floor
    np.testing.assert_allclose((b - a)[strong], 20.0, atol=1e-3)


def test_standard_normalization_and_pooling():
    audio = tone(440.0, 1.0, SR) + tone(2000.0, 1.0, SR, 0.1)
    frames = registry.create("melspec").extract(audio, SR)
    assert abs(frames.data.mean()) < 1e-4 and abs(frames.data.std() - 1) < 1e-3
    np.testing.assert_allclose(frames.timestamps, np.arange(len(frames.data)) * 0.01)
    pooled = registry.create("melspec", pooling="mean").extract(audio, SR)
    assert pooled.data.shape == (64,) and pooled.timestamps is None
    np.testing.assert_allclose(pooled.data, frames.data.mean(axis=0), atol=1e-5)


def test_invalid_combinations_are_config_errors():
    with pytest.raises(ConfigError, match="fmin"):
        registry.create("melspec", fmin=5000.0, fmax=4000.0)
    with pytest.raises(ConfigError, match="n_mels"):
        registry.create("melspec", n_mels=300, n_fft=256)


@pytest.mark.parametrize("n_fft, n_mels, fmin, fmax", [(400, 64, 0.0, 8000.0), (1024, 128, 0.0, 8000.0),
                                                        (512, 40, 125.0, 7500.0), (2048, 96, 30.0, 4000.0)])
def test_filterbank_equals_librosas_bit_for_bit(n_fft, n_mels, fmin, fmax):
    """Our numpy filterbank is librosa's default (Slaney scale, slaney norm), value for value."""
    from embedkit.extractors.melspec import mel_filterbank

    ref = librosa.filters.mel(sr=SR, n_fft=n_fft, n_mels=n_mels, fmin=fmin, fmax=fmax,
                              htk=False, norm="slaney")
    np.testing.assert_array_equal(mel_filterbank(n_fft, n_mels, fmin, fmax), ref.astype(np.float64))
