"""The run's report: how every (file, model) ended, per-model counts and timings, where time went.

Every stage of the run loop ends a (file, model) pair as one `Outcome`;
`RunStats.add` counts it. `render()` gives the console table, `to_json()` what
`run_report.json` holds.

Counting rule (the same in the table, the JSON and failures.json):
- ok: outputs written by this run; skipped: already complete when the run
  planned; no input: files the model takes by kind that hold nothing for it
  (a video without an audio track), noted in the manifest;
- failed: files this model did not process because of an error, each listed in
  failures.json; a model that cannot load fails every file it had to do, and
  failures.json lists that load error once, with the number of files;
- claimed: outputs another driver was computing (or finished) meanwhile. A lock from
  another host may be a driver that died less than a lease ago: the run then exits 1
  (work left), as it does when a full disk stopped it.

`files` counts the files some configured model takes (what was processed or found
complete); files of kinds no model takes are counted apart (`files_not_taken`).
failures.json (written by pipeline.update_failures) is the folder's current state; the
report's `failures` are this run's.
"""

from __future__ import annotations

import socket
from collections import Counter
from dataclasses import asdict, dataclass, field
from typing import Any

_HOST = socket.gethostname()


@dataclass
class Outcome:
    """How one (file, model) ended: status "ok" | "failed" | "skipped" | "claimed", with timings."""

    source: str
    model: str
    status: str
    stage: str = ""
    exception: str = ""
    cause: str = ""
    details: str = ""
    notes: list[str] = field(default_factory=list)
    owner: str = ""  # claimed: who holds the output
    shape: tuple | None = None
    media_seconds: float = 0.0
    resample_seconds: float = 0.0
    inference_seconds: float = 0.0
    write_seconds: float = 0.0
    disk_full: str = ""  # the path a write found the disk full at (the run stops)
    forward_passes: int = 0  # network calls made for it (a batch of several files: on its first)
    items_forwarded: int = 0  # items those calls held (images, windows, clips, frames)

    def fail(self, exc: BaseException | str, stage: str, cause: str | None = None) -> None:
        """Mark failed; the cause is the message's first line, the rest goes to `details`."""
        self.status, self.stage = "failed", stage
        if isinstance(exc, BaseException):
            self.exception = type(exc).__name__
            lines = str(exc).strip().splitlines() or [self.exception]
        else:
            self.exception, lines = "Error", (str(exc).strip().splitlines() or ["error"])
        self.cause = cause or lines[0]
        self.details = "\n".join(lines[1:]).strip()

    def to_json(self) -> dict:
        return {k: v for k, v in asdict(self).items() if v not in ("", None, [], 0.0)}


@dataclass
class ModelStats:
    ok: int = 0
    failed: int = 0
    skipped: int = 0  # already complete when the run planned its work
    no_input: int = 0  # files of a kind it takes but without anything for it (a silent video)
    claimed_elsewhere: int = 0  # held or finished by another driver running at the same time
    not_loaded: str = ""  # the load error, when the model could not load
    audio_seconds: float = 0.0
    resample_seconds: float = 0.0
    inference_seconds: float = 0.0
    write_seconds: float = 0.0
    forward_passes: int = 0  # network calls (TorchExtractor.run_batches); 0 for models without one
    items_forwarded: int = 0

    @property
    def items_per_forward(self) -> float | None:
        """Mean items per network call: whether the device was fed (None: no network call)."""
        return round(self.items_forwarded / self.forward_passes, 2) if self.forward_passes else None

    @property
    def wall_seconds(self) -> float:
        """Time spent on this model alone (its resampling share, inference, writing)."""
        return self.resample_seconds + self.inference_seconds + self.write_seconds

    @property
    def realtime_factor(self) -> float | None:
        """Media seconds processed per wall second (higher is faster)."""
        if self.wall_seconds > 0 and self.audio_seconds:
            return self.audio_seconds / self.wall_seconds
        return None


@dataclass
class RunStats:
    models: dict[str, ModelStats] = field(default_factory=dict)
    files_total: int = 0
    files_by_kind: dict[str, int] = field(default_factory=lambda: {"audio": 0, "video": 0, "image": 0})
    files_decoded: int = 0
    decode_seconds: float = 0.0
    audio_seconds_decoded: float = 0.0
    wall_seconds: float = 0.0
    waited_for_input_seconds: float = 0.0  # main loop idle, waiting for the decoder
    failures: list[dict[str, Any]] = field(default_factory=list)
    notes: int = 0  # notes written to the manifest (e.g. "input shorter than one window, padded")
    note_examples: list[str] = field(default_factory=list)
    claimed_by: Counter = field(default_factory=Counter)
    claimed_by_other_hosts: int = 0  # outputs locked by a driver on another host (work may be left)
    interrupted: str | None = None
    files_not_taken: dict[str, int] = field(default_factory=dict)  # kind -> files no configured model takes
    redo: Counter = field(default_factory=Counter)  # why complete-looking outputs are computed again
    stale_outputs: list[dict[str, str]] = field(default_factory=list)  # under a name no longer current
    disk_full: str | None = None  # where a write found the disk full (the run stopped there)

    @property
    def work_left(self) -> bool:
        """Outputs this run could not do nor vouch for: a full disk, another host's fresh locks."""
        return bool(self.disk_full or self.claimed_by_other_hosts)

    def model(self, name: str) -> ModelStats:
        return self.models.setdefault(name, ModelStats())

    def count_kind(self, kind: str) -> None:
        self.files_by_kind[kind] = self.files_by_kind.get(kind, 0) + 1

    def count_decoded(self, media) -> None:
        if media.decoded_audio:
            self.files_decoded += 1
            self.audio_seconds_decoded += media.duration_seconds

    def model_not_loaded(self, name: str, exc: BaseException) -> None:
        """Record a load failure once; `add` counts the files it costs."""
        out = Outcome("(all files)", name, "failed")
        out.fail(exc, "load")
        self.model(name).not_loaded = f"{out.exception}: {out.cause}"
        self.failures.append({**self._failure(out), "files": 0})

    @staticmethod
    def _failure(o: Outcome) -> dict[str, Any]:
        f = {"file": o.source, "model": o.model, "stage": o.stage, "exception": o.exception, "cause": o.cause}
        if o.details:
            f["details"] = o.details
        return f

    def add(self, o: Outcome) -> None:
        m = self.model(o.model)
        if o.status == "ok":
            m.ok += 1
            m.audio_seconds += o.media_seconds
        elif o.status == "skipped":
            m.no_input += 1
        elif o.status == "claimed":
            m.claimed_elsewhere += 1
            if o.owner != "(finished)":
                self.claimed_by[o.owner] += 1
                if o.owner.rsplit(":", 1)[0] != _HOST:
                    self.claimed_by_other_hosts += 1
        else:
            m.failed += 1
            load = next((f for f in self.failures if f["model"] == o.model and f["stage"] == "load"), None)
            if o.stage == "load" and load is not None:
                load["files"] += 1
            else:
                self.failures.append(self._failure(o))
        if o.status in ("ok", "failed") and o.notes:
            self.notes += len(o.notes)
            for note in o.notes:
                if note not in self.note_examples and len(self.note_examples) < 3:
                    self.note_examples.append(note)
        m.resample_seconds += o.resample_seconds
        m.inference_seconds += o.inference_seconds
        m.write_seconds += o.write_seconds
        m.forward_passes += o.forward_passes
        m.items_forwarded += o.items_forwarded

    @property
    def file_failures(self) -> list[dict[str, Any]]:
        return [f for f in self.failures if f["stage"] != "load"]

    def to_json(self) -> dict[str, Any]:
        models = {}
        for name, m in self.models.items():
            d = asdict(m)
            d["wall_seconds"] = round(m.wall_seconds, 4)
            d["realtime_factor"] = None if m.realtime_factor is None else round(m.realtime_factor, 3)
            d["items_per_forward"] = m.items_per_forward
            models[name] = d
        return {
            "files_total": self.files_total,
            "files_by_kind": self.files_by_kind,
            "files_not_taken": self.files_not_taken,
            "files_decoded": self.files_decoded,
            "audio_seconds_decoded": round(self.audio_seconds_decoded, 3),
            "wall_seconds": round(self.wall_seconds, 4),
            "decode_seconds": round(self.decode_seconds, 4),
            "waited_for_input_seconds": round(self.waited_for_input_seconds, 4),
            "interrupted": self.interrupted,
            "disk_full": self.disk_full,
            "notes": self.notes,
            "claimed_by": dict(self.claimed_by),
            "claimed_by_other_hosts": self.claimed_by_other_hosts,
            "computed_again": dict(self.redo),
            "stale_outputs": self.stale_outputs,
            "models": models,
            "failures": self.failures,
        }

    def render(self) -> str:
        head = f"{'model':<16}{'ok':>6}{'failed':>8}{'skipped':>9}{'media s':>10}{'wall s':>9}{'x RT':>8}" \
               f"{'resample':>10}{'infer':>9}{'write':>8}"
        rows = [head, "-" * len(head)]
        for name, m in self.models.items():
            rtf = f"{m.realtime_factor:.1f}" if m.realtime_factor else "-"
            rows.append(
                f"{name:<16}{m.ok:>6}{m.failed:>8}{m.skipped:>9}{m.audio_seconds:>10.1f}{m.wall_seconds:>9.2f}"
                f"{rtf:>8}{m.resample_seconds:>10.2f}{m.inference_seconds:>9.2f}{m.write_seconds:>8.2f}"
            )
        rows.append("-" * len(head))
        kinds = ", ".join(f"{n} {k}" for k, n in self.files_by_kind.items() if n)
        rows.append(
            f"files: {self.files_total}{f' ({kinds})' if kinds else ''}, decoded: {self.files_decoded} "
            f"({self.audio_seconds_decoded:.1f} s of audio) in {self.decode_seconds:.2f} s (overlapped with "
            f"inference); run wall time {self.wall_seconds:.2f} s; waiting for input "
            f"{self.waited_for_input_seconds:.2f} s"
        )
        fed = [f"{name} {m.forward_passes} ({m.items_per_forward:g} items each)"
               for name, m in self.models.items() if m.forward_passes]
        if fed:
            rows.append(f"forward passes: {', '.join(fed)}")
        if self.files_not_taken:
            left = ", ".join(f"{n} {k}" for k, n in self.files_not_taken.items())
            rows.append(f"not taken by any configured model: {left} file(s)")
        for name, m in self.models.items():
            if m.not_loaded:
                rows.append(f"{name}: not loaded ({m.not_loaded.split(':')[0]}: the reason is printed "
                            f"above and kept in failures.json), {m.failed} file(s) not processed")
            if m.no_input:
                rows.append(f"{name}: {m.no_input} file(s) hold nothing for it (noted in manifest.jsonl)")
        failures = self.file_failures
        if failures:
            rows.append(f"{len(failures)} file failure(s):")
            for f in failures[:20]:
                rows.append(f"  {f['model']}: {f['file']}: {f['exception']}: {_cut(f['cause'])}")
            if len(failures) > 20:
                rows.append(f"  ... {len(failures) - 20} more in failures.json")
        if self.notes:
            rows.append(f"{self.notes} note(s) in manifest.jsonl, e.g. {self.note_examples[0]!r}")
        if self.claimed_by:
            who = ", ".join(f"{owner} x{n}" for owner, n in self.claimed_by.most_common(5))
            rows.append(f"{sum(self.claimed_by.values())} output(s) held by another driver ({who}): "
                        "rerun after it ends, or after its lease expires, to finish them")
        if self.stale_outputs:
            rows.append(f"{len(self.stale_outputs)} output(s) under a name no longer current "
                        "(run_report.json stale_outputs)")
        if self.disk_full:
            rows.append(f"disk full at {self.disk_full}: the run stopped; free space, then rerun the same "
                        "command (it resumes)")
        if self.interrupted:
            rows.append(f"interrupted by {self.interrupted}: rerun the same command to finish the rest")
        return "\n".join(rows)


def _cut(text: str, limit: int = 200) -> str:
    return text if len(text) <= limit else text[: limit - 3] + "..."
