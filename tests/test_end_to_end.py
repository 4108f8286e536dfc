"""A messy real folder through every tool, with every model kind: extract -> index -> query -> plot -> export.

The folder holds what a user's folder holds: audio (two files sharing a stem, one whose name is
not UTF-8), a video with sound, a video without sound at a variable frame rate, an image, and a
text file named .wav. Models without their real weights here run with `weights: random` (shapes
and plumbing, not numbers); CREPE tiny and madmom run their real weights. No tool may print a
traceback; each answers with its documented exit status.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest

from embedkit import export, results
from tests.conftest import ROOT, click_track, encode_video, run_cli, tone, write_wav
from tests.media_synth import moving_shapes, scene

# presentation times (ms) of the silent video's 12 frames: bursts and gaps (a variable frame rate)
VFR_PTS_MS = [0, 40, 80, 200, 240, 280, 500, 540, 580, 900, 940, 1300]
NON_UTF8 = b"caf\xe9.wav"  # Latin-1 bytes: not a UTF-8 name

pytestmark = pytest.mark.slow

MODELS = """models:
  openl3: {weights: random, hop_size: 0.5}
  openl3_image: {weights: random}
  crepe: {capacity: tiny, step_size: 20}
  madmom: {beats: true}
  mert: {weights: random}
  clmr: {weights: random, last_clip: pad}
  resnet18: {weights: random, frame_rate: 4}
  r3d18: {weights: random}
  melspec: {}
"""
EMBEDDINGS = ["clmr", "melspec", "mert", "openl3", "openl3_image", "r3d18", "resnet18"]  # not crepe, madmom
AUDIO_MODELS = ["clmr", "crepe", "madmom", "melspec", "mert", "openl3"]


def tool(script: str, *args: str) -> subprocess.CompletedProcess:
    """One of the project's command-line tools, as a user runs it; never a traceback on stderr."""
    res = subprocess.run([sys.executable, str(ROOT / script), *args], capture_output=True, text=True,
                         timeout=600, env={**os.environ, "PYTHONUNBUFFERED": "1"})
    assert "Traceback" not in res.stderr, f"{script} {' '.join(args)}:\n{res.stderr[-3000:]}"
    return res


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    root = tmp_path_factory.mktemp("e2e")
    media = root / "media"
    write_wav(media / "a.wav", tone(220, 0.6, 16000), 16000)  # short files: the test runs in CI
    write_wav(media / "dup.wav", click_track(120, 0.8, 22050), 22050)
    write_wav(media / "dup.flac", tone(440, 0.5, 22050), 22050)
    write_wav(media / "tmp.wav", tone(330, 0.5, 16000), 16000)
    os.rename(bytes(media / "tmp.wav"), bytes(media) + b"/" + NON_UTF8)
    encode_video(media / "silent.mp4", moving_shapes(1, len(VFR_PTS_MS)), fps=25, pts_ms=VFR_PTS_MS)
    encode_video(media / "talk.mp4", moving_shapes(2, 8), fps=8, audio=tone(300, 0.8, 44100), sr=44100)
    from PIL import Image

    Image.fromarray(scene(3, 320, 240)).save(media / "pic.png")
    (media / "bad.wav").write_text("not audio at all\n")
    config = root / "models.yaml"
    config.write_text(MODELS)
    out = root / "out"
    res = run_cli("--config", str(config), "--audio_dir", str(media), "--output_base", str(out))
    assert "Traceback" not in res.stderr, res.stderr[-3000:]
    assert res.returncode == 1, res.stdout[-3000:] + res.stderr[-3000:]  # bad.wav failed, the rest ran
    return media, out


def test_extraction_recorded_the_silent_video_as_a_skip(run):
    _, out = run
    lines = [json.loads(line) for line in (out / "manifest.jsonl").read_text().splitlines()]
    skipped = {r["model"] for r in lines if r["source"] == "silent.mp4" and r["output"] is None}
    assert skipped == set(AUDIO_MODELS)  # `"output": null`: what crashed the readers (issue 22)
    run_ = results.Results(out)
    assert run_.notes == []  # nothing stale in a fresh run
    for model in AUDIO_MODELS:
        assert sorted(i.source for i in run_[model].items) == sorted(
            ["a.wav", "dup.flac", "dup.wav", os.fsdecode(NON_UTF8), "talk.mp4"])


def test_index_and_query_every_model(run):
    media, out = run
    base = ["--output_base", str(out)]
    for model in ("crepe", "madmom"):  # named quantities / one number per frame: refused, in one line
        res = tool("run_search.py", "index", *base, "--model", model)
        assert res.returncode == 2 and "configuration error" in res.stderr
    for model in EMBEDDINGS:
        res = tool("run_search.py", "index", *base, "--model", model)
        assert res.returncode == 0, res.stderr
        res = tool("run_search.py", "query", "--like", "talk.mp4", *base, "--model", model, "--json")
        assert res.returncode == 0, res.stderr
        hits = json.loads(res.stdout)["results"]
        paths = [h["path"] for h in hits]
        assert len(paths) == len(set(paths)) and "talk.mp4" not in paths  # each file once, the query left out
        expected = {"a.wav", "dup.flac", "dup.wav", os.fsdecode(NON_UTF8)} if model in AUDIO_MODELS else \
            {"silent.mp4"} | ({"pic.png"} if model in ("openl3_image", "resnet18") else set())
        assert set(paths) == expected, (model, paths)
    for model in EMBEDDINGS:
        res = tool("run_search.py", "index", *base, "--model", model, "--level", "segment")
        assert res.returncode == 0, (model, res.stderr)
    # a query file embedded with the collection's configuration: the image itself ranks first
    res = tool("run_search.py", "query", str(media / "pic.png"), *base, "--model", "openl3_image", "--json")
    assert res.returncode == 0 and json.loads(res.stdout)["results"][0]["path"] == "pic.png"
    res = tool("run_search.py", "query", str(media / "a.wav"), *base, "--model", "melspec", "--top", "10")
    assert res.returncode == 0 and res.stdout.splitlines()[1].split()[-1] == "a.wav"
    assert "caf\\xe9.wav" in res.stdout  # a name that is not UTF-8, printed with its byte shown


def test_segments_of_a_variable_frame_rate_video_carry_their_true_times(run):
    """openl3_image (every frame) and resnet18 (frame_rate 4): each segment starts at its frame's
    presentation time and ends where the next embedded frame starts."""
    _, out = run
    base = ["--output_base", str(out)]
    pts = np.array(VFR_PTS_MS) / 1000
    for model in ("openl3_image", "resnet18"):
        res = tool("run_search.py", "index", *base, "--model", model, "--level", "segment")
        assert res.returncode == 0, res.stderr
        res = tool("run_search.py", "query", "--like", "talk.mp4", *base, "--model", model, "--level",
                   "segment", "--top", "100", "--json")
        hits = [h for h in json.loads(res.stdout)["results"] if h["path"] == "silent.mp4"]
        starts = np.array(sorted(h["start"] for h in hits))
        ends = np.array(sorted(h["end"] for h in hits))
        if model == "openl3_image":  # every frame: exactly the encoded presentation times
            np.testing.assert_allclose(starts, pts, atol=1e-4)
        else:  # the frame nearest each k / 4 s: a subset of the encoded times, each once
            grid = np.arange(0, pts[-1] + 1e-9, 0.25)
            nearest = np.unique(pts[np.abs(pts[None, :] - grid[:, None]).argmin(axis=1)])
            np.testing.assert_allclose(starts, nearest, atol=1e-4)
        np.testing.assert_allclose(ends[:-1], starts[1:], atol=1e-4)  # each ends where the next begins
        np.testing.assert_allclose(ends[-1] - starts[-1], starts[-1] - starts[-2], atol=1e-4)


def test_plots_and_exports_of_every_model(run):
    media, out = run
    res = tool("plotting.py", "files", str(out), "--audio_dir", str(media), "--dpi", "20", "--width", "4")
    assert res.returncode == 0, res.stderr
    plots = out / "plots"
    # one figure per input file with frames (pic.png has none): sources that share a stem keep their
    # extension, the name that is not UTF-8 keeps its bytes
    assert sorted(os.fsencode(p.name) for p in plots.glob("*.png")) == sorted(
        [b"a.png", b"caf\xe9.png", b"dup.flac.png", b"dup.wav.png", b"silent.png", b"talk.png"])
    for model in [*EMBEDDINGS, "crepe"]:
        res = tool("plotting.py", "map", str(out), "--model", model, "--dpi", "30")
        assert res.returncode == 0, (model, res.stderr)
    res = tool("export.py", str(out), "--format", "npz", "hdf5", "parquet")
    assert res.returncode == 0, res.stderr
    exports = out / "exports"
    names = {p.name for p in exports.iterdir()}
    for model in [*AUDIO_MODELS, "r3d18"]:
        assert {f"{model}.npz", f"{model}.h5", f"{model}.parquet"} <= names
    for model in ("openl3_image", "resnet18"):  # images (dim,) and videos (time, dim): one file each
        assert {f"{model}.npz", f"{model}.video.npz", f"{model}.csv"} <= names
    for fmt in (".npz", ".h5", ".parquet"):
        e = export.load(exports / f"melspec{fmt}")
        assert sorted(e.sources) == sorted(
            ["a.wav", "dup.flac", "dup.wav", os.fsdecode(NON_UTF8), "talk.mp4"])
        assert e.metadata["names"] != "utf-8"  # the name's exact bytes are kept, and it says so
        for i, rel in enumerate(e.paths):
            np.testing.assert_array_equal(e[i], np.load(out / "melspec" / rel))
        v = export.load(exports / f"openl3_image.video{fmt}")
        i = v.sources.index("silent.mp4")
        np.testing.assert_allclose(v.timestamps(i), np.array(VFR_PTS_MS) / 1000, atol=1e-4)
