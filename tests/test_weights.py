"""weights.py: the records and the one resolver, downloads with unpacking, advice per entry point.

Truth: files served here over HTTP from 127.0.0.1 (the official hosts are not reachable from the
test machines), their digests computed with hashlib, and the commands each entry point accepts.
Per-model lookups (CREPE's package, CLMR's zip, torchvision's hub cache, MERT's hub snapshots)
are tested with their plugins.
"""

from __future__ import annotations

import ast
import gzip
import hashlib
import http.server
import json
import sys
import threading
import zipfile
from functools import partial

import pytest

from embedkit import pipeline, registry, weights
from embedkit.weights import WeightFile, WeightsError
from tests.conftest import ROOT, run_cli, tone, write_wav
from tests.test_resnet18 import QuietHandler


@pytest.fixture
def served(tmp_path, monkeypatch):
    """A folder served over HTTP, online mode, an empty cache; yields (folder, base URL)."""
    folder = tmp_path / "served"
    folder.mkdir()
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), partial(QuietHandler, directory=str(folder)))
    threading.Thread(target=server.serve_forever, daemon=True).start()
    monkeypatch.setenv("EMBEDKIT_CACHE", str(tmp_path / "cache"))
    for var in ("EMBEDKIT_OFFLINE", "HF_HUB_OFFLINE"):
        monkeypatch.delenv(var, raising=False)
    try:
        yield folder, f"http://127.0.0.1:{server.server_port}"
    finally:
        server.shutdown()


def test_weights_module_imports_nothing_from_extractors():
    tree = ast.parse((ROOT / "weights.py").read_text())
    imported = [n.module or "" for n in ast.walk(tree) if isinstance(n, ast.ImportFrom)]
    imported += [a.name for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names]
    assert not [m for m in imported if "extractors" in m], imported
    from embedkit.extractors import base

    assert base.WeightsError is weights.WeightsError and base.WeightFile is weights.WeightFile  # old home


def test_zip_record_downloads_once_and_extracts_its_member(served, tmp_path):
    folder, url = served
    with zipfile.ZipFile(folder / "release.zip", "w") as zf:
        zf.writestr("release/model.pt", b"the weights")
        zf.writestr("release/optimizer.pt", b"not these")
    record = WeightFile("release.zip", url=f"{url}/release.zip", member="model.pt",
                        sha256=hashlib.sha256((folder / "release.zip").read_bytes()).hexdigest())
    path = weights.resolve("toy", record)
    assert path == tmp_path / "cache" / "toy" / "model.pt" and path.read_bytes() == b"the weights"
    (folder / "release.zip").unlink()  # gone from the server: the extracted member is what counts now
    assert weights.resolve("toy", record) == path
    # a folder given as `weights:` may hold the member or the archive
    local = tmp_path / "local"
    local.mkdir()
    (local / "model.pt").write_bytes(b"mine")
    assert weights.resolve("toy", record, local) == local / "model.pt"
    with pytest.raises(WeightsError, match="holds neither model.pt nor release.zip"):
        weights.resolve("toy", record, tmp_path / "cache")


def test_gzip_record_is_unpacked_and_checked(served, tmp_path):
    folder, url = served
    payload = b"keras weights " * 1000
    (folder / "net.h5.gz").write_bytes(gzip.compress(payload))
    good = WeightFile("net.h5", url=f"{url}/net.h5.gz", gzip=True, sha256=hashlib.sha256(payload).hexdigest())
    path = weights.resolve("toy", good)
    assert path.read_bytes() == payload and path.name == "net.h5"
    assert sorted(p.name for p in path.parent.iterdir()) == ["net.h5"]  # the .gz is not kept
    path.unlink()
    bad = WeightFile("net.h5", url=good.url, gzip=True, sha256="0" * 64)
    with pytest.raises(WeightsError, match="checksum mismatch"):
        weights.resolve("toy", bad)
    assert list(path.parent.iterdir()) == []  # nothing half-written left behind


def test_checksum_is_checked_wherever_the_file_is_found(tmp_path, monkeypatch):
    monkeypatch.setenv("EMBEDKIT_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("EMBEDKIT_OFFLINE", "1")
    (tmp_path / "cache" / "toy").mkdir(parents=True)
    (tmp_path / "cache" / "toy" / "net.pth").write_bytes(b"abc")
    digest = hashlib.sha256(b"abc").hexdigest()
    assert weights.resolve("toy", WeightFile("net.pth", sha256=digest[:8])).read_bytes() == b"abc"
    with pytest.raises(WeightsError, match="checksum mismatch.*fetch it again"):
        weights.resolve("toy", WeightFile("net.pth", sha256="ffffffff"))
    with pytest.raises(WeightsError, match="checksum mismatch"):  # the same file given as `weights:`
        weights.resolve("toy", WeightFile("net.pth", sha256="ffffffff"), tmp_path / "cache" / "toy")


@pytest.mark.parametrize("argv0, command", [
    ("embedkit extract", "embedkit extract"),  # cli.main names the subcommand so
    ("/usr/local/bin/embedkit", "embedkit extract"),
    ("/home/me/embedkit/run_extraction.py", "python run_extraction.py"),
    ("run_extraction.py", "python run_extraction.py"),
    ("/x/ipykernel_launcher.py", "python run_extraction.py"),  # a notebook on a checkout
])
def test_advice_names_the_command_of_the_entry_point(monkeypatch, argv0, command):
    monkeypatch.setattr(sys, "argv", [argv0])
    advice = weights.fetch_advice("clmr", "clmr_checkpoint_10000.zip")
    assert f"`{command} --download_only --models clmr`" in advice
    assert "weights: /path/to/clmr_checkpoint_10000.zip" in advice and "weights_path=" in advice


def test_an_installed_copy_advises_the_installed_command(monkeypatch, tmp_path):
    """Outside both command lines, an installed package (no pyproject.toml beside it) says
    `embedkit extract`: `python run_extraction.py` does not exist after `pip install .`."""
    monkeypatch.setattr(sys, "argv", ["/x/ipykernel_launcher.py"])
    monkeypatch.setattr(weights, "__file__", str(tmp_path / "site-packages" / "embedkit" / "weights.py"))
    assert weights.fetch_command() == "embedkit extract"


@pytest.mark.parametrize("entry", ["run_extraction.py", "cli.py"])
def test_missing_weights_advice_is_the_running_commands(tmp_path, entry):
    audio = tmp_path / "in"
    write_wav(audio / "a.wav", tone(440, 3.0, 22050), 22050)
    args = ["--audio_dir", str(audio), "--output_base", str(tmp_path / "out"), "--models", "clmr"]
    env = {"EMBEDKIT_OFFLINE": "1", "EMBEDKIT_CACHE": str(tmp_path / "cache")}
    if entry == "run_extraction.py":
        res = run_cli(*args, env=env)
        want = "python run_extraction.py --download_only --models clmr"
    else:
        import os
        import subprocess

        res = subprocess.run([sys.executable, str(ROOT / "cli.py"), "extract", "--no_progress", *args],
                             capture_output=True, text=True, timeout=300, env={**os.environ, **env})
        want = "embedkit extract --download_only --models clmr"
    assert res.returncode == 1, res.stdout + res.stderr
    said = [ln for ln in (res.stdout + res.stderr).splitlines() if "weights not found" in ln]
    assert said and all(want in ln for ln in said), res.stdout + res.stderr


def test_parameters_added_since_an_output_was_written_count_at_their_defaults(tmp_path):
    """A crepe folder written before crepe had `precision` resumes; another value still refuses."""
    job = pipeline.ModelJob("crepe", registry.create("crepe", capacity="tiny"))
    meta = tmp_path / "crepe" / "features.json"
    meta.parent.mkdir()
    old = {k: v for k, v in job.extractor.config.items() if k != "precision"}
    meta.write_text(json.dumps({"extractor": "crepe", "params": old, "weights_setting": None}))
    pipeline.check_previous_params([job], tmp_path, overwrite=False)
    meta.write_text(json.dumps({"extractor": "crepe", "params": {**old, "step_size": 20},
                                "weights_setting": None}))
    with pytest.raises(registry.ConfigError, match="was written by crepe"):
        pipeline.check_previous_params([job], tmp_path, overwrite=False)
