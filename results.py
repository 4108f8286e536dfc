"""Read what a run wrote: model folders, features.json, arrays, extras, timestamps, manifest.

Readers (plots, exports) go through this module and nothing else: they read the files the
driver stores (README "Output format") and never reach back into the run loop.

    <output_base>/<model>/<rel>.npy             main array per input file
    <output_base>/<model>/features.json         axes, hop_seconds, first_frame_seconds, columns, ...
    <output_base>/<model>.<extra>/<rel>.npy     second outputs (madmom.beats, crepe.activation)
    <output_base>/<model>.timestamps/<rel>.npy  per-frame times (s) for models whose time axis is irregular
    <output_base>/manifest.jsonl                source -> output, audio_seconds, per array written
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path, PurePosixPath

import numpy as np

# Extra output that holds per-frame timestamps (seconds) when the time axis is irregular.
TIMESTAMPS_EXTRA = "timestamps"


class ResultsError(RuntimeError):
    """The output folder is missing something a reader needs; the message says what to do."""


def model_names(output_base: str | os.PathLike) -> list[str]:
    """Model folders under `output_base` (those holding a features.json), sorted."""
    base = Path(output_base)
    if not base.is_dir():
        raise ResultsError(f"output folder {base} does not exist (give the --output_base of a run)")
    return sorted(p.parent.name for p in base.glob("*/features.json") if not p.parent.name.startswith("."))


@dataclass
class ModelFolder:
    """One model's outputs: `<output_base>/<name>/` with its features.json and extra folders."""

    output_base: Path
    name: str
    meta: dict = field(repr=False)

    @classmethod
    def open(cls, output_base: str | os.PathLike, name: str) -> ModelFolder:
        base = Path(output_base)
        meta_path = base / name / "features.json"
        try:
            meta = json.loads(meta_path.read_text())
        except FileNotFoundError:
            known = ", ".join(model_names(base)) if base.is_dir() else "none"
            raise ResultsError(f"{meta_path} not found: not a model folder (models here: {known})") from None
        except ValueError as exc:
            raise ResultsError(f"{meta_path} is not valid JSON ({exc}); rerun the extraction") from None
        return cls(base, name, meta)

    @property
    def dir(self) -> Path:
        return self.output_base / self.name

    @property
    def extractor(self) -> str:
        return str(self.meta.get("extractor", self.name))

    @property
    def axes(self) -> list[str]:
        return list(self.meta.get("axes") or [])

    @property
    def time_axis(self) -> int | None:
        """Index of the "time" axis in each array, None for pooled outputs."""
        return self.axes.index("time") if "time" in self.axes else None

    @property
    def extras(self) -> list[str]:
        """Second outputs written beside the main one (per-frame timestamps excluded)."""
        return [e for e in self.meta.get("extras") or [] if e != TIMESTAMPS_EXTRA]

    def extra_dir(self, extra: str) -> Path:
        folder = (self.meta.get("extra_folders") or {}).get(extra, f"{self.name}.{extra}")
        return self.output_base / folder

    @property
    def timestamps_from_files(self) -> bool:
        """True when frame times are stored per file in `<model>.timestamps/` (irregular time axis)."""
        rule = self.meta.get("timestamps")
        # OutputSpec(timestamps_file=True) writes "file: <model>.timestamps/..." and lists the extra
        return (isinstance(rule, str) and rule.strip().lower().startswith("file")) or (
            TIMESTAMPS_EXTRA in (self.meta.get("extras") or [])
        )

    def has_timestamp_file(self, rel: PurePosixPath | str) -> bool:
        """An image model's videos carry per-file times even though its images have no time axis."""
        return TIMESTAMPS_EXTRA in (self.meta.get("extra_folders") or {}) and \
            self.extra_path(TIMESTAMPS_EXTRA, rel).is_file()

    @cached_property
    def outputs(self) -> list[PurePosixPath]:
        """Relative paths of every main array (e.g. `dir/song.npy`), sorted.

        Hidden files (temporaries, locks) are skipped; a visible .npy is complete because
        the driver only ever renames whole files into place.
        """
        found: list[PurePosixPath] = []
        for dirpath, dirs, files in os.walk(self.dir):
            dirs[:] = sorted(d for d in dirs if not d.startswith("."))
            rel_dir = Path(dirpath).relative_to(self.dir)
            for name in files:
                if name.endswith(".npy") and not name.startswith("."):
                    found.append(PurePosixPath((rel_dir / name).as_posix()))
        return sorted(found, key=str)

    def path(self, rel: PurePosixPath | str) -> Path:
        return self.dir / rel

    def extra_path(self, extra: str, rel: PurePosixPath | str) -> Path:
        return self.extra_dir(extra) / rel

    def load(self, rel: PurePosixPath | str, mmap: bool = False) -> np.ndarray:
        return np.load(self.path(rel), mmap_mode="r" if mmap else None, allow_pickle=False)

    def load_extra(self, extra: str, rel: PurePosixPath | str) -> np.ndarray | None:
        """The extra array of one file, None when it was not written."""
        p = self.extra_path(extra, rel)
        return np.load(p, allow_pickle=False) if p.is_file() else None

    def timestamps(self, rel: PurePosixPath | str, n_frames: int) -> np.ndarray | None:
        return timestamps_for(self.dir, rel, n_frames, meta=self.meta)


def timestamps_for(
    model_dir: str | os.PathLike, rel_output: PurePosixPath | str, n_frames: int, meta: dict | None = None
) -> np.ndarray | None:
    """Time in seconds of each of the `n_frames` frames of one output, float64 (n_frames,).

    From `<model>.timestamps/<rel>.npy` when features.json says the times are stored per
    file (irregular time axes: video, images), else from its formula
    `first_frame_seconds + i * hop_seconds`. None when the output has no time axis.
    """
    model_dir = Path(model_dir)
    if meta is None:
        meta = json.loads((model_dir / "features.json").read_text())
    folder = ModelFolder(model_dir.parent, model_dir.name, meta)
    if folder.timestamps_from_files or folder.has_timestamp_file(rel_output):
        p = folder.extra_path(TIMESTAMPS_EXTRA, rel_output)
        if not p.is_file():
            raise ResultsError(
                f"{p} is missing: {model_dir.name} stores frame times per file; rerun the extraction"
            )
        t = np.load(p, allow_pickle=False).astype(np.float64).reshape(-1)
        if t.shape[0] != n_frames:
            raise ResultsError(f"{p} holds {t.shape[0]} times for {n_frames} frames; rerun the extraction")
        return t
    hop = meta.get("hop_seconds")
    if folder.time_axis is None or not hop:
        return None
    return float(meta.get("first_frame_seconds") or 0.0) + np.arange(n_frames, dtype=np.float64) * float(hop)


def read_manifest(output_base: str | os.PathLike) -> dict[tuple[str, str], dict]:
    """(model, output relative to the model folder) -> latest manifest record.

    Later lines win (a rerun with --overwrite appends a new record); unreadable lines
    (a line cut by a crash) are skipped.
    """
    path = Path(output_base) / "manifest.jsonl"
    records: dict[tuple[str, str], dict] = {}
    if not path.is_file():
        return records
    with open(path, encoding="utf-8", errors="surrogateescape") as f:
        for line in f:
            try:
                rec = json.loads(line)
                model, output = rec["model"], rec["output"]
            except (ValueError, KeyError, TypeError):
                continue
            prefix = f"{model}/"
            rel = output.removeprefix(prefix)
            records[(model, rel)] = rec
    return records


def source_of(manifest: dict[tuple[str, str], dict], model: str, rel: PurePosixPath | str) -> str | None:
    """Relative source path (e.g. `dir/song.wav`) of one output, None when the manifest lacks it."""
    rec = manifest.get((model, str(rel)))
    return rec.get("source") if rec else None
