"""embedkit.openl3: openl3 0.4.2's Python API and command line, on embedkit's PyTorch port.

An openl3 script runs after changing only its import line:

    import embedkit.openl3 as openl3                       # was: import openl3
    emb, ts = openl3.get_audio_embedding(audio, sr, content_type="env", embedding_size=512)
    model = openl3.models.load_audio_embedding_model("mel256", "music", 512)
    openl3.process_video_file("clip.mp4", output_dir="feats")

    python -m embedkit.openl3 audio song.wav -o feats     # was: openl3 audio song.wav -o feats

Laid out as openl3: `core` (embeddings of arrays and files), `models` (loading the
models), `cli` (the command line), `openl3_exceptions.OpenL3Error`,
`openl3_warnings.OpenL3Warning`. No TensorFlow: the networks run in PyTorch
(`network`), fed by numpy front-ends (`preprocessing`) and files read as openl3
reads them (`decoding`); `weightfiles` finds and reads openl3's weight files. Every
function also takes `weights_path=` and `device=`. Where this differs from openl3 on
purpose: docs/openl3.md.
"""

from embedkit.openl3 import core, models
from embedkit.openl3.core import (
    get_audio_embedding,
    get_image_embedding,
    get_output_path,
    preprocess_audio,
    process_audio_file,
    process_image_file,
    process_video_file,
)
from embedkit.openl3.openl3_exceptions import OpenL3Error
from embedkit.openl3.openl3_warnings import OpenL3Warning
from embedkit.openl3.version import version as __version__

__all__ = [
    "OpenL3Error",
    "OpenL3Warning",
    "__version__",
    "core",
    "get_audio_embedding",
    "get_image_embedding",
    "get_output_path",
    "models",
    "preprocess_audio",
    "process_audio_file",
    "process_image_file",
    "process_video_file",
]
