#!/usr/bin/env python
"""Similarity search over the outputs of run_extraction.py.

    python run_search.py index --output_base OUT --model melspec              # incremental
    python run_search.py index --output_base OUT --model melspec --level segment --window 1
    python run_search.py query q.wav more/ --output_base OUT --model melspec --top 5 [--json]
    python run_search.py query --like voices/f1.wav --output_base OUT --model melspec
    python run_search.py evaluate --labels labels.csv --output_base OUT --model melspec

The index lives in <OUT>/<model>/.search/ unless --db names a folder or a postgresql:// URI.
Queries are embedded with exactly the configuration recorded in the model's features.json.
Exit status: 0 done; 1 some outputs or queries failed (listed); 2 configuration error.
"""

from __future__ import annotations

if not __package__:  # `python run_search.py` from a checkout: the checkout is the package embedkit
    import _checkout  # noqa: F401

import argparse
import json
import math
import sys
from pathlib import Path

COMMANDS = ("index", "query", "evaluate")


def _common(p: argparse.ArgumentParser, need_output_base: bool = True) -> None:
    p.add_argument(
        "--output_base",
        required=need_output_base,
        help="the extraction's output folder (holds <model>/features.json)",
    )
    p.add_argument("--model", required=True, help="model folder name (alias) under --output_base")
    p.add_argument(
        "--db",
        help="embedded store folder, or postgresql://user:pass@host/db (default: "
        "<output_base>/<model>/.search)",
    )
    p.add_argument(
        "--level",
        default="file",
        choices=("file", "segment"),
        help="file: one vector per file (default); segment: one per frame or window, with times",
    )
    p.add_argument(
        "--window",
        type=float,
        default=0.0,
        help="segment level: mean over windows of this many seconds (default 0: every frame)",
    )
    p.add_argument("--collection", help="collection name (default: <model>_<level>[_<window>s])")


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="command", required=True)

    pi = sub.add_parser("index", help="index a model folder's outputs (incremental)")
    _common(pi)
    pi.add_argument("--rebuild", action="store_true", help="drop the collection and index everything again")
    pi.add_argument(
        "--ann_threshold",
        type=int,
        default=None,
        help="vectors from which an HNSW index is built (default 100000; below: exact search)",
    )
    pi.add_argument("--commit_every", type=int, default=500, help="outputs per transaction (default 500)")
    pi.add_argument("--quiet", action="store_true", help="print only the summary")

    pq = sub.add_parser("query", help="top K most similar items for each query file")
    pq.add_argument(
        "queries", nargs="*", metavar="FILE_OR_DIR", help="audio files or folders (searched recursively)"
    )
    pq.add_argument(
        "--like",
        action="append",
        default=[],
        metavar="PATH",
        help="query with a file already in the collection (its path relative to the input folder); "
        "no recomputation; the file itself is left out of its results",
    )
    _common(pq, need_output_base=False)
    pq.add_argument("--top", type=int, default=10, help="results per query (default 10)")
    pq.add_argument("--json", action="store_true", help="one JSON object per query on stdout")
    pq.add_argument("--exact", action="store_true", help="exact search even where an ANN index exists")
    pq.add_argument(
        "--ef", type=int, default=None, help="HNSW search breadth (default 128; higher: better recall)"
    )
    pq.add_argument("--device", default="cpu", help="where the model embeds queries (default cpu)")

    pe = sub.add_parser("evaluate", help="precision@k, recall@k and mAP of same-label retrieval")
    pe.add_argument(
        "--labels",
        required=True,
        nargs="+",
        help="CSV file(s) with lines path,label (paths relative to the input folder or the query folder)",
    )
    pe.add_argument(
        "--queries",
        help="held-out query folder (labels for its files, relative to it, in --labels); "
        "default: leave-one-out over the collection",
    )
    _common(pe)
    pe.add_argument("--k", type=int, nargs="+", default=[1, 5, 10], help="cut-offs (default 1 5 10)")
    pe.add_argument("--exact", action="store_true", help="exact search even where an ANN index exists")
    pe.add_argument("--json", action="store_true", help="print the metrics as JSON")
    pe.add_argument("--device", default="cpu")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    from embedkit import results
    from embedkit.extractors.base import ConfigError
    from embedkit.search import StoreError

    try:
        return {"index": cmd_index, "query": cmd_query, "evaluate": cmd_evaluate}[args.command](args)
    except (ConfigError, results.ResultsError) as exc:
        print(f"configuration error: {exc}", file=sys.stderr)
        return 2
    except StoreError as exc:
        print(f"error: {exc}; rerun the same command when the server is back", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("interrupted; rerun to finish (the index holds only whole batches)", file=sys.stderr)
        return 130


def _folder(args: argparse.Namespace):
    """The model folder `--model` of `--output_base` (read through embedkit.results); its notes said once."""
    from embedkit import results
    from embedkit.extractors.base import ConfigError

    if not results.is_folder_name(args.model):
        raise ConfigError(f"--model {args.model!r} is a model folder's name, not a path")
    try:
        folder = results.Results(args.output_base).model(args.model)
    except results.ResultsError as exc:
        raise ConfigError(f"{exc}. Run `python run_extraction.py --models {args.model} --output_base "
                          f"{args.output_base}` first.") from None
    for note in folder.notes:
        print(f"note: {note}", file=sys.stderr)
    return folder


def _where(args: argparse.Namespace, folder) -> str:
    from embedkit import search

    if args.db:
        return args.db
    if folder is None:
        from embedkit.extractors.base import ConfigError

        raise ConfigError("give --output_base (the index lives in the model folder) or --db")
    return str(search.default_store(folder))


def _collection(args: argparse.Namespace) -> str:
    from embedkit import search

    from embedkit.results import is_folder_name

    if not is_folder_name(args.model):
        raise search.ConfigError(f"--model {args.model!r} is a model folder's name, not a path")
    if args.collection is not None:
        return search.check_collection_name(args.collection)
    name = search.collection_name(args.model, args.level, args.window if args.level == "segment" else 0)
    return search.check_collection_name(name)


def cmd_index(args: argparse.Namespace) -> int:
    from embedkit import results, search

    name = _collection(args)
    folder = _folder(args)
    info = search.collection_info(folder, args.level, args.window)
    where = _where(args, folder)
    kwargs = {"ann_threshold": args.ann_threshold} if args.ann_threshold is not None else {}
    log = None if args.quiet else (lambda msg: print(msg, flush=True))
    # a rebuild takes the writer lock like any writer and fills a new collection beside the old one,
    # which answers queries until the new one is swapped in whole
    with search.Index.open(where, name, create=info, writer=True, rebuild=args.rebuild, **kwargs) as index:
        rep = search.build_index(folder, index, commit_files=max(1, args.commit_every), log=log)
    for out, cause in rep.failures:
        print(f"failed: {results.display_name(out)}: {cause}", file=sys.stderr)
    print(
        f"{name}: {rep.added} outputs indexed ({rep.vectors} vectors), {rep.unchanged} unchanged, "
        f"{rep.removed} removed, {len(rep.failures)} failed; {rep.total_vectors} vectors in the index"
        + (" (rebuilt)" if args.rebuild else "")
        + (f"; {rep.optimized}" if rep.optimized else "")
        + f" ({rep.seconds:.1f} s)"
    )
    if rep.failures:
        print("fix or re-extract the failed outputs, then rerun to index them", file=sys.stderr)
    return 1 if rep.failures else 0


def _open_for_reading(args: argparse.Namespace):
    """(index, model folder or None); refuses an index built from another configuration."""
    from embedkit import search
    from embedkit.extractors.base import ConfigError

    name = _collection(args)
    folder = None
    if args.output_base:
        folder = _folder(args)
    elif not args.db:
        raise ConfigError("give --output_base (and --db where the index is elsewhere)")
    info = search.collection_info(folder, args.level, args.window) if folder else None
    index = search.Index.open(_where(args, folder), name, create=None)
    try:
        if info is not None:
            search.check_collection(index.info, info, index.store.where)
    except ConfigError:
        index.close()
        raise
    return index, folder


def _query_files(paths: list[str]) -> tuple[list[tuple[str, Path]], list[str]]:
    """(shown name, path) of each query: files as given, folders walked (recursive, media files only);
    and the paths that do not exist."""
    from embedkit import media

    out, missing = [], []
    for p in paths:
        path = Path(p)
        if path.is_dir():
            for rel in media.discover(path, recursive=True).files:
                out.append(((path / rel).as_posix(), path / rel))
        elif path.exists():
            out.append((p, path))
        else:
            missing.append(p)
    return out, missing


def _print_results(query: str, hits, as_json: bool, segments: bool) -> None:
    """Text: rank, cosine, path (and the time span at segment level); JSON: one object per query."""
    from embedkit.results import display_name

    if as_json:  # json escapes a name that is not UTF-8 (\udcXX): json.loads gives the exact name back
        print(json.dumps({"query": query, "results": [h.to_json() for h in hits]}), flush=True)
        return
    print(f"query: {display_name(query)}")
    if not hits:
        print("   (no results: the index is empty)")
    for rank, h in enumerate(hits, 1):
        span = ""
        if segments and not (math.isnan(h.start) or math.isnan(h.end)):
            span = f"{h.start:9.2f} - {h.end:.2f} s  "
        print(f"  {rank:3d}  {h.score:.4f}  {span}{display_name(h.path)}")
    sys.stdout.flush()


def cmd_query(args: argparse.Namespace) -> int:
    from embedkit import search
    from embedkit.extractors.base import ConfigError

    if not args.queries and not args.like:
        raise ConfigError("give query files or folders, or --like PATH")
    if args.top < 1:
        raise ConfigError("--top must be >= 1")
    files, missing = _query_files(args.queries)
    for p in missing:
        print(f"failed: {p}: no such file or folder", file=sys.stderr)
    failed = len(missing)
    index, _ = _open_for_reading(args)
    with index:
        exact = True if args.exact else None
        for like in args.like:
            got = index.vectors_of(like)
            if got is None:
                print(
                    f"failed: {like}: not in collection {index.info.alias} (give its path relative "
                    "to the input "
                    "folder, as the results print it)",
                    file=sys.stderr,
                )
                failed += 1
                continue
            _, vecs, _, _ = got
            source = index.files().get(got[0], {}).get("source", like)
            try:
                hits = index.search(
                    search.query_vector(vecs), args.top, exact=exact, exclude={source}, ef=args.ef
                )
            except search.SearchError as exc:
                print(f"failed: {like}: {exc}", file=sys.stderr)
                failed += 1
                continue
            _print_results(like, hits, args.json, index.info.level == "segment")
        if files:
            embedder = search.QueryEmbedder(index.info, device=args.device)
            for shown, path in files:
                try:
                    vecs, _, _ = embedder.embed(path)
                    hits = index.search(search.query_vector(vecs), args.top, exact=exact, ef=args.ef)
                except search.SearchError as exc:
                    print(f"failed: {exc}", file=sys.stderr)
                    failed += 1
                    continue
                _print_results(shown, hits, args.json, index.info.level == "segment")
    if failed:
        print(f"{failed} of {len(files) + len(missing) + len(args.like)} queries failed", file=sys.stderr)
    return 1 if failed else 0


def cmd_evaluate(args: argparse.Namespace) -> int:
    from embedkit import search
    from embedkit.extractors.base import ConfigError
    from embedkit.results import display_name

    labels: dict[str, str] = {}
    for path in args.labels:
        labels.update(search.read_labels(path))
    index, _ = _open_for_reading(args)
    failed = 0
    unlabelled: list[str] = []
    query_keys: set[str] = set()
    with index:
        files = index.files()
        by_source = {rec["source"]: out for out, rec in files.items()}
        pool = [s for s in by_source if s in labels]
        if not pool:
            raise ConfigError(
                f"no path in {args.labels} is in the collection (paths are relative to the input "
                f"folder, e.g. {display_name(next(iter(by_source), 'dir/file.wav'))})"
            )
        n_items = len(by_source)
        exact = True if args.exact else None
        rankings = []
        qlabels = dict(labels)
        if args.queries:
            embedder = search.QueryEmbedder(index.info, device=args.device)
            if not Path(args.queries).is_dir():
                raise ConfigError(f"--queries {args.queries} is not a folder")
            for shown, path in _query_files([args.queries])[0]:
                key = path.relative_to(args.queries).as_posix()
                if key not in labels:
                    unlabelled.append(key)
                    continue
                query_keys.add(key)
                try:
                    vecs, _, _ = embedder.embed(path)
                except search.SearchError as exc:
                    print(f"failed: {exc}", file=sys.stderr)
                    failed += 1
                    continue
                qkey = f"query:{key}"
                qlabels[qkey] = labels[key]
                rankings.append((qkey, _ranked(index, search.query_vector(vecs), n_items, exact, None)))
            mode = f"held-out queries from {args.queries}"
        else:
            for src in pool:
                _, vecs, _, _ = index.vectors_of(by_source[src])
                rankings.append((src, _ranked(index, search.query_vector(vecs), n_items, exact, src)))
            mode = "leave-one-out over the collection"
        metrics = search.retrieval_metrics(rankings, qlabels, args.k, pool=pool)
    alone = [q.removeprefix("query:") for q in metrics.pop("alone")]
    not_found = sorted(p for p in labels if p not in by_source and p not in query_keys)
    left_out = {"labels_not_found": not_found, "alone_with_label": alone, "unlabelled_queries": unlabelled}
    metrics = {"mode": mode, "collection_items": n_items, "labelled_items": len(pool), **metrics,
               "left_out": left_out}
    if args.json:
        print(json.dumps(metrics))
    else:
        print(
            f"{index.info.alias} ({index.info.level} level), {mode}: {metrics['queries']} queries, "
            f"{len(pool)} labelled items"
        )
        for key, value in metrics.items():
            if key.startswith(("precision", "recall", "mAP")):
                print(f"  {key:<14} {value}")
        said = _left_out_lines(left_out, labels, bool(args.queries))
        if said:
            print("left out: " + "; ".join(said))
    return 1 if failed else 0


def _left_out_lines(left_out: dict, labels: dict[str, str], held_out: bool) -> list[str]:
    """What `evaluate` did not count, one clause per reason, with an example of each."""
    from embedkit.results import display_name

    out = []
    if left_out["labels_not_found"]:
        p = left_out["labels_not_found"]
        where = "in the collection nor among the query files" if held_out else "in the collection"
        out.append(f"{len(p)} labelled path(s) not {where} (e.g. {display_name(p[0])})"
                   .replace("not in the collection nor", "neither in the collection nor"))
    if left_out["alone_with_label"]:
        q = left_out["alone_with_label"]
        out.append(f"{len(q)} quer{'y' if len(q) == 1 else 'ies'} whose label no other collection item has, "
                   f"so nothing to retrieve (e.g. {display_name(q[0])}: {labels.get(q[0])!r})")
    if left_out["unlabelled_queries"]:
        u = left_out["unlabelled_queries"]
        out.append(f"{len(u)} query file(s) without a label (e.g. {display_name(u[0])})")
    return out


def _ranked(index, vec, n_items: int, exact, exclude: str | None) -> list[str]:
    """Every file of the collection ranked by its best vector's score (segment level: best moment)."""
    from embedkit import search  # noqa: F401

    seen, ranked = set(), []
    k = n_items
    while True:
        hits = index.search(vec, k, exact=exact, exclude={exclude} if exclude else None)
        for h in hits:
            if h.path not in seen:
                seen.add(h.path)
                ranked.append(h.path)
        if len(ranked) >= n_items - (1 if exclude else 0) or len(hits) < k:
            return ranked
        k *= 4  # segment level: several vectors per file; widen until every file is ranked


if __name__ == "__main__":
    sys.exit(main())
