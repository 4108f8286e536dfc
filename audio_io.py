"""Audio decoding and resampling: each file is decoded once, resampled once per (rate, method).

`decode(path)` gives mono float32 (channel mean) at the file's own rate, from any
container with an audio stream: soundfile (libsndfile) for the formats it reads,
so their samples stay exactly what earlier releases gave, and FFmpeg through PyAV
for everything else (AAC and ALAC in .m4a/.mp4, WebM/Opus, MKV, video sound
tracks, ...). `Decoded.at(rate, method, precision)` memoizes resampled versions so
every plugin needing the same one shares one copy; `precision` is the arithmetic of
resampy's filters, which plugins choose to match their reference (see `resample`).
"""

from __future__ import annotations

import os
import threading
import time
from dataclasses import dataclass, field

import numpy as np
import soundfile as sf

# Extensions libsndfile 1.2 decodes (read through soundfile).
SOUNDFILE_EXTENSIONS = (".wav", ".flac", ".ogg", ".oga", ".opus", ".mp3", ".aif", ".aiff", ".aifc")
# Audio-only extensions read through FFmpeg (PyAV).
PYAV_AUDIO_EXTENSIONS = (".m4a", ".m4b", ".aac", ".alac", ".caf", ".mka", ".wma", ".ac3", ".amr", ".ape",
                         ".wv")
AUDIO_EXTENSIONS = SOUNDFILE_EXTENSIONS + PYAV_AUDIO_EXTENSIONS

# method name -> description (for docs / error messages)
RESAMPLERS = {
    "soxr_hq": "soxr, high quality (default; fast)",
    "soxr_vhq": "soxr, very high quality",
    "kaiser_best": "resampy kaiser_best (what openl3 and crepe use upstream)",
    "kaiser_fast": "resampy kaiser_fast",
}

# Decode in blocks so a long multichannel file never sits in memory at full width.
_BLOCK_FRAMES = 1 << 20


class MediaError(RuntimeError):
    """An input file cannot be used; the message says why (and what to do, where there is something)."""


AudioError = MediaError  # the name earlier releases raised


def decode(path: str | os.PathLike) -> tuple[np.ndarray, int]:
    """Read the audio of a file as mono float32 (channel mean) and its sample rate.

    soundfile for the extensions it reads (falling back to FFmpeg when it cannot
    open the file), FFmpeg for every other container. Raises MediaError for
    unreadable, empty or non-finite audio and for files without an audio stream.
    """
    audio, sr, _ = decode_mono(path)
    return audio, sr


def decode_mono(path: str | os.PathLike, residual: bool = False) -> tuple[np.ndarray, int, np.ndarray | None]:
    """(mono float32, sample rate, residual) of a file; see `decode`.

    residual: also return what the float32 signal lost against the float64 channel
    mean of the samples read as float64 (what openl3 computes from `sf.read`), as
    float32 (audio + residual is that mean to ~1e-14), or None where nothing was lost
    (mono and stereo 8/16-bit PCM, mono float32, ...). The float32 signal is the same
    either way.
    """
    check_not_empty(path)
    if os.path.splitext(str(path))[1].lower() in SOUNDFILE_EXTENSIONS:
        try:
            info = sf.info(str(path))
        except Exception as exc:  # soundfile raises LibsndfileError/RuntimeError
            try:  # e.g. AAC in a file named .wav, or a WAV codec libsndfile lacks
                mono = _decode_pyav(path, residual)
            except MediaError as second:
                # libsndfile's own words can mislead ("not a regular file (possibly a pipe?)"): say
                # what it is first, then both decoders' details
                raise MediaError(f"not a decodable audio file (libsndfile: {_unpath(one_line(exc), path)}; "
                                 f"FFmpeg: {_unpath(_detail(second), path)}){sniff_hint(path)}") from None
        else:
            mono = _decode_soundfile(path, info, residual)
    else:
        mono = _decode_pyav(path, residual)
    audio, sr, lo = mono.result()
    if audio.size == 0:
        raise MediaError("empty audio (0 samples decoded)")
    if not np.isfinite(audio).all():
        bad = int((~np.isfinite(audio)).sum())
        raise MediaError(f"audio contains {bad} NaN/Inf samples; fix or re-export the file")
    return audio, sr, lo


class _Mono:
    """Mixes (frames, channels) blocks to mono into one growing float32 buffer.

    The float32 signal is the float32 channel mean of the samples as float32 (what
    every earlier release gave). With `residual`, blocks may come as float64 (soundfile
    gives float32 samples equal to those rounded) and the float64 mean minus that
    signal is kept too, allocated at the first block where it is not zero.
    """

    def __init__(self, size: int, residual: bool) -> None:
        self.audio = np.empty(max(size, 0), dtype=np.float32)
        self.n = 0
        self.sr = 0
        self.want_residual = residual
        self.residual: np.ndarray | None = None

    def add(self, block: np.ndarray) -> None:
        m, n = block.shape[0], self.n
        if n + m > self.audio.shape[0]:
            size = max(2 * self.audio.shape[0], n + m, 1 << 16)
            self.audio = np.resize(self.audio, size)
            if self.residual is not None:
                self.residual = np.resize(self.residual, size)
        b32 = block if block.dtype == np.float32 else block.astype(np.float32)
        out = self.audio[n : n + m]
        if block.shape[1] == 1:
            out[:] = b32[:, 0]
        else:
            np.mean(b32, axis=1, dtype=np.float32, out=out)
        if self.want_residual and (block.shape[1] > 1 or block.dtype != np.float32):
            # np.mean of the float64 (frames, channels) block: openl3's downmix of sf.read's array
            exact = (block[:, 0] if block.shape[1] == 1
                     else np.mean(block.astype(np.float64, copy=False), axis=1))
            lo = (exact - out).astype(np.float32)
            if self.residual is None and lo.any():
                self.residual = np.zeros(self.audio.shape[0], dtype=np.float32)
            if self.residual is not None:
                self.residual[n : n + m] = lo
        self.n = n + m

    def result(self) -> tuple[np.ndarray, int, np.ndarray | None]:
        n = self.n
        audio = self.audio[:n] if n < self.audio.shape[0] else self.audio
        lo = None if self.residual is None else self.residual[:n]
        if n < self.audio.shape[0] // 2:  # don't keep a mostly unused buffer alive
            audio = audio.copy()
            lo = None if lo is None else lo.copy()
        return audio, self.sr, lo


def _decode_soundfile(path, info, residual: bool = False) -> _Mono:
    if info.frames == 0:
        raise MediaError("empty audio (0 samples)")
    # Fill one preallocated mono buffer block by block: peak memory stays near the
    # decoded mono size (the frame count in the header can be an estimate, e.g. MP3).
    mono = _Mono(info.frames, residual)
    try:
        with sf.SoundFile(str(path)) as f:
            # float64 only when asked: it holds more than float32 only for 32-bit PCM and
            # float64 sources, and libsndfile's float32 samples are those values rounded
            for block in f.blocks(blocksize=_BLOCK_FRAMES, dtype="float64" if residual else "float32",
                                  always_2d=True):
                mono.add(block)
            mono.sr = int(f.samplerate)
    except Exception as exc:
        raise MediaError(f"decoding failed: {one_line(exc)}") from None
    return mono


def _decode_pyav(path, residual: bool = False) -> _Mono:
    """The first audio stream of any FFmpeg-readable container, mono float32 at its own rate.

    Samples are what FFmpeg's decoder gives after the container's own gapless
    trimming (edit lists, encoder delay side data); start_time is not added (an MP3
    reports 25 ms although its samples are already trimmed).
    """
    import av

    try:
        container = av.open(str(path))
    except Exception as exc:
        raise MediaError(f"cannot decode: {one_line(exc)}{sniff_hint(path)}") from None
    with container:
        if not container.streams.audio:
            what = "a video without an audio track" if container.streams.video else "no audio stream"
            raise MediaError(f"{what}{sniff_hint(path) if not container.streams.video else ''}")
        stream = container.streams.audio[0]
        sr = stream.codec_context.sample_rate or stream.rate
        estimate = round(float(stream.duration * stream.time_base) * sr) if stream.duration else 0
        mono = _Mono(max(estimate + 4096, 1 << 16), residual)
        mono.sr = int(sr)
        # Packed float32 whatever the codec's sample format (exact for 16-bit PCM).
        to_float = av.AudioResampler(format="flt")
        try:
            for frame in container.decode(stream):
                for out in to_float.resample(frame):
                    block = out.to_ndarray().reshape(-1, out.layout.nb_channels)
                    mono.add(block)
            for out in to_float.resample(None):
                mono.add(out.to_ndarray().reshape(-1, out.layout.nb_channels))
        except Exception as exc:
            n = mono.n
            if n == 0:
                raise MediaError(f"decoding failed: {one_line(exc)}") from None
            raise MediaError(f"decoding failed after {n / sr:.2f} s of audio: {one_line(exc)} "
                             "(the file is damaged or truncated)") from None
    if mono.n == 0:
        raise MediaError("empty audio (0 samples decoded)")
    # The encoder pads the last frame (AAC: to 1024 samples); the container's duration
    # says where the signal ends. Trim to it when the excess is no more than that padding.
    frame = stream.codec_context.frame_size or 0
    if estimate and frame and 0 < mono.n - estimate <= 2 * frame:
        mono.n = estimate
    return mono


def probe_streams(path: str | os.PathLike) -> tuple[bool, bool]:
    """(has an audio stream, has a video stream), from the container header only."""
    import av

    check_not_empty(path)
    try:
        with av.open(str(path)) as container:
            return bool(container.streams.audio), bool(container.streams.video)
    except Exception as exc:
        raise MediaError(f"cannot open: {one_line(exc)}{sniff_hint(path)}") from None


def check_not_empty(path: str | os.PathLike) -> None:
    """MediaError for a regular file of 0 bytes (a pipe is read as it comes)."""
    import stat

    try:
        st = os.stat(path)
    except OSError as exc:
        raise MediaError(f"cannot read: {exc.strerror}") from None
    if stat.S_ISREG(st.st_mode) and st.st_size == 0:
        raise MediaError("empty file (0 bytes)")


# First bytes -> what the file really is, for messages about files whose extension lies.
_MAGIC = (
    (b"\xff\xd8\xff", "a JPEG image"), (b"\x89PNG", "a PNG image"), (b"GIF8", "a GIF image"),
    (b"BM", "a BMP image"), (b"II*\x00", "a TIFF image"), (b"MM\x00*", "a TIFF image"),
    (b"fLaC", "FLAC audio"), (b"OggS", "an Ogg file"), (b"ID3", "MP3 audio"),
    (b"\x1aE\xdf\xa3", "a Matroska/WebM file"), (b"%PDF", "a PDF document"), (b"PK\x03\x04", "a zip archive"),
)


def _detail(exc: MediaError) -> str:
    """A MediaError's text without its hint (the caller adds the hint once)."""
    return str(exc).split("; the file holds ")[0].removeprefix("cannot decode: ")


def _unpath(text: str, path: str | os.PathLike) -> str:
    """A decoder's message without the file's path (the report names the file already)."""
    quoted = repr(str(path))
    return text.replace(f"Error opening {quoted}: ", "").replace(f": {quoted}", "").rstrip(".")


# What each content kind may be named: a hint only where the extension says something else.
_AGREES = {
    "a JPEG image": (".jpg", ".jpeg"), "a PNG image": (".png",), "a GIF image": (".gif",),
    "a BMP image": (".bmp",), "a TIFF image": (".tif", ".tiff"), "FLAC audio": (".flac",),
    "an Ogg file": (".ogg", ".oga", ".opus", ".ogv", ".spx"), "MP3 audio": (".mp3",),
    "a Matroska/WebM file": (".mkv", ".mka", ".webm"), "a PDF document": (".pdf",),
    "a zip archive": (".zip",), "WAV audio": (".wav", ".wave"), "a WebP image": (".webp",),
    "an AVI video": (".avi",),
    "an MP4/M4A file": (".mp4", ".m4a", ".m4v", ".m4b", ".mov", ".3gp", ".3g2"),
}


def sniff_hint(path: str | os.PathLike) -> str:
    """'; the file holds a JPEG image (its extension says .wav)' when the content contradicts the name
    ('' when they agree: a damaged .mp4 that holds MP4 needs no hint)."""
    try:
        with open(path, "rb") as f:
            head = f.read(16)
    except OSError:
        return ""
    what = next((name for magic, name in _MAGIC if head.startswith(magic)), None)
    if what is None and head[:4] == b"RIFF":
        what = {b"WAVE": "WAV audio", b"WEBP": "a WebP image", b"AVI ": "an AVI video"}.get(head[8:12])
    if what is None and head[4:8] == b"ftyp":
        what = "an MP4/M4A file"
    if what is None:
        if head and all(32 <= b < 127 or b in (9, 10, 13) for b in head):
            what = "text"
        else:
            return ""
    ext = os.path.splitext(str(path))[1].lower()
    if ext in _AGREES.get(what, ()):
        return ""
    return f"; the file holds {what} (its extension says {ext or '(none)'})"


# resampy's arithmetic, per call: "float32" accumulates every filter tap into a float32 sample
# (what resampy does with float32 input, e.g. crepe's), "float64" in float64 (what it does with
# float64 input, e.g. openl3's, which reads files with soundfile as float64).
PRECISIONS = ("float32", "float64")


# resampy's filters on a torch device (a run on CUDA): files up to this long go there whole; a
# longer one (its float64 copies would take GBs of device memory) stays on the CPU, in blocks.
DEVICE_RESAMPLE_SECONDS = 1200.0
# where a run resamples with resampy's filters (`pipeline.resample_device_for`)
RESAMPLE_ON = ("auto", "cpu", "device")


def resamples_on(device: str | None, n_samples: int, sr_in: int, sr_out: int, method: str) -> str | None:
    """The torch device `resample` uses for this signal (None: NumPy on the CPU): `device` for
    resampy's filters at rates `polyphase` takes, on signals from one filter length to
    DEVICE_RESAMPLE_SECONDS; never for soxr (a CPU library)."""
    from embedkit import polyphase

    if (device is None or method.startswith("soxr") or sr_in == sr_out
            or not polyphase.supported(sr_in, sr_out, method)):
        return None
    if not int(np.ceil(sr_in / sr_out)) + 1 <= n_samples <= DEVICE_RESAMPLE_SECONDS * sr_in:
        return None
    return device


def resample(audio: np.ndarray, sr_in: int, sr_out: int, method: str = "soxr_hq",
             precision: str | None = None, residual: np.ndarray | None = None,
             out_dtype: type = np.float32, device: str | None = None) -> np.ndarray:
    """Resample mono audio; returns `out_dtype` (float32 unless a plugin takes float64).
    Identity (up to the dtype) when the rates match. `device`: a torch device for resampy's
    filters (`resamples_on` says when it is used): `polyphase.resample_torch` there, the same
    bounds against resampy as the NumPy path; the result comes back as a NumPy array (out of
    device memory: the NumPy path instead).

    precision (resampy's filters only; soxr's is set by its quality): the arithmetic
    resampy accumulates in, "float32" or "float64"; None: the input's own (float64
    for float64 input, else float32), as resampy itself does. "float64" on float32
    input is computed a block at a time and rounded to float32 once: resampy on the
    whole float64 signal (to 1e-12, see `resampy_resample`), without a float64 copy of
    the file. residual (float64 only): `decode_mono`'s, added to the float32 signal per block.
    """
    if method not in RESAMPLERS:
        raise ValueError(f"unknown resampler {method!r}; known: {', '.join(RESAMPLERS)}")
    if precision is not None and precision not in PRECISIONS:
        raise ValueError(f"unknown resampling precision {precision!r}; known: {', '.join(PRECISIONS)}")
    if sr_in == sr_out:
        return np.asarray(audio, dtype=out_dtype)
    if method.startswith("soxr"):
        import soxr

        out = soxr.resample(audio, sr_in, sr_out, quality="HQ" if method == "soxr_hq" else "VHQ")
        return np.asarray(out, dtype=out_dtype)
    audio = np.asarray(audio)
    if precision is None:
        precision = "float64" if audio.dtype == np.float64 else "float32"
    on = resamples_on(device, audio.shape[0], sr_in, sr_out, method)
    if on is not None and audio.ndim == 1:
        try:
            return _resample_torch(audio, sr_in, sr_out, method, precision, residual, out_dtype, on)
        except RuntimeError as exc:  # torch.OutOfMemoryError is one: the CPU path below, same bounds
            if "out of memory" not in str(exc).lower():
                raise
            import torch

            if torch.cuda.is_available():
                torch.cuda.empty_cache()
    n_out = int(np.ceil(audio.shape[0] * sr_out / sr_in))
    # resampy refuses signals shorter than its filter; zero-extend those (what the
    # filter assumes beyond the ends anyway) and keep the expected length.
    min_len = int(np.ceil(sr_in / sr_out)) + 1
    if audio.shape[0] < min_len:
        if residual is not None and precision == "float64":
            audio = audio.astype(np.float64) + residual
        # enough zeros for n_out outputs (resampy gives int(len * sr_out / sr_in))
        padded = np.pad(audio, (0, max(min_len, int(np.ceil(n_out * sr_in / sr_out)) + 1) - audio.shape[0]))
        return resampy_resample(padded, sr_in, sr_out, method, precision, out_dtype)[:n_out]
    return resampy_resample(audio, sr_in, sr_out, method, precision, out_dtype, residual)


def _resample_torch(audio: np.ndarray, sr_in: int, sr_out: int, method: str, precision: str,
                    residual: np.ndarray | None, out_dtype: type, device: str) -> np.ndarray:
    import torch

    from embedkit import polyphase

    x = torch.from_numpy(np.ascontiguousarray(audio)).to(device)
    lo = None
    if residual is not None and precision == "float64":
        lo = torch.from_numpy(np.ascontiguousarray(residual)).to(device)
    y = polyphase.resample_torch(x, sr_in, sr_out, method, precision, residual=lo)
    return y.cpu().numpy().astype(out_dtype, copy=False)  # float64 -> float32: rounded once, as on the CPU


def resampy_resample(x: np.ndarray, sr_in: float, sr_out: float, filter: str = "kaiser_best",
                     precision: str | None = None, out_dtype: type | None = None,
                     residual: np.ndarray | None = None) -> np.ndarray:
    """resampy.resample of a 1-D signal in a chosen arithmetic, whatever ran before in the process.

    `precision` ("float32"/"float64"; None: float64 for float64 input, else float32) alone
    decides the arithmetic: the samples are resampy.resample(x.astype(precision)) as in a
    fresh process (where resampy's numba gufunc has only the loop for that dtype), length
    int(n * sr_out / sr_in); returned as `out_dtype` (default: precision). Computed as
    polyphase matrix products (`polyphase.resample`: within 1e-12 of max |y| of resampy's
    samples in float64, within resampy's own float32 rounding in float32; a block at a
    time, in bounded memory); rates it does not take run resampy's own loop
    (`polyphase.resampy_loop`). `residual` (float64 only, same length as x) is added to
    x in float64 a block at a time (no float64 copy of the signal).
    """
    from embedkit import polyphase

    x = np.asarray(x)
    if x.ndim != 1:
        raise ValueError(f"resampy_resample takes 1-D audio, got shape {x.shape}")
    if sr_in <= 0 or sr_out <= 0:
        raise ValueError(f"invalid sample rates {sr_in} -> {sr_out}")
    return polyphase.resample(x, sr_in, sr_out, filter, precision, out_dtype, residual)


@dataclass
class Decoded:
    """One decoded file with memoized resampled versions.

    resample_seconds collects seconds spent resampling per `resample_key`.
    """

    audio: np.ndarray
    sample_rate: int
    residual: np.ndarray | None = field(default=None, repr=False)  # see decode_mono
    has_residual: bool = False  # whether `residual` was computed (None then: nothing was lost)
    _cache: dict = field(default_factory=dict, repr=False)
    resample_seconds: dict = field(default_factory=dict, repr=False)
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    @property
    def duration_seconds(self) -> float:
        return self.audio.shape[0] / self.sample_rate

    # Picklable (the Ray engine ships decoded files to its model workers): the lock stays behind.
    def __getstate__(self) -> dict:
        return {k: v for k, v in self.__dict__.items() if k != "_lock"}

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update(state)
        self._lock = threading.Lock()

    def at(self, rate: int, method: str, precision: str = "float32", dtype: str = "float32",
           device: str | None = None) -> np.ndarray:
        """The signal at `rate` Hz via `method` in `precision` (see `resample`; on the torch
        `device` where `resamples_on` says so), computed once.

        float64 precision uses the residual where there is one: the result is then the
        float64 signal (as openl3 builds it from sf.read) resampled, rounded to float32
        unless `dtype` is "float64" (a plugin whose reference computes on float64 samples
        after resampling, e.g. OpenL3's librosa front-end: twice the memory of float32).
        """
        lo = self.residual if precision == "float64" and not method.startswith("soxr") else None
        if rate == self.sample_rate and lo is None and dtype == "float32":
            return self.audio
        key = resample_key(rate, method, precision, dtype)
        with self._lock:
            if key not in self._cache:
                t0 = time.perf_counter()
                if rate == self.sample_rate:  # the float64 signal (rounded once), a block at a time
                    out = np.empty(self.audio.shape, dtype)
                    for i in range(0, out.shape[0], _BLOCK_FRAMES):
                        j = i + _BLOCK_FRAMES
                        out[i:j] = self.audio[i:j].astype(np.float64) + (0.0 if lo is None else lo[i:j])
                    same = dtype == "float32" and np.array_equal(out, self.audio)
                    self._cache[key] = self.audio if same else out
                else:
                    self._cache[key] = resample(self.audio, self.sample_rate, rate, method, precision, lo,
                                                np.dtype(dtype), device)
                self.resample_seconds[key] = time.perf_counter() - t0
            return self._cache[key]


def resample_key(rate: int, method: str, precision: str = "float32", dtype: str = "float32") -> tuple:
    """What identifies one resampled version: soxr's result does not depend on `precision`."""
    return (rate, method, None if method.startswith("soxr") else precision, dtype)


def load(path: str | os.PathLike, residual: bool = False) -> Decoded:
    """The decoded file; `residual`: with `decode_mono`'s residual (for float64 resampling)."""
    audio, sr, lo = decode_mono(path, residual)
    return Decoded(audio, sr, lo, residual)


def from_array(samples: np.ndarray, sample_rate: int, residual: bool = False) -> Decoded:
    """An in-memory signal as a decoded file: (n,) or (n, channels); float as it is, integers
    scaled to [-1, 1) as soundfile reads PCM (int16 / 32768, ...); mixed to mono as files are."""
    x = np.asarray(samples)
    if x.ndim == 1:
        x = x[:, None]
    if x.ndim != 2 or x.shape[0] == 0:
        raise MediaError(f"audio must be (n,) or (n, channels) with n > 0, got shape {np.shape(samples)}")
    if x.dtype.kind in "iu":
        info = np.iinfo(x.dtype)
        offset = (int(info.max) + 1) // 2 if x.dtype.kind == "u" else 0  # unsigned PCM is offset binary
        x = (x.astype(np.float64) - offset) / float(int(info.max) + 1 - offset)
    elif x.dtype not in (np.float32, np.float64):
        x = x.astype(np.float64)
    if not np.isfinite(x).all():
        raise MediaError("audio contains NaN/Inf samples")
    mono = _Mono(x.shape[0], residual)
    mono.sr = int(sample_rate)
    mono.add(x)
    audio, sr, lo = mono.result()
    return Decoded(audio, sr, lo, residual)


def one_line(exc: BaseException) -> str:
    msg = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {msg[-1] if msg else ''}".strip()
