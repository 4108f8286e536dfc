"""Run configuration: YAML file + command-line flags (flags win), validated before any work.

A config file (all keys optional):

    audio_dir: audio_files
    output_base: output/embeddings
    extensions: [.wav, .flac, .mp3]
    recursive: false
    overwrite: false
    device: auto            # auto | cpu | cuda | cuda:N
    batch_size: null        # default for every model; per model below wins
    prefetch: 2
    verbose: false
    models:                 # a list of names, or a mapping name -> settings
      crepe: {capacity: full, step_size: 10, viterbi: true}
      openl3_env:           # a second configuration of one plugin, in its own folder
        extractor: openl3
        content_type: env
        weights: /models/openl3/   # explicit local weights (file or folder)
        batch_size: 32

Per-model keys `extractor`, `weights`, `batch_size`, `device` are handled here;
every other key is a plugin parameter, validated by the plugin.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import audio_io
import registry
from extractors.base import ConfigError

TOP_KEYS = {
    "audio_dir": str,
    "output_base": str,
    "extensions": list,
    "recursive": bool,
    "skip_existing": bool,
    "overwrite": bool,
    "device": str,
    "batch_size": (int, type(None)),
    "prefetch": int,
    "verbose": bool,
    "models": (list, dict),
}
# Top-level settings copied onto RunConfig as they are (flags override them by the same name).
SETTINGS = tuple(k for k in TOP_KEYS if k not in ("models", "skip_existing"))
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
    extensions: list[str] = field(default_factory=lambda: list(audio_io.AUDIO_EXTENSIONS))
    recursive: bool = False
    overwrite: bool = False
    device: str = "auto"
    batch_size: int | None = None
    prefetch: int = 2
    verbose: bool = False
    models: list[ModelConfig] = field(default_factory=list)


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


def parse_models(value: Any, where: str) -> list[ModelConfig]:
    if isinstance(value, list):
        value = {name: {} for name in value}
    out = []
    for alias, settings in value.items():
        if not isinstance(alias, str) or not _ALIAS.match(alias):
            raise ConfigError(f"{where}: model name {alias!r} must be letters, digits, '_', '-', '.'")
        settings = dict(settings or {})
        if not isinstance(settings, dict):
            raise ConfigError(f"{where}.models.{alias}: expected a mapping of parameters")
        extractor = settings.pop("extractor", alias)
        cls = registry.get(extractor)  # unknown names list the known ones
        mc = ModelConfig(alias, extractor)
        mc.weights = settings.pop("weights", None)
        mc.batch_size = settings.pop("batch_size", None)
        mc.device = settings.pop("device", None)
        if mc.weights is not None and not isinstance(mc.weights, str):
            raise ConfigError(f"{where}.models.{alias}.weights: expected a path string")
        if mc.batch_size is not None and (not isinstance(mc.batch_size, int) or mc.batch_size < 1):
            raise ConfigError(f"{where}.models.{alias}.batch_size: expected a positive integer")
        if mc.device is not None and not _DEVICE.match(str(mc.device)):
            raise ConfigError(f"{where}.models.{alias}.device: expected auto, cpu, cuda or cuda:N")
        try:
            mc.params = cls.validate_params(settings)
        except ConfigError as exc:
            raise ConfigError(f"{where}.models.{alias}: {exc}") from None
        out.append(mc)
    return out


def build(file_data: dict[str, Any], where: str, overrides: dict[str, Any]) -> RunConfig:
    """Merge file settings and command-line overrides (None = not given) into a RunConfig."""
    unknown = sorted(set(file_data) - set(TOP_KEYS))
    if unknown:
        raise ConfigError(
            f"{where}: unknown key(s) {', '.join(unknown)} at the top level; known: {', '.join(sorted(TOP_KEYS))}"
        )
    for key, types in TOP_KEYS.items():
        if key in file_data and not isinstance(file_data[key], types):
            raise ConfigError(f"{where}: {key} must be {_type_name(types)}, got {file_data[key]!r}")
    cfg = RunConfig()
    for key in SETTINGS:
        if key in file_data:
            setattr(cfg, key, file_data[key])
        if overrides.get(key) is not None:
            setattr(cfg, key, overrides[key])
    if not _DEVICE.match(cfg.device):
        raise ConfigError(f"device must be auto, cpu, cuda or cuda:N, got {cfg.device!r}")
    if cfg.prefetch < 1:
        raise ConfigError("prefetch must be >= 1")

    file_models = parse_models(file_data["models"], where) if "models" in file_data else None
    wanted = overrides.get("models")
    if wanted:
        by_alias = {m.alias: m for m in file_models or []}
        cfg.models = [by_alias[n] if n in by_alias else parse_models([n], "--models")[0] for n in wanted]
    elif file_models is not None:
        cfg.models = file_models
    else:
        cfg.models = parse_models(registry.available(), "default models")
    aliases = [m.alias for m in cfg.models]
    if len(set(aliases)) != len(aliases):
        raise ConfigError(f"a model is listed twice: {aliases}")
    for setting in overrides.get("set") or []:
        _apply_set(cfg, setting)
    return cfg


def _apply_set(cfg: RunConfig, setting: str) -> None:
    """--set model.param=value (value parsed as YAML)."""
    import yaml

    m = re.match(r"^([^.=]+)\.([^=]+)=(.*)$", setting)
    if not m:
        raise ConfigError(f"--set {setting!r}: expected MODEL.PARAM=VALUE, e.g. crepe.capacity=tiny")
    alias, key, raw = m.groups()
    target = next((mc for mc in cfg.models if mc.alias == alias), None)
    if target is None:
        raise ConfigError(f"--set {setting!r}: model {alias!r} is not in this run ({[mc.alias for mc in cfg.models]})")
    value = yaml.safe_load(raw)
    if key in ("weights", "batch_size", "device"):
        setattr(target, key, value)
        return
    try:
        target.params = registry.get(target.extractor).validate_params({**target.params, key: value})
    except ConfigError as exc:
        raise ConfigError(f"--set {setting!r}: {exc}") from None


def parse_shard(text: str | None) -> tuple[int, int] | None:
    """'INDEX/COUNT' (INDEX 0-based, as SLURM_ARRAY_TASK_ID usually is) -> (index, count)."""
    if text is None:
        return None
    m = re.match(r"^(\d+)/(\d+)$", text)
    if not m or int(m.group(2)) < 1 or int(m.group(1)) >= int(m.group(2)):
        raise ConfigError(f"--shard {text!r}: expected INDEX/COUNT with 0 <= INDEX < COUNT, e.g. 0/8")
    return int(m.group(1)), int(m.group(2))
