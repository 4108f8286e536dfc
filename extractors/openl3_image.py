"""OpenL3 image embeddings: a PyTorch port of openl3 0.4.2's image network, without TensorFlow.

OpenL3 trains an audio and an image sub-network together (Look, Listen and
Learn: Arandjelovic & Zisserman 2017; Cramer et al., ICASSP 2019). The image
network embeds a 224x224 RGB picture: input BatchNorm -> 4 blocks of two 3x3
convolutions (64, 128, 256, 512 channels) with 2x2 max pools between blocks
-> a 28x28x512 map -> a max pool whose size sets the embedding size
(7x7 -> 4x4x512 = 8192, flattened channels-last; 28x28 -> 512). openl3
publishes one image network per audio network (`input_repr` x `content_type`,
the pair it was trained with); all six have the same architecture.

What this module reproduces from openl3 0.4.2 (`openl3/core.py`, `openl3/models.py`):

- the network exactly as `_construct_image_network` builds it, including its
  one irregular layer order (block 1's second convolution is followed by ReLU
  *then* BatchNorm), Keras' BatchNorm epsilon 1e-3 and 'same' padding;
- `_preprocess_image_batch` (see `preprocess_image_batch`): images 224x224
  as they are, uint8 mapped to [-1, 1]; images whose shorter side exceeds 256
  resized by skimage's bilinear `rescale` to a shorter side of 256 and
  centre-cropped, in [0, 1]; anything else centre-cropped raw and divided by
  the largest value of everything passed in at once (for a video: all its
  frames);
- `process_video_file`'s frames: ffmpeg's `scale=256:256` with swscale's
  bicubic filter to rgb24, the aspect ratio not kept (moviepy's
  `target_resolution=(256, 256)`), bit-identical here through libavfilter's
  own scale filter (`media.VideoScaler`); then the rule above (crop 16:240, divide by
  the video's largest pixel value).

Weights: openl3's `openl3_image_<input_repr>_<content_type>.h5` (Keras
weights-only HDF5, read by layer order with h5py), found and downloaded by the
same machinery as the audio networks (`extractors.openl3.find_weights`).

The openl3-compatible functions (`get_image_embedding`, `process_image_file`,
`process_video_file`, `load_image_embedding_model`) live beside the audio ones
in `extractors/openl3.py`.
"""

from __future__ import annotations

import tempfile
import warnings
from typing import Any

import numpy as np

from embedkit.extractors.base import (
    Extractor,
    Features,
    OutputSpec,
    Param,
    TorchModule,
    WeightFile,
    WeightsError,
    lazy_import,
    torch_device,
)
from embedkit.extractors.openl3 import (
    BN_EPS,
    CHANNELS,
    CONTENT_TYPES,
    INPUT_REPRS,
    LoadedModel,
    OpenL3Error,
    OpenL3Warning,
    find_weights,
    fold_batchnorm,
    forward_pooled,
    official_filename,
    official_url,
    read_keras_h5,
)

torch = lazy_import("torch")
nn = lazy_import("torch.nn")
F = lazy_import("torch.nn.functional")

IMAGE_SIZE = 224  # network input, pixels per side
RESIZE_SIDE = 256  # openl3 resizes so the shorter side is this (when it is larger), then crops 224
VIDEO_SIZE = (256, 256)  # process_video_file's frames: (height, width), aspect ratio not kept
EMBEDDING_SIZES = (8192, 512)
POOL_SIZES = {8192: 7, 512: 28}  # final max pool over the 28x28 map: 4x4x512 or 1x1x512
FLOPS_PER_IMAGE = 2 * sum(  # multiply-adds x2 of the 8 convolutions on a 224x224 input
    side * side * 9 * c_in * c_out
    for side, c_in, c_out in zip(
        (224, 224, 112, 112, 56, 56, 28, 28), (3,) + CHANNELS[:-1], CHANNELS
    )
)


# ---------------------------------------------------------------------------
# Preprocessing (openl3 core._preprocess_image_batch), in numpy
# ---------------------------------------------------------------------------
_FLOAT_OR_SIGNED = (np.float16, np.float32, np.float64, np.int8, np.int16, np.int32, np.int64)
_UNSIGNED = (np.uint8, np.uint16, np.uint32, np.uint64)


def _img_as_float32(x: np.ndarray) -> np.ndarray:
    """skimage.img_as_float32: floats cast; integers scaled by their dtype's maximum."""
    if x.dtype.kind == "f":
        return x.astype(np.float32)
    if x.dtype.kind in "ui":
        imax = np.iinfo(x.dtype).max
        # skimage multiplies in float32 for 8/16-bit input, in float64 above
        comp = np.float32 if x.dtype.itemsize <= 2 else np.float64
        out = np.multiply(x, 1.0 / imax, dtype=comp)
        if x.dtype.kind == "i":
            np.maximum(out, -1.0, out=out)
        return out.astype(np.float32, copy=False)
    return x.astype(np.float32)


def _linear_taps(n_in: int, n_out: int, first: int, count: int) -> tuple[np.ndarray, ...]:
    """Source indices and weights of output samples first..first+count-1 of a linear
    resize n_in -> n_out with half-pixel centres (scipy.ndimage.zoom, grid_mode=True)."""
    c = (np.arange(first, first + count) + 0.5) * (n_in / n_out) - 0.5
    c = np.clip(c, 0.0, n_in - 1)
    i0 = np.floor(c).astype(np.int64)
    w1 = c - i0
    return i0, np.minimum(i0 + 1, n_in - 1), 1.0 - w1, w1


def _rescaled_crop(frame: np.ndarray, scaling: float) -> np.ndarray:
    """The centre 224x224 of what openl3 gets from
    `skimage.transform.rescale(frame, scaling, order=1, mode='constant', clip=True,
    preserve_range=False, anti_aliasing=False, channel_axis=-1)`.

    Only the cropped pixels are computed (from the two source rows and columns
    each needs), so a 100-megapixel photo costs a few megabytes. Integer
    frames are scaled by their dtype's maximum (img_as_float), in float64;
    float32 frames keep float32 like skimage's output.
    """
    h, w = frame.shape[:2]
    oh, ow = (int(v) for v in np.maximum(np.round(scaling * np.array([h, w], np.float64)), 1))
    r0, c0 = oh // 2 - IMAGE_SIZE // 2, ow // 2 - IMAGE_SIZE // 2
    ry0, ry1, wy0, wy1 = _linear_taps(h, oh, r0, IMAGE_SIZE)
    rx0, rx1, wx0, wx1 = _linear_taps(w, ow, c0, IMAGE_SIZE)
    if frame.dtype.kind in "ui":
        scale = 1.0 / np.iinfo(frame.dtype).max
        lo, hi = float(frame.min()) * scale, float(frame.max()) * scale

        def rows(idx: np.ndarray) -> np.ndarray:
            return frame[idx].astype(np.float64) * scale
    else:
        lo, hi = float(frame.min()), float(frame.max())

        def rows(idx: np.ndarray) -> np.ndarray:
            return frame[idx].astype(np.float64)
    t = rows(ry0) * wy0[:, None, None] + rows(ry1) * wy1[:, None, None]
    out = t[:, rx0] * wx0[None, :, None] + t[:, rx1] * wx1[None, :, None]
    np.clip(out, lo, hi, out=out)  # skimage's clip=True: to the input's range
    return out.astype(np.float32) if frame.dtype == np.float32 else out


def preprocess_image_batch(image: np.ndarray, warn: bool = True) -> np.ndarray:
    """openl3's `_preprocess_image_batch`: (H, W, 3) or (N, H, W, 3) -> (N, 224, 224, 3) float32.

    Raises OpenL3Error as openl3 does (not 3-D/4-D, not 3 channels, a side
    under 224 px); warns (OpenL3Warning) on an all-zero input unless not `warn`. The rules, per
    call (for a video: over all its frames at once):
    - exactly 224x224: unsigned integers -> 2 * x / max_of_dtype - 1 in [-1, 1];
    - shorter side > 256: skimage bilinear rescale to a shorter side of 256,
      centre crop 224, values x / max_of_dtype in [0, 1];
    - otherwise: centre crop of the raw values, then everything is divided by
      the largest |value| of the whole batch when that exceeds 1.
    """
    image = np.asarray(image)
    if image.size == 0:
        raise OpenL3Error("Got empty image")
    if warn and np.all(image == 0):
        warnings.warn("Provided image is all zeros", OpenL3Warning, stacklevel=2)
    if image.ndim not in (3, 4):
        raise OpenL3Error("RGB image array can only be 3D or 4D (sequence of videos)")
    if image.shape[-1] != 3:
        raise OpenL3Error("Need 3 channel images corresponding to RGB.")
    if image.ndim == 3:
        image = image[np.newaxis]
    h, w = image.shape[1], image.shape[2]
    if min(h, w) < IMAGE_SIZE:
        raise OpenL3Error(
            f"Image(s) must be at at least as large as 224x224 px. Got image(s) of size {h}x{w} px"
        )
    if (h, w) != (IMAGE_SIZE, IMAGE_SIZE):
        scaling = RESIZE_SIDE / min(h, w)
        batch = np.zeros((image.shape[0], IMAGE_SIZE, IMAGE_SIZE, 3))  # float64, as openl3
        for idx, frame in enumerate(image):
            if min(h, w) > RESIZE_SIDE:
                batch[idx] = _rescaled_crop(frame, scaling)
            else:
                r0, c0 = h // 2 - IMAGE_SIZE // 2, w // 2 - IMAGE_SIZE // 2
                batch[idx] = frame[r0 : r0 + IMAGE_SIZE, c0 : c0 + IMAGE_SIZE]
    else:
        batch = image
    if batch.dtype in _FLOAT_OR_SIGNED:
        batch = _img_as_float32(batch)
    elif batch.dtype in _UNSIGNED:
        batch = 2 * _img_as_float32(batch) - 1
    else:
        batch = batch.astype(np.float32)  # bool and the like: Keras would cast them
    peak = np.max(np.abs(batch))
    if peak > 1:
        batch /= peak
    return np.ascontiguousarray(batch, dtype=np.float32)


def crop_and_scale(frames: np.ndarray, peak: float) -> np.ndarray:
    """openl3's rule for frames with both sides in [224, 256] (process_video_file's 256x256):
    centre 224x224 crop divided by `peak` (the largest value over the whole video) when it
    exceeds 1: (k, H, W, 3) uint8 -> (k, 224, 224, 3) float32."""
    h, w = frames.shape[1:3]
    r0, c0 = h // 2 - IMAGE_SIZE // 2, w // 2 - IMAGE_SIZE // 2
    x = frames[:, r0 : r0 + IMAGE_SIZE, c0 : c0 + IMAGE_SIZE].astype(np.float32)
    if peak > 1:
        x /= np.float32(peak)
    return x


# ---------------------------------------------------------------------------
# The network
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


def pool_embedding(fmap: torch.Tensor, embedding_size: int) -> torch.Tensor:
    """Final max pool and channels-last flatten: (B, 512, 28, 28) -> (B, embedding_size).

    8192: 7x7 pool -> (4, 4, 512) flattened as Keras does, index (h*4 + w)*512 + c;
    512: the spatial maximum.
    """
    k = POOL_SIZES[embedding_size]
    y = F.max_pool2d(fmap, kernel_size=k, stride=k)
    return y.permute(0, 2, 3, 1).reshape(y.shape[0], -1)


def build_network(state: dict[str, tuple[np.ndarray, ...]]) -> OpenL3ImageNet:
    """An eval-mode OpenL3ImageNet holding `state` (canonical form: bn_in, conv0..7, bn0..6,
    where bn{i} follows conv{i} in the file; bn1 follows conv1's ReLU)."""
    net = OpenL3ImageNet()

    def set_bn(bn: nn.BatchNorm2d, values: tuple[np.ndarray, ...]) -> None:
        gamma, beta, mean, var = (torch.from_numpy(np.ascontiguousarray(a, np.float32)) for a in values)
        bn.weight.data.copy_(gamma)
        bn.bias.data.copy_(beta)
        bn.running_mean.copy_(mean)
        bn.running_var.copy_(var)

    set_bn(net.bn_in, state["bn_in"])
    set_bn(net.bn_after_relu, state["bn1"])
    for i, conv in enumerate(net.convs):
        kernel, bias = state[f"conv{i}"]
        if i < 7 and i != 1:
            kernel, bias = fold_batchnorm(kernel, bias, state[f"bn{i}"])
        conv.weight.data.copy_(torch.from_numpy(np.ascontiguousarray(kernel)))
        conv.bias.data.copy_(torch.from_numpy(np.ascontiguousarray(bias)))
    return net.eval()


def random_state(seed: int = 0) -> dict[str, tuple[np.ndarray, ...]]:
    """Architecture-identical seeded random weights (benchmarks and shape tests only)."""
    rng = np.random.default_rng(seed)
    c_in = (3,) + CHANNELS[:-1]

    def bn(c: int, mean: float = 0.0, var: float = 1.0) -> tuple[np.ndarray, ...]:
        return (
            rng.uniform(0.5, 1.5, c).astype(np.float32),
            rng.normal(0, 0.1, c).astype(np.float32),
            np.full(c, mean, np.float32),
            np.full(c, var, np.float32),
        )

    state: dict[str, tuple[np.ndarray, ...]] = {"bn_in": bn(3, 0.4, 0.1)}
    for i, (a, b) in enumerate(zip(c_in, CHANNELS)):
        w = rng.normal(0, np.sqrt(2.0 / (9 * a)), (b, a, 3, 3)).astype(np.float32)  # He normal
        state[f"conv{i}"] = (w, rng.normal(0, 0.01, b).astype(np.float32))
        if i < 7:
            state[f"bn{i}"] = bn(b)
    return state


def load_image_network(
    input_repr: str, content_type: str, device: str = "cpu", weights_path: str | None = None
) -> LoadedModel:
    """Find (or, with weights_path="random", make) the image weights and build the network on `device`."""
    from embedkit import weights

    if weights_path == "random":
        state, source = random_state(0), {"weights": "random", "seed": 0}
    else:
        path = find_weights(input_repr, content_type, weights_path, modality="image")
        with open(path, "rb") as f:
            if not f.read(8).startswith(b"\x89HDF"):
                raise WeightsError(
                    f"openl3_image: {path} is not an HDF5 file; openl3's image weights are the official "
                    f"{official_filename(input_repr, content_type, 'image')} (gunzip the .h5.gz first)"
                )
        state = read_keras_h5(path, in_channels=3)
        source = {
            "weights": str(path),
            "format": "keras-h5",
            "weights_sha256": weights.sha256sum(path),
            "official_url": official_url(input_repr, content_type, "image"),
        }
    device = torch_device(device)
    net = build_network(state).to(device).to(memory_format=torch.channels_last)
    return LoadedModel(net, device, source)


def run_image_network(
    model: LoadedModel, batch: np.ndarray, embedding_size: int, cuda_dtype: str = "float16"
) -> np.ndarray:
    """Embeddings of preprocessed images (B, 224, 224, 3) float32: (B, embedding_size) float32.

    float32 on CPU (deterministic, batch-size independent); on CUDA under
    autocast with `cuda_dtype` unless that is "float32".
    """
    x = torch.from_numpy(np.ascontiguousarray(batch, dtype=np.float32)).permute(0, 3, 1, 2)  # NHWC view
    return forward_pooled(model, x, lambda fmap: pool_embedding(fmap, embedding_size), cuda_dtype)


def embed_batches(
    model: LoadedModel, batch: np.ndarray, embedding_size: int, batch_size: int,
    cuda_dtype: str = "float16",
) -> np.ndarray:
    """run_image_network `batch_size` images at a time: (N, 224, 224, 3) -> (N, D)."""
    out = [run_image_network(model, batch[i : i + batch_size], embedding_size, cuda_dtype)
           for i in range(0, batch.shape[0], batch_size)]
    return np.concatenate(out) if out else np.zeros((0, embedding_size), np.float32)


# ---------------------------------------------------------------------------
# Video frames: ffmpeg's scale filter, and the per-video maximum without holding the video
# ---------------------------------------------------------------------------
class VideoEmbedder:
    """Embeds one video's 256x256 frames by openl3's rule: centre crop, divided by the largest
    pixel value of the whole video (rule 3c of the reference README), in order.

    That maximum is known only at the end, but a uint8 frame cannot exceed
    255: as soon as one crop holds a 255, every frame (the waiting ones first)
    is embedded at once. Until then crops wait in memory, then (beyond
    `spill_frames`) in an anonymous temporary file, so a long dark video
    costs disk, not memory: exact numbers, bounded memory.
    """

    def __init__(self, model: LoadedModel, embedding_size: int, batch_size: int,
                 cuda_dtype: str = "float16", spill_frames: int = 1024) -> None:
        self.model, self.size, self.batch_size = model, embedding_size, batch_size
        self.cuda_dtype = cuda_dtype
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
        self._out.append(run_image_network(self.model, x, self.size, self.cuda_dtype))
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

    def close(self) -> None:
        if self._spill is not None:
            self._spill.close()
            self._spill = None


def select_by_rate(
    pts: np.ndarray, frame_rate: float | None, last_bin: int | None
) -> tuple[list[int], int | None]:
    """Which frames to keep at `frame_rate` (None: all): the first frame of each
    1/frame_rate-second interval. Returns (positions in `pts`, the last interval taken)."""
    if frame_rate is None:
        return list(range(len(pts))), last_bin
    keep = []
    for i, t in enumerate(pts):
        b = int(np.floor(float(t) * frame_rate + 1e-9))
        if last_bin is None or b > last_bin:
            keep.append(i)
            last_bin = b
    return keep, last_bin


# ---------------------------------------------------------------------------
# The plugin
# ---------------------------------------------------------------------------
def _valid_rate(v: Any) -> bool:
    return v is None or (isinstance(v, float) and np.isfinite(v) and v > 0)


class _FrameConsumer:
    """One video through the plugin: frames scaled as openl3's process_video_file has them."""

    def __init__(self, plugin: OpenL3Image, info: Any) -> None:
        c = plugin.config
        self.rate = c["frame_rate"]
        self.embedder = VideoEmbedder(plugin.load(), c["embedding_size"], plugin.batch_size,
                                      plugin.cuda_dtype)
        self.times: list[np.ndarray] = []
        self.last_bin: int | None = None

    def add(self, chunk: Any) -> None:
        keep, self.last_bin = select_by_rate(chunk.pts, self.rate, self.last_bin)
        if not keep:
            return
        # ffmpeg's own scale filter, upright by each frame's display matrix (as moviepy has them)
        self.embedder.add(chunk.rgb(select=keep, size=VIDEO_SIZE, interpolation="bicubic"))
        self.times.append(np.asarray(chunk.pts, np.float64)[keep])

    def finish(self) -> Features:
        try:
            emb = self.embedder.finish()
        finally:
            self.embedder.close()
        if emb.shape[0] == 0:
            raise ValueError("openl3_image: the video has no frames to embed")
        return Features(emb, np.concatenate(self.times))


class OpenL3Image(Extractor):
    """OpenL3 image embeddings: (D,) per image, (N, D) per video with each frame's time."""

    name = "openl3_image"
    modality = "image"
    weights_license = "CC BY 4.0 (OpenL3 model weights, marl/openl3; code MIT)"
    default_batch_size = 16  # images per forward pass (~1.5 GB of activations on CPU)
    params = {
        "input_repr": Param("mel256", str, "which audio network the image network was trained with",
                            choices=INPUT_REPRS),
        "content_type": Param("music", str, "training content of the weights", choices=CONTENT_TYPES),
        "embedding_size": Param(512, int, "embedding dimension", choices=EMBEDDING_SIZES),
        "frame_rate": Param(
            None, (float, type(None)),
            "videos: null embeds every frame (as openl3); a rate keeps the first frame of each "
            "1/frame_rate s",
            check=_valid_rate, allowed="null or a number of frames per second > 0",
        ),
        "video_frames": Param(True, bool, "also embed the frames of video files"),
        "precision": Param(
            "auto", str, "autocast dtype of the network on CUDA: auto = float16 (CPU always float32)",
            choices=("auto", "float16", "bfloat16", "float32"),
        ),
    }

    @property
    def cuda_dtype(self) -> str:
        p = self.config["precision"]
        return "float16" if p == "auto" else p

    def model_key(self) -> tuple:
        # The same weights serve both embedding sizes and every frame rate.
        c = self.config
        return (self.name, self.device, self.weights_path, c["input_repr"], c["content_type"])

    def _load(self) -> LoadedModel:
        c = self.config
        return load_image_network(c["input_repr"], c["content_type"], self.device, self.weights_path)

    def weight_files(self) -> list[WeightFile]:
        c = self.config
        return [
            WeightFile(
                official_filename(c["input_repr"], c["content_type"], "image"),
                url=official_url(c["input_repr"], c["content_type"], "image"),
                how_to_get="the URL serves it gzipped (unpacked automatically); "
                "or copy it from an installed openl3 package",
            )
        ]

    def takes_video_frames(self) -> bool:
        return bool(self.config["video_frames"])

    def output_spec(self, kind: str = "image") -> OutputSpec:
        if kind == "video":
            rate = self.config["frame_rate"]
            which = "every frame" if rate is None else f"the first frame of each 1/{rate} s"
            return OutputSpec(
                axes=("time", "dim"),
                timestamps_file=True,
                timestamp_note=f"{which}; t = the frame's presentation time (s) from the first frame",
            )
        return OutputSpec(axes=("dim",))

    def extract_image(self, rgb: np.ndarray) -> Features:
        """(embedding_size,) float32 of one (H, W, 3) uint8 image by openl3's preprocessing.

        Raises ValueError for an image under 224 px on a side (openl3 refuses them).
        """
        rgb = np.asarray(rgb)
        if rgb.ndim != 3 or rgb.shape[2] != 3:
            raise ValueError(f"openl3_image needs (H, W, 3) RGB pixels, got shape {rgb.shape}")
        h, w = rgb.shape[:2]
        if min(h, w) < IMAGE_SIZE:
            raise ValueError(
                f"image is {w}x{h} px; OpenL3's image network needs at least 224 px on each side "
                "(openl3 refuses smaller images); upscale it first if you want it embedded"
            )
        x = preprocess_image_batch(rgb, warn=False)  # an all-black image is a valid input here
        emb = run_image_network(self.load(), x, self.config["embedding_size"], self.cuda_dtype)
        return Features(emb[0])

    def frame_consumer(self, info: Any) -> _FrameConsumer:
        return _FrameConsumer(self, info)

    def provenance(self) -> dict[str, Any]:
        import importlib.metadata as md

        prov = super().provenance()
        prov.update(self.load().source)
        versions = {}
        for pkg in ("torch", "numpy", "av", "Pillow", "h5py"):
            try:
                versions[pkg] = md.version(pkg)
            except md.PackageNotFoundError:
                versions[pkg] = None
        prov["versions"] = versions
        prov["reproduces"] = "openl3 0.4.2 image network (process_video_file's frame decoding for videos)"
        prov["device"] = str(self.load().device)
        return prov
