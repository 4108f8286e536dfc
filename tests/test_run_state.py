"""What an output folder holds, and how reruns keep it true: output names from what each input
folder holds (never from the run's selection), names no longer current (stale_outputs), the
manifest's config digest and input fingerprint (a changed input is computed again, an unchanged
one never), one configuration per model folder (claimed atomically), an array whose manifest line
a kill cut off (repaired), failures.json as the folder's current state."""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from embedkit import pipeline, registry
from embedkit.extractors.base import ConfigError
from tests.conftest import ROOT, run_cli, tone, write_wav


def manifest(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "manifest.jsonl").read_text().splitlines()]


def npys(folder: Path) -> dict[str, bytes]:
    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in sorted(folder.rglob("*.npy"))}


def report(out: Path) -> dict:
    return json.loads((out / "run_report.json").read_text())


def melspec(audio: Path, out: Path, *more: str):
    return run_cli("--audio_dir", str(audio), "--output_base", str(out), "--models", "melspec", *more)


# -- names ---------------------------------------------------------------------------------------
def test_output_names_do_not_depend_on_extensions(tmp_path):
    """`--extensions .wav` once, then every file: one output per file, the same names both times."""
    audio = tmp_path / "in"
    write_wav(audio / "dup.wav", tone(300, 0.5, 16000), 16000)
    write_wav(audio / "dup.flac", tone(500, 0.5, 16000), 16000)
    write_wav(audio / "solo.wav", tone(700, 0.5, 16000), 16000)
    out = tmp_path / "out"
    assert melspec(audio, out, "--extensions", ".wav").returncode == 0
    assert sorted(npys(out / "melspec")) == ["dup.wav.npy", "solo.npy"]  # dup.flac counts, unread
    assert melspec(audio, out).returncode == 0
    assert sorted(npys(out / "melspec")) == ["dup.flac.npy", "dup.wav.npy", "solo.npy"]
    assert report(out)["models"]["melspec"]["skipped"] == 2 and report(out)["stale_outputs"] == []
    records = manifest(out)
    assert sorted(r["source"] for r in records) == ["dup.flac", "dup.wav", "solo.wav"]  # each once


def test_names_no_longer_current_are_said_and_listed(tmp_path):
    """A file added beside `dup.wav` renames its output (`dup.npy` -> `dup.wav.npy`): the rerun says
    so and lists the old one in run_report.json stale_outputs; the manifest's last record per
    (model, source) names the current one."""
    audio = tmp_path / "in"
    write_wav(audio / "dup.wav", tone(300, 0.5, 16000), 16000)
    out = tmp_path / "out"
    assert melspec(audio, out).returncode == 0
    assert sorted(npys(out / "melspec")) == ["dup.npy"]
    write_wav(audio / "dup.flac", tone(500, 0.5, 16000), 16000)
    res = melspec(audio, out)
    assert res.returncode == 0, res.stderr
    assert sorted(npys(out / "melspec")) == ["dup.flac.npy", "dup.npy", "dup.wav.npy"]
    assert report(out)["stale_outputs"] == [
        {"output": "melspec/dup.npy", "model": "melspec", "source": "dup.wav",
         "current": "melspec/dup.wav.npy"}]
    assert "1 output(s) from earlier runs under a name no longer current" in res.stderr
    assert "melspec/dup.npy, now melspec/dup.wav.npy" in res.stderr
    last = {(r["model"], r["source"]): r["output"] for r in manifest(out)}
    assert last[("melspec", "dup.wav")] == "melspec/dup.wav.npy"
    # the same bytes as the current output: the old one is the same computation, only its name changed
    assert (out / "melspec" / "dup.npy").read_bytes() == (out / "melspec" / "dup.wav.npy").read_bytes()
    (out / "melspec" / "dup.npy").unlink()  # tidied up: no longer listed
    assert melspec(audio, out).returncode == 0 and report(out)["stale_outputs"] == []


def test_output_folder_inside_the_input_folder_is_left_out(tmp_path):
    """`--output_base media/feats --recursive`: the second run never reads its own outputs (a .wav
    written into the output tree, as a plot or an export might be, included)."""
    audio = tmp_path / "media"
    write_wav(audio / "a.wav", tone(300, 0.5, 16000), 16000)
    out = audio / "feats"
    assert melspec(audio, out, "--recursive").returncode == 0
    write_wav(out / "exports" / "clip.wav", tone(400, 0.5, 16000), 16000)
    res = melspec(audio, out, "--recursive")
    assert res.returncode == 0, res.stderr
    assert "found 1 file(s)" in res.stderr
    assert f"left out: the output folder {out} (inside the input folder): never read as input" in res.stderr
    assert sorted(npys(out / "melspec")) == ["a.npy"]
    flat = melspec(audio, out)  # without --recursive it is not counted as a media sub-folder either
    assert flat.returncode == 0 and "in sub-folders" not in flat.stderr
    assert melspec(audio, audio).returncode == 2  # the input folder itself: refused


# -- what each array was computed from ----------------------------------------------------------------
def test_every_record_names_its_configuration_and_input(tmp_path):
    audio = tmp_path / "in"
    path = write_wav(audio / "a.wav", tone(300, 0.5, 16000), 16000)
    out = tmp_path / "out"
    assert melspec(audio, out, "--set", "melspec.n_mels=32").returncode == 0
    meta = json.loads((out / "melspec" / "features.json").read_text())
    (rec,) = manifest(out)
    assert rec["config"] == meta["config_digest"] and len(rec["config"]) == 16
    job = pipeline.ModelJob("melspec", registry.create("melspec", n_mels=32))
    assert job.config_digest == rec["config"]  # the same configuration gives the same digest anywhere
    import hashlib

    st = path.stat()
    assert rec["input"] == {"size": st.st_size, "mtime_ns": st.st_mtime_ns,
                            "sha256": hashlib.sha256(path.read_bytes()).hexdigest()}


def test_a_changed_input_is_computed_again_an_unchanged_one_never(tmp_path):
    audio = tmp_path / "in"
    write_wav(audio / "a.wav", tone(300, 1.0, 16000), 16000)
    write_wav(audio / "b.wav", tone(500, 1.0, 16000), 16000)
    out = tmp_path / "out"
    assert melspec(audio, out).returncode == 0
    before = npys(out)
    # the same name, other sound of the same length (same size): the content decides
    write_wav(audio / "a.wav", tone(900, 1.0, 16000), 16000)
    os.utime(audio / "b.wav")  # touched, the same bytes: not an other input
    res = melspec(audio, out)
    assert res.returncode == 0, res.stderr
    m = report(out)["models"]["melspec"]
    assert (m["ok"], m["skipped"]) == (1, 1) and report(out)["computed_again"] == {"input": 1}
    assert "computed again: 1 output(s) whose input changed" in res.stderr
    after = npys(out)
    assert after["melspec/b.npy"] == before["melspec/b.npy"]
    assert after["melspec/a.npy"] != before["melspec/a.npy"]
    clean = tmp_path / "clean"
    assert melspec(audio, clean).returncode == 0
    assert npys(clean) == after  # what a clean run on the new file gives
    again = melspec(audio, out)  # and then nothing more
    assert again.returncode == 0 and report(out)["models"]["melspec"]["skipped"] == 2


# -- one configuration per model folder -----------------------------------------------------------------
def jobs(n_mels: int) -> list[pipeline.ModelJob]:
    return [pipeline.ModelJob("melspec", registry.create("melspec", n_mels=n_mels))]


def test_two_configurations_starting_together_cannot_both_write_a_folder(tmp_path):
    """The race of two runs with other parameters: both pass the early check (no features.json yet),
    the first to claim the folder writes; the other stops with a configuration error before it
    writes any array."""
    audio = tmp_path / "in"
    for i in range(3):
        write_wav(audio / f"{i}.wav", tone(300 + 100 * i, 0.5, 16000), 16000)
    out = tmp_path / "out"
    a, b = jobs(64), jobs(32)
    pipeline.check_previous_params(a, out, overwrite=False)
    pipeline.check_previous_params(b, out, overwrite=False)  # both pass: nothing there yet
    first = pipeline.Runner(a, pipeline.RunOptions(audio, out, progress=False), log=lambda m: None)
    first.run()
    second = pipeline.Runner(b, pipeline.RunOptions(audio, out, progress=False), log=lambda m: None)
    with pytest.raises(ConfigError, match="another run, perhaps still running"):
        second.run()
    meta = json.loads((out / "melspec" / "features.json").read_text())
    assert meta["params"]["n_mels"] == 64
    assert {np.load(p).shape[1] for p in (out / "melspec").glob("*.npy")} == {64}
    assert {r["config"] for r in manifest(out)} == {meta["config_digest"]} and len(manifest(out)) == 3


def test_concurrent_drivers_with_other_parameters(tmp_path):
    """Two drivers at once on one folder, n_mels 64 and 32: one writes, the other exits 2 (from the
    early check or from the claim, whichever moment it reaches), and every array agrees with
    features.json."""
    audio = tmp_path / "in"
    for i in range(6):
        write_wav(audio / f"{i}.wav", tone(300 + 50 * i, 1.0, 16000), 16000)
    out = tmp_path / "out"
    cmd = [sys.executable, str(ROOT / "run_extraction.py"), "--no_progress", "--audio_dir", str(audio),
           "--output_base", str(out), "--models", "melspec"]
    procs = [subprocess.Popen(cmd + extra, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                              text=True) for extra in ([], ["--set", "melspec.n_mels=32"])]
    results = [(p.returncode, err) for p in procs for _, err in [p.communicate(timeout=300)]]
    assert sorted(rc for rc, _ in results) == [0, 2], results
    assert "configuration error" in next(err for rc, err in results if rc == 2)
    meta = json.loads((out / "melspec" / "features.json").read_text())
    assert {np.load(p).shape[1] for p in (out / "melspec").glob("*.npy")} == {meta["params"]["n_mels"]}
    assert {r["config"] for r in manifest(out)} == {meta["config_digest"]} and len(manifest(out)) == 6


def test_a_folder_replaced_by_an_overwrite_run_takes_no_more_arrays(tmp_path):
    """A run whose features.json another run replaced (--overwrite, other parameters) writes no more
    arrays there: its remaining files fail, saying why."""
    audio = tmp_path / "in"
    write_wav(audio / "a.wav", tone(300, 0.5, 16000), 16000)
    write_wav(audio / "b.wav", tone(400, 0.5, 16000), 16000)
    out = tmp_path / "out"
    runner = pipeline.Runner(jobs(64), pipeline.RunOptions(audio, out, progress=False), log=lambda m: None)
    items = runner.prepare()
    pipeline.write_metadata(_loaded(32, out), out, overwrite=True)  # the other run, meanwhile
    m = pipeline.decode(audio, items[0], items[0].jobs)
    res = next(pipeline.extract(items[0], items[0].jobs, m))
    outcome = pipeline.store(out, items[0], res, m, runner.run_id)
    assert outcome.status == "failed" and "now describes another configuration" in outcome.cause
    assert not list((out / "melspec").glob("*.npy"))


def _loaded(n_mels: int, out: Path) -> pipeline.ModelJob:
    job = jobs(n_mels)[0]
    job.out_dir = out / job.alias
    return job


# -- an array whose manifest line was cut off ---------------------------------------------------------------
@pytest.mark.slow
def test_kill_between_an_outputs_rename_and_its_manifest_line_is_repaired(tmp_path):
    """strace kills the run at its n-th openat of manifest.jsonl: where that open was the one for
    appending a line, an array is complete without its line (the window the issue found). The
    next run computes it again (same bytes) and writes the line: one record per output, none lost."""
    if shutil.which("strace") is None:
        pytest.skip("strace is not installed (apt-get install strace)")
    audio = tmp_path / "in"
    for i in range(8):
        write_wav(audio / f"t{i}.wav", tone(200 + 60 * i, 0.5, 16000), 16000)
    args = ["--audio_dir", str(audio), "--models", "melspec", "--prefetch", "1"]
    clean = tmp_path / "clean"
    assert run_cli(*args, "--output_base", str(clean)).returncode == 0
    out = None
    for when in range(2, 16):  # the n-th open may be a read (the claim looks for other drivers' lines)
        out = tmp_path / f"out{when}"
        out.mkdir()
        subprocess.run(["strace", "-f", "-qq", "-o", "/dev/null", "-P", str(out / "manifest.jsonl"),
                        "-e", f"inject=openat:signal=SIGKILL:when={when}", sys.executable,
                        str(ROOT / "run_extraction.py"), "--no_progress", *args, "--output_base", str(out)],
                       cwd=ROOT, capture_output=True, timeout=300)
        if len(npys(out / "melspec")) == len(manifest(out)) + 1:
            break
    else:
        pytest.fail("no kill landed between a rename and its manifest line")
    lines = len(manifest(out))
    res = run_cli(*args, "--output_base", str(out))
    assert res.returncode == 0, res.stderr
    assert "computed again: 1 output(s) whole array(s) without their manifest line" in res.stderr
    assert report(out)["computed_again"] == {"unrecorded": 1}
    assert report(out)["models"]["melspec"]["skipped"] == lines  # everything recorded is kept
    records = manifest(out)
    assert sorted(r["source"] for r in records) == [f"t{i}.wav" for i in range(8)]
    assert npys(out) == npys(clean)


# -- failures.json: the folder's current state ----------------------------------------------------------
def test_failures_json_is_the_folders_current_state(tmp_path):
    audio = tmp_path / "in"
    write_wav(audio / "good.wav", tone(300, 1.0, 16000), 16000)
    (audio / "bad.wav").write_text("not a wave file\n" * 20)
    (audio / "empty.wav").write_bytes(b"")
    out = tmp_path / "out"
    args = ["--audio_dir", str(audio), "--output_base", str(out)]
    first = run_cli(*args, "--models", "melspec", "madmom")
    assert first.returncode == 1
    state = json.loads((out / "failures.json").read_text())
    assert {(f["file"], f["model"]) for f in state["failures"]} == {
        (f, m) for f in ("bad.wav", "empty.wav") for m in ("melspec", "madmom")}
    # per file, every model together
    assert [f["file"] for f in state["failures"]] == ["bad.wav", "bad.wav", "empty.wav", "empty.wav"]
    assert set(state["by_file"]["bad.wav"]) == {"melspec", "madmom"}
    first_run = state["run"]
    # a run of one model keeps the other model's failures, and replaces its own
    write_wav(audio / "bad.wav", tone(500, 1.0, 16000), 16000)  # fixed
    second = run_cli(*args, "--models", "melspec")
    assert second.returncode == 1  # empty.wav still fails
    state = json.loads((out / "failures.json").read_text())
    assert {(f["file"], f["model"], f["run"] == first_run) for f in state["failures"]} == {
        ("bad.wav", "madmom", True), ("empty.wav", "madmom", True), ("empty.wav", "melspec", False)}
    assert state["still_failing"] == 3
    assert "(3 still failing in this folder, 1 from this run)" in second.stdout
    # each run's own failures stay in its report under reports/
    history = sorted((out / "reports").glob("run-*.json"))
    assert [len(json.loads(p.read_text())["failures"]) for p in history] == [4, 1]
    (audio / "empty.wav").unlink()  # gone: nothing to fail any more
    third = run_cli(*args, "--models", "melspec", "madmom")
    assert third.returncode == 0, third.stdout
    assert json.loads((out / "failures.json").read_text())["failures"] == []
