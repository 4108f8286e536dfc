"""openl3.models: the embedding models, loaded from their weight files (PyTorch, no TensorFlow).

openl3's names, arguments and defaults; each function returns an object that stands in
for openl3's Keras model where openl3's own functions take one (`model=` of
`get_audio_embedding`, `process_*_file`): it knows its input representation, front-end
and embedding size, has `input_shape`, `output_shape` and `predict(x)`, and runs on a
torch device. Extra keyword arguments (not in openl3): `weights_path` (a weight file, a
folder holding one, or "random" for seeded random weights) and `device` ("cpu", "cuda",
"cuda:N" or "auto").

Where openl3 looks for its weights only in its own package folder, this looks in the
places `embedkit.openl3.weightfiles` lists (an installed openl3 package among them) and
downloads what it cannot find.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from embedkit.openl3.network import (
    IMAGE_EMBEDDING_SIZES,
    LoadedModel,
    embed_batches,
    run_network,
)
from embedkit.openl3.openl3_exceptions import OpenL3Error
from embedkit.openl3.preprocessing import (
    CONTENT_TYPES,
    INPUT_REPRS,
    WINDOW,
    kapre_frontend,
    spectrogram_shape,
)

VALID_FRONTENDS = ("librosa", "kapre")
VALID_INPUT_REPRS = INPUT_REPRS
VALID_CONTENT_TYPES = CONTENT_TYPES
VALID_AUDIO_EMBEDDING_SIZES = (6144, 512)
VALID_IMAGE_EMBEDDING_SIZES = IMAGE_EMBEDDING_SIZES
# openl3's final max pool (frequency, time) per input representation and embedding size
AUDIO_POOLING_SIZES = {
    "linear": {6144: (8, 8), 512: (32, 24)},
    "mel128": {6144: (4, 8), 512: (16, 24)},
    "mel256": {6144: (8, 8), 512: (32, 24)},
}
IMAGE_POOLING_SIZES = {8192: (7, 7), 512: (28, 28)}
_CONFIG_IN_NAME = re.compile(r"(linear|mel128|mel256)_(music|env)")


@dataclass
class AudioEmbeddingModel:
    """What `load_audio_embedding_model` returns; stands in for openl3's Keras audio model.

    `predict(x)` takes what openl3's model takes: windows (N, 1, 48000) with the kapre
    front-end (it is part of the model, as in openl3), spectrograms (N, F, T, 1) with the
    librosa one; returns (N, embedding_size) float32. `content_type` is None for a model
    loaded from a file whose name does not say it.
    """

    input_repr: str
    content_type: str | None
    embedding_size: int
    frontend: str
    loaded: LoadedModel

    @property
    def input_shape(self) -> tuple:
        f, t = spectrogram_shape(self.input_repr)
        return (None, 1, WINDOW) if self.frontend == "kapre" else (None, f, t, 1)

    @property
    def output_shape(self) -> tuple:
        return (None, self.embedding_size)

    def predict(self, x: np.ndarray, batch_size: int = 32, verbose: Any = 0) -> np.ndarray:
        x = np.asarray(x)
        out = []
        for i in range(0, x.shape[0], batch_size):
            xb = x[i : i + batch_size]
            if self.frontend == "kapre":
                spec = kapre_frontend(xb.reshape(-1, WINDOW), self.input_repr)
            else:
                spec = xb[..., 0]
            out.append(run_network(self.loaded, spec, self.input_repr, self.embedding_size))
        return np.concatenate(out) if out else np.zeros((0, self.embedding_size), np.float32)


@dataclass
class ImageEmbeddingModel:
    """What `load_image_embedding_model` returns; stands in for openl3's Keras image model.

    `predict(x)` takes preprocessed images (N, 224, 224, 3) float32, as openl3's model, and
    returns (N, embedding_size) float32. `input_repr`/`content_type` name the audio network
    the image network was trained with (None when loaded from a file whose name does not say).
    """

    input_repr: str | None
    content_type: str | None
    embedding_size: int
    loaded: LoadedModel  # the image network

    input_shape = (None, 224, 224, 3)

    @property
    def output_shape(self) -> tuple:
        return (None, self.embedding_size)

    def predict(self, x: np.ndarray, batch_size: int = 32, verbose: Any = 0) -> np.ndarray:
        return embed_batches(self.loaded, np.asarray(x, np.float32), self.embedding_size, batch_size,
                             "float32")


def _validate_audio_frontend(
    frontend: str = "kapre", input_repr: str | None = None, model: Any = None
) -> tuple[str, str]:
    """openl3's check of (frontend, input_repr[, model]): returns (frontend, input_repr).

    As openl3: the front-end must be one of VALID_FRONTENDS and agree with the model's
    input (3 dimensions for kapre, 4 for librosa); input_repr defaults to mel256 with
    kapre and is required with librosa. OpenL3Error otherwise.
    """
    if frontend not in VALID_FRONTENDS:
        raise OpenL3Error(f'Invalid frontend "{frontend}". Must be one of {VALID_FRONTENDS}')
    if model is not None:
        shape = getattr(model, "input_shape", None)
        ndims = len(shape) if shape is not None else None
        want = 3 if frontend == "kapre" else 4
        if ndims != want:
            other = "librosa" if frontend == "kapre" else "kapre"
            raise OpenL3Error(
                f"Invalid model input shape: {shape}. Expected {want} dims got {ndims}: the model was loaded "
                f"for frontend={other!r}; load one with frontend={frontend!r}, or pass frontend={other!r}"
            )
    if input_repr is None:
        if frontend == "librosa":
            raise OpenL3Error("You must specify input_repr for a librosa frontend.")
        input_repr = "mel256"
    if str(input_repr) not in VALID_INPUT_REPRS:
        raise OpenL3Error(f'Invalid input representation "{input_repr}". Must be one of {VALID_INPUT_REPRS}')
    return frontend, input_repr


def _check_sizes(content_type: Any, embedding_size: Any, valid_sizes: tuple) -> None:
    if str(content_type) not in VALID_CONTENT_TYPES:
        raise OpenL3Error(f'Invalid content type "{content_type}". Must be one of {VALID_CONTENT_TYPES}')
    _check_size(embedding_size, valid_sizes)


def _check_size(embedding_size: Any, valid_sizes: tuple) -> None:
    if embedding_size not in valid_sizes:
        raise OpenL3Error(f'Invalid embedding size "{embedding_size}". Must be one of {valid_sizes}')


def _content_in_name(path: str | os.PathLike) -> str | None:
    m = _CONFIG_IN_NAME.search(Path(path).name)
    return m.group(2) if m else None


# -- audio ---------------------------------------------------------------------------------
def _load_audio_model(input_repr: str, content_type: str | None, embedding_size: int, frontend: str,
                      weights_path: str | None, device: str, entry: str) -> AudioEmbeddingModel:
    from embedkit.openl3 import weightfiles

    frontend, input_repr = _validate_audio_frontend(frontend, input_repr)
    loaded = weightfiles.load_network(input_repr, content_type, device, weights_path, entry=entry)
    return AudioEmbeddingModel(input_repr, content_type, embedding_size, frontend, loaded)


def load_audio_embedding_model(
    input_repr: str,
    content_type: str,
    embedding_size: int,
    frontend: str = "kapre",
    *,
    weights_path: str | os.PathLike | None = None,
    device: str = "cpu",
) -> AudioEmbeddingModel:
    """The audio model for (input_repr, content_type), pooled to `embedding_size` (6144 or 512).

    frontend "kapre": the model takes windows and computes the spectrogram itself;
    "librosa": it takes the spectrograms `preprocess_audio(..., input_repr=...)` makes.
    """
    _validate_audio_frontend(frontend, input_repr)
    _check_sizes(content_type, embedding_size, VALID_AUDIO_EMBEDDING_SIZES)
    path = None if weights_path is None else os.fspath(weights_path)
    return _load_audio_model(input_repr, content_type, embedding_size, frontend, path, device, "api")


def load_audio_embedding_model_from_path(
    model_path: str | os.PathLike,
    input_repr: str,
    embedding_size: int,
    frontend: str = "kapre",
    *,
    device: str = "cpu",
) -> AudioEmbeddingModel:
    """The audio model whose weights are the file `model_path` (an official `.h5`, or a
    torchopenl3 `.pth.tar`); a name that says another input representation is refused."""
    _validate_audio_frontend(frontend, input_repr)
    _check_size(embedding_size, VALID_AUDIO_EMBEDDING_SIZES)
    path = os.fspath(model_path)
    content = _content_in_name(path)
    return _load_audio_model(input_repr, content, embedding_size, frontend, path, device, "api")


def get_audio_embedding_model_path(input_repr: str, content_type: str) -> str:
    """Where the weights of the (input_repr, content_type) audio model are: the file found
    (embedkit's cache, an installed openl3 package, ...), else where the cache keeps it once
    downloaded (`$EMBEDKIT_CACHE/openl3/openl3_audio_<input_repr>_<content_type>.h5`)."""
    return _model_path(input_repr, content_type, "audio")


# -- image ---------------------------------------------------------------------------------
def _load_image_model(input_repr: str | None, content_type: str | None, embedding_size: int,
                      weights_path: str | None, device: str, entry: str) -> ImageEmbeddingModel:
    from embedkit.openl3 import weightfiles

    loaded = weightfiles.load_image_network(input_repr or "mel256", content_type, device, weights_path,
                                            entry=entry)
    return ImageEmbeddingModel(input_repr, content_type, embedding_size, loaded)


def load_image_embedding_model(
    input_repr: str,
    content_type: str,
    embedding_size: int,
    *,
    weights_path: str | os.PathLike | None = None,
    device: str = "cpu",
) -> ImageEmbeddingModel:
    """The image model trained with the (input_repr, content_type) audio model, pooled to
    `embedding_size` (8192 or 512)."""
    if str(input_repr) not in VALID_INPUT_REPRS:
        raise OpenL3Error(f'Invalid input representation "{input_repr}". Must be one of {VALID_INPUT_REPRS}')
    _check_sizes(content_type, embedding_size, VALID_IMAGE_EMBEDDING_SIZES)
    path = None if weights_path is None else os.fspath(weights_path)
    return _load_image_model(input_repr, content_type, embedding_size, path, device, "api")


def load_image_embedding_model_from_path(
    model_path: str | os.PathLike, embedding_size: int, *, device: str = "cpu"
) -> ImageEmbeddingModel:
    """The image model whose weights are the file `model_path` (an official `openl3_image_*.h5`)."""
    _check_size(embedding_size, VALID_IMAGE_EMBEDDING_SIZES)
    path = os.fspath(model_path)
    m = _CONFIG_IN_NAME.search(Path(path).name)
    input_repr, content_type = (m.group(1), m.group(2)) if m else (None, None)
    return _load_image_model(input_repr, content_type, embedding_size, path, device, "api")


def get_image_embedding_model_path(input_repr: str, content_type: str) -> str:
    """As get_audio_embedding_model_path, for `openl3_image_<input_repr>_<content_type>.h5`."""
    return _model_path(input_repr, content_type, "image")


def _model_path(input_repr: str, content_type: str, modality: str) -> str:
    from embedkit import weights
    from embedkit.extractors.base import WeightsError
    from embedkit.openl3 import weightfiles

    name = weightfiles.official_filename(input_repr, content_type, modality)
    try:
        found = weightfiles.find_weights(input_repr, content_type, None, allow_download=False,
                                         modality=modality, entry="api")
        if found.name == name:
            return str(found)
    except WeightsError:
        pass
    return str(weights.model_cache_dir("openl3") / name)
