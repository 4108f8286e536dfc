"""The driver against openl3 0.4.2 and crepe 0.0.16 themselves, on files (fidelity, not speed).

    bash benchmarks/setup_peers.sh --only openl3 crepe --openl3-src DIR --crepe-src DIR   # once
    python benchmarks/parity_files.py                       # ~15-25 minutes on 2 cores
    python benchmarks/parity_files.py --peers-env DIR --work /tmp/parity --per-file

Test material, written here: tones, a chirp and noise under a fade-in, 3.3 s, as WAV files
mono/stereo/4 channels, 16-bit/24-bit/float32/float64, 44.1 and 48 kHz. Then, on the same files:
- openl3 0.4.2 (TensorFlow, its peer venv): `openl3.process_audio_file` (soundfile float64,
  channel mean, resampy in float64) with the seeded random weights of
  ../shared/reference/openl3_random/ (mel256, mel128, linear; kapre; mel256 also librosa);
- crepe 0.0.16 (TensorFlow): `crepe.predict` on the file read as its CLI reads it
  (scipy.io.wavfile) and as `sf.read`, capacities tiny and full, activations;
- ours: run_extraction.py (the driver), our openl3-compatible `process_audio_file` (the API),
  and, as "before", what the driver gave before resample_precision existed (float32 mono,
  resampy accumulating in float32).
Prints, per configuration, the worst file's relative max difference (max |a - b| / max |b|)
between each pair, and writes benchmarks/results/parity_files.json.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import soundfile as sf

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
import _checkout  # noqa: E402,F401  (the checkout as the package embedkit)

from embedkit import audio_io  # noqa: E402
from embedkit import registry  # noqa: E402
import embedkit.openl3 as openl3  # noqa: E402
from embedkit.openl3 import network as net  # noqa: E402

REFERENCE = ROOT.parent / "shared" / "reference" / "openl3_random"
# alias: (input_repr, frontend, embedding_size)
OPENL3 = {
    "mel256_kapre_512": ("mel256", "kapre", 512),
    "mel256_kapre_6144": ("mel256", "kapre", 6144),
    "mel128_kapre_512": ("mel128", "kapre", 512),
    "linear_kapre_512": ("linear", "kapre", 512),
    "mel256_librosa_512": ("mel256", "librosa", 512),
}
FILES = {  # stem: (rate, channels, subtype)
    "m16_44k": (44100, 1, "PCM_16"), "s16_44k": (44100, 2, "PCM_16"), "s24_44k": (44100, 2, "PCM_24"),
    "sf32_44k": (44100, 2, "FLOAT"), "sf32_48k": (48000, 2, "FLOAT"), "m16_48k": (48000, 1, "PCM_16"),
    "mf64_44k": (44100, 1, "DOUBLE"), "q16_44k": (44100, 4, "PCM_16"),
}

OPENL3_TF = r"""
import os, sys, glob, openl3
wav, out, weights = sys.argv[1:4]
files = sorted(glob.glob(wav + "/*.wav"))
for alias in sys.argv[4:]:
    repr_, fe, size = alias.split("_")
    model = openl3.models.load_audio_embedding_model_from_path(
        os.path.join(weights, f"openl3_audio_{repr_}_music.h5"), repr_, int(size), frontend=fe)
    os.makedirs(os.path.join(out, alias), exist_ok=True)
    openl3.process_audio_file(files, output_dir=os.path.join(out, alias), model=model, hop_size=0.1,
                              center=True, frontend=fe, input_repr=repr_, verbose=False, overwrite=True)
"""

CREPE_TF = r"""
import os, sys, glob, numpy as np, crepe, soundfile as sf
from scipy.io import wavfile
wav, out = sys.argv[1:3]
os.makedirs(out, exist_ok=True)
for cap in ("tiny", "full"):
    for f in sorted(glob.glob(wav + "/*.wav")):
        stem = os.path.basename(f)[:-4]
        for how in ("wavfile", "sf"):
            sr, a = wavfile.read(f) if how == "wavfile" else sf.read(f)[::-1]
            act = crepe.predict(a, sr, model_capacity=cap, viterbi=False, center=True, step_size=10,
                                verbose=0)[3]
            np.save(os.path.join(out, f"{cap}_{stem}_{how}.npy"), act)
"""


def material(seconds: float, sr: int, channels: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    t = np.arange(int(seconds * sr)) / sr
    chans = []
    for c in range(channels):
        x = 0.3 * np.sin(2 * np.pi * 220 * (c + 1) * t) + 0.2 * np.sin(2 * np.pi * (300 * t + 900 * t**2))
        x = x + 0.05 * rng.standard_normal(t.shape)
        chans.append(x * np.minimum(1, t / 0.3) * (0.6 + 0.4 * np.cos(2 * np.pi * 0.7 * t)))
    return np.stack(chans, 1)


def rel(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.abs(a.astype(np.float64) - b).max() / np.abs(b).max())


def peer(env: Path, code: str, *args: str) -> None:
    environ = {**os.environ, "TF_USE_LEGACY_KERAS": "1", "TF_CPP_MIN_LOG_LEVEL": "2",
               "PYTHONPATH": str(env / "src"), "CUDA_VISIBLE_DEVICES": ""}
    # run outside the checkout: `python -c` puts the working folder first on sys.path, and the
    # checkout's openl3/ (embedkit.openl3) would shadow the real openl3
    subprocess.run([str(env / "bin" / "python"), "-c", code, *args], check=True, env=environ, cwd=env)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--peers-env", type=Path, default=ROOT / "benchmarks" / "peers_env",
                    help="where setup_peers.sh built the openl3 and crepe venvs")
    ap.add_argument("--work", type=Path, default=ROOT / "benchmarks" / "results" / "tmp" / "parity_files")
    ap.add_argument("--json", type=Path, default=ROOT / "benchmarks" / "results" / "parity_files.json")
    ap.add_argument("--per-file", action="store_true", help="print every file's numbers too")
    a = ap.parse_args()
    wav, work = a.work.resolve() / "wav", a.work.resolve()
    wav.mkdir(parents=True, exist_ok=True)
    for i, (stem, (sr, ch, subtype)) in enumerate(FILES.items()):
        sf.write(wav / f"{stem}.wav", material(3.3, sr, ch, i), sr, subtype=subtype)

    print("openl3 0.4.2 (TensorFlow) ...", flush=True)
    peer(a.peers_env / "openl3", OPENL3_TF, str(wav), str(work / "openl3_tf"), str(REFERENCE), *OPENL3)
    print("crepe 0.0.16 (TensorFlow) ...", flush=True)
    peer(a.peers_env / "crepe", CREPE_TF, str(wav), str(work / "crepe_tf"))

    print("the driver ...", flush=True)
    cfg = ["models:"]
    for alias, (r, fe, size) in OPENL3.items():
        cfg += [f"  ol3_{alias}:", "    extractor: openl3", f"    input_repr: {r}", f"    frontend: {fe}",
                f"    embedding_size: {size}", f"    weights: {REFERENCE / f'openl3_audio_{r}_music.h5'}"]
    for cap in ("tiny", "full"):
        cfg += [f"  crepe_{cap}:", "    extractor: crepe", f"    capacity: {cap}", "    viterbi: false",
                "    activations: true"]
    (work / "config.yaml").write_text("\n".join(cfg) + "\n")
    subprocess.run([sys.executable, str(ROOT / "run_extraction.py"), "--config", str(work / "config.yaml"),
                    "--audio_dir", str(wav), "--output_base", str(work / "driver"), "--overwrite",
                    "--no_progress", "--device", "cpu"], check=True)

    print("our API, and the driver as it was ...", flush=True)
    results: dict = {"date": time.strftime("%Y-%m-%d"), "command": " ".join(sys.argv),
                     "openl3": {}, "crepe": {}}
    for alias, (r, fe, size) in OPENL3.items():
        model = openl3.models.load_audio_embedding_model(r, "music", size, fe, weights_path=str(
            REFERENCE / f"openl3_audio_{r}_music.h5"))
        rows = {}
        for stem in FILES:
            path = str(wav / f"{stem}.wav")
            x, sr = sf.read(path)
            api = openl3.get_audio_embedding(x, sr, model=model, frontend=fe, verbose=False)[0]
            mono, sr = audio_io.decode(path)
            old = audio_io.resample(mono, sr, 48000, "kaiser_best", "float32")
            if fe == "librosa":
                old = old.astype(np.float64)
            before = net.embed_signal(model.loaded, old, r, size, 0.1, True, fe, 16)[0]
            drv = np.load(work / "driver" / f"ol3_{alias}" / f"{stem}.npy")
            tf = np.load(work / "openl3_tf" / alias / f"{stem}.npz")["embedding"]
            rows[stem] = {"driver_vs_api": rel(drv, api), "driver_equals_api": bool(np.array_equal(drv, api)),
                          "api_vs_openl3": rel(api, tf), "driver_vs_openl3": rel(drv, tf),
                          "before_vs_openl3": rel(before, tf)}
        results["openl3"][alias] = rows
    for cap in ("tiny", "full"):
        ex = registry.create("crepe", capacity=cap, viterbi=False, activations=True)
        rows = {}
        for stem in FILES:
            x, sr = sf.read(wav / f"{stem}.wav")
            x = (x.mean(1) if x.ndim == 2 else x).astype(np.float32)  # crepe's recipe
            recipe = ex.extract(audio_io.resampy_resample(x, sr, 16000, "kaiser_best", "float32"), 16000)
            drv = np.load(work / "driver" / f"crepe_{cap}.activation" / f"{stem}.npy")
            rows[stem] = {"driver_equals_recipe": bool(np.array_equal(drv, recipe.extras["activation"]))}
            for how in ("wavfile", "sf"):
                tf = np.load(work / "crepe_tf" / f"{cap}_{stem}_{how}.npy")
                rows[stem][f"driver_vs_crepe_{how}_max_abs"] = float(np.abs(drv - tf).max())
        results["crepe"][cap] = rows

    for model, table in results.items():
        if model not in ("openl3", "crepe"):
            continue
        for alias, rows in table.items():
            keys = list(next(iter(rows.values())))
            summary = ", ".join(
                f"{k} {all(r[k] for r in rows.values())}" if isinstance(rows[next(iter(rows))][k], bool)
                else f"{k} {max(r[k] for r in rows.values()):.2e}" for k in keys)
            print(f"{model} {alias}: worst file: {summary}")
            if a.per_file:
                for stem, r in rows.items():
                    print(f"    {stem:9s} " + ", ".join(f"{k} {v:.2e}" if isinstance(v, float) else f"{k} {v}"
                                                       for k, v in r.items()))
    a.json.parent.mkdir(parents=True, exist_ok=True)
    a.json.write_text(json.dumps(results, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
