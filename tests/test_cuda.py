"""The CUDA paths: every torch plugin on a CUDA device gives what it gives on the CPU, the torch
resampler on the device equals resampy, a run on CUDA writes what a CPU run writes (resampling
on the GPU) and packs images, short audio files and videos' last items across files, and a CUDA
out-of-memory halves the batch instead of failing the file.

Skipped without CUDA (this project's CI and development machines have none). On a lent GPU
machine `benchmarks/gpu_check.sh` runs this file, the parity tests and `benchmarks/gpu.py`.
float32 on the device is compared with TF32 off (torch's default lets cuDNN convolutions round
their operands to TF32, 10 mantissa bits): what differs then is only the summation order.
"""

from __future__ import annotations

import json

import numpy as np
import pytest

import embedkit
from embedkit import pipeline, polyphase, registry
from embedkit.extractors.base import TorchExtractor
from tests import test_plugin_contract as contract
from tests.conftest import tone, write_wav
from tests.media_synth import scene
from tests.test_plugin_contract import kinds, run
from tests.test_polyphase import U32, bound, material

torch = pytest.importorskip("torch")
pytestmark = pytest.mark.skipif(not torch.cuda.is_available(),
                                reason="no CUDA device (benchmarks/gpu_check.sh runs these on a GPU machine)")

isolated, make, model_cache, tiny_mert, video = (contract.isolated, contract.make, contract.model_cache,
                                                 contract.tiny_mert, contract.video)
TORCH_PLUGINS = sorted(n for n in registry.available() if issubclass(registry.get(n), TorchExtractor))
# float32, different summation order: max |cuda - cpu| / max |cpu| (measured on the CPU between
# thread counts: ~1e-6; deep random networks amplify it)
F32_REL = 1e-4
AUTOCAST_COSINE = 0.999  # float16 autocast against float32, per output row (as bfloat16's bound)


@pytest.fixture
def exact_float32():
    saved = torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32
    torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = False
    yield
    torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = saved


def _arrays(name: str, feats) -> np.ndarray:
    x = feats.extras["activation"] if name == "crepe" else feats.data
    return np.asarray(x, np.float64).reshape(-1, x.shape[-1])


def _cosines(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    return np.sum(x * y, 1) / np.maximum(np.linalg.norm(x, axis=1) * np.linalg.norm(y, axis=1), 1e-30)


@pytest.mark.parametrize("name", TORCH_PLUGINS)
def test_float32_on_cuda_equals_the_cpu(name, make, video, exact_float32):
    params = {"precision": "float32", **({"activations": True} if name == "crepe" else {})}
    cpu, gpu = make(name, device="cpu", params=params), make(name, device="cuda", params=params)
    for kind in kinds(name):
        a, b = run(cpu, kind, video), run(gpu, kind, video)
        assert b.data.dtype == a.data.dtype and b.data.shape == a.data.shape, kind
        x, y = _arrays(name, a), _arrays(name, b)
        rel = np.abs(x - y).max() / np.abs(x).max()
        assert rel <= F32_REL, (kind, rel)
        if a.timestamps is not None:
            np.testing.assert_array_equal(a.timestamps, b.timestamps)
    assert gpu.provenance()["device"].startswith("cuda") and gpu.provenance()["autocast"] == "none (float32)"


@pytest.mark.parametrize("name", TORCH_PLUGINS)
def test_the_cuda_default_autocast_stays_close_to_float32(name, make, video):
    """precision auto on CUDA is float16 autocast: finite and, per row, cosine >= 0.999. (On these
    seeded random networks: a non-finite row here may be float16's range on random activations,
    not a fault of the plugin; say which in the report.)"""
    extra = {"activations": True} if name == "crepe" else {}
    ref = make(name, device="cpu", params={"precision": "float32", **extra})
    gpu = make(name, device="cuda", params=extra)
    assert gpu.provenance()["autocast"] == "float16"
    for kind in kinds(name):
        x, y = _arrays(name, run(ref, kind, video)), _arrays(name, run(gpu, kind, video))
        assert np.isfinite(y).all(), kind
        assert _cosines(x, y).min() >= AUTOCAST_COSINE, (kind, _cosines(x, y).min())


@pytest.mark.parametrize("sr_in, sr_out", [(44100, 48000), (44100, 16000), (44100, 24000), (22050, 16000)])
def test_resample_torch_on_cuda_equals_resampy(sr_in, sr_out):
    resampy = pytest.importorskip("resampy")
    x = material(sr_in // 2 + 7, sr_in, 5)
    want = resampy.resample(x, sr_in, sr_out)
    got = polyphase.resample_torch(torch.from_numpy(x).cuda(), sr_in, sr_out, block_out=5000)  # blocks
    assert got.is_cuda and got.dtype == torch.float64 and tuple(got.shape) == want.shape
    assert np.abs(got.cpu().numpy() - want).max() <= 1e-12 * np.abs(want).max()
    x32 = x.astype(np.float32)
    got32 = polyphase.resample_torch(torch.from_numpy(x32).cuda(), sr_in, sr_out).cpu().numpy()
    err = np.abs(got32.astype(np.float64) - polyphase.resampy_loop(x32, sr_in, sr_out))
    assert (err <= bound(x32, sr_in, sr_out, "kaiser_best", U32)).all()


def test_a_run_on_cuda_writes_what_a_cpu_run_writes(tmp_path, exact_float32):
    """The driver on CUDA: the same files, shapes and (to float32 order) values; provenance
    says cuda, features.json that resampling ran there; 12 images packed into one forward pass,
    three short audio files into one."""
    for i, f0 in enumerate((220.0, 330.0, 440.0)):
        write_wav(tmp_path / "in" / f"t{i}.wav", tone(f0, 2.5, 44100), 44100)
    from PIL import Image

    for i in range(12):
        Image.fromarray(scene(i, 160, 120)).save(tmp_path / "in" / f"img{i:02d}.png")
    # (CREPE's f0 is an argmax: its CUDA-vs-CPU check is on the activations, above)
    models = {"openl3": {"weights": "random", "hop_size": 0.5, "precision": "float32"},
              "resnet18": {"weights": "random", "precision": "float32"}}
    out = {}
    for dev in ("cpu", "cuda"):
        stats = embedkit.run(tmp_path / "in", tmp_path / dev, models=models, device=dev, log=lambda m: None)
        assert stats.failures == []
        out[dev] = json.loads((tmp_path / dev / "run_report.json").read_text())
    for m in models:
        meta = json.loads((tmp_path / "cuda" / m / "features.json").read_text())
        assert meta["provenance"]["device"].startswith("cuda")
        cpu_files = sorted(p.relative_to(tmp_path / "cpu") for p in (tmp_path / "cpu" / m).rglob("*.npy"))
        cuda_files = sorted(p.relative_to(tmp_path / "cuda") for p in (tmp_path / "cuda" / m).rglob("*.npy"))
        assert cpu_files == cuda_files and cpu_files
        for rel in cpu_files:
            a, b = np.load(tmp_path / "cpu" / rel), np.load(tmp_path / "cuda" / rel)
            assert a.shape == b.shape and a.dtype == b.dtype, rel
            if a.dtype.kind == "f" and a.size:
                assert np.abs(a - b).max() <= F32_REL * max(np.abs(a).max(), 1e-30), rel
    # openl3's 44.1 -> 48 kHz (resampy's kaiser_best, float64) ran on the GPU, in the model stage
    where = {dev: json.loads((tmp_path / dev / "openl3" / "features.json").read_text())["resampled_in"]
             for dev in ("cpu", "cuda")}
    assert where["cuda"].startswith("torch:cuda") and where["cpu"] == "decoder", where
    resnet = out["cuda"]["models"]["resnet18"]
    assert resnet["forward_passes"] < 12 and resnet["items_per_forward"] > 1, resnet
    # three short files of 5 windows (2.5 s at hop 0.5) share one call of 16 on CUDA (on the CPU
    # openl3 makes calls of one window)
    ol3 = out["cuda"]["models"]["openl3"]
    assert ol3["forward_passes"] == 1 and ol3["items_forwarded"] == 15, ol3
    assert out["cpu"]["models"]["openl3"]["forward_passes"] == 15


def test_videos_last_items_share_cuda_calls(tmp_path):
    """R3D-18 and OpenL3's image network on CUDA in calls of 4, three short videos (18, 26, 38
    frames at 15 fps): R3D-18's 1, 2 and 3 clips (hop 8) are all left at the videos' ends and share
    2 calls instead of 3; openl3_image's 6, 9 and 13 frames (5/s) leave 2, 1 and 1: 7 calls, not 9."""
    from tests.media_synth import moving_shapes, write_video

    for i, n in enumerate((18, 26, 38)):
        write_video(tmp_path / "in" / f"v{i}.mp4", moving_shapes(i, n, 96, 64), fps=15)
    models = {"r3d18": {"weights": "random", "hop_frames": 8, "batch_size": 4, "precision": "float32"},
              "openl3_image": {"weights": "random", "frame_rate": 5.0, "batch_size": 4,
                               "precision": "float32"}}
    stats = embedkit.run(tmp_path / "in", tmp_path / "out", models=models, device="cuda", log=lambda m: None)
    assert not stats.failures
    r, o = stats.models["r3d18"], stats.models["openl3_image"]
    assert r.ok == o.ok == 3
    assert r.forward_passes == 2 and r.items_forwarded == 6
    assert o.forward_passes == 7 and o.items_forwarded == 28


def test_resampling_out_of_cuda_memory_falls_back_to_the_cpu():
    """A real CUDA OOM while resampling on the device (the process capped to a few MB): the NumPy
    path gives the samples, the file does not fail."""
    from embedkit import audio_io

    x = material(44100 * 60, 44100, 9).astype(np.float32)  # 60 s: ~30 MB of float64 on the device
    want = audio_io.resample(x, 44100, 48000, "kaiser_best", "float64")
    total = torch.cuda.get_device_properties(0).total_memory
    torch.cuda.empty_cache()
    torch.cuda.set_per_process_memory_fraction(min(1.0, 8e6 / total))
    try:
        got = audio_io.resample(x, 44100, 48000, "kaiser_best", "float64", device="cuda")
    finally:
        torch.cuda.set_per_process_memory_fraction(1.0)
        torch.cuda.empty_cache()
    np.testing.assert_array_equal(got, want)


def test_cuda_out_of_memory_halves_the_batch(make, exact_float32):
    """A real CUDA OOM (this process capped to a small share of the device): the extractor is
    retried at half the batch size until it fits, and the output equals a small-batch run."""
    ex = make("openl3", device="cuda", params={"hop_size": 0.05, "precision": "float32"})
    ex.load()
    audio = material(48000 * 6, 48000, 3).astype(np.float32)
    total = torch.cuda.get_device_properties(0).total_memory
    ex.batch_size = 4096  # ~120 windows in one call: several GB of activations
    logs = []
    torch.cuda.empty_cache()
    torch.cuda.set_per_process_memory_fraction(min(1.0, 1.5e9 / total))
    try:
        got = pipeline._extract_with_backoff(pipeline.ModelJob("openl3", ex), audio, logs.append)
    finally:
        torch.cuda.set_per_process_memory_fraction(1.0)
        torch.cuda.empty_cache()
    assert logs and all("CUDA out of memory; retrying with batch_size=" in m for m in logs), logs
    assert ex.batch_size < 4096
    ex.batch_size = 8
    ref = ex.extract(audio, 48000)
    assert got.data.shape == ref.data.shape
    assert np.abs(got.data - ref.data).max() <= F32_REL * np.abs(ref.data).max()
