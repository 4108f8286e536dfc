"""embedkit.crepe against crepe 0.0.16 itself (TensorFlow), the way a user switches (fidelity, not speed).

    bash benchmarks/setup_peers.sh --only crepe --crepe-src DIR      # once: crepe's venv
    python benchmarks/crepe_dropin.py [--peers-env DIR] [--work DIR]   # ~3 minutes on 2 cores

Inputs, in one folder: crepe's own sweep.wav (16 kHz float64) and test.wav (44.1 kHz 16-bit,
10 s) from ../shared/reference/crepe, and a synthesized 48 kHz 16-bit stereo WAV (a voice-like
glide over noise, with silent stretches). For each command line below, `python -m crepe FOLDER`
runs in crepe's venv and `python -m embedkit.crepe FOLDER` here, each into its own folder:

    default | -V -a | -c tiny -a -p | -c tiny -n -s 5 -a

Compared, per file: the CSV (rows identical as text, largest time / confidence difference,
largest frequency difference in cents on frames both call voiced, confidence > 0.5), the
activations (.npy, max abs diff) and the PNG (crepe's own pixels against ours drawn from crepe's
activations: the drawing, apart from the network). Then the decoding alone, on crepe's
activations: crepe.core.to_local_average_cents and to_viterbi_cents (hmmlearn) against ours,
and crepe.predict on arrays (the stereo file as int16 (N, 2), and as float64 / 32768).
Prints a summary and writes benchmarks/results/crepe_dropin.json.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import soundfile as sf

ROOT = Path(__file__).resolve().parents[1]
REFERENCE = ROOT.parent / "shared" / "reference" / "crepe"
COMMANDS = {
    "default": [],
    "viterbi": ["-V", "-a"],
    "tiny_plot": ["-c", "tiny", "-a", "-p"],
    "tiny_nocenter_5ms": ["-c", "tiny", "-n", "-s", "5", "-a"],
}

# Run in crepe's venv: its decoding on its own activations, and predict on arrays.
CREPE_DECODE = r"""
import glob, os, sys, numpy as np, crepe
work = sys.argv[1]
for f in sorted(glob.glob(os.path.join(work, "crepe", "*", "*.activation.npy"))):
    act = np.load(f)
    np.save(f[:-len(".activation.npy")] + ".lac.npy", crepe.core.to_local_average_cents(act))
    np.save(f[:-len(".activation.npy")] + ".vit.npy", crepe.core.to_viterbi_cents(act))
x = np.load(os.path.join(work, "stereo_int16.npy"))
for cap in ("tiny", "full"):
    for name, a in (("int16", x), ("float", x / 32768.0)):
        t, f0, c, act = crepe.predict(a, 48000, model_capacity=cap, viterbi=True, verbose=0)
        np.savez(os.path.join(work, f"predict_crepe_{cap}_{name}.npz"), time=t, frequency=f0,
                 confidence=c, activation=act)
"""


def material(seconds: float, sr: int, seed: int = 0) -> np.ndarray:
    """(N, 2) int16: a harmonic glide 180 -> 420 -> 250 Hz with vibrato over noise, two silent gaps."""
    rng = np.random.default_rng(seed)
    t = np.arange(int(seconds * sr)) / sr
    f0 = np.interp(t, [0, seconds / 2, seconds], [180, 420, 250]) * (1 + 0.01 * np.sin(2 * np.pi * 5.5 * t))
    phase = 2 * np.pi * np.cumsum(f0) / sr
    voice = sum(np.sin(k * phase) / k**1.5 for k in range(1, 15))
    gate = ((t % 1.2) < 0.9).astype(float)
    left = 0.3 * voice * gate + 0.01 * rng.standard_normal(t.size)
    right = 0.2 * voice * gate + 0.01 * rng.standard_normal(t.size)
    return np.round(np.stack([left, right], 1) * 32767).astype(np.int16)


def peer_env(env: Path) -> dict:
    return {**os.environ, "TF_USE_LEGACY_KERAS": "1", "TF_CPP_MIN_LOG_LEVEL": "2", "CUDA_VISIBLE_DEVICES": "",
            "PYTHONPATH": str(env / "src")}


def ours_env(work: Path) -> dict:
    site = work / "_site"  # the checkout importable as `embedkit`, as when installed
    if not site.exists():
        site.mkdir(parents=True)
        (site / "embedkit").symlink_to(ROOT, target_is_directory=True)
    return {**os.environ, "PYTHONPATH": str(site)}


def run(cmd: list[str], env: dict, cwd: Path) -> None:
    # cwd outside the checkout: there `python -m crepe` would find the checkout's crepe/ folder
    res = subprocess.run(cmd, env=env, cwd=cwd, capture_output=True, text=True)
    if res.returncode != 0:
        raise SystemExit(f"{' '.join(cmd)} failed ({res.returncode}):\n{res.stderr[-3000:]}")


def cents(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return 1200 * np.abs(np.log2(a / b))


def compare_csv(mine: Path, theirs: Path) -> dict:
    a_lines, b_lines = mine.read_text().splitlines(), theirs.read_text().splitlines()
    a = np.loadtxt(mine, delimiter=",", skiprows=1, ndmin=2)
    b = np.loadtxt(theirs, delimiter=",", skiprows=1, ndmin=2)
    out = {"rows": len(b), "same_rows": len(a) == len(b), "header_equal": a_lines[0] == b_lines[0]}
    if len(a) != len(b):
        return out
    voiced = (a[:, 2] > 0.5) & (b[:, 2] > 0.5)
    out.update(
        rows_identical_pct=100.0 * float(np.mean([x == y for x, y in zip(a_lines[1:], b_lines[1:])])),
        time_max_abs=float(np.abs(a[:, 0] - b[:, 0]).max()),
        confidence_max_abs=float(np.abs(a[:, 2] - b[:, 2]).max()),
        voiced_frames=int(voiced.sum()),
        voiced_cents_max=float(cents(a[voiced, 1], b[voiced, 1]).max()) if voiced.any() else None,
        voiced_cents_median=float(np.median(cents(a[voiced, 1], b[voiced, 1]))) if voiced.any() else None,
    )
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--peers-env", type=Path, default=ROOT / "benchmarks" / "peers_env",
                    help="where setup_peers.sh built the crepe venv")
    ap.add_argument("--work", type=Path, default=ROOT / "benchmarks" / "results" / "tmp" / "crepe_dropin")
    ap.add_argument("--json", type=Path, default=ROOT / "benchmarks" / "results" / "crepe_dropin.json")
    a = ap.parse_args()
    env = a.peers_env / "crepe"
    work = a.work
    shutil.rmtree(work, ignore_errors=True)
    wav = work / "wav"
    wav.mkdir(parents=True)
    for name in ("sweep.wav", "test.wav"):
        shutil.copyfile(REFERENCE / name, wav / name)
    stereo = material(6.0, 48000)
    sf.write(wav / "stereo48k.wav", stereo, 48000, subtype="PCM_16")
    np.save(work / "stereo_int16.npy", stereo)

    for tag, flags in COMMANDS.items():
        print(f"{tag}: crepe 0.0.16 ...", flush=True)
        (work / "crepe" / tag).mkdir(parents=True)
        peer_cmd = [str(env / "bin" / "python"), "-m", "crepe", str(wav), "-o", str(work / "crepe" / tag)]
        run([*peer_cmd, "-q", *flags], peer_env(env), work)
        print(f"{tag}: embedkit.crepe ...", flush=True)
        run([sys.executable, "-m", "embedkit.crepe", str(wav), "-o", str(work / "ours" / tag), "-q", *flags],
            ours_env(work), work)
    print("decoding and predict on arrays: crepe 0.0.16 ...", flush=True)
    run([str(env / "bin" / "python"), "-c", CREPE_DECODE, str(work)], peer_env(env), work)

    sys.path.insert(0, str(ROOT))
    import _checkout  # noqa: F401  (the checkout as the package embedkit)
    from PIL import Image

    from embedkit.crepe import core

    report: dict = {"commands": {t: " ".join(f) or "(defaults)" for t, f in COMMANDS.items()}, "files": {}}
    for tag in COMMANDS:
        for csv in sorted((work / "crepe" / tag).glob("*.f0.csv")):
            stem = csv.name[: -len(".f0.csv")]
            mine = work / "ours" / tag / csv.name
            entry = compare_csv(mine, csv)
            act_t = work / "crepe" / tag / f"{stem}.activation.npy"
            if act_t.exists():
                theirs = np.load(act_t)
                ours = np.load(work / "ours" / tag / act_t.name)
                entry["activation_max_abs"] = float(np.abs(ours - theirs).max())
                # decoding alone, on crepe's activations
                lac = np.load(work / "crepe" / tag / f"{stem}.lac.npy")
                vit = np.load(work / "crepe" / tag / f"{stem}.vit.npy")
                entry["local_average_cents_identical"] = bool(
                    np.array_equal(core.to_local_average_cents(theirs), lac, equal_nan=True))
                entry["viterbi_cents_identical"] = bool(
                    np.array_equal(core.to_viterbi_cents(theirs), vit, equal_nan=True))
            png_t = work / "crepe" / tag / f"{stem}.activation.png"
            if png_t.exists():
                pix = np.asarray(Image.open(png_t))
                entry["png_pixels_identical_on_crepes_activations"] = bool(
                    np.array_equal(pix, core.salience_image(theirs)))
                mine_png = np.asarray(Image.open(work / "ours" / tag / png_t.name))
                entry["png_pixels_differing_pct"] = 100.0 * float(np.mean(np.any(mine_png != pix, axis=-1)))
            report["files"][f"{tag}/{stem}"] = entry

    report["predict_arrays"] = {}
    for cap in ("tiny", "full"):
        for name, x in (("int16", stereo), ("float", stereo / 32768.0)):
            want = np.load(work / f"predict_crepe_{cap}_{name}.npz")
            t, f0, conf, act = core.predict(x, 48000, cap, viterbi=True, verbose=0)
            voiced = (conf > 0.5) & (want["confidence"] > 0.5)
            report["predict_arrays"][f"{cap}_{name}"] = {
                "frames": int(len(t)), "same_frames": len(t) == len(want["time"]),
                "time_identical": bool(np.array_equal(t, want["time"])),
                "activation_max_abs": float(np.abs(act - want["activation"]).max()),
                "confidence_max_abs": float(np.abs(conf - want["confidence"]).max()),
                "voiced_cents_max": float(cents(f0[voiced], want["frequency"][voiced]).max()),
            }

    a.json.parent.mkdir(parents=True, exist_ok=True)
    a.json.write_text(json.dumps(report, indent=2) + "\n")
    for key, e in report["files"].items():
        extra = "".join(f" {k}={v:.2g}" if isinstance(v, float) else f" {k}={v}" for k, v in e.items()
                        if k not in ("rows", "same_rows", "header_equal", "voiced_frames"))
        print(f"{key:34s} rows={e['rows']} header={e['header_equal']}{extra}")
    for key, e in report["predict_arrays"].items():
        print(f"predict {key:12s} " + " ".join(f"{k}={v:.2g}" if isinstance(v, float) else f"{k}={v}"
                                              for k, v in e.items()))
    print(f"wrote {a.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
