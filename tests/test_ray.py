"""The Ray engine on a real Ray cluster: the same bytes as a local run, a killed worker, a killed driver.

One local cluster serves the whole session (`ray.init(num_cpus=2)` in this process, 15-40 s to
start on a loaded machine); each run is the real command line (`run_extraction.py --engine ray
--ray_address <that cluster>`), a driver of its own, so killing it is killing a real driver.
Marked `ray`; skipped, saying why, where ray is not installed (pip install -r requirements-ray.txt).
"""

import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

from tests.conftest import ROOT, click_track, hold, release, run_cli, tone, write_wav

MODELS = ["--models", "madmom", "melspec", "crepe", "--set", "crepe.capacity=tiny"]
GOOD = ["long.wav", "take 0.wav", "take 1.wav", "take 2.wav", "zz_last.wav"]
OUTPUTS = len(GOOD) * 3


def signal_of(i: int, seconds: float):
    return click_track(96 + 9 * i, seconds, 44100, seed=i) + tone(150 * (i + 1), seconds, 44100, 0.2)


def make_corpus(folder: Path) -> None:
    """Five good files (one of 6 s, so some model is busy long enough to be caught) and one bad."""
    for i, name in enumerate(GOOD):
        write_wav(folder / name, signal_of(i, 6.0 if name == "long.wav" else 1.0), 44100)
    (folder / "bad.wav").write_text("this is not audio\n" * 20)


def npy_bytes(folder: Path) -> dict[str, bytes]:
    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in sorted(folder.rglob("*.npy"))}


def hidden_files(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.rglob(".*") if p.is_file())


def manifest(out: Path) -> list[dict]:
    try:
        lines = (out / "manifest.jsonl").read_text().splitlines()
    except FileNotFoundError:
        return []
    return [json.loads(line) for line in lines]


def without(records: list[dict], *keys: str) -> list[str]:
    return sorted(json.dumps({k: v for k, v in r.items() if k not in keys}, sort_keys=True) for r in records)


def ray_processes(title: str) -> list[int]:
    """Pids of Ray workers of this session's cluster (descendants of this process) whose title starts so."""
    me, found = os.getpid(), []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            cmd = Path(f"/proc/{entry}/cmdline").read_bytes().split(b"\0")[0].decode(errors="replace")
        except OSError:
            continue
        if cmd.startswith(title) and _descends_from(int(entry), me):
            found.append(int(entry))
    return found


def _descends_from(pid: int, root: int) -> bool:
    while pid > 1:
        if pid == root:
            return True
        try:
            status = Path(f"/proc/{pid}/status").read_text()
        except OSError:
            return False
        pid = int(next(line.split()[1] for line in status.splitlines() if line.startswith("PPid:")))
    return False


def wait_for(condition, what: str, timeout: float = 300.0, proc: subprocess.Popen | None = None):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        got = condition()
        if got:
            return got
        if proc is not None and proc.poll() is not None:
            pytest.fail(f"the driver ended (exit {proc.returncode}) before {what}")
        time.sleep(0.01)
    pytest.fail(f"timed out after {timeout:.0f} s waiting for {what}")


@pytest.fixture(scope="session")
def cluster():
    """The address of a local Ray cluster (2 CPUs) started once for the session."""
    ray = pytest.importorskip("ray", reason="ray is not installed (pip install -r requirements-ray.txt)")
    import logging

    temp = tempfile.mkdtemp(prefix="ekray-", dir="/tmp")  # short: Ray's socket paths must stay < 108 bytes
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    ray.init(num_cpus=2, include_dashboard=False, object_store_memory=256 * 2**20, _temp_dir=temp,
             logging_level=logging.WARNING, log_to_driver=False)
    try:
        yield ray.get_runtime_context().gcs_address
    finally:
        ray.shutdown()
        shutil.rmtree(temp, ignore_errors=True)


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """The corpus and what the local engine makes of it (outputs, exit status, failures)."""
    base = tmp_path_factory.mktemp("ray_ref")
    audio, out = base / "audio", base / "local"
    make_corpus(audio)
    res = run_cli("--audio_dir", str(audio), "--output_base", str(out), *MODELS)
    assert res.returncode == 1, res.stdout + res.stderr  # bad.wav fails, the rest is done
    assert len(npy_bytes(out)) == OUTPUTS
    return audio, out


def ray_args(audio: Path, out: Path, address: str) -> list[str]:
    return ["--audio_dir", str(audio), "--output_base", str(out), *MODELS, "--engine", "ray",
            "--ray_address", address]


def driver(*args: str) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, str(ROOT / "run_extraction.py"), "--no_progress", *args],
                            cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def assert_same_as_local(out: Path, ref_out: Path) -> None:
    assert npy_bytes(out) == npy_bytes(ref_out)
    for model in ("madmom", "melspec", "crepe"):
        meta = f"{model}/features.json"
        assert (out / meta).read_bytes() == (ref_out / meta).read_bytes()
    ours, local = (json.loads((o / "failures.json").read_text())["failures"] for o in (out, ref_out))
    assert without(ours, "run") == without(local, "run") and {f["file"] for f in ours} == {"bad.wav"}


@pytest.mark.ray
@pytest.mark.slow
def test_ray_run_gives_the_local_bytes_manifest_failures_and_exit_status(cluster, reference, tmp_path):
    audio, ref_out = reference
    out = tmp_path / "out"
    res = run_cli(*ray_args(audio, out, cluster))
    assert res.returncode == 1, res.stdout + res.stderr  # the same exit status as the local run
    assert_same_as_local(out, ref_out)
    # the same manifest lines (run id and time aside), in whatever order the workers finished
    assert without(manifest(out), "run", "written") == without(manifest(ref_out), "run", "written")
    report = json.loads((out / "run_report.json").read_text())
    local = json.loads((ref_out / "run_report.json").read_text())
    for model, m in report["models"].items():
        assert (m["ok"], m["failed"], m["skipped"]) == (len(GOOD), 1, 0)
        assert m["inference_seconds"] > 0 and m["audio_seconds"] == local["models"][model]["audio_seconds"]
    assert report["files_decoded"] == local["files_decoded"] == len(GOOD)
    assert report["engine"]["name"] == "ray" and report["engine"]["worker_restarts"] == 0
    assert hidden_files(out) == []


@pytest.mark.ray
@pytest.mark.slow
def test_a_worker_killed_mid_file_costs_a_retry_not_the_run(cluster, reference, tmp_path):
    audio, ref_out = reference
    out = tmp_path / "out"
    proc = driver(*ray_args(audio, out, cluster))
    try:
        busy = wait_for(lambda: ray_processes("ray::ModelWorker.process"), "a model worker busy on a file",
                        proc=proc)
        os.kill(busy[0], signal.SIGKILL)  # mid-file: the worker's title names the call it is running
        output = proc.communicate(timeout=600)[0]
    finally:
        proc.kill()
    assert proc.returncode == 1, output
    assert_same_as_local(out, ref_out)
    # one line per array, as locally: a retried call's line is the only one (the driver writes them)
    assert without(manifest(out), "run", "written") == without(manifest(ref_out), "run", "written")
    report = json.loads((out / "run_report.json").read_text())
    assert report["engine"]["worker_restarts"] >= 1
    assert sum(m["ok"] for m in report["models"].values()) == OUTPUTS
    assert hidden_files(out) == []  # a temporary file of the killed worker is removed by its successor


@pytest.mark.ray
@pytest.mark.slow
def test_a_killed_driver_leaves_nothing_partial_and_no_lock_in_the_way(cluster, reference, tmp_path):
    ref_audio, ref_out = reference
    audio, out = tmp_path / "audio", tmp_path / "out"
    shutil.copytree(ref_audio, audio)
    (audio / "zz_last.wav").unlink()
    fifo = hold(audio / "zz_last.wav")  # the run waits there: it is provably unfinished when killed
    proc = driver(*ray_args(audio, out, cluster))
    try:
        wait_for(lambda: manifest(out), "the first output", proc=proc)
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.communicate(timeout=60)
    # Ray ends a dead driver's workers; nothing of the killed run writes after this
    wait_for(lambda: not ray_processes("ray::ModelWorker") and not ray_processes("ray::decode_file"),
             "the killed driver's workers to end", timeout=120)
    done = npy_bytes(out)
    # a kill between an array's rename and its manifest line leaves it unrecorded: computed again
    recorded = {r["output"] for r in manifest(out) if r.get("output")} & set(done)
    reference_bytes = npy_bytes(ref_out)
    assert 0 < len(done) < OUTPUTS
    for name, data in done.items():  # whatever exists is complete and right
        assert data == reference_bytes[name], name
    release(fifo, signal_of(GOOD.index("zz_last.wav"), 1.0), 44100)

    res = run_cli(*ray_args(audio, out, cluster))  # the dead driver's locks must not block this run
    assert res.returncode == 1, res.stdout + res.stderr
    report = json.loads((out / "run_report.json").read_text())
    assert sum(m["skipped"] for m in report["models"].values()) == len(recorded)  # nothing done is redone
    assert report["computed_again"].get("unrecorded", 0) == len(done) - len(recorded)
    assert sum(m["ok"] for m in report["models"].values()) == OUTPUTS - len(recorded)
    assert npy_bytes(out) == reference_bytes
    assert hidden_files(out) == []


@pytest.mark.ray
@pytest.mark.slow
def test_a_node_that_cannot_see_the_output_folder_stops_the_run_before_any_work(cluster, reference, tmp_path):
    """A second Ray node in its own mount namespace, with an empty filesystem over the output folder."""
    import ray

    if os.geteuid() != 0 or shutil.which("unshare") is None or subprocess.run(
            ["unshare", "-m", "true"], capture_output=True, check=False).returncode != 0:
        pytest.skip("needs root and unshare(1) to give a node its own view of the filesystem")
    audio, _ = reference
    hidden = tmp_path / "shared"
    out = hidden / "out"
    hidden.mkdir()
    ray_cli = Path(sys.executable).parent / "ray"
    node = subprocess.Popen(
        ["unshare", "-m", "sh", "-c", (f"mount -t tmpfs tmpfs '{hidden}' && exec '{ray_cli}' start "
                                       f"--address={cluster} --num-cpus=1 --block --disable-usage-stats")],
        env={**os.environ, "RAY_AUTH_MODE": "token"}, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_for(lambda: sum(n["Alive"] for n in ray.nodes()) == 2, "the second node to join", timeout=180)
        res = run_cli("--audio_dir", str(audio), "--output_base", str(out), "--models", "melspec",
                      "--engine", "ray", "--ray_address", cluster)
    finally:
        node.send_signal(signal.SIGTERM)  # `ray start --block` stops its raylet and workers
        node.wait(timeout=120)
    wait_for(lambda: sum(n["Alive"] for n in ray.nodes()) == 1, "the second node to leave", timeout=120)
    assert res.returncode == 2, res.stdout + res.stderr
    assert "configuration error: every Ray node must see --output_base" in res.stderr
    assert f"cannot see the probe file the driver wrote into {out}" in res.stderr
    assert list(out.iterdir()) == []  # no model was started, nothing written (the probe is gone)


# -- without a cluster ---------------------------------------------------------------------------------
def _main(tmp_path: Path, *args: str, before: str = "") -> subprocess.CompletedProcess:
    """run_extraction.main(args) in a fresh interpreter; prints whether ray was imported."""
    code = (f"import sys; {before}import run_extraction; rc = run_extraction.main({list(args)!r}); "
            "print('ray imported:', 'ray' in sys.modules and sys.modules['ray'] is not None); sys.exit(rc)")
    return subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=300,
                          check=False)


def test_a_local_run_never_imports_ray(tmp_path):
    write_wav(tmp_path / "audio" / "a.wav", tone(440, 1.0, 16000), 16000)
    res = _main(tmp_path, "--no_progress", "--audio_dir", str(tmp_path / "audio"), "--output_base",
                str(tmp_path / "out"), "--models", "melspec")
    assert res.returncode == 0, res.stdout + res.stderr
    assert "ray imported: False" in res.stdout


def test_engine_settings_are_checked_and_a_missing_ray_says_how_to_install_it(tmp_path):
    write_wav(tmp_path / "audio" / "a.wav", tone(440, 1.0, 16000), 16000)
    cfg = tmp_path / "c.yaml"
    cfg.write_text(f"audio_dir: {tmp_path / 'audio'}\nengine: rya\nray_actors: 0\nmodels: [melspec]\n")
    res = run_cli("--config", str(cfg), "--output_base", str(tmp_path / "out"))
    assert res.returncode == 2
    assert "engine must be one of local, ray, got 'rya' (did you mean 'ray'?)" in res.stderr
    assert "ray_actors must be >= 1" in res.stderr
    # ray absent (an import of it fails, as where it is not installed): exit 2, the install line
    res = _main(tmp_path, "--no_progress", "--audio_dir", str(tmp_path / "audio"), "--output_base",
                str(tmp_path / "out"), "--models", "melspec", "--engine", "ray",
                before="sys.modules['ray'] = None; ")
    assert res.returncode == 2, res.stdout + res.stderr
    assert ("--engine ray needs Ray, which is not installed here: pip install -r requirements-ray.txt"
            in res.stderr)
    assert not (tmp_path / "out" / "melspec").exists()


def test_placement_gives_torch_models_gpu_shares_and_numpy_models_cpu_actors(tmp_path):
    """The GPU path's arithmetic (no GPU here): on a 2-GPU, 16-core cluster every torch model gets
    one actor per GPU, the torch models splitting each GPU; madmom and melspec stay on CPU actors."""
    from embedkit import pipeline, ray_engine, registry

    jobs = [pipeline.ModelJob(name, registry.create(name, **params)) for name, params in
            (("crepe", {"capacity": "tiny"}), ("clmr", {}), ("madmom", {}), ("melspec", {}))]
    opts = pipeline.RunOptions(audio_dir=tmp_path, output_base=tmp_path / "out")
    runner = ray_engine.RayRunner(jobs, opts, devices={"clmr": "auto", "crepe": "auto"})
    runner.cluster = {"cpus": 16.0, "gpus": 2.0}
    placed = runner._placement()
    for torch_model in ("crepe", "clmr"):
        n, resources, device, _ = placed[torch_model]
        assert (n, device, resources["num_gpus"]) == (2, "cuda", 0.5)
    for numpy_model in ("madmom", "melspec"):
        n, resources, device, _ = placed[numpy_model]
        # the GPU models' actors take a core each (4); half of the 12 left go to these two models
        assert (n, device, resources["num_cpus"]) == (3, "cpu", 1.0) and "num_gpus" not in resources
    cpu_taken = sum(n * r["num_cpus"] for n, r, _, _ in placed.values())
    assert cpu_taken == 4 + 6  # decoding keeps the other 6 cores
    # an explicit cpu stays on the CPU; cuda without a GPU is a configuration error
    runner.devices = {"crepe": "cpu"}
    assert placed != runner._placement() and runner._placement()["crepe"][2] == "cpu"
    runner.cluster = {"cpus": 16.0, "gpus": 0.0}
    runner.devices = {"crepe": "cuda"}
    with pytest.raises(ray_engine.ConfigError, match="asks for device cuda, but the Ray cluster has no GPU"):
        runner._placement()
