"""The run loop on a mixed folder: every kind of file to every model that takes it, bad media, shard naming,
leases, notes. Image and video models here are small stand-ins with known answers (mean colours, frame
counts): the driver is under test, not a network."""

import json
import os
import time
import warnings
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
from PIL import Image

from embedkit import outputs, pipeline, registry
from embedkit.extractors.base import Extractor, Features, OutputSpec
from tests.conftest import color_frames, encode_audio, encode_video, run_cli, tone, write_wav


class MeanColour(Extractor):
    """Images -> (3,) mean RGB; video frames -> (N, 3) per frame, with their times."""

    name = "meancolour"
    modality = "image"

    def _load(self):
        return None

    def takes_video_frames(self) -> bool:
        return True

    def output_spec(self, kind="image"):
        if kind == "video":
            return OutputSpec(axes=("time", "rgb"), timestamps_file=True)
        return OutputSpec(axes=("rgb",))

    def extract_image(self, rgb):
        return Features(rgb.reshape(-1, 3).mean(axis=0).astype(np.float32))

    def frame_consumer(self, info):
        rows, times = [], []

        class Consumer:
            def add(self, chunk):
                rows.append(chunk.rgb().reshape(len(chunk), -1, 3).mean(axis=1))
                times.append(chunk.pts)

            def finish(self):
                return Features(np.concatenate(rows).astype(np.float32), np.concatenate(times))

        return Consumer()


class FrameCount(Extractor):
    """Videos -> (2,): number of frames and the last frame's time."""

    name = "framecount"
    modality = "video"

    def _load(self):
        return None

    def output_spec(self, kind="video"):
        return OutputSpec(axes=("dim",))

    def frame_consumer(self, info):
        state = {"n": 0, "t": 0.0}

        class Consumer:
            def add(self, chunk):
                state["n"] += len(chunk)
                state["t"] = float(chunk.pts[-1])

            def finish(self):
                return Features(np.array([state["n"], state["t"]], np.float32))

        return Consumer()


def run(audio_dir: Path, out: Path, models: list, **opts) -> pipeline.Runner:
    jobs = [pipeline.ModelJob(m.name if isinstance(m, Extractor) else m,
                              m if isinstance(m, Extractor) else registry.create(m)) for m in models]
    runner = pipeline.Runner(jobs, pipeline.RunOptions(audio_dir, out, progress=False, **opts),
                             log=lambda m: None)
    runner.run()
    runner.write_reports()
    return runner


def manifest(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "manifest.jsonl").read_text().splitlines()]


def hidden(out: Path) -> list[str]:
    return sorted(p.name for p in out.rglob(".*") if p.is_file())


@pytest.fixture(scope="module")
def mixed(tmp_path_factory) -> Path:
    """wav, flac, mp3, m4a, mp4 (H.264 + AAC), webm (VP9 + Opus), a silent mp4, jpg, png."""
    d = tmp_path_factory.mktemp("mixed")
    sr = 44100
    x = tone(330, 1.0, sr, 0.4)
    write_wav(d / "a.wav", x, sr)
    write_wav(d / "b.flac", x, sr)
    sf.write(d / "c.mp3", x, sr, format="MP3")
    encode_audio(d / "d.m4a", x, sr, "aac")
    encode_video(d / "e.mp4", color_frames(12), fps=12, audio=x, sr=sr)
    encode_video(d / "f.webm", color_frames(6), fps=6, audio=x, codec="libvpx-vp9")
    encode_video(d / "g_silent.MP4", color_frames(5), fps=5)
    Image.fromarray(np.full((30, 40, 3), (10, 100, 200), np.uint8)).save(d / "h.jpg", quality=100)
    Image.fromarray(np.full((30, 40, 3), (250, 5, 60), np.uint8)).save(d / "i.png")
    return d


def test_every_file_goes_to_every_model_that_takes_it(mixed, tmp_path):
    out = tmp_path / "out"
    r = run(mixed, out, ["melspec", MeanColour(), FrameCount()])
    s = r.stats
    assert s.files_by_kind == {"audio": 4, "video": 3, "image": 2}
    # audio models: every file with sound; the silent video is a note, not a failure
    assert sorted(p.name for p in (out / "melspec").glob("*.npy")) == \
        ["a.npy", "b.npy", "c.npy", "d.npy", "e.npy", "f.npy"]
    assert s.models["melspec"].ok == 6 and s.models["melspec"].no_input == 1 and not s.failures
    skip = [m for m in manifest(out) if m.get("skipped")]
    assert [(m["model"], m["source"], m["skipped"]) for m in skip] == \
        [("melspec", "g_silent.MP4", "no audio track in this video")]
    # the same arrays as the model gives on soundfile's samples (formats soundfile reads are unchanged)
    mel = registry.create("melspec")
    wav = sf.read(mixed / "a.wav", dtype="float32")[0]
    from embedkit import audio_io

    want = mel.extract(audio_io.resample(wav, 44100, 16000, mel.resample_method), 16000).data
    np.testing.assert_array_equal(np.load(out / "melspec" / "a.npy"), want)
    # image model: images (3,), video frames (N, 3) with a timestamps file
    np.testing.assert_allclose(np.load(out / "meancolour" / "h.npy"), [10, 100, 200], atol=3)
    np.testing.assert_allclose(np.load(out / "meancolour" / "i.npy"), [250, 5, 60], atol=0)
    frames = np.load(out / "meancolour" / "e.npy")
    assert frames.shape == (12, 3)
    np.testing.assert_allclose(frames.mean(axis=1), 20 + 8 * np.arange(12), atol=3)
    ts = np.load(out / "meancolour.timestamps" / "e.npy")
    assert ts.dtype == np.float64 and np.allclose(ts, np.arange(12) / 12)
    assert np.load(out / "meancolour" / "g_silent.npy").shape == (5, 3)
    # video model: both videos in one decoding pass with the image model
    np.testing.assert_allclose(np.load(out / "framecount" / "f.npy"), [6, 5 / 6], atol=1e-3)
    meta = json.loads((out / "meancolour" / "features.json").read_text())
    assert meta["axes"] == ["rgb"] and meta["per_kind"]["video"]["axes"] == ["time", "rgb"]
    assert meta["extra_folders"] == {"timestamps": "meancolour.timestamps"}
    assert hidden(out) == []
    # a rerun computes nothing; the silent video's record (no sound, for this very file) stands too
    lines = len(manifest(out))
    again = run(mixed, out, ["melspec", MeanColour(), FrameCount()])
    assert {a: (m.ok, m.skipped, m.no_input) for a, m in again.stats.models.items()} == \
        {"melspec": (0, 7, 0), "meancolour": (0, 5, 0), "framecount": (0, 3, 0)}
    assert len(manifest(out)) == lines  # nothing appended


def test_bad_media_are_reported_and_skipped(tmp_path):
    d = tmp_path / "in"
    sr = 44100
    x = tone(440, 1.0, sr, 0.4)
    good = encode_video(d / "ok.mp4", color_frames(8), fps=8, audio=x, sr=sr)
    m4a = encode_audio(d / "ok.m4a", x, sr, "aac")
    encode_video(d / "silent.mp4", color_frames(4), fps=4)
    encode_audio(d / "audio_only.mp4", x, sr, "aac")
    (d / "cut.mp4").write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    (d / "cut.m4a").write_bytes(m4a.read_bytes()[: m4a.stat().st_size // 2])
    encode_video(d / "vfr.mkv", color_frames(4), pts_ms=[0, 100, 400, 450])
    _no_frames(d / "no_frames.mp4")
    Image.fromarray(color_frames(1, 64, 64)[0]).save(d / "photo.jpg")
    (d / "corrupt.jpg").write_bytes((d / "photo.jpg").read_bytes()[:300])
    (d / "lies.wav").write_bytes((d / "photo.jpg").read_bytes())
    Image.fromarray(np.zeros((1, 1, 3), np.uint8)).save(d / "one.png")
    (d / "zero.png").write_bytes(_png_header(0, 0))
    Image.new("1", (20000, 20000)).save(d / "huge.png")
    frames = [Image.fromarray(np.full((8, 8, 3), v, np.uint8)) for v in (40, 200)]
    frames[0].save(d / "anim.gif", save_all=True, append_images=frames[1:], duration=50)
    (d / "empty.mp4").write_bytes(b"")
    out = tmp_path / "out"
    r = run(d, out, ["melspec", MeanColour()])
    failed = {(f["file"], f["model"]): f for f in r.stats.failures}
    assert set(failed) == {("cut.mp4", "melspec"), ("cut.mp4", "meancolour"), ("cut.m4a", "melspec"),
                           ("no_frames.mp4", "melspec"), ("no_frames.mp4", "meancolour"),
                           ("corrupt.jpg", "meancolour"),
                           ("lies.wav", "melspec"), ("zero.png", "meancolour"), ("huge.png", "meancolour"),
                           ("empty.mp4", "melspec"), ("empty.mp4", "meancolour")}
    assert all(f["cause"] and f["stage"] == "decode" for f in failed.values()), failed
    assert "holds a JPEG image" in failed[("lies.wav", "melspec")]["cause"]
    assert "too large" in failed[("huge.png", "meancolour")]["cause"]
    assert failed[("empty.mp4", "melspec")]["cause"] == "empty file (0 bytes)"
    skipped = {(m["source"], m["model"]): m["skipped"] for m in manifest(out) if m.get("skipped")}
    assert skipped == {("silent.mp4", "melspec"): "no audio track in this video",
                       ("vfr.mkv", "melspec"): "no audio track in this video",
                       ("audio_only.mp4", "meancolour"): "no video stream in this file"}
    assert "no audio or video stream" in failed[("no_frames.mp4", "melspec")]["cause"]
    np.testing.assert_allclose(np.load(out / "meancolour.timestamps" / "vfr.npy"), [0, 0.1, 0.4, 0.45],
                               atol=1e-3)
    assert np.load(out / "meancolour" / "one.npy").shape == (3,)
    assert np.load(out / "meancolour" / "anim.npy")[0] == 40  # the first frame of the animation
    assert np.load(out / "melspec" / "audio_only.npy").shape[1] == 64
    written = {p.relative_to(out).as_posix() for p in out.rglob("*.npy")}
    assert not any(Path(w).stem in {"cut", "corrupt", "lies", "zero", "huge", "empty"} for w in written)
    assert hidden(out) == []


def _no_frames(path: Path) -> None:
    import av

    with av.open(str(path), "w") as c:
        vs = c.add_stream("libx264", rate=10)
        vs.width, vs.height, vs.pix_fmt = 64, 48, "yuv420p"
        c.start_encoding()  # a header, then not one frame


def _png_header(w: int, h: int) -> bytes:
    """A PNG whose IHDR says w x h (0 x 0 is invalid, which is the point)."""
    import struct
    import zlib

    ihdr = struct.pack(">IIBBBBB", w, h, 8, 2, 0, 0, 0)
    chunk = b"IHDR" + ihdr
    return b"\x89PNG\r\n\x1a\n" + struct.pack(">I", len(ihdr)) + chunk + struct.pack(">I", zlib.crc32(chunk))


def test_output_names_do_not_depend_on_the_shard(tmp_path):
    d = tmp_path / "in"
    for i, name in enumerate(["a.wav", "a.flac", "b.wav", "c.wav", "c.m4a"]):
        x = tone(200 + 50 * i, 0.3, 16000)
        encode_audio(d / name, x, 16000, "aac") if name.endswith("m4a") else write_wav(d / name, x, 16000)
    out = tmp_path / "out"
    for k in range(2):
        run(d, out, ["melspec"], shard=(k, 2))
    written = sorted(p.name for p in (out / "melspec").glob("*.npy"))
    assert written == ["a.flac.npy", "a.wav.npy", "b.npy", "c.m4a.npy", "c.wav.npy"]
    sources = [m["source"] for m in manifest(out)]
    assert sorted(sources) == ["a.flac", "a.wav", "b.wav", "c.m4a", "c.wav"]  # each once


def test_a_dead_hosts_lock_is_taken_over_after_its_lease(tmp_path):
    d = tmp_path / "in"
    for name in ("x.wav", "y.wav"):
        write_wav(d / name, tone(300, 0.3, 16000), 16000)
    out = tmp_path / "out"
    lock = out / "melspec" / ".x.npy.lock"
    lock.parent.mkdir(parents=True)
    lock.write_text("node17.cluster:4242")  # another host: its pid can't be checked from here
    r = run(d, out, ["melspec"], lease_seconds=60)
    assert r.stats.models["melspec"].ok == 1 and dict(r.stats.claimed_by) == {"node17.cluster:4242": 1}
    assert "held by another driver (node17.cluster:4242 x1)" in r.stats.render()
    past = time.time() - 61  # its heartbeat stopped more than a lease ago: the host is gone
    os.utime(lock, (past, past))
    r = run(d, out, ["melspec"], lease_seconds=60)
    assert r.stats.models["melspec"].ok == 1 and not r.stats.claimed_by
    assert sorted(p.name for p in (out / "melspec").glob("*.npy")) == ["x.npy", "y.npy"]
    assert hidden(out) == []


def test_heartbeat_renews_held_leases(tmp_path):
    leases = outputs.Leases(lease_seconds=2.5)  # a beat every 0.5 s
    lock = leases.acquire(tmp_path / "a.npy")
    assert lock.held
    past = time.time() - 100
    os.utime(lock.path, (past, past))
    deadline = time.time() + 30
    while lock.path.stat().st_mtime < past + 50 and time.time() < deadline:
        time.sleep(0.05)
    assert lock.path.stat().st_mtime > past + 50
    other = outputs.OutputLock(tmp_path / "a.npy", 2.5)
    assert not other.acquire() and other.owner == lock.owner
    leases.close()
    assert not lock.path.exists() and not leases.acquire(tmp_path / "b.npy").held


class Padded(MeanColour):
    name = "padded"

    def extract_image(self, rgb):
        warnings.warn(f"input {rgb.shape[0]}x{rgb.shape[1]} is small, padded")
        return super().extract_image(rgb)


def test_every_warning_reaches_the_manifest(tmp_path):
    d = tmp_path / "in"
    for i in range(3):
        Image.fromarray(np.full((4 + i, 4, 3), 9, np.uint8)).save(d / f"{i}.png") if d.exists() else \
            (d.mkdir(), Image.fromarray(np.full((4, 4, 3), 9, np.uint8)).save(d / f"{i}.png"))
    r = run(d, tmp_path / "out", [Padded()])
    notes = {m["source"]: m["notes"] for m in manifest(tmp_path / "out")}
    assert notes == {"0.png": ["input 4x4 is small, padded"], "1.png": ["input 5x4 is small, padded"],
                     "2.png": ["input 6x4 is small, padded"]}
    assert r.stats.notes == 3 and "3 note(s) in manifest.jsonl" in r.stats.render()


def test_start_says_what_was_found_and_left_out(tmp_path):
    d = tmp_path / "in"
    write_wav(d / "a.wav", tone(300, 0.3, 16000), 16000)
    write_wav(d / "sub" / "b.wav", tone(300, 0.3, 16000), 16000)
    (d / "notes.xyz").write_text("x")
    Image.fromarray(np.zeros((4, 4, 3), np.uint8)).save(d / "c.png")
    res = run_cli("--audio_dir", str(d), "--output_base", str(tmp_path / "out"), "--models", "melspec")
    assert res.returncode == 0, res.stderr
    assert "found 2 file(s) in" in res.stderr and "1 audio, 1 image" in res.stderr
    assert "1 media file(s) in sub-folders: add --recursive" in res.stderr
    assert "1 file(s) with extensions this run does not read: .xyz x1" in res.stderr
    assert "no configured model takes image files (1 left out)" in res.stderr


class Picky(MeanColour):
    """Makes nothing of images narrower than 10 pixels: its documented choice, not a failure."""

    name = "picky"

    def extract_image(self, rgb):
        from embedkit.extractors.base import SkipFile

        if rgb.shape[1] < 10:
            raise SkipFile(f"image {rgb.shape[1]} pixels wide, under 10: nothing to embed")
        return super().extract_image(rgb)


def test_a_plugins_skip_is_a_note_not_a_failure(tmp_path):
    d = tmp_path / "in"
    d.mkdir()
    Image.fromarray(np.zeros((4, 4, 3), np.uint8)).save(d / "small.png")
    Image.fromarray(np.zeros((20, 20, 3), np.uint8)).save(d / "big.png")
    r = run(d, tmp_path / "out", [Picky()])
    assert not r.stats.failures and r.stats.models["picky"].ok == 1 and r.stats.models["picky"].no_input == 1
    skipped = [m for m in manifest(tmp_path / "out") if m.get("skipped")]
    assert [(m["source"], m["skipped"]) for m in skipped] == [
        ("small.png", "image 4 pixels wide, under 10: nothing to embed")]


class LosesInterrupt(Extractor):
    """Audio -> (1,) mean; while working, Ctrl-C arrives and its KeyboardInterrupt is lost, as
    when it is raised inside a finalizer Python happens to run at that moment."""

    name = "losesinterrupt"
    sample_rate = 16000

    def _load(self):
        return None

    def output_spec(self, kind="audio"):
        return OutputSpec(axes=("dim",))

    def _extract(self, audio):
        import signal

        try:
            os.kill(os.getpid(), signal.SIGINT)
            for _ in range(10_000):  # the handler runs between bytecodes
                pass
        except KeyboardInterrupt:
            pass  # swallowed
        return Features(np.array([audio.mean()], np.float32))


def test_an_interrupt_whose_exception_was_lost_still_stops_the_run(tmp_path):
    """The file being worked on is abandoned (nothing of it written), the next is not started,
    and the report says SIGINT."""
    import signal

    d = tmp_path / "in"
    for name in ("a.wav", "b.wav"):
        write_wav(d / name, tone(300, 0.3, 16000), 16000)
    out = tmp_path / "out"
    # Ctrl-C as in a terminal, even where the suite was started in the background (SIGINT ignored)
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        r = run(d, out, [LosesInterrupt()])
    finally:
        signal.signal(signal.SIGINT, previous)
    assert r.stats.interrupted == "SIGINT"
    assert not (out / "manifest.jsonl").exists() or manifest(out) == []
    assert not list((out / "losesinterrupt").glob("*.npy")) and hidden(out) == []


def test_warnings_are_credited_to_the_thread_that_issued_them():
    """A decoder thread and a model thread capture at once: each gets its own warnings, every one
    of them (warnings.catch_warnings swaps process-wide state: the second thread's capture took
    the first one's warnings, and the first thread's exit ended the second one's capture)."""
    import threading

    steps = {k: threading.Event() for k in ("t1_in", "t2_in", "w1", "w2", "t1_out")}
    got: dict[str, list[str]] = {}

    def wait(k):
        assert steps[k].wait(30), k

    def first():
        steps["t1_in"].set()
        wait("t2_in")
        warnings.warn("from the first thread")
        steps["w1"].set()
        wait("w2")
        return Features(np.zeros(1, np.float32))

    def second():
        steps["t2_in"].set()
        wait("w1")
        warnings.warn("from the second thread")
        steps["w2"].set()
        wait("t1_out")
        warnings.warn("from the second thread, later")
        return Features(np.zeros(1, np.float32))

    t1 = threading.Thread(target=lambda: got.__setitem__("first", pipeline._capture_notes(first)[1]))
    t2 = threading.Thread(target=lambda: got.__setitem__("second", pipeline._capture_notes(second)[1]))
    t1.start()
    wait("t1_in")
    t2.start()
    t1.join(30)
    steps["t1_out"].set()
    t2.join(30)
    assert got == {"first": ["from the first thread"],
                   "second": ["from the second thread", "from the second thread, later"]}
    # the same warning from the same line, file after file: a note each time
    for _ in range(2):
        got = pipeline._capture_notes(lambda: warnings.warn("again") or Features(np.zeros(1)))[1]
        assert got == ["again"]


def test_a_decoders_warning_goes_to_its_own_file(tmp_path):
    """Pillow warns while decoding a palette PNG with byte transparency (in the decoder thread, while
    the model works on another file): the note is that file's, in its manifest line."""
    d = tmp_path / "in"
    d.mkdir()
    p = Image.fromarray(np.arange(64, dtype=np.uint8).reshape(8, 8)).convert("P")
    p.save(d / "a_palette.png", transparency=bytes(256))
    for name in ("b.png", "c.png", "d.png"):
        Image.fromarray(np.full((8, 8, 3), 7, np.uint8)).save(d / name)
    run(d, tmp_path / "out", [MeanColour()])
    notes = {m["source"]: m.get("notes", []) for m in manifest(tmp_path / "out")}
    assert notes == {"a_palette.png": ["Palette images with Transparency expressed in bytes should be "
                                       "converted to RGBA images"], "b.png": [], "c.png": [], "d.png": []}
