"""The embedded store: SQLite (transactions) + immutable .npy segments + FAISS, in one folder, no server."""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import sqlite3
import uuid
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import numpy as np

from embedkit import outputs, results
from embedkit.extractors.base import ConfigError
from embedkit.search.collection import (
    HNSW_EF_CONSTRUCTION,
    HNSW_M,
    CollectionInfo,
    Hit,
    Store,
    check_collection,
    check_item_configs,
    file_row,
    from_num,
    merge_topk,
    name_from_db,
    num,
)


def _db_name(name: str) -> str | bytes:
    """How a file name is stored: TEXT when it is UTF-8 (every ordinary name), else a BLOB of its exact
    bytes. Lossless, and injective: a UTF-8 name is never stored as a BLOB."""
    return name if results.is_utf8(name) else results.name_bytes(name)


class EmbeddedStore(Store):
    """SQLite + immutable .npy segments + FAISS, in one folder (see the module docstring).

    Layout of `<root>/<name>/`: `index.sqlite` (tables meta, files, vectors, segments, dead),
    `segments/<id>-<uuid>.npy` (unit vectors) and `.ids.npy` (their row ids),
    `ann-<uuid>.faiss` (HNSW over the ids up to the watermark recorded in meta), `.writer.lock`.
    Files are written whole (temp + fsync + rename) before the transaction that names them;
    files no transaction names (left by a killed writer) are removed by the next writer.
    File names are TEXT, or a BLOB of their exact bytes where they are not UTF-8.
    A rebuild (under the same writer lock) is one transaction that deletes every row and adds
    the new ones: readers (WAL) see the old collection until it commits; the old segment and
    HNSW files are deleted after the commit, and a killed rebuild's segments are orphans.
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
        self,
        root: str | os.PathLike,
        name: str,
        create: CollectionInfo | None = None,
        writer: bool = False,
        rebuild: bool = False,
    ) -> None:
        self.dir = Path(root) / name
        self.where = str(self.dir)
        db_path = self.dir / "index.sqlite"
        if not db_path.is_file() and create is None:
            raise ConfigError(f"no index at {self.dir}; build it first: python run_search.py index ...")
        if rebuild and (create is None or not writer):
            raise ValueError("a rebuild is a writer with the collection to create")
        self.dir.mkdir(parents=True, exist_ok=True)
        (self.dir / "segments").mkdir(exist_ok=True)
        self._lock_fd: int | None = None
        self._depth = 0  # open transactions (nested ones are savepoints)
        self._rebuilding: dict | None = None  # the old generation's files while a rebuild is open
        self._cache: dict | None = None
        if writer:  # one writer at a time, rebuilds included
            self._lock_fd = os.open(self.dir / ".writer.lock", os.O_RDWR | os.O_CREAT, 0o644)
            try:
                fcntl.flock(self._lock_fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                os.close(self._lock_fd)
                self._lock_fd = None
                raise ConfigError(
                    f"another process is writing the index at {self.dir}; wait for it to finish"
                ) from None
        self.db = sqlite3.connect(db_path, timeout=60, isolation_level=None)
        try:
            self._open(db_path, create, writer, rebuild)
        except BaseException:
            self.close()
            raise

    def _open(self, db_path: Path, create: CollectionInfo | None, writer: bool, rebuild: bool) -> None:
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
                if (writer and create is not None and not rebuild and not self.info.config_digest
                        and create.config_digest and self.info.config == create.config):
                    # built before the run recorded digests: the same configuration, now with its digest
                    self.info = create
                    self._set_meta("info", json.dumps(create.to_json()))
        if not rebuild:
            check_collection(self.info, create, f"at {self.dir}")
        dim = self._meta("dim")
        self.dim = int(dim) if dim else None
        if writer:
            self._remove_orphans()
        if rebuild:
            self._begin_rebuild(create)

    def _begin_rebuild(self, info: CollectionInfo) -> None:
        """Open the transaction that replaces the whole collection: readers see the old one until commit."""
        old_segments = [r[0] for r in self.db.execute("SELECT name FROM segments")]
        old_ann = self._meta("ann_file")
        self.db.execute("BEGIN IMMEDIATE")
        self._depth = 1
        for table in ("vectors", "files", "segments", "dead"):
            self.db.execute(f"DELETE FROM {table}")
        for key in ("ann_file", "ann_count", "ann_watermark", "dim"):
            self.db.execute("DELETE FROM meta WHERE key=?", (key,))
        self._set_meta("info", json.dumps(info.to_json()))
        self.info, self.dim = info, None
        self._rebuilding = {"segments": old_segments, "ann": old_ann}

    def commit(self) -> None:
        if self._rebuilding is None:
            return
        old, self._rebuilding = self._rebuilding, None
        self.db.execute("COMMIT")
        self._depth = 0
        self._cache = None
        for name in old["segments"]:  # no transaction names them any more
            for suffix in (".npy", ".ids.npy"):
                (self.dir / "segments" / f"{name}{suffix}").unlink(missing_ok=True)
        if old["ann"]:
            (self.dir / old["ann"]).unlink(missing_ok=True)

    # -- plumbing
    @contextlib.contextmanager
    def _tx(self) -> Iterator[None]:
        """A transaction; inside another one (a rebuild), a savepoint."""
        nested = self._depth > 0
        self.db.execute("SAVEPOINT sp" if nested else "BEGIN IMMEDIATE")
        self._depth += 1
        try:
            yield
        except BaseException:
            self.db.execute("ROLLBACK TO sp" if nested else "ROLLBACK")
            if nested:
                self.db.execute("RELEASE sp")
            raise
        finally:
            self._depth -= 1
        self.db.execute("RELEASE sp" if nested else "COMMIT")

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
            name_from_db(r[0]): {"source": name_from_db(r[1]), "sha256": r[2], "size": r[3], "mtime_ns": r[4],
                                 "n": r[5]}
            for r in rows
        }

    def count(self) -> int:
        return self.db.execute("SELECT count(*) FROM vectors").fetchone()[0]

    # -- writing
    def replace(self, items: list[tuple[dict, np.ndarray, np.ndarray, np.ndarray]]) -> None:
        if not items:
            return
        check_item_configs(self.info, (rec for rec, *_ in items), self.where)
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
                    file_row(rec, len(vecs), _db_name),
                )
                fid = cur.lastrowid
                self.db.executemany(
                    "INSERT INTO vectors (id, file_id, seg_id, row, start, end) VALUES (?,?,?,?,?,?)",
                    (
                        (int(ids[row + i]), fid, seg_id, row + i, num(starts[i]), num(ends[i]))
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
            row = self.db.execute("SELECT file_id FROM files WHERE output=?", (_db_name(out),)).fetchone()
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
            self.db.execute("UPDATE files SET size=?, mtime_ns=? WHERE output=?",
                            (size, mtime_ns, _db_name(output)))

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
                best_s, best_i = merge_topk(
                    np.hstack([best_s, s]), np.hstack([best_i, np.broadcast_to(ids[lo:hi], s.shape)]), want
                )
        best_s, best_i = merge_topk(best_s, best_i, want) if best_s.shape[1] else (best_s, best_i)
        return [self._hits(s, i, k) for s, i in zip(best_s, best_i)]

    def _ids_of(self, sources: set[str]) -> np.ndarray:
        rows = []
        for src in sources:
            rows += self.db.execute(
                "SELECT v.id FROM vectors v JOIN files f ON f.file_id = v.file_id WHERE f.source=?",
                (_db_name(src),),
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
                out.append(Hit(name_from_db(row[0]), float(s), from_num(row[1]), from_num(row[2]), int(i)))
        return out

    def vectors_of(self, source: str) -> tuple[str, np.ndarray, np.ndarray, np.ndarray] | None:
        key = _db_name(source)
        row = self.db.execute(
            "SELECT file_id, output FROM files WHERE source=? OR output=?", (key, key)
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
        starts = np.array([from_num(r[2]) for r in rows])
        ends = np.array([from_num(r[3]) for r in rows])
        return name_from_db(row[1]), np.array(vecs, np.float32).reshape(len(vecs), -1), starts, ends

    def close(self) -> None:
        if self._rebuilding is not None:  # never committed: the old collection stays as it was
            self._rebuilding = None
            with contextlib.suppress(sqlite3.Error):
                self.db.execute("ROLLBACK")
                self._depth = 0
                self._remove_orphans()  # the segments this rebuild wrote
        self.db.close()
        if self._lock_fd is not None:
            os.close(self._lock_fd)
            self._lock_fd = None


