#!/usr/bin/env python
"""Peers, side by side: our plugins against the tools researchers run today, same files, same threads.

    bash benchmarks/setup_peers.sh --openl3-src DIR --crepe-src DIR     # once: one venv per peer
    python benchmarks/peers.py                                         # every group, 3 x 20 s, 3 runs
    python benchmarks/peers.py --groups crepe madmom --files 5 --seconds 30 --repeats 5

Groups (ours first, then the peers it is compared with):
  openl3  our openl3 plugin | openl3 0.4.2 on TensorFlow | torchopenl3        (mel256, 512, hop 0.1, kapre)
  crepe   our crepe plugin  | crepe 0.0.16 on TensorFlow | torchcrepe         (full, 10 ms, Viterbi)
  madmom  our madmom plugin | madmom's RNNBeatProcessor on the file path
  mert    our mert plugin (5 s windows; and one whole-file window) | transformers' HubertModel, as the
          MERT model card's script                                           (95M architecture)
  loop    our driver (run_extraction.py) | the original script's per-file loop (librosa.load at each
          model's rate, our ports as the models, np.save), on openl3 + crepe + madmom + mert

Every run is a fresh process (a worker in benchmarks/peer_workers.py, in the peer's own venv from
setup_peers.sh) on the same synthetic corpus (44.1 kHz stereo WAVs, music-like; throughput.py's),
with the same thread count (OMP/MKL/OpenBLAS/numba/TF intra+inter-op/torch all set to --threads).
Runs are interleaved: repeat r runs each group's members in a rotated order, so a busy machine
slows every member alike. Per run: import time, model load (+ one warm-up run on a 1 s file), the
per-file time (read, resample, run, np.save), and the process's peak RSS (from wait4). Reported:
median seconds per audio second over the repeats, ratio peer / ours, and the largest difference
between the peer's outputs and ours (first repeat) where the two compute the same thing.

Weights: OpenL3 uses the seeded random weights in the official layout
(../shared/reference/openl3_random/, or --openl3-weights); CREPE and madmom their real weights;
MERT a random checkpoint in MERT's format with the 95M architecture (written once, cached in the
peers venv folder). Speed does not depend on the weight values.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(ROOT))
import _checkout  # noqa: E402,F401  (the checkout as the package embedkit)
sys.path.insert(0, str(HERE))

from throughput import cpu_name, make_corpus  # noqa: E402

WORKER = HERE / "peer_workers.py"
ENV_DIR = Path(os.environ.get("PEERS_ENV", HERE / "peers_env"))
REFERENCE = ROOT.parent / "shared" / "reference"

OPENL3 = {"input_repr": "mel256", "embedding_size": 512, "hop_size": 0.1, "frontend": "kapre"}
CREPE = {"capacity": "full", "step_size": 10, "viterbi": True}
GROUPS = ("openl3", "crepe", "madmom", "mert", "loop")


# -- members ----------------------------------------------------------------------------------
def members(group: str, a: argparse.Namespace) -> list[dict]:
    """Runs compared in one group: name, venv (None: ours), worker, params, extra env."""
    tf_env = {"TF_USE_LEGACY_KERAS": "1", "TF_CPP_MIN_LOG_LEVEL": "2"}
    if group == "openl3":
        w = str(a.openl3_weights)
        return [
            {"name": "ours", "worker": "ours",
             "params": {"model": "openl3", "params": {**OPENL3, "weights_path": w}}},
            {"name": "openl3 0.4.2 (TF)", "venv": "openl3", "worker": "openl3_tf",
             "params": {**OPENL3, "weights": w},
             "env": {**tf_env, "PYTHONPATH": str(ENV_DIR / "openl3" / "src")}},
            {"name": "torchopenl3", "venv": "torchopenl3", "worker": "torchopenl3",
             "params": {**OPENL3, "weights": w}},
        ]
    if group == "crepe":
        return [
            {"name": "ours", "worker": "ours",
             "params": {"model": "crepe", "params": {**CREPE, "activations": True}}},
            {"name": "crepe 0.0.16 (TF)", "venv": "crepe", "worker": "crepe_tf", "params": CREPE,
             "env": {**tf_env, "PYTHONPATH": str(ENV_DIR / "crepe" / "src")}},
            {"name": "torchcrepe", "venv": "torchcrepe", "worker": "torchcrepe",
             "params": {"capacity": "full", "step_size": 10, "decoder": "viterbi", "batch_size": 2048}},
        ]
    if group == "madmom":
        return [
            {"name": "ours", "worker": "ours", "params": {"model": "madmom"}},
            {"name": "madmom RNNBeatProcessor", "venv": "madmom", "worker": "madmom", "params": {}},
        ]
    if group == "mert":
        folder = str(mert_checkpoint())
        return [
            {"name": "ours", "worker": "ours",
             "params": {"model": "mert", "params": {"weights_path": folder}}},
            {"name": "ours, one whole-file window", "worker": "ours", "ours_variant": True,
             "params": {"model": "mert", "params": {"weights_path": folder, "window_seconds": 600.0,
                                                    "overlap_seconds": 0.0}}},
            {"name": "transformers HubertModel (model card)", "venv": "mert", "worker": "mert_hf",
             "params": {"folder": folder}},
        ]
    if group == "loop":
        w = str(a.openl3_weights)
        models = {
            "openl3": {"extractor": "openl3", "params": {"weights_path": w}},
            "crepe": {"extractor": "crepe", "params": dict(CREPE)},
            "madmom": {"extractor": "madmom"},
            "mert": {"extractor": "mert", "params": {"weights_path": str(mert_checkpoint())}},
        }
        return [
            {"name": "ours", "driver": True, "models": models},
            {"name": "original per-file loop", "worker": "loop", "params": {"models": models}},
        ]
    raise ValueError(group)


def mert_checkpoint() -> Path:
    """A MERT-format checkpoint folder with the 95M architecture and random weights (cached)."""
    folder = ENV_DIR / "mert_random_95m"
    if (folder / "model.safetensors").exists():
        return folder
    import torch
    from safetensors.torch import save_file
    from transformers import HubertModel

    from embedkit.extractors import mert as M

    cfg = dict(M.KNOWN_CONFIGS[M.DEFAULT_MODEL])
    torch.manual_seed(0)
    model = HubertModel(M.hubert_config(cfg)).eval()
    # MERT's files hold torch's old weight_norm names (weight_g / weight_v), as tests/test_mert.py writes.
    sd = {k.replace("parametrizations.weight.original0", "weight_g")
           .replace("parametrizations.weight.original1", "weight_v"): v.contiguous()
          for k, v in model.state_dict().items()}
    tmp = folder.with_name(folder.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    (tmp / "config.json").write_text(json.dumps(cfg, indent=2))
    (tmp / "preprocessor_config.json").write_text(json.dumps({
        "do_normalize": True, "feature_extractor_type": "Wav2Vec2FeatureExtractor", "feature_size": 1,
        "padding_side": "right", "padding_value": 0, "return_attention_mask": True, "sampling_rate": 24000}))
    save_file(sd, str(tmp / "model.safetensors"))
    shutil.rmtree(folder, ignore_errors=True)
    tmp.rename(folder)
    return folder


# -- running ----------------------------------------------------------------------------------
def thread_env(n: int) -> dict:
    names = ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS", "NUMBA_NUM_THREADS",
             "TF_NUM_INTRAOP_THREADS", "TF_NUM_INTEROP_THREADS")
    return {k: str(n) for k in names}


def spawn(cmd: list[str], env: dict, log: Path, threads: int) -> tuple[float, float, int, str]:
    """Run cmd; (wall seconds, peak RSS MB of the process from wait4, exit status, stdout).

    Every member runs on the same first `threads` CPUs of our affinity mask: run_extraction.py sets
    torch's thread count to the size of that mask (not OMP_NUM_THREADS), so this is what makes
    its thread count equal to the others'.
    """
    cpus = sorted(os.sched_getaffinity(0))[:threads]
    t0 = time.perf_counter()
    with open(log, "w") as err:
        proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=err, cwd=ROOT, text=True,
                                preexec_fn=lambda: os.sched_setaffinity(0, cpus))  # noqa: PLW1509 (no threads here)
        stdout = proc.stdout.read()
        _pid, status, usage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - t0
    proc.returncode = os.waitstatus_to_exitcode(status)
    return wall, usage.ru_maxrss / 1024, proc.returncode, stdout


def run_member(m: dict, files: list[Path], out: Path, a: argparse.Namespace, fidelity: bool) -> dict:
    env = {**os.environ, **thread_env(a.threads), **m.get("env", {})}
    out.mkdir(parents=True, exist_ok=True)
    log = out / "stderr.log"
    if m.get("driver"):
        cfg = out / "config.yaml"
        models = {name: {**spec.get("params", {})} for name, spec in m["models"].items()}
        for settings in models.values():
            w = settings.pop("weights_path", None)
            if w:
                settings["weights"] = w
        cfg.write_text(json.dumps({"models": models, "device": "cpu"}))  # JSON is YAML
        cmd = [sys.executable, str(ROOT / "run_extraction.py"), "--config", str(cfg), "--audio_dir",
               str(files[0].parent), "--output_base", str(out / "driver"), "--overwrite", "--no_progress"]
        wall, rss, rc, _ = spawn(cmd, env, log, a.threads)
        if rc != 0:
            raise RuntimeError(f"{m['name']}: exit {rc}; see {log}:\n{log.read_text()[-2000:]}")
        return {"wall_s": wall, "peak_rss_mb": rss}
    python = sys.executable if not m.get("venv") else str(ENV_DIR / m["venv"] / "bin" / "python")
    cmd = [python, str(WORKER), m["worker"], "--files", *map(str, files), "--out", str(out),
           "--threads", str(a.threads), "--params", json.dumps(m.get("params", {}))]
    if fidelity:
        cmd.append("--fidelity")
    wall, rss, rc, stdout = spawn(cmd, env, log, a.threads)
    if rc != 0:
        raise RuntimeError(f"{m['name']}: exit {rc}; see {log}:\n{log.read_text()[-2000:]}")
    result = json.loads(stdout.strip().splitlines()[-1])
    return {"wall_s": wall, "peak_rss_mb": rss, **result}


def available(m: dict) -> str | None:
    """None when the member can run, else why not."""
    if not m.get("venv"):
        return None
    if not (ENV_DIR / f"{m['venv']}.ok").exists():
        return (f"no environment: run benchmarks/setup_peers.sh --only {m['venv']} "
                f"(see {ENV_DIR / m['venv']}.log)")
    return None


# -- fidelity ---------------------------------------------------------------------------------
def compare(ours: np.ndarray, peer: np.ndarray) -> dict:
    """Largest |ours - peer| over the common frames, relative to the peer's largest magnitude."""
    n = min(len(ours), len(peer))
    a, b = np.asarray(ours[:n], np.float64), np.asarray(peer[:n], np.float64)
    d = np.abs(a - b)
    return {"frames": [len(ours), len(peer)], "max_abs": float(d.max()), "mean_abs": float(d.mean()),
            "rel": float(d.max() / max(np.abs(b).max(), 1e-30))}


def worst(items: list[dict]) -> dict:
    return {"frames_equal": all(x["frames"][0] == x["frames"][1] for x in items),
            "max_abs": max(x["max_abs"] for x in items),
            "mean_abs": float(np.mean([x["mean_abs"] for x in items])),
            "rel": max(x["rel"] for x in items)}


def f0_cents(ours: np.ndarray, peer: np.ndarray) -> dict:
    """f0 differences in cents on frames both call voiced (confidence / periodicity > 0.5)."""
    n = min(len(ours), len(peer))
    a, b = ours[:n], peer[:n]
    voiced = (a[:, 1] > 0.5) & (b[:, 1] > 0.5) & (a[:, 0] > 0) & (b[:, 0] > 0)
    c = np.abs(1200 * np.log2(a[voiced, 0] / b[voiced, 0]))
    return {"voiced_frames": int(voiced.sum()), "median_cents": float(np.median(c)) if c.size else None,
            "p99_cents": float(np.percentile(c, 99)) if c.size else None,
            "max_cents": float(c.max()) if c.size else None}


def fidelity(group: str, name: str, ours_dir: Path, peer_dir: Path, stems: list[str]) -> dict:
    load = np.load
    if group == "loop":
        per = {}
        for model in ("openl3", "crepe", "madmom", "mert"):
            per[model] = worst([compare(load(ours_dir / "driver" / model / f"{s}.npy"),
                                        load(peer_dir / f"{s}.{model}.npy")) for s in stems])
        return {"what": "driver outputs vs the loop's, per model", "per_model": per}
    main = worst([compare(load(ours_dir / f"{s}.npy"), load(peer_dir / f"{s}.npy")) for s in stems])
    if group == "crepe":
        out = {"activation": worst([compare(load(ours_dir / f"{s}.activation.npy"),
                                            load(peer_dir / f"{s}.activation.npy")) for s in stems]),
               "f0": [f0_cents(load(ours_dir / f"{s}.npy"), load(peer_dir / f"{s}.npy")) for s in stems]}
        if "torchcrepe" not in name:
            out["confidence_max_abs"] = max(
                float(np.abs(load(ours_dir / f"{s}.npy")[:, 1] - load(peer_dir / f"{s}.npy")[:, 1]).max())
                for s in stems)
        out["what"] = "network activations (T, 360); f0 on frames both call voiced"
        return out
    return {"what": "outputs", **main}


# -- main -------------------------------------------------------------------------------------
def fmt_ratio(x: float | None) -> str:
    return "-" if x is None else f"{x:.2f}x"


def fidelity_text(group: str, f: dict | None) -> str:
    if not f:
        return "-"
    if group == "crepe":
        act = f["activation"]
        cents = max((x["median_cents"] or 0) for x in f["f0"])
        return f"activation max abs {act['max_abs']:.1e}; f0 median {cents:.2g} cents"
    if group == "loop":
        return "; ".join(f"{k} {v['rel']:.1e}" for k, v in f["per_model"].items()) + " (max rel)"
    return (f"max abs {f['max_abs']:.1e} (rel {f['rel']:.1e})"
            + ("" if f["frames_equal"] else ", frames differ"))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--groups", nargs="+", default=list(GROUPS), choices=GROUPS)
    ap.add_argument("--files", type=int, default=3)
    ap.add_argument("--seconds", type=float, default=20.0)
    ap.add_argument("--repeats", type=int, default=3, help="interleaved runs per member (median reported)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--openl3-weights", type=Path,
                    default=REFERENCE / "openl3_random" / "openl3_audio_mel256_music.h5")
    ap.add_argument("--json", type=Path, default=HERE / "results" / "peers.json")
    ap.add_argument("--keep", type=Path, help="keep every run's outputs and logs here")
    args = ap.parse_args()
    if not args.openl3_weights.exists() and {"openl3", "loop"} & set(args.groups):
        ap.error(f"{args.openl3_weights} not found: pass --openl3-weights FILE.h5 (official layout)")

    work = args.keep or Path(tempfile.mkdtemp(prefix="embedkit-peers-"))
    files = make_corpus(work / "audio", args.files, args.seconds)
    audio_s = args.files * args.seconds
    stems = [p.stem for p in files]
    load_before = os.getloadavg()
    plan = {g: members(g, args) for g in args.groups}
    skipped = {}
    for g, ms in plan.items():
        for m in ms:
            why = available(m)
            if why:
                skipped[f"{g}: {m['name']}"] = why
        plan[g] = [m for m in ms if not available(m)]
    runs: dict[str, dict[str, list]] = {g: {m["name"]: [] for m in ms} for g, ms in plan.items()}
    failed: dict[str, str] = {}
    t_start = time.perf_counter()
    try:
        for r in range(args.repeats):
            for g in list(plan):
                ms = plan[g]
                if not ms:
                    continue
                order = ms[r % len(ms):] + ms[: r % len(ms)]  # rotate: A B C, B C A, C A B
                for m in order:
                    if m not in plan[g]:
                        continue
                    idx = ms.index(m)
                    out = work / g / f"{idx}-{m.get('worker', 'driver')}" / f"run{r}"
                    print(f"[{time.perf_counter() - t_start:7.0f} s] repeat {r + 1}/{args.repeats} {g}: "
                          f"{m['name']}", flush=True)
                    try:
                        res = run_member(m, files, out, args, fidelity=(r == 0))
                    except RuntimeError as exc:  # record it, drop the member, go on with the others
                        print(f"  FAILED: {exc}", flush=True)
                        failed[f"{g}: {m['name']}"] = str(exc)[:2000]
                        plan[g] = [x for x in plan[g] if x is not m] if m is not ms[0] else []
                        continue
                    runs[g][m["name"]].append(res)
                    if r > 0 and not args.keep:
                        shutil.rmtree(out, ignore_errors=True)
        # fidelity from the first repeat's outputs
        rows = []
        for g, ms in plan.items():
            if not ms:
                continue
            ours = ms[0]
            ours_dir = work / g / f"0-{ours.get('worker', 'driver')}" / "run0"
            for idx, m in enumerate(ms):
                rs = runs[g][m["name"]]
                if m.get("driver") or g == "loop":
                    per_run = [x["wall_s"] for x in rs]  # whole process: import, load, every file
                else:
                    per_run = [sum(x["file_s"]) for x in rs]
                med = statistics.median(per_run)
                row = {
                    "group": g, "member": m["name"], "is_ours": idx == 0 or bool(m.get("ours_variant")),
                    "runs_s": [round(x, 3) for x in per_run], "median_s": round(med, 3),
                    "s_per_audio_s": round(med / audio_s, 4),
                    "import_s": (round(statistics.median(x["import_s"] for x in rs), 2)
                                 if "import_s" in rs[0] else None),
                    "load_s": (round(statistics.median(x["load_s"] for x in rs), 2)
                               if "load_s" in rs[0] else None),
                    "process_wall_s": round(statistics.median(x["wall_s"] for x in rs), 2),
                    "peak_rss_mb": round(max(x["peak_rss_mb"] for x in rs), 0),
                }
                if idx > 0:
                    ours_med = statistics.median(
                        [x["wall_s"] if (ours.get("driver") or g == "loop") else sum(x["file_s"])
                         for x in runs[g][ours["name"]]])
                    row["peer_over_ours"] = round(med / ours_med, 3)
                    row["fidelity"] = fidelity(g, m["name"], ours_dir,
                                               work / g / f"{idx}-{m.get('worker', 'driver')}" / "run0",
                                               stems)
                    if g == "mert" and not m.get("ours_variant"):
                        # the model card's whole-file pass vs our whole-file window (the same computation);
                        # "fidelity" above is vs our default 5 s windows (includes the stitching deviation)
                        whole = next(i for i, x in enumerate(ms) if x.get("ours_variant"))
                        row["fidelity_vs_ours_whole_file"] = fidelity(
                            g, m["name"], work / g / f"{whole}-ours" / "run0",
                            work / g / f"{idx}-{m['worker']}" / "run0", stems)
                    if g == "openl3" and m["worker"] == "torchopenl3" and runs[g].get("openl3 0.4.2 (TF)"):
                        tf_dir = work / g / "1-openl3_tf" / "run0"
                        row["fidelity_vs_openl3_tf"] = worst([
                            compare(np.load(work / g / f"{idx}-torchopenl3" / "run0" / f"{s}.npy"),
                                    np.load(tf_dir / f"{s}.npy")) for s in stems])
                        row["ours_vs_openl3_tf"] = fidelity(g, "", ours_dir, tf_dir, stems)
                rows.append(row)
    finally:
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)

    result = {
        "date": time.strftime("%Y-%m-%d"),
        "command": "python benchmarks/peers.py " + " ".join(sys.argv[1:]),
        "machine": f"{cpu_name()}, {os.cpu_count()} cores",
        "threads": args.threads,
        "corpus": f"{args.files} files x {args.seconds:g} s (44.1 kHz stereo 16-bit WAV, music-like)",
        "repeats": args.repeats,
        "load_average_before": [round(x, 2) for x in load_before],
        "load_average_after": [round(x, 2) for x in os.getloadavg()],
        "total_minutes": round((time.perf_counter() - t_start) / 60, 1),
        "skipped": skipped,
        "failed": failed,
        "rows": rows,
    }
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(result, indent=2) + "\n")
    print_table(result)
    return 0


def print_table(result: dict) -> None:
    print(f"\n{result['corpus']}; {result['machine']}; {result['threads']} threads; median of "
          f"{result['repeats']} interleaved runs; load average {result['load_average_before']} -> "
          f"{result['load_average_after']}\n")
    print("| model | tool | s per audio s | peer / ours | import + load s | peak RSS MB | fidelity vs ours |")
    print("|---|---|---|---|---|---|---|")
    for r in result["rows"]:
        il = "-" if r["import_s"] is None else f"{r['import_s']:.1f} + {r['load_s']:.1f}"
        print(f"| {r['group']} | {r['member']} | {r['s_per_audio_s']:.3f} "
              f"| {fmt_ratio(r.get('peer_over_ours'))} "
              f"| {il} | {r['peak_rss_mb']:.0f} | {fidelity_text(r['group'], r.get('fidelity'))} |")
    for k, v in result["skipped"].items():
        print(f"skipped {k}: {v}")
    for k, v in result["failed"].items():
        print(f"FAILED {k}: {v.splitlines()[0]}")


if __name__ == "__main__":
    sys.exit(main())
