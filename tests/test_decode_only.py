"""The preflight (--decode_only): every file decoded and resampled for the configured models with
no weights anywhere, bad files listed with their cause (exit 1), feed rates per stage, nothing
written but its own report."""

import json
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from tests.conftest import click_track, color_frames, encode_video, run_cli, tone, write_wav

AUDIO_MODELS = ["openl3", "crepe", "madmom", "mert", "clmr"]  # the original script's five


def no_weights(tmp_path: Path) -> dict:
    """Every weight lookup pointed at an empty folder, downloads off."""
    empty = tmp_path / "no_weights"
    empty.mkdir()
    return {"EMBEDKIT_CACHE": str(empty), "HF_HOME": str(empty), "HF_HUB_CACHE": str(empty / "hub"),
            "TORCH_HOME": str(empty), "XDG_CACHE_HOME": str(empty), "EMBEDKIT_OFFLINE": "1",
            "HF_HUB_OFFLINE": "1"}


def files_under(folder: Path) -> list[str]:
    return sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file())


@pytest.mark.parametrize("workers", ["0", "2"])
def test_decode_only_without_weights_lists_bad_files(tmp_path, workers):
    audio = tmp_path / "audio"
    for i in range(3):
        write_wav(audio / f"good{i}.wav", np.stack([click_track(100, 2.0, 44100, seed=i)] * 2, 1), 44100)
    (audio / "text.wav").write_text("not audio at all\n" * 40)
    sf.write(audio / "_t.flac", tone(440, 2.0, 44100), 44100, format="FLAC")
    whole = (audio / "_t.flac").read_bytes()
    (audio / "cut.flac").write_bytes(whole[: len(whole) // 2])  # decodes a while, then is corrupt
    (audio / "_t.flac").unlink()
    out = tmp_path / "out"
    env = no_weights(tmp_path)
    res = run_cli("--decode_only", "--audio_dir", str(audio), "--output_base", str(out),
                  "--models", *AUDIO_MODELS, "--decode_workers", workers, env=env)
    assert res.returncode == 1, res.stdout + res.stderr
    assert "2 bad file(s)" in res.stdout
    lines = {line.split(" [")[0].strip(): line for line in res.stdout.splitlines() if " [" in line}
    assert set(lines) == {"text.wav", "cut.flac"}
    assert "MediaError" in lines["text.wav"] and "openl3, crepe, madmom, mert, clmr" in lines["text.wav"]
    assert files_under(out) == ["decode_only_report.json"]  # no array, manifest, features.json, lock
    report = json.loads((out / "decode_only_report.json").read_text())
    assert report["files"] == 5 and report["bad_files"] == 2
    assert report["decode_workers"] == int(workers)
    stages = report["stages"]
    assert stages["decode audio"]["audio_seconds"] == pytest.approx(6.0)
    keys = {k for k in stages if k.startswith("resample")}
    # openl3 48 kHz kaiser_best float64, crepe 16 kHz kaiser_best, mert 24 kHz, clmr 22.05 kHz
    # (soxr); madmom takes 44.1 kHz as it is
    assert keys == {"resample 48000 Hz kaiser_best float64", "resample 16000 Hz kaiser_best float32",
                    "resample 24000 Hz soxr_hq", "resample 22050 Hz soxr_hq"}
    for name, st in stages.items():
        assert st["audio_seconds_per_second"] > 0, name
    for model in AUDIO_MODELS:
        m = report["models"][model]
        assert m["audio_seconds"] == pytest.approx(6.0)
        assert m["audio_seconds_per_second_one_core"] > 0 and m["audio_seconds_per_second_this_run"] > 0


def test_decode_only_all_good_exits_0_and_leaves_outputs_alone(tmp_path):
    audio = tmp_path / "audio"
    write_wav(audio / "a.wav", tone(220, 1.0, 44100), 44100)
    out = tmp_path / "out"
    args = ["--audio_dir", str(audio), "--output_base", str(out), "--models", "melspec"]
    assert run_cli(*args).returncode == 0
    before = {p: p.read_bytes() for p in out.rglob("*") if p.is_file()}
    res = run_cli("--decode_only", *args)
    assert res.returncode == 0, res.stderr
    assert "no bad file" in res.stdout
    after = {p: p.read_bytes() for p in out.rglob("*") if p.is_file()}
    assert after.pop(out / "decode_only_report.json")
    assert after == before  # the run's own outputs, report and manifest untouched
    # and a real run afterwards still finds everything done
    res = run_cli(*args)
    assert res.returncode == 0 and "already complete: 1" in res.stderr


def test_decode_only_images_and_video_frames(tmp_path):
    from PIL import Image

    media_dir = tmp_path / "media"
    media_dir.mkdir()
    Image.fromarray(np.full((40, 50, 3), 100, np.uint8)).save(media_dir / "pic.png")
    (media_dir / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"\x00" * 20)
    encode_video(media_dir / "clip.mp4", color_frames(12), fps=12, audio=tone(330, 1.0, 44100))
    out = tmp_path / "out"
    res = run_cli("--decode_only", "--audio_dir", str(media_dir), "--output_base", str(out),
                  "--models", "resnet18", "r3d18", "melspec", env=no_weights(tmp_path))
    assert res.returncode == 1, res.stdout + res.stderr
    report = json.loads((out / "decode_only_report.json").read_text())
    assert [b["file"] for b in report["bad"]] == ["broken.png"]
    assert report["stages"]["decode images"]["images"] == 1
    assert report["stages"]["decode video frames"]["frames"] == 12
    assert report["models"]["resnet18"] == {"images": 1, "images_per_second_one_core": pytest.approx(
        report["stages"]["decode images"]["images_per_second"]), "images_per_second_this_run": pytest.approx(
        1 / report["wall_seconds"], rel=0.02)}
    assert report["models"]["r3d18"]["frames"] == 12
    assert report["models"]["melspec"]["audio_seconds"] == pytest.approx(1.0, abs=0.1)
    assert files_under(out) == ["decode_only_report.json"]
