"""embedkit: media collections to research features.

    import embedkit
    embedkit.registry.available()          # the model plugins
    embedkit.ConfigError                   # what the library raises for a configuration mistake

Every module has one name, `embedkit.<module>`; importing the package loads nothing heavy
(torch, the plugins, the search stores load when used) and leaves sys.path as it is.
From a checkout, scripts register the folder as this package first (`_checkout.py`).
The `embedkit` command is `embedkit.cli:main`.
"""

from __future__ import annotations

import importlib as _importlib

from embedkit.extractors.base import ConfigError, SkipFile, WeightsError
from embedkit.media import MediaError

__all__ = ["ConfigError", "MediaError", "SkipFile", "WeightsError", "registry"]

_LAZY_MODULES = ("registry",)


def __getattr__(name: str):
    # submodules on first use, so `import embedkit` stays cheap
    if name in _LAZY_MODULES:
        return _importlib.import_module(f"embedkit.{name}")
    raise AttributeError(f"module 'embedkit' has no attribute {name!r}")
