"""The run loop as stages: plan -> claim -> decode -> extract -> store, then the report.

    plan(files, jobs)          -> Items: (source, kind, output names, models still to do)
    claim(item, leases)        -> the models this driver computes (leases on their outputs)
    decode(item, jobs)         -> Media: audio resampled per model, the image, the video's streams
    extract(item, jobs, media) -> Features per model (the plugins' code), as Results
    store(item, job, feats)    -> atomic arrays + one manifest line (config digest, input fingerprint)
    report                     -> RunStats (reporting.py) counts every Outcome

What is already done is the `Ledger`'s answer: an output counts as complete when its array
is whole, the manifest's last record for (model, source) names it, was made with this
configuration and from the input as it is now (size, mtime, sha256 where cheap). Anything
else is computed again: an array without its record (a kill between the two), a changed
input, an array of another configuration.

Each stage is one function here; an executor drives them. The local executor
(`Runner`) claims and decodes the next files in a prefetch thread into a bounded
queue, extracts in the main thread and stores in a writer thread a few results
behind; `process_item` runs the stages for one file in one call (for other
executors).
Errors are values: every (file, model) of a run ends as one `Outcome`, and the
loop moves on.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import json
import os
import queue
import signal
import sys
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator

import numpy as np

from embedkit import audio_io, media, notes, outputs
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
    # where resampy's filters bring audio to this model: a torch device (the model's CUDA device:
    # the model stage resamples there, the decoder does not), or None: NumPy in the decoder
    resample_device: str | None = None
    _specs: dict = field(default_factory=dict, repr=False)
    _meta_stat: tuple | None = field(default=None, repr=False)  # features.json as this job last saw it

    @property
    def config_digest(self) -> str:
        """The configuration's digest: features.json's `config_digest`, each manifest line's `config`."""
        ex = self.extractor
        return outputs.config_digest(ex.name, json.loads(json.dumps(ex.config, default=str)), ex.weights_path)

    def check_claim(self) -> None:
        """ConfigConflict when features.json no longer names this configuration (another run
        replaced it with --overwrite meanwhile): arrays of two configurations never share a folder.
        One stat per call; the file is read again only when it changed."""
        assert self.out_dir is not None
        meta = self.out_dir / "features.json"
        try:
            st = os.stat(meta)
        except FileNotFoundError:
            raise outputs.ConfigConflict(f"{meta} was removed while this run was writing to {self.out_dir}; "
                                         "rerun") from None
        key = (st.st_ino, st.st_mtime_ns, st.st_size)
        if key == self._meta_stat:
            return
        try:
            theirs = outputs.read_config_digest(json.loads(meta.read_text()))
        except (OSError, ValueError) as exc:
            raise outputs.ConfigConflict(f"{meta} cannot be read ({exc}); rerun") from None
        if theirs != self.config_digest:
            raise outputs.ConfigConflict(
                f"{meta} now describes another configuration ({theirs}, this run's is {self.config_digest}): "
                "another run replaced it (with --overwrite?) while this one was writing; this run writes "
                f"no more arrays to {self.out_dir}")
        self._meta_stat = key

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
    max_pixels_per_frame: int = media.MAX_PIXELS_PER_FRAME  # the size guard for images and video frames
    decode_workers: int | None = None  # decode processes (None: the cores beside the models'; 0: in-process)
    decode_only: bool = False  # the preflight: decode and resample every file, load no model, write no array
    resample_on: str = "auto"  # resampy's filters: "auto" (on the models' CUDA device), "cpu", "device"


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
    forward_passes: int = 0  # network calls made for it (a batch of several files counts on its first)
    items_forwarded: int = 0


class Interrupted(BaseException):
    """SIGTERM (or SIGINT) asked the run to stop after cleaning up."""


# -- plan ---------------------------------------------------------------------------
def shard_of(rel: Path, count: int) -> int:
    """Stable shard of a relative path: adding files never moves the others."""
    digest = hashlib.sha1(rel.as_posix().encode("utf-8", "surrogateescape")).digest()
    return int.from_bytes(digest[:8], "big") % count


def output_names(files: list[Path], jobs: list[ModelJob]) -> dict[str, dict[Path, Path]]:
    """alias -> {source: output path}: the same names for every model (`outputs.output_names` over
    `files`; a run gets them from `media.discover`, over everything each folder holds)."""
    names = outputs.output_names(files)
    return {job.alias: names for job in jobs}


class Ledger:
    """What the output folder holds for each (model, source), from the manifest and the arrays.

    `check` says whether an output is complete and current; everything else is to do, with
    the reason when it is done again (counted in the report): "unrecorded" (a whole array
    without its manifest line: a run stopped between the two), "input" (the input changed
    since), "config" (an array of another configuration, e.g. from an interrupted --overwrite).
    Lines written before records named their configuration and input are trusted as they are.
    """

    def __init__(self, root: Path, output_base: Path) -> None:
        self.root = Path(root)
        self.output_base = Path(output_base)
        self.index = outputs.ManifestIndex(self.output_base / "manifest.jsonl")
        self.index.refresh()

    def check(self, job: ModelJob, source: Path, rel_out: Path, kind: str) -> tuple[bool, str | None]:
        """(complete and current, why it is computed again: None for outputs never written)."""
        rec = self.index.get(job.alias, source.as_posix())
        complete = job.is_done(rel_out, kind)
        if rec is None:
            return False, "unrecorded" if complete else None
        if rec.get("config") not in (None, job.config_digest):
            return False, "config"
        if rec.get("output") is None:  # "nothing in it for this model" (a video without sound)
            if "input" not in rec:
                return False, None  # an older line: look again, and record what the input was
            return (True, None) if outputs.input_changed(rec["input"], self.root / source) is None \
                else (False, "input")
        main = job.outputs(rel_out, kind)[-1].relative_to(self.output_base).as_posix()
        if rec["output"] != main:  # recorded under another name (stale_outputs has the old one)
            return False, "unrecorded" if complete else None
        if not complete:
            return False, None
        if "input" in rec and outputs.input_changed(rec["input"], self.root / source) is not None:
            return False, "input"
        return True, None

    def stale(self, names: dict[Path, Path]) -> list[dict]:
        """Outputs still on disk under a name no longer current for their source (the folder's
        contents changed, or an older release named it otherwise): [{output, model, source, current}].

        `names`: this run's current names; sources outside them (other extensions, sub-folders
        a run without --recursive does not take) are named from what their folder holds now.
        Sources that are gone are not listed (their outputs are not stale by name).
        """
        cache: dict = {}
        expected = {}
        for (model, source), rec in self.index.items():
            current = names.get(Path(source)) or media.output_name(self.root, Path(source), cache)
            if current is not None:
                expected[(model, source)] = f"{model}/{current.as_posix()}"
        live = set(expected.values())  # never list a file that is some source's current output
        out = []
        for (model, source), rec in self.index.items():
            if (model, source) not in expected:
                continue
            named = {*self.index.superseded.get((model, source), ()), rec.get("output") or ""} - {""}
            for old in sorted(named - live):
                if (self.output_base / old).is_file():
                    out.append({"output": old, "model": model, "source": source,
                                "current": expected[(model, source)]})
        return out


def plan(files: list[Path], jobs: list[ModelJob], overwrite: bool, stats: RunStats,
         shard: tuple[int, int] | None = None, names: dict[Path, Path] | None = None,
         ledger: Ledger | None = None) -> list[Item]:
    """The items still to do; outputs already complete are counted as skipped.

    names: output name per source (default: `outputs.output_names(files)`); ledger: what the
    output folder holds (default: an output counts as done when its arrays are whole).
    """
    names = names if names is not None else outputs.output_names(files)
    if shard:
        files = [f for f in files if shard_of(f, shard[1]) == shard[0]]
    items = []
    for src in files:
        kind = media.kind_of(src) or "audio"
        takers = [job for job in jobs if kind in job.kinds]
        if not takers:
            stats.files_not_taken[kind] = stats.files_not_taken.get(kind, 0) + 1
            continue
        stats.files_total += 1
        stats.count_kind(kind)
        pending = []
        for job in takers:
            if overwrite or job.error:
                done, why = False, None
            elif ledger is not None:
                done, why = ledger.check(job, src, names[src], kind)
            else:
                done, why = job.is_done(names[src], kind), None
            if done:
                stats.model(job.alias).skipped += 1
            else:
                pending.append(job)
                if why:
                    stats.redo[why] += 1
        if pending:
            items.append(Item(src, kind, {j.alias: names[src] for j in pending}, pending))
    return items


# -- claim --------------------------------------------------------------------------------
def claim(item: Item, leases: outputs.Leases, overwrite: bool, ledger: Ledger | None = None
          ) -> tuple[list[ModelJob], list[outputs.OutputLock], list[Outcome]]:
    """Lease the main output of each pending model; (jobs to run, locks held, outcomes of the rest).

    With a lease held, the output is checked again (`ledger`, reading the manifest lines other
    drivers appended meanwhile): finished elsewhere, it is not computed twice.
    """
    jobs, locks, others = [], [], []
    if ledger is not None:
        ledger.index.refresh()
    for job in item.jobs:
        if job.error:
            jobs.append(job)
            continue
        rel_out = item.names[job.alias]
        main = job.outputs(rel_out, item.kind)[-1]
        try:
            lock = leases.acquire(main)
        except OSError as exc:  # a full disk shows first here, at the lock's own little file
            out = Outcome(item.source.as_posix(), job.alias, "failed")
            out.fail(exc, "claim", cause=outputs.explain_os_error(exc, main.parent))
            out.disk_full = str(main.parent) if outputs.is_disk_full(exc) else ""
            others.append(out)
            continue
        if not lock.held:
            others.append(Outcome(item.source.as_posix(), job.alias, "claimed", owner=lock.owner or "?"))
            continue
        if overwrite:
            done = False
        elif ledger is not None:
            done = ledger.check(job, item.source, rel_out, item.kind)[0]
        else:
            done = job.is_done(rel_out, item.kind)
        if done:  # finished by another driver meanwhile
            leases.release(lock)
            others.append(Outcome(item.source.as_posix(), job.alias, "claimed", owner="(finished)"))
        else:
            jobs.append(job)
            locks.append(lock)
    return jobs, locks, others


# -- decode -------------------------------------------------------------------------------
def decode(root: Path, item: Item, jobs: list[ModelJob],
           max_pixels: int = media.MAX_PIXELS_PER_FRAME) -> media.Media:
    """Open the file and decode what the models need now: audio (resampled once per
    (rate, method)) and images. Video frames are streamed later, during extraction.

    What the file is (size, mtime, sha256 where cheap) is taken first, for the manifest;
    warnings met while decoding become notes of this file. Never raises: a decode error stays
    in the Media and fails each model that needs it.
    """
    live = [j for j in jobs if not j.error]
    m = media.Media(root / item.source, item.kind, residual=any(
        j.extractor.modality == "audio" and j.extractor.resample_precision == "float64" for j in live),
        max_pixels=max_pixels)
    with notes.capture() as got:
        _decode(m, item, live)
    m.notes.extend(n for n in got if n not in m.notes)
    return m


def _decode(m: media.Media, item: Item, live: list[ModelJob]) -> None:
    try:
        m.input = outputs.input_fingerprint(m.path)
    except OSError as exc:
        m.error = audio_io.MediaError(f"cannot read: {exc.strerror}")
        return
    try:
        if item.kind == "video":
            m.probe()
            if not m.has_audio and not m.has_video:
                raise audio_io.MediaError("no audio or video stream in this file (empty or damaged)")
        if item.kind == "image" and live:
            m.image()
    except Exception as exc:
        m.error = exc
        return
    if m.has_audio:
        for job in live:
            if job.extractor.modality == "audio":
                try:
                    key = job.extractor.resample_key
                    n, sr = m.decoded.audio.shape[0], m.decoded.sample_rate
                    if audio_io.resamples_on(job.resample_device, n, sr, key[0], key[1]) is None:
                        m.audio(*key)  # else the model stage resamples on its device
                except Exception:
                    pass  # raised again in extract, for the models that need the sound only


def model_audio(m: media.Media, job: ModelJob) -> np.ndarray:
    """The file's signal as `job`'s model takes it (resampled once, on its `resample_device`)."""
    return m.audio(*job.extractor.resample_key, device=job.resample_device)


def resample_device_for(resample_on: str, job: ModelJob) -> str | None:
    """Where resampy's filters bring audio to `job`'s model (RunOptions.resample_on): "cpu" None
    (NumPy, in the decoder); "device" the model's torch device (on a CPU run: torch on the CPU,
    for checks); "auto" the model's device where it is CUDA, else None. None for soxr and for
    models that take no audio."""
    if resample_on not in audio_io.RESAMPLE_ON:
        raise ValueError(f"resample_on must be one of {', '.join(audio_io.RESAMPLE_ON)}, got {resample_on!r}")
    ex = job.extractor
    if resample_on == "cpu" or job.error or ex.modality != "audio" or ex.resample_method.startswith("soxr"):
        return None
    device = str(getattr(ex, "device", "cpu"))
    if resample_on == "device":
        return device
    return device if device.startswith("cuda") else None


def count_frames(m: media.Media, jobs: list[ModelJob]) -> None:
    """The preflight's video pass, where a model takes the frames: decode every frame (no model),
    counting them and the time taken; a stream that stops decoding mid-way is `m.frames_error`."""
    if m.error is not None or m.kind != "video" or not any(
            j.extractor.modality != "audio" for j in jobs if not j.error) or not m.has_video:
        return
    t0 = time.perf_counter()
    try:
        _, chunks = m.frames()
        for chunk in chunks:
            m.frames_decoded += len(chunk)
    except Exception as exc:
        m.frames_error = exc if isinstance(exc, audio_io.MediaError) else audio_io.MediaError(
            audio_io.one_line(exc))
    m.frames_seconds = time.perf_counter() - t0


# -- extract ------------------------------------------------------------------------------
def extract(item: Item, jobs: list[ModelJob], m: media.Media,
            log: Callable[[str], None] = print, stop: threading.Event | None = None,
            share: list[ModelJob] | None = None, defer: dict[str, Any] | None = None) -> Iterator[Result]:
    """Run every model on the file; yields one Result per job, as each finishes.

    Audio models get the (resampled) signal, image models the image, and every
    frame model of a video shares one decoding pass of its frames. `share`: every model
    of the file, where `jobs` are some of them (the resampling time is shared among them).
    `defer`: video models that pack leave their last items there (`_run_frames`).
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
            yield _run_audio(job, m, log, share or jobs)
        elif item.kind == "image":
            yield _run_image(job, m)
        elif not m.has_video:
            yield Result(job, skipped="no video stream in this file")
        else:
            frame_jobs.append(job)
    if frame_jobs:
        yield from _run_frames(frame_jobs, m, stop, defer)


@contextlib.contextmanager
def _counting(ex: Extractor, res: Result) -> Iterator[None]:
    """The network calls `ex` makes meanwhile (its run_batches counters) go onto `res`."""
    passes, items = ex.forward_passes, ex.items_forwarded
    try:
        yield
    finally:
        res.forward_passes += ex.forward_passes - passes
        res.items_forwarded += ex.items_forwarded - items


def _capture_notes(fn: Callable[[], Any]) -> tuple[Any, list[str]]:
    """Call `fn`, collecting every warning it issues in this thread as a note (each one, not only
    the first; `notes.capture`: another thread's warnings never land here)."""
    with notes.capture() as got:
        features = fn()
    return features, got


def _run_audio(job: ModelJob, m: media.Media, log: Callable[[str], None], jobs: list[ModelJob]) -> Result:
    ex = job.extractor
    try:
        decoded = m.decoded
        audio = model_audio(m, job)
    except audio_io.MediaError as exc:
        return Result(job, error=exc, stage="decode")
    except Exception as exc:
        return Result(job, error=exc, stage="resample")
    res = Result(job)
    t0 = time.perf_counter()
    try:
        with _counting(ex, res):
            res.features, res.notes = _capture_notes(lambda: _extract_with_backoff(job, audio, log))
        _validate_output(job, "audio", res.features)
    except Exception as exc:
        res.features, res.error = None, exc
    res.seconds = time.perf_counter() - t0
    res.resample_seconds = _resample_share(job, decoded, jobs)
    return res


def _resample_share(job: ModelJob, decoded: audio_io.Decoded, jobs: list[ModelJob]) -> float:
    """The job's share of the resampling done in the decoder (shared among the models using it)."""
    shared = audio_io.resample_key(*job.extractor.resample_key)
    users = sum(1 for j in jobs if not j.error and j.extractor.modality == "audio"
                and audio_io.resample_key(*j.extractor.resample_key) == shared)
    return decoded.resample_seconds.get(shared, 0.0) / max(1, users)


def _run_image(job: ModelJob, m: media.Media) -> Result:
    try:
        rgb = m.image()
    except Exception as exc:
        return Result(job, error=exc, stage="decode")
    res = Result(job)
    t0 = time.perf_counter()
    try:
        with _counting(job.extractor, res):
            res.features, res.notes = _capture_notes(lambda: job.extractor.extract_image(rgb))
        _validate_output(job, "image", res.features)
    except Exception as exc:
        res.features, res.error = None, exc
    res.seconds = time.perf_counter() - t0
    return res


# -- extract, across files -----------------------------------------------------------------------
# The local executor packs consecutive files into shared forward passes, per model: the images of
# image files, the items (windows, clips, frames) of short audio files, those with fewer items
# than one network call (`Extractor.packs_audio`; a longer file runs alone, as it always did, so
# its memory bound holds), and the clips each video leaves at its end (`Extractor.batches_video`).
# `batch_groups` says which files may share a pass: groups of the sorted listing, the same on every
# rerun and shard. `prepare_images` / `_audio` / `_video` ready each file as it arrives (decoded
# pixels and samples are freed: a waiting file holds its network inputs only), `extract_batch`
# runs the passes. Only the network calls are shared: decoding, each plugin's
# front-end and the checks of each output stay per file, so a bad file fails alone and never
# enters a batch. An item's output does not depend on its batch companions on the CPU (measured
# bitwise, checked by tests/test_batching.py), so reruns, resumed and sharded runs write the same
# bytes.
# Short audio files wait until their items fill this many network calls of a model (or their
# group ends): the last call's padding is then a small share, and the wait holds a few calls' items.
PACK_CALLS = 8


@dataclass
class BatchMember:
    """One file waiting for its batch: its models' Results and their prepared inputs."""

    item: Item
    jobs: list[ModelJob]
    media: media.Media
    results: dict[str, Result]  # alias -> Result (final already where it failed or did not batch)
    inputs: dict[str, Any]  # alias -> the plugin's prepared input, for the models still to run

    def ordered(self) -> list[Result]:
        """The file's Results in its models' order (as `extract` yields them)."""
        return [self.results[j.alias] for j in self.jobs]

    def items(self, alias: str) -> int:
        """Network items this file adds to `alias`'s batch (an image: 1)."""
        x = self.inputs.get(alias)
        return 0 if x is None else 1 if self.item.kind == "image" else len(x[0])


def batch_groups(files: list[Path], jobs: list[ModelJob]) -> dict[Path, tuple[str, int]]:
    """Which files may share a forward pass: consecutive image files of `files` (the run's sorted
    listing, after sharding) in groups of the largest `batch_size` among the models that batch
    images; consecutive audio (video) files in groups of the largest network call among the
    models that pack short audio (videos' last items). The same groups on every rerun, whatever
    is already done (a resumed run computes the remaining members of a group together). Nothing
    where no model batches (batch_size 1)."""
    live = [j for j in jobs if not j.error]
    sizes = {"image": max((j.extractor.batch_size for j in live
                           if "image" in j.kinds and j.extractor.batches_images), default=1),
             "audio": max((j.extractor.call_size() for j in live
                           if j.extractor.modality == "audio" and j.extractor.batches_audio), default=1),
             "video": max((j.extractor.call_size() for j in live if j.extractor.batches_video), default=1)}
    groups: dict[Path, tuple[str, int]] = {}
    for kind, size in sizes.items():
        if size > 1:
            of_kind = [f for f in files if (media.kind_of(f) or "audio") == kind]
            groups.update({f: (kind, i // size) for i, f in enumerate(of_kind)})
    return groups


def prepare_images(item: Item, jobs: list[ModelJob], m: media.Media) -> BatchMember:
    """extract() of one image file up to the forward pass: load and decode failures as Results,
    each batching model's `prepare_image` (a refusal fails that model on this file only), models
    that do not batch run at once. The decoded pixels are freed after: a file waiting for its
    batch holds its network inputs only."""
    member = BatchMember(item, jobs, m, {}, {})
    for job in jobs:
        ex = job.extractor
        if job.error:
            member.results[job.alias] = Result(job, error=RuntimeError(job.error), stage="load")
            continue
        if m.error is not None:
            member.results[job.alias] = Result(job, error=m.error, stage="decode")
            continue
        if not ex.batches_images:
            member.results[job.alias] = _run_image(job, m)
            continue
        try:
            rgb = m.image()
        except Exception as exc:
            member.results[job.alias] = Result(job, error=exc, stage="decode")
            continue
        res = member.results[job.alias] = Result(job)
        t0 = time.perf_counter()
        try:
            member.inputs[job.alias], res.notes = _capture_notes(lambda: ex.prepare_image(rgb))
        except Exception as exc:
            res.error = exc
        res.seconds = time.perf_counter() - t0
    m.drop_image()
    return member


def packing_jobs(item: Item, jobs: list[ModelJob], m: media.Media) -> list[ModelJob]:
    """The models for which this audio file is short (`Extractor.packs_audio` of its signal at the
    model's rate): those its items go to a shared call for. [] for a file that failed to decode."""
    if item.kind != "audio" or m.error is not None:
        return []
    packing = []
    for job in jobs:
        ex = job.extractor
        if job.error or ex.modality != "audio" or not ex.batches_audio:
            continue
        try:
            n = model_audio(m, job).shape[0]
        except Exception:
            continue  # `extract` reports it
        if ex.packs_audio(n):
            packing.append(job)
    return packing


def prepare_audio(item: Item, jobs: list[ModelJob], m: media.Media, packing: list[ModelJob],
                  log: Callable[[str], None] = print) -> BatchMember:
    """extract() of one short audio file up to the forward passes of the `packing` models (their
    `prepare_audio`: a refusal fails that model on this file only); the other models run at once.
    The samples are freed after (duration and rates stay for the report)."""
    member = BatchMember(item, jobs, m, {}, {})
    packed = {j.alias for j in packing}
    others = [j for j in jobs if j.alias not in packed]
    for res in extract(item, others, m, log, share=jobs):
        member.results[res.job.alias] = res
    for job in packing:
        ex = job.extractor
        res = member.results[job.alias] = Result(job)
        t0 = time.perf_counter()
        try:
            audio = model_audio(m, job)
            member.inputs[job.alias], res.notes = _capture_notes(lambda: ex.prepare_audio(audio))
        except Exception as exc:
            res.error = exc
        res.seconds = time.perf_counter() - t0
        res.resample_seconds = _resample_share(job, m.decoded, jobs)
    m.drop_audio()
    return member


def prepare_video(item: Item, jobs: list[ModelJob], m: media.Media, log: Callable[[str], None] = print,
                  stop: threading.Event | None = None) -> BatchMember:
    """extract() of one video, every model run, but the models that pack videos keep their last
    items (fewer than one call) for the batch's shared calls."""
    member = BatchMember(item, jobs, m, {}, {})
    for res in extract(item, jobs, m, log, stop, defer=member.inputs):
        member.results[res.job.alias] = res
    return member


def extract_batch(members: list[BatchMember], log: Callable[[str], None] = print) -> None:
    """The forward passes of several files of one group: per model, its prepared inputs (images:
    `extract_images` calls of `batch_size`; audio and videos: the items of every file in one
    `forward_items`, which makes calls of `call_size()`); the Results land in each member. A
    call that fails is tried again file by file, so only the guilty file fails."""
    jobs: dict[str, ModelJob] = {}
    for mem in members:
        for alias in mem.inputs:
            jobs.setdefault(alias, mem.results[alias].job)
    for alias, job in jobs.items():
        todo = [mem for mem in members if alias in mem.inputs]
        if todo[0].item.kind != "image":  # a group's files are of one kind
            _embed_items(job, todo, log)
            continue
        size = max(1, job.extractor.batch_size)
        for start in range(0, len(todo), size):
            _embed_images(job, todo[start:start + size])


def _embed_images(job: ModelJob, group: list[BatchMember]) -> None:
    """Image files' prepared inputs of one model in `extract_images` calls; a Features each."""
    ex = job.extractor
    _shared_calls(job, group, "image", [1] * len(group),
                  lambda: ex.extract_images([mem.inputs[job.alias] for mem in group]),
                  lambda x: ex.extract_images([x]), lambda outs, x: outs[0])


def _embed_items(job: ModelJob, group: list[BatchMember], log: Callable[[str], None]) -> None:
    """Audio files' or videos' items of one model in shared calls; each file's Features from its
    rows (`finish_audio`, or the video consumer's `finish_with`)."""
    ex = job.extractor
    kind = group[0].item.kind  # audio or video (an image model's video frames too)

    def forward(x: np.ndarray) -> np.ndarray:
        return _with_backoff(job, lambda: ex.forward_items(x), log)

    def finish(rows: np.ndarray, inputs: tuple[np.ndarray, Any]) -> Features:
        state = inputs[1]
        return ex.finish_audio(rows, state) if kind == "audio" else state.finish_with(rows)

    _shared_calls(job, group, kind, [mem.items(job.alias) for mem in group],
                  lambda: forward(np.concatenate([mem.inputs[job.alias][0] for mem in group])),
                  lambda inputs: forward(inputs[0]), finish)


def _shared_calls(job: ModelJob, group: list[BatchMember], kind: str, counts: list[int],
                  together: Callable[[], Any], alone: Callable[[Any], Any],
                  finish: Callable[[Any, Any], Features]) -> None:
    """One model's calls for a batch: `together()` on every member's input (outputs in member
    order, `counts[i]` for member i); where it fails, `alone(input)` member by member, so the error
    belongs to one file. `finish(outputs, input)` gives each file's Features, checked as `kind`;
    the shared calls' time is split by items."""
    alias, ex = job.alias, job.extractor
    total = sum(counts)
    t0 = time.perf_counter()
    outs, got = None, []
    try:
        with _counting(ex, group[0].results[alias]):  # the batch's calls, counted once
            outs, got = _capture_notes(together)
        if len(outs) != total:
            raise RuntimeError(f"{alias} returned {len(outs)} outputs for {total} items")
    except Exception:
        outs = None  # tried again file by file below: the error then belongs to one file
    elapsed, start = time.perf_counter() - t0, 0
    for mem, n in zip(group, counts):
        res, x = mem.results[alias], mem.inputs.pop(alias)
        res.seconds += elapsed * n / max(1, total)
        t1 = time.perf_counter()
        try:
            if outs is None:
                with _counting(ex, res):
                    rows, got = _capture_notes(lambda: alone(x))
            else:
                rows = outs[start:start + n]
            res.features, more = _capture_notes(lambda: finish(rows, x))
            res.notes = list(dict.fromkeys([*res.notes, *got, *more]))
            _validate_output(job, kind, res.features)
        except Exception as exc:
            res.features, res.error = None, exc
        res.seconds += time.perf_counter() - t1
        start += n


def _run_frames(jobs: list[ModelJob], m: media.Media, stop: threading.Event | None,
                defer: dict[str, Any] | None = None) -> Iterator[Result]:
    """One decoding pass over the video; every chunk goes to every frame model's consumer.
    With `defer`, a model that packs videos (`Extractor.batches_video`, calls of more than one
    item) closes its consumer instead of finishing it: its last items and the consumer go into
    `defer` (alias -> (items, consumer)) and its Result waits for them (`extract_batch`)."""
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
                    with _counting(job.extractor, res):
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
            ex, consumer = job.extractor, consumers[job.alias]
            packs = defer is not None and ex.batches_video and ex.call_size() > 1
            t0 = time.perf_counter()
            try:
                with _counting(ex, res):
                    if packs:
                        left, got = _capture_notes(consumer.close)
                        if len(left):
                            defer[job.alias] = (left, consumer)
                        else:
                            res.features = consumer.finish_with(np.zeros((0,)))
                    else:
                        res.features, got = _capture_notes(consumer.finish)
                notes[job.alias] += got
                if res.features is not None:
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
    return _with_backoff(job, lambda: ex.extract(audio, ex.sample_rate), log)


def _with_backoff(job: ModelJob, fn: Callable[[], Any], log: Callable[[str], None]) -> Any:
    """fn(); on CUDA out-of-memory, fn() again with half the model's batch size."""
    ex = job.extractor
    while True:
        try:
            return fn()
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
    manifest_path = output_base / "manifest.jsonl"
    if manifest is None:
        manifest = functools.partial(outputs.append_jsonl, manifest_path)
    file_notes = list(dict.fromkeys([*m.notes, *res.notes]))  # the decoder's, then the model's
    out = Outcome(src, job.alias, "ok", notes=file_notes, inference_seconds=res.seconds,
                  resample_seconds=res.resample_seconds, forward_passes=res.forward_passes,
                  items_forwarded=res.items_forwarded)
    if isinstance(res.error, SkipFile):  # the plugin's documented choice, not a failure
        res.skipped, res.error = str(res.error), None
    if res.error is None and job.out_dir is not None:
        try:
            job.check_claim()
        except outputs.ConfigConflict as exc:
            job.error = load_error_text(exc)  # this model's next files fail at once, with this cause
            res.error, res.stage, res.skipped = exc, "write", None
    if res.skipped:
        out.status, out.notes = "skipped", [res.skipped]
        return _record(out, manifest, manifest_path, {
            "run": run_id, "model": job.alias, "source": src, "output": None, "skipped": res.skipped,
            "config": job.config_digest, "input": m.input, "written": outputs.now_iso()})
    if res.error is not None:
        out.fail(res.error, res.stage)
        return out
    feats = res.features
    assert feats is not None
    spec, rel_out = job.spec(item.kind), item.names[job.alias]
    data = np.asarray(feats.data)
    paths = job.outputs(rel_out, item.kind)
    t0 = time.perf_counter()
    path = paths[-1]
    try:
        for extra, path in zip(spec.extra_outputs, paths[:-1]):
            value = feats.timestamps if extra == "timestamps" else feats.extras[extra]
            outputs.atomic_save_npy(path, np.asarray(value,
                                                     dtype=np.float64 if extra == "timestamps" else None))
        path = paths[-1]
        outputs.atomic_save_npy(path, data)
    except OSError as exc:
        out.write_seconds = time.perf_counter() - t0
        out.fail(exc, "write", cause=outputs.explain_os_error(exc, path))
        out.disk_full = str(path) if outputs.is_disk_full(exc) else ""
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
        "config": job.config_digest,  # = features.json's config_digest
        "input": m.input,  # what the output was computed from: size, mtime_ns, sha256 (where cheap)
        "written": outputs.now_iso(),
    }
    if file_notes:
        record["notes"] = file_notes
    out.shape = tuple(data.shape)
    return _record(out, manifest, manifest_path, record)


def _record(out: Outcome, manifest: Callable[[dict], None], path: Path, record: dict) -> Outcome:
    """Append the manifest line; a line that cannot be written fails the outcome (the array, if
    any, stays: without its line the next run computes it again)."""
    try:
        manifest(record)
    except OSError as exc:
        out.fail(exc, "write", cause=outputs.explain_os_error(exc, path))
        out.disk_full = str(path) if outputs.is_disk_full(exc) else ""
    return out


# -- one file, all stages (for executors other than the local one) ---------------------------
def process_item(root: Path, output_base: Path, item: Item, leases: outputs.Leases, run_id: str,
                 overwrite: bool = False, log: Callable[[str], None] = print, ledger: Ledger | None = None,
                 max_pixels: int = media.MAX_PIXELS_PER_FRAME) -> list[Outcome]:
    """claim -> decode -> extract -> store for one file; the Outcome of every pending model."""
    jobs, locks, outcomes = claim(item, leases, overwrite, ledger)
    try:
        if jobs:
            m = decode(root, item, jobs, max_pixels)
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


def write_metadata(job: ModelJob, output_base: Path, overwrite: bool = False) -> None:
    """<output_base>/<alias>/features.json: what the arrays are and where they came from.

    Claimed atomically (`outputs.claim_config`): where it names another configuration (a run
    that started at the same time, with other parameters) this raises ConfigConflict, before
    any array of this run is written; `overwrite` replaces it.
    """
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
        # "decoder": NumPy in the decode stage (soxr, or resampy's filters); "torch:<device>": the model stage
        "resampled_in": (f"torch:{job.resample_device}" if job.resample_device else "decoder")
        if ex.modality == "audio" else None,
        **job.spec(primary).to_json(),
        "extra_folders": {f.name.split(".", 1)[1]: f.name for f in job.folders()[:-1]},
        "params": ex.config,
        "weights_setting": ex.weights_path,  # null: the default lookup; "random": not for research use
        "config_digest": job.config_digest,  # of extractor, params, weights_setting; in every manifest line
        "provenance": ex.provenance(),
        "file_naming": "<relative dir>/<stem>.npy; inputs this model takes that share a stem keep their "
        "extension (<stem>.<ext>.npy); manifest.jsonl maps every source to its output",
    }
    others = {k: job.spec(k).to_json() for k in job.kinds
              if k != primary and job.spec(k) != job.spec(primary)}
    if others:
        meta["per_kind"] = others  # e.g. an image model: (dim,) per image, (time, dim) per video
    st = outputs.claim_config(output_base / job.alias / "features.json", meta, replace=overwrite)
    job._meta_stat = (st.st_ino, st.st_mtime_ns, st.st_size)


def load_models(jobs: list[ModelJob], output_base: Path, stats: RunStats, log: Callable[[str], None],
                threads: int | None = None, overwrite: bool = False, resample_on: str = "auto") -> None:
    """Load every model once: weight problems show before the first file; the other models go on.

    A model folder claimed by another configuration meanwhile is a configuration error
    (ConfigError, before any array is written); a full disk stops the run (`stats.disk_full`).

    torch runs `threads` intra-op threads (default: `default_threads()`). Some CPU
    kernels (3-D convolutions) sum in an order that depends on it, so runs meant to give the same
    bytes use the same count (the Ray engine's actors use `--torch_threads`, default 1).
    """
    for job in jobs:
        stats.model(job.alias)
        try:
            job.extractor.load()
            job.resample_device = resample_device_for(resample_on, job)
            write_metadata(job, output_base, overwrite)
        except outputs.ConfigConflict as exc:
            raise ConfigError(str(exc)) from None
        except Exception as exc:
            job.error = load_error_text(exc)
            if outputs.is_disk_full(exc):
                where = output_base / job.alias / "features.json"
                stats.disk_full = stats.disk_full or str(where)
                exc = OSError(exc.errno, outputs.explain_os_error(exc, where))
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


def decode_workers_for(opt: RunOptions, jobs: list[ModelJob], files: int) -> int:
    """Decode processes for a run: `opt.decode_workers`, else the cores beside the models' threads
    (torch's intra-op threads where a model computes on this CPU with torch, else the main thread
    and the writer); the preflight takes every core. Never more than there are files."""
    if files < 1:
        return 0
    if opt.decode_workers is not None:
        return min(opt.decode_workers, files)
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    if opt.decode_only:
        return min(cores, files)
    live = [j for j in jobs if not j.error]
    torch_here = "torch" in sys.modules and any(
        str(getattr(j.extractor, "device", "cpu")).startswith("cpu")
        and hasattr(sys.modules.get(type(j.extractor).__module__), "torch") for j in live)
    beside = cores - ((opt.torch_threads or default_threads()) if torch_here else 2)
    return max(0, min(beside, files, 16))


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
    decode_seconds: float = 0.0  # decode + resampling, in the prefetch thread or a decode worker
    decode_resampling: float = 0.0  # of which resampling (the model stage may resample more, on a device)


class Runner:
    """Runs model jobs over an input folder on this machine. One instance per run."""

    def __init__(self, jobs: list[ModelJob], options: RunOptions, log: Callable[[str], None] = print) -> None:
        self.jobs = jobs
        self.opt = options
        self.log = log
        self.stats = RunStats()
        self.run_id = time.strftime("%Y%m%d-%H%M%S") + f"-{os.getpid()}"
        self.listing: media.Listing | None = None
        self.ledger: Ledger | None = None
        self._found: Counter = Counter()
        self._stop = threading.Event()
        self._leases = outputs.Leases(options.lease_seconds)
        self._writer = _Writer()
        self._stats_lock = threading.Lock()  # the writer thread counts outcomes too
        self.decode_workers = 0  # decode processes this run uses (`decode_workers_for`)
        self._pool: Any = None  # the decode pool while there is one
        # files across files' batches: source -> its batch group, files of each group in this run
        # and how many have come, the files of the group being filled (with what `prepare_images`
        # / `prepare_audio` made of them) and their items per model
        self._groups: dict[Path, tuple[str, int]] = {}
        self._group_sizes: Counter = Counter()
        self._group_seen: Counter = Counter()
        self._batch: list[tuple[_Work, BatchMember | None]] = []
        self._batch_items: Counter = Counter()

    # -- before any file ----------------------------------------------------------------
    def prepare(self) -> list[Item]:
        """Discover, load the models, write their metadata, plan: the items still to do.
        The preflight (decode_only): every file the models take, no model loaded, nothing written."""
        opt = self.opt
        if opt.decode_only:
            self.discover()
            assert self.listing is not None
            for job in self.jobs:
                self.stats.model(job.alias)
            items = plan(self.listing.files, self.jobs, True, self.stats, opt.shard, self.listing.names)
            found = ", ".join(f"{n} {k}" for k, n in self._found.items())
            self.log(f"decode only: {len(items)} file(s) in {opt.audio_dir} ({found}) for "
                     f"{', '.join(j.alias for j in self.jobs)}; no model is loaded, nothing is written but "
                     "the report")
            return items
        self.discover()
        self.load()
        assert self.listing is not None and self.ledger is not None
        items = plan(self.listing.files, self.jobs, opt.overwrite, self.stats, opt.shard,
                     self.listing.names, self.ledger)
        files = self.listing.files
        if opt.shard:
            files = [f for f in files if shard_of(f, opt.shard[1]) == opt.shard[0]]
        self._groups = batch_groups(files, self.jobs)
        self._group_sizes = Counter(self._groups[i.source] for i in items if i.source in self._groups)
        self._announce(items)
        return items

    def discover(self) -> None:
        """List the input folder (leaving out the output folder when it lies inside), read what the
        output folder holds; ConfigError when there is nothing to do (before any model loads)."""
        opt = self.opt
        inside = Path(opt.output_base).resolve().is_relative_to(Path(opt.audio_dir).resolve())
        self.listing = media.discover(opt.audio_dir, opt.extensions, opt.recursive,
                                      exclude=(opt.output_base,) if inside else ())
        files = self.listing.files
        if opt.shard:
            files = [f for f in files if shard_of(f, opt.shard[1]) == opt.shard[0]]
        self._found = Counter(media.kind_of(f) or "audio" for f in files)
        if not self.listing.files:
            why = "; ".join(self.listing.left_out_lines()) or "the folder holds no file the decoders read"
            raise ConfigError(f"nothing to do: no input file in {opt.audio_dir} ({why})")
        taken = {k for j in self.jobs for k in ("audio", "video", "image") if j.extractor.takes(k)}
        kinds = Counter(media.kind_of(f) or "audio" for f in self.listing.files)
        if not taken & set(kinds):
            found = ", ".join(f"{n} {k}" for k, n in kinds.items())
            raise ConfigError(f"nothing to do: no configured model takes the files in {opt.audio_dir} "
                              f"({found}); choose models for them with --models (--list_models)")
        for job in self.jobs:
            job.out_dir = opt.output_base / job.alias
            if opt.decode_only:
                continue  # the preflight touches no model folder
            for folder in job.folders():
                outputs.clean_stale(folder)
        if not opt.decode_only:
            self.ledger = Ledger(opt.audio_dir, opt.output_base)

    def load(self) -> None:
        """Load every model and claim its folder (features.json)."""
        opt = self.opt
        load_models(self.jobs, opt.output_base, self.stats, self.log, opt.torch_threads, opt.overwrite,
                    opt.resample_on)

    def _announce(self, items: list[Item]) -> None:
        s, listing = self.stats, self.listing
        assert listing is not None and self.ledger is not None
        found = self._found
        kinds = ", ".join(f"{found[k]} {k}" for k in ("audio", "video", "image") if found[k])
        shard = f" (shard {self.opt.shard[0]}/{self.opt.shard[1]})" if self.opt.shard else ""
        self.log(f"found {sum(found.values())} file(s){shard} in {self.opt.audio_dir}"
                 + (f": {kinds}" if kinds else ""))
        for line in listing.left_out_lines():
            self.log(f"  left out: {line}")
        for k, n in s.files_not_taken.items():
            self.log(f"  no configured model takes {k} files ({n} left out)")
        why = {"unrecorded": "whole array(s) without their manifest line (a run stopped between the two)",
               "input": "whose input changed since they were computed",
               "config": "of another configuration (an --overwrite run that stopped?)"}
        for reason, n in s.redo.items():
            self.log(f"  computed again: {n} output(s) {why.get(reason, reason)}")
        self.stats.stale_outputs = self.ledger.stale(listing.names)
        self._say_stale()
        todo = sum(len(i.jobs) for i in items)
        done = sum(m.skipped for m in s.models.values())
        self.log(f"to do: {todo} output(s) over {len(items)} file(s); already complete: {done}")

    def _say_stale(self) -> None:
        stale = self.stats.stale_outputs
        if stale:
            first = stale[0]
            self.log(f"  {len(stale)} output(s) from earlier runs under a name no longer current (e.g. "
                     f"{first['output']}, now {first['current']}: its folder's files changed): listed in "
                     "run_report.json stale_outputs; readers use each source's current one; delete them "
                     "to tidy up")

    # -- the prefetch stage ---------------------------------------------------------------
    def _producer(self, items: list[Item], q: queue.Queue) -> None:
        try:
            if self.decode_workers:
                self._produce_in_workers(items, q, self.decode_workers)
                return
            for item in items:
                if self._stop.is_set():
                    break
                work = self._claim(item)
                if work.jobs:
                    t0 = time.perf_counter()
                    work.media = decode(self.opt.audio_dir, item, work.jobs, self.opt.max_pixels_per_frame)
                    if self.opt.decode_only:
                        count_frames(work.media, work.jobs)
                    work.decode_seconds = time.perf_counter() - t0
                    work.decode_resampling = sum(work.media.resample_seconds.values())
                if not self._offer(q, work):
                    self._release(work)
        except BaseException as exc:  # never die silently: hand the error to the main thread
            self._offer(q, exc)
        finally:
            self._offer(q, None)

    def _claim(self, item: Item) -> _Work:
        if self.opt.decode_only:  # the preflight writes nothing: no lease either
            return _Work(item, list(item.jobs), [], [])
        return _Work(item, *claim(item, self._leases, self.opt.overwrite, self.ledger))

    def _produce_in_workers(self, items: list[Item], q: queue.Queue, workers: int) -> None:
        """Claim here, decode in `workers` processes, hand over in plan order. At most `workers`
        files are claimed and not yet in the queue (the queue holds `prefetch` more)."""
        from embedkit import decode_pool

        opt = self.opt
        pool = self._pool = decode_pool.DecodePool(workers)
        held: dict[int, _Work] = {}  # claimed, not yet handed over
        ready: set[int] = set()
        todo = iter(enumerate(items))
        more, emit = True, 0
        try:
            pool.start()
            while not self._stop.is_set():
                while more and len(held) < workers and pool.idle():
                    nxt = next(todo, None)
                    if nxt is None:
                        more = False
                        break
                    i, item = nxt
                    work = held[i] = self._claim(item)
                    if not work.jobs:
                        ready.add(i)
                        continue
                    slim = Item(item.source, item.kind, {}, [])
                    views = [ModelJob(j.alias, decode_pool.DecodeView(j.extractor),  # type: ignore[arg-type]
                                      resample_device=j.resample_device)
                             for j in work.jobs if not j.error]
                    pool.submit(i, opt.audio_dir, slim, views, opt.max_pixels_per_frame, opt.decode_only)
                while emit in ready:
                    ready.discard(emit)
                    work = held.pop(emit)
                    emit += 1
                    if not self._offer(q, work):
                        self._release(work)
                        return
                if not more and not held:
                    return
                for i, m, failure, seconds in pool.poll(0.25):
                    work = held[i]
                    if m is None:
                        if self._stop.wait(0.5) or self._signalled:
                            return  # a signal to the whole group ended the worker too: not the file's fault
                        m = media.Media(opt.audio_dir / work.item.source, work.item.kind)
                        m.error = decode_pool.DecodeWorkerDied(failure or "the decode worker died")
                        self._progress.say(f"{work.item.source.as_posix()}: {failure}")
                    elif failure is not None:
                        m = media.Media(opt.audio_dir / work.item.source, work.item.kind)
                        m.error = RuntimeError(f"decoding failed in the worker: {failure}")
                    work.media, work.decode_seconds = m, seconds
                    work.decode_resampling = sum(m.resample_seconds.values())
                    ready.add(i)
        finally:
            for work in held.values():  # claimed but never handed over (the run is stopping)
                self._release(work)
            pool.close()

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
            if self.stats.disk_full:  # not even features.json fits: nothing can be written
                items = []
            self._progress.start(len(items), sum(m.skipped for m in self.stats.models.values()))
            self.decode_workers = decode_workers_for(opt, self.jobs, len(items))
            if self.decode_workers:
                self.log(f"decoding in {self.decode_workers} worker process(es)")
            if opt.decode_only:
                from embedkit import preflight

                self.feed = preflight.FeedStats(self.jobs, self.decode_workers)
            producer = threading.Thread(target=self._producer, args=(items, q), daemon=True, name="decoder")
            producer.start()
            while True:
                t_wait = time.perf_counter()
                got = self._next(q)
                self.stats.waited_for_input_seconds += time.perf_counter() - t_wait
                if got is None:
                    self._flush_batch()
                    break
                if isinstance(got, BaseException):
                    raise got
                if opt.decode_only:
                    self.feed.add(got)
                    self._progress.file_done()
                else:
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
            if self._pool is not None:
                self._pool.close()  # the producer's own close, unless it is still stuck: no orphan worker
            _drain(q)
            self._leases.close()  # every lock this process still holds, whichever thread took it
            self._progress.close()
            _restore_signal_handlers(previous)
            self.stats.wall_seconds = time.perf_counter() - t_start
            if opt.decode_only and hasattr(self, "feed"):
                self.feed.wall_seconds = self.stats.wall_seconds
        return self.stats

    _signalled: str | None = None  # "SIGINT" / "SIGTERM" once one has arrived

    def _raise_signalled(self) -> None:
        if self._signalled == "SIGINT":
            raise KeyboardInterrupt
        if self._signalled == "SIGTERM":
            raise Interrupted()

    def _next(self, q: queue.Queue) -> Any:
        """The next decoded file; a signal stops the wait even if its exception was lost; None at the
        end, or once the disk is full."""
        while True:
            self._raise_signalled()
            if self.stats.disk_full:
                return None
            try:
                return q.get(timeout=0.25)
            except queue.Empty:
                continue

    def _process(self, work: _Work) -> None:
        """Extract here; store in the writer thread, so writing overlaps the next extraction.
        A file of a batch group waits for the group's other files (`_add_to_batch`)."""
        group = self._groups.get(work.item.source)
        if group is not None and self._add_to_batch(work, group):
            return
        self._flush_batch()  # files are stored in the listing's order
        item, m = work.item, work.media
        try:
            if m is not None:
                if self.opt.verbose:
                    what = f"{m.duration_seconds / 60:.1f} min of audio" if m.decoded_audio else item.kind
                    self._progress.say(f"{item.source.as_posix()}: started ({what}; "
                                       f"{', '.join(j.alias for j in work.jobs)})")
                for res in extract(item, work.jobs, m, self._progress.say, self._stop):
                    self._raise_signalled()  # a stopped run writes nothing of the file it was on
                    if self.stats.disk_full:
                        break
                    self._writer.submit(lambda res=res: self._store(item, res, m))
        finally:  # after this file's results are stored: count it, free its leases
            self._writer.submit(lambda: self._file_done(work))

    def _add_to_batch(self, work: _Work, group: tuple[str, int]) -> bool:
        """Prepare a file for its group's forward passes; run them once the group is whole (all
        its files of this run have come), once a model's waiting items fill PACK_CALLS network
        calls, or when a file outside the group comes. False: an audio file that packs for no model (long,
        or it failed to decode): it runs alone, after the waiting files."""
        self._group_seen[group] += 1
        kind, m = group[0], work.media
        packing = []
        if kind == "audio" and m is not None and work.jobs:
            packing = packing_jobs(work.item, work.jobs, m)
            if not packing:
                return False
        if self._batch and self._groups[self._batch[0][0].item.source] != group:
            self._flush_batch()
        member = None
        if m is not None and work.jobs:
            if self.opt.verbose:
                self._progress.say(f"{work.item.source.as_posix()}: started ({kind}; "
                                   f"{', '.join(j.alias for j in work.jobs)})")
            if kind == "image":
                member = prepare_images(work.item, work.jobs, m)
            elif kind == "audio":
                member = prepare_audio(work.item, work.jobs, m, packing, self._progress.say)
            else:
                member = prepare_video(work.item, work.jobs, m, self._progress.say, self._stop)
                packing = [j for j in work.jobs if j.alias in member.inputs]
            for job in packing:
                self._batch_items[job.alias] += member.items(job.alias)
        self._batch.append((work, member))
        full = any(self._batch_items[j.alias] >= PACK_CALLS * j.extractor.call_size() for j in packing)
        idle = kind == "video" and not packing  # nothing of it waits: no reason to hold the others
        if full or idle or self._group_seen[group] >= self._group_sizes[group]:
            self._flush_batch()
        return True

    def _flush_batch(self) -> None:
        """The waiting files' forward passes, then their stores, file by file in order."""
        batch, self._batch = self._batch, []
        self._batch_items.clear()
        if not batch:
            return
        members = [mem for _, mem in batch if mem is not None]
        if members:
            extract_batch(members, self._progress.say)
            if self.opt.verbose:
                self._progress.say(f"batch of {len(members)} {members[0].item.kind} file(s) from "
                                   f"{members[0].item.source.as_posix()}")
        for work, mem in batch:
            try:
                for res in mem.ordered() if mem is not None else ():
                    self._raise_signalled()  # a stopped run writes nothing of the file it was on
                    if self.stats.disk_full:
                        break
                    self._writer.submit(lambda res=res, work=work: self._store(work.item, res, work.media))
            finally:
                self._writer.submit(lambda work=work: self._file_done(work))

    def _store(self, item: Item, res: Result, m: media.Media) -> None:
        if self.stats.disk_full:  # the run is stopping: what is left is not written, nor counted
            return
        try:
            outcome = store(self.opt.output_base, item, res, m, self.run_id)
        except Exception as exc:  # a bug, not a disk error (those are outcomes already)
            outcome = Outcome(item.source.as_posix(), res.job.alias, "failed")
            outcome.fail(exc, "write")
        with self._stats_lock:
            self.stats.add(outcome)
        self._check_disk(outcome)
        if outcome.status == "failed" and outcome.stage != "load" and not outcome.disk_full:  # said once
            self._progress.say(f"FAILED {outcome.model} {outcome.source}: {outcome.exception}: "
                               f"{_short(outcome.cause)}")
        elif self.opt.verbose and outcome.status == "ok":
            self._progress.say(f"{outcome.model:<12} {outcome.source}: shape {outcome.shape} "
                               f"in {outcome.inference_seconds:.2f} s")
        elif self.opt.verbose:
            self._progress.say(f"{outcome.model:<12} {outcome.source}: skipped ({outcome.notes[0]})")

    def _check_disk(self, outcome: Outcome) -> None:
        """The first write that finds the disk full stops the run: nothing more can be written."""
        if outcome.disk_full and not self.stats.disk_full:
            self.stats.disk_full = outcome.disk_full
            self._stop.set()
            self._progress.say(f"disk full at {outcome.disk_full}: the run stops here; free space (or choose "
                               "another --output_base), then rerun the same command: it resumes")

    def _file_done(self, work: _Work) -> None:
        with self._stats_lock:
            for outcome in work.outcomes:
                if self.stats.disk_full and outcome.status == "failed":
                    continue
                self.stats.add(outcome)
                self._check_disk(outcome)
            if work.media is not None:
                self.stats.decode_seconds += work.decode_seconds - work.decode_resampling
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
        """run_report.json (and reports/run-<id>.json, the history), then failures.json: what is
        still failing in the folder. What cannot be written (a full disk) is listed in `unwritten`
        and the rest is still written; nothing half-written is left."""
        base = self.opt.output_base
        if self.ledger is not None and self.listing is not None:
            try:
                self.ledger.index.refresh()
                self.stats.stale_outputs = self.ledger.stale(self.listing.names)
            except OSError:
                pass
        report = {**self._report_head(), **self.stats.to_json()}
        if self.opt.shard:
            report["shard"] = f"{self.opt.shard[0]}/{self.opt.shard[1]}"
        suffix = f".shard{self.opt.shard[0]}of{self.opt.shard[1]}" if self.opt.shard else ""
        report_path = base / f"run_report{suffix}.json"
        failures_path = base / "failures.json"
        self.unwritten: list[str] = []
        for path in (report_path, base / "reports" / f"run-{self.run_id}.json"):
            try:
                outputs.atomic_write_json(path, report)
            except OSError as exc:
                self.unwritten.append(outputs.explain_os_error(exc, path))
        try:
            self.failing_now = update_failures(failures_path, self.run_id, self.stats, self.jobs, self.ledger,
                                               self.opt.audio_dir, self.listing.names if self.listing else {},
                                               self.opt.lease_seconds)
        except OSError as exc:
            self.failing_now = list(self.stats.failures)
            self.unwritten.append(outputs.explain_os_error(exc, failures_path))
        return report_path, failures_path


def update_failures(path: Path, run_id: str, stats: RunStats, jobs: list[ModelJob], ledger: Ledger | None,
                    root: Path, names: dict[Path, Path], lease_seconds: float = outputs.LEASE_SECONDS
                    ) -> list[dict]:
    """failures.json: what is still failing in this output folder, per file, every model's together.

    The previous file's entries stay unless resolved: this run failed them again (the new entry
    replaces the old), the output is now complete and current (`ledger`), the input is gone, or
    (a load failure) the model loaded in this run. Entries of models this run did not configure
    stay as they are. Each entry names the run that recorded it; each run's own failures are in
    reports/run-<id>.json. Updated under a lock, so concurrent drivers and shards each add theirs.
    Returns the entries written.
    """
    lock = outputs.OutputLock(path, lease_seconds)
    deadline = time.monotonic() + 60
    while not lock.acquire() and time.monotonic() < deadline:
        time.sleep(0.05)  # another driver is writing it (a few milliseconds)
    try:
        try:
            old = json.loads(path.read_text())
            previous = [{**f, "run": f.get("run", old.get("run"))} for f in old.get("failures", [])
                        if isinstance(f, dict) and "file" in f and "model" in f]
        except (OSError, ValueError, AttributeError):
            previous = []
        by_alias = {j.alias: j for j in jobs}
        again = {(f["file"], f["model"]) for f in stats.failures}
        if ledger is not None:
            ledger.index.refresh()
        cache: dict = {}
        current: dict[tuple[str, str], dict] = {}
        for f in previous:
            key = (f["file"], f["model"])
            job = by_alias.get(f["model"])
            if key in again:
                continue
            if job is not None and f.get("stage") == "load":
                if not job.error:
                    continue  # it loads now
            elif job is not None:
                src = Path(f["file"])
                if not os.path.lexists(Path(root) / src):
                    continue  # the input is gone
                rel = names.get(src) or media.output_name(root, src, cache)
                kind = media.kind_of(src) or "audio"
                try:
                    done = ledger is not None and rel is not None and job.out_dir is not None and (
                        kind not in job.kinds or ledger.check(job, src, rel, kind)[0])
                except Exception:  # a plugin that cannot even say its outputs: the entry stays
                    done = False
                if done:
                    continue  # done now (by this run, or another driver)
            current[key] = f
        for f in stats.failures:
            current[(f["file"], f["model"])] = {**f, "run": run_id}
        order = {j.alias: n for n, j in enumerate(jobs)}
        failing = sorted(current.values(), key=lambda f: (f["file"] != "(all files)", f["file"],
                                                          order.get(f["model"], len(order)), f["model"]))
        by_file: dict[str, dict[str, str]] = {}
        for f in failing:
            by_file.setdefault(f["file"], {})[f["model"]] = f"{f.get('exception', '')}: {f.get('cause', '')}"
        state = {"run": run_id, "updated": outputs.now_iso(), "still_failing": len(failing),
                 "failures": failing, "by_file": by_file}
        outputs.atomic_write_json(path, state)
        return failing
    finally:
        lock.release()


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
                f"{media_amount(s.audio_seconds_decoded)} of audio, {rate * 60:.1f} files/min, "
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


def media_amount(seconds: float) -> str:
    """Seconds of media in the unit that shows it: '42.0 s', '12.5 min', '3.25 h'."""
    if seconds < 60:
        return f"{seconds:.1f} s"
    if seconds < 3600:
        return f"{seconds / 60:.1f} min"
    return f"{seconds / 3600:.2f} h"


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
