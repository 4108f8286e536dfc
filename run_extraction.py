#!/usr/bin/env python
"""Extract features for every file in a folder (audio, video, images), per model, as .npy arrays.

    python run_extraction.py --models openl3 mert
    python run_extraction.py --config configs/default.yaml
    python run_extraction.py --audio_dir /data/media --output_base /data/feats --shard 3/8
    python run_extraction.py --config study.yaml --engine ray --ray_address auto   # a Ray cluster

Rerunning the same command resumes: finished outputs are kept, the rest is computed (and what
changed: an input replaced since, an array whose manifest line a kill cut off).
Exit status: 0 all done, 1 some file or model failed (see failures.json) or work is left (a full
disk, outputs locked by a driver on another host), 2 configuration error or nothing to do
(before any work), 130/143 interrupted (rerun to finish).
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
    p.add_argument("--decode_workers", type=int,
                   help="processes decoding and resampling files ahead of the models (default: the cores "
                        "beside the models' threads; 0: in the driver). Engine ray: not used (Ray decodes)")
    p.add_argument("--resample_on", choices=("auto", "cpu", "device"),
                   help="where resampy's filters (openl3, crepe) run: auto (default) on the model's GPU "
                        "where it runs on CUDA, else in the decoders on the CPU; cpu: always the decoders; "
                        "device: the model's device")
    p.add_argument("--decode_only", action="store_true",
                   help="preflight: decode and resample every file for the configured models without "
                        "loading any (no weights needed), write no array; list bad files (exit 1 if any) and "
                        "the feed rate per stage (also in <output_base>/decode_only_report.json)")
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
    p.add_argument("--max_pixels_per_frame", type=int,
                   help="images and video frames with more pixels are refused, before decoding "
                        "(default 178956970, about 179 MP)")
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
        if args.decode_only:
            check_folders(Path(cfg.audio_dir), Path(cfg.output_base))
        elif not args.download_only:
            check_run(cfg, jobs)
    except ConfigError as exc:
        print(f"configuration error: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:  # a full disk before any work
        from embedkit import outputs

        print(outputs.explain_os_error(exc), file=sys.stderr)
        return 1

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

    def log(msg: str) -> None:
        print(msg, file=sys.stderr, flush=True)

    options = run_options(cfg, shard, progress=not args.no_progress and sys.stderr.isatty(),
                          progress_every=0.0 if args.no_progress else cfg.progress_every)
    if args.decode_only:
        return decode_only(options, jobs, log)
    try:
        runner = make_runner(cfg, jobs, options, log)
        stats = runner.run()
    except ConfigError as exc:  # no cluster; nothing to do; a model folder another configuration claimed
        print(f"configuration error: {exc}", file=sys.stderr)
        return 2
    # the run is over (finished or stopped): a signal now must not cut the report short
    held = {s: signal.signal(s, signal.SIG_IGN) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        report_path, failures_path = runner.write_reports()
    finally:
        for s, handler in held.items():
            signal.signal(s, handler)
    print(stats.render())
    for line in runner.unwritten:
        print(f"not written: {line}", file=sys.stderr)
    failing = len(runner.failing_now)
    written = [str(p) for p in (report_path, failures_path) if not any(str(p) in u for u in runner.unwritten)]
    if str(report_path) in written:
        print(f"report: {report_path}" + (f"; failures: {failures_path} ({failing} still failing in this "
                                          f"folder, {len(stats.failures)} from this run)"
                                          if failing and str(failures_path) in written else ""))
    if stats.interrupted:
        return 130 if stats.interrupted == "SIGINT" else 143
    return 1 if stats.failures or stats.work_left or runner.unwritten else 0


def check_run(cfg, jobs: list) -> None:
    """Every check before any work: the folders, the models' previous parameters, writability
    (ConfigError; OSError for a full disk)."""
    from embedkit import pipeline

    output_base = Path(cfg.output_base)
    check_folders(Path(cfg.audio_dir), output_base)
    pipeline.check_previous_params(jobs, output_base, cfg.overwrite)
    check_writable(output_base, [f for job in jobs for f in _job_folders(job, output_base)])


def run_options(cfg, shard: tuple[int, int] | None, progress: bool, progress_every: float):
    """The executor's `pipeline.RunOptions` for a RunConfig."""
    from embedkit import pipeline

    return pipeline.RunOptions(
        audio_dir=Path(cfg.audio_dir),
        output_base=Path(cfg.output_base),
        recursive=cfg.recursive,
        extensions=tuple(cfg.extensions),
        overwrite=cfg.overwrite,
        verbose=cfg.verbose,
        prefetch=cfg.prefetch,
        shard=shard,
        progress=progress,
        progress_every=progress_every,
        lease_seconds=cfg.lease_seconds,
        torch_threads=cfg.torch_threads,
        max_pixels_per_frame=cfg.max_pixels_per_frame,
        decode_workers=cfg.decode_workers,
        resample_on=cfg.resample_on,  # the Ray engine resamples in its decode tasks whatever it says
    )


def decode_only(options, jobs: list, log) -> int:
    """The preflight, on this machine whatever the engine: 0 every file decodes for every model,
    1 some file is bad (listed with its cause), 2 nothing to do, 130/143 interrupted."""
    import dataclasses
    import signal

    from embedkit import outputs, pipeline, preflight
    from embedkit.extractors.base import ConfigError

    runner = pipeline.Runner(jobs, dataclasses.replace(options, decode_only=True), log=log)
    try:
        stats = runner.run()
    except ConfigError as exc:
        print(f"configuration error: {exc}", file=sys.stderr)
        return 2
    held = {s: signal.signal(s, signal.SIG_IGN) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        feed = getattr(runner, "feed", None)
        if feed is None:  # interrupted before the first file
            return 130 if stats.interrupted == "SIGINT" else 143
        report = {"run": runner.run_id, "finished": outputs.now_iso(),
                  "audio_dir": str(Path(options.audio_dir).resolve()), "interrupted": stats.interrupted,
                  **feed.to_json()}
        path = Path(options.output_base) / preflight.REPORT_NAME
        print(feed.render())
        try:
            outputs.atomic_write_json(path, report)
            print(f"report: {path}")
        except OSError as exc:
            print(f"not written: {outputs.explain_os_error(exc, path)}", file=sys.stderr)
    finally:
        for s, handler in held.items():
            signal.signal(s, handler)
    if stats.interrupted:
        return 130 if stats.interrupted == "SIGINT" else 143
    return 1 if feed.bad else 0


def make_runner(cfg, jobs: list, options, log):
    """The executor for `cfg.engine`: pipeline.Runner, or a connected ray_engine.RayRunner
    (ConfigError when the cluster cannot be reached or its nodes miss the folders)."""
    if cfg.engine != "ray":
        from embedkit import pipeline

        return pipeline.Runner(jobs, options, log=log)
    from embedkit import ray_engine  # Ray is imported only here, never by a local run

    devices = {m.alias: m.device or cfg.device for m in cfg.models}
    runner = ray_engine.RayRunner(jobs, options, log=log, address=cfg.ray_address, devices=devices,
                                  actors=cfg.ray_actors)
    runner.connect()
    return runner


def check_folders(audio_dir: Path, output_base: Path) -> None:
    """ConfigError for an input folder that is missing or a file, or that is the output folder itself."""
    from embedkit.extractors.base import ConfigError

    if not audio_dir.is_dir():
        if audio_dir.exists():
            raise ConfigError(f"input folder {str(audio_dir)!r} is a file, not a folder; pass the folder "
                              f"that holds it (--audio_dir {str(audio_dir.parent)!r})")
        raise ConfigError(f"input folder {str(audio_dir)!r} does not exist; pass --audio_dir")
    if output_base.exists() and output_base.resolve() == audio_dir.resolve():
        raise ConfigError(f"--output_base {str(output_base)!r} is the input folder itself; give the "
                          "outputs their own folder (beside it, or inside it: a folder inside is left out "
                          "of the input)")


def _job_folders(job, output_base: Path) -> list[Path]:
    """The model's folders under `output_base` (no plugin call needed: its extras are the folders there)."""
    return [p for p in sorted(output_base.glob(f"{job.alias}.*")) if p.is_dir()] + [output_base / job.alias]


def check_writable(output_base: Path, folders: list[Path]) -> None:
    """ConfigError naming the folder, before any work, where the outputs cannot be written
    (read-only file system, permissions); OSError for a full disk."""
    import errno

    from embedkit import outputs
    from embedkit.extractors.base import ConfigError

    made = [p for p in [output_base, *output_base.parents] if not p.exists()]  # removed after the check
    for folder in [output_base, *(f for f in folders if f.exists())]:
        try:
            folder.mkdir(parents=True, exist_ok=True)
            probe = outputs.tmp_path(folder / "write-check")
            probe.write_bytes(b"")
            probe.unlink()
            for p in made if folder == output_base else []:
                p.rmdir()  # nothing is left behind by a run that stops before its work
        except OSError as exc:
            if exc.errno in (errno.EROFS, errno.EACCES, errno.EPERM):
                raise ConfigError(f"cannot write to {folder} ({exc.strerror}): choose another --output_base, "
                                  "or make it writable") from None
            if outputs.is_disk_full(exc):
                raise OSError(exc.errno, exc.strerror, str(folder)) from None
            raise ConfigError(f"cannot write to {folder} ({exc.strerror})") from None


if __name__ == "__main__":
    sys.exit(main())
