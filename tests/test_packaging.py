"""`pip install .` gives an `embedkit` command that runs the job from anywhere, without the checkout."""

import os
import subprocess
import sys

import numpy as np
import pytest

from tests.conftest import ROOT


@pytest.fixture(scope="module")
def installed(tmp_path_factory):
    """The project installed (without its dependencies, which this venv has) into a fresh folder."""
    import shutil

    # from a copy of the checkout: setuptools builds in the source folder (build/, *.egg-info)
    src = tmp_path_factory.mktemp("src") / "embedkit"
    shutil.copytree(ROOT, src, ignore=shutil.ignore_patterns(".venv", ".git", "build", "*.egg-info",
                                                             "__pycache__", "output", "peers_env",
                                                             ".pytest_cache"))
    target = tmp_path_factory.mktemp("site")
    res = subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--target", str(target),
                          str(src)], capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, res.stderr[-3000:]
    return target


def embedkit(installed, *args, cwd):
    env = {**os.environ, "PYTHONPATH": str(installed)}
    return subprocess.run([str(installed / "bin" / "embedkit"), *args], capture_output=True, text=True,
                          cwd=cwd, env=env, timeout=600)


def test_installed_command_runs_the_job(installed, tmp_path):
    # no generic module names in site-packages: everything is inside the embedkit package
    assert sorted(p.name for p in installed.iterdir()
                  if not p.name.endswith(".dist-info")) == ["bin", "embedkit"]
    assert (installed / "embedkit" / "configs" / "default.yaml").is_file()
    res = embedkit(installed, "extract", "--help", cwd=tmp_path)
    assert res.returncode == 0 and "usage: embedkit extract" in res.stdout
    res = embedkit(installed, "--help", cwd=tmp_path)
    assert res.returncode == 0 and all(c in res.stdout for c in ("extract", "search", "plot", "export"))
    out = tmp_path / "out"
    res = embedkit(installed, "extract", "--audio_dir", str(ROOT / "examples" / "audio"),
                   "--output_base", str(out), "--models", "melspec", "--no_progress", cwd=tmp_path)
    assert res.returncode == 0, res.stderr
    got = {p.name: np.load(p) for p in (out / "melspec").glob("*.npy")}
    assert sorted(got) == ["beat_120bpm.npy", "chord_stereo.npy", "sweep_110_880.npy"]
    assert all(a.shape[1] == 64 for a in got.values())
    ol3 = subprocess.run([str(installed / "bin" / "embedkit-openl3"), "--help"],
                         capture_output=True, text=True, cwd=tmp_path,
                         env={**os.environ, "PYTHONPATH": str(installed)}, timeout=120)
    assert ol3.returncode == 0 and "audio" in ol3.stdout and "--input-repr" in ol3.stdout
    # crepe's command line: the console script and `python -m embedkit.crepe`
    env = {**os.environ, "PYTHONPATH": str(installed)}
    for cmd, usage in (([str(installed / "bin" / "embedkit-crepe")], "usage: embedkit-crepe"),
                       ([sys.executable, "-m", "embedkit.crepe"], "usage: python -m embedkit.crepe")):
        res = subprocess.run([*cmd, "--help"], capture_output=True, text=True, cwd=tmp_path, env=env,
                             timeout=120)
        assert res.returncode == 0 and res.stdout.startswith(usage) and "--model-capacity" in res.stdout
    assert (installed / "embedkit" / "crepe" / "core.py").is_file()
    bad = embedkit(installed, "extrct", cwd=tmp_path)
    assert bad.returncode == 2 and "did you mean 'extract'" in bad.stderr


def test_installed_browse_app_has_its_pages_and_assets(installed, tmp_path):
    browse = installed / "embedkit" / "browse"
    for name in ("templates/base.html", "templates/item.html", "templates/map.html", "static/map.js",
                 "static/item.js", "static/common.js", "static/style.css", "static/favicon.svg"):
        assert (browse / name).is_file(), name
    for command, usage in (("browse", "usage: embedkit browse"), ("evaluate", "usage: embedkit evaluate")):
        res = embedkit(installed, command, "--help", cwd=tmp_path)
        assert res.returncode == 0 and res.stdout.startswith(usage), res.stderr
