"""Decode workers (--decode_workers N): same bytes as decoding in the driver, plan order, a bounded
number of files in flight, a worker killed mid-file fails that file only, signals and kills leave no
orphan process and no partial output, and the run resumes.

Runs are held at a FIFO named like an input file: the worker that opens it is provably inside that
file (the test opens the FIFO's write end only once a reader is there, and keeps it silent).
"""

import errno
import json
import os
import queue
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import psutil
import pytest
import soundfile as sf

from embedkit import media, pipeline, registry, run_extraction
from embedkit.extractors.base import ConfigError
from tests.conftest import ROOT, click_track, default_sigint, hold, release, run_cli, tone, write_wav

MODELS = ["madmom", "melspec", "crepe"]
ARGS = ["--set", "crepe.capacity=tiny", "--torch_threads", "1"]


def corpus(folder: Path, n: int, seconds: float = 1.0) -> list[str]:
    names = []
    for i in range(n):
        name = f"f{i:02d}.wav"
        write_wav(folder / name, click_track(90 + 9 * i, seconds, 44100, seed=i)
                  + tone(110 * (1 + i % 4), seconds, 44100, 0.2), 44100)
        names.append(name)
    return names


def npy_bytes(folder: Path) -> dict[str, bytes]:
    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in sorted(folder.rglob("*.npy"))}


def leftovers(folder: Path) -> list[str]:
    """Temporaries or lock files a stopped run would leave behind (none may stay)."""
    return sorted(p.name for p in folder.rglob(".*") if p.is_file())


def driver(*args: str) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, str(ROOT / "run_extraction.py"), "--no_progress", *args],
                            cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            preexec_fn=default_sigint)


def reader_there(fifo: Path, proc: subprocess.Popen | None = None, timeout: float = 120) -> int:
    """Wait until some process has `fifo` open for reading; the write end (kept open and silent, so
    the reader stays inside the file)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            return os.open(fifo, os.O_WRONLY | os.O_NONBLOCK)
        except OSError as exc:
            if exc.errno != errno.ENXIO:
                raise
        assert proc is None or proc.poll() is None, proc.communicate()
        time.sleep(0.01)
    raise AssertionError(f"nobody opened {fifo}")


def holder(pid: int, fifo: Path, timeout: float = 30) -> psutil.Process:
    """The child of `pid` that has `fifo` open."""
    target = os.path.realpath(fifo)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for child in psutil.Process(pid).children(recursive=True):
            try:
                fds = os.listdir(f"/proc/{child.pid}/fd")
                if any(os.path.realpath(f"/proc/{child.pid}/fd/{fd}") == target for fd in fds):
                    return child
            except OSError:
                continue
        time.sleep(0.01)
    raise AssertionError(f"no child of {pid} holds {fifo}")


def gone(pids: list[int]) -> bool:
    return not any(psutil.pid_exists(p) and psutil.Process(p).status() != psutil.STATUS_ZOMBIE for p in pids)


def all_gone(pids: list[int], timeout: float = 30) -> bool:
    """Wait until every pid is gone. The workers are joined before the driver exits; its
    multiprocessing resource tracker ends on its own once the driver's pipe closes, a moment later."""
    deadline = time.monotonic() + timeout
    while not gone(pids) and time.monotonic() < deadline:
        time.sleep(0.01)
    return gone(pids)


# -- same outputs --------------------------------------------------------------------------
@pytest.mark.slow
def test_same_bytes_with_and_without_workers(tmp_path):
    audio = tmp_path / "audio"
    corpus(audio, 5)
    runs = {}
    for workers in (0, 2):
        out = tmp_path / f"out{workers}"
        res = run_cli("--audio_dir", str(audio), "--output_base", str(out), "--models", *MODELS, *ARGS,
                      "--decode_workers", str(workers))
        assert res.returncode == 0, res.stderr
        assert ("decoding in 2 worker process(es)" in res.stderr) == (workers == 2)
        lines = [json.loads(line) for line in (out / "manifest.jsonl").read_text().splitlines()]
        runs[workers] = (npy_bytes(out), [{k: v for k, v in r.items() if k not in ("run", "written")}
                                          for r in lines])
        report = json.loads((out / "run_report.json").read_text())
        assert report["files_decoded"] == 5 and report["decode_seconds"] > 0
    assert len(runs[0][0]) == 5 * len(MODELS)
    assert runs[0][0] == runs[2][0]
    assert runs[0][1] == runs[2][1]  # same lines, same order (files in plan order)


# -- order and bound ---------------------------------------------------------------------------
def test_plan_order_and_bounded_in_flight(tmp_path):
    """File 0 holds its worker; the others are done first, but leave in plan order, and at most
    `workers` files are claimed ahead of the queue."""
    audio = tmp_path / "audio"
    names = corpus(audio, 6, 0.5)
    fifo = hold(audio / "a_held.wav")
    job = pipeline.ModelJob("melspec", registry.create("melspec"))
    opt = pipeline.RunOptions(audio_dir=audio, output_base=tmp_path / "out", progress=False, decode_workers=2)
    runner = pipeline.Runner([job], opt, log=lambda msg: None)
    runner.discover()
    items = pipeline.plan(runner.listing.files, [job], False, runner.stats, None, runner.listing.names)
    assert [i.source.name for i in items] == ["a_held.wav", *names]
    runner._progress = pipeline._Progress(runner.stats, lambda msg: None, False, 0)
    runner.decode_workers = pipeline.decode_workers_for(opt, [job], len(items))
    assert runner.decode_workers == 2
    claimed, taken = [], []
    claim = runner._claim

    def counting_claim(item):
        claimed.append(item.source.name)
        assert len(claimed) - len(taken) <= 2 + 1  # workers + the queue's one slot
        return claim(item)

    runner._claim = counting_claim
    q: queue.Queue = queue.Queue(maxsize=1)
    thread = threading.Thread(target=runner._producer, args=(items, q, ), daemon=True)
    thread.start()
    fd = None
    try:
        fd = reader_there(fifo)
        deadline = time.monotonic() + 120
        while runner._pool is None or runner._pool.idle() != 1:  # the other worker's file came back
            assert time.monotonic() < deadline
            time.sleep(0.01)
        polled = threading.Event()
        poll = runner._pool.poll
        runner._pool.poll = lambda timeout: (polled.set(), poll(timeout))[1]
        assert polled.wait(30)  # the producer went round again with a worker idle: still two claimed
        assert claimed == ["a_held.wav", names[0]] and q.empty()
    finally:
        release(fifo, tone(300, 0.5, 44100), 44100)  # the decoder's second try opens a real file
        if fd is not None:
            os.close(fd)
    while True:
        got = q.get(timeout=120)
        if got is None:
            break
        assert not isinstance(got, BaseException), got
        taken.append(got.item.source.name)
        runner._release(got)
    thread.join(30)
    assert taken == ["a_held.wav", *names]
    runner._leases.close()


# -- a worker killed mid-file ---------------------------------------------------------------------
@pytest.mark.slow
def test_worker_killed_mid_file_fails_that_file_only(tmp_path):
    audio = tmp_path / "audio"
    names = corpus(audio, 4, 0.5)
    fifo = hold(audio / "f01_held.wav")
    wav = audio / "_tmp.flac"
    sf.write(wav, tone(440, 2.0, 44100), 44100, format="FLAC")
    (audio / "truncated.flac").write_bytes(wav.read_bytes()[: len(wav.read_bytes()) // 2])  # bad mid-way
    wav.unlink()
    out = tmp_path / "out"
    proc = driver("--audio_dir", str(audio), "--output_base", str(out), "--models", "melspec",
                  "--decode_workers", "2")
    fd = reader_there(fifo, proc)
    try:
        worker = holder(proc.pid, fifo)
        pids = [c.pid for c in psutil.Process(proc.pid).children(recursive=True)]
        worker.send_signal(signal.SIGKILL)
    finally:
        os.close(fd)
    stdout, stderr = proc.communicate(timeout=120)
    assert proc.returncode == 1, stderr
    failures = json.loads((out / "failures.json").read_text())["by_file"]
    assert set(failures) == {"f01_held.wav", "truncated.flac"}
    cause = failures["f01_held.wav"]["melspec"]
    assert "DecodeWorkerDied" in cause and "decode worker died" in cause and "signal 9" in cause
    assert "MediaError" in failures["truncated.flac"]["melspec"]  # as a run without workers says
    done = sorted(p.name for p in (out / "melspec").glob("*.npy"))
    assert done == [n.replace(".wav", ".npy") for n in names]
    assert all_gone(pids) and leftovers(out) == []


# -- signals and kills -------------------------------------------------------------------------------
@pytest.mark.slow
@pytest.mark.parametrize("sig, code", [(signal.SIGTERM, 143), (signal.SIGINT, 130), (signal.SIGKILL, -9)])
def test_stopped_with_workers_leaves_no_orphan_and_resumes(tmp_path, sig, code):
    audio = tmp_path / "audio"
    corpus(audio, 5, 0.5)
    fifo = hold(audio / "f02_held.wav")
    out = tmp_path / "out"
    args = ["--audio_dir", str(audio), "--models", *MODELS, *ARGS, "--decode_workers", "2"]
    proc = driver(*args, "--output_base", str(out))
    fd = reader_there(fifo, proc)
    try:
        holder(proc.pid, fifo)
        pids = [c.pid for c in psutil.Process(proc.pid).children(recursive=True)]
        assert len(pids) >= 2
        proc.send_signal(sig)
        proc.communicate(timeout=120)
        assert proc.returncode == code
        assert all_gone(pids)  # SIGKILL: the workers die with their driver (PDEATHSIG)
    finally:
        os.close(fd)
    if sig != signal.SIGKILL:
        report = json.loads((out / "run_report.json").read_text())
        assert report["interrupted"] == ("SIGINT" if sig == signal.SIGINT else "SIGTERM")
    # SIGKILL: its locks stay, and the temporary of an array being written at that moment (never a
    # partial array under its name); the resumed run clears both (below)
    assert leftovers(out) == [] or sig == signal.SIGKILL and all(
        n.endswith(".lock") or ".npy.tmp-" in n for n in leftovers(out))
    assert not (out / "melspec" / "f02_held.npy").exists()
    release(fifo, tone(300, 0.5, 44100), 44100)
    res = run_cli(*args, "--output_base", str(out))
    assert res.returncode == 0, res.stderr
    clean = tmp_path / "clean"
    assert run_cli(*args, "--output_base", str(clean)).returncode == 0
    assert npy_bytes(out) == npy_bytes(clean)
    assert leftovers(out) == []


# -- configuration ------------------------------------------------------------------------------------
@pytest.mark.parametrize("value", ["-1", "x"])
def test_bad_decode_workers_is_a_configuration_error(tmp_path, value):
    audio = tmp_path / "audio"
    corpus(audio, 1, 0.2)
    if value == "x":
        cfg = tmp_path / "c.yaml"
        cfg.write_text("decode_workers: many\n")
        res = run_cli("--config", str(cfg), "--audio_dir", str(audio), "--output_base", str(tmp_path / "o"),
                      "--models", "melspec")
    else:
        res = run_cli("--audio_dir", str(audio), "--output_base", str(tmp_path / "o"), "--models", "melspec",
                      "--decode_workers", value)
    assert res.returncode == 2 and "decode_workers must be" in res.stderr


def test_ray_engine_refuses_decode_workers(tmp_path):
    from embedkit import run_config

    cfg = run_config.build({"engine": "ray", "decode_workers": 2, "models": ["melspec"],
                            "audio_dir": str(tmp_path), "output_base": str(tmp_path / "o")}, "test", {})
    opt = run_extraction.run_options(cfg, None, progress=False, progress_every=0)
    assert opt.decode_workers == 2
    with pytest.raises(ConfigError, match="decode_workers .* local engine"):
        run_extraction.make_runner(cfg, run_config.jobs_of(cfg), opt, print)


def test_default_workers_leave_the_models_their_cores(tmp_path):
    jobs = [pipeline.ModelJob("melspec", registry.create("melspec"))]
    opt = pipeline.RunOptions(audio_dir=tmp_path, output_base=tmp_path)
    cores = len(os.sched_getaffinity(0))
    assert pipeline.decode_workers_for(opt, jobs, 100) == max(0, min(cores - 2, 16))  # numpy model
    assert pipeline.decode_workers_for(opt, jobs, 1) <= 1  # never more than the files
    three = pipeline.RunOptions(tmp_path, tmp_path, decode_workers=3)
    assert pipeline.decode_workers_for(three, jobs, 10) == 3
    assert pipeline.decode_workers_for(pipeline.RunOptions(tmp_path, tmp_path, decode_only=True), jobs, 99) \
        == cores
    assert media.Media(tmp_path / "x.wav").frames_decoded == 0
    np.testing.assert_equal(pipeline.decode_workers_for(opt, jobs, 0), 0)


# -- resampy's filters on a device (resample_on) ------------------------------------------------
def test_the_decoder_leaves_device_resampling_to_the_model_stage(tmp_path):
    """A model resampling on a torch device (a CUDA run's GPU; torch on the CPU here): the decoder
    does not resample for it (soxr models it still does); the model stage does, once, within the
    float32 rounding bound the NumPy path keeps against resampy (tests/test_polyphase.py)."""
    from embedkit import audio_io

    write_wav(tmp_path / "a.wav", tone(220, 1.0, 44100), 44100)
    crepe, mel = registry.create("crepe", capacity="tiny"), registry.create("melspec")
    jobs = [pipeline.ModelJob("crepe", crepe, resample_device="cpu"), pipeline.ModelJob("melspec", mel)]
    m = pipeline.decode(tmp_path, pipeline.Item(Path("a.wav"), "audio", {}, jobs), jobs)
    key = audio_io.resample_key(*crepe.resample_key)
    assert set(m.resample_seconds) == {audio_io.resample_key(*mel.resample_key)}
    got = pipeline.model_audio(m, jobs[0])
    assert key in m.resample_seconds and pipeline.model_audio(m, jobs[0]) is got  # once
    from embedkit import polyphase
    from tests.test_polyphase import U32, bound

    x = m.decoded.audio
    want = polyphase.resampy_loop(x, 44100, 16000)  # resampy's own loop, in float32
    assert got.shape == want.shape
    assert (np.abs(got.astype(np.float64) - want) <= bound(x, 44100, 16000, "kaiser_best", U32)).all()


def test_out_of_device_memory_resamples_on_the_cpu(monkeypatch):
    """A device out of memory while resampling (a CUDA OOM: its message; tests/test_cuda.py makes
    a real one) costs the file nothing: the NumPy path gives its samples."""
    from embedkit import audio_io, polyphase

    x = tone(220, 0.5, 44100)

    def full(*args, **kwargs):
        raise RuntimeError("CUDA out of memory. Tried to allocate 2.00 GiB")

    monkeypatch.setattr(polyphase, "resample_torch", full)
    got = audio_io.resample(x, 44100, 16000, "kaiser_best", "float32", device="cpu")
    np.testing.assert_array_equal(got, audio_io.resample(x, 44100, 16000, "kaiser_best", "float32"))
    monkeypatch.setattr(polyphase, "resample_torch", lambda *a, **k: 1 / 0)  # any other error: raised
    with pytest.raises(ZeroDivisionError):
        audio_io.resample(x, 44100, 16000, "kaiser_best", "float32", device="cpu")


def test_where_resampling_runs():
    """`resample_on`: auto is the model's device where it is CUDA; soxr, equal rates, rates
    polyphase refuses, signals under a filter length or over DEVICE_RESAMPLE_SECONDS stay on the CPU."""
    from embedkit import audio_io

    crepe, mel = registry.create("crepe", capacity="tiny"), registry.create("melspec")
    job, soxr = pipeline.ModelJob("crepe", crepe), pipeline.ModelJob("melspec", mel)
    assert pipeline.resample_device_for("auto", job) is None  # a CPU model
    assert pipeline.resample_device_for("device", job) == "cpu"
    assert pipeline.resample_device_for("cpu", job) is None
    assert pipeline.resample_device_for("device", soxr) is None
    crepe.device = "cuda:1"  # the decision only (nothing runs)
    assert pipeline.resample_device_for("auto", job) == "cuda:1"
    with pytest.raises(ValueError, match="resample_on must be one of auto, cpu, device"):
        pipeline.resample_device_for("gpu", job)
    on = audio_io.resamples_on
    assert on("cuda", 44100, 44100, 16000, "kaiser_best") == "cuda"
    assert on("cuda", 44100, 44100, 16000, "soxr_hq") is None
    assert on("cuda", 44100, 16000, 16000, "kaiser_best") is None
    assert on("cuda", 44100, 44100, 48001, "kaiser_best") is None  # resampy's loop, on the CPU
    assert on("cuda", 3, 44100, 16000, "kaiser_best") is None  # zero-extended on the CPU
    longest = int(audio_io.DEVICE_RESAMPLE_SECONDS * 44100)
    assert on("cuda", longest, 44100, 16000, "kaiser_best") == "cuda"
    assert on("cuda", longest + 1, 44100, 16000, "kaiser_best") is None
    assert on(None, 44100, 44100, 16000, "kaiser_best") is None


@pytest.mark.parametrize("yaml, error", [
    ("resample_on: gpu\n", "resample_on must be auto (on the model's GPU where it runs on one), cpu or"),
    ("resample_on: device\nengine: ray\n", "resample_on: device applies to the local engine"),
])
def test_resample_on_is_checked(tmp_path, yaml, error):
    cfg = tmp_path / "c.yaml"
    cfg.write_text(yaml + "models: [crepe]\n")
    (tmp_path / "in").mkdir()
    res = run_cli("--config", str(cfg), "--audio_dir", str(tmp_path / "in"),
                  "--output_base", str(tmp_path / "o"))
    assert res.returncode == 2 and error in res.stderr, res.stderr
