"""Decoding, mono mixing, resampling and discovery."""


import numpy as np
import pytest

import audio_io
from tests.conftest import tone, write_wav


def test_stereo_is_mixed_to_mono_mean(tmp_path):
    left, right = tone(440, 0.5, 22050, 0.5), tone(660, 0.5, 22050, 0.25)
    write_wav(tmp_path / "s.wav", np.stack([left, right], 1), 22050, "FLOAT")
    audio, sr = audio_io.decode(tmp_path / "s.wav")
    assert sr == 22050 and audio.dtype == np.float32 and audio.ndim == 1
    np.testing.assert_allclose(audio, (left + right) / 2, atol=1e-7)


@pytest.mark.parametrize("fmt, subtype", [("wav", "PCM_24"), ("flac", "PCM_16"), ("ogg", None), ("aiff", "PCM_16")])
def test_formats_decode(tmp_path, fmt, subtype):
    x = tone(440, 1.0, 44100)
    path = write_wav(tmp_path / f"a.{fmt}", x, 44100, subtype)
    audio, sr = audio_io.decode(path)
    assert sr == 44100 and abs(len(audio) - len(x)) < 2048
    n = min(len(audio), len(x))
    assert np.corrcoef(audio[:n], x[:n])[0, 1] > 0.99


def test_six_channels_and_8k(tmp_path):
    x = np.stack([tone(300, 0.25, 8000)] * 6, 1)
    audio, sr = audio_io.decode(write_wav(tmp_path / "six.wav", x, 8000))
    assert sr == 8000 and audio.shape == (2000,)


@pytest.mark.parametrize("content, needle", [
    (b"", r"empty file \(0 bytes\)"),
    (b"this is not audio at all" * 10, "cannot decode.*holds text"),
])
def test_bad_files_raise_audio_error(tmp_path, content, needle):
    p = tmp_path / "bad.wav"
    p.write_bytes(content)
    with pytest.raises(audio_io.AudioError, match=needle):
        audio_io.decode(p)


def test_nan_samples_are_refused(tmp_path):
    x = tone(440, 0.1, 16000)
    x[10] = np.nan
    p = write_wav(tmp_path / "nan.wav", x, 16000, "FLOAT")
    with pytest.raises(audio_io.AudioError, match="NaN"):
        audio_io.decode(p)


def test_header_only_wav_is_empty(tmp_path):
    p = write_wav(tmp_path / "h.wav", np.zeros(0, np.float32), 16000)
    with pytest.raises(audio_io.AudioError, match="empty"):
        audio_io.decode(p)


@pytest.mark.parametrize("method", list(audio_io.RESAMPLERS))
def test_resampling_keeps_frequency_and_length(method):
    x = tone(1000.0, 1.0, 44100)
    y = audio_io.resample(x, 44100, 16000, method)
    assert y.dtype == np.float32 and abs(len(y) - 16000) <= 1
    spectrum = np.abs(np.fft.rfft(y[2000:14000] * np.hanning(12000)))
    peak_hz = np.argmax(spectrum) * 16000 / 12000
    assert abs(peak_hz - 1000.0) < 2.0


def test_decoded_resamples_once_per_rate_and_method():
    d = audio_io.Decoded(tone(440, 0.5, 44100), 44100)
    a = d.at(16000, "soxr_hq")
    assert d.at(16000, "soxr_hq") is a
    assert d.at(16000, "kaiser_best") is not a
    assert d.at(44100, "soxr_hq") is d.audio
    assert set(d.resample_seconds) == {(16000, "soxr_hq", None), (16000, "kaiser_best", "float32")}


