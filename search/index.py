"""The Index (a collection in either store) and building one from a model folder, incrementally."""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from embedkit import results
from embedkit.extractors.base import ConfigError
from embedkit.search.collection import (
    DEFAULT_ANN_THRESHOLD,
    DEFAULT_EF_SEARCH,
    CollectionInfo,
    Hit,
    SearchError,
    Store,
    check_collection_name,
    file_sha256,
    normalize_rows,
    vectors_from_array,
)


def is_postgres(db: str | os.PathLike | None) -> bool:
    return isinstance(db, str) and db.startswith(("postgresql://", "postgres://"))


def default_store(folder: results.ModelFolder) -> Path:
    """Where the embedded store lives unless --db says otherwise: inside the model folder (hidden)."""
    return folder.dir / ".search"


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
        rebuild: bool = False,
        **kwargs: Any,
    ) -> Index:
        """Open collection `name` in `db`; `create` makes it when missing and must match it when present.

        rebuild=True (a writer, with `create`): fill a new, empty generation of the collection
        under the writer lock; readers keep the old one until `commit()` swaps the new one in
        whole (`build_index` commits); closing without it leaves the old one as it was.
        """
        check_collection_name(name)
        if is_postgres(db):
            from embedkit.search.postgres import PostgresStore

            store: Store = PostgresStore(str(db), name, create, writer, rebuild)
        else:
            from embedkit.search.embedded import EmbeddedStore

            store = EmbeddedStore(db, name, create, writer, rebuild)
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
        """One transaction for many files: (record with output/source/sha256/size/mtime_ns and, where
        known, config (the array's configuration digest), vectors, starts, ends)."""
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

    def commit(self) -> None:
        """A rebuild: swap the new collection in (readers see it from now on). Otherwise nothing."""
        self.store.commit()

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
    notes: list[str] = field(default_factory=list)  # what the reader left out (stale arrays, ...)


@dataclass
class _Entry:
    item: results.Item
    size: int
    mtime_ns: int

    @property
    def output(self) -> str:
        return str(self.item.output)


def build_index(
    folder: results.ModelFolder,
    index: Index,
    commit_files: int = 500,
    commit_vectors: int = 200_000,
    log: Callable[[str], None] | None = None,
) -> IndexReport:
    """Bring `index` up to date with `folder`'s current items (`results.ModelFolder.items`): add new
    or changed outputs, drop vanished (or now stale) ones.

    An output is unchanged when its size and mtime match the index's record (or, when they don't,
    its sha256 still does). Changed and new outputs are written in batches, each one
    transaction, so a killed run leaves whole batches and a rerun finishes the rest (a rebuild:
    nothing until its end, then everything at once). Mixed dimensions stop before anything is
    written (ConfigError).
    """
    t0 = time.perf_counter()
    rep = IndexReport(notes=list(folder.notes))
    info = index.info
    found: dict[str, _Entry] = {}
    for item in folder.items:
        try:
            st = item.path.stat()
        except OSError:
            continue  # removed since the listing
        found[str(item.output)] = _Entry(item, st.st_size, st.st_mtime_ns)
    known = index.files()
    gone = [out for out in known if out not in found]
    todo = []
    for out, entry in found.items():
        rec = known.get(out)
        if rec and rec["size"] == entry.size and rec["mtime_ns"] == entry.mtime_ns \
                and rec["source"] == entry.item.source:
            rep.unchanged += 1
        else:
            todo.append(entry)
    if not found and not known:
        raise ConfigError(
            f"{folder.dir} holds no current outputs"
            + (f" ({len(folder.excluded)} left out: see above)" if folder.excluded else "")
            + f": run `python run_extraction.py --models {folder.name} --output_base "
            f"{folder.output_base}` first"
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
        item = entry.item
        try:
            sha = file_sha256(item.path)
            rec = known.get(entry.output)
            if rec and rec["sha256"] == sha and rec["source"] == item.source:
                # same bytes, new mtime (e.g. copied): record the new stat, keep the vectors
                index.store.update_stat(entry.output, entry.size, entry.mtime_ns)
                rep.unchanged += 1
                continue
            data = item.load(mmap=True)
            vecs, starts, ends = vectors_from_array(
                data, item.axes, info.level, info.window_seconds,
                spans=lambda n, i=item: i.spans(n),
            )
            if (info.level == "file" or item.time_axis is None) and item.duration_seconds is not None:
                starts, ends = np.array([0.0]), np.array([item.duration_seconds])
        except (SearchError, results.ResultsError, OSError, ValueError) as exc:
            rep.failures.append((entry.output, str(exc)))
            continue
        record = {"output": entry.output, "source": item.source, "sha256": sha, "size": entry.size,
                  "mtime_ns": entry.mtime_ns}
        if isinstance(item.record.get("config"), str):
            record["config"] = item.record["config"]
        batch.append((record, vecs, starts, ends))
        pending += len(vecs)
        if len(batch) >= commit_files or pending >= commit_vectors:
            flush()
    flush()
    failed = {out for out, _ in rep.failures}
    stale = [out for out in failed if out in known]  # changed and now failing: its old vectors are stale
    if stale:
        index.store.remove(stale)
    index.commit()
    rep.optimized = index.optimize()
    rep.total_vectors = len(index)
    rep.seconds = time.perf_counter() - t0
    return rep


def _check_dims(todo: list[_Entry], index_dim: int | None, folder: results.ModelFolder) -> None:
    """Vector length of every output to add, from the .npy headers; mixed lengths are a ConfigError."""
    dims: dict[int, list[str]] = {}
    for entry in todo:
        try:
            shape, _ = entry.item.header()
        except results.ResultsError:
            continue  # reported when loaded
        if len(shape) != len(entry.item.axes):
            continue  # reported when loaded
        dims.setdefault(int(shape[-1]), []).append(entry.output)
    if index_dim is not None and dims and set(dims) != {index_dim}:
        other = {d: v for d, v in dims.items() if d != index_dim}
        d, files = next(iter(other.items()))
        raise ConfigError(
            f"{folder.dir}: {sum(len(v) for v in other.values())} outputs have vectors of length {d} "
            f"(e.g. {results.display_name(files[0])}) but the index holds length {index_dim}: the folder "
            "mixes configurations. Re-extract them with --overwrite, or rebuild the index (index --rebuild)."
        )
    if len(dims) > 1:
        desc = ", ".join(f"length {d}: {len(v)} outputs (e.g. {results.display_name(v[0])})"
                         for d, v in sorted(dims.items()))
        raise ConfigError(
            f"{folder.dir} mixes vector lengths ({desc}); its arrays come from different configurations. "
            "Re-extract with --overwrite into a clean --output_base; nothing was indexed."
        )
