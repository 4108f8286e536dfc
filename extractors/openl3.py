"""OpenL3 audio embeddings (plugin `openl3`): openl3 0.4.2's numbers in PyTorch, without TensorFlow.

OpenL3 (Cramer et al., "Look, Listen and Learn More: Design Choices for Deep Audio
Embeddings", ICASSP 2019) embeds 1 s windows of 48 kHz audio with an L3-Net audio
sub-network: a dB spectrogram (linear 257 bins, or mel 128/256 bands) -> BatchNorm ->
4 blocks of two 3x3 convolutions -> a max pool whose size sets the embedding size
(512 or 6144). Output per file: (T, embedding_size) float32, one row per window,
timestamps `arange(T) * hop_size`.

The port lives in `embedkit.openl3`: windows and the kapre/librosa front-ends in
`preprocessing`, the network in `network`, the official `.h5` (and torchopenl3 `.pth.tar`)
weight files in `weightfiles`; openl3's own API and command line are `embedkit.openl3`
(docs/openl3.md). This module is only the plugin: parameters, loading, provenance.
"""

from __future__ import annotations

import warnings
from typing import Any

import numpy as np

from embedkit.extractors.base import Extractor, Features, OutputSpec, Param, WeightFile
from embedkit.openl3.network import AUDIO_EMBEDDING_SIZES, LoadedModel, embed_signal
from embedkit.openl3.openl3_warnings import OpenL3Warning
from embedkit.openl3.preprocessing import (
    CONTENT_TYPES,
    FRONTENDS,
    INPUT_REPRS,
    TARGET_SR,
    WINDOW,
    hop_samples,
)
from embedkit.openl3.weightfiles import load_network, official_filename, official_url


def _valid_hop(h: Any) -> bool:
    return isinstance(h, float) and np.isfinite(h) and h > 0 and hop_samples(h) >= 1


class OpenL3(Extractor):
    """OpenL3 audio embeddings, (T, embedding_size) float32 per file."""

    name = "openl3"
    sample_rate = TARGET_SR
    resampler = "kaiser_best"  # what openl3 uses (resampy); soxr_hq is faster, slightly different
    # openl3 reads files with soundfile as float64 and resamples in float64: the kapre
    # front-end's near-floor bins see float32 rounding, so float32 resampling moves
    # embeddings by ~0.5 % (docs/openl3.md).
    resample_precision = "float64"
    weights_license = "CC BY 4.0 (OpenL3 model weights, marl/openl3; code MIT)"
    default_batch_size = 16
    params = {
        "input_repr": Param("mel256", str, "spectrogram fed to the network", choices=INPUT_REPRS),
        "content_type": Param("music", str, "training content of the weights", choices=CONTENT_TYPES),
        "embedding_size": Param(512, int, "embedding dimension", choices=AUDIO_EMBEDDING_SIZES),
        "hop_size": Param(
            0.1, float, "seconds between windows (truncated to whole samples at 48 kHz)",
            check=_valid_hop, allowed="a number of seconds > 0 (at least one sample at 48 kHz)",
        ),
        "center": Param(True, bool, "pad half a window at the start so timestamps are window centres"),
        "frontend": Param("kapre", str, "spectrogram implementation openl3 offers", choices=FRONTENDS),
        "resampler": Param("kaiser_best", str, "resampling to 48 kHz", choices=("kaiser_best", "soxr_hq")),
        "precision": Param(
            "auto", str, "autocast dtype of the network on CUDA: auto = float16 (CPU always float32)",
            choices=("auto", "float16", "bfloat16", "float32"),
        ),
    }

    @property
    def input_dtype(self) -> str:
        # openl3's librosa front-end runs its STFT on the float64 samples soundfile gave it
        return "float64" if self.config["frontend"] == "librosa" else "float32"

    def model_key(self) -> tuple:
        # The same weights serve every embedding size, front-end, hop and centring.
        c = self.config
        return (self.name, self.device, self.weights_path, c["input_repr"], c["content_type"])

    def _load(self) -> LoadedModel:
        c = self.config
        return load_network(c["input_repr"], c["content_type"], self.device, self.weights_path)

    def weight_files(self) -> list[WeightFile]:
        c = self.config
        return [
            WeightFile(
                official_filename(c["input_repr"], c["content_type"]),
                url=official_url(c["input_repr"], c["content_type"]),
                how_to_get="the URL serves it gzipped (unpacked automatically); "
                "or copy it from an installed openl3 package",
            )
        ]

    def output_spec(self, kind: str = "audio") -> OutputSpec:
        hop = self.config["hop_size"]
        where = "window centres" if self.config["center"] else "window starts (openl3's convention)"
        return OutputSpec(
            axes=("time", "dim"),
            hop_seconds=hop,
            first_frame_seconds=0.0,
            timestamp_note=f"t[i] = i * {hop} s: {where}; windows are 1 s long",
        )

    def _extract(self, audio: np.ndarray) -> Features:
        c = self.config
        if audio.size == 0:
            raise ValueError("openl3: empty audio (0 samples)")
        if audio.shape[0] < WINDOW:
            warnings.warn(
                f"openl3: audio is {audio.shape[0] / TARGET_SR:.3f} s, shorter than the 1 s window; "
                "it is zero-padded (as openl3 does)",
                OpenL3Warning,
                stacklevel=2,
            )
        emb, ts = embed_signal(
            self.load(), audio, c["input_repr"], c["embedding_size"], c["hop_size"], c["center"],
            c["frontend"], self.batch_size, "float16" if c["precision"] == "auto" else c["precision"],
        )
        return Features(emb, ts)

    def provenance(self) -> dict[str, Any]:
        import importlib.metadata as md

        prov = super().provenance()
        prov.update(self.load().source)
        versions = {}
        for pkg in ("torch", "numpy", "scipy", "librosa", "resampy", "soxr", "h5py"):
            try:
                versions[pkg] = md.version(pkg)
            except md.PackageNotFoundError:
                versions[pkg] = None
        prov["versions"] = versions
        prov["reproduces"] = "openl3 0.4.2 (kapre 0.4.1 front-end semantics)"
        prov["device"] = str(self.load().device)
        return prov
