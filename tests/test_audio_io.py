"""Decoding, mono mixing, resampling and discovery."""


import numpy as np
import pytest

from embedkit import audio_io
from tests.conftest import tone, write_wav
from tests.test_polyphase import U32, bound


def test_stereo_is_mixed_to_mono_mean(tmp_path):
    left, right = tone(440, 0.5, 22050, 0.5), tone(660, 0.5, 22050, 0.25)
    write_wav(tmp_path / "s.wav", np.stack([left, right], 1), 22050, "FLOAT")
    audio, sr = audio_io.decode(tmp_path / "s.wav")
    assert sr == 22050 and audio.dtype == np.float32 and audio.ndim == 1
    np.testing.assert_allclose(audio, (left + right) / 2, atol=1e-7)


@pytest.mark.parametrize("fmt, subtype",
                         [("wav", "PCM_24"), ("flac", "PCM_16"), ("ogg", None), ("aiff", "PCM_16")])
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
    (b"this is not audio at all" * 10, "not a decodable audio file.*holds text"),
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
    assert set(d.resample_seconds) == {(16000, "soxr_hq", None, "float32"),
                                       (16000, "kaiser_best", "float32", "float32")}


def test_float64_samples_for_a_plugin_that_takes_them():
    """dtype "float64" (OpenL3's librosa front-end): the float64 resampling unrounded, as
    resampy gives it on the float64 signal; at the file's own rate, the signal as float64."""
    x = _noisy(30000)
    d = audio_io.Decoded(x, 44100)
    y = d.at(48000, "kaiser_best", "float64", "float64")
    assert y.dtype == np.float64
    np.testing.assert_array_equal(y, audio_io.resampy_resample(x.astype(np.float64), 44100, 48000))
    np.testing.assert_array_equal(d.at(48000, "kaiser_best", "float64"), y.astype(np.float32))
    same = d.at(44100, "kaiser_best", "float64", "float64")
    assert same.dtype == np.float64 and np.array_equal(same, x)




# -- resampling precision (what a plugin's reference resamples in) ------------------------------
def _noisy(n: int, seed: int = 0) -> np.ndarray:
    """Tones and noise: every sample's rounding matters (no exactly representable sums)."""
    rng = np.random.default_rng(seed)
    t = np.arange(n) / 44100
    return (0.4 * np.sin(2 * np.pi * 440 * t) + 0.1 * rng.standard_normal(n)).astype(np.float32)


def _rounded_from(got32: np.ndarray, want64: np.ndarray, rel: float = 1e-12) -> None:
    """got32 is want64 (within rel of its max) rounded once to float32: each sample lies
    between the float32 roundings of want64 -/+ that margin (equal to want64's rounding
    unless want64 lies within the margin of a rounding boundary)."""
    tol = rel * np.abs(want64).max()
    assert got32.dtype == np.float32 and got32.shape == want64.shape
    lo, hi = (want64 - tol).astype(np.float32), (want64 + tol).astype(np.float32)
    assert ((got32 >= lo) & (got32 <= hi)).all()


def test_resampy_arithmetic_does_not_depend_on_what_ran_before(tmp_path, monkeypatch):
    """resampy's gufunc runs float32 input through its float64 loop once that loop exists, so
    the same call gives other samples after any float64 call. polyphase.resampy_loop gives
    what resampy gives in a fresh process (as in crepe's and openl3's own runs) bit for bit,
    whatever ran before, in blocks; the polyphase products (what audio_io runs) are within
    1e-12 of the float64 samples and within float32 rounding of the float32 ones."""
    import subprocess
    import sys

    import resampy

    from embedkit import polyphase

    x = _noisy(9000)
    np.save(tmp_path / "x.npy", x)
    fresh = (
        "import sys, numpy as np, resampy\n"
        "x = np.load(sys.argv[1])\n"
        "np.save(sys.argv[2], resampy.resample(x, 44100, 48000))  # first call: float32 loop\n"
        "np.save(sys.argv[3], resampy.resample(x.astype(np.float64), 44100, 48000))\n"
    )
    subprocess.run([sys.executable, "-c", fresh, str(tmp_path / "x.npy"), str(tmp_path / "f32.npy"),
                    str(tmp_path / "f64.npy")], check=True, timeout=300)
    want32, want64 = np.load(tmp_path / "f32.npy"), np.load(tmp_path / "f64.npy")
    assert want32.dtype == np.float32 and (want32 != want64.astype(np.float32)).mean() > 0.3

    resampy.resample(x.astype(np.float64), 44100, 48000)  # this process has the float64 loop now
    monkeypatch.setattr(polyphase, "_LOOP_BLOCK", 1009)  # several blocks against one whole call
    np.testing.assert_array_equal(polyphase.resampy_loop(x, 44100, 48000), want32)
    np.testing.assert_array_equal(polyphase.resampy_loop(x.astype(np.float64), 44100, 48000), want64)
    np.testing.assert_array_equal(polyphase.resampy_loop(x, 44100, 48000, precision="float64"), want64)
    # the products: float32 within each sample's bound (see test_polyphase)
    bound32 = bound(x, 44100, 48000, "kaiser_best", U32)
    for got in (audio_io.resampy_resample(x, 44100, 48000), audio_io.resample(x, 44100, 48000, "kaiser_best",
                                                                             "float32")):
        assert got.dtype == np.float32
        assert (np.abs(got.astype(np.float64) - want32) <= bound32).all()
    got64 = audio_io.resampy_resample(x.astype(np.float64), 44100, 48000)
    assert np.abs(got64 - want64).max() <= 1e-12 * np.abs(want64).max()
    _rounded_from(audio_io.resample(x, 44100, 48000, "kaiser_best", "float64"), want64)


@pytest.mark.parametrize("sr_in, sr_out", [(44100, 48000), (44100, 16000), (22050, 48000), (48000, 16000),
                                           (16000, 44100)])
@pytest.mark.parametrize("method", ["kaiser_best", "kaiser_fast"])
def test_float64_resampling_in_blocks_equals_one_call(monkeypatch, sr_in, sr_out, method):
    """Blocks with the filter's support around them give resampy's whole-signal float64 samples
    (to 1e-12 of max |y|, then rounded once to float32)."""
    import resampy

    from embedkit import polyphase

    monkeypatch.setattr(polyphase, "_BLOCK_OUT", 997)  # many blocks (16 rows each)
    x = _noisy(sr_in // 4 + 13, seed=sr_in + sr_out)
    residual = (np.random.default_rng(1).standard_normal(x.shape[0]) * 1e-9).astype(np.float32)
    whole = resampy.resample(x.astype(np.float64), sr_in, sr_out, filter=method)
    _rounded_from(audio_io.resample(x, sr_in, sr_out, method, "float64"), whole)
    # with a residual: the float64 signal x + residual, never held whole
    whole = resampy.resample(x.astype(np.float64) + residual, sr_in, sr_out, filter=method)
    got = audio_io.resampy_resample(x, sr_in, sr_out, method, "float64", residual=residual)
    assert got.dtype == np.float64 and np.abs(got - whole).max() <= 1e-12 * np.abs(whole).max()
    with pytest.raises(ValueError, match="precision"):
        audio_io.resample(x, sr_in, sr_out, method, "float16")


def test_short_signals_keep_the_expected_length():
    """Shorter than resampy's minimum: zero-extended (what the filter assumes beyond the end)."""
    from embedkit import polyphase

    for n in (1, 2, 3):  # resampy needs 4 samples at this ratio
        x = _noisy(n)
        y = audio_io.resample(x, 44100, 16000, "kaiser_best")
        assert y.shape == (int(np.ceil(n * 16000 / 44100)),)
        padded = np.pad(x, (0, 16 - n))  # zeros beyond the end change no output
        want = polyphase.resampy_loop(padded, 44100, 16000)[: y.shape[0]]
        assert (np.abs(y.astype(np.float64) - want) <= bound(padded, 44100, 16000, "kaiser_best", U32)[
            : y.shape[0]]).all()


def _write(path, data, sr, fmt=None, subtype=None):
    import soundfile as sf

    path.parent.mkdir(parents=True, exist_ok=True)
    sf.write(path, data, sr, format=fmt, subtype=subtype)
    return path


def test_decode_residual_recovers_the_float64_mix(tmp_path):
    """openl3 reads sf.read(path) as float64 and averages the channels; float32 plus the residual
    is that signal, and the float32 signal itself is unchanged (other models see the same)."""
    import soundfile as sf

    rng = np.random.default_rng(2)
    two = np.clip(0.3 * rng.standard_normal((5000, 2)), -1, 1)
    files = {
        "stereo_float.wav": (_write(tmp_path / "stereo_float.wav", two, 44100, subtype="FLOAT"), True),
        "mono_double.wav": (_write(tmp_path / "mono_double.wav", two[:, 0], 44100, subtype="DOUBLE"), True),
        "three_24bit.flac": (_write(tmp_path / "three_24bit.flac", np.c_[two, two[:, :1] * 0.7], 44100,
                                    subtype="PCM_24"), True),
        "stereo_mp3.mp3": (_write(tmp_path / "stereo_mp3.mp3", two, 44100, "MP3", "MPEG_LAYER_III"), True),
        "stereo_16bit.wav": (_write(tmp_path / "stereo_16bit.wav", two, 44100, subtype="PCM_16"), False),
        "mono_16bit.wav": (_write(tmp_path / "mono_16bit.wav", two[:, 0], 44100, subtype="PCM_16"), False),
    }
    for name, (path, lossy) in files.items():
        plain, sr = audio_io.decode(path)
        audio, sr2, residual = audio_io.decode_mono(path, residual=True)
        np.testing.assert_array_equal(audio, plain, err_msg=name)
        assert sr == sr2 == 44100
        assert (residual is not None) == lossy, name  # 16-bit mono/stereo: float32 holds the mean exactly
        x, _ = sf.read(path)
        want = np.mean(x, axis=1) if x.ndim == 2 else x
        both = audio.astype(np.float64) + (0 if residual is None else residual)
        np.testing.assert_allclose(both, want, rtol=0, atol=1e-15, err_msg=name)
        if name.startswith("stereo"):
            np.testing.assert_array_equal(both, want, err_msg=name)  # a half-sum of float32 values: exact


def test_media_resamples_from_the_float64_signal(tmp_path):
    """Media.audio(..., "float64") = openl3's signal, resampled in float64 and rounded once;
    also when the file was decoded earlier without the residual (it is read again for it)."""
    import resampy
    import soundfile as sf

    from embedkit import media

    rng = np.random.default_rng(3)
    path = _write(tmp_path / "s.wav", np.clip(0.3 * rng.standard_normal((6000, 2)), -1, 1), 22050,
                  subtype="FLOAT")
    x, sr = sf.read(path)
    want64 = resampy.resample(np.mean(x, axis=1), sr, 48000, filter="kaiser_best")
    want = want64.astype(np.float32)
    hinted = media.Media(path, residual=True)
    _rounded_from(hinted.audio(48000, "kaiser_best", "float64"), want64)
    late = media.Media(path)
    f32 = late.audio(48000, "kaiser_best")  # the float32 default first
    assert (f32 != want).mean() > 0.3
    _rounded_from(late.audio(48000, "kaiser_best", "float64"), want64)
    np.testing.assert_array_equal(late.audio(48000, "kaiser_best"), f32)  # both kept, each once
    # no resampling needed: the float64 mean rounded once
    np.testing.assert_array_equal(media.Media(path).audio(22050, "kaiser_best", "float64"),
                                  np.mean(x, axis=1).astype(np.float32))
