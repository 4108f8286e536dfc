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
import json
import os
import re
import sys
import tempfile
import urllib.request
from pathlib import Path
from typing import BinaryIO, Iterable

from embedkit.extractors.base import WeightFile, WeightsError

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


_DIGESTS: dict[str, str] = {}  # "path|size|mtime_ns" -> sha256, this process
_DIGEST_FILE = "sha256-cache.json"
_PERSIST_BYTES = 1 << 20  # remember digests of files at least this big across runs


def sha256sum(path: str | os.PathLike, chunk: int = 1 << 20) -> str:
    """sha256 of a weight file, computed once per (path, size, mtime).

    Gigabyte checkpoints are not hashed again at every start: digests are kept in
    `<cache>/sha256-cache.json`; a Hugging Face cache blob is named by its sha256 already.
    """
    p = Path(path).resolve()
    st = p.stat()
    key = f"{p}|{st.st_size}|{st.st_mtime_ns}"
    if key in _DIGESTS:
        return _DIGESTS[key]
    if p.parent.name == "blobs" and re.fullmatch(r"[0-9a-f]{64}", p.name):
        return p.name  # the hub names LFS blobs by their sha256 and checks it on download
    known = _read_digests() if st.st_size >= _PERSIST_BYTES else {}
    if key in known:
        _DIGESTS[key] = known[key]
        return known[key]
    _DIGESTS[key] = digest = _hash_file(p, chunk)
    if st.st_size >= _PERSIST_BYTES:
        _remember_digest(key, digest)
    return digest


def _read_digests() -> dict[str, str]:
    try:
        return json.loads((cache_root() / _DIGEST_FILE).read_text())
    except (OSError, ValueError):
        return {}


def _remember_digest(key: str, digest: str) -> None:
    """Add one digest to the cache file (atomically; a lost race only costs a recomputation)."""
    from embedkit import outputs

    known = _read_digests()
    known[key] = digest
    try:
        outputs.atomic_write_json(cache_root() / _DIGEST_FILE, known)
    except OSError:
        pass  # a read-only cache: digests are recomputed next time


def _hash_file(path: Path, chunk: int) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(chunk), b""):
            h.update(block)
    return h.hexdigest()


def verify(path: Path, expected: str | None) -> None:
    """Raise WeightsError if `path` does not have the expected sha256 (when one is known).

    expected: the full hex digest, or its first hex digits (torch hub file names such as
    `resnet18-f37072fd.pth` carry the first 8; torch itself checks them only on download).
    """
    if expected is None:
        return
    expected = expected.lower()
    got = sha256sum(path)
    if not (got == expected if len(expected) == 64 else got.startswith(expected)):
        what = "expected" if len(expected) == 64 else "expected it to start with"
        raise WeightsError(
            f"checksum mismatch for {path}: sha256 {got}, {what} {expected}. "
            "The file is corrupt or not the official one; delete it and fetch again "
            "(python run_extraction.py --download_only ...)."
        )


def torch_hub_checkpoints() -> Path:
    """torch hub's checkpoint folder, where torchvision caches its downloads:
    $TORCH_HOME/hub/checkpoints (default ~/.cache/torch/hub/checkpoints, or under $XDG_CACHE_HOME).

    torch.hub.get_dir()'s rule, without importing torch (seconds) when it is not imported yet:
    only an imported torch can have moved the folder (torch.hub.set_dir)."""
    torch = sys.modules.get("torch")
    if torch is not None:
        return Path(torch.hub.get_dir()) / "checkpoints"
    xdg = os.getenv("XDG_CACHE_HOME", "~/.cache")
    home = os.path.expanduser(os.getenv("TORCH_HOME", os.path.join(xdg, "torch")))
    return Path(home) / "hub" / "checkpoints"


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
    raise missing(model, wf.filename, looked,
                  f"{how + '; ' if how else ''}put it at {cached} (or set ${CACHE_ENV})")


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


# -- torch checkpoints (torch hub conventions) ---------------------------------------------
_HUB_HASH = re.compile(r"-([0-9a-f]{8,64})\.(?:pth|pt)$")


def hub_hash_prefix(filename: str) -> str | None:
    """The sha256 prefix a torch hub file name carries (`resnet18-f37072fd.pth` -> "f37072fd"), else None."""
    m = _HUB_HASH.search(filename)
    return m.group(1) if m else None


def resolve_hub_checkpoint(model: str, official: WeightFile, weights_path: str | os.PathLike | None) -> Path:
    """A torchvision-style checkpoint: `weights_path` (file or folder), our cache, torch hub's
    cache (`$TORCH_HOME/hub/checkpoints`), or a download. Another file named in `weights_path`
    (e.g. fine-tuned) is checked against the hash prefix its name carries, if any."""
    if weights_path is not None:
        p = Path(weights_path).expanduser()
        if p.is_file() and p.name != official.filename:
            own = WeightFile(p.name, sha256=hub_hash_prefix(p.name))
            return resolve(model, own, local_path=p)
        return resolve(model, official, local_path=p)
    return resolve(model, official, extra_places=[torch_hub_checkpoints() / official.filename])


def read_torch_state_dict(path: str | os.PathLike, model: str, how: str) -> dict:
    """A state dict from a checkpoint file, loaded with torch.load(weights_only=True) on the CPU.

    Takes a plain state dict, or a checkpoint holding one under "state_dict" or "model"; a
    "module." prefix (DataParallel) is removed. `how` says which file to use instead.
    """
    from collections.abc import Mapping

    import torch

    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise WeightsError(f"{model}: cannot read {path} with torch.load(weights_only=True) "
                           f"({reason}). {how}") from None
    if isinstance(obj, Mapping):
        for key in ("state_dict", "model"):
            if isinstance(obj.get(key), Mapping):
                obj = obj[key]
                break
    if not isinstance(obj, Mapping) or not obj or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise WeightsError(f"{model}: {path} holds a {type(obj).__name__}, "
                           f"not a state dict of tensors. {how}")
    state = {str(k): v for k, v in obj.items()}
    if all(k.startswith("module.") for k in state):
        state = {k[len("module."):]: v for k, v in state.items()}
    return state


def random_torch_state(net, seed: int) -> dict:
    """Seeded random weights for a torchvision-style `net` (benchmarks and shape tests only, never
    a correctness claim): He-normal convolutions (fan-out, as torchvision initialises them), a
    small fc, and mildly perturbed BatchNorm parameters and statistics, so activations keep a
    useful scale. The same seed gives the same tensors."""
    import math

    import torch

    gen = torch.Generator().manual_seed(seed)
    state = {}
    for key, ref in net.state_dict().items():
        if key.endswith("num_batches_tracked"):
            state[key] = torch.zeros_like(ref)
        elif ref.ndim >= 3:  # convolution (out, in, [kt,] kh, kw)
            fan_out = ref.shape[0] * math.prod(ref.shape[2:])
            state[key] = torch.randn(ref.shape, generator=gen) * (2.0 / fan_out) ** 0.5
        elif ref.ndim == 2:  # fc
            state[key] = torch.randn(ref.shape, generator=gen) * 0.01
        elif key.endswith("running_var"):
            state[key] = 0.5 + torch.rand(ref.shape, generator=gen)
        elif key.endswith(".weight"):  # BatchNorm scale
            state[key] = 0.5 + torch.rand(ref.shape, generator=gen)
        else:  # biases, BatchNorm shift, running_mean
            state[key] = 0.05 * torch.randn(ref.shape, generator=gen)
    return state


def load_strict(net, state, model: str, label: str, how: str):
    """`net` with `state` loaded strictly, in eval mode; WeightsError listing what does not match.

    BatchNorm counters (num_batches_tracked) may be absent; anything else must match exactly.
    """
    expected = net.state_dict()
    missing = [k for k in expected if k not in state and not k.endswith("num_batches_tracked")]
    unexpected = [k for k in state if k not in expected]
    shapes = [f"{k} {tuple(v.shape)} (expected {tuple(expected[k].shape)})"
              for k, v in state.items() if k in expected and tuple(v.shape) != tuple(expected[k].shape)]
    if missing or unexpected or shapes:
        parts = []
        for what, items in (("missing keys", missing), ("unexpected keys", unexpected),
                            ("wrong shapes", shapes)):
            if items:
                more = f" ... ({len(items)} in all)" if len(items) > 8 else ""
                parts.append(f"{what}: " + ", ".join(items[:8]) + more)
        raise WeightsError(f"{model}: {label} does not match its network; " + "; ".join(parts) + f". {how}")
    net.load_state_dict(state, strict=True)
    return net.eval()
