"""What openl3 0.4.2 feeds its networks, in numpy: windows, spectrograms, image batches.

- windowing (openl3 `core._preprocess_audio_batch`): optionally half a window of zeros
  before the audio (`center`), zeros after it so every sample is covered, 1 s windows at
  48 kHz every `int(hop_size * 48000)` samples; timestamps `arange(T) * hop_size`;
- the `kapre` front-end (openl3's default), in float32 as TensorFlow computes it:
  periodic Hann window, STFT hop 242 (mel: n_fft 2048 with zero padding at the end,
  199 frames; linear: n_fft 512 without padding, 197 frames), magnitude, librosa's
  Slaney mel filterbank, `10*log10(max(m, 1e-10))`, minus each window's maximum,
  floored at -80 dB;
- the `librosa` front-end, by calling librosa itself as openl3 does;
- `_preprocess_image_batch` (`preprocess_image_batch`): 224x224 as they are, larger
  images rescaled by skimage's rule and centre-cropped, values scaled as openl3 does.

Numbers only: the networks are in `embedkit.openl3.network`, the weight files in
`embedkit.openl3.weightfiles`. Shapes: windows (B, 48000), spectrograms (B, F, T) with
F frequency bins and T frames, images (N, 224, 224, 3) float32.
"""

from __future__ import annotations

import warnings
from typing import Any, Iterator

import numpy as np

from embedkit.openl3.openl3_exceptions import OpenL3Error
from embedkit.openl3.openl3_warnings import OpenL3Warning

TARGET_SR = 48000  # Hz; every window is one second at this rate
WINDOW = TARGET_SR  # samples per window
STFT_HOP = 242  # samples between spectrogram frames (both front-ends)
INPUT_REPRS = ("linear", "mel128", "mel256")
CONTENT_TYPES = ("music", "env")
FRONTENDS = ("kapre", "librosa")
DB_AMIN = 1e-10  # magnitude floor before the log
DB_RANGE = 80.0  # dB kept below each window's maximum
IMAGE_SIZE = 224  # network input, pixels per side
RESIZE_SIDE = 256  # openl3 resizes so the shorter side is this (when it is larger), then crops 224
VIDEO_SIZE = (256, 256)  # process_video_file's frames: (height, width), aspect ratio not kept


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


def librosa_window(
    window: np.ndarray,
    n_mels: int | None,
    n_fft: int | None = None,
    hop_length: int = STFT_HOP,
    db_amin: float = DB_AMIN,
    db_ref: float = 1.0,
    dynamic_range: float = DB_RANGE,
) -> np.ndarray:
    """openl3's librosa front-end of one window, (F, T) in its dtype: the magnitude STFT
    (n_mels None: n_fft 512, not centred) or mel spectrogram (n_fft 2048, centred) in dB
    (librosa.power_to_db with these amin, ref and top_db), minus its maximum.
    The keywords are those openl3's preprocess_audio passes on (`**kw`)."""
    import librosa

    if n_mels is None:
        s = np.abs(librosa.stft(y=window, n_fft=n_fft or 512, hop_length=hop_length, center=False))
    else:
        s = librosa.feature.melspectrogram(
            y=window, sr=TARGET_SR, n_mels=n_mels, n_fft=n_fft or 2048, hop_length=hop_length,
            center=True, power=1.0,
        )
    s = librosa.power_to_db(S=s, ref=db_ref, amin=db_amin, top_db=dynamic_range)
    return s - s.max()


def librosa_frontend(windows: np.ndarray, input_repr: str, **kw: Any) -> np.ndarray:
    """openl3's librosa front-end, one librosa call per window as openl3 makes them: (B, F, T).

    Computed in the dtype of `windows` (openl3 gets float64 from soundfile). `kw`: see
    librosa_window (openl3's defaults when none are given).
    """
    windows = np.asarray(windows).reshape(-1, WINDOW)
    n_mels = None if input_repr == "linear" else int(input_repr[3:])
    return np.stack([librosa_window(w, n_mels, **kw) for w in windows])


def spectrogram_chunk(segment: np.ndarray, starts: np.ndarray, input_repr: str, frontend: str) -> np.ndarray:
    """Spectrograms (B, F, T) of the windows `segment[s : s + 48000]`, s in `starts`, by `frontend`."""
    if frontend == "kapre":
        return kapre_spectrogram(segment, starts, input_repr)
    windows = np.stack([segment[s : s + WINDOW] for s in starts])
    return librosa_frontend(windows, input_repr)


# ---------------------------------------------------------------------------
# Images (openl3 core._preprocess_image_batch)
# ---------------------------------------------------------------------------
_FLOAT_OR_SIGNED = (np.float16, np.float32, np.float64, np.int8, np.int16, np.int32, np.int64)
_UNSIGNED = (np.uint8, np.uint16, np.uint32, np.uint64)


def _img_as_float32(x: np.ndarray) -> np.ndarray:
    """skimage.img_as_float32: floats cast; integers scaled by their dtype's maximum."""
    if x.dtype.kind == "f":
        return x.astype(np.float32)
    if x.dtype.kind in "ui":
        imax = np.iinfo(x.dtype).max
        # skimage multiplies in float32 for 8/16-bit input, in float64 above
        comp = np.float32 if x.dtype.itemsize <= 2 else np.float64
        out = np.multiply(x, 1.0 / imax, dtype=comp)
        if x.dtype.kind == "i":
            np.maximum(out, -1.0, out=out)
        return out.astype(np.float32, copy=False)
    return x.astype(np.float32)


def _linear_taps(n_in: int, n_out: int, first: int, count: int) -> tuple[np.ndarray, ...]:
    """Source indices and weights of output samples first..first+count-1 of a linear
    resize n_in -> n_out with half-pixel centres (scipy.ndimage.zoom, grid_mode=True)."""
    c = (np.arange(first, first + count) + 0.5) * (n_in / n_out) - 0.5
    c = np.clip(c, 0.0, n_in - 1)
    i0 = np.floor(c).astype(np.int64)
    w1 = c - i0
    return i0, np.minimum(i0 + 1, n_in - 1), 1.0 - w1, w1


def _rescaled_crop(frame: np.ndarray, scaling: float) -> np.ndarray:
    """The centre 224x224 of what openl3 gets from
    `skimage.transform.rescale(frame, scaling, order=1, mode='constant', clip=True,
    preserve_range=False, anti_aliasing=False, channel_axis=-1)`.

    Only the cropped pixels are computed (from the two source rows and columns
    each needs), so a 100-megapixel photo costs a few megabytes. Integer
    frames are scaled by their dtype's maximum (img_as_float), in float64;
    float32 frames keep float32 like skimage's output.
    """
    h, w = frame.shape[:2]
    oh, ow = (int(v) for v in np.maximum(np.round(scaling * np.array([h, w], np.float64)), 1))
    r0, c0 = oh // 2 - IMAGE_SIZE // 2, ow // 2 - IMAGE_SIZE // 2
    ry0, ry1, wy0, wy1 = _linear_taps(h, oh, r0, IMAGE_SIZE)
    rx0, rx1, wx0, wx1 = _linear_taps(w, ow, c0, IMAGE_SIZE)
    if frame.dtype.kind in "ui":
        scale = 1.0 / np.iinfo(frame.dtype).max
        lo, hi = float(frame.min()) * scale, float(frame.max()) * scale

        def rows(idx: np.ndarray) -> np.ndarray:
            return frame[idx].astype(np.float64) * scale
    else:
        lo, hi = float(frame.min()), float(frame.max())

        def rows(idx: np.ndarray) -> np.ndarray:
            return frame[idx].astype(np.float64)
    t = rows(ry0) * wy0[:, None, None] + rows(ry1) * wy1[:, None, None]
    out = t[:, rx0] * wx0[None, :, None] + t[:, rx1] * wx1[None, :, None]
    np.clip(out, lo, hi, out=out)  # skimage's clip=True: to the input's range
    return out.astype(np.float32) if frame.dtype == np.float32 else out


def preprocess_image_batch(image: np.ndarray, warn: bool = True) -> np.ndarray:
    """openl3's `_preprocess_image_batch`: (H, W, 3) or (N, H, W, 3) -> (N, 224, 224, 3) float32.

    Raises OpenL3Error as openl3 does (not 3-D/4-D, not 3 channels, a side
    under 224 px); warns (OpenL3Warning) on an all-zero input unless not `warn`. The rules, per
    call (for a video: over all its frames at once):
    - exactly 224x224: unsigned integers -> 2 * x / max_of_dtype - 1 in [-1, 1];
    - shorter side > 256: skimage bilinear rescale to a shorter side of 256,
      centre crop 224, values x / max_of_dtype in [0, 1];
    - otherwise: centre crop of the raw values, then everything is divided by
      the largest |value| of the whole batch when that exceeds 1.
    """
    image = np.asarray(image)
    if image.size == 0:
        raise OpenL3Error("Got empty image")
    if warn and np.all(image == 0):
        warnings.warn("Provided image is all zeros", OpenL3Warning, stacklevel=2)
    if image.ndim not in (3, 4):
        raise OpenL3Error("RGB image array can only be 3D or 4D (sequence of videos)")
    if image.shape[-1] != 3:
        raise OpenL3Error("Need 3 channel images corresponding to RGB.")
    if image.ndim == 3:
        image = image[np.newaxis]
    h, w = image.shape[1], image.shape[2]
    if min(h, w) < IMAGE_SIZE:
        raise OpenL3Error(
            f"Image(s) must be at at least as large as 224x224 px. Got image(s) of size {h}x{w} px"
        )
    if (h, w) != (IMAGE_SIZE, IMAGE_SIZE):
        scaling = RESIZE_SIDE / min(h, w)
        batch = np.zeros((image.shape[0], IMAGE_SIZE, IMAGE_SIZE, 3))  # float64, as openl3
        for idx, frame in enumerate(image):
            if min(h, w) > RESIZE_SIDE:
                batch[idx] = _rescaled_crop(frame, scaling)
            else:
                r0, c0 = h // 2 - IMAGE_SIZE // 2, w // 2 - IMAGE_SIZE // 2
                batch[idx] = frame[r0 : r0 + IMAGE_SIZE, c0 : c0 + IMAGE_SIZE]
    else:
        batch = image
    if batch.dtype in _FLOAT_OR_SIGNED:
        batch = _img_as_float32(batch)
    elif batch.dtype in _UNSIGNED:
        batch = 2 * _img_as_float32(batch) - 1
    else:
        batch = batch.astype(np.float32)  # bool and the like: Keras would cast them
    peak = np.max(np.abs(batch))
    if peak > 1:
        batch /= peak
    return np.ascontiguousarray(batch, dtype=np.float32)


def crop_and_scale(frames: np.ndarray, peak: float) -> np.ndarray:
    """openl3's rule for frames with both sides in [224, 256] (process_video_file's 256x256):
    centre 224x224 crop divided by `peak` (the largest value over the whole video) when it
    exceeds 1: (k, H, W, 3) uint8 -> (k, 224, 224, 3) float32."""
    h, w = frames.shape[1:3]
    r0, c0 = h // 2 - IMAGE_SIZE // 2, w // 2 - IMAGE_SIZE // 2
    x = frames[:, r0 : r0 + IMAGE_SIZE, c0 : c0 + IMAGE_SIZE].astype(np.float32)
    if peak > 1:
        x /= np.float32(peak)
    return x
