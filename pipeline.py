"""The run loop: discover -> plan -> (decode -> resample) in a prefetch thread -> extract -> write -> report.

Data flows one way. A background thread claims the next file's pending outputs
(lock files), decodes it once and resamples it once per (rate, method) the
pending models need, into a bounded queue; the main thread runs the models and
writes the arrays. Errors are values: a failing file or model is recorded
(file, model, cause) and the loop moves on.
"""

from __future__ import annotations

import hashlib
import json
import os
import queue
import signal
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np

import audio_io
import media
import outputs
from extractors.base import ConfigError, Extractor, Features, OutputSpec
from reporting import RunStats


@dataclass
class ModelJob:
    """One configured model: output folder name (alias), plugin instance, options."""

    alias: str
    extractor: Extractor
    spec: OutputSpec | None = None
    out_dir: Path | None = None
    error: str | None = None  # load failure: every file fails with this cause


@dataclass
class RunOptions:
    audio_dir: Path
    output_base: Path
    recursive: bool = False
    extensions: tuple[str, ...] = audio_io.AUDIO_EXTENSIONS
    overwrite: bool = False
    verbose: bool = False
    prefetch: int = 2  # decoded files waiting in the queue (bounds memory)
    shard: tuple[int, int] | None = None  # (index, count), index 0-based
    progress: bool = True


@dataclass
class _Work:
    """One file on its way from the decoder to the models."""

    rel: Path
    rel_out: Path
    jobs: list[ModelJob]
    locks: list[outputs.OutputLock] = field(default_factory=list)
    decoded: audio_io.Decoded | None = None
    error: BaseException | None = None
    decode_seconds: float = 0.0  # decode + resampling, in the prefetch thread
    claimed: list[str] = field(default_factory=list)  # models another driver holds or finished


class Interrupted(BaseException):
    """SIGTERM (or SIGINT) asked the run to stop after cleaning up."""


def shard_of(rel: Path, count: int) -> int:
    """Stable shard of a relative path: adding files never moves the others."""
    digest = hashlib.sha1(rel.as_posix().encode("utf-8", "surrogateescape")).digest()
    return int.from_bytes(digest[:8], "big") % count


def folders_for(job: ModelJob) -> list[Path]:
    """The job's output folders: `<alias>.<extra>` for each extra output, then `<alias>`."""
    assert job.out_dir is not None and job.spec is not None
    base = job.out_dir.parent
    return [base / f"{job.alias}.{extra}" for extra in job.spec.extras] + [job.out_dir]


def outputs_for(job: ModelJob, rel_out: Path) -> list[Path]:
    """Extras first, main output last: the main output existing means the file is done."""
    return [outputs.inside(folder, rel_out) for folder in folders_for(job)]


def is_done(job: ModelJob, rel_out: Path) -> bool:
    return all(outputs.is_complete_npy(p) for p in outputs_for(job, rel_out))


def check_previous_params(jobs: list[ModelJob], output_base: Path, overwrite: bool) -> None:
    """Refuse to mix arrays made with other parameters into an existing model folder."""
    for job in jobs:
        meta = output_base / job.alias / "features.json"
        if overwrite or not meta.is_file():
            continue
        try:
            old = json.loads(meta.read_text())
        except (OSError, ValueError):
            continue
        new_params = json.loads(json.dumps(job.extractor.config))
        new_weights = job.extractor.weights_path
        if (old.get("extractor") != job.extractor.name or old.get("params") != new_params
                or old.get("weights_setting") != new_weights):
            raise ConfigError(
                f"{meta} was written by {old.get('extractor')} with params {old.get('params')} and "
                f"weights {old.get('weights_setting') or 'default'}, but this run asks {job.extractor.name} "
                f"with {new_params} and weights {new_weights or 'default'}. Use --overwrite to "
                "recompute, another --output_base, or give this configuration its own name "
                "(models: {my_name: {extractor: ..., ...}})."
            )


def write_metadata(job: ModelJob, output_base: Path) -> None:
    """<output_base>/<alias>/features.json: what the arrays are and where they came from."""
    ex = job.extractor
    assert job.spec is not None
    meta = {
        "extractor": ex.name,
        "output_folder": job.alias,
        "sample_rate": ex.sample_rate,
        "resampler": ex.resample_method,
        **job.spec.to_json(),
        "extra_folders": {e: f.name for e, f in zip(job.spec.extras, folders_for(job))},
        "params": ex.config,
        "weights_setting": ex.weights_path,  # null: the default lookup; "random": not for research use
        "provenance": ex.provenance(),
        "file_naming": "<relative dir>/<stem>.npy; inputs sharing a stem keep their extension "
        "(<stem>.<ext>.npy); manifest.jsonl maps every source to its output",
    }
    outputs.atomic_write_json(output_base / job.alias / "features.json", meta)


def _validate_output(job: ModelJob, data: np.ndarray) -> None:
    spec = job.spec
    assert spec is not None
    if data.ndim != len(spec.axes):
        raise RuntimeError(f"{job.alias} returned shape {data.shape}, expected axes {spec.axes}")
    if not np.isfinite(data).all():
        raise FloatingPointError(
            f"{job.alias} produced {int((~np.isfinite(data)).sum())} NaN/Inf values; nothing written "
            "(check the input audio; report it if the input is sane)"
        )


def _extract_with_backoff(job: ModelJob, audio: np.ndarray, sr: int, log: Callable[[str], None]):
    """Run the extractor; on CUDA out-of-memory retry with half the batch size."""
    ex = job.extractor
    while True:
        try:
            return ex.extract(audio, sr)
        except RuntimeError as exc:
            oom = "out of memory" in str(exc).lower() and str(ex.device).startswith("cuda")
            if not oom or ex.batch_size <= 1:
                raise
            import torch

            torch.cuda.empty_cache()
            ex.batch_size = max(1, ex.batch_size // 2)
            log(f"{job.alias}: CUDA out of memory; retrying with batch_size={ex.batch_size}")


def extract_file(extractor: Extractor, path: str | os.PathLike) -> Features:
    """Features of one file by one extractor, outside a run (search queries, the Python API).

    Decodes the file and feeds the extractor the input it declares.
    """
    decoded = audio_io.load(path)
    return extractor.extract(decoded.at(extractor.sample_rate, extractor.resample_method), extractor.sample_rate)


class Runner:
    """Runs a list of model jobs over an audio folder. One instance per run."""

    def __init__(self, jobs: list[ModelJob], options: RunOptions, log: Callable[[str], None] = print) -> None:
        self.jobs = jobs
        self.opt = options
        self.log = log
        self.stats = RunStats()
        self.run_id = time.strftime("%Y%m%d-%H%M%S") + f"-{os.getpid()}"
        self._stop = threading.Event()

    # -- planning -----------------------------------------------------------
    def load_models(self) -> None:
        """Load every model now: weight problems show before the first file, other models go on."""
        for job in self.jobs:
            self.stats.model(job.alias)
            try:
                job.extractor.load()
                write_metadata(job, self.opt.output_base)
            except Exception as exc:
                lines = str(exc).strip().splitlines()
                job.error = f"{type(exc).__name__}: {lines[-1] if lines else ''}"
                self.stats.add_failure("(all files)", job.alias, exc, "load")
                self.log(f"[{job.alias}] cannot load, skipping this model: {exc}")

    def plan(self, sources: list[Path]) -> list[tuple[Path, Path, list[ModelJob]]]:
        """(source rel path, output rel path, jobs still to do) per file."""
        names = outputs.output_names(sources)
        todo = []
        for src in sources:
            pending = []
            for job in self.jobs:
                if not self.opt.overwrite and job.spec is not None and is_done(job, names[src]):
                    self.stats.model(job.alias).skipped += 1
                else:
                    pending.append(job)
            if pending:
                todo.append((src, names[src], pending))
        return todo

    # -- the prefetch stage ---------------------------------------------------
    def _producer(self, todo, q: queue.Queue) -> None:
        try:
            for src, rel_out, jobs in todo:
                if self._stop.is_set():
                    break
                work = _Work(src, rel_out, [])
                for job in jobs:
                    if job.error:
                        work.jobs.append(job)
                        continue
                    locks = [outputs.OutputLock(p) for p in outputs_for(job, rel_out)]
                    main_lock = locks[-1]
                    if not main_lock.acquire():
                        work.claimed.append(job.alias)  # another driver computes it
                        continue
                    if not self.opt.overwrite and is_done(job, rel_out):
                        main_lock.release()  # finished by another driver meanwhile
                        work.claimed.append(job.alias)
                        continue
                    work.jobs.append(job)
                    work.locks.append(main_lock)
                if not work.jobs:
                    self._offer(q, work)
                    continue
                if any(not j.error for j in work.jobs):
                    t0 = time.perf_counter()
                    try:
                        work.decoded = audio_io.load(self.opt.audio_dir / src)
                    except Exception as exc:
                        work.error = exc
                    for job in work.jobs if work.decoded is not None else ():
                        try:
                            work.decoded.at(job.extractor.sample_rate, job.extractor.resample_method)
                        except Exception:
                            pass  # raised again for that model alone, in the main thread
                    work.decode_seconds = time.perf_counter() - t0
                if not self._offer(q, work):
                    for lock in work.locks:
                        lock.release()
        except BaseException as exc:  # never die silently: hand the error to the main thread
            self._offer(q, exc)
        finally:
            self._offer(q, None)

    def _offer(self, q: queue.Queue, item: Any) -> bool:
        """Put `item` unless the run is stopping (so the decoder never blocks on a full queue)."""
        while not self._stop.is_set():
            try:
                q.put(item, timeout=0.2)
                return True
            except queue.Full:
                continue
        return False

    # -- the main loop ----------------------------------------------------------
    def run(self) -> RunStats:
        t_start = time.perf_counter()
        opt = self.opt
        sources = media.discover(opt.audio_dir, opt.extensions, opt.recursive).files
        if opt.shard:
            index, count = opt.shard
            sources = [s for s in sources if shard_of(s, count) == index]
        self.stats.files_total = len(sources)
        for job in self.jobs:
            job.out_dir = opt.output_base / job.alias
            job.spec = job.extractor.output_spec()
            for folder in folders_for(job):
                outputs.clean_stale(folder)
        self.load_models()
        todo = self.plan(sources)

        q: queue.Queue = queue.Queue(maxsize=max(1, opt.prefetch))
        producer = threading.Thread(target=self._producer, args=(todo, q), daemon=True, name="decoder")
        previous = _install_signal_handlers()
        bar = None
        if opt.progress and todo:
            from tqdm import tqdm

            bar = tqdm(total=len(todo), unit="file", dynamic_ncols=True)
        current: _Work | None = None
        try:
            producer.start()
            while True:
                t_wait = time.perf_counter()
                item = q.get()
                self.stats.waited_for_input_seconds += time.perf_counter() - t_wait
                if item is None:
                    break
                if isinstance(item, BaseException):
                    raise item
                current = item
                self._process(item, bar)
                current = None
                if bar:
                    bar.update(1)
        except (KeyboardInterrupt, Interrupted) as exc:
            self.stats.interrupted = "SIGINT" if isinstance(exc, KeyboardInterrupt) else "SIGTERM"
            if current is not None:
                for lock in current.locks:
                    lock.release()
        finally:
            self._stop.set()
            _restore_signal_handlers(previous)
            if bar:
                bar.close()
            producer.join(timeout=10)
            _drain(q)
            self.stats.wall_seconds = time.perf_counter() - t_start
        return self.stats

    def _process(self, work: _Work, bar) -> None:
        stats = self.stats
        rel = work.rel.as_posix()
        stats.decode_seconds += work.decode_seconds  # resampling is counted per model below
        if work.decoded is not None:
            stats.files_decoded += 1
            stats.audio_seconds_decoded += work.decoded.duration_seconds
            stats.decode_seconds -= sum(work.decoded.resample_seconds.values())
        for alias in work.claimed:
            stats.model(alias).claimed_elsewhere += 1
        try:
            for job in work.jobs:
                m = stats.model(job.alias)
                if job.error:
                    m.failed += 1  # recorded once as "(all files)" at load time
                    continue
                if work.error is not None:
                    self._fail(job, rel, work.error, "decode", bar)
                    continue
                self._run_job(job, work, bar)
        finally:
            for lock in work.locks:
                lock.release()

    def _fail(self, job: ModelJob, rel: str, exc: BaseException | str, stage: str, bar,
              cause: str | None = None) -> None:
        """Count and record one failure (file, model, stage, cause) and say it."""
        self.stats.model(job.alias).failed += 1
        self.stats.add_failure(rel, job.alias, exc, stage, cause)
        f = self.stats.failures[-1]
        self._say(f"FAILED {job.alias} {rel}: {f['exception']}: {f['cause']}", bar)

    def _run_job(self, job: ModelJob, work: _Work, bar) -> None:
        m, ex = self.stats.model(job.alias), job.extractor
        rel = work.rel.as_posix()
        decoded = work.decoded
        assert decoded is not None
        key = (ex.sample_rate, ex.resample_method)
        users = sum(1 for j in work.jobs if not j.error and (j.extractor.sample_rate, j.extractor.resample_method) == key)
        m.resample_seconds += decoded.resample_seconds.get(key, 0.0) / max(1, users)
        t0 = time.perf_counter()
        try:
            feats = _extract_with_backoff(job, decoded.at(*key), ex.sample_rate, self._say_fn(bar))
            data = np.asarray(feats.data)
            _validate_output(job, data)
        except Exception as exc:
            m.inference_seconds += time.perf_counter() - t0
            self._fail(job, rel, exc, "extract", bar)
            return
        t1 = time.perf_counter()
        m.inference_seconds += t1 - t0
        paths = outputs_for(job, work.rel_out)
        try:
            for extra, path in zip(job.spec.extras, paths[:-1]):
                outputs.atomic_save_npy(path, np.asarray(feats.extras[extra]))
            outputs.atomic_save_npy(paths[-1], data)
        except OSError as exc:
            m.write_seconds += time.perf_counter() - t1
            self._fail(job, rel, exc, "write", bar, cause=outputs.explain_os_error(exc))
            return
        m.write_seconds += time.perf_counter() - t1
        m.ok += 1
        m.audio_seconds += decoded.duration_seconds
        outputs.append_jsonl(
            self.opt.output_base / "manifest.jsonl",
            {
                "run": self.run_id,
                "model": job.alias,
                "source": rel,
                "output": paths[-1].relative_to(self.opt.output_base).as_posix(),
                "shape": list(data.shape),
                "dtype": str(data.dtype),
                "audio_seconds": round(decoded.duration_seconds, 6),
                "source_sample_rate": decoded.sample_rate,
                "written": outputs.now_iso(),
            },
        )
        if self.opt.verbose:
            self._say(f"{job.alias:<10} {rel}: shape {tuple(data.shape)} in {t1 - t0:.2f} s", bar)

    def _say(self, msg: str, bar) -> None:
        if bar is not None:
            bar.write(msg)
        else:
            self.log(msg)

    def _say_fn(self, bar) -> Callable[[str], None]:
        return lambda msg: self._say(msg, bar)

    # -- outputs of the run -----------------------------------------------------
    def write_reports(self) -> tuple[Path, Path]:
        base = self.opt.output_base
        report = {"run": self.run_id, "finished": outputs.now_iso(), **self.stats.to_json()}
        if self.opt.shard:
            report["shard"] = f"{self.opt.shard[0]}/{self.opt.shard[1]}"
        suffix = f".shard{self.opt.shard[0]}of{self.opt.shard[1]}" if self.opt.shard else ""
        report_path = base / f"run_report{suffix}.json"
        failures_path = base / f"failures{suffix}.json"
        outputs.atomic_write_json(base / "reports" / f"run-{self.run_id}.json", report)
        outputs.atomic_write_json(report_path, report)
        outputs.atomic_write_json(failures_path, {"run": self.run_id, "failures": self.stats.failures})
        return report_path, failures_path


def _drain(q: queue.Queue) -> None:
    while True:
        try:
            item = q.get_nowait()
        except queue.Empty:
            return
        if isinstance(item, _Work):
            for lock in item.locks:
                lock.release()


def _raise_interrupted(signum, frame) -> None:
    raise Interrupted()


def _install_signal_handlers() -> Any:
    if threading.current_thread() is not threading.main_thread():
        return None
    return signal.signal(signal.SIGTERM, _raise_interrupted)


def _restore_signal_handlers(previous: Any) -> None:
    if previous is not None:
        signal.signal(signal.SIGTERM, previous)
