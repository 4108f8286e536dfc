"""Start-up costs only what runs: answers that need no model import no heavy module.

`python run_extraction.py --help`, `--list_models` and a configuration error answer in about a
second because no plugin imports torch, transformers, librosa or scipy.signal before its model
runs (`extractors.base.lazy_import` and `TorchModule`). A melspec/madmom run: tests/test_run.py.
"""

import json
import os
import subprocess
import sys

import pytest

from tests.conftest import ROOT, tone, write_wav

HEAVY_MODULES = ("torch", "transformers", "librosa", "scipy.signal")
TORCH_MODELS = ["clmr", "crepe", "mert", "openl3", "openl3_image", "r3d18", "resnet18"]


def run_reporting_imports(script: str, *args: str, env: dict | None = None) -> tuple[int, str, list[str]]:
    """Run `python script args` (as __main__, in a fresh interpreter, with `env` added to the
    environment) and report what it imported.

    Returns (exit status, stdout + stderr, the HEAVY_MODULES in sys.modules at exit).
    """
    code = (
        "import json, runpy, sys\n"
        f"sys.argv = [{script!r}, *{list(args)!r}]\n"
        "rc = 0\n"
        "try:\n"
        f"    runpy.run_path({script!r}, run_name='__main__')\n"
        "except SystemExit as exc:\n"
        "    rc = exc.code if isinstance(exc.code, int) else 1\n"
        f"heavy = sorted(m for m in {HEAVY_MODULES!r} if m in sys.modules)\n"
        "print('HEAVY', json.dumps(heavy), file=sys.stderr)\n"
        "sys.exit(rc)\n"
    )
    res = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=300,
                         env={**os.environ, **(env or {})})
    heavy = [line for line in res.stderr.splitlines() if line.startswith("HEAVY ")]
    assert len(heavy) == 1, res.stdout + res.stderr
    return res.returncode, res.stdout + res.stderr, json.loads(heavy[0][len("HEAVY "):])


@pytest.mark.parametrize("case", ["help", "list_models", "config_error"])
def test_driver_answers_without_heavy_imports(tmp_path, case):
    """--help, --list_models and a config error import none of HEAVY_MODULES; the last two import
    every plugin module (the torch ones included) to list or validate them."""
    config_error = ["--no_progress", "--audio_dir", str(tmp_path), "--output_base", str(tmp_path / "out"),
                    "--models", *TORCH_MODELS, "--set", "crepe.capacity=huge"]
    args, status, shown = {
        "help": (["--help"], 0, "--list_models"),
        "list_models": (["--list_models"], 0, "openl3_image  (image;"),
        "config_error": (config_error, 2, "'capacity' = 'huge' is invalid"),
    }[case]
    rc, out, heavy = run_reporting_imports("run_extraction.py", *args)
    assert rc == status and shown in out, out
    if case == "list_models":  # every plugin imported (listed with its parameters)
        assert "cannot import" not in out, out
        assert all(f"\n{m}  (" in "\n" + out for m in TORCH_MODELS), out
    assert heavy == [], out


@pytest.mark.parametrize("args", [["--help"], ["audio", "no_such_file.wav"]])
def test_openl3_cli_answers_without_heavy_imports(args):
    """The openl3-compatible command's --help, and its no-input-files error, import no torch."""
    rc, out, heavy = run_reporting_imports("openl3_cli.py", *args)
    assert rc == (0 if args == ["--help"] else 2), out
    assert ("--audio-embedding-size" if args == ["--help"] else "No files found") in out, out
    assert heavy == [], out


HUB_ENVS = {"default": {}, "xdg": {"XDG_CACHE_HOME": "/x/cache"},
            "torch_home": {"TORCH_HOME": "~/th", "XDG_CACHE_HOME": "/x"}}


@pytest.mark.parametrize("env", HUB_ENVS.values(), ids=HUB_ENVS.keys())
def test_torch_hub_folder_is_torchs_own_without_importing_torch(env):
    """weights.torch_hub_checkpoints() names torch.hub.get_dir()/checkpoints without importing torch,
    and follows torch.hub.set_dir once torch is imported."""
    code = (
        "import json, sys; from pathlib import Path; import _checkout; from embedkit import weights\n"
        "before = str(weights.torch_hub_checkpoints()); imported = 'torch' in sys.modules\n"
        "import torch\n"
        "hub = str(Path(torch.hub.get_dir()) / 'checkpoints')\n"
        "torch.hub.set_dir('/moved/hub')\n"
        "print(json.dumps([before, imported, hub, str(weights.torch_hub_checkpoints())]))\n"
    )
    full_env = {k: v for k, v in os.environ.items() if k not in ("TORCH_HOME", "XDG_CACHE_HOME")}
    res = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=300,
                         env={**full_env, **env})
    assert res.returncode == 0, res.stderr
    before, imported, hub, moved = json.loads(res.stdout.splitlines()[-1])
    assert not imported
    assert before == hub and hub.endswith("/hub/checkpoints")
    assert moved == "/moved/hub/checkpoints"


def test_openl3_weights_missing_answers_without_heavy_imports(tmp_path):
    """openl3_cli.py with no weights anywhere (offline): the what-to-do error, without torch."""
    write_wav(tmp_path / "a.wav", tone(440, 0.5, 48000), 48000)
    env = {"EMBEDKIT_CACHE": str(tmp_path / "cache"), "EMBEDKIT_OFFLINE": "1",
           "TORCH_HOME": str(tmp_path / "th")}
    rc, out, heavy = run_reporting_imports("openl3_cli.py", "audio", str(tmp_path / "a.wav"), env=env)
    assert rc == 2 and "weights not found" in out and str(tmp_path / "th" / "hub" / "checkpoints") in out, out
    assert heavy == [], out
