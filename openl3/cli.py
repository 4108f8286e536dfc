"""openl3.cli: openl3's command line on this toolkit's PyTorch port: `openl3 audio|image|video PATH...`.

A script written for openl3 0.4.2's `openl3` command runs unchanged with
`python -m embedkit.openl3` (or `embedkit openl3`, `embedkit-openl3`, or
`python openl3_cli.py` from a checkout) in its place: the same arguments, the
same defaults (those of openl3's code), the same output files and keys:

    audio  -> <stem>[_<suffix>].npz            embedding (T, 6144|512), timestamps (T,)
    image  -> <stem>[_<suffix>].npz            embedding (1, 8192|512)
    video  -> <stem>_audio[_<suffix>].npz      embedding (T, D), timestamps (T,)
              <stem>_image[_<suffix>].npz      embedding (N, D), timestamps (N,)

written next to each input or in --output-dir. A folder argument takes the
files directly in it (not sub-folders, as openl3), here only those whose
extension is of the modality (the others are counted and named).

Where it differs from openl3's command (on purpose):
- a file that cannot be read or embedded is reported (file and cause) and
  skipped; the others go on (openl3 stops at the first); exit status 1 then;
- outputs are written atomically, existing ones are kept (openl3's rule) unless
  --overwrite, and an incomplete one (a killed openl3 run) is redone: rerunning
  the same command resumes;
- `--embedding-size` (the name openl3's documentation uses; its code has only
  --audio-embedding-size and --image-embedding-size) is accepted: it sets the
  size of the modality run (video: 512 sets both, 6144 the audio, 8192 the image);
- `--output` (the documentation's name) is accepted as well as --output-dir;
- extras: --weights (folder or file of the official .h5 files, or "random"),
  --device.

openl3's documentation and code disagree on two defaults: the documentation
says --input-repr defaults to mel128, the code uses mel256 (used here); and
the documentation's --embedding-size does not exist in the code (see above).

Exit status: 0 all done; 1 some file failed (listed); 2 bad arguments, no
input files, or weights missing; 130 interrupted.

From Python, openl3's own functions: `run(modality, inputs, ...)` (raises OpenL3Error, and
exits -1 when no file is found, as openl3), `parse_args(argv)`, `get_file_list(inputs)`,
`positive_int`, `positive_float`; `main(argv)` is the command (returns its exit status).
"""

from __future__ import annotations

import argparse
import os
import sys
import warnings
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from embedkit.openl3.openl3_exceptions import OpenL3Error

MODALITIES = ("audio", "image", "video")


def positive_float(value: str) -> float:
    """An argparse type accepting only positive floats (as openl3's)."""
    try:
        v = float(value)
    except (TypeError, ValueError) as exc:
        raise argparse.ArgumentTypeError(f"Expected a positive float, error message: {exc}") from None
    if not v > 0:
        raise argparse.ArgumentTypeError("Expected a positive float")
    return v


def positive_int(value: str) -> int:
    """An argparse type accepting only positive ints (as openl3's)."""
    try:
        v = int(value)
    except (TypeError, ValueError) as exc:
        raise argparse.ArgumentTypeError(f"Expected a positive int, error message: {exc}") from None
    if v <= 0:
        raise argparse.ArgumentTypeError("Expected a positive int")
    return v


def get_file_list(input_list: Iterable[str]) -> list[str]:
    """openl3's list of the files named: a file as its absolute path, a folder as the files
    directly in it (sorted here; every file, whatever its extension). ArgumentTypeError for a
    string or non-iterable, OpenL3Error for a path that does not exist."""
    if not isinstance(input_list, Iterable) or isinstance(input_list, str):
        raise argparse.ArgumentTypeError("input_list must be iterable (and not string)")
    files: list[str] = []
    for item in input_list:
        if os.path.isfile(item):
            files.append(os.path.abspath(item))
        elif os.path.isdir(item):
            paths = (os.path.join(item, name) for name in sorted(os.listdir(item)))
            files += [p for p in paths if os.path.isfile(p)]
        else:
            raise OpenL3Error(f"Could not find {item}")
    return files


def run(
    modality: str,
    inputs: str | Iterable[str],
    output_dir: str | None = None,
    suffix: str | None = None,
    input_repr: str = "mel256",
    content_type: str = "music",
    audio_embedding_size: int = 6144,
    audio_center: bool = True,
    audio_hop_size: float = 0.1,
    audio_batch_size: int = 32,
    image_embedding_size: int = 8192,
    image_batch_size: int = 32,
    audio_frontend: str = "kapre",
    overwrite: bool = False,
    verbose: bool = False,
    *,
    weights_path: str | None = None,
    device: str = "cpu",
) -> None:
    """openl3.cli.run: embed `inputs` (a file, or a list of files and folders) of `modality`
    and save them as the command does; openl3's arguments, plus `weights_path` and `device`.

    As openl3: errors raise (OpenL3Error, the first failing file stops the run); no file
    found prints "openl3: No files found in ... Aborting." and exits with status -1.
    """
    from embedkit.openl3 import core, models

    if isinstance(inputs, str):
        files = [inputs]
    elif isinstance(inputs, Iterable):
        files = get_file_list(inputs)
    else:
        raise OpenL3Error(f"Invalid input: {inputs}")
    if not files:
        print(f"openl3: No files found in {inputs}. Aborting.")
        sys.exit(-1)
    if modality not in MODALITIES:
        raise OpenL3Error(f"Invalid modality: {modality}")
    common: dict[str, Any] = {"output_dir": output_dir, "suffix": suffix, "overwrite": overwrite,
                              "verbose": verbose}
    load = {"weights_path": weights_path, "device": device}
    if modality in ("audio", "video"):
        audio_model = models.load_audio_embedding_model(input_repr, content_type, audio_embedding_size,
                                                        frontend=audio_frontend, **load)
    if modality in ("image", "video"):
        image_model = models.load_image_embedding_model(input_repr, content_type, image_embedding_size,
                                                        **load)
    if modality == "audio":
        core.process_audio_file(files, model=audio_model, center=audio_center, hop_size=audio_hop_size,
                                batch_size=audio_batch_size, input_repr=input_repr, frontend=audio_frontend,
                                **common)
    elif modality == "image":
        core.process_image_file(files, model=image_model, batch_size=image_batch_size, **common)
    else:
        core.process_video_file(
            files, audio_model=audio_model, image_model=image_model,
            audio_embedding_size=audio_embedding_size, audio_center=audio_center,
            audio_hop_size=audio_hop_size, audio_batch_size=audio_batch_size,
            image_batch_size=image_batch_size, image_embedding_size=image_embedding_size,
            input_repr=input_repr, audio_frontend=audio_frontend, **common)
    if verbose:
        print("openl3: Done!")


def parse_args(args: list[str]) -> argparse.Namespace:
    """openl3.cli.parse_args: the command's arguments parsed (exits with status 2 on a bad one)."""
    return build_parser(sys.argv[0]).parse_args(args)


def build_parser(prog: str | None = None) -> argparse.ArgumentParser:
    """openl3 0.4.2's arguments (names, short forms, defaults), plus the extras above."""
    p = argparse.ArgumentParser(
        prog=prog,
        description="Extract OpenL3 audio, image or video embeddings (openl3-compatible command line; "
        "PyTorch port, no TensorFlow).",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("modality", choices=MODALITIES,
                   help="String to specify the modality of the input: audio, image, or video.")
    p.add_argument("inputs", nargs="+",
                   help="Path or paths to files to process, or path to a directory of files to process.")
    p.add_argument("--output-dir", "--output", "-o", dest="output_dir", default=None,
                   help="Directory to save the output file(s); if not given, the output is saved "
                   "next to each input file.")
    p.add_argument("--suffix", "-x", default=None,
                   help="String to append to the output filenames. If not provided, no suffix is added.")
    p.add_argument("--input-repr", "-i", default="mel256", choices=["linear", "mel128", "mel256"],
                   help="Time-frequency input representation of the audio network (and the image "
                   "network trained with it). Default mel256 (openl3's code; its documentation says mel128).")
    p.add_argument("--content-type", "-c", default="music", choices=["music", "env"],
                   help="Content type used to train embedding model.")
    p.add_argument("--audio-embedding-size", "-as", type=int, default=6144, choices=[6144, 512],
                   help="Audio embedding dimensionality.")
    p.add_argument("--embedding-size", type=int, default=None, choices=[8192, 6144, 512],
                   help="openl3's documented name: the embedding size of the modality run "
                   "(video: 512 sets both, 6144 the audio, 8192 the image).")
    p.add_argument("--no-audio-centering", "-n", action="store_true", default=False,
                   help="Used for audio embeddings. Do not pad signal; timestamps will correspond to "
                   "the beginning of each analysis window.")
    p.add_argument("--audio-hop-size", "-t", type=positive_float, default=0.1,
                   help="Used for audio embeddings. Hop size in seconds for processing audio files.")
    p.add_argument("--audio-batch-size", "-ab", type=positive_int, default=32,
                   help="Batch size used for input to audio embedding model.")
    p.add_argument("--image-embedding-size", "-is", type=int, default=8192, choices=[8192, 512],
                   help="Image embedding dimensionality.")
    p.add_argument("--image-batch-size", "-ib", type=positive_int, default=32,
                   help="Batch size used for input to image embedding model.")
    p.add_argument("--audio-frontend", "-af", default="kapre", choices=["kapre", "librosa"],
                   help="The acoustic frontend to use.")
    p.add_argument("--overwrite", "-ow", action="store_true",
                   help="If set, overwrites existing outputs files.")
    p.add_argument("--quiet", "-q", action="store_true", default=False,
                   help="Suppress all non-error messages to stdout.")
    p.add_argument("--weights", default=None,
                   help="(embedkit) folder holding openl3_{audio,image}_<repr>_<content>.h5, or 'random'; "
                   "default: the embedkit cache, an installed openl3, else a download")
    p.add_argument("--device", default="auto", help="(embedkit) auto, cpu, cuda or cuda:N (default auto)")
    return p


def _extensions(modality: str) -> tuple[str, ...]:
    from embedkit import media

    if modality == "audio":
        return media.AUDIO_EXTENSIONS
    return media.IMAGE_EXTENSIONS if modality == "image" else media.VIDEO_EXTENSIONS


def gather_files(inputs: list[str], modality: str) -> tuple[list[str], list[str], dict[str, int]]:
    """(files, paths that do not exist, extension -> count left out of folders).

    A file named on the command line is always taken; a folder gives the files
    directly in it (sorted, hidden ones ignored) whose extension is of the modality.
    """
    exts = _extensions(modality)
    files: list[str] = []
    missing: list[str] = []
    left_out: dict[str, int] = {}
    for item in inputs:
        if os.path.isfile(item):
            files.append(os.path.abspath(item))
        elif os.path.isdir(item):
            for name in sorted(os.listdir(item)):
                path = os.path.join(item, name)
                if name.startswith(".") or not os.path.isfile(path):
                    continue
                ext = os.path.splitext(name)[1].lower()
                if ext in exts:
                    files.append(os.path.abspath(path))
                else:
                    left_out[ext or "(none)"] = left_out.get(ext or "(none)", 0) + 1
        else:
            missing.append(item)
    seen: set[str] = set()
    unique = [f for f in files if not (f in seen or seen.add(f))]
    return unique, missing, left_out


def drop_name_clashes(files: list[str], output_dir: str | None) -> tuple[list[str], list[tuple[str, str]]]:
    """openl3 names outputs by stem, so `a.wav` and `a.flac` (or two folders' `a.jpg` with one
    --output-dir) would share one output: the first keeps it, the others are reported."""
    owner: dict[str, str] = {}
    kept, clashes = [], []
    for f in files:
        stem = os.path.splitext(os.path.basename(f))[0]
        key = os.path.join(os.path.abspath(output_dir) if output_dir else os.path.dirname(f), stem)
        if key in owner:
            why = (f"its output would overwrite that of {owner[key]} (same name); "
                   "rename one or run it separately with --suffix")
            clashes.append((f, why))
        else:
            owner[key] = f
            kept.append(f)
    return kept, clashes


def _sizes(args: argparse.Namespace) -> tuple[int, int]:
    audio, image = args.audio_embedding_size, args.image_embedding_size
    n = args.embedding_size
    if n is None:
        return audio, image
    if args.modality == "audio":
        if n not in (6144, 512):
            raise ValueError(f"--embedding-size {n} is not an audio size (6144 or 512)")
        return n, image
    if args.modality == "image":
        if n not in (8192, 512):
            raise ValueError(f"--embedding-size {n} is not an image size (8192 or 512)")
        return audio, n
    return (n if n in (6144, 512) else audio), (n if n in (8192, 512) else image)


def main(argv: list[str] | None = None, prog: str | None = None) -> int:
    """Run the command on `argv` (default: sys.argv[1:]); returns the exit status (module doc).

    `prog`: the name usage messages show (default: argparse's, from sys.argv[0], which
    `embedkit openl3` sets).
    """
    parser = build_parser(prog)
    args = parser.parse_args(argv)
    verbose = not args.quiet
    try:
        audio_size, image_size = _sizes(args)
    except ValueError as exc:
        parser.error(str(exc))

    files, missing, left_out = gather_files(args.inputs, args.modality)
    failures: list[tuple[str, str]] = [(m, "Could not find it (no such file or folder)") for m in missing]
    files, clashes = drop_name_clashes(files, args.output_dir)
    failures += clashes
    if left_out and verbose:
        what = ", ".join(f"{e} x{n}" for e, n in sorted(left_out.items()))
        print(f"openl3: left out of the folder(s), not {args.modality} files: {what}")
    if not files:
        print(f"openl3: No files found in {args.inputs}. Aborting.", file=sys.stderr)
        for path, cause in failures:
            print(f"openl3: {path}: {cause}", file=sys.stderr)
        return 2
    if args.output_dir:
        Path(args.output_dir).mkdir(parents=True, exist_ok=True)

    from embedkit.extractors.base import WeightsError
    from embedkit.openl3 import core, models
    from embedkit.openl3.openl3_warnings import OpenL3Warning

    def on_error(path: str, exc: BaseException) -> None:
        cause = str(exc).strip().splitlines()
        cause = cause[-1] if cause and not isinstance(exc, OpenL3Error) else " ".join(cause)
        if not isinstance(exc, OpenL3Error):
            cause = f"{type(exc).__name__}: {cause}"
        failures.append((path, cause))
        where = "" if path in cause else f" {path}"
        print(f"openl3: skipped{where}: {cause}", file=sys.stderr)

    def show_warning(message, category, filename, lineno, file=None, line=None) -> None:
        print(f"openl3: warning: {message}", file=sys.stderr)

    common = {"output_dir": args.output_dir, "suffix": args.suffix, "overwrite": args.overwrite,
              "verbose": verbose, "on_error": on_error}
    try:
        with warnings.catch_warnings():
            warnings.showwarning = show_warning  # one line per warning, no source excerpt
            if not verbose:
                warnings.simplefilter("ignore", OpenL3Warning)
            if args.modality in ("audio", "video"):
                audio_model = models._load_audio_model(
                    args.input_repr, args.content_type, audio_size, args.audio_frontend, args.weights,
                    args.device, entry="cli")
            if args.modality in ("image", "video"):
                image_model = models._load_image_model(
                    args.input_repr, args.content_type, image_size, args.weights, args.device, entry="cli")
            if args.modality == "audio":
                core.process_audio_file(
                    files, model=audio_model, input_repr=args.input_repr,
                    center=not args.no_audio_centering, hop_size=args.audio_hop_size,
                    batch_size=args.audio_batch_size, frontend=args.audio_frontend, **common)
            elif args.modality == "image":
                core.process_image_file(files, model=image_model, batch_size=args.image_batch_size, **common)
            else:
                core.process_video_file(
                    files, audio_model=audio_model, image_model=image_model, input_repr=args.input_repr,
                    content_type=args.content_type, audio_embedding_size=audio_size,
                    audio_center=not args.no_audio_centering, audio_hop_size=args.audio_hop_size,
                    image_embedding_size=image_size, audio_batch_size=args.audio_batch_size,
                    image_batch_size=args.image_batch_size, audio_frontend=args.audio_frontend, **common)
    except WeightsError as exc:
        print(f"openl3: {exc}", file=sys.stderr)
        return 2
    except OpenL3Error as exc:  # arguments openl3 refuses before any file
        print(f"openl3: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("openl3: interrupted; outputs written so far are complete, rerun to finish", file=sys.stderr)
        return 130
    if failures:
        print(f"openl3: {len(failures)} file(s) not processed:", file=sys.stderr)
        for path, cause in failures:
            print(f"  {cause}" if path in cause else f"  {path}: {cause}", file=sys.stderr)
        return 1
    if verbose:
        print("openl3: Done!")
    return 0


if __name__ == "__main__":
    sys.exit(main())
