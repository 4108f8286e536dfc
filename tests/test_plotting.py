"""plotting.py: per-file figures and collection maps from known arrays (sizes, axes, data drawn)."""

from __future__ import annotations

import csv
import struct
from pathlib import Path

import numpy as np
import pytest
from scipy.spatial.distance import cdist

from embedkit import export, plotting, results
from embedkit.extractors.base import OutputSpec
from tests.conftest import click_track, run_cli, tone, write_wav
from tests.synthetic_results import write_model

SECONDS = 2.0


def png_size(path: Path) -> tuple[int, int]:
    """(width, height) in pixels from the PNG's IHDR chunk."""
    head = path.read_bytes()[:24]
    assert head[:8] == b"\x89PNG\r\n\x1a\n", f"{path} is not a PNG"
    return struct.unpack(">II", head[16:24])


def main_axes(fig) -> list:
    return [ax for ax in fig.axes if not ax.get_label().startswith("colorbar:")]


@pytest.fixture()
def study(tmp_path):
    """One 2 s file seen by a CREPE-like, a madmom-like and an embedding model, plus its audio."""
    audio = tmp_path / "audio"
    write_wav(audio / "a" / "x.wav", tone(220.0, SECONDS, 16000), 16000)
    out = tmp_path / "out"
    t = np.arange(201) * 0.01
    f0 = np.where(t < 1.0, 220.0, 330.0).astype(np.float32)
    f0[:3] = 0.0  # unvoiced frames (f0 0) are not drawn
    conf = np.linspace(0, 1, 201).astype(np.float32)
    crepe = np.stack([f0, conf], axis=1)
    write_model(
        out,
        "crepe",
        {"a/x.npy": crepe},
        OutputSpec(axes=("time", "column"), hop_seconds=0.01, columns=("f0_hz", "confidence")),
        sources={"a/x.npy": "a/x.wav"},
        seconds={"a/x.npy": SECONDS},
    )
    act = np.abs(np.sin(np.arange(200) * np.pi / 50)).astype(np.float32)
    beats = np.array([0.5, 1.0, 1.5])
    write_model(
        out,
        "madmom",
        {"a/x.npy": act},
        OutputSpec(axes=("time",), hop_seconds=0.01, extras=("beats",)),
        extras={"beats": {"a/x.npy": beats}},
        seconds={"a/x.npy": SECONDS},
    )
    emb = np.random.default_rng(0).standard_normal((20, 8)).astype(np.float32)
    write_model(
        out,
        "emb",
        {"a/x.npy": emb},
        OutputSpec(axes=("time", "dim"), hop_seconds=0.1, first_frame_seconds=0.05),
        seconds={"a/x.npy": SECONDS},
    )
    return out, audio, {"crepe": crepe, "act": act, "beats": beats, "emb": emb}


def test_file_figure_png_size_and_one_time_axis(study):
    out, audio, _ = study
    assert plotting.main(["files", str(out), "--audio_dir", str(audio), "--width", "8", "--dpi", "50"]) == 0
    png = out / "plots" / "a" / "x.png"
    height = plotting.TITLE_HEIGHT + sum(
        plotting.PANEL_HEIGHTS[k] for k in ("waveform", "pitch", "beats", "heatmap", "ssm")
    )
    assert png_size(png) == (400, round(height * 50))
    # kept when nothing changed, redrawn on request
    before = png.stat().st_mtime_ns
    assert plotting.main(["files", str(out), "--audio_dir", str(audio), "--width", "8", "--dpi", "50"]) == 0
    assert png.stat().st_mtime_ns == before
    assert plotting.main(["files", str(out), "--width", "8", "--dpi", "50", "--overwrite"]) == 0
    assert png_size(png) == (400, round((height - plotting.PANEL_HEIGHTS["waveform"]) * 50))
    assert [p.name for p in png.parent.iterdir()] == ["x.png"]  # no temporary left


def test_file_figure_draws_the_arrays_on_their_times(study):
    out, audio, known = study
    from embedkit import audio_io

    models = [results.ModelFolder.open(out, m) for m in ("crepe", "madmom", "emb")]
    decoded = audio_io.load(audio / "a" / "x.wav")
    items = [m.item("a/x.wav") for m in models]
    panels = plotting.panels_for_file(items, (decoded.audio, decoded.sample_rate))
    fig = plotting.plot_file(panels, SECONDS, title="a/x.wav")
    axes = main_axes(fig)
    assert [ax.get_label() for ax in axes] == [
        "waveform:audio",
        "pitch:crepe",
        "beats:madmom",
        "heatmap:emb",
        "ssm:emb",
    ]
    assert len(fig.axes) - len(axes) == 3  # colour bars: confidence, value, cosine
    for ax in axes:
        assert ax.get_xlim() == (0.0, SECONDS)
    assert axes[-1].get_xlabel() == "time (s)" and axes[1].get_ylabel() == "f0 (Hz)"
    # pitch: voiced frames (confidence >= 0.5) at their times, coloured by confidence
    crepe = known["crepe"]
    voiced = (crepe[:, 0] > 0) & (crepe[:, 1] >= plotting.PITCH_MIN_CONFIDENCE)
    assert 50 < voiced.sum() < 150
    sc = axes[1].collections[0]
    np.testing.assert_allclose(sc.get_offsets(), np.c_[np.arange(201)[voiced] * 0.01, crepe[voiced, 0]])
    np.testing.assert_array_equal(sc.get_array(), crepe[voiced, 1])
    # beats: one vertical line per DBN beat
    segments = axes[2].collections[0].get_segments()
    np.testing.assert_allclose([s[0][0] for s in segments], known["beats"])
    # heat map: dims x frames, frame i centred at 0.05 + 0.1 i
    emb = known["emb"]
    img = axes[3].get_images()[0]
    np.testing.assert_allclose(img.get_array(), emb.T, rtol=1e-6)
    np.testing.assert_allclose(img.get_extent()[:2], (0.0, 2.0))
    # self-similarity: cosine of every frame pair (scipy as the independent formula)
    ssm = axes[4].get_images()[0]
    np.testing.assert_allclose(ssm.get_array(), 1 - cdist(emb, emb, "cosine"), atol=1e-9)


def test_only_present_models_and_irregular_timestamps(tmp_path):
    """A video-like model: frame times from <model>.timestamps/, drawn on a mesh at those times."""
    emb = np.random.default_rng(1).standard_normal((5, 4)).astype(np.float32)
    times = np.array([0.0, 0.1, 0.15, 1.0, 2.5])
    write_model(
        tmp_path,
        "video",
        {"v.npy": emb},
        OutputSpec(axes=("time", "dim"), timestamps_file=True),
        extras={"timestamps": {"v.npy": times}},
        seconds={"v.npy": 3.0},
    )
    folder = results.ModelFolder.open(tmp_path, "video")
    np.testing.assert_array_equal(folder.item("v.npy").times(), times)
    with pytest.raises(results.ResultsError, match="5 times for 6 frames"):
        folder.item("v.npy").times(5 + 1)
    panels = plotting.panels_for_file([folder.item("v.npy")])
    assert [p.kind for p in panels] == ["heatmap", "ssm"]
    fig = plotting.plot_file(panels, 3.0)
    heat = main_axes(fig)[0]
    mesh = heat.collections[0]
    np.testing.assert_allclose(mesh.get_array().reshape(4, 5), emb.T, rtol=1e-6)
    assert heat.get_xlim() == (0.0, 3.0)
    # a source that cannot be decoded (moved, an image) loses only its waveform panel
    args = ["files", str(tmp_path), "--audio_dir", str(tmp_path / "moved"), "--dpi", "40", "--width", "5"]
    assert plotting.main(args) == 0
    height = plotting.TITLE_HEIGHT + plotting.PANEL_HEIGHTS["heatmap"] + plotting.PANEL_HEIGHTS["ssm"]
    assert png_size(tmp_path / "plots" / "v.png") == (200, round(height * 40))


def test_block_mean_and_cosine_ssm():
    x = np.arange(10, dtype=float)[:, None]
    y, t = plotting.block_mean(x, np.arange(10.0), 4)
    starts = np.linspace(0, 10, 5).astype(int)[:-1]
    np.testing.assert_allclose(y[:, 0], [x[a:b, 0].mean() for a, b in zip(starts, [*starts[1:], 10])])
    np.testing.assert_allclose(t, y[:, 0])
    s = plotting.cosine_ssm(np.array([[1.0, 0.0], [0.0, 2.0], [-3.0, 0.0], [0.0, 0.0]]))
    np.testing.assert_allclose(s, [[1, 0, -1, 0], [0, 1, 0, 0], [-1, 0, 1, 0], [0, 0, 0, 0]])


def test_pca_matches_the_projection_on_known_axes():
    """Points spread along two known orthonormal directions: PCA recovers the coordinates."""
    rng = np.random.default_rng(2)
    basis, _ = np.linalg.qr(rng.standard_normal((6, 6)))
    u1, u2 = basis[:, 0], basis[:, 1]
    a = rng.standard_normal(40)
    a = 3 * (a - a.mean()) / a.std()
    b = rng.standard_normal(40)
    b -= b.mean()
    b -= (a @ b) / (a @ a) * a  # uncorrelated with a
    b /= b.std()
    x = 5.0 + np.outer(a, u1) + np.outer(b, u2)
    coords, ratio = plotting.pca_2d(x)
    s1 = np.sign(u1[np.argmax(np.abs(u1))])
    s2 = np.sign(u2[np.argmax(np.abs(u2))])
    np.testing.assert_allclose(coords, np.c_[s1 * a, s2 * b], atol=1e-9)
    np.testing.assert_allclose(ratio, [0.9, 0.1], atol=1e-12)


def _pooled_collection(tmp_path):
    rng = np.random.default_rng(3)
    groups = {"jazz": 4.0, "rock": -4.0}
    arrays, sources = {}, {}
    for g, centre in groups.items():
        for i in range(3):
            arrays[f"{g}/s{i}.npy"] = (centre + 0.1 * rng.standard_normal(5)).astype(np.float32)
            sources[f"{g}/s{i}.npy"] = f"{g}/s{i}.flac"
    arrays["loose.npy"] = np.zeros(5, np.float32)
    write_model(tmp_path, "pooled", arrays, OutputSpec(axes=("dim",)), sources=sources)
    return arrays


def test_map_colours_by_sub_folder_and_writes_the_coordinates(tmp_path):
    arrays = _pooled_collection(tmp_path)
    png, coords, groups = plotting.map_collection(tmp_path, "pooled", width=5, height=4, dpi=40)
    assert png_size(png) == (200, 160)
    rels = sorted(arrays)
    assert groups == ["jazz"] * 3 + [plotting.TOP_LEVEL] + ["rock"] * 3
    np.testing.assert_allclose(coords, plotting.pca_2d(np.stack([arrays[r] for r in rels]))[0])
    with open(png.with_suffix(".csv"), newline="") as f:
        rows = list(csv.DictReader(f))
    assert [r["path"] for r in rows] == rels and [r["group"] for r in rows] == groups
    np.testing.assert_allclose([[float(r["x"]), float(r["y"])] for r in rows], coords, rtol=1e-8)


def test_map_labels_csv_sets_the_groups(tmp_path, monkeypatch):
    arrays = _pooled_collection(tmp_path)
    labels = tmp_path / "labels.csv"
    labels.write_text("path,label\njazz/s0.flac,swing\njazz/s1.flac,swing\nrock/s0,loud\nrock/s1.npy,loud\n")
    fig_calls = {}
    real = plotting.plot_map

    def spy(coords, groups, *args, **kw):
        fig_calls["fig"] = fig = real(coords, groups, *args, **kw)
        return fig

    monkeypatch.setattr(plotting, "plot_map", spy)
    _, coords, groups = plotting.map_collection(tmp_path, "pooled", labels_csv=labels, dpi=30)
    rels = sorted(arrays)
    expect = ["swing", "swing", plotting.NO_LABEL, plotting.NO_LABEL, "loud", "loud", plotting.NO_LABEL]
    assert groups == expect
    ax = fig_calls["fig"].axes[0]
    drawn = {c.get_label(): c.get_offsets() for c in ax.collections}
    assert list(drawn) == ["loud", "swing", plotting.NO_LABEL]  # legend order: labels, then the unlabelled
    for name, pts in drawn.items():
        idx = [i for i, g in enumerate(expect) if g == name]
        np.testing.assert_allclose(pts, coords[idx])
    assert [rels[i] for i, g in enumerate(expect) if g == "loud"] == ["rock/s0.npy", "rock/s1.npy"]


def test_map_pools_time_series_by_mean(tmp_path):
    rng = np.random.default_rng(4)
    arrays = {f"f{i}.npy": rng.standard_normal((3 + i, 2, 4)).astype(np.float32) for i in range(4)}
    write_model(
        tmp_path,
        "m",
        {k: np.moveaxis(v, 0, 1) for k, v in arrays.items()},
        OutputSpec(axes=("layer", "time", "dim"), hop_seconds=0.5),
    )
    folder = results.ModelFolder.open(tmp_path, "m")
    for k, v in arrays.items():
        np.testing.assert_allclose(
            plotting.file_vector(folder.axes, folder.load(k), layer=0), v[:, 0].mean(axis=0), rtol=1e-6
        )
    _, coords, _ = plotting.map_collection(tmp_path, "m", layer=-1, dpi=30)
    x = np.stack([arrays[k][:, -1].astype(np.float64).mean(axis=0) for k in sorted(arrays)])
    np.testing.assert_allclose(coords, plotting.pca_2d(x)[0], atol=1e-9)


@pytest.mark.slow
def test_tsne_when_installed(tmp_path):
    pytest.importorskip("sklearn")
    _pooled_collection(tmp_path)
    png, coords, _ = plotting.map_collection(tmp_path, "pooled", method="tsne", dpi=30)
    assert coords.shape == (7, 2) and np.isfinite(coords).all() and png.name == "map-pooled-tsne.png"


@pytest.fixture(scope="module")
def real_run(tmp_path_factory):
    """A real run (CREPE tiny, madmom with beats, log-mel) on two short files in two sub-folders."""
    root = tmp_path_factory.mktemp("real")
    audio = root / "audio"
    sr = 44100
    write_wav(audio / "tones" / "a440.wav", tone(440.0, 1.5, sr) + click_track(120, 1.5, sr), sr)
    write_wav(audio / "clicks" / "b.wav", click_track(100, 2.0, sr, seed=1), sr)
    config = root / "study.yaml"
    config.write_text(
        "recursive: true\nmodels:\n  crepe: {capacity: tiny}\n  madmom: {beats: true}\n"
        "  melspec: {n_mels: 32}\n"
    )
    proc = run_cli("--config", str(config), "--audio_dir", str(audio), "--output_base", str(root / "out"))
    assert proc.returncode == 0, proc.stderr[-2000:]
    return root / "out", audio


@pytest.mark.slow
def test_real_run_plots_and_exports(real_run):
    out, audio = real_run
    assert plotting.main(["files", str(out), "--audio_dir", str(audio), "--dpi", "40"]) == 0
    height = plotting.TITLE_HEIGHT + sum(
        plotting.PANEL_HEIGHTS[k] for k in ("waveform", "pitch", "beats", "heatmap", "ssm")
    )
    for rel in ("tones/a440.png", "clicks/b.png"):
        assert png_size(out / "plots" / rel) == (400, round(height * 40))
    models = [results.ModelFolder.open(out, m) for m in results.model_names(out)]
    panels = plotting.panels_for_file([m.item("clicks/b.wav") for m in models])
    fig = plotting.plot_file(panels, 2.0)
    assert [a.get_label() for a in main_axes(fig)] == [
        "pitch:crepe",
        "beats:madmom",
        "heatmap:melspec",
        "ssm:melspec",
    ]
    _, _, groups = plotting.map_collection(out, "melspec", dpi=30)
    assert groups == ["clicks", "tones"]
    assert export.main([str(out), "--format", "npz", "parquet"]) == 0
    for fmt in ("npz", "parquet"):
        e = export.load(out / "exports" / f"madmom.{fmt}")
        assert e.sources == ["clicks/b.wav", "tones/a440.wav"]
        for i, rel in enumerate(e.paths):
            np.testing.assert_array_equal(e[i], np.load(out / "madmom" / rel))
            np.testing.assert_array_equal(e.extra("beats", i), np.load(out / "madmom.beats" / rel))


def test_map_names_a_spread_sample_without_overlaps_and_warns_about_no_glyph(tmp_path):
    """Issue 22: the map's point names overlapped, and non-Latin names warned about missing glyphs."""
    import warnings

    from matplotlib.backends.backend_agg import FigureCanvasAgg

    rng = np.random.default_rng(5)
    coords = np.concatenate([rng.normal(0, 0.01, (150, 2)), rng.normal(5, 1.0, (50, 2))])
    names = [f"a rather long file name number {i}.wav" for i in range(200)]
    names[3], names[160], names[170] = "東京の雨.wav", "Ελληνικά.wav", "caf\udce9.wav"
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a missing glyph warns: the test fails
        fig = plotting.plot_map(coords, ["g"] * 200, ["x", "y"], names=names, dpi=50)
        FigureCanvasAgg(fig).draw()
    texts = fig.axes[0].texts
    assert 2 <= len(texts) <= plotting.MAX_MAP_LABELS
    renderer = fig.canvas.get_renderer()
    boxes = [t.get_window_extent(renderer) for t in texts]
    assert not any(a.overlaps(b) for i, a in enumerate(boxes) for b in boxes[i + 1:])
    # the sample spreads over the map: the sparse cluster gets names, not only the dense one
    drawn = {t.get_text() for t in texts}
    assert any(names.index(n) >= 150 for n in drawn if n in names)
    assert len(set(plotting.spread_sample(coords, 40))) == 40
    # each name is drawn in a font that has its glyphs; what no installed font has becomes "?"
    text, families = plotting.drawable_text("Ελληνικά.wav")
    assert text == "Ελληνικά.wav"  # the default font (DejaVu Sans) has Greek
    text, families = plotting.drawable_text("東京の雨.wav")
    fonts = dict(plotting._font_charmaps())
    has_cjk = any(ord("東") in cmap for cmap in fonts.values())
    assert text == ("東京の雨.wav" if has_cjk else "????.wav")
    assert plotting.drawable_text("caf\udce9.wav") == ("caf\\xe9.wav", None)
