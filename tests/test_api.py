"""The Python API (`embedkit.load / extract / run / open_results`) gives what the command line gives."""

from __future__ import annotations

import hashlib

import numpy as np
import pytest
import soundfile as sf

import embedkit
from tests.conftest import ROOT, run_cli, tone, write_wav

EXAMPLES = ROOT / "examples" / "audio"


def digests(folder) -> dict[str, str]:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.glob("*.npy"))}


def test_run_writes_the_command_lines_bytes_and_resumes(tmp_path):
    models = {"mel32": {"extractor": "melspec", "n_mels": 32}, "crepe": {"capacity": "tiny", "step_size": 20}}
    stats = embedkit.run(EXAMPLES, tmp_path / "api", models=models, log=lambda msg: None)
    assert (stats.model("mel32").ok, stats.model("crepe").ok, stats.failures) == (3, 3, [])
    yaml = tmp_path / "study.yaml"
    yaml.write_text("models:\n  mel32: {extractor: melspec, n_mels: 32}\n"
                    "  crepe: {capacity: tiny, step_size: 20}\n")
    res = run_cli("--config", str(yaml), "--audio_dir", str(EXAMPLES), "--output_base", str(tmp_path / "cli"))
    assert res.returncode == 0, res.stderr
    for model in models:
        assert digests(tmp_path / "api" / model) == digests(tmp_path / "cli" / model) != {}
    again = embedkit.run(EXAMPLES, tmp_path / "api", models=models, log=lambda msg: None)
    assert (again.model("mel32").ok, again.model("mel32").skipped) == (0, 3)  # nothing recomputed


def test_run_raises_config_error_before_any_work(tmp_path):
    with pytest.raises(embedkit.ConfigError, match="did you mean 'melspec'"):
        embedkit.run(EXAMPLES, tmp_path / "out", models=["melspc"])
    with pytest.raises(embedkit.ConfigError, match="n_mels"):
        embedkit.run(EXAMPLES, tmp_path / "out", models={"melspec": {"n_mels": -1}})
    with pytest.raises(embedkit.ConfigError, match="is a file"):
        embedkit.run(EXAMPLES / "sweep_110_880.wav", tmp_path / "out", models=["melspec"])
    assert not (tmp_path / "out").exists()


def test_extract_equals_the_run_for_files_and_arrays(tmp_path):
    """A file, its samples as int16, and its samples at another rate as float: each equals what a
    run computes from the same input (the same decoding, mixing and resampling)."""
    x = np.stack([tone(220, 1.5, 44100), tone(330, 1.5, 44100, amp=0.3)], axis=1)
    write_wav(tmp_path / "in" / "st.wav", x, 44100)  # stereo 16-bit PCM
    embedkit.run(tmp_path / "in", tmp_path / "out", models={"crepe": {"capacity": "tiny"}},
                 log=lambda msg: None)
    ran = embedkit.open_results(tmp_path / "out")["crepe"].item("st.wav")
    crepe = embedkit.load("crepe", capacity="tiny")
    from_file = embedkit.extract(crepe, tmp_path / "in" / "st.wav")
    pcm, sr = sf.read(tmp_path / "in" / "st.wav", dtype="int16")
    from_array = embedkit.extract(crepe, pcm, sample_rate=sr)
    assert np.array_equal(from_file.data, ran.load()) and np.array_equal(from_array.data, ran.load())
    assert np.allclose(from_file.timestamps, ran.times())
    with pytest.raises(ValueError, match="sample_rate"):
        embedkit.extract(crepe, pcm)
    with pytest.raises(TypeError, match="load"):
        embedkit.extract(crepe, pcm, sample_rate=sr, capacity="full")


def test_extract_an_image_array_equals_the_file():
    from PIL import Image

    from tests.media_synth import scene

    rgb = scene(5, 320, 240)
    resnet = embedkit.load("resnet18", weights_path="random", device="cpu")
    a = embedkit.extract(resnet, rgb).data
    import tempfile

    with tempfile.TemporaryDirectory() as d:
        Image.fromarray(rgb).save(f"{d}/s.png")
        b = embedkit.extract(resnet, f"{d}/s.png").data
    assert a.shape == (512,) and np.array_equal(a, b)
