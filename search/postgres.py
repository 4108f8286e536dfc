"""The PostgreSQL store: pgvector tables per collection, HNSW with cosine ops, one transaction per batch."""

from __future__ import annotations

import functools
import hashlib
import json
import re
import uuid
from collections.abc import Iterable
from typing import Any

import numpy as np

from embedkit import results
from embedkit.extractors.base import ConfigError
from embedkit.search.collection import (
    HNSW_EF_CONSTRUCTION,
    HNSW_M,
    CollectionInfo,
    Hit,
    Store,
    StoreError,
    check_collection,
    check_item_configs,
    file_row,
    from_num,
    name_from_db,
    num,
)

COLLECTIONS = "embedkit_collections"  # name -> info, dim, tables (the current generation's table prefix)


def redact(uri: str) -> str:
    return re.sub(r"(://[^:/@]*):[^@]*@", r"\1:***@", uri)


def table_prefix(name: str, generation: str) -> str:
    """`ek_<slug>_<hash>_<generation>`: injective in the name (its sha256 is part of it: `mel-spec` and
    `mel_spec` get their own tables), readable (the slug), and under PostgreSQL's 63-byte limit with
    the longest suffix (`_vectors_hnsw`)."""
    slug = re.sub(r"[^a-z0-9_]", "_", name.lower())[:20]
    return f"ek_{slug}_{hashlib.sha256(name.encode()).hexdigest()[:12]}_{generation}"


def legacy_prefix(name: str) -> str:
    """The table prefix embedkit 0.2 used: not injective (`mel-spec` and `mel_spec` collide)."""
    ident = re.sub(r"[^a-z0-9_]", "_", name.lower())
    if len(ident) > 40:
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
        msg = _first_line(exc)
        if "password" in msg.lower() or "authentication" in msg.lower():
            hint = "check the user name and password in the URI (or ~/.pgpass)"
        else:
            hint = "check that the server runs and the host, port and database in the URI are right"
        raise ConfigError(f"cannot connect to PostgreSQL at {redact(uri)}: {msg}; {hint}") from exc
    except psycopg.ProgrammingError as exc:
        raise ConfigError(f"invalid PostgreSQL URI {redact(uri)}: {exc}") from exc
    try:
        with conn.transaction():
            conn.execute("CREATE EXTENSION IF NOT EXISTS vector")
    except psycopg.Error as exc:
        conn.close()
        raise ConfigError(
            f"the PostgreSQL server at {redact(uri)} has no pgvector extension or refuses to create it "
            f"({exc}); install pgvector there or ask its administrator to run CREATE EXTENSION vector"
        ) from exc
    register_vector(conn)
    return conn


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def _lost(method):
    """A lost server (stopped, restarted, network gone) becomes one StoreError saying what holds."""

    @functools.wraps(method)
    def wrapper(self, *args, **kwargs):
        import psycopg

        try:
            return method(self, *args, **kwargs)
        except (psycopg.OperationalError, psycopg.InterfaceError) as exc:
            raise StoreError(
                f"lost the connection to PostgreSQL at {self.where} ({_first_line(exc)}); what was "
                "committed before is whole (an index run: whole batches; a rebuild: the old collection)"
            ) from exc

    return wrapper


def _bytes(name: str) -> bytes:
    """A file name as stored: its exact bytes (BYTEA), so names that are not UTF-8 are kept as they are."""
    return results.name_bytes(name)


class PostgresStore(Store):
    """A collection in PostgreSQL: tables `<prefix>_files` and `<prefix>_vectors` (pgvector).

    `embedkit_collections` holds each collection's description and its tables' prefix (see
    `table_prefix`). File names are BYTEA (their exact bytes). Every write is one transaction;
    a rebuild fills new tables in one transaction that ends by pointing the collection at them
    and dropping the old ones. The HNSW index (vector_cosine_ops) exists above the ANN
    threshold; exact search turns index scans off, so PostgreSQL scans every row, as the
    embedded store's exact search does.
    """

    def __init__(
        self, uri: str, name: str, create: CollectionInfo | None = None, writer: bool = False,
        rebuild: bool = False,
    ) -> None:
        if rebuild and (create is None or not writer):
            raise ValueError("a rebuild is a writer with the collection to create")
        self.where = f"{redact(uri)} collection {name!r}"
        self.name = name
        self._rebuild: dict | None = None
        self.conn = pg_connect(uri)
        try:
            self._open(create, writer, rebuild)
        except BaseException:
            self.close()
            raise

    @_lost
    def _open(self, create: CollectionInfo | None, writer: bool, rebuild: bool) -> None:
        name = self.name
        with self.conn.transaction():
            self.conn.execute(
                f"CREATE TABLE IF NOT EXISTS {COLLECTIONS} (name TEXT PRIMARY KEY, info JSONB NOT NULL, "
                "dim INTEGER, created TIMESTAMPTZ NOT NULL DEFAULT now())"
            )
        has_tables = self.conn.execute(
            "SELECT 1 FROM information_schema.columns WHERE table_name=%s AND column_name='tables'",
            (COLLECTIONS,),
        ).fetchone()
        self.conn.commit()
        if not has_tables:  # a database embedkit 0.2 wrote: add the column (ALTER locks the table: only once)
            with self.conn.transaction():
                self.conn.execute(f"ALTER TABLE {COLLECTIONS} ADD COLUMN IF NOT EXISTS tables TEXT UNIQUE")
        with self.conn.transaction():
            # one writer per collection at a time, rebuilds included (a session lock: released with
            # the connection)
            if writer and not self.conn.execute(
                "SELECT pg_try_advisory_lock(hashtext(%s))", (name,)
            ).fetchone()[0]:
                raise ConfigError(f"another process is writing {self.where}; wait for it to finish")
            row = self._row()
            if row is None and not rebuild:
                if create is None:
                    raise ConfigError(f"no {self.where}; build it first: python run_search.py index ...")
                prefix = table_prefix(name, uuid.uuid4().hex[:6])
                self.conn.execute(
                    f"INSERT INTO {COLLECTIONS} (name, info, tables) VALUES (%s, %s, %s)",
                    (name, json.dumps(create.to_json()), prefix),
                )
                self._create_files_table(prefix)
                row = self._row()
        if rebuild:
            self._begin_rebuild(create, row)
            return
        info, dim, prefix = row
        if prefix is None:
            raise ConfigError(
                f"{self.where} was built by an older embedkit, whose table names two collections could "
                "share (e.g. mel-spec and mel_spec); rebuild it: python run_search.py index --rebuild ..."
            )
        self.info = CollectionInfo.from_json(info if isinstance(info, dict) else json.loads(info))
        self.dim = dim
        self._use(prefix)
        check_collection(self.info, create, self.where)
        if writer and create is not None and not self.info.config_digest and create.config_digest:
            with self.conn.transaction():  # built before the run recorded digests: now with its digest
                self.conn.execute(f"UPDATE {COLLECTIONS} SET info=%s WHERE name=%s",
                                  (json.dumps(create.to_json()), name))
            self.info = create

    def _row(self) -> tuple | None:
        return self.conn.execute(f"SELECT info, dim, tables FROM {COLLECTIONS} WHERE name=%s",
                                 (self.name,)).fetchone()

    def _use(self, prefix: str) -> None:
        self.prefix = prefix
        self.t_files, self.t_vec = prefix + "_files", prefix + "_vectors"

    def _create_files_table(self, prefix: str) -> None:
        self._use(prefix)
        self.conn.execute(
            f"CREATE TABLE {self.t_files} (file_id BIGSERIAL PRIMARY KEY, output BYTEA UNIQUE NOT NULL, "
            "source BYTEA NOT NULL, sha256 TEXT, size BIGINT, mtime_ns BIGINT, n INTEGER NOT NULL)"
        )
        self.conn.execute(f"CREATE INDEX {self.t_files}_source ON {self.t_files}(source)")

    # -- rebuilding
    def _begin_rebuild(self, info: CollectionInfo, row: tuple | None) -> None:
        """Open the transaction that builds new tables; readers see the old collection until commit()."""
        tx = self.conn.transaction()
        tx.__enter__()
        self._rebuild = {"tx": tx, "old": row[2] if row else None, "legacy": row is not None and not row[2]}
        self._create_files_table(table_prefix(self.name, uuid.uuid4().hex[:6]))
        self.info, self.dim = info, None

    @_lost
    def commit(self) -> None:
        if self._rebuild is None:
            return
        rb = self._rebuild
        self.conn.execute(
            f"INSERT INTO {COLLECTIONS} (name, info, dim, tables) VALUES (%s, %s, %s, %s) ON CONFLICT (name) "
            "DO UPDATE SET info = EXCLUDED.info, dim = EXCLUDED.dim, tables = EXCLUDED.tables",
            (self.name, json.dumps(self.info.to_json()), self.dim, self.prefix),
        )
        old = rb["old"]
        if rb["legacy"]:  # 0.2's tables, unless another 0.2 collection shares them
            old = legacy_prefix(self.name)
            others = self.conn.execute(f"SELECT name FROM {COLLECTIONS} WHERE tables IS NULL AND name <> %s",
                                       (self.name,)).fetchall()
            if any(legacy_prefix(r[0]) == old for r in others):
                old = None
        if old:  # last, so the old tables' lock is held for the shortest time
            self.conn.execute(f"DROP TABLE IF EXISTS {old}_vectors, {old}_files")
        self._rebuild = None
        rb["tx"].__exit__(None, None, None)

    def _abandon_rebuild(self) -> None:
        rb, self._rebuild = self._rebuild, None
        if rb is not None:
            try:
                rb["tx"].__exit__(RuntimeError, RuntimeError("rebuild abandoned"), None)
            except Exception:  # noqa: BLE001 - a lost connection rolls back on its own
                pass

    # -- writing
    def _ensure_vectors(self, dim: int) -> None:
        if self.dim is None:
            self.conn.execute(
                f"CREATE TABLE IF NOT EXISTS {self.t_vec} (id BIGSERIAL PRIMARY KEY, file_id BIGINT NOT NULL "
                f"REFERENCES {self.t_files}(file_id) ON DELETE CASCADE, start_s DOUBLE PRECISION, "
                f"end_s DOUBLE PRECISION, embedding vector({dim}) NOT NULL)"
            )
            if 4 * dim + 8 <= 6000:
                # keep vectors in the row: from 508 dims on, a vector passes PostgreSQL's 2 kB TOAST
                # threshold and would be stored out of line, so every scan and HNSW build fetches it twice
                self.conn.execute(f"ALTER TABLE {self.t_vec} ALTER COLUMN embedding SET STORAGE PLAIN")
            self.conn.execute(f"CREATE INDEX IF NOT EXISTS {self.t_vec}_file ON {self.t_vec}(file_id)")
            if self._rebuild is None:
                self.conn.execute(f"UPDATE {COLLECTIONS} SET dim=%s WHERE name=%s", (dim, self.name))
        elif dim != self.dim:
            raise ConfigError(f"vectors of dimension {dim} cannot join an index of dimension {self.dim}")

    @_lost
    def files(self) -> dict[str, dict]:
        rows = self.conn.execute(
            f"SELECT output, source, sha256, size, mtime_ns, n FROM {self.t_files}"
        ).fetchall()
        if self._rebuild is None:
            self.conn.commit()
        return {
            name_from_db(r[0]): {"source": name_from_db(r[1]), "sha256": r[2], "size": r[3],
                                 "mtime_ns": r[4], "n": r[5]}
            for r in rows
        }

    @_lost
    def count(self) -> int:
        if self.dim is None:
            return 0
        n = self.conn.execute(f"SELECT count(*) FROM {self.t_vec}").fetchone()[0]
        if self._rebuild is None:
            self.conn.commit()
        return n

    @_lost
    def replace(self, items: list[tuple[dict, np.ndarray, np.ndarray, np.ndarray]]) -> None:
        if not items:
            return
        check_item_configs(self.info, (rec for rec, *_ in items), self.where)
        dims = {v.shape[1] for _, v, _, _ in items}
        if len(dims) > 1:
            raise ConfigError(f"vectors of dimensions {sorted(dims)} in one batch")
        with self.conn.transaction():  # inside a rebuild: a savepoint
            self._ensure_vectors(next(iter(dims)))
            self.conn.execute(
                f"DELETE FROM {self.t_files} WHERE output = ANY(%s)",
                ([_bytes(r["output"]) for r, *_ in items],),
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
                cp.set_types(["int8", "bytea", "bytea", "text", "int8", "int8", "int4"])
                for fid, (rec, vecs, _, _) in zip(fids, items):
                    cp.write_row((fid, *file_row(rec, len(vecs), _bytes)))
            with self.conn.cursor().copy(
                f"COPY {self.t_vec} (file_id, start_s, end_s, embedding) FROM STDIN WITH (FORMAT BINARY)"
            ) as cp:
                cp.set_types(["int8", "float8", "float8", "vector"])
                for fid, (_, vecs, starts, ends) in zip(fids, items):
                    for v, st, en in zip(vecs, starts, ends):
                        cp.write_row((fid, num(st), num(en), v))
        self.dim = self.dim or next(iter(dims))

    @_lost
    def update_stat(self, output: str, size: int, mtime_ns: int) -> None:
        with self.conn.transaction():
            self.conn.execute(
                f"UPDATE {self.t_files} SET size=%s, mtime_ns=%s WHERE output=%s",
                (size, mtime_ns, _bytes(output)),
            )

    @_lost
    def remove(self, outputs_: Iterable[str]) -> int:
        outs = [_bytes(o) for o in outputs_]
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

    @_lost
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
                    f"CREATE INDEX {self.t_vec}_hnsw ON {self.t_vec} USING hnsw "
                    "(embedding vector_cosine_ops) "
                    f"WITH (m = {HNSW_M // 2}, ef_construction = {HNSW_EF_CONSTRUCTION})"
                )
                return f"built the HNSW index over {n} vectors"
            if n < ann_threshold and has:
                self.conn.execute(f"DROP INDEX {self.t_vec}_hnsw")
                return "dropped the HNSW index (below the exact-search threshold)"
        return ""

    # -- searching
    @_lost
    def search(
        self, queries: np.ndarray, k: int, exact: bool | None, ef: int, exclude: set[str] | None = None
    ) -> list[list[Hit]]:
        q = np.asarray(queries, np.float32)
        if self.dim is None:
            return [[] for _ in q]
        if q.shape[1] != self.dim:
            raise ConfigError(f"queries of dimension {q.shape[1]} against an index of dimension {self.dim}")
        excl = sorted(_bytes(e) for e in exclude or ())
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
                    "SELECT f.source, 1 - d, v.start_s, v.end_s, v.id FROM "
                    "(SELECT id, file_id, start_s, end_s, "
                    f"embedding <=> %s AS d FROM {self.t_vec} ORDER BY {order} LIMIT %s) v "
                    f"JOIN {self.t_files} f USING (file_id) {where} ORDER BY d, v.id LIMIT %s",
                    (v, v, want, *((excl,) if excl else ()), k),
                ).fetchall()
                out.append([Hit(name_from_db(r[0]), float(r[1]), from_num(r[2]), from_num(r[3]), int(r[4]))
                            for r in rows])
        return out

    def _excluded_rows(self, excl: list[bytes]) -> int:
        return self.conn.execute(
            f"SELECT coalesce(sum(n), 0) FROM {self.t_files} WHERE source = ANY(%s)", (excl,)
        ).fetchone()[0]

    @_lost
    def vectors_of(self, source: str) -> tuple[str, np.ndarray, np.ndarray, np.ndarray] | None:
        if self.dim is None:
            return None
        key = _bytes(source)
        with self.conn.transaction():
            row = self.conn.execute(
                f"SELECT file_id, output FROM {self.t_files} WHERE source=%s OR output=%s", (key, key)
            ).fetchone()
            if row is None:
                return None
            rows = self.conn.execute(
                f"SELECT embedding, start_s, end_s FROM {self.t_vec} WHERE file_id=%s ORDER BY id", (row[0],)
            ).fetchall()
        vecs = np.array([_pg_array(r[0]) for r in rows], np.float32).reshape(len(rows), -1)
        return (name_from_db(row[1]), vecs, np.array([from_num(r[1]) for r in rows]),
                np.array([from_num(r[2]) for r in rows]))

    def close(self) -> None:
        self._abandon_rebuild()
        self.conn.close()


def _pg_array(value: Any) -> np.ndarray:
    """A pgvector value as float32 (binary results come as pgvector.Vector, text ones as arrays)."""
    return np.asarray(value.to_numpy() if hasattr(value, "to_numpy") else value, np.float32)


def _pg_mem(n: int, dim: int) -> str:
    """maintenance_work_mem for an HNSW build: the graph in memory (vectors + links), at least 64 MB."""
    need_mb = int(n * (dim * 4 + HNSW_M * 8 + 64) * 1.3 / 2**20) + 64
    return f"{min(max(64, need_mb), 8192)}MB"
