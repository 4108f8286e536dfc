"""results.py, the one reader of a run's outputs: which arrays are current, what they are, and the
tools that read through it (index, export, plots) on folders a real user ends up with."""

from __future__ import annotations

import json

import numpy as np
import pytest

from embedkit import export, outputs, plotting, results, run_search, search
from embedkit.extractors.base import ConfigError, OutputSpec
from tests.synthetic_results import write_model

SPEC = OutputSpec(axes=("time", "dim"), hop_seconds=0.5, first_frame_seconds=0.25)


def record(base, **rec) -> None:
    outputs.append_jsonl(base / "manifest.jsonl", {"run": "test", "written": "now", **rec})


def frames(seed: int, n: int = 4, dim: int = 6) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal((n, dim)).astype(np.float32)


def no_traceback(capsys) -> str:
    err = capsys.readouterr().err
    assert "Traceback" not in err
    return err


def test_a_skipped_file_null_output_crashes_no_reader(tmp_path, capsys):
    """A video without sound, for an audio model: `"output": null` in the manifest (issue 22)."""
    write_model(tmp_path, "mel", {"a.npy": frames(0), "b.npy": frames(1)}, SPEC)
    record(tmp_path, model="mel", source="silent.mp4", output=None, skipped="no audio track in this video")
    assert [str(i.output) for i in results.Results(tmp_path)["mel"].items] == ["a.npy", "b.npy"]
    assert run_search.main(["index", "--output_base", str(tmp_path), "--model", "mel"]) == 0
    assert export.main([str(tmp_path)]) == 0
    assert plotting.main(["files", str(tmp_path), "--dpi", "20"]) == 0
    assert plotting.main(["map", str(tmp_path), "--model", "mel", "--dpi", "20"]) == 0
    no_traceback(capsys)
    assert len(export.load(tmp_path / "exports" / "mel.npz")) == 2


def test_an_output_whose_name_changed_is_stale_and_never_read_twice(tmp_path, capsys):
    """`--extensions .wav` wrote dup.npy; a run over all files wrote dup.wav.npy and dup.mp3.npy and left
    dup.npy behind (issue 22): the last record per (model, source) is current, dup.npy is stale."""
    old = frames(2)
    write_model(tmp_path, "mel", {"dup.npy": old, "x.npy": frames(3)}, SPEC)
    write_model(tmp_path, "mel", {"dup.wav.npy": old, "dup.mp3.npy": frames(4)}, SPEC,
                sources={"dup.wav.npy": "dup.wav", "dup.mp3.npy": "dup.mp3"})
    outputs.atomic_save_npy(tmp_path / "mel" / "lost.npy", frames(5))  # a kill lost its manifest line
    folder = results.Results(tmp_path)["mel"]
    assert [(str(i.output), i.source) for i in folder.items] == [
        ("dup.mp3.npy", "dup.mp3"), ("dup.wav.npy", "dup.wav"), ("x.npy", "x.wav")]
    assert [(str(e.output), e.reason) for e in folder.excluded] == [
        ("dup.npy", "stale"), ("lost.npy", "stale")]
    (note,) = folder.notes
    assert "2 stale array(s)" in note and "rerun the extraction" in note and "run_report.json" in note

    base = ["--output_base", str(tmp_path), "--model", "mel"]
    assert run_search.main(["index", *base]) == 0
    err = no_traceback(capsys)
    assert err.count("stale") == 1  # said once, in one line
    with search.Index.open(tmp_path / "mel" / ".search", "mel_file") as index:
        sources = sorted(rec["source"] for rec in index.files().values())
        hits = index.search(old.mean(axis=0), k=10)
    assert sources == ["dup.mp3", "dup.wav", "x.wav"]
    assert [h.path for h in hits].count("dup.wav") == 1
    assert export.main([str(tmp_path)]) == 0
    e = export.load(tmp_path / "exports" / "mel.npz")
    assert sorted(e.sources) == sources and len(e) == 3
    assert no_traceback(capsys).count("stale") == 1


def test_records_keep_unknown_fields_and_other_configurations_are_left_out(tmp_path):
    """The run adds `config` (a digest, also features.json's config_digest) and `input` to each line."""
    write_model(tmp_path, "mel", {"a.npy": frames(6), "b.npy": frames(7)}, SPEC)
    meta = json.loads((tmp_path / "mel" / "features.json").read_text())
    outputs.atomic_write_json(tmp_path / "mel" / "features.json", {**meta, "config_digest": "c0ffee" * 4})
    record(tmp_path, model="mel", source="a.wav", output="mel/a.npy", config="c0ffee" * 4,
           input={"size": 123, "mtime_ns": 456, "sha256": "ab"}, shape=[4, 6], future_field=[1, 2])
    record(tmp_path, model="mel", source="b.wav", output="mel/b.npy", config="beef" * 6)
    folder = results.ModelFolder.open(tmp_path, "mel")
    (item,) = folder.items
    assert item.record["input"] == {"size": 123, "mtime_ns": 456, "sha256": "ab"}
    assert item.record["future_field"] == [1, 2] and folder.config_digest == "c0ffee" * 4
    assert [(str(e.output), e.reason) for e in folder.excluded] == [("b.npy", "config")]
    assert "another configuration" in folder.notes[0] and "beef" in folder.notes[0]
    # a store refuses vectors of another configuration than its collection's
    info = search.collection_info(folder, "file")
    assert info.config_digest == "c0ffee" * 4
    with search.Index.open(tmp_path / "db", "mel", create=info, writer=True) as index:
        vec = np.ones((1, 6), np.float32) / np.sqrt(6)
        nan = np.array([np.nan])
        with pytest.raises(ConfigError, match="configuration beefbeefbeef"):
            index.add_many([({"output": "b.npy", "source": "b.wav", "config": "beef" * 6}, vec, nan, nan)])
        assert len(index) == 0


def test_item_times_spans_and_lookup(tmp_path):
    write_model(tmp_path, "mel", {"d/a.npy": frames(8, n=3)}, SPEC, sources={"d/a.npy": "d/a.flac"},
                seconds={"d/a.npy": 1.4})
    write_model(tmp_path, "beats", {"d/a.npy": np.zeros(5, np.float32)},
                OutputSpec(axes=("time",), hop_seconds=0.01, extras=("beats",)),
                extras={"beats": {"d/a.npy": np.array([0.1, 0.6])}}, sources={"d/a.npy": "d/a.flac"})
    run = results.Results(tmp_path)
    assert run.models == ["beats", "mel"] and [f.name for f in run] == ["beats", "mel"]
    item = run["mel"].item("d/a.flac")
    assert item is run["mel"].item("d/a.npy") and item.source == "d/a.flac" and item.kind == "audio"
    np.testing.assert_allclose(item.times(), [0.25, 0.75, 1.25])  # first_frame_seconds + i * hop
    np.testing.assert_allclose(item.spans(), [[0.0, 0.5], [0.5, 1.0], [1.0, 1.5]])
    assert item.duration_seconds == 1.4 and item.header() == ((3, 6), np.dtype("float32"))
    np.testing.assert_array_equal(run["beats"].item("d/a.flac").extra("beats"), [0.1, 0.6])
    with pytest.raises(results.ResultsError, match="no model folder 'nope'.*there: beats, mel"):
        run.model("nope")
    with pytest.raises(results.ResultsError, match="a name, not a path"):
        results.ModelFolder.open(tmp_path, "../mel")


@pytest.mark.parametrize("what", ["text", "pickle", "truncated"])
def test_a_damaged_array_is_named_with_what_it_holds(tmp_path, capsys, what):
    """Issue 23 item 15: index called a non-.npy file "pickled (object) data"; `map` did not name it."""
    write_model(tmp_path, "mel", {"a.npy": frames(9), "b.npy": frames(10), "bad.npy": frames(11)}, SPEC)
    bad = tmp_path / "mel" / "bad.npy"
    if what == "text":
        bad.write_text("these are not numbers\n")
    elif what == "pickle":
        np.save(bad, np.array([{"x": 1}, None], dtype=object), allow_pickle=True)
    else:
        bad.write_bytes(bad.read_bytes()[:-16])
    said = {"text": "is not a .npy array: it holds text", "pickle": "holds Python objects",
            "truncated": "is truncated"}[what]
    assert run_search.main(["index", "--output_base", str(tmp_path), "--model", "mel"]) == 1
    err = no_traceback(capsys)
    assert f"bad.npy {said}" in err and "pickled" not in err
    assert plotting.main(["map", str(tmp_path), "--model", "mel", "--dpi", "20"]) == 1
    out = capsys.readouterr()
    assert "left out bad.wav" in out.out and "bad.npy" in out.out and "map of 2 files" in out.out
    assert export.main([str(tmp_path)]) == 1
    assert "bad.npy" in no_traceback(capsys)
