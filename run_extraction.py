#!/usr/bin/env python
"""Extract audio features for every file in a folder, per model, as .npy arrays.

    python run_extraction.py --models openl3 mert
    python run_extraction.py --config configs/default.yaml
    python run_extraction.py --audio_dir /data/audio --output_base /data/feats --shard 3/8

Rerunning the same command resumes: finished outputs are kept, the rest is computed.
Exit status: 0 all done, 1 some file or model failed (see failures.json), 2 configuration error,
130/143 interrupted (rerun to finish).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", help="YAML config file (flags given here override it)")
    p.add_argument("--audio_dir", help="folder of audio files (default: audio_files)")
    p.add_argument("--output_base", help="output folder (default: output/embeddings)")
    p.add_argument("--models", nargs="+", help="models (or config names) to run (default: all registered)")
    p.add_argument("--skip_existing", action="store_true",
                   help="skip outputs that are already complete (the default; kept for the original script's CLI)")
    p.add_argument("--overwrite", action="store_true", default=None, help="recompute even complete outputs")
    p.add_argument("--verbose", action="store_true", default=None, help="print shape and time per file and model")
    p.add_argument("--device", help="auto | cpu | cuda | cuda:N (default: auto)")
    p.add_argument("--batch_size", type=int, help="batch size for every model (per-model config wins)")
    p.add_argument("--recursive", action="store_true", default=None,
                   help="descend into sub-folders; outputs mirror the input tree")
    p.add_argument("--extensions", nargs="+", help="audio file extensions to take (default: all soundfile reads)")
    p.add_argument("--prefetch", type=int, help="decoded files buffered ahead of the models (default 2)")
    p.add_argument("--shard", help="INDEX/COUNT: process only this stable share of the files (SLURM arrays)")
    p.add_argument("--set", action="append", metavar="MODEL.PARAM=VALUE",
                   help="override one model parameter, e.g. --set crepe.capacity=tiny (repeatable)")
    p.add_argument("--download_only", action="store_true",
                   help="fetch every weight the configured models need, then exit (for offline clusters)")
    p.add_argument("--list_models", action="store_true", help="list models and their parameters, then exit")
    p.add_argument("--no_progress", action="store_true", help="no progress bar")
    return p.parse_args(argv)


def list_models() -> None:
    import registry

    for name in registry.available():
        cls = registry.get(name)
        print(f"{name}  ({cls.sample_rate} Hz; weights: {cls.weights_license})")
        for key, spec in cls.params.items():
            allowed = f" {list(spec.choices)}" if spec.choices else (f" ({spec.allowed})" if spec.allowed else "")
            print(f"    {key} = {spec.default!r}{allowed}  {spec.help}")


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.list_models:
        list_models()
        return 0
    import pipeline
    import registry
    import run_config
    from extractors.base import ConfigError, torch_device

    try:
        data, where = ({}, "command line")
        if args.config:
            data, where = run_config.load_yaml(args.config), args.config
        overrides = {k: getattr(args, k) for k in (*run_config.SETTINGS, "models", "set")}
        cfg = run_config.build(data, where, overrides)
        shard = run_config.parse_shard(args.shard)
        device = torch_device(cfg.device)
        jobs = [
            pipeline.ModelJob(
                m.alias,
                registry.create(m.extractor, device=torch_device(m.device or device), weights_path=m.weights,
                                batch_size=m.batch_size or cfg.batch_size, **m.params),
            )
            for m in cfg.models
        ]
        output_base = Path(cfg.output_base)
        if not args.download_only:
            pipeline.check_previous_params(jobs, output_base, cfg.overwrite)
            if not Path(cfg.audio_dir).is_dir():
                raise ConfigError(f"audio folder {cfg.audio_dir!r} does not exist; pass --audio_dir")
    except ConfigError as exc:
        print(f"configuration error: {exc}", file=sys.stderr)
        return 2

    if args.download_only:
        failed = 0
        for job in jobs:
            try:
                job.extractor.fetch_weights()
                print(f"[{job.alias}] weights ready")
            except Exception as exc:
                failed += 1
                print(f"[{job.alias}] {exc}", file=sys.stderr)
        return 1 if failed else 0

    _set_threads()
    options = pipeline.RunOptions(
        audio_dir=Path(cfg.audio_dir),
        output_base=output_base,
        recursive=cfg.recursive,
        extensions=tuple(cfg.extensions),
        overwrite=cfg.overwrite,
        verbose=cfg.verbose,
        prefetch=cfg.prefetch,
        shard=shard,
        progress=not args.no_progress and sys.stderr.isatty(),
    )
    runner = pipeline.Runner(jobs, options)
    stats = runner.run()
    report_path, failures_path = runner.write_reports()
    print(stats.render())
    print(f"report: {report_path}" + (f"; failures: {failures_path}" if stats.failures else ""))
    if stats.interrupted:
        return 130 if stats.interrupted == "SIGINT" else 143
    return 1 if stats.failures else 0


def _set_threads() -> None:
    """One intra-op thread per core; the decoder thread overlaps with it."""
    import os

    import torch

    torch.set_num_threads(max(1, len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1))


if __name__ == "__main__":
    sys.exit(main())
