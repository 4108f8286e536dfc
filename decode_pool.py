"""Decode workers (`--decode_workers N`): files decoded and resampled in N processes, ahead of the models.

The run's prefetch thread keeps the claims (leases stay in the main process) and hands each
claimed file to an idle worker; the decoded `media.Media` comes back through the worker's pipe
(its arrays as pickle-5 out-of-band buffers, received into writable memory: no second copy), and
files leave in plan order. At most `workers` files are claimed and not yet handed to the models
(`Runner._producer`), so memory is bounded by the prefetch count plus the workers, whatever the
collection's size.

One process per worker, each with its own pipe, so the driver always knows which file a worker
holds: a worker that dies (the out-of-memory killer, a crash in a native decoder) fails that file
only, with the cause, and is replaced; the run goes on. Workers are started with spawn (never
fork: torch's threads are live in the driver), ignore Ctrl-C (the driver stops them), and die
with the driver (PR_SET_PDEATHSIG on Linux; elsewhere at their next read of the closed pipe).
"""

from __future__ import annotations

import multiprocessing as mp
import os
import pickle
import runpy
import signal
import sys
import threading
import time
from dataclasses import dataclass
from multiprocessing.connection import Connection, wait
from pathlib import Path
from typing import Any

from embedkit import audio_io, media

HERE = Path(__file__).resolve().parent


class DecodeWorkerDied(RuntimeError):
    """The worker process decoding this file died (killed, out of memory, a native crash)."""


class DecodeView:
    """What `pipeline.decode` reads of a model, so decode workers never import the plugins."""

    def __init__(self, ex: Any) -> None:
        self.modality = ex.modality
        self.resample_precision = ex.resample_precision if ex.modality == "audio" else None
        self.resample_key = ex.resample_key if ex.modality == "audio" else None


def picklable(exc: BaseException | None) -> BaseException | None:
    """`exc` itself when it survives pickling, else a MediaError with its one-line text."""
    if exc is None:
        return None
    try:
        pickle.loads(pickle.dumps(exc))
        return exc
    except Exception:
        return audio_io.MediaError(audio_io.one_line(exc))


def died_cause(exitcode: int | None) -> str:
    """One line for a worker's death, from its exit code."""
    if exitcode is not None and exitcode < 0:
        try:
            name = signal.Signals(-exitcode).name
        except ValueError:
            name = f"signal {-exitcode}"
        why = ": out of memory? (the kernel's OOM killer sends it)" if -exitcode == signal.SIGKILL else ""
        what = f"killed by signal {-exitcode} ({name}{why})"
    else:
        what = f"exited with status {exitcode}"
    return (f"the decode worker died on this file ({what}); the other files went on; rerun to try it "
            "again, or --decode_workers 0 to decode it in the driver")


# -- in the worker ---------------------------------------------------------------------------
def serve(conn: Connection, parent: int, pipeline: Any) -> None:
    """A worker's loop: (index, root, item, views, max_pixels, frames) in, the decoded Media out.
    `pipeline` is embedkit.pipeline, passed in by the worker's entry (it imports this module)."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C reaches the whole group: the driver decides
    _die_with(parent)
    while True:
        try:
            task = conn.recv()
        except (EOFError, OSError):
            return  # the driver is gone or closed the pipe
        if task is None:
            return
        index, root, item, views, max_pixels, frames = task
        t0 = time.perf_counter()
        try:
            m = pipeline.decode(root, item, views, max_pixels)
            if frames:
                pipeline.count_frames(m, views)
            m.error = picklable(m.error)
            m._audio_error = picklable(m._audio_error)
            failure = None
        except BaseException as exc:  # a bug, not a bad file (decode never raises for those)
            m, failure = None, audio_io.one_line(exc)
        seconds = time.perf_counter() - t0
        buffers: list[pickle.PickleBuffer] = []
        head = pickle.dumps((index, m, failure, seconds), protocol=5, buffer_callback=buffers.append)
        views_ = [b.raw() for b in buffers]
        try:
            conn.send((head, [v.nbytes for v in views_]))
            for v in views_:
                conn.send_bytes(v)
        except (BrokenPipeError, OSError):
            return
        del m, buffers, views_


def _die_with(parent: int) -> None:
    """Linux: this process gets SIGKILL when the driver dies (no orphan left decoding)."""
    if not sys.platform.startswith("linux"):
        return
    try:
        import ctypes

        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    except Exception:
        return
    if os.getppid() != parent:  # the driver died before the line above
        os._exit(1)


# -- in the driver -------------------------------------------------------------------------------
@dataclass
class _Slot:
    proc: Any
    conn: Connection
    index: int | None = None  # the file it holds


class DecodePool:
    """`workers` decode processes; `submit` one file to an idle one, `poll` for what came back."""

    def __init__(self, workers: int) -> None:
        self.workers = workers
        self._ctx = mp.get_context("spawn")
        self._slots: list[_Slot] = []
        self._lock = threading.Lock()
        self._closed = False
        self.restarts = 0

    def _start(self) -> _Slot:
        ours, theirs = self._ctx.Pipe(duplex=True)
        entry = str(HERE / "_decode_worker.py")
        # target by a name spawn always resolves (runpy): the entry file registers the package
        # before anything of embedkit is unpickled
        proc = self._ctx.Process(target=runpy.run_path, args=(entry,), daemon=True, name="embedkit-decode",
                                 kwargs={"init_globals": {"conn": theirs, "parent": os.getpid()},
                                         "run_name": "embedkit_decode_worker"})
        # Ctrl-C goes to the whole process group: the worker starts with it blocked, then ignores it
        old = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT})
        try:
            proc.start()
        finally:
            signal.pthread_sigmask(signal.SIG_SETMASK, old)
        theirs.close()
        return _Slot(proc, ours)

    def start(self) -> None:
        with self._lock:
            while len(self._slots) < self.workers and not self._closed:
                self._slots.append(self._start())

    def idle(self) -> int:
        return sum(1 for s in self._slots if s.index is None)

    def pids(self) -> list[int]:
        return [s.proc.pid for s in self._slots]

    def submit(self, index: int, root: Path, item: Any, views: list, max_pixels: int, frames: bool) -> None:
        slot = next(s for s in self._slots if s.index is None)
        slot.index = index
        try:
            slot.conn.send((index, root, item, views, max_pixels, frames))
        except OSError:
            pass  # a worker already dead: poll() sees its sentinel and fails the file

    def poll(self, timeout: float) -> list[tuple[int, media.Media | None, str | None, float]]:
        """(index, Media or None, failure or None, seconds) of every file that came back or whose
        worker died, waiting at most `timeout` seconds for the first."""
        busy = [s for s in self._slots if s.index is not None]
        if not busy:
            return []
        ready = set(wait([s.conn for s in busy] + [s.proc.sentinel for s in busy], timeout))
        out = []
        for n, slot in enumerate(self._slots):
            if slot.index is None or (slot.conn not in ready and slot.proc.sentinel not in ready):
                continue
            index = slot.index
            try:
                if slot.conn not in ready:
                    raise EOFError
                head, sizes = slot.conn.recv()
                buffers = []
                for size in sizes:
                    buf = bytearray(size)  # writable: the models may work on the arrays in place
                    slot.conn.recv_bytes_into(buf)
                    buffers.append(buf)
                got_index, m, failure, seconds = pickle.loads(head, buffers=buffers)
                assert got_index == index
                slot.index = None
                out.append((index, m, failure, seconds))
            except (EOFError, OSError, pickle.UnpicklingError):
                slot.proc.join(timeout=5)
                out.append((index, None, died_cause(slot.proc.exitcode), 0.0))
                self._replace(n)
        return out

    def _replace(self, n: int) -> None:
        with self._lock:
            old = self._slots[n]
            old.conn.close()
            _end(old.proc)
            if self._closed:
                self._slots[n] = _Slot(old.proc, old.conn, None)
                return
            self._slots[n] = self._start()
            self.restarts += 1

    def close(self) -> None:
        """Stop every worker (a worker stuck in a file is killed) and wait for them: no orphans."""
        with self._lock:
            self._closed = True
            slots, self._slots = self._slots, []
        for s in slots:
            try:
                if s.index is None:
                    s.conn.send(None)
            except OSError:
                pass
        for s in slots:
            if s.index is not None:
                s.proc.terminate()
        deadline = time.monotonic() + 5
        for s in slots:
            s.proc.join(timeout=max(0.0, deadline - time.monotonic()))
            _end(s.proc)
            s.conn.close()


def _end(proc: Any) -> None:
    if proc.is_alive():
        proc.kill()
    proc.join(timeout=5)

