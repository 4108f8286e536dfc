"""Shared test helpers: reference-data location, synthetic audio writers, CLI runner."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

ROOT = Path(__file__).resolve().parents[1]
REFERENCE = ROOT.parent / "shared" / "reference"


def reference(*parts: str) -> Path:
    """Path inside ../shared/reference; skips the test when the folder is absent."""
    path = REFERENCE.joinpath(*parts)
    if not path.exists():
        pytest.skip(f"upstream reference data not found at {path} (it sits beside the project in CI)")
    return path


def tone(freq: float, seconds: float, sr: int, amp: float = 0.5) -> np.ndarray:
    t = np.arange(int(round(seconds * sr))) / sr
    return (amp * np.sin(2 * np.pi * freq * t)).astype(np.float32)


def click_track(bpm: float, seconds: float, sr: int = 44100, seed: int = 0) -> np.ndarray:
    """Noise bursts on every beat: a signal with a known tempo."""
    rng = np.random.default_rng(seed)
    out = np.zeros(int(seconds * sr), np.float32)
    n = int(0.02 * sr)
    env = np.exp(-np.arange(n) / (0.004 * sr))
    for start in np.arange(0.0, seconds, 60.0 / bpm):
        i = int(start * sr)
        m = min(n, len(out) - i)
        out[i:i + m] += (0.7 * rng.standard_normal(m) * env[:m]).astype(np.float32)
    return out


def write_wav(path: Path, audio: np.ndarray, sr: int, subtype: str | None = None) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    sf.write(path, audio, sr, subtype=subtype)
    return path


def run_cli(*args: str, cwd: Path | None = None, timeout: float = 300, env: dict | None = None):
    """Run run_extraction.py in a subprocess; returns CompletedProcess (text)."""
    full_env = {**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})}
    return subprocess.run(
        [sys.executable, str(ROOT / "run_extraction.py"), "--no_progress", *args],
        cwd=cwd or ROOT, capture_output=True, text=True, timeout=timeout, env=full_env,
    )


def pytest_addoption(parser):
    parser.addoption("--stress", action="store_true", default=False,
                     help="heavier reliability variants: more kill moments, longer corpus, a 2-hour file")


@pytest.fixture
def stress(request) -> bool:
    return bool(request.config.getoption("--stress"))


def need_tool(ok: bool, what: str) -> None:
    """Skip when a system tool or package is missing locally; in CI (.ci/run installs it) fail instead."""
    if ok:
        return
    if os.environ.get("CI"):
        pytest.fail(f"{what} is missing in CI: .ci/run must install it")
    pytest.skip(f"{what} is not installed (CI installs it)")


@pytest.fixture(scope="session")
def pg_server(tmp_path_factory):
    """A real PostgreSQL 16 + pgvector server from the pgserver wheel, once per test session.

    Unix socket only (no TCP port). As root, pgserver runs the server as an unprivileged
    'pgserver' OS user it creates. Yields the server handle; its get_uri() is a trust login.
    """
    import logging
    import warnings

    try:
        with warnings.catch_warnings():  # platformdirs: XDG_RUNTIME_DIR unset, falls back to /tmp
            warnings.simplefilter("ignore")
            import pgserver
    except ImportError:
        need_tool(False, "the pgserver package (requirements.txt)")

    logging.getLogger("pgserver").setLevel(logging.ERROR)
    server = pgserver.get_server(tmp_path_factory.mktemp("pg") / "data", cleanup_mode="delete")
    yield server
    server.cleanup()


@pytest.fixture(scope="session")
def pg_uri(pg_server) -> str:
    return pg_server.get_uri()
