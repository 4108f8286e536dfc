"""openl3.core: embeddings of arrays and files, with openl3 0.4.2's names, arguments and results.

    import embedkit.openl3 as openl3            # in place of `import openl3`
    emb, ts = openl3.get_audio_embedding(audio, sr)               # (T, 6144), (T,)
    openl3.process_audio_file("a.wav", output_dir="out")          # out/a.npz
    emb = openl3.get_image_embedding(image, embedding_size=512)   # (1, 512)
    openl3.process_video_file("v.mp4")          # v_audio.npz, v_image.npz beside it

The same defaults, return shapes, output files and keys, warnings (OpenL3Warning) and
errors (OpenL3Error) as openl3; the numbers are those of openl3 0.4.2 with kapre 0.4.1
(docs/openl3.md gives the measured differences). Every function also takes
`weights_path=` and `device=` (see `embedkit.openl3.models`).

Where this differs from openl3 on purpose (docs/openl3.md lists them all):
- outputs are written atomically (embedkit.outputs): an output path holds a whole .npz
  or nothing; an existing output is kept unless `overwrite` (openl3's rule), except one
  a killed run left unfinished (empty, or an .npz that does not read whole): it is redone;
- `process_*_file(..., on_error=f)`: a file that fails calls f(path, exception) and the
  others go on (openl3, and the default here, stop at the first);
- audio soundfile cannot read (m4a, aac, ...) is decoded with FFmpeg instead of failing;
- windows of many files, and of long files, are embedded in batches of `batch_size` with
  bounded memory (openl3 holds every window of a batch of files at once).
"""

from __future__ import annotations

import io
import os
import warnings
import zipfile
from numbers import Real
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np

from embedkit.openl3.decoding import decode_video_like_openl3, read_audio_like_openl3, read_image_like_openl3
from embedkit.openl3.models import (
    VALID_AUDIO_EMBEDDING_SIZES,
    VALID_CONTENT_TYPES,
    VALID_IMAGE_EMBEDDING_SIZES,
    AudioEmbeddingModel,
    ImageEmbeddingModel,
    _validate_audio_frontend,
    load_audio_embedding_model,
    load_image_embedding_model,
)
from embedkit.openl3.network import VideoEmbedder, run_network
from embedkit.openl3.openl3_exceptions import OpenL3Error
from embedkit.openl3.openl3_warnings import OpenL3Warning
from embedkit.openl3.preprocessing import (
    INPUT_REPRS,
    WINDOW,
    frame_windows,
    hop_samples,
    iter_window_chunks,
    librosa_frontend,
    num_windows,
    preprocess_image_batch,
    spectrogram_chunk,
    timestamps,
)

TARGET_SR = 48000  # Hz, the rate every input is resampled to
OnError = Callable[[str, BaseException], None]


# ---------------------------------------------------------------------------
# Audio
# ---------------------------------------------------------------------------
def _center_audio(audio: np.ndarray, frame_len: int) -> np.ndarray:
    """`audio` after int(frame_len / 2) zeros, so the first sample is at the middle of the first window."""
    return np.concatenate([np.zeros(int(frame_len / 2.0), dtype=audio.dtype), audio])


def _pad_audio(audio: np.ndarray, frame_len: int, hop_len: int) -> np.ndarray:
    """`audio` followed by the zeros that make windows of `frame_len` every `hop_len` cover
    every sample (a signal shorter than one window: padded to one window)."""
    n = audio.size
    if n < frame_len:
        extra = frame_len - n
    else:
        extra = -(-(n - frame_len) // hop_len) * hop_len - (n - frame_len)  # ceil to whole hops
    if extra <= 0:
        return audio
    return np.concatenate([audio, np.zeros(extra, dtype=audio.dtype)])


def _get_num_windows(audio_len: int, frame_len: int, hop_len: int, center: bool) -> int:
    """How many windows of `frame_len` every `hop_len` cover `audio_len` samples (after the
    centring zeros when `center`): at least one."""
    if center:
        audio_len += int(frame_len / 2.0)
    if audio_len <= frame_len:
        return 1
    return 1 + int(np.ceil((audio_len - frame_len) / float(hop_len)))


def _audio_settings(frontend: str, input_repr: str | None, model: Any) -> tuple[str, str]:
    """(frontend, input_repr) to compute with: openl3's checks (models._validate_audio_frontend);
    with a model, its own input representation (openl3 ignores `input_repr` then, and with
    the librosa front-end another one cannot fit the model; openl3 requires it then, here
    the model's is taken when none is given)."""
    if model is not None and not isinstance(model, AudioEmbeddingModel):
        raise OpenL3Error(
            f"Invalid model provided. Must be an AudioEmbeddingModel (load_audio_embedding_model()) "
            f"but got {type(model)}"
        )
    if model is not None and input_repr is None:
        input_repr = model.input_repr  # openl3 requires it with librosa; the model knows it
    frontend, input_repr = _validate_audio_frontend(frontend, input_repr, model)
    if model is None:
        return frontend, input_repr
    if frontend == "librosa" and input_repr != model.input_repr:
        raise OpenL3Error(
            f"input_repr={input_repr!r} does not fit the model, loaded for input_repr={model.input_repr!r}"
        )
    return frontend, model.input_repr


def _preprocess_audio_batch(audio: np.ndarray, sr: Real, center: bool = True, hop_size: float = 0.1
                            ) -> np.ndarray:
    """openl3's windows of one signal: (N, 1, 48000), in the input's dtype (after resampling)."""
    return frame_windows(_prepare_audio(audio, sr, hop_size, center), hop_size, center)[:, None, :]


def _prepare_audio(audio: np.ndarray, sr: Real, hop_size: Real, center: Any) -> np.ndarray:
    """openl3's checks, downmix and kaiser_best resampling; keeps the dtype like openl3."""
    audio = np.asarray(audio)
    if audio.size == 0:
        raise OpenL3Error("Got empty audio")
    if np.all(audio == 0):
        warnings.warn("Provided audio is all zeros", OpenL3Warning, stacklevel=3)
    if audio.ndim > 2:
        raise OpenL3Error("Audio array can only be be 1D or 2D")
    if audio.ndim == 2:
        audio = np.mean(audio, axis=1)
    if not isinstance(sr, Real) or sr <= 0:
        raise OpenL3Error(f"Invalid sample rate {sr}")
    if not isinstance(hop_size, Real) or hop_size <= 0 or hop_samples(hop_size) < 1:
        raise OpenL3Error(f"Invalid hop size {hop_size}")
    if center not in (True, False):
        raise OpenL3Error(f"Invalid center value {center}")
    if sr != TARGET_SR:
        from embedkit import audio_io

        # resampy in the input's own arithmetic, as openl3 in a fresh process (see audio_io)
        audio = audio_io.resampy_resample(audio, sr, TARGET_SR, "kaiser_best")
    if audio.size < WINDOW:
        warnings.warn(
            "Duration of provided audio is shorter than window size (1 second). Audio will be padded.",
            OpenL3Warning,
            stacklevel=3,
        )
    return audio


def preprocess_audio(
    audio: np.ndarray | list[np.ndarray],
    sr: Real | list[Real],
    hop_size: float = 0.1,
    input_repr: str | None = None,
    center: bool = True,
    **kw: Any,
) -> np.ndarray | list[np.ndarray]:
    """openl3.preprocess_audio: windows (N, 1, 48000), or with `input_repr` the librosa
    front-end's spectrograms (N, F, T, 1). Lists in, lists out (openl3 takes one array).

    `kw` go to the librosa front-end as in openl3 (n_fft, hop_length, db_amin, db_ref,
    dynamic_range; `preprocessing.librosa_window`).
    """
    if isinstance(audio, list):
        srs = sr if isinstance(sr, list) else [sr] * len(audio)
        return [preprocess_audio(a, s, hop_size, input_repr, center, **kw) for a, s in zip(audio, srs)]
    x = _preprocess_audio_batch(audio, sr, center=center, hop_size=hop_size)
    if not input_repr:
        return x
    if input_repr not in INPUT_REPRS:
        raise OpenL3Error(f'Invalid input representation "{input_repr}"')
    return librosa_frontend(x[:, 0], input_repr, **kw)[..., None]


def get_audio_embedding(
    audio: np.ndarray | list[np.ndarray],
    sr: Real | list[Real],
    model: AudioEmbeddingModel | None = None,
    input_repr: str | None = None,
    content_type: str = "music",
    embedding_size: int = 6144,
    center: bool = True,
    hop_size: float = 0.1,
    batch_size: int = 32,
    frontend: str = "kapre",
    verbose: bool = True,
    *,
    weights_path: str | None = None,
    device: str = "cpu",
) -> tuple[np.ndarray, np.ndarray] | tuple[list[np.ndarray], list[np.ndarray]]:
    """openl3.get_audio_embedding: (embedding (T, D), timestamps (T,)), or lists of them.

    Windows of all inputs are batched together (`batch_size` at a time).
    """
    frontend, input_repr = _audio_settings(frontend, input_repr, model)
    if str(content_type) not in VALID_CONTENT_TYPES:
        raise OpenL3Error(f'Invalid content type "{content_type}"')
    if embedding_size not in VALID_AUDIO_EMBEDDING_SIZES:
        raise OpenL3Error(f'Invalid embedding size "{embedding_size}"')
    if verbose not in (0, 1):
        raise OpenL3Error(f"Invalid verbosity level {verbose}")
    if isinstance(audio, np.ndarray):
        audio_list, list_input = [audio], False
    elif isinstance(audio, list):
        audio_list, list_input = audio, True
    else:
        raise OpenL3Error(f"audio must be type list[np.ndarray] or np.ndarray. Got {type(audio)}")
    if isinstance(sr, Real):
        sr_list = [sr] * len(audio_list)
    elif isinstance(sr, list):
        sr_list = sr
    else:
        raise OpenL3Error(f"sr must be type list[numbers.Real] or numbers.Real. Got {type(sr)}")
    if len(audio_list) != len(sr_list):
        raise OpenL3Error(
            f"Mismatch between number of audio inputs ({len(audio_list)}) and number of "
            f"sample rates ({len(sr_list)})"
        )
    if model is None:
        model = load_audio_embedding_model(
            input_repr, content_type, embedding_size, frontend, weights_path=weights_path, device=device
        )
    # The model decides the embedding size, as in openl3 (its pooling is part of the model).
    size = model.embedding_size

    # Spectrograms of every window of every input, embedded in shared batches.
    counts: list[int] = []
    pending: list[np.ndarray] = []
    embeddings: list[np.ndarray] = []

    def flush(force: bool) -> None:
        while pending and (force or sum(len(s) for s in pending) >= batch_size):
            stacked = np.concatenate(pending)
            take, rest = stacked[:batch_size], stacked[batch_size:]
            embeddings.append(run_network(model.loaded, take, input_repr, size))
            pending.clear()
            if len(rest):
                pending.append(rest)

    for x, s in zip(audio_list, sr_list):
        sig = _prepare_audio(x, s, hop_size, center)
        hop_len = hop_samples(hop_size)
        counts.append(num_windows(sig.shape[0], hop_len, center))
        for _, segment, starts in iter_window_chunks(sig, hop_len, center, batch_size):
            pending.append(spectrogram_chunk(segment, starts, input_repr, frontend))
            flush(False)
    flush(True)
    allemb = np.concatenate(embeddings) if embeddings else np.zeros((0, size), np.float32)
    emb_list, ts_list, i = [], [], 0
    for n in counts:
        emb_list.append(allemb[i : i + n])
        ts_list.append(timestamps(n, hop_size))
        i += n
    if not list_input:
        return emb_list[0], ts_list[0]
    return emb_list, ts_list


# ---------------------------------------------------------------------------
# Output files: names, atomic writes, what counts as done
# ---------------------------------------------------------------------------
def get_output_path(filepath: str, suffix: str, output_dir: str | None = None) -> str:
    """openl3.get_output_path: <output_dir or the file's folder>/<stem>_<suffix>.

    A suffix starting with '.' is appended without the underscore.
    """
    base = os.path.splitext(os.path.basename(filepath))[0]
    if not output_dir:
        output_dir = os.path.dirname(filepath)
    name = base + suffix if suffix[0] == "." else f"{base}_{suffix}"
    return os.path.join(output_dir, name)


def save_npz_atomic(path: str | os.PathLike, **arrays: np.ndarray) -> None:
    """np.savez(path, **arrays), written whole or not at all (embedkit.outputs' temp file,
    fsync and rename): openl3 writes in place, so a killed run can leave a truncated .npz."""
    from embedkit import outputs

    buf = io.BytesIO()
    np.savez(buf, **arrays)
    outputs.atomic_write_bytes(Path(path), buf.getvalue())


def output_complete(path: str | os.PathLike, keys: Sequence[str]) -> bool:
    """Whether `path` is a readable .npz holding `keys` (an output a run finished)."""
    try:
        with zipfile.ZipFile(path) as z:
            names = set(z.namelist())
            if z.testzip() is not None:
                return False
    except (OSError, zipfile.BadZipFile):
        return False
    return all(f"{k}.npy" in names for k in keys)


def left_unfinished(path: str | os.PathLike, keys: Sequence[str]) -> bool:
    """Whether the existing file `path` is what a killed run (openl3's, writing in place)
    leaves: empty, or a zip (.npz) that does not read whole with `keys`. Any other file
    is not taken for an unfinished output (openl3's rule applies: it is kept)."""
    try:
        with open(path, "rb") as f:
            head = f.read(4)
    except OSError:
        return False
    if not head:
        return True
    return head == b"PK\x03\x04" and not output_complete(path, keys)


def _keep_existing(out_path: str, keys: Sequence[str], overwrite: bool, verbose: bool) -> bool:
    """openl3's rule (an existing output is kept unless `overwrite`), except that one a
    killed run left unfinished (left_unfinished) is redone."""
    if overwrite or not os.path.exists(out_path):
        return False
    if left_unfinished(out_path, keys):
        if verbose:
            print(f"openl3: {out_path} is incomplete (left by an interrupted run), recomputing it.")
        return False
    return True


# ---------------------------------------------------------------------------
# Audio files
# ---------------------------------------------------------------------------
def _paths_of(filepath: Any) -> list[str]:
    if isinstance(filepath, (str, os.PathLike)):
        return [os.fspath(filepath)]
    if isinstance(filepath, (list, tuple)):
        return [os.fspath(p) for p in filepath]
    raise OpenL3Error(f"filepath should be type str or list[str], but got {filepath}.")


def _run_group(group: list, run: Any, on_error: Any) -> None:
    """Run `run(group)`; when it fails and errors are reported, retry file by file so only
    the bad file is reported (a group shares batches, not fate)."""
    if on_error is None or len(group) == 1:
        try:
            run(group)
        except Exception as exc:
            if on_error is None:
                raise
            on_error(group[0][0], exc)
        return
    try:
        run(group)
    except Exception:
        for item in group:
            _run_group([item], run, on_error)


def process_audio_file(
    filepath: str | Sequence[str],
    output_dir: str | None = None,
    suffix: str | None = None,
    model: AudioEmbeddingModel | None = None,
    input_repr: str | None = None,
    content_type: str = "music",
    embedding_size: int = 6144,
    center: bool = True,
    hop_size: float = 0.1,
    batch_size: int = 32,
    overwrite: bool = False,
    frontend: str = "kapre",
    verbose: bool = True,
    *,
    weights_path: str | None = None,
    device: str = "cpu",
    on_error: Any = None,
) -> None:
    """openl3.process_audio_file: writes <stem>[_<suffix>].npz with `embedding` and `timestamps`.

    Existing outputs are skipped unless `overwrite` (an incomplete one is
    redone). Audio is read with soundfile as float64 (multichannel averaged),
    as openl3 does; formats soundfile cannot read are decoded with FFmpeg.
    Outputs are written atomically. `on_error(path, exception)`, when given, is called for
    a file that fails and the others go on (openl3 stops at the first).
    """
    paths = _paths_of(filepath)
    suffix = suffix or ""
    frontend, input_repr = _audio_settings(frontend, input_repr, model)
    if model is None:
        model = load_audio_embedding_model(
            input_repr, content_type, embedding_size, frontend, weights_path=weights_path, device=device
        )
    group: list[tuple[str, str, np.ndarray, Real]] = []  # files whose windows share batches
    n_group = 0
    hop_len = hop_samples(hop_size) if isinstance(hop_size, Real) and hop_size > 0 else 0

    def run(items: list) -> None:
        embs, tss = get_audio_embedding(
            [a for _, _, a, _ in items], [r for _, _, _, r in items], model=model, center=center,
            hop_size=hop_size, batch_size=batch_size, frontend=frontend, verbose=verbose,
        )
        for (_, out_path, _, _), emb, ts in zip(items, embs, tss):
            save_npz_atomic(out_path, embedding=emb, timestamps=ts)
            if verbose:
                print(f"openl3: Saved {out_path}")

    for k, path in enumerate(paths):
        try:
            if not os.path.exists(path):
                raise OpenL3Error(f'File "{path}" could not be found.')
            if verbose:
                print(f"openl3: Processing {path} ({k + 1}/{len(paths)})")
            out_path = get_output_path(path, suffix + ".npz", output_dir=output_dir)
            if _keep_existing(out_path, ("embedding", "timestamps"), overwrite, verbose):
                print(f"openl3: {out_path} exists and overwriting not enabled, skipping.")
                continue
            audio, sr = read_audio_like_openl3(path)
            if audio.size == 0:
                raise OpenL3Error(f'Got empty audio in "{path}"')
        except Exception as exc:
            if on_error is None:
                raise
            on_error(path, exc)
            continue
        group.append((path, out_path, audio, sr))
        if hop_len:
            n_group += num_windows(max(1, int(np.ceil(audio.shape[0] * TARGET_SR / sr))), hop_len, center)
        if n_group >= batch_size:
            _run_group(group, run, on_error)
            group, n_group = [], 0
    if group:
        _run_group(group, run, on_error)


# ---------------------------------------------------------------------------
# Images
# ---------------------------------------------------------------------------
def _preprocess_image_batch(image: np.ndarray) -> np.ndarray:
    """openl3's image preprocessing: (H, W, 3) or (N, H, W, 3) -> (N, 224, 224, 3) float32
    (preprocessing.preprocess_image_batch, which states the rules)."""
    return preprocess_image_batch(image)


def get_image_embedding(
    image: np.ndarray | list[np.ndarray],
    frame_rate: Real | list[Real] | None = None,
    model: ImageEmbeddingModel | None = None,
    input_repr: str = "mel256",
    content_type: str = "music",
    embedding_size: int = 8192,
    batch_size: int = 32,
    verbose: bool = True,
    *,
    weights_path: str | None = None,
    device: str = "cpu",
) -> Any:
    """openl3.get_image_embedding: embedding (N, D) of each image / frame, and with
    `frame_rate` the timestamps arange(N) / frame_rate; lists in, lists out.

    (H, W, 3) and (N, H, W, 3) arrays are preprocessed as openl3 does, one array
    at a time (see preprocessing.preprocess_image_batch: a sequence's frames
    share one scaling), then embedded `batch_size` at a time.
    """

    if model is not None and not isinstance(model, ImageEmbeddingModel):
        raise OpenL3Error(f"Invalid model provided; got {type(model)}; use load_image_embedding_model()")
    if str(input_repr) not in INPUT_REPRS:
        raise OpenL3Error(f'Invalid input representation "{input_repr}"')
    if str(content_type) not in VALID_CONTENT_TYPES:
        raise OpenL3Error(f'Invalid content type "{content_type}"')
    if embedding_size not in VALID_IMAGE_EMBEDDING_SIZES:
        raise OpenL3Error(f'Invalid embedding size "{embedding_size}"')
    if verbose not in (0, 1):
        raise OpenL3Error(f"Invalid verbosity level {verbose}")
    if model is None:
        model = load_image_embedding_model(input_repr, content_type, embedding_size,
                                           weights_path=weights_path, device=device)
    if isinstance(image, np.ndarray):
        image_list, list_input = [image], False
    elif isinstance(image, list):
        image_list, list_input = image, True
    else:
        raise OpenL3Error(f"image must be type list[np.ndarray] or np.ndarray. Got {type(image)}")
    if frame_rate is None or isinstance(frame_rate, Real):
        rate_list = [frame_rate] * len(image_list)
    elif isinstance(frame_rate, list):
        rate_list = frame_rate
    else:
        raise OpenL3Error(
            f"frame rate must be type list[numbers.Real] or numbers.Real. Got {type(frame_rate)}"
        )
    if len(image_list) != len(rate_list):
        raise OpenL3Error(
            f"Mismatch between number of image inputs ({len(image_list)}) and number of "
            f"frame rates ({len(rate_list)})"
        )
    batches, counts = [], []
    for img, rate in zip(image_list, rate_list):
        if rate is not None and (not isinstance(rate, Real) or rate <= 0):
            raise OpenL3Error(f"Invalid frame rate {rate}")
        x = preprocess_image_batch(img)
        batches.append(x)
        counts.append(x.shape[0])
    allemb = model.predict(np.concatenate(batches), batch_size=batch_size)
    emb_list, ts_list, i = [], [], 0
    for n, rate in zip(counts, rate_list):
        emb_list.append(allemb[i : i + n])
        if frame_rate is not None:
            ts_list.append(np.arange(n) / float(rate))
        i += n
    if frame_rate is not None:
        return (emb_list, ts_list) if list_input else (emb_list[0], ts_list[0])
    return emb_list if list_input else emb_list[0]


def _explain_image(path: str, exc: OpenL3Error, arr: np.ndarray) -> OpenL3Error:
    hint = ""
    if arr.ndim == 2 or (arr.ndim == 3 and arr.shape[-1] in (1, 2)):
        hint = (" (a grayscale image: openl3 embeds only 3-channel RGB; convert it, or use "
                "run_extraction.py's openl3_image, which converts it)")
    elif "at least as large" in str(exc):
        hint = " (openl3's image network needs 224 px on each side)"
    return OpenL3Error(f'{exc}{hint}: "{path}"')


def process_image_file(
    filepath: str | Sequence[str],
    output_dir: str | None = None,
    suffix: str | None = None,
    model: ImageEmbeddingModel | None = None,
    input_repr: str = "mel256",
    content_type: str = "music",
    embedding_size: int = 8192,
    batch_size: int = 32,
    overwrite: bool = False,
    verbose: bool = True,
    *,
    weights_path: str | None = None,
    device: str = "cpu",
    on_error: Any = None,
) -> None:
    """openl3.process_image_file: writes <stem>[_<suffix>].npz with `embedding` (1, D) float32.

    Images are read as openl3 reads them (`read_image_like_openl3`) and
    embedded `batch_size` files at a time; outputs are written atomically;
    existing ones are skipped unless `overwrite`. `on_error(path, exception)`,
    when given, is called for a file that fails and the others go on.
    """

    paths = _paths_of(filepath)
    if model is None:
        model = load_image_embedding_model(input_repr, content_type, embedding_size,
                                           weights_path=weights_path, device=device)
    suffix = suffix or ""
    group: list[tuple[str, str, np.ndarray]] = []

    def run(items: list) -> None:
        x = np.concatenate([it[2] for it in items])
        embs = model.predict(x, batch_size=batch_size)
        for i, (_, out_path, _) in enumerate(items):
            save_npz_atomic(out_path, embedding=embs[i : i + 1])
            if verbose:
                print(f"openl3: Saved {out_path}")

    for k, path in enumerate(paths):
        try:
            if not os.path.exists(path):
                raise OpenL3Error(f'File "{path}" could not be found.')
            if verbose:
                print(f"openl3: Processing {path} ({k + 1}/{len(paths)})")
            out_path = get_output_path(path, suffix + ".npz", output_dir=output_dir)
            if _keep_existing(out_path, ("embedding",), overwrite, verbose):
                print(f"openl3: {out_path} exists, skipping.")
                continue
            arr = read_image_like_openl3(path)
            try:
                x = preprocess_image_batch(arr[np.newaxis, ...])
            except OpenL3Error as exc:
                raise _explain_image(path, exc, arr) from None
        except Exception as exc:
            if on_error is None:
                raise
            on_error(path, exc)
            continue
        group.append((path, out_path, x))
        if len(group) >= batch_size:
            _run_group(group, run, on_error)
            group = []
    if group:
        _run_group(group, run, on_error)


# ---------------------------------------------------------------------------
# Videos
# ---------------------------------------------------------------------------
def process_video_file(
    filepath: str | Sequence[str],
    output_dir: str | None = None,
    suffix: str | None = None,
    audio_model: AudioEmbeddingModel | None = None,
    image_model: ImageEmbeddingModel | None = None,
    input_repr: str | None = None,
    content_type: str = "music",
    audio_embedding_size: int = 6144,
    audio_center: bool = True,
    audio_hop_size: float = 0.1,
    image_embedding_size: int = 8192,
    audio_batch_size: int = 32,
    image_batch_size: int = 32,
    audio_frontend: str = "kapre",
    overwrite: bool = False,
    verbose: bool = True,
    *,
    weights_path: str | None = None,
    device: str = "cpu",
    on_error: Any = None,
) -> None:
    """openl3.process_video_file: writes <stem>_audio[_<suffix>].npz and <stem>_image[_<suffix>].npz,
    each with `embedding` and `timestamps` (float64), not aligned with each other.

    The sound track: 48 kHz stereo as moviepy decodes it, averaged, embedded
    like get_audio_embedding (timestamps arange(T) * hop). Every frame of the
    video (moviepy's int(duration * fps) frames, 256x256 bicubic, centre crop,
    divided by the video's largest pixel value), timestamps arange(N) /
    int(fps) as openl3 writes them. One decode per file; frames are streamed,
    so memory stays bounded on long videos. A file is written whole or not at
    all; existing outputs are skipped unless `overwrite`. `weights_path`: a
    folder holding both weight files, or "random". `on_error(path, exception)`,
    when given, is called for a file that fails and the others go on.
    """

    paths = _paths_of(filepath)
    audio_frontend, input_repr = _audio_settings(audio_frontend, input_repr, audio_model)
    if audio_model is None:
        audio_model = load_audio_embedding_model(input_repr, content_type, audio_embedding_size,
                                                 audio_frontend, weights_path=weights_path, device=device)
    if image_model is None:
        image_model = load_image_embedding_model(input_repr, content_type, image_embedding_size,
                                                 weights_path=weights_path, device=device)
    audio_suffix, image_suffix = "audio", "image"
    if suffix:
        audio_suffix += "_" + suffix
        image_suffix += "_" + suffix
    for k, path in enumerate(paths):
        try:
            if not os.path.exists(path):
                raise OpenL3Error(f'File "{path}" could not be found.')
            if verbose:
                print(f"openl3: Processing {path} ({k + 1}/{len(paths)})")
            audio_out = get_output_path(path, audio_suffix + ".npz", output_dir=output_dir)
            image_out = get_output_path(path, image_suffix + ".npz", output_dir=output_dir)
            skip_audio = _keep_existing(audio_out, ("embedding", "timestamps"), overwrite, verbose)
            skip_image = _keep_existing(image_out, ("embedding", "timestamps"), overwrite, verbose)
            if skip_audio and skip_image:
                print(f"openl3: {audio_out} and {image_out} exist, skipping.")
                continue
            if skip_audio:
                print(f"openl3: {audio_out} exists, skipping audio embedding extraction.")
            if skip_image:
                print(f"openl3: {image_out} exists, skipping image embedding extraction.")
            embedder = None
            if not skip_image:
                embedder = VideoEmbedder(image_model.loaded, image_model.embedding_size,
                                                      image_batch_size, "float32")
            try:
                video = decode_video_like_openl3(
                    path, embedder, not skip_audio,
                    np.float64 if audio_frontend == "librosa" else np.float32,
                )
            finally:
                if embedder is not None:
                    embedder.close()
            results = []
            if not skip_audio:
                emb, ts = get_audio_embedding(
                    video.audio_mono, TARGET_SR, model=audio_model, center=audio_center,
                    hop_size=audio_hop_size, batch_size=audio_batch_size, frontend=audio_frontend,
                    verbose=verbose,
                )
                results.append((audio_out, emb, ts))
            if not skip_image:
                if int(video.fps) <= 0:
                    raise OpenL3Error(f"Invalid frame rate {int(video.fps)} (openl3 uses int(fps))")
                ts = np.arange(video.image_embedding.shape[0]) / float(int(video.fps))
                results.append((image_out, video.image_embedding, ts))
        except Exception as exc:
            if on_error is None:
                raise
            on_error(path, exc)
            continue
        for out_path, emb, ts in results:
            save_npz_atomic(out_path, embedding=emb, timestamps=ts)
            if verbose:
                print(f"openl3: Saved {out_path}")
