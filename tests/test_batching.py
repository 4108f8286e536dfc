"""Images across files (issue #25, section 3): consecutive image files share one forward pass.

What is checked: an image's vector does not depend on its batch companions (bitwise, on this
machine: what lets resumed and sharded runs write the same bytes); a run over 48 images makes
ceil(48 / batch_size) forward passes and says so in run_report.json, with outputs bitwise equal to
`--batch_size 1`; a bad image fails alone; a run killed inside a batch resumes to the bytes of an
uninterrupted run; shards write what one run writes. Random weights (architecture-identical): the
batching mechanics are under test, not the numbers (the parity tests hold those).
"""

from __future__ import annotations

import json
import math
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any, Callable

import numpy as np
import pytest

from embedkit import audio_io, media, pipeline, registry
from embedkit.extractors import r3d18
from embedkit.extractors.base import Extractor, Features, OutputSpec
from tests.conftest import ROOT, run_cli, tone, write_wav
from tests.media_synth import scene

N = 48


def write_images(folder: Path, n: int) -> list[Path]:
    """`n` PNG scenes of a few sizes (each over 224 px on a side: openl3_image takes them)."""
    from PIL import Image

    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i in range(n):
        path = folder / f"im{i:02d}.png"
        Image.fromarray(scene(i, 240 + (i % 5) * 8, 232)).save(path)
        paths.append(path)
    return paths


def npys(folder: Path) -> dict[str, bytes]:
    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in sorted(folder.rglob("*.npy"))}


def manifest(out: Path) -> list[dict]:
    """The manifest's lines (a line cut short by a kill is left out, as the driver does)."""
    path, lines = out / "manifest.jsonl", []
    for line in path.read_text().splitlines() if path.exists() else []:
        try:
            lines.append(json.loads(line))
        except ValueError:
            pass
    return lines


def report(out: Path) -> dict:
    return json.loads((out / "run_report.json").read_text())


def random_models(tmp_path: Path, *names: str) -> list[str]:
    cfg = tmp_path / "random.yaml"
    cfg.write_text("models:\n" + "".join(f"  {n}:\n    weights: random\n" for n in names))
    return ["--config", str(cfg), "--models", *names, "--torch_threads", "1"]


# -- the property the design rests on ----------------------------------------------------------------
@pytest.mark.slow
@pytest.mark.parametrize("name", ["resnet18", "openl3_image"])
def test_an_images_vector_does_not_depend_on_its_batch(name, one_torch_thread, tmp_path):
    """Alone, or at any position of batches of other sizes: the same bits. (Where a CPU's kernels
    made this false, a resumed run's partial batch would write other bytes: this test says so.)"""
    images = [media.load_image(p) for p in write_images(tmp_path, 7)]
    alone = registry.create(name, weights_path="random", batch_size=1)
    prepared = [alone.prepare_image(rgb) for rgb in images]
    one_by_one = [alone.extract_images([x])[0].data for x in prepared]
    for size in (2, 3, 7):
        plugin = registry.create(name, weights_path="random", batch_size=size)
        plugin.cpu_call_size = None  # batch_size per call on the CPU too: the shapes under test
        before = plugin.forward_passes
        batched = plugin.extract_images(prepared)
        assert plugin.forward_passes - before == math.ceil(7 / size)
        for a, b in zip(batched, one_by_one):
            assert a.data.tobytes() == b.tobytes(), f"{name}: batch of {size} changed an image's vector"
    tail = registry.create(name, weights_path="random", batch_size=4).extract_images(prepared[3:])
    assert all(a.data.tobytes() == b.tobytes() for a, b in zip(tail, one_by_one[3:]))


# -- 48 images through the driver -------------------------------------------------------------------------
@pytest.fixture(scope="module")
def folder(tmp_path_factory) -> Path:
    """48 scenes, a file that is no image and an image openl3_image refuses (under 224 px); the two
    bad ones sort first, so they sit inside the first batch."""
    from PIL import Image

    d = tmp_path_factory.mktemp("images")
    write_images(d, N)
    (d / "bad_corrupt.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"not an image" * 20)
    Image.fromarray(scene(99, 120, 100)).save(d / "bad_small.png")
    return d


@pytest.fixture(scope="module")
def runs(folder, tmp_path_factory) -> dict[str, Path]:
    """The folder at the default batch sizes (resnet18 32, openl3_image 16), and one per forward."""
    base = tmp_path_factory.mktemp("runs")
    args = random_models(base, "resnet18", "openl3_image")
    out = {}
    for what, extra in (("batched", []), ("single", ["--batch_size", "1"])):
        out[what] = base / what
        res = run_cli("--audio_dir", str(folder), "--output_base", str(out[what]), *args, *extra)
        assert res.returncode == 1, res.stderr  # the two bad files: reported, the rest written
        out[what + "_log"] = res.stdout + res.stderr
    return out


@pytest.mark.slow
def test_48_images_take_a_handful_of_forward_passes_and_the_report_says_so(runs):
    """Groups of 32 consecutive files of the listing (the largest batch_size); each model runs a
    group in calls of its own size (its batch_size; on the CPU its cpu_call_size: resnet18 8,
    openl3_image 1). The 50 files: group 0 = the 2 bad ones + im00..im29, group 1 = im30..im47."""
    models = report(runs["batched"])["models"]
    r18, ol3 = models["resnet18"], models["openl3_image"]
    assert r18["ok"] == N + 1 and ol3["ok"] == N  # bad_small is fine for resnet18
    calls = {m: registry.create(m, weights_path="random").call_size() for m in models}
    r18_passes = math.ceil(31 / calls["resnet18"]) + math.ceil(18 / calls["resnet18"])  # 4 + 3 on the CPU
    assert r18["forward_passes"] == r18_passes < N / 4 and r18["items_forwarded"] == N + 1
    passes = math.ceil(30 / calls["openl3_image"]) + math.ceil(18 / calls["openl3_image"])  # 30 + 18
    assert ol3["forward_passes"] == passes and ol3["items_forwarded"] == N
    assert r18["items_per_forward"] == round((N + 1) / r18_passes, 2)
    said = (f"forward passes: resnet18 {r18_passes} ({round((N + 1) / r18_passes, 2):g} items each), "
            f"openl3_image {passes} ({round(N / passes, 2):g} items each)")
    assert said in runs["batched_log"]
    single = report(runs["single"])["models"]
    assert single["resnet18"]["forward_passes"] == N + 1 and single["resnet18"]["items_per_forward"] == 1
    assert single["openl3_image"]["forward_passes"] == N


@pytest.mark.slow
def test_batched_outputs_are_the_bytes_of_one_image_per_forward(runs):
    for model in ("resnet18", "openl3_image"):
        batched, single = npys(runs["batched"] / model), npys(runs["single"] / model)
        assert len(batched) == (N + 1 if model == "resnet18" else N)
        assert batched == single, model
        assert np.load(runs["batched"] / model / "im00.npy").shape == (512,)


@pytest.mark.slow
def test_a_bad_image_among_them_fails_alone(runs):
    failures = {(f["file"], f["model"]): f for f in report(runs["batched"])["failures"]}
    assert set(failures) == {("bad_corrupt.png", "resnet18"), ("bad_corrupt.png", "openl3_image"),
                             ("bad_small.png", "openl3_image")}
    assert failures[("bad_corrupt.png", "resnet18")]["stage"] == "decode"
    assert "224 px" in failures[("bad_small.png", "openl3_image")]["cause"]
    assert not (runs["batched"] / "openl3_image" / "bad_small.npy").exists()
    assert (runs["batched"] / "resnet18" / "bad_small.npy").is_file()


# -- a forward pass that fails -----------------------------------------------------------------------------
class Brightness(Extractor):
    """A plugin whose batched call fails when any image in it is all white (as a network can fail on
    one input): the driver must try the batch's images one by one."""

    name = "brightness_test"
    modality = "image"
    default_batch_size = 8

    def _load(self) -> Any:
        return None

    def output_spec(self, kind: str = "image") -> OutputSpec:
        return OutputSpec(axes=("dim",))

    def prepare_image(self, rgb: np.ndarray) -> np.ndarray:
        return np.asarray(rgb, np.float32).mean(axis=(0, 1))

    def extract_images(self, prepared: list[Any]) -> list[Features]:
        self.forward_passes += 1
        self.items_forwarded += len(prepared)
        if any((x == 255).all() for x in prepared):
            raise RuntimeError("white image in the batch")
        return [Features(x / 255) for x in prepared]


def test_a_failing_batch_is_tried_again_image_by_image(tmp_path):
    from PIL import Image

    paths = write_images(tmp_path, 5)
    Image.fromarray(np.full((240, 240, 3), 255, np.uint8)).save(paths[2])
    job = pipeline.ModelJob("brightness", Brightness())
    members = []
    for p in paths:
        item = pipeline.Item(Path(p.name), "image", {"brightness": Path(p.stem)}, [job])
        m = pipeline.decode(tmp_path, item, [job])
        members.append(pipeline.prepare_images(item, [job], m))
        assert m._image is None  # the pixels are freed; the prepared input waits
    pipeline.extract_batch(members)
    results = [mem.ordered()[0] for mem in members]
    assert [r.error is None for r in results] == [True, True, False, True, True]
    assert "white image" in str(results[2].error)
    for r, p in zip(results, paths):
        if r.error is None:
            assert np.allclose(r.features.data, media.load_image(p).mean(axis=(0, 1)) / 255, atol=1e-5)
    assert sum(r.forward_passes for r in results) == 1 + 5  # the failed batch, then one per image
    assert results[0].forward_passes == 2  # the batch's call is counted on its first file


def test_batch_groups_come_from_the_listing_not_from_what_is_done():
    jobs = [pipeline.ModelJob("r", registry.create("resnet18", weights_path="random", batch_size=3))]
    files = [Path(f) for f in ("a.png", "b.wav", "c.jpg", "d.png", "e.png", "f.png", "g.mp4", "h.png")]
    assert pipeline.batch_groups(files, jobs) == {
        Path("a.png"): ("image", 0), Path("c.jpg"): ("image", 0), Path("d.png"): ("image", 0),
        Path("e.png"): ("image", 1), Path("f.png"): ("image", 1), Path("h.png"): ("image", 1)}
    single = [pipeline.ModelJob("r", registry.create("resnet18", weights_path="random", batch_size=1))]
    assert pipeline.batch_groups(files, single) == {}  # one per forward: today's path


# -- kills and shards -------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def small(tmp_path_factory) -> tuple[Path, Path, list[str]]:
    """24 images and an uninterrupted resnet18 run over them in batches of 8."""
    d = tmp_path_factory.mktemp("small")
    write_images(d / "in", 24)
    args = ["--audio_dir", str(d / "in"), *random_models(d, "resnet18"), "--batch_size", "8"]
    clean = d / "clean"
    res = run_cli(*args, "--output_base", str(clean))
    assert res.returncode == 0, res.stderr
    assert report(clean)["models"]["resnet18"]["forward_passes"] == 3
    return d, clean, args


def killed_inside_a_batch(args: list[str], tmp_path: Path, whens: range,
                          inside: Callable[[int], bool]) -> tuple[Path, set]:
    """strace kills the run at its n-th open of manifest.jsonl, for n in `whens` (reads for claims
    and appends interleave), until the kill lands inside a batch's stores (`inside(files
    recorded)`): the output folder and the sources its manifest records."""
    if shutil.which("strace") is None:
        pytest.skip("strace is not installed (apt-get install strace)")
    for when in whens:
        out = tmp_path / f"out{when}"
        out.mkdir()
        subprocess.run(["strace", "-f", "-qq", "-o", "/dev/null", "-P", str(out / "manifest.jsonl"),
                        "-e", f"inject=openat:signal=SIGKILL:when={when}", sys.executable,
                        str(ROOT / "run_extraction.py"), "--no_progress", *args, "--prefetch", "1",
                        "--output_base", str(out)], cwd=ROOT, capture_output=True, timeout=300)
        done = {r.get("source") for r in manifest(out)}
        if inside(len(done)):
            return out, done
    pytest.fail("no kill landed inside a batch")


@pytest.mark.slow
def test_a_sigkill_inside_a_batch_resumes_to_identical_bytes(small, tmp_path):
    """Killed inside a batch of 8 images: the rerun computes the rest of that batch (and the array
    without its line, if any) and the folder holds the bytes of the uninterrupted run."""
    d, clean, args = small
    out, recorded = killed_inside_a_batch(args, tmp_path, range(14, 40, 3), lambda n: 0 < n < 24 and n % 8)
    pending = [i for i in range(24) if f"im{i:02d}.png" not in recorded]
    res = run_cli(*args, "--output_base", str(out))
    assert res.returncode == 0, res.stderr
    resumed = report(out)["models"]["resnet18"]
    assert resumed["ok"] == len(pending) and resumed["skipped"] == 24 - len(pending)
    # the rest of each group in one pass: the partial batch the kill left, and the groups after it
    assert resumed["forward_passes"] == len({i // 8 for i in pending})
    assert npys(out / "resnet18") == npys(clean / "resnet18")
    assert sorted({r["source"] for r in manifest(out)}) == [f"im{i:02d}.png" for i in range(24)]


@pytest.mark.slow
@pytest.mark.parametrize("run, model", [("small", "resnet18"), ("short_run", "crepe")])
def test_shards_write_what_one_run_writes(run, model, request, tmp_path):
    """Images, and short audio files: two shards write what one run writes."""
    d, clean, args = request.getfixturevalue(run)
    out = tmp_path / "sharded"
    for shard in ("0/2", "1/2"):
        res = run_cli(*args, "--output_base", str(out), "--shard", shard)
        assert res.returncode == 0, res.stderr
    assert npys(out / model) == npys(clean / model)


# -- short audio across files (windows, clips, frames) ------------------------------------------------------
# A short file (fewer items than one network call) shares calls with its neighbours; a longer one
# runs alone. CREPE with its real (tiny) weights and tones of known pitch; OpenL3 and CLMR on random
# weights (the packing mechanics, not the numbers).
PACKERS = [("openl3", {"weights_path": "random", "input_repr": "mel128", "hop_size": 0.25}),
           ("crepe", {"capacity": "tiny"}),
           ("clmr", {"weights_path": "random"})]


def short_signals(ex, seconds: list[float]) -> list[np.ndarray]:
    """Tones (110 Hz * 1.25^i) with a little noise, at the plugin's rate, as the plugin takes them."""
    rng = np.random.default_rng(7)
    sr = ex.sample_rate
    noise = [0.01 * rng.standard_normal(int(round(s * sr))) for s in seconds]
    return [ex.checked_audio(tone(110 * 1.25 ** i, s, sr) + z, sr)
            for i, (s, z) in enumerate(zip(seconds, noise))]


def same_features(a: Features, b: Features) -> bool:
    return (np.asarray(a.data).tobytes() == np.asarray(b.data).tobytes()
            and np.array_equal(a.timestamps, b.timestamps) and a.extras.keys() == b.extras.keys()
            and all(a.extras[k].tobytes() == b.extras[k].tobytes() for k in a.extras))


@pytest.mark.slow
@pytest.mark.parametrize("name, params", PACKERS, ids=[p[0] for p in PACKERS])
def test_a_short_files_features_do_not_depend_on_its_companions(name, params, one_torch_thread):
    """prepare_audio -> forward_items (the items of several files, calls of any size) -> finish_audio
    gives each file the bytes `extract` gives it alone. (Where a CPU's kernels made this false, a
    resumed run's partial batch would write other bytes: this test says so.) openl3 in calls of
    `batch_size` (on the CPU it makes calls of 1: the same bytes, so that choice changes no number);
    crepe in its fixed blocks of 32 frames; clmr in its CPU calls of one clip (its kernels are not
    invariant to the batch shape there: it packs on CUDA only)."""
    alone = registry.create(name, **params)
    signals = short_signals(alone, [0.3, 1.2, 0.15, 2.9, 0.7] if name != "clmr" else [1.0, 5.5, 2.7, 8.1])
    expected = [alone.extract(s, alone.sample_rate) for s in signals]
    for size in (2, 5, 16):
        ex = registry.create(name, batch_size=size, **params)
        if name == "openl3":  # calls of `size` on the CPU too (its own are of 1): the shapes under test
            ex.cpu_call_size = None
        prepared = [ex.prepare_audio(s) for s in signals]
        counts = [len(items) for items, _ in prepared]
        assert counts == [ex.audio_items(s.shape[0]) for s in signals]
        before = ex.forward_passes
        outs = ex.forward_items(np.concatenate([items for items, _ in prepared]))
        assert ex.forward_passes - before == math.ceil(sum(counts) / ex.call_size())  # crepe: fixed blocks
        bounds = np.cumsum([0, *counts])
        for (_, state), lo, hi, want in zip(prepared, bounds[:-1], bounds[1:], expected):
            assert same_features(ex.finish_audio(outs[lo:hi], state), want), f"{name}: calls of {size}"


def test_short_means_fewer_items_than_one_call():
    crepe = registry.create("crepe", capacity="tiny")  # 10 ms frames at 16 kHz, calls of 32 on the CPU
    assert crepe.call_size() == 32
    assert crepe.audio_items(160 * 30) == 31 and crepe.packs_audio(160 * 30)
    assert crepe.audio_items(160 * 31) == 32 and not crepe.packs_audio(160 * 31)
    ol3 = registry.create("openl3", weights_path="random", hop_size=0.5, batch_size=4)
    assert [ol3.audio_items(n) for n in (1, 24000, 24001, 72000, 72001)] == [1, 1, 2, 3, 4]
    assert ol3.call_size() == 1 and not ol3.packs_audio(1)  # one window per call on the CPU
    ol3.cpu_call_size = None  # calls of batch_size, as on CUDA
    assert ol3.packs_audio(72000) and not ol3.packs_audio(72001) and ol3.audio_items(0) is None
    assert not registry.create("clmr", weights_path="random").packs_audio(100)  # 1 clip per call on the CPU
    assert not registry.create("mert", weights_path="random").batches_audio  # whole-signal transformer


class Loudness(Extractor):
    """RMS per 0.1 s window, packing short files; its network call fails when any window in it is
    silent (as a network can fail on one input): the driver must try the files one by one."""

    name = "loudness_test"
    sample_rate = 16000
    default_batch_size = 8

    def _load(self) -> Any:
        return None

    def output_spec(self, kind: str = "audio") -> OutputSpec:
        return OutputSpec(axes=("time", "dim"), hop_seconds=0.1)

    def audio_items(self, n_samples: int) -> int:
        return max(1, -(-n_samples // 1600))

    def prepare_audio(self, audio: np.ndarray) -> tuple[np.ndarray, int]:
        k = self.audio_items(audio.shape[0])
        x = np.zeros(k * 1600, np.float32)
        x[:audio.shape[0]] = audio
        return x.reshape(k, 1600), k

    def forward_items(self, items: np.ndarray) -> np.ndarray:
        self.forward_passes += 1
        self.items_forwarded += len(items)
        if (np.abs(items).max(axis=1) == 0).any():
            raise RuntimeError("silent window in the call")
        return np.sqrt((items.astype(np.float64) ** 2).mean(axis=1, keepdims=True)).astype(np.float32)

    def finish_audio(self, outputs: np.ndarray, state: int) -> Features:
        return Features(outputs, 0.1 * np.arange(state))

    def _extract(self, audio: np.ndarray) -> Features:
        items, k = self.prepare_audio(audio)
        return self.finish_audio(self.forward_items(items), k)


def test_a_failing_packed_call_is_tried_again_file_by_file(tmp_path):
    paths = [write_wav(tmp_path / f"t{i}.wav", tone(300 + 50 * i, 0.3, 16000) * (i != 2), 16000)
             for i in range(5)]
    job = pipeline.ModelJob("loudness", Loudness())
    members = []
    for p in paths:
        item = pipeline.Item(Path(p.name), "audio", {"loudness": Path(p.stem)}, [job])
        m = pipeline.decode(tmp_path, item, [job])
        packing = pipeline.packing_jobs(item, [job], m)
        assert packing == [job]  # 3 windows, calls of 8
        members.append(pipeline.prepare_audio(item, [job], m, packing))
        assert m.decoded_audio and m.duration_seconds == 0.3  # the samples are freed, the facts kept
        with pytest.raises(audio_io.MediaError, match="freed"):
            m.audio(16000, "soxr_hq")
    pipeline.extract_batch(members)
    results = [mem.ordered()[0] for mem in members]
    assert [r.error is None for r in results] == [True, True, False, True, True]
    assert "silent window" in str(results[2].error)
    for r in results[:2] + results[3:]:  # a sine's RMS: amplitude / sqrt(2)
        assert r.features.data.shape == (3, 1)
        np.testing.assert_allclose(r.features.data[:2, 0], 0.5 / np.sqrt(2), rtol=2e-2)
        np.testing.assert_allclose(r.features.timestamps, [0.0, 0.1, 0.2])
    assert sum(r.forward_passes for r in results) == 1 + 5  # the failed call, then one per file
    assert results[0].forward_passes == 2  # the batch's call is counted on its first file


def write_tones(folder: Path, seconds: list[float], sr: int = 22050) -> list[Path]:
    rng = np.random.default_rng(3)
    return [write_wav(folder / f"t{i:02d}.wav", tone(110 * 1.25 ** (i % 12), s, sr)
                      + 0.01 * rng.standard_normal(int(round(s * sr))).astype(np.float32), sr)
            for i, s in enumerate(seconds)]


def expected_passes(counts: dict[str, list[int | None]], calls: dict[str, int]) -> dict[str, int]:
    """Forward passes per model over one group's files (items per file and model) by the driver's
    rule: a file short for some model waits in the batch (for the others it runs at once, alone:
    `ceil`, its calls padded or not); the batch runs (every model's waiting items, in calls) once a
    model's waiting items fill PACK_CALLS calls, and before a file short for no model, which runs
    alone. None: a file that failed to decode (short for no model, no pass)."""
    passes = dict.fromkeys(counts, 0)
    waiting = dict.fromkeys(counts, 0)

    def flush() -> None:
        for m in counts:
            passes[m] += math.ceil(waiting[m] / calls[m])
            waiting[m] = 0

    for row in zip(*counts.values()):
        files = dict(zip(counts, row))
        short = {m for m, n in files.items() if n is not None and n < calls[m]}
        if not short:
            flush()
        for m, n in files.items():
            if m in short:
                waiting[m] += n
            elif n is not None:
                passes[m] += math.ceil(n / calls[m])
        if any(waiting[m] >= pipeline.PACK_CALLS * calls[m] for m in short):
            flush()
    flush()
    return passes


# seconds: on the CPU crepe packs files under 0.31 s (32 frames per call); openl3 makes calls of
# one window there, so it packs nothing and runs every file alone beside crepe's batches
SHORT_S = [0.1, 0.12, 0.08, 0.15, 1.3, 0.2, 6.0, 0.1, 2.2, 0.09, 0.11, 1.1, 0.12, 0.5]


@pytest.fixture(scope="module")
def tones(tmp_path_factory) -> dict[str, Any]:
    """14 tones and a corrupt file sorted among them; crepe (tiny) and openl3 (random weights)."""
    d = tmp_path_factory.mktemp("tones")
    paths = write_tones(d / "in", SHORT_S)
    (d / "in" / "t03b.wav").write_bytes(b"RIFF\x24\x00\x00\x00WAVEfmt " + b"\x00" * 30)
    cfg = d / "models.yaml"
    cfg.write_text("models:\n  crepe:\n    capacity: tiny\n"
                   "  openl3:\n    weights: random\n    input_repr: mel128\n    hop_size: 0.25\n")
    out = d / "out"
    res = run_cli("--audio_dir", str(d / "in"), "--output_base", str(out), "--config", str(cfg),
                  "--models", "crepe", "openl3", "--torch_threads", "1", "--decode_workers", "0")
    assert res.returncode == 1, res.stderr  # the corrupt file: reported, the rest written
    return {"dir": d, "paths": paths, "out": out, "log": res.stdout + res.stderr}


@pytest.mark.slow
def test_short_tones_share_forward_passes_and_keep_their_own_numbers(tones, one_torch_thread):
    out, paths = tones["out"], tones["paths"]
    models = report(out)["models"]
    crepe = registry.create("crepe", capacity="tiny")
    ol3 = registry.create("openl3", weights_path="random", input_repr="mel128", hop_size=0.25)
    plugins = {"crepe": crepe, "openl3": ol3}
    counts = {name: [ex.audio_items(len(audio_io.load(p).at(ex.sample_rate, ex.resampler,
                                                             ex.resample_precision))) for p in paths]
              for name, ex in plugins.items()}
    calls = {name: ex.call_size() for name, ex in plugins.items()}
    # the listing: the corrupt t03b.wav after t03 (it fails to decode: short for no model, 0 items)
    listing = {name: [*n[:4], None, *n[4:]] for name, n in counts.items()}
    expected = expected_passes(listing, calls)
    for name, ex in plugins.items():
        r, n, call = models[name], counts[name], calls[name]
        assert r["ok"] == len(paths) and r["failed"] == 1
        assert r["items_forwarded"] == sum(n)
        alone = sum(math.ceil(k / call) for k in n)  # each file on its own calls
        assert r["forward_passes"] == expected[name]
        if name == "crepe":  # files share passes
            assert expected[name] < alone and r["items_per_forward"] > max(k for k in n if k < call)
        for p in paths:  # the bytes the file gets alone, through the same plugin
            alone = pipeline.extract_file(ex, p)
            assert np.load(out / name / f"{p.stem}.npy").tobytes() == np.asarray(alone.data).tobytes(), p.name
    for i, p in enumerate(paths):  # and what they say is true: each tone's pitch
        f0, conf = np.load(out / "crepe" / f"{p.stem}.npy").T
        sure = conf > 0.5
        assert sure.sum() >= len(f0) / 3, p.name
        cents = 1200 * np.abs(np.log2(np.median(f0[sure]) / (110 * 1.25 ** (i % 12))))
        assert cents < 25, (p.name, cents)
    failures = {(f["file"], f["model"]) for f in report(out)["failures"]}
    assert failures == {("t03b.wav", "crepe"), ("t03b.wav", "openl3")}


@pytest.fixture(scope="module")
def short_run(tmp_path_factory) -> tuple[Path, Path, list[str]]:
    """24 tones of 0.2 s (21 CREPE frames each): a batch runs once its frames fill 8 calls of 32,
    i.e. files 0-12 together, then 13-23."""
    d = tmp_path_factory.mktemp("short")
    write_tones(d / "in", [0.2] * 24, sr=16000)
    cfg = d / "models.yaml"
    cfg.write_text("models:\n  crepe:\n    capacity: tiny\n")
    args = ["--audio_dir", str(d / "in"), "--config", str(cfg), "--models", "crepe", "--torch_threads", "1"]
    clean = d / "clean"
    res = run_cli(*args, "--output_base", str(clean))
    assert res.returncode == 0, res.stderr
    passes = report(clean)["models"]["crepe"]["forward_passes"]
    assert passes == expected_passes({"crepe": [21] * 24}, {"crepe": 32})["crepe"] == 9 + 8
    return d, clean, args


@pytest.mark.slow
def test_a_sigkill_inside_an_audio_batch_resumes_to_identical_bytes(short_run, tmp_path):
    """As for images, killed inside a batch (files 1-12 or 14-23 recorded): the rerun writes the
    bytes of the uninterrupted run."""
    d, clean, args = short_run
    out, done = killed_inside_a_batch(args, tmp_path, range(10, 40, 3), lambda n: 0 < n < 24 and n != 13)
    res = run_cli(*args, "--output_base", str(out))
    assert res.returncode == 0, res.stderr
    assert report(out)["models"]["crepe"]["ok"] + len(done) >= 24
    assert npys(out / "crepe") == npys(clean / "crepe")
    assert sorted({r["source"] for r in manifest(out)}) == [f"t{i:02d}.wav" for i in range(24)]


# -- videos across files: the last items of each video ---------------------------------------------------
VIDEO_FRAMES = [18, 26, 38, 50, 28]  # at 15 fps

# model -> (params, its items per video of T frames at 15 fps)
VIDEO_MODELS = {
    # clips of 16 frames, hop 8: 1, 2, 3, 5, 2 clips
    "r3d18": ({"hop_frames": 8}, lambda t: r3d18.num_clips(t, 8)),
    # the nearest frame to every 1/5 s (_frames' rule): ceil(T * 5 / 15) frames, 6, 9, 13, 17, 10
    "resnet18": ({"frame_rate": 5.0}, lambda t: math.ceil(t * 5 / 15)),
    # the first frame of each 1/2.5 s: ceil(T / 6) frames, 3, 5, 7, 9, 5 (its network is the slow one)
    "openl3_image": ({"frame_rate": 2.5, "input_repr": "mel128"}, lambda t: math.ceil(t / 6)),
}


def video_passes(items: list[int], call: int) -> int:
    """A model's calls over videos in groups of `call` consecutive files: each video's full calls
    alone, as it decodes; the items left at its end share calls with its group's."""
    passes = 0
    for g in range(0, len(items), call):
        group = items[g:g + call]
        passes += sum(n // call for n in group) + math.ceil(sum(n % call for n in group) / call)
    return passes


@pytest.mark.slow
@pytest.mark.parametrize("name", list(VIDEO_MODELS))
def test_videos_last_items_share_forward_passes(name, tmp_path, monkeypatch):
    """Calls of 4 (on the CPU r3d18 and openl3_image make calls of 1, which packing cannot improve:
    set here as on CUDA; resnet18 makes calls of batch_size everywhere): the clips or frames each
    video leaves at its end go into shared calls with the next videos' (groups of 4 files), the
    report counts them, and each video keeps its own embeddings (its bytes; R3D-18's to float32
    rounding: oneDNN's 3-D convolutions round by batch shape, 1e-7) against each video on its own
    calls."""
    from tests.media_synth import moving_shapes, write_video

    for i, n in enumerate(VIDEO_FRAMES):
        write_video(tmp_path / "in" / f"v{i}.mp4", moving_shapes(i, n, 96, 64), fps=15)
    plugin = registry.get(name)
    monkeypatch.setattr(plugin, "cpu_call_size", None)
    params, count = VIDEO_MODELS[name]
    models = {name: {"weights": "random", "batch_size": 4, **params}}
    items = [count(n) for n in VIDEO_FRAMES]
    assert sum(n % 4 for n in items) > 4  # leftovers that fill shared calls
    runs = {}
    for what in ("packed", "per_file"):
        if what == "per_file":  # the driver then sees a plugin that does not pack
            monkeypatch.setattr(plugin, "forward_items", Extractor.forward_items)
        stats = embedkit_run(tmp_path / "in", tmp_path / what, models)
        runs[what] = stats.models[name]
        assert runs[what].ok == len(VIDEO_FRAMES) and not stats.failures
    assert runs["packed"].forward_passes == video_passes(items, 4) < runs["per_file"].forward_passes
    assert runs["per_file"].forward_passes == sum(math.ceil(n / 4) for n in items)
    assert runs["packed"].items_forwarded == runs["per_file"].items_forwarded == sum(items)
    for i, n in enumerate(items):
        a, b = (np.load(tmp_path / what / name / f"v{i}.npy") for what in ("packed", "per_file"))
        assert a.shape == b.shape and a.shape[0] == n
        assert np.abs(a - b).max() <= 1e-5 * np.abs(b).max(), i
        if name != "r3d18":  # 2-D convolutions: the bytes (as for images, above)
            assert a.tobytes() == b.tobytes(), i
            ta, tb = (np.load(tmp_path / what / f"{name}.timestamps" / f"v{i}.npy")
                      for what in ("packed", "per_file"))
            np.testing.assert_array_equal(ta, tb)


def embedkit_run(folder: Path, out: Path, models: dict):
    import embedkit

    return embedkit.run(folder, out, models=models, log=lambda msg: None, torch_threads=1)


@pytest.fixture(scope="module")
def video_run(tmp_path_factory) -> tuple[Path, Path, list[str]]:
    """8 short videos and an uninterrupted resnet18 run over their frames at 5/s in calls of 4
    (resnet18 packs videos on the CPU too): two groups of 4 videos, each with shared last calls."""
    from tests.media_synth import moving_shapes, write_video

    d = tmp_path_factory.mktemp("videos")
    for i, n in enumerate(VIDEO_FRAMES + VIDEO_FRAMES[:3]):
        write_video(d / "in" / f"v{i}.mp4", moving_shapes(i, n, 96, 64), fps=15)
    cfg = d / "models.yaml"
    cfg.write_text("models:\n  resnet18:\n    weights: random\n    frame_rate: 5.0\n    batch_size: 4\n")
    args = ["--audio_dir", str(d / "in"), "--config", str(cfg), "--models", "resnet18",
            "--torch_threads", "1"]
    clean = d / "clean"
    res = run_cli(*args, "--output_base", str(clean))
    assert res.returncode == 0, res.stderr
    frames = [math.ceil(n / 3) for n in VIDEO_FRAMES + VIDEO_FRAMES[:3]]
    assert report(clean)["models"]["resnet18"]["forward_passes"] == video_passes(frames, 4)
    return d, clean, args


@pytest.mark.slow
def test_a_sigkill_inside_a_video_batch_resumes_to_identical_bytes(video_run, tmp_path):
    """Killed while a group of 4 videos is being stored: the rerun writes the bytes (embeddings and
    timestamps) of the uninterrupted run."""
    d, clean, args = video_run
    out, done = killed_inside_a_batch(args, tmp_path, range(8, 40, 3), lambda n: 0 < n < 8 and n % 4)
    res = run_cli(*args, "--output_base", str(out))
    assert res.returncode == 0, res.stderr
    assert report(out)["models"]["resnet18"]["ok"] + len(done) >= 8
    for folder in ("resnet18", "resnet18.timestamps"):
        assert npys(out / folder) == npys(clean / folder)
    assert sorted({r["source"] for r in manifest(out)}) == [f"v{i}.mp4" for i in range(8)]
