"""OpenL3 image embeddings (plugin `openl3_image`): openl3 0.4.2's image network in PyTorch.

OpenL3 trains an audio and an image sub-network together (Look, Listen and Learn:
Arandjelovic & Zisserman 2017; Cramer et al., ICASSP 2019); openl3 publishes one image
network per audio network (`input_repr` x `content_type`, the pair it was trained with).
Output: (embedding_size,) float32 per image (8192 or 512), (N, embedding_size) per video
with each frame's presentation time.

Images are preprocessed as openl3's `_preprocess_image_batch`; video frames as openl3's
`process_video_file` has them (ffmpeg's 256x256 bicubic scale, centre crop, divided by
the video's largest pixel value), streamed so a long video never sits in memory. The
port lives in `embedkit.openl3` (`preprocessing`, `network`, `weightfiles`); this module
is only the plugin.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from embedkit.extractors.base import Features, OutputSpec, Param
from embedkit.extractors.openl3 import OpenL3Network, versions
from embedkit.openl3.network import IMAGE_EMBEDDING_SIZES, VideoEmbedder, image_forward
from embedkit.openl3.preprocessing import (
    CONTENT_TYPES,
    IMAGE_SIZE,
    INPUT_REPRS,
    VIDEO_SIZE,
    preprocess_image_batch,
)


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


NO_FRAMES = "openl3_image: the video has no frames to embed"


def _valid_rate(v: Any) -> bool:
    return v is None or (isinstance(v, float) and np.isfinite(v) and v > 0)


class _FrameConsumer:
    """One video through the plugin: frames scaled as openl3's process_video_file has them."""

    def __init__(self, plugin: OpenL3Image, info: Any) -> None:
        c = plugin.config
        self.rate = c["frame_rate"]
        self.embedder = VideoEmbedder(plugin.load(), c["embedding_size"], plugin.batch_size,
                                      embed=plugin.embed_images)
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
        return self._features(emb)

    def close(self) -> np.ndarray:
        """The end of the video: its frames left (fewer than a batch), as network inputs, for calls
        shared with other videos (`finish_with` takes their embeddings)."""
        try:
            if self.embedder.count == 0:
                raise ValueError(NO_FRAMES)
            return self.embedder.finish_items()
        finally:
            self.embedder.close()

    def finish_with(self, embeddings: np.ndarray) -> Features:
        return self._features(self.embedder.finish_with(embeddings))

    def _features(self, emb: np.ndarray) -> Features:
        if emb.shape[0] == 0:
            raise ValueError(NO_FRAMES)
        return Features(emb, np.concatenate(self.times))


class OpenL3Image(OpenL3Network):
    """OpenL3 image embeddings: (D,) per image, (N, D) per video with each frame's time."""

    name = "openl3_image"
    modality = "image"
    default_batch_size = 16  # images per forward pass (~1.5 GB of activations on CPU)
    # On the CPU one image per call: an image's activations are ~95 MB and more leave the caches
    # (2 cores, 48 files packed, interleaved: calls of 1 at 1.03x one file per forward, of 2 at
    # 0.92x, of 16 at 0.85x; BENCHMARKS.md). Packing still pays on a GPU: batch_size per call.
    cpu_call_size = 1
    about = {"reproduces": "openl3 0.4.2 image network (process_video_file's frame decoding for videos)"}
    params = {
        "input_repr": Param("mel256", str, "which audio network the image network was trained with",
                            choices=INPUT_REPRS),
        "content_type": Param("music", str, "training content of the weights", choices=CONTENT_TYPES),
        "embedding_size": Param(512, int, "embedding dimension", choices=IMAGE_EMBEDDING_SIZES),
        "frame_rate": Param(
            None, (float, type(None)),
            "videos: null embeds every frame (as openl3); a rate keeps the first frame of each "
            "1/frame_rate s",
            check=_valid_rate, allowed="null or a number of frames per second > 0",
        ),
        "video_frames": Param(True, bool, "also embed the frames of video files"),
    }

    def embed_images(self, x: np.ndarray) -> np.ndarray:
        """(B, 224, 224, 3) float32 preprocessed images -> (B, embedding_size) float32,
        `batch_size` per network call."""
        net, size = self.load().net, self.config["embedding_size"]
        return self.run_batches(np.asarray(x, np.float32), lambda b: image_forward(net, b, size), (size,))

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
        return self.extract_images([self.prepare_image(rgb)])[0]

    def extract_images(self, prepared: list[np.ndarray]) -> list[Features]:
        """Preprocessed images of several files -> (embedding_size,) float32 each, `batch_size`
        per network call (an image's vector is bitwise the same in any batch on this project's
        CPUs: tests/test_batching.py)."""
        return [Features(row.copy()) for row in self.embed_images(np.stack(prepared))]

    def prepare_image(self, rgb: np.ndarray) -> np.ndarray:
        """(H, W, 3) image -> its (224, 224, 3) float32 network input, preprocessed alone (openl3
        scales a batch by its largest value: one image per call keeps each file's own).

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
        x = preprocess_image_batch(rgb, warn=False)[0]  # an all-black image is a valid input here
        return x.astype(np.float32)  # what embed_images would make of it (half the memory waiting)

    def frame_consumer(self, info: Any) -> _FrameConsumer:
        return _FrameConsumer(self, info)

    # videos across files: a video's last frames (fewer than a call) share calls with the next
    # videos' (`_FrameConsumer.close` / `finish_with`); each already scaled by its own video's peak
    def forward_items(self, items: np.ndarray) -> np.ndarray:
        return self.embed_images(items)

    def provenance(self) -> dict[str, Any]:
        prov = super().provenance()
        prov["versions"] = versions("torch", "numpy", "av", "Pillow", "h5py")
        return prov
