"""`run_extraction.py --models openl3 | mert | clmr` end to end with weights supplied as a user would:
a local file or folder in the config, the cache folder, or the Hugging Face cache offline.
And without weights: a clear error naming where to put them, while the other models run."""

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from tests.conftest import REFERENCE, run_cli, tone, write_wav
from tests.test_clmr import encoder_state
from tests.test_mert import _fake_hub_cache, write_checkpoint


@pytest.fixture
def audio_dir(tmp_path):
    d = tmp_path / "audio"
    write_wav(d / "a.wav", tone(330, 3.0, 44100), 44100)
    write_wav(d / "b.flac", np.stack([tone(220, 2.0, 22050)] * 2, 1), 22050)
    return d


def npy(out: Path, model: str) -> dict[str, np.ndarray]:
    return {p.name: np.load(p) for p in sorted((out / model).glob("*.npy"))}


def test_openl3_with_weights_from_config_then_cache(tmp_path, audio_dir):
    h5 = REFERENCE / "openl3_random" / "openl3_audio_mel256_music.h5"
    if not h5.exists():
        pytest.skip(f"{h5} absent (reference data sits beside the project in CI)")
    cfg = tmp_path / "c.yaml"
    cfg.write_text(f"models:\n  openl3:\n    hop_size: 0.5\n    weights: {h5}\n")
    out = tmp_path / "out"
    res = run_cli("--config", str(cfg), "--audio_dir", str(audio_dir), "--output_base", str(out))
    assert res.returncode == 0, res.stdout + res.stderr
    arrays = npy(out, "openl3")
    # centred 1 s windows every 0.5 s: 3 s -> 1 + ceil((3 + 0.5 - 1) / 0.5) = 6 windows; 2 s -> 4
    assert arrays["a.npy"].shape == (6, 512) and arrays["b.npy"].shape == (4, 512)
    meta = json.loads((out / "openl3" / "features.json").read_text())
    assert meta["hop_seconds"] == 0.5 and len(meta["provenance"]["weights_sha256"]) == 64

    # no weights anywhere: a clear error naming the cache path; melspec still runs
    out2 = tmp_path / "out2"
    env = {"EMBEDKIT_CACHE": str(tmp_path / "cache"), "EMBEDKIT_OFFLINE": "1"}
    res = run_cli("--audio_dir", str(audio_dir), "--output_base", str(out2), "--models", "openl3", "melspec",
                  env=env)
    assert res.returncode == 1
    # one short line says what is missing and the command that fixes it; the details go to failures.json
    said = [line for line in (res.stdout + res.stderr).splitlines() if "weights not found" in line]
    assert len(said) == 1 and len(said[0]) < 300 and "--download_only --models openl3" in said[0], said
    assert "weights:" in said[0] and "not loaded" in res.stdout
    load = [f for f in json.loads((out2 / "failures.json").read_text())["failures"] if f["stage"] == "load"]
    assert (len(load) == 1 and load[0]["files"] == 2
            and str(tmp_path / "cache" / "openl3") in load[0]["details"])
    assert len(npy(out2, "melspec")) == 2 and not npy(out2, "openl3")
    # once the file is in the cache, the same command works
    (tmp_path / "cache" / "openl3").mkdir(parents=True)
    (tmp_path / "cache" / "openl3" / h5.name).write_bytes(h5.read_bytes())
    res = run_cli("--audio_dir", str(audio_dir), "--output_base", str(out2), "--models", "openl3", "melspec",
                  "--set", "openl3.hop_size=0.5", "--overwrite", env=env)
    assert res.returncode == 0, res.stdout + res.stderr
    for name, arr in npy(out2, "openl3").items():
        np.testing.assert_array_equal(arr, arrays[name])


def test_mert_from_local_folder_and_offline_hub_cache(tmp_path, audio_dir):
    folder = tmp_path / "mert_ckpt"
    write_checkpoint(folder)
    out = tmp_path / "out"
    res = run_cli("--audio_dir", str(audio_dir), "--output_base", str(out), "--models", "mert",
                  "--set", f"mert.weights={folder}")
    assert res.returncode == 0, res.stdout + res.stderr
    local = npy(out, "mert")
    assert local["a.npy"].shape[0] in (224, 225) and local["b.npy"].shape[0] in (149, 150)  # ~75 frames/s

    _fake_hub_cache(tmp_path / "hf" / "hub")
    out2 = tmp_path / "out2"
    res = run_cli("--audio_dir", str(audio_dir), "--output_base", str(out2), "--models", "mert",
                  env={"HF_HOME": str(tmp_path / "hf"), "HF_HUB_OFFLINE": "1", "HF_HUB_CACHE": ""})
    assert res.returncode == 0, res.stdout + res.stderr
    meta = json.loads((out2 / "mert" / "features.json").read_text())
    assert meta["provenance"]["weights"]["repo_id"] == "m-a-p/MERT-v1-95M"
    assert len(meta["provenance"]["weights_sha256"]) == 64
    res = run_cli("--models", "mert", "--download_only",
                  env={"HF_HOME": str(tmp_path / "hf"), "HF_HUB_OFFLINE": "1", "HF_HUB_CACHE": ""})
    assert res.returncode == 0 and "weights ready" in res.stdout


def test_clmr_from_local_checkpoint(tmp_path, audio_dir):
    ckpt = tmp_path / "clmr_checkpoint_10000.pt"
    torch.save({f"encoder.{k}": v for k, v in encoder_state(3).items()}, ckpt)
    cfg = tmp_path / "c.yaml"
    cfg.write_text(f"models:\n  clmr:\n    weights: {ckpt}\n    last_clip: pad\n")
    out = tmp_path / "out"
    res = run_cli("--config", str(cfg), "--audio_dir", str(audio_dir), "--output_base", str(out))
    assert res.returncode == 0, res.stdout + res.stderr
    arrays = npy(out, "clmr")
    assert arrays["a.npy"].shape == (2, 512) and arrays["b.npy"].shape == (1, 512)  # 3 s, 2 s at 59049/22050
    meta = json.loads((out / "clmr" / "features.json").read_text())
    assert meta["first_frame_seconds"] == pytest.approx(29524.5 / 22050)
    assert len(meta["provenance"]["weights_sha256"]) == 64
