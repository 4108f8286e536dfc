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
from typing import Any

import numpy as np
import pytest

from embedkit import media, pipeline, registry
from embedkit.extractors.base import Extractor, Features, OutputSpec
from tests.conftest import ROOT, run_cli
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
    """Groups of 32 consecutive files of the listing (the largest batch_size); openl3_image runs
    each group in calls of its own size (its batch_size, 16; on the CPU its cpu_call_size, 1). The
    50 files: group 0 = the 2 bad ones + im00..im29, group 1 = im30..im47."""
    models = report(runs["batched"])["models"]
    r18, ol3 = models["resnet18"], models["openl3_image"]
    assert r18["ok"] == N + 1 and ol3["ok"] == N  # bad_small is fine for resnet18
    assert r18["forward_passes"] == 2 and r18["items_forwarded"] == N + 1
    call = registry.create("openl3_image", weights_path="random").call_size()
    passes = math.ceil(30 / call) + math.ceil(18 / call)  # 30 + 18 in calls of 1
    assert ol3["forward_passes"] == passes and ol3["items_forwarded"] == N
    assert r18["items_per_forward"] == round((N + 1) / 2, 2)
    said = (f"forward passes: resnet18 2 (24.5 items each), openl3_image {passes} "
            f"({round(N / passes, 2):g} items each)")
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
    pipeline.extract_image_batch(members)
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
        Path("a.png"): 0, Path("c.jpg"): 0, Path("d.png"): 0, Path("e.png"): 1, Path("f.png"): 1,
        Path("h.png"): 1}
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


@pytest.mark.slow
def test_a_sigkill_inside_a_batch_resumes_to_identical_bytes(small, tmp_path):
    """strace kills the run at its n-th open of manifest.jsonl: tried until the kill lands inside a
    batch's stores (a number of outputs on disk that is no multiple of 8). The rerun computes the
    rest of that batch (and the array without its line, if any) and the folder holds the bytes of
    the uninterrupted run."""
    if shutil.which("strace") is None:
        pytest.skip("strace is not installed (apt-get install strace)")
    d, clean, args = small
    for when in range(14, 40, 3):  # reads (claims) and appends interleave: try until one lands
        out = tmp_path / f"out{when}"
        out.mkdir()
        subprocess.run(["strace", "-f", "-qq", "-o", "/dev/null", "-P", str(out / "manifest.jsonl"),
                        "-e", f"inject=openat:signal=SIGKILL:when={when}", sys.executable,
                        str(ROOT / "run_extraction.py"), "--no_progress", *args, "--prefetch", "1",
                        "--output_base", str(out)], cwd=ROOT, capture_output=True, timeout=300)
        written = len(npys(out / "resnet18")) if (out / "resnet18").is_dir() else 0
        if 0 < written < 24 and written % 8:
            break
    else:
        pytest.fail("no kill landed inside a batch")
    recorded = {r.get("source") for r in manifest(out)}
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
def test_shards_write_what_one_run_writes(small, tmp_path):
    d, clean, args = small
    out = tmp_path / "sharded"
    for shard in ("0/2", "1/2"):
        res = run_cli(*args, "--output_base", str(out), "--shard", shard)
        assert res.returncode == 0, res.stderr
    assert npys(out / "resnet18") == npys(clean / "resnet18")
