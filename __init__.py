"""embedkit: media collections to research features.

Installed (`pip install .`), the checkout's modules live in this package's folder
and import each other by their top-level names, as they do in a checkout
(`import media`, `import registry`); importing the package puts its folder on
sys.path so they can. The `embedkit` command is `embedkit.cli:main`.
"""

import os as _os
import sys as _sys

_HERE = _os.path.dirname(_os.path.abspath(__file__))
if _HERE not in _sys.path:
    _sys.path.insert(0, _HERE)
