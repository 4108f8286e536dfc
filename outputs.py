"""Output writing: where each array goes, atomic writes, completeness, locks, metadata.

Layout under `output_base`:
    <model>/<relative dir>/<stem>.npy         main output of each input file
    <model>.<extra>/<relative dir>/<stem>.npy optional second outputs (e.g. madmom.beats)
    <model>/features.json                     what the arrays are (axes, hop, params, provenance)
    manifest.jsonl                            one line per array written (source, output, shape, config
                                              digest, what the input was); the last line per
                                              (model, source) is the current one
    failures.json                             what is still failing in this folder (file, model, cause)
    run_report.json, reports/                 report of the last run / of every run

Every array is written to a hidden temporary file in its final folder, fsynced,
then renamed: an output path holds a complete array or nothing. A `.lock` file
beside an output is a lease on it: a live process is computing it, so
concurrent drivers never compute the same output twice. The lock holds
"host:pid"; its holder touches it every few seconds (heartbeat). A lock whose
owner is a dead process on this host, or whose heartbeat stopped more than
`lease_seconds` ago (a driver on another host that died, e.g. at a SLURM time
limit), is taken over.
"""

from __future__ import annotations

import errno
import hashlib
import json
import os
import socket
import threading
import time
import uuid
from collections import defaultdict
from pathlib import Path, PurePosixPath
from typing import Any, Iterable

import numpy as np

HOST = socket.gethostname()
DIGEST_LIMIT = 256 << 20  # inputs up to this size get a sha256 in their manifest record (~0.25 s)
_TMP_TAG = ".tmp-"
_LOCK_SUFFIX = ".lock"
LEASE_SECONDS = 300.0  # a lock not touched for this long is free to take over


# -- where outputs go ---------------------------------------------------------
def output_names(sources: Iterable[PurePosixPath | Path]) -> dict[Path, Path]:
    """Relative output path (without model folder) for each relative source path.

    `dir/a.wav` -> `dir/a.npy`. Inputs that would collide (`a.wav` and `a.mp3`)
    keep their extension instead (`a.wav.npy`, `a.mp3.npy`), so nothing is
    overwritten silently; the manifest records every mapping.
    """
    groups: dict[tuple[str, str], list[Path]] = defaultdict(list)
    for src in sources:
        src = Path(src)
        if src.is_absolute() or ".." in src.parts:
            raise ValueError(f"source path {src} must be relative and inside the audio folder")
        groups[(src.parent.as_posix(), src.stem)].append(src)
    out: dict[Path, Path] = {}
    for members in groups.values():
        for src in members:
            name = src.name if len(members) > 1 else src.stem
            out[src] = src.parent / f"{name}.npy"
    return out


def inside(base: Path, rel: Path) -> Path:
    """base / rel, refusing anything that would land outside `base`."""
    target = (base / rel).resolve()
    if not target.is_relative_to(base.resolve()):
        raise ValueError(f"output {rel} would land outside {base}")
    return base / rel


# -- atomic writes --------------------------------------------------------------
def tmp_path(path: Path) -> Path:
    """A hidden temporary name beside `path`, naming this host and pid (so clean_stale knows its owner)."""
    return path.with_name(f".{path.name}{_TMP_TAG}{HOST}-{os.getpid()}-{uuid.uuid4().hex[:8]}")


def _synced_tmp(path: Path, data: bytes) -> Path:
    """`data` in a hidden temporary beside `path`, on disk (fsync); nothing is left on failure."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = tmp_path(path)
    try:
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return tmp


def _holds(path: Path, data: bytes) -> bool:
    """Whether `path` holds exactly `data` already (small files: reports, features.json)."""
    try:
        return path.read_bytes() == data
    except OSError:
        return False


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write `data` to `path` via temp file + fsync + rename; no partial file on failure."""
    tmp = _synced_tmp(path, data)
    try:
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def atomic_save_npy(path: Path, array: np.ndarray) -> None:
    """np.save `array` to `path` atomically (same bytes as np.save)."""
    import io

    buf = io.BytesIO()
    np.save(buf, np.ascontiguousarray(array), allow_pickle=False)
    atomic_write_bytes(path, buf.getvalue())


def atomic_write_json(path: Path, obj: Any) -> None:
    data = (json.dumps(obj, indent=2, sort_keys=False, default=str) + "\n").encode()
    if not _holds(path, data):  # the same text already there: nothing to write (a full disk allows that)
        atomic_write_bytes(path, data)


def is_complete_npy(path: Path) -> bool:
    """True when `path` is a whole .npy file: valid header and exactly the data it announces."""
    try:
        with open(path, "rb") as f:
            version = np.lib.format.read_magic(f)
            if version == (1, 0):
                shape, fortran, dtype = np.lib.format.read_array_header_1_0(f)
            elif version == (2, 0):
                shape, fortran, dtype = np.lib.format.read_array_header_2_0(f)
            else:
                return False
            header_end = f.tell()
        expected = header_end + int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
        return os.path.getsize(path) == expected and not dtype.hasobject
    except (OSError, ValueError, EOFError):
        return False


# -- locks between concurrent drivers -----------------------------------------
def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _owner_dead(text: str) -> bool:
    """A lock/temp owned by a process of this host that no longer exists."""
    try:
        host, pid = text.rsplit(":", 1) if ":" in text else text.rsplit("-", 1)
        return host == HOST and not _pid_alive(int(pid))
    except ValueError:
        return False


class OutputLock:
    """Exclusive claim on one output, held by this process (a lock file made by atomic hard link).

    A lock left by a dead process on this host, or one whose heartbeat is older
    than `lease_seconds`, is taken over; any other is respected. `owner` is the
    holder's "host:pid" after a failed `acquire()`.
    """

    def __init__(self, output: Path, lease_seconds: float = LEASE_SECONDS) -> None:
        self.path = output.with_name(f".{output.name}{_LOCK_SUFFIX}")
        self.lease_seconds = lease_seconds
        self.held = False
        self.owner: str | None = None

    def acquire(self) -> bool:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        # Write the owner into a temp file, then hard-link it into place: the link is
        # atomic and fails if the lock exists, so a lock file never lacks its owner
        # (an empty lock left by a kill would otherwise look held forever).
        tmp = tmp_path(self.path)
        try:
            tmp.write_text(f"{HOST}:{os.getpid()}")  # a full disk fails here: the finally removes it
            for _ in range(3):
                try:
                    os.link(tmp, self.path)
                except FileExistsError:
                    try:
                        owner = self.path.read_text().strip()
                        age = time.time() - self.path.stat().st_mtime
                    except FileNotFoundError:
                        continue  # released meanwhile: try again
                    if _owner_dead(owner) or age > self.lease_seconds:
                        self._break(owner)
                        continue
                    self.owner = owner
                    return False
                self.held = True
                self.owner = f"{HOST}:{os.getpid()}"
                return True
            return False
        finally:
            tmp.unlink(missing_ok=True)

    def _break(self, owner: str) -> None:
        # Rename first so two processes breaking the same stale lock cannot both win.
        grave = self.path.with_name(self.path.name + f".stale-{uuid.uuid4().hex[:8]}")
        try:
            os.rename(self.path, grave)
            if grave.read_text().strip() == owner:
                grave.unlink()
            else:  # someone else took it meanwhile: put theirs back
                os.rename(grave, self.path)
        except FileNotFoundError:
            pass

    def touch(self) -> None:
        """Renew the lease (the heartbeat)."""
        if self.held:
            try:
                os.utime(self.path)
            except FileNotFoundError:
                pass

    def release(self) -> None:
        if self.held:
            try:
                self.path.unlink()
            except FileNotFoundError:
                pass
            self.held = False


class Leases:
    """Every lock this process holds, renewed by one heartbeat thread every lease/5 seconds.

    `close()` releases them all and refuses new ones, so an interrupted run leaves
    no lock behind whichever thread held it.
    """

    def __init__(self, lease_seconds: float = LEASE_SECONDS) -> None:
        self.lease_seconds = lease_seconds
        self._held: set[OutputLock] = set()
        self._mutex = threading.Lock()
        self._closed = threading.Event()
        self._thread: threading.Thread | None = None

    def acquire(self, output: Path) -> OutputLock:
        """A lock on `output`; `.held` says whether this process got it (`.owner` who has it)."""
        lock = OutputLock(output, self.lease_seconds)
        with self._mutex:
            if self._closed.is_set():
                return lock
            if lock.acquire():
                self._held.add(lock)
                self._start()
        return lock

    def release(self, lock: OutputLock) -> None:
        with self._mutex:
            lock.release()
            self._held.discard(lock)

    def _start(self) -> None:
        if self._thread is None:
            self._thread = threading.Thread(target=self._beat, daemon=True, name="lease-heartbeat")
            self._thread.start()

    def _beat(self) -> None:
        interval = max(0.5, self.lease_seconds / 5)
        while not self._closed.wait(interval):
            with self._mutex:
                for lock in self._held:
                    lock.touch()

    def close(self) -> None:
        with self._mutex:
            self._closed.set()
            for lock in self._held:
                lock.release()
            self._held.clear()


def clean_stale(folder: Path) -> int:
    """Remove temp files and locks left in `folder` (recursively) by dead processes of this host."""
    removed = 0
    if not folder.is_dir():
        return 0
    for dirpath, _dirs, files in os.walk(folder):
        for name in files:
            if not name.startswith("."):
                continue
            p = Path(dirpath) / name
            if _TMP_TAG in name:
                owner = name.split(_TMP_TAG, 1)[1].rsplit("-", 1)[0]  # host-pid
                if _owner_dead(owner):
                    p.unlink(missing_ok=True)
                    removed += 1
            elif name.endswith(_LOCK_SUFFIX):
                try:
                    if _owner_dead(p.read_text().strip()):
                        p.unlink(missing_ok=True)
                        removed += 1
                except OSError:
                    pass
    return removed


# -- manifest -------------------------------------------------------------------
def append_jsonl(path: Path, record: dict) -> None:
    """Append one JSON line with a single write (atomic for small lines on local disks).

    A line cut short earlier (a kill or a full disk mid-write) is ended first, so it never
    swallows this one; readers skip the cut line.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    line = (json.dumps(record, default=str) + "\n").encode()
    fd = os.open(path, os.O_RDWR | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        size = os.fstat(fd).st_size
        if size and os.pread(fd, 1, size - 1) != b"\n":
            line = b"\n" + line
        written = os.write(fd, line)
        if written != len(line):  # only a full disk writes part of a small line
            raise OSError(errno.ENOSPC, "No space left on device (manifest line cut short)", str(path))
    finally:
        os.close(fd)


class ManifestIndex:
    """The last record per (model, source) of a manifest.jsonl, read incrementally.

    `refresh()` reads only what was appended since the last call (other drivers' lines
    included); a line cut short by a kill is skipped. Records keep only what resuming needs:
    output, config, input, run; `superseded` remembers the outputs earlier lines named for a
    (model, source), to find the ones left under an old name.
    """

    KEEP = ("output", "config", "input", "run", "skipped")

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self.last: dict[tuple[str, str], dict] = {}
        self.superseded: dict[tuple[str, str], set[str]] = {}  # outputs an earlier line gave a source
        self._offset = 0
        self._lock = threading.Lock()

    def refresh(self) -> None:
        with self._lock:
            try:
                if os.stat(self.path).st_size <= self._offset:  # nothing new: not even opened
                    return
                with open(self.path, "rb") as f:
                    f.seek(self._offset)
                    data = f.read()
            except FileNotFoundError:
                return
            end = data.rfind(b"\n") + 1  # an unfinished last line waits for its newline
            for raw in data[:end].splitlines():
                try:
                    rec = json.loads(raw)
                    key = (rec["model"], rec["source"])
                except (ValueError, KeyError, TypeError):
                    continue
                before = self.last.get(key)
                if before and before.get("output") and before["output"] != rec.get("output"):
                    self.superseded.setdefault(key, set()).add(before["output"])
                self.last[key] = {k: rec[k] for k in self.KEEP if k in rec}
            self._offset += end

    def get(self, model: str, source: str) -> dict | None:
        with self._lock:
            return self.last.get((model, source))

    def items(self) -> list[tuple[tuple[str, str], dict]]:
        with self._lock:
            return list(self.last.items())


# -- what an output was computed from -------------------------------------------
def config_digest(extractor: str, params: dict, weights_setting: str | None) -> str:
    """16 hex digits naming a model configuration (what features.json's extractor, params and
    weights_setting say); equal configurations give equal digests on every machine."""
    text = json.dumps({"extractor": extractor, "params": params, "weights_setting": weights_setting},
                      sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def input_fingerprint(path: Path, digest_limit: int = DIGEST_LIMIT) -> dict:
    """{"size", "mtime_ns"} of an input file, and its "sha256" when it is at most `digest_limit` bytes."""
    import stat

    st = os.stat(path)
    out = {"size": st.st_size, "mtime_ns": st.st_mtime_ns}
    if stat.S_ISREG(st.st_mode) and st.st_size <= digest_limit:  # a pipe is read once, by the decoder
        out["sha256"] = file_sha256(path)
    return out


def file_sha256(path: Path) -> str:
    with open(path, "rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


def input_changed(recorded: dict, path: Path) -> str | None:
    """Why `path` is no longer the input `recorded` describes, or None when it is the same.

    Size and mtime equal: the same (no reading). Size equal, mtime not: the sha256 decides
    where one was recorded (a copy or `touch` of the same bytes is the same input).
    """
    try:
        st = os.stat(path)
    except OSError as exc:
        return f"cannot stat it ({exc.strerror})"
    if recorded.get("size") != st.st_size:
        return f"its size changed ({recorded.get('size')} -> {st.st_size} bytes)"
    if recorded.get("mtime_ns") == st.st_mtime_ns:
        return None
    if "sha256" in recorded and file_sha256(path) == recorded["sha256"]:
        return None
    return "its content changed (modification time and sha256)" if "sha256" in recorded \
        else "its modification time changed (no sha256 recorded for files this large)"


# -- features.json: one configuration per model folder ----------------------------
class ConfigConflict(Exception):
    """A model folder's features.json names another configuration than this run's."""


def read_config_digest(meta: dict) -> str:
    """The configuration digest of a features.json (computed for files written before it was recorded)."""
    return meta.get("config_digest") or config_digest(meta.get("extractor"), meta.get("params"),
                                                      meta.get("weights_setting"))


def claim_config(path: Path, meta: dict, replace: bool = False) -> os.stat_result:
    """Write features.json `meta` unless it holds another configuration: atomically, so of two
    runs starting at once with different configurations exactly one writes it; the other gets
    ConfigConflict before it writes any array. `replace` (--overwrite): write it whatever it holds.
    Returns the file's stat (to notice later whether another run replaced it)."""
    data = (json.dumps(meta, indent=2, default=str) + "\n").encode()
    if replace:
        atomic_write_bytes(path, data)
        return os.stat(path)
    if _holds(path, data):  # the same configuration, written the same: nothing to write
        return os.stat(path)
    tmp = _synced_tmp(path, data)
    try:
        try:
            os.link(tmp, path)  # atomic, and fails where the file exists: the first writer wins
            return os.stat(path)
        except FileExistsError:
            pass
        try:
            old = json.loads(path.read_text())
        except (OSError, ValueError) as exc:
            raise ConfigConflict(f"{path} cannot be read ({exc}); move it away or use --overwrite") from None
        if read_config_digest(old) != meta["config_digest"]:
            raise ConfigConflict(
                f"{path} was written by {old.get('extractor')} with params {old.get('params')} and "
                f"weights {old.get('weights_setting') or 'default'} (another run, perhaps still running), "
                f"but this run asks {meta.get('extractor')} with {meta.get('params')} and weights "
                f"{meta.get('weights_setting') or 'default'}. Use --overwrite to recompute, another "
                "--output_base, or give this configuration its own name "
                "(models: {my_name: {extractor: ...}}).")
        if path.read_bytes() != data:  # the same configuration: refresh provenance (versions, ...)
            os.replace(tmp, path)
        return os.stat(path)
    finally:
        tmp.unlink(missing_ok=True)


def now_iso() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S%z")


def explain_os_error(exc: OSError, path: Path | str | None = None) -> str:
    """One-line cause with advice for the write errors people actually hit (`path`: what was written)."""
    where = path or exc.filename
    if exc.errno in (errno.ENOSPC, errno.EDQUOT):
        return (f"disk full at {where}: free space or choose another --output_base, then rerun "
                "(the rerun resumes)")
    if exc.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
        return f"cannot write {where} ({exc.strerror}); check permissions of --output_base, then rerun"
    return f"{type(exc).__name__}: {exc}"


def is_disk_full(exc: BaseException) -> bool:
    return isinstance(exc, OSError) and exc.errno in (errno.ENOSPC, errno.EDQUOT)
