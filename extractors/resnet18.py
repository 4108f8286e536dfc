"""ResNet-18 image embeddings (512-d) on torchvision's ImageNet checkpoint, without torchvision.

Network: torchvision's `resnet18` (He et al., "Deep Residual Learning for Image
Recognition", CVPR 2016), written out here with torchvision's exact state-dict keys:
  conv1 7x7 stride 2 pad 3 (no bias) -> bn1 -> ReLU -> maxpool 3x3 stride 2 pad 1
  layer1..layer4: two BasicBlocks each (64, 128, 256, 512 channels; the first block of
      layer2-4 has stride 2 and a 1x1 stride-2 conv + BN `downsample` on its shortcut)
  avgpool (global) -> flatten -> (fc 512 -> 1000, unused here)
BatchNorm eps 1e-5, eval mode. The embedding is the 512-d vector after the global
average pool: the penultimate layer, the input of the classifier. (The embeddings guide
this toolkit follows says "2048-dimensional": that is ResNet-50's penultimate size.)

Preprocessing: torchvision's `ResNet18_Weights.IMAGENET1K_V1.transforms()` on a PIL image
(`ImageClassification(crop_size=224, resize_size=256, bilinear, antialias=True)`):
  resize so the shorter side is 256 and the longer int(256 * long / short) (truncated),
      with Pillow's BILINEAR filter (antialiased: its support widens with the downscale
      factor); no resize when the size is already right;
  centre crop 224 x 224 at top = round((H - 224) / 2), left = round((W - 224) / 2)
      (Python's round: half to even);
  float32 / 255, then (x - mean) / std per channel, mean (0.485, 0.456, 0.406),
      std (0.229, 0.224, 0.225), NCHW.
This is torchvision's PIL path; its tensor path (antialiased bilinear in torch) differs
by at most one uint8 step on some pixels (docs/torchvision_models.md).

Pixels come from `media.load_image` (the one image rule of this toolkit: EXIF orientation
applied, alpha dropped, 16-bit scaled to 8 bits). A torchvision script that does
`Image.open(f).convert("RGB")` ignores EXIF orientation and clips 16-bit samples, so its
embeddings differ from ours exactly on those files (docs/torchvision_models.md).

Video frames (`frame_rate` set): the frame nearest to each time k / frame_rate (see
`extractors/_frames.py`; a frame picked for consecutive times is embedded once), each
preprocessed as an image -> (num_frames, 512) with the frames' presentation times.

Weights: `resnet18-f37072fd.pth` (IMAGENET1K_V1, BSD-3-Clause like torchvision) from
download.pytorch.org, looked up in a `weights:` path, this toolkit's cache, then torch
hub's cache ($TORCH_HOME/hub/checkpoints, where torchvision keeps it), else downloaded;
its sha256 is checked wherever it is found (torchvision checks nothing for a cached file).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from embedkit import weights
from embedkit.extractors._frames import FrameGrid, Pick, pick_rgb
from embedkit.extractors.base import ConfigError, Features, OutputSpec, Param, TorchExtractor, TorchModule
from embedkit.extractors.base import lazy_import, pooling_param

torch = lazy_import("torch")
nn = lazy_import("torch.nn")

EMBEDDING_DIM = 512
RESIZE_SHORT = 256  # shorter side after the resize, pixels
CROP = 224  # centre crop, pixels
MAX_RESIZED_PIXELS = 1 << 26  # above this (a 192 MB RGB copy) only the cropped strip is resized
MEAN = (0.485, 0.456, 0.406)  # ImageNet RGB mean and std (torchvision's ImageClassification)
STD = (0.229, 0.224, 0.225)
# (channels, stride of the first block) of layer1..layer4; two BasicBlocks each
LAYERS = ((64, 1), (128, 2), (256, 2), (512, 2))
BN_EPS = 1e-5
NUM_CLASSES = 1000

WEIGHTS_FILE = "resnet18-f37072fd.pth"
WEIGHTS_URL = f"https://download.pytorch.org/models/{WEIGHTS_FILE}"
# torchvision names the file by its sha256's first 8 hex digits; the full digest (and the
# size, 46,830,571 bytes = torchvision's `_file_size` 44.661 MB) is the one published by
# projects that pin this file; it starts with that prefix.
WEIGHTS_SHA256 = "f37072fd47e89c5e827621c5baffa7500819f7896bbacec160b1a16c560e07ec"
# torchvision's `_ops` for IMAGENET1K_V1: giga multiply-accumulates per 224 x 224 image
GMACS_PER_IMAGE = 1.814
WEIGHTS = weights.torchvision_checkpoint(
    WEIGHTS_FILE, WEIGHTS_SHA256, "ResNet18_Weights.IMAGENET1K_V1", builder="torchvision.models.resnet18",
    example_key="layer1.0.conv1.weight", trained_on="ImageNet-1k")


# --------------------------------------------------------------------------- network
class BasicBlock(TorchModule):
    """Two 3x3 convolutions with BatchNorm and a residual shortcut (torchvision's BasicBlock)."""

    def __init__(self, c_in: int, c_out: int, stride: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(c_in, c_out, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(c_out, eps=BN_EPS)
        self.relu = nn.ReLU(inplace=True)
        self.conv2 = nn.Conv2d(c_out, c_out, 3, stride=1, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(c_out, eps=BN_EPS)
        self.downsample = None
        if stride != 1 or c_in != c_out:
            self.downsample = nn.Sequential(
                nn.Conv2d(c_in, c_out, 1, stride=stride, bias=False), nn.BatchNorm2d(c_out, eps=BN_EPS)
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        shortcut = x if self.downsample is None else self.downsample(x)
        return self.relu(out + shortcut)


class ResNet18Net(TorchModule):
    """torchvision's resnet18: (B, 3, H, W) normalised RGB -> (B, 512) pooled features.

    num_classes: size of the `fc` classifier kept for loading checkpoints strictly (it is
    not applied by `forward`); None for a checkpoint without one.
    """

    def __init__(self, num_classes: int | None = NUM_CLASSES) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 64, 7, stride=2, padding=3, bias=False)
        self.bn1 = nn.BatchNorm2d(64, eps=BN_EPS)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(3, stride=2, padding=1)
        c_in = 64
        for i, (c_out, stride) in enumerate(LAYERS, start=1):
            blocks = nn.Sequential(BasicBlock(c_in, c_out, stride), BasicBlock(c_out, c_out, 1))
            setattr(self, f"layer{i}", blocks)
            c_in = c_out
        self.avgpool = nn.AdaptiveAvgPool2d((1, 1))
        self.fc = nn.Linear(EMBEDDING_DIM, num_classes) if num_classes else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        return torch.flatten(self.avgpool(x), 1)


# --------------------------------------------------------------------------- preprocessing
def resized_size(height: int, width: int, short: int = RESIZE_SHORT) -> tuple[int, int]:
    """(height, width) after torchvision's Resize(short): shorter side `short`, longer truncated."""
    if width <= height:
        return int(short * height / width), short
    return short, int(short * width / height)


def crop_offsets(height: int, width: int, crop: int = CROP) -> tuple[int, int]:
    """(top, left) of torchvision's CenterCrop(crop) (Python's round: half to even)."""
    return int(round((height - crop) / 2.0)), int(round((width - crop) / 2.0))


def crop_image(rgb: np.ndarray) -> np.ndarray:
    """(H, W, 3) uint8 -> (224, 224, 3) uint8: Pillow bilinear resize (shorter side 256), centre crop.

    An image so elongated that the resized copy would exceed MAX_RESIZED_PIXELS (e.g. 1 x 300000,
    which torchvision would scale to 256 x 76800000) has only the columns (rows) the crop keeps
    resized, through Pillow's `box`, in the same two passes (horizontal, then vertical). Pillow
    takes the box as float32 coordinates, so its filter positions move in the last bits: the
    result is within one uint8 step of a full resize (over 40 random elongated shapes, 3.8 %
    of the values differ by one step; 0 on many shapes, up to 25 % on some).
    """
    from PIL import Image

    if rgb.ndim != 3 or rgb.shape[2] != 3 or rgb.dtype != np.uint8:
        raise ValueError(f"resnet18 needs (H, W, 3) uint8 RGB pixels, got {rgb.shape} {rgb.dtype}")
    h, w = rgb.shape[:2]
    new_h, new_w = resized_size(h, w)
    top, left = crop_offsets(new_h, new_w)
    if new_h * new_w > MAX_RESIZED_PIXELS:
        # Pillow resizes horizontally, then vertically; the same two passes, one of them on
        # the kept strip only.
        img = Image.fromarray(rgb)
        if new_w > new_h:
            box = (left * w / new_w, 0, (left + CROP) * w / new_w, h)
            img = img.resize((CROP, h), Image.BILINEAR, box=box)
            img = img.resize((CROP, new_h), Image.BILINEAR) if new_h != h else img
            left = 0
        else:
            img = img.resize((new_w, h), Image.BILINEAR) if new_w != w else img
            box = (0, top * h / new_h, new_w, (top + CROP) * h / new_h)
            img = img.resize((new_w, CROP), Image.BILINEAR, box=box)
            top = 0
        rgb = np.asarray(img)
    elif (new_h, new_w) != (h, w):
        rgb = np.asarray(Image.fromarray(rgb).resize((new_w, new_h), Image.BILINEAR))
    return rgb[top:top + CROP, left:left + CROP]


def normalize(crops: np.ndarray) -> np.ndarray:
    """(N, 224, 224, 3) uint8 -> (N, 224, 224, 3) float32: / 255, then (x - mean) / std per channel.
    (Kept channels-last: the network runs in torch's channels_last memory format.)"""
    x = crops.astype(np.float32) / np.float32(255.0)
    return (x - np.asarray(MEAN, np.float32)) / np.asarray(STD, np.float32)


def preprocess(rgb: np.ndarray) -> np.ndarray:
    """(H, W, 3) uint8 -> (3, 224, 224) float32: the network input torchvision's transforms make."""
    return np.ascontiguousarray(normalize(crop_image(rgb)[None])[0].transpose(2, 0, 1))


# --------------------------------------------------------------------------- plugin
class ResNet18(TorchExtractor):
    """ResNet-18 (ImageNet-1k): images -> (512,); with `frame_rate`, video frames -> (num_frames, 512).

    The network and its input are in channels_last memory format (1.3x faster convolutions on the
    CPU; outputs within 5e-7 of the default layout). Images and a video's frames go `batch_size`
    per call (on the CPU at most 8: `cpu_call_size`); the driver packs the images of consecutive
    image files (`extract_images`) and the last frames of consecutive videos into shared calls. On
    this project's CPUs (oneDNN, AVX-512) an image's vector was measured bitwise the same alone
    or at any position of a batch of 2 to 40, at 1 and 2 threads, so a file's output does not
    depend on its companions (tests/test_batching.py checks it on the machine it runs on).
    """

    name = "resnet18"
    modality = "image"
    params = {
        "frame_rate": Param(
            None, (float, type(None)),
            "also embed video frames: the frame nearest to every 1 / frame_rate s; null = images only",
            check=lambda v: v is None or v > 0, allowed="null or a number of frames per second > 0",
        ),
        "pooling": pooling_param("video frame", "(num_frames, 512)"),
    }
    weights_file = WEIGHTS
    default_batch_size = 32
    # On the CPU calls of 8 images: 1.6x one per call on the AMD EPYC (2 threads), where calls of
    # 32 gave 1.35x (their activations leave the caches); the bytes do not depend on it (above).
    cpu_call_size = 8
    cpu_bfloat16 = True  # precision: bfloat16 on CPUs with AVX512-BF16/AMX (BENCHMARKS.md, "bf16 on the CPU")
    about = {
        "model": "torchvision resnet18 (ResNet18_Weights.IMAGENET1K_V1), 512-d output of the global "
        "average pool",
        "preprocessing": "Pillow bilinear resize shorter side 256 (int-truncated longer side), centre "
        "crop 224, /255, ImageNet mean/std (torchvision ImageClassification, PIL path)",
    }

    @classmethod
    def check_combination(cls, config: dict[str, Any]) -> None:
        if config["pooling"] != "none" and config["frame_rate"] is None:
            raise ConfigError(
                "resnet18: pooling applies to video frames; set frame_rate too (e.g. frame_rate: 1)"
            )

    def takes_video_frames(self) -> bool:
        return self.config["frame_rate"] is not None

    def new_network(self, state: dict | None = None) -> ResNet18Net:
        return ResNet18Net(weights.classifier_size(state, NUM_CLASSES))  # a fine-tuned head loads too

    def place(self, net: ResNet18Net) -> ResNet18Net:
        return net.eval().to(self.device, memory_format=torch.channels_last)

    def embed_crops(self, crops: np.ndarray) -> np.ndarray:
        """(N, 224, 224, 3) uint8 crops -> (N, 512) float32, `batch_size` at a time."""
        net = self.load().net
        # NHWC memory seen as NCHW: the channels_last layout the network runs in
        return self.run_batches(normalize(crops), lambda x: net(x.permute(0, 3, 1, 2)), (EMBEDDING_DIM,))

    # -- output -----------------------------------------------------------
    def output_spec(self, kind: str = "image") -> OutputSpec:
        if kind != "video":
            return OutputSpec(axes=("dim",), timestamp_note="none: one vector per image")
        rate = self.config["frame_rate"]
        if self.config["pooling"] == "mean":
            return OutputSpec(axes=("dim",), timestamp_note=f"none: mean over the frames picked at {rate}/s")
        return OutputSpec(
            axes=("time", "dim"), timestamps_file=True,
            timestamp_note=f"presentation time of each embedded frame (nearest to k / {rate} s; "
            "a frame nearest to several grid times appears once)",
        )

    def extract_image(self, rgb: np.ndarray) -> Features:
        """(H, W, 3) uint8 RGB -> (512,) float32."""
        return self.extract_images([self.prepare_image(rgb)])[0]

    def prepare_image(self, rgb: np.ndarray) -> np.ndarray:
        """(H, W, 3) uint8 RGB -> its (224, 224, 3) uint8 crop (what waits for a batch: 150 kB)."""
        return crop_image(np.asarray(rgb))

    def extract_images(self, prepared: list[np.ndarray]) -> list[Features]:
        """Crops of several images (of several files) -> (512,) float32 each, `batch_size` per call."""
        out = self.embed_crops(np.stack(prepared))
        return [Features(row.copy()) for row in out]

    # videos across files: a video's last frames (fewer than a call) share calls with the next
    # videos' (`FrameEmbedder.close` / `finish_with`); crops as the consumer keeps them, uint8
    def forward_items(self, items: np.ndarray) -> np.ndarray:
        return self.embed_crops(items)

    def frame_consumer(self, info: Any) -> "FrameEmbedder":
        if self.config["frame_rate"] is None:
            raise ValueError("resnet18: video frames need frame_rate (e.g. frame_rate: 1)")
        return FrameEmbedder(self, info)


class FrameEmbedder:
    """One video's frames at `frame_rate` through ResNet-18, `batch_size` frames at a time."""

    def __init__(self, plugin: ResNet18, info: Any) -> None:
        self.plugin = plugin
        self.grid = FrameGrid(plugin.config["frame_rate"], getattr(info, "fps", None))
        self.crops: list[np.ndarray] = []
        self.times: list[float] = []
        self.embeddings: list[np.ndarray] = []
        self._last_index: int | None = None

    def add(self, chunk: Any) -> None:
        self._take(self.grid.add(chunk))

    def _take(self, picks: list[Pick]) -> None:
        fresh = []
        for p in picks:  # a frame nearest to several grid times is embedded once
            if p.index != self._last_index:
                fresh.append(p)
                self._last_index = p.index
        for p, rgb in zip(fresh, pick_rgb(fresh)):
            self.crops.append(crop_image(rgb))
            self.times.append(p.pts)
        while len(self.crops) >= self.plugin.batch_size:
            self._run(self.plugin.batch_size)

    def _run(self, n: int) -> None:
        if n:
            self.embeddings.append(self.plugin.embed_crops(np.stack(self.crops[:n])))
            del self.crops[:n]

    def finish(self) -> Features:
        """(num_frames, 512) float32 and (num_frames,) float64 seconds; or (512,) with pooling: mean."""
        return self.finish_with(self.plugin.embed_crops(self.close()))

    def close(self) -> np.ndarray:
        """The end of the video: every full batch embedded; the crops left (fewer than a batch),
        (n, 224, 224, 3) uint8, for calls shared with other videos (`finish_with` takes theirs)."""
        self._take(self.grid.finish())
        if not self.times:
            raise ValueError("resnet18: the video gave no frames to embed")
        left = np.stack(self.crops) if self.crops else np.zeros((0, CROP, CROP, 3), np.uint8)
        self.crops = []
        return left

    def finish_with(self, embeddings: np.ndarray) -> Features:
        """The video's Features, `embeddings` being those of the crops `close` returned."""
        self.embeddings.append(np.asarray(embeddings, np.float32).reshape(-1, EMBEDDING_DIM))
        data = np.concatenate(self.embeddings)
        if self.plugin.config["pooling"] == "mean":
            return Features(data.mean(axis=0, dtype=np.float64).astype(np.float32))
        return Features(data, np.asarray(self.times, dtype=np.float64))
