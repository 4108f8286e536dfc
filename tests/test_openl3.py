"""Tests of the OpenL3 plugin against what openl3 0.4.2 itself computed.

Ground truth:
- ../shared/reference/openl3_random/: weight files in the official Keras layout
  (seeded random values) and openl3 0.4.2's outputs with them: resampled
  windows (`model_input`), front-end spectrograms, embeddings, timestamps;
- ../shared/reference/openl3/regression/: openl3's own regression outputs,
  which need the real weights (skipped, saying why, where they are absent);
- formulas and synthesized signals for everything else.
Reference files are read in place, never copied into the project.
"""

from __future__ import annotations

import importlib.metadata
import os
import warnings
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch

from embedkit import audio_io, registry, weights
import embedkit.openl3 as openl3  # the openl3 API, imported as a migrating script would
from embedkit.openl3 import network as net
from embedkit.openl3 import preprocessing as pre
from embedkit.openl3 import weightfiles as wf
from embedkit.extractors.base import ConfigError, WeightsError

REF = Path(__file__).resolve().parents[2] / "shared" / "reference"
RANDOM = REF / "openl3_random"
REGRESSION = REF / "openl3" / "regression"
AUDIO = REF / "openl3" / "audio"

needs_random = pytest.mark.skipif(
    not RANDOM.is_dir(), reason=f"reference folder {RANDOM} absent (it sits beside the project in CI)"
)
REPRS = ("mel256", "mel128", "linear")
FRONTENDS = ("kapre", "librosa")

# Measured on this machine (see docs/openl3.md); the bounds leave some room.
NETWORK_RTOL = 1e-4  # network alone: measured <= 2.6e-6
KAPRE_E2E_RTOL = 1e-2  # kapre front-end end to end: measured <= 7.9e-3 (float32 FFT noise near -80 dB)
LIBROSA_E2E_RTOL = 1e-5  # librosa front-end end to end (float64 path): measured <= 2.4e-6


def rel_max_diff(a: np.ndarray, ref: np.ndarray) -> float:
    return float(np.abs(np.asarray(a, np.float64) - ref).max() / np.abs(ref).max())


def ref_file(repr_: str, frontend: str, dur: str) -> dict:
    return dict(np.load(RANDOM / f"{repr_}_{frontend}_{dur}.npz"))


def ref_weights(repr_: str) -> Path:
    return RANDOM / f"openl3_audio_{repr_}_music.h5"


_MODELS: dict = {}


def ref_model(repr_: str, frontend: str = "kapre", size: int = 6144) -> openl3.models.AudioEmbeddingModel:
    key = (repr_, frontend, size)
    if key not in _MODELS:
        _MODELS[key] = openl3.models.load_audio_embedding_model(
            repr_, "music", size, frontend, weights_path=str(ref_weights(repr_))
        )
    return _MODELS[key]


# ---------------------------------------------------------------------------
# 1. windows: resampled, centred, padded exactly as openl3
# ---------------------------------------------------------------------------
@needs_random
@pytest.mark.parametrize("dur", ["0.5s", "2s"])
def test_windows_equal_openl3_model_input(dur):
    ref = ref_file("mel256", "kapre", dur)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", openl3.OpenL3Warning)
        api = openl3.preprocess_audio(ref["audio"], int(ref["sr"]), hop_size=0.1, center=True)
    assert api.shape == ref["model_input"].shape
    assert np.abs(api.astype(np.float32) - ref["model_input"]).max() <= 1e-5
    # The plugin's path: the driver resamples with audio_io, the plugin cuts windows.
    sig = audio_io.resample(ref["audio"], int(ref["sr"]), 48000, "kaiser_best")
    win = pre.frame_windows(sig, 0.1, True)
    assert np.abs(win - ref["model_input"][:, 0]).max() <= 1e-5
    # The same windows for every input representation (they share the audio).
    for r in ("mel128", "linear"):
        assert np.array_equal(ref_file(r, "kapre", dur)["model_input"], ref["model_input"])


# ---------------------------------------------------------------------------
# 2. the network alone, on openl3's own spectrogram
# ---------------------------------------------------------------------------
@needs_random
@pytest.mark.parametrize("repr_", REPRS)
@pytest.mark.parametrize("frontend", FRONTENDS)
def test_network_alone_equals_openl3(repr_, frontend):
    ref = ref_file(repr_, frontend, "0.5s")
    spec = ref["spectrogram"][..., 0]  # (1, F, T)
    assert spec.shape[1:] == pre.spectrogram_shape(repr_)
    loaded = ref_model(repr_).loaded
    for size, key in ((6144, "embedding"), (512, "embedding_512")):
        emb = net.run_network(loaded, spec, repr_, size)
        assert emb.shape == ref[key].shape and emb.dtype == np.float32
        assert rel_max_diff(emb, ref[key]) <= NETWORK_RTOL, (size, rel_max_diff(emb, ref[key]))


def test_the_api_runs_one_window_per_call_on_the_cpu_with_the_bytes_of_one_batch(one_torch_thread):
    """run_network on the CPU calls the network once per window (faster there); its output is the
    bytes of one call over the whole batch (the network's outputs do not depend on the call's
    shape on the CPU, what lets the plugins choose their CPU call size)."""
    loaded = net.LoadedModel(wf.random_network("audio"), "cpu")
    spec = np.random.default_rng(5).normal(-40, 15, (5, *pre.spectrogram_shape("mel256"))).astype(np.float32)
    calls = []
    hook = loaded.net.register_forward_pre_hook(lambda module, args: calls.append(args[0].shape[0]))
    try:
        per_window = net.run_network(loaded, spec, "mel256", 512, "float32")
    finally:
        hook.remove()
    assert calls == [1] * 5
    with torch.inference_mode():
        batch = net.audio_forward(loaded.net, torch.from_numpy(spec), "mel256", 512).numpy()
    assert per_window.tobytes() == batch.tobytes()


# ---------------------------------------------------------------------------
# 3. end to end from the 44.1 kHz audio
# ---------------------------------------------------------------------------
@needs_random
@pytest.mark.parametrize("repr_", REPRS)
@pytest.mark.parametrize("frontend", FRONTENDS)
def test_end_to_end_short_file(repr_, frontend):
    ref = ref_file(repr_, frontend, "0.5s")
    tol = KAPRE_E2E_RTOL if frontend == "kapre" else LIBROSA_E2E_RTOL
    with pytest.warns(openl3.OpenL3Warning, match="shorter than window"):
        emb, ts = openl3.get_audio_embedding(
            ref["audio"], int(ref["sr"]), model=ref_model(repr_, frontend), frontend=frontend
        )
    np.testing.assert_array_equal(ts, ref["timestamps"])
    assert emb.shape == ref["embedding"].shape
    assert rel_max_diff(emb, ref["embedding"]) <= tol
    with pytest.warns(openl3.OpenL3Warning):
        emb512, _ = openl3.get_audio_embedding(
            ref["audio"], int(ref["sr"]), model=ref_model(repr_, frontend, 512), frontend=frontend
        )
    assert rel_max_diff(emb512, ref["embedding_512"]) <= tol


@needs_random
@pytest.mark.parametrize("repr_", REPRS)
def test_kapre_spectrogram_matches_tensorflow_above_the_noise_floor(repr_):
    """Where float32 rounding cannot reach (well above -80 dB), the kapre front-end agrees closely."""
    ref = ref_file(repr_, "kapre", "0.5s")
    spec = pre.kapre_frontend(ref["model_input"][:, 0], repr_)
    want = ref["spectrogram"][..., 0]
    assert spec.shape == want.shape and spec.dtype == np.float32
    err = np.abs(spec - want)
    assert err[want > -20].max() <= 1e-4  # measured 3.8e-6 dB
    assert err[want > -40].max() <= 2e-3  # measured 3.0e-4 dB
    assert spec.max() == 0 and spec.min() >= -80


@needs_random
@pytest.mark.parametrize("repr_", REPRS)
def test_librosa_spectrogram_matches_openl3(repr_):
    ref = ref_file(repr_, "librosa", "0.5s")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", openl3.OpenL3Warning)
        spec = openl3.preprocess_audio(ref["audio"], int(ref["sr"]), input_repr=repr_)
    assert spec.shape == ref["spectrogram"].shape
    assert np.abs(spec - ref["spectrogram"]).max() <= 1e-4  # measured 3.8e-6 dB


@needs_random
@pytest.mark.parity
def test_plugin_end_to_end_kapre_2s():
    """16 windows through the plugin (what the driver runs): timestamps and embeddings."""
    ref = ref_file("mel256", "kapre", "2s")
    sig = audio_io.resample(ref["audio"], int(ref["sr"]), 48000, "kaiser_best")
    ex = registry.create(
        "openl3", weights_path=str(ref_weights("mel256")), embedding_size=6144, batch_size=7
    )
    assert ex.config["input_repr"] == "mel256" and ex.config["frontend"] == "kapre"
    feats = ex.extract(sig, 48000)
    np.testing.assert_array_equal(feats.timestamps, ref["timestamps"])
    spec = ex.output_spec()
    np.testing.assert_allclose(
        feats.timestamps, spec.first_frame_seconds + np.arange(len(feats.timestamps)) * spec.hop_seconds
    )
    assert feats.data.shape == (16, 6144) and feats.data.dtype == np.float32
    assert rel_max_diff(feats.data, ref["embedding"]) <= KAPRE_E2E_RTOL


@needs_random
@pytest.mark.parity
def test_api_end_to_end_librosa_2s():
    ref = ref_file("mel256", "librosa", "2s")
    emb, ts = openl3.get_audio_embedding(
        ref["audio"], int(ref["sr"]), model=ref_model("mel256", "librosa"), frontend="librosa", batch_size=5
    )
    np.testing.assert_array_equal(ts, ref["timestamps"])
    assert rel_max_diff(emb, ref["embedding"]) <= LIBROSA_E2E_RTOL


@needs_random
def test_plugin_librosa_on_float32_audio_short_file():
    """The driver hands float32 audio; openl3 worked on float64. Measured 2.7e-3 on the 2 s file."""
    ref = ref_file("linear", "librosa", "0.5s")
    sig = audio_io.resample(ref["audio"], int(ref["sr"]), 48000, "kaiser_best")
    ex = registry.create(
        "openl3", weights_path=str(ref_weights("linear")), input_repr="linear", frontend="librosa"
    )
    with pytest.warns(openl3.OpenL3Warning):
        feats = ex.extract(sig, 48000)
    assert rel_max_diff(feats.data, ref["embedding_512"]) <= 1e-2


# ---------------------------------------------------------------------------
# 4. openl3's regression files: need the real weights
# ---------------------------------------------------------------------------
def _real_weights(repr_: str, content: str) -> Path | None:
    """Real weights from $EMBEDKIT_OPENL3_WEIGHTS (a folder) or the usual places (no download)."""
    folder = os.environ.get("EMBEDKIT_OPENL3_WEIGHTS")
    try:
        return wf.find_weights(repr_, content, folder, allow_download=False)
    except WeightsError:
        return None


@pytest.mark.parity
@pytest.mark.parametrize("frontend", FRONTENDS)
def test_regression_with_real_weights(frontend, tmp_path):
    if not REGRESSION.is_dir():
        pytest.skip(f"{REGRESSION} absent")
    mel, lin = _real_weights("mel256", "music"), _real_weights("linear", "env")
    if mel is None or lin is None:
        pytest.skip(
            "the real OpenL3 weights (openl3_audio_mel256_music.h5, openl3_audio_linear_env.h5) are not "
            "on this machine; put them in $EMBEDKIT_CACHE/openl3/ or set EMBEDKIT_OPENL3_WEIGHTS=<folder>"
        )
    wav = str(AUDIO / "chirp_44k.wav")
    # What openl3's CLI ran for these files: defaults, then linear/env/512/no centring/hop 0.5.
    runs = [
        (
            f"chirp_44k_{frontend}.npz",
            None,
            dict(input_repr="mel256", content_type="music", embedding_size=6144),
        ),
        (
            f"chirp_44k_{frontend}_linear.npz",
            "linear",
            dict(input_repr="linear", content_type="env", embedding_size=512, center=False, hop_size=0.5),
        ),
    ]
    for ref_name, suffix, kw in runs:
        openl3.process_audio_file(
            wav, output_dir=str(tmp_path), suffix=suffix, frontend=frontend, verbose=False,
            weights_path=str(mel if kw["input_repr"] == "mel256" else lin), **kw,
        )
        out = np.load(tmp_path / (f"chirp_44k_{suffix}.npz" if suffix else "chirp_44k.npz"))
        ref = np.load(REGRESSION / ref_name)
        assert sorted(out.files) == sorted(ref.files) == ["embedding", "timestamps"]
        np.testing.assert_allclose(out["timestamps"], ref["timestamps"], atol=1e-5)
        if frontend == "librosa":
            np.testing.assert_allclose(out["embedding"], ref["embedding"], atol=1e-4, rtol=0)
        else:  # float32 FFT rounding noise near -80 dB differs from TensorFlow's (see docs)
            assert rel_max_diff(out["embedding"], ref["embedding"]) <= KAPRE_E2E_RTOL


# ---------------------------------------------------------------------------
# Weight files: both layouts, written here with seeded random values
# ---------------------------------------------------------------------------
def _seeded_state(seed: int = 7) -> dict:
    rng = np.random.default_rng(seed)
    c_in = (1,) + net.CHANNELS[:-1]
    st = {"bn_in": tuple(rng.uniform(0.5, 2, 1).astype(np.float32) for _ in range(4))}
    for i, (a, b) in enumerate(zip(c_in, net.CHANNELS)):
        st[f"conv{i}"] = (
            rng.normal(0, np.sqrt(2 / (9 * a)), (b, a, 3, 3)).astype(np.float32),
            rng.normal(0, 0.1, b).astype(np.float32),
        )
        if i < 7:
            st[f"bn{i}"] = tuple(rng.uniform(0.5, 2, b).astype(np.float32) for _ in range(4))
    return st


def _write_keras_h5(path: Path, st: dict, byte_names: bool = False, old_spectrogram: bool = False) -> None:
    """Keras `save_weights` layout: layer order in attrs, tensors in `weight_names` order."""
    layers: list[tuple[str, list[tuple[str, np.ndarray]]]] = [("input_1", [])]
    if old_spectrogram:  # kapre 0.1.x kept its DFT kernels as weights
        layers.append(("spectrogram_1", [("real_kernels:0", np.ones((512, 1, 1, 257), np.float32))]))
    names = ["gamma", "beta", "moving_mean", "moving_variance"]
    for i in range(8):
        bn = st["bn_in"] if i == 0 else st[f"bn{i - 1}"]
        bname = "batch_normalization" + (f"_{i}" if i else "")
        layers.append((bname, [(f"{bname}/{n}:0", a) for n, a in zip(names, bn)]))
        cname = "audio_embedding_layer" if i == 7 else "conv2d" + (f"_{i}" if i else "")
        kernel = st[f"conv{i}"][0].transpose(2, 3, 1, 0)  # OIHW -> HWIO
        layers.append((cname, [(f"{cname}/kernel:0", kernel), (f"{cname}/bias:0", st[f"conv{i}"][1])]))
        layers.append((f"activation_{i}", []))

    def enc(xs):
        return [x.encode() for x in xs] if byte_names else xs

    with h5py.File(path, "w") as f:
        f.attrs["layer_names"] = enc([n for n, _ in layers])
        f.attrs["backend"] = "tensorflow"
        # h5py iterates alphabetically: write in reverse so only the attributes give the order
        for lname, tensors in layers:
            g = f.create_group(lname)
            g.attrs["weight_names"] = enc([n for n, _ in tensors])
            for n, a in reversed(tensors):
                g.create_dataset(n, data=a)


def _write_torchopenl3(path: Path, st: dict) -> None:
    """torchopenl3's state dict: batch_normalization_1..8, conv2d_1..7, audio_embedding_layer."""
    sd = {"speclayer.dft_real_kernels": torch.zeros(257, 1, 512)}
    keys = ("weight", "bias", "running_mean", "running_var")
    for i in range(8):
        bn = st["bn_in"] if i == 0 else st[f"bn{i - 1}"]
        for k, a in zip(keys, bn):
            sd[f"batch_normalization_{i + 1}.{k}"] = torch.from_numpy(a.copy())
        sd[f"batch_normalization_{i + 1}.num_batches_tracked"] = torch.tensor(0)
        cname = "audio_embedding_layer" if i == 7 else f"conv2d_{i + 1}"
        sd[f"{cname}.weight"] = torch.from_numpy(st[f"conv{i}"][0].copy())
        sd[f"{cname}.bias"] = torch.from_numpy(st[f"conv{i}"][1].copy())
    torch.save(sd, path)


def test_both_weight_layouts_load_the_same_network(tmp_path):
    st = _seeded_state()
    h5, h5b, pth = tmp_path / "a_mel128_music.h5", tmp_path / "b_mel128_music.h5", tmp_path / "t.pth.tar"
    _write_keras_h5(h5, st)
    _write_keras_h5(h5b, st, byte_names=True, old_spectrogram=True)
    _write_torchopenl3(pth, st)
    states = [wf.read_weights(p) for p in (h5, h5b, pth)]
    for got in states:
        assert set(got) == set(st)
        for k in st:
            for a, b in zip(got[k], st[k]):
                np.testing.assert_array_equal(a, b)
    # Same numbers out of the network, and BatchNorm folding equals the unfolded formula.
    x = np.random.default_rng(0).uniform(-80, 0, (1, 128, 199)).astype(np.float32)
    outs = [net.run_network(net.LoadedModel(net.build_network(s), "cpu"), x, "mel128", 6144) for s in states]
    assert np.array_equal(outs[0], outs[1]) and np.array_equal(outs[0], outs[2])
    assert rel_max_diff(outs[0], _unfolded_forward(st, x)) <= 1e-5


def _unfolded_forward(st: dict, x: np.ndarray) -> np.ndarray:
    """The network written out layer by layer in float64 (independent of OpenL3AudioNet)."""

    def bn(z, p):
        g, b, m, v = (torch.from_numpy(a.astype(np.float64)).view(1, -1, 1, 1) for a in p)
        return (z - m) / torch.sqrt(v + 1e-3) * g + b

    z = bn(torch.from_numpy(x.astype(np.float64))[:, None], st["bn_in"])
    for i in range(8):
        w, b = (torch.from_numpy(a.astype(np.float64)) for a in st[f"conv{i}"])
        z = torch.nn.functional.conv2d(z, w, b, padding=1)
        if i < 7:
            z = torch.relu(bn(z, st[f"bn{i}"]))
        if i in (1, 3, 5):
            z = torch.nn.functional.max_pool2d(z, 2)
    z = torch.nn.functional.max_pool2d(z, (4, 8))  # mel128 / 6144
    return z.permute(0, 2, 3, 1).reshape(z.shape[0], -1).numpy()


def test_malformed_weight_files_say_what_is_wrong(tmp_path):
    bad = tmp_path / "x.h5"
    with h5py.File(bad, "w") as f:
        f.attrs["layer_names"] = ["dense"]
        f.create_group("dense").attrs["weight_names"] = ["dense/kernel:0"]
        f["dense"].create_dataset("dense/kernel:0", data=np.zeros((3, 3)))
    with pytest.raises(WeightsError, match="alternating BatchNorm and Conv2D"):
        wf.read_weights(bad)
    gz = tmp_path / "y.h5.gz"
    gz.write_bytes(b"\x1f\x8b\x08\x00" + b"\x00" * 16)
    with pytest.raises(WeightsError, match="gunzip"):
        wf.read_weights(gz)
    pth = tmp_path / "z.pth.tar"
    torch.save({"conv2d_1.weight": torch.zeros(64, 1, 3, 3)}, pth)
    with pytest.raises(WeightsError, match="lacks"):
        wf.read_weights(pth)


# ---------------------------------------------------------------------------
# Finding weights
# ---------------------------------------------------------------------------
def test_weight_lookup_order_and_errors(tmp_path, monkeypatch):
    st = _seeded_state()
    monkeypatch.setenv("EMBEDKIT_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("EMBEDKIT_OFFLINE", "1")
    monkeypatch.setattr(wf, "_openl3_package_dirs", lambda: [tmp_path / "site" / "openl3"])
    monkeypatch.setattr(wf, "_torch_hub_dir", lambda: tmp_path / "hub")
    # Nothing anywhere: the error names the cache, the package folder and the official URL.
    with pytest.raises(WeightsError) as err:
        wf.find_weights("mel256", "music")
    msg = str(err.value)
    assert str(tmp_path / "cache" / "openl3" / "openl3_audio_mel256_music.h5") in msg
    assert str(tmp_path / "site" / "openl3") in msg and "openl3_audio_mel256_music-v0_4_0.h5.gz" in msg
    # torchopenl3's download folder, then the installed package, then the cache win in that order.
    (tmp_path / "hub").mkdir()
    _write_torchopenl3(tmp_path / "hub" / "torchopenl3_mel256_music_512.pth.tar", st)
    assert wf.find_weights("mel256", "music").name == "torchopenl3_mel256_music_512.pth.tar"
    (tmp_path / "site" / "openl3").mkdir(parents=True)
    _write_keras_h5(tmp_path / "site" / "openl3" / "openl3_audio_mel256_music.h5", st)
    assert wf.find_weights("mel256", "music").parent == tmp_path / "site" / "openl3"
    cache = weights.model_cache_dir("openl3")
    cache.mkdir(parents=True)
    _write_keras_h5(cache / "openl3_audio_mel256_music.h5", st)
    assert wf.find_weights("mel256", "music") == cache / "openl3_audio_mel256_music.h5"
    # An explicit folder or file; a file named for another configuration is refused.
    assert wf.find_weights("mel256", "music", tmp_path / "hub").suffix == ".tar"
    with pytest.raises(WeightsError, match="mel256/music weights"):
        wf.find_weights("mel128", "music", cache / "openl3_audio_mel256_music.h5")
    with pytest.raises(WeightsError, match="neither a weight file"):
        wf.find_weights("linear", "env", tmp_path / "hub")


def test_official_download_is_gunzipped_into_the_cache(tmp_path, monkeypatch):
    """The official files are .h5.gz; served here from a file:// URL in the official layout."""
    import gzip

    st = _seeded_state()
    src = tmp_path / "served"
    src.mkdir()
    _write_keras_h5(src / "plain.h5", st)
    with gzip.open(src / "openl3_audio_mel128_env-v0_4_0.h5.gz", "wb") as g:
        g.write((src / "plain.h5").read_bytes())
    template = "file://" + str(src / "openl3_audio_{repr}_{content}-v0_4_0.h5.gz")
    monkeypatch.setattr(wf, "OFFICIAL_URL", template)
    monkeypatch.setenv("EMBEDKIT_CACHE", str(tmp_path / "cache"))
    monkeypatch.delenv("EMBEDKIT_OFFLINE", raising=False)
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setattr(wf, "_openl3_package_dirs", lambda: [])
    monkeypatch.setattr(wf, "_torch_hub_dir", lambda: tmp_path / "hub")
    got = wf.find_weights("mel128", "env")
    assert got == tmp_path / "cache" / "openl3" / "openl3_audio_mel128_env.h5"
    assert got.read_bytes() == (src / "plain.h5").read_bytes()
    assert sorted(p.name for p in got.parent.iterdir()) == [got.name]  # no .gz or partial file left
    assert wf.read_weights(got)["conv2"][0].shape == (128, 64, 3, 3)


def test_plugin_load_error_and_provenance(tmp_path, monkeypatch):
    monkeypatch.setenv("EMBEDKIT_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("EMBEDKIT_OFFLINE", "1")
    monkeypatch.setattr(wf, "_openl3_package_dirs", lambda: [])
    monkeypatch.setattr(wf, "_torch_hub_dir", lambda: tmp_path / "hub")
    ex = registry.create("openl3", input_repr="linear", content_type="env")
    with pytest.raises(WeightsError, match=r"openl3_audio_linear_env\.h5.*--download_only"):
        ex.load()
    path = tmp_path / "openl3_audio_linear_env.h5"
    _write_keras_h5(path, _seeded_state())
    ex = registry.create("openl3", input_repr="linear", content_type="env", weights_path=str(path))
    prov = ex.provenance()
    assert prov["weights_sha256"] == weights.sha256sum(path) and prov["weights"] == str(path)
    assert prov["format"] == "keras-h5" and prov["params"]["input_repr"] == "linear"
    assert prov["versions"]["torch"] == importlib.metadata.version("torch")
    assert ex.weight_files()[0].url.endswith("openl3_audio_linear_env-v0_4_0.h5.gz")
    rnd = registry.create("openl3", weights_path="random").provenance()
    assert rnd["weights"] == "random"


# ---------------------------------------------------------------------------
# Windowing, timestamps, edge cases (formulas and synthesized signals)
# ---------------------------------------------------------------------------
@pytest.mark.parametrize("center", [True, False])
@pytest.mark.parametrize("hop", [0.1, 0.25, 0.5, 1.0, 0.0417])
def test_window_count_matches_the_covering_rule(center, hop):
    """Windows start every hop in the padded signal until one reaches past the audio's end."""
    hop_len = int(hop * 48000)
    for n in [1, 100, 23999, 24000, 24001, 47999, 48000, 48001, 52800, 96000, 100003]:
        end = n + (24000 if center else 0)
        k = 0
        while k * hop_len + 48000 < end:
            k += 1
        assert pre.num_windows(n, hop_len, center) == k + 1, (n, hop, center)
        ts = pre.timestamps(k + 1, hop)
        np.testing.assert_array_equal(ts, np.arange(k + 1) * hop)


def test_windows_place_the_audio_as_openl3_describes():
    audio = np.arange(1, 60001, dtype=np.float32)  # sample i has value i + 1
    w = pre.frame_windows(audio, 0.5, center=True)
    assert w.shape == (pre.num_windows(60000, 24000, True), 48000)
    assert np.all(w[0, :24000] == 0) and w[0, 24000] == 1  # first sample at the first window's centre
    assert w[1, 0] == 1 and w[1, 47999] == 48000  # second window starts with the audio
    assert w[-1, 60000 - 24000 * 2 + 24000 - 1] == 60000 and np.all(w[-1, 36000:] == 0)
    w = pre.frame_windows(audio, 0.5, center=False)
    assert w[0, 0] == 1 and w[1, 0] == 24001 and w.shape[0] == 2


def test_frontend_formulas_on_a_sine():
    """3 kHz falls exactly on FFT bin 32 (512-point); dB is 0 at the peak, floor -80."""
    t = np.arange(48000) / 48000
    sine = np.sin(2 * np.pi * 3000 * t).astype(np.float32)
    lin = pre.kapre_frontend(sine[None], "linear")[0]
    assert lin.shape == (257, 197)
    assert np.all(lin.argmax(axis=0) == 32) and lin.max() == 0 and lin.min() >= -80
    mel = pre.kapre_frontend(sine[None], "mel128")[0]
    fb = pre.mel_filterbank(128)
    assert np.all(mel[:, :150].argmax(axis=0) == fb[int(round(3000 * 2048 / 48000))].argmax())
    # TF's periodic Hann window is the textbook formula, in float32.
    n = np.arange(512)
    np.testing.assert_allclose(pre.tf_hann_window(512), 0.5 - 0.5 * np.cos(2 * np.pi * n / 512), atol=2e-7)
    # Silence: magnitude floor everywhere, so 0 dB everywhere (no NaN), as in openl3.
    assert np.all(pre.kapre_frontend(np.zeros((1, 48000), np.float32), "mel256") == 0)
    # Each window is normalised to its own maximum: a half-amplitude copy gives the same dB map.
    both = np.concatenate([sine, 0.5 * sine])
    spec = pre.kapre_spectrogram(both, np.array([0, 48000]), "linear")
    loud = spec[0] > -60
    assert np.abs(spec[0] - spec[1])[loud].max() < 1e-3
    # ... and 10*log10 of magnitudes: a second sine at a quarter amplitude sits 6.02 dB down.
    two = sine + 0.25 * np.sin(2 * np.pi * 6000 * t).astype(np.float32)  # bin 64
    s2 = pre.kapre_frontend(two[None], "linear")[0]
    np.testing.assert_allclose(s2[64, 5:190], 10 * np.log10(0.25), atol=0.01)


def test_shared_stft_frames_give_identical_numbers():
    """Hop a multiple of 242 samples: frames shared between windows are computed once, same bits."""
    rng = np.random.default_rng(1)
    sig = rng.normal(0, 0.1, 48000 + 2420 * 6).astype(np.float32)
    starts = np.arange(7) * 2420
    for repr_ in ("linear", "mel128"):
        shared = pre.kapre_spectrogram(sig, starts, repr_)
        alone = pre.kapre_frontend(np.stack([sig[s : s + 48000] for s in starts]), repr_)
        assert np.array_equal(shared, alone)


def test_results_do_not_depend_on_batch_size():
    rng = np.random.default_rng(2)
    audio = rng.normal(0, 0.1, int(0.8 * 48000)).astype(np.float32)
    hop = 2420.5 / 48000  # 2420 samples: a multiple of the STFT hop, so frames are shared
    assert pre.hop_samples(hop) % 242 == 0
    outs = []
    for bs in (1, 4):
        ex = registry.create(
            "openl3", weights_path="random", input_repr="mel128", hop_size=hop, batch_size=bs
        )
        with pytest.warns(openl3.OpenL3Warning):  # 0.8 s: shorter than a window
            outs.append(ex.extract(audio, 48000))
    assert np.array_equal(outs[0].data, outs[1].data)
    assert outs[0].data.shape == (pre.num_windows(audio.shape[0], 2420, True), 512)
    np.testing.assert_array_equal(outs[0].timestamps, np.arange(len(outs[0].data)) * hop)


def test_short_silent_and_empty_audio():
    ex = registry.create("openl3", weights_path="random", input_repr="mel128", embedding_size=6144)
    with pytest.warns(openl3.OpenL3Warning, match="shorter than the 1 s window"):
        f = ex.extract(np.full(48, 0.1, np.float32), 48000)
    assert f.data.shape == (1, 6144) and np.array_equal(f.timestamps, [0.0])
    f = ex.extract(np.zeros(48000, np.float32), 48000)
    # 1 s plus half a window of centring at hop 0.1 s: 1 + 24000 / 4800 windows.
    assert np.isfinite(f.data).all() and f.data.shape == (6, 6144)
    with pytest.raises(ValueError, match="empty"):
        ex.extract(np.zeros(0, np.float32), 48000)
    with pytest.raises(openl3.OpenL3Error, match="empty"):
        openl3.get_audio_embedding(np.zeros(0), 44100, model=_random_api_model())


def test_parameters_are_validated():
    with pytest.raises(ConfigError, match="hop_size"):
        registry.create("openl3", hop_size=0.0)
    with pytest.raises(ConfigError, match="hop_size"):
        registry.create("openl3", hop_size=1e-6)  # less than one sample
    with pytest.raises(ConfigError, match="input_repr"):
        registry.create("openl3", input_repr="mel64")
    with pytest.raises(ConfigError, match="resampler"):
        registry.create("openl3", resampler="kaiser_fast")
    ex = registry.create("openl3", hop_size=1)  # YAML int
    assert ex.config["hop_size"] == 1.0 and ex.resample_method == "kaiser_best"
    assert registry.create("openl3", resampler="soxr_hq").resample_method == "soxr_hq"
    spec = ex.output_spec()
    assert spec.axes == ("time", "dim") and spec.hop_seconds == 1.0 and spec.first_frame_seconds == 0.0


# ---------------------------------------------------------------------------
# openl3-compatible API
# ---------------------------------------------------------------------------
_API_MODEL: list = []


def _random_api_model(frontend: str = "kapre") -> openl3.models.AudioEmbeddingModel:
    if not _API_MODEL:
        _API_MODEL.append(openl3.models.load_audio_embedding_model("mel128", "music", 512,
                                                                   weights_path="random"))
    m = _API_MODEL[0]
    return openl3.models.AudioEmbeddingModel(m.input_repr, m.content_type, m.embedding_size, frontend,
                                             m.loaded)


def test_api_lists_in_lists_out_and_matches_the_plugin():
    model = _random_api_model()
    rng = np.random.default_rng(3)
    a = rng.normal(0, 0.1, 30000)  # float64, 0.625 s at 48 kHz
    b = rng.normal(0, 0.1, 22050)  # 0.5 s at 44.1 kHz
    with pytest.warns(openl3.OpenL3Warning):
        embs, tss = openl3.get_audio_embedding([a, b], [48000, 44100], model=model, hop_size=0.25,
                                               batch_size=2)
    assert isinstance(embs, list) and len(embs) == len(tss) == 2
    assert embs[0].shape == (pre.num_windows(30000, 12000, True), 512)
    np.testing.assert_array_equal(tss[0], np.arange(embs[0].shape[0]) * 0.25)
    with pytest.warns(openl3.OpenL3Warning):
        single, ts = openl3.get_audio_embedding(a, 48000, model=model, hop_size=0.25, batch_size=7)
    assert np.array_equal(single, embs[0]) and isinstance(single, np.ndarray)
    ex = registry.create("openl3", weights_path="random", input_repr="mel128", hop_size=0.25)
    with pytest.warns(openl3.OpenL3Warning):
        assert np.array_equal(ex.extract(a.astype(np.float32), 48000).data, single)
    # preprocess_audio: windows for kapre, (N, F, T, 1) spectrograms with input_repr.
    with pytest.warns(openl3.OpenL3Warning):
        x = openl3.preprocess_audio(a, 48000, hop_size=0.25)
    assert x.shape == (embs[0].shape[0], 1, 48000)
    np.testing.assert_array_equal(model.predict(x), single)
    with pytest.warns(openl3.OpenL3Warning):
        s = openl3.preprocess_audio([a], [48000], hop_size=0.25, input_repr="mel128")
    assert isinstance(s, list) and s[0].shape == (x.shape[0], 128, 199, 1)


def test_api_errors_like_openl3():
    model = _random_api_model()
    a = np.full(1000, 0.1)
    with pytest.raises(openl3.OpenL3Error, match="frontend"):
        openl3.get_audio_embedding(a, 48000, model=model, frontend="tf")
    with pytest.raises(openl3.OpenL3Error, match="input_repr for a librosa"):
        openl3.get_audio_embedding(a, 48000, frontend="librosa", weights_path="random")
    with pytest.raises(openl3.OpenL3Error, match="Mismatch"):
        openl3.get_audio_embedding([a, a], [48000], model=model)
    with pytest.raises(openl3.OpenL3Error, match="hop size"):
        openl3.get_audio_embedding(a, 48000, model=model, hop_size=0)
    with pytest.raises(openl3.OpenL3Error, match="loaded for frontend='kapre'"):
        openl3.get_audio_embedding(a, 48000, model=model, frontend="librosa", input_repr="mel128")
    with pytest.raises(openl3.OpenL3Error, match="Invalid model"):
        openl3.get_audio_embedding(a, 48000, model=object())


def test_process_audio_file_outputs_suffix_and_overwrite(tmp_path, capsys):
    import soundfile as sf

    model = _random_api_model()
    rng = np.random.default_rng(4)
    paths = []
    for name, n in (("one.wav", 20000), ("two.flac", 30000)):
        p = tmp_path / name
        sf.write(p, rng.normal(0, 0.1, (n, 2)), 32000)  # stereo: averaged, as openl3 does
        paths.append(str(p))
    out = tmp_path / "out"
    out.mkdir()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", openl3.OpenL3Warning)
        openl3.process_audio_file(
            paths, output_dir=str(out), suffix="x", model=model, hop_size=0.5, batch_size=8, verbose=False
        )
        got = np.load(out / "one_x.npz")
        assert sorted(got.files) == ["embedding", "timestamps"]
        audio, sr = sf.read(paths[0])
        emb, ts = openl3.get_audio_embedding(audio, sr, model=model, hop_size=0.5)
        np.testing.assert_array_equal(got["embedding"], emb)
        np.testing.assert_array_equal(got["timestamps"], ts)
        assert (out / "two_x.npz").is_file()
        # Without output_dir the file lands beside the input; existing outputs are kept unless overwrite.
        openl3.process_audio_file(paths[0], model=model, hop_size=0.5, verbose=False)
        assert (tmp_path / "one.npz").is_file()
        np.savez(tmp_path / "one.npz", embedding=np.zeros(1), timestamps=np.zeros(1))
        openl3.process_audio_file(paths[0], model=model, hop_size=0.5, verbose=False)
        assert "skipping" in capsys.readouterr().out
        assert np.load(tmp_path / "one.npz")["embedding"].shape == (1,)
        openl3.process_audio_file(paths[0], model=model, hop_size=0.5, overwrite=True, verbose=False)
        assert np.load(tmp_path / "one.npz")["embedding"].shape == emb.shape
    with pytest.raises(openl3.OpenL3Error, match="could not be found"):
        openl3.process_audio_file(str(tmp_path / "missing.wav"), model=model)
