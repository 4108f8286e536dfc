"""`python openl3_cli.py audio|image|video PATH...` from a checkout: openl3's command line.

The command is `embedkit.openl3.cli` (installed: `embedkit openl3`, `embedkit-openl3`,
`python -m embedkit.openl3`); this file only runs it from a checkout.
"""

from __future__ import annotations

if not __package__:  # `python openl3_cli.py` from a checkout: the checkout is the package embedkit
    import _checkout  # noqa: F401

import sys

from embedkit.openl3.cli import main

__all__ = ["main"]

if __name__ == "__main__":
    sys.exit(main())
