"""Where model weights come from: cache folder, downloads, checksums, local paths.

Order of lookup for a weight file (first hit wins):
1. an explicit local path (`weights:` in the config, per model), file or folder;
2. the cache folder `$EMBEDKIT_CACHE/<model>/` (default `~/.cache/embedkit/<model>/`);
3. other places the plugin knows (an installed package, e.g. CREPE's);
4. a download from the official URL into the cache, with progress and sha256 check
   (skipped when `EMBEDKIT_OFFLINE=1` or `HF_HUB_OFFLINE=1`).

A miss raises `WeightsError` naming every place looked at and how to supply the file.
"""

from __future__ import annotations

import hashlib
import os
import tempfile
import urllib.request
from pathlib import Path
from typing import BinaryIO, Iterable

from extractors.base import WeightFile, WeightsError

CACHE_ENV = "EMBEDKIT_CACHE"


def cache_root() -> Path:
    """Root of the weight cache: $EMBEDKIT_CACHE, else $XDG_CACHE_HOME/embedkit, else ~/.cache/embedkit."""
    if os.environ.get(CACHE_ENV):
        return Path(os.environ[CACHE_ENV]).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base).expanduser() / "embedkit"


def model_cache_dir(model: str) -> Path:
    return cache_root() / model


def offline() -> bool:
    return any(os.environ.get(v, "") not in ("", "0") for v in ("EMBEDKIT_OFFLINE", "HF_HUB_OFFLINE"))


def sha256sum(path: str | os.PathLike, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(chunk), b""):
            h.update(block)
    return h.hexdigest()


def verify(path: Path, expected: str | None) -> None:
    """Raise WeightsError if `path` does not have the expected sha256 (when one is known)."""
    if expected is None:
        return
    got = sha256sum(path)
    if got != expected:
        raise WeightsError(
            f"checksum mismatch for {path}: sha256 {got}, expected {expected}. "
            "The file is corrupt or not the official one; delete it and fetch again "
            "(python run_extraction.py --download_only ...)."
        )


def save_stream(src: BinaryIO, dest: Path, sha256: str | None = None, on_block=None) -> Path:
    """Copy a readable binary stream to `dest` atomically (temp file + rename), checking sha256."""
    dest.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{dest.name}.", suffix=".part", dir=dest.parent)
    try:
        with os.fdopen(fd, "wb") as out:
            while block := src.read(1 << 20):
                out.write(block)
                if on_block:
                    on_block(len(block))
        verify(Path(tmp), sha256)
        os.replace(tmp, dest)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return dest


def download(url: str, dest: Path, sha256: str | None = None, progress: bool = True) -> Path:
    """Download `url` to `dest` atomically, with a progress bar and sha256 check."""
    with urllib.request.urlopen(url, timeout=60) as resp:
        total = int(resp.headers.get("Content-Length") or 0)
        if not progress:
            return save_stream(resp, dest, sha256)
        from tqdm import tqdm

        with tqdm(total=total or None, unit="B", unit_scale=True, desc=f"download {dest.name}") as bar:
            return save_stream(resp, dest, sha256, on_block=bar.update)


def resolve(
    model: str,
    wf: WeightFile,
    local_path: str | os.PathLike | None = None,
    extra_places: Iterable[Path] = (),
    allow_download: bool = True,
) -> Path:
    """Path of weight file `wf` for `model`, found or downloaded (see module doc)."""
    looked: list[str] = []
    if local_path is not None:
        p = Path(local_path).expanduser()
        cand = p / wf.filename if p.is_dir() else p
        if cand.is_file():
            verify(cand, wf.sha256)
            return cand
        raise WeightsError(
            f"{model}: weights path {cand} does not exist. Point `weights:` for {model} "
            f"in your config at the file {wf.filename!r} (or a folder holding it)."
        )
    cached = model_cache_dir(model) / wf.filename
    looked.append(str(cached))
    if cached.is_file():
        verify(cached, wf.sha256)
        return cached
    for place in extra_places:
        cand = Path(place)
        cand = cand / wf.filename if cand.is_dir() else cand
        looked.append(str(cand))
        if cand.is_file():
            verify(cand, wf.sha256)
            return cand
    if wf.url and allow_download and not offline():
        try:
            return download(wf.url, cached, wf.sha256)
        except WeightsError:
            raise
        except Exception as exc:  # network errors: fall through to the advice below
            looked.append(f"{wf.url} (download failed: {type(exc).__name__}: {exc})")
    elif wf.url:
        looked.append(f"{wf.url} (not downloaded: offline mode)")
    how = wf.how_to_get or (f"download {wf.url}" if wf.url else "")
    raise missing(model, wf.filename, looked, f"{how + '; ' if how else ''}put it at {cached} (or set ${CACHE_ENV})")


def missing(model: str, filename: str, looked: Iterable[str], how: str) -> WeightsError:
    """The error for weights found nowhere: one short line with the fix, then the details.

    The console shows the first line; failures.json keeps the rest.
    """
    return WeightsError(
        f"{model}: weights not found ({filename}). Fix: run `python run_extraction.py --download_only "
        f"--models {model}` where there is internet, or set `weights: /path/to/{filename}` for {model}.\n"
        f"looked in: {'; '.join(looked)}\n"
        f"how to get it: {how}"
    )
