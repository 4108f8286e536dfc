"""`precision: bfloat16` on the CPU: offered by the convolutional networks on CPUs with bfloat16
units (AVX512-BF16 or AMX), refused elsewhere with what to do; recorded in the provenance; close
to float32.

The fidelity here is a sanity check on synthetic input with random networks (cosine to float32
per output row); the measured numbers on the parity material, and the speed-up, are
benchmarks/bf16.py's (BENCHMARKS.md, "bf16 on the CPU").
"""

from __future__ import annotations

import json

import numpy as np
import pytest

import embedkit
from embedkit import registry
from embedkit.extractors.base import ConfigError, TorchExtractor, autocast_dtype, cpu_bfloat16_units
from tests.conftest import tone, write_wav
from tests import test_plugin_contract as contract
from tests.test_plugin_contract import kinds, run

# the contract's fixtures: random networks, fast parameters, offline, one torch thread
isolated, make, model_cache, tiny_mert, video = (contract.isolated, contract.make, contract.model_cache,
                                                 contract.tiny_mert, contract.video)

CONV = {"openl3", "openl3_image", "crepe", "resnet18", "r3d18", "clmr"}
HAS_UNITS = bool(cpu_bfloat16_units())
needs_units = pytest.mark.skipif(not HAS_UNITS, reason="this CPU has neither AVX512-BF16 nor AMX")


def test_the_convolutional_networks_offer_cpu_bfloat16_and_the_others_not():
    torch_plugins = {n for n in registry.available() if issubclass(registry.get(n), TorchExtractor)}
    assert {n for n in torch_plugins if registry.get(n).cpu_bfloat16} == CONV
    assert "mert" in torch_plugins - CONV


def test_cpu_bfloat16_units_read_the_cpus_flags():
    assert cpu_bfloat16_units({"avx512_f": True, "avx512_bf16": True}) == ("AVX512-BF16",)
    assert cpu_bfloat16_units({"amx_bf16": True, "avx512_bf16": True}) == ("AMX", "AVX512-BF16")
    assert cpu_bfloat16_units({"avx512_f": True, "avx512_bf16": False, "avx2": True}) == ()
    assert cpu_bfloat16_units({}) == ()
    # this machine's answer is what its /proc/cpuinfo says, where there is one
    try:
        flags = open("/proc/cpuinfo").read().split()
    except OSError:
        pytest.skip("no /proc/cpuinfo to compare with")
    assert set(cpu_bfloat16_units()) == {n for f, n in (("amx_bf16", "AMX"), ("avx512_bf16", "AVX512-BF16"))
                                         if f in flags}


def test_cpu_bfloat16_needs_the_units_and_a_plugin_that_offers_it():
    assert autocast_dtype("crepe", "bfloat16", "cpu", True, ("AMX",)) == "bfloat16"
    assert autocast_dtype("crepe", "bf16", "cpu", True, ("AVX512-BF16",)) == "bfloat16"
    with pytest.raises(ConfigError, match=r"^crepe: precision bfloat16 on the CPU needs AVX512-BF16 or AMX "
                                          r"\(this CPU has neither\); use float32$"):
        autocast_dtype("crepe", "bfloat16", "cpu", True, ())
    with pytest.raises(ConfigError, match="mert: precision bfloat16 on the CPU is offered for the "
                                          "convolutional networks only"):
        autocast_dtype("mert", "bfloat16", "cpu", False, ("AMX",))
    # never the default, and CUDA's row is untouched (no CPU check there)
    assert autocast_dtype("crepe", "auto", "cpu", True, ("AMX",)) is None
    assert autocast_dtype("crepe", "bfloat16", "cuda:1", True, ()) == "bfloat16"
    assert autocast_dtype("mert", "bf16", "cuda", False, ()) == "bfloat16"
    with pytest.raises(ConfigError, match="precision float16 needs a CUDA device"):
        autocast_dtype("crepe", "float16", "cpu", True, ("AMX",))


def test_bf16_is_recorded_as_bfloat16(make):
    if not HAS_UNITS:
        with pytest.raises(ConfigError, match="needs AVX512-BF16 or AMX"):
            make("crepe", device="cpu", params={"precision": "bf16"})
        return
    ex = make("crepe", device="cpu", params={"precision": "bf16"})
    assert ex.config["precision"] == "bfloat16" and ex.autocast_dtype == "bfloat16"
    with pytest.raises(ConfigError, match="allowed: one of 'auto', 'float32', 'float16', 'bfloat16'"):
        make("crepe", params={"precision": "bfloat"})


def test_mert_refuses_cpu_bfloat16(make):
    for spelling in ("bfloat16", "bf16"):
        with pytest.raises(ConfigError, match="^mert: precision bfloat16 on the CPU is offered for the "
                                              "convolutional networks only"):
            make("mert", device="cpu", params={"precision": spelling})


@needs_units
@pytest.mark.parametrize("name", sorted(CONV))
def test_cpu_bfloat16_is_close_to_float32(name, make, video):
    """Per output row (an embedding; CREPE: a frame's 360 activations), cosine to float32 >= 0.999
    (measured 0.99997 and above here); provenance says bfloat16 and which units ran it."""
    params = {"activations": True} if name == "crepe" else {}
    f32 = make(name, params={**params, "precision": "float32"})
    bf16 = make(name, params={**params, "precision": "bfloat16"})
    kind = kinds(name)[0]
    a, b = run(f32, kind, video), run(bf16, kind, video)
    x, y = (a.extras["activation"], b.extras["activation"]) if name == "crepe" else (a.data, b.data)
    assert x.shape == y.shape and y.dtype == np.float32 and np.isfinite(y).all()
    x, y = x.reshape(-1, x.shape[-1]), y.reshape(-1, y.shape[-1])
    cos = np.sum(x * y, 1) / np.linalg.norm(x, axis=1) / np.linalg.norm(y, axis=1)
    assert cos.min() >= 0.999, cos.min()
    assert not np.array_equal(x, y), "bfloat16 ran as float32"
    prov = bf16.provenance()
    assert prov["autocast"] == "bfloat16" and prov["params"]["precision"] == "bfloat16"
    assert prov["cpu_bfloat16_units"] == list(cpu_bfloat16_units())
    assert f32.provenance()["autocast"] == "none (float32)" and "cpu_bfloat16_units" not in f32.provenance()


@needs_units
def test_a_run_records_the_precision_in_features_json(tmp_path):
    write_wav(tmp_path / "in" / "a.wav", tone(220, 2.0, 16000), 16000)
    models = {"crepe_bf16": {"extractor": "crepe", "capacity": "tiny", "weights": "random",
                             "precision": "bf16"},
              "crepe": {"capacity": "tiny", "weights": "random"}}
    stats = embedkit.run(tmp_path / "in", tmp_path / "out", models=models, device="cpu",
                         log=lambda msg: None)
    assert stats.failures == []
    meta = {m: json.loads((tmp_path / "out" / m / "features.json").read_text()) for m in models}
    assert meta["crepe_bf16"]["params"]["precision"] == "bfloat16"
    assert meta["crepe_bf16"]["provenance"]["autocast"] == "bfloat16"
    assert meta["crepe"]["params"]["precision"] == "auto"
    assert meta["crepe"]["provenance"]["autocast"] == "none (float32)"
    # another precision is another configuration: the folder refuses it rather than mix arrays
    with pytest.raises(ConfigError, match="precision"):
        embedkit.run(tmp_path / "in", tmp_path / "out", device="cpu", log=lambda msg: None,
                     models={"crepe_bf16": {"extractor": "crepe", "capacity": "tiny", "weights": "random"}})
