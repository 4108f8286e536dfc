"""Where model weights come from: records of the official files, one resolver, cache, checksums.

A checkpoint is described as data, one record per checkpoint, in the plugin that needs it:
`WeightFile` for a file (name, official URL, sha256 or the hash prefix its name carries,
licence, how to get it offline), `HubRepo` for a Hugging Face hub repository (MERT).
`resolve(model, record, weights_path)` finds a file, in this order (first hit wins):

1. an explicit local path (`weights:` in the config, `weights_path=` in Python): a file, or a
   folder holding the record's file (or, for an archive, the file inside it);
2. the cache folder `$EMBEDKIT_CACHE/<model>/` (default `~/.cache/embedkit/<model>/`): point
   $EMBEDKIT_CACHE at a shared folder filled once (`--download_only`) for an offline cluster;
3. other places the record names: an installed Python package (CREPE's), torch hub's cache
   (torchvision's checkpoints);
4. a download from the official URL into the cache, with progress and sha256 check (an archive
   is unpacked there once), skipped when `EMBEDKIT_OFFLINE=1` or `HF_HUB_OFFLINE=1`.

`resolve_hub(model, repo, revision, weights_path)` does the same for a hub repository: a local
folder, else the Hugging Face cache ($HF_HUB_CACHE, else $HF_HOME/hub), else a download
(offline: the cache only). Every file found is checked against the record's digest wherever it
was found. A miss raises `WeightsError` naming every place looked at and how to supply the file,
with the fix for the entry point that is running (`fetch_advice`).

This module imports nothing from `extractors/`; the plugins import it.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import sys
import tempfile
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO, Iterable

CACHE_ENV = "EMBEDKIT_CACHE"


class WeightsError(RuntimeError):
    """Weights could not be found or verified; the message says how to supply them."""


@dataclass(frozen=True)
class WeightFile:
    """One checkpoint file, as data.

    filename: its name in the cache and in a `weights:` folder (for an archive: the archive's).
    url: official download location (None where the file only comes from a package or a path).
    sha256: expected digest of `filename`, or its first hex digits (torch hub names carry 8).
    license: the weights' licence, in words.
    how_to_get: how to get it by hand (offline clusters), one sentence.
    member: for a zip archive, the file inside it that is loaded (extracted once into the cache;
        a `weights:` folder may hold either).
    gzip: the URL serves the file gzip-compressed (unpacked on download).
    torch_hub: a torchvision checkpoint: also found in torch hub's cache, and a local file under
        another torch-hub-style name is checked against the hash prefix that name carries.
    package: "module:file", an installed Python package that ships the file.
    """

    filename: str
    url: str | None = None
    sha256: str | None = None
    license: str = ""
    how_to_get: str = ""
    member: str | None = None
    gzip: bool = False
    torch_hub: bool = False
    package: str | None = None

    @property
    def names(self) -> tuple[str, ...]:
        """File names that stand for this checkpoint in a folder, preferred first."""
        return (self.member, self.filename) if self.member else (self.filename,)


@dataclass(frozen=True)
class HubRepo:
    """A checkpoint on the Hugging Face hub: files of one repository at a revision.

    files: needed besides the weights (e.g. config.json); weight_files: the weights, in order of
    preference (the first the repository has is fetched: safetensors before a pickle).
    """

    repo_id: str
    files: tuple[str, ...] = ()
    weight_files: tuple[str, ...] = ("model.safetensors", "pytorch_model.bin")
    license: str = ""
    how_to_get: str = ""

    def url(self, revision: str | None = None) -> str:
        return f"https://huggingface.co/{self.repo_id}/resolve/{revision or 'main'}/"


@dataclass
class HubSnapshot:
    """A hub checkpoint on disk: its folder, the needed files, the weight file, where it came from."""

    folder: Path
    files: dict[str, Path]
    weights: Path
    source: dict[str, Any] = field(default_factory=dict)


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
            "The file is corrupt or not the official one; delete it and fetch it again "
            f"({fetch_command()} --download_only)."
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


def download(url: str, dest: Path, sha256: str | None = None, progress: bool = True,
             gzipped: bool = False) -> Path:
    """Download `url` to `dest` atomically, with a progress bar and sha256 check.

    gzipped: the URL serves the file gzip-compressed; `sha256` is then the unpacked file's.
    """
    if gzipped:
        import gzip

        packed = dest.with_name(dest.name + ".gz")
        download(url, packed, None, progress)
        try:
            with gzip.open(packed, "rb") as src:
                return save_stream(src, dest, sha256)
        finally:
            packed.unlink(missing_ok=True)
    with urllib.request.urlopen(url, timeout=60) as resp:
        total = int(resp.headers.get("Content-Length") or 0)
        if not progress:
            return save_stream(resp, dest, sha256)
        from tqdm import tqdm

        with tqdm(total=total or None, unit="B", unit_scale=True, desc=f"download {dest.name}") as bar:
            return save_stream(resp, dest, sha256, on_block=bar.update)


def extract_member(archive: Path, member: str, dest: Path) -> Path:
    """The file named `member` (by base name) inside zip `archive`, extracted to `dest` atomically."""
    import zipfile

    with zipfile.ZipFile(archive) as zf:
        names = [n for n in zf.namelist() if Path(n).name == member and not n.endswith("/")]
        if not names:
            raise WeightsError(f"{archive} does not hold {member} (members: {', '.join(zf.namelist())}); "
                               "delete it and fetch it again")
        with zf.open(names[0]) as src:
            return save_stream(src, dest)


def package_file(spec: str | None) -> Path | None:
    """The file of "module:file" in an installed package (e.g. CREPE's weights), or None."""
    if not spec:
        return None
    import importlib.util

    module, name = spec.split(":", 1)
    try:
        found = importlib.util.find_spec(module)
    except (ImportError, ValueError):
        return None
    for folder in (found.submodule_search_locations or []) if found else []:
        cand = Path(folder) / name
        if cand.is_file():
            return cand
    return None


def expected_digest(wf: WeightFile, path: Path) -> str | None:
    """What `path`, found for record `wf`, must hash to: the record's digest for the official file
    name; for a torchvision record, the prefix another torch-hub-style name carries; else nothing
    (a file of the user's own, e.g. fine-tuned, or the member extracted from a checked archive)."""
    if path.name == wf.filename:
        return wf.sha256
    if wf.torch_hub:
        return hub_hash_prefix(path.name)
    return None


def resolve(
    model: str,
    wf: WeightFile,
    weights_path: str | os.PathLike | None = None,
    extra_places: Iterable[Path] = (),
    allow_download: bool = True,
) -> Path:
    """Path of the checkpoint `wf` for `model`, found or downloaded (see the module doc).

    For a zip record (`member` set) the path is the member, extracted into the cache once;
    a `weights_path` file is returned as it is (the plugin reads archives it is given).
    """
    if weights_path is not None:
        cand = _local_file(model, wf, Path(weights_path).expanduser())
        verify(cand, expected_digest(wf, cand))
        return cand
    cache = model_cache_dir(model)
    looked: list[str] = []
    if wf.member:
        looked.append(str(cache / wf.member))
        if (cache / wf.member).is_file():
            return cache / wf.member
    places = [cache / wf.filename, *map(Path, extra_places)]
    if package_file(wf.package):
        places.append(package_file(wf.package))
    if wf.torch_hub:
        places.append(torch_hub_checkpoints() / wf.filename)
    for cand in places:
        cand = cand / wf.filename if cand.is_dir() else cand
        looked.append(str(cand))
        if cand.is_file():
            verify(cand, wf.sha256)
            return _unpacked(wf, cand, cache)
    if wf.url and allow_download and not offline():
        try:
            return _unpacked(wf, download(wf.url, cache / wf.filename, wf.sha256, gzipped=wf.gzip), cache)
        except WeightsError:
            raise
        except Exception as exc:  # network errors: fall through to the advice below
            looked.append(f"{wf.url} (download failed: {type(exc).__name__}: {exc})")
    elif wf.url:
        looked.append(f"{wf.url} (not downloaded: offline mode)")
    how = wf.how_to_get or (f"download {wf.url}" if wf.url else "")
    raise missing(model, wf.filename, looked,
                  f"{how + '; ' if how else ''}put it at {cache / wf.filename} (or set ${CACHE_ENV})")


def _local_file(model: str, wf: WeightFile, p: Path) -> Path:
    """The file a `weights:` path names: the path itself, or the record's file in that folder."""
    if p.is_file():
        return p
    if p.is_dir():
        for name in wf.names:
            if (p / name).is_file():
                return p / name
        if wf.member:
            raise WeightsError(
                f"{model}: folder {p} holds neither {wf.member} nor {wf.filename}. "
                + (f"Download {wf.url} into it, or point" if wf.url else "Point")
                + f" `weights:` for {model} at a checkpoint file.")
        p = p / wf.filename
    raise WeightsError(
        f"{model}: weights path {p} does not exist. Point `weights:` for {model} in your config "
        f"(weights_path= in Python) at the file {' or '.join(map(repr, wf.names))} (or a folder holding it)."
    )


def _unpacked(wf: WeightFile, path: Path, cache: Path) -> Path:
    """For a zip record, its member extracted once into the cache; otherwise `path` itself."""
    if not wf.member:
        return path
    return extract_member(path, wf.member, cache / wf.member)


# -- the Hugging Face hub -------------------------------------------------------------------------
def hub_cache_dir() -> Path:
    """The Hugging Face hub cache, from the environment at call time."""
    for var in ("HF_HUB_CACHE", "HUGGINGFACE_HUB_CACHE"):
        if os.environ.get(var):
            return Path(os.path.expandvars(os.environ[var])).expanduser()
    if os.environ.get("HF_HOME"):
        return Path(os.path.expandvars(os.environ["HF_HOME"])).expanduser() / "hub"
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base).expanduser() / "huggingface" / "hub"


def _weight_file(folder: Path, repo: HubRepo) -> Path | None:
    return next((folder / n for n in repo.weight_files if (folder / n).is_file()), None)


def _lacks(folder: Path, repo: HubRepo, weights: Path | None) -> list[str]:
    out = [n for n in repo.files if not (folder / n).is_file()]
    return out + ([" or ".join(repo.weight_files)] if weights is None else [])


def resolve_hub(model: str, repo: HubRepo, revision: str | None = None,
                weights_path: str | os.PathLike | None = None) -> HubSnapshot:
    """The files of hub checkpoint `repo` (see the module doc).

    weights_path: a local checkpoint folder, or its weight file with the other files beside it.
    Otherwise the hub cache; offline (HF_HUB_OFFLINE=1 or EMBEDKIT_OFFLINE=1) only the cache is
    read, online the files are downloaded there (the preferred weight file first, the next only
    when the repository has not got it).
    """
    how = repo.how_to_get or f"download {', '.join(repo.files + repo.weight_files[:1])} from {repo.url()}"
    if weights_path is not None:
        p = Path(weights_path).expanduser()
        if p.is_file():
            folder, wfile = p.parent, p
        elif p.is_dir():
            folder, wfile = p, _weight_file(p, repo)
        else:
            raise WeightsError(f"{model}: weights path {p} does not exist. {fetch_advice(model)} {how}.")
        lacking = _lacks(folder, repo, wfile)
        if lacking:
            raise WeightsError(f"{model}: checkpoint folder {folder} lacks {', '.join(lacking)}. Copy them "
                               f"from the hub repo {repo.repo_id} ({repo.url()}).")
        return HubSnapshot(folder, {n: folder / n for n in repo.files}, wfile,
                           {"source": "local", "folder": str(folder)})

    from huggingface_hub import snapshot_download

    cache = hub_cache_dir()
    is_offline = offline()
    where = cache / f"models--{repo.repo_id.replace('/', '--')}"
    rev = revision or "main"
    kw = dict(revision=revision, cache_dir=str(cache), local_files_only=is_offline)
    try:
        first = [*repo.files, repo.weight_files[0]]
        folder = Path(snapshot_download(repo.repo_id, allow_patterns=first, **kw))
        for name in repo.weight_files[1:]:
            if _weight_file(folder, repo) is not None or is_offline:
                break
            folder = Path(snapshot_download(repo.repo_id, allow_patterns=[name], **kw))
    except Exception as exc:
        if is_offline:
            reason = "offline mode (HF_HUB_OFFLINE or EMBEDKIT_OFFLINE): only the cache was read"
        else:
            line = (str(exc).strip().splitlines() or [""])[0]
            reason = f"not in the cache and the hub download failed: {type(exc).__name__}: {line}"
        raise missing(model, f"{repo.repo_id} revision {rev}", [f"the Hugging Face cache {where} ({reason})"],
                      how) from None
    wfile = _weight_file(folder, repo)
    lacking = _lacks(folder, repo, wfile)
    if lacking:
        raise WeightsError(
            f"{model}: the cached snapshot {folder} of {repo.repo_id} lacks {', '.join(lacking)}"
            + (" (offline mode: nothing downloaded)" if is_offline else "")
            + f". {fetch_advice(model)} {how}.")
    commit = folder.name if folder.parent.name == "snapshots" else None
    source = {"source": "huggingface_hub", "repo_id": repo.repo_id, "revision": rev, "commit": commit,
              "folder": str(folder)}
    return HubSnapshot(folder, {n: folder / n for n in repo.files}, wfile, source)


# -- what to tell the user ------------------------------------------------------------------------
def fetch_command() -> str:
    """The extraction command of the entry point running now: `embedkit extract` (the installed
    command line) or `python run_extraction.py` (a checkout's script). Elsewhere (a notebook, a
    script, a Ray worker) the installation decides: a checkout runs its script."""
    prog = sys.argv[0] if sys.argv and sys.argv[0] else ""
    if prog.startswith("embedkit") or os.path.basename(prog) == "embedkit":
        return "embedkit extract"
    if os.path.basename(prog) == "run_extraction.py":
        return "python run_extraction.py"
    here = Path(__file__).resolve().parent
    return "python run_extraction.py" if (here / "pyproject.toml").is_file() else "embedkit extract"


def fetch_advice(model: str, filename: str | None = None) -> str:
    """One sentence: how to get `model`'s weights, for the entry point running now."""
    where = f"/path/to/{filename}" if filename else "/path/to/the/file"
    return (f"Fix: run `{fetch_command()} --download_only --models {model}` where there is internet, "
            f"or set `weights: {where}` for {model} (weights_path= in Python).")


def missing(model: str, filename: str, looked: Iterable[str], how: str,
            fix: str | None = None) -> WeightsError:
    """The error for weights found nowhere: one short line with the fix, then the details.

    The console shows the first line; failures.json keeps the rest. `fix` replaces the default
    advice (`fetch_advice`) where another entry point has its own way (e.g. a `--weights` flag).
    """
    return WeightsError(
        f"{model}: weights not found ({filename}). {fix or fetch_advice(model, filename)}\n"
        f"looked in: {'; '.join(looked)}\n"
        f"how to get it: {how}"
    )


# -- torch checkpoints (torch hub conventions) ---------------------------------------------
def torchvision_checkpoint(filename: str, sha256: str, weights_name: str, builder: str, example_key: str,
                           trained_on: str) -> WeightFile:
    """The record of a torchvision checkpoint: download.pytorch.org/models/<filename>, also found in
    torch hub's cache, BSD-3-Clause like torchvision. weights_name: torchvision's enum (e.g.
    "ResNet18_Weights.IMAGENET1K_V1"); builder: its model function; example_key: a state-dict key."""
    url = f"https://download.pytorch.org/models/{filename}"
    return WeightFile(
        filename, url=url, sha256=sha256, torch_hub=True,
        license=f"BSD-3-Clause (torchvision's licence; weights trained on {trained_on})",
        how_to_get=f"download {url} (torchvision's {weights_name}; a copy in torch hub's cache, "
        f"$TORCH_HOME/hub/checkpoints, is found on its own), or use a state dict of {builder} saved "
        f"with torch.save(model.state_dict(), path) (keys like {example_key!r})",
    )


_HUB_HASH = re.compile(r"-([0-9a-f]{8,64})\.(?:pth|pt)$")


def hub_hash_prefix(filename: str) -> str | None:
    """The sha256 prefix a torch hub file name carries (`resnet18-f37072fd.pth` -> "f37072fd"), else None."""
    m = _HUB_HASH.search(filename)
    return m.group(1) if m else None


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


def random_torch_state(net, seed: int, fan: str = "out") -> dict:
    """Seeded random weights for a conv + BatchNorm `net` (benchmarks and shape tests only, never
    a correctness claim): He-normal convolutions (`fan` "out" as torchvision initialises them, or
    "in"), a small fc, and mildly perturbed BatchNorm parameters and statistics, so activations
    keep a useful scale. The same seed gives the same tensors, whatever torch's global RNG."""
    import math

    import torch

    gen = torch.Generator().manual_seed(seed)
    state = {}
    for key, ref in net.state_dict().items():
        if key.endswith("num_batches_tracked"):
            state[key] = torch.zeros_like(ref)
        elif ref.ndim >= 3:  # convolution (out, in, [kt,] [kh,] kw)
            fans = ref.shape[0 if fan == "out" else 1] * math.prod(ref.shape[2:])
            state[key] = torch.randn(ref.shape, generator=gen) * (2.0 / fans) ** 0.5
        elif ref.ndim == 2:  # fc
            state[key] = torch.randn(ref.shape, generator=gen) * 0.01
        elif key.endswith("running_var"):
            state[key] = 0.5 + torch.rand(ref.shape, generator=gen)
        elif key.endswith(".weight"):  # BatchNorm scale
            state[key] = 0.5 + torch.rand(ref.shape, generator=gen)
        else:  # biases, BatchNorm shift, running_mean
            state[key] = 0.05 * torch.randn(ref.shape, generator=gen)
    return state


def classifier_size(state: dict | None, default: int | None) -> int | None:
    """Outputs of the `fc` classifier a torchvision checkpoint holds (None: it has none); `default`
    without a checkpoint (random weights)."""
    if state is None:
        return default
    fc = state.get("fc.weight")
    return int(fc.shape[0]) if fc is not None and fc.ndim == 2 else None


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
