"""From a checkout, the checkout folder is the package `embedkit`, whatever the folder is called.

Scripts run from a checkout (`python run_extraction.py ...`), the tests and the benchmarks
import this module first. It registers the folder under the name `embedkit` (an installed
copy does not need it), so every module has one name, `embedkit.<module>`, in a checkout
as in site-packages. sys.path is left as it is.
"""

from __future__ import annotations

import importlib.util
import os
import sys


def register() -> object:
    """The package `embedkit` loaded from this folder (or the one already imported)."""
    if "embedkit" in sys.modules:
        return sys.modules["embedkit"]
    here = os.path.dirname(os.path.abspath(__file__))
    spec = importlib.util.spec_from_file_location(
        "embedkit", os.path.join(here, "__init__.py"), submodule_search_locations=[here])
    module = importlib.util.module_from_spec(spec)
    sys.modules["embedkit"] = module
    try:
        spec.loader.exec_module(module)
    except BaseException:
        del sys.modules["embedkit"]
        raise
    return module


register()
