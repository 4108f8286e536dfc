"""Plugin registry: every `Extractor` subclass in `extractors/` under its `name`.

Adding a model is one new module in `extractors/`; nothing here changes.
Modules are imported on first use; a plugin whose module fails to import is
reported with the import error when asked for, and the others still work.
"""

from __future__ import annotations

import importlib
import pkgutil

import extractors
from extractors.base import ConfigError, Extractor

_PLUGINS: dict[str, type[Extractor]] | None = None
_BROKEN: dict[str, str] = {}  # module name -> import error


def _scan() -> dict[str, type[Extractor]]:
    global _PLUGINS
    if _PLUGINS is None:
        found: dict[str, type[Extractor]] = {}
        for mod in pkgutil.iter_modules(extractors.__path__):
            if mod.name.startswith("_") or mod.name == "base":
                continue
            try:
                module = importlib.import_module(f"extractors.{mod.name}")
            except Exception as exc:  # keep the others usable
                _BROKEN[mod.name] = f"{type(exc).__name__}: {exc}"
                continue
            for obj in vars(module).values():
                if (
                    isinstance(obj, type)
                    and issubclass(obj, Extractor)
                    and obj is not Extractor
                    and obj.__module__ == module.__name__
                    and getattr(obj, "name", None)
                ):
                    if obj.name in found:
                        raise RuntimeError(f"two plugins named {obj.name!r}: {found[obj.name]} and {obj}")
                    found[obj.name] = obj
        _PLUGINS = dict(sorted(found.items()))
    return _PLUGINS


def available() -> list[str]:
    """Names of all registered plugins, sorted."""
    return list(_scan())


def get(name: str) -> type[Extractor]:
    """The plugin class registered as `name`; ConfigError listing known names otherwise."""
    plugins = _scan()
    if name in plugins:
        return plugins[name]
    hint = ""
    if name in _BROKEN:
        hint = f" (its module failed to import: {_BROKEN[name]})"
    raise ConfigError(f"unknown model {name!r}{hint}; available: {', '.join(plugins) or '(none)'}")


def create(name: str, **kwargs) -> Extractor:
    """Instantiate plugin `name` with validated parameters."""
    return get(name)(**kwargs)
