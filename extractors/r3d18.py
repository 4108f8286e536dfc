"""R3D-18 video embeddings (512-d per clip) on torchvision's Kinetics-400 checkpoint, without torchvision.

Network: torchvision's `r3d_18` (Tran et al., "A Closer Look at Spatiotemporal
Convolutions for Action Recognition", CVPR 2018), written out here with torchvision's
exact state-dict keys:
  stem: Conv3d(3, 64, k=(3, 7, 7), stride (1, 2, 2), pad (1, 3, 3), no bias) -> BN -> ReLU
      (no max-pool)
  layer1..layer4: two BasicBlocks each (64, 128, 256, 512 channels); a block is
      conv1 = [Conv3d 3x3x3 pad 1, BN, ReLU], conv2 = [Conv3d 3x3x3 pad 1, BN], shortcut,
      ReLU; the first block of layer2-4 has stride 2 in time, height and width and a
      `downsample` shortcut [Conv3d 1x1x1 stride 2, BN]
  avgpool (global, 3-D) -> flatten -> (fc 512 -> 400, unused here)
BatchNorm eps 1e-5, eval mode, every convolution bias-free. The embedding is the 512-d
vector after the global average pool (the classifier's input); a 16 x 112 x 112 clip
leaves a 2 x 7 x 7 map in layer4.

Clips (torchvision's Kinetics recipe: 16 frames at 15 fps): the frame nearest to each
time k / 15 s (k = 0 .. K-1, K = ceil(duration * 15); `extractors/_frames.py`), clip c =
grid frames c * hop_frames .. c * hop_frames + 15, hop_frames 16 = consecutive, non-overlapping
(as the reference data); the trailing partial clip is dropped (`last_clip: pad` repeats
the last frame instead). A video shorter than one clip (K < 16, under 16/15 s) becomes
one clip padded by repeating its last frame (`short_video: pad`, with a warning), or is
noted as skipped with the reason (`short_video: skip`). Timestamps: clip centres,
t[c] = (c * hop_frames + 8) / 15 s.

Preprocessing: torchvision's `R3D_18_Weights.KINETICS400_V1.transforms()`
(`VideoClassification(crop_size=(112, 112), resize_size=(128, 171))`) on RGB frames as
PyAV decodes them (`media.FrameChunk.rgb`, FFmpeg's default YUV -> RGB):
  resize every frame to 128 x 171 whatever its aspect ratio: bilinear, align_corners
      False, antialias False (hard-coded in torchvision), on float32, then rounded
      (half to even) back to uint8;
  centre crop 112 x 112 (top 8, left 30); float32 / 255; (x - mean) / std per channel,
      mean (0.43216, 0.394666, 0.37645), std (0.22803, 0.22145, 0.216989); (N, C, T, H, W).

Weights: `r3d_18-b3b3357e.pth` (KINETICS400_V1, BSD-3-Clause like torchvision) from
download.pytorch.org, looked up in a `weights:` path, this toolkit's cache, then torch
hub's cache ($TORCH_HOME/hub/checkpoints), else downloaded. torchvision publishes only the
first 8 hex digits of its sha256 (in the name); they are checked wherever the file is found.
"""

from __future__ import annotations

import warnings
from typing import Any

import numpy as np

from embedkit import weights
from embedkit.extractors._frames import FrameGrid, Pick, pick_rgb
from embedkit.extractors.base import Features, OutputSpec, Param, SkipFile, TorchExtractor, TorchModule
from embedkit.extractors.base import lazy_import, pooling_param

torch = lazy_import("torch")
nn = lazy_import("torch.nn")

EMBEDDING_DIM = 512
CLIP_FPS = 15  # frames per second of the clip grid
CLIP_FRAMES = 16  # frames per clip
RESIZE = (128, 171)  # (height, width) every frame is resized to, aspect ratio ignored
CROP = 112
CROP_TOP = int(round((RESIZE[0] - CROP) / 2.0))  # 8
CROP_LEFT = int(round((RESIZE[1] - CROP) / 2.0))  # 30 (29.5 rounds half to even)
MEAN = (0.43216, 0.394666, 0.37645)  # Kinetics RGB mean and std (torchvision's VideoClassification)
STD = (0.22803, 0.22145, 0.216989)
LAYERS = ((64, 1), (128, 2), (256, 2), (512, 2))  # (channels, stride of the first block)
BN_EPS = 1e-5
NUM_CLASSES = 400

WEIGHTS_FILE = "r3d_18-b3b3357e.pth"
WEIGHTS_URL = f"https://download.pytorch.org/models/{WEIGHTS_FILE}"
WEIGHTS_SHA256_PREFIX = "b3b3357e"  # all torchvision publishes (the file name); 127.359 MB
# torchvision's `_ops` for KINETICS400_V1: giga multiply-accumulates per 16 x 112 x 112 clip
GMACS_PER_CLIP = 40.697
WEIGHTS = weights.torchvision_checkpoint(
    WEIGHTS_FILE, WEIGHTS_SHA256_PREFIX, "R3D_18_Weights.KINETICS400_V1",
    builder="torchvision.models.video.r3d_18", example_key="layer1.0.conv1.0.weight",
    trained_on="Kinetics-400")


class ShortVideoWarning(UserWarning):
    """A video shorter than one clip was padded by repeating its last frame."""


# --------------------------------------------------------------------------- network
def _conv_bn(c_in: int, c_out: int, stride: int, relu: bool) -> nn.Sequential:
    layers: list[nn.Module] = [
        nn.Conv3d(c_in, c_out, 3, stride=stride, padding=1, bias=False),
        nn.BatchNorm3d(c_out, eps=BN_EPS),
    ]
    if relu:
        layers.append(nn.ReLU(inplace=True))
    return nn.Sequential(*layers)


class BasicBlock(TorchModule):
    """conv1 (3x3x3, BN, ReLU) -> conv2 (3x3x3, BN) + shortcut -> ReLU (torchvision's video BasicBlock)."""

    def __init__(self, c_in: int, c_out: int, stride: int) -> None:
        super().__init__()
        self.conv1 = _conv_bn(c_in, c_out, stride, relu=True)
        self.conv2 = _conv_bn(c_out, c_out, 1, relu=False)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = None
        if stride != 1 or c_in != c_out:
            self.downsample = nn.Sequential(
                nn.Conv3d(c_in, c_out, 1, stride=stride, bias=False), nn.BatchNorm3d(c_out, eps=BN_EPS)
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.conv2(self.conv1(x))
        shortcut = x if self.downsample is None else self.downsample(x)
        return self.relu(out + shortcut)


class R3D18Net(TorchModule):
    """torchvision's r3d_18: (B, 3, T, H, W) normalised RGB clips -> (B, 512) pooled features.

    num_classes: size of the `fc` classifier kept for loading checkpoints strictly (not
    applied by `forward`); None for a checkpoint without one.
    """

    def __init__(self, num_classes: int | None = NUM_CLASSES) -> None:
        super().__init__()
        self.stem = nn.Sequential(
            nn.Conv3d(3, 64, (3, 7, 7), stride=(1, 2, 2), padding=(1, 3, 3), bias=False),
            nn.BatchNorm3d(64, eps=BN_EPS),
            nn.ReLU(inplace=True),
        )
        c_in = 64
        for i, (c_out, stride) in enumerate(LAYERS, start=1):
            blocks = nn.Sequential(BasicBlock(c_in, c_out, stride), BasicBlock(c_out, c_out, 1))
            setattr(self, f"layer{i}", blocks)
            c_in = c_out
        self.avgpool = nn.AdaptiveAvgPool3d((1, 1, 1))
        self.fc = nn.Linear(EMBEDDING_DIM, num_classes) if num_classes else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stem(x)
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        return torch.flatten(self.avgpool(x), 1)


# --------------------------------------------------------------------------- preprocessing
def _source_index(in_size: int, out_size: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """torch's bilinear source pixels and weights (align_corners False), in float32 as torch computes
    them: (i0, i1, w0, w1) with src = max(fma(in / out, dst + 0.5, -0.5), 0)."""
    f = np.float32
    src = np.maximum(_fma32(f(in_size) / f(out_size), np.arange(out_size, dtype=f) + f(0.5), f(-0.5)), f(0))
    i0 = np.minimum(np.floor(src).astype(np.int64), in_size - 1)
    w1 = np.clip(src - i0.astype(f), f(0), f(1)).astype(f)
    return i0, i0 + (i0 < in_size - 1), (f(1) - w1).astype(f), w1


def _fma32(a: np.ndarray, b: np.ndarray, c: np.ndarray) -> np.ndarray:
    """float32 fused multiply-add a * b + c. The product of two float32 is exact in float64;
    the sum rounds to float64, then to float32. That double rounding can differ from one
    rounding only when the float64 sum falls exactly halfway between two float32 values (not
    seen on 2.6 million values checked against torch)."""
    return (a.astype(np.float64) * b + c).astype(np.float32)


def crop_frames(frames: list[np.ndarray] | np.ndarray) -> np.ndarray:
    """(H, W, 3) uint8 frames -> (n, 112, 112, 3) uint8: torchvision's resize to 128 x 171 and centre crop.

    torchvision runs `F.interpolate(bilinear, align_corners=False, antialias=False)` on float32
    frames and rounds half to even. torch's CPU kernel computes each output as
    fma(h0, fma(w0, a, w1 * b), h1 * fma(w0, c, w1 * d)) in float32, but which kernel runs
    depends on the thread count (one thread takes another loop that rounds ~7 % of the floats
    differently, moving ~3 in a million uint8 pixels). Written out here, the result is the
    reference's (computed with 2 threads) whatever torch's threads; only the 112 x 112 crop is computed.
    """
    out = np.empty((len(frames), CROP, CROP, 3), np.uint8)
    for n, frame in enumerate(frames):
        h, w = frame.shape[:2]
        h0, h1, hw0, hw1 = (a[CROP_TOP:CROP_TOP + CROP] for a in _source_index(h, RESIZE[0]))
        c0, c1, cw0, cw1 = (a[CROP_LEFT:CROP_LEFT + CROP] for a in _source_index(w, RESIZE[1]))
        hw0, hw1 = hw0[:, None, None], hw1[:, None, None]
        cw0, cw1 = cw0[None, :, None], cw1[None, :, None]
        top, bottom = frame[h0].astype(np.float32), frame[h1].astype(np.float32)  # (112, W, 3)
        t0 = _fma32(cw0, top[:, c0], cw1 * top[:, c1])
        t1 = _fma32(cw0, bottom[:, c0], cw1 * bottom[:, c1])
        out[n] = np.rint(_fma32(hw0, t0, hw1 * t1))  # rint: half to even, as torch.round
    return out


def normalize(clips: np.ndarray) -> np.ndarray:
    """(N, T, 112, 112, 3) uint8 -> (N, 3, T, 112, 112) float32: / 255, then (x - mean) / std."""
    x = clips.astype(np.float32) / np.float32(255.0)
    x = (x - np.asarray(MEAN, np.float32)) / np.asarray(STD, np.float32)
    return np.ascontiguousarray(x.transpose(0, 4, 1, 2, 3))


def num_clips(num_grid_frames: int, hop_frames: int, last_clip: str = "drop",
              short_video: str = "pad") -> int:
    """Clips over K grid frames (15 fps): a full clip every `hop_frames`, plus one padded clip
    where the last full clip ends before the video does and the rule says pad."""
    if num_grid_frames <= 0:
        return 0
    if num_grid_frames < CLIP_FRAMES:
        return 1 if short_video == "pad" else 0
    full = (num_grid_frames - CLIP_FRAMES) // hop_frames + 1
    covered = (full - 1) * hop_frames + CLIP_FRAMES
    if last_clip == "pad" and covered < num_grid_frames and full * hop_frames < num_grid_frames:
        full += 1
    return full


# --------------------------------------------------------------------------- plugin
class R3D18(TorchExtractor):
    """R3D-18 (Kinetics-400): videos -> (num_clips, 512) clip embeddings, or (512,) with mean pooling."""

    name = "r3d18"
    modality = "video"
    params = {
        "hop_frames": Param(
            CLIP_FRAMES, int,
            "frames of the 15 fps grid between clip starts: 16 = consecutive clips, 8 = half overlap",
            check=lambda v: v >= 1, allowed="an integer >= 1",
        ),
        "last_clip": Param(
            "drop", str, "the trailing partial clip: drop it (torchvision's clips do) or pad it by "
            "repeating the last frame", choices=("drop", "pad"),
        ),
        "short_video": Param(
            "pad", str, "a video under one clip (16 frames at 15 fps, 1.07 s): pad = one clip repeating "
            "its last frame (with a warning); skip = note the file as skipped, with the reason",
            choices=("pad", "skip"),
        ),
        "pooling": pooling_param("clip", "(num_clips, 512)"),
    }
    weights_file = WEIGHTS
    default_batch_size = 8
    # On the CPU every clip runs alone: oneDNN's 3-D convolutions round differently by batch
    # shape (measured: 1e-7), and batching gains nothing there (40 GMAC per clip keeps the cores
    # busy), so a clip's embedding depends on nothing but the clip.
    cpu_call_size = 1
    cpu_bfloat16 = True  # precision: bfloat16 on CPUs with AVX512-BF16/AMX (BENCHMARKS.md, "bf16 on the CPU")
    about = {
        "model": "torchvision r3d_18 (R3D_18_Weights.KINETICS400_V1), 512-d output of the global "
        "average pool",
        "clips": f"{CLIP_FRAMES} frames at {CLIP_FPS} fps (nearest frame by presentation time)",
        "preprocessing": "bilinear resize to 128x171 (no antialias, rounded to uint8), centre crop "
        "112, /255, Kinetics mean/std (torchvision VideoClassification)",
    }

    def new_network(self, state: dict | None = None) -> R3D18Net:
        return R3D18Net(weights.classifier_size(state, NUM_CLASSES))  # a fine-tuned head loads too

    def embed_clips(self, clips: np.ndarray) -> np.ndarray:
        """(N, 16, 112, 112, 3) uint8 clips -> (N, 512) float32 embeddings."""
        net = self.load().net
        return self.run_batches(normalize(clips), net, (EMBEDDING_DIM,))

    # -- output -----------------------------------------------------------
    def output_spec(self, kind: str = "video") -> OutputSpec:
        if self.config["pooling"] == "mean":
            return OutputSpec(axes=("dim",), timestamp_note="none: mean over the clips")
        hop = self.config["hop_frames"]
        first = (CLIP_FRAMES / 2) / CLIP_FPS
        return OutputSpec(
            axes=("time", "dim"), hop_seconds=hop / CLIP_FPS, first_frame_seconds=first,
            timestamp_note=f"t[i] = {first} + i * {hop} / {CLIP_FPS} s: centre of clip i "
            f"({CLIP_FRAMES} frames at {CLIP_FPS} fps from the first frame)",
        )

    def frame_consumer(self, info: Any) -> "ClipEmbedder":
        return ClipEmbedder(self, info)

    # videos across files: a video's last clips (fewer than one call) share calls with the next
    # videos' (`ClipEmbedder.close` / `finish_with`); clips as the consumer keeps them, uint8
    def forward_items(self, items: np.ndarray) -> np.ndarray:
        return self.embed_clips(items)


class ClipEmbedder:
    """One video through R3D-18: grid frames in, clips out `batch_size` at a time."""

    def __init__(self, plugin: R3D18, info: Any) -> None:
        self.plugin = plugin
        self.hop = plugin.config["hop_frames"]
        self.grid = FrameGrid(CLIP_FPS, getattr(info, "fps", None))
        self.frames: dict[int, np.ndarray] = {}  # grid index -> cropped frame, while a clip needs it
        self.next_clip = 0  # index of the next clip to cut
        self.pending: list[np.ndarray] = []  # clips waiting for a full batch
        self.embeddings: list[np.ndarray] = []

    def add(self, chunk: Any) -> None:
        self._take(self.grid.add(chunk))

    def _take(self, picks: list[Pick]) -> None:
        first_needed = self.next_clip * self.hop
        picks = [p for p in picks if p.k >= first_needed]  # hop_frames > 16 skips frames
        unique: dict[int, Pick] = {}  # a frame nearest to several grid times is cropped once
        for p in picks:
            unique.setdefault(p.index, p)
        crops = dict(zip(unique, crop_frames(pick_rgb(list(unique.values())))))
        for p in picks:
            self.frames[p.k] = crops[p.index]
        self._cut()

    def _clip(self, start: int, stop: int) -> np.ndarray:
        """(16, 112, 112, 3) uint8: grid frames start..stop-1, the last one repeated to 16."""
        frames = [self.frames[k] for k in range(start, stop)]
        return np.stack(frames + [frames[-1]] * (CLIP_FRAMES - len(frames)))

    def _cut(self, final: bool = False, drain: bool = True) -> None:
        """Queue every clip whose frames are all here (at the end, a padded one as configured);
        embed full batches (at the end, everything, unless `drain` is off: `close`)."""
        while (self.next_clip * self.hop + CLIP_FRAMES - 1) in self.frames:
            start = self.next_clip * self.hop
            self.pending.append(self._clip(start, start + CLIP_FRAMES))
            self.next_clip += 1
        if final:
            total, start = self.grid.k, self.next_clip * self.hop
            covered = (self.next_clip - 1) * self.hop + CLIP_FRAMES if self.next_clip else 0
            rule = "last_clip" if self.next_clip else "short_video"
            if covered < total and start < total and self.plugin.config[rule] == "pad":
                self.pending.append(self._clip(start, total))
                self.next_clip += 1
        for k in [k for k in self.frames if k < self.next_clip * self.hop]:
            del self.frames[k]  # no later clip needs them
        size = self.plugin.batch_size
        while len(self.pending) >= size or (final and drain and self.pending):
            batch, self.pending = self.pending[:size], self.pending[size:]
            self.embeddings.append(self.plugin.embed_clips(np.stack(batch)))

    def finish(self) -> Features:
        """(num_clips, 512) float32 and clip-centre timestamps; or (512,) with pooling: mean."""
        self.close(drain=True)
        return self._features()

    def close(self, drain: bool = False) -> np.ndarray:
        """The end of the video: every clip cut and every full batch embedded; the clips left
        (fewer than a batch) are returned, (n, 16, 112, 112, 3) uint8, for the driver to embed
        with other videos' (`finish_with` takes their embeddings)."""
        self._take(self.grid.finish())
        total = self.grid.k  # grid frames in the video (K)
        if total == 0:
            raise ValueError("r3d18: the video gave no frames")
        if total < CLIP_FRAMES:
            seconds = total / CLIP_FPS
            if self.plugin.config["short_video"] == "skip":
                raise SkipFile(
                    f"r3d18: video too short for one clip ({total} frames at {CLIP_FPS} fps, {seconds:.2f} s "
                    f"< {CLIP_FRAMES / CLIP_FPS:.2f} s); set short_video: pad to embed it with its last "
                    "frame repeated"
                )
            warnings.warn(
                f"r3d18: video has {total} frames at {CLIP_FPS} fps ({seconds:.2f} s), under one "
                f"{CLIP_FRAMES}-frame clip; padded by repeating its last frame",
                ShortVideoWarning, stacklevel=2,
            )
        self._cut(final=True, drain=drain)
        left = np.stack(self.pending) if self.pending else np.zeros((0, CLIP_FRAMES, CROP, CROP, 3), np.uint8)
        self.pending = []
        return left

    def finish_with(self, embeddings: np.ndarray) -> Features:
        """The video's Features, `embeddings` being those of the clips `close` returned."""
        self.embeddings.append(np.asarray(embeddings, np.float32).reshape(-1, EMBEDDING_DIM))
        return self._features()

    def _features(self) -> Features:
        data = np.concatenate(self.embeddings) if self.embeddings else np.zeros((0, EMBEDDING_DIM), "float32")
        if self.plugin.config["pooling"] == "mean":
            return Features(data.mean(axis=0, dtype=np.float64).astype(np.float32))
        spec = self.plugin.output_spec("video")
        times = spec.first_frame_seconds + np.arange(data.shape[0], dtype=np.float64) * spec.hop_seconds
        return Features(data, times)
