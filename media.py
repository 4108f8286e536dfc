"""What an input file is, and its content decoded once: audio, video frames or an image.

- `discover(folder)` lists the files every decoder here reads (case-insensitive
  extensions) and says what it left out and why.
- `Media(path)` is one input file. `audio(rate, method)` is its mono signal
  (decoded once, resampled once per (rate, method): see `audio_io`);
  `image()` its pixels by the one image rule below; `frames()` streams its video
  frames in chunks with true presentation times, so a 2-hour video never sits
  in memory.

The image rule, shared by every image model: EXIF orientation applied;
grayscale and palette to RGB as Pillow converts them; alpha dropped without
compositing (Pillow's `convert("RGB")`, as openl3's `process_image_file`);
16-bit and 32-bit samples scaled to 8 bits (Pillow's `convert` would clip them
at 255); GIF and other animated formats: the first frame. Result (H, W, 3) uint8.

Video frames: RGB uint8, upright by each frame's display matrix (as ffmpeg's
command line applies it), at the stream's own size or scaled by FFmpeg's own scale
filter, each with its presentation time in seconds from the stream's first frame
(variable frame rate gives true times).
"""

from __future__ import annotations

import errno
import os
import queue
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

import numpy as np

from embedkit import audio_io
from embedkit.audio_io import MediaError

# Extension -> kind. Audio through soundfile where it reads them (byte-identical to
# earlier releases), everything else through FFmpeg (PyAV); images through Pillow.
AUDIO_EXTENSIONS = audio_io.SOUNDFILE_EXTENSIONS + audio_io.PYAV_AUDIO_EXTENSIONS
VIDEO_EXTENSIONS = (".mp4", ".m4v", ".mov", ".mkv", ".webm", ".avi", ".mpg", ".mpeg", ".ts", ".mts",
                    ".wmv", ".flv", ".3gp", ".ogv")
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".webp", ".tif", ".tiff", ".bmp", ".gif")
ALL_EXTENSIONS = AUDIO_EXTENSIONS + VIDEO_EXTENSIONS + IMAGE_EXTENSIONS

# The size guard, by pixels per frame, for images and video frames alike (a decompression bomb
# or a scan too large for the machine). Checked from the header, before any pixel is decoded;
# a 108 MP phone photo is fine, a 196 MP PNG is not. Configurable: `max_pixels_per_frame`.
MAX_PIXELS_PER_FRAME = 178_956_970  # Pillow's own refusal threshold (2 x its warning limit)
MAX_IMAGE_PIXELS = MAX_PIXELS_PER_FRAME  # the name earlier releases used
# Decoded video frames held per chunk, by pixels: 16 frames up to 1080p (every chunk of an
# ordinary video is 16 frames), fewer for larger frames, one for the largest, so the frames in
# flight (chunks queued, FFmpeg's own threads) stay within a few GB whatever the frame size.
FRAME_CHUNK_PIXELS = 16 * 1920 * 1080


def too_large(what: str, width: int, height: int, limit: int) -> MediaError:
    """The size guard's refusal, with the limit and how to change it."""
    return MediaError(
        f"{what} too large: {width}x{height} = {width * height / 1e6:.1f} megapixels, over the limit of "
        f"{limit / 1e6:.1f} megapixels per frame (max_pixels_per_frame; raise it where this machine has "
        f"about {width * height * 3 * 4 / 2**30:.1f} GB for it, or downscale the file)")


def kind_of(path: str | os.PathLike) -> str | None:
    """"audio", "video" or "image" by extension (case-insensitive); None for other files."""
    ext = os.path.splitext(str(path))[1].lower()
    if ext in AUDIO_EXTENSIONS:
        return "audio"
    if ext in VIDEO_EXTENSIONS:
        return "video"
    if ext in IMAGE_EXTENSIONS:
        return "image"
    return None


# -- discovery ---------------------------------------------------------------------
@dataclass
class Listing:
    """Files found under a folder, and what was left out (with why).

    `names` maps each file to its output path (relative to a model folder), derived from
    what its folder holds (`outputs.output_names` over every media file there, whatever
    `extensions` or sub-folder options this run has), so a file's output name never depends
    on the run's selection.
    """

    files: list[Path]
    in_subfolders: int = 0  # media files below the top folder, not taken without `recursive`
    other_extensions: dict[str, int] = field(default_factory=dict)  # extension -> count, not taken
    hidden: int = 0
    not_selected: int = 0  # media files whose extension is not in this run's `extensions`
    excluded: list[Path] = field(default_factory=list)  # folders left out: the run's own output folder
    unusable: list[tuple[str, str]] = field(default_factory=list)  # (relative path, why): symlink loops, ...
    names: dict[Path, Path] = field(default_factory=dict)

    def left_out_lines(self) -> list[str]:
        """One line per reason, with what to do about it."""
        lines = []
        for folder in self.excluded:
            lines.append(f"the output folder {folder} (inside the input folder): never read as input")
        if self.in_subfolders:
            lines.append(f"{self.in_subfolders} media file(s) in sub-folders: add --recursive to take them")
        if self.not_selected:
            lines.append(f"{self.not_selected} media file(s) with extensions not in --extensions")
        if self.other_extensions:
            exts = ", ".join(f"{e or '(none)'} x{n}" for e, n in sorted(self.other_extensions.items()))
            total = sum(self.other_extensions.values())
            lines.append(f"{total} file(s) with extensions this run does not read: {exts}")
        for rel, why in self.unusable[:10]:
            lines.append(f"{rel}: {why}")
        if len(self.unusable) > 10:
            lines.append(f"... and {len(self.unusable) - 10} more that cannot be read")
        return lines


def _is_media(name: str) -> bool:
    return name.lower().endswith(ALL_EXTENSIONS)


def discover(root: str | os.PathLike, extensions: tuple[str, ...] = ALL_EXTENSIONS,
             recursive: bool = False, exclude: tuple[str | os.PathLike, ...] = ()) -> Listing:
    """Files under `root` with one of `extensions` (case-insensitive), relative to it, sorted.

    Hidden files and folders (leading '.') are ignored; with `recursive`, symlinked
    folders are followed once (a link back to a folder already listed is reported as left
    out). Folders in `exclude` (the run's output folder, when it lies inside the input
    folder) are never entered. Entries that cannot be read (a symlink loop, a dangling link)
    are left out with why.
    """
    root = Path(root)
    if not root.is_dir():
        what = "is a file, not a folder" if root.exists() else "does not exist"
        raise FileNotFoundError(f"input folder {root} {what} (set --audio_dir)")
    exts = tuple(e.lower() if e.startswith(".") else "." + e.lower() for e in extensions)
    listing = Listing([])
    seen_dirs: set[tuple[int, int]] = set()
    skip: dict[tuple[int, int], Path] = {}
    for folder in exclude:
        try:
            st = os.stat(folder)
            skip[(st.st_dev, st.st_ino)] = Path(folder)
        except OSError:
            pass
    media_here: list[Path] = []  # every media file of the folders visited (for the names)

    def walk(d: Path, top: bool) -> None:
        try:
            st = d.stat()
        except OSError as exc:
            listing.unusable.append((d.relative_to(root).as_posix(), f"cannot be read ({exc.strerror})"))
            return
        if (st.st_dev, st.st_ino) in seen_dirs:
            listing.unusable.append((d.relative_to(root).as_posix(),
                                     "a link to a folder already listed (a symlink loop, or a second "
                                     "path to it): left out"))
            return
        seen_dirs.add((st.st_dev, st.st_ino))
        try:
            entries = sorted(os.scandir(d), key=lambda e: e.name)
        except OSError as exc:
            listing.unusable.append((d.relative_to(root).as_posix() or ".",
                                     f"folder cannot be listed ({exc.strerror})"))
            return
        for e in entries:
            rel = Path(e.path).relative_to(root)
            if e.name.startswith("."):
                listing.hidden += 1
                continue
            try:
                is_dir = e.is_dir()
                if not is_dir and e.is_symlink():
                    os.stat(e.path)  # a dangling link or a loop raises here
            except OSError as exc:
                why = "a symlink loop" if exc.errno == errno.ELOOP else \
                    "a dangling symlink" if exc.errno == errno.ENOENT else "cannot be read"
                listing.unusable.append((rel.as_posix(), f"{why} ({exc.strerror}): left out"))
                continue
            if is_dir:
                try:
                    dst = e.stat()
                    excluded = skip.get((dst.st_dev, dst.st_ino))
                except OSError:
                    excluded = None
                if excluded is not None:
                    listing.excluded.append(excluded)
                elif recursive:
                    walk(Path(e.path), False)
                else:
                    listing.in_subfolders += _count_media(Path(e.path), exts, set(skip))
            elif e.name.lower().endswith(exts):
                listing.files.append(rel)
                media_here.append(rel)
            elif _is_media(e.name):
                listing.not_selected += 1
                media_here.append(rel)
            else:
                ext = os.path.splitext(e.name)[1].lower()
                listing.other_extensions[ext] = listing.other_extensions.get(ext, 0) + 1

    walk(root, True)
    listing.files.sort(key=lambda p: p.as_posix())
    from embedkit import outputs

    names = outputs.output_names(media_here)
    listing.names = {f: names[f] for f in listing.files}
    return listing


def output_name(root: str | os.PathLike, rel: Path, cache: dict | None = None) -> Path | None:
    """The current output name of one input `rel` (relative to `root`), from what its folder holds
    now; None when the file is gone. `cache` (folder -> names) spares listing a folder twice."""
    from embedkit import outputs

    cache = {} if cache is None else cache
    parent = Path(rel).parent
    if parent not in cache:
        try:
            here = [parent / e.name for e in os.scandir(Path(root) / parent)
                    if not e.name.startswith(".") and _is_media(e.name) and not _is_dir(e)]
        except OSError:
            here = []
        cache[parent] = outputs.output_names(here)
    return cache[parent].get(Path(rel))


def _is_dir(e: os.DirEntry) -> bool:
    try:
        return e.is_dir()
    except OSError:
        return False


def _count_media(folder: Path, exts: tuple[str, ...], skip: set, limit: int = 100_000) -> int:
    n = 0
    for dirpath, dirs, files in os.walk(folder):
        kept = []
        for d in dirs:
            if d.startswith("."):
                continue
            try:
                st = os.stat(os.path.join(dirpath, d))
                if (st.st_dev, st.st_ino) in skip:
                    continue
            except OSError:
                continue
            kept.append(d)
        dirs[:] = kept
        n += sum(1 for f in files if not f.startswith(".") and f.lower().endswith(exts))
        if n >= limit:
            break
    return n


# -- images ------------------------------------------------------------------------
def load_image(path: str | os.PathLike, max_pixels: int = MAX_PIXELS_PER_FRAME) -> np.ndarray:
    """(H, W, 3) uint8 RGB pixels of an image file by the one image rule (module doc).

    Raises MediaError for unreadable, truncated, empty or oversized images: more than
    `max_pixels` pixels is refused from the header, before decoding.
    """
    from PIL import Image, ImageOps

    audio_io.check_not_empty(path)
    if Image.MAX_IMAGE_PIXELS is not None and Image.MAX_IMAGE_PIXELS < max_pixels:
        Image.MAX_IMAGE_PIXELS = max_pixels  # only raised, never lowered: our guard is the one below
    try:
        with Image.open(path) as img:
            if img.width * img.height > max_pixels:
                raise too_large("image", img.width, img.height, max_pixels)
            img.seek(0)  # first frame of an animation
            img.load()
            img = ImageOps.exif_transpose(img) or img
            return image_to_rgb(img)
    except Image.DecompressionBombError as exc:
        raise MediaError(f"image too large to decode safely ({exc}); downscale it first") from None
    except MediaError:
        raise
    except Exception as exc:
        raise MediaError(f"cannot decode image: {audio_io.one_line(exc)}"
                         f"{audio_io.sniff_hint(path)}") from None


def image_to_rgb(img) -> np.ndarray:
    """A Pillow image (already EXIF-transposed) to (H, W, 3) uint8 by the one rule."""
    if img.width < 1 or img.height < 1:
        raise MediaError(f"image has no pixels ({img.width}x{img.height})")
    if img.mode in ("I;16", "I;16B", "I;16L", "I;16N", "I", "F"):
        # 16/32-bit gray: scale to 8 bits (convert() would clip everything above 255)
        a = np.asarray(img)
        full = 65535.0 if img.mode.startswith("I;16") or (img.mode == "I" and a.max(initial=0) <= 65535) \
            else float(max(a.max(initial=0), 1))
        if img.mode == "F":
            full = 1.0 if float(a.max(initial=0)) <= 1.0 else float(a.max())
        gray = np.clip(np.rint(a.astype(np.float64) * (255.0 / full)), 0, 255).astype(np.uint8)
        return np.repeat(gray[:, :, None], 3, axis=2)
    if img.mode != "RGB":
        img = img.convert("RGB")  # L, P, CMYK, YCbCr, RGBA (alpha dropped), LA, PA
    return np.asarray(img, dtype=np.uint8).copy()


# -- video ---------------------------------------------------------------------------
@dataclass(frozen=True)
class VideoInfo:
    """What the container says about the video stream (before decoding it).

    fps: the stream's average frame rate (None when unknown); frame_count and
    duration_seconds may be None (WebM/MKV often lack them). width and height are
    the stored size; frames are turned upright by their display matrix when converted.
    """

    width: int
    height: int
    fps: float | None
    frame_count: int | None
    duration_seconds: float | None
    codec: str = ""


# Display rotation (degrees counter-clockwise, as PyAV's VideoFrame.rotation reads the display
# matrix) as FFmpeg filters, applied before scaling as ffmpeg's command line does (autorotate).
_ROTATION_FILTERS = {90: [("transpose", "cclock")], 180: [("hflip", ""), ("vflip", "")],
                     270: [("transpose", "clock")]}


def frame_rotation(frame) -> int:
    """A decoded frame's display rotation in degrees counter-clockwise (0, 90, 180, 270)."""
    try:
        return round(float(frame.rotation) / 90.0) * 90 % 360
    except (AttributeError, TypeError, ValueError):
        return 0


class VideoScaler:
    """Decoded PyAV frames -> (k, H, W, 3) uint8 RGB exactly as ffmpeg's command line makes them
    (`-vf scale=W:H -sws_flags <interpolation> -pix_fmt rgb24`), upright.

    Runs libavfilter's own `scale` filter (one swscale pass: scale and convert to
    rgb24), so the pixels are bit-identical to the command line's (what moviepy and
    other ffmpeg-piping tools hand their models); `VideoFrame.reformat` differs from
    it by up to 10 levels on ~6 % of pixels. Frames are turned upright first by their
    display matrix (`rotation=None`), or by `rotation` degrees counter-clockwise. The
    graph is rebuilt when the frames' size, pixel format or rotation changes.
    """

    def __init__(self, size: tuple[int, int], interpolation: str = "bicubic",
                 rotation: int | None = None) -> None:
        self.height, self.width = size
        self.interpolation = interpolation
        self.rotation = rotation
        self._graph = None
        self._key: tuple | None = None

    def _rotation_of(self, frame) -> int:
        return int(self.rotation) % 360 if self.rotation is not None else frame_rotation(frame)

    def _key_of(self, frame) -> tuple:
        return (frame.width, frame.height, frame.format.name, self._rotation_of(frame))

    def _build(self, frame) -> None:
        import av

        g = av.filter.Graph()
        args = {"video_size": f"{frame.width}x{frame.height}", "pix_fmt": str(frame.format.name),
                "time_base": str(frame.time_base or "1/1000"), "pixel_aspect": "1/1"}
        # Newer FFmpeg negotiates colour properties through the graph; give the frame's, as ffmpeg does.
        extra = {"colorspace": str(int(frame.colorspace)), "range": str(int(frame.color_range))}
        try:
            src = g.add("buffer", **args, **extra)
        except Exception:
            g = av.filter.Graph()
            src = g.add("buffer", **args)
        chain = [src]
        for name, arg in _ROTATION_FILTERS.get(self._rotation_of(frame), []):
            chain.append(g.add(name, arg) if arg else g.add(name))
        chain.append(g.add("scale", f"{self.width}:{self.height}:flags={self.interpolation}"))
        chain.append(g.add("format", "pix_fmts=rgb24"))
        chain.append(g.add("buffersink"))
        for a, b in zip(chain, chain[1:]):
            a.link_to(b)
        g.configure()
        self._graph = g
        self._key = self._key_of(frame)

    def __call__(self, frames) -> np.ndarray:
        import av

        out = []
        for frame in frames:
            if self._key != self._key_of(frame):
                self._build(frame)
            self._graph.push(frame)
            while True:
                try:
                    got = self._graph.pull()
                except (av.BlockingIOError, av.EOFError):
                    break
                out.append(got.to_ndarray())
        if not out:
            return np.zeros((0, self.height, self.width, 3), np.uint8)
        return np.stack(out)


@dataclass
class FrameChunk:
    """A run of consecutive decoded frames: `pts` (n,) float64 seconds, `index` (n,) int64 frame numbers.

    `rgb(select, size, interpolation)` converts the frames (all, or the positions
    in `select`) to (k, H, W, 3) uint8, upright by their display matrix, at their own
    size or scaled to `size` = (height, width) by FFmpeg's scale filter with
    `interpolation` ("bicubic", "bilinear", ...: bit-identical to ffmpeg's command
    line); each conversion is made once per chunk and shared by every model asking
    for it.
    """

    frames: list
    pts: np.ndarray
    index: np.ndarray
    # (size, interpolation) -> VideoScaler, per stream
    _scalers: dict = field(default_factory=dict, repr=False)
    _converted: dict = field(default_factory=dict, repr=False)

    def __len__(self) -> int:
        return len(self.frames)

    def rgb(self, select: np.ndarray | list[int] | None = None, size: tuple[int, int] | None = None,
            interpolation: str = "bicubic") -> np.ndarray:
        positions = range(len(self.frames)) if select is None else [int(i) for i in select]
        todo = [i for i in positions if (i, size, interpolation) not in self._converted]
        if todo:
            if size is None:
                for i in todo:
                    got = self.frames[i].to_ndarray(format="rgb24")
                    k = frame_rotation(self.frames[i]) // 90
                    if k:
                        got = np.ascontiguousarray(np.rot90(got, k))
                    self._converted[(i, None, interpolation)] = got
            else:
                key = (tuple(size), interpolation)
                if key not in self._scalers:
                    self._scalers[key] = VideoScaler(tuple(size), interpolation)
                for i, got in zip(todo, self._scalers[key]([self.frames[i] for i in todo])):
                    self._converted[(i, size, interpolation)] = got
        out = [self._converted[(i, size, interpolation)] for i in positions]
        if not out:
            h, w = size or (0, 0)
            return np.zeros((0, h, w, 3), np.uint8)
        return np.stack(out)


def _open_video(path: str | os.PathLike):
    import av

    audio_io.check_not_empty(path)
    try:
        container = av.open(str(path))
    except Exception as exc:
        raise MediaError(f"cannot open: {audio_io.one_line(exc)}{audio_io.sniff_hint(path)}") from None
    if not container.streams.video:
        container.close()
        raise MediaError("no video stream in this file")
    return container


def video_info(path: str | os.PathLike) -> VideoInfo:
    with _open_video(path) as container:
        return _info(container.streams.video[0], container)


def _info(stream, container) -> VideoInfo:
    fps = float(stream.average_rate) if stream.average_rate else None
    duration = None
    if stream.duration is not None and stream.time_base is not None:
        duration = float(stream.duration * stream.time_base)
    elif container.duration:
        duration = container.duration / 1_000_000
    return VideoInfo(stream.codec_context.width, stream.codec_context.height, fps,
                     stream.frames or None, duration, stream.codec_context.name)


def iter_frames(path: str | os.PathLike, chunk_frames: int = 16, prefetch: int = 2,
                stop: threading.Event | None = None, max_pixels: int = MAX_PIXELS_PER_FRAME,
                notes: list[str] | None = None, chunk_pixels: int = FRAME_CHUNK_PIXELS,
                ) -> tuple[VideoInfo, Iterator[FrameChunk]]:
    """(info, chunks) of the first video stream; frames are decoded in a background
    thread `prefetch` chunks ahead of the caller, so decoding overlaps the models.

    Frames over `max_pixels` pixels are refused before decoding (MediaError); chunks hold
    at most `chunk_frames` frames and at most `chunk_pixels` pixels (one frame at least).
    Warnings the decoding thread meets go to `notes`. A decode error mid-stream is raised
    from the iterator as MediaError.
    """
    from embedkit import notes as _notes

    container = _open_video(path)
    stream = container.streams.video[0]
    info = _info(stream, container)
    pixels = info.width * info.height
    if pixels > max_pixels:
        container.close()
        raise too_large("video frames", info.width, info.height, max_pixels)
    chunk_frames = max(1, min(chunk_frames, chunk_pixels // max(1, pixels)))
    # FFmpeg's own frame threads hold a frame each: above 4K, slice threads only (same pixels)
    stream.thread_type = "AUTO" if pixels <= 3840 * 2160 else "SLICE"
    q: queue.Queue = queue.Queue(maxsize=max(1, prefetch))
    scalers: dict = {}  # one scale filter graph per (size, interpolation), for the whole stream
    halt = threading.Event()  # this stream is closed (its own; `stop` is the caller's)
    done = object()

    def put(item) -> bool:
        while not halt.is_set() and not (stop is not None and stop.is_set()):
            try:
                q.put(item, timeout=0.2)
                return True
            except queue.Full:
                continue
        return False

    def decode() -> None:
        with _notes.capture() as got:
            _decode()
        if notes is not None:
            notes.extend(n for n in got if n not in notes)

    def _decode() -> None:
        frames, pts = [], []
        count = 0
        first = None
        try:
            for frame in container.decode(stream):
                t = frame.time if frame.time is not None else (count / info.fps if info.fps else float(count))
                if first is None:
                    first = t
                frames.append(frame)
                pts.append(t - first)
                count += 1
                if len(frames) == chunk_frames:
                    if not put(_chunk(frames, pts, count, scalers)):
                        return
                    frames, pts = [], []
            if frames and not put(_chunk(frames, pts, count, scalers)):
                return
            if count == 0:
                put(MediaError("the video stream has no decodable frames"))
                return
            put(done)
        except Exception as exc:
            put(MediaError(f"video decoding failed after {count} frame(s): {audio_io.one_line(exc)}"))
        finally:
            container.close()

    thread = threading.Thread(target=decode, daemon=True, name="video-decoder")
    thread.start()

    def chunks() -> Iterator[FrameChunk]:
        try:
            while True:
                item = q.get()
                if item is done:
                    return
                if isinstance(item, BaseException):
                    raise item
                yield item
        finally:
            halt.set()
            thread.join(timeout=10)

    return info, chunks()


def _chunk(frames: list, pts: list[float], count: int, scalers: dict) -> FrameChunk:
    n = len(frames)
    return FrameChunk(frames, np.asarray(pts, dtype=np.float64), np.arange(count - n, count, dtype=np.int64),
                      scalers)


# -- one input file ----------------------------------------------------------------------
class Media:
    """One input file, decoded lazily and at most once per form.

    kind: "audio", "video" or "image" by extension. `has_audio` / `has_video` are
    known after `probe()` (or the first decode).
    """

    def __init__(self, path: str | os.PathLike, kind: str | None = None, residual: bool = False,
                 max_pixels: int = MAX_PIXELS_PER_FRAME) -> None:
        """residual: decode with `audio_io.decode_mono`'s residual at once (a model will
        ask for float64 resampling; otherwise the file is read a second time then).
        max_pixels: the size guard for the image and the video frames (pixels per frame)."""
        self.path = Path(path)
        self.max_pixels = max_pixels
        self.notes: list[str] = []  # warnings met while decoding this file (decoder threads)
        self.input: dict | None = None  # what the file was when read (outputs.input_fingerprint)
        self._want_residual = residual
        self.kind = kind or kind_of(path) or "audio"
        self.error: Exception | None = None  # set by the run loop when opening/decoding failed
        self._decoded: audio_io.Decoded | None = None
        self._dropped: tuple[float, int, dict] | None = None  # duration, rate, resampling times (drop_audio)
        self._audio_error: MediaError | None = None
        self._image: np.ndarray | None = None
        # audio files hold audio (or fail to decode); containers say what they hold when probed
        self._has_audio: bool | None = {"audio": True, "image": False}.get(self.kind)
        self._has_video: bool | None = {"audio": False, "image": False}.get(self.kind)
        # the preflight (--decode_only) only: frames decoded, in how long, and why decoding stopped
        self.frames_decoded = 0
        self.frames_seconds = 0.0
        self.frames_error: Exception | None = None

    # streams present
    def probe(self) -> None:
        """Find which streams a container holds (cheap: no decoding)."""
        if self._has_audio is not None and self._has_video is not None:
            return
        has_audio, has_video = audio_io.probe_streams(self.path)
        self._has_audio, self._has_video = has_audio, has_video

    @property
    def has_audio(self) -> bool:
        self.probe()
        return bool(self._has_audio)

    @property
    def has_video(self) -> bool:
        self.probe()
        return bool(self._has_video)

    # audio
    @property
    def decoded(self) -> audio_io.Decoded:
        """The mono signal at the file's own rate (decoded on first use)."""
        if self._decoded is None:
            if self._audio_error is not None:
                raise self._audio_error
            try:
                self._decoded = audio_io.load(self.path, self._want_residual)
            except MediaError as exc:
                self._audio_error = exc
                raise
        return self._decoded

    def audio(self, rate: int, method: str, precision: str = "float32", dtype: str = "float32",
              device: str | None = None) -> np.ndarray:
        """Mono `dtype` at `rate` Hz, resampled once per (rate, method, precision, dtype):
        see `audio_io.resample` (`device`: resampy's filters on that torch device).

        float64 resampling starts from the float64 signal (float32 plus residual).
        """
        if precision == "float64" and not method.startswith("soxr"):
            self._want_residual = True
            decoded = self.decoded
            if not decoded.has_residual:  # decoded earlier without it: read the file again for it
                _, _, decoded.residual = audio_io.decode_mono(self.path, residual=True)
                decoded.has_residual = True
        return self.decoded.at(rate, method, precision, dtype, device)

    @property
    def decoded_audio(self) -> bool:
        """Whether the audio has been decoded (successfully)."""
        return self._decoded is not None or self._dropped is not None

    @property
    def duration_seconds(self) -> float:
        """Seconds of decoded audio (0 before decoding, and for images and silent videos)."""
        if self._dropped is not None:
            return self._dropped[0]
        return self._decoded.duration_seconds if self._decoded is not None else 0.0

    @property
    def source_sample_rate(self) -> int | None:
        if self._dropped is not None:
            return self._dropped[1]
        return self._decoded.sample_rate if self._decoded is not None else None

    @property
    def resample_seconds(self) -> dict:
        """Seconds spent resampling, per (rate, method)."""
        if self._dropped is not None:
            return self._dropped[2]
        return self._decoded.resample_seconds if self._decoded is not None else {}

    def drop_audio(self) -> None:
        """Free the samples, decoded and resampled (a short file waiting for its batch keeps only
        its network inputs); duration, rates and resampling times stay for the report. Asking for
        the samples afterwards is an error, not a second decoding."""
        d = self._decoded
        if d is not None:
            self._dropped = (d.duration_seconds, d.sample_rate, d.resample_seconds)
            self._decoded = None
            self._audio_error = MediaError(f"{self.path.name}: its samples were freed (Media.drop_audio)")

    # image
    def image(self) -> np.ndarray:
        if self._image is None:
            self._image = load_image(self.path, self.max_pixels)
        return self._image

    def drop_image(self) -> None:
        """Free the decoded pixels (a file waiting for its batch keeps only its network inputs)."""
        self._image = None

    # video
    def frames(self, chunk_frames: int = 16, stop: threading.Event | None = None
               ) -> tuple[VideoInfo, Iterator[FrameChunk]]:
        return iter_frames(self.path, chunk_frames, stop=stop, max_pixels=self.max_pixels, notes=self.notes)
