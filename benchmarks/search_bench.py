"""Search speed: the embedded store and PostgreSQL + pgvector on random unit vectors.

    python benchmarks/search_bench.py --sizes 100000 1000000          # both stores (pgserver starts one)
    python benchmarks/search_bench.py --sizes 100000 --stores embedded --queries 100
    python benchmarks/search_bench.py --table benchmarks/results/search-*.json   # the markdown table

For each size N (random unit vectors of --dim dims, seeded; one vector per "file", as a
file-level index of N files): build time (inserts, then the HNSW index), disk size, query
latency one query at a time (median, p95) for exact search and for HNSW at several ef_search
values, recall@10 of HNSW against numpy's exact top 10, and an incremental add of 1 % more
vectors: its time and the bytes it wrote (embedded: bytes this process passed to write();
PostgreSQL: WAL bytes generated), against the size of the whole index.

Queries are independent random unit vectors: the hardest case for HNSW (no structure; the
true neighbours are barely closer than any other vector), so recall at a given ef is lower
than on real embeddings. Writes benchmarks/results/search-<date>.json; BENCHMARKS.md holds
the table.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import _checkout  # noqa: E402,F401  (the checkout as the package embedkit)
from embedkit import search  # noqa: E402


def unit_vectors(n: int, dim: int, seed: int, data: str = "random") -> np.ndarray:
    """(n, dim) float32 unit vectors, generated in blocks (bounded memory).

    random: uniform on the sphere (no structure: the worst case for any ANN index).
    lowrank: a 32-dimensional Gaussian mapped into `dim` dims plus 10 % isotropic noise, a crude
    model of real embeddings, whose intrinsic dimension is far below their length.
    """
    rng = np.random.default_rng(seed)
    basis = np.random.default_rng(12345).standard_normal((32, dim), dtype=np.float32) / np.sqrt(32)
    out = np.empty((n, dim), np.float32)
    for s in range(0, n, 100_000):
        m = min(n, s + 100_000) - s
        block = rng.standard_normal((m, dim), dtype=np.float32)
        if data == "lowrank":
            block = rng.standard_normal((m, 32), dtype=np.float32) @ basis + 0.1 * block
        out[s : s + m] = block / np.linalg.norm(block, axis=1, keepdims=True)
    return out


def exact_truth(x: np.ndarray, queries: np.ndarray, k: int) -> np.ndarray:
    best_s = np.full((len(queries), 0), -np.inf, np.float32)
    best_i = np.zeros((len(queries), 0), np.int64)
    for s in range(0, len(x), 200_000):
        sc = queries @ x[s : s + 200_000].T
        best_s = np.hstack([best_s, sc])
        best_i = np.hstack([best_i, np.broadcast_to(np.arange(s, s + sc.shape[1]), sc.shape)])
        part = np.argsort(-best_s, axis=1)[:, :k]
        best_s, best_i = np.take_along_axis(best_s, part, 1), np.take_along_axis(best_i, part, 1)
    return best_i


def wchar() -> int:
    fields = dict(line.split(": ") for line in Path("/proc/self/io").read_text().splitlines())
    return int(fields["wchar"])


def dir_bytes(path: Path) -> int:
    return sum(p.stat().st_size for p in Path(path).rglob("*") if p.is_file())


def items(x: np.ndarray, first: int) -> list:
    nan = np.full(1, np.nan)
    return [
        ({"output": f"f{first + i}.npy", "source": f"f{first + i}.wav"}, x[i : i + 1], nan, nan)
        for i in range(len(x))
    ]


def latency(index: search.Index, queries: np.ndarray, exact: bool, ef: int) -> tuple[dict, list[list[int]]]:
    times, found = [], []
    for q in queries:
        t0 = time.perf_counter()
        hits = index.search(q, k=10, exact=exact, ef=ef)
        times.append(time.perf_counter() - t0)
        found.append([int(h.path[1:-4]) for h in hits])
    ms = np.array(times) * 1000
    return {
        "median_ms": round(float(np.median(ms)), 3),
        "p95_ms": round(float(np.percentile(ms, 95)), 3),
    }, found


def recall(found: list[list[int]], truth: np.ndarray) -> float:
    return round(float(np.mean([len(set(f) & set(t.tolist())) / 10 for f, t in zip(found, truth)])), 4)


def pg_sizes(index: search.Index) -> int:
    st = index.store
    row = st.conn.execute(
        "SELECT pg_total_relation_size(%s) + pg_total_relation_size(%s)", (st.t_files, st.t_vec)
    ).fetchone()
    st.conn.commit()
    return int(row[0])


def pg_wal(index: search.Index) -> int:
    row = index.store.conn.execute("SELECT pg_current_wal_lsn() - '0/0'::pg_lsn").fetchone()
    index.store.conn.commit()
    return int(row[0])


def bench(
    store: str,
    where: str,
    n: int,
    dim: int,
    n_queries: int,
    n_exact: int,
    efs: list[int],
    data: str = "random",
) -> dict:
    x = unit_vectors(n, dim, 0, data)
    extra = unit_vectors(n // 100, dim, 1, data)
    queries = unit_vectors(n_queries, dim, 2, data)
    truth = exact_truth(x, queries, 10)
    info = search.CollectionInfo("bench", "file", 0.0, {"extractor": "random", "dim": dim})
    name = f"bench_{data}_{n}"
    res: dict = {"store": store, "data": data, "n": n, "dim": dim}
    with search.Index.open(where, name, create=info, writer=True, ann_threshold=min(n, 100_000)) as index:
        t0 = time.perf_counter()
        for s in range(0, n, 50_000):
            index.add_many(items(x[s : s + 50_000], s))
        res["insert_s"] = round(time.perf_counter() - t0, 2)
        t0 = time.perf_counter()
        res["optimize"] = index.optimize()
        res["hnsw_build_s"] = round(time.perf_counter() - t0, 2)
        res["disk_bytes"] = dir_bytes(Path(where) / name) if store == "embedded" else pg_sizes(index)
        index.search(queries[0], k=10)  # load the index (embedded: read the HNSW file, map the segments)
        exact, found = latency(index, queries[:n_exact], True, 0)
        res["exact"] = {**exact, "recall@10": recall(found, truth[:n_exact]), "queries": n_exact}
        res["hnsw"] = []
        for ef in efs:
            lat, found = latency(index, queries, False, ef)
            res["hnsw"].append(
                {"ef_search": ef, **lat, "recall@10": recall(found, truth), "queries": len(queries)}
            )
            print(store, n, "ef", ef, res["hnsw"][-1], flush=True)
        # incremental: 1 % more vectors, as an index rerun commits them (no HNSW rebuild below 10 % new)
        w0 = wchar() if store == "embedded" else pg_wal(index)
        t0 = time.perf_counter()
        for s in range(0, len(extra), 50_000):
            index.add_many(items(extra[s : s + 50_000], n + s))
        did = index.optimize()
        seconds = time.perf_counter() - t0
        written = (wchar() if store == "embedded" else pg_wal(index)) - w0
        res["add_1pct"] = {
            "vectors": len(extra),
            "seconds": round(seconds, 2),
            "bytes_written": written,
            "fraction_of_index": round(written / max(1, res["disk_bytes"]), 4),
            "optimize": did
            or (
                "nothing (HNSW kept; the new 1 % is searched exactly)"
                if store == "embedded"
                else "nothing (PostgreSQL inserts the new rows into its HNSW index)"
            ),
        }
        lat, found = latency(index, queries, False, efs[-1])
        truth2 = exact_truth(np.concatenate([x, extra]), queries, 10)
        res["after_add"] = {"ef_search": efs[-1], **lat, "recall@10": recall(found, truth2)}
    print(json.dumps(res), flush=True)
    return res


def table(paths: list[str]) -> str:
    """Markdown table of result files (one row per store, data and size; HNSW at each ef)."""
    rows = [
        "| store | data | N | insert s | HNSW build s | disk MB | exact median / p95 ms | "
        "HNSW ef: median / p95 ms, recall@10 | add 1 %: s, MB written (share of index) |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for path in paths:
        for r in json.loads(Path(path).read_text())["results"]:
            hnsw = "<br>".join(
                f"ef {h['ef_search']}: {h['median_ms']:.1f} / {h['p95_ms']:.1f}, {h['recall@10']:.3f}"
                for h in r["hnsw"]
            )
            add = r["add_1pct"]
            rows.append(
                f"| {r['store']} | {r.get('data', 'random')} | {r['n']:,} | {r['insert_s']:.1f} | "
                f"{r['hnsw_build_s']:.0f} | "
                f"{r['disk_bytes'] / 1e6:.0f} | {r['exact']['median_ms']:.1f} / "
                f"{r['exact']['p95_ms']:.1f} | {hnsw} | "
                f"{add['seconds']:.2f} s, {add['bytes_written'] / 1e6:.1f} MB "
                f"({100 * add['fraction_of_index']:.1f} %) |"
            )
    return "\n".join(rows)


def main() -> None:
    if sys.argv[1:2] == ["--table"]:
        print(table(sys.argv[2:]))
        return
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--sizes", type=int, nargs="+", default=[100_000, 1_000_000])
    p.add_argument("--dim", type=int, default=512)
    p.add_argument("--stores", nargs="+", default=["embedded", "postgres"], choices=["embedded", "postgres"])
    p.add_argument("--queries", type=int, default=200)
    p.add_argument("--exact_queries", type=int, default=50)
    p.add_argument("--ef", type=int, nargs="+", default=[64, 128, 256, 512])
    p.add_argument(
        "--data",
        nargs="+",
        default=["random"],
        choices=["random", "lowrank"],
        help="random: uniform unit vectors (default); lowrank: 32-dim structure + noise",
    )
    p.add_argument("--json", help="results file (default: benchmarks/results/search-<date>.json)")
    p.add_argument("--dir", help="scratch folder (default: a temp dir; deleted afterwards)")
    p.add_argument("--pg", help="postgresql:// URI (default: start a local pgserver in the scratch folder)")
    args = p.parse_args()
    scratch = Path(tempfile.mkdtemp(prefix="search-bench-", dir=args.dir))
    results = []
    server = None
    out = Path(args.json or Path(__file__).parent / "results" / f"search-{time.strftime('%Y-%m-%d')}.json")
    try:
        for store in args.stores:
            where = str(scratch / "embedded")
            if store == "postgres":
                if args.pg:
                    where = args.pg
                else:
                    import pgserver

                    server = pgserver.get_server(scratch / "pg", cleanup_mode="delete")
                    # parallel HNSW build on both cores (pgvector >= 0.6)
                    server.psql(
                        "ALTER SYSTEM SET max_parallel_maintenance_workers = 2; SELECT pg_reload_conf();"
                    )
                    where = server.get_uri()
            for n, data in ((n, d) for d in args.data for n in args.sizes):
                results.append(
                    bench(store, where, n, args.dim, args.queries, args.exact_queries, args.ef, data)
                )
                out.write_text(
                    json.dumps(
                        {  # after every size: a long run that is stopped keeps what it measured
                            "date": time.strftime("%Y-%m-%d %H:%M"),
                            "command": " ".join(sys.argv),
                            "cpus": os.cpu_count(),
                            "cpu": _cpu_model(),
                            "load_average_at_end": os.getloadavg(),
                            "results": results,
                        },
                        indent=2,
                    )
                    + "\n"
                )
    finally:
        if server is not None:
            server.cleanup()
        shutil.rmtree(scratch, ignore_errors=True)
    print(f"wrote {out}")


def _cpu_model() -> str:
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return platform.processor() or platform.machine()


if __name__ == "__main__":
    main()
