"""Similarity search over the driver's outputs: read a model folder, index it, query it.

Search reads only what `run_extraction.py` wrote (`<output_base>/<model>/features.json`,
`manifest.jsonl`, the `.npy` arrays) and never reaches back into the run loop.

    folder = ModelFolder.open("output/embeddings", "melspec")
    info = folder.info("file")                           # or folder.info("segment", window_seconds=1.0)
    with Index.open(folder.default_store(), collection_name("melspec"), create=info, writer=True) as index:
        report = build_index(folder, index)              # incremental: only new or changed outputs
        hits = index.search(vectors, k=5)                # (Q, D) unit vectors -> Q lists of Hit

Two stores hold a collection:

- `EmbeddedStore` (default, no server): SQLite (transactions) holds the metadata and the
  id table; vectors live in immutable `.npy` segment files written atomically before the
  transaction that references them; FAISS searches them: exactly (inner product over the
  memory-mapped segments) below `ann_threshold` vectors, through an HNSW index above it
  (vectors added since the HNSW build are searched exactly and merged, removed ones are
  filtered out), so an incremental add of 1 % writes only that 1 %.
- `PostgresStore` (`postgresql://...`): pgvector, HNSW with cosine ops, one transaction per
  batch; exact search is a sequential scan, so both stores give the same top K.

Every stored vector is L2-normalised float32, so inner product = cosine similarity.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import math
import os
import re
import sqlite3
import time
import uuid
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from embedkit import outputs
from embedkit.extractors.base import ConfigError

LEVELS = ("file", "segment")
DEFAULT_ANN_THRESHOLD = 100_000  # vectors; below it exact search is fast enough (about 10 ms at 100k x 512)
DEFAULT_EF_SEARCH = 128
HNSW_M = 32
HNSW_EF_CONSTRUCTION = 64
TIMESTAMPS_SUFFIX = ".timestamps.npy"  # optional per-file frame times beside an array


class SearchError(RuntimeError):
    """A problem with one item (an output, a query file): reported, the others go on."""


# -- what a collection is ----------------------------------------------------------
@dataclass(frozen=True)
class CollectionInfo:
    """What the vectors of a collection are: which model folder made them and how they were cut.

    config: extractor, params, weights_setting and weights_sha256 from features.json; a query is
    embedded with exactly this configuration, and an index refuses outputs of another one.
    """

    alias: str
    level: str  # "file" | "segment"
    window_seconds: float  # segment pooling window; 0 = every frame
    config: dict
    frames: dict = field(default_factory=dict)  # axes, hop_seconds, first_frame_seconds (for queries)

    def to_json(self) -> dict:
        return {
            "alias": self.alias,
            "level": self.level,
            "window_seconds": self.window_seconds,
            "config": self.config,
            "frames": self.frames,
        }

    @classmethod
    def from_json(cls, d: dict) -> CollectionInfo:
        return cls(d["alias"], d["level"], float(d["window_seconds"]), d["config"], d.get("frames") or {})


def collection_name(alias: str, level: str = "file", window_seconds: float = 0.0) -> str:
    """Default collection name: `<alias>_file`, `<alias>_segment`, `<alias>_segment_1s`."""
    name = f"{alias}_{level}"
    if level == "segment" and window_seconds:
        name += "_" + f"{window_seconds:g}".replace(".", "p") + "s"
    return name


def config_of(meta: dict) -> dict:
    """The part of features.json that decides what a vector means."""
    prov = meta.get("provenance") or {}
    return {
        "extractor": meta.get("extractor"),
        "params": meta.get("params"),
        "weights_setting": meta.get("weights_setting"),
        "weights_sha256": prov.get("weights_sha256"),
    }


def describe_config(config: dict) -> str:
    weights = config.get("weights_setting") or "default"
    sha = config.get("weights_sha256")
    return f"{config.get('extractor')} {config.get('params')} weights {weights}" + (
        f" ({sha[:12]})" if sha else ""
    )


# -- reading a model folder -----------------------------------------------------------
@dataclass
class OutputEntry:
    """One array of a model folder: `output` relative to the model folder, `source` relative to the "
    "input folder."""

    output: str
    source: str
    path: Path
    size: int
    mtime_ns: int
    audio_seconds: float | None = None


@dataclass
class ModelFolder:
    """`<output_base>/<alias>/` as the driver wrote it: features.json, the arrays, manifest.jsonl."""

    output_base: Path
    alias: str
    meta: dict

    @property
    def path(self) -> Path:
        return self.output_base / self.alias

    @classmethod
    def open(cls, output_base: str | os.PathLike, alias: str) -> ModelFolder:
        base = Path(output_base)
        meta_path = base / alias / "features.json"
        if not meta_path.is_file():
            known = sorted(p.parent.name for p in base.glob("*/features.json")) if base.is_dir() else []
            hint = f"; model folders there: {', '.join(known)}" if known else ""
            raise ConfigError(
                f"no model folder {base / alias} (features.json missing){hint}. "
                f"Run `python run_extraction.py --models {alias} --output_base {base}` first."
            )
        try:
            meta = json.loads(meta_path.read_text())
        except (OSError, ValueError) as exc:
            raise ConfigError(f"{meta_path} is not readable JSON ({exc}); rerun the extraction") from exc
        return cls(base, alias, meta)

    @property
    def config(self) -> dict:
        return config_of(self.meta)

    def axes_for(self, source: str | os.PathLike) -> list[str]:
        """The axes of one source's array: an image model's videos have their own (`per_kind`)."""
        from embedkit import media

        kind = media.kind_of(source)
        per_kind = (self.meta.get("per_kind") or {}).get(kind) or {}
        return list(per_kind.get("axes") or self.meta.get("axes") or [])

    def info(self, level: str = "file", window_seconds: float = 0.0) -> CollectionInfo:
        """The collection this folder makes at `level`; ConfigError when its arrays can't be vectors."""
        self.check_level(level, window_seconds)
        frames = {k: self.meta.get(k) for k in ("axes", "hop_seconds", "first_frame_seconds")}
        return CollectionInfo(
            self.alias, level, float(window_seconds) if level == "segment" else 0.0, self.config, frames
        )

    def check_level(self, level: str, window_seconds: float = 0.0) -> None:
        axes = list(self.meta.get("axes") or [])
        if level not in LEVELS:
            raise ConfigError(f"--level must be one of {', '.join(LEVELS)}, got {level!r}")
        if self.meta.get("columns"):
            raise ConfigError(
                f"{self.alias} outputs named quantities {self.meta['columns']} (axes {axes}), not "
                "embeddings: "
                "cosine similarity over them is meaningless. Index an embedding model (openl3, "
                "mert, clmr, melspec)."
            )
        if (
            axes not in (["dim"], ["time", "dim"])
            and not (len(axes) == 2 and axes[0] == "time")
            and len(axes) != 1
        ):
            raise ConfigError(
                f"{self.alias} outputs have axes {axes}: search needs one vector per file or per frame. "
                "For MERT with several layers, extract one layer (layers: N) under its own name."
            )
        if axes == ["time"]:
            raise ConfigError(
                f"{self.alias} outputs are one number per frame (axes ['time']), not vectors; "
                "nothing to search."
            )
        if level == "segment" and "time" not in axes:
            raise ConfigError(
                f"{self.alias} outputs are pooled (axes {axes}, no time axis): segment search needs frames. "
                "Extract with pooling: none under another name, or use --level file."
            )
        if level == "segment" and window_seconds and window_seconds < 0:
            raise ConfigError(f"--window must be >= 0 seconds, got {window_seconds}")

    def default_store(self) -> Path:
        """Where the embedded store lives unless --db says otherwise: inside the model folder (hidden)."""
        return self.path / ".search"

    def _manifest(self) -> dict[str, dict]:
        """Latest manifest record per output (relative to the model folder) of this model."""
        records: dict[str, dict] = {}
        path = self.output_base / "manifest.jsonl"
        if not path.is_file():
            return records
        prefix = self.alias + "/"
        with open(path, encoding="utf-8", errors="replace") as f:
            for line in f:
                try:
                    rec = json.loads(line)
                except ValueError:
                    continue  # a torn last line from a killed run
                out = rec.get("output", "")
                if rec.get("model") == self.alias and out.startswith(prefix):
                    records[out[len(prefix) :]] = rec
        return records

    def outputs(self) -> dict[str, OutputEntry]:
        """Every complete array in the model folder, by output path relative to the model folder.

        The source path comes from the manifest; an array with no manifest line is listed under
        its output name without `.npy`. Hidden files and folders (temporaries, `.search`) and
        per-file timestamp arrays are not outputs.
        """
        manifest = self._manifest()
        found: dict[str, OutputEntry] = {}
        root = self.path
        for dirpath, dirs, files in os.walk(root):
            dirs[:] = sorted(d for d in dirs if not d.startswith("."))
            for name in sorted(files):
                if name.startswith(".") or not name.endswith(".npy"):
                    continue
                full = Path(dirpath) / name
                rel = full.relative_to(root).as_posix()
                rec = manifest.get(rel)
                if rec is None and name.endswith(TIMESTAMPS_SUFFIX):
                    continue
                try:
                    st = full.stat()
                except OSError:
                    continue
                source = rec["source"] if rec else rel[: -len(".npy")]
                seconds = rec.get("audio_seconds") if rec else None
                found[rel] = OutputEntry(rel, source, full, st.st_size, st.st_mtime_ns, seconds)
        return found

    def timestamps_for(self, entry: OutputEntry, n_frames: int) -> np.ndarray:
        """(T, 2) start, end seconds of each frame of `entry`.

        From a per-file timestamps array beside it (`<stem>.timestamps.npy`: (T,) frame centres or
        (T, 2) start/end) when the model folder has one; else from features.json: frame i centred at
        first_frame_seconds + i * hop_seconds and spanning hop_seconds around its centre.
        """
        side = entry.path.with_name(entry.path.name[: -len(".npy")] + TIMESTAMPS_SUFFIX)
        if side.is_file():
            t = np.load(side, allow_pickle=False).astype(np.float64)
            if t.shape[0] != n_frames or t.ndim not in (1, 2) or (t.ndim == 2 and t.shape[1] != 2):
                raise SearchError(
                    f"{side.name} holds shape {t.shape}; expected ({n_frames},) or ({n_frames}, 2)"
                )
            if t.ndim == 2:
                return t
            return spans_from_centres(t)
        hop = self.meta.get("hop_seconds")
        if not hop:
            raise SearchError(
                f"features.json of {self.alias} gives no hop_seconds and {side.name} is missing: "
                "frame times unknown"
            )
        centres = float(self.meta.get("first_frame_seconds") or 0.0) + np.arange(n_frames) * float(hop)
        return np.stack([np.maximum(centres - hop / 2, 0.0), centres + hop / 2], axis=1)


def spans_from_centres(t: np.ndarray) -> np.ndarray:
    """(T, 2) start/end of frames centred at `t` (seconds): each reaches halfway to its neighbours."""
    t = np.asarray(t, np.float64)
    if len(t) < 2:
        return np.stack([t, t], axis=1)
    mid = (t[1:] + t[:-1]) / 2
    starts = np.concatenate([[t[0] - (mid[0] - t[0])], mid])
    ends = np.concatenate([mid, [t[-1] + (t[-1] - mid[-1])]])
    return np.stack([np.maximum(starts, 0.0), ends], axis=1)


def file_sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def normalize_rows(x: np.ndarray, what: str = "") -> np.ndarray:
    """(N, D) float32 rows scaled to unit L2 norm; SearchError on NaN/Inf or all-zero rows."""
    x = np.asarray(x, dtype=np.float32)
    bad = ~np.isfinite(x).all(axis=1)
    if bad.any():
        raise SearchError(
            f"{what}{int(bad.sum())} of {len(x)} vectors hold NaN/Inf (first at row {int(np.argmax(bad))})"
        )
    norms = np.linalg.norm(x.astype(np.float64), axis=1)
    if (norms == 0).any():
        raise SearchError(f"{what}{int((norms == 0).sum())} all-zero vectors: no direction to compare")
    return (x / norms[:, None]).astype(np.float32)


def vectors_from_array(
    data: np.ndarray,
    axes: list[str],
    level: str,
    window_seconds: float = 0.0,
    spans: Callable[[int], np.ndarray] | None = None,
    what: str = "",
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Unit vectors of one output array, with start and end seconds.

    data: (D,) pooled or (T, D) frames. File level: one vector, the pooled output or the mean of
    the frames. Segment level: every frame, or the mean over consecutive windows of
    `window_seconds` (a window holds the frames whose start lies in it). `spans(T)` gives (T, 2)
    start/end seconds of the frames. Returns vectors (N, D) float32, starts (N,), ends (N,).
    """
    data = np.asarray(data)
    if data.ndim != len(axes) or data.ndim not in (1, 2):
        raise SearchError(f"{what}array of shape {data.shape} does not match axes {axes}")
    if data.ndim == 2 and data.shape[0] == 0:
        raise SearchError(f"{what}no frames (shape {data.shape})")
    if data.ndim == 2 and not np.isfinite(data).all():
        rows = int((~np.isfinite(data).all(axis=1)).sum())
        raise SearchError(f"{what}{rows} of {data.shape[0]} frames hold NaN/Inf")
    if level == "file":
        vec = data if data.ndim == 1 else data.astype(np.float64).mean(axis=0)
        nan = np.array([np.nan])
        return normalize_rows(vec[None], what), nan, nan
    assert spans is not None
    t = spans(data.shape[0])
    if not window_seconds:
        return normalize_rows(data, what), t[:, 0].copy(), t[:, 1].copy()
    bins = np.floor(t[:, 0] / window_seconds + 1e-9).astype(np.int64)
    uniq, first, counts = np.unique(bins, return_index=True, return_counts=True)
    sums = np.add.reduceat(data.astype(np.float64), first, axis=0)
    vecs = sums / counts[:, None]
    starts = uniq * window_seconds
    ends = np.maximum.reduceat(t[:, 1], first)
    return (
        normalize_rows(vecs, what),
        starts.astype(np.float64),
        np.minimum(ends, (uniq + 1) * window_seconds),
    )


# -- search results -------------------------------------------------------------------------
@dataclass(frozen=True)
class Hit:
    """One result: `path` relative to the input folder, cosine `score`, `start`/`end` seconds (NaN "
    "at file level)."""

    path: str
    score: float
    start: float
    end: float
    id: int = -1

    def to_json(self) -> dict:
        def sec(x: float) -> float | None:
            return None if x is None or math.isnan(x) else round(float(x), 4)

        return {
            "path": self.path,
            "score": round(float(self.score), 6),
            "start": sec(self.start),
            "end": sec(self.end),
        }


def _merge_topk(scores: np.ndarray, ids: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Top k per row of (Q, M) scores, best first; ties broken by the smaller id (deterministic)."""
    if scores.shape[1] > k:
        part = np.argpartition(-scores, k - 1, axis=1)[:, :k]
        scores = np.take_along_axis(scores, part, 1)
        ids = np.take_along_axis(ids, part, 1)
    order = np.lexsort((ids, -scores), axis=1)
    return np.take_along_axis(scores, order, 1), np.take_along_axis(ids, order, 1)


# -- stores ---------------------------------------------------------------------------------------
def _file_row(rec: dict, n: int) -> tuple:
    """A file's row in either store's files table: (output, source, sha256, size, mtime_ns, n)."""
    return (rec["output"], rec["source"], rec.get("sha256"), rec.get("size"), rec.get("mtime_ns"), n)


class Store:
    """One collection in a backend. Rows: id, file (output path), start, end, unit vector."""

    info: CollectionInfo
    dim: int | None

    def files(self) -> dict[str, dict]:  # output -> {source, sha256, size, mtime_ns, n}
        raise NotImplementedError

    def replace(self, items: list[tuple[dict, np.ndarray, np.ndarray, np.ndarray]]) -> None:
        """Atomically, for each (file record, vectors, starts, ends): drop that file's old rows, add these."""
        raise NotImplementedError

    def remove(self, outputs_: Iterable[str]) -> int:
        raise NotImplementedError

    def update_stat(self, output: str, size: int, mtime_ns: int) -> None:
        """Record a new size/mtime for an output whose bytes did not change."""
        raise NotImplementedError

    def search(
        self, queries: np.ndarray, k: int, exact: bool | None, ef: int, exclude: set[str] | None = None
    ) -> list[list[Hit]]:
        raise NotImplementedError

    def vectors_of(self, source: str) -> tuple[str, np.ndarray, np.ndarray, np.ndarray] | None:
        """(output, vectors, starts, ends) stored for the file whose source path is `source`."""
        raise NotImplementedError

    def count(self) -> int:
        raise NotImplementedError

    def optimize(self, ann_threshold: int, force: bool = False) -> str:
        """Compact and (re)build the ANN index where due; returns what it did, for the report."""
        return ""

    def close(self) -> None:
        pass


def _check_collection(stored: CollectionInfo, wanted: CollectionInfo | None, where: str) -> None:
    if wanted is None:
        return
    if stored.config != wanted.config:
        raise ConfigError(
            f"the index {where} was built from {describe_config(stored.config)}, but the model "
            "folder now holds "
            f"{describe_config(wanted.config)}. Rebuild it (index --rebuild) or give this one its own "
            "--collection name."
        )
    if (stored.alias, stored.level, stored.window_seconds) != (
        wanted.alias,
        wanted.level,
        wanted.window_seconds,
    ):
        raise ConfigError(
            f"the index {where} holds {stored.alias} at level {stored.level} (window "
            f"{stored.window_seconds:g} s), "
            f"not {wanted.alias} at level {wanted.level} (window {wanted.window_seconds:g} s); "
            "pass the matching --level/--window or another --collection"
        )


class EmbeddedStore(Store):
    """SQLite + immutable .npy segments + FAISS, in one folder (see the module docstring).

    Layout of `<root>/<name>/`: `index.sqlite` (tables meta, files, vectors, segments, dead),
    `segments/<id>-<uuid>.npy` (unit vectors) and `.ids.npy` (their row ids),
    `ann-<uuid>.faiss` (HNSW over the ids up to the watermark recorded in meta), `.writer.lock`.
    Files are written whole (temp + fsync + rename) before the transaction that names them;
    files no transaction names (left by a killed writer) are removed by the next writer.
    """

    SCHEMA = """
    CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
    CREATE TABLE IF NOT EXISTS files (
        file_id INTEGER PRIMARY KEY AUTOINCREMENT, output TEXT UNIQUE NOT NULL, source TEXT NOT NULL,
        sha256 TEXT, size INTEGER, mtime_ns INTEGER, n INTEGER NOT NULL);
    CREATE INDEX IF NOT EXISTS files_source ON files(source);
    CREATE TABLE IF NOT EXISTS segments (
        seg_id INTEGER PRIMARY KEY AUTOINCREMENT, name TEXT UNIQUE NOT NULL, n INTEGER NOT NULL,
        dead INTEGER NOT NULL DEFAULT 0, min_id INTEGER NOT NULL, max_id INTEGER NOT NULL);
    CREATE TABLE IF NOT EXISTS vectors (
        id INTEGER PRIMARY KEY, file_id INTEGER NOT NULL, seg_id INTEGER NOT NULL, row INTEGER NOT NULL,
        start REAL, end REAL);
    CREATE INDEX IF NOT EXISTS vectors_file ON vectors(file_id);
    CREATE TABLE IF NOT EXISTS dead (id INTEGER PRIMARY KEY, seg_id INTEGER);
    """

    def __init__(
        self, root: str | os.PathLike, name: str, create: CollectionInfo | None = None, writer: bool = False
    ) -> None:
        self.dir = Path(root) / name
        self.where = str(self.dir)
        db_path = self.dir / "index.sqlite"
        if not db_path.is_file() and create is None:
            raise ConfigError(f"no index at {self.dir}; build it first: python run_search.py index ...")
        self.dir.mkdir(parents=True, exist_ok=True)
        (self.dir / "segments").mkdir(exist_ok=True)
        self._lock_fd: int | None = None
        if writer:
            self._lock_fd = os.open(self.dir / ".writer.lock", os.O_RDWR | os.O_CREAT, 0o644)
            try:
                fcntl.flock(self._lock_fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                os.close(self._lock_fd)
                raise ConfigError(
                    f"another process is writing the index at {self.dir}; wait for it to finish"
                )
        self.db = sqlite3.connect(db_path, timeout=60, isolation_level=None)
        if create is not None or writer:
            self.db.execute("PRAGMA journal_mode=WAL")  # persistent: readers find the database in WAL mode
        self.db.execute("PRAGMA synchronous=FULL")
        with self._tx() if (create is not None or writer) else contextlib.nullcontext():
            if create is not None or writer:  # readers never write, not even the schema
                for statement in self.SCHEMA.split(";"):  # executescript would commit on its own
                    if statement.strip():
                        self.db.execute(statement)
            try:
                row = self.db.execute("SELECT value FROM meta WHERE key='info'").fetchone()
            except sqlite3.OperationalError as exc:
                raise ConfigError(f"{db_path} is not an index ({exc}); rebuild it (index --rebuild)") from exc
            if row is None:
                if create is None:
                    raise ConfigError(f"{db_path} holds no collection; rebuild it")
                self.db.execute("INSERT INTO meta VALUES ('info', ?)", (json.dumps(create.to_json()),))
                self.info = create
            else:
                self.info = CollectionInfo.from_json(json.loads(row[0]))
        _check_collection(self.info, create, f"at {self.dir}")
        dim = self._meta("dim")
        self.dim = int(dim) if dim else None
        self._cache: dict | None = None
        if writer:
            self._remove_orphans()

    # -- plumbing
    @contextlib.contextmanager
    def _tx(self) -> Iterator[None]:
        self.db.execute("BEGIN IMMEDIATE")
        try:
            yield
        except BaseException:
            self.db.execute("ROLLBACK")
            raise
        self.db.execute("COMMIT")

    def _meta(self, key: str) -> str | None:
        row = self.db.execute("SELECT value FROM meta WHERE key=?", (key,)).fetchone()
        return row[0] if row else None

    def _set_meta(self, key: str, value: Any) -> None:
        self.db.execute("INSERT OR REPLACE INTO meta VALUES (?, ?)", (key, str(value)))

    def _remove_orphans(self) -> None:
        """Segment and ANN files no transaction names: a killed writer's leftovers."""
        named = {r[0] for r in self.db.execute("SELECT name FROM segments")}
        for p in (self.dir / "segments").iterdir():
            stem = p.name.split(".")[0]
            if stem not in named:
                p.unlink(missing_ok=True)
        ann = self._meta("ann_file")
        for p in self.dir.glob("ann-*.faiss"):
            if p.name != ann:
                p.unlink(missing_ok=True)
        outputs.clean_stale(self.dir)

    def _write_segment(self, vectors: np.ndarray, ids: np.ndarray) -> str:
        name = f"{int(ids[0])}-{uuid.uuid4().hex[:8]}"
        outputs.atomic_save_npy(self.dir / "segments" / f"{name}.ids.npy", ids.astype(np.int64))
        outputs.atomic_save_npy(self.dir / "segments" / f"{name}.npy", vectors.astype(np.float32))
        return name

    # -- reading
    def files(self) -> dict[str, dict]:
        rows = self.db.execute("SELECT output, source, sha256, size, mtime_ns, n FROM files")
        return {
            r[0]: {"source": r[1], "sha256": r[2], "size": r[3], "mtime_ns": r[4], "n": r[5]} for r in rows
        }

    def count(self) -> int:
        return self.db.execute("SELECT count(*) FROM vectors").fetchone()[0]

    # -- writing
    def replace(self, items: list[tuple[dict, np.ndarray, np.ndarray, np.ndarray]]) -> None:
        if not items:
            return
        dims = {v.shape[1] for _, v, _, _ in items}
        dim = self.dim or next(iter(dims))
        if dims != {dim}:
            raise ConfigError(f"vectors of dimension {sorted(dims)} cannot join an index of dimension {dim}")
        total = sum(len(v) for _, v, _, _ in items)
        with self._tx():
            next_id = int(self._meta("next_id") or 1)
            ids = np.arange(next_id, next_id + total, dtype=np.int64)
            # the segment is whole on disk before the transaction that names it commits
            name = self._write_segment(np.concatenate([v for _, v, _, _ in items]), ids) if total else None
            self._drop_files([rec["output"] for rec, *_ in items])
            seg_id = None
            if name:
                cur = self.db.execute(
                    "INSERT INTO segments (name, n, min_id, max_id) VALUES (?,?,?,?)",
                    (name, total, int(ids[0]), int(ids[-1])),
                )
                seg_id = cur.lastrowid
            row = 0
            for rec, vecs, starts, ends in items:
                cur = self.db.execute(
                    "INSERT INTO files (output, source, sha256, size, mtime_ns, n) VALUES (?,?,?,?,?,?)",
                    _file_row(rec, len(vecs)),
                )
                fid = cur.lastrowid
                self.db.executemany(
                    "INSERT INTO vectors (id, file_id, seg_id, row, start, end) VALUES (?,?,?,?,?,?)",
                    (
                        (int(ids[row + i]), fid, seg_id, row + i, _num(starts[i]), _num(ends[i]))
                        for i in range(len(vecs))
                    ),
                )
                row += len(vecs)
            self._set_meta("next_id", next_id + total)
            if self.dim is None:
                self._set_meta("dim", dim)
        self.dim = dim
        self._cache = None
        segs = self.db.execute("SELECT seg_id, name, n, dead FROM segments ORDER BY n DESC").fetchall()
        if len(segs) > 64:  # many small adds: fold all but the 8 biggest segments into one
            self._merge(sorted(segs[8:], key=lambda s: s[0]))

    def _drop_files(self, outs: list[str]) -> int:
        removed = 0
        for out in outs:
            row = self.db.execute("SELECT file_id FROM files WHERE output=?", (out,)).fetchone()
            if row is None:
                continue
            fid = row[0]
            self.db.execute(
                "INSERT INTO dead (id, seg_id) SELECT id, seg_id FROM vectors WHERE file_id=?", (fid,)
            )
            self.db.execute(
                "UPDATE segments SET dead = dead + (SELECT count(*) FROM vectors v WHERE v.file_id=? "
                "AND v.seg_id = segments.seg_id) WHERE seg_id IN (SELECT seg_id FROM vectors WHERE "
                "file_id=?)",
                (fid, fid),
            )
            removed += self.db.execute("DELETE FROM vectors WHERE file_id=?", (fid,)).rowcount
            self.db.execute("DELETE FROM files WHERE file_id=?", (fid,))
        return removed

    def update_stat(self, output: str, size: int, mtime_ns: int) -> None:
        with self._tx():
            self.db.execute("UPDATE files SET size=?, mtime_ns=? WHERE output=?", (size, mtime_ns, output))

    def remove(self, outputs_: Iterable[str]) -> int:
        outs = list(outputs_)
        if not outs:
            return 0
        with self._tx():
            n = self._drop_files(outs)
        self._cache = None
        return n

    def optimize(self, ann_threshold: int, force: bool = False) -> str:
        """Merge small segments, drop dead rows, (re)build or drop the HNSW index where due."""
        done = []
        segs = self.db.execute("SELECT seg_id, name, n, dead FROM segments ORDER BY min_id").fetchall()
        live = sum(n - d for _, _, n, d in segs)
        dead = sum(d for *_, d in segs)
        ann_file, ann_count = self._meta("ann_file"), int(self._meta("ann_count") or 0)
        watermark = int(self._meta("ann_watermark") or 0)
        delta = self.db.execute("SELECT count(*) FROM vectors WHERE id > ?", (watermark,)).fetchone()[0]
        want_ann = live >= ann_threshold
        rebuild = want_ann and (
            force or not ann_file or delta > 0.1 * max(ann_count, 1) or dead > 0.2 * max(live, 1)
        )
        big = max((n for _, _, n, _ in segs), default=0)
        small = [s for s in segs if s[2] < big / 4 or s[3] > 0.2 * s[2]]
        # rewrite everything only to drop many removed rows; otherwise fold small segments together
        if force or dead > 0.2 * max(live, 1) or len(segs) > 16 and len(small) > 1:
            merge = segs if (force or dead > 0.2 * max(live, 1)) else small
            if merge:
                self._merge(merge)
                done.append(f"merged {len(merge)} segments")
        if rebuild:
            self._build_ann()
            done.append(f"built the HNSW index over {live} vectors")
        elif not want_ann and ann_file:
            with self._tx():
                for key in ("ann_file", "ann_count", "ann_watermark"):
                    self.db.execute("DELETE FROM meta WHERE key=?", (key,))
                self.db.execute("DELETE FROM dead WHERE seg_id IS NULL")  # listed only for the graph
            (self.dir / ann_file).unlink(missing_ok=True)
            done.append("dropped the HNSW index (below the exact-search threshold)")
        self._cache = None
        return "; ".join(done)

    def _merge(self, segs: list) -> None:
        """Rewrite the live rows of `segs` into segments of up to 1M rows, ids kept."""
        vec_parts, id_parts = [], []
        dead_ids = {r[0] for r in self.db.execute("SELECT id FROM dead")}
        for _, name, _, _ in segs:
            v = np.load(self.dir / "segments" / f"{name}.npy", mmap_mode="r")
            ids = np.load(self.dir / "segments" / f"{name}.ids.npy")
            keep = (
                ~np.isin(ids, np.fromiter(dead_ids, np.int64, len(dead_ids)))
                if dead_ids
                else np.ones(len(ids), bool)
            )
            vec_parts.append(np.asarray(v[keep]))
            id_parts.append(ids[keep])
        vecs = np.concatenate(vec_parts) if vec_parts else np.zeros((0, self.dim or 1), np.float32)
        ids = np.concatenate(id_parts) if id_parts else np.zeros(0, np.int64)
        order = np.argsort(ids, kind="stable")
        vecs, ids = vecs[order], ids[order]
        chunk = 1_000_000
        new = []
        for s in range(0, len(ids), chunk):
            new.append((self._write_segment(vecs[s : s + chunk], ids[s : s + chunk]), ids[s : s + chunk]))
        old_ids = [s[0] for s in segs]
        with self._tx():
            marks = ",".join("?" * len(old_ids))
            for name, part in new:
                cur = self.db.execute(
                    "INSERT INTO segments (name, n, min_id, max_id) VALUES (?,?,?,?)",
                    (name, len(part), int(part[0]), int(part[-1])),
                )
                self.db.executemany(
                    "UPDATE vectors SET seg_id=?, row=? WHERE id=?",
                    ((cur.lastrowid, r, int(i)) for r, i in enumerate(part)),
                )
            # removed rows the HNSW graph still holds stay listed (no segment) so searches keep skipping them
            watermark = int(self._meta("ann_watermark") or 0)
            self.db.execute(
                f"UPDATE dead SET seg_id = NULL WHERE seg_id IN ({marks}) AND id <= ?", (*old_ids, watermark)
            )
            self.db.execute(f"DELETE FROM dead WHERE seg_id IN ({marks})", old_ids)
            self.db.execute(f"DELETE FROM segments WHERE seg_id IN ({marks})", old_ids)
        for _, name, _, _ in segs:
            for suffix in (".npy", ".ids.npy"):
                (self.dir / "segments" / f"{name}{suffix}").unlink(missing_ok=True)

    def _build_ann(self) -> None:
        import faiss

        segs = self._segments()
        ids = np.concatenate([s["ids"] for s in segs]) if segs else np.zeros(0, np.int64)
        alive = np.concatenate([s["alive"] for s in segs]) if segs else np.zeros(0, bool)
        hnsw = faiss.IndexHNSWFlat(self.dim, HNSW_M, faiss.METRIC_INNER_PRODUCT)
        hnsw.hnsw.efConstruction = HNSW_EF_CONSTRUCTION
        index = faiss.IndexIDMap(hnsw)  # does not own `hnsw`: keep the name alive until written
        for s in segs:  # segment by segment: memory stays at the index plus one segment
            keep = s["alive"]
            index.add_with_ids(np.ascontiguousarray(s["vectors"][keep]), s["ids"][keep])
        name = f"ann-{uuid.uuid4().hex[:8]}.faiss"
        outputs.atomic_write_bytes(self.dir / name, faiss.serialize_index(index).tobytes())
        old = self._meta("ann_file")
        with self._tx():
            self._set_meta("ann_file", name)
            self._set_meta("ann_count", int(alive.sum()))
            self._set_meta("ann_watermark", int(ids.max()) if len(ids) else 0)
            self.db.execute("DELETE FROM dead WHERE seg_id IS NULL")  # not in the new graph
        if old:
            (self.dir / old).unlink(missing_ok=True)

    # -- searching
    def _segments(self) -> list[dict]:
        """Memory-mapped segments with their ids and live-row masks (a read snapshot)."""
        self.db.execute("BEGIN")
        try:
            segs = self.db.execute("SELECT seg_id, name, dead FROM segments ORDER BY min_id").fetchall()
            dead: dict[int | None, list[int]] = {}
            for seg_id, did in self.db.execute("SELECT seg_id, id FROM dead"):
                dead.setdefault(seg_id, []).append(did)
        finally:
            self.db.execute("COMMIT")
        self._dead_all = np.array([i for ids in dead.values() for i in ids], np.int64)
        out = []
        for seg_id, name, ndead in segs:
            vecs = np.load(self.dir / "segments" / f"{name}.npy", mmap_mode="r")
            ids = np.load(self.dir / "segments" / f"{name}.ids.npy")
            alive = np.ones(len(ids), bool)
            if ndead:
                alive &= ~np.isin(ids, np.array(dead.get(seg_id, []), np.int64))
            out.append({"seg_id": seg_id, "vectors": vecs, "ids": ids, "alive": alive})
        return out

    def _load(self) -> dict:
        if self._cache is None:
            ann = None
            ann_file = self._meta("ann_file")
            if ann_file:
                import faiss

                ann = faiss.read_index(str(self.dir / ann_file))
            segments = self._segments()
            self._cache = {
                "segments": segments,
                "ann": ann,
                "dead": self._dead_all,
                "watermark": int(self._meta("ann_watermark") or 0),
            }
        return self._cache

    def search(
        self, queries: np.ndarray, k: int, exact: bool | None, ef: int, exclude: set[str] | None = None
    ) -> list[list[Hit]]:
        q = np.ascontiguousarray(queries, dtype=np.float32)
        if self.dim is None:
            return [[] for _ in q]
        if q.shape[1] != self.dim:
            raise ConfigError(f"queries of dimension {q.shape[1]} against an index of dimension {self.dim}")
        cache = self._load()
        excluded_ids = self._ids_of(exclude) if exclude else np.zeros(0, np.int64)
        want = k + len(excluded_ids)
        use_ann = cache["ann"] is not None and not exact
        best_s = np.full((len(q), 0), -np.inf, np.float32)
        best_i = np.zeros((len(q), 0), np.int64)
        if use_ann:
            import faiss

            dead_ids = np.concatenate([cache["dead"], excluded_ids])
            params = faiss.SearchParametersHNSW()
            params.efSearch = max(ef, want)
            if len(dead_ids):
                batch = faiss.IDSelectorBatch(dead_ids.astype(np.int64))
                params.sel = faiss.IDSelectorNot(batch)
            threads = faiss.omp_get_max_threads()
            if len(q) < 16:  # one query runs on one core; OpenMP's team only waits on a busy machine
                faiss.omp_set_num_threads(1)
            try:
                s, i = cache["ann"].search(q, want, params=params)
            finally:
                faiss.omp_set_num_threads(threads)
            valid = i >= 0
            best_s, best_i = np.where(valid, s, -np.inf).astype(np.float32), np.where(valid, i, 0)
        for seg in cache["segments"]:
            vecs, ids, alive = seg["vectors"], seg["ids"], seg["alive"]
            start = int(np.searchsorted(ids, cache["watermark"], side="right")) if use_ann else 0
            for lo in range(start, len(ids), 262_144):  # bounded memory on big segments
                hi = min(len(ids), lo + 262_144)
                s = q @ np.asarray(vecs[lo:hi]).T
                mask = ~alive[lo:hi]
                if len(excluded_ids):
                    mask |= np.isin(ids[lo:hi], excluded_ids)
                s[:, mask] = -np.inf
                best_s, best_i = _merge_topk(
                    np.hstack([best_s, s]), np.hstack([best_i, np.broadcast_to(ids[lo:hi], s.shape)]), want
                )
        best_s, best_i = _merge_topk(best_s, best_i, want) if best_s.shape[1] else (best_s, best_i)
        return [self._hits(s, i, k) for s, i in zip(best_s, best_i)]

    def _ids_of(self, sources: set[str]) -> np.ndarray:
        rows = []
        for src in sources:
            rows += self.db.execute(
                "SELECT v.id FROM vectors v JOIN files f ON f.file_id = v.file_id WHERE f.source=?", (src,)
            ).fetchall()
        return np.array([r[0] for r in rows], np.int64)

    def _hits(self, scores: np.ndarray, ids: np.ndarray, k: int) -> list[Hit]:
        out = []
        for s, i in zip(scores, ids):
            if not np.isfinite(s) or len(out) == k:
                continue
            row = self.db.execute(
                "SELECT f.source, v.start, v.end FROM vectors v JOIN files f ON f.file_id = "
                "v.file_id WHERE v.id=?",
                (int(i),),
            ).fetchone()
            if row:
                out.append(Hit(row[0], float(s), _float(row[1]), _float(row[2]), int(i)))
        return out

    def vectors_of(self, source: str) -> tuple[str, np.ndarray, np.ndarray, np.ndarray] | None:
        row = self.db.execute(
            "SELECT file_id, output FROM files WHERE source=? OR output=?", (source, source)
        ).fetchone()
        if row is None:
            return None
        rows = self.db.execute(
            "SELECT v.row, s.name, v.start, v.end FROM vectors v JOIN segments s ON s.seg_id = v.seg_id "
            "WHERE v.file_id=? ORDER BY v.id",
            (row[0],),
        ).fetchall()
        mm: dict[str, np.ndarray] = {}
        vecs = []
        for r, name, _, _ in rows:
            if name not in mm:
                mm[name] = np.load(self.dir / "segments" / f"{name}.npy", mmap_mode="r")
            vecs.append(np.asarray(mm[name][r]))
        starts = np.array([_float(r[2]) for r in rows])
        ends = np.array([_float(r[3]) for r in rows])
        return row[1], np.array(vecs, np.float32).reshape(len(vecs), -1), starts, ends

    def close(self) -> None:
        self.db.close()
        if self._lock_fd is not None:
            os.close(self._lock_fd)
            self._lock_fd = None


def _num(x: float) -> float | None:
    return None if x is None or (isinstance(x, float) and math.isnan(x)) else float(x)


def _float(x: float | None) -> float:
    return float("nan") if x is None else float(x)


# -- PostgreSQL + pgvector ------------------------------------------------------------------------------
def _pg_ident(name: str) -> str:
    ident = re.sub(r"[^a-z0-9_]", "_", name.lower())
    if len(ident) > 40:  # PostgreSQL identifiers stop at 63 bytes; keep room for suffixes
        ident = ident[:31] + "_" + hashlib.sha1(name.encode()).hexdigest()[:8]
    return "ek_" + ident


def pg_connect(uri: str):
    """psycopg connection with pgvector's types registered; ConfigError with a next step on failure."""
    try:
        import psycopg
        from pgvector.psycopg import register_vector
    except ImportError as exc:
        raise ConfigError(
            f"PostgreSQL needs psycopg and pgvector (pip install -r requirements.txt): {exc}"
        ) from exc
    try:
        conn = psycopg.connect(uri, connect_timeout=10, autocommit=False)
    except psycopg.OperationalError as exc:
        msg = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        if "password" in msg.lower() or "authentication" in msg.lower():
            hint = "check the user name and password in the URI (or ~/.pgpass)"
        else:
            hint = "check that the server runs and the host, port and database in the URI are right"
        raise ConfigError(f"cannot connect to PostgreSQL at {_redact(uri)}: {msg}; {hint}") from exc
    except psycopg.ProgrammingError as exc:
        raise ConfigError(f"invalid PostgreSQL URI {_redact(uri)}: {exc}") from exc
    try:
        with conn.transaction():
            conn.execute("CREATE EXTENSION IF NOT EXISTS vector")
    except psycopg.Error as exc:
        conn.close()
        raise ConfigError(
            f"the PostgreSQL server at {_redact(uri)} has no pgvector extension or refuses to "
            f"create it ({exc}); "
            "install pgvector there or ask its administrator to run CREATE EXTENSION vector"
        ) from exc
    register_vector(conn)
    return conn


def _redact(uri: str) -> str:
    return re.sub(r"(://[^:/@]*):[^@]*@", r"\1:***@", uri)


class PostgresStore(Store):
    """A collection in PostgreSQL: tables `ek_<name>_files` and `ek_<name>_vectors` (pgvector).

    The collection's description sits in `embedkit_collections`. Every write is one transaction;
    the HNSW index (vector_cosine_ops) exists above the ANN threshold. Exact search turns index
    scans off, so PostgreSQL scans every row, as the embedded store's exact search does.
    """

    def __init__(
        self, uri: str, name: str, create: CollectionInfo | None = None, writer: bool = False
    ) -> None:
        self.conn = pg_connect(uri)
        try:
            self._open(uri, name, create, writer)
        except BaseException:
            self.conn.close()
            raise

    def _open(self, uri: str, name: str, create: CollectionInfo | None, writer: bool) -> None:
        self.where = f"{_redact(uri)} collection {name!r}"
        self.name = name
        self.t_files, self.t_vec = _pg_ident(name) + "_files", _pg_ident(name) + "_vectors"
        with self.conn.transaction():
            self.conn.execute(
                "CREATE TABLE IF NOT EXISTS embedkit_collections (name TEXT PRIMARY KEY, info JSONB "
                "NOT NULL, "
                "dim INTEGER, created TIMESTAMPTZ NOT NULL DEFAULT now())"
            )
            # one writer per collection at a time (a session lock: released with the connection)
            if (
                writer
                and not self.conn.execute("SELECT pg_try_advisory_lock(hashtext(%s))", (name,)).fetchone()[0]
            ):
                raise ConfigError(
                    f"another process is writing collection {name!r} in {_redact(uri)}; wait for it"
                )
            row = self.conn.execute(
                "SELECT info, dim FROM embedkit_collections WHERE name=%s", (name,)
            ).fetchone()
            if row is None:
                if create is None:
                    raise ConfigError(
                        f"no collection {name!r} in {_redact(uri)}; build it first: python "
                        "run_search.py index ..."
                    )
                self.conn.execute(
                    "INSERT INTO embedkit_collections (name, info) VALUES (%s, %s) ON CONFLICT DO NOTHING",
                    (name, json.dumps(create.to_json())),
                )
                row = self.conn.execute(
                    "SELECT info, dim FROM embedkit_collections WHERE name=%s", (name,)
                ).fetchone()
            self.conn.execute(
                f"CREATE TABLE IF NOT EXISTS {self.t_files} (file_id BIGSERIAL PRIMARY KEY, output "
                "TEXT UNIQUE NOT NULL, "
                "source TEXT NOT NULL, sha256 TEXT, size BIGINT, mtime_ns BIGINT, n INTEGER NOT NULL)"
            )
            self.conn.execute(f"CREATE INDEX IF NOT EXISTS {self.t_files}_source ON {self.t_files}(source)")
        info = row[0] if isinstance(row[0], dict) else json.loads(row[0])
        self.info = CollectionInfo.from_json(info)
        self.dim = row[1]
        _check_collection(self.info, create, self.where)

    def _ensure_vectors(self, dim: int) -> None:
        if self.dim is None:
            self.conn.execute(
                f"CREATE TABLE IF NOT EXISTS {self.t_vec} (id BIGSERIAL PRIMARY KEY, file_id BIGINT NOT NULL "
                f"REFERENCES {self.t_files}(file_id) ON DELETE CASCADE, start_s DOUBLE PRECISION, "
                "end_s DOUBLE PRECISION, "
                f"embedding vector({dim}) NOT NULL)"
            )
            if 4 * dim + 8 <= 6000:
                # keep vectors in the row: from 508 dims on, a vector passes PostgreSQL's 2 kB TOAST
                # threshold and would be stored out of line, so every scan and HNSW build fetches it twice
                self.conn.execute(f"ALTER TABLE {self.t_vec} ALTER COLUMN embedding SET STORAGE PLAIN")
            self.conn.execute(f"CREATE INDEX IF NOT EXISTS {self.t_vec}_file ON {self.t_vec}(file_id)")
            self.conn.execute("UPDATE embedkit_collections SET dim=%s WHERE name=%s", (dim, self.name))
        elif dim != self.dim:
            raise ConfigError(f"vectors of dimension {dim} cannot join an index of dimension {self.dim}")

    def files(self) -> dict[str, dict]:
        rows = self.conn.execute(
            f"SELECT output, source, sha256, size, mtime_ns, n FROM {self.t_files}"
        ).fetchall()
        self.conn.commit()
        return {
            r[0]: {"source": r[1], "sha256": r[2], "size": r[3], "mtime_ns": r[4], "n": r[5]} for r in rows
        }

    def count(self) -> int:
        if self.dim is None:
            return 0
        n = self.conn.execute(f"SELECT count(*) FROM {self.t_vec}").fetchone()[0]
        self.conn.commit()
        return n

    def replace(self, items: list[tuple[dict, np.ndarray, np.ndarray, np.ndarray]]) -> None:
        if not items:
            return
        dims = {v.shape[1] for _, v, _, _ in items}
        if len(dims) > 1:
            raise ConfigError(f"vectors of dimensions {sorted(dims)} in one batch")
        with self.conn.transaction():
            self._ensure_vectors(next(iter(dims)))
            self.conn.execute(
                f"DELETE FROM {self.t_files} WHERE output = ANY(%s)", ([r["output"] for r, *_ in items],)
            )
            # ids first, then two COPYs: three round trips per batch, however many files
            fids = [
                r[0]
                for r in self.conn.execute(
                    "SELECT nextval(pg_get_serial_sequence(%s, 'file_id')) FROM generate_series(1, %s)",
                    (self.t_files, len(items)),
                ).fetchall()
            ]
            with self.conn.cursor().copy(
                f"COPY {self.t_files} (file_id, output, source, sha256, size, mtime_ns, n) FROM STDIN "
                "WITH (FORMAT BINARY)"
            ) as cp:
                cp.set_types(["int8", "text", "text", "text", "int8", "int8", "int4"])
                for fid, (rec, vecs, _, _) in zip(fids, items):
                    cp.write_row((fid, *_file_row(rec, len(vecs))))
            with self.conn.cursor().copy(
                f"COPY {self.t_vec} (file_id, start_s, end_s, embedding) FROM STDIN WITH (FORMAT BINARY)"
            ) as cp:
                cp.set_types(["int8", "float8", "float8", "vector"])
                for fid, (_, vecs, starts, ends) in zip(fids, items):
                    for v, st, en in zip(vecs, starts, ends):
                        cp.write_row((fid, _num(st), _num(en), v))
        self.dim = self.dim or next(iter(dims))

    def update_stat(self, output: str, size: int, mtime_ns: int) -> None:
        with self.conn.transaction():
            self.conn.execute(
                f"UPDATE {self.t_files} SET size=%s, mtime_ns=%s WHERE output=%s", (size, mtime_ns, output)
            )

    def remove(self, outputs_: Iterable[str]) -> int:
        outs = list(outputs_)
        if not outs or self.dim is None:
            return 0
        with self.conn.transaction():
            n = self.conn.execute(
                f"SELECT count(*) FROM {self.t_vec} v JOIN {self.t_files} f USING (file_id) WHERE "
                "f.output = ANY(%s)",
                (outs,),
            ).fetchone()[0]
            self.conn.execute(f"DELETE FROM {self.t_files} WHERE output = ANY(%s)", (outs,))
        return n

    def _has_ann(self) -> bool:
        row = self.conn.execute(
            "SELECT 1 FROM pg_indexes WHERE indexname=%s", (self.t_vec + "_hnsw",)
        ).fetchone()
        return row is not None

    def optimize(self, ann_threshold: int, force: bool = False) -> str:
        if self.dim is None:
            return ""
        n = self.count()
        with self.conn.transaction():
            has = self._has_ann()
            if n >= ann_threshold and (force or not has):
                if has:
                    self.conn.execute(f"DROP INDEX {self.t_vec}_hnsw")
                self.conn.execute(f"SET LOCAL maintenance_work_mem = '{_pg_mem(n, self.dim)}'")
                self.conn.execute(
                    f"CREATE INDEX {self.t_vec}_hnsw ON {self.t_vec} USING hnsw (embedding "
                    "vector_cosine_ops) "
                    f"WITH (m = {HNSW_M // 2}, ef_construction = {HNSW_EF_CONSTRUCTION})"
                )
                return f"built the HNSW index over {n} vectors"
            if n < ann_threshold and has:
                self.conn.execute(f"DROP INDEX {self.t_vec}_hnsw")
                return "dropped the HNSW index (below the exact-search threshold)"
        return ""

    def search(
        self, queries: np.ndarray, k: int, exact: bool | None, ef: int, exclude: set[str] | None = None
    ) -> list[list[Hit]]:
        q = np.asarray(queries, np.float32)
        if self.dim is None:
            return [[] for _ in q]
        if q.shape[1] != self.dim:
            raise ConfigError(f"queries of dimension {q.shape[1]} against an index of dimension {self.dim}")
        excl = sorted(exclude or ())
        out = []
        with self.conn.transaction():
            want = k + (self._excluded_rows(excl) if excl else 0)
            exact = bool(exact or not self._has_ann())
            if exact:  # a sequential scan over every row, as the embedded store's exact search
                self.conn.execute("SET LOCAL enable_indexscan = off")
                self.conn.execute("SET LOCAL enable_bitmapscan = off")
                order = "embedding <=> %s, id"  # ties by id, as the embedded store breaks them
            else:
                self.conn.execute(f"SET LOCAL hnsw.ef_search = {min(1000, max(int(ef), want))}")
                order = "embedding <=> %s"  # the operator alone, so the HNSW index can serve it
            where = "WHERE f.source <> ALL(%s)" if excl else ""
            for v in q:
                rows = self.conn.execute(
                    "SELECT f.source, 1 - d, v.start_s, v.end_s, v.id FROM (SELECT id, file_id, "
                    "start_s, end_s, "
                    f"embedding <=> %s AS d FROM {self.t_vec} ORDER BY {order} LIMIT %s) v "
                    f"JOIN {self.t_files} f USING (file_id) {where} ORDER BY d, v.id LIMIT %s",
                    (v, v, want, *((excl,) if excl else ()), k),
                ).fetchall()
                out.append([Hit(r[0], float(r[1]), _float(r[2]), _float(r[3]), int(r[4])) for r in rows])
        return out

    def _excluded_rows(self, excl: list[str]) -> int:
        return self.conn.execute(
            f"SELECT coalesce(sum(n), 0) FROM {self.t_files} WHERE source = ANY(%s)", (excl,)
        ).fetchone()[0]

    def vectors_of(self, source: str) -> tuple[str, np.ndarray, np.ndarray, np.ndarray] | None:
        if self.dim is None:
            return None
        with self.conn.transaction():
            row = self.conn.execute(
                f"SELECT file_id, output FROM {self.t_files} WHERE source=%s OR output=%s", (source, source)
            ).fetchone()
            if row is None:
                return None
            rows = self.conn.execute(
                f"SELECT embedding, start_s, end_s FROM {self.t_vec} WHERE file_id=%s ORDER BY id", (row[0],)
            ).fetchall()
        vecs = np.array([_pg_array(r[0]) for r in rows], np.float32).reshape(len(rows), -1)
        return row[1], vecs, np.array([_float(r[1]) for r in rows]), np.array([_float(r[2]) for r in rows])

    def close(self) -> None:
        self.conn.close()


def _pg_array(value: Any) -> np.ndarray:
    """A pgvector value as float32 (binary results come as pgvector.Vector, text ones as arrays)."""
    return np.asarray(value.to_numpy() if hasattr(value, "to_numpy") else value, np.float32)


def _pg_mem(n: int, dim: int) -> str:
    """maintenance_work_mem for an HNSW build: the graph in memory (vectors + links), at least 64 MB."""
    need_mb = int(n * (dim * 4 + HNSW_M * 8 + 64) * 1.3 / 2**20) + 64
    return f"{min(max(64, need_mb), 8192)}MB"


# -- the Index ------------------------------------------------------------------------------------------
def is_postgres(db: str | os.PathLike | None) -> bool:
    return isinstance(db, str) and db.startswith(("postgresql://", "postgres://"))


class Index:
    """A searchable collection of unit vectors with path, start and end per vector.

        with Index.open("output/embeddings/melspec/.search", "voices", create=info) as index:
            index.add("f1.wav", vectors)                  # (D,) or (N, D); replaces f1.wav's vectors
            index.search(query, k=5)                       # (D,) or (Q, D) -> list of Hit (per query)
            index.remove(["f1.wav"])

    `db` is a folder for the embedded store or a `postgresql://` URI.
    """

    def __init__(
        self, store: Store, ann_threshold: int = DEFAULT_ANN_THRESHOLD, ef_search: int = DEFAULT_EF_SEARCH
    ):
        self.store = store
        self.ann_threshold = ann_threshold
        self.ef_search = ef_search

    @classmethod
    def open(
        cls,
        db: str | os.PathLike,
        name: str,
        create: CollectionInfo | None = None,
        writer: bool = False,
        **kwargs: Any,
    ) -> Index:
        """Open collection `name` in `db`; `create` makes it when missing and must match it when present."""
        if is_postgres(db):
            store: Store = PostgresStore(str(db), name, create, writer)
        else:
            store = EmbeddedStore(db, name, create, writer)
        return cls(store, **kwargs)

    @property
    def info(self) -> CollectionInfo:
        return self.store.info

    def __enter__(self) -> Index:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def close(self) -> None:
        self.store.close()

    def __len__(self) -> int:
        return self.store.count()

    def files(self) -> dict[str, dict]:
        """Indexed outputs: output path -> {source, sha256, size, mtime_ns, n}."""
        return self.store.files()

    def add(
        self,
        path: str,
        vectors: np.ndarray,
        start: Iterable[float] | None = None,
        end: Iterable[float] | None = None,
        sha256: str | None = None,
        output: str | None = None,
    ) -> None:
        """Store `vectors` ((D,) or (N, D), normalised here) for file `path`, replacing what it had."""
        vecs = normalize_rows(np.atleast_2d(np.asarray(vectors, np.float32)), f"{path}: ")
        nan = np.full(len(vecs), np.nan)
        starts = nan if start is None else np.asarray(list(start), np.float64)
        ends = nan if end is None else np.asarray(list(end), np.float64)
        if len(starts) != len(vecs) or len(ends) != len(vecs):
            raise ValueError(f"{len(vecs)} vectors but {len(starts)} starts and {len(ends)} ends")
        self.store.replace(
            [({"output": output or path, "source": path, "sha256": sha256}, vecs, starts, ends)]
        )

    def add_many(self, items: list[tuple[dict, np.ndarray, np.ndarray, np.ndarray]]) -> None:
        """One transaction for many files: (record with output/source/sha256/size/mtime_ns, "
        "vectors, starts, ends)."""
        self.store.replace(items)

    def remove(self, paths: Iterable[str]) -> int:
        """Remove files by output path (or source path); returns how many vectors went."""
        paths = list(paths)
        known = self.files()
        by_source = {rec["source"]: out for out, rec in known.items()}
        return self.store.remove([p if p in known else by_source.get(p, p) for p in paths])

    def search(
        self,
        queries: np.ndarray,
        k: int = 10,
        exact: bool | None = None,
        exclude: Iterable[str] | None = None,
        ef: int | None = None,
    ) -> list[list[Hit]] | list[Hit]:
        """Top k by cosine similarity per query: (D,) -> list of Hit, (Q, D) -> Q lists.

        exact: None = exact below the ANN threshold, ANN above it; True forces exact search.
        exclude: source paths to leave out (e.g. the query itself in leave-one-out).
        """
        q = np.asarray(queries, np.float32)
        single = q.ndim == 1
        q = normalize_rows(np.atleast_2d(q), "query: ")
        if k < 1:
            raise ValueError("k must be >= 1")
        res = self.store.search(q, k, exact, ef or self.ef_search, set(exclude or ()))
        return res[0] if single else res

    def vectors_of(self, path: str) -> tuple[str, np.ndarray, np.ndarray, np.ndarray] | None:
        """(output, vectors (N, D), starts, ends) stored for `path` (source or output), or None."""
        return self.store.vectors_of(path)

    def optimize(self, force: bool = False) -> str:
        return self.store.optimize(self.ann_threshold, force)


# -- building an index from a model folder ---------------------------------------------------------------
@dataclass
class IndexReport:
    added: int = 0  # files (re)indexed
    unchanged: int = 0
    removed: int = 0
    vectors: int = 0  # vectors written
    total_vectors: int = 0
    failures: list[tuple[str, str]] = field(default_factory=list)  # (output, cause)
    optimized: str = ""
    seconds: float = 0.0


def build_index(
    folder: ModelFolder,
    index: Index,
    commit_files: int = 500,
    commit_vectors: int = 200_000,
    log: Callable[[str], None] | None = None,
) -> IndexReport:
    """Bring `index` up to date with `folder`: add new or changed outputs, drop vanished ones.

    An output is unchanged when its size and mtime match the index's record (or, when they don't,
    its sha256 still does). Changed and new outputs are written in batches, each one
    transaction, so a killed run leaves whole batches and a rerun finishes the rest.
    Mixed dimensions stop before anything is written (ConfigError).
    """
    t0 = time.perf_counter()
    rep = IndexReport()
    info = index.info
    found = folder.outputs()
    known = index.files()
    gone = [out for out in known if out not in found]
    todo = []
    for out, entry in found.items():
        rec = known.get(out)
        if (
            rec
            and rec["size"] == entry.size
            and rec["mtime_ns"] == entry.mtime_ns
            and rec["source"] == entry.source
        ):
            rep.unchanged += 1
        else:
            todo.append(entry)
    if not found and not known:
        raise ConfigError(
            f"{folder.path} holds no outputs: run `python run_extraction.py --models {folder.alias} "
            f"--output_base {folder.output_base}` first"
        )
    _check_dims(todo, index.store.dim, folder)
    if gone:
        index.store.remove(gone)
        rep.removed = len(gone)
    batch: list = []
    pending = 0

    def flush() -> None:
        nonlocal batch, pending
        if batch:
            index.add_many(batch)
            rep.added += len(batch)
            rep.vectors += pending
            if log:
                log(f"indexed {rep.added} of {len(todo)} outputs")
        batch, pending = [], 0

    for entry in todo:
        try:
            sha = file_sha256(entry.path)
            rec = known.get(entry.output)
            if rec and rec["sha256"] == sha and rec["source"] == entry.source:
                # same bytes, new mtime (e.g. copied): record the new stat, keep the vectors
                index.store.update_stat(entry.output, entry.size, entry.mtime_ns)
                rep.unchanged += 1
                continue
            data = np.load(entry.path, mmap_mode="r", allow_pickle=False)
            vecs, starts, ends = vectors_from_array(
                data,
                folder.axes_for(entry.source),
                info.level,
                info.window_seconds,
                spans=lambda n, e=entry: folder.timestamps_for(e, n),
                what="",
            )
            if info.level == "file" and entry.audio_seconds is not None:
                starts, ends = np.array([0.0]), np.array([float(entry.audio_seconds)])
        except (SearchError, OSError, ValueError) as exc:
            rep.failures.append((entry.output, str(exc)))
            continue
        batch.append(
            (
                {
                    "output": entry.output,
                    "source": entry.source,
                    "sha256": sha,
                    "size": entry.size,
                    "mtime_ns": entry.mtime_ns,
                },
                vecs,
                starts,
                ends,
            )
        )
        pending += len(vecs)
        if len(batch) >= commit_files or pending >= commit_vectors:
            flush()
    flush()
    failed = {out for out, _ in rep.failures}
    stale = [
        out for out in failed if out in known
    ]  # a changed output that now fails: its old vectors are stale
    if stale:
        index.store.remove(stale)
    rep.optimized = index.optimize()
    rep.total_vectors = len(index)
    rep.seconds = time.perf_counter() - t0
    return rep


def _check_dims(todo: list[OutputEntry], index_dim: int | None, folder: ModelFolder) -> None:
    """Vector length of every output to add, from the .npy headers; mixed lengths are a ConfigError."""
    dims: dict[int, list[str]] = {}
    for entry in todo:
        try:
            with open(entry.path, "rb") as f:
                version = np.lib.format.read_magic(f)
                read = (
                    np.lib.format.read_array_header_1_0
                    if version == (1, 0)
                    else np.lib.format.read_array_header_2_0
                )
                shape, _, _ = read(f)
        except (OSError, ValueError):
            continue  # reported when loaded
        if len(shape) != len(folder.axes_for(entry.source)):
            continue  # reported when loaded
        dims.setdefault(int(shape[-1]), []).append(entry.output)
    if index_dim is not None and dims and set(dims) != {index_dim}:
        other = {d: v for d, v in dims.items() if d != index_dim}
        d, files = next(iter(other.items()))
        raise ConfigError(
            f"{folder.path}: {sum(len(v) for v in other.values())} outputs have vectors of length {d} "
            f"(e.g. {files[0]}) but the index holds length {index_dim}: the folder mixes configurations. "
            "Re-extract them with --overwrite, or rebuild the index (index --rebuild)."
        )
    if len(dims) > 1:
        desc = ", ".join(f"length {d}: {len(v)} outputs (e.g. {v[0]})" for d, v in sorted(dims.items()))
        raise ConfigError(
            f"{folder.path} mixes vector lengths ({desc}); its arrays come from different configurations. "
            "Re-extract with --overwrite into a clean --output_base; nothing was indexed."
        )


# -- embedding queries ------------------------------------------------------------------------------------
class QueryEmbedder:
    """Embeds query files with exactly the configuration recorded in a collection (plugin, params, "
    "weights)."""

    def __init__(self, info: CollectionInfo, device: str = "cpu") -> None:
        from embedkit import registry

        cfg = info.config
        self.info = info
        self.meta = info.frames
        weights = cfg.get("weights_setting")
        try:
            self.extractor = registry.create(
                cfg["extractor"], device=device, weights_path=weights, **(cfg["params"] or {})
            )
        except ConfigError as exc:
            raise ConfigError(f"cannot recreate the index's model {describe_config(cfg)}: {exc}") from exc
        if json.loads(json.dumps(self.extractor.config)) != cfg["params"]:
            raise ConfigError(
                f"this version of {cfg['extractor']} would embed queries with "
                f"{self.extractor.config}, but the index "
                f"was built with {cfg['params']}; re-extract and rebuild the index"
            )
        self._checked = False

    def _check_weights(self) -> None:
        if self._checked:
            return
        self.extractor.load()
        want = self.info.config.get("weights_sha256")
        have = (self.extractor.provenance() or {}).get("weights_sha256")
        if want and have and want != have:
            raise ConfigError(
                f"the {self.info.config['extractor']} weights found now (sha256 {have[:12]}) differ "
                "from those that "
                f"made the index ({want[:12]}); point weights: at the original file"
            )
        self._checked = True

    def embed(self, path: str | os.PathLike) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Unit query vector(s) of one file, cut like the collection (file: one; segment: its windows)."""
        from embedkit import pipeline

        self._check_weights()
        try:
            feats = pipeline.extract_file(self.extractor, path)
        except ConfigError:
            raise
        except Exception as exc:
            lines = str(exc).strip().splitlines()
            raise SearchError(
                f"cannot embed {path}: {type(exc).__name__}: {lines[-1] if lines else ''}"
            ) from exc
        from embedkit import media

        data = np.asarray(feats.data)
        spec = self.extractor.output_spec(media.kind_of(path) or "audio")  # an image model's video: (T, D)
        axes = list(spec.axes)
        hop = self.meta.get("hop_seconds") or spec.hop_seconds
        first = float(self.meta.get("first_frame_seconds") or 0.0)

        def spans(n: int) -> np.ndarray:
            if feats.timestamps is not None and len(feats.timestamps) == n:
                c = np.asarray(feats.timestamps, np.float64)
            else:
                c = first + np.arange(n) * float(hop or 0.0)
            h = float(hop or 0.0) / 2
            return np.stack([np.maximum(c - h, 0.0), c + h], axis=1)

        return vectors_from_array(data, axes, self.info.level, self.info.window_seconds, spans, f"{path}: ")


def query_vector(vectors: np.ndarray) -> np.ndarray:
    """One unit query vector from a file's vectors (their mean direction)."""
    return normalize_rows(np.asarray(vectors, np.float64).mean(axis=0, keepdims=True))[0]


# -- evaluation -----------------------------------------------------------------------------------------
def retrieval_metrics(
    rankings: list[tuple[str, list[str]]],
    labels: dict[str, str],
    ks: Iterable[int] = (1, 5, 10),
    pool: Iterable[str] | None = None,
) -> dict:
    """precision@k, recall@k and mAP of same-label retrieval.

    rankings: (query label-key, ranked result paths with the query itself already left out).
    labels: path -> label for the collection and the queries. The relevant set of a query is every
    item of `pool` (default: all labelled items) with its label, itself excluded.
    """
    pool = list(pool if pool is not None else labels)
    per_label: dict[str, int] = {}
    for p in pool:
        per_label[labels[p]] = per_label.get(labels[p], 0) + 1
    ks = sorted(set(ks))
    sums = {f"precision@{k}": 0.0 for k in ks} | {f"recall@{k}": 0.0 for k in ks}
    aps = []
    counted = 0
    for query, ranked in rankings:
        label = labels[query]
        n_rel = per_label.get(label, 0) - (1 if query in pool else 0)
        if n_rel <= 0:
            continue
        rel = np.array([labels.get(r) == label for r in ranked if r in labels and r != query], bool)
        counted += 1
        for k in ks:
            sums[f"precision@{k}"] += rel[:k].sum() / k
            sums[f"recall@{k}"] += rel[:k].sum() / n_rel
        aps.append(float(np.sum(np.cumsum(rel) / np.arange(1, len(rel) + 1) * rel) / n_rel))
    out = {key: (round(v / counted, 4) if counted else None) for key, v in sums.items()}
    out["mAP"] = round(float(np.mean(aps)), 4) if aps else None
    out["queries"] = counted
    return out


def read_labels(path: str | os.PathLike) -> dict[str, str]:
    """CSV `path,label` (a header line `path,label` is optional) -> {path: label}."""
    import csv

    labels: dict[str, str] = {}
    try:
        with open(path, newline="", encoding="utf-8") as f:
            for i, row in enumerate(csv.reader(f)):
                if not row or row[0].startswith("#"):
                    continue
                if len(row) < 2:
                    raise ConfigError(f"{path} line {i + 1}: expected 'path,label', got {row!r}")
                if i == 0 and [c.strip().lower() for c in row[:2]] == ["path", "label"]:
                    continue
                labels[row[0].strip()] = row[1].strip()
    except OSError as exc:
        raise ConfigError(f"cannot read labels {path}: {exc}") from exc
    if not labels:
        raise ConfigError(f"{path} holds no labels (expected lines 'path,label')")
    return labels
