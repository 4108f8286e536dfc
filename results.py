"""Read what a run wrote: the one reader of the output format.

Search, export, plots (and anything new, e.g. a browser) read a run's outputs through this
module and nothing else; it is the only code that knows the layout (README "Output format"):

    <output_base>/<model>/<rel>.npy             main array per input file
    <output_base>/<model>/features.json         axes, hop_seconds, first_frame_seconds, columns, per_kind, ...
    <output_base>/<model>.<extra>/<rel>.npy     second outputs (madmom.beats, crepe.activation)
    <output_base>/<model>.timestamps/<rel>.npy  per-frame times (s) where the time axis is irregular (video)
    <output_base>/manifest.jsonl                one record per array written (or file skipped)

    run = results.Results("output/embeddings")
    for folder in run:                                   # model folders, sorted by name
        for item in folder.items:                        # current arrays, sorted by output path
            item.source, item.kind, item.load(), item.times(), item.spans(), item.extra("beats")

Which arrays are current: the manifest's last record per (model, source) is that source's
current record. An array on disk that no current record points to is stale (an output whose
name changed, a file whose last run was a skip, a complete array whose record a kill lost:
the next extraction repairs that one); it is left out, and `ModelFolder.notes` says so in one
line. An array whose record names another configuration digest (`config`) than features.json
(`config_digest`) is left out too. Unknown fields in manifest records are kept as they are
(`Item.record`).

File names are `str` as the file system gives them: a name that is not UTF-8 holds its bytes
as surrogate escapes (os.fsdecode); `display_name` makes one printable.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path, PurePosixPath

import numpy as np

# Extra output that holds per-frame timestamps (seconds) when the time axis is irregular.
TIMESTAMPS_EXTRA = "timestamps"
MANIFEST_NAME = "manifest.jsonl"
_NPY_MAGIC = b"\x93NUMPY"


class ResultsError(RuntimeError):
    """The output folder is missing something a reader needs; the message says what to do."""


# -- names ----------------------------------------------------------------------------------
def display_name(name: str | os.PathLike) -> str:
    """A file name fit to print: bytes that are not UTF-8 shown as `\\xNN` (the name itself is kept)."""
    s = os.fspath(name)
    try:
        s.encode("utf-8")
        return s
    except UnicodeEncodeError:
        return s.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")


def name_bytes(name: str) -> bytes:
    """The exact bytes of a file name held as str (inverse of os.fsdecode on UTF-8 file systems)."""
    return name.encode("utf-8", "surrogateescape")


def is_utf8(name: str) -> bool:
    try:
        name.encode("utf-8")
        return True
    except UnicodeEncodeError:
        return False


# -- .npy files ----------------------------------------------------------------------------
def _what_it_is(head: bytes, size: int) -> str:
    """What a file that is not a .npy array holds, from its first bytes (for messages)."""
    if size == 0:
        return "an empty file (0 bytes)"
    if head.startswith(b"PK"):
        return "a zip archive (an .npz?)"
    if head.startswith(b"\x89HDF"):
        return "an HDF5 file"
    if head[:1] == b"\x80" and head[1:2] in (b"\x02", b"\x03", b"\x04", b"\x05"):
        return "a Python pickle (never loaded)"
    if head.startswith((b"{", b"[")):
        return "JSON text"
    try:
        head.decode("utf-8")
        return "text"
    except UnicodeDecodeError:
        return f"binary data that is not an array ({size} bytes)"


def npy_header(path: str | os.PathLike) -> tuple[tuple[int, ...], np.dtype]:
    """(shape, dtype) from a .npy header, no data read; ResultsError naming the file and what it holds."""
    path = Path(path)
    try:
        with open(path, "rb") as f:
            head = f.read(len(_NPY_MAGIC))
            if head != _NPY_MAGIC:
                size = os.fstat(f.fileno()).st_size
                f.seek(0)
                raise ResultsError(f"{display_name(path)} is not a .npy array: it holds "
                                   f"{_what_it_is(f.read(64), size)}; rerun the extraction")
            f.seek(0)
            version = np.lib.format.read_magic(f)
            read = np.lib.format.read_array_header_1_0 if version == (1, 0) else \
                np.lib.format.read_array_header_2_0
            shape, _fortran, dtype = read(f)
            data_start, size = f.tell(), os.fstat(f.fileno()).st_size
    except OSError as exc:
        raise ResultsError(f"cannot read {display_name(path)}: {exc.strerror or exc}") from None
    except (ValueError, EOFError) as exc:
        raise ResultsError(f"{display_name(path)} has a damaged .npy header ({exc}); rerun the extraction") \
            from None
    dtype = np.dtype(dtype)
    if dtype.hasobject:
        raise ResultsError(f"{display_name(path)} holds Python objects (dtype {dtype}), which are never "
                           "loaded (that would run a pickle); it was not written by embedkit")
    need = data_start + int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
    if size < need:
        raise ResultsError(f"{display_name(path)} is truncated ({size} of {need} bytes); rerun the "
                           "extraction")
    return tuple(int(s) for s in shape), dtype


def load_npy(path: str | os.PathLike, mmap: bool = False) -> np.ndarray:
    """The array in a .npy file (never a pickle); ResultsError naming the file when it is not one."""
    npy_header(path)
    try:
        return np.load(path, mmap_mode="r" if mmap else None, allow_pickle=False)
    except (OSError, ValueError, EOFError) as exc:
        raise ResultsError(f"cannot read {display_name(path)}: {exc}") from None


# -- the manifest --------------------------------------------------------------------------
@dataclass
class Manifest:
    """`manifest.jsonl`: the last record per (model, source) (later lines win).

    Lines that are not a JSON object with a string `model` and `source` (a line cut by a
    kill) are counted in `bad_lines` and skipped; unknown fields are kept.
    """

    path: Path
    exists: bool = False
    records: dict[tuple[str, str], dict] = field(default_factory=dict)
    bad_lines: int = 0

    @classmethod
    def read(cls, output_base: str | os.PathLike) -> Manifest:
        m = cls(Path(output_base) / MANIFEST_NAME)
        try:
            f = open(m.path, encoding="utf-8", errors="surrogateescape")
        except FileNotFoundError:
            return m
        except OSError as exc:
            raise ResultsError(f"cannot read {display_name(m.path)}: {exc.strerror or exc}") from None
        m.exists = True
        with f:
            for line in f:
                try:
                    rec = json.loads(line)
                except ValueError:
                    m.bad_lines += bool(line.strip())
                    continue
                if not (isinstance(rec, dict) and isinstance(rec.get("model"), str)
                        and isinstance(rec.get("source"), str)
                        and isinstance(rec.get("output"), (str, type(None)))):
                    m.bad_lines += 1
                    continue
                m.records[(rec["model"], rec["source"])] = rec
        return m

    def current(self, model: str) -> dict[str, dict]:
        """Output path relative to the model folder -> the current record that points to it."""
        prefix = f"{model}/"
        out: dict[str, dict] = {}
        for (m, _), rec in self.records.items():
            output = rec.get("output")
            if m == model and output and output.startswith(prefix):
                out[output[len(prefix):]] = rec
        return out


# -- one array -----------------------------------------------------------------------------
@dataclass(frozen=True, eq=False)
class Item:
    """One current array of a model folder: what a reader needs of one (model, input file).

    output: path relative to the model folder (`dir/song.npy`); record: its manifest record
    (with every field the writer put there, e.g. `audio_seconds`, `config`, `input`).
    """

    folder: ModelFolder
    output: PurePosixPath
    record: dict = field(repr=False)

    @property
    def source(self) -> str:
        """The input file, relative to the input folder (e.g. `dir/song.wav`)."""
        return self.record["source"]

    @property
    def kind(self) -> str | None:
        """"audio", "video" or "image" (from the record, else the source's extension)."""
        kind = self.record.get("kind")
        if kind:
            return kind
        from embedkit import media

        return media.kind_of(self.source)

    @property
    def path(self) -> Path:
        return self.folder.dir / self.output

    @property
    def spec(self) -> dict:
        """features.json's description of this array (its kind's `per_kind` entry where there is one)."""
        return self.folder.spec(self.kind)

    @property
    def axes(self) -> list[str]:
        return list(self.spec.get("axes") or [])

    @property
    def time_axis(self) -> int | None:
        """Index of the "time" axis, None for one vector per file (pooled outputs, images)."""
        return self.axes.index("time") if "time" in self.axes else None

    @property
    def duration_seconds(self) -> float | None:
        """The decoded audio's duration (s) where the run decoded audio for this array, else None."""
        s = self.record.get("audio_seconds")
        return float(s) if s is not None else None

    @property
    def times_from_file(self) -> bool:
        """True when frame times are stored in `<model>.timestamps/` (irregular: video frames)."""
        return _spec_times_from_file(self.spec)

    def header(self) -> tuple[tuple[int, ...], np.dtype]:
        """(shape, dtype) of the array, from its .npy header (no data read)."""
        return npy_header(self.path)

    def load(self, mmap: bool = False) -> np.ndarray:
        return load_npy(self.path, mmap)

    def extra_path(self, extra: str) -> Path:
        return self.folder.extra_dir(extra) / self.output

    def extra(self, extra: str) -> np.ndarray | None:
        """The second output `extra` of this file (e.g. madmom's "beats"), None when not written."""
        p = self.extra_path(extra)
        return load_npy(p) if p.is_file() else None

    def times(self, n_frames: int | None = None) -> np.ndarray | None:
        """(T,) float64 seconds of each frame; None when the array has no time axis.

        From `<model>.timestamps/<rel>.npy` for irregular time axes (video frames: each frame's
        presentation time from the first frame), else `first_frame_seconds + i * hop_seconds`
        (the frame's centre, or as features.json's `timestamps` note says). `n_frames`: the
        array's frame count when the caller knows it (saves reading the header).
        """
        if self.time_axis is None:
            return None
        if n_frames is None:
            n_frames = self.header()[0][self.time_axis]
        if self.times_from_file:
            p = self.extra_path(TIMESTAMPS_EXTRA)
            if not p.is_file():
                raise ResultsError(f"{display_name(p)} is missing: {self.folder.name} stores frame times per "
                                   "file; rerun the extraction")
            t = load_npy(p).astype(np.float64).reshape(-1)
            if t.shape[0] != n_frames:
                raise ResultsError(f"{display_name(p)} holds {t.shape[0]} times for {n_frames} frames; rerun "
                                   "the extraction")
            return t
        hop = self.spec.get("hop_seconds")
        if not hop:
            return None
        first = float(self.spec.get("first_frame_seconds") or 0.0)
        return first + np.arange(n_frames, dtype=np.float64) * float(hop)

    def spans(self, n_frames: int | None = None) -> np.ndarray | None:
        """(T, 2) float64 start and end seconds of each frame; None without a time axis.

        Frames with stored times (video frames) last from their presentation time to the next
        one's (the last one as long as the one before it: a file records no end time), so the
        spans tile the file without gaps at any frame rate, variable included. Frames on a
        regular grid span `hop_seconds` around their time (starts clipped at 0).
        """
        t = self.times(n_frames)
        if t is None:
            return None
        return frame_spans(t, self.times_from_file, self.spec.get("hop_seconds"))


def frame_spans(times: np.ndarray, stored: bool, hop_seconds: float | None) -> np.ndarray:
    """(T, 2) start and end seconds of frames at `times` (T,) seconds (see `Item.spans`).

    stored: the times are presentation times read from a file (video frames): frame i lasts
    until frame i + 1 starts, the last one as long as the one before it (or `hop_seconds`).
    Otherwise the times are a regular grid and each frame spans `hop_seconds` around its time.
    """
    t = np.asarray(times, np.float64).reshape(-1)
    if len(t) == 0:
        return np.zeros((0, 2))
    if stored or not hop_seconds:
        last = t[-1] - t[-2] if len(t) > 1 else float(hop_seconds or 0.0)
        return np.stack([t, np.append(t[1:], t[-1] + last)], axis=1)
    half = float(hop_seconds) / 2
    return np.stack([np.maximum(t - half, 0.0), t + half], axis=1)


@dataclass(frozen=True)
class Excluded:
    """An array on disk a reader leaves out: reason "stale" (no current record) or "config"."""

    output: PurePosixPath
    reason: str
    detail: str = ""


def _spec_times_from_file(spec: dict) -> bool:
    rule = spec.get("timestamps")
    # OutputSpec(timestamps_file=True) writes "file: <model>.timestamps/..." and lists the extra
    return (isinstance(rule, str) and rule.strip().lower().startswith("file")) or \
        TIMESTAMPS_EXTRA in (spec.get("extras") or [])


# -- one model folder -----------------------------------------------------------------------
class ModelFolder:
    """One model's outputs: `<output_base>/<name>/` with its features.json, arrays and extra folders."""

    def __init__(self, output_base: str | os.PathLike, name: str, meta: dict,
                 manifest: Manifest | None = None) -> None:
        self.output_base = Path(output_base)
        self.name = name
        self.meta = meta
        self._manifest = manifest

    @classmethod
    def open(cls, output_base: str | os.PathLike, name: str, manifest: Manifest | None = None) -> ModelFolder:
        """ResultsError when `<output_base>/<name>/features.json` is missing or unreadable."""
        base = Path(output_base)
        if not is_folder_name(name):
            raise ResultsError(f"model name {name!r} is a name, not a path (letters, digits, '_', '-', '.')")
        meta_path = base / name / "features.json"
        try:
            meta = json.loads(meta_path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            known = ", ".join(model_names(base)) if base.is_dir() else "none"
            raise ResultsError(
                f"{meta_path} not found: not a model folder (models here: {known or 'none'})") from None
        except (OSError, ValueError) as exc:
            raise ResultsError(f"{meta_path} is not readable JSON ({exc}); rerun the extraction") from None
        if not isinstance(meta, dict):
            raise ResultsError(f"{meta_path} is not a features.json (a JSON object); rerun the extraction")
        return cls(base, name, meta, manifest)

    def __repr__(self) -> str:
        return f"ModelFolder({str(self.dir)!r})"

    @property
    def dir(self) -> Path:
        return self.output_base / self.name

    @property
    def manifest(self) -> Manifest:
        if self._manifest is None:
            self._manifest = Manifest.read(self.output_base)
        return self._manifest

    @property
    def extractor(self) -> str:
        return str(self.meta.get("extractor", self.name))

    @property
    def config_digest(self) -> str | None:
        """The run's digest of this model's configuration (features.json `config_digest`), if written."""
        d = self.meta.get("config_digest")
        return d if isinstance(d, str) and d else None

    # -- what the arrays are
    def spec(self, kind: str | None = None) -> dict:
        """features.json's array description for files of `kind` (its `per_kind` entry, else the top)."""
        per_kind = (self.meta.get("per_kind") or {}).get(kind) if kind else None
        return {**self.meta, **per_kind} if per_kind else self.meta

    def axes_for(self, kind: str | None) -> list[str]:
        return list(self.spec(kind).get("axes") or [])

    @property
    def axes(self) -> list[str]:
        """Axes of the model's own kind (features.json top level); `axes_for(kind)` for the others."""
        return list(self.meta.get("axes") or [])

    @property
    def time_axis(self) -> int | None:
        """Index of the "time" axis in the model's own kind, None for pooled outputs."""
        return self.axes.index("time") if "time" in self.axes else None

    @property
    def kinds_with_time(self) -> list[str]:
        """The kinds of file whose arrays have a time axis (e.g. ["video"] for an image model)."""
        kinds = list(self.meta.get("kinds") or [self.meta.get("modality") or "audio"])
        return [k for k in kinds if "time" in self.axes_for(k)]

    @property
    def extras(self) -> list[str]:
        """Second outputs written beside the main one (per-frame timestamps excluded)."""
        found = list(self.meta.get("extras") or [])
        for spec in (self.meta.get("per_kind") or {}).values():
            found += [e for e in spec.get("extras") or [] if e not in found]
        return [e for e in found if e != TIMESTAMPS_EXTRA]

    def extra_dir(self, extra: str) -> Path:
        folder = (self.meta.get("extra_folders") or {}).get(extra, f"{self.name}.{extra}")
        return self.output_base / folder

    @property
    def timestamps_from_files(self) -> bool:
        """True when the model's own kind stores frame times per file in `<model>.timestamps/`."""
        return _spec_times_from_file(self.meta)

    # -- which arrays there are
    def _on_disk(self) -> list[PurePosixPath]:
        """Every visible .npy under the model folder (hidden ones are temporaries, locks, indexes)."""
        found: list[PurePosixPath] = []
        for dirpath, dirs, files in os.walk(self.dir):
            dirs[:] = sorted(d for d in dirs if not d.startswith("."))
            rel_dir = Path(dirpath).relative_to(self.dir)
            for name in files:
                if name.endswith(".npy") and not name.startswith("."):
                    found.append(PurePosixPath((rel_dir / name).as_posix()))
        return sorted(found, key=str)

    @cached_property
    def _scan(self) -> tuple[list[Item], list[Excluded]]:
        current = self.manifest.current(self.name)
        digest = self.config_digest
        items, excluded = [], []
        for rel in self._on_disk():
            rec = current.get(str(rel))
            if rec is None:
                excluded.append(Excluded(rel, "stale", "no current manifest record points to it"))
            elif digest and isinstance(rec.get("config"), str) and rec["config"] != digest:
                excluded.append(Excluded(rel, "config", f"config {rec['config'][:12]}, features.json "
                                                        f"{digest[:12]}"))
            else:
                items.append(Item(self, rel, rec))
        return items, excluded

    @property
    def items(self) -> list[Item]:
        """The current arrays, sorted by output path (stale and other-configuration ones left out)."""
        return self._scan[0]

    @property
    def excluded(self) -> list[Excluded]:
        """Arrays on disk that `items` leaves out, with why."""
        return self._scan[1]

    @property
    def notes(self) -> list[str]:
        """One line per kind of left-out array, for a tool to print once (empty when none)."""
        out = []
        stale = [e for e in self.excluded if e.reason == "stale"]
        if stale:
            why = (f"{display_name(self.manifest.path)} is missing" if not self.manifest.exists
                   else "no current manifest record points to them")
            out.append(f"{self.name}: {len(stale)} stale array(s) left out ({why}; e.g. "
                       f"{display_name(stale[0].output)}): rerun the extraction to repair or delete them; "
                       "run_report.json lists them")
        other = [e for e in self.excluded if e.reason == "config"]
        if other:
            out.append(f"{self.name}: {len(other)} array(s) left out: made with another configuration than "
                       f"features.json says ({other[0].detail}; e.g. {display_name(other[0].output)}): "
                       "re-extract them with --overwrite or delete them")
        return out

    @cached_property
    def _by_key(self) -> dict[str, Item]:
        keys: dict[str, Item] = {}
        for item in self.items:
            keys.setdefault(item.source, item)
        for item in self.items:
            keys[str(item.output)] = item
        return keys

    def item(self, key: str | os.PathLike) -> Item | None:
        """The current item whose output path (`dir/a.npy`) or source path (`dir/a.wav`) is `key`."""
        return self._by_key.get(PurePosixPath(os.fspath(key)).as_posix())

    def refresh(self) -> None:
        """Forget the listing (and the manifest) so the next access reads the folder again."""
        self.__dict__.pop("_scan", None)
        self.__dict__.pop("_by_key", None)
        self._manifest = None

    # -- shorthands by output path (plots, exports)
    @property
    def outputs(self) -> list[PurePosixPath]:
        """Output paths of the current items, sorted."""
        return [i.output for i in self.items]

    def path(self, rel: PurePosixPath | str) -> Path:
        return self.dir / rel

    def extra_path(self, extra: str, rel: PurePosixPath | str) -> Path:
        return self.extra_dir(extra) / rel

    def load(self, rel: PurePosixPath | str, mmap: bool = False) -> np.ndarray:
        return load_npy(self.path(rel), mmap)

    def load_extra(self, extra: str, rel: PurePosixPath | str) -> np.ndarray | None:
        """The extra array of one file, None when it was not written."""
        p = self.extra_path(extra, rel)
        return load_npy(p) if p.is_file() else None


# -- the output folder ----------------------------------------------------------------------
def is_folder_name(name: str) -> bool:
    """A model or collection name: one path component that is not hidden (no '/', not '.' or '..')."""
    return bool(name) and "/" not in name and "\\" not in name and "\0" not in name \
        and not name.startswith(".")


def model_names(output_base: str | os.PathLike) -> list[str]:
    """Model folders under `output_base` (those holding a features.json), sorted."""
    base = Path(output_base)
    if not base.is_dir():
        what = "is a file, not a folder" if base.exists() else "does not exist"
        raise ResultsError(f"output folder {display_name(base)} {what} (give the --output_base of a run)")
    return sorted(p.parent.name for p in base.glob("*/features.json") if not p.parent.name.startswith("."))


class Results:
    """A run's output folder: its model folders (sorted by name) and its manifest.

        run = Results("output/embeddings")
        run.models                      # ["crepe", "melspec", ...]
        folder = run["melspec"]         # ModelFolder; folder.items -> Item per current array
    """

    def __init__(self, output_base: str | os.PathLike) -> None:
        self.base = Path(output_base)
        self.models = model_names(self.base)
        self._folders: dict[str, ModelFolder] = {}

    def __repr__(self) -> str:
        return f"Results({str(self.base)!r})"

    @cached_property
    def manifest(self) -> Manifest:
        return Manifest.read(self.base)

    def model(self, name: str) -> ModelFolder:
        """The model folder `name`; ResultsError naming the ones there when it is not one."""
        if name not in self._folders:
            if name not in self.models:
                raise ResultsError(f"no model folder {name!r} in {display_name(self.base)} "
                                   f"(there: {', '.join(self.models) or 'none'})")
            self._folders[name] = ModelFolder.open(self.base, name, self.manifest)
        return self._folders[name]

    __getitem__ = model

    def __iter__(self) -> Iterator[ModelFolder]:
        return (self.model(name) for name in self.models)

    def __len__(self) -> int:
        return len(self.models)

    @property
    def notes(self) -> list[str]:
        """Every model folder's notes (stale or other-configuration arrays left out)."""
        return [n for folder in self for n in folder.notes]

