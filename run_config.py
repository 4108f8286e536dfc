"""Run configuration: YAML file + command-line flags (flags win), validated before any work.

A config file (all keys optional):

    audio_dir: audio_files  # the input folder (input_dir is the same key)
    output_base: output/embeddings
    extensions: [.wav, .flac, .mp3]
    recursive: false
    overwrite: false
    device: auto            # auto | cpu | cuda | cuda:N
    batch_size: null        # default for every model; per model below wins
    prefetch: 2
    decode_workers: null    # decode processes ahead of the models (null: cores beside the models; 0: none)
    resample_on: auto       # resampy filters (openl3, crepe): auto (a CUDA model: its GPU) | cpu | device
    verbose: false
    progress_every: 60      # seconds between progress lines when stderr is not a terminal
    lease_seconds: 300      # a lock whose heartbeat is older than this is taken over
    engine: local           # local | ray (a Ray cluster: pip install -r requirements-ray.txt)
    ray_address: null       # engine ray: null starts a local cluster; auto; ray://host:10001
    ray_actors: null        # engine ray: actors per model (null: one per GPU, or from the CPUs)
    torch_threads: null     # intra-op threads (null: $OMP_NUM_THREADS, else the cores; ray: 1 per actor)
    max_pixels_per_frame: 178956970  # larger images and video frames are refused (memory guard)
    models:                 # a list of names, or a mapping name -> settings
      crepe: {capacity: full, step_size: 10, viterbi: true}
      openl3_env:           # a second configuration of one plugin, in its own folder
        extractor: openl3
        content_type: env
        weights: /models/openl3/   # explicit local weights (file or folder)
        batch_size: 32

Per-model keys `extractor`, `weights`, `batch_size`, `device` are handled here;
every other key is a plugin parameter, validated by the plugin. Every mistake
in a file is reported at once (with "did you mean" for near misses), before any
work starts.
"""

from __future__ import annotations

import difflib
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from embedkit import audio_io, media, registry
from embedkit.extractors.base import ConfigError

TOP_KEYS = {
    "audio_dir": str,
    "input_dir": str,  # the same as audio_dir
    "output_base": str,
    "extensions": list,
    "recursive": bool,
    "skip_existing": bool,
    "overwrite": bool,
    "device": str,
    "batch_size": (int, type(None)),
    "prefetch": int,
    "decode_workers": (int, type(None)),
    "resample_on": str,
    "verbose": bool,
    "progress_every": (int, float),
    "lease_seconds": (int, float),
    "engine": str,
    "ray_address": (str, type(None)),
    "ray_actors": (int, type(None)),
    "torch_threads": (int, type(None)),
    "max_pixels_per_frame": int,
    "models": (list, dict),
}
# Top-level settings copied onto RunConfig as they are (flags override them by the same name).
SETTINGS = tuple(k for k in TOP_KEYS if k not in ("models", "skip_existing", "input_dir"))
MODEL_KEYS = ("extractor", "weights", "batch_size", "device")
ENGINES = ("local", "ray")
_ALIAS = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.-]*$")
_DEVICE = re.compile(r"^(auto|cpu|cuda(:\d+)?|mps)$")


@dataclass
class ModelConfig:
    alias: str
    extractor: str
    params: dict[str, Any] = field(default_factory=dict)
    weights: str | None = None
    batch_size: int | None = None
    device: str | None = None


@dataclass
class RunConfig:
    audio_dir: str = "audio_files"
    output_base: str = "output/embeddings"
    extensions: list[str] = field(default_factory=lambda: list(media.ALL_EXTENSIONS))
    recursive: bool = False
    overwrite: bool = False
    device: str = "auto"
    batch_size: int | None = None
    prefetch: int = 2
    decode_workers: int | None = None
    resample_on: str = "auto"
    verbose: bool = False
    progress_every: float = 60.0
    lease_seconds: float = 300.0
    engine: str = "local"
    ray_address: str | None = None
    ray_actors: int | None = None
    torch_threads: int | None = None
    max_pixels_per_frame: int = media.MAX_PIXELS_PER_FRAME
    models: list[ModelConfig] = field(default_factory=list)


class _Errors:
    """Collects every configuration mistake; `raise_all()` reports them together."""

    def __init__(self) -> None:
        self.lines: list[str] = []

    def add(self, msg: str) -> None:
        if msg not in self.lines:
            self.lines.append(msg)

    def raise_all(self) -> None:
        if len(self.lines) == 1:
            raise ConfigError(self.lines[0])
        if self.lines:
            raise ConfigError(f"{len(self.lines)} problems:\n  " + "\n  ".join(self.lines))


def did_you_mean(word: str, known) -> str:
    """' (did you mean 'n_mels'?)' for a near miss, else ''."""
    close = difflib.get_close_matches(str(word), [str(k) for k in known], n=1, cutoff=0.6)
    return f" (did you mean {close[0]!r}?)" if close else ""


def load_yaml(path: str | os.PathLike) -> dict[str, Any]:
    """Parse a YAML config with yaml.safe_load; errors name the file and line."""
    import yaml

    try:
        text = Path(path).read_text()
    except OSError as exc:
        raise ConfigError(f"cannot read config {path}: {exc.strerror}") from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: invalid YAML: {exc}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: the top level must be a mapping of keys (audio_dir, models, ...)")
    return data


def _type_name(t) -> str:
    ts = t if isinstance(t, tuple) else (t,)
    return " or ".join("null" if x is type(None) else x.__name__ for x in ts)


def parse_models(value: Any, where: str, errors: _Errors | None = None) -> list[ModelConfig]:
    """ModelConfigs from a list of names or a mapping name -> settings; mistakes go to `errors`."""
    own = errors is None
    errors = errors or _Errors()
    if isinstance(value, list):
        bad = [v for v in value if not isinstance(v, str)]
        if bad:
            errors.add(f"{where}: models must be names, got {bad!r}")
        value = {name: {} for name in value if isinstance(name, str)}
    out = []
    for alias, settings in value.items():
        here = f"{where}.models.{alias}" if where != "--models" else f"--models {alias}"
        if not isinstance(alias, str) or not _ALIAS.match(alias):
            errors.add(f"{where}: model name {alias!r} must be letters, digits, '_', '-', '.'")
            continue
        if settings is not None and not isinstance(settings, dict):
            errors.add(f"{here}: expected a mapping of parameters (e.g. {{n_mels: 64}}), got {settings!r}")
            continue
        settings = dict(settings or {})
        extractor = settings.pop("extractor", alias)
        try:
            cls = registry.get(extractor)
        except ConfigError as exc:  # its message names the near miss already ("did you mean")
            errors.add(f"{here}: {exc}")
            continue
        mc = ModelConfig(alias, extractor)
        mc.weights = settings.pop("weights", None)
        mc.batch_size = settings.pop("batch_size", None)
        mc.device = settings.pop("device", None)
        if mc.weights is not None and not isinstance(mc.weights, str):
            errors.add(f"{here}.weights: expected a path string")
        if mc.batch_size is not None and (not isinstance(mc.batch_size, int) or mc.batch_size < 1):
            errors.add(f"{here}.batch_size: expected a positive integer")
        if mc.device is not None and not _DEVICE.match(str(mc.device)):
            errors.add(f"{here}.device: expected auto, cpu, cuda or cuda:N")
        mc.params = _validate_params(cls, settings, here, errors)
        out.append(mc)
    if own:
        errors.raise_all()
    return out


def _validate_params(cls, settings: dict, here: str, errors: _Errors) -> dict[str, Any]:
    """The plugin's own validation, one parameter at a time so every mistake is reported."""
    good = {}
    for key, value in settings.items():
        if key not in cls.params:
            errors.add(f"{here}: {cls.name}: unknown parameter {key!r}"
                       f"{did_you_mean(key, [*cls.params, *MODEL_KEYS])}; "
                       f"known: {', '.join(sorted(cls.params))}")
            continue
        try:
            good[key] = cls.params[key].validate(cls.name, key, value)
        except ConfigError as exc:
            errors.add(f"{here}: {exc}")
    try:
        return cls.validate_params(good)
    except ConfigError as exc:
        errors.add(f"{here}: {exc}")
        return good


def build(file_data: dict[str, Any], where: str, overrides: dict[str, Any]) -> RunConfig:
    """Merge file settings and command-line overrides (None = not given) into a RunConfig.

    Every mistake is collected and raised together as one ConfigError.
    """
    errors = _Errors()
    file_data = dict(file_data)
    if "input_dir" in file_data:
        if "audio_dir" in file_data:
            errors.add(f"{where}: give audio_dir or input_dir, not both")
        file_data["audio_dir"] = file_data.pop("input_dir")
    for key in sorted(set(file_data) - set(TOP_KEYS)):
        errors.add(f"{where}: unknown key {key!r} at the top level{did_you_mean(key, TOP_KEYS)}; "
                   f"known: {', '.join(sorted(TOP_KEYS))}")
    cfg = RunConfig()
    for key, types in TOP_KEYS.items():
        if key not in file_data:
            continue
        value, allowed = file_data[key], types if isinstance(types, tuple) else (types,)
        if not isinstance(value, allowed) or (isinstance(value, bool) and bool not in allowed):
            errors.add(f"{where}: {key} must be {_type_name(types)}, got {value!r}")
            file_data.pop(key)
    for key in SETTINGS:
        if key in file_data:
            setattr(cfg, key, file_data[key])
        if overrides.get(key) is not None:
            setattr(cfg, key, overrides[key])
    if not _DEVICE.match(str(cfg.device)):
        errors.add(f"device must be auto, cpu, cuda or cuda:N, got {cfg.device!r}")
    if cfg.prefetch < 1:
        errors.add("prefetch must be >= 1")
    if cfg.decode_workers is not None and not 0 <= cfg.decode_workers <= 256:
        errors.add(f"decode_workers must be 0 (decode in the driver) to 256, or null (the cores beside the "
                   f"models'), got {cfg.decode_workers!r}")
    if cfg.resample_on not in audio_io.RESAMPLE_ON:
        errors.add(f"resample_on must be auto (on the model's GPU where it runs on one), cpu or device, "
                   f"got {cfg.resample_on!r}")
    elif cfg.resample_on == "device" and cfg.engine == "ray":
        errors.add("resample_on: device applies to the local engine (Ray resamples in its decode tasks, "
                   "on their CPUs); leave it at auto or cpu with engine ray")
    if cfg.lease_seconds < 10:
        errors.add("lease_seconds must be >= 10 (the heartbeat renews a lease every lease/5 seconds)")
    if cfg.engine not in ENGINES:
        errors.add(f"engine must be one of {', '.join(ENGINES)}, got {cfg.engine!r}"
                   f"{did_you_mean(cfg.engine, ENGINES)}")
    if cfg.torch_threads is not None and cfg.torch_threads < 1:
        errors.add("torch_threads must be >= 1 (or null: the cores the run may use)")
    if cfg.ray_actors is not None and cfg.ray_actors < 1:
        errors.add("ray_actors must be >= 1 (or null: from the cluster's GPUs and CPUs)")
    if cfg.progress_every < 0:
        errors.add("progress_every must be >= 0 (0: no progress lines)")
    if isinstance(cfg.max_pixels_per_frame, bool) or cfg.max_pixels_per_frame < 1:
        errors.add("max_pixels_per_frame must be a positive number of pixels, "
                   f"got {cfg.max_pixels_per_frame!r}")

    file_models = parse_models(file_data["models"], where, errors) if "models" in file_data else None
    wanted = overrides.get("models")
    if wanted:
        by_alias = {m.alias: m for m in file_models or []}
        cfg.models = []
        for name in wanted:
            cfg.models += [by_alias[name]] if name in by_alias else parse_models([name], "--models", errors)
    elif file_models is not None:
        cfg.models = file_models
    else:
        cfg.models = parse_models(registry.available(), "default models", errors)
    aliases = [m.alias for m in cfg.models]
    if len(set(aliases)) != len(aliases):
        errors.add(f"a model is listed twice: {aliases}")
    for setting in overrides.get("set") or []:
        _apply_set(cfg, setting, errors)
    errors.raise_all()
    return cfg


def _apply_set(cfg: RunConfig, setting: str, errors: _Errors) -> None:
    """--set model.param=value (value parsed as YAML)."""
    import yaml

    m = re.match(r"^([^.=]+)\.([^=]+)=(.*)$", setting)
    if not m:
        errors.add(f"--set {setting!r}: expected MODEL.PARAM=VALUE, e.g. crepe.capacity=tiny")
        return
    alias, key, raw = m.groups()
    target = next((mc for mc in cfg.models if mc.alias == alias), None)
    if target is None:
        names = [mc.alias for mc in cfg.models]
        errors.add(f"--set {setting!r}: model {alias!r} is not in this run ({names})"
                   f"{did_you_mean(alias, names)}")
        return
    try:
        value = yaml.safe_load(raw)
    except yaml.YAMLError:
        value = raw
    if key in MODEL_KEYS[1:]:
        setattr(target, key, value)
        return
    sub = _Errors()
    params = _validate_params(registry.get(target.extractor), {**target.params, key: value},
                              f"--set {setting!r}", sub)
    for line in sub.lines:
        errors.add(line)
    if not sub.lines:
        target.params = params


def parse_shard(text: str | None) -> tuple[int, int] | None:
    """'INDEX/COUNT' (INDEX 0-based, as SLURM_ARRAY_TASK_ID usually is) -> (index, count)."""
    if text is None:
        return None
    m = re.match(r"^(\d+)/(\d+)$", text)
    if not m or int(m.group(2)) < 1 or int(m.group(1)) >= int(m.group(2)):
        raise ConfigError(f"--shard {text!r}: expected INDEX/COUNT with 0 <= INDEX < COUNT, e.g. 0/8")
    return int(m.group(1)), int(m.group(2))


def cuda_install_hint(torch_version: str) -> str:
    """How to get a CUDA build of the torch this environment pins."""
    base = torch_version.split("+")[0]
    return (f"install a CUDA build of torch: pip install torch=={base} --index-url "
            "https://download.pytorch.org/whl/cu128 (cu128 = CUDA 12.8: take the one your NVIDIA driver "
            "supports; README: GPUs)")


def check_devices(devices: list[str]) -> None:
    """ConfigError, before any work, for a device this machine's torch cannot use (`cuda` without a
    CUDA build or without a GPU, `cuda:N` past the GPUs there are, `mps` off macOS)."""
    wanted = sorted({d for d in devices if d and d not in ("auto", "cpu")})
    if not wanted:
        return
    import torch

    for device in wanted:
        if device.startswith("cuda"):
            if torch.version.cuda is None:
                raise ConfigError(f"device {device!r}: this torch ({torch.__version__}) was built without "
                                  f"CUDA; {cuda_install_hint(torch.__version__)}; or run on the CPU with "
                                  "--device cpu")
            if not torch.cuda.is_available():
                raise ConfigError(f"device {device!r}: torch {torch.__version__} has CUDA "
                                  f"{torch.version.cuda} but sees no GPU (NVIDIA driver missing, or "
                                  "CUDA_VISIBLE_DEVICES empty?); check nvidia-smi, or use --device cpu")
            index = int(device.split(":")[1]) if ":" in device else 0
            if index >= torch.cuda.device_count():
                raise ConfigError(f"device {device!r}: this machine has {torch.cuda.device_count()} GPU(s) "
                                  f"(cuda:0 to cuda:{torch.cuda.device_count() - 1})")
        elif device == "mps" and not (torch.backends.mps.is_available()):
            raise ConfigError("device 'mps': Apple's Metal backend is not available here; use --device cpu")


def jobs_from_args(args) -> tuple[RunConfig, list]:
    """The run's config (YAML + flags) and its model jobs; ConfigError lists every mistake."""
    data, where = ({}, "command line")
    if args.config:
        data, where = load_yaml(args.config), args.config
    overrides = {k: getattr(args, k, None) for k in (*SETTINGS, "models", "set")}
    cfg = build(data, where, overrides)
    return cfg, jobs_of(cfg)


def jobs_of(cfg: RunConfig) -> list:
    """One `pipeline.ModelJob` per configured model, its plugin created (parameters checked)."""
    from embedkit import pipeline
    from embedkit.extractors.base import torch_device

    if cfg.engine == "local":  # engine ray: the devices are the cluster nodes', checked there
        check_devices([m.device or cfg.device for m in cfg.models])
    jobs = []
    for m in cfg.models:
        ex = registry.create(m.extractor, device=torch_device(m.device or cfg.device), weights_path=m.weights,
                             batch_size=m.batch_size or cfg.batch_size, **m.params)
        jobs.append(pipeline.ModelJob(m.alias, ex))
    return jobs
