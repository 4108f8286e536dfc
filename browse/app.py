"""The browse app (Flask) and its server (Werkzeug, threaded, loopback by default).

Pages: `/map` (the collection map), `/item/<path>` (player, drawings, nearest neighbours),
`/query` (upload a file, get its neighbours), `/compare` (probe and retrieval per model, with
--labels). JSON: `/api/map`, `/api/panels/<path>`, `/api/neighbours/<path>`. Media: `/media/<path>`
(HTTP Range, so players can seek). Every asset comes from this server (static/), and the
Content-Security-Policy says so to the browser. Reads go through `data` (the adapter); the only
file this app writes is the map cache beside the index, and an upload lives in a private
temporary folder only while its query runs.
"""

from __future__ import annotations

import base64
import logging
import shutil
import tempfile
import threading
import traceback
from pathlib import Path
from urllib.parse import quote

import numpy as np
from flask import Flask, Response, abort, jsonify, redirect, render_template, request, send_file, url_for
from werkzeug.exceptions import HTTPException, RequestEntityTooLarge

from embedkit import media
from embedkit.browse import data, projection

DEFAULT_K = 10
MAX_K = 200
CSP = (
    "default-src 'self'; img-src 'self' data: blob:; media-src 'self'; style-src 'self'; "
    "script-src 'self'; connect-src 'self'; object-src 'none'; frame-ancestors 'none'; base-uri 'none'; "
    "form-action 'self'"
)


class Labels:
    """The --labels CSV as the app uses it: a label per source, or why it was refused (one line)."""

    def __init__(self, path: str | None, coll: data.Collection) -> None:
        self.path = path
        self.rows: list = []
        self.by_source: dict[str, str] = {}
        self.problem: str | None = None
        if not path:
            return
        from embedkit import evaluate
        from embedkit.extractors.base import ConfigError

        try:
            rows = evaluate.read_labelled(path)
        except ConfigError as exc:
            self.problem = f"labels not used: {exc}"
            return
        known = set(coll.sources)
        unknown = [r.path for r in rows if r.path not in known]
        if unknown:
            self.problem = (
                f"labels not used: {len(unknown)} path(s) of {path} are not in the collection "
                f"(e.g. {unknown[0]}); paths are relative to the input folder"
            )
            return
        self.rows = rows
        self.by_source = {r.path: r.label for r in rows}


def _folder_group(source: str) -> str:
    parts = source.split("/")
    return parts[0] if len(parts) > 1 else "(top level)"


def create_app(
    coll: data.Collection,
    default_model: str,
    labels: Labels,
    map_method: str = "auto",
    max_upload_mb: float = 200.0,
    allowed_hosts: set[str] | None = None,
    log=print,
) -> Flask:
    """The Flask app over `coll`. `allowed_hosts`: Host headers answered (None: any)."""
    here = Path(__file__).parent
    app = Flask("embedkit.browse", root_path=str(here), static_folder="static", template_folder="templates")
    app.config["MAX_CONTENT_LENGTH"] = int(max_upload_mb * 2**20)
    app.config["MAX_FORM_MEMORY_SIZE"] = 1 << 20
    app.json.sort_keys = False
    app.jinja_env.globals["fmt_time"] = _fmt_time  # also inside imported macros
    app.url_map.merge_slashes = False  # `/media//etc/x` is refused, not redirected to `/media/etc/x`
    compare_cache: dict = {}
    compare_lock = threading.Lock()

    # -- helpers
    def pick() -> tuple[str, str | None]:
        model = request.args.get("model") or default_model
        return model, request.args.get("c") or None

    def view_or_error() -> tuple[data.IndexView | None, str | None]:
        model, name = pick()
        try:
            return coll.index(model, name), None
        except data.BrowseError as exc:
            return None, str(exc)

    def item_url(path: str, model: str, name: str | None, t: float | None = None) -> str:
        args = {"model": model}
        if name:
            args["c"] = name
        if t is not None:
            args["t"] = f"{t:.3f}"
        return url_for("item", rel=path, **args)

    def media_url(path: str, start: float | None = None, end: float | None = None) -> str:
        url = url_for("media_file", rel=path)
        if start is not None:
            url += f"#t={start:.3f}" + (f",{end:.3f}" if end is not None else "")
        return url

    def nav() -> dict:
        model, name = pick()
        models = []
        for m in coll.models:
            why = coll.why_not_searchable(m)
            models.append(
                {
                    "name": m,
                    "searchable": why is None,
                    "collections": coll.collections_of(m) if not why else [],
                }
            )
        return {
            "models": models,
            "model": model,
            "collection": name,
            "labels": labels,
            "has_labels": bool(labels.rows),
            "base": str(coll.base),
        }

    def neighbour_rows(hits: list[data.Neighbour], model: str, name: str | None) -> list[dict]:
        rows = []
        for rank, h in enumerate(hits, 1):
            rows.append(
                {
                    "rank": rank,
                    "path": h.path,
                    "score": h.score,
                    "start": h.start,
                    "end": h.end,
                    "kind": coll.kind(h.path),
                    "label": labels.by_source.get(h.path),
                    "item_url": item_url(h.path, model, name, h.start),
                    "media_url": media_url(h.path, h.start, h.end),
                }
            )
        return rows

    def k_arg() -> int:
        try:
            return max(1, min(MAX_K, int(request.args.get("k", DEFAULT_K))))
        except ValueError:
            return DEFAULT_K

    # -- every response
    @app.before_request
    def check_host():
        if allowed_hosts is not None and request.host.lower() not in allowed_hosts:
            abort(
                Response(
                    f"host {request.host!r} refused: this server answers only to "
                    f"{', '.join(sorted(allowed_hosts))}\n",
                    421,
                    mimetype="text/plain",
                )
            )

    @app.after_request
    def headers(resp: Response) -> Response:
        resp.headers["Content-Security-Policy"] = CSP
        resp.headers["X-Content-Type-Options"] = "nosniff"
        resp.headers["Referrer-Policy"] = "no-referrer"
        resp.headers.setdefault("Cache-Control", "no-store")
        return resp

    @app.errorhandler(data.BrowseError)
    def browse_error(exc: data.BrowseError):
        if request.path.startswith(("/api/", "/media/")):
            return Response(str(exc) + "\n", exc.status, mimetype="text/plain")
        return render_template("message.html", message=str(exc), **nav()), exc.status

    @app.errorhandler(RequestEntityTooLarge)
    def too_large(exc):
        msg = (
            f"the upload is larger than the limit of {max_upload_mb:g} MB; restart with --max_upload_mb N "
            "for larger files"
        )
        return render_template("message.html", message=msg, **nav()), 413

    @app.errorhandler(Exception)
    def unexpected(exc: Exception):
        if isinstance(exc, HTTPException):
            return exc
        log(f"error on {request.path}: {type(exc).__name__}: {exc}")
        traceback.print_exc()
        first = str(exc).splitlines()[0] if str(exc) else ""
        msg = f"internal error on this page: {type(exc).__name__}: {first}"
        return render_template("message.html", message=msg, **nav()), 500

    # -- pages
    @app.get("/")
    def index():
        return redirect(url_for("map_page", model=default_model))

    @app.get("/map")
    def map_page():
        view, problem = view_or_error()
        model, name = pick()
        api = url_for("map_api", model=model, **({"c": name} if name else {}))
        return render_template(
            "map.html", view=view, problem=problem, api=api, item_base=url_for("item", rel="x")[:-1], **nav()
        ), 409 if problem else 200

    @app.get("/api/map")
    def map_api():
        view, problem = view_or_error()
        if view is None:
            raise data.BrowseError(problem or "no index", 409)
        try:
            m = projection.collection_map(view, map_method, log=log)
        except ValueError as exc:
            raise data.BrowseError(str(exc), 409) from None
        colourings = {"folder": [_folder_group(s) for s in m.names]}
        if labels.rows:
            colourings = {"label": [labels.by_source.get(s, "(no label)") for s in m.names], **colourings}
        out_col = {}
        for key, groups in colourings.items():
            gnames, gidx = np.unique(np.asarray(groups, dtype=str), return_inverse=True)
            out_col[key] = {"names": [str(g) for g in gnames], "index": _b64(gidx.astype(np.uint16))}
        return jsonify(
            {
                "model": view.model,
                "collection": view.name,
                "level": view.level,
                "points": int(len(m.src)),
                "total": m.total,
                "method": m.method,
                "axes": m.axes,
                "names": m.names,
                "src": _b64(m.src.astype(np.uint32)),
                "x": _b64(m.coords[:, 0].astype(np.float32)),
                "y": _b64(m.coords[:, 1].astype(np.float32)),
                "start": _b64(m.start.astype(np.float32)) if m.start is not None else None,
                "colourings": out_col,
                "item_query": f"?model={quote(view.model)}&c={quote(view.name)}",
            }
        )

    @app.get("/item/<path:rel>")
    def item(rel: str):
        data.safe_relative(rel)
        if not coll.outputs_of(rel):
            raise data.BrowseError(f"{rel} is not an item of this collection", 404)
        model, name = pick()
        try:
            t = float(request.args["t"]) if "t" in request.args else None
        except ValueError:
            t = None
        problems = []
        try:
            coll.media_file(rel)
            playable = True
        except data.BrowseError as exc:
            problems.append(str(exc))
            playable = False
        view, problem = view_or_error()
        hits: list[dict] = []
        if problem:
            problems.append(problem)
        if view is not None:
            try:
                hits = neighbour_rows(view.neighbours(rel, k_arg(), t), view.model, view.name)
            except data.BrowseError as exc:
                problems.append(str(exc))
        return render_template(
            "item.html",
            rel=rel,
            kind=coll.kind(rel),
            playable=playable,
            problems=problems,
            media_url=media_url(rel, t),
            panels_api=url_for("panels_api", rel=rel),
            view=view,
            hits=hits,
            t=t,
            label=labels.by_source.get(rel),
            models_with_outputs=sorted(coll.outputs_of(rel)),
            **nav(),
        )

    @app.get("/api/panels/<path:rel>")
    def panels_api(rel: str):
        data.safe_relative(rel)
        if not coll.outputs_of(rel):
            raise data.BrowseError(f"{rel} is not an item of this collection", 404)
        return jsonify({"path": rel, "panels": coll.panels(rel)})

    @app.get("/api/neighbours/<path:rel>")
    def neighbours_api(rel: str):
        data.safe_relative(rel)
        view, problem = view_or_error()
        if view is None:
            raise data.BrowseError(problem or "no index", 409)
        t = request.args.get("t", type=float)
        hits = view.neighbours(rel, k_arg(), t)
        return jsonify({"path": rel, "collection": view.name, "neighbours": [h.to_json() for h in hits]})

    @app.get("/media/<path:rel>")
    def media_file(rel: str):
        path = coll.media_file(rel)
        mimetype = _mimetype(path)
        return send_file(path, mimetype=mimetype, conditional=True, max_age=0, etag=True)

    @app.route("/query", methods=["GET", "POST"])
    def query():
        view, problem = view_or_error()
        hits: list[dict] = []
        shown = None
        error = None
        if request.method == "POST" and view is not None:
            f = request.files.get("file")
            if f is None or not f.filename:
                error = "choose a file to query with"
            else:
                shown = Path(f.filename).name
                ext = Path(shown).suffix.lower()
                if media.kind_of(shown) is None:
                    error = (
                        f"{shown}: not a media file embedkit reads (audio, video or image by its extension)"
                    )
                else:
                    tmp = Path(tempfile.mkdtemp(prefix="embedkit-browse-upload-"))
                    try:
                        target = tmp / f"query{ext}"
                        f.save(target)
                        hits = neighbour_rows(view.query_file(target, k_arg()), view.model, view.name)
                    except data.BrowseError as exc:
                        error = str(exc)
                    finally:
                        shutil.rmtree(tmp, ignore_errors=True)
        return render_template(
            "query.html",
            view=view,
            problem=problem,
            hits=hits,
            shown=shown,
            error=error,
            max_upload_mb=max_upload_mb,
            **nav(),
        ), 409 if problem else 200

    @app.get("/compare")
    def compare():
        result, problem = comparison()
        ks = []
        for e in (result or {}).get("models", {}).values():
            if "retrieval" in e:
                ks = [k for k in e["retrieval"] if k.startswith("precision@")]
                break
        return render_template("compare.html", result=result, problem=problem, ks=ks, **nav())

    @app.get("/compare.png")
    def compare_png():
        result, problem = comparison()
        if result is None:
            raise data.BrowseError(problem or "no comparison", 409)
        from embedkit import evaluate

        with compare_lock:
            png = compare_cache.get("png")
            if png is None:
                png = compare_cache["png"] = evaluate.bar_chart(result)
        return Response(png, mimetype="image/png")

    def comparison() -> tuple[dict | None, str | None]:
        if not labels.path:
            return None, (
                "start with --labels FILE.csv (path,label[,group]; paths relative to the input folder) "
                "to compare the models on your labels"
            )
        if labels.problem:
            return None, labels.problem
        from embedkit import evaluate
        from embedkit.extractors.base import ConfigError

        with compare_lock:
            if "result" not in compare_cache:
                try:
                    compare_cache["result"] = evaluate.compare_models(coll.base, labels.rows)
                    compare_cache["problem"] = None
                except ConfigError as exc:
                    compare_cache["result"], compare_cache["problem"] = None, str(exc)
            return compare_cache["result"], compare_cache["problem"]

    return app


def _b64(a: np.ndarray) -> str:
    return base64.b64encode(np.ascontiguousarray(a).tobytes()).decode("ascii")


def _fmt_time(t: float | None) -> str:
    if t is None:
        return ""
    m, s = divmod(float(t), 60)
    return f"{int(m)}:{s:05.2f}"


_MIME = {
    ".wav": "audio/wav",
    ".flac": "audio/flac",
    ".mp3": "audio/mpeg",
    ".ogg": "audio/ogg",
    ".opus": "audio/ogg",
    ".m4a": "audio/mp4",
    ".aac": "audio/aac",
    ".mp4": "video/mp4",
    ".webm": "video/webm",
    ".mkv": "video/x-matroska",
    ".mov": "video/quicktime",
    ".avi": "video/x-msvideo",
    ".png": "image/png",
    ".jpg": "image/jpeg",
    ".jpeg": "image/jpeg",
    ".gif": "image/gif",
    ".bmp": "image/bmp",
    ".webp": "image/webp",
    ".tif": "image/tiff",
    ".tiff": "image/tiff",
}


def _mimetype(path: Path) -> str:
    return _MIME.get(path.suffix.lower(), "application/octet-stream")


def quiet_werkzeug(verbose: bool) -> None:
    """Werkzeug logs every request unless told otherwise; --verbose keeps that."""
    logging.getLogger("werkzeug").setLevel(logging.INFO if verbose else logging.WARNING)
