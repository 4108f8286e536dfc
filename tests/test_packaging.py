"""`pip install .` gives an `embedkit` command that runs the job from anywhere, without the checkout."""

import json
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


NOTEBOOK = r"""
import json, sys
import export, results  # the notebook's own modules, imported before embedkit
path_before = list(sys.path)
import embedkit
import embedkit.export
import embedkit.results
import media, pipeline, registry, search, weights  # imported after embedkit: still the notebook's
import numpy as np

out = {"path_unchanged": sys.path == path_before,
       "user_modules": {m: getattr(sys.modules[m], "WHO", None) for m in USER},
       "ours": [embedkit.export.__name__, embedkit.results.__name__, embedkit.registry.__name__]}
# every module of the package is loaded once, under its embedkit name
pkg = embedkit.__path__[0]
out["twice"] = sorted(name for name, mod in list(sys.modules.items())
                      if (getattr(mod, "__file__", None) or "").startswith(pkg)
                      and not name.startswith("embedkit"))
try:
    embedkit.registry.get("melspc")
except embedkit.ConfigError as exc:  # the class a user reaches catches what the library raises
    out["caught"] = str(exc)
mel = embedkit.load("melspec", n_mels=32)
f = embedkit.extract(mel, SWEEP)
run = embedkit.open_results(OUT)
item = run["melspec"].item("sweep_110_880.wav")
out["same_as_run"] = bool(np.array_equal(f.data, item.load()))
out["shape"] = list(f.data.shape)
print("RESULT", json.dumps(out))
"""


def test_import_embedkit_leaves_a_notebooks_own_modules_alone(installed, tmp_path):
    """A notebook folder holding its own results.py, export.py, search.py, ... : `import embedkit`
    leaves sys.path and those modules alone, loads each of its modules once, and its public API
    gives what a run wrote."""
    user = ["results", "export", "search", "media", "pipeline", "weights", "registry"]
    notebook = tmp_path / "notebook"
    notebook.mkdir()
    for name in user:
        (notebook / f"{name}.py").write_text("WHO = 'the notebook'\n")
    out = tmp_path / "out"
    res = embedkit(installed, "extract", "--audio_dir", str(ROOT / "examples" / "audio"), "--output_base",
                   str(out), "--models", "melspec", "--set", "melspec.n_mels=32", "--no_progress",
                   cwd=tmp_path)
    assert res.returncode == 0, res.stderr
    code = (f"USER = {user!r}; SWEEP = {str(ROOT / 'examples' / 'audio' / 'sweep_110_880.wav')!r}; "
            f"OUT = {str(out)!r}\n" + NOTEBOOK)
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=notebook,
                         env={**os.environ, "PYTHONPATH": str(installed)}, timeout=300)
    assert res.returncode == 0, res.stderr[-3000:]
    got = json.loads(res.stdout.split("RESULT ", 1)[1])
    assert got["path_unchanged"]
    assert got["user_modules"] == {name: "the notebook" for name in user}
    assert got["ours"] == ["embedkit.export", "embedkit.results", "embedkit.registry"]
    assert got["twice"] == []
    assert "unknown model 'melspc'" in got["caught"]
    assert got["same_as_run"] and got["shape"][1] == 32


def test_installed_browse_app_has_its_pages_and_assets(installed, tmp_path):
    browse = installed / "embedkit" / "browse"
    for name in ("templates/base.html", "templates/item.html", "templates/map.html", "static/map.js",
                 "static/item.js", "static/common.js", "static/style.css", "static/favicon.svg"):
        assert (browse / name).is_file(), name
    for command, usage in (("browse", "usage: embedkit browse"), ("evaluate", "usage: embedkit evaluate")):
        res = embedkit(installed, command, "--help", cwd=tmp_path)
        assert res.returncode == 0 and res.stdout.startswith(usage), res.stderr
