"""Output naming, atomic writes, completeness checks and locks."""

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from embedkit import outputs


def test_names_mirror_tree_and_never_collide():
    names = outputs.output_names([Path("a.wav"), Path("a.mp3"), Path("b.flac"), Path("sub/a.wav")])
    assert names[Path("a.wav")] == Path("a.wav.npy")
    assert names[Path("a.mp3")] == Path("a.mp3.npy")
    assert names[Path("b.flac")] == Path("b.npy")
    assert names[Path("sub/a.wav")] == Path("sub/a.npy")
    assert len(set(names.values())) == 4


def test_paths_outside_base_are_refused(tmp_path):
    with pytest.raises(ValueError):
        outputs.output_names([Path("../evil.wav")])
    with pytest.raises(ValueError):
        outputs.inside(tmp_path / "out", Path("../../etc/x.npy"))


def test_atomic_save_roundtrip_and_bytes_equal_np_save(tmp_path):
    x = np.random.default_rng(0).standard_normal((7, 3)).astype(np.float32)
    outputs.atomic_save_npy(tmp_path / "x.npy", x)
    np.save(tmp_path / "y.npy", x)
    assert (tmp_path / "x.npy").read_bytes() == (tmp_path / "y.npy").read_bytes()
    assert sorted(os.listdir(tmp_path)) == ["x.npy", "y.npy"]


def test_failed_write_leaves_nothing(tmp_path, monkeypatch):
    def full_disk(fd):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "fsync", full_disk)
    with pytest.raises(OSError) as err:
        outputs.atomic_save_npy(tmp_path / "x.npy", np.zeros(10, np.float32))
    assert os.listdir(tmp_path) == []
    assert "disk full" in outputs.explain_os_error(err.value)


def test_truncated_npy_is_incomplete(tmp_path):
    p = tmp_path / "x.npy"
    np.save(p, np.arange(1000, dtype=np.float32))
    assert outputs.is_complete_npy(p)
    data = p.read_bytes()
    p.write_bytes(data[:-1])
    assert not outputs.is_complete_npy(p)
    p.write_bytes(data[:50])
    assert not outputs.is_complete_npy(p)
    p.write_bytes(b"garbage")
    assert not outputs.is_complete_npy(p)
    assert not outputs.is_complete_npy(tmp_path / "missing.npy")


def test_lock_is_exclusive_and_dead_owner_is_taken_over(tmp_path):
    target = tmp_path / "x.npy"
    a, b = outputs.OutputLock(target), outputs.OutputLock(target)
    assert a.acquire() and not b.acquire()
    a.release()
    assert b.acquire()
    b.release()
    # a lock left by a process that has exited is stale
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                          capture_output=True, text=True)
    a.path.write_text(f"{outputs.HOST}:{int(dead.stdout)}")
    assert b.acquire()
    b.release()
    # a live owner (this process's parent) is respected
    a.path.write_text(f"{outputs.HOST}:{os.getppid()}")
    assert not b.acquire()


def test_clean_stale_removes_only_dead_owners(tmp_path):
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                          capture_output=True, text=True)
    pid = int(dead.stdout)
    stale = tmp_path / f".x.npy.tmp-{outputs.HOST}-{pid}-abcd1234"
    live = tmp_path / f".y.npy.tmp-{outputs.HOST}-{os.getpid()}-abcd1234"
    stale.write_bytes(b"1")
    live.write_bytes(b"1")
    (tmp_path / ".z.npy.lock").write_text(f"{outputs.HOST}:{pid}")
    assert outputs.clean_stale(tmp_path) == 2
    assert sorted(os.listdir(tmp_path)) == [live.name]


def test_weight_digests_are_computed_once_per_file_version(tmp_path, monkeypatch):
    """A gigabyte checkpoint is not hashed at every start: (path, size, mtime) -> sha256 is remembered."""
    import hashlib

    from embedkit import weights

    monkeypatch.setenv("EMBEDKIT_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(weights, "_DIGESTS", {})
    path = tmp_path / "model.bin"
    data = np.random.default_rng(0).bytes(2 << 20)
    path.write_bytes(data)
    st = path.stat()
    assert weights.sha256sum(path) == hashlib.sha256(data).hexdigest()
    # same size and mtime, other bytes: the remembered digest is used (the file is not read again),
    # also by a new process (the in-memory table cleared)
    path.write_bytes(data[::-1])
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))
    monkeypatch.setattr(weights, "_DIGESTS", {})
    assert weights.sha256sum(path) == hashlib.sha256(data).hexdigest()
    # a new version of the file (mtime moves) is hashed again
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))
    assert weights.sha256sum(path) == hashlib.sha256(data[::-1]).hexdigest()
    # a Hugging Face cache blob is named by its sha256
    blob = tmp_path / "blobs" / ("ab" * 32)
    blob.parent.mkdir()
    blob.write_bytes(b"x")
    assert weights.sha256sum(blob) == "ab" * 32
