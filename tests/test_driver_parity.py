"""The driver on files gives what the references compute from the same files.

openl3 reads a file with soundfile as float64, averages the channels and resamples in
float64; crepe averages, casts to float32 and resamples in float32. The driver decodes
to float32 and resamples per model in the model's declared precision
(`Extractor.resample_precision`). A bridge: run_extraction.py's arrays must equal
(bit for bit) our openl3-compatible `process_audio_file` (which reads and resamples
openl3's way, and is itself compared with openl3 0.4.2 in test_openl3.py and, on files,
in benchmarks/parity_files.py) and our CREPE plugin on crepe's own recipe.
"""

from __future__ import annotations

import numpy as np
import pytest
import soundfile as sf

from embedkit import audio_io, registry
import embedkit.openl3 as openl3
from tests.conftest import REFERENCE, run_cli

H5 = REFERENCE / "openl3_random" / "openl3_audio_mel256_music.h5"
HOP = 0.5  # few windows: the comparison is per window anyway


def _material(seconds: float, sr: int, channels: int, seed: int) -> np.ndarray:
    """Tones, a chirp and noise under a fade-in (quiet first windows, as in real recordings)."""
    rng = np.random.default_rng(seed)
    t = np.arange(int(seconds * sr)) / sr
    chans = []
    for c in range(channels):
        x = 0.3 * np.sin(2 * np.pi * 220 * (c + 1) * t) + 0.2 * np.sin(2 * np.pi * (300 * t + 900 * t**2))
        chans.append((x + 0.05 * rng.standard_normal(t.shape)) * np.minimum(1, t / 0.3))
    return np.stack(chans, 1)


# name: (rate, channels, seconds, format, subtype): each way the float32 mono can differ from
# openl3's float64 one (stereo float and MP3 mixes, float64 samples), 24-bit at 48 kHz (no
# resampling), 16-bit mono (lossless), and a file shorter than one window
FILES = {
    "m16.wav": (44100, 1, 1.3, "WAV", "PCM_16"),
    "sfloat.wav": (44100, 2, 1.3, "WAV", "FLOAT"),
    "s24.flac": (48000, 2, 1.2, "FLAC", "PCM_24"),
    "mdouble.wav": (22050, 1, 0.8, "WAV", "DOUBLE"),
    "s.mp3": (44100, 2, 1.0, "MP3", "MPEG_LAYER_III"),
}


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    if not H5.exists():
        pytest.skip(f"{H5} absent (reference data sits beside the project in CI)")
    root = tmp_path_factory.mktemp("parity")
    audio = root / "audio"
    audio.mkdir()
    for i, (name, (sr, ch, sec, fmt, sub)) in enumerate(FILES.items()):
        sf.write(audio / name, _material(sec, sr, ch, i), sr, format=fmt, subtype=sub)
    cfg = root / "c.yaml"
    cfg.write_text(
        f"models:\n  openl3:\n    hop_size: {HOP}\n    weights: {H5}\n"
        f"  openl3_librosa:\n    extractor: openl3\n    frontend: librosa\n    hop_size: {HOP}\n"
        f"    weights: {H5}\n"
        "  crepe:\n    capacity: tiny\n    viterbi: false\n    activations: true\n"
    )
    out = root / "out"
    res = run_cli("--config", str(cfg), "--audio_dir", str(audio), "--output_base", str(out),
                  "--device", "cpu")
    assert res.returncode == 0, res.stdout + res.stderr
    return audio, out, root


def api_outputs(run, frontend: str):
    """The files through our openl3-compatible `process_audio_file` (openl3's reading: sf.read as
    float64, channel mean, resampy in float64), once per front-end: the folder of its .npz."""
    audio, out, root = run
    api_dir = root / f"api_{frontend}"
    if not api_dir.is_dir():
        model = openl3.models.load_audio_embedding_model("mel256", "music", 512, frontend=frontend,
                                                         weights_path=str(H5))
        api_dir.mkdir()
        paths = [str(audio / name) for name in FILES]
        with pytest.warns(openl3.OpenL3Warning):  # mdouble.wav is shorter than a window
            openl3.process_audio_file(paths, output_dir=str(api_dir), model=model, hop_size=HOP,
                                   frontend=frontend, batch_size=registry.get("openl3").default_batch_size,
                                   verbose=False)
    return api_dir


@pytest.mark.parity
@pytest.mark.parametrize("alias, frontend", [("openl3", "kapre"), ("openl3_librosa", "librosa")])
def test_openl3_driver_equals_api_on_files(run, alias, frontend):
    audio, out, root = run
    ex = registry.create("openl3", frontend=frontend)
    # librosa's STFT runs on float64 samples in openl3: the driver hands it float64
    assert ex.resample_precision == "float64"
    assert ex.input_dtype == ("float64" if frontend == "librosa" else "float32")
    api_dir = api_outputs(run, frontend)
    for name in FILES:
        stem = name.rsplit(".", 1)[0]
        api = np.load(api_dir / f"{stem}.npz")
        drv = np.load(out / alias / f"{stem}.npy")
        assert drv.shape == api["embedding"].shape, name
        diff = np.abs(drv - api["embedding"]).max() / np.abs(api["embedding"]).max()
        np.testing.assert_array_equal(drv, api["embedding"], err_msg=f"{name}: relative max diff {diff:.2e}")


@pytest.mark.parity
def test_crepe_driver_equals_crepes_recipe_on_files(run):
    audio, out, _ = run
    ex = registry.create("crepe", capacity="tiny", viterbi=False, activations=True)
    assert ex.resample_precision == "float32"
    for name in FILES:
        stem = name.rsplit(".", 1)[0]
        # crepe.get_activation: channel mean (float64), float32, resampy on the float32 signal
        x, sr = sf.read(audio / name)
        x = (x.mean(1) if x.ndim == 2 else x).astype(np.float32)
        sig = audio_io.resampy_resample(x, sr, 16000, "kaiser_best", "float32")
        want = ex.extract(sig, 16000)
        np.testing.assert_array_equal(np.load(out / "crepe.activation" / f"{stem}.npy"),
                                      want.extras["activation"], err_msg=name)
        np.testing.assert_array_equal(np.load(out / "crepe" / f"{stem}.npy"), want.data, err_msg=name)


@pytest.fixture(scope="module")
def device_run(run):
    """The same files and models, resampy's filters run by torch in the model stage
    (`--resample_on device`: what a CUDA run does on its GPU; torch on the CPU here), the files
    decoded in a worker process (which then leaves those filters to the model stage)."""
    audio, _, root = run
    out = root / "out_device"
    res = run_cli("--config", str(root / "c.yaml"), "--audio_dir", str(audio), "--output_base", str(out),
                  "--device", "cpu", "--resample_on", "device", "--decode_workers", "1")
    assert res.returncode == 0, res.stdout + res.stderr
    return out


@pytest.mark.parity
def test_resampling_in_torch_keeps_the_parity_tolerances(run, device_run):
    """The torch resampler through the driver (float64 for openl3: within 1e-12 of resampy; float32
    for crepe: within resampy's own float32 rounding) keeps each model within its parity
    tolerance of the reference recipe (tests/test_openl3.py, tests/test_crepe.py), which the
    NumPy path meets bit for bit (above). Measured: openl3's arrays the same bytes (float64
    differences of 1e-15 vanish in the float32 network input), crepe's activations within 3e-7."""
    import json

    from tests.test_openl3 import KAPRE_E2E_RTOL, LIBROSA_E2E_RTOL, rel_max_diff

    audio, out, root = run
    for alias, tol in (("openl3", KAPRE_E2E_RTOL), ("openl3_librosa", LIBROSA_E2E_RTOL)):
        meta = json.loads((device_run / alias / "features.json").read_text())
        assert meta["resampled_in"] == "torch:cpu"
        for name in FILES:
            stem = name.rsplit(".", 1)[0]
            api = np.load(api_outputs(run, "kapre" if alias == "openl3" else "librosa") / f"{stem}.npz")
            got = np.load(device_run / alias / f"{stem}.npy")
            assert got.shape == api["embedding"].shape, name
            # and far inside it: the same signal to 1e-12
            assert rel_max_diff(got, api["embedding"]) <= min(tol, 1e-5), (alias, name)
    assert json.loads((out / "crepe" / "features.json").read_text())["resampled_in"] == "decoder"
    assert json.loads((device_run / "crepe" / "features.json").read_text())["resampled_in"] == "torch:cpu"
    for name in FILES:
        stem = name.rsplit(".", 1)[0]
        a, b = (np.load(o / "crepe.activation" / f"{stem}.npy") for o in (out, device_run))
        assert a.shape == b.shape and np.abs(a - b).max() <= 1e-5, name  # the network's parity bound
