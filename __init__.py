"""embedkit: media collections to research features.

    import embedkit
    crepe = embedkit.load("crepe", capacity="tiny")         # a configured extractor
    f = embedkit.extract(crepe, "song.wav")                 # Features(data, timestamps, extras)
    embedkit.run("media/", "out", models={"melspec": {}})  # a folder, as run_extraction.py
    embedkit.open_results("out")["melspec"].items           # what a run wrote (embedkit.results)
    embedkit.registry.available()                           # the model plugins
    embedkit.ConfigError                                    # raised for a configuration mistake

The API is `embedkit.api` (README "From Python").

Every module has one name, `embedkit.<module>`; importing the package loads nothing heavy
(torch, the plugins, the search stores load when used) and leaves sys.path as it is.
From a checkout, scripts register the folder as this package first (`_checkout.py`).
The `embedkit` command is `embedkit.cli:main`.
"""

from __future__ import annotations

import importlib as _importlib

from embedkit.extractors.base import ConfigError, SkipFile, WeightsError
from embedkit.media import MediaError

__all__ = ["ConfigError", "MediaError", "SkipFile", "WeightsError", "extract", "load", "open_results",
           "registry", "results", "run"]

_API = ("extract", "load", "open_results", "run")
_LAZY_MODULES = ("registry", "results")


def __getattr__(name: str):
    # the API and submodules on first use, so `import embedkit` stays cheap
    if name in _API:
        return getattr(_importlib.import_module("embedkit.api"), name)
    if name in _LAZY_MODULES:
        return _importlib.import_module(f"embedkit.{name}")
    raise AttributeError(f"module 'embedkit' has no attribute {name!r}")
