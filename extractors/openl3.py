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
from typing import Any, Callable, Iterator, Sequence

import numpy as np

from embedkit.extractors.base import (
    Extractor,
    Features,
    OutputSpec,
    Param,
    TorchModule,
    WeightFile,
    WeightsError,
    lazy_import,
    torch_device,
)

torch = lazy_import("torch")
nn = lazy_import("torch.nn")
F = lazy_import("torch.nn.functional")

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
# The image networks (extractors/openl3_image.py) come from the same place, one per audio network.
OFFICIAL_IMAGE_URL = "https://github.com/marl/openl3/raw/models/openl3_image_{repr}_{content}-v0_4_0.h5.gz"
MODALITIES = ("audio", "image")
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
class OpenL3AudioNet(TorchModule):
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


def read_keras_h5(path: str | os.PathLike, in_channels: int = 1) -> dict[str, tuple[np.ndarray, ...]]:
    """Canonical state from a Keras weights-only HDF5 file (openl3's layout).

    Keras loads such a file by layer order, not by name: the root attribute
    `layer_names` gives the order and each layer group's `weight_names` the
    order of its tensors. Layers without weights (input, activations, pools,
    an empty kapre spectrogram layer) are skipped, as are the spectrogram
    layers of pre-0.4 files. Expects 16 weighted layers alternating
    BatchNorm (4 tensors) and Conv2D (2 tensors), starting with BatchNorm.
    `in_channels`: 1 for the audio networks, 3 for the image network (same
    layout otherwise; "bn{i}" is the BatchNorm that follows conv{i} in the file).
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
            f"{path}: expected 16 weighted layers alternating BatchNorm and Conv2D (openl3's "
            f"{_NETWORK_NAMES.get(in_channels, 'audio')} network), found {[name for name, _ in layers]}"
        )
    state: dict[str, tuple[np.ndarray, ...]] = {}
    for i in range(8):
        bn = tuple(layers[2 * i][1])
        kernel, bias = layers[2 * i + 1][1]
        state["bn_in" if i == 0 else f"bn{i - 1}"] = bn
        state[f"conv{i}"] = (np.ascontiguousarray(kernel.transpose(3, 2, 0, 1)), bias)  # HWIO -> OIHW
    _check_state(state, str(path), in_channels)
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


_NETWORK_NAMES = {1: "audio", 3: "image"}


def _check_state(state: dict[str, tuple[np.ndarray, ...]], where: str, in_channels: int = 1) -> None:
    c_in = (in_channels,) + CHANNELS[:-1]
    want = {"bn_in": (in_channels,)}
    for i, (a, b) in enumerate(zip(c_in, CHANNELS)):
        want[f"conv{i}"] = (b, a, 3, 3)
        if i < 7:
            want[f"bn{i}"] = (b,)
    for key, shape in want.items():
        got = tuple(state[key][0].shape)
        if got != shape:
            raise WeightsError(
                f"{where}: {key} has shape {got}, expected {shape}; not an OpenL3 "
                f"{_NETWORK_NAMES.get(in_channels, 'audio')} model"
            )


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
def official_filename(input_repr: str, content_type: str, modality: str = "audio") -> str:
    """openl3's name of a weight file: openl3_<audio|image>_<input_repr>_<content_type>.h5."""
    return f"openl3_{modality}_{input_repr}_{content_type}.h5"


def official_url(input_repr: str, content_type: str, modality: str = "audio") -> str:
    """Where openl3's setup.py downloads the gzipped weight file from."""
    template = OFFICIAL_URL if modality == "audio" else OFFICIAL_IMAGE_URL
    return template.format(repr=input_repr, content=content_type)


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
    from embedkit import weights

    return weights.torch_hub_checkpoints()


def _weight_format(path: Path) -> str:
    with open(path, "rb") as f:
        head = f.read(8)
    if head.startswith(b"\x89HDF"):
        return "keras-h5"
    if head.startswith(b"\x1f\x8b"):
        raise WeightsError(f"{path} is gzip-compressed (as openl3 publishes it); gunzip it first")
    return "torchopenl3-pth"


_NAME_PATTERN = re.compile(r"(linear|mel128|mel256)_(music|env)")
_MODALITY_PATTERN = re.compile(r"openl3_(audio|image)_")


def _check_name(path: Path, input_repr: str, content_type: str, modality: str = "audio") -> None:
    """Refuse a file whose name says it is another configuration (all have the same shapes)."""
    who = "openl3" if modality == "audio" else "openl3_image"
    m = _MODALITY_PATTERN.search(path.name)
    if m and m.group(1) != modality:
        raise WeightsError(
            f"{who}: {path} holds {m.group(1)} network weights; point `weights:` at "
            f"{official_filename(input_repr, content_type, modality)} (or a folder holding it)"
        )
    m = _NAME_PATTERN.search(path.name)
    if m and (m.group(1), m.group(2)) != (input_repr, content_type):
        raise WeightsError(
            f"{who}: {path} holds the {m.group(1)}/{m.group(2)} weights but this configuration is "
            f"input_repr={input_repr}, content_type={content_type}; point `weights:` at "
            f"{official_filename(input_repr, content_type, modality)} "
            "(or set input_repr/content_type to match)"
        )


def find_weights(
    input_repr: str,
    content_type: str,
    local_path: str | os.PathLike | None = None,
    allow_download: bool = True,
    modality: str = "audio",
) -> Path:
    """Path of the weights for (input_repr, content_type), found or downloaded.

    Order: `local_path` (a file, or a folder holding the official `.h5` or, for
    audio, a torchopenl3 `.pth.tar`); the cache `$EMBEDKIT_CACHE/openl3/` (audio
    and image files side by side, as in openl3's package folder); an installed
    openl3 package; torch hub's checkpoint folder (torchopenl3 downloads, audio
    only); a download of the official gzipped file into the cache.
    `modality`: "audio" or "image" (`openl3_image_<repr>_<content>.h5`).
    Raises WeightsError naming every place looked at.
    """
    from embedkit import weights

    who = "openl3" if modality == "audio" else "openl3_image"
    h5 = official_filename(input_repr, content_type, modality)
    # torchopenl3 converted only the audio networks.
    names = [h5] + (torchopenl3_filenames(input_repr, content_type) if modality == "audio" else [])
    if local_path is not None:
        p = Path(local_path).expanduser()
        if p.is_file():
            _check_name(p, input_repr, content_type, modality)
            return p
        if p.is_dir():
            for name in names:
                if (p / name).is_file():
                    return p / name
        also = " or a torchopenl3 .pth.tar" if modality == "audio" else ""
        raise WeightsError(
            f"{who}: weights path {p} is neither a weight file nor a folder holding one of "
            f"{', '.join(names)}. Point `weights:` for {who} at {h5} (official openl3 0.4 file){also}."
        )
    cache = weights.model_cache_dir("openl3")
    places = [cache / n for n in names]
    places += [d / h5 for d in _openl3_package_dirs()]
    places += [_torch_hub_dir() / n for n in names[1:]]
    for cand in places:
        if cand.is_file():
            return cand
    looked = [str(p) for p in places]
    url = official_url(input_repr, content_type, modality)
    if allow_download and not weights.offline():
        try:
            return _download_official(url, cache / h5)
        except WeightsError:
            raise
        except Exception as exc:
            looked.append(f"{url} (download failed: {type(exc).__name__}: {exc})")
    else:
        looked.append(f"{url} (not downloaded: offline mode)")
    torch_hint = (
        f"; or use torchopenl3's {names[1]} (from "
        f"{TORCHOPENL3_URL.format(repr=input_repr, content=content_type, size=6144)})"
        if modality == "audio" else ""
    )
    raise weights.missing(
        who, h5, looked,
        f"download {url} and gunzip it to {cache / h5} (or set ${weights.CACHE_ENV}); or copy "
        f"{h5} from an installed openl3 package (pip install openl3 puts it in site-packages/openl3/)"
        f"{torch_hint}",
    )


def _download_official(url: str, dest: Path) -> Path:
    """Download openl3's gzipped weight file and unpack it atomically to `dest`."""
    from embedkit import weights

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
    """A network (audio or image) on its device and where its weights came from."""

    net: OpenL3AudioNet
    device: str
    source: dict[str, Any] = field(default_factory=dict)


def load_network(
    input_repr: str, content_type: str, device: str = "cpu", weights_path: str | None = None
) -> LoadedModel:
    """Find (or, with weights_path="random", make) the weights and build the network on `device`."""
    from embedkit import weights

    if weights_path == "random":
        state, source = random_state(0), {"weights": "random", "seed": 0}
    else:
        path = find_weights(input_repr, content_type, weights_path)
        state = read_weights(path)
        source = {
            "weights": str(path),
            "format": _weight_format(path),
            "weights_sha256": weights.sha256sum(path),
            "official_url": official_url(input_repr, content_type),
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
    return forward_pooled(model, x, lambda fmap: pool_embedding(fmap, input_repr, embedding_size),
                          cuda_dtype)


def forward_pooled(model: LoadedModel, x: Any, pool: Callable[[Any], Any], cuda_dtype: str) -> np.ndarray:
    """`pool(net(x))` as float32 numpy, for the audio and the image network: x (B, C, H, W) goes
    to the model's device in channels_last; float32 on CPU (deterministic, batch-size
    independent), on CUDA under autocast with `cuda_dtype` unless that is "float32"."""
    x = x.to(model.device).contiguous(memory_format=torch.channels_last)
    on_cuda = str(model.device).startswith("cuda")
    with torch.inference_mode():
        if on_cuda and cuda_dtype != "float32":
            with torch.autocast("cuda", dtype=getattr(torch, cuda_dtype)):
                fmap = model.net(x)
        else:
            fmap = model.net(x)
        emb = pool(fmap.float())
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
    # openl3 reads files with soundfile as float64 and resamples in float64: the kapre
    # front-end's near-floor bins see float32 rounding, so float32 resampling moves
    # embeddings by ~0.5 % (docs/openl3.md).
    resample_precision = "float64"
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

    @property
    def input_dtype(self) -> str:
        # openl3's librosa front-end runs its STFT on the float64 samples soundfile gave it
        return "float64" if self.config["frontend"] == "librosa" else "float32"

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
                url=official_url(c["input_repr"], c["content_type"]),
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
        from embedkit import audio_io

        # resampy in the input's own arithmetic, as openl3 in a fresh process (see audio_io)
        audio = audio_io.resampy_resample(audio, sr, TARGET_SR, "kaiser_best")
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


def save_npz_atomic(path: str | os.PathLike, **arrays: np.ndarray) -> None:
    """np.savez(path, **arrays) written whole or not at all (temp file, fsync, rename).

    openl3 writes in place, so a killed run can leave a truncated `.npz` that
    its next run skips as done; here a path holds a complete file or nothing.
    """
    import io
    import tempfile

    buf = io.BytesIO()
    np.savez(buf, **arrays)
    folder = os.path.dirname(os.path.abspath(path))
    fd, tmp = tempfile.mkstemp(prefix=f".{os.path.basename(path)}.", suffix=".part", dir=folder)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(buf.getvalue())
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise


def output_complete(path: str | os.PathLike, keys: Sequence[str]) -> bool:
    """Whether `path` is a readable .npz holding `keys` (an existing output to keep)."""
    import zipfile

    try:
        with zipfile.ZipFile(path) as z:
            names = set(z.namelist())
            if z.testzip() is not None:
                return False
    except (OSError, zipfile.BadZipFile):
        return False
    return all(f"{k}.npy" in names for k in keys)


def _keep_existing(out_path: str, keys: Sequence[str], overwrite: bool, verbose: bool) -> bool:
    """openl3's rule (an existing output is kept unless `overwrite`), except that a file
    that is not a whole .npz with `keys` (e.g. left by a killed openl3 run) is redone."""
    if overwrite or not os.path.exists(out_path):
        return False
    if output_complete(out_path, keys):
        return True
    if verbose:
        print(f"openl3: {out_path} is incomplete, recomputing it.")
    return False


def _paths_of(filepath: Any) -> list[str]:
    if isinstance(filepath, (str, os.PathLike)):
        return [os.fspath(filepath)]
    if isinstance(filepath, (list, tuple)):
        return [os.fspath(p) for p in filepath]
    raise OpenL3Error(f"filepath should be type str or list[str], but got {filepath}.")


def _run_group(group: list, run: Any, on_error: Any) -> None:
    """Run `run(group)`; when it fails and errors are reported, retry file by file so only
    the bad file is reported (a group shares batches, not fate)."""
    if on_error is None or len(group) == 1:
        try:
            run(group)
        except Exception as exc:
            if on_error is None:
                raise
            on_error(group[0][0], exc)
        return
    try:
        run(group)
    except Exception:
        for item in group:
            _run_group([item], run, on_error)


def _read_audio(path: str) -> tuple[np.ndarray, Real]:
    """(samples, rate) as openl3 reads them: soundfile, float64, channels kept. Formats
    soundfile cannot read (m4a, aac, wma, ...) are decoded with FFmpeg to mono instead
    (openl3 fails on them)."""
    import soundfile as sf

    try:
        return sf.read(path)
    except Exception as exc:
        first = exc
    try:
        from embedkit import audio_io

        return audio_io.decode(path)
    except Exception:
        raise OpenL3Error(
            f'Could not open file "{path}":\n{type(first).__name__}: {first}'
        ) from None


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
    on_error: Any = None,
) -> None:
    """openl3.process_audio_file: writes <stem>[_<suffix>].npz with `embedding` and `timestamps`.

    Existing outputs are skipped unless `overwrite` (an incomplete one is
    redone). Audio is read with soundfile as float64 (multichannel averaged),
    as openl3 does; formats soundfile cannot read are decoded with FFmpeg.
    Outputs are written atomically. `on_error(path, exception)`, when given, is called for
    a file that fails and the others go on (openl3 stops at the first).
    """
    paths = _paths_of(filepath)
    suffix = suffix or ""
    frontend, input_repr = _check_api_args(frontend, input_repr, model)
    if model is None:
        model = load_audio_embedding_model(
            input_repr, content_type, embedding_size, frontend, weights_path=weights_path, device=device
        )
    group: list[tuple[str, str, np.ndarray, Real]] = []  # files whose windows share batches
    n_group = 0
    hop_len = hop_samples(hop_size) if isinstance(hop_size, Real) and hop_size > 0 else 0

    def run(items: list) -> None:
        embs, tss = get_audio_embedding(
            [a for _, _, a, _ in items], [r for _, _, _, r in items], model=model, center=center,
            hop_size=hop_size, batch_size=batch_size, frontend=frontend, verbose=verbose,
        )
        for (_, out_path, _, _), emb, ts in zip(items, embs, tss):
            save_npz_atomic(out_path, embedding=emb, timestamps=ts)
            if verbose:
                print(f"openl3: Saved {out_path}")

    for k, path in enumerate(paths):
        try:
            if not os.path.exists(path):
                raise OpenL3Error(f'File "{path}" could not be found.')
            if verbose:
                print(f"openl3: Processing {path} ({k + 1}/{len(paths)})")
            out_path = get_output_path(path, suffix + ".npz", output_dir=output_dir)
            if _keep_existing(out_path, ("embedding", "timestamps"), overwrite, verbose):
                print(f"openl3: {out_path} exists and overwriting not enabled, skipping.")
                continue
            audio, sr = _read_audio(path)
            if audio.size == 0:
                raise OpenL3Error(f'Got empty audio in "{path}"')
        except Exception as exc:
            if on_error is None:
                raise
            on_error(path, exc)
            continue
        group.append((path, out_path, audio, sr))
        if hop_len:
            n_group += num_windows(max(1, int(np.ceil(audio.shape[0] * TARGET_SR / sr))), hop_len, center)
        if n_group >= batch_size:
            _run_group(group, run, on_error)
            group, n_group = [], 0
    if group:
        _run_group(group, run, on_error)


# ---------------------------------------------------------------------------
# openl3-compatible API: images and videos (the network is in extractors/openl3_image.py)
# ---------------------------------------------------------------------------
IMAGE_EMBEDDING_SIZES = (8192, 512)


@dataclass
class ImageEmbeddingModel:
    """What `load_image_embedding_model` returns; stands in for openl3's Keras image model.

    `predict(x)` takes preprocessed images (N, 224, 224, 3) float32, as openl3's model.
    """

    input_repr: str
    content_type: str
    embedding_size: int
    loaded: LoadedModel  # the image network

    input_shape = (None, 224, 224, 3)

    def predict(self, x: np.ndarray, batch_size: int = 32, verbose: Any = 0) -> np.ndarray:
        from embedkit.extractors import openl3_image

        return openl3_image.embed_batches(self.loaded, np.asarray(x, np.float32), self.embedding_size,
                                          batch_size, "float32")


def load_image_embedding_model(
    input_repr: str,
    content_type: str,
    embedding_size: int,
    *,
    weights_path: str | None = None,
    device: str = "cpu",
) -> ImageEmbeddingModel:
    """openl3.models.load_image_embedding_model: the image network paired with the
    (input_repr, content_type) audio network, pooled to `embedding_size` (8192 or 512).

    Extra keywords: `weights_path` (an `openl3_image_*.h5` file, a folder holding
    it, or "random"), `device`.
    """
    from embedkit.extractors import openl3_image

    if str(input_repr) not in INPUT_REPRS:
        raise OpenL3Error(f'Invalid input representation "{input_repr}". Must be one of {INPUT_REPRS}')
    if str(content_type) not in CONTENT_TYPES:
        raise OpenL3Error(f'Invalid content type "{content_type}"')
    if embedding_size not in IMAGE_EMBEDDING_SIZES:
        raise OpenL3Error(f'Invalid embedding size "{embedding_size}"')
    loaded = openl3_image.load_image_network(input_repr, content_type, device, weights_path)
    return ImageEmbeddingModel(input_repr, content_type, embedding_size, loaded)


def get_image_embedding(
    image: np.ndarray | list[np.ndarray],
    frame_rate: Real | list[Real] | None = None,
    model: ImageEmbeddingModel | None = None,
    input_repr: str = "mel256",
    content_type: str = "music",
    embedding_size: int = 8192,
    batch_size: int = 32,
    verbose: bool = True,
    *,
    weights_path: str | None = None,
    device: str = "cpu",
) -> Any:
    """openl3.get_image_embedding: embedding (N, D) of each image / frame, and with
    `frame_rate` the timestamps arange(N) / frame_rate; lists in, lists out.

    (H, W, 3) and (N, H, W, 3) arrays are preprocessed as openl3 does, one array
    at a time (see openl3_image.preprocess_image_batch: a sequence's frames
    share one scaling), then embedded `batch_size` at a time.
    """
    from embedkit.extractors import openl3_image

    if model is not None and not isinstance(model, ImageEmbeddingModel):
        raise OpenL3Error(f"Invalid model provided; got {type(model)}; use load_image_embedding_model()")
    if str(input_repr) not in INPUT_REPRS:
        raise OpenL3Error(f'Invalid input representation "{input_repr}"')
    if str(content_type) not in CONTENT_TYPES:
        raise OpenL3Error(f'Invalid content type "{content_type}"')
    if embedding_size not in IMAGE_EMBEDDING_SIZES:
        raise OpenL3Error(f'Invalid embedding size "{embedding_size}"')
    if verbose not in (0, 1):
        raise OpenL3Error(f"Invalid verbosity level {verbose}")
    if model is None:
        model = load_image_embedding_model(input_repr, content_type, embedding_size,
                                           weights_path=weights_path, device=device)
    if isinstance(image, np.ndarray):
        image_list, list_input = [image], False
    elif isinstance(image, list):
        image_list, list_input = image, True
    else:
        raise OpenL3Error(f"image must be type list[np.ndarray] or np.ndarray. Got {type(image)}")
    if frame_rate is None or isinstance(frame_rate, Real):
        rate_list = [frame_rate] * len(image_list)
    elif isinstance(frame_rate, list):
        rate_list = frame_rate
    else:
        raise OpenL3Error(
            f"frame rate must be type list[numbers.Real] or numbers.Real. Got {type(frame_rate)}"
        )
    if len(image_list) != len(rate_list):
        raise OpenL3Error(
            f"Mismatch between number of image inputs ({len(image_list)}) and number of "
            f"frame rates ({len(rate_list)})"
        )
    batches, counts = [], []
    for img, rate in zip(image_list, rate_list):
        if rate is not None and (not isinstance(rate, Real) or rate <= 0):
            raise OpenL3Error(f"Invalid frame rate {rate}")
        x = openl3_image.preprocess_image_batch(img)
        batches.append(x)
        counts.append(x.shape[0])
    allemb = model.predict(np.concatenate(batches), batch_size=batch_size)
    emb_list, ts_list, i = [], [], 0
    for n, rate in zip(counts, rate_list):
        emb_list.append(allemb[i : i + n])
        if frame_rate is not None:
            ts_list.append(np.arange(n) / float(rate))
        i += n
    if frame_rate is not None:
        return (emb_list, ts_list) if list_input else (emb_list[0], ts_list[0])
    return emb_list if list_input else emb_list[0]


def read_image_like_openl3(path: str | os.PathLike) -> np.ndarray:
    """The array openl3's process_image_file embeds: `skimage.io.imread` (imageio's
    Pillow plugin) with the alpha channel dropped.

    As there: no EXIF orientation, palette images expanded to RGB(A), the
    stored samples otherwise (grayscale stays 2-D, and openl3 then refuses it;
    16-bit grayscale stays uint16; CMYK keeps four planes of which openl3
    embeds the first three as if they were R, G, B: a warning says so).
    Differences: a GIF gives its first frame (imageio stacks every frame and
    openl3 then fails).
    """
    from PIL import Image

    try:
        with Image.open(path) as img:
            img.seek(0)
            img.load()
            mode = img.mode
            if mode == "P":
                img = img.convert(img.palette.mode if img.palette is not None else "RGB")
            elif mode == "I" and img.format == "PNG":
                img = img.convert("I;16")  # imageio reads 16-bit PNGs as uint16
            arr = np.asarray(img)
    except Exception as exc:
        raise OpenL3Error(f'Could not open file "{path}":\n{type(exc).__name__}: {exc}') from None
    if mode == "CMYK":
        warnings.warn(
            f"{path} is a CMYK image: openl3 embeds its C, M and Y planes as if they were R, G and B "
            "(kept here for identical numbers); run_extraction.py's openl3_image converts it to RGB",
            OpenL3Warning, stacklevel=2,
        )
    if arr.ndim == 3 and arr.shape[-1] == 4:
        arr = arr[..., :3]
    return arr


def _explain_image(path: str, exc: OpenL3Error, arr: np.ndarray) -> OpenL3Error:
    hint = ""
    if arr.ndim == 2 or (arr.ndim == 3 and arr.shape[-1] in (1, 2)):
        hint = (" (a grayscale image: openl3 embeds only 3-channel RGB; convert it, or use "
                "run_extraction.py's openl3_image, which converts it)")
    elif "at least as large" in str(exc):
        hint = " (openl3's image network needs 224 px on each side)"
    return OpenL3Error(f'{exc}{hint}: "{path}"')


def process_image_file(
    filepath: str | Sequence[str],
    output_dir: str | None = None,
    suffix: str | None = None,
    model: ImageEmbeddingModel | None = None,
    input_repr: str = "mel256",
    content_type: str = "music",
    embedding_size: int = 8192,
    batch_size: int = 32,
    overwrite: bool = False,
    verbose: bool = True,
    *,
    weights_path: str | None = None,
    device: str = "cpu",
    on_error: Any = None,
) -> None:
    """openl3.process_image_file: writes <stem>[_<suffix>].npz with `embedding` (1, D) float32.

    Images are read as openl3 reads them (`read_image_like_openl3`) and
    embedded `batch_size` files at a time; outputs are written atomically;
    existing ones are skipped unless `overwrite`. `on_error(path, exception)`,
    when given, is called for a file that fails and the others go on.
    """
    from embedkit.extractors import openl3_image

    paths = _paths_of(filepath)
    if model is None:
        model = load_image_embedding_model(input_repr, content_type, embedding_size,
                                           weights_path=weights_path, device=device)
    suffix = suffix or ""
    group: list[tuple[str, str, np.ndarray]] = []

    def run(items: list) -> None:
        x = np.concatenate([it[2] for it in items])
        embs = model.predict(x, batch_size=batch_size)
        for i, (_, out_path, _) in enumerate(items):
            save_npz_atomic(out_path, embedding=embs[i : i + 1])
            if verbose:
                print(f"openl3: Saved {out_path}")

    for k, path in enumerate(paths):
        try:
            if not os.path.exists(path):
                raise OpenL3Error(f'File "{path}" could not be found.')
            if verbose:
                print(f"openl3: Processing {path} ({k + 1}/{len(paths)})")
            out_path = get_output_path(path, suffix + ".npz", output_dir=output_dir)
            if _keep_existing(out_path, ("embedding",), overwrite, verbose):
                print(f"openl3: {out_path} exists, skipping.")
                continue
            arr = read_image_like_openl3(path)
            try:
                x = openl3_image.preprocess_image_batch(arr[np.newaxis, ...])
            except OpenL3Error as exc:
                raise _explain_image(path, exc, arr) from None
        except Exception as exc:
            if on_error is None:
                raise
            on_error(path, exc)
            continue
        group.append((path, out_path, x))
        if len(group) >= batch_size:
            _run_group(group, run, on_error)
            group = []
    if group:
        _run_group(group, run, on_error)


# -- process_video_file: moviepy's decode, reproduced with PyAV --------------------------
def _ffmpeg_fps(rate: float) -> float:
    """The frame rate as ffmpeg prints it ("%3.2f" etc.) and moviepy parses it back,
    with moviepy's x*1000/1001 correction (29.97 -> 30000/1001)."""
    v = int(np.rint(np.float32(rate) * np.float32(100)))  # lrintf(d * 100)
    if not v:
        fps = float(f"{rate:1.4f}")
    elif v % 100:
        fps = float(f"{rate:3.2f}")
    elif v % (100 * 1000):
        fps = float(f"{rate:1.0f}")
    else:
        fps = float(f"{rate / 1000:1.0f}") * 1000
    for x in (23, 24, 25, 30, 50):
        if fps != x and abs(fps - x * 1000.0 / 1001.0) < 0.01:
            fps = x * 1000.0 / 1001.0
    return fps


def _ffmpeg_duration(duration_us: int | None) -> float:
    """The container duration as ffmpeg prints it (HH:MM:SS.cc, rounded to 10 ms) and
    moviepy's convert_to_seconds reads it back."""
    if duration_us is None:
        raise OpenL3Error("the container does not state its duration (moviepy, hence openl3, needs it)")
    d = int(duration_us) + 5000
    secs, us = divmod(d, 1_000_000)
    mins, secs = divmod(secs, 60)
    hours, mins = divmod(mins, 60)
    parts = [float(hours), float(mins), float(f"{secs:02d}.{(100 * us) // 1_000_000:02d}")]
    return sum(mult * part for mult, part in zip((1, 60, 3600), reversed(parts)))


def moviepy_audio_length(duration: float, sr: int = TARGET_SR) -> int:
    """Samples in moviepy's `clip.audio.to_soundarray(fps=sr)` for a clip of `duration` s."""
    if duration > 50000 / sr:  # to_soundarray's buffersize: read in chunks of int(sr * duration) total
        return int(sr * duration)
    return len(np.arange(0, duration, 1.0 / sr))


@dataclass
class DecodedVideo:
    """What process_video_file embeds of one file."""

    fps: float  # moviepy's clip.fps
    duration: float  # moviepy's clip.duration (s)
    n_frames: int  # frames embedded: int(duration * fps)
    frames_decoded: int
    image_embedding: np.ndarray | None  # (n_frames, D)
    audio_mono: np.ndarray | None  # what openl3 averages to mono at 48 kHz


def decode_video_like_openl3(
    path: str | os.PathLike,
    embedder: Any | None,
    want_audio: bool,
    mono_dtype: Any = np.float32,
) -> DecodedVideo:
    """One pass over a video, as openl3's process_video_file sees it through moviepy.

    Frames: ffmpeg's 256x256 bicubic rgb24 frames (media.VideoScaler),
    the first int(duration * fps) of them in decoding order (moviepy's grid
    t = k / fps on a constant-rate file; the last frame repeated if the file
    has fewer, as moviepy does), streamed into `embedder`
    (openl3_image.VideoEmbedder) so the video never sits in memory.
    Audio: swresample to 48 kHz stereo s16 (ffmpeg `-ar 48000 -ac 2`), cut or
    zero-padded to moviepy's length, averaged to mono; exact in float32
    ((L + R) / 65536).
    """
    import av

    from embedkit import media

    from embedkit.extractors import openl3_image

    try:
        container = av.open(os.fspath(path))
    except Exception as exc:
        raise OpenL3Error(f'Could not open file "{path}":\n{type(exc).__name__}: {exc}') from None
    with container:
        if not container.streams.video:
            raise OpenL3Error(f'"{path}" has no video stream')
        vstream = container.streams.video[0]
        astream = container.streams.audio[0] if container.streams.audio else None
        if want_audio and astream is None:
            raise OpenL3Error(
                f'"{path}" has no audio stream; openl3\'s process_video_file needs one '
                "(embed its frames alone with get_image_embedding, or run_extraction.py's openl3_image)"
            )
        rate = vstream.average_rate or vstream.guessed_rate or vstream.base_rate
        if not rate:
            raise OpenL3Error(f'"{path}": the video stream states no frame rate')
        fps = _ffmpeg_fps(float(rate))
        duration = _ffmpeg_duration(container.duration)
        n_frames = int(duration * fps)
        scaler = media.VideoScaler(openl3_image.VIDEO_SIZE, "bicubic")  # upright, as ffmpeg's autorotate
        vstream.thread_type = "AUTO"  # FFmpeg's frame threads
        streams = ([vstream] if embedder is not None else []) + ([astream] if want_audio else [])
        resampler = av.AudioResampler(format="s16", layout="stereo", rate=TARGET_SR) if want_audio else None
        n_audio = moviepy_audio_length(duration) if want_audio else 0
        mono = np.zeros(n_audio, mono_dtype) if want_audio else None
        filled = 0
        decoded = 0
        last = None

        def take(frames: list) -> None:
            nonlocal decoded, last
            if decoded >= n_frames:  # past moviepy's grid: not embedded
                decoded += len(frames)
                return
            rgb = scaler(frames)
            embedder.add(rgb[: n_frames - decoded])
            decoded += len(rgb)
            last = rgb[-1:]

        def resampled(frame: Any) -> None:
            nonlocal filled
            for out in resampler.resample(frame):
                pcm = out.to_ndarray().reshape(-1, 2)  # packed s16 stereo
                k = min(len(pcm), n_audio - filled)
                if k > 0:
                    # openl3 averages moviepy's k / 32768 samples: (L + R) / 65536, exact in float32
                    mono[filled : filled + k] = (pcm[:k, 0].astype(np.int32) + pcm[:k, 1]) / np.float64(65536)
                    filled += k

        try:
            for packet in container.demux(*streams):
                for frame in packet.decode():
                    if packet.stream is vstream:
                        take([frame])
                    else:
                        resampled(frame)
            if resampler is not None:
                resampled(None)
        except OpenL3Error:
            raise
        except Exception as exc:
            raise OpenL3Error(
                f'"{path}": decoding failed after {decoded} video frame(s) ({type(exc).__name__}: {exc}); '
                "the file is truncated or corrupt"
            ) from None
    if embedder is not None:
        if decoded == 0:
            raise OpenL3Error(f'"{path}": no video frame could be decoded')
        if n_frames == 0:
            raise OpenL3Error(f'"{path}": shorter than one frame (duration {duration} s at {fps} fps)')
        if decoded < n_frames:
            warnings.warn(
                f'"{path}": {decoded} frame(s) decoded but moviepy\'s grid int(duration * fps) = '
                f"{n_frames}; the last frame is repeated, as openl3 (moviepy) does",
                OpenL3Warning, stacklevel=2,
            )
            for _ in range(n_frames - decoded):
                embedder.add(last)
    emb = embedder.finish() if embedder is not None else None
    return DecodedVideo(fps, duration, n_frames, decoded, emb, mono)


def process_video_file(
    filepath: str | Sequence[str],
    output_dir: str | None = None,
    suffix: str | None = None,
    audio_model: AudioEmbeddingModel | None = None,
    image_model: ImageEmbeddingModel | None = None,
    input_repr: str | None = None,
    content_type: str = "music",
    audio_embedding_size: int = 6144,
    audio_center: bool = True,
    audio_hop_size: float = 0.1,
    image_embedding_size: int = 8192,
    audio_batch_size: int = 32,
    image_batch_size: int = 32,
    audio_frontend: str = "kapre",
    overwrite: bool = False,
    verbose: bool = True,
    *,
    weights_path: str | None = None,
    device: str = "cpu",
    on_error: Any = None,
) -> None:
    """openl3.process_video_file: writes <stem>_audio[_<suffix>].npz and <stem>_image[_<suffix>].npz,
    each with `embedding` and `timestamps` (float64), not aligned with each other.

    The sound track: 48 kHz stereo as moviepy decodes it, averaged, embedded
    like get_audio_embedding (timestamps arange(T) * hop). Every frame of the
    video (moviepy's int(duration * fps) frames, 256x256 bicubic, centre crop,
    divided by the video's largest pixel value), timestamps arange(N) /
    int(fps) as openl3 writes them. One decode per file; frames are streamed,
    so memory stays bounded on long videos. A file is written whole or not at
    all; existing outputs are skipped unless `overwrite`. `weights_path`: a
    folder holding both weight files, or "random". `on_error(path, exception)`,
    when given, is called for a file that fails and the others go on.
    """
    from embedkit.extractors import openl3_image

    paths = _paths_of(filepath)
    audio_frontend, input_repr = _check_api_args(audio_frontend, input_repr, audio_model)
    if audio_model is None:
        audio_model = load_audio_embedding_model(input_repr, content_type, audio_embedding_size,
                                                 audio_frontend, weights_path=weights_path, device=device)
    if image_model is None:
        image_model = load_image_embedding_model(input_repr, content_type, image_embedding_size,
                                                 weights_path=weights_path, device=device)
    audio_suffix, image_suffix = "audio", "image"
    if suffix:
        audio_suffix += "_" + suffix
        image_suffix += "_" + suffix
    for k, path in enumerate(paths):
        try:
            if not os.path.exists(path):
                raise OpenL3Error(f'File "{path}" could not be found.')
            if verbose:
                print(f"openl3: Processing {path} ({k + 1}/{len(paths)})")
            audio_out = get_output_path(path, audio_suffix + ".npz", output_dir=output_dir)
            image_out = get_output_path(path, image_suffix + ".npz", output_dir=output_dir)
            skip_audio = _keep_existing(audio_out, ("embedding", "timestamps"), overwrite, verbose)
            skip_image = _keep_existing(image_out, ("embedding", "timestamps"), overwrite, verbose)
            if skip_audio and skip_image:
                print(f"openl3: {audio_out} and {image_out} exist, skipping.")
                continue
            if skip_audio:
                print(f"openl3: {audio_out} exists, skipping audio embedding extraction.")
            if skip_image:
                print(f"openl3: {image_out} exists, skipping image embedding extraction.")
            embedder = None
            if not skip_image:
                embedder = openl3_image.VideoEmbedder(image_model.loaded, image_model.embedding_size,
                                                      image_batch_size, "float32")
            try:
                video = decode_video_like_openl3(
                    path, embedder, not skip_audio,
                    np.float64 if audio_frontend == "librosa" else np.float32,
                )
            finally:
                if embedder is not None:
                    embedder.close()
            results = []
            if not skip_audio:
                emb, ts = get_audio_embedding(
                    video.audio_mono, TARGET_SR, model=audio_model, center=audio_center,
                    hop_size=audio_hop_size, batch_size=audio_batch_size, frontend=audio_frontend,
                    verbose=verbose,
                )
                results.append((audio_out, emb, ts))
            if not skip_image:
                if int(video.fps) <= 0:
                    raise OpenL3Error(f"Invalid frame rate {int(video.fps)} (openl3 uses int(fps))")
                ts = np.arange(video.image_embedding.shape[0]) / float(int(video.fps))
                results.append((image_out, video.image_embedding, ts))
        except Exception as exc:
            if on_error is None:
                raise
            on_error(path, exc)
            continue
        for out_path, emb, ts in results:
            save_npz_atomic(out_path, embedding=emb, timestamps=ts)
            if verbose:
                print(f"openl3: Saved {out_path}")
