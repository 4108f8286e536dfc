"""The Ray engine (`--engine ray`): the same run on a Ray cluster, same outputs, same resume.

Who does what (the stages are pipeline.py's; Ray only schedules them):

    driver (this process)  discover, plan, claim: it holds every lease and its heartbeat;
                           counts each Outcome, appends the manifest, writes the report
    decode tasks (CPU)     pipeline.decode: the file decoded once and resampled once per
                           (rate, method); the Media travels through the object store
    model actors           one pool per model, the model loaded once per actor (a share of
                           a GPU each where the cluster has GPUs, CPU actors otherwise);
                           pipeline.extract + pipeline.store: arrays by the atomic writer;
                           the Outcome (with its timings) and the manifest line go back

Workers never own a lock: a killed driver's leases die with its pid (same host) or
expire after `lease_seconds`, and Ray ends its workers with its job. A worker killed
mid-file is restarted by Ray and the file tried again (`RETRIES` more times), which
costs that file a retry, not the run; a file that kills its worker every time fails
alone, with the cause in failures.json.

Requirements: every node sees the input and output folders at the same paths (a
shared filesystem; checked at start) and runs the same checkout and environment
(this folder is put on the workers' import path). Ray is imported only here.
"""

from __future__ import annotations

import logging
import os
import signal
import sys
import threading
import time
import uuid
import warnings
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from types import SimpleNamespace
from typing import Any, Callable

from embedkit import audio_io, media, outputs, pipeline, registry
from embedkit.decode_pool import DecodeView, picklable
from embedkit.extractors.base import ConfigError
from embedkit.pipeline import Item, ModelJob, Result, RunOptions
from embedkit.reporting import Outcome, RunStats

HERE = Path(__file__).resolve().parent
RETRIES = 2  # a (file, model) whose worker died is tried this many more times
INSTALL = "pip install -r requirements-ray.txt"
_PROBE = ".embedkit-probe-"


def import_ray() -> Any:
    """The ray module, or a ConfigError that says how to install it."""
    try:
        import ray
    except ImportError:
        raise ConfigError(f"--engine ray needs Ray, which is not installed here: {INSTALL}") from None
    return ray


# -- what travels to the workers ---------------------------------------------------------
@dataclass
class ModelRecipe:
    """What a model actor needs to build its own copy of a configured model (never the network)."""

    alias: str
    extractor: str
    weights_path: str | None
    batch_size: int
    params: dict[str, Any]

    @classmethod
    def of(cls, job: ModelJob) -> ModelRecipe:
        ex = job.extractor
        return cls(job.alias, ex.name, ex.weights_path, ex.batch_size, dict(ex.config))


def decode_file(root: Path, item: Item, jobs: list[ModelJob],
                max_pixels: int = media.MAX_PIXELS_PER_FRAME) -> tuple[media.Media, dict]:
    """A decode task: pipeline.decode, then (the Media for the models, a small summary for the driver)."""
    t0 = time.perf_counter()
    m = pipeline.decode(root, item, jobs, max_pixels)
    seconds = time.perf_counter() - t0
    m.error = picklable(m.error)
    info = {"decoded_audio": m.decoded_audio, "duration_seconds": m.duration_seconds, "seconds": seconds,
            "resample_seconds": sum(m.resample_seconds.values()), "host": outputs.HOST}
    return m, info


def probe_node(probe: str, token: str, audio_dir: str, first_file: str | None) -> str | None:
    """A check task on one node: None when it sees the driver's probe and the input, else what it lacks."""
    p = Path(probe)
    try:
        if p.read_text() != token:
            return f"sees a different {p.name} in {p.parent} (another folder mounted at the same path)"
    except FileNotFoundError:
        return f"cannot see the probe file the driver wrote into {p.parent}"
    except OSError as exc:
        return f"cannot read {p.parent}: {exc.strerror}"
    mine = p.with_name(f"{p.name}.{outputs.HOST}-{os.getpid()}")
    try:
        mine.write_text(token)
        mine.unlink()
    except OSError as exc:
        return f"cannot write into {p.parent}: {exc.strerror}"
    if not os.path.isdir(audio_dir):
        return f"cannot see the input folder {audio_dir}"
    if first_file and not os.access(os.path.join(audio_dir, first_file), os.R_OK):
        return f"cannot read {first_file} in the input folder {audio_dir}"
    return None


class ModelWorker:
    """One model, loaded once in this worker process; extracts and stores one file per call."""

    def __init__(self, recipe: ModelRecipe, output_base: str, run_id: str, device: str, threads: int) -> None:
        self.output_base = Path(output_base)
        self.run_id = run_id
        self.error: BaseException | None = None
        ex = registry.create(recipe.extractor, device=device, weights_path=recipe.weights_path,
                             batch_size=recipe.batch_size, **recipe.params)
        self.job = ModelJob(recipe.alias, ex, out_dir=self.output_base / recipe.alias)
        import ray

        with warnings.catch_warnings():  # Ray 2.60 warns about its own actor_id use in here
            warnings.simplefilter("ignore")
            restarted = ray.get_runtime_context().was_current_actor_reconstructed
        if restarted:
            # the worker before this one died, perhaps mid-write: its temporary files go now
            for folder in self.job.folders():
                outputs.clean_stale(folder)
        try:
            ex.load()
        except Exception as exc:  # reported by the driver once, as a local run does
            self.error = exc
            self.job.error = pipeline.load_error_text(exc)
        if "torch" in sys.modules:  # this actor's share of the node's cores, not all of them
            import torch

            torch.set_num_threads(max(1, threads))

    def ready(self) -> tuple[BaseException | None, str, int]:
        """(load error or None, host, pid) once the model is loaded."""
        return picklable(self.error), outputs.HOST, os.getpid()

    def write_metadata(self, overwrite: bool = False) -> None:
        """Claim the model folder (features.json), as a local run does: ConfigConflict where another
        configuration has it."""
        pipeline.write_metadata(self.job, self.output_base, overwrite)

    def process(self, item: Item, m: media.Media, share: int) -> tuple[Outcome, list[dict], int]:
        """extract + store of this model on one decoded file -> (its Outcome, its manifest lines, this pid).

        The arrays are written here (atomically); the manifest lines go back to the driver, the
        manifest's only writer (appends from many hosts to one file are not atomic on NFS).
        `share`: how many of the file's models use this model's resampled signal (its resampling
        time is split among them, as in a local run).
        """
        res = next(pipeline.extract(item, [self.job], m, log=_say))
        res.resample_seconds /= max(1, share)
        lines: list[dict] = []
        outcome = pipeline.store(self.output_base, item, res, m, self.run_id, manifest=lines.append)
        return outcome, lines, os.getpid()


# -- the driver ---------------------------------------------------------------------------------
@dataclass
class _Pool:
    """The actors of one model and how they were placed."""

    job: ModelJob
    actors: list = field(default_factory=list)
    busy: list[int] = field(default_factory=list)  # calls in flight per actor
    pids: list[set] = field(default_factory=list)  # worker pids seen per actor (more than one: restarted)
    device: str = "cpu"
    options: dict = field(default_factory=dict)

    def pick(self) -> int:
        return min(range(len(self.actors)), key=self.busy.__getitem__)


@dataclass
class _Flight:
    """One file between claim and its last Outcome."""

    item: Item
    locks: list
    media_ref: Any
    info_ref: Any
    calls: int = 0
    info: dict | None = None
    info_done: bool = False


class RayRunner(pipeline.Runner):
    """Runs model jobs over an input folder on a Ray cluster; the same interface as `pipeline.Runner`.

    address: None starts a local cluster on this machine (or joins $RAY_ADDRESS); "auto" joins the
    cluster running on this node; "ray://host:10001" connects through Ray Client.
    devices: alias -> device as configured ("auto" when not given): auto takes a GPU share where the
    cluster has GPUs and the model runs on torch. actors: actors per model (None: from the cluster).
    """

    def __init__(self, jobs: list[ModelJob], options: RunOptions, log: Callable[[str], None] = print,
                 address: str | None = None, devices: dict[str, str] | None = None,
                 actors: int | None = None) -> None:
        if options.decode_workers is not None:
            raise ConfigError(f"decode_workers ({options.decode_workers}) applies to the local engine: the "
                              "Ray engine decodes each file in a Ray task of its own (one CPU each, as the "
                              "cluster has them); leave decode_workers unset with --engine ray")
        super().__init__(jobs, options, log)
        self.address = address
        self.devices = devices or {}
        self.actors_per_model = actors
        self.cluster: dict[str, Any] = {}
        self._ray: Any = None
        self._owns_connection = False
        self._pools: dict[str, _Pool] = {}
        self._waiting: dict[Any, tuple[int, str | None, int]] = {}  # ref -> (flight, alias or None, actor)
        self._flights: dict[int, _Flight] = {}
        self._signalled: str | None = None
        self._placed: dict[str, tuple[int, dict, str, int]] = {}

    # -- cluster ------------------------------------------------------------------------------------
    def connect(self) -> None:
        """Join (or start) the cluster, then check that every node sees the folders (ConfigError if not)."""
        if self._ray is not None:
            return
        joining = self.address is not None or bool(os.environ.get("RAY_ADDRESS"))
        if joining and "RAY_AUTH_MODE" not in os.environ and (Path.home() / ".ray" / "auth_token").is_file():
            # Clusters started by `ray start` or ray.init() use token authentication by default, but a
            # driver joining one sends the token (~/.ray/auth_token) only in token mode, read at import.
            os.environ["RAY_AUTH_MODE"] = "token"
        ray = import_ray()
        if not ray.is_initialized():
            kwargs: dict[str, Any] = {
                "address": self.address,
                "logging_level": logging.WARNING,
                # workers find this folder and load it as the package embedkit, as the driver did
                "runtime_env": {"env_vars": {"PYTHONPATH": f"{HERE}{os.pathsep}${{PYTHONPATH}}"},
                                "worker_process_setup_hook": "_checkout.register"},
            }
            if not joining:  # a cluster of our own: no dashboard to watch it, no usage report sent
                kwargs["include_dashboard"] = False
                os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
            try:
                ray.init(**kwargs)
            except (ConnectionError, RuntimeError, ValueError) as exc:
                where = self.address or "a new local cluster"
                raise ConfigError(f"cannot reach the Ray cluster at {where}: {audio_io.one_line(exc)}; "
                                  "start it (ray start --head) or fix --ray_address") from None
            self._owns_connection = True
        self._ray = ray
        nodes = [n for n in ray.nodes() if n.get("Alive")]
        res = ray.cluster_resources()
        self.cluster = {"address": self.address or "local", "nodes": len(nodes),
                        "cpus": res.get("CPU", 0.0), "gpus": res.get("GPU", 0.0)}
        try:
            self._placed = self._placement()
            self._check_shared(nodes)
        except BaseException:
            self._disconnect()
            raise

    def _check_shared(self, nodes: list[dict]) -> None:
        """A probe file written here must be seen, and the input read, from every node."""
        ray, opt = self._ray, self.opt
        from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

        opt.output_base.mkdir(parents=True, exist_ok=True)
        token = uuid.uuid4().hex
        probe = opt.output_base.resolve() / f"{_PROBE}{token}"
        outputs.atomic_write_bytes(probe, token.encode())
        first = next((e.name for e in sorted(os.scandir(opt.audio_dir), key=lambda e: e.name)
                      if e.is_file() and not e.name.startswith(".")), None)
        task = ray.remote(num_cpus=0, max_retries=0)(probe_node)
        try:
            refs = [task.options(scheduling_strategy=NodeAffinitySchedulingStrategy(n["NodeID"], soft=False))
                    .remote(str(probe), token, str(Path(opt.audio_dir).resolve()), first) for n in nodes]
            problems = []
            for node, ref in zip(nodes, refs):
                where = (f"{node.get('NodeManagerHostname', '?')} ({node.get('NodeManagerAddress', '?')}, "
                         f"id {str(node.get('NodeID', '?'))[:8]})")
                try:
                    why = ray.get(ref, timeout=600)
                except Exception as exc:
                    why = f"could not run the check ({audio_io.one_line(exc)}); is this checkout at {HERE}?"
                if why:
                    problems.append(f"node {where} {why}")
        finally:
            probe.unlink(missing_ok=True)
        if problems:
            raise ConfigError(
                f"every Ray node must see --output_base and --audio_dir at the same paths (the workers read "
                f"the input and write the outputs there): put both on a filesystem every node mounts (NFS, "
                f"Lustre, ...). {'; '.join(problems)}")

    def _disconnect(self) -> None:
        if self._ray is not None and self._owns_connection:
            self._ray.shutdown()
        self._ray = None

    # -- models ------------------------------------------------------------------------------------------
    def _placement(self) -> dict[str, tuple[int, dict, str, int]]:
        """alias -> (actors, resources per actor, device, torch threads).

        GPU models (device cuda, or auto on a cluster with GPUs for a torch model): one actor per
        GPU, the models sharing each GPU evenly, each with a core for its host side where there are
        enough. CPU models: half the cores the GPU models leave, an actor per `torch_threads` cores
        (default 1); decoding gets the rest.
        """
        cpus, gpus = self.cluster["cpus"], self.cluster["gpus"]
        on_gpu = {}
        for job in self.jobs:
            wanted = self.devices.get(job.alias, "auto")
            if wanted.startswith("cuda") and gpus < 1:
                raise ConfigError(f"{job.alias} asks for device {wanted}, but the Ray cluster has no GPU; "
                                  "use --device auto or cpu, or add GPU nodes")
            auto_gpu = wanted == "auto" and gpus >= 1 and _uses_torch(job)
            on_gpu[job.alias] = wanted.startswith("cuda") or auto_gpu
        n_gpu = sum(on_gpu.values())
        n_cpu = len(self.jobs) - n_gpu
        n_gpu_actors = self.actors_per_model or max(1, int(gpus))
        gpu_actor_cpus = _round(min(1.0, cpus / max(1.0, gpus) / (n_gpu + 1)))  # host side of a GPU model
        free = cpus - gpu_actor_cpus * n_gpu_actors * n_gpu
        threads = self.opt.torch_threads or 1  # per CPU actor: the same count gives the same bytes
        n_cpu_actors = self.actors_per_model or max(1, int(free // (2 * max(1, n_cpu) * threads)))
        out = {}
        for job in self.jobs:
            if on_gpu[job.alias]:
                gpu_share = _round(min(1.0, gpus / (n_gpu_actors * n_gpu)))
                out[job.alias] = (n_gpu_actors, {"num_gpus": gpu_share, "num_cpus": gpu_actor_cpus}, "cuda",
                                  threads)
            else:  # half of what the GPU models leave; decoding gets the rest
                share = _round(min(float(threads), free / (2 * n_cpu * n_cpu_actors)))
                device = self.devices.get(job.alias, "auto")
                out[job.alias] = (n_cpu_actors, {"num_cpus": share}, "cpu" if device == "auto" else device,
                                  threads)
        return out

    def _start_models(self) -> None:
        """Every model's actors, each loading its model; load failures are reported as locally."""
        ray = self._ray
        worker = ray.remote(ModelWorker)
        for job in self.jobs:
            self.stats.model(job.alias)
        for job in self.jobs:
            n, resources, device, threads = self._placed[job.alias]
            pool = _Pool(job, device=device, options=resources)
            for _ in range(n):
                options = worker.options(**resources, max_restarts=-1, max_task_retries=RETRIES)
                pool.actors.append(options.remote(ModelRecipe.of(job), str(self.opt.output_base.resolve()),
                                                  self.run_id, device, threads))
                pool.busy.append(0)
                pool.pids.append(set())
            self._pools[job.alias] = pool
        ready = {pool.actors[i].ready.remote(): (alias, i) for alias, pool in self._pools.items()
                 for i in range(len(pool.actors))}
        errors: dict[str, BaseException] = {}
        t0 = last = time.monotonic()
        while ready:
            done, _ = ray.wait(list(ready), num_returns=1, timeout=1.0)
            self._check_signal()
            if not done and time.monotonic() - last > 60:
                last = time.monotonic()
                self.log(f"waiting for {len(ready)} model worker(s) to start ({time.monotonic() - t0:.0f} s; "
                         f"cluster: {ray.available_resources()} free)")
            for ref in done:
                alias, i = ready.pop(ref)
                try:
                    error, _host, pid = ray.get(ref)
                    self._pools[alias].pids[i].add(pid)
                except Exception as exc:  # the actor could not even be built (import error, crash)
                    error = exc.cause if getattr(exc, "cause", None) is not None else exc
                if error is not None and alias not in errors:
                    errors[alias] = error
        for job in self.jobs:
            if job.alias not in errors:
                try:
                    ray.get(self._pools[job.alias].actors[0].write_metadata.remote(self.opt.overwrite))
                except Exception as exc:
                    errors[job.alias] = exc.cause if getattr(exc, "cause", None) is not None else exc
                if isinstance(errors.get(job.alias), outputs.ConfigConflict):
                    raise ConfigError(str(errors[job.alias]))  # before any array, as in a local run
            if job.alias in errors:
                exc = errors[job.alias]
                if outputs.is_disk_full(exc):
                    where = self.opt.output_base / job.alias / "features.json"
                    self.stats.disk_full = self.stats.disk_full or str(where)
                    exc = OSError(exc.errno, outputs.explain_os_error(exc, where))
                job.error = pipeline.load_error_text(exc)
                self.stats.model_not_loaded(job.alias, exc)
                self.log(f"[{job.alias}] cannot load, skipping this model: {pipeline._short(str(exc))}")
                for actor in self._pools.pop(job.alias).actors:
                    ray.kill(actor, no_restart=True)

    def _stop_workers(self) -> None:
        """Kill every actor and task of this run; wait until they are gone before the leases go."""
        ray = self._ray
        if ray is None:
            return
        for pool in self._pools.values():
            for actor in pool.actors:
                ray.kill(actor, no_restart=True)
        for flight in self._flights.values():
            for ref in (flight.media_ref, flight.info_ref):
                try:
                    ray.cancel(ref, force=True)
                except Exception:
                    pass
        if self._waiting:  # calls of killed actors resolve (as errors) once the actors are dead
            ray.wait(list(self._waiting), num_returns=len(self._waiting), timeout=30)

    # -- the run ---------------------------------------------------------------------------------------------
    def load(self) -> None:
        """The models load in their actors (pipeline.Runner.prepare does the rest, as locally)."""
        self._start_models()

    def _on_signal(self, signum: int, frame: Any) -> None:
        # Only a flag: an exception raised inside Ray's C++ calls (ray.wait) would be mangled there.
        self._signalled = "SIGINT" if signum == signal.SIGINT else "SIGTERM"

    def _check_signal(self) -> None:
        if self._signalled == "SIGINT":
            raise KeyboardInterrupt
        if self._signalled:
            raise pipeline.Interrupted()

    def run(self) -> RunStats:
        t_start = time.perf_counter()
        self.connect()
        previous = {}
        if threading.current_thread() is threading.main_thread():
            previous = {s: signal.signal(s, self._on_signal) for s in (signal.SIGINT, signal.SIGTERM)
                        if signal.getsignal(s) is not signal.SIG_IGN}  # started ignoring it: stays so
        self._progress = pipeline._Progress(self.stats, self.log, self.opt.progress, self.opt.progress_every)
        items: list[Item] = []
        try:
            items = self.prepare()
            if self.stats.disk_full:  # not even features.json fits: nothing can be written
                items = []
            self._progress.start(len(items), sum(m.skipped for m in self.stats.models.values()))
            self._loop(items)
        except (KeyboardInterrupt, pipeline.Interrupted) as exc:
            self.stats.interrupted = "SIGINT" if isinstance(exc, KeyboardInterrupt) else "SIGTERM"
        finally:
            pools = self._pools.values()
            self.cluster["worker_restarts"] = sum(len(p) - 1 for pool in pools for p in pool.pids if p)
            self.cluster["actors"] = {pool.job.alias: {"count": len(pool.actors), "device": pool.device,
                                                       **pool.options} for pool in pools}
            self._stop_workers()
            self._leases.close()  # only now: no worker of this run can still write
            self._progress.close()
            for s, handler in previous.items():
                signal.signal(s, handler)
            self._disconnect()
            self._order_failures(items)
            self.stats.wall_seconds = time.perf_counter() - t_start
        return self.stats

    def _window(self) -> int:
        """Files in flight: enough to keep every actor busy with one queued behind, plus the prefetch."""
        most = max((len(p.actors) for p in self._pools.values()), default=1)
        return 2 * most + self.opt.prefetch

    def _loop(self, items: list[Item]) -> None:
        ray = self._ray
        decode = ray.remote(num_cpus=self._decode_cpus(), max_retries=RETRIES, num_returns=2)(decode_file)
        todo = iter(enumerate(items))
        more = True
        while not self.stats.disk_full:  # a full disk stops the run: nothing more can be written
            while more and len(self._flights) < self._window():
                nxt = next(todo, None)
                if nxt is None:
                    more = False
                else:
                    self._launch(decode, *nxt)
            if not self._waiting:
                break
            done, _ = ray.wait(list(self._waiting), num_returns=1, timeout=0.5)  # short: signals get through
            for ref in done:
                self._collect(ref)
            self._check_signal()

    def _decode_cpus(self) -> float:
        taken = sum(p.options.get("num_cpus", 0) * len(p.actors) for p in self._pools.values())
        free = self.cluster["cpus"] - taken
        return 1.0 if free >= 1 else max(0.05, _round(free))

    def _launch(self, decode: Any, index: int, item: Item) -> None:
        """Claim the file here, send it to a decode task and to each model's least busy actor."""
        opt = self.opt
        jobs, locks, others = pipeline.claim(item, self._leases, opt.overwrite, self.ledger)
        for outcome in others:
            self._report(outcome)
        stub = media.Media(opt.audio_dir / item.source, item.kind)
        for job in (j for j in jobs if j.error):  # a model that could not load fails here, as in extract()
            self.stats.add(pipeline.store(opt.output_base, item, Result(job, error=RuntimeError(job.error),
                                                                         stage="load"), stub, self.run_id))
        live = [j for j in jobs if not j.error]
        if not live:
            for lock in locks:
                self._leases.release(lock)
            self._progress.file_done()
            return
        slim = Item(item.source, item.kind, {j.alias: item.names[j.alias] for j in live}, [])
        views = [ModelJob(j.alias, DecodeView(j.extractor)) for j in live]  # type: ignore[arg-type]
        media_ref, info_ref = decode.remote(opt.audio_dir.resolve(), slim, views, opt.max_pixels_per_frame)
        flight = _Flight(item, locks, media_ref, info_ref)
        self._flights[index] = flight
        self._waiting[info_ref] = (index, None, -1)
        keys = Counter(audio_io.resample_key(*j.extractor.resample_key) for j in live
                       if j.extractor.modality == "audio")
        for job in live:
            pool = self._pools[job.alias]
            i = pool.pick()
            share = keys[audio_io.resample_key(*job.extractor.resample_key)] \
                if job.extractor.modality == "audio" else 1
            ref = pool.actors[i].process.remote(slim, media_ref, share)
            pool.busy[i] += 1
            flight.calls += 1
            self._waiting[ref] = (index, job.alias, i)

    def _collect(self, ref: Any) -> None:
        ray = self._ray
        index, alias, i = self._waiting.pop(ref)
        flight = self._flights[index]
        src = flight.item.source.as_posix()
        if alias is None:
            flight.info_done = True
            try:
                flight.info = ray.get(ref)
                self.stats.decode_seconds += flight.info["seconds"] - flight.info["resample_seconds"]
                if self.opt.verbose:
                    what = f"{flight.info['duration_seconds'] / 60:.1f} min of audio" \
                        if flight.info["decoded_audio"] else flight.item.kind
                    self._progress.say(f"{src}: decoded on {flight.info['host']} ({what})")
            except Exception:
                pass  # each model's call fails with the same cause, counted there
        else:
            pool = self._pools[alias]
            pool.busy[i] -= 1
            flight.calls -= 1
            try:
                outcome, lines, pid = ray.get(ref)
                pool.pids[i].add(pid)
                for line in lines:
                    try:
                        outputs.append_jsonl(self.opt.output_base / "manifest.jsonl", line)
                    except OSError as exc:  # the array stays; without its line the next run redoes it
                        where = self.opt.output_base / "manifest.jsonl"
                        outcome.fail(exc, "write", cause=outputs.explain_os_error(exc, where))
                        outcome.disk_full = str(where) if outputs.is_disk_full(exc) else ""
            except Exception as exc:
                outcome = self._lost(flight, alias, exc)
            self._report(outcome)
        if flight.calls == 0 and flight.info_done:
            if flight.info is not None:
                self.stats.count_decoded(SimpleNamespace(decoded_audio=flight.info["decoded_audio"],
                                                         duration_seconds=flight.info["duration_seconds"]))
            for lock in flight.locks:
                self._leases.release(lock)
            del self._flights[index]
            self._progress.file_done()

    def _lost(self, flight: _Flight, alias: str, exc: BaseException) -> Outcome:
        """The Outcome of a call that raised instead of returning one: a worker died, or a bug."""
        ray = self._ray
        out = Outcome(flight.item.source.as_posix(), alias, "failed")
        decode_failed = False
        try:
            ray.get(flight.info_ref, timeout=30)
        except Exception:
            decode_failed = True
        cause = getattr(exc, "cause", None)
        if decode_failed:
            out.fail(exc, "decode", cause=f"the Ray worker decoding this file died {RETRIES + 1} times "
                     f"({_ray_reason(exc)}); rerun to try again")
        elif isinstance(exc, ray.exceptions.RayActorError):
            out.fail(exc, "extract", cause=f"the Ray worker running {alias} died {RETRIES + 1} times on this "
                     f"file ({_ray_reason(exc)}); rerun to try again")
        elif isinstance(cause, BaseException):
            out.fail(cause, "extract")
        else:
            out.fail(exc, "extract", cause=_ray_reason(exc))
        return out

    def _report(self, outcome: Outcome) -> None:
        """Count one Outcome and say what a local run says about it."""
        if self.stats.disk_full and outcome.status == "failed":
            return  # the run is stopping: what is left is not written, nor counted
        self.stats.add(outcome)
        if outcome.disk_full and not self.stats.disk_full:
            self.stats.disk_full = outcome.disk_full
            self._progress.say(f"disk full at {outcome.disk_full}: the run stops here; free space (or choose "
                               "another --output_base), then rerun the same command: it resumes")
        if outcome.status == "failed" and outcome.stage != "load":
            self._progress.say(f"FAILED {outcome.model} {outcome.source}: {outcome.exception}: "
                               f"{pipeline._short(outcome.cause)}")
        elif self.opt.verbose and outcome.status == "ok":
            self._progress.say(f"{outcome.model:<12} {outcome.source}: shape {outcome.shape} "
                               f"in {outcome.inference_seconds:.2f} s")
        elif self.opt.verbose and outcome.status == "skipped":
            self._progress.say(f"{outcome.model:<12} {outcome.source}: skipped ({outcome.notes[0]})")

    def _order_failures(self, items: list[Item]) -> None:
        """failures.json in a local run's order (files as planned, models as configured), whatever
        order the workers finished in."""
        file_pos = {item.source.as_posix(): n for n, item in enumerate(items)}
        model_pos = {job.alias: n for n, job in enumerate(self.jobs)}
        self.stats.failures.sort(key=lambda f: (file_pos.get(f["file"], -1), model_pos.get(f["model"], 0)))

    def _report_head(self) -> dict:
        return {**super()._report_head(), "engine": {"name": "ray", **self.cluster, "retries": RETRIES}}


def _say(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def _uses_torch(job: ModelJob) -> bool:
    """Whether the plugin runs a torch network (a GPU helps); numpy plugins (madmom, melspec) stay on CPUs."""
    module = sys.modules.get(type(job.extractor).__module__)
    return module is not None and hasattr(module, "torch")


def _round(x: float) -> float:
    """Ray takes resource amounts in steps of 1e-4: round down so the shares still fit."""
    return max(0.0001, int(x * 10000) / 10000)


def _ray_reason(exc: BaseException) -> str:
    lines = [ln.strip() for ln in str(exc).strip().splitlines() if ln.strip()]
    return f"{type(exc).__name__}: {lines[0] if lines else ''}"[:300]
