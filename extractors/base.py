"""The Extractor interface every model plugin implements.

A plugin knows its network, its weights and its front-end; the driver
(`pipeline.py`) knows files, batching across the corpus, devices, outputs and
reports. A plugin is one module in `extractors/` defining one subclass of
`Extractor` with a unique `name`; `registry.py` finds it on its own.

Contract, in the spirit of the HEAR 2021 API:

- class attributes: `name`, `modality` (the input it takes: "audio", "image" or
  "video"), `params` (name -> `Param`), `weights_license`; audio plugins add
  `sample_rate` (Hz the plugin needs), `resampler` (how to get there, see
  `audio_io.RESAMPLERS`) and `resample_precision` (the arithmetic of resampy's
  filters, "float32" or "float64": what the plugin's reference resamples in, e.g.
  "float64" for openl3, which reads files as float64; the driver computes it block
  by block and hands float32, or float64 where the `input_dtype` property says so);
- `output_spec(kind)` -> `OutputSpec` (axis names, hop, dtype) for the current
  params and the kind of file ("audio", "video", "image");
- `load()` loads the network once per process (cached across instances);
- the input, by modality:
  - audio: `extract(audio, sr)` on mono float32 (or `input_dtype`) at `sample_rate` -> `Features`;
    runs on audio files and on the sound track of videos;
  - image: `extract_image(rgb)` on (H, W, 3) uint8 -> `Features`; runs on
    images, and on video frames where `takes_video_frames()` says so, through
    `frame_consumer(info)`;
  - video: `frame_consumer(info)` only;
  a frame consumer gets every decoded chunk of the video (`media.FrameChunk`:
  frames with presentation times; it selects and converts what it needs) through
  `add(chunk)` and returns the file's `Features` from `finish()`;
- `weight_files()` / `fetch_weights()` for `--download_only`;
- `provenance()` -> dict for the metadata.

A plugin imports nothing from the run loop; `media` types are only passed in.

`weights_path="random"` asks a plugin with a network for architecture-identical
seeded random weights (benchmarks and shape tests only, never a correctness
claim); its provenance then says `"weights": "random"`.
"""

from __future__ import annotations

import threading
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import Any, Callable, ClassVar, Protocol

import numpy as np


class ConfigError(ValueError):
    """A configuration mistake: stops the run before any work starts."""


class WeightsError(RuntimeError):
    """Weights could not be found or verified; the message says how to supply them."""


class SkipFile(ValueError):
    """A plugin's documented choice to make nothing of this file (e.g. a video shorter than one clip).

    The run records it as skipped with the message as a note, not as a failure.
    """


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
    timestamps_file: the time axis is irregular (video frames): each file's
    timestamps (T,) float64 seconds are written beside the array, in the
    `<model>.timestamps/` folder, instead of a formula.
    """

    axes: tuple[str, ...]
    dtype: str = "float32"
    hop_seconds: float | None = None
    first_frame_seconds: float = 0.0
    columns: tuple[str, ...] | None = None
    timestamp_note: str = ""
    extras: tuple[str, ...] = ()
    timestamps_file: bool = False

    @property
    def extra_outputs(self) -> tuple[str, ...]:
        """Every second output written beside the main one (extras, then timestamps)."""
        return self.extras + (("timestamps",) if self.timestamps_file else ())

    @property
    def frames_per_second(self) -> float | None:
        return None if not self.hop_seconds else 1.0 / self.hop_seconds

    def to_json(self) -> dict:
        if self.timestamps_file:
            ts = "file: <model>.timestamps/<relative dir>/<stem>.npy, (T,) float64 seconds"
        elif self.timestamp_note:
            ts = self.timestamp_note
        elif self.hop_seconds and "time" in self.axes:
            ts = f"t[i] = {self.first_frame_seconds} + i * {self.hop_seconds} s"
        else:
            ts = None
        return {
            "axes": list(self.axes),
            "dtype": self.dtype,
            "hop_seconds": self.hop_seconds,
            "frames_per_second": self.frames_per_second,
            "first_frame_seconds": self.first_frame_seconds,
            "columns": list(self.columns) if self.columns else None,
            "timestamps": ts,
            "extras": list(self.extra_outputs),
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


class FrameConsumer(Protocol):
    """Takes one video's frames chunk by chunk, gives the file's Features at the end."""

    def add(self, chunk: Any) -> None:
        """One `media.FrameChunk` (frames in order, with presentation times)."""

    def finish(self) -> Features:
        """The file's Features (timestamps in seconds where there is a time axis)."""


# Process-wide cache of loaded networks: one load per process however many
# extractor instances or files.
_MODEL_CACHE: dict[tuple, Any] = {}
_MODEL_CACHE_LOCK = threading.Lock()


class Extractor(ABC):
    """Base class of every model plugin (see the module docstring)."""

    name: ClassVar[str]
    modality: ClassVar[str] = "audio"  # "audio" | "image" | "video"
    sample_rate: ClassVar[int | None] = None  # audio plugins: the rate they need
    resampler: ClassVar[str] = "soxr_hq"
    resample_precision: ClassVar[str] = "float32"  # resampy's arithmetic (audio_io.PRECISIONS)
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

    @property
    def input_dtype(self) -> str:
        """The dtype of the samples `extract` gets: "float32"; a plugin whose reference computes
        on float64 samples (e.g. OpenL3's librosa front-end) overrides it with "float64"."""
        return "float32"

    @property
    def resample_key(self) -> tuple[int | None, str, str, str]:
        """(rate, method, precision, dtype): how the driver brings audio to this plugin
        (`media.Media.audio`)."""
        return (self.sample_rate, self.resample_method, self.resample_precision, self.input_dtype)

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

    # -- which files -------------------------------------------------------
    def takes(self, kind: str) -> bool:
        """Whether this configuration runs on files of `kind` ("audio", "video", "image").

        Audio plugins take audio files and videos' sound tracks; image plugins take
        images, and video frames where `takes_video_frames()`; video plugins take videos.
        """
        if self.modality == "audio":
            return kind in ("audio", "video")
        if self.modality == "image":
            return kind == "image" or (kind == "video" and self.takes_video_frames())
        return kind == "video"

    def takes_video_frames(self) -> bool:
        """Image plugins: whether videos' frames are embedded too (override)."""
        return False

    # -- extraction -------------------------------------------------------
    @abstractmethod
    def output_spec(self, kind: str = "audio") -> OutputSpec:
        """Axis names, hop and dtype of the output for files of `kind` under the current params."""

    def extract(self, audio: np.ndarray, sr: int) -> Features:
        """Features of one mono float32 (`input_dtype`) signal at `self.sample_rate` Hz."""
        if sr != self.sample_rate:
            raise ValueError(
                f"{self.name} needs audio at {self.sample_rate} Hz, got {sr} Hz; "
                "resample first (audio_io.resample)"
            )
        audio = np.asarray(audio)
        if audio.ndim != 1:
            raise ValueError(f"{self.name} needs mono audio (1-D), got shape {audio.shape}")
        if audio.dtype != np.dtype(self.input_dtype):
            audio = audio.astype(self.input_dtype)
        return self._extract(audio)

    def _extract(self, audio: np.ndarray) -> Features:
        """Audio plugins: features of a mono `input_dtype` signal already at `sample_rate`."""
        raise NotImplementedError(f"{self.name} takes {self.modality}, not audio")

    def extract_image(self, rgb: np.ndarray) -> Features:
        """Image plugins: features of one (H, W, 3) uint8 RGB image."""
        raise NotImplementedError(f"{self.name} takes {self.modality}, not images")

    def frame_consumer(self, info: Any) -> FrameConsumer:
        """Video and image plugins: a consumer for one video's frames (`info`: media.VideoInfo)."""
        raise NotImplementedError(f"{self.name} takes {self.modality}, not video frames")

    def provenance(self) -> dict[str, Any]:
        """Parameters, weights source and library versions; extend in plugins.

        Convention: plugins with weights add "weights" (where they came from) and
        "weights_sha256" (digest of the file loaded) at the top level.
        """
        return {"params": dict(self.config), "weights_license": self.weights_license}


# -- torch, imported when a network is built ------------------------------------------------
# Importing torch costs seconds; listing models, checking a config or a melspec run need none
# of it. Plugins name torch through `lazy_import` and base their networks on `TorchModule`.
class lazy_import:
    """A module imported on first attribute access: `torch = lazy_import("torch")` costs nothing
    until `torch.zeros(...)` runs. (Module-level code must not touch it: that would import it.)"""

    def __init__(self, name: str) -> None:
        self._name = name
        self._module = None

    def __getattr__(self, attr: str) -> Any:
        if attr in ("_name", "_module"):  # not set yet (copy/pickle probing a bare instance)
            raise AttributeError(attr)
        if self._module is None:
            import importlib

            self._module = importlib.import_module(self._name)
        return getattr(self._module, attr)

    def __repr__(self) -> str:
        return f"<lazy module {self._name!r}{'' if self._module is None else ' (imported)'}>"


class _TorchModuleMeta(type):
    """Builds each network class on torch.nn.Module the first time one is instantiated."""

    def __call__(cls, *args: Any, **kwargs: Any) -> Any:
        if "_is_torch_class" in cls.__dict__:  # already the nn.Module class
            return super().__call__(*args, **kwargs)
        real = cls.__dict__.get("_torch_class")
        if real is None:
            import torch

            # (cls, nn.Module): cls's methods first, nn.Module's machinery behind them; an
            # instance is an instance of cls too, and super().__init__() reaches nn.Module's.
            real = _TorchModuleMeta(cls.__name__, (cls, torch.nn.Module), {
                "_is_torch_class": True, "__module__": cls.__module__, "__qualname__": cls.__qualname__,
                "__doc__": cls.__doc__})
            type.__setattr__(cls, "_torch_class", real)
        return real(*args, **kwargs)


class TorchModule(metaclass=_TorchModuleMeta):
    """Base class of the plugins' networks, written as torch.nn.Module subclasses are.

    `class Net(TorchModule)` reads and behaves as `class Net(nn.Module)`: instances are
    nn.Module instances (and Net instances); torch is imported when the first one is built.
    """


def torch_device(device: str) -> str:
    """Resolve 'auto' to 'cuda' when available, else 'cpu'.

    Without an NVIDIA driver node there is no CUDA: answer without importing torch
    (seconds at start-up for runs whose models don't use it).
    """
    if device != "auto":
        return device
    import os
    import sys

    if "torch" not in sys.modules and not os.path.exists("/dev/nvidiactl"):
        return "cpu"
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"
