"""The driver end to end, in subprocesses: outputs, metadata, failures, resume after SIGKILL,
config errors."""

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from tests.conftest import (ROOT, click_track, default_sigint, hold, recorded_outputs, release, run_cli, tone,
                            write_wav)


def make_corpus(folder: Path, n: int = 4, seconds: float = 2.0) -> list[str]:
    names = []
    for i in range(n):
        audio = click_track(100 + 10 * i, seconds, 44100, seed=i) + tone(220 * (i + 1), seconds, 44100, 0.2)
        name = f"track_{i:02d}.wav"
        write_wav(folder / name, audio, 44100)
        names.append(name)
    return names


def all_files(folder: Path) -> dict[str, bytes]:
    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in sorted(folder.rglob("*.npy"))}


def leftovers(folder: Path) -> list[str]:
    return [p.name for p in folder.rglob(".*") if p.is_file()]


def test_end_to_end_outputs_metadata_and_report(tmp_path):
    audio = tmp_path / "audio"
    make_corpus(audio, 2)
    write_wav(audio / "sub" / "deep.flac", tone(440, 1.0, 48000), 48000)
    out = tmp_path / "out"
    res = run_cli("--audio_dir", str(audio), "--output_base", str(out), "--models", "madmom", "melspec",
                  "--recursive", "--verbose")
    assert res.returncode == 0, res.stderr + res.stdout
    act = np.load(out / "madmom" / "track_00.npy")
    assert act.shape == (200,) and act.dtype == np.float32  # 2 s at 100 fps
    mel = np.load(out / "melspec" / "sub" / "deep.npy")
    assert mel.shape == (101, 64)  # 1 s at 16 kHz, hop 160: 1 + 16000 // 160
    meta = json.loads((out / "melspec" / "features.json").read_text())
    assert meta["axes"] == ["time", "mel"] and meta["hop_seconds"] == 0.01 and meta["params"]["n_mels"] == 64
    manifest = [json.loads(line) for line in (out / "manifest.jsonl").read_text().splitlines()]
    assert {(m["model"], m["source"]) for m in manifest} == {
        (model, src) for model in ("madmom", "melspec")
        for src in ("track_00.wav", "track_01.wav", "sub/deep.flac")
    }
    report = json.loads((out / "run_report.json").read_text())
    madmom = report["models"]["madmom"]
    assert madmom["ok"] == 3 and madmom["audio_seconds"] == pytest.approx(5.0)
    for key in ("inference_seconds", "write_seconds", "resample_seconds", "realtime_factor", "wall_seconds"):
        assert key in report["models"]["melspec"]
    assert "shape (200,)" in res.stderr and "x RT" in res.stdout  # progress on stderr, the table on stdout
    assert leftovers(out) == []

    # the same command again computes nothing
    again = run_cli("--audio_dir", str(audio), "--output_base", str(out), "--models", "madmom", "melspec",
                    "--recursive")
    assert again.returncode == 0
    report = json.loads((out / "run_report.json").read_text())
    assert report["models"]["madmom"]["skipped"] == 3 and report["models"]["madmom"]["ok"] == 0


def test_bad_files_are_reported_and_skipped(tmp_path):
    audio = tmp_path / "audio"
    make_corpus(audio, 2)
    (audio / "empty.wav").write_bytes(b"")
    (audio / "text.wav").write_text("hello, I am not a wave file\n" * 20)
    (audio / "random.mp3").write_bytes(np.random.default_rng(0).bytes(5000))
    good = (audio / "track_00.wav").read_bytes()
    (audio / "truncated.wav").write_bytes(good[:30])
    write_wav(audio / "header_only.wav", np.zeros(0, np.float32), 44100)
    nan = tone(440, 0.5, 44100)
    nan[100] = np.inf
    write_wav(audio / "inf.wav", nan, 44100, "FLOAT")
    out = tmp_path / "out"
    res = run_cli("--audio_dir", str(audio), "--output_base", str(out), "--models", "melspec", "madmom")
    assert res.returncode == 1, res.stdout + res.stderr
    failures = json.loads((out / "failures.json").read_text())["failures"]
    bad = {"empty.wav", "text.wav", "random.mp3", "truncated.wav", "header_only.wav", "inf.wav"}
    assert {f["file"] for f in failures} == bad
    assert {(f["file"], f["model"]) for f in failures} == {(b, m) for b in bad for m in ("melspec", "madmom")}
    assert all(f["cause"] for f in failures)
    assert {p.name for p in (out / "melspec").glob("*.npy")} == {"track_00.npy", "track_01.npy"}
    assert "failure" in res.stdout and "inf.wav" in res.stdout
    causes = {f["file"]: f["cause"] for f in failures if f["model"] == "melspec"}
    assert causes["empty.wav"] == "empty file (0 bytes)"
    assert causes["random.mp3"].startswith("not a decodable audio file (libsndfile: ")
    assert "holds text" in causes["text.wav"] and "NaN/Inf" in causes["inf.wav"]
    assert leftovers(out) == []
    # failures are retried on the next run (and fail again), done files are skipped
    res2 = run_cli("--audio_dir", str(audio), "--output_base", str(out), "--models", "melspec")
    report = json.loads((out / "run_report.json").read_text())
    assert res2.returncode == 1 and report["models"]["melspec"] == {**report["models"]["melspec"], "ok": 0,
                                                                     "failed": 6, "skipped": 2}


@pytest.mark.slow
def test_sigkill_then_resume_is_byte_identical(tmp_path):
    audio = tmp_path / "audio"
    make_corpus(audio, 10, seconds=3.0)
    last = click_track(150, 3.0, 44100, seed=99)
    write_wav(audio / "zz_last.wav", last, 44100)
    args = ["--audio_dir", str(audio), "--models", "madmom", "melspec"]
    clean = tmp_path / "clean"
    assert run_cli(*args, "--output_base", str(clean)).returncode == 0

    (audio / "zz_last.wav").unlink()
    hold(audio / "zz_last.wav")  # the run waits there: the kill always lands mid-run
    killed = tmp_path / "killed"
    proc = subprocess.Popen([sys.executable, str(ROOT / "run_extraction.py"), "--no_progress", *args,
                             "--output_base", str(killed)], cwd=ROOT, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    manifest = killed / "manifest.jsonl"
    deadline = time.time() + 300
    while time.time() < deadline:
        if manifest.exists() and len(manifest.read_text().splitlines()) >= 5:
            break
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    partial = all_files(killed)
    assert 5 <= len(partial) < 22
    # done = a whole array with its manifest line (one whose line the kill cut off is computed again)
    recorded = set(partial) & set(recorded_outputs(killed))
    release(audio / "zz_last.wav", last, 44100)
    res = run_cli(*args, "--output_base", str(killed), "--skip_existing")
    assert res.returncode == 0, res.stdout + res.stderr
    report = json.loads((killed / "run_report.json").read_text())
    assert sum(m["skipped"] for m in report["models"].values()) == len(recorded)
    assert all_files(killed) == all_files(clean)
    assert leftovers(killed) == []


def test_sigterm_stops_cleanly_with_report(tmp_path):
    audio = tmp_path / "audio"
    make_corpus(audio, 3, seconds=3.0)
    hold(audio / "zz_last.wav")  # reached after the others: the run is surely still going
    out = tmp_path / "out"
    # started as `cmd &` in a script starts it: ignoring SIGINT, which the run must leave ignored
    proc = subprocess.Popen([sys.executable, str(ROOT / "run_extraction.py"), "--no_progress", "--audio_dir",
                             str(audio), "--output_base", str(out), "--models", "madmom"], cwd=ROOT,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_IGN))
    manifest = out / "manifest.jsonl"
    deadline = time.time() + 300
    while time.time() < deadline and (not manifest.exists() or len(manifest.read_text().splitlines()) < 3):
        time.sleep(0.02)
    status = Path(f"/proc/{proc.pid}/status")
    if status.exists():  # Linux: the signal masks of the running process
        line = next(x for x in status.read_text().splitlines() if x.startswith("SigIgn:"))
        ignored = int(line.split()[1], 16)
        assert ignored >> (signal.SIGINT - 1) & 1, "the run took over a SIGINT it was started ignoring"
    proc.send_signal(signal.SIGTERM)
    stdout, _ = proc.communicate(timeout=120)
    assert proc.returncode == 143
    report = json.loads((out / "run_report.json").read_text())
    assert report["interrupted"] == "SIGTERM" and "rerun" in stdout
    assert report["models"]["madmom"]["ok"] == 3
    assert leftovers(out) == []  # the lock the decoder took on the waiting file is gone too
    for p in (out / "madmom").glob("*.npy"):
        assert np.load(p).shape == (300,)


@pytest.mark.parametrize("yaml_text, needle", [
    ("models: [melspec\n", "invalid YAML"),
    ("audio_dirr: x\n", "unknown key 'audio_dirr' at the top level (did you mean 'audio_dir'?)"),
    ("models: [melspecc]\n", "unknown model 'melspecc' (did you mean 'melspec'?)"),
    ("models:\n  melspec: {n_mel: 3}\n",
     "models.melspec: melspec: unknown parameter 'n_mel' (did you mean 'n_mels'?)"),
    ("models:\n  melspec: 5\n", "models.melspec: expected a mapping of parameters"),
    ("models:\n  melspec: {n_mels: many}\n", "'n_mels' = 'many' is invalid"),
    ("recursive: maybe\n", "recursive must be bool"),
    ("models:\n  melspec: {batch_size: -1}\n", "batch_size: expected a positive integer"),
])
def test_config_errors_stop_before_any_work(tmp_path, yaml_text, needle):
    cfg = tmp_path / "c.yaml"
    cfg.write_text(yaml_text)
    out = tmp_path / "out"
    res = run_cli("--config", str(cfg), "--audio_dir", str(ROOT / "examples" / "audio"),
                  "--output_base", str(out))
    assert res.returncode == 2
    assert needle in res.stderr
    assert not out.exists()


def test_every_config_mistake_is_reported_at_once(tmp_path):
    cfg = tmp_path / "c.yaml"
    cfg.write_text("recursiv: true\nprefetch: 0\n"
                   "models:\n  melspec: {n_mel: 3, pooling: max}\n  madmom: {beat: true}\n")
    res = run_cli("--config", str(cfg), "--audio_dir", str(ROOT / "examples" / "audio"),
                  "--output_base", str(tmp_path / "out"), "--set", "melspecc.n_mels=3")
    assert res.returncode == 2 and "6 problems" in res.stderr, res.stderr
    for needle in ["'recursiv' at the top level (did you mean 'recursive'?)", "prefetch must be >= 1",
                   "'n_mel' (did you mean 'n_mels'?)", "'pooling' = 'max' is invalid",
                   "unknown parameter 'beat' (did you mean 'beats'?)",
                   "model 'melspecc' is not in this run"]:
        assert needle in res.stderr, needle
    assert not (tmp_path / "out").exists()


def test_flags_override_config_and_set_param(tmp_path):
    cfg = tmp_path / "c.yaml"
    cfg.write_text(f"audio_dir: /nonexistent\noutput_base: {tmp_path / 'wrong'}\n"
                   "models:\n  melspec: {n_mels: 32}\n")
    out = tmp_path / "out"
    res = run_cli("--config", str(cfg), "--audio_dir", str(ROOT / "examples" / "audio"),
                  "--output_base", str(out), "--set", "melspec.hop_length=320")
    assert res.returncode == 0, res.stderr
    meta = json.loads((out / "melspec" / "features.json").read_text())
    assert meta["params"]["n_mels"] == 32 and meta["params"]["hop_length"] == 320
    assert not (tmp_path / "wrong").exists()
    # a later run with other parameters into the same folder is refused before any work
    res = run_cli("--config", str(cfg), "--audio_dir", str(ROOT / "examples" / "audio"),
                  "--output_base", str(out))
    assert res.returncode == 2 and "--overwrite" in res.stderr


def test_other_weights_are_never_mixed_into_a_folder(tmp_path):
    out = tmp_path / "out"
    args = ["--audio_dir", str(ROOT / "examples" / "audio"), "--output_base", str(out), "--models", "clmr"]
    assert run_cli(*args, "--set", "clmr.weights=random").returncode == 0
    res = run_cli(*args, env={"EMBEDKIT_OFFLINE": "1"})
    assert res.returncode == 2 and "weights random" in res.stderr and "--overwrite" in res.stderr


def test_shards_partition_the_corpus(tmp_path):
    audio = tmp_path / "audio"
    for i in range(12):
        write_wav(audio / f"f{i}.wav", tone(300 + i, 0.2, 16000), 16000)
    out = tmp_path / "out"
    for k in range(3):
        assert run_cli("--audio_dir", str(audio), "--output_base", str(out), "--models", "melspec",
                       "--shard", f"{k}/3").returncode == 0
    assert len(list((out / "melspec").glob("*.npy"))) == 12
    reports = [json.loads((out / f"run_report.shard{k}of3.json").read_text()) for k in range(3)]
    assert sum(r["models"]["melspec"]["ok"] for r in reports) == 12
    assert sum(r["files_total"] for r in reports) == 12
    assert run_cli("--audio_dir", str(audio), "--models", "melspec", "--shard", "3/3").returncode == 2


def test_progress_lines_when_stderr_is_not_a_terminal(tmp_path):
    """SLURM, nohup, CI: a progress line at a steady interval, so a long job never looks frozen."""
    audio = tmp_path / "audio"
    make_corpus(audio, 2, seconds=1.0)
    hold(audio / "zz_last.wav")
    proc = subprocess.Popen([sys.executable, str(ROOT / "run_extraction.py"), "--audio_dir", str(audio),
                             "--output_base", str(tmp_path / "out"), "--models", "melspec",
                             "--progress_every", "0.2"],
                            cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    seen = []
    for line in proc.stderr:
        if line.startswith("progress: 2/3 files"):
            seen.append(line)
            if len(seen) == 2:  # it keeps coming while the run waits
                break
    proc.send_signal(signal.SIGTERM)
    proc.communicate(timeout=120)
    assert proc.returncode == 143
    # short files in seconds, not "0.00 h" (two files of 1 s each decoded so far)
    assert "(67%)" in seen[0] and "2.0 s of audio" in seen[0] and "files/min" in seen[0] and "ETA" in seen[0]
    assert "0 failure(s)" in seen[0]


@pytest.mark.parametrize("moment", ["start-up", "loading"])
def test_interrupt_at_any_moment_is_clean(tmp_path, moment):
    audio = tmp_path / "audio"
    make_corpus(audio, 1, seconds=1.0)
    # -X importtime reports each import on stderr: the events that say where start-up is
    proc = subprocess.Popen([sys.executable, "-X", "importtime", str(ROOT / "run_extraction.py"),
                             "--no_progress", "--audio_dir", str(audio),
                             "--output_base", str(tmp_path / "out"), "--models", "madmom", "crepe"],
                            cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            preexec_fn=default_sigint)
    wanted = "| numpy" if moment == "start-up" else "found 1 file(s)"  # importing / loading the models
    for line in proc.stderr:
        if line.rstrip().endswith(wanted) or line.startswith(wanted):
            break
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=120)
    err = "\n".join(line for line in err.splitlines() if not line.startswith("import time:"))
    assert proc.returncode in (130, 0), err  # 0 only if the whole run won the race
    assert "Traceback" not in err and "KeyboardInterrupt" not in err
    if proc.returncode == 130:
        assert "rerun" in out + err


def test_a_run_imports_only_what_its_models_need(tmp_path):
    """Start-up costs only what runs: a melspec/madmom run imports no torch, librosa or transformers."""
    audio = tmp_path / "audio"
    make_corpus(audio, 1, seconds=1.0)
    code = (
        "import sys, run_extraction;"
        f"rc = run_extraction.main(['--no_progress', '--audio_dir', {str(audio)!r}, '--output_base', "
        f"{str(tmp_path / 'out')!r}, '--models', 'melspec', 'madmom']);"
        "heavy = ('torch', 'librosa', 'transformers', 'scipy.signal');"
        "print('HEAVY', sorted(m for m in heavy if m in sys.modules));"
        "sys.exit(rc)"
    )
    res = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr
    assert "HEAVY []" in res.stdout, res.stdout

    report = json.loads((tmp_path / "out" / "run_report.json").read_text())
    assert report["torch_threads"] is None  # recorded only where a model ran torch


def test_torch_threads_follow_omp_num_threads_unless_set(tmp_path):
    """A job script's OMP_NUM_THREADS is honoured (torch would honour it; we must not override
    it with the core count); --torch_threads wins over it; the report records the count."""
    audio = tmp_path / "audio"
    make_corpus(audio, 1, seconds=0.5)
    for extra, want in (([], 1), (["--torch_threads", "2"], 2)):
        out = tmp_path / f"out{want}"
        res = run_cli("--audio_dir", str(audio), "--output_base", str(out), "--models", "crepe",
                      "--set", "crepe.capacity=tiny", *extra, env={"OMP_NUM_THREADS": "1"})
        assert res.returncode == 0, res.stderr
        assert json.loads((out / "run_report.json").read_text())["torch_threads"] == want


# -- messages a newcomer meets -------------------------------------------------------------------------------
def test_cuda_without_cuda_is_a_configuration_error(tmp_path):
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    out = tmp_path / "out"
    res = run_cli("--audio_dir", str(ROOT / "examples" / "audio"), "--output_base", str(out),
                  "--models", "crepe", "melspec", "--device", "cuda")
    assert res.returncode == 2, res.stderr
    assert "configuration error: device 'cuda': this torch" in res.stderr
    assert "built without CUDA" in res.stderr
    assert "install a CUDA build of torch: pip install torch==" in res.stderr
    assert "--index-url https://download.pytorch.org/whl/cu" in res.stderr
    assert "cannot load" not in res.stderr and not out.exists()  # before any work


def test_nothing_to_do_is_exit_2_with_the_hint(tmp_path):
    audio = tmp_path / "in"
    write_wav(audio / "sub" / "a.wav", tone(300, 0.3, 16000), 16000)  # every file in a sub-folder
    out = tmp_path / "out"
    res = run_cli("--audio_dir", str(audio), "--output_base", str(out), "--models", "melspec")
    assert res.returncode == 2
    assert "nothing to do: no input file in" in res.stderr and "add --recursive to take them" in res.stderr
    assert not out.exists()
    Image = pytest.importorskip("PIL.Image")
    Image.fromarray(np.zeros((4, 4, 3), np.uint8)).save(audio / "only.png")
    res = run_cli("--audio_dir", str(audio), "--output_base", str(out), "--models", "melspec")
    assert res.returncode == 2
    assert "no configured model takes the files" in res.stderr and "1 image" in res.stderr


def test_a_file_given_as_the_input_folder_says_it_is_a_file(tmp_path):
    path = write_wav(tmp_path / "a440.wav", tone(440, 0.3, 16000), 16000)
    res = run_cli("--audio_dir", str(path), "--output_base", str(tmp_path / "out"), "--models", "melspec")
    assert res.returncode == 2
    assert f"input folder {str(path)!r} is a file, not a folder" in res.stderr
    assert f"--audio_dir {str(tmp_path)!r}" in res.stderr and "does not exist" not in res.stderr


def test_a_misspelt_model_gets_one_hint(tmp_path):
    res = run_cli("--audio_dir", str(ROOT / "examples" / "audio"), "--output_base", str(tmp_path / "out"),
                  "--models", "melspc")
    assert res.returncode == 2
    assert "unknown model 'melspc' (did you mean 'melspec'?); available: " in res.stderr
    assert res.stderr.count("did you mean") == 1


def test_the_closing_table_counts_the_files_processed(tmp_path):
    from PIL import Image

    audio = tmp_path / "in"
    write_wav(audio / "a.wav", tone(300, 0.3, 16000), 16000)
    write_wav(audio / "b.wav", tone(400, 0.3, 16000), 16000)
    Image.fromarray(np.zeros((4, 4, 3), np.uint8)).save(audio / "c.png")
    res = run_cli("--audio_dir", str(audio), "--output_base", str(tmp_path / "out"), "--models", "melspec")
    assert res.returncode == 0, res.stderr
    assert "files: 2 (2 audio), decoded: 2" in res.stdout
    assert "not taken by any configured model: 1 image file(s)" in res.stdout
    report = json.loads((tmp_path / "out" / "run_report.json").read_text())
    assert report["files_total"] == 2 and report["files_not_taken"] == {"image": 1}


def test_a_fresh_lock_from_another_host_leaves_work_exit_1(tmp_path):
    audio = tmp_path / "in"
    for name in ("x.wav", "y.wav"):
        write_wav(audio / name, tone(300, 0.3, 16000), 16000)
    out = tmp_path / "out"
    lock = out / "melspec" / ".x.npy.lock"
    lock.parent.mkdir(parents=True)
    lock.write_text("node17.cluster:4242")  # a driver on another host, alive or not: can't be told from here
    res = run_cli("--audio_dir", str(audio), "--output_base", str(out), "--models", "melspec")
    assert res.returncode == 1, res.stdout
    assert "held by another driver (node17.cluster:4242 x1)" in res.stdout
    assert not (out / "melspec" / "x.npy").exists() and (out / "melspec" / "y.npy").exists()
    lock.unlink()  # that driver is done (or its lease ran out): the rerun finishes the work
    again = run_cli("--audio_dir", str(audio), "--output_base", str(out), "--models", "melspec")
    assert again.returncode == 0
