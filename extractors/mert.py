"""MERT-v1 (m-a-p/MERT-v1-95M, m-a-p/MERT-v1-330M) through transformers' HubertModel.

MERT-v1 checkpoints on the Hugging Face hub ship their own model code
(`trust_remote_code`), which breaks on transformers >= 4.48 and would run
downloaded code. We never run it: with the CQT branch and DeepNorm switched
off (as in both released MERT-v1 checkpoints) MERT's `MERTModel` *is*
transformers' `HubertModel` (same modules, same parameter names), so we build a
`HubertConfig` from MERT's config.json, refuse configs HubertModel cannot
reproduce, and load the state dict ourselves.

Pipeline for one file (mono float32 at 24 kHz):

1. normalization as the checkpoint's preprocessor_config.json says
   (`do_normalize`: zero mean, unit variance, epsilon 1e-7, statistics over
   the whole file, as the original script's single processor call);
2. windows of `window_seconds` (default 5 s, MERT-v1's pre-training context)
   overlapping by `overlap_seconds`, starting on the 320-sample frame grid; the
   last window ends at the end of the file;
3. each window through HubertModel; from each window we keep the frames nearest
   its centre (cut at the middle of each overlap), so the stitched output has
   exactly the frames and timestamps of a single whole-file pass;
4. the chosen layers, optionally averaged over time.

Frames: the conv feature encoder has a 400-sample receptive field and a
320-sample hop, so a signal of N >= 400 samples gives floor((N - 400) / 320) + 1
frames at 75 per second; frame i sees samples [320 i, 320 i + 400) and its
timestamp is the centre of that span, (320 i + 200) / 24000 s. Signals shorter
than 400 samples are zero-padded (after normalization) to one frame.

Layers: index 0 is the transformer input (feature projection + positional
convolution), 1..L the transformer layers (L = 12 for 95M, 24 for 330M), as
MERT's `outputs.hidden_states`. For pre-LN checkpoints (330M) the last entry is
taken after the encoder's final LayerNorm, as in the transformers 4.x MERT
was released with (transformers 5 returns it before that LayerNorm).
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from embedkit import weights
from embedkit.extractors.base import ConfigError, Features, OutputSpec, Param, TorchExtractor, lazy_import
from embedkit.extractors.base import RANDOM_SEED, pooling_param
from embedkit.weights import HubRepo, HubSnapshot, WeightFile, WeightsError

torch = lazy_import("torch")

SAMPLE_RATE = 24000
HOP_SAMPLES = 320  # product of the conv strides (5 * 2**6): 75 frames per second
RECEPTIVE_FIELD = 400  # samples one output frame of the conv feature encoder sees
FIRST_FRAME_SECONDS = RECEPTIVE_FIELD / 2 / SAMPLE_RATE  # 1/120 s
DEFAULT_MODEL = "m-a-p/MERT-v1-95M"
NORM_EPS = 1e-7  # Wav2Vec2FeatureExtractor's zero-mean unit-variance epsilon
CONFIG_FILE = "config.json"
PREPROCESSOR_FILE = "preprocessor_config.json"
WEIGHT_FILES = ("model.safetensors", "pytorch_model.bin")  # first found wins
LICENSE = "CC BY-NC 4.0 (m-a-p MERT-v1 model cards; early revisions said MIT)"

# Architecture of the released checkpoints in MERT's config.json format, from the
# MERT authors' conversion configs (github.com/yizhilll/MERT scripts/hf_config).
# Used only for `weights: random` (benchmarks, shape tests).
_MERT_V1_COMMON: dict[str, Any] = {
    "model_type": "mert_model",
    "architectures": ["MERTModel"],
    "sample_rate": SAMPLE_RATE,
    "conv_dim": [512] * 7,
    "conv_kernel": [10, 3, 3, 3, 3, 2, 2],
    "conv_stride": [5, 2, 2, 2, 2, 2, 2],
    "conv_bias": False,
    "feat_extract_norm": "group",
    "feat_extract_activation": "gelu",
    "feat_proj_layer_norm": True,
    "num_conv_pos_embeddings": 128,
    "num_conv_pos_embedding_groups": 16,
    "hidden_act": "gelu",
    "layer_norm_eps": 1e-5,
    "feature_extractor_cqt": False,
    "deepnorm": False,
}
KNOWN_CONFIGS: dict[str, dict[str, Any]] = {
    "m-a-p/MERT-v1-95M": {
        **_MERT_V1_COMMON,
        "hidden_size": 768,
        "num_hidden_layers": 12,
        "num_attention_heads": 12,
        "intermediate_size": 3072,
        "do_stable_layer_norm": False,
        "attention_relax": -1.0,
        "mask_time_prob": 0.05,
    },
    "m-a-p/MERT-v1-330M": {
        **_MERT_V1_COMMON,
        "hidden_size": 1024,
        "num_hidden_layers": 24,
        "num_attention_heads": 16,
        "intermediate_size": 4096,
        "do_stable_layer_norm": True,
        "attention_relax": 32.0,
        "mask_time_prob": 0.075,
    },
}

# MERT config keys that shape HubertModel; everything else (dropouts, CTC and
# SpecAugment training settings, auto_map, ...) does not change inference.
_ARCH_KEYS = (
    "hidden_size",
    "num_hidden_layers",
    "num_attention_heads",
    "intermediate_size",
    "hidden_act",
    "layer_norm_eps",
    "feat_extract_norm",
    "feat_extract_activation",
    "conv_dim",
    "conv_stride",
    "conv_kernel",
    "conv_bias",
    "num_conv_pos_embeddings",
    "num_conv_pos_embedding_groups",
    "conv_pos_batch_norm",
    "do_stable_layer_norm",
    "feat_proj_layer_norm",
    "mask_time_prob",  # > 0 makes the (unused at inference) masked_spec_embed exist
    "mask_feature_prob",
)
_MODEL_TYPES = ("mert_model", "music_hubert", "hubert")
# Old torch weight_norm names (what MERT's checkpoints hold) <-> parametrization names.
_WEIGHT_NORM_ALIASES = (
    (".weight_g", ".parametrizations.weight.original0"),
    (".weight_v", ".parametrizations.weight.original1"),
)
_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")


# -- configuration --------------------------------------------------------------


def hubert_config(mert_config: dict[str, Any], where: str = "config.json") -> Any:
    """A transformers `HubertConfig` equivalent to a MERT config.json dict.

    Raises ConfigError for features HubertModel does not implement (MERT's CQT
    input branch, DeepNorm residual scaling) or a frame geometry other than
    MERT-v1's 24 kHz / 320-sample hop / 400-sample receptive field.
    """
    from transformers import HubertConfig

    cfg = mert_config
    problems = []
    if cfg.get("model_type") not in _MODEL_TYPES:
        problems.append(f"model_type {cfg.get('model_type')!r} (expected one of {', '.join(_MODEL_TYPES)})")
    if cfg.get("feature_extractor_cqt", False):
        problems.append("feature_extractor_cqt: true (MERT's extra CQT input branch, needs nnAudio)")
    if cfg.get("deepnorm", False):
        problems.append("deepnorm: true (DeepNet-scaled residual connections)")
    if cfg.get("feat_extract_norm", "group") not in ("group", "layer"):
        norm = cfg.get("feat_extract_norm")
        problems.append(f"feat_extract_norm {norm!r} (HubertModel knows 'group', 'layer')")
    if cfg.get("sample_rate", SAMPLE_RATE) != SAMPLE_RATE:
        problems.append(f"sample_rate {cfg.get('sample_rate')} (MERT-v1 runs at {SAMPLE_RATE} Hz)")
    kernels = list(cfg.get("conv_kernel", KNOWN_CONFIGS[DEFAULT_MODEL]["conv_kernel"]))
    strides = list(cfg.get("conv_stride", KNOWN_CONFIGS[DEFAULT_MODEL]["conv_stride"]))
    hop, field_ = conv_geometry(kernels, strides)
    if (hop, field_) != (HOP_SAMPLES, RECEPTIVE_FIELD):
        problems.append(
            f"conv_kernel {kernels} / conv_stride {strides} give a {hop}-sample hop and {field_}-sample "
            f"receptive field (MERT-v1: {HOP_SAMPLES} and {RECEPTIVE_FIELD})"
        )
    if problems:
        raise ConfigError(
            f"mert: {where} asks for what transformers' HubertModel cannot reproduce: "
            + "; ".join(problems)
            + ". This plugin runs MERT-v1 checkpoints (m-a-p/MERT-v1-95M, m-a-p/MERT-v1-330M) without "
            "their remote code; point `model:` or `weights:` at one of those."
        )
    kwargs = {k: cfg[k] for k in _ARCH_KEYS if k in cfg}
    # Inference only: no dropout, no layer drop.
    kwargs.update(
        hidden_dropout=0.0,
        activation_dropout=0.0,
        attention_dropout=0.0,
        feat_proj_dropout=0.0,
        final_dropout=0.0,
        layerdrop=0.0,
    )
    try:
        hcfg = HubertConfig(**kwargs)
    except Exception as exc:  # strict dataclass validation of types/values
        raise ConfigError(f"mert: {where}: HubertConfig rejects these values: {exc}") from None
    hcfg._attn_implementation = "sdpa"
    return hcfg


def conv_geometry(kernels: list[int], strides: list[int]) -> tuple[int, int]:
    """(hop, receptive field) in samples of a stack of unpadded 1-D convolutions."""
    hop, field_ = 1, 1
    for k, s in zip(kernels, strides):
        field_ += (k - 1) * hop
        hop *= s
    return hop, field_


def read_json(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise WeightsError(f"mert: cannot read {path}: {exc}") from None
    if not isinstance(data, dict):
        raise WeightsError(f"mert: {path} is not a JSON object")
    return data


def read_preprocessor(path: Path) -> bool:
    """`do_normalize` from preprocessor_config.json, after checking rate and channel count."""
    pre = read_json(path)
    rate = pre.get("sampling_rate", SAMPLE_RATE)
    if rate != SAMPLE_RATE or pre.get("feature_size", 1) != 1:
        raise ConfigError(
            f"mert: {path} says sampling_rate {rate}, feature_size {pre.get('feature_size', 1)}; this plugin "
            f"runs MERT-v1 (mono, {SAMPLE_RATE} Hz). MERT-v0 / music2vec (16 kHz) are not supported."
        )
    do_normalize = pre.get("do_normalize", True)  # Wav2Vec2FeatureExtractor's default
    if not isinstance(do_normalize, bool):
        raise WeightsError(f"mert: {path}: do_normalize must be true or false, got {do_normalize!r}")
    return do_normalize


# -- weights --------------------------------------------------------------------


Checkpoint = HubSnapshot  # files["config.json"], files["preprocessor_config.json"], weights, source


def hub_record(repo_id: str) -> HubRepo:
    """The record of a MERT checkpoint on the hub: config, preprocessor config and one weight file."""
    return HubRepo(
        repo_id, files=(CONFIG_FILE, PREPROCESSOR_FILE), weight_files=WEIGHT_FILES, license=LICENSE,
        how_to_get=f"`hf download {repo_id} {CONFIG_FILE} {PREPROCESSOR_FILE} pytorch_model.bin` fills the "
        "Hugging Face cache ($HF_HUB_CACHE, else $HF_HOME/hub, else ~/.cache/huggingface/hub); or set "
        "`weights: /path/to/folder` for mert in your config, a folder holding config.json, "
        "preprocessor_config.json and model.safetensors or pytorch_model.bin",
    )


def local_checkpoint(path: str | Path) -> Checkpoint:
    """A checkpoint folder (or its weight file, with config.json beside it)."""
    return weights.resolve_hub("mert", hub_record(DEFAULT_MODEL), weights_path=path)


def hub_checkpoint(repo_id: str, revision: str | None = None) -> Checkpoint:
    """config, preprocessor config and one weight file of `repo_id` from the HF cache, downloading if
    allowed (offline: the cache only); see weights.resolve_hub."""
    return weights.resolve_hub("mert", hub_record(repo_id), revision)


def read_state_dict(path: Path) -> dict[str, torch.Tensor]:
    """Tensors of a safetensors file or a pytorch_model.bin (loaded with weights_only=True)."""
    try:
        if path.name.endswith(".safetensors"):
            from safetensors.torch import load_file

            return load_file(str(path), device="cpu")
        sd = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise WeightsError(f"mert: cannot read weights {path}: {type(exc).__name__}: {exc}") from None
    if not isinstance(sd, dict):
        raise WeightsError(f"mert: {path} holds a {type(sd).__name__}, expected a state dict of tensors")
    return sd


def map_state_dict(
    sd: dict[str, torch.Tensor], target_keys: set[str]
) -> tuple[dict[str, torch.Tensor], list[str]]:
    """MERT parameter names -> HubertModel's; returns (mapped, names that match nothing).

    The names are the same modulo an optional "mert_model."/"hubert." prefix and
    the weight-norm naming of the positional convolution (weight_g/weight_v in
    MERT's files, parametrizations.weight.original0/1 in current torch).
    """
    for prefix in ("mert_model.", "hubert."):
        if sd and all(k.startswith(prefix) for k in sd):
            sd = {k[len(prefix) :]: v for k, v in sd.items()}
    mapped, unexpected = {}, []
    for key, value in sd.items():
        name = key if key in target_keys else _weight_norm_alias(key, target_keys)
        if name is None:
            unexpected.append(key)
        else:
            mapped[name] = value
    return mapped, unexpected


def _weight_norm_alias(key: str, target_keys: set[str]) -> str | None:
    """`key` under the other weight-norm naming, if the model has that name."""
    for old, new in _WEIGHT_NORM_ALIASES:
        for a, b in ((old, new), (new, old)):
            if key.endswith(a) and key[: -len(a)] + b in target_keys:
                return key[: -len(a)] + b
    return None


def _some(names: list[str], k: int = 4) -> str:
    return ", ".join(names[:k]) + (", ..." if len(names) > k else "")


def build_model(hcfg: Any, state_dict: dict[str, torch.Tensor] | None, where: str = "") -> Any:
    """HubertModel in eval mode with `state_dict` loaded, or seeded random weights when None."""
    from transformers import HubertModel

    # Construction draws random initial values: keep the caller's RNG untouched.
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(RANDOM_SEED)
        model = HubertModel(hcfg)
    if state_dict is not None:
        target = set(model.state_dict())
        mapped, unexpected = map_state_dict(state_dict, target)
        # masked_spec_embed only replaces masked frames in training.
        missing = sorted(target - set(mapped) - {"masked_spec_embed"})
        if unexpected or missing:
            raise WeightsError(
                f"mert: {where} does not match the architecture in its config.json: "
                f"{len(missing)} missing ({_some(missing)}), "
                f"{len(unexpected)} unexpected ({_some(unexpected)}). "
                "Use the config.json that came with these weights."
            )
        try:
            model.load_state_dict(mapped, strict=False)
        except RuntimeError as exc:  # shape mismatches
            raise WeightsError(f"mert: {where} does not fit its config.json: {exc}") from None
    model.eval()
    model.requires_grad_(False)
    return model


# -- signal and windows -----------------------------------------------------------


def frame_count(n_samples: int) -> int:
    """Frames of a whole-signal pass (signals shorter than the receptive field are padded to one frame)."""
    return 1 if n_samples < RECEPTIVE_FIELD else (n_samples - RECEPTIVE_FIELD) // HOP_SAMPLES + 1


def frame_times(n_frames: int) -> np.ndarray:
    """(n_frames,) float64 seconds: centre of each frame's 400-sample receptive field."""
    return FIRST_FRAME_SECONDS + np.arange(n_frames, dtype=np.float64) * (HOP_SAMPLES / SAMPLE_RATE)


def normalization(
    audio: np.ndarray, do_normalize: bool, chunk: int = 1 << 20
) -> tuple[np.float32, np.float32]:
    """(mean, scale) so that (audio - mean) / scale is what Wav2Vec2FeatureExtractor gives.

    Statistics in float64 over the whole signal, in chunks (no full-size copy).
    """
    n = audio.shape[0]
    if not do_normalize or n == 0:
        return np.float32(0.0), np.float32(1.0)
    total = sum(float(audio[i : i + chunk].sum(dtype=np.float64)) for i in range(0, n, chunk))
    mean = total / n
    sq = 0.0
    for i in range(0, n, chunk):
        d = audio[i : i + chunk].astype(np.float64) - mean
        sq += float(d @ d)
    return np.float32(mean), np.float32(math.sqrt(sq / n + NORM_EPS))


@dataclass(frozen=True)
class Window:
    """Samples [start, stop) go through the model; global frames [keep_from, keep_to) are kept from it."""

    start: int
    stop: int
    keep_from: int
    keep_to: int

    @property
    def first_frame(self) -> int:
        return self.start // HOP_SAMPLES


def window_hop(window_samples: int, overlap_samples: int) -> int:
    """Window step in samples: on the frame grid, never so large that a frame falls between windows."""
    hop = max(HOP_SAMPLES, round((window_samples - overlap_samples) / HOP_SAMPLES) * HOP_SAMPLES)
    return min(hop, HOP_SAMPLES * frame_count(window_samples))


def plan_windows(n_samples: int, window_samples: int, hop_samples: int) -> list[Window]:
    """Windows covering a signal, with the frames each one contributes.

    Starts are multiples of the 320-sample hop, so window frames sit on the
    whole-signal frame grid; the last window ends at the end of the signal (so
    it has a full window of context). Between two overlapping windows the cut
    is at the middle of their common frames. The kept ranges tile
    [0, frame_count(n_samples)) exactly.
    """
    n_frames = frame_count(n_samples)
    if n_samples <= window_samples:
        return [Window(0, n_samples, 0, n_frames)]
    last = (n_samples - window_samples) // HOP_SAMPLES * HOP_SAMPLES
    starts = list(range(0, last, hop_samples)) + [last]
    stops = [s + window_samples for s in starts[:-1]] + [n_samples]
    ends = [s // HOP_SAMPLES + frame_count(e - s) for s, e in zip(starts, stops)]
    cuts = [0] + [(starts[i + 1] // HOP_SAMPLES + ends[i]) // 2 for i in range(len(starts) - 1)] + [n_frames]
    assert ends[-1] == n_frames
    return [Window(s, e, cuts[i], cuts[i + 1]) for i, (s, e) in enumerate(zip(starts, stops))]


def _valid_layers(value: Any) -> bool:
    if isinstance(value, str):
        return value in ("last", "all")
    if isinstance(value, int):
        return not isinstance(value, bool)
    return (
        isinstance(value, list)
        and len(value) > 0
        and all(isinstance(v, int) and not isinstance(v, bool) for v in value)
        and len(set(value)) == len(value)
    )


@dataclass
class LoadedMert:
    """What `_load` returns: the network and what extraction needs to know about it."""

    net: Any
    do_normalize: bool
    num_layers: int
    hidden_size: int
    pre_layer_norm: bool
    source: dict[str, Any]


class Mert(TorchExtractor):
    name = "mert"
    sample_rate = SAMPLE_RATE
    # The model card resamples with torchaudio's default sinc resampler; torchaudio
    # is not a dependency here, soxr HQ is (see docs/mert.md).
    resampler = "soxr_hq"
    weights_license = LICENSE
    default_batch_size = 8  # windows per forward pass on CUDA
    # MKL's GEMM summation order depends on the row count, so a window batched with others
    # differs in the last bits from the same window alone: the CPU runs windows one by one,
    # so results never depend on batch_size.
    cpu_call_size = 1
    network_params = ("model", "revision")  # layers, pooling and windows share one network
    params = {
        "model": Param(
            DEFAULT_MODEL,
            str,
            "Hugging Face hub id (m-a-p/MERT-v1-95M, m-a-p/MERT-v1-330M) or a local checkpoint folder",
        ),
        "revision": Param(None, (str, type(None)), "hub branch, tag or commit hash (default: main)"),
        "layers": Param(
            "last",
            (str, int, list),
            "'last' (T, H); 'all' (L+1, T, H); an index (T, H) or a list of indices (n, T, H); 0 = input of "
            "the first transformer layer, L = last layer, negative counts from the end",
            check=_valid_layers,
            allowed="'last', 'all', a layer index, or a non-empty list of distinct layer indices",
        ),
        "pooling": pooling_param("frame", "(T, H) per layer"),
        "window_seconds": Param(
            5.0,
            float,
            "analysis window (MERT-v1 was pre-trained on 5 s excerpts)",
            check=lambda v: 0.5 <= v <= 600.0,
            allowed="a number of seconds from 0.5 to 600",
        ),
        "overlap_seconds": Param(
            1.0,
            float,
            "overlap of consecutive windows; each frame is taken from the window where it is most central",
            check=lambda v: v >= 0.0,
            allowed="a number of seconds >= 0 and below window_seconds",
        ),
    }

    @classmethod
    def check_combination(cls, config: dict[str, Any]) -> None:
        if config["overlap_seconds"] >= config["window_seconds"]:
            raise ConfigError(
                f"mert: overlap_seconds ({config['overlap_seconds']}) must be below window_seconds "
                f"({config['window_seconds']})"
            )

    # -- model ----------------------------------------------------------------
    def _checkpoint(self) -> Checkpoint:
        """Where the weights are: `weights:` path, a local `model:` folder, or the hub cache."""
        if self.weights_path is not None:
            return local_checkpoint(self.weights_path)
        model = self.config["model"]
        if Path(model).expanduser().is_dir():
            return local_checkpoint(model)
        if not _HUB_ID.match(model):
            raise WeightsError(
                f"mert: model {model!r} is neither an existing folder nor a hub id like {DEFAULT_MODEL}. "
                + weights.fetch_advice("mert") + " " + hub_record(DEFAULT_MODEL).how_to_get + "."
            )
        return hub_checkpoint(model, self.config["revision"])

    def _random_config(self) -> dict[str, Any]:
        model = self.config["model"]
        if Path(model).expanduser().is_dir():
            return read_json(Path(model).expanduser() / CONFIG_FILE)
        if model in KNOWN_CONFIGS:
            return dict(KNOWN_CONFIGS[model])
        raise ConfigError(
            f"mert: weights: random needs the architecture: use model {' or '.join(KNOWN_CONFIGS)} "
            "or a local folder with a config.json"
        )

    def load(self) -> LoadedMert:
        """The cached network, after checking what depends on it (layer numbers)."""
        net = super().load()
        self.layer_indices(net.num_layers)
        return net

    def _load(self) -> LoadedMert:
        from embedkit.weights import sha256sum

        if self.random_weights:
            mcfg = self._random_config()
            hcfg = hubert_config(mcfg, f"built-in config for {self.config['model']}")
            model = build_model(hcfg, None)
            do_normalize = True
            info: dict[str, Any] = {
                "weights": "random", "weights_seed": RANDOM_SEED, "architecture_of": self.config["model"]
            }
        else:
            ckpt = self._checkpoint()
            config, preprocessor = ckpt.files[CONFIG_FILE], ckpt.files[PREPROCESSOR_FILE]
            mcfg = read_json(config)
            hcfg = hubert_config(mcfg, str(config))
            do_normalize = read_preprocessor(preprocessor)
            model = build_model(hcfg, read_state_dict(ckpt.weights), str(ckpt.weights))
            info = {
                "weights": {
                    **ckpt.source,
                    "weight_file": str(ckpt.weights),
                    "sha256": sha256sum(ckpt.weights),
                    "config_sha256": sha256sum(config),
                    "preprocessor_sha256": sha256sum(preprocessor),
                },
                "weights_sha256": sha256sum(ckpt.weights),
            }
        relax = mcfg.get("attention_relax", -1.0)
        info["architecture"] = {
            "class": "transformers.HubertModel (no remote code)",
            "hidden_size": hcfg.hidden_size,
            "num_hidden_layers": hcfg.num_hidden_layers,
            "do_stable_layer_norm": hcfg.do_stable_layer_norm,
            "attention": "sdpa",
            "attention_relax": relax
            if relax is None or relax <= 0
            else f"{relax}: ignored (MERT's code uses it only with deepnorm; softmax is shift-invariant)",
        }
        info["do_normalize"] = do_normalize
        model.to(self.device)
        return LoadedMert(
            net=model,
            do_normalize=do_normalize,
            num_layers=hcfg.num_hidden_layers,
            hidden_size=hcfg.hidden_size,
            pre_layer_norm=bool(hcfg.do_stable_layer_norm),
            source=info,
        )

    def fetch_weights(self) -> None:
        """Download (or find) the checkpoint files and check the config, without building the network."""
        if self.random_weights:
            return
        ckpt = self._checkpoint()
        hubert_config(read_json(ckpt.files[CONFIG_FILE]), str(ckpt.files[CONFIG_FILE]))
        read_preprocessor(ckpt.files[PREPROCESSOR_FILE])

    def weight_files(self) -> list[WeightFile]:
        if self.random_weights:
            return []
        repo = hub_record(self.config["model"])
        url = None if Path(repo.repo_id).expanduser().is_dir() else repo.url(self.config["revision"])
        return [WeightFile(n, url=url and url + n, license=repo.license, how_to_get=repo.how_to_get)
                for n in (*repo.files, "pytorch_model.bin")]

    # -- output -----------------------------------------------------------------
    def _stacked(self) -> bool:
        """True when the output has a layer axis."""
        layers = self.config["layers"]
        return layers == "all" or isinstance(layers, list)

    def layer_indices(self, num_layers: int) -> list[int]:
        """Hidden-state indices (0..num_layers) for the `layers` parameter."""
        layers = self.config["layers"]
        if layers == "last":
            return [num_layers]
        if layers == "all":
            return list(range(num_layers + 1))
        wanted = [layers] if isinstance(layers, int) else layers
        out = []
        for i in wanted:
            j = i + num_layers + 1 if i < 0 else i
            if not 0 <= j <= num_layers:
                raise ConfigError(
                    f"mert: layer {i} does not exist; this model has hidden states 0..{num_layers} "
                    f"(or -{num_layers + 1}..-1)"
                )
            out.append(j)
        if len(set(out)) != len(out):
            raise ConfigError(f"mert: layers {layers} name the same layer twice")
        return out

    def output_spec(self, kind: str = "audio") -> OutputSpec:
        stacked = self._stacked()
        if self.config["pooling"] == "mean":
            return OutputSpec(axes=("layer", "dim") if stacked else ("dim",))
        return OutputSpec(
            axes=("layer", "time", "dim") if stacked else ("time", "dim"),
            hop_seconds=HOP_SAMPLES / SAMPLE_RATE,
            first_frame_seconds=FIRST_FRAME_SECONDS,
            timestamp_note=(
                f"t[i] = {FIRST_FRAME_SECONDS:.10g} + i / 75 s: centre of frame i's receptive field, "
                "samples [320 i, 320 i + 400) at 24 kHz"
            ),
        )

    def _forward(self, net: LoadedMert, batch: np.ndarray, indices: list[int]) -> np.ndarray:
        """(B, S) normalized samples -> (B, len(indices), T, H) float32 hidden states."""

        def states(x: torch.Tensor) -> torch.Tensor:
            if indices == [net.num_layers]:
                return net.net(x).last_hidden_state[:, None]
            out = net.net(x, output_hidden_states=True)
            hidden = list(out.hidden_states)
            if net.pre_layer_norm:
                # transformers 5 records the last layer before the encoder's final
                # LayerNorm; MERT (transformers 4.x) returned it after, = last_hidden_state.
                hidden[-1] = out.last_hidden_state
            return torch.stack([hidden[i] for i in indices], dim=1)

        return self.run_batches(batch, states)

    def _extract(self, audio: np.ndarray) -> Features:
        net = self.load()
        indices = self.layer_indices(net.num_layers)
        n = audio.shape[0]
        n_frames = frame_count(n)
        window = round(self.config["window_seconds"] * SAMPLE_RATE)
        overlap = round(self.config["overlap_seconds"] * SAMPLE_RATE)
        plan = plan_windows(n, window, window_hop(window, overlap))
        mean, scale = normalization(audio, net.do_normalize)
        pooled = self.config["pooling"] == "mean"
        if pooled:
            acc = np.zeros((len(indices), net.hidden_size), np.float64)
        else:
            out = np.empty((len(indices), n_frames, net.hidden_size), np.float32)

        for group in _batches(plan, self.call_size()):
            length = max(group[0].stop - group[0].start, RECEPTIVE_FIELD)
            batch = np.zeros((len(group), length), np.float32)  # zero tail pads short signals
            for row, w in zip(batch, group):
                row[: w.stop - w.start] = (audio[w.start : w.stop] - mean) / scale
            states = self._forward(net, batch, indices)
            for w, h in zip(group, states):
                a, b = w.keep_from - w.first_frame, w.keep_to - w.first_frame
                if pooled:
                    acc += h[:, a:b].sum(axis=1, dtype=np.float64)
                else:
                    out[:, w.keep_from : w.keep_to] = h[:, a:b]

        stacked = self._stacked()
        if pooled:
            data = (acc / n_frames).astype(np.float32)
            return Features(data if stacked else data[0])
        return Features(out if stacked else out[0], timestamps=frame_times(n_frames))

    def provenance(self) -> dict[str, Any]:
        import importlib.metadata as md

        out = super().provenance()
        net = self.load()
        window = round(self.config["window_seconds"] * SAMPLE_RATE)
        out["windows"] = {
            "window_samples": window,
            "hop_samples": window_hop(window, round(self.config["overlap_seconds"] * SAMPLE_RATE)),
            "normalization": "whole-file mean/variance" if net.do_normalize else "none (do_normalize: false)",
        }
        out["resampler_note"] = "soxr HQ; MERT's model card resamples with torchaudio.transforms.Resample"
        out["versions"] = {
            "torch": torch.__version__,
            "numpy": np.__version__,
            **{p: md.version(p) for p in ("transformers", "huggingface-hub", "safetensors")},
        }
        return out


def _batches(plan: list[Window], size: int) -> list[list[Window]]:
    """Consecutive windows of equal length, at most `size` per group (only equal lengths stack)."""
    groups: list[list[Window]] = []
    for w in plan:
        g = groups[-1] if groups else None
        if g and len(g) < size and g[0].stop - g[0].start == w.stop - w.start:
            g.append(w)
        else:
            groups.append([w])
    return groups
