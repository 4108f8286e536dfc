#!/usr/bin/env python
"""Look at and listen to a run's results in the browser: the collection map, item pages, queries.

    embedkit browse OUTPUT_BASE [--model M] [--labels FILE.csv] [--host 127.0.0.1] [--port N]
    python run_browse.py output/example_study --model melspec

Serves a local web app over the run's outputs and its search index (build one first:
`embedkit search index --output_base OUTPUT_BASE --model M`) and prints its URL when it is
ready. Pages: the map of the collection (every file, or segment, in 2-D: UMAP when umap-learn is
installed, else PCA; coloured by sub-folder or by --labels), an item page per file (player,
what each model wrote for it, its nearest neighbours with cosine scores and their players),
query by a file from disk, and with --labels the model comparison (linear probe and retrieval).

Binds to 127.0.0.1 (this machine only) unless --host says otherwise; serves only the files
of the collection, read-only; an uploaded query file is deleted after its query. Needs the
optional web dependencies: pip install -r requirements-ui.txt.
Exit status: 0 stopped by Ctrl-C or SIGTERM after serving; 2 configuration error (nothing served).
"""

from __future__ import annotations

if not __package__:  # `python run_browse.py` from a checkout: the checkout is the package embedkit
    import _checkout  # noqa: F401

import argparse
import errno
import ipaddress
import signal
import socket
import sys

DEFAULT_PORT = 8765
LOOPBACK = ("127.0.0.1", "localhost", "::1")


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("output_base", help="the run's output folder (holds <model>/features.json)")
    p.add_argument("--model", help="model whose index the pages open with (default: the first one indexed)")
    p.add_argument(
        "--labels",
        help="CSV path,label[,group] (paths relative to the input folder): "
        "colours the map, enables the model comparison page",
    )
    p.add_argument("--audio_dir", help="the input folder (default: the one the run's run_report.json names)")
    p.add_argument(
        "--db", help="where the index lives when not in <model>/.search: a folder or postgresql://..."
    )
    p.add_argument(
        "--collection",
        action="append",
        default=[],
        metavar="NAME",
        help="collection name(s) to show (default: every one found for each model)",
    )
    p.add_argument(
        "--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1: this machine only)"
    )
    p.add_argument(
        "--port", type=int, default=DEFAULT_PORT, help=f"port (default {DEFAULT_PORT}; 0: any free one)"
    )
    p.add_argument(
        "--map",
        default="auto",
        choices=("auto", "pca", "umap"),
        help="map projection (auto: UMAP when umap-learn is installed and <= 50000 points, else PCA)",
    )
    p.add_argument("--max_upload_mb", type=float, default=200.0, help="largest query upload (default 200 MB)")
    p.add_argument("--verbose", action="store_true", help="log every request")
    return p.parse_args(argv)


def _is_loopback(host: str) -> bool:
    if host in LOOPBACK:
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        import flask  # noqa: F401
    except ImportError:
        print(
            "embedkit browse needs the web dependencies (Flask), not installed here: "
            "pip install -r requirements-ui.txt",
            file=sys.stderr,
        )
        return 2
    from embedkit.browse import app as webapp
    from embedkit.browse import data

    def log(msg: str) -> None:
        print(msg, file=sys.stderr, flush=True)

    if not 0 <= args.port <= 65535:
        log(f"configuration error: --port {args.port} is not a port (0-65535)")
        return 2
    try:
        coll = data.Collection(args.output_base, args.audio_dir, args.db, args.collection)
    except data.BrowseError as exc:
        log(f"configuration error: {exc}")
        return 2
    searchable = coll.searchable_models()
    indexed = [m for m in searchable if coll.collections_of(m)]
    if args.model:
        if args.model not in coll.models:
            log(
                f"configuration error: no model folder {args.model!r} in {coll.base} "
                f"(there: {', '.join(coll.models)})"
            )
            return 2
        why = coll.why_not_searchable(args.model)
        if why:
            log(f"configuration error: --model {args.model}: {why.splitlines()[0]}")
            return 2
        if not coll.collections_of(args.model):
            log(
                f"configuration error: {args.model} has no search index yet; build it with: "
                f"{coll.how_to_index(args.model)}"
            )
            return 2
        default_model = args.model
    elif indexed:
        default_model = indexed[0]
    else:
        hint = searchable[0] if searchable else "MODEL"
        log(
            f"configuration error: no search index under {coll.base}; "
            f"build one first: {coll.how_to_index(hint)}"
        )
        return 2
    try:  # open it now: an index of another configuration is said here, and its pages say it again
        coll.index(default_model)
    except data.BrowseError as exc:
        log(f"warning: {exc}")
    if coll.input_dir is None:
        log(
            f"warning: the input folder of {coll.base} is unknown (no run_report.json names it): "
            "players stay silent; restart with --audio_dir DIR"
        )
    elif not coll.input_dir.is_dir():
        log(
            f"warning: the input folder {coll.input_dir} does not exist here: players stay silent; "
            "restart with --audio_dir DIR"
        )
    labels = webapp.Labels(args.labels, coll)
    if labels.problem:
        log(f"warning: {labels.problem}")
    loopback = _is_loopback(args.host)
    allowed = None
    if loopback:  # DNS rebinding: a web page elsewhere must not reach this server under another name
        allowed = set()
    webapp.quiet_werkzeug(args.verbose)
    from werkzeug.serving import make_server

    try:  # bound here: Werkzeug would print its own lines and exit 1 on a port in use
        family = socket.AF_INET6 if ":" in args.host else socket.AF_INET
        sock = socket.create_server((args.host, args.port), family=family)
    except OSError as exc:
        if exc.errno == errno.EADDRINUSE:
            log(
                f"configuration error: port {args.port} on {args.host} is in use (another embedkit browse?); "
                "pass --port N, or --port 0 for any free one"
            )
        else:
            log(f"configuration error: cannot listen on {args.host}:{args.port}: {exc.strerror or exc}")
        return 2
    server = make_server(args.host, sock.getsockname()[1], None, threaded=True, fd=sock.fileno())
    sock.close()  # the server holds its own duplicate of the socket
    port = server.socket.getsockname()[1]
    if allowed is not None:
        allowed |= {f"{h}:{port}" for h in ("127.0.0.1", "localhost", "[::1]")}
        if args.host not in LOOPBACK:
            allowed.add(f"{args.host}:{port}")
    server.app = webapp.create_app(coll, default_model, labels, args.map, args.max_upload_mb, allowed, log)
    shown_host = f"[{args.host}]" if ":" in args.host else args.host
    if not loopback:
        log("=" * 78)
        log(f"WARNING: listening on {args.host}:{port}, not only on this machine. Anyone who can reach it")
        log(f"can see the map and play or download every file of {coll.input_dir or 'the input folder'}")
        log(f"and read the outputs of {coll.base}. There is no login. Stop it when done (Ctrl-C).")
        log("=" * 78)
    print(f"embedkit browse: serving {coll.base} at http://{shown_host}:{port}/ (Ctrl-C to stop)", flush=True)

    def stop(signum, frame):
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, stop)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()
        coll.close()
    log("embedkit browse: stopped")
    return 0


if __name__ == "__main__":
    sys.exit(main())
