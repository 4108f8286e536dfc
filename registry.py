"""Plugin registry: every `Extractor` in `extractors/`, under its `name`.

Adding a model is one new module `extractors/<name>.py` defining one Extractor
subclass whose `name` is the module's name; nothing here changes. Modules are
imported only when their model is asked for, so a run (or a config error) pays
only for the models it uses; a module that fails to import is reported with
its error when asked for, and the others still work.
"""

from __future__ import annotations

import importlib
import pkgutil

from embedkit import extractors
from embedkit.extractors.base import ConfigError, Extractor

_PLUGINS: dict[str, type[Extractor]] = {}


def available() -> list[str]:
    """Names of all plugins, sorted (from the module names: nothing is imported)."""
    return sorted(m.name for m in pkgutil.iter_modules(extractors.__path__)
                  if not m.name.startswith("_") and m.name != "base")


def get(name: str) -> type[Extractor]:
    """The plugin class registered as `name`; ConfigError listing known names otherwise."""
    if name in _PLUGINS:
        return _PLUGINS[name]
    known = available()
    if name not in known:
        import difflib

        close = difflib.get_close_matches(name, known, n=1, cutoff=0.6)
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        raise ConfigError(f"unknown model {name!r}{hint}; available: {', '.join(known) or '(none)'}")
    try:
        module = importlib.import_module(f"{extractors.__name__}.{name}")
    except Exception as exc:
        raise ConfigError(f"model {name!r} cannot be used: its module failed to import "
                          f"({type(exc).__name__}: {exc}); check the installation (pip install -r "
                          "requirements.txt)") from None
    found = [obj for obj in vars(module).values()
             if isinstance(obj, type) and issubclass(obj, Extractor) and obj is not Extractor
             and obj.__module__ == module.__name__ and getattr(obj, "name", None)]
    match = [cls for cls in found if cls.name == name]
    if len(match) != 1:
        raise RuntimeError(f"extractors/{name}.py must define exactly one Extractor named {name!r}; "
                           f"found {[c.name for c in found]}")
    _PLUGINS[name] = match[0]
    return match[0]


def create(name: str, **kwargs) -> Extractor:
    """Instantiate plugin `name` with validated parameters."""
    return get(name)(**kwargs)
