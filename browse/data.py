"""The one adapter between `embedkit browse` / `embedkit evaluate` and a run's files.

Every read of a model folder, the manifest, a run report or a search index by the browse app
and by the probe goes through this module, and this module reads them only through
`embedkit.results` and `embedkit.search` (see `USES` for the exact list), so a change of
their API is a change here and nowhere else. Nothing here writes into the output folder; the
map cache (projection.py) is written beside the index, under the index's own folder.

    coll = Collection("output/example_study")                 # models, sources, the input folder
    view = coll.index("melspec")                               # an IndexView: the search index, read-only
    view.neighbours("dir/song.wav", k=10)                      # list of Neighbour, best first
    coll.media_file("dir/song.wav")                             # the file; refused outside the input folder
    coll.panels("dir/song.wav")                                 # what each model wrote for it, ready to draw
    X, found, missing = file_vectors(base, "melspec", sources)  # (N, D) file-level vectors for the probe
"""

from __future__ import annotations

import base64
import hashlib
import json
import math
import os
import threading
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any, Callable

import numpy as np

from embedkit import media, results, search
from embedkit.extractors.base import ConfigError

# What this adapter calls (the lead ports these when the reader's API lands):
USES = {
    "embedkit.results": [
        "Results(base).{models, model(name)}", "ResultsError",
        "ModelFolder.{meta, extractor, item(source), items}",
        "Item.{source, axes, load(mmap=True), times(n), extra('beats')}",
    ],
    "embedkit.search": [
        "collection_info(folder, level, window)", "check_collection", "default_store(folder)",
        "Index.open(where, name, create=None)",
        "Index.{info, files, search(exclude=), vectors_of, close, len}",
        "Index.store: embedded.EmbeddedStore._segments(), .db, .dim and collection.name_from_db "
        "(every vector at once, for the map; any other store: vectors_of file by file)",
        "collection_name", "is_postgres", "query_vector", "normalize_rows",
        "QueryEmbedder(info).embed", "retrieval_metrics", "SearchError",
    ],
}

PITCH_EXTRACTORS = ("crepe",)
BEAT_EXTRACTORS = ("madmom",)
MAX_CURVE_POINTS = 4000  # per curve drawn on an item page
MAX_HEAT_COLS, MAX_HEAT_ROWS = 800, 128


class BrowseError(Exception):
    """One line for the user (a page, the console); `status` is the HTTP status a page answers with."""

    def __init__(self, message: str, status: int = 400) -> None:
        super().__init__(message)
        self.status = status


# -- the input folder ------------------------------------------------------------------------------
def input_dir_of(output_base: str | os.PathLike, given: str | os.PathLike | None = None) -> Path | None:
    """The run's input folder: `given`, else the `audio_dir` its run_report.json names; None if unknown."""
    if given:
        return Path(given)
    try:
        d = json.loads((Path(output_base) / "run_report.json").read_text()).get("audio_dir")
    except (OSError, ValueError, AttributeError):
        return None
    return Path(d) if d else None


def safe_relative(rel: str) -> PurePosixPath:
    """A path relative to the input folder as the collection names it; BrowseError for anything else.

    Refused: absolute paths, `..` anywhere (also when it arrived percent-encoded: the caller
    passes the decoded path), backslashes, NUL bytes, empty parts.
    """
    if not rel or "\x00" in rel or "\\" in rel or rel.startswith("/") or os.path.isabs(rel):
        raise BrowseError(f"{rel!r} is not a path inside the input folder", 404)
    parts = rel.split("/")
    if any(p in ("", ".", "..") for p in parts):
        raise BrowseError(f"{rel!r} is not a path inside the input folder", 404)
    return PurePosixPath(rel)


# -- hits ------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Neighbour:
    """One search result: `path` relative to the input folder, cosine `score`, `start`/`end` s or None."""

    path: str
    score: float
    start: float | None
    end: float | None

    @classmethod
    def of(cls, hit: Any) -> Neighbour:
        def sec(x: float) -> float | None:
            return None if x is None or math.isnan(x) else float(x)

        return cls(hit.path, float(hit.score), sec(hit.start), sec(hit.end))

    def to_json(self) -> dict:
        return {"path": self.path, "score": round(self.score, 6), "start": self.start, "end": self.end}


# -- one index -------------------------------------------------------------------------------------
class IndexView:
    """One collection of a search index, opened read-only, with every call made on one worker thread.

    SQLite connections (the embedded store) and the query model belong to the thread that made
    them; the web server answers on many threads, so each call is handed to this view's thread.
    """

    def __init__(
        self, output_base: Path, folder: results.ModelFolder, model: str, where: str, name: str
    ) -> None:
        self.model, self.where, self.name = model, where, name
        self.output_base = output_base
        self.folder = folder
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix=f"index-{name}")
        self._embedder = None
        try:
            self._index = self._call(lambda: search.Index.open(where, name, create=None))
        except BaseException:
            self._pool.shutdown(wait=False)
            raise
        info = self.info = self._index.info
        self.level: str = info.level
        self.window: float = float(info.window_seconds)
        self.alias: str = info.alias
        self.config: dict = info.config
        self.count: int = self._call(lambda: len(self._index))

    def _call(self, fn: Callable[[], Any]) -> Any:
        return self._pool.submit(fn).result()

    def close(self) -> None:
        if getattr(self, "_index", None) is not None:
            self._call(self._index.close)
            self._index = None
        self._pool.shutdown(wait=True)

    @property
    def is_postgres(self) -> bool:
        return search.is_postgres(self.where)

    @property
    def describe(self) -> str:
        window = f", {self.window:g} s windows" if self.level == "segment" and self.window else ""
        return f"{self.name} ({self.level} level{window}, {self.count} vectors)"

    def files(self) -> dict[str, dict]:
        """Indexed outputs: output -> {source, sha256, size, mtime_ns, n}."""
        return self._call(self._index.files)

    def sources(self) -> list[str]:
        return sorted(rec["source"] for rec in self.files().values())

    def fingerprint(self) -> str:
        """Changes whenever the index's content does (files added, changed or removed)."""
        rows = sorted(
            (out, r["source"], r.get("sha256") or "", int(r["n"])) for out, r in self.files().items()
        )
        h = hashlib.sha256(json.dumps([self.level, self.window, self.config, rows]).encode())
        return h.hexdigest()

    def cache_path(self, what: str) -> Path | None:
        """Where a cache of this collection lives: beside the index (None: nowhere to put it)."""
        if self.is_postgres:
            return search.default_store(self.folder) / f"{self.name}.pg.{what}"
        return Path(self.where) / f"{self.name}.{what}"

    def neighbours(self, source: str, k: int = 10, at: float | None = None) -> list[Neighbour]:
        """The k nearest items of an indexed file (itself left out), best first.

        File level: its vector. Segment level: the mean direction of its vectors, or with `at`
        (seconds) the vector of the moment that holds `at`.
        """

        def run() -> list[Neighbour]:
            got = self._index.vectors_of(source)
            if got is None:
                raise BrowseError(f"{source} is not in the index {self.name}", 404)
            _, vecs, starts, ends = got
            if at is not None and self.level == "segment" and len(vecs):
                inside = np.flatnonzero((starts <= at) & (at < ends))
                row = int(inside[0]) if len(inside) else int(np.argmin(np.abs(starts - at)))
                q = vecs[row]
            else:
                q = search.query_vector(vecs)
            hits = self._index.search(q, k, exclude={source})
            return [Neighbour.of(h) for h in hits]

        return self._call(run)

    def query_file(self, path: Path, k: int = 10) -> list[Neighbour]:
        """Embed a file with the collection's exact configuration and return its k nearest items."""

        def run() -> list[Neighbour]:
            if self._embedder is None:
                self._embedder = search.QueryEmbedder(self._index.info)
            vecs, _, _ = self._embedder.embed(path)
            return [Neighbour.of(h) for h in self._index.search(search.query_vector(vecs), k)]

        try:
            return self._call(run)
        except (search.SearchError, ConfigError) as exc:
            raise BrowseError(str(exc).splitlines()[0], 422) from exc

    def all_vectors(self) -> tuple[list[str], np.ndarray, np.ndarray, np.ndarray]:
        """Every vector of the collection: (source per vector, starts (N,), ends (N,), vectors (N, D))."""
        return self._call(self._all_vectors)

    def _all_vectors(self) -> tuple[list[str], np.ndarray, np.ndarray, np.ndarray]:
        from embedkit.search.collection import name_from_db
        from embedkit.search.embedded import EmbeddedStore

        store = self._index.store
        if isinstance(store, EmbeddedStore) and store.dim:  # one pass over the segments
            segs = store._segments()
            ids = np.concatenate([s["ids"][s["alive"]] for s in segs]) if segs else np.zeros(0, np.int64)
            vecs = np.concatenate([np.asarray(s["vectors"])[s["alive"]] for s in segs]) if segs else None
            rows = store.db.execute(
                "SELECT v.id, f.source, v.start, v.end FROM vectors v JOIN files f ON f.file_id = v.file_id "
                "ORDER BY v.id"
            ).fetchall()
            order = np.argsort(ids, kind="stable")
            if (
                vecs is not None
                and len(rows) == len(ids)
                and np.array_equal(ids[order], np.fromiter((r[0] for r in rows), np.int64, len(rows)))
            ):
                starts = np.array([np.nan if r[2] is None else r[2] for r in rows], np.float64)
                ends = np.array([np.nan if r[3] is None else r[3] for r in rows], np.float64)
                return [name_from_db(r[1]) for r in rows], starts, ends, np.ascontiguousarray(vecs[order])
        sources, starts, ends, parts = [], [], [], []  # any store: file by file
        for rec in sorted(store.files().values(), key=lambda r: r["source"]):
            got = self._index.vectors_of(rec["source"])
            if got is None:
                continue
            _, v, s, e = got
            sources += [rec["source"]] * len(v)
            starts.append(s)
            ends.append(e)
            parts.append(v)
        dim = self._index.store.dim or 0
        return (
            sources,
            np.concatenate(starts) if starts else np.zeros(0),
            np.concatenate(ends) if ends else np.zeros(0),
            np.concatenate(parts) if parts else np.zeros((0, dim), np.float32),
        )


# -- the collection --------------------------------------------------------------------------------
class Collection:
    """A run's output folder: its model folders, the sources they hold, the input folder, the indexes."""

    def __init__(
        self,
        output_base: str | os.PathLike,
        audio_dir: str | os.PathLike | None = None,
        db: str | None = None,
        collections: list[str] | None = None,
    ) -> None:
        self.base = Path(output_base)
        try:
            self.run = results.Results(self.base)
            names = self.run.models
        except results.ResultsError as exc:
            raise BrowseError(str(exc)) from None
        if not names:
            raise BrowseError(
                f"{self.base} holds no model folder (no <model>/features.json): give the --output_base "
                "of a run (embedkit extract ...)"
            )
        self.folders: dict[str, results.ModelFolder] = {}
        for name in names:
            try:
                self.folders[name] = self.run.model(name)
            except results.ResultsError:
                continue
        self.input_dir = input_dir_of(self.base, audio_dir)
        self.db = db
        self.collection_names = list(collections or [])
        self._outputs: dict[str, dict[str, results.Item]] = {}  # source -> {model: its current array}
        for model, folder in self.folders.items():
            try:
                items = folder.items
            except results.ResultsError:
                continue
            for item in items:
                self._outputs.setdefault(item.source, {})[model] = item
        self._views: dict[tuple[str, str], IndexView] = {}
        self._lock = threading.Lock()

    # -- what is there
    @property
    def models(self) -> list[str]:
        return list(self.folders)

    @property
    def sources(self) -> list[str]:
        """Every source any model wrote an output for (relative to the input folder), sorted."""
        return sorted(self._outputs)

    def outputs_of(self, source: str) -> dict[str, results.Item]:
        return dict(self._outputs.get(source, {}))

    def kind(self, source: str) -> str:
        return media.kind_of(source) or "audio"

    def why_not_searchable(self, model: str) -> str | None:
        """None when the model's outputs can be indexed; else why not (named quantities, odd axes)."""
        try:
            search.collection_info(self.folders[model], "file")
        except ConfigError as exc:
            return str(exc)
        return None

    def searchable_models(self) -> list[str]:
        return [m for m in self.models if self.why_not_searchable(m) is None]

    def how_to_index(self, model: str, level: str = "file") -> str:
        db = f" --db {self.db}" if self.db else ""
        seg = " --level segment" if level == "segment" else ""
        return f"embedkit search index --output_base {self.base} --model {model}{seg}{db}"

    def collections_of(self, model: str) -> list[str]:
        """Names of the collections built from `model` (file level first)."""
        if model not in self.folders:
            return []
        wanted = [c for c in self.collection_names]
        defaults = [search.collection_name(model, "file"), search.collection_name(model, "segment")]
        if self.db and search.is_postgres(self.db):
            return wanted or defaults
        root = Path(self.db) if self.db else search.default_store(self.folders[model])
        found = []
        if root.is_dir():
            for d in sorted(root.iterdir()):
                if (d / "index.sqlite").is_file() and not d.name.startswith("."):
                    if self.db and not d.name.startswith(model + "_") and d.name not in wanted:
                        continue  # a shared --db folder: another model's collection
                    found.append(d.name)
        if wanted:
            found = [c for c in found if c in wanted]
        return sorted(found, key=lambda n: (n not in defaults, defaults.index(n) if n in defaults else 0, n))

    def index(self, model: str, name: str | None = None) -> IndexView:
        """The model's index (collection `name`, default its file-level one), read-only.

        BrowseError (one line, with the command that builds it) when there is none, or when it was
        built from another configuration than the model folder now holds.
        """
        if model not in self.folders:
            raise BrowseError(
                f"no model folder {model!r} in {self.base} (there: {', '.join(self.models)})", 404
            )
        why = self.why_not_searchable(model)
        if why:
            raise BrowseError(f"{model} has no index: {why.splitlines()[0]}", 409)
        names = self.collections_of(model)
        if name is None:
            if not names:
                raise BrowseError(
                    f"{model} has no search index yet; build it with: {self.how_to_index(model)}", 409
                )
            name = names[0]
        key = (model, name)
        with self._lock:
            if key in self._views:
                return self._views[key]
            folder = self.folders[model]
            where = self.db or str(search.default_store(folder))
            try:
                view = IndexView(self.base, folder, model, where, name)
            except ConfigError as exc:
                msg = str(exc).splitlines()[0]
                if "no index" in msg or "holds no collection" in msg or "does not exist" in msg:
                    msg = f"{model} has no search index {name}; build it with: {self.how_to_index(model)}"
                raise BrowseError(msg, 409) from None
            try:
                wanted = search.collection_info(folder, view.level, view.window)
                search.check_collection(view.info, wanted, name)
            except ConfigError as exc:
                view.close()
                raise BrowseError(
                    f"{str(exc).splitlines()[0]} ({self.how_to_index(model, view.level)} --rebuild)", 409
                ) from None
            self._views[key] = view
            return view

    def close(self) -> None:
        with self._lock:
            for view in self._views.values():
                view.close()
            self._views.clear()

    # -- the media
    def media_file(self, source: str) -> Path:
        """The source file of an item of the collection; BrowseError for anything else.

        Only sources the run wrote outputs for are served, and only when the file, symlinks
        resolved, lies inside the input folder.
        """
        rel = safe_relative(source)
        if rel.as_posix() not in self._outputs:
            raise BrowseError(f"{source} is not an item of this collection", 404)
        if self.input_dir is None:
            raise BrowseError(
                f"the input folder of {self.base} is unknown (no run_report.json): "
                "restart with --audio_dir DIR",
                404,
            )
        root = self.input_dir.resolve()
        path = (root / rel).resolve()
        if not path.is_relative_to(root):
            raise BrowseError(f"{source} leads outside the input folder {root}: refused", 403)
        if not path.is_file():
            raise BrowseError(
                f"{source} has vanished from {root} since it was indexed; re-extract and re-index "
                f"(embedkit search index --output_base {self.base} --model MODEL) to drop it",
                410,
            )
        return path

    # -- what each model wrote for one item, ready to draw
    def panels(self, source: str) -> list[dict]:
        """One drawable dict per model with an output for `source` (JSON-ready, sizes bounded)."""
        out = []
        for model, item in sorted(self.outputs_of(source).items()):
            folder = self.folders[model]
            try:
                out.append(_panel(folder, model, item))
            except (OSError, ValueError, results.ResultsError) as exc:
                out.append({"kind": "error", "model": model, "message": str(exc).splitlines()[0]})
        return out


def _b64(a: np.ndarray) -> str:
    return base64.b64encode(np.ascontiguousarray(a).tobytes()).decode("ascii")


def _decimate(n: int, limit: int) -> np.ndarray:
    return np.arange(n) if n <= limit else np.linspace(0, n - 1, limit).round().astype(np.int64)


def _block_max(x: np.ndarray, limit: int) -> np.ndarray:
    """Keep peaks when shortening a curve (beat activations): max over blocks."""
    if len(x) <= limit:
        return x
    edges = np.linspace(0, len(x), limit + 1).astype(np.int64)
    return np.maximum.reduceat(x, edges[:-1])


def _panel(folder: results.ModelFolder, model: str, item: results.Item) -> dict:
    a = np.asarray(item.load(mmap=True))
    axes = item.axes
    cols = folder.meta.get("columns") or []
    base = {"model": model, "extractor": folder.extractor}
    if "layer" in axes and a.ndim == len(axes):  # MERT with several layers: the last one, as plots do
        a = np.take(a, -1, axis=axes.index("layer"))
        axes = [x for x in axes if x != "layer"]
        base["note"] = "last layer"
    if "time" not in axes or a.ndim != len(axes):
        v = a.reshape(-1).astype(np.float32)[:4096]
        return {**base, "kind": "vector", "values": [round(float(x), 5) for x in v]}
    ti = axes.index("time")
    a = np.moveaxis(a, ti, 0)
    t = item.times(a.shape[0])
    if t is None:
        raise ValueError("no frame times")
    if folder.extractor in PITCH_EXTRACTORS or cols[:2] == ["f0_hz", "confidence"]:
        idx = _decimate(len(t), MAX_CURVE_POINTS)
        return {
            **base,
            "kind": "pitch",
            "t": t[idx].round(4).tolist(),
            "f0": a[idx, 0].astype(float).round(2).tolist(),
            "conf": a[idx, 1].astype(float).round(3).tolist(),
        }
    if folder.extractor in BEAT_EXTRACTORS or a.ndim == 1:
        y = a.reshape(a.shape[0], -1)[:, 0].astype(np.float64)
        beats = item.extra("beats") if "beats" in folder.extras else None
        idx = _decimate(len(t), MAX_CURVE_POINTS)
        yy = _block_max(y, MAX_CURVE_POINTS) if len(y) > MAX_CURVE_POINTS else y
        return {
            **base,
            "kind": "beats" if folder.extractor in BEAT_EXTRACTORS else "curve",
            "t": t[idx].round(4).tolist(),
            "y": yy.round(4).tolist(),
            "beats": None if beats is None else np.asarray(beats, float).reshape(-1).round(4).tolist(),
        }
    x = a.reshape(a.shape[0], -1).astype(np.float64)
    if cols and len(cols) == x.shape[1] and len(cols) <= 8:
        idx = _decimate(len(t), MAX_CURVE_POINTS)
        return {
            **base,
            "kind": "curves",
            "t": t[idx].round(4).tolist(),
            "columns": cols,
            "y": x[idx].T.round(4).tolist(),
        }
    # frames of an embedding: a heat map (time across, dimensions up), block means, 8 bits
    tc = np.linspace(0, x.shape[0], min(MAX_HEAT_COLS, x.shape[0]) + 1).astype(np.int64)
    x = np.add.reduceat(x, tc[:-1], axis=0) / np.diff(tc)[:, None]
    dr = np.linspace(0, x.shape[1], min(MAX_HEAT_ROWS, x.shape[1]) + 1).astype(np.int64)
    x = np.add.reduceat(x, dr[:-1], axis=1) / np.diff(dr)[None, :]
    lo, hi = np.percentile(x, [1, 99]) if x.size else (0.0, 1.0)
    q = np.clip((x - lo) / (hi - lo if hi > lo else 1.0) * 255, 0, 255).astype(np.uint8)
    return {
        **base,
        "kind": "heatmap",
        "t0": float(t[0]),
        "t1": float(t[-1]),
        "cols": int(q.shape[0]),
        "rows": int(q.shape[1]),
        "dims": int(a.reshape(a.shape[0], -1).shape[1]),
        "data": _b64(q.T[::-1]),
    }


# -- file-level vectors for the probe --------------------------------------------------------------
def file_vectors(
    output_base: str | os.PathLike, model: str, sources: list[str]
) -> tuple[np.ndarray, list[str], list[str]]:
    """Mean-pooled file-level vectors of `sources` from one model folder.

    Returns (X (n_found, D) float64, found sources in order, missing sources: no output written).
    The vector is the output itself when pooled, else the mean over its frames (the index's file
    level before normalisation). ConfigError when the folder's outputs are not embeddings.
    """
    try:
        folder = results.Results(output_base).model(model)
    except results.ResultsError as exc:
        raise ConfigError(str(exc)) from None
    search.collection_info(folder, "file")
    rows, found, missing = [], [], []
    for src in sources:
        item = folder.item(src)
        if item is None or item.source != src:
            missing.append(src)
            continue
        a = np.asarray(item.load(mmap=True), np.float64)
        axes = item.axes
        if a.ndim != len(axes):
            raise ConfigError(
                f"{model}/{item.output}: shape {a.shape} does not match axes {axes}; re-extract it"
            )
        rows.append(a.mean(axis=0) if a.ndim == 2 else a)
        found.append(src)
    dims = {r.shape[0] for r in rows}
    if len(dims) > 1:
        raise ConfigError(
            f"{model} mixes vector lengths {sorted(dims)}: re-extract into a clean --output_base"
        )
    return (np.stack(rows) if rows else np.zeros((0, 0))), found, missing


def retrieval_figures(
    vectors: np.ndarray, labels: list[str], ks: tuple[int, ...] = (1, 5, 10), groups: list[str] | None = None
) -> dict:
    """precision@k, recall@k and mAP of same-label retrieval, leave-one-out by exact cosine over `vectors`.

    The figures `embedkit search evaluate` reports at file level (search.retrieval_metrics), over the
    labelled items. With `groups`, a query's own group is left out of its ranking and of its relevant
    set as well (another sentence of the same speaker would otherwise be an easy match).
    """
    unit = (
        search.normalize_rows(np.asarray(vectors, np.float32))
        if len(vectors)
        else np.zeros((0, 0), np.float32)
    )
    n = len(unit)
    keys = [str(i) for i in range(n)]
    lab = dict(zip(keys, labels))
    sims = unit @ unit.T
    orders = [np.lexsort((np.arange(n), -sims[i])) for i in range(n)]  # ties: the earlier item first
    if groups is None:
        rankings = [(keys[i], [keys[j] for j in orders[i] if j != i]) for i in range(n)]
        out = search.retrieval_metrics(rankings, lab, ks, pool=keys)
        if "alone" in out:  # queries alone with their label: a count (the keys here are row numbers)
            out["alone"] = len(out["alone"])
        return out
    g = np.asarray(groups)
    per_query = []
    for i in range(n):  # each query has its own pool (every other group): one call per query, averaged
        others = [j for j in orders[i] if g[j] != g[i]]
        pool = [keys[i]] + [keys[j] for j in others]
        per_query.append(search.retrieval_metrics([(keys[i], [keys[j] for j in others])], lab, ks, pool=pool))
    counted = [m for m in per_query if m["queries"]]
    out = (
        {
            key: (round(float(np.mean([m[key] for m in counted])), 4) if counted else None)
            for key in per_query[0]
            if key not in ("queries", "alone")
        }
        if per_query
        else {}
    )
    out["queries"] = len(counted)
    out["alone"] = n - len(counted)
    return out
