"""`python -m embedkit.openl3 audio|image|video PATH...`: openl3's command line (embedkit.openl3.cli).

As openl3's `python -m openl3`, importing this module runs the command on sys.argv; a
non-zero exit status (module doc of cli) ends the process with it.
"""

import sys

from embedkit.openl3.cli import main

_status = main(prog="python -m embedkit.openl3" if __name__ == "__main__" else None)
if _status:
    sys.exit(_status)
