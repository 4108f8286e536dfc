"""What a collection is, and what both stores share: its description, its vectors, a hit, the Store API.

A collection's vectors come from one model folder, read through `embedkit.results` (the one
reader of the output format): one unit vector per file (level "file") or per frame or window
(level "segment"), each with its start and end seconds.
"""

from __future__ import annotations

import hashlib
import math
import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from embedkit import results
from embedkit.extractors.base import ConfigError

LEVELS = ("file", "segment")
DEFAULT_ANN_THRESHOLD = 100_000  # vectors; below it exact search is fast enough (about 10 ms at 100k x 512)
DEFAULT_EF_SEARCH = 128
HNSW_M = 32
HNSW_EF_CONSTRUCTION = 64
# collection names are names, not paths (they name a folder or PostgreSQL tables)
COLLECTION_NAME = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.-]{0,99}$")


class SearchError(RuntimeError):
    """A problem with one item (an output, a query file): reported, the others go on."""


class StoreError(RuntimeError):
    """The store went away mid-work (e.g. PostgreSQL stopped); what was committed stays whole."""


# -- what a collection is ----------------------------------------------------------
@dataclass(frozen=True)
class CollectionInfo:
    """What the vectors of a collection are: which model folder made them and how they were cut.

    config: extractor, params, weights_setting and weights_sha256 from features.json; a query is
    embedded with exactly this configuration, and an index refuses outputs of another one.
    config_digest: the run's digest of that configuration (features.json `config_digest`), where
    the run wrote one; each array's manifest record carries the same digest.
    """

    alias: str
    level: str  # "file" | "segment"
    window_seconds: float  # segment pooling window; 0 = every frame
    config: dict
    frames: dict = field(default_factory=dict)  # axes, hop_seconds, first_frame_seconds (for queries)
    config_digest: str | None = None

    def to_json(self) -> dict:
        d = {
            "alias": self.alias,
            "level": self.level,
            "window_seconds": self.window_seconds,
            "config": self.config,
            "frames": self.frames,
        }
        if self.config_digest:
            d["config_digest"] = self.config_digest
        return d

    @classmethod
    def from_json(cls, d: dict) -> CollectionInfo:
        return cls(d["alias"], d["level"], float(d["window_seconds"]), d["config"], d.get("frames") or {},
                   d.get("config_digest"))


def collection_name(alias: str, level: str = "file", window_seconds: float = 0.0) -> str:
    """Default collection name: `<alias>_file`, `<alias>_segment`, `<alias>_segment_1s`."""
    name = f"{alias}_{level}"
    if level == "segment" and window_seconds:
        name += "_" + f"{window_seconds:g}".replace(".", "p") + "s"
    return name


def check_collection_name(name: str) -> str:
    """`name` when it is a collection name (letters, digits, '_', '-', '.'; not a path), else ConfigError."""
    if not isinstance(name, str) or not COLLECTION_NAME.match(name):
        raise ConfigError(
            f"collection name {name!r} is not a name: use letters, digits, '_', '-' and '.' "
            "(at most 100, not starting with '.' or '-'); to put the index elsewhere, use --db FOLDER"
        )
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


def _check_axes(alias: str, axes: list[str], kind: str | None) -> None:
    where = f" for {kind} files" if kind else ""
    if axes == ["time"]:
        raise ConfigError(
            f"{alias} outputs are one number per frame{where} (axes ['time']), not vectors; "
            "nothing to search."
        )
    if len(axes) not in (1, 2) or (len(axes) == 2 and axes[0] != "time"):
        raise ConfigError(
            f"{alias} outputs have axes {axes}{where}: search needs one vector per file or per frame. "
            "For MERT with several layers, extract one layer (layers: N) under its own name."
        )


def collection_info(folder: results.ModelFolder, level: str = "file", window_seconds: float = 0.0
                    ) -> CollectionInfo:
    """The collection a model folder makes at `level`; ConfigError when its arrays can't be vectors.

    Segment level needs frames: it takes a model whose arrays of some kind have a time axis
    (e.g. an image model's videos); its other files (images) join as one vector each.
    """
    meta = folder.meta
    if level not in LEVELS:
        raise ConfigError(f"--level must be one of {', '.join(LEVELS)}, got {level!r}")
    if meta.get("columns"):
        raise ConfigError(
            f"{folder.name} outputs named quantities {meta['columns']} (axes {folder.axes}), not embeddings: "
            "cosine similarity over them is meaningless. Index an embedding model (openl3, mert, clmr, "
            "melspec, resnet18, ...)."
        )
    _check_axes(folder.name, folder.axes, None)
    for kind in (meta.get("per_kind") or {}):
        _check_axes(folder.name, folder.axes_for(kind), kind)
    if level == "segment" and not folder.kinds_with_time:
        raise ConfigError(
            f"{folder.name} outputs are pooled (axes {folder.axes}, no time axis): segment search needs "
            "frames. Extract with pooling: none (an image model: with its video frames) under another name, "
            "or use --level file."
        )
    if level == "segment" and window_seconds and window_seconds < 0:
        raise ConfigError(f"--window must be >= 0 seconds, got {window_seconds}")
    frames = {k: meta.get(k) for k in ("axes", "hop_seconds", "first_frame_seconds")}
    return CollectionInfo(folder.name, level, float(window_seconds) if level == "segment" else 0.0,
                          config_of(meta), frames, folder.config_digest)


def check_collection(stored: CollectionInfo, wanted: CollectionInfo | None, where: str) -> None:
    """ConfigError when a collection holds another model, configuration, level or window than wanted."""
    if wanted is None:
        return
    if stored.config != wanted.config or (
        stored.config_digest and wanted.config_digest and stored.config_digest != wanted.config_digest
    ):
        raise ConfigError(
            f"the index {where} was built from {describe_config(stored.config)}, but the model folder now "
            f"holds {describe_config(wanted.config)}"
            + (f" (configuration {wanted.config_digest[:12]}, index {stored.config_digest[:12]})"
               if stored.config_digest and wanted.config_digest else "")
            + ". Rebuild it (index --rebuild) or give this one its own --collection name."
        )
    if (stored.alias, stored.level, stored.window_seconds) != (
        wanted.alias,
        wanted.level,
        wanted.window_seconds,
    ):
        raise ConfigError(
            f"the index {where} holds {stored.alias} at level {stored.level} (window "
            f"{stored.window_seconds:g} s), not {wanted.alias} at level {wanted.level} (window "
            f"{wanted.window_seconds:g} s); pass the matching --level/--window or another --collection"
        )


def check_item_configs(info: CollectionInfo, records: Iterable[dict], where: str) -> None:
    """ConfigError when a file record to add names another configuration digest than the collection."""
    if not info.config_digest:
        return
    for rec in records:
        digest = rec.get("config")
        if digest and digest != info.config_digest:
            raise ConfigError(
                f"{results.display_name(rec['output'])} was made with configuration {digest[:12]}, but the "
                f"collection at {where} holds configuration {info.config_digest[:12]}; nothing of this batch "
                "was added. Index it into its own collection (--collection), or re-extract it."
            )


# -- vectors ------------------------------------------------------------------------------
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

    data: (D,) pooled or (T, D) frames. File level, and a pooled array at segment level (an image
    among videos): one vector, the pooled output or the mean of the frames, times NaN. Segment
    level: every frame, or the mean over consecutive windows of `window_seconds` (a window
    holds the frames whose start lies in it). `spans(T)` gives (T, 2) start/end seconds of the
    frames. Returns vectors (N, D) float32, starts (N,), ends (N,).
    """
    data = np.asarray(data)
    if data.ndim != len(axes) or data.ndim not in (1, 2):
        raise SearchError(f"{what}array of shape {data.shape} does not match axes {axes}")
    if data.ndim == 2 and data.shape[0] == 0:
        raise SearchError(f"{what}no frames (shape {data.shape})")
    if data.ndim == 2 and not np.isfinite(data).all():
        rows = int((~np.isfinite(data).all(axis=1)).sum())
        raise SearchError(f"{what}{rows} of {data.shape[0]} frames hold NaN/Inf")
    if level == "file" or data.ndim == 1:
        vec = data if data.ndim == 1 else data.astype(np.float64).mean(axis=0)
        nan = np.array([np.nan])
        return normalize_rows(vec[None], what), nan, nan.copy()
    if spans is None:
        raise SearchError(f"{what}frame times unknown: segment level needs them")
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


def query_vector(vectors: np.ndarray) -> np.ndarray:
    """One unit query vector from a file's vectors (their mean direction)."""
    return normalize_rows(np.asarray(vectors, np.float64).mean(axis=0, keepdims=True))[0]


# -- search results -------------------------------------------------------------------------
@dataclass(frozen=True)
class Hit:
    """One result: `path` relative to the input folder, cosine `score`, `start`/`end` seconds (NaN at
    file level)."""

    path: str
    score: float
    start: float
    end: float
    id: int = -1

    def to_json(self) -> dict:
        def sec(x: float) -> float | None:
            return None if x is None or math.isnan(x) else round(float(x), 4)

        return {
            "path": self.path,  # json.dumps escapes a non-UTF-8 name's bytes (\udcXX): lossless
            "score": round(float(self.score), 6),
            "start": sec(self.start),
            "end": sec(self.end),
        }


def merge_topk(scores: np.ndarray, ids: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Top k per row of (Q, M) scores, best first; ties broken by the smaller id (deterministic)."""
    if scores.shape[1] > k:
        part = np.argpartition(-scores, k - 1, axis=1)[:, :k]
        scores = np.take_along_axis(scores, part, 1)
        ids = np.take_along_axis(ids, part, 1)
    order = np.lexsort((ids, -scores), axis=1)
    return np.take_along_axis(scores, order, 1), np.take_along_axis(ids, order, 1)


def num(x: float | None) -> float | None:
    """NaN -> None (SQL NULL)."""
    return None if x is None or (isinstance(x, float) and math.isnan(x)) else float(x)


def from_num(x: float | None) -> float:
    """SQL NULL -> NaN."""
    return float("nan") if x is None else float(x)


def name_from_db(value: str | bytes | memoryview) -> str:
    """A stored file name back to str: bytes (a name that is not UTF-8) via surrogate escapes."""
    if isinstance(value, str):
        return value
    return bytes(value).decode("utf-8", "surrogateescape")


def file_row(rec: dict, n: int, name: Callable[[str], object]) -> tuple:
    """A file's row in either store's files table: (output, source, sha256, size, mtime_ns, n)."""
    return (name(rec["output"]), name(rec["source"]), rec.get("sha256"), rec.get("size"),
            rec.get("mtime_ns"), n)


# -- the store interface --------------------------------------------------------------------------
class Store:
    """One collection in a backend. Rows: id, file (output path), start, end, unit vector.

    A writer opened with `rebuild=True` fills a new, empty generation of the collection that
    readers do not see until `commit()` swaps it in whole; closing without `commit()` (a kill,
    an error) leaves the old collection answering.
    """

    info: CollectionInfo
    dim: int | None
    where: str

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

    def commit(self) -> None:
        """A rebuild: swap the new generation in (one transaction). Otherwise nothing to do."""

    def optimize(self, ann_threshold: int, force: bool = False) -> str:
        """Compact and (re)build the ANN index where due; returns what it did, for the report."""
        return ""

    def close(self) -> None:
        pass

