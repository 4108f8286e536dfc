"""openl3 0.4.2's two networks in PyTorch (without TensorFlow), and running them in batches.

Both are L3-Net sub-networks (Arandjelovic & Zisserman 2017; Cramer et al., "Look, Listen
and Learn More", ICASSP 2019): input BatchNorm -> 4 blocks of two 3x3 convolutions (64,
128, 256, 512 channels) with 2x2 max pools between blocks -> a final max pool whose size
sets the embedding size -> channels-last flatten. Keras' BatchNorm epsilon (1e-3) and
'same' padding throughout.

- audio (`OpenL3AudioNet`): a (B, 1, F, T) dB spectrogram (F frequency bins, T frames)
  -> (B, 512, F // 8, T // 8); embeddings of 6144 or 512 values;
- image (`OpenL3ImageNet`): (B, 3, 224, 224) RGB -> (B, 512, 28, 28), with openl3's one
  irregular layer order (block 1's second convolution is followed by ReLU *then*
  BatchNorm); embeddings of 8192 (4x4x512) or 512 values.

Weights arrive in the canonical form `embedkit.openl3.weightfiles` reads: {"bn_in":
(gamma, beta, mean, var), "conv0".."conv7": (kernel OIHW, bias), "bn0".."bn6": (...)},
float32, "bn{i}" being the BatchNorm that follows conv{i}. The inputs are made by
`embedkit.openl3.preprocessing`.
"""

from __future__ import annotations

import tempfile
from dataclasses import dataclass, field
from typing import Any, Callable

import numpy as np

from embedkit.extractors.base import TorchModule, autocast_dtype, inference_context, lazy_import
from embedkit.openl3.preprocessing import (
    IMAGE_SIZE,
    crop_and_scale,
    hop_samples,
    iter_window_chunks,
    num_windows,
    spectrogram_chunk,
    timestamps,
)

torch = lazy_import("torch")
nn = lazy_import("torch.nn")
F = lazy_import("torch.nn.functional")

BN_EPS = 1e-3  # Keras BatchNormalization default
CHANNELS = (64, 64, 128, 128, 256, 256, 512, 512)  # the 8 convolutions
AUDIO_EMBEDDING_SIZES = (512, 6144)
IMAGE_EMBEDDING_SIZES = (8192, 512)
# Final max-pool size (freq, time) per representation and embedding size: it
# divides the last feature map ((32|16), 24) exactly.
POOL_SIZES = {
    "linear": {6144: (8, 8), 512: (32, 24)},
    "mel128": {6144: (4, 8), 512: (16, 24)},
    "mel256": {6144: (8, 8), 512: (32, 24)},
}
IMAGE_POOL_SIZES = {8192: 7, 512: 28}  # final max pool over the 28x28 map: 4x4x512 or 1x1x512
FLOPS_PER_IMAGE = 2 * sum(  # multiply-adds x2 of the 8 convolutions on a 224x224 input
    side * side * 9 * c_in * c_out
    for side, c_in, c_out in zip(
        (224, 224, 112, 112, 56, 56, 28, 28), (3,) + CHANNELS[:-1], CHANNELS
    )
)


# ---------------------------------------------------------------------------
# The audio network
# ---------------------------------------------------------------------------
class OpenL3AudioNet(TorchModule):
    """L3-Net audio sub-network (openl3 0.4.2), without its spectrogram front-end.

    Input (B, 1, F, T) float32 dB spectrogram (F: frequency, T: frames);
    output the last convolution's map (B, 512, F // 8, T // 8) before the
    embedding pool (see `pool_embedding`). The BatchNorm after each of the
    first seven convolutions is folded into that convolution's weights by
    `build_network` (same function, two fewer memory passes per layer).
    """

    def __init__(self) -> None:
        super().__init__()
        self.bn_in = nn.BatchNorm2d(1, eps=BN_EPS)  # acts on the dB spectrogram itself
        c_in = (1,) + CHANNELS[:-1]
        self.convs = nn.ModuleList(nn.Conv2d(a, b, 3, padding=1) for a, b in zip(c_in, CHANNELS))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.bn_in(x)
        last = len(self.convs) - 1
        for i, conv in enumerate(self.convs):
            x = conv(x)
            if i == last:
                break  # the embedding layer has no BatchNorm / ReLU
            x = F.relu_(x)
            if i in (1, 3, 5):
                x = F.max_pool2d(x, 2)  # 2x2, stride 2, floor (257 -> 128, 199 -> 99)
        return x


def pool_embedding(fmap: torch.Tensor, input_repr: str, embedding_size: int) -> torch.Tensor:
    """Final max pool and channels-last flatten: (B, 512, h, w) -> (B, embedding_size)."""
    k = POOL_SIZES[input_repr][embedding_size]
    y = F.max_pool2d(fmap, kernel_size=k, stride=k)
    return y.permute(0, 2, 3, 1).reshape(y.shape[0], -1)


def fold_batchnorm(
    kernel: np.ndarray, bias: np.ndarray, bn: tuple[np.ndarray, ...]
) -> tuple[np.ndarray, np.ndarray]:
    """Conv followed by inference BatchNorm as one conv (computed in float64, stored float32).

    BN(z) = gamma * (z - mean) / sqrt(var + eps) + beta with z = conv(x) + bias.
    """
    gamma, beta, mean, var = (np.asarray(a, np.float64) for a in bn)
    scale = gamma / np.sqrt(var + BN_EPS)
    k = np.asarray(kernel, np.float64) * scale[:, None, None, None]
    b = (np.asarray(bias, np.float64) - mean) * scale + beta
    return k.astype(np.float32), b.astype(np.float32)


def _set_bn(bn: nn.BatchNorm2d, values: tuple[np.ndarray, ...]) -> None:
    """Load (gamma, beta, mean, var) into a BatchNorm."""
    gamma, beta, mean, var = (torch.from_numpy(np.ascontiguousarray(a, np.float32)) for a in values)
    bn.weight.data.copy_(gamma)
    bn.bias.data.copy_(beta)
    bn.running_mean.copy_(mean)
    bn.running_var.copy_(var)


def build_network(state: dict[str, tuple[np.ndarray, ...]]) -> OpenL3AudioNet:
    """An eval-mode OpenL3AudioNet holding `state` (canonical form), BatchNorms folded."""
    net = OpenL3AudioNet()
    _set_bn(net.bn_in, state["bn_in"])
    for i, conv in enumerate(net.convs):
        kernel, bias = state[f"conv{i}"]
        if i < 7:
            kernel, bias = fold_batchnorm(kernel, bias, state[f"bn{i}"])
        conv.weight.data.copy_(torch.from_numpy(np.ascontiguousarray(kernel)))
        conv.bias.data.copy_(torch.from_numpy(np.ascontiguousarray(bias)))
    return net.eval()


def random_state(seed: int = 0, in_channels: int = 1) -> dict[str, tuple[np.ndarray, ...]]:
    """Architecture-identical seeded random weights (benchmarks and shape tests only), canonical
    form: the audio network's (`in_channels` 1), or the image network's (3). The input
    BatchNorm's statistics fit the input: a dB spectrogram (mean -40, variance 300) or pixels
    in [0, 1] (0.4, 0.1)."""
    rng = np.random.default_rng(seed)
    c_in = (in_channels,) + CHANNELS[:-1]

    def bn(c: int, mean: float = 0.0, var: float = 1.0) -> tuple[np.ndarray, ...]:
        return (
            rng.uniform(0.5, 1.5, c).astype(np.float32),
            rng.normal(0, 0.1, c).astype(np.float32),
            np.full(c, mean, np.float32),
            np.full(c, var, np.float32),
        )

    mean, var = (-40.0, 300.0) if in_channels == 1 else (0.4, 0.1)
    state: dict[str, tuple[np.ndarray, ...]] = {"bn_in": bn(in_channels, mean, var)}
    for i, (a, b) in enumerate(zip(c_in, CHANNELS)):
        w = rng.normal(0, np.sqrt(2.0 / (9 * a)), (b, a, 3, 3)).astype(np.float32)  # He normal
        state[f"conv{i}"] = (w, rng.normal(0, 0.01, b).astype(np.float32))
        if i < 7:
            state[f"bn{i}"] = bn(b)
    return state


# ---------------------------------------------------------------------------
# The image network
# ---------------------------------------------------------------------------
class OpenL3ImageNet(TorchModule):
    """L3-Net image sub-network (openl3 0.4.2 `_construct_image_network`).

    Input (B, 3, 224, 224) float32 RGB (as preprocessed); output the last
    convolution's map (B, 512, 28, 28) before the embedding pool. The
    BatchNorms that directly follow a convolution are folded into it by
    `build_network`; the input BatchNorm and block 1's BatchNorm after its
    ReLU cannot be (they act before zero padding / after a ReLU) and stay.
    """

    def __init__(self) -> None:
        super().__init__()
        self.bn_in = nn.BatchNorm2d(3, eps=BN_EPS)
        self.bn_after_relu = nn.BatchNorm2d(CHANNELS[1], eps=BN_EPS)
        c_in = (3,) + CHANNELS[:-1]
        self.convs = nn.ModuleList(nn.Conv2d(a, b, 3, padding=1) for a, b in zip(c_in, CHANNELS))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        c = self.convs
        x = self.bn_in(x)
        x = F.relu_(c[0](x))
        x = self.bn_after_relu(F.relu_(c[1](x)))  # conv -> ReLU -> BN, openl3's order in block 1
        x = F.max_pool2d(x, 2)  # 224 -> 112 ('same' = 'valid' on even sides)
        x = F.relu_(c[3](F.relu_(c[2](x))))
        x = F.max_pool2d(x, 2)  # -> 56
        x = F.relu_(c[5](F.relu_(c[4](x))))
        x = F.max_pool2d(x, 2)  # -> 28
        x = F.relu_(c[6](x))
        return c[7](x)  # vision_embedding_layer: no BatchNorm, no ReLU


def pool_image_embedding(fmap: torch.Tensor, embedding_size: int) -> torch.Tensor:
    """Final max pool and channels-last flatten: (B, 512, 28, 28) -> (B, embedding_size).

    8192: 7x7 pool -> (4, 4, 512) flattened as Keras does, index (h*4 + w)*512 + c;
    512: the spatial maximum.
    """
    k = IMAGE_POOL_SIZES[embedding_size]
    y = F.max_pool2d(fmap, kernel_size=k, stride=k)
    return y.permute(0, 2, 3, 1).reshape(y.shape[0], -1)


def build_image_network(state: dict[str, tuple[np.ndarray, ...]]) -> OpenL3ImageNet:
    """An eval-mode OpenL3ImageNet holding `state` (canonical form: bn_in, conv0..7, bn0..6,
    where bn{i} follows conv{i} in the file; bn1 follows conv1's ReLU)."""
    net = OpenL3ImageNet()
    _set_bn(net.bn_in, state["bn_in"])
    _set_bn(net.bn_after_relu, state["bn1"])
    for i, conv in enumerate(net.convs):
        kernel, bias = state[f"conv{i}"]
        if i < 7 and i != 1:
            kernel, bias = fold_batchnorm(kernel, bias, state[f"bn{i}"])
        conv.weight.data.copy_(torch.from_numpy(np.ascontiguousarray(kernel)))
        conv.bias.data.copy_(torch.from_numpy(np.ascontiguousarray(bias)))
    return net.eval()


# ---------------------------------------------------------------------------
# Running the networks on batches
# ---------------------------------------------------------------------------
@dataclass
class LoadedModel:
    """A network (audio or image) on its device and where its weights came from (the API's)."""

    net: OpenL3AudioNet
    device: str
    source: dict[str, Any] = field(default_factory=dict)


# The forward passes, on torch tensors already on the network's device: what the plugins hand
# `TorchExtractor.run_batches` and what `forward_pooled` runs for the API.
def audio_forward(net: OpenL3AudioNet, x: torch.Tensor, input_repr: str, embedding_size: int) -> torch.Tensor:
    """(B, F, T) float32 dB spectrograms -> (B, embedding_size) float32 embeddings."""
    fmap = net(x[:, None].contiguous(memory_format=torch.channels_last))
    return pool_embedding(fmap.float(), input_repr, embedding_size)


def image_forward(net: OpenL3ImageNet, x: torch.Tensor, embedding_size: int) -> torch.Tensor:
    """(B, 224, 224, 3) float32 preprocessed images -> (B, embedding_size) float32 embeddings."""
    fmap = net(x.permute(0, 3, 1, 2).contiguous(memory_format=torch.channels_last))  # NHWC in memory
    return pool_image_embedding(fmap.float(), embedding_size)


def forward_pooled(model: Any, x: np.ndarray, forward: Callable[[Any, Any], Any],
                   cuda_dtype: str = "auto") -> np.ndarray:
    """`forward(net, x)` as float32 numpy, on the device the network is on, for the API.

    `model`: a LoadedModel, or what a plugin's `load()` returns (anything with `.net`).
    `cuda_dtype`: the precision, as the plugins' `precision` parameter means it
    (`extractors.base.PRECISION`: "auto" = float16 autocast on CUDA; "float32" = none; the
    CPU runs float32), applied as the plugins apply it (`base.inference_context`).
    """
    device = str(next(model.net.parameters()).device)
    x = np.ascontiguousarray(x, dtype=np.float32)
    with inference_context(device, autocast_dtype("openl3", cuda_dtype, device)):
        if device.startswith("cuda") or len(x) <= 1:
            return forward(model.net, torch.from_numpy(x).to(device)).float().cpu().numpy()
        # the CPU: one item per call, as the plugins run (activations stay in cache: 1.27x on a
        # 30 s file); the same bytes, the networks' outputs do not depend on the call's shape
        return np.concatenate([forward(model.net, torch.from_numpy(x[i:i + 1])).float().numpy()
                               for i in range(len(x))])


def run_network(
    model: Any,
    spectrograms: np.ndarray,
    input_repr: str,
    embedding_size: int,
    cuda_dtype: str = "auto",
) -> np.ndarray:
    """Embeddings of (B, F, T) dB spectrograms: (B, embedding_size) float32 (see forward_pooled)."""
    return forward_pooled(model, spectrograms,
                          lambda net, x: audio_forward(net, x, input_repr, embedding_size), cuda_dtype)


def embed_signal(
    model: Any,
    audio: np.ndarray,
    input_repr: str,
    embedding_size: int,
    hop_size: float,
    center: bool,
    frontend: str,
    batch_size: int,
    cuda_dtype: str = "auto",
    embed: Callable[[np.ndarray], np.ndarray] | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """(embeddings (T, D) float32, timestamps (T,) float64) of a 48 kHz mono signal.

    Windows are made, transformed and embedded `batch_size` at a time, so
    memory stays bounded for long files. `embed` runs the network on each batch's
    (B, F, T) spectrograms (the plugin's run); default: run_network(model, ..., cuda_dtype).
    """
    if embed is None:
        def embed(spec: np.ndarray) -> np.ndarray:
            return run_network(model, spec, input_repr, embedding_size, cuda_dtype)
    hop_len = hop_samples(hop_size)
    n = num_windows(audio.shape[0], hop_len, center)
    out = np.empty((n, embedding_size), dtype=np.float32)
    for w0, segment, starts in iter_window_chunks(audio, hop_len, center, batch_size):
        out[w0 : w0 + len(starts)] = embed(spectrogram_chunk(segment, starts, input_repr, frontend))
    return out, timestamps(n, hop_size)


def run_image_network(
    model: Any, batch: np.ndarray, embedding_size: int, cuda_dtype: str = "auto"
) -> np.ndarray:
    """Embeddings of preprocessed images (B, 224, 224, 3) float32: (B, embedding_size) float32
    (see forward_pooled)."""
    return forward_pooled(model, batch, lambda net, x: image_forward(net, x, embedding_size), cuda_dtype)


def embed_batches(
    model: Any, batch: np.ndarray, embedding_size: int, batch_size: int,
    cuda_dtype: str = "auto",
) -> np.ndarray:
    """run_image_network `batch_size` images at a time: (N, 224, 224, 3) -> (N, D)."""
    out = [run_image_network(model, batch[i : i + batch_size], embedding_size, cuda_dtype)
           for i in range(0, batch.shape[0], batch_size)]
    return np.concatenate(out) if out else np.zeros((0, embedding_size), np.float32)


class VideoEmbedder:
    """Embeds one video's 256x256 frames by openl3's rule: centre crop, divided by the largest
    pixel value of the whole video (rule 3c of the reference README), in order.

    That maximum is known only at the end, but a uint8 frame cannot exceed
    255: as soon as one crop holds a 255, every frame (the waiting ones first)
    is embedded at once. Until then crops wait in memory, then (beyond
    `spill_frames`) in an anonymous temporary file, so a long dark video
    costs disk, not memory: exact numbers, bounded memory.
    """

    def __init__(self, model: Any, embedding_size: int, batch_size: int,
                 cuda_dtype: str = "auto", spill_frames: int = 1024,
                 embed: Callable[[np.ndarray], np.ndarray] | None = None) -> None:
        """`embed` runs the network on a batch of (k, 224, 224, 3) float32 crops (the plugin's
        run); default: run_image_network(model, ..., cuda_dtype)."""
        self.size, self.batch_size = embedding_size, batch_size
        self.embed = embed or (lambda x: run_image_network(model, x, embedding_size, cuda_dtype))
        self.spill_frames = spill_frames
        self.peak = 0
        self.count = 0
        self._waiting: list[np.ndarray] = []  # uint8 crops (k, 224, 224, 3) in memory
        self._n_waiting = 0
        self._spill = None  # temporary file of crops written before those in _waiting
        self._n_spilled = 0
        self._ready: list[np.ndarray] = []  # uint8 crops for the next batch, divisor known
        self._n_ready = 0
        self._out: list[np.ndarray] = []

    def add(self, frames: np.ndarray) -> None:
        """Frames (k, H, W, 3) uint8 with 224 <= H, W <= 256 (process_video_file: 256x256)."""
        if not len(frames):
            return
        h, w = frames.shape[1:3]
        r0, c0 = h // 2 - IMAGE_SIZE // 2, w // 2 - IMAGE_SIZE // 2
        crops = np.ascontiguousarray(frames[:, r0 : r0 + IMAGE_SIZE, c0 : c0 + IMAGE_SIZE])
        self.count += len(crops)
        self.peak = max(self.peak, int(crops.max()))
        if self.peak < 255:
            self._wait(crops)
            return
        self._release_waiting(255)
        self._queue(crops, 255)

    def _wait(self, crops: np.ndarray) -> None:
        self._waiting.append(crops)
        self._n_waiting += len(crops)
        if self._n_waiting > self.spill_frames:
            if self._spill is None:
                self._spill = tempfile.TemporaryFile(prefix="openl3-frames-")
            for c in self._waiting:
                self._spill.write(c.tobytes())
            self._n_spilled += self._n_waiting
            self._waiting, self._n_waiting = [], 0

    def _release_waiting(self, peak: int) -> None:
        if self._spill is not None:
            self._spill.seek(0)
            frame_bytes = IMAGE_SIZE * IMAGE_SIZE * 3
            left = self._n_spilled
            while left:
                k = min(left, max(self.batch_size, 1))
                buf = self._spill.read(k * frame_bytes)
                self._queue(np.frombuffer(buf, np.uint8).reshape(k, IMAGE_SIZE, IMAGE_SIZE, 3), peak)
                left -= k
            self._spill.close()
            self._spill, self._n_spilled = None, 0
        for c in self._waiting:
            self._queue(c, peak)
        self._waiting, self._n_waiting = [], 0

    def _queue(self, crops: np.ndarray, peak: int) -> None:
        """Embed in batches of exactly `batch_size` (the last one excepted): fixed batch split."""
        self._ready.append(crops)
        self._n_ready += len(crops)
        while self._n_ready >= self.batch_size:
            self._run(peak, self.batch_size)

    def _run(self, peak: int, n: int) -> None:
        stacked = np.concatenate(self._ready) if len(self._ready) > 1 else self._ready[0]
        take, rest = stacked[:n], stacked[n:]
        x = crop_and_scale(take, peak)  # already 224x224: the crop is the identity
        self._out.append(self.embed(x))
        self._ready = [rest] if len(rest) else []
        self._n_ready = len(rest)

    def finish(self) -> np.ndarray:
        """(N, embedding_size) float32 for every frame added, in order."""
        if self.peak < 255:
            self._release_waiting(self.peak)
        while self._n_ready:
            self._run(self.peak, min(self._n_ready, self.batch_size))
        if not self._out:
            return np.zeros((0, self.size), np.float32)
        return np.concatenate(self._out)

    def finish_items(self) -> np.ndarray:
        """The end of the video, its last call left out: every full batch embedded, the frames
        left (fewer than a batch) returned as the (n, 224, 224, 3) float32 inputs `finish` would
        give the network, for calls shared with other videos (`finish_with` takes their rows)."""
        if self.peak < 255:
            self._release_waiting(self.peak)
        none = np.zeros((0, IMAGE_SIZE, IMAGE_SIZE, 3), np.uint8)
        rest = np.concatenate(self._ready) if self._ready else none
        self._ready, self._n_ready = [], 0
        return crop_and_scale(rest, self.peak)

    def finish_with(self, embeddings: np.ndarray) -> np.ndarray:
        """`finish`'s result, `embeddings` being those of the inputs `finish_items` returned."""
        self._out.append(np.asarray(embeddings, np.float32).reshape(-1, self.size))
        return np.concatenate(self._out)

    def close(self) -> None:
        if self._spill is not None:
            self._spill.close()
            self._spill = None
