"""Start-up costs only what runs: answers that need no model import no heavy module.

`python run_extraction.py --help`, `--list_models` and a configuration error answer in about a
second because no plugin imports torch, transformers, librosa or scipy.signal before its model
runs (`extractors.base.lazy_import` and `TorchModule`). A melspec/madmom run: tests/test_run.py.
"""

import json
import subprocess
import sys

import pytest

from tests.conftest import ROOT

HEAVY_MODULES = ("torch", "transformers", "librosa", "scipy.signal")
TORCH_MODELS = ["clmr", "crepe", "mert", "openl3", "openl3_image", "r3d18", "resnet18"]


def run_reporting_imports(script: str, *args: str) -> tuple[int, str, list[str]]:
    """Run `python script args` (as __main__, in a fresh interpreter) and report what it imported.

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
    res = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=300)
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
