"""embedkit.openl3 as a drop-in for openl3 0.4.2: its layout, helpers, command line and files.

What openl3's own test suite (marl/openl3 tests/, run against this package outside the
project: docs/openl3.md) checks of the API, brought in as behaviour: openl3's module
layout and names; the windowing helpers against their formulas; image preprocessing
ranges and crops; model paths and loading from a path; the front-end/model check; the
command line's argument types, file lists, `run` and `python -m`; and the output rules
(openl3's "keep an existing output", except what a killed run left). The numbers
themselves are tested against openl3's outputs in test_openl3.py / test_openl3_image.py.
Weights: "random" (seeded, architecture-identical), so nothing here needs ../shared.
"""

from __future__ import annotations

import argparse
import io
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

import embedkit.openl3 as openl3  # as a migrating script imports it
from embedkit.extractors.base import WeightsError
from embedkit.openl3 import cli, preprocessing, weightfiles
from tests.conftest import ROOT

SR = 48000


@pytest.fixture(scope="module")
def audio_model():
    return openl3.models.load_audio_embedding_model("mel128", "music", 512, weights_path="random")


@pytest.fixture(scope="module")
def image_model():
    return openl3.models.load_image_embedding_model("mel256", "music", 512, weights_path="random")


def chirp(seconds: float, sr: int = SR) -> np.ndarray:
    t = np.arange(int(seconds * sr)) / sr
    return 0.3 * np.sin(2 * np.pi * (200 * t + 400 * t**2))


# ---------------------------------------------------------------------------
# Layout and names
# ---------------------------------------------------------------------------
def test_layout_and_public_names_are_openl3s():
    import embedkit.openl3.__init__  # noqa: F401
    from embedkit.openl3 import core, models, openl3_exceptions, openl3_warnings

    assert openl3.__version__ == "0.4.2"
    for name in ("get_audio_embedding", "get_image_embedding", "get_output_path", "process_audio_file",
                 "process_image_file", "process_video_file", "preprocess_audio"):
        assert getattr(openl3, name) is getattr(core, name)
    assert openl3.OpenL3Error is openl3_exceptions.OpenL3Error
    assert openl3.OpenL3Warning is openl3_warnings.OpenL3Warning and issubclass(openl3.OpenL3Warning, Warning)
    assert openl3.models is models and core.TARGET_SR == 48000
    for name in ("load_audio_embedding_model", "load_audio_embedding_model_from_path",
                 "get_audio_embedding_model_path", "load_image_embedding_model",
                 "load_image_embedding_model_from_path", "get_image_embedding_model_path",
                 "_validate_audio_frontend"):
        assert callable(getattr(models, name))
    for name in ("run", "parse_args", "get_file_list", "positive_int", "positive_float", "main"):
        assert callable(getattr(cli, name))
    # openl3's positional order and defaults, which scripts rely on
    import inspect

    sig = inspect.signature(openl3.get_audio_embedding)
    assert list(sig.parameters)[:11] == ["audio", "sr", "model", "input_repr", "content_type",
                                         "embedding_size", "center", "hop_size", "batch_size", "frontend",
                                         "verbose"]
    assert sig.parameters["embedding_size"].default == 6144 and sig.parameters["input_repr"].default is None
    sig = inspect.signature(openl3.get_image_embedding)
    assert list(sig.parameters)[:8] == ["image", "frame_rate", "model", "input_repr", "content_type",
                                        "embedding_size", "batch_size", "verbose"]
    assert sig.parameters["embedding_size"].default == 8192


# ---------------------------------------------------------------------------
# Windowing helpers (openl3 core._center_audio, _pad_audio, _get_num_windows)
# ---------------------------------------------------------------------------
def test_center_and_pad_follow_their_formulas():
    core = openl3.core
    ones = np.ones(100)
    for frame_len, lead in ((50, 25), (49, 24)):  # int(frame_len / 2) zeros before
        c = core._center_audio(ones, frame_len)
        assert c.size == 100 + lead and not c[:lead].any() and np.array_equal(c[lead:], ones)
    for n, want in ((10, 50), (90, 100), (100, 100), (76, 100), (75, 75)):  # frame 50, hop 25
        p = core._pad_audio(np.ones(n), 50, 25)
        assert p.size == want and np.array_equal(p[:n], np.ones(n)) and not p[n:].any()
        # every sample is in a window, and the last window ends at the padded end
        assert p.size >= 50 and (p.size - 50) % 25 == 0


@pytest.mark.parametrize("center", [False, True])
def test_number_of_windows_is_the_covering_count(center):
    core = openl3.core
    cases = {False: {10: 1, 50: 1, 76: 3}, True: {10: 1, 50: 2, 76: 4}}[center]
    for n, want in cases.items():
        assert core._get_num_windows(n, 50, 25, center) == want
    # at 48 kHz the same count as the port's own windowing, and as the windows it cuts
    for n in (1, 480, 23999, 24000, 24001, 48000, 48001, 100_000):
        for hop in (0.1, 0.25, 0.5, 1.0):
            h = preprocessing.hop_samples(hop)
            count = core._get_num_windows(n, SR, h, center)
            assert count == preprocessing.num_windows(n, h, center)
            x = np.random.default_rng(n).standard_normal(n)
            w = core._preprocess_audio_batch(x, SR, center=center, hop_size=hop) if n >= SR else None
            if w is not None:
                assert w.shape == (count, 1, SR)
                padded = core._pad_audio(core._center_audio(x, SR) if center else x, SR, h)
                np.testing.assert_array_equal(w[-1, 0], padded[(count - 1) * h:(count - 1) * h + SR])


def test_preprocess_audio_shapes_and_front_end_options():
    x = chirp(2.0)
    assert openl3.preprocess_audio(x, SR).shape == (16, 1, SR)  # 1 + ceil((2 s + 0.5 s - 1 s) / 0.1 s)
    for repr_, shape in (("linear", (257, 197)), ("mel128", (128, 199)), ("mel256", (256, 199))):
        assert openl3.preprocess_audio(x, SR, input_repr=repr_).shape == (16, *shape, 1)
    with pytest.raises(openl3.OpenL3Error):
        openl3.preprocess_audio(x, SR, input_repr="mel64")
    # openl3 passes **kw on to its librosa front-end: a wider dB range keeps more below the peak
    narrow = openl3.preprocess_audio(x, SR, input_repr="mel128", dynamic_range=40.0)
    wide = openl3.preprocess_audio(x, SR, input_repr="mel128")
    assert narrow.min() == pytest.approx(-40.0) and wide.min() == pytest.approx(-80.0)
    assert narrow.max() == wide.max() == 0.0


# ---------------------------------------------------------------------------
# Images (openl3 core._preprocess_image_batch)
# ---------------------------------------------------------------------------
def test_image_batches_have_openl3s_shape_range_and_crop():
    rng = np.random.default_rng(0)
    pre = openl3.core._preprocess_image_batch
    for arr in (rng.random((512, 1024, 3)) * 2 - 1, rng.random((3, 512, 1024, 3)) * 2 - 1):
        b = pre(arr)
        assert b.shape == (arr.shape[0] if arr.ndim == 4 else 1, 224, 224, 3) and b.dtype == np.float32
        assert b.min() >= -1 and b.max() <= 1
    mid = rng.random((240, 240, 3)) * 2 - 1  # between 224 and 256: a centre crop, values kept
    np.testing.assert_allclose(pre(mid)[0], mid[8:-8, 8:-8], rtol=1e-6)
    exact = rng.random((224, 224, 3)) * 2 - 1
    np.testing.assert_allclose(pre(exact)[0], exact, rtol=1e-6)
    u8 = rng.integers(0, 256, (224, 224, 3), dtype=np.uint8)  # uint8 -> [-1, 1]
    np.testing.assert_allclose(pre(u8)[0], u8 / 255.0 * 2 - 1, atol=1e-6)
    for bad in (np.ones((10, 10)), np.ones((10, 10, 10)), np.ones((230, 230, 4)), np.ones((100, 300, 3)),
                np.ones((0, 0, 0))):
        with pytest.raises(openl3.OpenL3Error):
            pre(bad)


# ---------------------------------------------------------------------------
# Models
# ---------------------------------------------------------------------------
def test_model_paths_name_the_file_openl3_would_load(tmp_path, monkeypatch):
    monkeypatch.setenv("EMBEDKIT_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(weightfiles, "_openl3_package_dirs", list)
    for fn, modality in ((openl3.models.get_audio_embedding_model_path, "audio"),
                         (openl3.models.get_image_embedding_model_path, "image")):
        for repr_ in ("linear", "mel128", "mel256"):
            for content in ("env", "music"):
                p = Path(fn(repr_, content))  # openl3: <its package folder>/openl3_<modality>_...h5
                assert p.parent.name == "openl3" and p.name == f"openl3_{modality}_{repr_}_{content}.h5"
                assert p.parent == tmp_path / "cache" / "openl3"  # not found: where a download goes
    installed = tmp_path / "site" / "openl3"
    installed.mkdir(parents=True)
    (installed / "openl3_audio_mel256_env.h5").write_bytes(b"\x89HDF")
    monkeypatch.setattr(weightfiles, "_openl3_package_dirs", lambda: [installed])
    want = installed / "openl3_audio_mel256_env.h5"
    assert openl3.models.get_audio_embedding_model_path("mel256", "env") == str(want)


def test_checkout_folder_is_not_taken_for_an_installed_openl3(monkeypatch):
    monkeypatch.syspath_prepend(str(ROOT))  # from a checkout, ROOT/openl3 is importable as `openl3`
    own = (ROOT / "openl3").resolve()
    assert all(d.resolve() != own for d in weightfiles._openl3_package_dirs())


@pytest.mark.skipif(not (ROOT.parent / "shared" / "reference" / "openl3_random").is_dir(),
                    reason="../shared/reference/openl3_random absent")
def test_loading_from_a_path_equals_loading_by_name(tmp_path):
    ref = ROOT.parent / "shared" / "reference" / "openl3_random"
    h5 = ref / "openl3_audio_mel128_music.h5"
    x = chirp(1.5)
    a = openl3.models.load_audio_embedding_model_from_path(h5, "mel128", 512)
    b = openl3.models.load_audio_embedding_model("mel128", "music", 512, weights_path=str(h5))
    assert (a.input_repr, a.content_type, a.input_shape, a.output_shape) == ("mel128", "music", (None, 1, SR),
                                                                              (None, 512))
    np.testing.assert_array_equal(openl3.get_audio_embedding(x, SR, model=a)[0],
                                  openl3.get_audio_embedding(x, SR, model=b)[0])
    lib = openl3.models.load_audio_embedding_model_from_path(h5, "mel128", 6144, frontend="librosa")
    assert lib.input_shape == (None, 128, 199, 1) and lib.output_shape == (None, 6144)
    with pytest.raises(WeightsError, match="holds the mel128/music weights"):  # the name says another one
        openl3.models.load_audio_embedding_model_from_path(h5, "linear", 512)
    img_h5 = ref / "image" / "openl3_image_mel256_music.h5"
    img = openl3.models.load_image_embedding_model_from_path(img_h5, 8192)
    assert (img.input_repr, img.content_type, img.input_shape, img.output_shape) == (
        "mel256", "music", (None, 224, 224, 3), (None, 8192))
    with pytest.raises(openl3.OpenL3Error):
        openl3.models.load_image_embedding_model_from_path(img_h5, 6144)


def test_front_end_check_is_openl3s(audio_model):
    validate = openl3.models._validate_audio_frontend
    librosa_model = openl3.models.AudioEmbeddingModel("mel128", "music", 512, "librosa", audio_model.loaded)
    assert len(audio_model.input_shape) == 3 and len(librosa_model.input_shape) == 4
    assert validate("kapre", "mel128", audio_model) == ("kapre", "mel128")
    assert validate("librosa", "mel128", librosa_model) == ("librosa", "mel128")
    assert validate("kapre", None, audio_model) == ("kapre", "mel256")  # openl3's default, whatever the model
    for args in (("librosa", None, librosa_model), ("librosa", None, audio_model),
                 ("kapre", None, librosa_model), ("tf", "mel128", None), ("kapre", "mel64", None)):
        with pytest.raises(openl3.OpenL3Error):
            validate(*args)
    # a model decides its own input representation where openl3 ignores input_repr
    x = chirp(1.2)
    ignored = openl3.get_audio_embedding(x, SR, model=audio_model, input_repr="linear")[0]
    np.testing.assert_array_equal(ignored, openl3.get_audio_embedding(x, SR, model=audio_model)[0])
    with pytest.raises(openl3.OpenL3Error, match="does not fit the model"):
        openl3.get_audio_embedding(x, SR, model=librosa_model, frontend="librosa", input_repr="mel256")


# ---------------------------------------------------------------------------
# The command line's functions (openl3.cli)
# ---------------------------------------------------------------------------
def test_argument_types_are_openl3s():
    assert cli.positive_float(5) == 5.0 and type(cli.positive_float("1.3")) is float
    assert cli.positive_int(5.0) == 5 and type(cli.positive_int("1")) is int
    for bad in (-5, -1.0, None, "hello", 0):
        for fn in (cli.positive_float, cli.positive_int):
            with pytest.raises(argparse.ArgumentTypeError):
                fn(bad)


def test_file_list_and_parsed_arguments(tmp_path):
    names = ["b.wav", "a.wav", "notes.txt"]
    for n in names:
        (tmp_path / n).write_bytes(b"x")
    (tmp_path / "sub").mkdir()
    with pytest.raises(argparse.ArgumentTypeError):
        cli.get_file_list(str(tmp_path / "a.wav"))  # a string, not a list
    one = str(tmp_path / "a.wav")
    assert cli.get_file_list([one, one]) == [one, one]
    # a folder: every file directly in it (openl3 takes them all, whatever the extension)
    assert cli.get_file_list([str(tmp_path)]) == [str(tmp_path / n) for n in sorted(names)]
    assert len(cli.get_file_list([str(tmp_path), one])) == 4
    with pytest.raises(openl3.OpenL3Error):
        cli.get_file_list([str(tmp_path / "missing")])
    a = cli.parse_args(["audio", one])
    assert (a.modality, a.inputs, a.output_dir, a.suffix, a.input_repr, a.content_type) == (
        "audio", [one], None, None, "mel256", "music")
    assert (a.audio_embedding_size, a.no_audio_centering, a.audio_hop_size, a.image_embedding_size,
            a.quiet) == (6144, False, 0.1, 8192, False)
    a = cli.parse_args(["video", one, "-o", "/out", "--suffix", "s", "--input-repr", "linear",
                        "--content-type", "env", "--audio-embedding-size", "512", "--no-audio-centering",
                        "--audio-hop-size", "0.5", "--image-embedding-size", "512", "--quiet"])
    assert (a.output_dir, a.suffix, a.input_repr, a.content_type, a.audio_embedding_size,
            a.no_audio_centering, a.audio_hop_size, a.image_embedding_size, a.quiet) == (
        "/out", "s", "linear", "env", 512, True, 0.5, 512, True)


def test_run_raises_and_exits_as_openl3(tmp_path, capsys, audio_model):
    for bad in (None, 5, 1.0):
        with pytest.raises(openl3.OpenL3Error):
            cli.run(bad, bad)
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(SystemExit) as stop:
        cli.run("audio", [str(empty)])
    assert stop.value.code == -1
    assert capsys.readouterr().out == f"openl3: No files found in {[str(empty)]}. Aborting.\n"
    wav = tmp_path / "tone.wav"
    sf.write(wav, chirp(1.3), SR)
    with pytest.raises(openl3.OpenL3Error, match="Invalid modality"):
        cli.run("invalid", str(wav), output_dir=str(tmp_path))
    cli.run("audio", str(wav), output_dir=str(tmp_path / "out"), input_repr="mel128",
            audio_embedding_size=512, weights_path="random")
    got = np.load(tmp_path / "out" / "tone.npz")
    emb, ts = openl3.get_audio_embedding(sf.read(wav)[0], SR, model=audio_model)
    np.testing.assert_array_equal(got["embedding"], emb)
    np.testing.assert_array_equal(got["timestamps"], ts)


def _python(*code: str, cwd: Path) -> subprocess.CompletedProcess:
    prog = "\n".join([f"import sys; sys.path.insert(0, {str(ROOT)!r}); import _checkout; sys.path.pop(0)",
                      *code])
    return subprocess.run([sys.executable, "-c", prog], capture_output=True, text=True, cwd=cwd, timeout=300)


def test_module_main_is_the_command(tmp_path):
    """`import openl3.__main__` runs the command on sys.argv, as openl3's (python -m embedkit.openl3)."""
    wav = tmp_path / "tone.wav"
    sf.write(wav, chirp(1.1), SR)
    argv = ["openl3", "audio", str(wav), "--output-dir", str(tmp_path), "--weights", "random", "-as", "512"]
    res = _python(f"sys.argv = {argv!r}", "import embedkit.openl3.__main__", cwd=tmp_path)
    assert res.returncode == 0, res.stderr
    assert np.load(tmp_path / "tone.npz")["embedding"].shape == (7, 512)  # 1 + ceil((1.1 + 0.5 - 1) / 0.1)
    missing = argv[:2] + [str(tmp_path / "nope.wav")]
    res = _python(f"sys.argv = {missing!r}", "import embedkit.openl3.__main__", cwd=tmp_path)
    assert res.returncode == 2 and "No files found" in res.stderr


# ---------------------------------------------------------------------------
# Output files: openl3's "keep what exists", except what a killed run left
# ---------------------------------------------------------------------------
def test_existing_outputs_kept_unfinished_ones_redone(tmp_path, capsys, audio_model, image_model):
    from PIL import Image

    wav, jpg = tmp_path / "s.wav", tmp_path / "p.jpg"
    sf.write(wav, chirp(1.0), SR)
    Image.fromarray(np.random.default_rng(1).integers(0, 256, (240, 300, 3), dtype=np.uint8)).save(jpg)
    out = tmp_path / "out"
    out.mkdir()
    runs = ((lambda **kw: openl3.process_audio_file(str(wav), output_dir=str(out), model=audio_model, **kw),
             out / "s.npz", ("embedding", "timestamps")),
            (lambda **kw: openl3.process_image_file(str(jpg), output_dir=str(out), model=image_model, **kw),
             out / "p.npz", ("embedding",)))
    for run, path, keys in runs:
        run(verbose=False)
        whole = path.read_bytes()
        assert sorted(np.load(path).files) == sorted(keys)
        path.write_text("this is a test file")  # not ours: kept, as openl3 keeps any existing file
        run(verbose=False)
        assert path.read_text() == "this is a test file" and "skipping" in capsys.readouterr().out
        run(verbose=False, overwrite=True)
        assert np.array_equal(np.load(path)["embedding"], np.load(io.BytesIO(whole))["embedding"])
        for unfinished in (b"", whole[: len(whole) // 2]):  # what a killed openl3 run leaves
            path.write_bytes(unfinished)
            run(verbose=True)
            assert "incomplete" in capsys.readouterr().out
            assert np.array_equal(np.load(path)["embedding"], np.load(io.BytesIO(whole))["embedding"])
    # no temporary file left beside the outputs
    assert sorted(p.name for p in out.iterdir()) == ["p.npz", "s.npz"]
    with pytest.raises(openl3.OpenL3Error):
        openl3.process_audio_file(None, model=audio_model)
    with pytest.raises(openl3.OpenL3Error, match="could not be found"):
        openl3.process_image_file(str(tmp_path / "missing.jpg"), model=image_model)


# ---------------------------------------------------------------------------
# Weights missing: the advice names what the entry point that printed it takes
# ---------------------------------------------------------------------------
@pytest.fixture
def no_weights(tmp_path, monkeypatch):
    monkeypatch.setenv("EMBEDKIT_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("EMBEDKIT_OFFLINE", "1")
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    monkeypatch.setattr(weightfiles, "_openl3_package_dirs", list)
    return tmp_path


def test_weights_missing_advice_matches_the_entry_point(no_weights, capsys):
    with pytest.raises(WeightsError) as api:
        openl3.models.load_audio_embedding_model("mel256", "music", 512)
    first = str(api.value).splitlines()[0]
    assert first.startswith("weights not found (openl3_audio_mel256_music.h5)") and "weights_path=" in first
    assert "--download_only" not in str(api.value) and "--weights" not in first
    with pytest.raises(WeightsError, match="weights_path="):
        openl3.models.load_image_embedding_model("linear", "env", 512)
    with pytest.raises(WeightsError, match=r"^weights_path .* is neither a weight file"):
        openl3.models.load_audio_embedding_model("mel256", "music", 512, weights_path=str(no_weights))

    wav = no_weights / "a.wav"
    sf.write(wav, chirp(1.0), SR)
    assert cli.main(["audio", str(wav)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("openl3: weights not found (openl3_audio_mel256_music.h5)")
    assert "openl3: openl3:" not in err
    assert "--weights /path/to/openl3_audio_mel256_music.h5" in err.splitlines()[0]
    assert "weights_path" not in err and "--download_only" not in err
    assert cli.main(["image", str(wav), "--weights", str(wav)]) == 2  # a file that is no weight file
    err = capsys.readouterr().err
    assert err.startswith("openl3: ") and "openl3: openl3:" not in err

    # the driver's plugins keep their own advice (`weights:` in the run config)
    from embedkit import registry

    with pytest.raises(WeightsError) as drv:
        registry.create("openl3").load()
    assert str(drv.value).startswith("openl3: weights not found") and "`weights:" in str(drv.value)


def test_python_m_runs_from_an_installed_copy(tmp_path):
    """`python -m embedkit.openl3 --help` where embedkit is a real package (copy of the tree)."""
    import shutil

    pkg = tmp_path / "site" / "embedkit"
    skip = (".venv", ".git", "tests", "benchmarks", "examples", "__pycache__", "output", "docs", "*.egg-info")
    shutil.copytree(ROOT, pkg, ignore=shutil.ignore_patterns(*skip))
    env = {**os.environ, "PYTHONPATH": str(tmp_path / "site")}
    res = subprocess.run([sys.executable, "-m", "embedkit.openl3", "--help"], capture_output=True, text=True,
                         cwd=tmp_path, env=env, timeout=120)
    assert res.returncode == 0, res.stderr
    assert res.stdout.startswith("usage: python -m embedkit.openl3")
    assert "--audio-embedding-size" in res.stdout
    res = subprocess.run([sys.executable, "-m", "embedkit.openl3", "audio", str(tmp_path / "x.wav")],
                         capture_output=True, text=True, cwd=tmp_path, env=env, timeout=120)
    assert res.returncode == 2 and "No files found" in res.stderr
