#!/usr/bin/env python
"""The local engine vs the Ray engine on the same files, and the CPU cost of decoding per file.

    python benchmarks/bench_ray.py                          # 20 files x 10 s, madmom melspec crepe-tiny
    python benchmarks/bench_ray.py --files 20 --seconds 30 --repeats 3 --json benchmarks/results/ray.json
    python benchmarks/bench_ray.py --decode_only            # the decode/resample table alone

Part 1 runs the real command line on one synthetic corpus, alternating (local, local 1 thread,
ray, local, ...) so that all see the same machine load: `run_extraction.py`; the same with
torch, MKL and OpenMP at one thread (`--torch_threads 1`, OMP_NUM_THREADS=MKL_NUM_THREADS=1, as
Ray sets them in its workers); and `run_extraction.py --engine ray` (a local Ray cluster
started by the run, as a user without a cluster gets it).
It reports each command's wall time (process start, Ray start, model loading, the run), the
run's own wall time from run_report.json (model loading included, Ray start excluded), and the
CPU seconds of the whole process tree (Ray's daemons and workers included: on a shared machine
the one figure other load does not distort), and checks that both engines wrote the same bytes.

Part 2 measures what a decode task costs per 30 s file (44.1 kHz stereo WAV) in CPU seconds
(process time, so other load on the machine does not inflate it): decoding, and each model's
resampling: what feeding a GPU's models costs, for the throughput model in BENCHMARKS.md.
Part 1 needs `pip install -r requirements-ray.txt`.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
import _checkout  # noqa: E402,F401  (the checkout as the package embedkit)

from embedkit import audio_io  # noqa: E402

RESAMPLING = {  # model: (rate, method) as each plugin asks for it by default
    "openl3": (48000, "kaiser_best"),
    "crepe": (16000, "kaiser_best"),
    "mert": (24000, "soxr_hq"),
    "clmr": (22050, "soxr_hq"),
    "melspec": (16000, "soxr_hq"),
    "madmom": (44100, "soxr_hq"),
}


def corpus(folder: Path, files: int, seconds: float) -> None:
    import soundfile as sf

    rng = np.random.default_rng(0)
    sr = 44100
    t = np.arange(int(seconds * sr)) / sr
    for i in range(files):
        f0 = 110.0 * 2 ** (i / 12)
        tone = 0.3 * np.sin(2 * np.pi * f0 * t) + 0.1 * np.sin(2 * np.pi * 2 * f0 * t)
        clicks = np.zeros_like(t)
        clicks[:: int(sr * 60 / (90 + 3 * i))] = 0.8
        x = tone + np.convolve(clicks, np.exp(-np.arange(400) / 60.0), mode="same")
        x += 0.01 * rng.standard_normal(t.size)
        stereo = np.stack([x, 0.9 * x], axis=1).astype(np.float32)
        sf.write(folder / f"track_{i:03d}.wav", stereo, sr, subtype="PCM_16")


class TreeCPU:
    """CPU seconds (user + system) of a process and every descendant, Ray's daemons and workers
    included, sampled from /proc every 0.1 s (the last tenth of a second of a process is lost)."""

    def __init__(self, root: int) -> None:
        self.root, self.seen = root, {}  # (pid, start time) -> CPU seconds
        self._tick = os.sysconf("SC_CLK_TCK")
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()

    def _stat(self, pid: int) -> tuple[int, int, float] | None:
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            return None
        return int(fields[1]), int(fields[19]), (int(fields[11]) + int(fields[12])) / self._tick

    def _sample(self) -> None:
        while not self._stop.wait(0.1):
            stats = {int(p): st for p in os.listdir("/proc") if p.isdigit() and (st := self._stat(int(p)))}
            mine = {self.root} | {pid for pid, start in self.seen}
            for pid in sorted(stats):  # parents before children (pids grow)
                ppid, start, cpu = stats[pid]
                if pid in mine or ppid in mine:
                    mine.add(pid)
                    self.seen[(pid, start)] = cpu

    def total(self) -> float:
        self._stop.set()
        self._thread.join()
        return sum(self.seen.values())


def run(args: list[str], env: dict | None = None) -> tuple[float, float, float]:
    """(command wall s, run wall s from the report, CPU s of the whole process tree)."""
    out = Path(args[args.index("--output_base") + 1])
    t0 = time.perf_counter()
    proc = subprocess.Popen([sys.executable, str(ROOT / "run_extraction.py"), "--no_progress", *args],
                            cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env={**os.environ, **(env or {})})
    cpu = TreeCPU(proc.pid)
    _, err = proc.communicate()
    wall = time.perf_counter() - t0
    cpu_s = cpu.total()
    if proc.returncode != 0:
        sys.exit(f"run failed ({proc.returncode}):\n{err[-3000:]}")
    report = json.loads((out / "run_report.json").read_text())
    return wall, report["wall_seconds"], cpu_s


def npy_bytes(folder: Path) -> dict[str, bytes]:
    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in sorted(folder.rglob("*.npy"))}


def engines(ns: argparse.Namespace, work: Path) -> dict:
    audio = work / "audio"
    audio.mkdir(parents=True)
    corpus(audio, ns.files, ns.seconds)
    models = ["--models", *ns.models, "--set", "crepe.capacity=tiny"] if "crepe" in ns.models \
        else ["--models", *ns.models]
    # "local 1 thread": torch, MKL and OpenMP at one thread each, as Ray sets them in its workers
    one = {"OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    variants = {"local": ([], None), "local 1 thread": (["--torch_threads", "1"], one),
                "ray": (["--engine", "ray"], None)}
    rows: dict[str, list] = {v: [] for v in variants}
    for r in range(ns.repeats):
        for engine, (extra, env) in variants.items():
            out = work / f"{engine.replace(' ', '_')}{r}"
            args = ["--audio_dir", str(audio), "--output_base", str(out), *models, *extra]
            wall, run_wall, cpu = run(args, env)
            rows[engine].append({"command_s": round(wall, 2), "run_s": round(run_wall, 2),
                                 "cpu_s": round(cpu, 2), "load_average": round(os.getloadavg()[0], 1)})
            print(f"{engine:>14} #{r}: command {wall:7.2f} s, run {run_wall:7.2f} s, CPU {cpu:7.2f} s "
                  f"(load average {os.getloadavg()[0]:.1f})", flush=True)
    same = npy_bytes(work / "local0") == npy_bytes(work / "ray0") == npy_bytes(work / "local_1_thread0")
    keys = ("command_s", "run_s", "cpu_s")
    med = {e: {k: float(np.median([x[k] for x in v])) for k in keys} for e, v in rows.items()}
    for e, m in med.items():
        print(f"median {e:>14}: command {m['command_s']:.2f} s, run {m['run_s']:.2f} s, "
              f"CPU {m['cpu_s']:.2f} s")
    ratio = {base: {k: med["ray"][k] / med[base][k] for k in keys} for base in ("local", "local 1 thread")}
    for base, rk in ratio.items():
        print(f"ray / {base}: command {rk['command_s']:.2f}, run {rk['run_s']:.2f}, CPU {rk['cpu_s']:.2f}")
    print(f"same bytes: {same}")
    return {"runs": rows, "median": med, "ray_over": ratio, "same_bytes": same}


def decode_costs(work: Path, seconds: float = 30.0, repeats: int = 3) -> dict:
    corpus(work, 1, seconds)
    path = next(work.glob("*.wav"))
    out: dict[str, float] = {}
    decode = []
    for _ in range(repeats):
        t0 = time.process_time()  # CPU seconds: what a decode task costs, whatever else runs
        d = audio_io.load(path)
        decode.append(time.process_time() - t0)
    out["decode"] = min(decode)
    for model, (rate, method) in RESAMPLING.items():
        best = []
        for _ in range(repeats):
            t0 = time.process_time()
            audio_io.resample(d.audio, d.sample_rate, rate, method)
            best.append(time.process_time() - t0)
        out[f"resample {model} ({rate} Hz {method})"] = min(best)
    print(f"CPU seconds per {seconds:.0f} s file (best of {repeats}):")
    for k, v in out.items():
        print(f"  {k:<40} {v:.4f}")
    return {"seconds_per_file": seconds, "cpu_seconds": {k: round(v, 4) for k, v in out.items()}}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--files", type=int, default=20)
    ap.add_argument("--seconds", type=float, default=10.0)
    ap.add_argument("--models", nargs="+", default=["madmom", "melspec", "crepe"])
    ap.add_argument("--repeats", type=int, default=2, help="runs per engine, alternating")
    ap.add_argument("--decode_only", action="store_true")
    ap.add_argument("--json", help="write the results here")
    ns = ap.parse_args()
    result = {"date": time.strftime("%Y-%m-%d"), "machine": f"{platform.processor() or platform.machine()}, "
              f"{len(os.sched_getaffinity(0))} cores", "load_average_at_start": os.getloadavg()[0],
              "files": ns.files, "seconds": ns.seconds, "models": ns.models}
    work = Path(tempfile.mkdtemp(prefix="bench_ray-"))
    try:
        if not ns.decode_only:
            result["engines"] = engines(ns, work / "engines")
        (work / "decode").mkdir()
        result["decode"] = decode_costs(work / "decode")
    finally:
        shutil.rmtree(work, ignore_errors=True)
    if ns.json:
        Path(ns.json).write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
