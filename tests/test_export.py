"""export.py: every format round-trips the driver's arrays exactly; incremental; atomic."""

from __future__ import annotations

import csv
import json
import zipfile
from pathlib import Path

import numpy as np
import pytest

from embedkit import export, outputs
from embedkit.extractors.base import OutputSpec
from tests.synthetic_results import write_model

FORMATS = ["npz", "hdf5", "parquet"]
EXT = {"npz": ".npz", "hdf5": ".h5", "parquet": ".parquet"}


@pytest.fixture()
def base(tmp_path):
    """Two models in the driver's layout: a ragged time series with a beats extra, and a pooled one."""
    rng = np.random.default_rng(0)
    rels = ["a/one.npy", "a/two.npy", "b/three.npy", "top.wav.npy"]
    lengths = [5, 1, 9, 3]
    series = {r: rng.standard_normal((n, 3)).astype(np.float32) for r, n in zip(rels, lengths)}
    beats = {r: np.sort(rng.uniform(0, 2, size=k)).astype(np.float64) for r, k in zip(rels, [2, 0, 4, 1])}
    write_model(
        tmp_path,
        "series",
        series,
        OutputSpec(axes=("time", "dim"), hop_seconds=0.25, first_frame_seconds=0.5, extras=("beats",)),
        extras={"beats": beats},
        sources={"top.wav.npy": "top.wav"},
    )
    pooled = {r: rng.standard_normal(4).astype(np.float32) for r in rels}
    write_model(tmp_path, "pooled", pooled, OutputSpec(axes=("dim",)))
    return tmp_path, series, beats, pooled


@pytest.mark.parametrize("fmt", FORMATS)
def test_ragged_round_trip_every_format(base, fmt):
    out, series, beats, _ = base
    assert export.main([str(out), "--models", "series", "--format", fmt]) == 0
    path = out / "exports" / f"series{EXT[fmt]}"
    e = export.load(path)
    rels = sorted(series)
    assert e.paths == rels
    assert e.sources == ["a/one.wav", "a/two.wav", "b/three.wav", "top.wav"]
    assert e.metadata["layout"] == "ragged" and e.metadata["stored_axes"] == ["time", "dim"]
    assert e.metadata["features"]["hop_seconds"] == 0.25
    np.testing.assert_array_equal(e.offsets, np.cumsum([0] + [series[r].shape[0] for r in rels]))
    for i, r in enumerate(rels):
        assert e[i].dtype == np.float32
        np.testing.assert_array_equal(e[i], series[r])
        np.testing.assert_array_equal(e.extra("beats", i), beats[r])
        np.testing.assert_allclose(
            e.timestamps(i), 0.5 + 0.25 * np.arange(series[r].shape[0]), rtol=0, atol=1e-12
        )
    # the one-line loaders documented in the README, without the helper
    concat = np.concatenate([series[r] for r in rels])
    if fmt == "npz":
        z = np.load(path)
        np.testing.assert_array_equal(z["data"], concat)
        assert json.loads(str(z["metadata"]))["model"] == "series"
    elif fmt == "hdf5":
        import h5py

        with h5py.File(path) as f:
            np.testing.assert_array_equal(f["data"][:], concat)
            assert list(f["paths"].asstr()[:]) == rels
    else:
        import pyarrow.parquet as pq

        t = pq.read_table(path)
        assert t.column("path").to_pylist() == rels
        np.testing.assert_array_equal(
            np.array(t.column("data")[2].as_py(), dtype=np.float32), series[rels[2]]
        )


@pytest.mark.parametrize("fmt", FORMATS)
def test_pooled_is_stacked_and_gets_a_csv(base, fmt):
    out, _, _, pooled = base
    assert export.main([str(out), "--models", "pooled", "--format", fmt]) == 0
    e = export.load(out / "exports" / f"pooled{EXT[fmt]}")
    rels = sorted(pooled)
    assert e.offsets is None and e.data.shape == (4, 4) and e.metadata["stored_axes"] == ["file", "dim"]
    np.testing.assert_array_equal(e.data, np.stack([pooled[r] for r in rels]))
    assert e.timestamps(0) is None
    with open(out / "exports" / "pooled.csv", newline="") as f:
        rows = list(csv.reader(f))
    assert rows[0] == ["path", "source", "dim_0", "dim_1", "dim_2", "dim_3"]
    assert [r[0] for r in rows[1:]] == rels
    # %.9g round-trips float32 exactly
    np.testing.assert_array_equal(np.array([r[2:] for r in rows[1:]], dtype=np.float32), e.data)
    assert json.loads((out / "exports" / "pooled.csv.json").read_text())["model"] == "pooled"


def test_layer_axis_is_kept_and_time_moved_first(tmp_path):
    """(layer, time, dim) arrays (MERT layers: all): ragged along time, stored (time, layer, dim)."""
    rng = np.random.default_rng(1)
    arrays = {f"f{i}.npy": rng.standard_normal((3, n, 2)).astype(np.float32) for i, n in enumerate([4, 7])}
    write_model(tmp_path, "mert", arrays, OutputSpec(axes=("layer", "time", "dim"), hop_seconds=1 / 75))
    for fmt in FORMATS:
        assert export.main([str(tmp_path / "mert"), "--format", fmt, "--out", str(tmp_path / "x")]) == 0
        e = export.load(tmp_path / "x" / f"mert{EXT[fmt]}")
        assert e.metadata["stored_axes"] == ["time", "layer", "dim"]
        for i, r in enumerate(sorted(arrays)):
            np.testing.assert_array_equal(e[i], np.moveaxis(arrays[r], 1, 0))
            assert e.timestamps(i).shape == (arrays[r].shape[1],)


def test_per_file_timestamps_travel_with_the_data(tmp_path):
    """An irregular time axis (video frames): times come from <model>.timestamps/, not a formula."""
    arrays = {"v.npy": np.arange(8, dtype=np.float32).reshape(4, 2), "w.npy": np.ones((2, 2), np.float32)}
    times = {"v.npy": np.array([0.0, 0.04, 0.5, 0.51]), "w.npy": np.array([1.0, 3.0])}
    write_model(
        tmp_path,
        "video",
        arrays,
        OutputSpec(axes=("time", "dim"), timestamps_file=True),
        extras={"timestamps": times},
    )
    for fmt in FORMATS:
        assert export.main([str(tmp_path), "--format", fmt]) == 0
        e = export.load(tmp_path / "exports" / f"video{EXT[fmt]}")
        assert e.metadata["timestamps"]["rule"] == "file" and e.extras == {}
        for i, r in enumerate(sorted(arrays)):
            np.testing.assert_array_equal(e.timestamps(i), times[r])


def test_stacked_layout_needs_equal_shapes(base, capsys):
    out, *_ = base
    assert export.main([str(out), "--models", "series", "--layout", "stacked"]) == 1
    assert "--layout ragged" in capsys.readouterr().err


def test_incremental_keeps_an_unchanged_export_and_rebuilds_on_a_new_output(base):
    out, series, beats, _ = base
    args = [str(out), "--models", "series", "--format", "npz", "parquet"]
    assert export.main(args) == 0
    files = [out / "exports" / "series.npz", out / "exports" / "series.parquet"]
    before = [(p.stat().st_ino, p.stat().st_mtime_ns) for p in files]
    assert export.main(args) == 0
    assert [(p.stat().st_ino, p.stat().st_mtime_ns) for p in files] == before  # not rewritten
    new = np.full((2, 3), 7.0, np.float32)
    write_model(
        out,
        "series",
        {**series, "c/four.npy": new},
        OutputSpec(axes=("time", "dim"), hop_seconds=0.25, first_frame_seconds=0.5, extras=("beats",)),
        extras={"beats": {**beats, "c/four.npy": np.array([0.1])}},
    )
    assert export.main(args) == 0
    for p in files:
        e = export.load(p)
        assert len(e) == 5 and "c/four.npy" in e.paths
        np.testing.assert_array_equal(e[e.paths.index("c/four.npy")], new)
    assert export.main([*args, "--force"]) == 0
    assert files[0].stat().st_ino != before[0][0]


def test_a_failure_leaves_the_previous_export_intact(base, monkeypatch):
    out, *_ = base
    assert export.main([str(out), "--models", "series"]) == 0
    target = out / "exports" / "series.npz"
    old = target.read_bytes()
    for folder, a in (("series", np.zeros((2, 3), np.float32)), ("series.beats", np.zeros(1))):
        (out / folder / "c").mkdir()
        np.save(out / folder / "c" / "new.npy", a)  # a new output: the export must be rebuilt
    outputs.append_jsonl(out / "manifest.jsonl",
                         {"model": "series", "source": "c/new.wav", "output": "series/c/new.npy"})
    calls = {"n": 0}
    real = export._load_npy

    def failing(path: Path) -> np.ndarray:
        calls["n"] += 1
        if calls["n"] == 3:
            raise OSError(28, "No space left on device")
        return real(path)

    monkeypatch.setattr(export, "_load_npy", failing)
    assert export.main([str(out), "--models", "series"]) == 1
    assert target.read_bytes() == old
    assert sorted(p.name for p in target.parent.iterdir()) == ["series.npz"]  # no temporary left
    with zipfile.ZipFile(target) as zf:
        assert zf.testzip() is None


def test_truncated_input_is_named(base, capsys):
    out, *_ = base
    p = out / "series" / "a" / "one.npy"
    p.write_bytes(p.read_bytes()[:20])
    assert export.main([str(out), "--models", "series"]) == 1
    assert "one.npy" in capsys.readouterr().err
    assert not (out / "exports" / "series.npz").exists()


def test_a_name_that_is_not_utf8_keeps_its_bytes_in_every_format(tmp_path):
    """Issue 23 item 8: export to hdf5 and parquet crashed on one non-UTF-8 file name."""
    import os

    name = os.fsdecode(b"caf\xe9")
    pooled = {f"{name}.npy": np.arange(4, dtype=np.float32), "plain.npy": np.ones(4, np.float32)}
    write_model(tmp_path, "pooled", pooled, OutputSpec(axes=("dim",)),
                sources={f"{name}.npy": f"{name}.wav", "plain.npy": "plain.wav"})
    assert export.main([str(tmp_path), "--format", *FORMATS]) == 0
    for fmt in FORMATS:
        e = export.load(tmp_path / "exports" / f"pooled{EXT[fmt]}")
        assert e.paths == sorted(pooled) and e.sources == [f"{name}.wav", "plain.wav"]  # exact names back
        assert e.metadata["names"].startswith("bytes")
        np.testing.assert_array_equal(e.data, np.stack([pooled[r] for r in sorted(pooled)]))
    import h5py

    with h5py.File(tmp_path / "exports" / "pooled.h5") as f:  # the documented one-line read
        assert list(f["sources"].asstr(errors="surrogateescape")[:]) == [f"{name}.wav", "plain.wav"]
    rows = (tmp_path / "exports" / "pooled.csv").read_bytes().splitlines()
    assert rows[1].startswith(b"caf\xe9.npy,caf\xe9.wav,0,1,2,3") and rows[2].startswith(b"plain.npy")
