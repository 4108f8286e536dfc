"""One contract for every registered plugin, in the spirit of hear-validator.

Parametrized over `registry.available()`, so a new plugin is checked without a line here:
its parameters are validated with errors that name them; what it returns for each kind of
file it takes is what its `output_spec` says (axes, dtype, timestamps, columns, extras);
outputs do not depend on `batch_size`; its provenance is JSON and says where the weights came
from; `weights_path="random"` networks are seeded (the same bytes after a reload, whatever the
global RNGs). The torch plugins also share one `precision` parameter and resolve their device
once (`TorchExtractor`). Per-model tests keep what is specific to a model (parity with upstream).

The inputs are synthetic (a chirp with noise, a scene of shapes, a video of moving shapes) and
the networks random, so nothing here needs weights or ../shared/reference.
"""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from embedkit import media, registry
from embedkit.extractors import base
from embedkit.extractors.base import PRECISION, ConfigError, TorchExtractor, torch_device
from tests.conftest import ROOT
from tests.media_synth import moving_shapes, scene, write_video
from tests.test_mert import mert_config

PLUGINS = registry.available()
# Parameters that keep each model small and quick here; every other parameter stays at its default.
FAST: dict[str, dict] = {
    "crepe": {"capacity": "tiny", "viterbi": False},
    "mert": {"window_seconds": 1.0, "overlap_seconds": 0.25},  # and a tiny architecture (below)
    "openl3": {"input_repr": "mel128", "hop_size": 0.5},
    "openl3_image": {"frame_rate": 2.0},
    "resnet18": {"frame_rate": 2.0},
    "r3d18": {"hop_frames": 8},
    "madmom": {"beats": True},
}
AUDIO_SECONDS = 6.5  # at least two clips of every clip model (CLMR's are 2.68 s)


def has_random_weights(name: str) -> bool:
    return issubclass(registry.get(name), TorchExtractor)


def kinds(name: str) -> list[str]:
    """The kinds of input this plugin's fast configuration takes (an audio plugin's video is its
    sound track: the audio path again)."""
    ex = registry.create(name, **FAST.get(name, {}))
    return [k for k in ("audio", "image", "video")
            if ex.takes(k) and not (k == "video" and ex.modality == "audio")]


CASES = [(name, kind) for name in PLUGINS for kind in kinds(name)]


@pytest.fixture(scope="module")
def model_cache():
    return {}


@pytest.fixture(autouse=True)
def isolated(monkeypatch, tmp_path, model_cache, one_torch_thread):
    """This module's own model cache (networks shared between its tests only), empty weight
    caches, offline: nothing here may need a download."""
    monkeypatch.setattr(base, "_MODEL_CACHE", model_cache)
    monkeypatch.setenv("EMBEDKIT_OFFLINE", "1")
    monkeypatch.setenv("EMBEDKIT_CACHE", str(tmp_path / "embedkit_cache"))


@pytest.fixture(scope="module")
def tiny_mert(tmp_path_factory) -> str:
    """A folder with a tiny MERT config.json: the architecture `weights: random` builds."""
    folder = tmp_path_factory.mktemp("tiny_mert")
    (folder / "config.json").write_text(json.dumps(mert_config()))
    return str(folder)


@pytest.fixture(scope="module")
def video(tmp_path_factory):
    """2 s of moving shapes at 20 fps (H.264): two R3D-18 clips at hop_frames 8."""
    path = tmp_path_factory.mktemp("contract") / "shapes.mp4"
    return write_video(path, moving_shapes(3, 40, 96, 64), fps=20)


@pytest.fixture
def make(tiny_mert):
    def make(name: str, **kw):
        params = dict(FAST.get(name, {}))
        if name == "mert":
            params["model"] = tiny_mert
        params.update(kw.pop("params", {}))
        weights_path = "random" if has_random_weights(name) else None
        return registry.create(name, weights_path=kw.pop("weights_path", weights_path), **kw, **params)
    return make


def chirp(sr: int, seconds: float = AUDIO_SECONDS) -> np.ndarray:
    """A rising tone with a little noise: pitch, onsets and texture for every audio model."""
    t = np.arange(int(seconds * sr)) / sr
    rng = np.random.default_rng(0)
    x = 0.4 * np.sin(2 * np.pi * (110 * t + 60 * t**2)) * (1 + 0.5 * np.sin(2 * np.pi * 2 * t))
    return (x + 0.02 * rng.standard_normal(t.size)).astype(np.float32)


def run(ex, kind: str, video_path=None) -> base.Features:
    """Features of the synthetic input of `kind`, as the driver hands it to the plugin."""
    if kind == "audio":
        return ex.extract(chirp(ex.sample_rate), ex.sample_rate)
    if kind == "image":
        return ex.extract_image(scene(5, 320, 240))
    info, chunks = media.iter_frames(video_path, chunk_frames=7)
    consumer = ex.frame_consumer(info)
    for chunk in chunks:
        consumer.add(chunk)
    return consumer.finish()


# ------------------------------------------------------------------ parameters
@pytest.mark.parametrize("name", PLUGINS)
def test_parameters_are_validated_with_errors_that_name_them(name):
    cls = registry.get(name)
    config = cls.validate_params({})
    assert list(config) == list(cls.params)  # every parameter, at its default
    for key, spec in cls.params.items():
        assert spec.help, f"{name}.{key} has no help text"
        assert spec.validate(name, key, config[key]) == config[key]
        bad = [object()] + (["no-such-choice"] if spec.choices else [])
        for value in bad:
            with pytest.raises(ConfigError, match=f"{name}: parameter '{key}' .* is invalid; allowed: "):
                cls.validate_params({key: value})
    with pytest.raises(ConfigError) as err:
        cls.validate_params({"no_such_param": 1})
    assert "'no_such_param'" in str(err.value) and all(k in str(err.value) for k in cls.params)
    for batch_size in (0, -1, 2.5, "8"):
        with pytest.raises(ConfigError, match="batch_size"):
            cls(batch_size=batch_size)


@pytest.mark.parametrize("name", [n for n in PLUGINS if has_random_weights(n)])
def test_torch_plugins_share_precision_and_resolve_the_device_once(name, make):
    cls = registry.get(name)
    assert cls.params["precision"] is PRECISION  # one meaning and help text everywhere
    assert make(name).config["precision"] == "auto"
    # refused on the CPU when the plugin is made, not per file; bfloat16 where the plugin offers it
    # on this CPU (tests/test_precision.py)
    with pytest.raises(ConfigError, match=f"{name}: precision float16 needs a CUDA device"):
        make(name, device="cpu", params={"precision": "float16"})
    if not (cls.cpu_bfloat16 and base.cpu_bfloat16_units()):
        with pytest.raises(ConfigError, match=f"{name}: precision bfloat16 on the CPU"):
            make(name, device="cpu", params={"precision": "bfloat16"})
    assert make(name, device="cpu").autocast_dtype is None
    # "auto" is resolved once, to what an explicit device would name: one network for both
    here = torch_device("auto")
    auto, explicit = make(name, device="auto"), make(name, device=here)
    assert auto.device == here and auto.model_key() == explicit.model_key()
    assert make(name).weight_files() == []  # nothing to download for random weights
    assert make(name, weights_path=None).weight_files(), "a real configuration names its weights"


# ------------------------------------------------------------------ outputs
@pytest.mark.parametrize("name, kind", CASES)
def test_outputs_are_what_the_output_spec_says(name, kind, make, video):
    check_outputs(make(name), kind, video)


def check_outputs(ex, kind: str, video=None) -> None:
    spec = ex.output_spec(kind)
    feats = run(ex, kind, video)
    data = feats.data
    assert isinstance(data, np.ndarray) and data.dtype == np.dtype(spec.dtype), data.dtype
    assert data.ndim == len(spec.axes), (data.shape, spec.axes)
    assert np.isfinite(data).all()
    assert all(n > 0 for n in data.shape), data.shape
    if spec.columns:
        assert data.shape[-1] == len(spec.columns)
    assert set(feats.extras) == set(spec.extras)
    for extra in feats.extras.values():
        assert isinstance(extra, np.ndarray) and np.isfinite(extra).all()
    if "time" not in spec.axes:
        assert feats.timestamps is None
        return
    ts = feats.timestamps
    assert ts is not None and ts.dtype == np.float64 and ts.shape == (data.shape[spec.axes.index("time")],)
    assert np.isfinite(ts).all() and (np.diff(ts) > 0).all() and ts[0] >= 0
    if spec.timestamps_file:
        assert "timestamps" in spec.extra_outputs
    elif spec.hop_seconds:  # the formula features.json states
        np.testing.assert_allclose(ts, spec.first_frame_seconds + np.arange(ts.size) * spec.hop_seconds,
                                   rtol=0, atol=1e-9)
    json.dumps(spec.to_json(), allow_nan=False)


@pytest.mark.parametrize("name, kind", CASES)
def test_batch_size_does_not_change_outputs(name, kind, make, video):
    one = run(make(name, batch_size=1), kind, video)
    three = run(make(name, batch_size=3), kind, video)
    np.testing.assert_array_equal(one.data, three.data)
    for key, extra in one.extras.items():
        np.testing.assert_array_equal(extra, three.extras[key])
    if one.timestamps is not None:
        np.testing.assert_array_equal(one.timestamps, three.timestamps)


PACKERS = [n for n in PLUGINS if registry.get(n).audio_items is not base.Extractor.audio_items]


@pytest.mark.parametrize("name", PACKERS)
def test_packed_short_audio_is_what_extract_gives(name, make):
    """A plugin that packs short audio across files: its three steps on two signals in one
    `forward_items` give each the Features `extract` gives it alone, `audio_items` counts them,
    and what it calls short is fewer items than one call."""
    ex = make(name, batch_size=4)
    sr = ex.sample_rate
    signals = [ex.checked_audio(chirp(sr, s), sr) for s in (0.4, 1.3)]
    prepared = [ex.prepare_audio(x) for x in signals]
    assert [len(items) for items, _ in prepared] == [ex.audio_items(x.shape[0]) for x in signals]
    outs = ex.forward_items(np.concatenate([items for items, _ in prepared]))
    lo = 0
    for x, (items, state) in zip(signals, prepared):
        got, want = ex.finish_audio(outs[lo:lo + len(items)], state), ex.extract(x, sr)
        lo += len(items)
        np.testing.assert_array_equal(got.data, want.data)
        np.testing.assert_array_equal(got.timestamps, want.timestamps)
        assert got.extras.keys() == want.extras.keys()
        assert ex.packs_audio(x.shape[0]) == (len(items) < ex.call_size())


VIDEO_PACKERS = [n for n in PLUGINS if registry.create(n, **FAST.get(n, {})).batches_video]


@pytest.mark.parametrize("name", VIDEO_PACKERS)
def test_a_videos_last_items_packed_give_what_finish_gives(name, make, video):
    """A plugin that packs videos: its consumer's `close()` (the items left, fewer than a batch),
    `forward_items` on them and `finish_with` give the Features `finish()` gives."""
    ex = make(name, batch_size=3)
    feats = []
    for packed in (False, True):
        info, chunks = media.iter_frames(video, chunk_frames=7)
        consumer = ex.frame_consumer(info)
        for chunk in chunks:
            consumer.add(chunk)
        if packed:
            left = consumer.close()
            assert 0 < len(left) < 3
            feats.append(consumer.finish_with(ex.forward_items(left)))
        else:
            feats.append(consumer.finish())
    np.testing.assert_array_equal(feats[0].data, feats[1].data)
    np.testing.assert_array_equal(feats[0].timestamps, feats[1].timestamps)


# ------------------------------------------------------------------ provenance and weights
@pytest.mark.parametrize("name", PLUGINS)
def test_provenance_is_json_and_says_where_the_weights_came_from(name, make):
    ex = make(name)
    prov = ex.provenance()
    json.dumps(prov, allow_nan=False)  # features.json holds it as it is
    assert prov["params"] == ex.config and prov["weights_license"] == ex.weights_license
    if has_random_weights(name):
        assert prov["weights"] == "random" and "weights_sha256" not in prov
    if isinstance(ex, TorchExtractor):
        assert prov["device"] == ex.device and prov["autocast"] == "none (float32)"


@pytest.mark.parametrize("name", PLUGINS)
def test_random_weights_are_seeded(name, make, model_cache, video):
    if not has_random_weights(name):
        pytest.skip(f"{name} has no network weights to randomise")
    import torch

    kind = kinds(name)[0]
    first = run(make(name), kind, video).data
    model_cache.clear()  # built again, after the global RNGs moved
    torch.manual_seed(12345)
    np.random.seed(12345)
    second = run(make(name), kind, video).data
    np.testing.assert_array_equal(first, second)
    assert math.isfinite(float(np.abs(first).sum())) and np.abs(first).sum() > 0


# ------------------------------------------------------------------ the README's example plugin
def readme_example() -> type:
    """The toy plugin the README's "Adding a model" shows, run as written there."""
    text = (ROOT / "README.md").read_text()
    section = text[text.index("### Adding a model"):]
    start = section.index("```python\n") + len("```python\n")
    code = section[start:section.index("```\n", start)]
    namespace: dict = {"__name__": "embedkit.extractors.toy"}
    exec(compile(code, "README.md (Adding a model)", "exec"), namespace)
    return namespace["Toy"]


def test_readme_example_plugin_keeps_the_contract(tmp_path):
    toy = readme_example()
    assert issubclass(toy, TorchExtractor) and toy.params["precision"] is PRECISION
    assert toy.weights_license == "CC BY 4.0"  # from its record
    check_outputs(toy(weights_path="random"), "audio")
    check_outputs(toy(weights_path="random", pooling="mean"), "audio")
    one, four = (run(toy(weights_path="random", batch_size=b), "audio").data for b in (1, 4))
    np.testing.assert_array_equal(one, four)
    assert toy(weights_path="random").provenance()["weights"] == "random"
    with pytest.raises(ConfigError, match="precision float16 needs a CUDA device"):
        toy(device="cpu", precision="float16")
    # its record drives the lookup: offline and nowhere on disk, the error names the URL
    with pytest.raises(base.WeightsError, match=r"(?s)weights not found \(toy-0123abcd.pth\).*example.org"):
        toy().load()
