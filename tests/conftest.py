"""Shared test helpers: reference-data location, synthetic audio writers, CLI runner."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

import _checkout  # noqa: F401  (the checkout as the package embedkit: pyproject's pythonpath)

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


def default_sigint() -> None:
    """Popen(preexec_fn=...): the child takes Ctrl-C even where the suite was started in the
    background (`pytest &` in a script ignores SIGINT, and children inherit that)."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def hold(path: Path) -> Path:
    """A FIFO named like an input file: a run that reaches it waits there until `release(path, ...)`.

    Lets a test stop a run while it is provably still going, however fast the machine.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    os.mkfifo(path)
    return path


def release(path: Path, audio: np.ndarray, sr: int) -> None:
    """Replace the FIFO made by `hold` with a real audio file."""
    path.unlink()
    write_wav(path, audio, sr)


def recorded_outputs(out: Path) -> list[str]:
    """The outputs manifest lines name (a line cut short by a kill is skipped, as the driver does)."""
    names = []
    try:
        for line in (out / "manifest.jsonl").read_text().splitlines():
            try:
                names.append(json.loads(line)["output"])
            except (ValueError, KeyError):
                pass
    except FileNotFoundError:
        pass
    return [n for n in names if n]


def pytest_addoption(parser):
    parser.addoption("--stress", action="store_true", default=False,
                     help="heavier reliability variants: more kill moments, longer corpus, a 2-hour file")


@pytest.fixture
def stress(request) -> bool:
    return bool(request.config.getoption("--stress"))


@pytest.fixture
def one_torch_thread():
    """One torch thread for the test: the test machines' 2 cores are shared, and one thread was
    measured several times faster there than two."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


# -- media made with PyAV (FFmpeg's own encoders) -------------------------------------------
def encode_audio(path: Path, audio: np.ndarray, sr: int, codec: str, fmt: str = "fltp") -> Path:
    """Mono `audio` (float32, or int16 for s16 formats) into a container chosen by `path`'s extension,
    with `codec` (aac, alac, libopus, flac)."""
    import av

    path.parent.mkdir(parents=True, exist_ok=True)
    with av.open(str(path), "w") as c:
        stream = c.add_stream(codec, rate=sr)
        stream.layout = "mono"
        stream.format = fmt
        _mux_audio(c, stream, audio, sr, fmt)
    return path


def _mux_audio(c, stream, audio: np.ndarray, sr: int, fmt: str) -> None:
    import av

    step = stream.codec_context.frame_size or 1024
    for i in range(0, len(audio), step):
        block = audio[i:i + step][None, :]
        if fmt.startswith("s16") and block.dtype != np.int16:
            block = np.round(block * 32767).astype(np.int16)
        frame = av.AudioFrame.from_ndarray(block, format=fmt, layout="mono")
        frame.sample_rate, frame.pts = sr, i
        for packet in stream.encode(frame):
            c.mux(packet)
    for packet in stream.encode():
        c.mux(packet)


def encode_video(path: Path, frames: np.ndarray, fps: int = 25, audio: np.ndarray | None = None,
                 sr: int = 44100, codec: str = "libx264", pts_ms: list[int] | None = None) -> Path:
    """(N, H, W, 3) uint8 frames (+ optional mono AAC sound) into `path` (mp4, mkv, webm by extension).

    `pts_ms` gives each frame's presentation time in milliseconds (variable frame rate).
    """
    import av
    from fractions import Fraction

    path.parent.mkdir(parents=True, exist_ok=True)
    with av.open(str(path), "w") as c:
        vs = c.add_stream(codec, rate=fps)
        vs.width, vs.height = frames.shape[2], frames.shape[1]
        vs.pix_fmt = "yuv420p"
        if pts_ms is not None:
            vs.codec_context.time_base = Fraction(1, 1000)
        a = None
        if audio is not None:
            webm = path.suffix == ".webm"
            a = c.add_stream("libopus" if webm else "aac", rate=48000 if webm else sr)
            a.layout, a.format = "mono", ("flt" if webm else "fltp")
        for i, img in enumerate(frames):
            frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(img), format="rgb24")
            if pts_ms is not None:
                frame.pts, frame.time_base = pts_ms[i], Fraction(1, 1000)
            for packet in vs.encode(frame):
                c.mux(packet)
        for packet in vs.encode():
            c.mux(packet)
        if a is not None:
            _mux_audio(c, a, audio, a.codec_context.sample_rate, a.format.name)
    return path


def color_frames(n: int, h: int = 48, w: int = 64) -> np.ndarray:
    """Frame i is a flat gray of level 20 + 8 i (what survives H.264 and yuv420p well)."""
    return np.stack([np.full((h, w, 3), min(255, 20 + 8 * i), np.uint8) for i in range(n)])

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


@pytest.fixture(scope="session")
def speaker_collection(tmp_path_factory):
    """espeak-ng voices, 8 per gender x 3 sentences (examples/make_voices.py --per_voice 3), extracted
    with two melspec configurations (frames, 64 mels; pooled, 128 mels) and indexed (file level for
    both, segment level with 1 s windows for the frames). Labels: speakers.csv (path,gender,voice).
    Returns {"root", "input", "out", "labels"} (Paths). Tests that change it restore it."""
    import shutil as _shutil

    need_tool(_shutil.which("espeak-ng") is not None, "espeak-ng (apt-get install espeak-ng)")
    sys.path.insert(0, str(ROOT / "examples"))
    import make_voices

    root = tmp_path_factory.mktemp("speakers")
    make_voices.synthesise_speakers(root, per_gender=8, per_voice=3)
    config = root / "study.yaml"
    config.write_text(
        f"audio_dir: {root / 'speakers'}\noutput_base: {root / 'out'}\nrecursive: true\nmodels:\n"
        "  melspec:\n    n_mels: 64\n"
        "  melspec_mean:\n    extractor: melspec\n    n_mels: 128\n    n_fft: 1024\n    pooling: mean\n"
    )
    res = run_cli("--config", str(config))
    assert res.returncode == 0, res.stderr
    from embedkit import run_search

    for args in (["--model", "melspec"], ["--model", "melspec", "--level", "segment", "--window", "1"],
                 ["--model", "melspec_mean"]):
        assert run_search.main(["index", "--output_base", str(root / "out"), "--quiet", *args]) == 0
    return {"root": root, "input": root / "speakers", "out": root / "out", "labels": root / "speakers.csv"}
