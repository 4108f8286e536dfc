#!/usr/bin/env python
"""Look at the results: PNGs of what a run wrote (matplotlib, headless).

    python plotting.py files output/embeddings --audio_dir audio_files     # one PNG per input file
    python plotting.py map output/embeddings --model openl3 --labels labels.csv

files: one figure per input file, panels stacked on one time axis (0 to the file's duration):
the waveform (when --audio_dir is given), each CREPE model's f0 coloured by confidence,
madmom's beat activation with the DBN beats, and for every other model with a time axis its
frames as a heat map (dims x time) and their cosine self-similarity matrix. Only the panels
of the models present are drawn. PNGs go to <output_base>/plots/<relative dir>/<stem>.png; a
PNG newer than every array it shows is kept (--overwrite redraws).

map: one point per file (a model's arrays mean-pooled over time), projected to 2-D by PCA
(numpy SVD; --method tsne needs scikit-learn, umap needs umap-learn), coloured by the file's
first-level sub-folder or by a labels CSV (path,label). Writes map-<model>-<method>.png and
the coordinates as map-<model>-<method>.csv.
Exit status: 0 done, 1 some file could not be drawn (said why), 2 usage error.
"""

from __future__ import annotations

if not __package__:  # `python plotting.py` from a checkout: the checkout is the package embedkit
    import _checkout  # noqa: F401

import argparse
import csv
import fnmatch
import functools
import io
import os
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath

import numpy as np

from embedkit import outputs, results

# Panel heights in inches; a figure is `width` x (TITLE_HEIGHT + sum of its panels) inches.
PANEL_HEIGHTS = {"waveform": 1.2, "pitch": 1.8, "beats": 1.3, "curve": 1.3, "heatmap": 1.8, "ssm": 2.6}
TITLE_HEIGHT = 0.4
DEFAULT_WIDTH = 10.0
DEFAULT_DPI = 100
MAX_HEATMAP_FRAMES = 2000  # frames are block-averaged down to this many columns
MAX_SSM_FRAMES = 600  # and to this many for the (T, T) self-similarity matrix
MAX_MAP_LABELS = 30  # point names drawn on a map (a spread-out sample; the CSV names every point)
# CREPE's f0 is drawn only where its confidence reaches this (crepe's own voicing threshold in its
# docs' examples is 0.5); below it the "pitch" of silence or clicks is noise
PITCH_MIN_CONFIDENCE = 0.5
PITCH_EXTRACTORS = ("crepe",)
BEAT_EXTRACTORS = ("madmom",)


def _figure(width: float, height: float, dpi: int):
    from matplotlib.figure import Figure  # no pyplot: no global state, no display needed (Agg on save)

    return Figure(figsize=(width, height), dpi=dpi, layout="constrained")


def save_png(fig, path: str | os.PathLike) -> Path:
    """Write `fig` as PNG atomically (exactly figsize x dpi pixels: no tight bounding box)."""
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=fig.dpi, metadata={"Software": "embedkit plotting.py"})
    outputs.atomic_write_bytes(Path(path), buf.getvalue())
    return Path(path)


# -- per-file figure ------------------------------------------------------------------------
@dataclass
class Panel:
    """One row of the per-file figure. kind: a key of PANEL_HEIGHTS; t: frame times (s)."""

    kind: str
    model: str
    t: np.ndarray | None = None
    values: np.ndarray | None = None
    extra: np.ndarray | None = None  # beats (s) for "beats", confidence for "pitch"
    sample_rate: int | None = None  # waveform only
    note: str = ""
    columns: list[str] = field(default_factory=list)
    min_confidence: float = PITCH_MIN_CONFIDENCE  # pitch only
    edges: np.ndarray | None = None  # (T + 1,) frame boundaries (s) where frames have stored times


def block_mean(x: np.ndarray, t: np.ndarray, max_frames: int) -> tuple[np.ndarray, np.ndarray]:
    """Average consecutive frames (axis 0) so at most `max_frames` remain; times averaged likewise."""
    n = x.shape[0]
    if n <= max_frames:
        return x, t
    starts = np.linspace(0, n, max_frames + 1).astype(np.int64)[:-1]
    counts = np.diff(np.append(starts, n))
    return (
        np.add.reduceat(x.astype(np.float64), starts, axis=0) / counts[:, None],
        np.add.reduceat(t, starts) / counts,
    )


def cosine_ssm(x: np.ndarray) -> np.ndarray:
    """(T, D) frames -> (T, T) cosine similarity; all-zero frames get similarity 0."""
    x = np.asarray(x, dtype=np.float64)
    norm = np.linalg.norm(x, axis=1, keepdims=True)
    xn = np.divide(x, norm, out=np.zeros_like(x), where=norm > 0)
    return np.clip(xn @ xn.T, -1.0, 1.0)


def _edges(t: np.ndarray) -> np.ndarray:
    """Cell edges around frame times (midpoints; the ends extend by half a step)."""
    if t.shape[0] == 1:
        return np.array([t[0] - 0.5, t[0] + 0.5])
    mid = (t[1:] + t[:-1]) / 2
    return np.concatenate([[t[0] - (mid[0] - t[0])], mid, [t[-1] + (t[-1] - mid[-1])]])


def _frames_2d(axes: list[str], a: np.ndarray, layer: int) -> tuple[np.ndarray, str]:
    """A time-series array as (T, D): time axis first; a "layer" axis picks `layer`; the rest flattened."""
    note = ""
    if "layer" in axes and a.ndim == len(axes):
        li = axes.index("layer")
        n_layers = a.shape[li]
        a = np.take(a, layer, axis=li)
        note = f" layer {layer % n_layers}"
        axes = [x for x in axes if x != "layer"]
    ti = axes.index("time")
    a = np.moveaxis(a, ti, 0)
    return a.reshape(a.shape[0], -1), note


def panels_for_file(
    items: list[results.Item],
    audio: tuple[np.ndarray, int] | None = None,
    layer: int = -1,
    min_confidence: float = PITCH_MIN_CONFIDENCE,
) -> list[Panel]:
    """The panels of one input file, in drawing order, from its items (one per model) with a time axis."""
    panels: list[Panel] = []
    if audio is not None:
        panels.append(Panel("waveform", "audio", values=audio[0], sample_rate=audio[1]))
    for item in items:
        if item.time_axis is None:
            continue
        folder = item.folder
        a = item.load()
        t = item.times(a.shape[item.time_axis])
        if t is None:
            raise results.ResultsError(f"{folder.name}: features.json gives no frame times (hop_seconds)")
        cols = item.spec.get("columns") or []
        if folder.extractor in PITCH_EXTRACTORS or cols[:2] == ["f0_hz", "confidence"]:
            panels.append(Panel("pitch", folder.name, t, a[:, 0], extra=a[:, 1],
                                min_confidence=min_confidence))
        elif folder.extractor in BEAT_EXTRACTORS:
            beats = item.extra("beats") if "beats" in folder.extras else None
            panels.append(Panel("beats", folder.name, t, a.reshape(a.shape[0], -1)[:, 0], extra=beats))
        elif a.ndim == 1 or (a.ndim == 2 and len(cols) == a.shape[1] and len(cols) <= 8):
            panels.append(Panel("curve", folder.name, t, a.reshape(a.shape[0], -1), columns=cols))
        else:
            x, note = _frames_2d(item.axes, a, layer)
            dim_name = item.axes[-1] if item.axes and item.axes[-1] != "time" else "dim"
            edges = None
            if item.times_from_file:  # video frames: each cell from its frame's time to the next one's
                spans = item.spans(len(t))
                edges = np.append(spans[:, 0], spans[-1, 1])
            panels.append(Panel("heatmap", folder.name, t, x, note=note, columns=[dim_name], edges=edges))
            panels.append(Panel("ssm", folder.name, t, x, note=note, edges=edges))
    return panels


def figure_height(panels: list[Panel]) -> float:
    return TITLE_HEIGHT + sum(PANEL_HEIGHTS[p.kind] for p in panels)


def plot_file(
    panels: list[Panel],
    duration_seconds: float,
    title: str = "",
    width: float = DEFAULT_WIDTH,
    dpi: int = DEFAULT_DPI,
):
    """Stack `panels` on one shared time axis from 0 to `duration_seconds`; returns the Figure.

    Each main axes is labelled "<kind>:<model>" (Axes.get_label()); colour bars sit in a
    narrow second column so every panel's time axis lines up.
    """
    fig = _figure(width, figure_height(panels), dpi)
    gs = fig.add_gridspec(
        len(panels), 2, width_ratios=[1, 0.018], height_ratios=[PANEL_HEIGHTS[p.kind] for p in panels]
    )
    first = None
    for row, p in enumerate(panels):
        ax = fig.add_subplot(gs[row, 0], sharex=first, label=f"{p.kind}:{p.model}")
        first = first or ax
        mappable, cbar_label = _draw(ax, p)
        if mappable is not None:
            fig.colorbar(
                mappable,
                cax=fig.add_subplot(gs[row, 1], label=f"colorbar:{p.kind}:{p.model}"),
                label=cbar_label,
            )
        if row < len(panels) - 1:
            ax.tick_params(labelbottom=False)
    if first is not None:
        first.set_xlim(0.0, duration_seconds)
        fig.axes[[a.get_label() for a in fig.axes].index(f"{panels[-1].kind}:{panels[-1].model}")].set_xlabel(
            "time (s)"
        )
    if title:
        text, families = drawable_text(title)
        fig.suptitle(text, fontsize=10, x=0.01, ha="left", **({"fontfamily": families} if families else {}))
    return fig


def _draw(ax, p: Panel):
    """Draw one panel; returns (mappable for a colour bar or None, its label)."""
    small = {"fontsize": 8}
    if p.kind == "waveform":
        y, sr = p.values, p.sample_rate
        buckets = int(ax.figure.get_figwidth() * ax.figure.dpi)  # about one per pixel column
        if y.shape[0] > 2 * buckets:  # min/max envelope: the look of every audio editor, at any length
            edges = np.linspace(0, y.shape[0], buckets + 1).astype(np.int64)
            lo, hi = np.minimum.reduceat(y, edges[:-1]), np.maximum.reduceat(y, edges[:-1])
            ax.fill_between(edges[:-1] / sr, lo, hi, color="0.3", linewidth=0)
        else:
            ax.plot(np.arange(y.shape[0]) / sr, y, color="0.3", linewidth=0.6)
        peak = float(np.max(np.abs(y))) or 1.0
        ax.set_ylim(-1.05 * peak, 1.05 * peak)
        ax.set_ylabel("amplitude", **small)
        ax.set_title("waveform", loc="left", **small)
        return None, ""
    if p.kind == "pitch":
        f0, conf = p.values, p.extra
        ok = (f0 > 0) & (conf >= p.min_confidence)  # unvoiced frames: their f0 means nothing
        sc = ax.scatter(
            p.t[ok],
            f0[ok],
            c=conf[ok],
            s=3,
            cmap="viridis",
            vmin=0.0,
            vmax=1.0,
            linewidths=0,
            rasterized=True,
        )
        ref = f0[ok]
        if ref.size:
            from matplotlib.ticker import FuncFormatter, LogLocator

            ax.set_yscale("log")
            ax.set_ylim(max(ref.min() / 1.25, 20.0), ref.max() * 1.25)
            ax.yaxis.set_minor_locator(LogLocator(subs=(2.0, 3.0, 5.0)))
            for which in ("major", "minor"):  # plain Hz (e.g. 200, 500), not 2 x 10^2
                ax.yaxis.set_tick_params(which=which, labelsize=7)
            ax.yaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
            ax.yaxis.set_minor_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
        else:
            ax.text(0.5, 0.5, f"no frame with confidence >= {p.min_confidence:g}", transform=ax.transAxes,
                    ha="center", va="center", color="0.4", **small)
        ax.set_ylabel("f0 (Hz)", **small)
        ax.set_title(f"{p.model}: pitch where confidence >= {p.min_confidence:g} ({int(ok.sum())} of "
                     f"{len(f0)} frames), coloured by confidence", loc="left", **small)
        return sc, "confidence"
    if p.kind == "beats":
        ax.plot(p.t, p.values, color="C0", linewidth=0.8, label="activation")
        if p.extra is not None and p.extra.size:
            ax.vlines(p.extra, 0, 1, colors="C3", linestyles="--", linewidth=0.8, label="DBN beats")
        ax.set_ylim(0, 1.02)
        ax.set_ylabel("beat act.", **small)
        n = 0 if p.extra is None else p.extra.size
        ax.set_title(
            f"{p.model}: beat activation" + (f" and {n} DBN beats" if p.extra is not None else ""),
            loc="left",
            **small,
        )
        ax.legend(loc="upper right", fontsize=7, frameon=False)
        return None, ""
    if p.kind == "curve":
        for j in range(p.values.shape[1]):
            ax.plot(p.t, p.values[:, j], linewidth=0.8, label=p.columns[j] if j < len(p.columns) else None)
        if p.columns:
            ax.legend(loc="upper right", fontsize=7, frameon=False)
        ax.set_ylabel("value", **small)
        ax.set_title(p.model, loc="left", **small)
        return None, ""
    if p.kind == "heatmap":
        x, t = block_mean(p.values, p.t, MAX_HEATMAP_FRAMES)
        finite = x[np.isfinite(x)]
        vmin, vmax = np.percentile(finite, [1, 99]) if finite.size else (0.0, 1.0)
        e = p.edges if p.edges is not None and len(t) == len(p.t) else _edges(t)
        if _regular(t):
            im = ax.imshow(
                x.T,
                aspect="auto",
                origin="lower",
                interpolation="nearest",
                cmap="magma",
                vmin=vmin,
                vmax=vmax,
                extent=(e[0], e[-1], -0.5, x.shape[1] - 0.5),
            )
        else:
            im = ax.pcolormesh(
                e, np.arange(x.shape[1] + 1) - 0.5, x.T, cmap="magma", vmin=vmin, vmax=vmax, rasterized=True
            )
        ax.set_ylabel(p.columns[0] if p.columns else "dim", **small)
        ax.set_title(
            f"{p.model}{p.note}: {p.values.shape[0]} frames x {p.values.shape[1]} dims", loc="left", **small
        )
        return im, "value"
    if p.kind == "ssm":
        x, t = block_mean(p.values, p.t, MAX_SSM_FRAMES)
        s = cosine_ssm(x)
        e = p.edges if p.edges is not None and len(t) == len(p.t) else _edges(t)
        if _regular(t):
            im = ax.imshow(
                s,
                aspect="auto",
                origin="upper",
                interpolation="nearest",
                cmap="viridis",
                vmin=min(0.0, float(s.min())),
                vmax=1.0,
                extent=(e[0], e[-1], e[-1], e[0]),
            )
        else:
            im = ax.pcolormesh(
                e, e, s, cmap="viridis", vmin=min(0.0, float(s.min())), vmax=1.0, rasterized=True
            )
            ax.invert_yaxis()
        ax.set_ylabel("time (s)", **small)
        ax.set_title(f"{p.model}{p.note}: self-similarity (cosine)", loc="left", **small)
        return im, "cosine"
    raise ValueError(f"unknown panel kind {p.kind!r}")


def _regular(t: np.ndarray) -> bool:
    if t.shape[0] < 3:
        return True
    d = np.diff(t)
    return bool(np.allclose(d, d[0], rtol=1e-3, atol=1e-9))


# -- collection map ---------------------------------------------------------------------------
def file_vector(axes: list[str], a: np.ndarray, layer: int = -1) -> np.ndarray:
    """One vector per file: mean over the time axis, the chosen layer of a "layer" axis, flattened.

    axes: the array's axes (`Item.axes`).
    """
    axes = list(axes)
    a = np.asarray(a, dtype=np.float64)
    if "layer" in axes and a.ndim == len(axes):
        a = np.take(a, layer, axis=axes.index("layer"))
        axes.remove("layer")
    if "time" in axes and a.ndim == len(axes):
        a = a.mean(axis=axes.index("time"))
    return a.reshape(-1)


def pca_2d(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(N, D) -> (N, 2) coordinates on the first two principal components, and their variance ratios.

    coords = (x - mean) @ V[:2].T from the SVD of the centred data; each component's sign is
    fixed so that its largest-magnitude loading is positive (deterministic across runs).
    Missing components (N < 3 or D < 2) are zeros.
    """
    x = np.asarray(x, dtype=np.float64)
    xc = x - x.mean(axis=0)
    _, s, vt = np.linalg.svd(xc, full_matrices=False)
    k = min(2, vt.shape[0])
    v = vt[:k].copy()
    signs = np.sign(v[np.arange(k), np.argmax(np.abs(v), axis=1)])
    v *= np.where(signs == 0, 1.0, signs)[:, None]
    coords = np.zeros((x.shape[0], 2))
    coords[:, :k] = xc @ v.T
    total = float((s**2).sum())
    ratio = np.zeros(2)
    if total > 0:
        ratio[:k] = s[:k] ** 2 / total
    return coords, ratio


def embed_2d(x: np.ndarray, method: str = "pca", seed: int = 0) -> tuple[np.ndarray, list[str]]:
    """(N, D) -> (N, 2) by "pca", "tsne" (scikit-learn) or "umap" (umap-learn); and axis labels."""
    if method == "pca":
        coords, ratio = pca_2d(x)
        return coords, [f"PC{i + 1} ({100 * r:.1f} % of variance)" for i, r in enumerate(ratio)]
    n = x.shape[0]
    if n < 4:
        raise ValueError(f"{method} needs at least 4 files (got {n}); use --method pca")
    if method == "tsne":
        try:
            from sklearn.manifold import TSNE
        except ImportError:
            raise ValueError("--method tsne needs scikit-learn (pip install scikit-learn)") from None
        coords = TSNE(
            n_components=2, perplexity=min(30.0, (n - 1) / 3), init="pca", random_state=seed
        ).fit_transform(x)
        return np.asarray(coords, dtype=np.float64), ["t-SNE 1", "t-SNE 2"]
    if method == "umap":
        try:
            import umap
        except ImportError:
            raise ValueError("--method umap needs umap-learn (pip install umap-learn)") from None
        coords = umap.UMAP(n_components=2, n_neighbors=min(15, n - 1), random_state=seed).fit_transform(x)
        return np.asarray(coords, dtype=np.float64), ["UMAP 1", "UMAP 2"]
    raise ValueError(f"unknown method {method!r} (pca, tsne, umap)")


def read_labels(path: str | os.PathLike) -> dict[str, str]:
    """labels CSV (path,label; a header row is optional) -> {relative path: label}."""
    labels: dict[str, str] = {}
    with open(path, newline="", encoding="utf-8") as f:
        for i, row in enumerate(csv.reader(f)):
            if len(row) < 2 or (i == 0 and [c.strip().lower() for c in row[:2]] == ["path", "label"]):
                continue
            labels[PurePosixPath(row[0].strip().replace("\\", "/")).as_posix()] = row[1].strip()
    return labels


TOP_LEVEL = "(top level)"
NO_LABEL = "(no label)"


def group_of(rel: PurePosixPath, source: str | None, labels: dict[str, str] | None) -> str:
    """A file's colour group: its label (matched by source path, output path, or output path
    without .npy), else with no labels file its first-level sub-folder."""
    if labels is not None:
        rel_s = rel.as_posix()
        for key in (source, rel_s, rel_s[:-4] if rel_s.endswith(".npy") else None):
            if key and key in labels:
                return labels[key]
        return NO_LABEL
    parts = PurePosixPath(source or rel.as_posix()).parts
    return parts[0] if len(parts) > 1 else TOP_LEVEL


def plot_map(
    coords: np.ndarray,
    groups: list[str],
    axis_labels: list[str],
    title: str = "",
    names: list[str] | None = None,
    width: float = 7.0,
    height: float = 6.0,
    dpi: int = DEFAULT_DPI,
    max_labels: int = MAX_MAP_LABELS,
):
    """Scatter the (N, 2) `coords`, one colour and legend entry per group (sorted); returns the Figure.

    Each group is one PathCollection labelled with the group name. With `names`, a spread-out
    sample of at most `max_labels` points is named (farthest-point order), leaving out any name
    that would overlap one already drawn; names are drawn in a font that has their glyphs
    (characters no installed font has become "?"), so nothing warns.
    """
    fig = _figure(width, height, dpi)
    ax = fig.add_subplot(label="map")
    order = sorted(set(groups), key=lambda g: (g in (NO_LABEL, TOP_LEVEL), g))
    cmap = _colours(len(order))
    g = np.array(groups, dtype=object)
    for k, name in enumerate(order):
        sel = g == name
        colour = "0.6" if name == NO_LABEL else cmap[k]
        ax.scatter(
            coords[sel, 0], coords[sel, 1], s=24, color=colour, label=f"{name}", alpha=0.85, edgecolors="none"
        )
    ax.margins(0.12)  # room for the point names
    ax.set_xlabel(axis_labels[0])
    ax.set_ylabel(axis_labels[1])
    if len(order) <= 20:
        ax.legend(fontsize=8, frameon=False, loc="best", title="group", title_fontsize=8)
    if title:
        ax.set_title(title, fontsize=10, loc="left")
    if names is not None and max_labels > 0 and len(names):
        _label_points(fig, ax, coords, names, max_labels)
    return fig


def spread_sample(coords: np.ndarray, k: int) -> list[int]:
    """Indices of up to k points in farthest-point order (the first: farthest from the centre), on
    coordinates scaled to unit range: a sample that covers the map instead of its densest part."""
    x = np.asarray(coords, np.float64)
    span = np.ptp(x, axis=0)
    x = (x - x.min(axis=0)) / np.where(span > 0, span, 1.0)
    first = int(np.argmax(((x - x.mean(axis=0)) ** 2).sum(axis=1)))
    chosen = [first]
    dist = ((x - x[first]) ** 2).sum(axis=1)
    while len(chosen) < min(k, len(x)):
        nxt = int(np.argmax(dist))
        if dist[nxt] <= 0:
            break  # the rest sit on chosen points
        chosen.append(nxt)
        dist = np.minimum(dist, ((x - x[nxt]) ** 2).sum(axis=1))
    return chosen


def _label_points(fig, ax, coords: np.ndarray, names: list[str], max_labels: int) -> None:
    """Name a spread-out sample of points; a name whose box would overlap a drawn one is left out."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    texts = []
    for i in spread_sample(coords, max_labels):
        text, families = drawable_text(names[i])
        font = {"fontfamily": families} if families else {}
        texts.append(ax.annotate(text, (coords[i, 0], coords[i, 1]), fontsize=7, xytext=(3, 3),
                                 textcoords="offset points", **font))
    if fig.canvas is None or not hasattr(fig.canvas, "get_renderer"):
        FigureCanvasAgg(fig)
    fig.draw_without_rendering()  # final layout, so the boxes are where they will be drawn
    renderer = fig.canvas.get_renderer()
    kept = []
    for t in texts:
        box = t.get_window_extent(renderer).expanded(1.05, 1.1)
        if any(box.overlaps(other) for other in kept):
            t.remove()
        else:
            kept.append(box)


@functools.cache
def _font_charmaps() -> tuple[tuple[str, frozenset[int]], ...]:
    """(family, code points) of every font matplotlib knows, the default one first."""
    from matplotlib import font_manager, ft2font

    default = font_manager.findfont(font_manager.FontProperties())
    paths = [default] + sorted({f.fname for f in font_manager.fontManager.ttflist} - {default})
    out = []
    for path in paths:
        try:
            font = ft2font.FT2Font(path)
            out.append((font.family_name, frozenset(font.get_charmap())))
        except (OSError, RuntimeError, ValueError):
            continue
    return tuple(out)


def drawable_text(text: str) -> tuple[str, list[str] | None]:
    """`text` fit to draw quietly, and the font families to draw it with (None: the default font).

    A file name that is not UTF-8 shows its bytes as \\xNN; characters the default font lacks are
    drawn from a font that has them; those no installed font has become "?".
    """
    text = results.display_name(text)
    codes = {ord(c) for c in text if c.isprintable()}
    fonts = _font_charmaps()
    if not fonts or codes <= fonts[0][1]:
        return "".join(c if c.isprintable() else "?" for c in text), None
    missing = codes - fonts[0][1]
    families = [fonts[0][0]]
    for family, charmap in fonts[1:]:
        if missing & charmap and family not in families:
            families.append(family)
            missing -= charmap
        if not missing:
            break
    return "".join("?" if (ord(c) in missing or not c.isprintable()) else c for c in text), families


def _colours(n: int) -> list:
    from matplotlib import colormaps

    cmap = colormaps["tab10" if n <= 10 else "tab20"]
    return [cmap(i % cmap.N) for i in range(n)]


# -- commands ---------------------------------------------------------------------------------
def _models(base: Path, names: list[str] | None, log: Callable[[str], None]) -> list[results.ModelFolder]:
    """The model folders asked for (default: every one), read through embedkit.results; their notes
    (arrays left out) said once."""
    run = results.Results(base)
    folders = [run.model(m) for m in (names or run.models)]
    for folder in folders:
        for note in folder.notes:
            log(f"note: {note}")
    return folders


def _audio_dir(base: Path, given: str | None) -> Path | None:
    if given:
        return Path(given)
    try:  # a future run report may name its input folder
        import json

        d = json.loads((base / "run_report.json").read_text()).get("audio_dir")
        return Path(d) if d and Path(d).is_dir() else None
    except (OSError, ValueError, AttributeError):
        return None


def plot_files(
    output_base: str | os.PathLike,
    audio_dir: str | os.PathLike | None = None,
    models: list[str] | None = None,
    out_dir: str | os.PathLike | None = None,
    patterns: list[str] | None = None,
    limit: int | None = None,
    width: float = DEFAULT_WIDTH,
    dpi: int = DEFAULT_DPI,
    layer: int = -1,
    overwrite: bool = False,
    log: Callable[[str], None] = print,
    min_confidence: float = PITCH_MIN_CONFIDENCE,
) -> tuple[list[Path], list[str]]:
    """One PNG per input file that a selected model holds frames of; returns (PNGs written or kept, errors).

    A file's figure gathers every model's array of that source (models name their outputs on
    their own, so they are matched by source path). PNGs are named like outputs
    (`<dir>/<stem>.png`, `<stem>.<ext>.png` where sources share a stem).
    """
    from embedkit import audio_io

    base = Path(output_base)
    folders = [f for f in _models(base, models, log) if f.kinds_with_time]
    if not folders:
        raise results.ResultsError(
            f"no model with a time axis in {base}; `plotting.py map` draws pooled ones"
        )
    by_source: dict[str, list[results.Item]] = {}
    for folder in folders:
        for item in folder.items:
            if item.time_axis is not None:
                by_source.setdefault(item.source, []).append(item)
    pngs = {str(src): rel.with_suffix(".png") for src, rel in outputs.output_names(by_source).items()}
    sources = sorted(by_source)
    if patterns:
        sources = [
            s for s in sources
            if any(fnmatch.fnmatch(s, pat) or any(fnmatch.fnmatch(str(i.output), pat) for i in by_source[s])
                   for pat in patterns)
        ]
    sources = sources[:limit] if limit else sources
    out = Path(out_dir) if out_dir else base / "plots"
    if not audio_dir:
        log("no --audio_dir given: figures without the waveform")
    written, errors = [], []
    for source in sources:
        items = by_source[source]
        shown = results.display_name(source)
        try:
            png = outputs.inside(out, Path(pngs[source]))
            if (
                not overwrite
                and png.is_file()
                and png.stat().st_mtime_ns >= max(i.path.stat().st_mtime_ns for i in items)
            ):
                written.append(png)
                continue
            audio = None
            if audio_dir:
                try:
                    decoded = audio_io.load(Path(audio_dir) / source)
                    audio = (decoded.audio, decoded.sample_rate)
                except (OSError, audio_io.AudioError) as exc:  # e.g. moved, or an image: draw the rest
                    log(f"{shown}: no waveform ({exc})")
            panels = panels_for_file(items, audio, layer, min_confidence)
            fig = plot_file(panels, _duration(items, audio), title=source, width=width, dpi=dpi)
            save_png(fig, png)
            written.append(png)
        except (OSError, ValueError, audio_io.AudioError, results.ResultsError) as exc:
            errors.append(f"{shown}: {type(exc).__name__}: {exc}")
            log(f"FAILED {shown}: {exc}")
    log(f"{len(written)} figure(s) in {out}" + (f", {len(errors)} failed" if errors else ""))
    return written, errors


def _duration(items: list[results.Item], audio: tuple[np.ndarray, int] | None) -> float:
    """The file's duration (s): decoded audio, else the manifest, else the last frame's end."""
    if audio is not None:
        return audio[0].shape[0] / audio[1]
    for item in items:
        if item.duration_seconds:
            return item.duration_seconds
    ends = []
    for item in items:
        spans = item.spans()
        if spans is not None and len(spans):
            ends.append(float(spans[-1, 1]))
    return max(ends) if ends and max(ends) > 0 else 1.0


def map_collection(
    output_base: str | os.PathLike,
    model: str,
    labels_csv: str | os.PathLike | None = None,
    method: str = "pca",
    layer: int = -1,
    out_dir: str | os.PathLike | None = None,
    width: float = 7.0,
    height: float = 6.0,
    dpi: int = DEFAULT_DPI,
    log: Callable[[str], None] = print,
    errors: list[str] | None = None,
) -> tuple[Path, np.ndarray, list[str]]:
    """2-D map of every file of `model`; writes the PNG and a coordinates CSV.

    Returns (png path, (N, 2) coordinates, N colour groups), files in `ModelFolder.items` order.
    An array that cannot be read is left out, named in the log (and in `errors` when given).
    """
    base = Path(output_base)
    (folder,) = _models(base, [model], log)
    items, vectors = [], []
    for item in folder.items:
        try:
            v = file_vector(item.axes, item.load(), layer)
            if vectors and v.shape != vectors[0].shape:
                raise results.ResultsError(
                    f"{results.display_name(item.path)} pools to {v.shape[0]} values, the others to "
                    f"{vectors[0].shape[0]}: rerun the extraction")
        except results.ResultsError as exc:
            log(f"left out {results.display_name(item.source)}: {exc}")
            if errors is not None:
                errors.append(f"{results.display_name(item.source)}: {exc}")
            continue
        items.append(item)
        vectors.append(v)
    if not items:
        raise results.ResultsError(f"{folder.dir} holds no readable arrays; run the extraction first")
    x = np.stack(vectors)
    sources = [i.source for i in items]
    labels = read_labels(labels_csv) if labels_csv else None
    groups = [group_of(i.output, s, labels) for i, s in zip(items, sources)]
    if labels is not None and NO_LABEL in groups:
        log(f"{groups.count(NO_LABEL)} of {len(groups)} files have no label in {labels_csv} (drawn grey)")
    coords, axis_labels = embed_2d(x, method)
    pooled = "mean over time, " if any(i.time_axis is not None for i in items) else ""
    name = {"pca": "PCA", "tsne": "t-SNE", "umap": "UMAP"}[method]
    title = f"{model}: {name} of {len(items)} files ({pooled}{x.shape[1]} dims)"
    names = [PurePosixPath(s).name for s in sources]
    fig = plot_map(coords, groups, axis_labels, title, names, width, height, dpi)
    out = Path(out_dir) if out_dir else base / "plots"
    png = save_png(fig, out / f"map-{model}-{method}.png")
    buf = io.StringIO()
    w = csv.writer(buf)
    w.writerow(["path", "source", "group", "x", "y"])
    for i, s, g, (cx, cy) in zip(items, sources, groups, coords):
        w.writerow([str(i.output), s, g, f"{cx:.9g}", f"{cy:.9g}"])
    # a file name that is not UTF-8 is written as its bytes (what the file system holds)
    outputs.atomic_write_bytes(png.with_suffix(".csv"), buf.getvalue().encode("utf-8", "surrogateescape"))
    log(f"{model}: map of {len(items)} files -> {png}")
    return png, coords, groups


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(
        prog="plot", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    sub = ap.add_subparsers(dest="command", required=True)
    f = sub.add_parser(
        "files", help="one PNG per input file: waveform, pitch, beats, embeddings on one time axis"
    )
    f.add_argument("output_base", help="a run's --output_base")
    f.add_argument("--audio_dir", help="the run's input folder (adds the waveform panel)")
    f.add_argument("--models", nargs="+", help="model folders to show (default: every one with a time axis)")
    f.add_argument(
        "--files",
        nargs="+",
        metavar="PATTERN",
        help="only files whose source or output path matches a glob, e.g. 'live/*'",
    )
    f.add_argument("--limit", type=int, help="at most this many files")
    f.add_argument("--width", type=float, default=DEFAULT_WIDTH, help=f"inches (default {DEFAULT_WIDTH})")
    f.add_argument("--dpi", type=int, default=DEFAULT_DPI, help=f"pixels per inch (default {DEFAULT_DPI})")
    f.add_argument(
        "--layer", type=int, default=-1, help="layer shown for (layer, time, dim) outputs (default -1)"
    )
    f.add_argument("--out", help="folder for the PNGs (default <output_base>/plots)")
    f.add_argument("--overwrite", action="store_true", help="redraw PNGs that are up to date")
    f.add_argument(
        "--min_confidence",
        type=float,
        default=PITCH_MIN_CONFIDENCE,
        help=f"CREPE: draw f0 only where confidence >= this (default {PITCH_MIN_CONFIDENCE})",
    )
    m = sub.add_parser("map", help="2-D map of a collection (PCA; t-SNE/UMAP when installed)")
    m.add_argument("output_base", help="a run's --output_base")
    m.add_argument("--model", required=True, help="model folder whose (pooled) arrays are mapped")
    m.add_argument(
        "--labels", help="CSV of path,label (path: the source or output path relative to its folder)"
    )
    m.add_argument("--method", choices=["pca", "tsne", "umap"], default="pca")
    m.add_argument(
        "--layer", type=int, default=-1, help="layer used for outputs with a layer axis (default -1)"
    )
    m.add_argument("--width", type=float, default=7.0)
    m.add_argument("--height", type=float, default=6.0)
    m.add_argument("--dpi", type=int, default=DEFAULT_DPI)
    m.add_argument("--out", help="folder for the PNG and CSV (default <output_base>/plots)")
    return ap.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        if args.command == "files":
            _, errors = plot_files(
                args.output_base,
                _audio_dir(Path(args.output_base), args.audio_dir),
                args.models,
                args.out,
                args.files,
                args.limit,
                args.width,
                args.dpi,
                args.layer,
                args.overwrite,
                min_confidence=args.min_confidence,
            )
            return 1 if errors else 0
        errors = []
        map_collection(
            args.output_base,
            args.model,
            args.labels,
            args.method,
            args.layer,
            args.out,
            args.width,
            args.height,
            args.dpi,
            errors=errors,
        )
        return 1 if errors else 0
    except results.ResultsError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
