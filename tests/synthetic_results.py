"""Write arrays in the driver's output layout (features.json from the real OutputSpec, manifest lines)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from embedkit import outputs
from embedkit.extractors.base import OutputSpec


def write_model(
    base: Path,
    model: str,
    arrays: dict[str, np.ndarray],
    spec: OutputSpec,
    extractor: str | None = None,
    extras: dict[str, dict[str, np.ndarray]] | None = None,
    sources: dict[str, str] | None = None,
    seconds: dict[str, float] | None = None,
) -> Path:
    """<base>/<model>/<rel> for each rel -> array, <model>.<extra>/<rel>, features.json, manifest lines.

    sources: rel output -> relative source path (default: rel with .wav); seconds: audio duration.
    """
    extras = extras or {}
    folders = {e: f"{model}.{e}" for e in spec.extra_outputs}
    for rel, a in arrays.items():
        for extra, per_file in extras.items():
            outputs.atomic_save_npy(base / folders[extra] / rel, per_file[rel])
        outputs.atomic_save_npy(base / model / rel, a)
        src = (sources or {}).get(rel, rel[:-4] + ".wav")
        outputs.append_jsonl(
            base / "manifest.jsonl",
            {
                "run": "test",
                "model": model,
                "source": src,
                "output": f"{model}/{rel}",
                "shape": list(a.shape),
                "dtype": str(a.dtype),
                "audio_seconds": (seconds or {}).get(rel, 1.0),
                "source_sample_rate": 16000,
                "written": "now",
            },
        )
    meta = {
        "extractor": extractor or model,
        "output_folder": model,
        "sample_rate": 16000,
        "resampler": "soxr_hq",
        **spec.to_json(),
        "extra_folders": folders,
        "params": {},
    }
    outputs.atomic_write_json(base / model / "features.json", meta)
    return base / model
