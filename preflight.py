"""The preflight (`run_extraction.py --decode_only`): will this collection go through, and how fast
can this machine's CPUs feed the models?

Every file the configured models take is decoded and resampled exactly as a run does (video:
every frame decoded), in the run's decode workers; no model is loaded (so it works before the
weights are fetched), nothing is claimed and no array or manifest line is written. What it
gives (`FeedStats`):

- every bad file with its cause (for all models, or for the models whose input failed);
- the feed rate per stage, from the time each stage took per file (summed over the workers, so
  one core's rate): decode (audio seconds per second; images per second), each resampling
  (rate, method, precision, dtype), video frames;
- per model: the rate one core feeds it (decode + its resampling), and what the whole run fed
  it per wall second with its workers: the CPU side's ceiling for that model.

Written to `<output_base>/decode_only_report.json` (only that file: no model folder, lease or
manifest, so readers of the output folder and resuming runs see nothing of it) and shown on stdout.
"""

from __future__ import annotations

from collections import defaultdict
from typing import Any

from embedkit import audio_io

REPORT_NAME = "decode_only_report.json"


def _key_name(key: tuple) -> str:
    rate, method, precision, dtype = key
    out = f"{rate} Hz {method}" + (f" {precision}" if precision else "")
    return out + (f" -> {dtype}" if dtype != "float32" else "")


def _cause(exc: BaseException) -> str:
    lines = str(exc).strip().splitlines()
    return lines[0] if lines else type(exc).__name__


def _rate(amount: float, seconds: float) -> float | None:
    return round(amount / seconds, 2) if seconds > 0 else None


class FeedStats:
    """What the preflight counts, file by file (`add`), and its report (`to_json`, `render`)."""

    def __init__(self, jobs: list, workers: int) -> None:
        self.jobs = jobs
        self.workers = workers
        self.files = 0
        self.bad: list[dict[str, str]] = []  # {file, model ("(all)" for every model), cause}
        self.audio_seconds = 0.0
        self.decode_seconds = 0.0  # audio files and tracks, without resampling
        self.images = 0
        self.image_seconds = 0.0
        self.frames = 0
        self.frame_seconds = 0.0
        self.resample: dict[tuple, list[float]] = defaultdict(lambda: [0.0, 0.0])  # key -> [audio s, s]
        self.model: dict[str, dict[str, float]] = {j.alias: defaultdict(float) for j in jobs}
        self.wall_seconds = 0.0

    def add(self, work: Any) -> None:
        """One decoded file (a `pipeline._Work`): its bad inputs and its stage times."""
        item, m = work.item, work.media
        self.files += 1
        src = item.source.as_posix()
        if m is None:
            return
        if m.error is not None:
            self.bad.append({"file": src, "model": "(all)", "exception": type(m.error).__name__,
                             "cause": _cause(m.error)})
            return
        resampled = sum(m.resample_seconds.values())
        stage = max(0.0, work.decode_seconds - resampled - m.frames_seconds)
        if item.kind == "image":
            self.images += 1
            self.image_seconds += stage
        if m.decoded_audio:
            self.audio_seconds += m.duration_seconds
            self.decode_seconds += stage
            for key, seconds in m.resample_seconds.items():
                self.resample[key][0] += m.duration_seconds
                self.resample[key][1] += seconds
        if m.frames_decoded or m.frames_error is not None:
            self.frames += m.frames_decoded
            self.frame_seconds += m.frames_seconds
        for job in work.jobs:
            ex, per = job.extractor, self.model[job.alias]
            if job.error:
                continue
            if ex.modality == "audio":
                if item.kind == "video" and not m.has_audio:
                    continue  # a run skips it the same way: not a bad file
                try:
                    m.audio(*ex.resample_key)  # done in the decoder: a failure raises it again here
                except Exception as exc:
                    self._bad(src, job.alias, exc)
                    continue
                key = audio_io.resample_key(*ex.resample_key)
                per["audio_seconds"] += m.duration_seconds
                per["seconds"] += stage + m.resample_seconds.get(key, 0.0)
            elif item.kind == "image":
                per["images"] += 1
                per["seconds"] += stage
            elif m.has_video:
                if m.frames_error is not None:
                    self._bad(src, job.alias, m.frames_error)
                    continue
                per["frames"] += m.frames_decoded
                per["seconds"] += m.frames_seconds

    def _bad(self, src: str, alias: str, exc: BaseException) -> None:
        same = [b for b in self.bad if b["file"] == src and b["cause"] == _cause(exc)]
        if same:  # one line per file and cause, naming every model it fails
            same[0]["model"] += f", {alias}"
            return
        self.bad.append({"file": src, "model": alias, "exception": type(exc).__name__,
                         "cause": _cause(exc)})

    @property
    def bad_files(self) -> list[str]:
        return list(dict.fromkeys(b["file"] for b in self.bad))

    def to_json(self) -> dict[str, Any]:
        wall = self.wall_seconds
        stages: dict[str, Any] = {}
        if self.audio_seconds:
            stages["decode audio"] = {
                "audio_seconds": round(self.audio_seconds, 3), "seconds": round(self.decode_seconds, 4),
                "audio_seconds_per_second": _rate(self.audio_seconds, self.decode_seconds)}
        if self.images:
            stages["decode images"] = {"images": self.images, "seconds": round(self.image_seconds, 4),
                                       "images_per_second": _rate(self.images, self.image_seconds)}
        if self.frames:
            stages["decode video frames"] = {"frames": self.frames, "seconds": round(self.frame_seconds, 4),
                                             "frames_per_second": _rate(self.frames, self.frame_seconds)}
        for key, (audio, seconds) in sorted(self.resample.items(), key=lambda kv: str(kv[0])):
            stages[f"resample {_key_name(key)}"] = {
                "audio_seconds": round(audio, 3), "seconds": round(seconds, 4),
                "audio_seconds_per_second": _rate(audio, seconds)}
        models = {}
        for alias, per in self.model.items():
            out: dict[str, Any] = {}
            for what in ("audio_seconds", "images", "frames"):
                if per.get(what):
                    out[what] = round(per[what], 3)
                    out[f"{what}_per_second_one_core"] = _rate(per[what], per["seconds"])
                    out[f"{what}_per_second_this_run"] = _rate(per[what], wall)
            models[alias] = out
        return {"decode_only": True, "files": self.files, "decode_workers": self.workers,
                "wall_seconds": round(wall, 3),
                "audio_seconds_per_second_this_run": _rate(self.audio_seconds, wall),
                "stages": stages, "models": models,
                "bad_files": len(self.bad_files), "bad": self.bad,
                "note": "stage and one-core rates: each stage's time summed over the workers; this_run: "
                        "per wall second of this run, with its workers"}

    def render(self) -> str:
        data = self.to_json()
        workers = f"{self.workers} decode worker(s)" if self.workers else "in-process decoding"
        lines = [f"decode only: {self.files} file(s) in {self.wall_seconds:.1f} s ({workers})", "",
                 f"{'stage':<44}{'amount':>14}{'seconds':>10}{'rate (one core)':>22}"]
        for name, st in data["stages"].items():
            if "audio_seconds" in st:
                amount = f"{st['audio_seconds']:.1f} s"
                rate = f"{st['audio_seconds_per_second']} audio s/s"
            elif "images" in st:
                amount, rate = f"{st['images']} images", f"{st['images_per_second']} images/s"
            else:
                amount, rate = f"{st['frames']} frames", f"{st['frames_per_second']} frames/s"
            lines.append(f"{name:<44}{amount:>14}{st['seconds']:>10.2f}{rate:>22}")
        lines += ["", f"{'model fed':<20}{'one core':>24}{'this run (wall)':>24}"]
        for alias, st in data["models"].items():
            units = (("audio_seconds", "audio s/s"), ("images", "images/s"), ("frames", "frames/s"))
            for what, unit in units:
                if what in st:
                    lines.append(f"{alias:<20}{str(st[what + '_per_second_one_core']) + ' ' + unit:>24}"
                                 f"{str(st[what + '_per_second_this_run']) + ' ' + unit:>24}")
            if not st:
                lines.append(f"{alias:<20}{'(no input decoded)':>24}")
        if self.bad:
            lines += ["", f"{len(self.bad_files)} bad file(s):"]
            lines += [f"  {b['file']} [{b['model']}]: {b['exception']}: {b['cause']}" for b in self.bad]
        else:
            lines += ["", "no bad file: every file decodes for every model"]
        return "\n".join(lines)
