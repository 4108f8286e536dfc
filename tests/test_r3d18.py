"""R3D-18 plugin tests.

Truth used here, independent of extractors/r3d18.py:
- ../shared/reference/torchvision_random: what torchvision 0.28 itself computed for a 25 fps
  video (decoded frames, the 15 fps frame indices, the clip tensors after
  `R3D_18_Weights.KINETICS400_V1.transforms()`, clip embeddings) with pseudo-random weights
  that the folder's make_weights.py regenerates (run from there at test time); skip when absent;
- torch's own `F.interpolate` (bilinear, no antialias) for frame sizes the reference lacks;
- torchvision's published facts: 33,371,472 parameters, `r3d_18-b3b3357e.pth`;
- videos written here whose frame j is a flat grey level, so every clip's frames can be read back.
"""

from __future__ import annotations

import warnings
from dataclasses import replace

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from embedkit import media, registry, weights
from embedkit.audio_io import MediaError
from embedkit.extractors import r3d18
from embedkit.extractors._frames import FrameGrid
from embedkit.extractors.base import ConfigError, WeightsError
from tests.conftest import reference
from tests.media_synth import moving_shapes, numbered_frames, write_video
from tests.test_resnet18 import assert_torchvision_keys_and_size, isolated, reference_state  # noqa: F401

VIDEO = "synth_25fps_320x240"


@pytest.fixture(scope="module")
def ref_weights(tmp_path_factory):
    path = tmp_path_factory.mktemp("r3d") / "r3d18_seed2026.pth"
    torch.save(reference_state("r3d_18"), path)
    return path


def make(weights_path="random", **params) -> r3d18.R3D18:
    path = None if weights_path is None else str(weights_path)
    return registry.create("r3d18", weights_path=path, **params)


def run_video(ex, path, chunk_frames=16):
    info, chunks = media.iter_frames(path, chunk_frames=chunk_frames)
    consumer = ex.frame_consumer(info)
    for chunk in chunks:
        consumer.add(chunk)
    return consumer.finish()


# ------------------------------------------------------------------ architecture and parity
def test_keys_shapes_and_size_match_torchvision():
    assert_torchvision_keys_and_size(r3d18.R3D18Net(), "r3d_18", 33_371_472)


@pytest.mark.parity
def test_frames_clips_and_inputs_match_torchvision():
    ref = np.load(reference("torchvision_random", f"video_{VIDEO}.npz"))
    info, chunks = media.iter_frames(reference("torchvision_random", "media", f"{VIDEO}.mp4"))
    grid, picks, frames, pts = FrameGrid(r3d18.CLIP_FPS, info.fps), [], [], []
    for chunk in chunks:
        picks += grid.add(chunk)
        frames.append(chunk.rgb())
        pts.append(chunk.pts)
    picks += grid.finish()
    np.testing.assert_array_equal(np.concatenate(frames), ref["frames_rgb_uint8"])
    np.testing.assert_allclose(np.concatenate(pts), ref["frame_pts_seconds"], atol=1e-9)
    indices = np.array([p.index for p in picks])
    np.testing.assert_array_equal(indices, ref["resampled_indices_all"])
    n = r3d18.num_clips(len(indices), 16)
    np.testing.assert_array_equal(indices[:n * 16].reshape(n, 16), ref["frame_indices"])
    crops = r3d18.crop_frames(list(np.concatenate(frames)[ref["frame_indices"].reshape(-1)]))
    x = r3d18.normalize(crops.reshape(n, 16, 112, 112, 3))
    assert x.shape == ref["model_input"].shape == (2, 3, 16, 112, 112)
    assert np.abs(x - ref["model_input"]).max() <= 1e-5  # measured 0


@pytest.mark.parity
def test_clip_embeddings_match_torchvision(ref_weights):
    ref = np.load(reference("torchvision_random", f"video_{VIDEO}.npz"))
    ex = make(ref_weights)
    out = run_video(ex, reference("torchvision_random", "media", f"{VIDEO}.mp4"), chunk_frames=7)
    assert out.data.shape == (2, 512) and out.data.dtype == np.float32
    rel = np.linalg.norm(out.data - ref["embedding"], axis=1) / np.linalg.norm(ref["embedding"], axis=1)
    assert rel.max() <= 1e-5 and np.abs(out.data - ref["embedding"]).max() <= 1e-4
    np.testing.assert_allclose(out.timestamps, [8 / 15, 24 / 15])
    with torch.inference_mode():
        logits = ex.load().net.fc(torch.from_numpy(out.data)).numpy()
    assert np.abs(logits - ref["logits_fc"]).max() <= 1e-4


@pytest.mark.parametrize("size", [(240, 320), (1080, 1920), (100, 90), (77, 333), (128, 171), (1, 1)])
def test_resize_matches_torch_interpolate(size):
    """The written-out resize against torch's multi-threaded kernel (the one the reference ran)."""
    frames = np.random.default_rng(size[0]).integers(0, 256, (2, *size, 3), dtype=np.uint8)
    torch.set_num_threads(2)
    x = F.interpolate(torch.from_numpy(frames).permute(0, 3, 1, 2).float(), size=(128, 171), mode="bilinear",
                      align_corners=False, antialias=False)
    want = torch.round(x).to(torch.uint8)[:, :, 8:120, 30:142].permute(0, 2, 3, 1).numpy()
    got = r3d18.crop_frames(list(frames))
    diff = np.abs(got.astype(int) - want)
    # identical on this project's CPUs; a CPU where torch rounds its float32 sums differently
    # may move a rare pixel by one step
    assert diff.max() <= 1 and (diff > 0).mean() < 1e-4


# ------------------------------------------------------------------ clips
@pytest.fixture
def probe(monkeypatch):
    """Stands in for the network to show which frames make each clip: grey level / 4 of each
    of the 16 frames (the videos below have frame j at level 4 j), and the batch sizes run."""
    batches = []

    def frames_of(self, clips):
        batches.append(len(clips))
        out = np.zeros((len(clips), 512), np.float32)
        out[:, :16] = np.rint(clips[:, :, 56, 56, 0] / 4.0)
        return out

    monkeypatch.setattr(r3d18.R3D18, "embed_clips", frames_of)
    return batches


def grey_video(tmp_path, frames: int, fps: float = 30):
    return write_video(tmp_path / f"grey{frames}_{fps}.mp4", numbered_frames(frames, step=4), fps=fps, crf=0)


@pytest.mark.parametrize("hop,last_clip,starts", [
    (16, "drop", [0]), (16, "pad", [0, 16]), (7, "drop", [0, 7, 14]), (7, "pad", [0, 7, 14]),
    (20, "drop", [0]), (20, "pad", [0, 20]),
])
def test_clip_layout(tmp_path, probe, hop, last_clip, starts):
    path = grey_video(tmp_path, 60)  # 2 s at 30 fps: grid frame k is video frame 2 k, K = 30
    ex = make(hop_frames=hop, last_clip=last_clip, batch_size=2)
    out = run_video(ex, path, chunk_frames=5)
    want = [[2 * min(s + i, 29) for i in range(16)] for s in starts]  # a padded clip repeats frame 58
    assert out.data[:, :16].astype(int).tolist() == want
    assert len(starts) == r3d18.num_clips(30, hop, last_clip)
    np.testing.assert_allclose(out.timestamps, (np.array(starts) + 8) / 15)
    assert probe == [min(2, len(starts) - i) for i in range(0, len(starts), 2)]
    spec = ex.output_spec("video")
    assert spec.hop_seconds == hop / 15 and spec.first_frame_seconds == 8 / 15
    pooled = run_video(make(hop_frames=hop, last_clip=last_clip, pooling="mean"), path)
    np.testing.assert_allclose(pooled.data, out.data.mean(axis=0), rtol=1e-6)


def test_short_video_rule(tmp_path, probe):
    path = grey_video(tmp_path, 20)  # 0.67 s: 10 grid frames, under one 16-frame clip
    with pytest.warns(r3d18.ShortVideoWarning, match="padded by repeating its last frame"):
        out = run_video(make(), path)
    assert out.data[:, :16].astype(int).tolist() == [[2 * min(i, 9) for i in range(16)]]
    with pytest.raises(ValueError, match="too short for one clip.*short_video: pad"):
        run_video(make(short_video="skip"), path)
    assert r3d18.num_clips(10, 16, short_video="pad") == 1
    assert r3d18.num_clips(10, 16, short_video="skip") == 0


def test_truncated_video_embeds_what_decoded_or_says_why(tmp_path, probe):
    path = write_video(tmp_path / "v.mp4", moving_shapes(0, 60), fps=30, faststart=True)
    data = path.read_bytes()
    tail_cut = tmp_path / "tail_cut.mp4"  # 90 %: the first frames still decode
    tail_cut.write_bytes(data[: int(len(data) * 0.9)])
    out = run_video(make(), tail_cut)
    assert out.data.shape[0] >= 1 and out.data.shape[1] == 512
    head_only = tmp_path / "head_only.mp4"  # 30 %: the index and no whole frame
    head_only.write_bytes(data[: int(len(data) * 0.3)])
    with pytest.raises(MediaError, match="decoding failed|no decodable"):
        run_video(make(), head_only)


def test_real_network_on_a_short_video(tmp_path):
    path = write_video(tmp_path / "short.mp4", moving_shapes(0, 8, 64, 48), fps=15)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", r3d18.ShortVideoWarning)
        out = run_video(make(), path)
    assert out.data.shape == (1, 512) and np.isfinite(out.data).all() and np.abs(out.data).sum() > 0


def test_params_and_specs():
    # (the checks every plugin shares, random weights, precision: test_plugin_contract.py)
    ex = make()
    assert ex.takes("video") and not ex.takes("image") and not ex.takes("audio")
    assert make(pooling="mean").output_spec("video").axes == ("dim",)
    for bad in ({"hop_frames": 0}, {"hop_frames": 1.5}):
        with pytest.raises(ConfigError):
            make(**bad)


# ------------------------------------------------------------------ weights
def test_hash_prefix_in_the_name_is_checked(tmp_path, monkeypatch):
    """The digest is checked before anything is loaded, so any bytes show the lookup."""
    hub = weights.torch_hub_checkpoints()
    hub.mkdir(parents=True)
    path = hub / r3d18.WEIGHTS_FILE
    path.write_bytes(b"not the Kinetics checkpoint")
    with pytest.raises(WeightsError, match="start with b3b3357e"):
        make(None).checkpoint_path()  # torchvision would load whatever sits there
    # a file whose digest does start with its name's prefix is found in torch hub's cache
    prefix = weights.sha256sum(path)[:8]
    path.rename(hub / f"r3d_18-{prefix}.pth")
    monkeypatch.setattr(r3d18.R3D18, "weights_file", replace(r3d18.WEIGHTS, filename=f"r3d_18-{prefix}.pth",
                                                             sha256=prefix))
    assert make(None).checkpoint_path() == hub / f"r3d_18-{prefix}.pth"
    # a state dict missing a key is refused with its name
    state = r3d18.R3D18Net(num_classes=None).state_dict()
    state.pop("layer2.0.downsample.1.running_var")
    torch.save(state, hub / "incomplete.pth")
    with pytest.raises(WeightsError, match="missing keys: layer2.0.downsample.1.running_var"):
        make(hub / "incomplete.pth").load()
