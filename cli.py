"""The `embedkit` command: one entry point for every tool in this folder.

    embedkit extract ...   features of every file in a folder (run_extraction.py)
    embedkit search ...    index and query the outputs (run_search.py)
    embedkit browse ...    a local web app over the outputs and the index (run_browse.py)
    embedkit evaluate ...  compare models on your labels: probe and retrieval (evaluate.py)
    embedkit plot ...      pictures of the outputs (plotting.py)
    embedkit export ...    one file a training script loads (export.py)
    embedkit openl3 ...    openl3's own command line (embedkit.openl3.cli)
    embedkit crepe ...     crepe's own command line (embedkit.crepe.cli)

Each command is the module's `main(argv)`; `python <module>.py ...` does the same from a checkout.
"""

from __future__ import annotations

if not __package__:  # `python cli.py` from a checkout: the checkout is the package embedkit
    import _checkout  # noqa: F401

import importlib
import sys

COMMANDS = {
    "extract": ("run_extraction", "extract features of every file in a folder, resumably"),
    "search": ("run_search", "index the outputs and query them by similarity"),
    "browse": ("run_browse", "a local web app: collection map, item pages with players and neighbours"),
    "evaluate": ("evaluate", "compare models on your labels: linear probe and retrieval per model"),
    "plot": ("plotting", "plot per-file features and a map of the collection"),
    "export": ("export", "pack a model folder into one npz / hdf5 / parquet / csv file"),
    "openl3": ("openl3.cli", "openl3's command line (audio | image | video)"),
    "crepe": ("crepe.cli", "crepe's command line (pitch of audio files -> <name>.f0.csv)"),
}


def usage() -> str:
    width = max(map(len, COMMANDS))
    rows = "\n".join(f"  {name:<{width}}  {what}" for name, (_, what) in COMMANDS.items())
    return (f"usage: embedkit COMMAND [ARGS...]\n\ncommands:\n{rows}\n\n"
            "'embedkit COMMAND --help' for a command's options.")


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help", "help"):
        print(usage())
        return 0
    if argv[0] == "--version":
        from importlib.metadata import PackageNotFoundError, version

        try:
            print(f"embedkit {version('embedkit')}")
        except PackageNotFoundError:
            print("embedkit (not installed: running from a checkout)")
        return 0
    name, rest = argv[0], argv[1:]
    if name not in COMMANDS:
        import difflib

        close = difflib.get_close_matches(name, list(COMMANDS), n=1)
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        print(f"embedkit: unknown command {name!r}{hint}\n\n{usage()}", file=sys.stderr)
        return 2
    try:
        module = importlib.import_module(f"embedkit.{COMMANDS[name][0]}")
    except ModuleNotFoundError as exc:
        print(f"embedkit {name}: not available in this installation ({exc})", file=sys.stderr)
        return 2
    sys.argv = [f"embedkit {name}", *rest]  # argparse names the command in its messages
    return int(module.main(rest) or 0)


if __name__ == "__main__":
    sys.exit(main())
