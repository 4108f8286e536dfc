"""CLMR plugin tests.

Truth used here, independent of extractors/clmr.py:
- the SampleCNN description from CLMR (clmr/models/sample_cnn.py, strides [3]*9): a
  stride-3 front conv, nine conv + max-pool(3) blocks, a last conv, BatchNorm + ReLU after
  every conv, channel widths below. From it the tests derive the parameter count, the
  receptive field, the checkpoint key names, and a float64 functional forward pass;
- checkpoints in CLMR's layouts (the released SimCLR state dict, a Lightning checkpoint,
  a bare encoder state dict, the release zip) written here with seeded random weights
  (the real checkpoint cannot be downloaded on the project machines);
- the upstream test audio in ../shared/reference/clmr (skip when absent).
"""

from __future__ import annotations

import argparse
import hashlib
import io
import pickle
import sys
import types
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from embedkit import audio_io, registry
from embedkit.extractors import base, clmr
from embedkit.extractors.base import WeightsError

SR = 22050
CLIP = 59049
REFERENCE = Path(__file__).resolve().parents[2] / "shared" / "reference" / "clmr"

# CLMR's SampleCNN as described upstream: (c_in, c_out, kernel, conv stride, conv padding, max-pool)
ARCH = (
    [(1, 128, 3, 3, 0, None)]
    + [(i, o, 3, 1, 1, 3) for i, o in [(128, 128), (128, 128), (128, 256)] + [(256, 256)] * 5 + [(256, 512)]]
    + [(512, 512, 3, 1, 1, None)]
)


@pytest.fixture(autouse=True)
def fresh_model_cache(monkeypatch, one_torch_thread):
    """Each test loads its own network (the process-wide cache is keyed by weights path only).

    One torch thread: the test machines' 2 cores are shared, and one thread was measured
    several times faster there than two.
    """
    monkeypatch.setattr(base, "_MODEL_CACHE", {})
    monkeypatch.setenv("EMBEDKIT_OFFLINE", "1")


# ------------------------------------------------------------------ independent helpers
def encoder_state(seed: int) -> dict[str, torch.Tensor]:
    """Seeded random SampleCNN weights under upstream's key names (sequential.<block>.<0 conv|1 bn>)."""
    g = torch.Generator().manual_seed(seed)
    sd = {}
    for i, (c_in, c_out, k, _, _, _) in enumerate(ARCH):
        sd[f"sequential.{i}.0.weight"] = torch.randn(c_out, c_in, k, generator=g) * (2 / (c_in * k)) ** 0.5
        sd[f"sequential.{i}.0.bias"] = 0.05 * torch.randn(c_out, generator=g)
        sd[f"sequential.{i}.1.weight"] = 0.5 + torch.rand(c_out, generator=g)
        sd[f"sequential.{i}.1.bias"] = 0.1 * torch.randn(c_out, generator=g)
        sd[f"sequential.{i}.1.running_mean"] = 0.05 * torch.randn(c_out, generator=g)
        sd[f"sequential.{i}.1.running_var"] = 0.5 + torch.rand(c_out, generator=g)
        sd[f"sequential.{i}.1.num_batches_tracked"] = torch.tensor(1000)
    return sd


def projector_state(seed: int, prefix: str) -> dict[str, torch.Tensor]:
    """SimCLR's projection head (Linear 512->512, ReLU, Linear 512->64, no biases)."""
    g = torch.Generator().manual_seed(seed + 1)
    return {f"{prefix}0.weight": torch.randn(512, 512, generator=g),
            f"{prefix}2.weight": torch.randn(64, 512, generator=g)}


def reference_embed(sd: dict[str, torch.Tensor], clips: np.ndarray) -> np.ndarray:
    """Float64 functional SampleCNN forward: clips (B, 59049) -> (B, 512)."""
    h = torch.from_numpy(np.asarray(clips, np.float64))[:, None, :]
    p = {k: v.double() for k, v in sd.items()}
    for i, (_, _, _, stride, pad, pool) in enumerate(ARCH):
        conv = f"sequential.{i}.0"
        h = F.conv1d(h, p[f"{conv}.weight"], p[f"{conv}.bias"], stride=stride, padding=pad)
        h = F.batch_norm(h, p[f"sequential.{i}.1.running_mean"], p[f"sequential.{i}.1.running_var"],
                         p[f"sequential.{i}.1.weight"], p[f"sequential.{i}.1.bias"], training=False, eps=1e-5)
        h = torch.relu(h)
        if pool:
            h = F.max_pool1d(h, pool, pool)
    assert h.shape[1:] == (512, 1)
    return h[:, :, 0].numpy()


def padded_clips(audio: np.ndarray, n: int) -> np.ndarray:
    x = np.zeros(n * CLIP, np.float32)
    m = min(audio.size, n * CLIP)
    x[:m] = audio[:m]
    return x.reshape(n, CLIP)


def signal(num_samples: int, seed: int = 0) -> np.ndarray:
    """Music-like test signal: two partials plus noise, peak well inside [-1, 1]."""
    t = np.arange(num_samples) / SR
    rng = np.random.default_rng(seed)
    x = 0.3 * np.sin(2 * np.pi * 220 * t) + 0.2 * np.sin(2 * np.pi * 331 * t * (1 + 0.1 * t))
    return (x + 0.05 * rng.standard_normal(num_samples)).astype(np.float32)


# ------------------------------------------------------------------ checkpoint files
SEED = 7


@pytest.fixture(scope="module")
def ckpts(tmp_path_factory):
    """Checkpoints in every accepted layout, all holding encoder_state(SEED)."""
    d = tmp_path_factory.mktemp("clmr_ckpt")
    enc = encoder_state(SEED)
    paths = {}
    # The released clmr_checkpoint_10000.pt: state dict of CLMR's SimCLR module.
    simclr = {**{f"encoder.{k}": v for k, v in enc.items()}, **projector_state(SEED, "projector.")}
    paths["simclr"] = d / "clmr_checkpoint_10000.pt"
    torch.save(simclr, paths["simclr"])
    # Lightning checkpoint of ContrastiveLearning: encoder twice (module.encoder, module.model.encoder).
    lightning = {
        "epoch": 9999, "global_step": 123456, "pytorch-lightning_version": "1.3.8",
        "state_dict": {**{f"encoder.{k}": v for k, v in enc.items()},
                       **{f"model.encoder.{k}": v for k, v in enc.items()},
                       **projector_state(SEED, "model.projector.")},
        "hyper_parameters": {"batch_size": 96, "projection_dim": 64, "sample_rate": 22050},
        "optimizer_states": [{"state": {}, "param_groups": [{"lr": 3e-4}]}], "lr_schedulers": [],
    }
    paths["lightning"] = d / "epoch=9999.ckpt"
    torch.save(lightning, paths["lightning"])
    # Bare encoder with a 50-tag fc head (what upstream's load_encoder_checkpoint returns).
    bare = {**enc, "fc.weight": torch.zeros(50, 512), "fc.bias": torch.zeros(50)}
    paths["bare"] = d / "sample_cnn.pt"
    torch.save(bare, paths["bare"])
    # The release zip: checkpoint + optimiser state.
    paths["zip"] = d / "clmr_checkpoint_10000.zip"
    with zipfile.ZipFile(paths["zip"], "w") as zf:
        zf.write(paths["simclr"], "clmr_checkpoint_10000.pt")
        buf = io.BytesIO()
        torch.save({"state": {}, "param_groups": []}, buf)
        zf.writestr("clmr_checkpoint_10000_optim.pt", buf.getvalue())
    return paths


@pytest.fixture(scope="module")
def audio_and_truth():
    """3 full clips + 1000 samples, and the float64 reference embeddings of its 4 (padded) clips."""
    audio = signal(3 * CLIP + 1000)
    return audio, reference_embed(encoder_state(SEED), padded_clips(audio, 4))


def make(weights_path, **kw):
    return registry.create("clmr", weights_path=str(weights_path), **kw)


# ------------------------------------------------------------------ architecture
def test_registered():
    assert "clmr" in registry.available()
    cls = registry.get("clmr")
    assert cls.sample_rate == 22050 and cls.resampler == "soxr_hq"


def test_parameter_count_and_keys_match_clmr():
    # Conv: c_in*c_out*k weights + c_out biases; BatchNorm: scale + shift per channel.
    expected = sum(ci * co * k + co + 2 * co for ci, co, k, *_ in ARCH)
    model = make("random").load().net
    assert sum(p.numel() for p in model.parameters()) == expected
    # Upstream's state-dict names (so released checkpoints load without renaming).
    assert set(model.state_dict()) == set(encoder_state(0))


def test_receptive_field_and_hop_match_clmr():
    # From the description: total stride = product of conv strides and pool sizes = 3**10 = 59049,
    # which is exactly one CLMR input clip; receptive field by the usual recursion
    # r += (k - 1) * jump over convs (k=3) and pools (k=3), jump *= stride.
    r, jump = 1, 1
    for _, _, k, stride, _, pool in ARCH:
        r, jump = r + (k - 1) * jump, jump * stride
        if pool:
            r, jump = r + (pool - 1) * jump, jump * pool
    assert jump == CLIP
    # The same recursion over the layers the plugin actually built.
    model = make("random").load().net
    r_m, j_m = 1, 1
    for layer in model.modules():
        if isinstance(layer, (torch.nn.Conv1d, torch.nn.MaxPool1d)):
            k = layer.kernel_size[0] if isinstance(layer.kernel_size, tuple) else layer.kernel_size
            s = layer.stride[0] if isinstance(layer.stride, tuple) else layer.stride
            r_m, j_m = r_m + (k - 1) * j_m, j_m * s
    assert (r_m, j_m) == (r, jump)
    # The network maps exactly one 59049-sample clip to one 512-vector.
    with torch.inference_mode():
        out = model.sequential(torch.zeros(1, 1, CLIP))
    assert tuple(out.shape) == (1, 512, 1)


def test_clips_are_independent(ckpts):
    """A clip's embedding depends on its own 59049 samples only (no overlap, no context)."""
    audio = signal(3 * CLIP, seed=1)
    changed = audio.copy()
    changed[CLIP:2 * CLIP] = signal(CLIP, seed=2)  # replace clip 1 only
    e = make(ckpts["simclr"])
    a, b = e.extract(audio, SR).data, e.extract(changed, SR).data
    assert np.array_equal(a[[0, 2]], b[[0, 2]])
    assert np.abs(a[1] - b[1]).max() > 1e-3


# ------------------------------------------------------------------ weights: layouts and strictness
@pytest.mark.parametrize("layout", ["simclr", "lightning", "bare", "zip"])
def test_layouts_match_reference_forward(ckpts, audio_and_truth, layout):
    audio, truth = audio_and_truth
    f = make(ckpts[layout]).extract(audio, SR)
    assert f.data.dtype == np.float32 and f.data.shape == (3, 512)
    # float32 network vs float64 reference: measured max abs diff ~2e-6 on values of order 1
    np.testing.assert_allclose(f.data, truth[:3], rtol=1e-5, atol=2e-5)
    assert np.abs(truth[:3]).max() > 0.1  # the comparison is not between near-zero vectors


def test_layouts_give_identical_output(ckpts):
    audio = signal(CLIP + 5, seed=4)
    outs = [make(ckpts[k]).extract(audio, SR).data for k in ("simclr", "lightning", "bare", "zip")]
    for o in outs[1:]:
        assert np.array_equal(outs[0], o)


def _fake_module(monkeypatch, name: str) -> types.ModuleType:
    parts = name.split(".")
    for i in range(1, len(parts) + 1):
        sub = ".".join(parts[:i])
        if sub not in sys.modules:
            monkeypatch.setitem(sys.modules, sub, types.ModuleType(sub))
    return sys.modules[name]


def test_lightning_checkpoint_with_pickled_objects(tmp_path, monkeypatch, audio_and_truth):
    """Real Lightning checkpoints pickle hyper-parameter and callback classes beside the weights."""
    parsing = _fake_module(monkeypatch, "pytorch_lightning.utilities.parsing")
    callbacks = _fake_module(monkeypatch, "pytorch_lightning.callbacks.model_checkpoint")
    AttributeDict = type("AttributeDict", (dict,), {"__module__": parsing.__name__})
    ModelCheckpoint = type("ModelCheckpoint", (), {"__module__": callbacks.__name__})
    parsing.AttributeDict, callbacks.ModelCheckpoint = AttributeDict, ModelCheckpoint
    enc = encoder_state(SEED)
    ckpt = {
        "pytorch-lightning_version": "1.2.10",
        "callbacks": {ModelCheckpoint: {"best_model_score": torch.tensor(0.5)}},
        "hyper_parameters": AttributeDict(batch_size=48, dataset="magnatagatune"),
        "hparams_ns": argparse.Namespace(seed=42),
        "state_dict": {**{f"model.encoder.{k}": v for k, v in enc.items()},
                       **projector_state(SEED, "model.projector.")},
    }
    path = tmp_path / "lightning_objects.ckpt"
    torch.save(ckpt, path)
    for name in list(sys.modules):
        if name.startswith("pytorch_lightning"):
            monkeypatch.delitem(sys.modules, name)
    with pytest.raises(pickle.UnpicklingError):  # what plain weights_only loading does
        torch.load(path, weights_only=True)
    audio, truth = audio_and_truth
    np.testing.assert_allclose(make(path).extract(audio, SR).data, truth[:3], rtol=1e-5, atol=2e-5)


def test_checkpoint_with_foreign_code_refused(tmp_path):
    path = tmp_path / "evil.pt"
    torch.save({"state_dict": encoder_state(0), "x": hashlib.sha256}, path)  # any non-Lightning global
    with pytest.raises(WeightsError, match="_hashlib"):
        make(path).load()


def _save(tmp_path, sd, name="x.pt"):
    path = tmp_path / name
    torch.save(sd, path)
    return path


def test_strict_loading_errors_list_keys(tmp_path):
    enc = {f"encoder.{k}": v for k, v in encoder_state(0).items()}
    missing = dict(enc)
    del missing["encoder.sequential.5.0.weight"]
    with pytest.raises(WeightsError, match=r"missing keys: encoder\.sequential\.5\.0\.weight"):
        make(_save(tmp_path, missing)).load()
    extra = {**enc, "encoder.sequential.11.0.weight": torch.zeros(3), "head.bias": torch.zeros(2)}
    with pytest.raises(WeightsError, match=r"unexpected keys: .*sequential\.11\.0\.weight.*head\.bias"):
        make(_save(tmp_path, extra)).load()
    wrong = {**enc, "encoder.sequential.10.0.weight": torch.zeros(512, 256, 3)}
    msg = r"wrong shapes: encoder\.sequential\.10\.0\.weight \(512, 256, 3\) \(expected \(512, 512, 3\)\)"
    with pytest.raises(WeightsError, match=msg):
        make(_save(tmp_path, wrong)).load()
    with pytest.raises(WeightsError, match="not a state dict"):
        make(_save(tmp_path, [1, 2, 3])).load()
    (tmp_path / "notes.txt").write_text("not a checkpoint")
    with pytest.raises(WeightsError, match=r"cannot read .*notes\.txt"):
        make(tmp_path / "notes.txt").load()


def test_batchnorm_counters_optional(tmp_path, audio_and_truth):
    sd = {k: v for k, v in encoder_state(SEED).items() if not k.endswith("num_batches_tracked")}
    audio, truth = audio_and_truth
    out = make(_save(tmp_path, sd)).extract(audio, SR).data
    np.testing.assert_allclose(out, truth[:3], rtol=1e-5, atol=2e-5)


def test_weight_lookup_folder_cache_and_errors(ckpts, tmp_path, monkeypatch):
    # A folder holding the release zip.
    folder = tmp_path / "w"
    folder.mkdir()
    (folder / "clmr_checkpoint_10000.zip").write_bytes(ckpts["zip"].read_bytes())
    assert make(folder).checkpoint_path() == folder / "clmr_checkpoint_10000.zip"
    # Cache: the zip in $EMBEDKIT_CACHE/clmr is extracted once, atomically, beside it.
    cache = tmp_path / "cache"
    (cache / "clmr").mkdir(parents=True)
    (cache / "clmr" / "clmr_checkpoint_10000.zip").write_bytes(ckpts["zip"].read_bytes())
    monkeypatch.setenv("EMBEDKIT_CACHE", str(cache))
    e = registry.create("clmr")
    e.load()
    pt = cache / "clmr" / "clmr_checkpoint_10000.pt"
    assert pt.read_bytes() == ckpts["simclr"].read_bytes()
    assert sorted(p.name for p in (cache / "clmr").iterdir()) == [pt.name, "clmr_checkpoint_10000.zip"]
    prov = e.provenance()
    assert prov["weights"] == str(pt)
    assert prov["weights_sha256"] == hashlib.sha256(pt.read_bytes()).hexdigest()
    # Nothing anywhere (offline): the error says where it looked and where to get the file.
    monkeypatch.setenv("EMBEDKIT_CACHE", str(tmp_path / "empty"))
    with pytest.raises(WeightsError, match=r"releases/download/2\.0/clmr_checkpoint_10000\.zip"):
        registry.create("clmr").fetch_weights()  # fetch_weights bypasses the loaded-model cache
    with pytest.raises(WeightsError, match="does not exist"):
        make(tmp_path / "nope.pt").load()
    (tmp_path / "empty_folder").mkdir()
    with pytest.raises(WeightsError, match="holds neither"):
        make(tmp_path / "empty_folder").load()


# ------------------------------------------------------------------ clips, timestamps, pooling
@pytest.mark.parametrize("last_clip,n", [("drop", 3), ("pad", 4)])
def test_clip_count_timestamps_and_padding(ckpts, audio_and_truth, last_clip, n):
    audio, truth = audio_and_truth
    e = make(ckpts["simclr"], last_clip=last_clip)
    f = e.extract(audio, SR)
    assert f.data.shape == (n, 512)
    np.testing.assert_allclose(f.data, truth[:n], rtol=1e-5, atol=2e-5)  # last one zero-padded in "pad"
    centres = (np.arange(n) * CLIP + CLIP / 2) / SR
    assert f.timestamps.dtype == np.float64
    np.testing.assert_allclose(f.timestamps, centres, rtol=0, atol=1e-12)
    spec = e.output_spec()
    assert spec.axes == ("time", "dim")
    from_spec = spec.first_frame_seconds + np.arange(n) * spec.hop_seconds
    np.testing.assert_allclose(from_spec, f.timestamps, rtol=0, atol=1e-12)


def test_exact_multiple_keeps_every_full_clip(ckpts):
    # (upstream's evaluation splits and always drops the last piece, even a full one)
    assert make(ckpts["simclr"]).extract(signal(2 * CLIP), SR).data.shape == (2, 512)
    assert clmr.num_clips(2 * CLIP, "pad") == 2 and clmr.num_clips(2 * CLIP + 1, "pad") == 3


@pytest.mark.parametrize("num_samples", [1000, 0])
def test_short_audio_padded_with_warning(ckpts, num_samples):
    audio = signal(num_samples)
    with pytest.warns(UserWarning, match="shorter than one 59049-sample clip"):
        f = make(ckpts["simclr"]).extract(audio, SR)
    assert f.data.shape == (1, 512)
    np.testing.assert_allclose(f.timestamps, [CLIP / 2 / SR])
    truth = reference_embed(encoder_state(SEED), padded_clips(audio, 1))
    np.testing.assert_allclose(f.data, truth, rtol=1e-5, atol=2e-5)


def test_mean_pooling(ckpts):
    audio = signal(2 * CLIP + 99, seed=5)
    per_clip = make(ckpts["simclr"]).extract(audio, SR).data
    e = make(ckpts["simclr"], pooling="mean")
    f = e.extract(audio, SR)
    assert f.data.shape == (512,) and f.data.dtype == np.float32 and f.timestamps is None
    np.testing.assert_allclose(f.data, per_clip.mean(axis=0), rtol=1e-6, atol=1e-7)
    assert e.output_spec().axes == ("dim",) and e.output_spec().hop_seconds is None


def test_weights_record_is_the_release_zip():
    # (parameter checks, batch-size invariance, provenance and random weights: test_plugin_contract.py)
    record = registry.create("clmr").weight_files()[0]
    assert record.url.endswith("/2.0/clmr_checkpoint_10000.zip")
    assert record.member == "clmr_checkpoint_10000.pt"


# ------------------------------------------------------------------ end to end on upstream test audio
def test_end_to_end_upstream_test_audio(ckpts):
    wav = REFERENCE / "speech_16k.wav"
    if not wav.is_file():
        pytest.skip(f"upstream test audio not found at {wav} (../shared/reference is absent)")
    decoded = audio_io.load(wav)
    e = make(ckpts["lightning"])
    audio = decoded.at(e.sample_rate, e.resample_method)
    assert decoded.sample_rate == 16000
    assert abs(audio.size - round(decoded.audio.size * SR / 16000)) <= 1
    f = e.extract(audio, SR)
    n = audio.size // CLIP
    assert n >= 1 and f.data.shape == (n, 512) and np.isfinite(f.data).all()
    truth = reference_embed(encoder_state(SEED), audio[: n * CLIP].reshape(n, CLIP))
    np.testing.assert_allclose(f.data, truth, rtol=1e-5, atol=2e-5)
