"""The Extractor interface every model plugin implements.

A plugin knows its network, its weights and its front-end; the driver
(`pipeline.py`) knows files, batching across the corpus, devices, outputs and
reports. A plugin is one module in `extractors/` defining one subclass of
`Extractor` with a unique `name`; `registry.py` finds it on its own.

Contract, in the spirit of the HEAR 2021 API:

- class attributes: `name`, `sample_rate` (Hz the plugin needs), `resampler`
  (how to get there, see `audio_io.RESAMPLERS`), `params` (name -> `Param`),
  `weights_license`;
- `output_spec()` -> `OutputSpec` (axis names, hop, dtype) for the current params;
- `load()` loads the network once per process (cached across instances);
- `extract(audio, sr)` on mono float32 at `sample_rate` -> `Features`;
- `weight_files()` / `fetch_weights()` for `--download_only`;
- `provenance()` -> dict for the metadata.

`weights_path="random"` asks a plugin with a network for architecture-identical
seeded random weights (benchmarks and shape tests only, never a correctness
claim); its provenance then says `"weights": "random"`.
"""

from __future__ import annotations

import threading
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import Any, Callable, ClassVar

import numpy as np


class ConfigError(ValueError):
    """A configuration mistake: stops the run before any work starts."""


class WeightsError(RuntimeError):
    """Weights could not be found or verified; the message says how to supply them."""


@dataclass(frozen=True)
class Param:
    """One plugin parameter: default, accepted type(s) and the allowed values.

    `choices` lists the allowed values; `check` is a predicate for open ranges
    with `allowed` describing it in words (e.g. "a number > 0").
    """

    default: Any
    types: type | tuple[type, ...]
    help: str = ""
    choices: tuple | None = None
    check: Callable[[Any], bool] | None = None
    allowed: str = ""

    def validate(self, plugin: str, name: str, value: Any) -> Any:
        types = self.types if isinstance(self.types, tuple) else (self.types,)
        # YAML gives ints where floats are meant (hop_size: 1); accept them.
        if float in types and isinstance(value, int) and not isinstance(value, bool):
            value = float(value)
        ok_type = isinstance(value, types) and not (
            isinstance(value, bool) and bool not in types
        )
        ok = ok_type and (self.choices is None or value in self.choices)
        ok = ok and (self.check is None or self.check(value))
        if not ok:
            if self.choices is not None:
                allowed = "one of " + ", ".join(repr(c) for c in self.choices)
            else:
                allowed = self.allowed or " or ".join(t.__name__ for t in types)
            raise ConfigError(
                f"{plugin}: parameter {name!r} = {value!r} is invalid; allowed: {allowed}"
            )
        return value


@dataclass(frozen=True)
class OutputSpec:
    """What one output array is.

    axes: names of the array's axes, e.g. ("time", "dim"), ("time",), ("dim",).
    hop_seconds / first_frame_seconds: when there is a "time" axis, frame i sits
    at first_frame_seconds + i * hop_seconds (seconds, frame centre or as the
    plugin documents in `timestamp_note`).
    columns: names of the last axis' entries where they have meaning
    (e.g. CREPE's ("f0_hz", "confidence")).
    extras: names of optional second outputs written beside the main one.
    """

    axes: tuple[str, ...]
    dtype: str = "float32"
    hop_seconds: float | None = None
    first_frame_seconds: float = 0.0
    columns: tuple[str, ...] | None = None
    timestamp_note: str = ""
    extras: tuple[str, ...] = ()

    @property
    def frames_per_second(self) -> float | None:
        return None if not self.hop_seconds else 1.0 / self.hop_seconds

    def to_json(self) -> dict:
        return {
            "axes": list(self.axes),
            "dtype": self.dtype,
            "hop_seconds": self.hop_seconds,
            "frames_per_second": self.frames_per_second,
            "first_frame_seconds": self.first_frame_seconds,
            "columns": list(self.columns) if self.columns else None,
            "timestamps": (
                f"t[i] = {self.first_frame_seconds} + i * {self.hop_seconds} s"
                if self.hop_seconds and "time" in self.axes
                else None
            )
            if not self.timestamp_note
            else self.timestamp_note,
            "extras": list(self.extras),
        }


@dataclass
class Features:
    """What `extract` returns for one file.

    data: the main output array (shape per `OutputSpec.axes`).
    timestamps: (T,) float64 seconds, where there is a time axis, else None.
    extras: optional second outputs by name (e.g. madmom "beats").
    """

    data: np.ndarray
    timestamps: np.ndarray | None = None
    extras: dict[str, np.ndarray] = field(default_factory=dict)


@dataclass(frozen=True)
class WeightFile:
    """One weight file a plugin needs.

    url: official download location (None where the file only comes from a
    package or a local path); sha256: expected digest where known.
    """

    filename: str
    url: str | None = None
    sha256: str | None = None
    how_to_get: str = ""


# Process-wide cache of loaded networks: one load per process however many
# extractor instances or files.
_MODEL_CACHE: dict[tuple, Any] = {}
_MODEL_CACHE_LOCK = threading.Lock()


class Extractor(ABC):
    """Base class of every model plugin (see the module docstring)."""

    name: ClassVar[str]
    sample_rate: ClassVar[int]
    resampler: ClassVar[str] = "soxr_hq"
    params: ClassVar[dict[str, Param]] = {}
    weights_license: ClassVar[str] = "no weights"
    default_batch_size: ClassVar[int] = 64

    def __init__(
        self,
        device: str = "cpu",
        weights_path: str | None = None,
        batch_size: int | None = None,
        **params: Any,
    ) -> None:
        self.config = self.validate_params(params)
        self.device = device
        self.weights_path = weights_path
        if batch_size is not None and (not isinstance(batch_size, int) or batch_size < 1):
            raise ConfigError(f"{self.name}: batch_size must be a positive integer, got {batch_size!r}")
        self.batch_size = batch_size or self.default_batch_size

    # -- parameters -------------------------------------------------------
    @classmethod
    def validate_params(cls, params: dict[str, Any]) -> dict[str, Any]:
        """Defaults filled in, every value checked; unknown names are errors."""
        unknown = sorted(set(params) - set(cls.params))
        if unknown:
            known = ", ".join(sorted(cls.params)) or "(none)"
            raise ConfigError(
                f"{cls.name}: unknown parameter(s) {', '.join(map(repr, unknown))}; "
                f"known parameters: {known}"
            )
        out = {}
        for key, spec in cls.params.items():
            value = params.get(key, spec.default)
            out[key] = spec.validate(cls.name, key, value)
        cls.check_combination(out)
        return out

    @classmethod
    def check_combination(cls, config: dict[str, Any]) -> None:
        """Override to reject invalid combinations of valid values (raise ConfigError)."""

    @property
    def resample_method(self) -> str:
        """Resampler for this instance; plugins with a `resampler` param override it."""
        return self.config.get("resampler", self.resampler)

    # -- model ------------------------------------------------------------
    def model_key(self) -> tuple:
        """What identifies the loaded network; override to share it across params."""
        return (self.name, self.device, self.weights_path, tuple(sorted(self.config.items())))

    def load(self) -> Any:
        """Load the network once per process and return it."""
        key = self.model_key()
        with _MODEL_CACHE_LOCK:
            if key not in _MODEL_CACHE:
                _MODEL_CACHE[key] = self._load()
            return _MODEL_CACHE[key]

    @abstractmethod
    def _load(self) -> Any:
        """Build the network and load weights (raise WeightsError when missing)."""

    def weight_files(self) -> list[WeightFile]:
        """Weight files this configuration needs (empty for weight-free plugins)."""
        return []

    @property
    def random_weights(self) -> bool:
        return self.weights_path == "random"

    def fetch_weights(self) -> None:
        """Make the weights available locally (download into the cache if needed)."""
        self._load()

    # -- extraction -------------------------------------------------------
    @abstractmethod
    def output_spec(self) -> OutputSpec:
        """Axis names, hop and dtype of the output under the current params."""

    def extract(self, audio: np.ndarray, sr: int) -> Features:
        """Features of one mono float32 signal at `self.sample_rate` Hz."""
        if sr != self.sample_rate:
            raise ValueError(
                f"{self.name} needs audio at {self.sample_rate} Hz, got {sr} Hz; "
                "resample first (audio_io.resample)"
            )
        audio = np.asarray(audio)
        if audio.ndim != 1:
            raise ValueError(f"{self.name} needs mono audio (1-D), got shape {audio.shape}")
        if audio.dtype != np.float32:
            audio = audio.astype(np.float32)
        return self._extract(audio)

    @abstractmethod
    def _extract(self, audio: np.ndarray) -> Features:
        """Features of a mono float32 signal already at `sample_rate`."""

    def provenance(self) -> dict[str, Any]:
        """Parameters, weights source and library versions; extend in plugins.

        Convention: plugins with weights add "weights" (where they came from) and
        "weights_sha256" (digest of the file loaded) at the top level.
        """
        return {"params": dict(self.config), "weights_license": self.weights_license}


def torch_device(device: str) -> str:
    """Resolve 'auto' to 'cuda' when available, else 'cpu'."""
    if device != "auto":
        return device
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"
