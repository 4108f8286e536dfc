"""`python -m embedkit.crepe FILE... [options]`: crepe's command line (see embedkit.crepe.cli)."""

import sys

from embedkit.crepe.cli import main

sys.exit(main(prog="python -m embedkit.crepe"))
