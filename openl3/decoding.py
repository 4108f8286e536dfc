"""Files read as openl3 0.4.2 reads them: audio (soundfile), images (skimage/imageio), videos (moviepy).

What `process_audio_file`, `process_image_file` and `process_video_file` embed, without
moviepy, imageio or skimage: soundfile's float64 samples; Pillow's pixels as imageio
gives them; moviepy's view of a video (ffmpeg's 256x256 bicubic frames, its frame rate
and duration as ffmpeg prints them, its 48 kHz stereo sound) through PyAV. Errors are
OpenL3Error naming the file.
"""

from __future__ import annotations

import os
import warnings
from dataclasses import dataclass
from numbers import Real
from typing import Any

import numpy as np

from embedkit.openl3.openl3_exceptions import OpenL3Error
from embedkit.openl3.openl3_warnings import OpenL3Warning
from embedkit.openl3.preprocessing import TARGET_SR, VIDEO_SIZE


# ---------------------------------------------------------------------------
# Audio and images
# ---------------------------------------------------------------------------
def read_audio_like_openl3(path: str) -> tuple[np.ndarray, Real]:
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


# ---------------------------------------------------------------------------
# Videos: moviepy's decode, reproduced with PyAV
# ---------------------------------------------------------------------------
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
    (network.VideoEmbedder) so the video never sits in memory.
    Audio: swresample to 48 kHz stereo s16 (ffmpeg `-ar 48000 -ac 2`), cut or
    zero-padded to moviepy's length, averaged to mono; exact in float32
    ((L + R) / 65536).
    """
    import av

    from embedkit import media

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
        scaler = media.VideoScaler(VIDEO_SIZE, "bicubic")  # upright, as ffmpeg's autorotate
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
