"""Start-up: wall time of the answers that need no model (--help, --list_models, a config error).

    python benchmarks/bench_startup.py                          # this checkout, 5 runs each
    python benchmarks/bench_startup.py --before /tmp/main_copy  # against another checkout, interleaved

Each command runs in a fresh interpreter (`sys.executable`), from the checkout's root, so what
is measured is what a user waits for: interpreter start, imports, the answer (after one untimed
run of each, which writes __pycache__ and warms the file cache). With --before,
the two checkouts alternate run by run (the machine is shared: both see the same load), and
the medians are reported. Writes benchmarks/results/startup.json (with `uptime`'s load) and
prints a markdown table.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def commands(empty_dir: str) -> dict[str, list[str]]:
    """label -> argv (after the interpreter); the config error passes every torch model."""
    return {
        "run_extraction.py --help": ["run_extraction.py", "--help"],
        "run_extraction.py --list_models": ["run_extraction.py", "--list_models"],
        "run_extraction.py config error": [
            "run_extraction.py", "--no_progress", "--audio_dir", empty_dir, "--output_base",
            os.path.join(empty_dir, "out"), "--models", "clmr", "crepe", "mert", "openl3", "openl3_image",
            "r3d18", "resnet18", "--set", "crepe.capacity=huge",
        ],
        "openl3_cli.py --help": ["openl3_cli.py", "--help"],
    }


def timed(root: Path, argv: list[str]) -> float:
    """Seconds of one run of `python argv` in `root` (its output discarded)."""
    t0 = time.perf_counter()
    subprocess.run([sys.executable, *argv], cwd=root, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                   check=False)
    return time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--before", type=Path, help="another checkout to compare with (e.g. an export of main)")
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--json", type=Path, default=ROOT / "benchmarks" / "results" / "startup.json")
    args = ap.parse_args()
    roots = {"before": args.before.resolve(), "after": ROOT} if args.before else {"now": ROOT}
    load_before = os.getloadavg()
    times: dict[str, dict[str, list[float]]] = {}
    with tempfile.TemporaryDirectory() as empty:
        cmds = commands(empty)
        for argv in cmds.values():  # untimed: writes __pycache__, warms the file cache
            for root in roots.values():
                timed(root, argv)
        for _ in range(args.repeats):
            for label, argv in cmds.items():
                for which, root in roots.items():  # alternate: both checkouts see the same load
                    times.setdefault(label, {}).setdefault(which, []).append(timed(root, argv))
    load_after = os.getloadavg()
    medians = {label: {w: statistics.median(v) for w, v in by.items()} for label, by in times.items()}
    header = " | ".join(f"{w} median (s)" for w in roots)
    print(f"| command | {header} |" + (" ratio |" if args.before else ""))
    print("|---|" + "---|" * (len(roots) + bool(args.before)))
    for label, med in medians.items():
        cells = " | ".join(f"{med[w]:.2f}" for w in roots)
        ratio = f" {med['before'] / med['after']:.1f}x |" if args.before else ""
        print(f"| `{label}` | {cells} |{ratio}")
    print(f"load average (1, 5, 15 min) before {load_before}, after {load_after}; {os.cpu_count()} CPUs")
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps({
        "date": time.strftime("%Y-%m-%d %H:%M"),
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version(),
                    "platform": platform.platform()},
        "load_average_before": load_before, "load_average_after": load_after,
        "repeats": args.repeats, "roots": {w: str(r) for w, r in roots.items()},
        "seconds": times, "median_seconds": medians,
    }, indent=1) + "\n")
    print(f"wrote {args.json}")


if __name__ == "__main__":
    main()
