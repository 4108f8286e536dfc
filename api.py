"""The Python API for notebooks and scripts: a few names, kept stable.

    import embedkit
    crepe = embedkit.load("crepe", capacity="tiny")                 # a configured extractor
    f = embedkit.extract(crepe, "examples/audio/sweep_110_880.wav") # Features of one file
    f = embedkit.extract("melspec", samples, sample_rate=44100)     # of an array, at any rate
    stats = embedkit.run("examples/audio", "out", models={"melspec": {}})  # a folder, as the driver
    outputs = embedkit.open_results("out")                          # what a run wrote

Every call takes the same parameters, and gives the same numbers, as the command line:
`extract` decodes and resamples exactly as a run does; `run` is `run_extraction.py`.
Configuration mistakes raise `embedkit.ConfigError`, unreadable media `embedkit.MediaError`.
"""

from __future__ import annotations

import os
from typing import Any

import numpy as np

from embedkit.extractors.base import ConfigError, Extractor, Features


def load(name: str, *, device: str = "auto", weights_path: str | os.PathLike | None = None,
         batch_size: int | None = None, **params: Any) -> Extractor:
    """The extractor `name` with its parameters checked (ConfigError lists every known one).

    device: "auto" (CUDA where there is one), "cpu", "cuda", "cuda:N". weights_path: a file or
    folder, "random" (seeded random weights: shapes and speed only), or None (the usual places,
    see README "Weights"). The network loads on first use, once per process.
    """
    from embedkit import registry
    from embedkit.extractors.base import torch_device

    return registry.create(name, device=torch_device(device),
                           weights_path=None if weights_path is None else os.fspath(weights_path),
                           batch_size=batch_size, **params)


def extract(extractor: Extractor | str, source: str | os.PathLike | np.ndarray,
            sample_rate: int | None = None, **params: Any) -> Features:
    """Features of one file or array, computed as a run computes them.

    extractor: an Extractor from `load`, or a model name (then `params` configure it).
    source: a file path (any format a run reads: audio, video, image); an audio array (n,) or
    (n, channels), int or float, at `sample_rate` Hz (mixed to mono and resampled to the model's
    rate as the driver does); or an image (H, W, 3) uint8 RGB for image models.
    Returns Features: `.data` (shape per `extractor.output_spec(kind)`), `.timestamps` (s),
    `.extras`.
    """
    if isinstance(extractor, str):
        extractor = load(extractor, **params)
    elif params:
        raise TypeError("parameters go to load(); extract() got an Extractor already configured")
    if not isinstance(source, np.ndarray):
        from embedkit import pipeline

        return pipeline.extract_file(extractor, source)
    if extractor.modality == "image":
        rgb = np.asarray(source)
        if rgb.ndim != 3 or rgb.shape[2] != 3 or rgb.dtype != np.uint8:
            raise ValueError(f"{extractor.name} takes (H, W, 3) uint8 RGB images, "
                             f"got {rgb.shape} {rgb.dtype}")
        return extractor.extract_image(rgb)
    if extractor.modality != "audio":
        raise ValueError(f"{extractor.name} takes {extractor.modality} files: pass a path")
    if sample_rate is None:
        raise ValueError("an audio array needs its sample_rate (Hz)")
    from embedkit import audio_io

    decoded = audio_io.from_array(source, int(sample_rate),
                                  residual=extractor.resample_precision == "float64")
    return extractor.extract(decoded.at(*extractor.resample_key), extractor.sample_rate)


def run(input_dir: str | os.PathLike, output_base: str | os.PathLike,
        models: list[str] | dict[str, dict] | None = None, *, config: str | os.PathLike | None = None,
        shard: str | None = None, log: Any = None, **settings: Any):
    """Extract every file of `input_dir` into `output_base` as `run_extraction.py` does: the same
    outputs, resumable (what is done is kept), a bad file reported and skipped.

    models: names (["crepe", "melspec"]) or, as in the YAML, {alias: {param: value, ...}} (an
    alias may name another configuration: {"mel128": {"extractor": "melspec", "n_mels": 128}});
    None: the config's models, else every model. config: a YAML file these arguments override.
    shard: "I/N". settings: any top-level YAML key (recursive=True, overwrite=True, device="cuda",
    batch_size=16, extensions=[".wav"], ...). Messages go to `log(str)` (default: stderr).

    Raises ConfigError (before any work) where the command line exits 2; KeyboardInterrupt
    after writing the report when interrupted. Returns the run's `reporting.RunStats`
    (`.failures`, `.render()`); run_report.json and failures.json are written as by a run.
    """
    import sys

    from embedkit import run_config, run_extraction

    data: dict[str, Any] = dict(run_config.load_yaml(config)) if config else {}
    data.update(settings, audio_dir=os.fspath(input_dir), output_base=os.fspath(output_base))
    if models is not None:
        data["models"] = list(models) if isinstance(models, (list, tuple)) else dict(models)
    cfg = run_config.build(data, os.fspath(config) if config else "embedkit.run()", {})
    jobs = run_config.jobs_of(cfg)
    run_extraction.check_run(cfg, jobs)
    options = run_extraction.run_options(cfg, run_config.parse_shard(shard), progress=False,
                                         progress_every=cfg.progress_every)
    runner = run_extraction.make_runner(cfg, jobs, options,
                                        log or (lambda msg: print(msg, file=sys.stderr, flush=True)))
    stats = runner.run()
    runner.write_reports()
    if stats.interrupted == "SIGINT":
        raise KeyboardInterrupt("the run was interrupted; run it again to finish")
    return stats


def open_results(output_base: str | os.PathLike):
    """A run's output folder read through the one reader (`embedkit.results.Results`):
    `.models`, `[name]` -> model folder, `.items` -> array, frame times, extras, manifest record."""
    from embedkit import results

    return results.Results(output_base)


__all__ = ["ConfigError", "extract", "load", "open_results", "run"]
