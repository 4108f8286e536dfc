"""The run loop as stages: plan -> claim -> decode -> extract -> store, then the report.

    plan(files, jobs)          -> Items: (source, kind, output names, models still to do)
    claim(item, leases)        -> the models this driver computes (leases on their outputs)
    decode(item, jobs)         -> Media: audio resampled per model, the image, the video's streams
    extract(item, jobs, media) -> Features per model (the plugins' code), as Results
    store(item, job, feats)    -> atomic arrays + one manifest line
    report                     -> RunStats (reporting.py) counts every Outcome

Each stage is one function here; an executor drives them. The local executor
(`Runner`) claims and decodes the next files in a prefetch thread into a bounded
queue, extracts in the main thread and stores in a writer thread a few results
behind; `process_item` runs the stages for one file in one call (for other
executors).
Errors are values: every (file, model) of a run ends as one `Outcome`, and the
loop moves on.
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
import queue
import signal
import sys
import threading
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator

import numpy as np

from embedkit import audio_io, media, outputs
from embedkit.extractors.base import ConfigError, Extractor, Features, OutputSpec, SkipFile
from embedkit.reporting import Outcome, RunStats


# -- what a run is made of ------------------------------------------------------------
@dataclass
class ModelJob:
    """One configured model: output folder name (alias), plugin instance, its folder."""

    alias: str
    extractor: Extractor
    out_dir: Path | None = None
    error: str | None = None  # load failure: every file this model takes fails with this cause
    _specs: dict = field(default_factory=dict, repr=False)

    def spec(self, kind: str) -> OutputSpec:
        """The output spec for files of `kind` (audio plugins: the same for audio and video)."""
        if kind not in self._specs:
            self._specs[kind] = self.extractor.output_spec(kind)
        return self._specs[kind]

    @property
    def kinds(self) -> tuple[str, ...]:
        return tuple(k for k in ("audio", "video", "image") if self.extractor.takes(k))

    def folders(self) -> list[Path]:
        """Every output folder: `<alias>.<extra>` for each extra output of any kind, then `<alias>`."""
        assert self.out_dir is not None
        extras = dict.fromkeys(e for k in self.kinds for e in self.spec(k).extra_outputs)
        return [self.out_dir.parent / f"{self.alias}.{e}" for e in extras] + [self.out_dir]

    def outputs(self, rel_out: Path, kind: str) -> list[Path]:
        """Extras first, main output last: the main output existing means the file is done."""
        assert self.out_dir is not None
        base = self.out_dir.parent
        paths = [outputs.inside(base / f"{self.alias}.{e}", rel_out) for e in self.spec(kind).extra_outputs]
        return paths + [outputs.inside(self.out_dir, rel_out)]

    def is_done(self, rel_out: Path, kind: str) -> bool:
        return all(outputs.is_complete_npy(p) for p in self.outputs(rel_out, kind))


@dataclass
class RunOptions:
    audio_dir: Path
    output_base: Path
    recursive: bool = False
    extensions: tuple[str, ...] = media.ALL_EXTENSIONS
    overwrite: bool = False
    verbose: bool = False
    prefetch: int = 2  # decoded files waiting in the queue (bounds memory)
    shard: tuple[int, int] | None = None  # (index, count), index 0-based
    progress: bool = True  # a progress bar (terminal); otherwise a line every `progress_every` s
    progress_every: float = 60.0
    lease_seconds: float = outputs.LEASE_SECONDS
    torch_threads: int | None = None  # torch's intra-op threads (None: the cores this process may use)


@dataclass
class Item:
    """One input file and the models that still have to run on it."""

    source: Path  # relative to the input folder
    kind: str  # "audio" | "video" | "image" by extension
    names: dict[str, Path]  # alias -> output path relative to the model folder
    jobs: list[ModelJob]


@dataclass
class Result:
    """What `extract` gives for one (file, model): Features, or the failure and its stage."""

    job: ModelJob
    features: Features | None = None
    error: BaseException | None = None
    stage: str = "extract"
    skipped: str | None = None  # nothing to do for this model (e.g. a video without sound)
    notes: list[str] = field(default_factory=list)
    seconds: float = 0.0
    resample_seconds: float = 0.0


class Interrupted(BaseException):
    """SIGTERM (or SIGINT) asked the run to stop after cleaning up."""


# -- plan ---------------------------------------------------------------------------
def shard_of(rel: Path, count: int) -> int:
    """Stable shard of a relative path: adding files never moves the others."""
    digest = hashlib.sha1(rel.as_posix().encode("utf-8", "surrogateescape")).digest()
    return int.from_bytes(digest[:8], "big") % count


def output_names(files: list[Path], jobs: list[ModelJob]) -> dict[str, dict[Path, Path]]:
    """alias -> {source: output path} from the FULL listing (never one shard of it).

    Two files a model takes that would share an output (`a.wav`, `a.mp3`) keep their
    extension; the same file always gets the same name whichever shard runs it.
    """
    kinds = {f: media.kind_of(f) for f in files}
    return {job.alias: outputs.output_names([f for f in files if kinds[f] in job.kinds]) for job in jobs}


def plan(files: list[Path], jobs: list[ModelJob], overwrite: bool, stats: RunStats,
         shard: tuple[int, int] | None = None) -> list[Item]:
    """The items still to do; outputs already complete are counted as skipped."""
    names = output_names(files, jobs)
    if shard:
        files = [f for f in files if shard_of(f, shard[1]) == shard[0]]
    stats.files_total = len(files)
    items = []
    for src in files:
        kind = media.kind_of(src) or "audio"
        stats.count_kind(kind)
        pending = []
        for job in jobs:
            if kind not in job.kinds:
                continue
            if not overwrite and not job.error and job.is_done(names[job.alias][src], kind):
                stats.model(job.alias).skipped += 1
            else:
                pending.append(job)
        if pending:
            items.append(Item(src, kind, {j.alias: names[j.alias][src] for j in pending}, pending))
    return items


# -- claim --------------------------------------------------------------------------------
def claim(item: Item, leases: outputs.Leases, overwrite: bool
          ) -> tuple[list[ModelJob], list[outputs.OutputLock], list[Outcome]]:
    """Lease the main output of each pending model; (jobs to run, locks held, outcomes of the rest)."""
    jobs, locks, others = [], [], []
    for job in item.jobs:
        if job.error:
            jobs.append(job)
            continue
        rel_out = item.names[job.alias]
        lock = leases.acquire(job.outputs(rel_out, item.kind)[-1])
        if not lock.held:
            others.append(Outcome(item.source.as_posix(), job.alias, "claimed", owner=lock.owner or "?"))
        elif not overwrite and job.is_done(rel_out, item.kind):  # finished by another driver meanwhile
            leases.release(lock)
            others.append(Outcome(item.source.as_posix(), job.alias, "claimed", owner="(finished)"))
        else:
            jobs.append(job)
            locks.append(lock)
    return jobs, locks, others


# -- decode -------------------------------------------------------------------------------
def decode(root: Path, item: Item, jobs: list[ModelJob]) -> media.Media:
    """Open the file and decode what the models need now: audio (resampled once per
    (rate, method)) and images. Video frames are streamed later, during extraction.

    Never raises: a decode error stays in the Media and fails each model that needs it.
    """
    live = [j for j in jobs if not j.error]
    m = media.Media(root / item.source, item.kind, residual=any(
        j.extractor.modality == "audio" and j.extractor.resample_precision == "float64" for j in live))
    try:
        if item.kind == "video":
            m.probe()
            if not m.has_audio and not m.has_video:
                raise audio_io.MediaError("no audio or video stream in this file (empty or damaged)")
        if item.kind == "image" and live:
            m.image()
    except Exception as exc:
        m.error = exc
        return m
    if m.has_audio:
        for job in live:
            if job.extractor.modality == "audio":
                try:
                    m.audio(*job.extractor.resample_key)
                except Exception:
                    pass  # raised again in extract, for the models that need the sound only
    return m


# -- extract ------------------------------------------------------------------------------
def extract(item: Item, jobs: list[ModelJob], m: media.Media,
            log: Callable[[str], None] = print, stop: threading.Event | None = None) -> Iterator[Result]:
    """Run every model on the file; yields one Result per job, as each finishes.

    Audio models get the (resampled) signal, image models the image, and every
    frame model of a video shares one decoding pass of its frames.
    """
    frame_jobs = []
    for job in jobs:
        if job.error:
            yield Result(job, error=RuntimeError(job.error), stage="load")
            continue
        if m.error is not None:
            yield Result(job, error=m.error, stage="decode")
            continue
        modality = job.extractor.modality
        if modality == "audio":
            if item.kind == "video" and not m.has_audio:
                yield Result(job, skipped="no audio track in this video")
                continue
            yield _run_audio(job, m, log, jobs)
        elif item.kind == "image":
            yield _run_image(job, m)
        elif not m.has_video:
            yield Result(job, skipped="no video stream in this file")
        else:
            frame_jobs.append(job)
    if frame_jobs:
        yield from _run_frames(frame_jobs, m, stop)


def _capture_notes(fn: Callable[[], Features]) -> tuple[Features, list[str]]:
    """Call `fn`, collecting every warning it issues as a note (each one, not only the first)."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        features = fn()
    notes = list(dict.fromkeys(str(w.message) for w in caught
                               if not issubclass(w.category, DeprecationWarning)))
    return features, notes


def _run_audio(job: ModelJob, m: media.Media, log: Callable[[str], None], jobs: list[ModelJob]) -> Result:
    ex = job.extractor
    key = ex.resample_key
    try:
        decoded = m.decoded
        audio = m.audio(*key)
    except audio_io.MediaError as exc:
        return Result(job, error=exc, stage="decode")
    except Exception as exc:
        return Result(job, error=exc, stage="resample")
    res = Result(job)
    t0 = time.perf_counter()
    try:
        res.features, res.notes = _capture_notes(lambda: _extract_with_backoff(job, audio, log))
        _validate_output(job, "audio", res.features)
    except Exception as exc:
        res.features, res.error = None, exc
    res.seconds = time.perf_counter() - t0
    # the resampling done in the decoder, shared among the models using it
    shared = audio_io.resample_key(*key)
    users = sum(1 for j in jobs if not j.error and j.extractor.modality == "audio"
                and audio_io.resample_key(*j.extractor.resample_key) == shared)
    res.resample_seconds = decoded.resample_seconds.get(shared, 0.0) / max(1, users)
    return res


def _run_image(job: ModelJob, m: media.Media) -> Result:
    try:
        rgb = m.image()
    except Exception as exc:
        return Result(job, error=exc, stage="decode")
    res = Result(job)
    t0 = time.perf_counter()
    try:
        res.features, res.notes = _capture_notes(lambda: job.extractor.extract_image(rgb))
        _validate_output(job, "image", res.features)
    except Exception as exc:
        res.features, res.error = None, exc
    res.seconds = time.perf_counter() - t0
    return res


def _run_frames(jobs: list[ModelJob], m: media.Media, stop: threading.Event | None) -> Iterator[Result]:
    """One decoding pass over the video; every chunk goes to every frame model's consumer."""
    results = {j.alias: Result(j) for j in jobs}
    consumers: dict[str, Any] = {}
    try:
        info, chunks = m.frames(stop=stop)
    except Exception as exc:
        for res in results.values():
            res.error, res.stage = exc, "decode"
        yield from results.values()
        return
    for job in jobs:
        try:
            consumers[job.alias] = job.extractor.frame_consumer(info)
        except Exception as exc:
            results[job.alias].error = exc
    notes: dict[str, list[str]] = {j.alias: [] for j in jobs}
    try:
        for chunk in chunks:
            for job in jobs:
                if job.alias not in consumers:
                    continue
                res = results[job.alias]
                t0 = time.perf_counter()
                try:
                    _, got = _capture_notes(lambda: consumers[job.alias].add(chunk))
                    notes[job.alias] += got
                except Exception as exc:
                    res.error = exc
                    del consumers[job.alias]  # this model stops; the others go on
                res.seconds += time.perf_counter() - t0
    except Exception as exc:  # the video stopped decoding: every model still reading it fails
        for alias in list(consumers):
            results[alias].error, results[alias].stage = exc, "decode"
            del consumers[alias]
    for job in jobs:
        res = results[job.alias]
        if job.alias in consumers:
            t0 = time.perf_counter()
            try:
                res.features, got = _capture_notes(consumers[job.alias].finish)
                notes[job.alias] += got
                _validate_output(job, "video", res.features)
            except Exception as exc:
                res.features, res.error = None, exc
            res.seconds += time.perf_counter() - t0
        res.notes = list(dict.fromkeys(notes[job.alias]))
        yield res


def _validate_output(job: ModelJob, kind: str, feats: Features) -> None:
    spec = job.spec(kind)
    data = np.asarray(feats.data)
    if data.ndim != len(spec.axes):
        raise RuntimeError(f"{job.alias} returned shape {data.shape}, expected axes {spec.axes}")
    if not np.isfinite(data).all():
        raise FloatingPointError(
            f"{job.alias} produced {int((~np.isfinite(data)).sum())} NaN/Inf values; nothing written "
            "(check the input; report it if the input is sane)"
        )
    if spec.timestamps_file and (feats.timestamps is None or len(feats.timestamps) != data.shape[0]):
        raise RuntimeError(f"{job.alias} returned no timestamps for its {data.shape[0]} frames")


def _extract_with_backoff(job: ModelJob, audio: np.ndarray, log: Callable[[str], None]) -> Features:
    """Run the extractor; on CUDA out-of-memory retry with half the batch size."""
    ex = job.extractor
    while True:
        try:
            return ex.extract(audio, ex.sample_rate)
        except RuntimeError as exc:
            oom = "out of memory" in str(exc).lower() and str(ex.device).startswith("cuda")
            if not oom or ex.batch_size <= 1:
                raise
            import torch

            torch.cuda.empty_cache()
            ex.batch_size = max(1, ex.batch_size // 2)
            log(f"{job.alias}: CUDA out of memory; retrying with batch_size={ex.batch_size}")


# -- store ------------------------------------------------------------------------------------
def store(output_base: Path, item: Item, res: Result, m: media.Media, run_id: str,
          manifest: Callable[[dict], None] | None = None) -> Outcome:
    """Write one Result (arrays atomically, main output last, then its manifest line) -> its Outcome.

    `manifest` takes the line instead of appending it to `<output_base>/manifest.jsonl` here (the
    Ray engine's workers hand their lines to the driver, the file's only writer).
    """
    job, src = res.job, item.source.as_posix()
    if manifest is None:
        manifest = functools.partial(outputs.append_jsonl, output_base / "manifest.jsonl")
    out = Outcome(src, job.alias, "ok", notes=res.notes, inference_seconds=res.seconds,
                  resample_seconds=res.resample_seconds)
    if isinstance(res.error, SkipFile):  # the plugin's documented choice, not a failure
        res.skipped, res.error = str(res.error), None
    if res.skipped:
        out.status, out.notes = "skipped", [res.skipped]
        manifest({
            "run": run_id, "model": job.alias, "source": src, "output": None, "skipped": res.skipped,
            "written": outputs.now_iso()})
        return out
    if res.error is not None:
        out.fail(res.error, res.stage)
        return out
    feats = res.features
    assert feats is not None
    spec, rel_out = job.spec(item.kind), item.names[job.alias]
    data = np.asarray(feats.data)
    paths = job.outputs(rel_out, item.kind)
    t0 = time.perf_counter()
    try:
        for extra, path in zip(spec.extra_outputs, paths[:-1]):
            value = feats.timestamps if extra == "timestamps" else feats.extras[extra]
            outputs.atomic_save_npy(path, np.asarray(value,
                                                     dtype=np.float64 if extra == "timestamps" else None))
        outputs.atomic_save_npy(paths[-1], data)
    except OSError as exc:
        out.write_seconds = time.perf_counter() - t0
        out.fail(exc, "write", cause=outputs.explain_os_error(exc))
        return out
    out.write_seconds = time.perf_counter() - t0
    out.media_seconds = m.duration_seconds if item.kind != "image" else 0.0
    record = {
        "run": run_id,
        "model": job.alias,
        "source": src,
        "output": paths[-1].relative_to(output_base).as_posix(),
        "shape": list(data.shape),
        "dtype": str(data.dtype),
        "kind": item.kind,
        "audio_seconds": round(m.duration_seconds, 6) if m.decoded_audio else None,
        "source_sample_rate": m.source_sample_rate,
        "written": outputs.now_iso(),
    }
    if res.notes:
        record["notes"] = res.notes
    manifest(record)
    out.shape = tuple(data.shape)
    return out


# -- one file, all stages (for executors other than the local one) ---------------------------
def process_item(root: Path, output_base: Path, item: Item, leases: outputs.Leases, run_id: str,
                 overwrite: bool = False, log: Callable[[str], None] = print) -> list[Outcome]:
    """claim -> decode -> extract -> store for one file; the Outcome of every pending model."""
    jobs, locks, outcomes = claim(item, leases, overwrite)
    try:
        if jobs:
            m = decode(root, item, jobs)
            outcomes += [store(output_base, item, res, m, run_id) for res in extract(item, jobs, m, log)]
    finally:
        for lock in locks:
            leases.release(lock)
    return outcomes


# -- metadata of a model folder ------------------------------------------------------------------
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
        old_params = job.extractor.params_as_recorded(old.get("params"))  # + parameters added since
        if (old.get("extractor") != job.extractor.name or old_params != new_params
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
    primary = ex.modality  # an image model's own kind is "image" (videos differ: per_kind)
    meta = {
        "extractor": ex.name,
        "output_folder": job.alias,
        "modality": ex.modality,
        "kinds": list(job.kinds),
        "sample_rate": ex.sample_rate,
        "resampler": ex.resample_method if ex.modality == "audio" else None,
        "resample_precision": ex.resample_precision if ex.modality == "audio" else None,
        **job.spec(primary).to_json(),
        "extra_folders": {f.name.split(".", 1)[1]: f.name for f in job.folders()[:-1]},
        "params": ex.config,
        "weights_setting": ex.weights_path,  # null: the default lookup; "random": not for research use
        "provenance": ex.provenance(),
        "file_naming": "<relative dir>/<stem>.npy; inputs this model takes that share a stem keep their "
        "extension (<stem>.<ext>.npy); manifest.jsonl maps every source to its output",
    }
    others = {k: job.spec(k).to_json() for k in job.kinds
              if k != primary and job.spec(k) != job.spec(primary)}
    if others:
        meta["per_kind"] = others  # e.g. an image model: (dim,) per image, (time, dim) per video
    outputs.atomic_write_json(output_base / job.alias / "features.json", meta)


def load_models(jobs: list[ModelJob], output_base: Path, stats: RunStats, log: Callable[[str], None],
                threads: int | None = None) -> None:
    """Load every model once: weight problems show before the first file; the other models go on.

    torch runs `threads` intra-op threads (default: `default_threads()`). Some CPU
    kernels (3-D convolutions) sum in an order that depends on it, so runs meant to give the same
    bytes use the same count (the Ray engine's actors use `--torch_threads`, default 1).
    """
    for job in jobs:
        stats.model(job.alias)
        try:
            job.extractor.load()
            write_metadata(job, output_base)
        except Exception as exc:
            job.error = load_error_text(exc)
            stats.model_not_loaded(job.alias, exc)
            log(f"[{job.alias}] cannot load, skipping this model: {_short(str(exc))}")
    if "torch" in sys.modules:  # only models that use torch pay for it
        import torch

        torch.set_num_threads(threads or default_threads())


def default_threads() -> int:
    """torch's intra-op threads when none are configured: OMP_NUM_THREADS where it is a positive
    integer (cluster job scripts set it; torch itself would honour it), else the cores this
    process may use (SLURM, taskset), not the machine's."""
    env = os.environ.get("OMP_NUM_THREADS", "").strip()
    if env.isdigit() and int(env) > 0:
        return int(env)
    return max(1, len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1)


def load_error_text(exc: BaseException) -> str:
    """`ModelJob.error` for a model that could not load: the exception's name and first line."""
    lines = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {lines[0] if lines else ''}"


def _short(text: str, limit: int = 300) -> str:
    """The first line, cut at `limit` characters (the whole text goes to failures.json)."""
    line = text.strip().splitlines()[0] if text.strip() else ""
    return line if len(line) <= limit else line[: limit - 3] + "..."


# -- the local executor -----------------------------------------------------------------------------
@dataclass
class _Work:
    """One file on its way from the decoder thread to the models."""

    item: Item
    jobs: list[ModelJob]
    locks: list[outputs.OutputLock]
    outcomes: list[Outcome]
    media: media.Media | None = None
    decode_seconds: float = 0.0  # decode + resampling, in the prefetch thread


class Runner:
    """Runs model jobs over an input folder on this machine. One instance per run."""

    def __init__(self, jobs: list[ModelJob], options: RunOptions, log: Callable[[str], None] = print) -> None:
        self.jobs = jobs
        self.opt = options
        self.log = log
        self.stats = RunStats()
        self.run_id = time.strftime("%Y%m%d-%H%M%S") + f"-{os.getpid()}"
        self.listing: media.Listing | None = None
        self._stop = threading.Event()
        self._leases = outputs.Leases(options.lease_seconds)
        self._writer = _Writer()
        self._stats_lock = threading.Lock()  # the writer thread counts outcomes too

    # -- before any file ----------------------------------------------------------------
    def prepare(self) -> list[Item]:
        """Discover, load the models, write their metadata, plan: the items still to do."""
        opt = self.opt
        self.listing = media.discover(opt.audio_dir, opt.extensions, opt.recursive)
        for job in self.jobs:
            job.out_dir = opt.output_base / job.alias
            for folder in job.folders():
                outputs.clean_stale(folder)
        load_models(self.jobs, opt.output_base, self.stats, self.log, opt.torch_threads)
        items = plan(self.listing.files, self.jobs, opt.overwrite, self.stats, opt.shard)
        self._announce(items)
        return items

    def _announce(self, items: list[Item]) -> None:
        s, listing = self.stats, self.listing
        assert listing is not None
        kinds = ", ".join(f"{n} {k}" for k, n in s.files_by_kind.items() if n)
        shard = f" (shard {self.opt.shard[0]}/{self.opt.shard[1]})" if self.opt.shard else ""
        self.log(f"found {s.files_total} file(s){shard} in {self.opt.audio_dir}"
                 + (f": {kinds}" if kinds else ""))
        for line in listing.left_out_lines():
            self.log(f"  left out: {line}")
        unused = [k for k, n in s.files_by_kind.items() if n and not any(k in j.kinds for j in self.jobs)]
        for k in unused:
            self.log(f"  no configured model takes {k} files ({s.files_by_kind[k]} left out)")
        todo = sum(len(i.jobs) for i in items)
        done = sum(m.skipped for m in s.models.values())
        self.log(f"to do: {todo} output(s) over {len(items)} file(s); already complete: {done}")

    # -- the prefetch stage ---------------------------------------------------------------
    def _producer(self, items: list[Item], q: queue.Queue) -> None:
        try:
            for item in items:
                if self._stop.is_set():
                    break
                jobs, locks, outcomes = claim(item, self._leases, self.opt.overwrite)
                work = _Work(item, jobs, locks, outcomes)
                if jobs:
                    t0 = time.perf_counter()
                    work.media = decode(self.opt.audio_dir, item, jobs)
                    work.decode_seconds = time.perf_counter() - t0
                if not self._offer(q, work):
                    self._release(work)
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

    def _release(self, work: _Work) -> None:
        for lock in work.locks:
            self._leases.release(lock)

    # -- the main loop ---------------------------------------------------------------------
    def run(self) -> RunStats:
        t_start = time.perf_counter()
        opt = self.opt
        previous = _install_signal_handlers(self)
        q: queue.Queue = queue.Queue(maxsize=max(1, opt.prefetch))
        producer = None
        self._progress = _Progress(self.stats, self.log, opt.progress, opt.progress_every)
        try:
            items = self.prepare()
            self._progress.start(len(items), sum(m.skipped for m in self.stats.models.values()))
            producer = threading.Thread(target=self._producer, args=(items, q), daemon=True, name="decoder")
            producer.start()
            while True:
                t_wait = time.perf_counter()
                got = self._next(q)
                self.stats.waited_for_input_seconds += time.perf_counter() - t_wait
                if got is None:
                    break
                if isinstance(got, BaseException):
                    raise got
                self._process(got)
        except (KeyboardInterrupt, Interrupted) as exc:
            self.stats.interrupted = "SIGINT" if isinstance(exc, KeyboardInterrupt) else "SIGTERM"
        finally:
            self._stop.set()
            self._writer.close()  # what was computed is written (a few arrays at most)
            # interrupted: don't wait for a long decode (its locks go below). is_alive(): a signal can
            # land inside producer.start(), before the thread counts as started (join would raise)
            if producer is not None and producer.is_alive():
                producer.join(timeout=2 if self.stats.interrupted else 10)
            _drain(q)
            self._leases.close()  # every lock this process still holds, whichever thread took it
            self._progress.close()
            _restore_signal_handlers(previous)
            self.stats.wall_seconds = time.perf_counter() - t_start
        return self.stats

    _signalled: str | None = None  # "SIGINT" / "SIGTERM" once one has arrived

    def _raise_signalled(self) -> None:
        if self._signalled == "SIGINT":
            raise KeyboardInterrupt
        if self._signalled == "SIGTERM":
            raise Interrupted()

    def _next(self, q: queue.Queue) -> Any:
        """The next decoded file; a signal stops the wait even if its exception was lost."""
        while True:
            self._raise_signalled()
            try:
                return q.get(timeout=0.25)
            except queue.Empty:
                continue

    def _process(self, work: _Work) -> None:
        """Extract here; store in the writer thread, so writing overlaps the next extraction."""
        item, m = work.item, work.media
        try:
            if m is not None:
                if self.opt.verbose:
                    what = f"{m.duration_seconds / 60:.1f} min of audio" if m.decoded_audio else item.kind
                    self._progress.say(f"{item.source.as_posix()}: started ({what}; "
                                       f"{', '.join(j.alias for j in work.jobs)})")
                for res in extract(item, work.jobs, m, self._progress.say, self._stop):
                    self._raise_signalled()  # a stopped run writes nothing of the file it was on
                    self._writer.submit(lambda res=res: self._store(item, res, m))
        finally:  # after this file's results are stored: count it, free its leases
            self._writer.submit(lambda: self._file_done(work))

    def _store(self, item: Item, res: Result, m: media.Media) -> None:
        try:
            outcome = store(self.opt.output_base, item, res, m, self.run_id)
        except Exception as exc:  # a bug, not a disk error (those are outcomes already)
            outcome = Outcome(item.source.as_posix(), res.job.alias, "failed")
            outcome.fail(exc, "write")
        with self._stats_lock:
            self.stats.add(outcome)
        if outcome.status == "failed" and outcome.stage != "load":  # load errors were said once
            self._progress.say(f"FAILED {outcome.model} {outcome.source}: {outcome.exception}: "
                               f"{_short(outcome.cause)}")
        elif self.opt.verbose and outcome.status == "ok":
            self._progress.say(f"{outcome.model:<12} {outcome.source}: shape {outcome.shape} "
                               f"in {outcome.inference_seconds:.2f} s")
        elif self.opt.verbose:
            self._progress.say(f"{outcome.model:<12} {outcome.source}: skipped ({outcome.notes[0]})")

    def _file_done(self, work: _Work) -> None:
        with self._stats_lock:
            for outcome in work.outcomes:
                self.stats.add(outcome)
            if work.media is not None:
                self.stats.decode_seconds += work.decode_seconds - sum(work.media.resample_seconds.values())
                self.stats.count_decoded(work.media)
        self._release(work)
        self._progress.file_done()

    # -- outputs of the run -------------------------------------------------------------------
    def _report_head(self) -> dict:
        """The report's first keys (another executor adds its own, e.g. the Ray engine's cluster)."""
        torch = sys.modules.get("torch")  # None: no model of this run uses torch
        return {"run": self.run_id, "finished": outputs.now_iso(),
                "audio_dir": str(Path(self.opt.audio_dir).resolve()),
                "torch_threads": torch.get_num_threads() if torch else None}

    def write_reports(self) -> tuple[Path, Path]:
        base = self.opt.output_base
        report = {**self._report_head(), **self.stats.to_json()}
        if self.opt.shard:
            report["shard"] = f"{self.opt.shard[0]}/{self.opt.shard[1]}"
        suffix = f".shard{self.opt.shard[0]}of{self.opt.shard[1]}" if self.opt.shard else ""
        report_path = base / f"run_report{suffix}.json"
        failures_path = base / f"failures{suffix}.json"
        outputs.atomic_write_json(base / "reports" / f"run-{self.run_id}.json", report)
        outputs.atomic_write_json(report_path, report)
        outputs.atomic_write_json(failures_path, {"run": self.run_id, "failures": self.stats.failures})
        return report_path, failures_path


class _Writer:
    """One thread that runs the store stage in order, at most `slots` results behind the models.

    Writing and fsync then overlap the next file's extraction; the bound keeps memory
    to a few arrays. `close()` finishes what was handed over.
    """

    def __init__(self, slots: int = 4) -> None:
        from concurrent.futures import ThreadPoolExecutor

        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="writer")
        self._slots = threading.BoundedSemaphore(slots)

    def submit(self, fn: Callable[[], None]) -> None:
        self._slots.acquire()

        def task() -> None:
            try:
                fn()
            finally:
                self._slots.release()

        self._pool.submit(task)

    def close(self) -> None:
        self._pool.shutdown(wait=True)


class _Progress:
    """A tqdm bar on a terminal; elsewhere (SLURM, nohup, CI) a line every `every` seconds."""

    def __init__(self, stats: RunStats, log: Callable[[str], None], bar: bool, every: float) -> None:
        self.stats, self.log, self.every = stats, log, every
        self.use_bar = bar
        self.bar = None
        self.total = self.done = 0
        self._t0 = time.perf_counter()
        self._halt = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self, total: int, already: int) -> None:
        self.total, self._t0 = total, time.perf_counter()
        if not total:
            return
        if self.use_bar:
            from tqdm import tqdm

            self.bar = tqdm(total=total, unit="file", dynamic_ncols=True)
        elif self.every > 0:
            self._thread = threading.Thread(target=self._tick, daemon=True, name="progress")
            self._thread.start()

    def _tick(self) -> None:
        while not self._halt.wait(self.every):
            self.log(self.line())

    def line(self) -> str:
        s = self.stats
        elapsed = time.perf_counter() - self._t0
        rate = self.done / elapsed if elapsed > 0 else 0.0
        eta = (self.total - self.done) / rate if rate > 0 else None
        pct = 100.0 * self.done / self.total if self.total else 100.0
        return (f"progress: {self.done}/{self.total} files ({pct:.0f}%), "
                f"{s.audio_seconds_decoded / 3600:.2f} h of audio, {rate * 60:.1f} files/min, "
                f"ETA {_duration(eta)}, {len(s.failures)} failure(s)")

    def say(self, msg: str) -> None:
        if self.bar is not None:
            self.bar.write(msg)
        else:
            self.log(msg)

    def file_done(self) -> None:
        self.done += 1
        if self.bar is not None:
            self.bar.update(1)

    def close(self) -> None:
        self._halt.set()
        if self.bar is not None:
            self.bar.close()


def _duration(seconds: float | None) -> str:
    if seconds is None:
        return "unknown"
    seconds = int(seconds)
    h, rem = divmod(seconds, 3600)
    return f"{h}h{rem // 60:02d}m" if h else f"{rem // 60}m{rem % 60:02d}s"


def extract_file(extractor: Extractor, path: str | os.PathLike) -> Features:
    """Features of one file by one extractor, outside a run (search queries, the Python API).

    Decodes the file and feeds the extractor the input it declares (audio, image or video frames).
    """
    kind = media.kind_of(path) or "audio"
    if not extractor.takes(kind):
        raise ValueError(f"{extractor.name} does not take {kind} files ({path})")
    job = ModelJob(extractor.name, extractor)
    item = Item(Path(os.path.basename(path)), kind, {}, [job])
    m = media.Media(path, kind,
                    residual=extractor.modality == "audio" and extractor.resample_precision == "float64")
    res = next(extract(item, [job], m, log=lambda msg: print(msg, file=sys.stderr)))
    if res.error is not None:
        raise res.error
    if res.skipped:
        raise audio_io.MediaError(res.skipped)
    assert res.features is not None
    return res.features


def _drain(q: queue.Queue) -> None:
    while True:
        try:
            q.get_nowait()
        except queue.Empty:
            return


def _install_signal_handlers(runner: Runner) -> dict | None:
    """SIGINT / SIGTERM raise in the main thread and are also remembered on `runner`: an
    exception raised where Python swallows it (a finalizer that ran at that moment) is then
    raised again at the next check (`Runner._check_signal`)."""
    if threading.current_thread() is not threading.main_thread():
        return None

    def handler(signum, frame) -> None:
        runner._signalled = "SIGINT" if signum == signal.SIGINT else "SIGTERM"
        runner._raise_signalled()

    # a signal this process was started ignoring stays ignored (`cmd &` in a script ignores SIGINT)
    return {s: signal.signal(s, handler) for s in (signal.SIGINT, signal.SIGTERM)
            if signal.getsignal(s) is not signal.SIG_IGN}


def _restore_signal_handlers(previous: dict | None) -> None:
    for s, handler in (previous or {}).items():
        signal.signal(s, handler)
