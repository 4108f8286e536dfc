"""openl3's weight files: their records, where they are, reading them, and the networks built from them.

Accepted: openl3's official Keras weights-only HDF5 files `openl3_<audio|image>_<input_repr>_
<content_type>.h5` (read by layer order with h5py, no TensorFlow), and for the audio networks
torchopenl3's converted `.pth.tar` state dicts (read with torch.load(weights_only=True)).
Looked for, in order: an explicit path (a file, or a folder holding one); the cache
`$EMBEDKIT_CACHE/openl3/`; an installed openl3 package; torch hub's checkpoint folder
(torchopenl3 downloads); else downloaded (gzipped, as openl3 publishes them) into the cache.

Who asked decides the advice a missing file comes with (`entry`): "driver" (the plugins,
`weights:` in a run config), "api" (`weights_path=`) or "cli" (`--weights`).
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any

import numpy as np

from embedkit.extractors.base import RANDOM_SEED, WeightFile, WeightsError, lazy_import, torch_device
from embedkit.openl3.network import (
    CHANNELS,
    LoadedModel,
    OpenL3AudioNet,
    OpenL3ImageNet,
    build_image_network,
    build_network,
    random_state,
)

torch = lazy_import("torch")

WEIGHTS_LICENSE = "CC BY 4.0 (OpenL3 model weights, marl/openl3; code MIT)"
OFFICIAL_URL = "https://github.com/marl/openl3/raw/models/openl3_audio_{repr}_{content}-v0_4_0.h5.gz"
OFFICIAL_IMAGE_URL = "https://github.com/marl/openl3/raw/models/openl3_image_{repr}_{content}-v0_4_0.h5.gz"
MODALITIES = ("audio", "image")
TORCHOPENL3_URL = (
    "https://github.com/torchopenl3/torchopenl3-models/raw/master/"
    "torchopenl3_{repr}_{content}_{size}.pth.tar"
)


# ---------------------------------------------------------------------------
# Reading: both layouts to the canonical form
# ---------------------------------------------------------------------------
def _decode(names: Any) -> list[str]:
    return [n.decode() if isinstance(n, bytes) else str(n) for n in names]


def read_keras_h5(path: str | os.PathLike, in_channels: int = 1) -> dict[str, tuple[np.ndarray, ...]]:
    """Canonical state from a Keras weights-only HDF5 file (openl3's layout).

    Keras loads such a file by layer order, not by name: the root attribute
    `layer_names` gives the order and each layer group's `weight_names` the
    order of its tensors. Layers without weights (input, activations, pools,
    an empty kapre spectrogram layer) are skipped, as are the spectrogram
    layers of pre-0.4 files. Expects 16 weighted layers alternating
    BatchNorm (4 tensors) and Conv2D (2 tensors), starting with BatchNorm.
    `in_channels`: 1 for the audio networks, 3 for the image network (same
    layout otherwise; "bn{i}" is the BatchNorm that follows conv{i} in the file).
    """
    import h5py

    with h5py.File(path, "r") as f:
        root = f["model_weights"] if "model_weights" in f else f  # full-model saves nest weights
        if "layer_names" not in root.attrs:
            raise WeightsError(f"{path}: not a Keras HDF5 weight file (no 'layer_names' attribute)")
        layers = []
        for lname in _decode(root.attrs["layer_names"]):
            if "spectrogram" in lname:
                continue  # kapre 0.1.x STFT kernels of old files; our front-end computes these
            group = root[lname]
            wnames = _decode(group.attrs.get("weight_names", []))
            if wnames:
                layers.append((lname, [np.asarray(group[w], dtype=np.float32) for w in wnames]))
    kinds = [len(t) for _, t in layers]
    if kinds != [4, 2] * 8:
        raise WeightsError(
            f"{path}: expected 16 weighted layers alternating BatchNorm and Conv2D (openl3's "
            f"{_NETWORK_NAMES.get(in_channels, 'audio')} network), found {[name for name, _ in layers]}"
        )
    state: dict[str, tuple[np.ndarray, ...]] = {}
    for i in range(8):
        bn = tuple(layers[2 * i][1])
        kernel, bias = layers[2 * i + 1][1]
        state["bn_in" if i == 0 else f"bn{i - 1}"] = bn
        state[f"conv{i}"] = (np.ascontiguousarray(kernel.transpose(3, 2, 0, 1)), bias)  # HWIO -> OIHW
    _check_state(state, str(path), in_channels)
    return state


def read_torchopenl3(path: str | os.PathLike) -> dict[str, tuple[np.ndarray, ...]]:
    """Canonical state from torchopenl3's `.pth.tar` state dict (its spectrogram buffers are ignored)."""
    try:
        sd = torch.load(str(path), map_location="cpu", weights_only=True)
    except Exception as exc:
        raise WeightsError(
            f"{path}: cannot read as a PyTorch state dict ({type(exc).__name__}: {exc})"
        ) from None
    if isinstance(sd, dict) and "state_dict" in sd and isinstance(sd["state_dict"], dict):
        sd = sd["state_dict"]

    def get(key: str) -> np.ndarray:
        if key not in sd:
            raise WeightsError(
                f"{path}: torchopenl3 state dict lacks {key!r}; is it a torchopenl3 audio model?"
            )
        return sd[key].detach().cpu().numpy().astype(np.float32)

    def bn(name: str) -> tuple[np.ndarray, ...]:
        return tuple(get(f"{name}.{k}") for k in ("weight", "bias", "running_mean", "running_var"))

    convs = [f"conv2d_{i}" for i in range(1, 8)] + ["audio_embedding_layer"]
    state: dict[str, tuple[np.ndarray, ...]] = {"bn_in": bn("batch_normalization_1")}
    for i, name in enumerate(convs):
        state[f"conv{i}"] = (get(f"{name}.weight"), get(f"{name}.bias"))
        if i < 7:
            state[f"bn{i}"] = bn(f"batch_normalization_{i + 2}")
    _check_state(state, str(path))
    return state


_NETWORK_NAMES = {1: "audio", 3: "image"}


def _check_state(state: dict[str, tuple[np.ndarray, ...]], where: str, in_channels: int = 1) -> None:
    c_in = (in_channels,) + CHANNELS[:-1]
    want = {"bn_in": (in_channels,)}
    for i, (a, b) in enumerate(zip(c_in, CHANNELS)):
        want[f"conv{i}"] = (b, a, 3, 3)
        if i < 7:
            want[f"bn{i}"] = (b,)
    for key, shape in want.items():
        got = tuple(state[key][0].shape)
        if got != shape:
            raise WeightsError(
                f"{where}: {key} has shape {got}, expected {shape}; not an OpenL3 "
                f"{_NETWORK_NAMES.get(in_channels, 'audio')} model"
            )


# ---------------------------------------------------------------------------
# Finding the files
# ---------------------------------------------------------------------------
def official_filename(input_repr: str, content_type: str, modality: str = "audio") -> str:
    """openl3's name of a weight file: openl3_<audio|image>_<input_repr>_<content_type>.h5."""
    return f"openl3_{modality}_{input_repr}_{content_type}.h5"


def official_url(input_repr: str, content_type: str, modality: str = "audio") -> str:
    """Where openl3's setup.py downloads the gzipped weight file from."""
    template = OFFICIAL_URL if modality == "audio" else OFFICIAL_IMAGE_URL
    return template.format(repr=input_repr, content=content_type)


def official_record(input_repr: str, content_type: str, modality: str = "audio") -> WeightFile:
    """openl3's official weight file of a configuration as a weights record: the `.h5` that
    openl3's setup.py unpacks into its package folder, served gzipped at `official_url`."""
    return WeightFile(
        official_filename(input_repr, content_type, modality),
        url=official_url(input_repr, content_type, modality),
        license=WEIGHTS_LICENSE,
        how_to_get="the URL serves it gzipped (unpacked automatically); "
        "or copy it from an installed openl3 package",
        gzip=True,
    )


def torchopenl3_filenames(input_repr: str, content_type: str) -> list[str]:
    # torchopenl3 publishes one file per embedding size; the network weights are the same.
    return [f"torchopenl3_{input_repr}_{content_type}_{size}.pth.tar" for size in (6144, 512)]


def _openl3_package_dirs() -> list[Path]:
    """Folders of an installed openl3 package (found without importing it: that would import TF).

    Not this package's own folder: from a checkout, `openl3/` (embedkit.openl3) is on sys.path
    under the name openl3 too, before any installed one, so sys.path is searched as well."""
    import importlib.util
    import sys

    own = Path(__file__).resolve().parent
    found: list[Path] = []
    try:
        spec = importlib.util.find_spec("openl3")
    except (ImportError, ValueError):
        spec = None
    if spec is not None and spec.submodule_search_locations:
        found += [Path(p) for p in spec.submodule_search_locations]
    found += [Path(entry or ".") / "openl3" for entry in sys.path
              if (Path(entry or ".") / "openl3" / "__init__.py").is_file()]
    dirs: list[Path] = []
    for d in found:
        if d.resolve() != own and d.resolve() not in {x.resolve() for x in dirs}:
            dirs.append(d)
    return dirs


def _torch_hub_dir() -> Path:
    from embedkit import weights

    return weights.torch_hub_checkpoints()


def _weight_format(path: Path) -> str:
    with open(path, "rb") as f:
        head = f.read(8)
    if head.startswith(b"\x89HDF"):
        return "keras-h5"
    if head.startswith(b"\x1f\x8b"):
        raise WeightsError(f"{path} is gzip-compressed (as openl3 publishes it); gunzip it first")
    return "torchopenl3-pth"


_NAME_PATTERN = re.compile(r"(linear|mel128|mel256)_(music|env)")
_MODALITY_PATTERN = re.compile(r"openl3_(audio|image)_")


def _who(modality: str) -> str:
    return "openl3" if modality == "audio" else "openl3_image"


def _use(entry: str, filename: str) -> str:
    """How the user of `entry` names a weight file: the fix a weights message ends with."""
    if entry == "api":
        return f"pass weights_path='/path/to/{filename}' (or a folder holding it)"
    if entry == "cli":
        return f"give --weights /path/to/{filename} (or a folder holding it)"
    return f"point `weights:` at {filename} (or a folder holding it)"


def _check_name(
    path: Path, input_repr: str, content_type: str | None, modality: str = "audio", entry: str = "driver"
) -> None:
    """Refuse a file whose name says it is another configuration (all have the same shapes).
    `content_type` None (a file given without one): only the modality and input_repr are checked."""
    prefix = f"{_who(modality)}: " if entry == "driver" else ""
    m = _MODALITY_PATTERN.search(path.name)
    if m and m.group(1) != modality:
        raise WeightsError(
            f"{prefix}{path} holds {m.group(1)} network weights; "
            f"{_use(entry, official_filename(input_repr, content_type or 'music', modality))}"
        )
    m = _NAME_PATTERN.search(path.name)
    if m and (m.group(1), m.group(2) if content_type else None) != (input_repr, content_type):
        wanted = official_filename(input_repr, content_type or m.group(2), modality)
        if entry == "driver":
            raise WeightsError(
                f"{prefix}{path} holds the {m.group(1)}/{m.group(2)} weights but this configuration is "
                f"input_repr={input_repr}, content_type={content_type}; point `weights:` at "
                f"{wanted} (or set input_repr/content_type to match)"
            )
        asked = f"input_repr={input_repr}" + (f", content_type={content_type}" if content_type else "")
        match = ("--input-repr/--content-type" if entry == "cli" else "input_repr/content_type")
        raise WeightsError(
            f"{path} holds the {m.group(1)}/{m.group(2)} weights but {asked} was asked for; "
            f"{_use(entry, wanted)}, or set {match} to match the file"
        )


def find_weights(
    input_repr: str,
    content_type: str | None,
    local_path: str | os.PathLike | None = None,
    allow_download: bool = True,
    modality: str = "audio",
    entry: str = "driver",
) -> Path:
    """Path of the weights for (input_repr, content_type), found or downloaded.

    Order: `local_path` (a file, or a folder holding the official `.h5` or, for
    audio, a torchopenl3 `.pth.tar`); the cache `$EMBEDKIT_CACHE/openl3/` (audio
    and image files side by side, as in openl3's package folder); an installed
    openl3 package; torch hub's checkpoint folder (torchopenl3 downloads, audio
    only); a download of the official gzipped file into the cache.
    `modality`: "audio" or "image" (`openl3_image_<repr>_<content>.h5`).
    `content_type` None: only a `local_path` file will do (openl3's load_*_from_path).
    `entry`: whose advice the errors give ("driver", "api" or "cli", module doc).
    Raises WeightsError naming every place looked at.
    """
    from embedkit import weights

    who = _who(modality)
    if content_type is None:
        if local_path is not None and Path(local_path).expanduser().is_file():
            p = Path(local_path).expanduser()
            _check_name(p, input_repr, None, modality, entry)
            return p
        raise WeightsError(f"weight file {local_path} not found (a model path must name an existing file)")
    record = official_record(input_repr, content_type, modality)
    h5 = record.filename
    # torchopenl3 converted only the audio networks.
    names = [h5] + (torchopenl3_filenames(input_repr, content_type) if modality == "audio" else [])
    if local_path is not None:
        p = Path(local_path).expanduser()
        if p.is_file():
            _check_name(p, input_repr, content_type, modality, entry)
            return p
        if p.is_dir():
            for name in names:
                if (p / name).is_file():
                    return p / name
        also = " or a torchopenl3 .pth.tar" if modality == "audio" else ""
        if entry == "driver":
            raise WeightsError(
                f"{who}: weights path {p} is neither a weight file nor a folder holding one of "
                f"{', '.join(names)}. Point `weights:` for {who} at {h5} (official openl3 0.4 file){also}."
            )
        given = "--weights" if entry == "cli" else "weights_path"
        raise WeightsError(
            f"{given} {p} is neither a weight file nor a folder holding one of {', '.join(names)}; "
            f"{_use(entry, h5)} (the official openl3 0.4 file{also})"
        )
    cache = weights.model_cache_dir("openl3")
    places = [cache / n for n in names]
    places += [d / h5 for d in _openl3_package_dirs()]
    places += [_torch_hub_dir() / n for n in names[1:]]
    for cand in places:
        if cand.is_file():
            return cand
    looked = [str(p) for p in places]
    url = record.url
    if allow_download and not weights.offline():
        try:
            return weights.download(url, cache / h5, gzipped=record.gzip)
        except WeightsError:
            raise
        except Exception as exc:
            looked.append(f"{url} (download failed: {type(exc).__name__}: {exc})")
    else:
        looked.append(f"{url} (not downloaded: offline mode)")
    torch_hint = (
        f"; or use torchopenl3's {names[1]} (from "
        f"{TORCHOPENL3_URL.format(repr=input_repr, content=content_type, size=6144)})"
        if modality == "audio" else ""
    )
    how = (f"download {url} and gunzip it to {cache / h5} (or set ${weights.CACHE_ENV}); or copy "
           f"{h5} from an installed openl3 package (pip install openl3 puts it in site-packages/openl3/)"
           f"{torch_hint}")
    if entry == "driver":
        raise weights.missing(who, h5, looked, how)
    # One line with the fix for this entry point (the CLI prints it after its own "openl3: ").
    raise WeightsError(
        f"weights not found ({h5}). Fix: {_use(entry, h5)}, or put the file in {cache}.\n"
        f"looked in: {'; '.join(looked)}\n"
        f"how to get it: {how}"
    )


def read_weights(path: str | os.PathLike) -> dict[str, tuple[np.ndarray, ...]]:
    """Canonical state from either layout (detected from the file's first bytes)."""
    path = Path(path)
    return read_keras_h5(path) if _weight_format(path) == "keras-h5" else read_torchopenl3(path)


# ---------------------------------------------------------------------------
# Networks from their weights
# ---------------------------------------------------------------------------
def random_network(modality: str = "audio") -> OpenL3AudioNet | OpenL3ImageNet:
    """The audio or image network with seeded random weights (random_state, seed RANDOM_SEED;
    benchmarks and shape tests only), in eval mode on the CPU."""
    if modality == "audio":
        return build_network(random_state(RANDOM_SEED))
    return build_image_network(random_state(RANDOM_SEED, in_channels=3))


def network_from(
    path: Path, modality: str, input_repr: str, content_type: str | None, entry: str = "driver",
) -> OpenL3AudioNet | OpenL3ImageNet:
    """The network holding the weight file at `path` (as find_weights found it), eval mode, CPU.

    Audio: an official `.h5` or a torchopenl3 `.pth.tar`; image: an official `.h5` only (the
    configuration and `entry` word the error for another file)."""
    if modality == "audio":
        return build_network(read_weights(path))
    with open(path, "rb") as f:
        if not f.read(8).startswith(b"\x89HDF"):
            prefix = "openl3_image: " if entry == "driver" else ""
            raise WeightsError(
                f"{prefix}{path} is not an HDF5 file; openl3's image weights are the official "
                f"{official_filename(input_repr, content_type or 'music', 'image')} "
                "(gunzip the .h5.gz first)"
            )
    return build_image_network(read_keras_h5(path, in_channels=3))


def weights_source(
    path: Path, input_repr: str, content_type: str | None, modality: str = "audio"
) -> dict[str, Any]:
    """Provenance of a loaded weight file besides its path and sha256: its layout ("keras-h5",
    "torchopenl3-pth") and the official URL of the configuration (where it names one)."""
    source = {"format": _weight_format(path)}
    if content_type is not None:
        source["official_url"] = official_url(input_repr, content_type, modality)
    return source


def _load(modality: str, input_repr: str, content_type: str | None, device: str, weights_path: str | None,
          entry: str) -> LoadedModel:
    if weights_path == "random":
        net, source = random_network(modality), {"weights": "random", "weights_seed": RANDOM_SEED}
    else:
        from embedkit import weights

        path = find_weights(input_repr, content_type, weights_path, modality=modality, entry=entry)
        net = network_from(path, modality, input_repr, content_type, entry)
        source = {"weights": str(path), "weights_sha256": weights.sha256sum(path),
                  **weights_source(path, input_repr, content_type, modality)}
    device = torch_device(device)
    net = net.to(device).to(memory_format=torch.channels_last)  # faster convolutions, same numbers
    return LoadedModel(net, device, source)


def load_network(
    input_repr: str, content_type: str | None, device: str = "cpu", weights_path: str | None = None,
    entry: str = "driver",
) -> LoadedModel:
    """The audio network on `device` for the API, its weights found (find_weights) or, with
    weights_path="random", made (random_network). `entry`: whose advice errors give."""
    return _load("audio", input_repr, content_type, device, weights_path, entry)


def load_image_network(
    input_repr: str, content_type: str | None, device: str = "cpu", weights_path: str | None = None,
    entry: str = "driver",
) -> LoadedModel:
    """The image network on `device`, as load_network (official .h5 files only)."""
    return _load("image", input_repr, content_type, device, weights_path, entry)
