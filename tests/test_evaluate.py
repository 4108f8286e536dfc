"""`embedkit evaluate`: a cross-validated linear probe per model folder next to retrieval figures.

Known truth: espeak-ng voices (gender is what the voice variant declares; speaker = group):
melspec's probe must find gender (>= 0.9) and fall to chance when the labels are shuffled
between speakers. Synthetic vectors check what grouping is for (a group-specific feature
memorised across a fold boundary), and each bad input gives a one-line error with exit 2.
"""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
from test_search import write_model_folder

from embedkit import evaluate
from embedkit.browse import data


def run(capsys, *args: str) -> tuple[int, str, str]:
    code = evaluate.main(list(args))
    out, err = capsys.readouterr()
    return code, out, err


# -- on espeak-ng voices: known gender, speaker groups ---------------------------------------------
@pytest.mark.slow
def test_probe_finds_gender_and_falls_to_chance_on_shuffled_labels(speaker_collection, tmp_path, capsys):
    out, labels = speaker_collection["out"], speaker_collection["labels"]
    code, text, err = run(capsys, str(out), "--labels", str(labels), "--out", str(tmp_path))
    assert code == 0, err
    result = json.loads((tmp_path / "speakers.json").read_text())
    png = (tmp_path / "speakers.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 5000
    assert set(result["models"]) == {"melspec", "melspec_mean"}
    assert result["groups"] == 16 and result["labels"] == {"female": 24, "male": 24}
    for model, entry in result["models"].items():
        p = entry["probe"]
        assert p["grouped"] and p["folds"] == 5 and p["chance"] == 0.5
        assert p["accuracy"] >= 0.9, (model, p)
        assert entry["retrieval"]["precision@1"] >= 0.8, (model, entry["retrieval"])
        assert model in text  # the table names every model
    # the table's figures are the JSON's
    assert f"{result['models']['melspec']['probe']['accuracy']:.3f}" in text
    # fixed folds and seed: the same numbers again
    code, _, _ = run(capsys, str(out), "--labels", str(labels), "--out", str(tmp_path), "--json")
    assert json.loads((tmp_path / "speakers.json").read_text())["models"] == result["models"]

    accs, precisions = [], []
    for seed in range(1, 6):  # labels permuted between speakers: nothing left to learn
        code, text, err = run(
            capsys,
            str(out),
            "--labels",
            str(labels),
            "--out",
            str(tmp_path),
            "--shuffle_labels",
            str(seed),
            "--models",
            "melspec",
            "--json",
        )
        assert code == 0, err
        r = json.loads(text)
        assert r["labels"] == {"female": 24, "male": 24}  # a permutation, still balanced
        accs.append(r["models"]["melspec"]["probe"]["accuracy"])
        precisions.append(r["models"]["melspec"]["retrieval"]["precision@1"])
    assert abs(np.mean(accs) - 0.5) < 0.15, accs
    assert max(accs) < 0.8, accs
    # retrieval across speakers is at chance too (a speaker's own sentences are left out of its ranking)
    assert abs(np.mean(precisions) - 0.5) < 0.2, precisions


# -- synthetic truth -------------------------------------------------------------------------------
def test_grouped_folds_keep_a_group_on_one_side():
    """Labels random per group; each group has its own direction: only a leak across folds predicts them."""
    rng = np.random.default_rng(0)
    n_groups, per_group, dim = 20, 5, 16
    centres = rng.normal(size=(n_groups, dim)) * 3
    groups = np.repeat([f"g{i}" for i in range(n_groups)], per_group)
    y = np.repeat(rng.permutation(["a", "b"] * (n_groups // 2)), per_group)
    x = np.repeat(centres, per_group, axis=0) + rng.normal(size=(n_groups * per_group, dim)) * 0.1
    leaky = evaluate.probe(x, list(y))
    grouped = evaluate.probe(x, list(y), list(groups))
    assert leaky["accuracy"] >= 0.95  # every test file has same-group twins in training
    assert grouped["accuracy"] <= 0.75 and grouped["grouped"]


def test_probe_on_separable_classes_is_perfect_and_figures_match_numpy():
    rng = np.random.default_rng(1)
    x = np.concatenate([rng.normal(size=(15, 8)) + 4, rng.normal(size=(15, 8)) - 4])
    y = ["p"] * 15 + ["q"] * 15
    p = evaluate.probe(x, y, folds=3)
    assert p["accuracy"] == 1.0 and p["folds"] == 3 and p["chance"] == 0.5
    r = data.retrieval_figures(x, y, (1, 5))
    # truth by hand: cosine top-1 of each item, itself left out
    u = x / np.linalg.norm(x, axis=1, keepdims=True)
    s = u @ u.T
    np.fill_diagonal(s, -np.inf)
    top1 = np.argmax(s, axis=1)
    assert r["precision@1"] == round(float(np.mean(np.array(y)[top1] == np.array(y))), 4)


# -- bad input: one line, exit 2 -------------------------------------------------------------------
@pytest.fixture
def small_run(tmp_path):
    """Two embedding folders and a pitch-like folder, 6 files in 2 sub-folders, vectors by construction."""
    rng = np.random.default_rng(2)
    arrays = {
        f"{d}/{i}.wav": rng.normal(size=(4, 8)) + (3 if d == "a" else -3) for d in "ab" for i in range(3)
    }
    base = tmp_path / "out"
    write_model_folder(base, arrays, alias="emb")
    write_model_folder(base, {k: v[0] for k, v in arrays.items()}, alias="pooled", axes=("dim",))
    return base


def write_labels(path, rows: list[str]):
    path.write_text("\n".join(rows) + "\n")
    return path


def test_errors_are_one_line_with_exit_2(small_run, tmp_path, capsys):
    good = [f"{d}/{i}.wav,{d},{d}{i}" for d in "ab" for i in range(3)]
    cases = {
        "outside": (["path,label,group", "../x.wav,a,g"], "outside the input folder"),
        "absolute": (["/etc/passwd,a"], "outside the input folder"),
        "unknown": (good + ["c/9.wav,a,c9"], "not in the collection"),
        "one label": ([r.replace(",b,", ",a,") for r in good], "two labels or more"),
        "one group": (
            ["a/0.wav,a,g1", "a/1.wav,a,g2", "b/0.wav,b,g3", "b/1.wav,b,g3"],
            "only one of its groups",
        ),
        "mixed groups": (["a/0.wav,a,g", "b/0.wav,b"], "some rows have a group column"),
        "twice": (["a/0.wav,a", "a/0.wav,b"], "labelled both"),
    }
    for name, (rows, expect) in cases.items():
        labels = write_labels(tmp_path / f"{name.replace(' ', '_')}.csv", rows)
        code, out, err = run(
            capsys, str(small_run), "--labels", str(labels), "--models", "emb", "--out", str(tmp_path / "ev")
        )
        if name == "one label" or name == "one group":  # the model's row says it; the run exits 1
            assert code == 1 and expect in err, (name, err)
            continue
        assert code == 2, (name, code, err)
        assert expect in err and len(err.strip().splitlines()) == 1, (name, err)
    code, _, err = run(capsys, str(small_run), "--labels", str(tmp_path / "nope.csv"))
    assert code == 2 and "cannot read labels" in err
    labels = write_labels(tmp_path / "good.csv", good)
    code, _, err = run(capsys, str(small_run), "--labels", str(labels), "--models", "nope")
    assert code == 2 and "no model folder nope" in err


def test_a_missing_output_fails_that_model_only(small_run, tmp_path, capsys):
    labels = write_labels(tmp_path / "l.csv", [f"{d}/{i}.wav,{d},{d}{i}" for d in "ab" for i in range(3)])
    (small_run / "pooled" / "a" / "1.npy").unlink()  # the extraction failed on it for this model
    code, out, err = run(capsys, str(small_run), "--labels", str(labels), "--out", str(tmp_path / "ev"))
    assert code == 1
    assert "pooled" in err and "no pooled output (e.g. a/1.wav)" in err
    result = json.loads((tmp_path / "ev" / "l.json").read_text())
    assert result["models"]["emb"]["probe"]["folds"] == 3  # 3 groups per label at most
    assert "error" in result["models"]["pooled"]
    shutil.rmtree(tmp_path / "ev")
