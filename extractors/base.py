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
    runs on audio files and on the sound track of videos; a plugin whose network runs on
    fixed-size items (windows, clips, frames) may also give `audio_items(n_samples)`,
    `prepare_audio(audio)`, `forward_items(items)` and `finish_audio(outputs, state)`: the
    driver then packs the items of consecutive short files into one network call;
  - image: `extract_image(rgb)` on (H, W, 3) uint8 -> `Features`; runs on
    images, and on video frames where `takes_video_frames()` says so, through
    `frame_consumer(info)`; a plugin that batches images across files also gives
    `prepare_image(rgb)` (the per-image front-end: a small network input, errors for an
    image it refuses) and `extract_images(prepared)` (one list of them -> one `Features`
    each, at most `batch_size` per call; the driver packs consecutive image files);
  - video: `frame_consumer(info)` only;
  a frame consumer gets every decoded chunk of the video (`media.FrameChunk`:
  frames with presentation times; it selects and converts what it needs) through
  `add(chunk)` and returns the file's `Features` from `finish()`; a plugin that reads
  videos may also give the consumer `close()` and `finish_with(outputs)` and itself
  `forward_items`: the driver then packs the last items of consecutive videos into shared calls;
- `weight_files()` / `fetch_weights()` for `--download_only` (records and resolver:
  `weights.py`);
- `provenance()` -> dict for the metadata.

A plugin imports nothing from the run loop; `media` types are only passed in.

Plugins that run a torch network subclass `TorchExtractor` (below): it owns device
resolution, the `precision` parameter, autocast, batching and checkpoint loading, so
such a plugin is its network, its front-end and its weights record.

`weights_path="random"` asks a plugin with a network for architecture-identical
seeded random weights (benchmarks and shape tests only, never a correctness
claim); its provenance then says `"weights": "random"`.
"""

from __future__ import annotations

import contextlib
import threading
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, ClassVar, Iterator, Protocol

import numpy as np

from embedkit import weights
from embedkit.weights import WeightFile, WeightsError  # noqa: F401  (their old home; plugins import them here)


class ConfigError(ValueError):
    """A configuration mistake: stops the run before any work starts."""


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
    aliases: dict[str, Any] | None = None  # other spellings -> the value they mean (recorded as it)

    def validate(self, plugin: str, name: str, value: Any) -> Any:
        types = self.types if isinstance(self.types, tuple) else (self.types,)
        if self.aliases and isinstance(value, str):
            value = self.aliases.get(value, value)
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


def pooling_param(rows: str, shape: str) -> Param:
    """The `pooling` parameter of a plugin whose output has one row per `rows` (e.g. "clip"):
    "none" keeps the rows (`shape`, with timestamps), "mean" averages them. One wording for all."""
    return Param("none", str, f"none: one row per {rows}, {shape} with timestamps; mean: their average",
                 choices=("none", "mean"))


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

    @classmethod
    def params_as_recorded(cls, recorded: dict[str, Any] | None) -> dict[str, Any] | None:
        """Parameters a features.json (or an index) recorded, with the ones this plugin gained
        since filled in at their defaults: a parameter added later (e.g. `precision` for crepe and
        clmr) defaults to what the plugin did before it existed, so older outputs stay current."""
        if not isinstance(recorded, dict):
            return recorded
        return {**{k: p.default for k, p in cls.params.items() if k not in recorded}, **recorded}

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
        return self._extract(self.checked_audio(audio, sr))

    def checked_audio(self, audio: np.ndarray, sr: int) -> np.ndarray:
        """`audio` as the plugin takes it (mono, `input_dtype`, at `sample_rate`), or ValueError."""
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
        return audio

    def _extract(self, audio: np.ndarray) -> Features:
        """Audio plugins: features of a mono `input_dtype` signal already at `sample_rate`."""
        raise NotImplementedError(f"{self.name} takes {self.modality}, not audio")

    def extract_image(self, rgb: np.ndarray) -> Features:
        """Image plugins: features of one (H, W, 3) uint8 RGB image."""
        raise NotImplementedError(f"{self.name} takes {self.modality}, not images")

    # Images across files: the driver prepares each image as it arrives (the decoded pixels are
    # then freed: a batch waiting for its last files holds network inputs only) and embeds up to
    # `batch_size` prepared images of consecutive files in one `extract_images` call.
    def prepare_image(self, rgb: np.ndarray) -> Any:
        """Image plugins that batch across files: one image's network input (raise for an image
        the plugin refuses: that file fails alone, before any batch)."""
        return rgb

    def extract_images(self, prepared: list[Any]) -> list[Features]:
        """Features of each prepared image, in order (`prepare_image`'s results); default: one
        `extract_image` per image. An override makes one forward pass of them all."""
        return [self.extract_image(x) for x in prepared]

    @property
    def batches_images(self) -> bool:
        """Whether `extract_images` runs one forward pass for several images (it is overridden)."""
        return type(self).extract_images is not Extractor.extract_images

    # Short audio across files: a plugin whose network runs on fixed-size pieces of the signal
    # (windows, clips, frames: "items") splits its `_extract` in three, and the driver packs the
    # items of consecutive short files (fewer items than one network call) into shared calls:
    # `prepare_audio` (the front-end), `forward_items` (the network, on the items of several
    # files), `finish_audio` (one file's Features from its rows). Longer files keep `_extract`.
    def audio_items(self, n_samples: int) -> int | None:
        """Audio plugins that pack short files: how many network items a signal of `n_samples`
        samples (at `sample_rate`) makes; None: this plugin does not pack."""
        return None

    def packs_audio(self, n_samples: int) -> bool:
        """Whether a signal of `n_samples` samples is short: fewer items than one network call."""
        items = self.audio_items(n_samples)
        return items is not None and items < self.call_size()

    def prepare_audio(self, audio: np.ndarray) -> tuple[np.ndarray, Any]:
        """A short signal (as `_extract` takes it) -> its items (N, ...) float32, as the network
        takes them, and what `finish_audio` needs (raise for a signal the plugin refuses)."""
        raise NotImplementedError(f"{self.name} does not pack audio across files")

    def forward_items(self, items: np.ndarray) -> np.ndarray:
        """The network on (N, ...) items of one or several files -> (N, ...) float32 outputs."""
        raise NotImplementedError(f"{self.name} does not pack items across files")

    def finish_audio(self, outputs: np.ndarray, state: Any) -> Features:
        """One file's Features from its rows of `forward_items` (and `prepare_audio`'s state)."""
        raise NotImplementedError(f"{self.name} does not pack audio across files")

    @property
    def batches_audio(self) -> bool:
        """Whether the plugin packs short audio files across files (`audio_items` is overridden)."""
        return type(self).audio_items is not Extractor.audio_items

    # Videos across files: a plugin that reads videos (a video plugin, or an image plugin on video
    # frames) whose frame consumer also gives `close()` (the end of the video: its items not yet
    # run, fewer than one call) and `finish_with(outputs)` (its Features once they ran), with
    # `forward_items` here, has those last items packed with the next videos' into shared calls.
    @property
    def batches_video(self) -> bool:
        """Whether the plugin packs videos' last items across files (`forward_items` is overridden)."""
        reads_videos = self.modality == "video" or (self.modality == "image" and self.takes_video_frames())
        return reads_videos and type(self).forward_items is not Extractor.forward_items

    def call_size(self) -> int:
        """Items per network call (`TorchExtractor`: `cpu_call_size` on the CPU where set)."""
        return self.batch_size

    # network calls made so far (`TorchExtractor.run_batches` counts them): the run's report
    # gives each model's forward passes and items per forward from them
    forward_passes: int = 0
    items_forwarded: int = 0

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


# -- the torch plugins' shared policy ------------------------------------------------------------
_torch = lazy_import("torch")

PRECISIONS = ("auto", "float32", "float16", "bfloat16")
PRECISION = Param(
    "auto", str,
    "network arithmetic: auto = float16 autocast on CUDA, float32 on the CPU; float32 = no autocast "
    "(cuDNN may still use TF32 where torch's flags allow it); float16 = autocast to float16 (CUDA "
    "only); bfloat16 (or bf16) = autocast to bfloat16 on CUDA, and on CPUs with AVX512-BF16 or AMX "
    "for the convolutional networks (never the default there)",
    choices=PRECISIONS, aliases={"bf16": "bfloat16"},
)
# Device type -> precision -> autocast dtype (None: no autocast, float32 throughout). A precision
# missing from the device's row is a configuration error, raised when the plugin is created. The
# "cpu" row's bfloat16 is further limited by `autocast_dtype`: plugins that opt in
# (`TorchExtractor.cpu_bfloat16`), on CPUs with bfloat16 units (`cpu_bfloat16_units`).
AUTOCAST: dict[str, dict[str, str | None]] = {
    "cuda": {"auto": "float16", "float32": None, "float16": "float16", "bfloat16": "bfloat16"},
    "cpu": {"auto": None, "float32": None, "bfloat16": "bfloat16"},
}
RANDOM_SEED = 0  # of every torch plugin's `weights_path="random"` networks


def cpu_bfloat16_units(capabilities: dict[str, Any] | None = None) -> tuple[str, ...]:
    """The bfloat16 units of this CPU ("AMX", "AVX512-BF16"; empty where it has neither):
    oneDNN runs bfloat16 convolutions and matrix products natively on these; without them it
    emulates bfloat16 on AVX-512 (slower than float32) or refuses. `capabilities`: cpuinfo's
    flags as `torch.cpu.get_capabilities()` gives them (default: this CPU's)."""
    if capabilities is None:
        try:
            capabilities = _torch.cpu.get_capabilities()
        except Exception:  # an older torch or a platform cpuinfo does not know: say none
            capabilities = {}
    units = (("amx_bf16", "AMX"), ("avx512_bf16", "AVX512-BF16"))
    return tuple(name for flag, name in units if capabilities.get(flag))


def autocast_dtype(plugin: str, precision: str, device: str, cpu_bfloat16: bool = False,
                   cpu_units: tuple[str, ...] | None = None) -> str | None:
    """The autocast dtype ("float16", "bfloat16") of `precision` on resolved `device`, None for
    float32 throughout; ConfigError where the device cannot run it (see AUTOCAST).

    bfloat16 on the CPU needs a plugin that offers it (`cpu_bfloat16`: the convolutional
    networks, whose bfloat16 outputs are measured in BENCHMARKS.md) and a CPU with bfloat16
    units (`cpu_units`, default `cpu_bfloat16_units()`)."""
    precision = PRECISION.aliases.get(precision, precision)
    kind = device.split(":", 1)[0]
    row = AUTOCAST.get(kind, AUTOCAST["cpu"])
    if precision not in row:
        raise ConfigError(f"{plugin}: precision {precision} needs a CUDA device (running on {device}); "
                          f"use precision: {' or '.join(row)} there")
    if kind != "cuda" and row[precision] == "bfloat16":
        if not cpu_bfloat16:
            raise ConfigError(f"{plugin}: precision bfloat16 on the CPU is offered for the convolutional "
                              "networks only (its outputs are not measured for this model); use float32, "
                              "or bfloat16 on a CUDA device")
        units = cpu_bfloat16_units() if cpu_units is None else cpu_units
        if not units:
            raise ConfigError(f"{plugin}: precision bfloat16 on the CPU needs AVX512-BF16 or AMX "
                              "(this CPU has neither); use float32")
    return row[precision]


def autocast_context(device: str, dtype: str | None) -> Any:
    """Autocast to `dtype` ("float16", "bfloat16"; from `autocast_dtype`) on resolved `device`; a
    no-op for None (float32 throughout)."""
    if dtype is None:
        return contextlib.nullcontext()
    return _torch.autocast(device.split(":", 1)[0], dtype=getattr(_torch, dtype))


@contextlib.contextmanager
def inference_context(device: str, dtype: str | None) -> Iterator[None]:
    """torch.inference_mode with autocast to `dtype`: where every torch plugin's forward pass runs
    (`TorchExtractor.inference`), and the compatibility APIs' that run a plugin's network."""
    with _torch.inference_mode(), autocast_context(device, dtype):
        yield


@dataclass
class LoadedNetwork:
    """What `TorchExtractor._load` returns: the network on the plugin's device, in eval mode, and
    where its weights came from ("weights", "weights_sha256", ...: merged into the provenance)."""

    net: Any
    source: dict[str, Any] = field(default_factory=dict)


class TorchExtractor(Extractor):
    """Base of the plugins that run a torch network: the policy they share, written once.

    A plugin on it keeps what differs: its network (a `TorchModule`), its front-end, its weights
    record (`weights.WeightFile`) and how a checkpoint file becomes the network. The base owns:

    - device: resolved once, when the plugin is created ("auto" -> "cuda" where there is one,
      else "cpu"); `self.device` is the resolved name and is in `model_key`, so "auto" and "cuda"
      share one loaded network;
    - precision: the `precision` parameter, added to every subclass's `params` with one meaning
      (`PRECISION`; `self.autocast_dtype` is what it means on this device, checked at creation;
      bfloat16 on the CPU only where the plugin sets `cpu_bfloat16 = True`, see `autocast_dtype`);
    - autocast: `inference()` = torch.inference_mode + autocast to `autocast_dtype`;
    - batching: `run_batches(inputs, forward)` runs `forward` on `call_size()` items at a time:
      `batch_size`, on the CPU `cpu_call_size` where the plugin sets it (1: oneDNN and MKL pick
      kernels by batch shape, so one item per call makes outputs independent of batch_size);
      `pad_calls` zero-pads the last call so the network always sees one shape;
    - loading: `_load` builds `random_network()` (`weights_path="random"`, seed RANDOM_SEED) or
      `network_from(checkpoint_path())`, the path found by `weights.resolve` from
      `weights_record()`, and records the weights in the provenance (with device and autocast).

    Subclasses set `network_params` (the parameters that change the loaded network; the others
    share one copy) and override the hooks they need; `_load` itself where loading is not one
    checkpoint file (MERT's hub snapshots).
    """

    params: ClassVar[dict[str, Param]] = {"precision": PRECISION}
    network_params: ClassVar[tuple[str, ...]] = ()  # the parameters that change the loaded network
    weights_file: ClassVar[WeightFile | None] = None  # the checkpoint's record (`weights_record()`)
    network_class: ClassVar[type | None] = None  # the architecture (`new_network()`)
    random_fan: ClassVar[str] = "out"  # He-normal fan of `random_network()`'s convolutions
    about: ClassVar[dict[str, str]] = {}  # what the network and its front-end are, for the provenance
    cpu_call_size: ClassVar[int | None] = None  # items per network call on the CPU (None: batch_size)
    pad_calls: ClassVar[bool] = False  # zero-pad the last call to a full one
    cpu_bfloat16: ClassVar[bool] = False  # offers precision bfloat16 on the CPU (measured, BENCHMARKS.md)

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        own = cls.__dict__.get("params")
        if own is not None:
            if own.get("precision", PRECISION) is not PRECISION:
                raise TypeError(f"{cls.__name__}.params: `precision` is TorchExtractor's (one meaning "
                                "for every torch plugin); remove it")
            cls.params = {**own, "precision": PRECISION}
        if "weights_license" not in cls.__dict__ and cls.weights_file is not None:
            cls.weights_license = cls.weights_file.license

    def __init__(self, device: str = "cpu", *args: Any, **kwargs: Any) -> None:
        """As `Extractor(device, weights_path, batch_size, **params)`, with `device` resolved here."""
        super().__init__(torch_device(device), *args, **kwargs)
        self.autocast_dtype: str | None = autocast_dtype(self.name, self.config["precision"], self.device,
                                                         self.cpu_bfloat16)

    # -- loading ----------------------------------------------------------------------------------
    def model_key(self) -> tuple:
        return (self.name, self.device, self.weights_path, *(self.config[p] for p in self.network_params))

    def weights_record(self) -> WeightFile | None:
        """The record of the checkpoint this configuration loads: `weights_file` (override where
        it depends on the parameters, e.g. CREPE's capacity)."""
        return self.weights_file

    def weight_files(self) -> list[WeightFile]:
        record = None if self.random_weights else self.weights_record()
        return [record] if record is not None else []

    def checkpoint_path(self) -> Path:
        """The checkpoint file: `weights:` path, cache, other known places, or a download."""
        return weights.resolve(self.name, self.weights_record(), self.weights_path)

    def new_network(self, state: dict | None = None) -> Any:
        """The architecture with torch's default initial values: `network_class()`. `state` is the
        checkpoint about to be loaded, for what it decides (e.g. a fine-tuned classifier's size)."""
        if self.network_class is None:
            raise NotImplementedError(f"{self.name}: set network_class or override new_network")
        return self.network_class()

    def random_network(self) -> Any:
        """The network with seeded random weights (RANDOM_SEED; benchmarks and shape tests only):
        `weights.random_torch_state` (He-normal convolutions, perturbed BatchNorm) by default."""
        net = self.new_network()
        net.load_state_dict(weights.random_torch_state(net, RANDOM_SEED, self.random_fan), strict=True)
        return net

    def network_from(self, path: Path) -> Any:
        """The network with the checkpoint at `path` loaded; WeightsError saying what is wrong.

        Default: a state dict as torch.save writes it (torchvision's format; also under "state_dict"
        or "model", "module." prefixes dropped), read with torch.load(weights_only=True) and loaded
        strictly into `new_network(state)`. Plugins with other formats override it."""
        record = self.weights_record()
        how = record.how_to_get if record else ""
        state = weights.read_torch_state_dict(path, self.name, how)
        return weights.load_strict(self.new_network(state), state, self.name, str(path), how)

    def place(self, net: Any) -> Any:
        """`net` in eval mode on the device (override for a memory format)."""
        return net.eval().to(self.device)

    def weights_source(self, path: Path) -> dict[str, Any]:
        """Provenance of the loaded file besides its path and sha256: the official URL where it
        is the record's file, else "local file"."""
        record = self.weights_record()
        official = record is not None and record.url and path.name in record.names
        return {"weights_source": record.url if official else "local file"}

    def _load(self) -> LoadedNetwork:
        if self.random_weights:
            return LoadedNetwork(self.place(self.random_network()),
                                 {"weights": "random", "weights_seed": RANDOM_SEED})
        path = self.checkpoint_path()
        net = self.network_from(path)
        source = {"weights": str(path), "weights_sha256": weights.sha256sum(path),
                  **self.weights_source(path)}
        return LoadedNetwork(self.place(net), source)

    # -- running ----------------------------------------------------------------------------------
    def autocast(self) -> Any:
        """Autocast to `autocast_dtype` on this device; a no-op for float32."""
        return autocast_context(self.device, self.autocast_dtype)

    def inference(self) -> Any:
        """torch.inference_mode with the precision's autocast: where every forward pass runs."""
        return inference_context(self.device, self.autocast_dtype)

    def call_size(self) -> int:
        """Items per network call: on the CPU `cpu_call_size` where set (at most `batch_size`: 1
        stays one item per call), else `batch_size`."""
        if self.cpu_call_size and not self.device.startswith("cuda"):
            return max(1, min(self.cpu_call_size, self.batch_size))
        return self.batch_size

    def run_batches(self, inputs: np.ndarray, forward: Callable[[Any], Any],
                    empty_shape: tuple[int, ...] = ()) -> np.ndarray:
        """`forward` on `inputs` (N, ...) float32, `call_size()` items per call, under `inference()`:
        (N, ...) float32 outputs (forward's, moved to the CPU). The inputs go to the device as they
        are; the last call is zero-padded to full size where `pad_calls`. N = 0 gives
        (0, *empty_shape)."""
        size = self.call_size()
        outs = []
        with self.inference():
            for start in range(0, inputs.shape[0], size):
                x = _torch.from_numpy(np.ascontiguousarray(inputs[start:start + size]))
                n = x.shape[0]
                if self.pad_calls and n < size:
                    x = _torch.cat([x, x.new_zeros((size - n, *x.shape[1:]))])
                outs.append(forward(x.to(self.device))[:n].float().cpu().numpy())
                self.forward_passes += 1
                self.items_forwarded += n
        if not outs:
            return np.zeros((0, *empty_shape), np.float32)
        return outs[0] if len(outs) == 1 else np.concatenate(outs)

    def provenance(self) -> dict[str, Any]:
        prov = super().provenance()
        prov.update(self.about)
        prov.update(self.load().source)
        prov["device"] = self.device
        prov["autocast"] = self.autocast_dtype or "none (float32)"
        if self.autocast_dtype and not self.device.startswith("cuda"):
            prov["cpu_bfloat16_units"] = list(cpu_bfloat16_units())
        prov["torch"] = _torch.__version__
        return prov
