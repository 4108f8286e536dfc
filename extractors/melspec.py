"""Log-mel spectrogram: the weight-free baseline audio embedding.

16 kHz mono -> periodic-Hann STFT (centred frames, zero padding) -> power
spectrum -> Slaney mel filterbank -> 10*log10(max(mel, 1e-10)) dB ->
normalization over the whole file (`standard`: zero mean, unit variance;
`none`: raw dB). Frames (T, n_mels) at hop / 16000 s, or with
`pooling: mean` one (n_mels,) vector, as in the classic "mel spectrogram
as audio embedding" recipe.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from embedkit.extractors.base import ConfigError, Extractor, Features, OutputSpec, Param

SAMPLE_RATE = 16000
# STFT frames processed at once: bounds memory on hour-long files.
_CHUNK_FRAMES = 8192


def _positive_int(x: Any) -> bool:
    return isinstance(x, int) and x > 0


# Slaney's mel scale (Auditory Toolbox): linear below 1 kHz, logarithmic above.
_HZ_PER_MEL = 200.0 / 3
_BREAK_HZ = 1000.0
_BREAK_MEL = _BREAK_HZ / _HZ_PER_MEL
_LOG_STEP = np.log(6.4) / 27.0  # mels per log-Hz step above the break


def hz_to_mel(hz: np.ndarray | float) -> np.ndarray:
    hz = np.atleast_1d(np.asarray(hz, dtype=np.float64))
    mel = hz / _HZ_PER_MEL
    high = hz >= _BREAK_HZ
    mel[high] = _BREAK_MEL + np.log(hz[high] / _BREAK_HZ) / _LOG_STEP
    return mel


def mel_to_hz(mel: np.ndarray) -> np.ndarray:
    mel = np.asarray(mel, dtype=np.float64)
    hz = _HZ_PER_MEL * mel
    high = mel >= _BREAK_MEL
    hz[high] = _BREAK_HZ * np.exp(_LOG_STEP * (mel[high] - _BREAK_MEL))
    return hz


def mel_filterbank(n_fft: int, n_mels: int, fmin: float, fmax: float) -> np.ndarray:
    """(n_mels, n_fft // 2 + 1) Slaney-style mel filterbank: triangles between consecutive mel
    edges, each scaled to unit area (2 / width in Hz). Built in float32, as librosa builds its
    default one (the tests check they are equal), then widened to float64.

    Plain numpy: importing librosa (and scipy.signal behind it) cost seconds at every start.
    """
    bins_hz = np.fft.rfftfreq(n_fft, 1.0 / SAMPLE_RATE)
    lo, hi = hz_to_mel(fmin)[0], hz_to_mel(fmax)[0]
    edges = mel_to_hz(np.linspace(lo, hi, n_mels + 2))
    widths = np.diff(edges)
    distance = np.subtract.outer(edges, bins_hz)  # edge minus bin frequency
    fbank = np.zeros((n_mels, bins_hz.shape[0]), dtype=np.float32)
    for i in range(n_mels):
        rising = -distance[i] / widths[i]
        falling = distance[i + 2] / widths[i + 1]
        fbank[i] = np.maximum(0, np.minimum(rising, falling))
    fbank *= (2.0 / (edges[2 : n_mels + 2] - edges[:n_mels]))[:, np.newaxis]
    return fbank.astype(np.float64)


def mel_power(audio: np.ndarray, n_fft: int, hop: int, fbank: np.ndarray) -> np.ndarray:
    """(T, n_mels) float64 mel-filtered |STFT|^2 with centred frames, T = 1 + N // hop.

    Computed in chunks of frames, so only the (T, n_mels) result grows with the file.
    """
    padded = np.pad(audio, (n_fft // 2, n_fft // 2))  # float32; blocks go float64 below
    n_frames = 1 + audio.shape[0] // hop
    window = 0.5 - 0.5 * np.cos(2 * np.pi * np.arange(n_fft) / n_fft)  # periodic Hann
    frames = np.lib.stride_tricks.sliding_window_view(padded, n_fft)[::hop][:n_frames]
    out = np.empty((n_frames, fbank.shape[0]), dtype=np.float64)
    for start in range(0, n_frames, _CHUNK_FRAMES):
        block = frames[start : start + _CHUNK_FRAMES].astype(np.float64) * window
        out[start : start + _CHUNK_FRAMES] = (np.abs(np.fft.rfft(block, axis=1)) ** 2) @ fbank.T
    return out


class MelSpectrogram(Extractor):
    name = "melspec"
    sample_rate = SAMPLE_RATE
    resampler = "soxr_hq"
    weights_license = "no weights"
    params = {
        "n_mels": Param(64, int, "mel bands", check=_positive_int, allowed="an integer > 0"),
        "n_fft": Param(400, int, "FFT size in samples (25 ms)",
                       check=_positive_int, allowed="an integer > 0"),
        "hop_length": Param(160, int, "hop in samples (10 ms)",
                            check=_positive_int, allowed="an integer > 0"),
        "fmin": Param(0.0, float, "lowest mel edge, Hz", check=lambda x: x >= 0, allowed="a number >= 0"),
        "fmax": Param(8000.0, float, "highest mel edge, Hz",
                      check=lambda x: 0 < x <= 8000, allowed="0 < fmax <= 8000"),
        "normalize": Param("standard", str, "per-file normalization of the dB values",
                           choices=("standard", "none")),
        "pooling": Param("none", str, "'mean' averages over time", choices=("none", "mean")),
    }

    @classmethod
    def check_combination(cls, config: dict[str, Any]) -> None:
        if config["fmin"] >= config["fmax"]:
            raise ConfigError(f"melspec: fmin ({config['fmin']}) must be below fmax ({config['fmax']})")
        if config["n_mels"] > config["n_fft"] // 2 + 1:
            raise ConfigError(
                f"melspec: n_mels ({config['n_mels']}) exceeds the {config['n_fft'] // 2 + 1} "
                f"FFT bins of n_fft={config['n_fft']}; lower n_mels or raise n_fft"
            )

    def model_key(self) -> tuple:
        c = self.config
        return (self.name, c["n_fft"], c["n_mels"], c["fmin"], c["fmax"])

    def _load(self) -> np.ndarray:
        c = self.config
        return mel_filterbank(c["n_fft"], c["n_mels"], c["fmin"], c["fmax"])

    def output_spec(self, kind: str = "audio") -> OutputSpec:
        if self.config["pooling"] == "mean":
            return OutputSpec(axes=("dim",))
        return OutputSpec(axes=("time", "mel"), hop_seconds=self.config["hop_length"] / SAMPLE_RATE)

    def _extract(self, audio: np.ndarray) -> Features:
        c = self.config
        fbank = self.load()
        mel_db = mel_power(audio, c["n_fft"], c["hop_length"], fbank)
        np.log10(np.maximum(mel_db, 1e-10, out=mel_db), out=mel_db)
        mel_db *= 10.0
        if c["normalize"] == "standard":
            mel_db -= mel_db.mean()
            mel_db /= max(mel_db.std(), 1e-8)
        if c["pooling"] == "mean":
            return Features(mel_db.mean(axis=0).astype(np.float32))
        timestamps = np.arange(mel_db.shape[0]) * c["hop_length"] / SAMPLE_RATE
        return Features(mel_db.astype(np.float32), timestamps)

    def provenance(self) -> dict[str, Any]:
        out = super().provenance()
        out["versions"] = {"numpy": np.__version__}
        out["filterbank"] = "Slaney mel, unit-area triangles (equal to librosa.filters.mel's default)"
        return out
