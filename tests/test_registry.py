"""Registry and the parameter contract."""

import numpy as np
import pytest

from embedkit import registry
from embedkit.extractors.base import ConfigError, Extractor, _MODEL_CACHE


def test_registered_names():
    names = registry.available()
    assert {"madmom", "melspec"} <= set(names)
    assert names == sorted(names)
    for name in names:
        cls = registry.get(name)
        assert issubclass(cls, Extractor) and cls.name == name
        assert cls.modality in ("audio", "image", "video")
        assert (cls.sample_rate or 0) > 0 if cls.modality == "audio" else True


def test_unknown_model_lists_known_ones():
    with pytest.raises(ConfigError) as err:
        registry.get("openl4")
    assert "openl4" in str(err.value) and "melspec" in str(err.value)


def test_unknown_parameter_names_it_and_lists_known():
    with pytest.raises(ConfigError) as err:
        registry.create("melspec", n_mel=64)
    msg = str(err.value)
    assert "'n_mel'" in msg and "n_mels" in msg


@pytest.mark.parametrize("kwargs, needle", [
    ({"pooling": "max"}, "'none', 'mean'"),
    ({"n_mels": 0}, "integer > 0"),
    ({"n_mels": 64.5}, "integer > 0"),
    ({"n_mels": True}, "n_mels"),
])
def test_invalid_values_name_allowed_values(kwargs, needle):
    with pytest.raises(ConfigError) as err:
        registry.create("melspec", **kwargs)
    assert needle in str(err.value) and list(kwargs)[0] in str(err.value)


def test_defaults_and_int_to_float():
    ex = registry.create("melspec", fmin=20)
    assert ex.config["fmin"] == 20.0 and isinstance(ex.config["fmin"], float)
    assert ex.config["n_mels"] == 64


def test_model_loaded_once_per_process():
    calls = []

    class Counting(registry.get("melspec")):
        def _load(self):
            calls.append(1)
            return super()._load()

    _MODEL_CACHE.clear()
    a, b = Counting(), Counting()
    audio = np.zeros(16000, np.float32)
    a.extract(audio, 16000)
    b.extract(audio, 16000)
    a.extract(audio, 16000)
    assert len(calls) == 1


def test_wrong_rate_is_refused():
    with pytest.raises(ValueError, match="16000 Hz"):
        registry.create("melspec").extract(np.zeros(100, np.float32), 44100)
