"""The browse app's adapter (embedkit.browse.data) and its map (projection), without a browser or Flask.

Model folders are written the way the driver writes them (test_search.write_model_folder) with
vectors whose neighbours and principal axes are known by construction.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
from test_search import unit, write_model_folder

from embedkit import run_search
from embedkit.browse import data, projection


def build(base, model="emb", *extra) -> None:
    assert run_search.main(["index", "--output_base", str(base), "--model", model, "--quiet", *extra]) == 0


@pytest.fixture
def run(tmp_path):
    """8 files in two sub-folders: a/ near +e0, b/ near -e0; inputs exist under tmp/in."""
    rng = np.random.default_rng(0)
    arrays = {}
    for i in range(8):
        d = "a" if i < 4 else "b"
        v = np.zeros(16)
        v[0] = 1 if d == "a" else -1
        v[1 + i] = 0.3
        arrays[f"{d}/{i}.wav"] = unit(np.tile(v, (3, 1)) + rng.normal(size=(3, 16)) * 0.01)
    base = tmp_path / "out"
    write_model_folder(base, arrays)
    inp = tmp_path / "in"
    for src in arrays:
        (inp / src).parent.mkdir(parents=True, exist_ok=True)
        (inp / src).write_bytes(b"RIFF....WAVE")
    (base / "run_report.json").write_text(json.dumps({"audio_dir": str(inp)}))
    build(base)
    return base, inp, arrays


def test_neighbours_are_the_exact_cosine_ranking(run):
    base, _, arrays = run
    coll = data.Collection(base)
    try:
        view = coll.index("emb")
        means = {s: a.astype(np.float64).mean(axis=0) for s, a in arrays.items()}
        q = means["a/1.wav"] / np.linalg.norm(means["a/1.wav"])
        truth = sorted(
            ((s, float(q @ (m / np.linalg.norm(m)))) for s, m in means.items() if s != "a/1.wav"),
            key=lambda p: -p[1],
        )
        got = view.neighbours("a/1.wav", k=7)
        assert [h.path for h in got] == [s for s, _ in truth]
        assert np.allclose([h.score for h in got], [sc for _, sc in truth], atol=1e-5)
        with pytest.raises(data.BrowseError, match="not in the index"):
            view.neighbours("c/9.wav")
    finally:
        coll.close()


def test_media_paths_stay_inside_the_input_folder(run, tmp_path):
    base, inp, _ = run
    coll = data.Collection(base)
    assert coll.media_file("a/0.wav") == (inp / "a" / "0.wav").resolve()
    for bad in (
        "../out/manifest.jsonl",
        "a/../../x",
        "/etc/hostname",
        "a\\..\\x",
        "a//0.wav",
        "./a/0.wav",
        "a/0.wav\x00",
        "",
    ):
        with pytest.raises(data.BrowseError):
            coll.media_file(bad)
    with pytest.raises(data.BrowseError, match="not an item"):
        coll.media_file("a/extra.wav")  # a file in the folder that the run did not take
    outside = tmp_path / "secret.wav"
    outside.write_bytes(b"secret")
    (inp / "a" / "0.wav").unlink()
    (inp / "a" / "0.wav").symlink_to(outside)
    with pytest.raises(data.BrowseError, match="outside the input folder") as exc:
        coll.media_file("a/0.wav")
    assert exc.value.status == 403
    (inp / "b" / "5.wav").unlink()
    with pytest.raises(data.BrowseError, match="vanished") as exc:
        coll.media_file("b/5.wav")
    assert exc.value.status == 410


def test_index_problems_say_what_to_do(run):
    base, _, arrays = run
    write_model_folder(base, arrays, alias="other")
    coll = data.Collection(base)
    with pytest.raises(data.BrowseError, match="embedkit search index --output_base .* --model other"):
        coll.index("other")
    meta = json.loads((base / "emb" / "features.json").read_text())
    meta["params"] = {"n_mels": 99}
    (base / "emb" / "features.json").write_text(json.dumps(meta))
    with pytest.raises(data.BrowseError, match="was built from .* --rebuild"):
        data.Collection(base).index("emb")
    with pytest.raises(data.BrowseError, match="no model folder"):
        coll.index("nope")


def test_pca_axes_are_the_directions_of_largest_variance():
    rng = np.random.default_rng(3)
    basis, _ = np.linalg.qr(rng.normal(size=(32, 32)))
    z = rng.normal(size=(5000, 32)) * np.array([10, 5] + [0.5] * 30)
    x = (z @ basis.T + 7).astype(np.float32)  # variance 100 along basis[:, 0], 25 along basis[:, 1]
    coords, axes = projection.pca_2d(x)
    for k in range(2):
        r = np.corrcoef(coords[:, k], z[:, k])[0, 1]
        assert abs(r) > 0.999, (k, r)
    assert axes[0].startswith("PC1 (") and "% of variance" in axes[0]
    again, _ = projection.pca_2d(x[::-1].copy())  # deterministic signs: same picture from shuffled rows
    assert np.allclose(again[::-1], coords, atol=1e-3)


def test_map_is_cached_beside_the_index_and_redone_when_it_changes(run):
    base, _, arrays = run
    coll = data.Collection(base)
    view = coll.index("emb")
    projection._memory.clear()
    m = projection.collection_map(view)
    assert len(m.src) == m.total == 8 and sorted(m.names) == sorted(arrays)
    caches = list((base / "emb" / ".search").glob("emb_file.browse-map-*.npz"))
    assert len(caches) == 1
    projection._memory.clear()  # as a new server would: from the cache file, the same picture
    again = projection.collection_map(view)
    assert np.array_equal(again.coords, m.coords) and again.names == m.names
    coll.close()
    write_model_folder(base, {"c/8.wav": unit(np.ones((2, 16)))})  # one more output, then re-index
    build(base)
    coll = data.Collection(base)
    bigger = projection.collection_map(coll.index("emb"))
    assert bigger.total == 9 and "c/8.wav" in bigger.names
    coll.close()


def test_segment_map_has_a_point_per_vector_with_times(run):
    base, _, _ = run
    build(base, "emb", "--level", "segment")
    coll = data.Collection(base)
    view = coll.index("emb", "emb_segment")
    m = projection.collection_map(view)
    assert m.total == len(m.src) == 8 * 3 and m.start is not None
    assert np.allclose(np.sort(m.start[m.src == m.names.index("a/0.wav")]), [0.0, 0.05, 0.15])
    hits = view.neighbours("a/0.wav", k=3, at=0.16)  # the moment at 0.16 s: its own frame's neighbours
    assert len(hits) == 3 and all(h.start is not None for h in hits)
    coll.close()


def test_postgres_index_gives_the_same_neighbours_and_map(run, pg_uri):
    base, _, _ = run
    build(base, "emb", "--db", pg_uri, "--collection", "browse_emb_file")
    emb = data.Collection(base)
    pg = data.Collection(base, db=pg_uri, collections=["browse_emb_file"])
    try:
        a = [(h.path, round(h.score, 5)) for h in emb.index("emb").neighbours("b/6.wav", k=7)]
        view = pg.index("emb")
        assert view.is_postgres and view.name == "browse_emb_file"
        assert [(h.path, round(h.score, 5)) for h in view.neighbours("b/6.wav", k=7)] == a
        m = projection.collection_map(view)
        assert m.total == 8 and sorted(m.names) == sorted(emb.sources)
    finally:
        emb.close()
        pg.close()
