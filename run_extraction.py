#!/usr/bin/env python
"""Extract features for every file in a folder (audio, video, images), per model, as .npy arrays.

    python run_extraction.py --models openl3 mert
    python run_extraction.py --config configs/default.yaml
    python run_extraction.py --audio_dir /data/media --output_base /data/feats --shard 3/8
    python run_extraction.py --config study.yaml --engine ray --ray_address auto   # a Ray cluster

Rerunning the same command resumes: finished outputs are kept, the rest is computed.
Exit status: 0 all done, 1 some file or model failed (see failures.json), 2 configuration error,
130/143 interrupted (rerun to finish).
"""

from __future__ import annotations

if not __package__:  # `python run_extraction.py` from a checkout: the checkout is the package embedkit
    import _checkout  # noqa: F401

import argparse
import sys
from pathlib import Path


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", help="YAML config file (flags given here override it)")
    p.add_argument("--audio_dir", "--input_dir", dest="audio_dir",
                   help="folder of input files: audio, video, images (default: audio_files)")
    p.add_argument("--output_base", help="output folder (default: output/embeddings)")
    p.add_argument("--models", nargs="+", help="models (or config names) to run (default: all registered)")
    p.add_argument("--skip_existing", action="store_true",
                   help="skip outputs that are already complete "
                        "(the default; kept for the original script's CLI)")
    p.add_argument("--overwrite", action="store_true", default=None, help="recompute even complete outputs")
    p.add_argument("--verbose", action="store_true", default=None,
                   help="print shape and time per file and model")
    p.add_argument("--device", help="auto | cpu | cuda | cuda:N (default: auto)")
    p.add_argument("--batch_size", type=int, help="batch size for every model (per-model config wins)")
    p.add_argument("--recursive", action="store_true", default=None,
                   help="descend into sub-folders; outputs mirror the input tree")
    p.add_argument("--extensions", nargs="+",
                   help="file extensions to take (default: every one the decoders read)")
    p.add_argument("--prefetch", type=int, help="decoded files buffered ahead of the models (default 2)")
    p.add_argument("--shard", help="INDEX/COUNT: process only this stable share of the files (SLURM arrays)")
    p.add_argument("--set", action="append", metavar="MODEL.PARAM=VALUE",
                   help="override one model parameter, e.g. --set crepe.capacity=tiny (repeatable)")
    p.add_argument("--download_only", action="store_true",
                   help="fetch every weight the configured models need, then exit (for offline clusters)")
    p.add_argument("--list_models", action="store_true", help="list models and their parameters, then exit")
    p.add_argument("--lease_seconds", type=float,
                   help="a lock whose heartbeat is older than this is taken over (default 300)")
    p.add_argument("--progress_every", type=float,
                   help="seconds between progress lines when stderr is not a terminal (default 60; 0: none)")
    p.add_argument("--no_progress", action="store_true", help="no progress bar or progress lines")
    p.add_argument("--torch_threads", type=int,
                   help="torch intra-op threads (default: $OMP_NUM_THREADS, else the cores the run may use; "
                        "engine ray: 1 per actor)")
    p.add_argument("--engine", help="local (default) | ray: run on a Ray cluster "
                   "(pip install -r requirements-ray.txt; folders on a filesystem every node sees)")
    p.add_argument("--ray_address", help="engine ray: auto (the cluster on this node) | ray://HOST:10001 "
                   "(default: start a local cluster, or $RAY_ADDRESS)")
    p.add_argument("--ray_actors", type=int, help="engine ray: actors per model (default: one per GPU, "
                   "or half the cluster's CPUs shared among the models)")
    return p.parse_args(argv)


def list_models() -> None:
    from embedkit import registry

    for name in registry.available():
        try:
            cls = registry.get(name)
        except Exception as exc:  # a plugin that cannot import is listed with why
            print(f"{name}  (cannot import: {exc})")
            continue
        takes = f"{cls.sample_rate} Hz audio" if cls.modality == "audio" else cls.modality
        print(f"{name}  ({takes}; weights: {cls.weights_license})")
        for key, spec in cls.params.items():
            if spec.choices:
                allowed = f" {list(spec.choices)}"
            else:
                allowed = f" ({spec.allowed})" if spec.allowed else ""
            print(f"    {key} = {spec.default!r}{allowed}  {spec.help}")


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.list_models:
        list_models()
        return 0
    # Ctrl-C or SIGTERM at any moment (imports and model loading included) ends cleanly.
    import signal

    def interrupted(signum, frame):
        raise KeyboardInterrupt if signum == signal.SIGINT else SystemExit(143)

    previous = signal.signal(signal.SIGTERM, interrupted)
    try:
        return _main(args)
    except KeyboardInterrupt:
        print("interrupted before the run started; nothing was written: rerun the same command",
              file=sys.stderr)
        return 130
    except SystemExit as exc:
        if exc.code == 143:
            print("terminated before the run started; nothing was written: rerun the same command",
                  file=sys.stderr)
        raise
    finally:
        signal.signal(signal.SIGTERM, previous)


def _main(args: argparse.Namespace) -> int:
    import signal

    from embedkit import run_config
    from embedkit.extractors.base import ConfigError

    try:
        cfg, jobs = run_config.jobs_from_args(args)
        shard = run_config.parse_shard(args.shard)
        output_base = Path(cfg.output_base)
        if not args.download_only:
            from embedkit import pipeline

            pipeline.check_previous_params(jobs, output_base, cfg.overwrite)
            if not Path(cfg.audio_dir).is_dir():
                raise ConfigError(f"input folder {cfg.audio_dir!r} does not exist; pass --audio_dir")
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

    from embedkit import pipeline

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
        progress_every=0.0 if args.no_progress else cfg.progress_every,
        lease_seconds=cfg.lease_seconds,
        torch_threads=cfg.torch_threads,
    )

    def log(msg: str) -> None:
        print(msg, file=sys.stderr, flush=True)

    if cfg.engine == "ray":
        from embedkit import ray_engine  # Ray is imported only here, never by a local run

        devices = {m.alias: m.device or cfg.device for m in cfg.models}
        runner = ray_engine.RayRunner(jobs, options, log=log, address=cfg.ray_address, devices=devices,
                                      actors=cfg.ray_actors)
        try:
            runner.connect()
        except ConfigError as exc:
            print(f"configuration error: {exc}", file=sys.stderr)
            return 2
    else:
        runner = pipeline.Runner(jobs, options, log=log)
    stats = runner.run()
    # the run is over (finished or stopped): a signal now must not cut the report short
    held = {s: signal.signal(s, signal.SIG_IGN) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        report_path, failures_path = runner.write_reports()
    finally:
        for s, handler in held.items():
            signal.signal(s, handler)
    print(stats.render())
    print(f"report: {report_path}" + (f"; failures: {failures_path}" if stats.failures else ""))
    if stats.interrupted:
        return 130 if stats.interrupted == "SIGINT" else 143
    return 1 if stats.failures else 0


if __name__ == "__main__":
    sys.exit(main())
