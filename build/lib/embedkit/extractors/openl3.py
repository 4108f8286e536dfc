"""OpenL3 audio embeddings: a PyTorch port that reproduces openl3 0.4.2 without TensorFlow.

OpenL3 (Cramer et al., "Look, Listen and Learn More: Design Choices for Deep
Audio Embeddings", ICASSP 2019) embeds 1 s windows of 48 kHz audio with an
L3-Net audio sub-network: a dB spectrogram (linear 257 bins, or mel 128/256
bands) -> input BatchNorm -> 4 blocks of two 3x3 convolutions (64, 128, 256,
512 channels; BatchNorm + ReLU after each but the last) with 2x2 max pools
between blocks -> a final max pool whose size sets the embedding size
(512 or 6144) -> channels-last flatten.

What this module reproduces from openl3 0.4.2 (marl/openl3 with kapre 0.4.1):

- windowing: resample to 48 kHz (resampy `kaiser_best`), optionally pad half a
  window of zeros at the start (`center`), zero-pad the end so every sample is
  covered, cut 1 s windows every `int(hop_size * 48000)` samples; the
  timestamps are `arange(T) * hop_size` (window centres with `center=True`,
  window starts without);
- the `kapre` front-end (openl3's default), in float32 as TensorFlow computes
  it: periodic Hann window, STFT hop 242 (mel: n_fft 2048 with zero padding at
  the end, 199 frames; linear: n_fft 512 without padding, 197 frames),
  magnitude, Slaney mel filterbank from librosa, then
  `10*log10(max(m, 1e-10))`, minus each window's maximum, floored at -80 dB;
- the `librosa` front-end, by calling librosa itself exactly as openl3 does;
- the network, with Keras' BatchNorm epsilon (1e-3) and 'same' padding.

Weights: the official Keras weight files `openl3_audio_<repr>_<content>.h5`
(from an explicit path, the cache, an installed openl3 package, or downloaded
from openl3's release location), or torchopenl3's converted `.pth.tar`
state dicts. See `find_weights` and docs/openl3.md.

Also here: an openl3-compatible API for people migrating
(`get_audio_embedding`, `process_audio_file`, `preprocess_audio`,
`load_audio_embedding_model`) with openl3's parameter names, defaults and
return shapes.
"""

from __future__ import annotations

import gzip
import os
import re
import warnings
from dataclasses import dataclass, field
from numbers import Real
from pathlib import Path
from typing import Any, Iterator, Sequence

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from extractors.base import (
    Extractor,
    Features,
    OutputSpec,
    Param,
    WeightFile,
    WeightsError,
    torch_device,
)

# ---------------------------------------------------------------------------
# Constants of openl3 0.4.2
# ---------------------------------------------------------------------------
TARGET_SR = 48000  # Hz; every window is one second at this rate
WINDOW = TARGET_SR  # samples per window
STFT_HOP = 242  # samples between spectrogram frames (both front-ends)
INPUT_REPRS = ("linear", "mel128", "mel256")
CONTENT_TYPES = ("music", "env")
EMBEDDING_SIZES = (512, 6144)
FRONTENDS = ("kapre", "librosa")
DB_AMIN = 1e-10  # magnitude floor before the log
DB_RANGE = 80.0  # dB kept below each window's maximum
BN_EPS = 1e-3  # Keras BatchNormalization default
CHANNELS = (64, 64, 128, 128, 256, 256, 512, 512)  # the 8 convolutions

# Final max-pool size (freq, time) per representation and embedding size: it
# divides the last feature map ((32|16), 24) exactly.
POOL_SIZES = {
    "linear": {6144: (8, 8), 512: (32, 24)},
    "mel128": {6144: (4, 8), 512: (16, 24)},
    "mel256": {6144: (8, 8), 512: (32, 24)},
}

OFFICIAL_URL = "https://github.com/marl/openl3/raw/models/openl3_audio_{repr}_{content}-v0_4_0.h5.gz"
TORCHOPENL3_URL = (
    "https://github.com/torchopenl3/torchopenl3-models/raw/master/"
    "torchopenl3_{repr}_{content}_{size}.pth.tar"
)


class OpenL3Error(ValueError):
    """Invalid input to the openl3-compatible API (same name as openl3's)."""


class OpenL3Warning(UserWarning):
    """Audio shorter than a window, or all zeros (same name as openl3's)."""


# ---------------------------------------------------------------------------
# Windowing (openl3 core._preprocess_audio_batch)
# ---------------------------------------------------------------------------
def hop_samples(hop_size: float) -> int:
    """Window hop in samples at 48 kHz, truncated as openl3 does: int(hop_size * 48000)."""
    return int(hop_size * TARGET_SR)


def num_windows(n_samples: int, hop_len: int, center: bool) -> int:
    """Number of 1 s windows openl3 cuts from `n_samples` samples at 48 kHz.

    With `center`, half a window of zeros precedes the audio; the end is
    zero-padded so the last window reaches past the last sample.
    """
    if n_samples <= 0:
        raise OpenL3Error("Got empty audio")
    length = n_samples + (WINDOW // 2 if center else 0)
    if length <= WINDOW:
        return 1
    return 1 + -(-(length - WINDOW) // hop_len)  # ceil division, exact for ints


def timestamps(n: int, hop_size: float) -> np.ndarray:
    """openl3's timestamps: arange(n) * hop_size seconds, float64."""
    return np.arange(n) * hop_size


def padded_segment(audio: np.ndarray, lo: int, hi: int, center: bool) -> np.ndarray:
    """Samples [lo, hi) of openl3's padded signal (centre zeros + audio + end zeros).

    Reads only what it needs, so windows of an hour-long file can be made a
    chunk at a time. Keeps the dtype of `audio`.
    """
    offset = WINDOW // 2 if center else 0
    out = np.zeros(hi - lo, dtype=audio.dtype)
    a0, a1 = max(lo - offset, 0), min(hi - offset, audio.shape[0])
    if a1 > a0:
        out[a0 + offset - lo : a1 + offset - lo] = audio[a0:a1]
    return out


def iter_window_chunks(
    audio: np.ndarray, hop_len: int, center: bool, chunk: int
) -> Iterator[tuple[int, np.ndarray, np.ndarray]]:
    """Yield (first window index, signal segment, window starts in the segment) per chunk.

    Window j of a chunk is `segment[starts[j] : starts[j] + 48000]`; at most
    `chunk` windows per chunk.
    """
    n = num_windows(audio.shape[0], hop_len, center)
    for w0 in range(0, n, chunk):
        w1 = min(n, w0 + chunk)
        lo, hi = w0 * hop_len, (w1 - 1) * hop_len + WINDOW
        yield w0, padded_segment(audio, lo, hi, center), np.arange(w1 - w0) * hop_len


def frame_windows(audio: np.ndarray, hop_size: float = 0.1, center: bool = True) -> np.ndarray:
    """All windows of a 48 kHz signal, (T, 48000), dtype kept (small inputs; tests, API)."""
    hop_len = hop_samples(hop_size)
    n = num_windows(audio.shape[0], hop_len, center)
    seg = padded_segment(audio, 0, (n - 1) * hop_len + WINDOW, center)
    return np.lib.stride_tricks.sliding_window_view(seg, WINDOW)[::hop_len].copy()


# ---------------------------------------------------------------------------
# Front-ends: windows -> dB spectrogram (B, F, T)
# ---------------------------------------------------------------------------
def spectrogram_shape(input_repr: str) -> tuple[int, int]:
    """(frequency bins, frames) of the network input for one window."""
    if input_repr == "linear":
        return 257, 1 + (WINDOW - 512) // STFT_HOP  # (257, 197)
    return int(input_repr[3:]), -(-WINDOW // STFT_HOP)  # (n_mels, 199)


def tf_hann_window(n: int) -> np.ndarray:
    """Periodic Hann window computed in float32 the way tf.signal.hann_window does."""
    arg = np.float32(2 * np.pi) * np.arange(n, dtype=np.float32) / np.float32(n)
    return (np.float32(0.5) - np.float32(0.5) * np.cos(arg)).astype(np.float32)


_MEL_CACHE: dict[int, tuple[np.ndarray, Any]] = {}


def mel_filterbank(n_mels: int) -> np.ndarray:
    """kapre's mel filterbank: librosa's Slaney mel (float32), (1025, n_mels)."""
    return _mel(n_mels)[0]


def _mel(n_mels: int) -> tuple[np.ndarray, Any]:
    """(dense (1025, n_mels), sparse CSR (n_mels, 1025)) filterbank, built once."""
    if n_mels not in _MEL_CACHE:
        import librosa
        import scipy.sparse

        fb = librosa.filters.mel(
            sr=TARGET_SR, n_fft=2048, n_mels=n_mels, fmin=0.0, fmax=None, htk=False, norm="slaney"
        )
        fb = fb.astype(np.float32)
        _MEL_CACHE[n_mels] = (np.ascontiguousarray(fb.T), scipy.sparse.csr_matrix(fb))
    return _MEL_CACHE[n_mels]


def apply_mel(mag: np.ndarray, n_mels: int) -> np.ndarray:
    """Mel bands of magnitudes (..., 1025) -> (..., n_mels), float32.

    The filterbank is ~99 % zeros, so it is applied as a sparse matrix: each
    band sums only its own bins (adding the zeros would not change a sum), in
    a fixed order whatever the batch.
    """
    sparse = _mel(n_mels)[1]
    flat = mag.reshape(-1, mag.shape[-1])
    out = np.asarray(sparse @ flat.T, dtype=np.float32).T
    return out.reshape(mag.shape[:-1] + (n_mels,))


def kapre_db(mag: np.ndarray) -> np.ndarray:
    """openl3's kapre dB scaling in float32, per example over all but the first axis.

    10*log10(max(m, 1e-10)) (as log(m)/log(10)), minus the example's maximum,
    floored at -80 dB.
    """
    mag = mag.astype(np.float32, copy=False)
    log_spec = np.float32(10.0) * (np.log(np.maximum(mag, np.float32(DB_AMIN))) / np.log(np.float32(10.0)))
    peak = log_spec.max(axis=tuple(range(1, log_spec.ndim)), keepdims=True)
    return np.maximum(log_spec - peak, np.float32(-DB_RANGE))


def _rfft_magnitude(frames: np.ndarray) -> np.ndarray:
    """|rfft| of float32 frames (..., n) computed in float32 (pocketfft, as TF's DUCC)."""
    import scipy.fft

    return np.abs(scipy.fft.rfft(frames, axis=-1))


def kapre_spectrogram(signal: np.ndarray, starts: np.ndarray, input_repr: str) -> np.ndarray:
    """kapre front-end of the windows `signal[s : s + 48000]`, s in `starts`: (B, F, T) float32.

    An STFT frame that lies wholly inside its window depends only on the
    samples it covers, so frames shared by overlapping windows (window hop a
    multiple of 242 samples) are transformed once; each frame's numbers are
    the same whichever windows share it. Frames that run past a window's end
    (mel: zero padding at the end, as tf.signal.stft(pad_end=True)) are built
    per window.
    """
    signal = np.asarray(signal, dtype=np.float32)
    starts = np.asarray(starts, dtype=np.int64)
    n_fft = 512 if input_repr == "linear" else 2048
    _, n_frames = spectrogram_shape(input_repr)
    window = tf_hann_window(n_fft)
    rel = np.arange(n_frames) * STFT_HOP  # frame starts within a window
    inside = rel + n_fft <= WINDOW
    n_in = int(inside.sum())
    idx = np.arange(n_fft)

    # Frames inside the windows: each distinct position once.
    pos = (starts[:, None] + rel[None, :n_in]).ravel()
    uniq, inverse = np.unique(pos, return_inverse=True)
    frames = np.lib.stride_tricks.sliding_window_view(signal, n_fft)[uniq]  # (U, n_fft) copy
    frames *= window
    mag_u = _rfft_magnitude(frames)
    mag = np.empty((starts.shape[0], n_frames, n_fft // 2 + 1), dtype=np.float32)
    mag[:, :n_in] = mag_u[inverse].reshape(starts.shape[0], n_in, -1)

    # Frames past the window end: the window's own tail, then zeros.
    if n_in < n_frames:
        tail = np.zeros((starts.shape[0], n_frames - n_in, n_fft), dtype=np.float32)
        for k, r in enumerate(rel[n_in:]):
            valid = WINDOW - r
            tail[:, k, :valid] = signal[starts[:, None] + r + idx[None, :valid]]
        mag[:, n_in:] = _rfft_magnitude(tail * window)

    if input_repr != "linear":
        mag = apply_mel(mag, int(input_repr[3:]))
    return np.ascontiguousarray(kapre_db(mag).transpose(0, 2, 1))


def kapre_frontend(windows: np.ndarray, input_repr: str) -> np.ndarray:
    """kapre front-end of (B, 48000) windows (cast to float32 like Keras' input): (B, F, T)."""
    windows = np.asarray(windows, dtype=np.float32).reshape(-1, WINDOW)
    return kapre_spectrogram(windows.ravel(), np.arange(windows.shape[0]) * WINDOW, input_repr)


def librosa_frontend(windows: np.ndarray, input_repr: str) -> np.ndarray:
    """openl3's librosa front-end, one librosa call per window as openl3 makes them: (B, F, T).

    Computed in the dtype of `windows` (openl3 gets float64 from soundfile).
    """
    import librosa

    windows = np.asarray(windows).reshape(-1, WINDOW)
    out = []
    for w in windows:
        if input_repr == "linear":
            s = np.abs(librosa.stft(y=w, n_fft=512, hop_length=STFT_HOP, center=False))
        else:
            s = librosa.feature.melspectrogram(
                y=w, sr=TARGET_SR, n_mels=int(input_repr[3:]), n_fft=2048, hop_length=STFT_HOP,
                center=True, power=1.0,
            )
        s = librosa.power_to_db(S=s, ref=1.0, amin=DB_AMIN, top_db=DB_RANGE)
        out.append(s - s.max())
    return np.stack(out)


# ---------------------------------------------------------------------------
# The network
# ---------------------------------------------------------------------------
class OpenL3AudioNet(nn.Module):
    """L3-Net audio sub-network (openl3 0.4.2), without its spectrogram front-end.

    Input (B, 1, F, T) float32 dB spectrogram (F: frequency, T: frames);
    output the last convolution's map (B, 512, F // 8, T // 8) before the
    embedding pool (see `pool_embedding`). The BatchNorm after each of the
    first seven convolutions is folded into that convolution's weights by
    `build_network` (same function, two fewer memory passes per layer).
    """

    def __init__(self) -> None:
        super().__init__()
        self.bn_in = nn.BatchNorm2d(1, eps=BN_EPS)  # acts on the dB spectrogram itself
        c_in = (1,) + CHANNELS[:-1]
        self.convs = nn.ModuleList(nn.Conv2d(a, b, 3, padding=1) for a, b in zip(c_in, CHANNELS))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.bn_in(x)
        last = len(self.convs) - 1
        for i, conv in enumerate(self.convs):
            x = conv(x)
            if i == last:
                break  # the embedding layer has no BatchNorm / ReLU
            x = F.relu_(x)
            if i in (1, 3, 5):
                x = F.max_pool2d(x, 2)  # 2x2, stride 2, floor (257 -> 128, 199 -> 99)
        return x


def pool_embedding(fmap: torch.Tensor, input_repr: str, embedding_size: int) -> torch.Tensor:
    """Final max pool and channels-last flatten: (B, 512, h, w) -> (B, embedding_size)."""
    k = POOL_SIZES[input_repr][embedding_size]
    y = F.max_pool2d(fmap, kernel_size=k, stride=k)
    return y.permute(0, 2, 3, 1).reshape(y.shape[0], -1)


# ---------------------------------------------------------------------------
# Weights: canonical form, loaders for both layouts, random weights
# ---------------------------------------------------------------------------
# Canonical state: {"bn_in": (gamma, beta, mean, var), "conv0".."conv7": (kernel OIHW, bias),
# "bn0".."bn6": (gamma, beta, mean, var)}, numpy float32.


def _decode(names: Any) -> list[str]:
    return [n.decode() if isinstance(n, bytes) else str(n) for n in names]


def read_keras_h5(path: str | os.PathLike) -> dict[str, tuple[np.ndarray, ...]]:
    """Canonical state from a Keras weights-only HDF5 file (openl3's layout).

    Keras loads such a file by layer order, not by name: the root attribute
    `layer_names` gives the order and each layer group's `weight_names` the
    order of its tensors. Layers without weights (input, activations, pools,
    an empty kapre spectrogram layer) are skipped, as are the spectrogram
    layers of pre-0.4 files. Expects 16 weighted layers alternating
    BatchNorm (4 tensors) and Conv2D (2 tensors), starting with BatchNorm.
    """
    import h5py

    with h5py.File(path, "r") as f:
        root = f["model_weights"] if "model_weights" in f else f  # full-model saves nest weights
        if "layer_names" not in root.attrs:
            raise WeightsError(f"{path}: not a Keras HDF5 weight file (no 'layer_names' attribute)")
        layers = []
        for lname in _decode(root.attrs["layer_names"]):
            if "spectrogram" in lname:
                continue  # kapre 0.1.x STFT kernels of old files; our front-end computes these
            group = root[lname]
            wnames = _decode(group.attrs.get("weight_names", []))
            if wnames:
                layers.append((lname, [np.asarray(group[w], dtype=np.float32) for w in wnames]))
    kinds = [len(t) for _, t in layers]
    if kinds != [4, 2] * 8:
        raise WeightsError(
            f"{path}: expected 16 weighted layers alternating BatchNorm and Conv2D (openl3's audio "
            f"network), found {[name for name, _ in layers]}"
        )
    state: dict[str, tuple[np.ndarray, ...]] = {}
    for i in range(8):
        bn = tuple(layers[2 * i][1])
        kernel, bias = layers[2 * i + 1][1]
        state["bn_in" if i == 0 else f"bn{i - 1}"] = bn
        state[f"conv{i}"] = (np.ascontiguousarray(kernel.transpose(3, 2, 0, 1)), bias)  # HWIO -> OIHW
    _check_state(state, str(path))
    return state


def read_torchopenl3(path: str | os.PathLike) -> dict[str, tuple[np.ndarray, ...]]:
    """Canonical state from torchopenl3's `.pth.tar` state dict (its spectrogram buffers are ignored)."""
    try:
        sd = torch.load(str(path), map_location="cpu", weights_only=True)
    except Exception as exc:
        raise WeightsError(
            f"{path}: cannot read as a PyTorch state dict ({type(exc).__name__}: {exc})"
        ) from None
    if isinstance(sd, dict) and "state_dict" in sd and isinstance(sd["state_dict"], dict):
        sd = sd["state_dict"]

    def get(key: str) -> np.ndarray:
        if key not in sd:
            raise WeightsError(
                f"{path}: torchopenl3 state dict lacks {key!r}; is it a torchopenl3 audio model?"
            )
        return sd[key].detach().cpu().numpy().astype(np.float32)

    def bn(name: str) -> tuple[np.ndarray, ...]:
        return tuple(get(f"{name}.{k}") for k in ("weight", "bias", "running_mean", "running_var"))

    convs = [f"conv2d_{i}" for i in range(1, 8)] + ["audio_embedding_layer"]
    state: dict[str, tuple[np.ndarray, ...]] = {"bn_in": bn("batch_normalization_1")}
    for i, name in enumerate(convs):
        state[f"conv{i}"] = (get(f"{name}.weight"), get(f"{name}.bias"))
        if i < 7:
            state[f"bn{i}"] = bn(f"batch_normalization_{i + 2}")
    _check_state(state, str(path))
    return state


def _check_state(state: dict[str, tuple[np.ndarray, ...]], where: str) -> None:
    c_in = (1,) + CHANNELS[:-1]
    want = {"bn_in": (1,)}
    for i, (a, b) in enumerate(zip(c_in, CHANNELS)):
        want[f"conv{i}"] = (b, a, 3, 3)
        if i < 7:
            want[f"bn{i}"] = (b,)
    for key, shape in want.items():
        got = tuple(state[key][0].shape)
        if got != shape:
            raise WeightsError(f"{where}: {key} has shape {got}, expected {shape}; not an OpenL3 audio model")


def random_state(seed: int = 0) -> dict[str, tuple[np.ndarray, ...]]:
    """Architecture-identical seeded random weights (benchmarks and shape tests only)."""
    rng = np.random.default_rng(seed)
    c_in = (1,) + CHANNELS[:-1]

    def bn(c: int, mean: float = 0.0, var: float = 1.0) -> tuple[np.ndarray, ...]:
        return (
            rng.uniform(0.5, 1.5, c).astype(np.float32),
            rng.normal(0, 0.1, c).astype(np.float32),
            np.full(c, mean, np.float32),
            np.full(c, var, np.float32),
        )

    state: dict[str, tuple[np.ndarray, ...]] = {"bn_in": bn(1, -40.0, 300.0)}
    for i, (a, b) in enumerate(zip(c_in, CHANNELS)):
        w = rng.normal(0, np.sqrt(2.0 / (9 * a)), (b, a, 3, 3)).astype(np.float32)  # He normal
        state[f"conv{i}"] = (w, rng.normal(0, 0.01, b).astype(np.float32))
        if i < 7:
            state[f"bn{i}"] = bn(b)
    return state


def fold_batchnorm(
    kernel: np.ndarray, bias: np.ndarray, bn: tuple[np.ndarray, ...]
) -> tuple[np.ndarray, np.ndarray]:
    """Conv followed by inference BatchNorm as one conv (computed in float64, stored float32).

    BN(z) = gamma * (z - mean) / sqrt(var + eps) + beta with z = conv(x) + bias.
    """
    gamma, beta, mean, var = (np.asarray(a, np.float64) for a in bn)
    scale = gamma / np.sqrt(var + BN_EPS)
    k = np.asarray(kernel, np.float64) * scale[:, None, None, None]
    b = (np.asarray(bias, np.float64) - mean) * scale + beta
    return k.astype(np.float32), b.astype(np.float32)


def build_network(state: dict[str, tuple[np.ndarray, ...]]) -> OpenL3AudioNet:
    """An eval-mode OpenL3AudioNet holding `state` (canonical form), BatchNorms folded."""
    net = OpenL3AudioNet()
    gamma, beta, mean, var = (torch.from_numpy(np.ascontiguousarray(a, np.float32)) for a in state["bn_in"])
    net.bn_in.weight.data.copy_(gamma)
    net.bn_in.bias.data.copy_(beta)
    net.bn_in.running_mean.copy_(mean)
    net.bn_in.running_var.copy_(var)
    for i, conv in enumerate(net.convs):
        kernel, bias = state[f"conv{i}"]
        if i < 7:
            kernel, bias = fold_batchnorm(kernel, bias, state[f"bn{i}"])
        conv.weight.data.copy_(torch.from_numpy(np.ascontiguousarray(kernel)))
        conv.bias.data.copy_(torch.from_numpy(np.ascontiguousarray(bias)))
    return net.eval()


# ---------------------------------------------------------------------------
# Finding the weight files
# ---------------------------------------------------------------------------
def official_filename(input_repr: str, content_type: str) -> str:
    return f"openl3_audio_{input_repr}_{content_type}.h5"


def torchopenl3_filenames(input_repr: str, content_type: str) -> list[str]:
    # torchopenl3 publishes one file per embedding size; the network weights are the same.
    return [f"torchopenl3_{input_repr}_{content_type}_{size}.pth.tar" for size in (6144, 512)]


def _openl3_package_dirs() -> list[Path]:
    """Folders of an installed openl3 package (found without importing it: that would import TF)."""
    import importlib.util

    try:
        spec = importlib.util.find_spec("openl3")
    except (ImportError, ValueError):
        return []
    if spec is None or not spec.submodule_search_locations:
        return []
    return [Path(p) for p in spec.submodule_search_locations]


def _torch_hub_dir() -> Path:
    return Path(torch.hub.get_dir()) / "checkpoints"


def _weight_format(path: Path) -> str:
    with open(path, "rb") as f:
        head = f.read(8)
    if head.startswith(b"\x89HDF"):
        return "keras-h5"
    if head.startswith(b"\x1f\x8b"):
        raise WeightsError(f"{path} is gzip-compressed (as openl3 publishes it); gunzip it first")
    return "torchopenl3-pth"


_NAME_PATTERN = re.compile(r"(linear|mel128|mel256)_(music|env)")


def _check_name(path: Path, input_repr: str, content_type: str) -> None:
    """Refuse a file whose name says it is another configuration (all have the same shapes)."""
    m = _NAME_PATTERN.search(path.name)
    if m and (m.group(1), m.group(2)) != (input_repr, content_type):
        raise WeightsError(
            f"openl3: {path} holds the {m.group(1)}/{m.group(2)} weights but this configuration is "
            f"input_repr={input_repr}, content_type={content_type}; point `weights:` at "
            f"{official_filename(input_repr, content_type)} (or set input_repr/content_type to match)"
        )


def find_weights(
    input_repr: str,
    content_type: str,
    local_path: str | os.PathLike | None = None,
    allow_download: bool = True,
) -> Path:
    """Path of the weights for (input_repr, content_type), found or downloaded.

    Order: `local_path` (a file, or a folder holding the official `.h5` or a
    torchopenl3 `.pth.tar`); the cache `$EMBEDKIT_CACHE/openl3/` (both names);
    an installed openl3 package; torch hub's checkpoint folder (torchopenl3
    downloads); a download of the official gzipped file into the cache.
    Raises WeightsError naming every place looked at.
    """
    import weights

    h5 = official_filename(input_repr, content_type)
    names = [h5] + torchopenl3_filenames(input_repr, content_type)
    if local_path is not None:
        p = Path(local_path).expanduser()
        if p.is_file():
            _check_name(p, input_repr, content_type)
            return p
        if p.is_dir():
            for name in names:
                if (p / name).is_file():
                    return p / name
        raise WeightsError(
            f"openl3: weights path {p} is neither a weight file nor a folder holding one of "
            f"{', '.join(names)}. Point `weights:` for openl3 at {h5} (official openl3 0.4 file) "
            "or a torchopenl3 .pth.tar."
        )
    cache = weights.model_cache_dir("openl3")
    places = [cache / n for n in names]
    places += [d / h5 for d in _openl3_package_dirs()]
    places += [_torch_hub_dir() / n for n in names[1:]]
    for cand in places:
        if cand.is_file():
            return cand
    looked = [str(p) for p in places]
    url = OFFICIAL_URL.format(repr=input_repr, content=content_type)
    if allow_download and not weights.offline():
        try:
            return _download_official(url, cache / h5)
        except WeightsError:
            raise
        except Exception as exc:
            looked.append(f"{url} (download failed: {type(exc).__name__}: {exc})")
    else:
        looked.append(f"{url} (not downloaded: offline mode)")
    raise weights.missing(
        "openl3", h5, looked,
        f"download {url} and gunzip it to {cache / h5} (or set ${weights.CACHE_ENV}); or copy "
        f"{h5} from an installed openl3 package (pip install openl3 puts it in site-packages/openl3/); "
        f"or use torchopenl3's {names[1]} (from "
        f"{TORCHOPENL3_URL.format(repr=input_repr, content=content_type, size=6144)})",
    )


def _download_official(url: str, dest: Path) -> Path:
    """Download openl3's gzipped weight file and unpack it atomically to `dest`."""
    import weights

    gz = dest.with_name(dest.name + ".gz")
    weights.download(url, gz)
    try:
        with gzip.open(gz, "rb") as src:
            return weights.save_stream(src, dest)
    finally:
        gz.unlink(missing_ok=True)


def read_weights(path: str | os.PathLike) -> dict[str, tuple[np.ndarray, ...]]:
    """Canonical state from either layout (detected from the file's first bytes)."""
    path = Path(path)
    return read_keras_h5(path) if _weight_format(path) == "keras-h5" else read_torchopenl3(path)


# ---------------------------------------------------------------------------
# Running the network on batches
# ---------------------------------------------------------------------------
@dataclass
class LoadedModel:
    """A network on its device and where its weights came from."""

    net: OpenL3AudioNet
    device: str
    source: dict[str, Any] = field(default_factory=dict)


def load_network(
    input_repr: str, content_type: str, device: str = "cpu", weights_path: str | None = None
) -> LoadedModel:
    """Find (or, with weights_path="random", make) the weights and build the network on `device`."""
    import weights

    if weights_path == "random":
        state, source = random_state(0), {"weights": "random", "seed": 0}
    else:
        path = find_weights(input_repr, content_type, weights_path)
        state = read_weights(path)
        source = {
            "weights": str(path),
            "format": _weight_format(path),
            "weights_sha256": weights.sha256sum(path),
            "official_url": OFFICIAL_URL.format(repr=input_repr, content=content_type),
        }
    device = torch_device(device)
    net = build_network(state).to(device)
    net = net.to(memory_format=torch.channels_last)  # faster convolutions, same numbers
    return LoadedModel(net, device, source)


def run_network(
    model: LoadedModel,
    spectrograms: np.ndarray,
    input_repr: str,
    embedding_size: int,
    cuda_dtype: str = "float16",
) -> np.ndarray:
    """Embeddings of (B, F, T) dB spectrograms: (B, embedding_size) float32.

    float32 on CPU (deterministic, batch-size independent); on CUDA under
    autocast with `cuda_dtype` unless that is "float32".
    """
    x = torch.from_numpy(np.ascontiguousarray(spectrograms, dtype=np.float32))[:, None]
    x = x.to(model.device).contiguous(memory_format=torch.channels_last)
    on_cuda = str(model.device).startswith("cuda")
    with torch.inference_mode():
        if on_cuda and cuda_dtype != "float32":
            with torch.autocast("cuda", dtype=getattr(torch, cuda_dtype)):
                fmap = model.net(x)
        else:
            fmap = model.net(x)
        emb = pool_embedding(fmap.float(), input_repr, embedding_size)
    return emb.cpu().numpy().astype(np.float32, copy=False)


def _spectrogram_chunk(segment: np.ndarray, starts: np.ndarray, input_repr: str, frontend: str) -> np.ndarray:
    if frontend == "kapre":
        return kapre_spectrogram(segment, starts, input_repr)
    windows = np.stack([segment[s : s + WINDOW] for s in starts])
    return librosa_frontend(windows, input_repr)


def embed_signal(
    model: LoadedModel,
    audio: np.ndarray,
    input_repr: str,
    embedding_size: int,
    hop_size: float,
    center: bool,
    frontend: str,
    batch_size: int,
    cuda_dtype: str = "float16",
) -> tuple[np.ndarray, np.ndarray]:
    """(embeddings (T, D) float32, timestamps (T,) float64) of a 48 kHz mono signal.

    Windows are made, transformed and embedded `batch_size` at a time, so
    memory stays bounded for long files.
    """
    hop_len = hop_samples(hop_size)
    n = num_windows(audio.shape[0], hop_len, center)
    out = np.empty((n, embedding_size), dtype=np.float32)
    for w0, segment, starts in iter_window_chunks(audio, hop_len, center, batch_size):
        spec = _spectrogram_chunk(segment, starts, input_repr, frontend)
        out[w0 : w0 + len(starts)] = run_network(model, spec, input_repr, embedding_size, cuda_dtype)
    return out, timestamps(n, hop_size)


# ---------------------------------------------------------------------------
# The plugin
# ---------------------------------------------------------------------------
def _valid_hop(h: Any) -> bool:
    return isinstance(h, float) and np.isfinite(h) and h > 0 and hop_samples(h) >= 1


class OpenL3(Extractor):
    """OpenL3 audio embeddings, (T, embedding_size) float32 per file."""

    name = "openl3"
    sample_rate = TARGET_SR
    resampler = "kaiser_best"  # what openl3 uses (resampy); soxr_hq is faster, slightly different
    weights_license = "CC BY 4.0 (OpenL3 model weights, marl/openl3; code MIT)"
    default_batch_size = 16
    params = {
        "input_repr": Param("mel256", str, "spectrogram fed to the network", choices=INPUT_REPRS),
        "content_type": Param("music", str, "training content of the weights", choices=CONTENT_TYPES),
        "embedding_size": Param(512, int, "embedding dimension", choices=EMBEDDING_SIZES),
        "hop_size": Param(
            0.1, float, "seconds between windows (truncated to whole samples at 48 kHz)",
            check=_valid_hop, allowed="a number of seconds > 0 (at least one sample at 48 kHz)",
        ),
        "center": Param(True, bool, "pad half a window at the start so timestamps are window centres"),
        "frontend": Param("kapre", str, "spectrogram implementation openl3 offers", choices=FRONTENDS),
        "resampler": Param("kaiser_best", str, "resampling to 48 kHz", choices=("kaiser_best", "soxr_hq")),
        "precision": Param(
            "auto", str, "autocast dtype of the network on CUDA: auto = float16 (CPU always float32)",
            choices=("auto", "float16", "bfloat16", "float32"),
        ),
    }

    def model_key(self) -> tuple:
        # The same weights serve every embedding size, front-end, hop and centring.
        c = self.config
        return (self.name, self.device, self.weights_path, c["input_repr"], c["content_type"])

    def _load(self) -> LoadedModel:
        c = self.config
        return load_network(c["input_repr"], c["content_type"], self.device, self.weights_path)

    def weight_files(self) -> list[WeightFile]:
        c = self.config
        return [
            WeightFile(
                official_filename(c["input_repr"], c["content_type"]),
                url=OFFICIAL_URL.format(repr=c["input_repr"], content=c["content_type"]),
                how_to_get="the URL serves it gzipped (unpacked automatically); "
                "or copy it from an installed openl3 package",
            )
        ]

    def output_spec(self, kind: str = "audio") -> OutputSpec:
        hop = self.config["hop_size"]
        where = "window centres" if self.config["center"] else "window starts (openl3's convention)"
        return OutputSpec(
            axes=("time", "dim"),
            hop_seconds=hop,
            first_frame_seconds=0.0,
            timestamp_note=f"t[i] = i * {hop} s: {where}; windows are 1 s long",
        )

    def _extract(self, audio: np.ndarray) -> Features:
        c = self.config
        if audio.size == 0:
            raise ValueError("openl3: empty audio (0 samples)")
        if audio.shape[0] < WINDOW:
            warnings.warn(
                f"openl3: audio is {audio.shape[0] / TARGET_SR:.3f} s, shorter than the 1 s window; "
                "it is zero-padded (as openl3 does)",
                OpenL3Warning,
                stacklevel=2,
            )
        if c["frontend"] == "librosa":
            audio = audio.astype(np.float64)  # openl3 runs librosa on soundfile's float64 samples
        emb, ts = embed_signal(
            self.load(), audio, c["input_repr"], c["embedding_size"], c["hop_size"], c["center"],
            c["frontend"], self.batch_size, "float16" if c["precision"] == "auto" else c["precision"],
        )
        return Features(emb, ts)

    def provenance(self) -> dict[str, Any]:
        import importlib.metadata as md

        prov = super().provenance()
        prov.update(self.load().source)
        versions = {}
        for pkg in ("torch", "numpy", "scipy", "librosa", "resampy", "soxr", "h5py"):
            try:
                versions[pkg] = md.version(pkg)
            except md.PackageNotFoundError:
                versions[pkg] = None
        prov["versions"] = versions
        prov["reproduces"] = "openl3 0.4.2 (kapre 0.4.1 front-end semantics)"
        prov["device"] = str(self.load().device)
        return prov


# ---------------------------------------------------------------------------
# openl3-compatible API
# ---------------------------------------------------------------------------
@dataclass
class AudioEmbeddingModel:
    """What `load_audio_embedding_model` returns; stands in for openl3's Keras model.

    `predict(x)` takes what openl3's model takes: windows (N, 1, 48000) with
    the kapre front-end, spectrograms (N, F, T, 1) with the librosa one.
    """

    input_repr: str
    content_type: str
    embedding_size: int
    frontend: str
    loaded: LoadedModel

    @property
    def input_shape(self) -> tuple:
        f, t = spectrogram_shape(self.input_repr)
        return (None, 1, WINDOW) if self.frontend == "kapre" else (None, f, t, 1)

    def predict(self, x: np.ndarray, batch_size: int = 32, verbose: Any = 0) -> np.ndarray:
        x = np.asarray(x)
        out = []
        for i in range(0, x.shape[0], batch_size):
            xb = x[i : i + batch_size]
            if self.frontend == "kapre":
                spec = kapre_frontend(xb.reshape(-1, WINDOW), self.input_repr)
            else:
                spec = xb[..., 0]
            out.append(run_network(self.loaded, spec, self.input_repr, self.embedding_size))
        return np.concatenate(out) if out else np.zeros((0, self.embedding_size), np.float32)


def _check_api_args(
    frontend: str, input_repr: str | None, model: AudioEmbeddingModel | None
) -> tuple[str, str]:
    if frontend not in FRONTENDS:
        raise OpenL3Error(f'Invalid frontend "{frontend}". Must be one of {FRONTENDS}')
    if model is not None:
        if not isinstance(model, AudioEmbeddingModel):
            raise OpenL3Error(f"Invalid model provided; got {type(model)}; use load_audio_embedding_model()")
        if model.frontend != frontend:
            raise OpenL3Error(
                f"model was loaded for the {model.frontend!r} front-end but frontend={frontend!r} was given"
            )
        if input_repr is not None and input_repr != model.input_repr:
            raise OpenL3Error(f"input_repr={input_repr!r} does not match the model's {model.input_repr!r}")
        return frontend, model.input_repr
    if input_repr is None:
        if frontend == "librosa":
            raise OpenL3Error("You must specify input_repr for a librosa frontend.")
        input_repr = "mel256"
    if str(input_repr) not in INPUT_REPRS:
        raise OpenL3Error(f'Invalid input representation "{input_repr}". Must be one of {INPUT_REPRS}')
    return frontend, input_repr


def load_audio_embedding_model(
    input_repr: str,
    content_type: str,
    embedding_size: int,
    frontend: str = "kapre",
    *,
    weights_path: str | None = None,
    device: str = "cpu",
) -> AudioEmbeddingModel:
    """openl3.models.load_audio_embedding_model: the network for these settings.

    Extra keywords: `weights_path` (file or folder, or "random"), `device`.
    """
    frontend, input_repr = _check_api_args(frontend, input_repr, None)
    if content_type not in CONTENT_TYPES:
        raise OpenL3Error(f'Invalid content type "{content_type}"')
    if embedding_size not in EMBEDDING_SIZES:
        raise OpenL3Error(f'Invalid embedding size "{embedding_size}"')
    loaded = load_network(input_repr, content_type, device, weights_path)
    return AudioEmbeddingModel(input_repr, content_type, embedding_size, frontend, loaded)


def _prepare_audio(audio: np.ndarray, sr: Real, hop_size: Real, center: Any) -> np.ndarray:
    """openl3's checks, downmix and kaiser_best resampling; keeps the dtype like openl3."""
    audio = np.asarray(audio)
    if audio.size == 0:
        raise OpenL3Error("Got empty audio")
    if np.all(audio == 0):
        warnings.warn("Provided audio is all zeros", OpenL3Warning, stacklevel=3)
    if audio.ndim > 2:
        raise OpenL3Error("Audio array can only be be 1D or 2D")
    if audio.ndim == 2:
        audio = np.mean(audio, axis=1)
    if not isinstance(sr, Real) or sr <= 0:
        raise OpenL3Error(f"Invalid sample rate {sr}")
    if not isinstance(hop_size, Real) or hop_size <= 0 or hop_samples(hop_size) < 1:
        raise OpenL3Error(f"Invalid hop size {hop_size}")
    if center not in (True, False):
        raise OpenL3Error(f"Invalid center value {center}")
    if sr != TARGET_SR:
        import resampy

        audio = resampy.resample(audio, sr_orig=sr, sr_new=TARGET_SR, filter="kaiser_best")
    if audio.size < WINDOW:
        warnings.warn(
            "Duration of provided audio is shorter than window size (1 second). Audio will be padded.",
            OpenL3Warning,
            stacklevel=3,
        )
    return audio


def preprocess_audio(
    audio: np.ndarray | list[np.ndarray],
    sr: Real | list[Real],
    hop_size: float = 0.1,
    input_repr: str | None = None,
    center: bool = True,
    **kw: Any,
) -> np.ndarray | list[np.ndarray]:
    """openl3.preprocess_audio: windows (N, 1, 48000), or with `input_repr` the librosa
    front-end's spectrograms (N, F, T, 1). Lists in, lists out."""
    if kw:
        raise OpenL3Error(f"unsupported front-end options {sorted(kw)} (openl3's defaults are fixed here)")
    if isinstance(audio, list):
        srs = sr if isinstance(sr, list) else [sr] * len(audio)
        return [preprocess_audio(a, s, hop_size, input_repr, center) for a, s in zip(audio, srs)]
    x = frame_windows(_prepare_audio(audio, sr, hop_size, center), hop_size, center)
    if not input_repr:
        return x[:, None, :]
    if input_repr not in INPUT_REPRS:
        raise OpenL3Error(f'Invalid input representation "{input_repr}"')
    return librosa_frontend(x, input_repr)[..., None]


def get_audio_embedding(
    audio: np.ndarray | list[np.ndarray],
    sr: Real | list[Real],
    model: AudioEmbeddingModel | None = None,
    input_repr: str | None = None,
    content_type: str = "music",
    embedding_size: int = 6144,
    center: bool = True,
    hop_size: float = 0.1,
    batch_size: int = 32,
    frontend: str = "kapre",
    verbose: bool = True,
    *,
    weights_path: str | None = None,
    device: str = "cpu",
) -> tuple[np.ndarray, np.ndarray] | tuple[list[np.ndarray], list[np.ndarray]]:
    """openl3.get_audio_embedding: (embedding (T, D), timestamps (T,)), or lists of them.

    Windows of all inputs are batched together (`batch_size` at a time).
    """
    frontend, input_repr = _check_api_args(frontend, input_repr, model)
    if str(content_type) not in CONTENT_TYPES:
        raise OpenL3Error(f'Invalid content type "{content_type}"')
    if embedding_size not in EMBEDDING_SIZES:
        raise OpenL3Error(f'Invalid embedding size "{embedding_size}"')
    if verbose not in (0, 1):
        raise OpenL3Error(f"Invalid verbosity level {verbose}")
    if isinstance(audio, np.ndarray):
        audio_list, list_input = [audio], False
    elif isinstance(audio, list):
        audio_list, list_input = audio, True
    else:
        raise OpenL3Error(f"audio must be type list[np.ndarray] or np.ndarray. Got {type(audio)}")
    if isinstance(sr, Real):
        sr_list = [sr] * len(audio_list)
    elif isinstance(sr, list):
        sr_list = sr
    else:
        raise OpenL3Error(f"sr must be type list[numbers.Real] or numbers.Real. Got {type(sr)}")
    if len(audio_list) != len(sr_list):
        raise OpenL3Error(
            f"Mismatch between number of audio inputs ({len(audio_list)}) and number of "
            f"sample rates ({len(sr_list)})"
        )
    if model is None:
        model = load_audio_embedding_model(
            input_repr, content_type, embedding_size, frontend, weights_path=weights_path, device=device
        )
    # The model decides the embedding size, as in openl3 (its pooling is part of the model).
    size = model.embedding_size

    # Spectrograms of every window of every input, embedded in shared batches.
    counts: list[int] = []
    pending: list[np.ndarray] = []
    embeddings: list[np.ndarray] = []

    def flush(force: bool) -> None:
        while pending and (force or sum(len(s) for s in pending) >= batch_size):
            stacked = np.concatenate(pending)
            take, rest = stacked[:batch_size], stacked[batch_size:]
            embeddings.append(run_network(model.loaded, take, input_repr, size))
            pending.clear()
            if len(rest):
                pending.append(rest)

    for x, s in zip(audio_list, sr_list):
        sig = _prepare_audio(x, s, hop_size, center)
        hop_len = hop_samples(hop_size)
        counts.append(num_windows(sig.shape[0], hop_len, center))
        for _, segment, starts in iter_window_chunks(sig, hop_len, center, batch_size):
            pending.append(_spectrogram_chunk(segment, starts, input_repr, frontend))
            flush(False)
    flush(True)
    allemb = np.concatenate(embeddings) if embeddings else np.zeros((0, size), np.float32)
    emb_list, ts_list, i = [], [], 0
    for n in counts:
        emb_list.append(allemb[i : i + n])
        ts_list.append(timestamps(n, hop_size))
        i += n
    if not list_input:
        return emb_list[0], ts_list[0]
    return emb_list, ts_list


def get_output_path(filepath: str, suffix: str, output_dir: str | None = None) -> str:
    """openl3.get_output_path: <output_dir or the file's folder>/<stem>_<suffix>.

    A suffix starting with '.' is appended without the underscore.
    """
    base = os.path.splitext(os.path.basename(filepath))[0]
    if not output_dir:
        output_dir = os.path.dirname(filepath)
    name = base + suffix if suffix[0] == "." else f"{base}_{suffix}"
    return os.path.join(output_dir, name)


def process_audio_file(
    filepath: str | Sequence[str],
    output_dir: str | None = None,
    suffix: str | None = None,
    model: AudioEmbeddingModel | None = None,
    input_repr: str | None = None,
    content_type: str = "music",
    embedding_size: int = 6144,
    center: bool = True,
    hop_size: float = 0.1,
    batch_size: int = 32,
    overwrite: bool = False,
    frontend: str = "kapre",
    verbose: bool = True,
    *,
    weights_path: str | None = None,
    device: str = "cpu",
) -> None:
    """openl3.process_audio_file: writes <stem>[_<suffix>].npz with `embedding` and `timestamps`.

    Existing outputs are skipped unless `overwrite`. Audio is read with
    soundfile as float64 (multichannel averaged), as openl3 does.
    """
    import soundfile as sf

    if isinstance(filepath, str):
        paths = [filepath]
    elif isinstance(filepath, (list, tuple)):
        paths = list(filepath)
    else:
        raise OpenL3Error(f"filepath should be type str or list[str], but got {filepath}.")
    suffix = suffix or ""
    frontend, input_repr = _check_api_args(frontend, input_repr, model)
    if model is None:
        model = load_audio_embedding_model(
            input_repr, content_type, embedding_size, frontend, weights_path=weights_path, device=device
        )
    group: list[tuple[str, np.ndarray, Real]] = []  # files whose windows share batches
    n_group = 0
    hop_len = hop_samples(hop_size) if isinstance(hop_size, Real) and hop_size > 0 else 0

    def run_group() -> None:
        embs, tss = get_audio_embedding(
            [a for _, a, _ in group], [r for _, _, r in group], model=model, center=center,
            hop_size=hop_size, batch_size=batch_size, frontend=frontend, verbose=verbose,
        )
        for (out_path, _, _), emb, ts in zip(group, embs, tss):
            np.savez(out_path, embedding=emb, timestamps=ts)
            if verbose:
                print(f"openl3: Saved {out_path}")
        group.clear()

    for k, path in enumerate(paths):
        if not os.path.exists(path):
            raise OpenL3Error(f'File "{path}" could not be found.')
        if verbose:
            print(f"openl3: Processing {path} ({k + 1}/{len(paths)})")
        out_path = get_output_path(path, suffix + ".npz", output_dir=output_dir)
        if os.path.exists(out_path) and not overwrite:
            print(f"openl3: {out_path} exists and overwriting not enabled, skipping.")
            continue
        try:
            audio, sr = sf.read(path)
        except Exception as exc:
            raise OpenL3Error(f'Could not open file "{path}":\n{type(exc).__name__}: {exc}') from None
        group.append((out_path, audio, sr))
        if hop_len:
            n_group += num_windows(max(1, int(np.ceil(audio.shape[0] * TARGET_SR / sr))), hop_len, center)
        if n_group >= batch_size:
            run_group()
            n_group = 0
    if group:
        run_group()
