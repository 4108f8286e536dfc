"""Search: reading model folders, the embedded store, incremental and kill-safe indexing, bad input.

Model folders here are written the way the driver writes them (features.json, arrays,
manifest.jsonl) with vectors whose neighbours are known by construction, so every result is
checked against numpy's exact answer. PostgreSQL tests are in test_search_pg.py, the voice case
study in test_search_voices.py.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from conftest import ROOT

from embedkit import outputs, results, run_search, search
from embedkit.extractors.base import OutputSpec
from tests.synthetic_results import write_model

DIM = 16


def unit(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x, np.float64)
    return (x / np.linalg.norm(x, axis=-1, keepdims=True)).astype(np.float32)


def write_model_folder(
    base: Path,
    arrays: dict[str, np.ndarray],
    alias: str = "emb",
    axes=("time", "dim"),
    hop: float | None = 0.1,
    params: dict | None = None,
    extractor: str = "melspec",
) -> Path:
    """A model folder as run_extraction.py leaves it: features.json, <alias>/<rel>.npy, manifest lines."""
    meta = {
        "extractor": extractor,
        "output_folder": alias,
        "axes": list(axes),
        "dtype": "float32",
        "hop_seconds": hop if "time" in axes else None,
        "first_frame_seconds": 0.0,
        "columns": None,
        "params": params or {"n_mels": DIM},
        "weights_setting": None,
        "provenance": {},
    }
    outputs.atomic_write_json(base / alias / "features.json", meta)
    for source, data in arrays.items():
        rel_out = Path(source).with_suffix(".npy")
        outputs.atomic_save_npy(base / alias / rel_out, data.astype(np.float32))
        outputs.append_jsonl(
            base / "manifest.jsonl",
            {
                "run": "test",
                "model": alias,
                "source": source,
                "output": f"{alias}/{rel_out.as_posix()}",
                "shape": list(data.shape),
                "dtype": "float32",
                "audio_seconds": len(data) * (hop or 0.0),
            },
        )
    return base / alias


def clustered(n_files: int, frames: int = 5, seed: int = 0, n_clusters: int = 4):
    """Files whose frames scatter around one of `n_clusters` centres: (arrays, cluster of each file)."""
    rng = np.random.default_rng(seed)
    centres = unit(rng.standard_normal((n_clusters, DIM)))
    arrays, label = {}, {}
    for i in range(n_files):
        c = i % n_clusters
        arrays[f"d{c}/f{i:03d}.wav"] = (centres[c] + 0.35 * rng.standard_normal((frames, DIM))).astype(
            np.float32
        )
        label[f"d{c}/f{i:03d}.wav"] = c
    return arrays, label


def exact_top(arrays: dict[str, np.ndarray], q: np.ndarray, k: int) -> list[str]:
    names = sorted(arrays)
    mat = unit(np.array([a.astype(np.float64).mean(axis=0) for a in (arrays[n] for n in names)]))
    scores = mat @ unit(q)
    return [names[i] for i in np.argsort(-scores, kind="stable")[:k]]


def cli(*args: str, capsys=None) -> tuple[int, str, str]:
    code = run_search.main(list(args))
    out, err = capsys.readouterr() if capsys else ("", "")
    return code, out, err


# -- turning arrays into vectors ---------------------------------------------------------------------
def test_file_vector_is_normalised_time_mean():
    data = np.array([[1, 0, 0], [0, 2, 0], [0, 0, 4]], np.float32)
    v, _, _ = search.vectors_from_array(data, ["time", "dim"], "file")
    assert np.allclose(v[0], np.array([1, 2, 4]) / np.sqrt(21), atol=1e-7)
    pooled, _, _ = search.vectors_from_array(np.array([3.0, 4.0]), ["dim"], "file")
    assert np.allclose(pooled, [[0.6, 0.8]])


def test_segment_windows_and_frame_spans():
    hop = 0.1
    data = np.arange(25 * 2, dtype=np.float32).reshape(25, 2) + 1

    def spans(n):
        c = np.arange(n) * hop
        return np.stack([np.maximum(c - hop / 2, 0), c + hop / 2], 1)

    v, s, e = search.vectors_from_array(data, ["time", "dim"], "segment", 0.0, spans)
    assert v.shape == (25, 2) and np.allclose(s[:3], [0, 0.05, 0.15]) and np.allclose(e[:2], [0.05, 0.15])
    v, s, e = search.vectors_from_array(data, ["time", "dim"], "segment", 1.0, spans)
    # frames start in [0, 1) for i = 0..10 (frame 10 starts at 0.95), then 11..20, then 21..24
    assert np.allclose(s, [0, 1, 2]) and np.allclose(e, [1, 2, 2.45])
    assert np.allclose(v[0], unit(data[:11].mean(0))) and np.allclose(v[2], unit(data[21:].mean(0)))


def test_nan_and_zero_rows_are_refused():
    with pytest.raises(search.SearchError, match="NaN"):
        search.vectors_from_array(np.array([[1, np.nan], [1, 1]]), ["time", "dim"], "file")
    with pytest.raises(search.SearchError, match="all-zero"):
        search.vectors_from_array(np.zeros((3, 4)), ["time", "dim"], "file")


# -- the Index object ---------------------------------------------------------------------------------------
def test_index_add_search_remove_matches_numpy(tmp_path):
    rng = np.random.default_rng(1)
    vecs = {f"x{i}.wav": rng.standard_normal(DIM) for i in range(300)}
    info = search.CollectionInfo("emb", "file", 0.0, {"extractor": "none"})
    with search.Index.open(tmp_path, "api", create=info) as index:
        names = sorted(vecs)
        index.add_many(
            [
                ({"output": n, "source": n}, unit(vecs[n])[None], np.full(1, np.nan), np.full(1, np.nan))
                for n in names[:230]
            ]
        )
        for path in names[230:]:  # one segment each, folded together past 64 segments
            index.add(path, vecs[path])
        assert len(index) == 300
        assert len(list((tmp_path / "api/segments").glob("*.ids.npy"))) < 64
        index.remove(["x0.wav", "x1.wav"])
        index.add("x2.wav", -vecs["x2.wav"])  # replaced, not duplicated
        assert len(index) == 298
        live = {p: v for p, v in vecs.items() if p not in ("x0.wav", "x1.wav")}
        live["x2.wav"] = -vecs["x2.wav"]
        names = sorted(live)
        mat = unit(np.array([live[n] for n in names]))
        for q in rng.standard_normal((20, DIM)):
            hits = index.search(q, k=7)
            scores = mat @ unit(q)
            assert [h.path for h in hits] == [names[i] for i in np.argsort(-scores, kind="stable")[:7]]
            assert np.allclose([h.score for h in hits], np.sort(scores)[::-1][:7], atol=1e-5)


def test_ann_with_delta_and_removals_agrees_with_exact(tmp_path):
    """Above the threshold an HNSW index answers; vectors added after it and removals still count."""
    arrays, _ = clustered(600, frames=1, seed=2, n_clusters=30)
    info = search.CollectionInfo("emb", "file", 0.0, {"extractor": "none"})
    with search.Index.open(tmp_path, "ann", create=info, writer=True, ann_threshold=400) as index:
        names = sorted(arrays)
        index.add_many(
            [
                ({"output": n, "source": n}, unit(arrays[n]), np.full(1, np.nan), np.full(1, np.nan))
                for n in names[:500]
            ]
        )
        assert "HNSW" in index.optimize()
        assert list(tmp_path.glob("ann/ann-*.faiss"))
        for n in names[500:]:  # the delta: not in the HNSW graph
            index.add(n, arrays[n][0])
        gone = names[:50]
        index.remove(gone)
        segs = index.store.db.execute("SELECT seg_id, name, n, dead FROM segments").fetchall()
        index.store._merge(segs)  # removed rows leave the segments but stay out of HNSW answers
        live = {n: arrays[n] for n in names if n not in gone}
        rng = np.random.default_rng(3)
        agree = 0
        for q in rng.standard_normal((30, DIM)):
            ann = [h.path for h in index.search(q, k=10, ef=200)]
            exact = [h.path for h in index.search(q, k=10, exact=True)]
            assert exact == exact_top(live, q, 10)
            assert not set(ann) & set(gone)
            agree += len(set(ann) & set(exact))
        assert agree / 300 >= 0.95  # recall@10 of the HNSW path on this small set


# -- indexing a model folder ------------------------------------------------------------------------
def test_incremental_index_adds_changes_and_removes(tmp_path, capsys):
    arrays, _ = clustered(40)
    write_model_folder(tmp_path / "out", arrays)
    args = ["index", "--output_base", str(tmp_path / "out"), "--model", "emb"]
    code, out, _ = cli(*args, capsys=capsys)
    assert code == 0 and "40 outputs indexed (40 vectors)" in out
    assert (tmp_path / "out/emb/.search/emb_file/index.sqlite").is_file()
    code, out, _ = cli(*args, capsys=capsys)
    assert code == 0 and "0 outputs indexed" in out and "40 unchanged" in out
    # one output rewritten with other data, one deleted, one new
    changed = "d1/f001.wav"
    new = np.tile(-arrays[changed].mean(0), (3, 1))
    outputs.atomic_save_npy(tmp_path / "out/emb/d1/f001.npy", new)
    os.unlink(tmp_path / "out/emb/d2/f002.npy")
    write_model_folder(tmp_path / "out", {"new/n.wav": arrays["d0/f000.wav"] * 2})
    code, out, _ = cli(*args, capsys=capsys)
    assert (
        code == 0 and "2 outputs indexed" in out and "1 removed" in out and "40 vectors in the index" in out
    )
    arrays[changed] = new
    arrays["new/n.wav"] = arrays["d0/f000.wav"] * 2
    del arrays["d2/f002.wav"]
    code, out, _ = cli(
        "query",
        "--like",
        "d0/f000.wav",
        "--output_base",
        str(tmp_path / "out"),
        "--model",
        "emb",
        "--top",
        "5",
        "--json",
        capsys=capsys,
    )
    assert code == 0
    res = json.loads(out.strip())
    want = [p for p in exact_top(arrays, arrays["d0/f000.wav"].mean(0), 6) if p != "d0/f000.wav"][:5]
    assert res["query"] == "d0/f000.wav" and [r["path"] for r in res["results"]] == want
    assert res["results"][0]["path"] == "new/n.wav" and res["results"][0]["score"] == pytest.approx(
        1.0, abs=1e-5
    )


def test_segment_level_finds_the_moment(tmp_path, capsys):
    rng = np.random.default_rng(4)
    arrays = {f"long{i}.wav": rng.standard_normal((100, DIM)).astype(np.float32) for i in range(5)}
    motif = unit(rng.standard_normal(DIM))
    arrays["long3.wav"][42:47] = motif * 5 + 0.05 * rng.standard_normal((5, DIM))  # frames at 4.2-4.6 s
    write_model_folder(tmp_path / "out", arrays)
    base = ["--output_base", str(tmp_path / "out"), "--model", "emb", "--level", "segment"]
    assert cli("index", *base, capsys=capsys)[0] == 0
    info = search.collection_info(results.ModelFolder.open(tmp_path / "out", "emb"), "segment")
    with search.Index.open(tmp_path / "out/emb/.search", "emb_segment", create=info) as index:
        hits = index.search(motif, k=5)
    assert len(hits) == 5 and all(h.path == "long3.wav" for h in hits)
    assert sorted(round(h.start, 3) for h in hits) == [4.15, 4.25, 4.35, 4.45, 4.55]
    assert all(h.end - h.start == pytest.approx(0.1) for h in hits)
    # 1 s windows: the window holding the motif wins
    assert cli("index", *base, "--window", "1", capsys=capsys)[0] == 0
    with search.Index.open(tmp_path / "out/emb/.search", "emb_segment_1s") as index:
        top = index.search(motif, k=1)[0]
    assert (top.path, top.start, top.end) == ("long3.wav", 4.0, 5.0)


def test_frames_with_stored_times_span_to_the_next_frame(tmp_path):
    """An irregular time axis as the run writes it (`<model>.timestamps/<rel>.npy`, presentation times):
    each frame spans from its time to the next frame's, the last one as long as the one before."""
    frames = np.eye(DIM, dtype=np.float32)[:4]
    write_model(tmp_path / "out", "vid", {"v.npy": frames},
                OutputSpec(axes=("time", "dim"), timestamps_file=True),
                extras={"timestamps": {"v.npy": np.array([0.0, 1.0, 3.0, 7.0])}}, sources={"v.npy": "v.mp4"})
    folder = results.ModelFolder.open(tmp_path / "out", "vid")
    assert [str(i.output) for i in folder.items] == ["v.npy"]  # the timestamps folder holds no outputs
    with search.Index.open(tmp_path / "db", "seg", create=search.collection_info(folder, "segment"),
                           writer=True) as index:
        search.build_index(folder, index)
        hits = [index.search(np.eye(DIM)[i], k=1)[0] for i in range(4)]
    assert [(h.path, h.start, h.end) for h in hits] == [
        ("v.mp4", 0.0, 1.0), ("v.mp4", 1.0, 3.0), ("v.mp4", 3.0, 7.0), ("v.mp4", 7.0, 11.0)]


# -- kill safety ----------------------------------------------------------------------------------
def _snapshot(db: Path, name: str) -> list[tuple]:
    with search.Index.open(db, name) as index:
        files = index.files()
        rows = []
        for out in sorted(files):
            _, vecs, starts, ends = index.vectors_of(out)
            rows.append(
                (
                    out,
                    files[out]["source"],
                    files[out]["sha256"],
                    vecs.round(6).tobytes(),
                    starts.tobytes(),
                    ends.tobytes(),
                )
            )
        assert len(index) == sum(files[o]["n"] for o in files)  # no duplicated or orphaned vectors
    return rows


@pytest.mark.slow
def test_killed_index_run_finishes_on_rerun_without_duplicates(tmp_path):
    arrays, _ = clustered(60, frames=20, seed=5)
    write_model_folder(tmp_path / "out", arrays)
    cmd = [
        sys.executable,
        str(ROOT / "run_search.py"),
        "index",
        "--output_base",
        str(tmp_path / "out"),
        "--model",
        "emb",
        "--level",
        "segment",
        "--commit_every",
        "2",
        "--ann_threshold",
        "600",
    ]
    clean = subprocess.run(
        [*cmd, "--db", str(tmp_path / "clean")], capture_output=True, text=True, timeout=120
    )
    assert clean.returncode == 0, clean.stderr
    for kill_after in (1, 21):  # batches committed before the kill (of 30)
        db = tmp_path / f"killed{kill_after}"
        proc = subprocess.Popen(
            [*cmd, "--db", str(db)],
            stdout=subprocess.PIPE,
            text=True,
            env={**os.environ, "PYTHONUNBUFFERED": "1"},
        )
        for line in proc.stdout:
            if line.startswith(f"indexed {kill_after * 2} of"):
                proc.send_signal(signal.SIGKILL)
                break
        proc.wait(timeout=60)
        assert proc.returncode == -signal.SIGKILL
        rerun = subprocess.run([*cmd, "--db", str(db)], capture_output=True, text=True, timeout=120)
        assert rerun.returncode == 0, rerun.stderr
        redone = int(rerun.stdout.split(" outputs indexed")[0].rsplit(" ", 1)[-1])
        # only what was not committed is redone (the killed run may have committed one more batch)
        assert redone in (60 - kill_after * 2, 60 - kill_after * 2 - 2), rerun.stdout
        assert _snapshot(db, "emb_segment") == _snapshot(tmp_path / "clean", "emb_segment")
        segs = {p.name.split(".")[0] for p in (db / "emb_segment/segments").iterdir()}
        with search.Index.open(db, "emb_segment") as index:
            named = {r[0] for r in index.store.db.execute("SELECT name FROM segments")}
            assert segs == named  # no orphan files left behind
            # the HNSW index (1200 vectors >= 600) answers a query from the collection
            assert len(list((db / "emb_segment").glob("ann-*.faiss"))) == 1
            q = arrays["d1/f005.wav"][3]
            assert index.search(q, k=1)[0].path == "d1/f005.wav"


# -- bad input -----------------------------------------------------------------------------------------
def test_bad_inputs_are_clear_messages(tmp_path, capsys):
    base = tmp_path / "out"
    # no model folder at all
    code, _, err = cli("index", "--output_base", str(base), "--model", "emb", capsys=capsys)
    assert code == 2 and "run_extraction.py --models emb" in err
    # a model folder without outputs
    write_model_folder(base, {})
    code, _, err = cli("index", "--output_base", str(base), "--model", "emb", capsys=capsys)
    assert code == 2 and "holds no current outputs" in err
    # mixed dimensions: nothing is indexed
    write_model_folder(base, {"a.wav": np.ones((3, DIM)), "b.wav": np.ones((3, DIM + 1))})
    code, _, err = cli("index", "--output_base", str(base), "--model", "emb", capsys=capsys)
    assert code == 2 and "mixes vector lengths" in err and "Traceback" not in err
    assert not (base / "emb/.search/emb_file/segments").exists() or not any(
        (base / "emb/.search/emb_file/segments").iterdir()
    )
    os.unlink(base / "emb/b.npy")
    # NaN rows: that output fails, the others are indexed
    arr = np.ones((4, DIM), np.float32)
    arr[2, 3] = np.nan
    write_model_folder(base, {"nan.wav": arr})
    code, out, err = cli("index", "--output_base", str(base), "--model", "emb", capsys=capsys)
    assert code == 1 and "nan.npy: 1 of 4 frames hold NaN/Inf" in err and "1 outputs indexed" in out
    # the index refuses a model folder re-extracted with other parameters
    meta = json.loads((base / "emb/features.json").read_text())
    meta["params"] = {"n_mels": 32}
    outputs.atomic_write_json(base / "emb/features.json", meta)
    for cmd in (["index"], ["query", "--like", "a.wav"]):
        code, _, err = cli(*cmd, "--output_base", str(base), "--model", "emb", capsys=capsys)
        assert code == 2 and "was built from melspec {'n_mels': 16}" in err and "--rebuild" in err
    code, out, _ = cli("index", "--output_base", str(base), "--model", "emb", "--rebuild", capsys=capsys)
    assert code == 1 and "1 outputs indexed" in out  # nan.npy still fails, a.npy is back
    # not vectors: one number per frame (madmom), named columns (crepe)
    write_model_folder(tmp_path / "o2", {"x.wav": np.ones(10)}, alias="beats", axes=("time",))
    code, _, err = cli("index", "--output_base", str(tmp_path / "o2"), "--model", "beats", capsys=capsys)
    assert code == 2 and "not vectors" in err
    # segment level on pooled outputs
    write_model_folder(tmp_path / "o3", {"x.wav": np.ones(DIM)}, axes=("dim",), hop=None)
    code, _, err = cli(
        "index", "--output_base", str(tmp_path / "o3"), "--model", "emb", "--level", "segment", capsys=capsys
    )
    assert code == 2 and "pooled" in err
    # querying an index that does not exist, a --like path it does not hold
    code, _, err = cli(
        "query", "--like", "a.wav", "--output_base", str(tmp_path / "o3"), "--model", "emb", capsys=capsys
    )
    assert code == 2 and "build it first" in err
    code, out, err = cli(
        "query",
        str(tmp_path / "typo.wav"),
        "--like",
        "nope.wav",
        "--like",
        "a.wav",
        "--output_base",
        str(base),
        "--model",
        "emb",
        capsys=capsys,
    )
    assert code == 1 and "nope.wav: not in collection" in err and "typo.wav: no such file" in err
    assert "2 of 3 queries failed" in err and "query: a.wav" in out  # the good query still answered


def test_query_files_embed_with_the_index_configuration(tmp_path, capsys):
    """Real audio through melspec: a query equal to an indexed file scores 1; an undecodable one "
    "fails alone."""
    import soundfile as sf
    from conftest import tone

    from embedkit import pipeline, registry

    audio = tmp_path / "audio"
    for f in (220, 440, 880):
        sf.write(
            audio / f"t{f}.wav" if audio.is_dir() else (audio.mkdir() or audio / f"t{f}.wav"),
            tone(f, 1.0, 16000),
            16000,
        )
    ex = registry.create("melspec", pooling="mean")
    meta_params = ex.config
    arrays = {f"t{f}.wav": pipeline.extract_file(ex, audio / f"t{f}.wav").data for f in (220, 440, 880)}
    write_model_folder(tmp_path / "out", arrays, alias="mel", axes=("dim",), hop=None, params=meta_params)
    base = ["--output_base", str(tmp_path / "out"), "--model", "mel"]
    assert cli("index", *base, capsys=capsys)[0] == 0
    (tmp_path / "bad.wav").write_bytes(b"RIFF not really a wav")
    code, out, err = cli(
        "query",
        str(audio / "t440.wav"),
        str(tmp_path / "bad.wav"),
        *base,
        "--top",
        "2",
        "--json",
        capsys=capsys,
    )
    assert code == 1 and "bad.wav" in err and "Traceback" not in err
    res = json.loads(out.strip().splitlines()[0])
    assert res["results"][0]["path"] == "t440.wav" and res["results"][0]["score"] == pytest.approx(
        1.0, abs=1e-5
    )
    # the same index cannot embed queries when the plugin's parameters no longer validate
    meta = json.loads((tmp_path / "out/mel/features.json").read_text())
    with search.Index.open(tmp_path / "out/mel/.search", "mel_file") as index:
        broken = search.CollectionInfo("mel", "file", 0.0, {**index.info.config, "params": {"n_mels": -1}})
    with pytest.raises(search.ConfigError, match="cannot recreate"):
        search.QueryEmbedder(broken)
    assert meta["params"] == meta_params


def test_retrieval_metrics_by_hand():
    labels = {"a": "x", "b": "x", "c": "y", "d": "x", "e": "y"}
    # query a: ranking b (rel), c, d (rel), e -> P@1 1, P@2 0.5, R@2 1/2, AP (1/1 + 2/3) / 2
    # query c: ranking a, e (rel), b, d        -> P@1 0, P@2 0.5, R@2 1/1, AP (1/2) / 1
    m = search.retrieval_metrics(
        [("a", ["b", "c", "d", "e"]), ("c", ["a", "e", "b", "d"])], labels, ks=(1, 2)
    )
    assert m["precision@1"] == 0.5 and m["precision@2"] == 0.5
    assert m["recall@2"] == pytest.approx((0.5 + 1.0) / 2, abs=1e-4)
    assert m["mAP"] == pytest.approx(((1 + 2 / 3) / 2 + 0.5) / 2, abs=1e-4) and m["queries"] == 2


def test_evaluate_says_what_it_left_out(tmp_path, capsys):
    """Issue 22: "14 queries, 15 labelled items" without saying why one labelled item was not a query."""
    arrays, cluster = clustered(12, seed=12)
    write_model_folder(tmp_path / "out", arrays)
    labels = tmp_path / "labels.csv"
    rows = [f"{p},c{c}" for p, c in cluster.items()] + ["d0/f000.wav,solo", "gone/x.wav,c1"]
    labels.write_text("path,label\n" + "\n".join(rows[1:]) + "\n")  # f000 relabelled: alone with "solo"
    base = ["--output_base", str(tmp_path / "out"), "--model", "emb"]
    assert cli("index", *base, capsys=capsys)[0] == 0
    code, out, _ = cli("evaluate", "--labels", str(labels), *base, capsys=capsys)
    assert code == 0 and "11 queries, 12 labelled items" in out
    (line,) = [ln for ln in out.splitlines() if ln.startswith("left out:")]
    assert "1 labelled path(s) not in the collection (e.g. gone/x.wav)" in line
    assert "1 query whose label no other collection item has" in line and "d0/f000.wav: 'solo'" in line
    code, out, _ = cli("evaluate", "--labels", str(labels), *base, "--json", capsys=capsys)
    left = json.loads(out)["left_out"]
    assert left == {"labels_not_found": ["gone/x.wav"], "alone_with_label": ["d0/f000.wav"],
                    "unlabelled_queries": []}
