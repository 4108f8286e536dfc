"""Timing and outcome report: per model counts, audio seconds, wall seconds, where time went.

`RunStats` is filled by the run loop; `render()` gives the console table and
`to_json()` what `run_report.json` holds.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any


@dataclass
class ModelStats:
    ok: int = 0
    failed: int = 0
    skipped: int = 0  # already complete when the run planned its work
    claimed_elsewhere: int = 0  # held or finished by another driver running at the same time
    audio_seconds: float = 0.0
    resample_seconds: float = 0.0
    inference_seconds: float = 0.0
    write_seconds: float = 0.0

    @property
    def wall_seconds(self) -> float:
        """Time spent on this model alone (its resampling share, inference, writing)."""
        return self.resample_seconds + self.inference_seconds + self.write_seconds

    @property
    def realtime_factor(self) -> float | None:
        """Audio seconds processed per wall second (higher is faster)."""
        return self.audio_seconds / self.wall_seconds if self.wall_seconds > 0 else None


@dataclass
class RunStats:
    models: dict[str, ModelStats] = field(default_factory=dict)
    files_total: int = 0
    files_decoded: int = 0
    decode_seconds: float = 0.0
    audio_seconds_decoded: float = 0.0
    wall_seconds: float = 0.0
    waited_for_input_seconds: float = 0.0  # main loop idle, waiting for the decoder
    failures: list[dict[str, Any]] = field(default_factory=list)
    interrupted: str | None = None

    def model(self, name: str) -> ModelStats:
        return self.models.setdefault(name, ModelStats())

    def add_failure(self, file: str, model: str, exc: BaseException | str, when: str, cause: str | None = None) -> None:
        """Record one failure; `cause` overrides the exception's own last message line."""
        if isinstance(exc, BaseException):
            exception = type(exc).__name__
            lines = str(exc).strip().splitlines()
            cause = cause or (lines[-1] if lines else exception)
        else:
            exception, cause = "Error", cause or exc
        self.failures.append({"file": file, "model": model, "stage": when, "exception": exception, "cause": cause})

    def to_json(self) -> dict[str, Any]:
        models = {}
        for name, m in self.models.items():
            d = asdict(m)
            d["wall_seconds"] = round(m.wall_seconds, 4)
            d["realtime_factor"] = None if m.realtime_factor is None else round(m.realtime_factor, 3)
            models[name] = d
        return {
            "files_total": self.files_total,
            "files_decoded": self.files_decoded,
            "audio_seconds_decoded": round(self.audio_seconds_decoded, 3),
            "wall_seconds": round(self.wall_seconds, 4),
            "decode_seconds": round(self.decode_seconds, 4),
            "waited_for_input_seconds": round(self.waited_for_input_seconds, 4),
            "interrupted": self.interrupted,
            "models": models,
            "failures": self.failures,
        }

    def render(self) -> str:
        head = f"{'model':<16}{'ok':>6}{'failed':>8}{'skipped':>9}{'audio s':>10}{'wall s':>9}{'x RT':>8}" \
               f"{'resample':>10}{'infer':>9}{'write':>8}"
        rows = [head, "-" * len(head)]
        for name, m in self.models.items():
            rtf = f"{m.realtime_factor:.1f}" if m.realtime_factor else "-"
            rows.append(
                f"{name:<16}{m.ok:>6}{m.failed:>8}{m.skipped:>9}{m.audio_seconds:>10.1f}{m.wall_seconds:>9.2f}"
                f"{rtf:>8}{m.resample_seconds:>10.2f}{m.inference_seconds:>9.2f}{m.write_seconds:>8.2f}"
            )
        rows.append("-" * len(head))
        rows.append(
            f"files: {self.files_total}, decoded: {self.files_decoded} ({self.audio_seconds_decoded:.1f} s of audio) "
            f"in {self.decode_seconds:.2f} s (overlapped with inference); run wall time {self.wall_seconds:.2f} s; "
            f"waiting for input {self.waited_for_input_seconds:.2f} s"
        )
        if self.failures:
            rows.append(f"{len(self.failures)} failure(s):")
            for f in self.failures[:20]:
                rows.append(f"  {f['model']}: {f['file']}: {f['exception']}: {f['cause']}")
            if len(self.failures) > 20:
                rows.append(f"  ... {len(self.failures) - 20} more in failures.json")
        claimed = sum(m.claimed_elsewhere for m in self.models.values())
        if claimed:
            rows.append(f"{claimed} output(s) were being computed by another driver (see its report)")
        if self.interrupted:
            rows.append(f"interrupted by {self.interrupted}: rerun the same command to finish the rest")
        return "\n".join(rows)
