#!/usr/bin/env python
"""Which embedded vector store should search.py use? Measures the candidates on one data set.

    python benchmarks/store_candidates.py --n 100000 --dim 512 --queries 200
    python benchmarks/store_candidates.py --n 100000 --only lancedb faiss

For each candidate (FAISS with an id table in SQLite, usearch, LanceDB, Milvus Lite) on
`n` random unit vectors (seeded) with a path/start/end payload per vector:
insert time, ANN index build time, query latency one query at a time (median, p95) for
exact and ANN search, recall@10 of ANN against exact truth (numpy), disk size, and what
adding 1 % more vectors costs (seconds and bytes written to disk). Prints a table and
writes JSON to benchmarks/results/store_candidates-<n>.json.

Queries are independent random unit vectors: the hardest case for ANN (no structure).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sqlite3
import tempfile
import time
from pathlib import Path

import numpy as np


def unit_vectors(n: int, dim: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((n, dim), dtype=np.float32)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    return x


def dir_bytes(path: Path) -> int:
    return sum(p.stat().st_size for p in Path(path).rglob("*") if p.is_file())


def written_bytes() -> int:
    """Bytes this process has written to storage so far (Linux /proc/self/io)."""
    fields = dict(line.split(": ") for line in Path("/proc/self/io").read_text().splitlines())
    return int(fields["wchar"])  # bytes passed to write() by every thread: what was touched


def latencies(fn, queries: np.ndarray) -> tuple[list[np.ndarray], np.ndarray]:
    out, times = [], []
    for q in queries:
        t0 = time.perf_counter()
        out.append(fn(q))
        times.append(time.perf_counter() - t0)
    return out, np.array(times) * 1000


def recall(found: list[np.ndarray], truth: np.ndarray, k: int) -> float:
    return float(
        np.mean([len(set(map(int, f[:k])) & set(map(int, t[:k]))) / k for f, t in zip(found, truth)])
    )


def summary(ms: np.ndarray) -> dict:
    return {"median_ms": round(float(np.median(ms)), 3), "p95_ms": round(float(np.percentile(ms, 95)), 3)}


# -- candidates ---------------------------------------------------------------------
def bench_faiss(root: Path, x: np.ndarray, extra: np.ndarray, queries: np.ndarray, truth, k, ef) -> dict:
    import faiss

    n, dim = x.shape
    res: dict = {}
    t0 = time.perf_counter()
    db = sqlite3.connect(root / "ids.sqlite")
    db.execute("CREATE TABLE vec (id INTEGER PRIMARY KEY, path TEXT, start REAL, end_ REAL)")
    with db:
        db.executemany(
            "INSERT INTO vec VALUES (?,?,?,?)",
            ((i, f"f{i // 100}.wav", i % 100, i % 100 + 1) for i in range(n)),
        )
    flat = faiss.IndexIDMap2(faiss.IndexFlatIP(dim))
    flat.add_with_ids(x, np.arange(n))
    faiss.write_index(flat, str(root / "flat.faiss"))
    res["insert_s"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    hnsw = faiss.IndexHNSWFlat(dim, 32, faiss.METRIC_INNER_PRODUCT)
    hnsw.hnsw.efConstruction = 80
    hnsw.add(x)
    faiss.write_index(hnsw, str(root / "hnsw.faiss"))
    res["index_build_s"] = time.perf_counter() - t0
    res["disk_bytes"] = dir_bytes(root)
    faiss.omp_set_num_threads(1)
    _, ms = latencies(lambda q: flat.search(q[None], k)[1][0], queries)
    res["exact"] = summary(ms)
    hnsw.hnsw.efSearch = ef
    found, ms = latencies(lambda q: hnsw.search(q[None], k)[1][0], queries)
    res["ann"] = {**summary(ms), "recall@10": recall(found, truth, k), "ef": ef}
    faiss.omp_set_num_threads(os.cpu_count() or 1)
    # adding 1 %: the HNSW graph takes the new vectors in place, but the index file is rewritten whole
    w0, t0 = written_bytes(), time.perf_counter()
    hnsw.add(extra)
    faiss.write_index(hnsw, str(root / "hnsw.faiss.tmp"))
    os.replace(root / "hnsw.faiss.tmp", root / "hnsw.faiss")
    with db:
        db.executemany(
            "INSERT INTO vec VALUES (?,?,?,?)", ((n + i, "new.wav", i, i + 1) for i in range(len(extra)))
        )
    res["add_1pct"] = {"seconds": time.perf_counter() - t0, "bytes_written": written_bytes() - w0}
    return res


def bench_usearch(root: Path, x, extra, queries, truth, k, ef) -> dict:
    from usearch.index import Index, MetricKind, search

    n, dim = x.shape
    res: dict = {}
    t0 = time.perf_counter()
    index = Index(ndim=dim, metric="ip", dtype="f32", connectivity=32, expansion_add=80, expansion_search=ef)
    index.add(np.arange(n), x)
    index.save(str(root / "index.usearch"))
    res["index_build_s"] = time.perf_counter() - t0
    res["insert_s"] = 0.0  # the index holds the vectors; payload would live in an id table as for FAISS
    res["disk_bytes"] = dir_bytes(root)
    _, ms = latencies(lambda q: search(x, q, k, MetricKind.IP, exact=True, threads=1).keys, queries)
    res["exact"] = summary(ms)
    found, ms = latencies(lambda q: index.search(q, k, threads=1).keys, queries)
    res["ann"] = {**summary(ms), "recall@10": recall(found, truth, k), "ef": ef}
    w0, t0 = written_bytes(), time.perf_counter()
    index.add(np.arange(n, n + len(extra)), extra)
    index.save(str(root / "index.usearch.tmp"))
    os.replace(root / "index.usearch.tmp", root / "index.usearch")
    res["add_1pct"] = {"seconds": time.perf_counter() - t0, "bytes_written": written_bytes() - w0}
    return res


def _arrow_table(x: np.ndarray, first_id: int):
    import pyarrow as pa

    n, dim = x.shape
    ids = np.arange(first_id, first_id + n)
    return pa.table(
        {
            "id": pa.array(ids, pa.int64()),
            "path": pa.array([f"f{i // 100}.wav" for i in ids]),
            "start": pa.array((ids % 100).astype(np.float64)),
            "end": pa.array((ids % 100 + 1).astype(np.float64)),
            "vector": pa.FixedSizeListArray.from_arrays(pa.array(x.ravel(), pa.float32()), dim),
        }
    )


def bench_lancedb(root: Path, x, extra, queries, truth, k, ef) -> dict:
    import lancedb

    n, dim = x.shape
    res: dict = {}
    db = lancedb.connect(root)
    t0 = time.perf_counter()
    table = db.create_table("vectors", _arrow_table(x, 0))
    res["insert_s"] = time.perf_counter() - t0
    _, ms = latencies(
        lambda q: table.search(q).distance_type("dot").limit(k).select(["id"]).to_arrow()["id"].to_numpy(),
        queries,
    )
    res["exact"] = summary(ms)
    t0 = time.perf_counter()
    table.create_index(
        metric="dot", index_type="IVF_HNSW_SQ", num_partitions=max(1, n // 100_000), m=32, ef_construction=80
    )
    res["index_build_s"] = time.perf_counter() - t0
    res["disk_bytes"] = dir_bytes(root)
    found, ms = latencies(
        lambda q: (
            table.search(q)
            .distance_type("dot")
            .ef(ef)
            .nprobes(max(1, n // 100_000))
            .refine_factor(4)
            .limit(k)
            .select(["id"])
            .to_arrow()["id"]
            .to_numpy()
        ),
        queries,
    )
    res["ann"] = {
        **summary(ms),
        "recall@10": recall(found, truth, k),
        "ef": ef,
        "index": "IVF_HNSW_SQ, refine x4",
    }
    w0, t0 = written_bytes(), time.perf_counter()
    table.add(_arrow_table(extra, n))
    res["add_1pct"] = {
        "seconds": time.perf_counter() - t0,
        "bytes_written": written_bytes() - w0,
        "note": "new rows searched flat until optimize()",
    }
    return res


def bench_milvus(root: Path, x, extra, queries, truth, k, ef) -> dict:
    from pymilvus import MilvusClient

    n, dim = x.shape
    res: dict = {}
    client = MilvusClient(str(root / "milvus.db"))
    client.create_collection("vectors", dimension=dim, metric_type="IP", auto_id=False)
    t0 = time.perf_counter()
    for s in range(0, n, 5000):
        client.insert(
            "vectors",
            [
                {"id": i, "vector": x[i], "path": f"f{i // 100}.wav", "start": float(i % 100)}
                for i in range(s, min(n, s + 5000))
            ],
        )
    client.flush("vectors")
    res["insert_s"] = time.perf_counter() - t0
    res["index_build_s"] = None
    res["disk_bytes"] = dir_bytes(root)
    found, ms = latencies(
        lambda q: np.array([h["id"] for h in client.search("vectors", [q], limit=k)[0]]), queries
    )
    res["ann"] = {
        **summary(ms),
        "recall@10": recall(found, truth, k),
        "index": "Milvus Lite default (AUTOINDEX)",
    }
    res["exact"] = None
    w0, t0 = written_bytes(), time.perf_counter()
    client.insert(
        "vectors",
        [{"id": n + i, "vector": v, "path": "new.wav", "start": float(i)} for i, v in enumerate(extra)],
    )
    client.flush("vectors")
    res["add_1pct"] = {
        "seconds": time.perf_counter() - t0,
        "bytes_written": written_bytes() - w0,
        "note": "written by the milvus server subprocess, not counted",
    }
    client.close()
    return res


CANDIDATES = {
    "faiss": bench_faiss,
    "usearch": bench_usearch,
    "lancedb": bench_lancedb,
    "milvus": bench_milvus,
}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--n", type=int, default=100_000)
    p.add_argument("--dim", type=int, default=512)
    p.add_argument("--queries", type=int, default=200)
    p.add_argument("--ef", type=int, default=128, help="HNSW search breadth (FAISS, usearch, LanceDB)")
    p.add_argument("--only", nargs="+", choices=list(CANDIDATES), default=list(CANDIDATES))
    p.add_argument("--dir", default=None, help="scratch folder (default: a temp dir)")
    args = p.parse_args()
    k = 10
    x = unit_vectors(args.n, args.dim, 0)
    extra = unit_vectors(args.n // 100, args.dim, 1)
    queries = unit_vectors(args.queries, args.dim, 2)
    truth = np.argsort(-(queries @ x.T), axis=1)[:, :k]
    results = {}
    for name in args.only:
        root = Path(tempfile.mkdtemp(prefix=f"cand-{name}-", dir=args.dir))
        try:
            t0 = time.perf_counter()
            results[name] = CANDIDATES[name](root, x, extra, queries, truth, k, args.ef)
            results[name]["total_s"] = time.perf_counter() - t0
        except Exception as exc:  # a candidate that cannot do it is a result too
            results[name] = {"error": f"{type(exc).__name__}: {exc}"}
        finally:
            shutil.rmtree(root, ignore_errors=True)
        print(
            name,
            json.dumps(results[name], default=lambda v: round(v, 3) if isinstance(v, float) else str(v)),
            flush=True,
        )
    out = Path(__file__).parent / "results" / f"store_candidates-{args.n}.json"
    out.write_text(
        json.dumps(
            {
                "n": args.n,
                "dim": args.dim,
                "queries": args.queries,
                "cpus": os.cpu_count(),
                "date": time.strftime("%Y-%m-%d"),
                "results": results,
            },
            indent=2,
        )
        + "\n"
    )
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
