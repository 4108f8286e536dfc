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
(docs/openl3.md). This module is only the plugin, on `TorchExtractor` (device, precision,
batching, loading): its parameters and front-end, and `OpenL3Network`, openl3's weight files
and networks as both OpenL3 plugins load them.
"""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any

import numpy as np

from embedkit.extractors.base import Features, OutputSpec, Param, TorchExtractor, WeightFile, lazy_import
from embedkit.openl3 import weightfiles
from embedkit.openl3.network import AUDIO_EMBEDDING_SIZES, audio_forward, embed_signal
from embedkit.openl3.openl3_warnings import OpenL3Warning
from embedkit.openl3.preprocessing import (
    CONTENT_TYPES,
    FRONTENDS,
    INPUT_REPRS,
    TARGET_SR,
    WINDOW,
    hop_samples,
    iter_window_chunks,
    num_windows,
    spectrogram_chunk,
    timestamps,
)

torch = lazy_import("torch")


def _valid_hop(h: Any) -> bool:
    return isinstance(h, float) and np.isfinite(h) and h > 0 and hop_samples(h) >= 1


def versions(*packages: str) -> dict[str, str | None]:
    """Installed versions of `packages` (None where one is missing), for the provenance."""
    import importlib.metadata as md

    found: dict[str, str | None] = {}
    for pkg in packages:
        try:
            found[pkg] = md.version(pkg)
        except md.PackageNotFoundError:
            found[pkg] = None
    return found


class OpenL3Network(TorchExtractor):
    """What the audio and the image plugin share: openl3's weight files for (input_repr,
    content_type) of the plugin's `modality`, found by `weightfiles.find_weights` (its places
    beyond a record's: torchopenl3's names, installed openl3 packages), and the networks in
    channels_last. Every embedding size, hop and front-end shares one loaded network."""

    weights_license = weightfiles.WEIGHTS_LICENSE
    network_params = ("input_repr", "content_type")
    # precision: bfloat16 on CPUs with AVX512-BF16/AMX, for the audio and the image network
    # (fidelity and speed-up per network in BENCHMARKS.md, "bf16 on the CPU")
    cpu_bfloat16 = True

    def weights_record(self) -> WeightFile:
        c = self.config
        return weightfiles.official_record(c["input_repr"], c["content_type"], self.modality)

    def checkpoint_path(self) -> Path:
        c = self.config
        return weightfiles.find_weights(c["input_repr"], c["content_type"], self.weights_path,
                                        modality=self.modality)

    def random_network(self) -> Any:
        return weightfiles.random_network(self.modality)

    def network_from(self, path: Path) -> Any:
        return weightfiles.network_from(path, self.modality, self.config["input_repr"],
                                        self.config["content_type"])

    def weights_source(self, path: Path) -> dict[str, Any]:
        return weightfiles.weights_source(path, self.config["input_repr"], self.config["content_type"],
                                          self.modality)

    def place(self, net: Any) -> Any:
        return super().place(net).to(memory_format=torch.channels_last)  # faster convolutions, same numbers


class OpenL3(OpenL3Network):
    """OpenL3 audio embeddings, (T, embedding_size) float32 per file."""

    name = "openl3"
    sample_rate = TARGET_SR
    resampler = "kaiser_best"  # what openl3 uses (resampy); soxr_hq is faster, slightly different
    # openl3 reads files with soundfile as float64 and resamples in float64: the kapre
    # front-end's near-floor bins see float32 rounding, so float32 resampling moves
    # embeddings by ~0.5 % (docs/openl3.md).
    resample_precision = "float64"
    default_batch_size = 16  # windows per network call on CUDA
    # One window per call on the CPU: 1.26x faster than calls of 16 on a 30 s file (2 threads,
    # activations stay in cache; BENCHMARKS.md, "Short audio across files"); the same bytes, the
    # network's outputs do not depend on the call's shape here (tests/test_batching.py).
    cpu_call_size = 1
    about = {"reproduces": "openl3 0.4.2 (kapre 0.4.1 front-end semantics)"}
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
    }

    @property
    def input_dtype(self) -> str:
        # openl3's librosa front-end runs its STFT on the float64 samples soundfile gave it
        return "float64" if self.config["frontend"] == "librosa" else "float32"

    def output_spec(self, kind: str = "audio") -> OutputSpec:
        hop = self.config["hop_size"]
        where = "window centres" if self.config["center"] else "window starts (openl3's convention)"
        return OutputSpec(
            axes=("time", "dim"),
            hop_seconds=hop,
            first_frame_seconds=0.0,
            timestamp_note=f"t[i] = i * {hop} s: {where}; windows are 1 s long",
        )

    def embed_spectrograms(self, spec: np.ndarray) -> np.ndarray:
        """(B, F, T) dB spectrograms -> (B, embedding_size) float32, `call_size()` per network call."""
        net, c = self.load().net, self.config
        size = c["embedding_size"]
        return self.run_batches(np.asarray(spec, np.float32),
                                lambda x: audio_forward(net, x, c["input_repr"], size), (size,))

    @staticmethod
    def _check_signal(audio: np.ndarray) -> None:
        if audio.size == 0:
            raise ValueError("openl3: empty audio (0 samples)")
        if audio.shape[0] < WINDOW:
            warnings.warn(
                f"openl3: audio is {audio.shape[0] / TARGET_SR:.3f} s, shorter than the 1 s window; "
                "it is zero-padded (as openl3 does)",
                OpenL3Warning,
                stacklevel=3,
            )

    # short files across files: the windows' spectrograms, made as `embed_signal` makes its one chunk
    def audio_items(self, n_samples: int) -> int | None:
        if n_samples <= 0:
            return None  # `_extract` says what is wrong
        return num_windows(n_samples, hop_samples(self.config["hop_size"]), self.config["center"])

    def prepare_audio(self, audio: np.ndarray) -> tuple[np.ndarray, int]:
        c = self.config
        self._check_signal(audio)
        hop_len = hop_samples(c["hop_size"])
        n = num_windows(audio.shape[0], hop_len, c["center"])
        ((_, segment, starts),) = iter_window_chunks(audio, hop_len, c["center"], n)
        return np.asarray(spectrogram_chunk(segment, starts, c["input_repr"], c["frontend"]), np.float32), n

    def forward_items(self, items: np.ndarray) -> np.ndarray:
        return self.embed_spectrograms(items)

    def finish_audio(self, outputs: np.ndarray, state: int) -> Features:
        return Features(outputs, timestamps(state, self.config["hop_size"]))

    def _extract(self, audio: np.ndarray) -> Features:
        c = self.config
        self._check_signal(audio)
        emb, ts = embed_signal(
            self.load(), audio, c["input_repr"], c["embedding_size"], c["hop_size"], c["center"],
            c["frontend"], self.batch_size, embed=self.embed_spectrograms,
        )
        return Features(emb, ts)

    def provenance(self) -> dict[str, Any]:
        prov = super().provenance()
        prov["versions"] = versions("torch", "numpy", "scipy", "librosa", "resampy", "soxr", "h5py")
        return prov
