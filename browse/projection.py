"""The collection map: every vector of an index in 2-D, computed once and cached beside the index.

UMAP (umap-learn) when it is installed, else PCA by NumPy (the covariance's two leading
eigenvectors, fitted on at most PCA_FIT_SAMPLE vectors; signs fixed so that each axis's largest
loading is positive, so the picture is the same on every run). The cache is one .npz file beside
the index (IndexView.cache_path), keyed by the index's fingerprint: a changed index is projected
again. Above MAX_POINTS vectors a fixed, evenly spread sample is drawn (the page says so).
"""

from __future__ import annotations

import io
import json
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

MAX_POINTS = 200_000  # drawn on the map; above it a sample (segment-level indexes can hold millions)
PCA_FIT_SAMPLE = 20_000  # directions from a sample: plenty for a picture, and a second at 100k x 512
UMAP_MAX_POINTS = 50_000  # above it UMAP takes minutes: PCA unless the user asked for UMAP
METHODS = ("auto", "pca", "umap")


def have_umap() -> bool:
    try:
        import umap  # noqa: F401
    except Exception:  # ImportError, or numba failing to initialise
        return False
    return True


def pca_2d(x: np.ndarray, seed: int = 0) -> tuple[np.ndarray, list[str]]:
    """(N, D) -> (N, 2) float32 coordinates on the first two principal components, and axis names."""
    x = np.asarray(x, np.float32)
    n, d = x.shape
    if n == 0:
        return np.zeros((0, 2), np.float32), ["PC1", "PC2"]
    fit = x
    if n > PCA_FIT_SAMPLE:
        fit = x[np.sort(np.random.default_rng(seed).choice(n, PCA_FIT_SAMPLE, replace=False))]
    mean = fit.astype(np.float64).mean(axis=0)
    xc = fit - mean.astype(np.float32)
    # float32 product (BLAS sgemm: 4x faster than float64 here), summed in float64 for the eigensolver
    cov = (xc.T @ xc).astype(np.float64) / max(1, len(fit) - 1)
    w, v = np.linalg.eigh(cov)
    order = np.argsort(w)[::-1][:2]
    comps = v[:, order].T  # (k, D)
    signs = np.sign(comps[np.arange(len(comps)), np.argmax(np.abs(comps), axis=1)])
    comps *= np.where(signs == 0, 1.0, signs)[:, None]
    coords = np.zeros((n, 2), np.float32)
    c32 = comps.T.astype(np.float32)
    shift = (mean @ comps.T).astype(np.float32)
    for s in range(0, n, 100_000):  # bounded memory; float32: (x - mean) @ c = x @ c - mean @ c
        coords[s : s + 100_000, : len(comps)] = x[s : s + 100_000] @ c32 - shift
    total = float(np.clip(w, 0, None).sum())
    ratio = [float(w[i]) / total if total > 0 else 0.0 for i in order] + [0.0, 0.0]
    return coords, [f"PC{i + 1} ({100 * ratio[i]:.1f} % of variance)" for i in range(2)]


def umap_2d(x: np.ndarray, seed: int = 0) -> tuple[np.ndarray, list[str]]:
    import umap

    n = len(x)
    coords = umap.UMAP(
        n_components=2, n_neighbors=max(2, min(15, n - 1)), metric="cosine", random_state=seed
    ).fit_transform(np.asarray(x, np.float32))
    return np.asarray(coords, np.float32), ["UMAP 1", "UMAP 2"]


def choose_method(method: str, n: int) -> str:
    if method == "pca" or n < 4:
        return "pca"
    if method == "umap":
        if not have_umap():
            raise ValueError("--map umap needs umap-learn (pip install umap-learn)")
        return "umap"
    return "umap" if have_umap() and n <= UMAP_MAX_POINTS else "pca"


def sample_rows(n: int, limit: int = MAX_POINTS) -> np.ndarray:
    """Indices of at most `limit` of `n` rows, evenly spread and always the same."""
    return np.arange(n) if n <= limit else np.linspace(0, n - 1, limit).round().astype(np.int64)


@dataclass
class MapData:
    names: list[str]  # distinct sources, in order
    src: np.ndarray  # (P,) uint32: each point's source (index into names)
    start: np.ndarray | None  # (P,) float32 seconds at segment level, else None
    coords: np.ndarray  # (P, 2) float32
    total: int  # vectors in the index (P <= total)
    method: str
    axes: list[str]
    fingerprint: str
    seconds: float  # how long the projection took when it was computed


_lock = threading.Lock()
_memory: dict[tuple[str, str], MapData] = {}


def _load(path: Path, fingerprint: str, method: str) -> MapData | None:
    try:
        with np.load(path, allow_pickle=False) as z:
            meta = json.loads(bytes(z["meta"]).decode())
            if meta["fingerprint"] != fingerprint or meta["requested"] != method:
                return None
            start = z["start"]
            return MapData(
                meta["names"],
                z["src"],
                start if len(start) else None,
                z["coords"],
                meta["total"],
                meta["method"],
                meta["axes"],
                fingerprint,
                meta["seconds"],
            )
    except (OSError, ValueError, KeyError):
        return None


def collection_map(view, method: str = "auto", log=None) -> MapData:
    """The map of one IndexView: from memory, else from the cache beside the index, else computed."""
    fp = view.fingerprint()
    key = (f"{view.model}/{view.name}", method)
    with _lock:
        m = _memory.get(key)
        if m is not None and m.fingerprint == fp:
            return m
        path = view.cache_path(f"browse-map-{method}.npz")
        if path is not None:
            m = _load(path, fp, method)
        if m is None:
            t0 = time.perf_counter()
            sources, starts, _, vecs = view.all_vectors()
            total = len(sources)
            rows = sample_rows(total)
            vecs = vecs[rows]
            used = choose_method(method, len(rows))
            if log:
                log(f"map of {view.name}: {used.upper()} over {len(rows)} vectors ...")
            coords, axes = (umap_2d if used == "umap" else pca_2d)(vecs)
            names, src = np.unique(np.asarray(sources, dtype=object)[rows].astype(str), return_inverse=True)
            seg = view.level == "segment"
            m = MapData(
                [str(s) for s in names],
                src.astype(np.uint32),
                starts[rows].astype(np.float32) if seg else None,
                coords,
                total,
                used,
                axes,
                fp,
                round(time.perf_counter() - t0, 3),
            )
            if path is not None:
                try:
                    _save(path, m, method)
                except OSError as exc:  # a read-only index: keep it in memory only
                    if log:
                        log(f"map cache not written ({exc.strerror or exc}); kept in memory")
            if log:
                log(f"map of {view.name}: done in {m.seconds:.1f} s")
        _memory[key] = m
        return m


def _save(path: Path, m: MapData, requested: str) -> None:
    from embedkit import outputs

    buf = io.BytesIO()
    meta = {
        "names": m.names,
        "total": m.total,
        "method": m.method,
        "requested": requested,
        "axes": m.axes,
        "fingerprint": m.fingerprint,
        "seconds": m.seconds,
    }
    np.savez(
        buf,
        meta=np.frombuffer(json.dumps(meta).encode(), np.uint8),
        src=m.src,
        coords=m.coords,
        start=m.start if m.start is not None else np.zeros(0, np.float32),
    )
    outputs.atomic_write_bytes(path, buf.getvalue())
