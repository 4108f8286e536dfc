"""CLMR: 512-d SampleCNN clip embeddings from the released MagnaTagATune checkpoint.

CLMR (Spijkervet & Burgoyne, ISMIR 2021, https://github.com/Spijkervet/CLMR) trains a
SampleCNN on raw 22050 Hz waveforms with SimCLR. The representation is the encoder's
output *before* the projection head: CLMR's SimCLR wrapper replaces the encoder's `fc`
layer by an identity, so one 59049-sample clip (3**10 samples, about 2.68 s) gives one
512-d vector.

Network (per clip, input (B, 59049) float waveform in [-1, 1], no normalisation):
  block 0:    Conv1d(1, 128, k=3, stride=3) -> BatchNorm -> ReLU         length 19683
  blocks 1-9: Conv1d(k=3, stride 1, pad 1) -> BatchNorm -> ReLU -> MaxPool(3, 3)
              channels 128,128,256,256,256,256,256,256,512             length 19683 / 3**9 = 1
  block 10:   Conv1d(512, 512, k=3, pad 1) -> BatchNorm -> ReLU          (B, 512, 1) -> (B, 512)
Module names follow upstream's `sequential.<block>.<layer>` so checkpoints load as they are.

Clips: consecutive, non-overlapping 59049-sample clips from sample 0. The last partial clip
is dropped as CLMR's evaluation does (`last_clip: drop`) or zero-padded (`last_clip: pad`);
audio shorter than one clip is zero-padded to one clip with a warning. Timestamps are clip
centres: t[i] = (i * 59049 + 59049 / 2) / 22050 s. `pooling: mean` averages the clip
embeddings into one (512,) vector (CLMR averages per-clip predictions the same way).

Weights: `clmr_checkpoint_10000.zip` from the CLMR 2.0 GitHub release (holds
`clmr_checkpoint_10000.pt`, a state dict of the SimCLR module: `encoder.*` + `projector.*`),
extracted once into the cache; or a local `.pt` / `.ckpt` / `.pth` file or that zip. Both
a PyTorch Lightning checkpoint (`state_dict` with `model.encoder.*` / `encoder.*` keys) and a
plain state dict (`encoder.*` or bare `sequential.*` keys) load; projector and `fc` (task
head) keys are dropped, anything else is an error listing the mismatching keys.
"""

from __future__ import annotations

import io
import os
import pickle
import warnings
import zipfile
from collections import OrderedDict
from pathlib import Path
from typing import Any, Mapping

import numpy as np

from embedkit import weights
from embedkit.extractors.base import Features, OutputSpec, Param, TorchExtractor, TorchModule, lazy_import
from embedkit.extractors.base import pooling_param
from embedkit.weights import WeightFile, WeightsError

torch = lazy_import("torch")
nn = lazy_import("torch.nn")

SAMPLE_RATE = 22050
CLIP_SAMPLES = 3**10  # 59049: the input length that the 3**10 total stride maps to one vector
EMBEDDING_DIM = 512
# (in, out) channels of the nine conv + max-pool blocks between the strided front conv and the last conv
HIDDEN_CHANNELS = ((128, 128), (128, 128), (128, 256), (256, 256), (256, 256),
                   (256, 256), (256, 256), (256, 256), (256, 512))

CHECKPOINT_NAME = "clmr_checkpoint_10000.pt"
ZIP_NAME = "clmr_checkpoint_10000.zip"
ZIP_URL = "https://github.com/Spijkervet/CLMR/releases/download/2.0/clmr_checkpoint_10000.zip"
WEIGHTS = WeightFile(
    ZIP_NAME, url=ZIP_URL, sha256=None,  # upstream publishes no checksum
    member=CHECKPOINT_NAME,
    license="Apache-2.0 (the CLMR repository's licence; the release states no separate licence for the "
    "checkpoint, trained on MagnaTagATune)",
    how_to_get=f"download {ZIP_URL} (CLMR's 2.0 release); the zip or the {CHECKPOINT_NAME} inside it "
    "both work",
)

# Key prefixes of parts of a CLMR checkpoint that are not the encoder (dropped on load).
_PROJECTOR_PREFIXES = ("model.projector.", "projector.")
_HEAD_PREFIX = "fc."  # SampleCNN's task head; CLMR replaces it by an identity
# Modules whose classes Lightning pickles beside the weights (hyper-parameters, callback
# keys); they are read as inert placeholders so weights_only loading still works.
_INERT_MODULE_ROOTS = ("pytorch_lightning", "lightning", "lightning_fabric", "argparse")


# --------------------------------------------------------------------------- network
class SampleCNN(TorchModule):
    """CLMR's SampleCNN encoder without its `fc` head: (B, 59049) waveform -> (B, 512)."""

    def __init__(self) -> None:
        super().__init__()
        blocks: list[nn.Module] = [
            nn.Sequential(nn.Conv1d(1, 128, kernel_size=3, stride=3), nn.BatchNorm1d(128), nn.ReLU())
        ]
        for c_in, c_out in HIDDEN_CHANNELS:
            blocks.append(
                nn.Sequential(
                    nn.Conv1d(c_in, c_out, kernel_size=3, stride=1, padding=1),
                    nn.BatchNorm1d(c_out),
                    nn.ReLU(),
                    nn.MaxPool1d(3, stride=3),
                )
            )
        blocks.append(
            nn.Sequential(
                nn.Conv1d(512, EMBEDDING_DIM, kernel_size=3, stride=1, padding=1),
                nn.BatchNorm1d(EMBEDDING_DIM),
                nn.ReLU(),
            )
        )
        self.sequential = nn.Sequential(*blocks)

    def forward(self, clips: torch.Tensor) -> torch.Tensor:
        """clips (B, 59049) float -> embeddings (B, 512)."""
        if clips.ndim != 2 or clips.shape[1] != CLIP_SAMPLES:
            raise ValueError(f"SampleCNN needs clips of shape (B, {CLIP_SAMPLES}), got {tuple(clips.shape)}")
        out = self.sequential(clips.unsqueeze(1))  # (B, 512, 1)
        return out.flatten(1)


def random_encoder_state(model: SampleCNN, seed: int = 0) -> dict[str, torch.Tensor]:
    """Seeded random weights for `model` (benchmarks and shape tests only): `weights.random_torch_state`
    with fan-in He-normal convolutions and mildly perturbed BatchNorm parameters/statistics, so
    activations keep a useful scale through the 11 blocks (PyTorch's default init shrinks them
    towards zero)."""
    return weights.random_torch_state(model, seed, fan="in")


# --------------------------------------------------------------------------- checkpoints
def _inert_placeholder(full_name: str) -> type:
    """A class standing in for `full_name` while unpickling; it runs no code of the checkpoint.

    Creating it returns an empty OrderedDict: the one container the weights_only unpickler
    both fills with items (dict subclasses such as Lightning's AttributeDict) and gives
    attributes (objects such as argparse.Namespace). Where the checkpoint uses a class
    itself as a dict key (callback states of Lightning < 1.5), this class takes its place.
    """

    def __new__(cls, *args: Any, **kwargs: Any) -> OrderedDict:
        return OrderedDict()

    return type(full_name.rsplit(".", 1)[-1], (), {"__new__": __new__, "__module__": "extractors.clmr"})


def torch_load_weights_only(source: str | os.PathLike | io.BytesIO, label: str) -> Any:
    """torch.load(weights_only=True) that also opens Lightning checkpoints.

    A Lightning checkpoint pickles hyper-parameters and callback classes beside the
    weights; the safe unpickler refuses them. When every such global comes from Lightning
    or argparse it is replaced by an inert placeholder (no code of the checkpoint runs);
    any other global is an error naming it.
    """
    try:
        return torch.load(source, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        first_error = exc
    except Exception as exc:  # not a torch checkpoint at all, or a damaged one
        raise WeightsError(
            f"clmr: cannot read {label} as a PyTorch checkpoint ({type(exc).__name__}: {exc}). "
            f"Point `weights:` at {CHECKPOINT_NAME} or {ZIP_NAME} from {ZIP_URL}."
        ) from None
    if isinstance(source, io.BytesIO):
        source.seek(0)
    try:
        names = torch.serialization.get_unsafe_globals_in_checkpoint(source)
    except Exception:  # legacy (non-zip) format: cannot be inspected
        names = []
    if isinstance(source, io.BytesIO):
        source.seek(0)
    inert = [n for n in names if n.split(".", 1)[0] in _INERT_MODULE_ROOTS]
    if not names or len(inert) != len(names):
        others = sorted(set(names) - set(inert))
        # torch's message is long; its core is the line after "WeightsUnpickler error:"
        lines = [ln.strip() for ln in str(first_error).split("WeightsUnpickler error:")[-1].splitlines()]
        reason = next((ln for ln in lines if ln), type(first_error).__name__)
        raise WeightsError(
            f"clmr: cannot read {label} with torch.load(weights_only=True) ({reason}). "
            + (f"It pickles Python objects besides weights: {', '.join(others)}. " if others else "")
            + f"Expected {CHECKPOINT_NAME} from {ZIP_URL} or a state dict. If you trust the file, "
            "save its weights once as a plain state dict, e.g. python -c \"import torch; "
            "c = torch.load('IN', weights_only=False); "
            "torch.save(c.get('state_dict', c), 'clmr_encoder.pt')\" and point `weights:` at that file."
        ) from None
    try:
        with torch.serialization.safe_globals([(_inert_placeholder(n), n) for n in names]):
            return torch.load(source, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        raise WeightsError(
            f"clmr: cannot read {label} with torch.load(weights_only=True), even with inert stand-ins "
            f"for {', '.join(names)} ({str(exc).strip().splitlines()[0]}). Save its weights once as a "
            "plain state dict (torch.save(checkpoint['state_dict'], 'clmr_encoder.pt')) and point "
            "`weights:` at that file."
        ) from None


def _zip_checkpoint_member(zf: zipfile.ZipFile, label: str) -> str:
    """Name of the encoder checkpoint inside a release zip (not the optimiser state)."""
    names = [n for n in zf.namelist() if n.lower().endswith((".pt", ".pth", ".ckpt")) and not n.endswith("/")]
    for n in names:
        if Path(n).name == CHECKPOINT_NAME:
            return n
    names = [n for n in names if not Path(n).stem.endswith("_optim")]
    if len(names) == 1:
        return names[0]
    raise WeightsError(
        f"clmr: cannot tell which file in {label} is the checkpoint "
        f"(members: {', '.join(zf.namelist()) or 'none'}); expected {CHECKPOINT_NAME}. "
        "Unzip it and point `weights:` at the checkpoint file."
    )


def _is_torch_archive(zf: zipfile.ZipFile) -> bool:
    """torch.save's own zip format (a checkpoint file), as opposed to a release zip holding one."""
    return any(n == "data.pkl" or n.endswith("/data.pkl") for n in zf.namelist())


def read_checkpoint(path: str | os.PathLike) -> Any:
    """Load a checkpoint file (.pt/.ckpt, or a release zip holding one) on the CPU, weights only."""
    path = Path(path)
    if zipfile.is_zipfile(path):
        with zipfile.ZipFile(path) as zf:
            if not _is_torch_archive(zf):
                member = _zip_checkpoint_member(zf, str(path))
                return torch_load_weights_only(io.BytesIO(zf.read(member)), f"{path}:{member}")
    return torch_load_weights_only(path, str(path))


def encoder_state_from_checkpoint(
    checkpoint: Any, expected: Mapping[str, torch.Tensor], label: str = "checkpoint"
) -> dict[str, torch.Tensor]:
    """The SampleCNN encoder's state dict out of a CLMR checkpoint, checked strictly.

    checkpoint: a Lightning checkpoint (dict with "state_dict") or a plain state dict, keys
    under "model.encoder." (Lightning, as upstream's load_encoder_checkpoint reads them),
    "encoder." (SimCLR module / the released .pt) or bare ("sequential.0.0.weight" ...).
    expected: the target model's state_dict (names and shapes).
    Projector and fc keys are dropped; missing, unexpected or mis-shaped keys raise
    WeightsError listing them. BatchNorm `num_batches_tracked` counters may be absent.
    """
    if isinstance(checkpoint, Mapping) and isinstance(checkpoint.get("state_dict"), Mapping):
        raw = checkpoint["state_dict"]
    elif isinstance(checkpoint, Mapping):
        raw = checkpoint
    else:
        raise WeightsError(
            f"clmr: {label} holds a {type(checkpoint).__name__}, not a state dict; expected "
            f"{CHECKPOINT_NAME} from {ZIP_URL}, a Lightning checkpoint of CLMR, or a SampleCNN state dict."
        )
    keys = [str(k) for k in raw]
    if any(k.startswith("model.encoder.") for k in keys):
        prefix = "model.encoder."
        # Lightning's ContrastiveLearning also holds the same encoder as "encoder.*": a duplicate.
        ignored = ("encoder.", *_PROJECTOR_PREFIXES)
    elif any(k.startswith("encoder.") for k in keys):
        prefix, ignored = "encoder.", _PROJECTOR_PREFIXES
    else:
        prefix, ignored = "", _PROJECTOR_PREFIXES

    state: dict[str, torch.Tensor] = {}
    unexpected: list[str] = []
    for key, value in raw.items():
        key = str(key)
        if prefix and key.startswith(prefix):
            name = key[len(prefix):]
        elif key.startswith(ignored):
            continue
        elif not prefix:
            name = key
        else:
            unexpected.append(key)
            continue
        if name.startswith(_HEAD_PREFIX):
            continue  # the task head sits after the representation
        if name not in expected:
            unexpected.append(key)
        elif not isinstance(value, torch.Tensor):
            unexpected.append(f"{key} (a {type(value).__name__}, not a tensor)")
        else:
            state[name] = value
    missing = [
        prefix + k for k in expected if k not in state and not k.endswith("num_batches_tracked")
    ]
    bad_shape = [
        f"{prefix}{k} {tuple(v.shape)} (expected {tuple(expected[k].shape)})"
        for k, v in state.items()
        if tuple(v.shape) != tuple(expected[k].shape)
    ]
    if missing or unexpected or bad_shape:
        parts = []
        for what, items in (("missing keys", missing), ("unexpected keys", unexpected),
                            ("wrong shapes", bad_shape)):
            if items:
                shown = ", ".join(items[:12]) + (f" ... ({len(items)} in all)" if len(items) > 12 else "")
                parts.append(f"{what}: {shown}")
        raise WeightsError(
            f"clmr: {label} does not match CLMR's SampleCNN encoder; " + "; ".join(parts) + ". "
            f"Use {CHECKPOINT_NAME} (in {ZIP_URL}), a Lightning checkpoint of CLMR's "
            "ContrastiveLearning module, or a SampleCNN state dict with keys like 'sequential.0.0.weight'."
        )
    for k in expected:  # counters only; eval mode never reads them
        if k not in state:
            state[k] = expected[k].clone()
    return state


# --------------------------------------------------------------------------- front-end
def num_clips(num_samples: int, last_clip: str) -> int:
    """Clips for a signal of `num_samples` samples (>= 1: short audio becomes one padded clip)."""
    if num_samples < CLIP_SAMPLES:
        return 1
    if last_clip == "pad":
        return -(-num_samples // CLIP_SAMPLES)
    return num_samples // CLIP_SAMPLES


def clip_batch(audio: np.ndarray, start: int, stop: int) -> np.ndarray:
    """Clips start..stop-1 of `audio` as (stop - start, 59049) float32, zero-padded past the end."""
    seg = audio[start * CLIP_SAMPLES: stop * CLIP_SAMPLES]
    want = (stop - start) * CLIP_SAMPLES
    if seg.shape[0] < want:
        seg = np.pad(seg, (0, want - seg.shape[0]))
    return np.ascontiguousarray(seg, dtype=np.float32).reshape(stop - start, CLIP_SAMPLES)


def clip_timestamps(n: int) -> np.ndarray:
    """(n,) float64 seconds: centres of consecutive 59049-sample clips at 22050 Hz."""
    return (np.arange(n, dtype=np.float64) * CLIP_SAMPLES + CLIP_SAMPLES / 2) / SAMPLE_RATE


# --------------------------------------------------------------------------- plugin
class CLMR(TorchExtractor):
    """CLMR SampleCNN (MagnaTagATune, 10000 epochs): (num_clips, 512) or (512,) with mean pooling."""

    name = "clmr"
    sample_rate = SAMPLE_RATE
    # Upstream resamples offline with ffmpeg (`-ar 22050`, libswresample's default
    # windowed sinc); soxr HQ is a comparable band-limited resampler that needs no ffmpeg.
    resampler = "soxr_hq"
    params = {
        "last_clip": Param(
            "drop", str,
            "the trailing partial clip: drop it (as CLMR's evaluation does) or zero-pad it to a full clip",
            choices=("drop", "pad"),
        ),
        "pooling": pooling_param("clip", "(num_clips, 512)"),
    }
    weights_file = WEIGHTS
    network_class = SampleCNN
    random_fan = "in"
    default_batch_size = 32
    # oneDNN picks its kernels by batch shape, which moves the last bits; one clip per call
    # keeps CPU results identical whatever batch_size.
    cpu_call_size = 1
    cpu_bfloat16 = True  # precision: bfloat16 on CPUs with AVX512-BF16/AMX (BENCHMARKS.md, "bf16 on the CPU")
    about = {
        "model": "CLMR SampleCNN encoder (SimCLR on MagnaTagATune, 10000 epochs), representation before "
        "the projection head",
    }

    def network_from(self, path: Path) -> SampleCNN:
        model = SampleCNN()
        state = encoder_state_from_checkpoint(read_checkpoint(path), model.state_dict(), str(path))
        model.load_state_dict(state, strict=True)
        return model

    # -- output -----------------------------------------------------------
    def output_spec(self, kind: str = "audio") -> OutputSpec:
        if self.config["pooling"] == "mean":
            return OutputSpec(axes=("dim",), timestamp_note="none: mean over the clips")
        hop = CLIP_SAMPLES / SAMPLE_RATE
        first = CLIP_SAMPLES / 2 / SAMPLE_RATE
        return OutputSpec(
            axes=("time", "dim"),
            hop_seconds=hop,
            first_frame_seconds=first,
            timestamp_note=f"t[i] = {first} + i * {hop} s: centre of clip i "
            f"({CLIP_SAMPLES} samples at {SAMPLE_RATE} Hz, consecutive from sample 0)",
        )

    @staticmethod
    def _check_signal(audio: np.ndarray) -> None:
        if audio.shape[0] < CLIP_SAMPLES:
            warnings.warn(
                f"clmr: audio has {audio.shape[0]} samples ({audio.shape[0] / SAMPLE_RATE:.2f} s), "
                f"shorter than one {CLIP_SAMPLES}-sample clip ({CLIP_SAMPLES / SAMPLE_RATE:.2f} s); "
                "zero-padded to one clip",
                stacklevel=4,
            )

    # short files across files: their clips share network calls
    def audio_items(self, n_samples: int) -> int:
        return num_clips(n_samples, self.config["last_clip"])

    def prepare_audio(self, audio: np.ndarray) -> tuple[np.ndarray, None]:
        self._check_signal(audio)
        return clip_batch(audio, 0, num_clips(audio.shape[0], self.config["last_clip"])), None

    def forward_items(self, items: np.ndarray) -> np.ndarray:
        return self.run_batches(items, self.load().net)

    def finish_audio(self, outputs: np.ndarray, state: None) -> Features:
        return self._features(outputs)

    def _extract(self, audio: np.ndarray) -> Features:
        """audio (N,) float32 at 22050 Hz -> (num_clips, 512) float32 + clip-centre timestamps, or (512,)."""
        net = self.load().net
        self._check_signal(audio)
        n = num_clips(audio.shape[0], self.config["last_clip"])
        out = np.empty((n, EMBEDDING_DIM), dtype=np.float32)
        for start in range(0, n, self.batch_size):  # batch_size clips in memory at a time
            stop = min(n, start + self.batch_size)
            out[start:stop] = self.run_batches(clip_batch(audio, start, stop), net)
        return self._features(out)

    def _features(self, out: np.ndarray) -> Features:
        n = out.shape[0]
        if self.config["pooling"] == "mean":
            return Features(out.mean(axis=0, dtype=np.float64).astype(np.float32))
        return Features(out, clip_timestamps(n))

    def provenance(self) -> dict[str, Any]:
        prov = super().provenance()
        prov.update(clip_samples=CLIP_SAMPLES, sample_rate=SAMPLE_RATE, resampler=self.resample_method)
        return prov
