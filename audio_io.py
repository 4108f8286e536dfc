"""Decoding and resampling: each file is decoded once, resampled once per (rate, method).

`decode(path)` gives mono float32 at the file's own rate; `Decoded.at(rate, method)`
memoizes resampled versions so every plugin needing the same pair shares one copy.
"""

from __future__ import annotations

import os
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import soundfile as sf

# Extensions soundfile (libsndfile 1.2) decodes; discovery uses them by default.
AUDIO_EXTENSIONS = (".wav", ".flac", ".ogg", ".oga", ".opus", ".mp3", ".aif", ".aiff", ".aifc")

# method name -> description (for docs / error messages)
RESAMPLERS = {
    "soxr_hq": "soxr, high quality (default; fast)",
    "soxr_vhq": "soxr, very high quality",
    "kaiser_best": "resampy kaiser_best (what openl3 and crepe use upstream)",
    "kaiser_fast": "resampy kaiser_fast",
}

# Decode in blocks so a long multichannel file never sits in memory at full width.
_BLOCK_FRAMES = 1 << 20


class AudioError(RuntimeError):
    """An input file cannot be used; the message says why."""


def decode(path: str | os.PathLike) -> tuple[np.ndarray, int]:
    """Read an audio file as mono float32 (channel mean) and its sample rate.

    Raises AudioError for unreadable, empty or non-finite audio.
    """
    try:
        info = sf.info(str(path))
    except Exception as exc:  # soundfile raises LibsndfileError/RuntimeError
        raise AudioError(f"cannot decode: {_one_line(exc)}") from None
    if info.frames == 0:
        raise AudioError("empty audio (0 samples)")
    # Fill one preallocated mono buffer block by block: peak memory stays near the
    # decoded mono size (the frame count in the header can be an estimate, e.g. MP3).
    audio = np.empty(max(info.frames, 0), dtype=np.float32)
    n = 0
    try:
        with sf.SoundFile(str(path)) as f:
            for block in f.blocks(blocksize=_BLOCK_FRAMES, dtype="float32", always_2d=True):
                if n + block.shape[0] > audio.shape[0]:
                    audio = np.resize(audio, max(2 * audio.shape[0], n + block.shape[0]))
                if block.shape[1] == 1:
                    audio[n : n + block.shape[0]] = block[:, 0]
                else:
                    np.mean(block, axis=1, dtype=np.float32, out=audio[n : n + block.shape[0]])
                n += block.shape[0]
            sr = f.samplerate
    except Exception as exc:
        raise AudioError(f"decoding failed: {_one_line(exc)}") from None
    audio = audio[:n] if n < audio.shape[0] else audio
    if audio.size == 0:
        raise AudioError("empty audio (0 samples decoded)")
    if not np.isfinite(audio).all():
        bad = int((~np.isfinite(audio)).sum())
        raise AudioError(f"audio contains {bad} NaN/Inf samples; fix or re-export the file")
    return audio, int(sr)


def resample(audio: np.ndarray, sr_in: int, sr_out: int, method: str = "soxr_hq") -> np.ndarray:
    """Resample mono audio; returns float32. Identity when the rates match."""
    if method not in RESAMPLERS:
        raise ValueError(f"unknown resampler {method!r}; known: {', '.join(RESAMPLERS)}")
    if sr_in == sr_out:
        return np.asarray(audio, dtype=np.float32)
    if method.startswith("soxr"):
        import soxr

        out = soxr.resample(audio, sr_in, sr_out, quality="HQ" if method == "soxr_hq" else "VHQ")
    else:
        import resampy

        n_out = int(np.ceil(audio.shape[0] * sr_out / sr_in))
        # resampy refuses signals shorter than its filter; zero-extend those (what the
        # filter assumes beyond the ends anyway) and keep the expected length.
        min_len = int(np.ceil(sr_in / sr_out)) + 1
        if audio.shape[0] < min_len:
            out = resampy.resample(np.pad(audio, (0, min_len - audio.shape[0])), sr_in, sr_out, filter=method)
            out = out[:n_out]
        else:
            out = resampy.resample(audio, sr_in, sr_out, filter=method, axis=-1)
    return np.asarray(out, dtype=np.float32)


@dataclass
class Decoded:
    """One decoded file with memoized resampled versions.

    timings collects seconds spent resampling per (rate, method) key.
    """

    audio: np.ndarray
    sample_rate: int
    _cache: dict = field(default_factory=dict, repr=False)
    resample_seconds: dict = field(default_factory=dict, repr=False)
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    @property
    def duration_seconds(self) -> float:
        return self.audio.shape[0] / self.sample_rate

    def at(self, rate: int, method: str) -> np.ndarray:
        """The signal at `rate` Hz via `method`, computed once."""
        if rate == self.sample_rate:
            return self.audio
        key = (rate, method)
        with self._lock:
            if key not in self._cache:
                t0 = time.perf_counter()
                self._cache[key] = resample(self.audio, self.sample_rate, rate, method)
                self.resample_seconds[key] = time.perf_counter() - t0
            return self._cache[key]


def load(path: str | os.PathLike) -> Decoded:
    audio, sr = decode(path)
    return Decoded(audio, sr)


def discover(
    audio_dir: str | os.PathLike,
    extensions: tuple[str, ...] = AUDIO_EXTENSIONS,
    recursive: bool = False,
) -> list[Path]:
    """Audio files under `audio_dir` as paths relative to it, sorted.

    Hidden files and folders (leading '.') and other extensions are ignored;
    with `recursive`, symlinked folders are followed once (loops are cut).
    """
    root = Path(audio_dir)
    if not root.is_dir():
        raise FileNotFoundError(f"audio folder {root} does not exist (set --audio_dir)")
    exts = tuple(e.lower() if e.startswith(".") else "." + e.lower() for e in extensions)
    found: list[Path] = []
    seen_dirs: set[tuple[int, int]] = set()

    def walk(d: Path) -> None:
        try:
            st = d.stat()
        except OSError:
            return
        if (st.st_dev, st.st_ino) in seen_dirs:
            return  # symlink loop or a folder reached twice
        seen_dirs.add((st.st_dev, st.st_ino))
        try:
            entries = sorted(os.scandir(d), key=lambda e: e.name)
        except OSError:
            return
        for e in entries:
            if e.name.startswith("."):
                continue
            try:
                is_dir = e.is_dir()
            except OSError:
                continue
            if is_dir:
                if recursive:
                    walk(Path(e.path))
            elif e.name.lower().endswith(exts):
                found.append(Path(e.path).relative_to(root))

    walk(root)
    return sorted(found, key=lambda p: p.as_posix())


def _one_line(exc: BaseException) -> str:
    msg = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {msg[-1] if msg else ''}".strip()
