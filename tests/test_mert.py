"""MERT plugin: tiny random checkpoints in MERT's own file format, loaded offline.

The truth these tests compare against is transformers' HubertModel built here
directly from a HubertConfig and the same tensors (before they are renamed to
MERT's parameter names), fed with Wav2Vec2FeatureExtractor's normalization
read from the checkpoint's preprocessor_config.json.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import pytest
import torch

from embedkit import registry
from embedkit.extractors import base
from embedkit.extractors import mert as M
from embedkit.extractors.base import ConfigError, WeightsError

SR = 24000
TINY_ARCH = {
    "hidden_size": 32,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "intermediate_size": 64,
    "conv_dim": [16] * 7,
    "conv_kernel": [10, 3, 3, 3, 3, 2, 2],
    "conv_stride": [5, 2, 2, 2, 2, 2, 2],
    "conv_bias": False,
    "num_conv_pos_embeddings": 16,
    "num_conv_pos_embedding_groups": 4,
    "feat_extract_norm": "group",
    "do_stable_layer_norm": False,
}


@pytest.fixture(autouse=True)
def _fresh_model_cache(monkeypatch):
    # The hub tests reuse one model key ("m-a-p/MERT-v1-95M"); never share loads across tests.
    monkeypatch.setattr(base, "_MODEL_CACHE", {})


def mert_config(**arch) -> dict:
    """config.json as MERT's MERTConfig.save_pretrained writes it (remote-code keys included)."""
    return {
        "_name_or_path": "tiny-mert",
        "architectures": ["MERTModel"],
        "auto_map": {"AutoConfig": "configuration_MERT.MERTConfig", "AutoModel": "modeling_MERT.MERTModel"},
        "model_type": "mert_model",
        "activation_dropout": 0.1,
        "apply_spec_augment": True,
        "attention_dropout": 0.1,
        "attention_relax": -1.0,
        "bos_token_id": 1,
        "classifier_proj_size": 256,
        "ctc_loss_reduction": "sum",
        "ctc_zero_infinity": False,
        "deepnorm": False,
        "eos_token_id": 2,
        "feat_extract_activation": "gelu",
        "feat_proj_dropout": 0.0,
        "feat_proj_layer_norm": True,
        "feature_extractor_cqt": False,
        "feature_extractor_cqt_bins": 336,
        "final_dropout": 0.1,
        "hidden_act": "gelu",
        "hidden_dropout": 0.1,
        "initializer_range": 0.02,
        "layer_norm_eps": 1e-05,
        "layerdrop": 0.1,
        "mask_feature_length": 10,
        "mask_feature_min_masks": 0,
        "mask_feature_prob": 0.0,
        "mask_time_length": 10,
        "mask_time_min_masks": 2,
        "mask_time_prob": 0.05,
        "num_feat_extract_layers": 7,
        "pad_token_id": 0,
        "sample_rate": SR,
        "torch_dtype": "float32",
        "transformers_version": "4.25.1",
        "use_weighted_layer_sum": False,
        "vocab_size": 32,
        **TINY_ARCH,
        **arch,
    }


def reference_model(cfg: dict, seed: int = 1):
    """HubertModel with every parameter random (norm gains near 1), built without the plugin."""
    from transformers import HubertConfig, HubertModel

    keys = [k for k in TINY_ARCH] + ["feat_proj_layer_norm", "layer_norm_eps", "hidden_act", "mask_time_prob"]
    hcfg = HubertConfig(**{k: cfg[k] for k in keys}, hidden_dropout=0.0, attention_dropout=0.0,
                        activation_dropout=0.0, feat_proj_dropout=0.0, layerdrop=0.0)
    model = HubertModel(hcfg).eval()
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            noise = torch.randn(p.shape, generator=g)
            if name.endswith("original0"):  # weight-norm gain: positive
                p.copy_(0.5 + noise.abs() * 0.1)
            elif "norm" in name and name.endswith("weight"):
                p.copy_(1.0 + 0.1 * noise)
            else:
                p.copy_(0.2 * noise)
    return model


def write_checkpoint(folder: Path, fmt: str = "safetensors", do_normalize: bool = True, seed: int = 1,
                     config: dict | None = None, **arch):
    """A MERT-format checkpoint folder; returns the reference HubertModel holding the same weights."""
    folder.mkdir(parents=True, exist_ok=True)
    cfg = config or mert_config(**arch)
    ref = reference_model(cfg, seed)
    # MERT's files were written with torch's old weight_norm: weight_g / weight_v.
    old_names = {
        "parametrizations.weight.original0": "weight_g",
        "parametrizations.weight.original1": "weight_v",
    }
    sd = {}
    for k, v in ref.state_dict().items():
        for new, old in old_names.items():
            k = k.replace(new, old)
        sd[k] = v
    assert "encoder.pos_conv_embed.conv.weight_g" in sd
    (folder / "config.json").write_text(json.dumps(cfg, indent=2))
    (folder / "preprocessor_config.json").write_text(json.dumps({
        "do_normalize": do_normalize, "feature_extractor_type": "Wav2Vec2FeatureExtractor", "feature_size": 1,
        "padding_side": "right", "padding_value": 0, "return_attention_mask": True, "sampling_rate": SR,
    }))
    if fmt == "safetensors":
        from safetensors.torch import save_file

        save_file({k: v.contiguous() for k, v in sd.items()}, str(folder / "model.safetensors"))
    else:
        torch.save(sd, folder / "pytorch_model.bin")
    return ref


def reference_states(ref, folder: Path, audio: np.ndarray) -> tuple[list[np.ndarray], np.ndarray]:
    """(hidden_states as numpy, last_hidden_state) of `ref` on the processor's input."""
    from transformers import Wav2Vec2FeatureExtractor

    proc = Wav2Vec2FeatureExtractor.from_pretrained(str(folder), local_files_only=True)
    x = proc(audio, sampling_rate=SR, return_tensors="pt").input_values
    with torch.inference_mode():
        out = ref(x, output_hidden_states=True)
    return [h[0].numpy() for h in out.hidden_states], out.last_hidden_state[0].numpy()


def signal(seconds: float, seed: int = 0) -> np.ndarray:
    t = np.arange(int(round(seconds * SR))) / SR
    rng = np.random.default_rng(seed)
    chirp = np.sin(2 * np.pi * (110 * t + 40 * t**2))
    return (0.3 * chirp + 0.05 * rng.standard_normal(t.size) + 0.1).astype(np.float32)


def make(folder: Path, **params) -> M.Mert:
    return registry.create("mert", device="cpu", weights_path=str(folder), **params)


# -- equality with HubertModel ------------------------------------------------------


def test_all_layers_equal_hubert_model_safetensors(tmp_path):
    ref = write_checkpoint(tmp_path / "ckpt")
    audio = signal(2.0)
    ex = make(tmp_path / "ckpt", layers="all", window_seconds=10.0)
    feats = ex.extract(audio, SR)
    states, last = reference_states(ref, tmp_path / "ckpt", audio)
    assert feats.data.shape == (3, states[0].shape[0], 32) and feats.data.dtype == np.float32
    diff = np.abs(feats.data - np.stack(states)).max()
    print(f"max |plugin - HubertModel| over 3 layers: {diff:.2e}")
    assert diff < 1e-5
    np.testing.assert_array_equal(feats.data[-1], ex.extract(audio, SR).data[-1])  # deterministic
    assert np.abs(make(tmp_path / "ckpt", window_seconds=10.0).extract(audio, SR).data - last).max() < 1e-5


def test_pre_layer_norm_checkpoint_from_pytorch_bin(tmp_path):
    ref = write_checkpoint(tmp_path / "ckpt", fmt="bin", do_stable_layer_norm=True, feat_extract_norm="layer")
    audio = signal(1.5, seed=3)
    states, last = reference_states(ref, tmp_path / "ckpt", audio)
    got = make(tmp_path / "ckpt", layers="all").extract(audio, SR).data
    # Layers before the last: as recorded; the last after the final LayerNorm (MERT's transformers 4.x).
    assert np.abs(got[:-1] - np.stack(states[:-1])).max() < 1e-5
    assert np.abs(got[-1] - last).max() < 1e-5
    assert np.abs(states[-1] - last).max() > 1e-3  # the pre-LN difference this guards against is real
    np.testing.assert_array_equal(make(tmp_path / "ckpt").extract(audio, SR).data, got[-1])


def test_do_normalize_false_feeds_raw_samples(tmp_path):
    ref = write_checkpoint(tmp_path / "ckpt", do_normalize=False)
    audio = signal(1.0) * 3.0
    states, last = reference_states(ref, tmp_path / "ckpt", audio)  # the processor leaves it raw too
    got = make(tmp_path / "ckpt").extract(audio, SR).data
    assert np.abs(got - last).max() < 1e-5
    with torch.inference_mode():
        raw = ref(torch.from_numpy(audio)[None]).last_hidden_state[0].numpy()
    assert np.abs(got - raw).max() < 1e-5


# -- frames and timestamps -------------------------------------------------------------


def test_about_75_frames_per_second_with_centre_timestamps(tmp_path):
    ref = write_checkpoint(tmp_path / "ckpt")
    ex = make(tmp_path / "ckpt")
    for n in (400, 719, 720, 24000, 2 * SR + 123):
        feats = ex.extract(signal(n / SR), SR)
        with torch.inference_mode():  # the conv stack's own arithmetic
            t_ref = ref.feature_extractor(torch.zeros(1, n)).shape[-1]
        assert feats.data.shape == (t_ref, 32) == (M.frame_count(n), 32)
        np.testing.assert_allclose(feats.timestamps, (320 * np.arange(t_ref) + 200) / SR, rtol=0, atol=1e-12)
    assert feats.timestamps.dtype == np.float64
    assert abs(feats.data.shape[0] / (n / SR) - 75) < 1  # 2 s -> 149 frames
    spec = ex.output_spec()
    assert spec.axes == ("time", "dim") and spec.frames_per_second == pytest.approx(75)
    from_spec = spec.first_frame_seconds + np.arange(t_ref) * spec.hop_seconds
    np.testing.assert_allclose(from_spec, feats.timestamps)


def test_shorter_than_receptive_field_gives_one_frame(tmp_path):
    write_checkpoint(tmp_path / "ckpt")
    feats = make(tmp_path / "ckpt").extract(signal(100 / SR), SR)
    assert feats.data.shape == (1, 32) and np.isfinite(feats.data).all()
    np.testing.assert_allclose(feats.timestamps, [200 / SR])


# -- windows and stitching ---------------------------------------------------------------


@pytest.mark.parametrize("n", [399, 400, 5000, 72_000, 72_320, 123_457, 480_001])
@pytest.mark.parametrize("window_s,overlap_s", [(0.5, 0.0), (1.0, 0.25), (3.0, 1.0), (3.0, 2.9)])
def test_window_plan_tiles_the_whole_file_frames(n, window_s, overlap_s):
    window = round(window_s * SR)
    plan = M.plan_windows(n, window, M.window_hop(window, round(overlap_s * SR)))
    total = M.frame_count(n)
    assert plan[0].start == 0 and plan[-1].stop == n
    assert [w.keep_from for w in plan[1:]] == [w.keep_to for w in plan[:-1]]  # contiguous, no gaps/duplicates
    assert plan[0].keep_from == 0 and plan[-1].keep_to == total
    for w in plan:
        assert w.start % 320 == 0 and w.stop - w.start <= max(window + 319, n if len(plan) == 1 else 0)
        frames_in_window = M.frame_count(w.stop - w.start)
        assert w.first_frame <= w.keep_from <= w.keep_to <= w.first_frame + frames_in_window


def test_stitched_windows_match_whole_file_frames_and_window_outputs(tmp_path):
    ref = write_checkpoint(tmp_path / "ckpt")
    audio = signal(12.0, seed=5)
    whole = make(tmp_path / "ckpt", window_seconds=20.0).extract(audio, SR)
    stitched = make(tmp_path / "ckpt", window_seconds=3.0, overlap_seconds=1.0).extract(audio, SR)
    assert stitched.data.shape == whole.data.shape
    np.testing.assert_array_equal(stitched.timestamps, whole.timestamps)

    # Each kept frame is exactly what the model gives for its own window.
    mean, var = audio.astype(np.float64).mean(), audio.astype(np.float64).var()
    x = ((audio - mean) / np.sqrt(var + 1e-7)).astype(np.float32)
    plan = M.plan_windows(audio.size, 3 * SR, M.window_hop(3 * SR, SR))
    assert len(plan) == 6
    for w in plan:
        with torch.inference_mode():
            h = ref(torch.from_numpy(x[w.start : w.stop])[None]).last_hidden_state[0].numpy()
        a, b = w.keep_from - w.first_frame, w.keep_to - w.first_frame
        assert np.abs(stitched.data[w.keep_from : w.keep_to] - h[a:b]).max() < 1e-5

    dev = np.abs(stitched.data - whole.data)
    rel = np.linalg.norm(stitched.data - whole.data) / np.linalg.norm(whole.data)
    print(f"stitched vs whole (tiny random model, 12 s, 3 s windows, 1 s overlap): "
          f"max {dev.max():.3g}, rel {rel:.3g}")
    assert np.isfinite(dev).all()


# -- layers and pooling ----------------------------------------------------------------------


def test_layer_selection_and_mean_pooling(tmp_path):
    write_checkpoint(tmp_path / "ckpt")
    audio = signal(2.5, seed=7)
    folder = tmp_path / "ckpt"
    kw = dict(window_seconds=1.0, overlap_seconds=0.25)
    every = make(folder, layers="all", **kw).extract(audio, SR).data
    np.testing.assert_array_equal(make(folder, layers=[0, -1], **kw).extract(audio, SR).data, every[[0, 2]])
    np.testing.assert_array_equal(make(folder, layers=[2, 1], **kw).extract(audio, SR).data, every[[2, 1]])
    np.testing.assert_array_equal(make(folder, layers=1, **kw).extract(audio, SR).data, every[1])
    np.testing.assert_array_equal(make(folder, **kw).extract(audio, SR).data, every[2])

    pooled = make(folder, layers="all", pooling="mean", **kw)
    feats = pooled.extract(audio, SR)
    assert feats.data.shape == (3, 32) and feats.timestamps is None
    np.testing.assert_allclose(feats.data, every.mean(axis=1), rtol=0, atol=1e-6)
    assert pooled.output_spec().axes == ("layer", "dim")
    last_mean = make(folder, pooling="mean", **kw).extract(audio, SR).data
    assert last_mean.shape == (32,)
    np.testing.assert_allclose(last_mean, every[2].mean(axis=0), rtol=0, atol=1e-6)

    assert make(folder, layers="all").output_spec().axes == ("layer", "time", "dim")
    assert make(folder, layers=3).output_spec().axes == ("time", "dim")
    with pytest.raises(ConfigError, match="layer 3 does not exist"):
        make(folder, layers=3).load()  # before the first file
    with pytest.raises(ConfigError, match="same layer twice"):
        make(folder, layers=[2, -1]).extract(audio, SR)


@pytest.mark.parametrize(
    "params",
    [
        {"layers": "first"},
        {"layers": []},
        {"layers": [1, 1]},
        {"layers": True},
        {"layers": [1.0]},
        {"window_seconds": 0.1},
        {"overlap_seconds": -1.0},
        {"window_seconds": 2.0, "overlap_seconds": 2.0},
    ],
)
def test_invalid_layers_and_windows_are_config_errors(params):
    # (the checks every plugin shares, batch-size invariance, precision: test_plugin_contract.py)
    with pytest.raises(ConfigError):
        registry.create("mert", **params)


# -- checkpoints: formats, refusals, hub cache ---------------------------------------------


@pytest.mark.parametrize(
    "change,match",
    [
        ({"feature_extractor_cqt": True}, "feature_extractor_cqt"),
        ({"deepnorm": True}, "deepnorm"),
        ({"conv_stride": [5, 2, 2, 2, 2, 2, 3]}, "hop"),
        ({"sample_rate": 16000}, "sample_rate"),
        ({"model_type": "wav2vec2"}, "model_type"),
    ],
)
def test_refuses_configs_hubert_cannot_reproduce(tmp_path, change, match):
    write_checkpoint(tmp_path / "ckpt")
    cfg = json.loads((tmp_path / "ckpt" / "config.json").read_text())
    (tmp_path / "ckpt" / "config.json").write_text(json.dumps({**cfg, **change}))
    with pytest.raises(ConfigError, match=match):
        make(tmp_path / "ckpt").load()


def test_attention_relax_without_deepnorm_is_accepted(tmp_path):
    # MERT's code applies attention_relax only inside its DeepNorm encoder.
    write_checkpoint(tmp_path / "ckpt", attention_relax=32.0)
    make(tmp_path / "ckpt").extract(signal(0.5), SR)


def test_refuses_16khz_preprocessor_and_mismatched_weights(tmp_path):
    write_checkpoint(tmp_path / "a")
    pre = json.loads((tmp_path / "a" / "preprocessor_config.json").read_text())
    (tmp_path / "a" / "preprocessor_config.json").write_text(json.dumps({**pre, "sampling_rate": 16000}))
    with pytest.raises(ConfigError, match="16000"):
        make(tmp_path / "a").load()

    write_checkpoint(tmp_path / "b")
    cfg = json.loads((tmp_path / "b" / "config.json").read_text())
    (tmp_path / "b" / "config.json").write_text(json.dumps({**cfg, "num_hidden_layers": 3}))
    with pytest.raises(WeightsError, match="missing"):
        make(tmp_path / "b").load()


def test_local_folder_errors_say_what_is_missing(tmp_path):
    with pytest.raises(WeightsError, match="does not exist.*weights:"):
        make(tmp_path / "nowhere").load()
    write_checkpoint(tmp_path / "ckpt")
    (tmp_path / "ckpt" / "model.safetensors").unlink()
    with pytest.raises(WeightsError, match="model.safetensors or pytorch_model.bin"):
        make(tmp_path / "ckpt").load()


def test_model_param_as_local_folder_and_weight_file_path(tmp_path):
    write_checkpoint(tmp_path / "ckpt")
    audio = signal(1.0)
    a = registry.create("mert", model=str(tmp_path / "ckpt")).extract(audio, SR).data
    b = make(tmp_path / "ckpt" / "model.safetensors").extract(audio, SR).data
    np.testing.assert_array_equal(a, b)


def _fake_hub_cache(root: Path, repo: str = "m-a-p/MERT-v1-95M") -> tuple[Path, str]:
    """The huggingface_hub cache layout: refs/main -> commit, snapshots/<commit>/files."""
    commit = hashlib.sha1(b"tiny mert").hexdigest()
    repo_dir = root / f"models--{repo.replace('/', '--')}"
    write_checkpoint(repo_dir / "snapshots" / commit)
    (repo_dir / "refs").mkdir(parents=True)
    (repo_dir / "refs" / "main").write_text(commit)
    return repo_dir / "snapshots" / commit, commit


def test_loads_from_hf_cache_offline(tmp_path, monkeypatch):
    snapshot, commit = _fake_hub_cache(tmp_path / "hub")
    monkeypatch.delenv("HF_HUB_CACHE", raising=False)
    monkeypatch.setenv("HF_HOME", str(tmp_path))  # -> $HF_HOME/hub
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    ex = registry.create("mert")  # default model id, nothing else given
    audio = signal(1.0)
    got = ex.extract(audio, SR).data
    np.testing.assert_array_equal(got, make(snapshot).extract(audio, SR).data)
    prov = ex.provenance()["weights"]
    assert prov["source"] == "huggingface_hub" and prov["repo_id"] == "m-a-p/MERT-v1-95M"
    assert prov["commit"] == commit
    assert prov["sha256"] == hashlib.sha256((snapshot / "model.safetensors").read_bytes()).hexdigest()
    ex.fetch_weights()  # --download_only finds it too


def test_missing_from_hf_cache_offline_says_where_and_how(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "empty"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(WeightsError) as err:
        registry.create("mert").load()
    msg = str(err.value)
    assert str(tmp_path / "empty" / "models--m-a-p--MERT-v1-95M") in msg
    assert "weights:" in msg and "--download_only" in msg and "offline" in msg


def test_online_hub_fetch_prefers_safetensors_then_falls_back_to_bin(tmp_path, monkeypatch):
    """The download calls as huggingface_hub receives them (the hub itself is not reachable here)."""
    import huggingface_hub

    write_checkpoint(tmp_path / "src", fmt="bin")
    snapshot = tmp_path / "cache" / "models--m-a-p--MERT-v1-95M" / "snapshots" / ("a" * 40)
    calls = []

    def fake_snapshot_download(repo_id, **kw):
        calls.append((repo_id, kw))
        snapshot.mkdir(parents=True, exist_ok=True)
        for pattern in kw["allow_patterns"]:  # "download" what the repo has (no safetensors)
            if (tmp_path / "src" / pattern).is_file():
                (snapshot / pattern).write_bytes((tmp_path / "src" / pattern).read_bytes())
        return str(snapshot)

    monkeypatch.setattr(huggingface_hub, "snapshot_download", fake_snapshot_download)
    for var in ("HF_HUB_OFFLINE", "EMBEDKIT_OFFLINE", "HF_HUB_CACHE", "HUGGINGFACE_HUB_CACHE"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    ex = registry.create("mert", revision="v1")
    ex.fetch_weights()
    assert [c[1]["allow_patterns"] for c in calls] == [
        ["config.json", "preprocessor_config.json", "model.safetensors"], ["pytorch_model.bin"]]
    assert all(c[0] == "m-a-p/MERT-v1-95M" and c[1]["revision"] == "v1" and not c[1]["local_files_only"]
               and c[1]["cache_dir"] == str(tmp_path / "hf" / "hub") for c in calls)
    assert ex.provenance()["weights"]["weight_file"].endswith("pytorch_model.bin")

    calls.clear()
    monkeypatch.setenv("EMBEDKIT_OFFLINE", "1")
    M.hub_checkpoint("m-a-p/MERT-v1-95M")
    assert len(calls) == 1 and calls[0][1]["local_files_only"] is True


def test_random_weights_use_the_named_architecture(tmp_path):
    write_checkpoint(tmp_path / "ckpt")
    ex = registry.create("mert", model=str(tmp_path / "ckpt"), weights_path="random", layers="all")
    feats = ex.extract(signal(1.0), SR)
    assert feats.data.shape == (3, M.frame_count(SR), 32)
    assert ex.provenance()["weights"] == "random" and ex.weight_files() == []
    cfg = M.hubert_config(M.KNOWN_CONFIGS["m-a-p/MERT-v1-330M"])
    assert (cfg.hidden_size, cfg.num_hidden_layers, cfg.do_stable_layer_norm) == (1024, 24, True)


def test_state_dict_names_map_onto_hubert_model(tmp_path):
    ref = write_checkpoint(tmp_path / "ckpt")
    from safetensors.torch import load_file

    sd = load_file(str(tmp_path / "ckpt" / "model.safetensors"))
    target = set(ref.state_dict())
    mapped, unexpected = M.map_state_dict({"mert_model." + k: v for k, v in sd.items()}, target)
    assert unexpected == [] and set(mapped) == target
