"""crepe 0.0.16's API and command line on embedkit's PyTorch port of CREPE (no TensorFlow).

A script written for crepe runs after changing one line::

    import embedkit.crepe as crepe        # was: import crepe

    time, frequency, confidence, activation = crepe.predict(audio, sr, viterbi=True)
    crepe.process_file("song.wav", output="f0", save_activation=True)

`embedkit.crepe.core` holds the functions (crepe's `crepe.core`: `get_activation`,
`predict`, `process_file`, `to_local_average_cents`, `to_viterbi_cents`,
`build_and_load_model`, `output_path`); `embedkit.crepe.cli` the command line
(`embedkit-crepe`, `embedkit crepe`, `python -m embedkit.crepe`). What differs from crepe
is listed in docs/crepe.md ("Drop-in for crepe").
"""

if __name__ != "embedkit.crepe":  # e.g. `import crepe` with the checkout as the current folder
    raise ImportError(f"{__file__} is embedkit's crepe drop-in and was imported as {__name__!r} because the "
                      "embedkit checkout is on sys.path: use `import embedkit.crepe as crepe`, or run from "
                      "another folder to import crepe itself")

from embedkit.crepe import core  # noqa: E402
from embedkit.crepe.core import (  # noqa: E402
    get_activation,
    predict,
    process_file,
    to_local_average_cents,
    to_viterbi_cents,
)

# The crepe release whose API, defaults and output files this module reproduces.
CREPE_VERSION = "0.0.16"
__version__ = CREPE_VERSION

__all__ = ["core", "get_activation", "predict", "process_file", "to_local_average_cents", "to_viterbi_cents"]
