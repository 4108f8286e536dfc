#!/usr/bin/env python
"""Compare models on your own labels: a cross-validated linear probe next to retrieval figures.

    embedkit evaluate OUTPUT_BASE --labels labels.csv [--models openl3 mert melspec ...]
    python evaluate.py OUTPUT_BASE --labels labels.csv --folds 5 --seed 0 --k 1 5 10

For each model folder (default: every one whose outputs are embeddings): file-level vectors
(pooled outputs as written, frame-level outputs mean-pooled over time), a logistic-regression
probe (scikit-learn; features standardised inside each training fold) scored by stratified
k-fold cross-validation with fixed folds and seed, grouped by the CSV's third column when it
has one (one speaker or album never sits on both sides of a fold); next to it the retrieval
figures of `embedkit search evaluate` (precision@k, mAP; leave-one-out, exact cosine, over the
labelled files; when grouped, a query's own group is left out of its ranking too).

labels.csv: `path,label[,group]`, paths relative to the input folder (a header line is optional).
Writes a table on stdout, <out>/<labels stem>.json and <out>/<labels stem>.png (a bar chart);
--out defaults to <OUTPUT_BASE>/evaluation.
Exit status: 0 done; 1 some model could not be scored (said why); 2 configuration error.
"""

from __future__ import annotations

if not __package__:  # `python evaluate.py` from a checkout: the checkout is the package embedkit
    import _checkout  # noqa: F401

import argparse
import csv
import io
import json
import os
import sys
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

import numpy as np

from embedkit.extractors.base import ConfigError

DEFAULT_FOLDS = 5
DEFAULT_SEED = 0
DEFAULT_KS = (1, 5, 10)


@dataclass(frozen=True)
class Labelled:
    path: str  # relative to the input folder
    label: str
    group: str | None = None


def read_labelled(path: str | os.PathLike) -> list[Labelled]:
    """`path,label[,group]` rows (a header line is optional; `#` lines are comments), validated.

    ConfigError (naming the line) for a path outside the input folder (absolute or with `..`),
    a row without a label, a path listed twice with different labels, or no rows at all.
    """
    rows: dict[str, Labelled] = {}
    try:
        with open(path, newline="", encoding="utf-8-sig") as f:
            for i, row in enumerate(csv.reader(f), 1):
                if not row or not "".join(row).strip() or row[0].lstrip().startswith("#"):
                    continue
                cells = [c.strip() for c in row]
                if i == 1 and [c.lower() for c in cells[:2]] == ["path", "label"]:
                    continue
                if len(cells) < 2 or not cells[0] or not cells[1]:
                    raise ConfigError(f"{path} line {i}: expected 'path,label[,group]', got {row!r}")
                rel = cells[0].replace("\\", "/")
                p = PurePosixPath(rel)
                if p.is_absolute() or ".." in p.parts or rel.startswith("/") or os.path.isabs(rel):
                    raise ConfigError(
                        f"{path} line {i}: {cells[0]} is outside the input folder; paths are relative to it "
                        "(e.g. female/f1.wav)"
                    )
                rel = p.as_posix()
                group = cells[2] if len(cells) > 2 and cells[2] else None
                old = rows.get(rel)
                if old is not None and old.label != cells[1]:
                    raise ConfigError(
                        f"{path} line {i}: {rel} is labelled both {old.label!r} and {cells[1]!r}"
                    )
                rows[rel] = Labelled(rel, cells[1], group)
    except OSError as exc:
        raise ConfigError(f"cannot read labels {path}: {exc.strerror or exc}") from None
    except UnicodeDecodeError as exc:
        raise ConfigError(f"{path} is not UTF-8 text ({exc.reason}); save it as UTF-8 CSV") from None
    if not rows:
        raise ConfigError(f"{path} holds no labels (expected lines 'path,label[,group]')")
    grouped = [r.group is not None for r in rows.values()]
    if any(grouped) and not all(grouped):
        missing = next(r.path for r in rows.values() if r.group is None)
        raise ConfigError(
            f"{path}: some rows have a group column and some do not (e.g. {missing}); give all or none"
        )
    return list(rows.values())


def shuffled(rows: list[Labelled], seed: int) -> list[Labelled]:
    """The same rows with labels permuted (a control: a probe should then score near chance).

    Grouped rows keep one label per group: the groups' labels are permuted, so the grouping
    still means what it did.
    """
    rng = np.random.default_rng(seed)
    if rows and rows[0].group is not None:
        groups = sorted({r.group for r in rows})
        label_of = {r.group: r.label for r in rows}
        perm = rng.permutation(len(groups))
        new = {g: label_of[groups[j]] for g, j in zip(groups, perm)}
        return [Labelled(r.path, new[r.group], r.group) for r in rows]
    labels = [r.label for r in rows]
    perm = rng.permutation(len(rows))
    return [Labelled(r.path, labels[j], r.group) for r, j in zip(rows, perm)]


# -- the probe ----------------------------------------------------------------------------------------
def probe(
    x: np.ndarray,
    y: list[str],
    groups: list[str] | None = None,
    folds: int = DEFAULT_FOLDS,
    seed: int = DEFAULT_SEED,
) -> dict:
    """Cross-validated logistic-regression accuracy of predicting `y` from the rows of `x` (N, D).

    Folds: StratifiedGroupKFold over `groups` when given (no group on both sides), else
    StratifiedKFold; shuffled with `seed`, so the folds are fixed for a given input. The number of
    folds is `folds`, or fewer when a label has fewer files (groups). Returns accuracy (pooled
    out-of-fold predictions), balanced_accuracy, fold accuracies and their mean/std, chance
    (the majority label's share) and the fold count. ConfigError for one label only, a label with
    a single file (group), or a fold whose training part holds one label.
    """
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import StratifiedGroupKFold, StratifiedKFold
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    x = np.asarray(x, np.float64)
    y_arr = np.asarray(y)
    classes, counts = np.unique(y_arr, return_counts=True)
    classes = [str(c) for c in classes]  # plain str: messages say 'rhythm', not np.str_('rhythm')
    if len(classes) < 2:
        raise ConfigError(
            f"every labelled file has the label {classes[0]!r}: a probe needs two labels or more"
        )
    if groups is not None:
        g_arr = np.asarray(groups)
        per_class = {c: len(set(g_arr[y_arr == c])) for c in classes}
        unit = "groups"
    else:
        g_arr = None
        per_class = dict(zip(classes, counts))
        unit = "files"
    fewest = min(per_class.values())
    if fewest < 2:
        c = min(per_class, key=per_class.get)
        raise ConfigError(
            f"label {c!r} has only one of its {unit}: cross-validation needs at least 2 {unit} per label"
        )
    n_splits = min(folds, fewest)
    if n_splits < 2:
        raise ConfigError("--folds must be at least 2")
    if g_arr is not None:
        splitter = StratifiedGroupKFold(n_splits=n_splits, shuffle=True, random_state=seed)
        splits = list(splitter.split(x, y_arr, g_arr))
    else:
        splitter = StratifiedKFold(n_splits=n_splits, shuffle=True, random_state=seed)
        splits = list(splitter.split(x, y_arr))
    pred = np.empty(len(y_arr), dtype=object)
    fold_acc = []
    for i, (train, test) in enumerate(splits, 1):
        train_classes = np.unique(y_arr[train])
        if len(train_classes) < 2:
            raise ConfigError(
                f"fold {i} of {n_splits}: its training part holds only label {train_classes[0]!r}; "
                f"give more {unit} per label or fewer --folds"
            )
        clf = make_pipeline(StandardScaler(), LogisticRegression(max_iter=5000, C=1.0))
        clf.fit(x[train], y_arr[train])
        pred[test] = clf.predict(x[test])
        fold_acc.append(float(np.mean(pred[test] == y_arr[test])))
    correct = pred == y_arr
    recalls = [float(np.mean(correct[y_arr == c])) for c in classes]
    return {
        "accuracy": round(float(np.mean(correct)), 4),
        "balanced_accuracy": round(float(np.mean(recalls)), 4),
        "fold_accuracy": [round(a, 4) for a in fold_acc],
        "fold_mean": round(float(np.mean(fold_acc)), 4),
        "fold_std": round(float(np.std(fold_acc)), 4),
        "chance": round(float(counts.max() / counts.sum()), 4),
        "folds": n_splits,
        "grouped": g_arr is not None,
    }


# -- every model ----------------------------------------------------------------------------------------
def compare_models(
    output_base: str | os.PathLike,
    rows: list[Labelled],
    models: list[str] | None = None,
    folds: int = DEFAULT_FOLDS,
    seed: int = DEFAULT_SEED,
    ks: tuple[int, ...] = DEFAULT_KS,
) -> dict:
    """Probe and retrieval figures per model folder on the labelled files (JSON-ready dict).

    ConfigError when a named model is missing or not an embedding, when no model is an embedding,
    or when labelled paths are not items of the collection. A model that lacks outputs for some
    labelled files, or whose probe cannot run, gets an "error" entry; the others are scored.
    """
    from embedkit.browse import data

    try:
        coll = data.Collection(output_base)
    except data.BrowseError as exc:
        raise ConfigError(str(exc)) from None
    if models:
        unknown = [m for m in models if m not in coll.models]
        if unknown:
            raise ConfigError(
                f"no model folder {', '.join(unknown)} in {output_base} (there: {', '.join(coll.models)})"
            )
        for m in models:
            why = coll.why_not_searchable(m)
            if why:
                raise ConfigError(f"{m}: {why.splitlines()[0]}")
    else:
        models = coll.searchable_models()
        if not models:
            raise ConfigError(
                f"no model folder in {output_base} holds embeddings ({', '.join(coll.models)} hold named "
                "quantities); extract an embedding model (melspec, openl3, mert, clmr)"
            )
    known = set(coll.sources)
    unknown_paths = [r.path for r in rows if r.path not in known]
    if unknown_paths:
        example = next(iter(sorted(known)), "dir/file.wav")
        raise ConfigError(
            f"{len(unknown_paths)} labelled path(s) are not in the collection (e.g. {unknown_paths[0]}); "
            f"paths are relative to the input folder, as the run names them (e.g. {example})"
        )
    classes = sorted({r.label for r in rows})
    out: dict = {
        "output_base": str(output_base),
        "labelled_files": len(rows),
        "labels": {c: sum(r.label == c for r in rows) for c in classes},
        "groups": len({r.group for r in rows}) if rows[0].group is not None else None,
        "folds": folds,
        "seed": seed,
        "models": {},
    }
    for model in models:
        try:
            x, found, missing = data.file_vectors(output_base, model, [r.path for r in rows])
            if missing:
                raise ConfigError(
                    f"{len(missing)} labelled file(s) have no {model} output (e.g. {missing[0]}): the "
                    "extraction failed or skipped them; re-extract them, or drop them from the labels"
                )
            y = [r.label for r in rows]
            groups = [r.group for r in rows] if rows[0].group is not None else None
            entry = {"dim": int(x.shape[1]), "files": len(found), "probe": probe(x, y, groups, folds, seed)}
            entry["retrieval"] = data.retrieval_figures(x, y, ks, groups)
            if groups is not None:
                entry["retrieval_same_group_included"] = data.retrieval_figures(x, y, ks)
        except (ConfigError, ValueError) as exc:
            entry = {"error": str(exc).splitlines()[0]}
        out["models"][model] = entry
    return out


def table(result: dict) -> str:
    """The comparison as aligned text, one row per model."""
    ks = []
    for e in result["models"].values():
        if "retrieval" in e:
            ks = [k for k in e["retrieval"] if k.startswith("precision@")]
            break
    head = [
        "model",
        "dim",
        "probe acc",
        "(fold sd)",
        "balanced",
        "chance",
        *[k.replace("precision", "P") for k in ks],
        "mAP",
    ]
    lines = []
    for model, e in result["models"].items():
        if "error" in e:
            lines.append([model, "-", f"error: {e['error']}"])
            continue
        p, r = e["probe"], e["retrieval"]
        lines.append(
            [
                model,
                str(e["dim"]),
                f"{p['accuracy']:.3f}",
                f"±{p['fold_std']:.3f}",
                f"{p['balanced_accuracy']:.3f}",
                f"{p['chance']:.3f}",
                *[("-" if r[k] is None else f"{r[k]:.3f}") for k in ks],
                "-" if r["mAP"] is None else f"{r['mAP']:.3f}",
            ]
        )
    full = [ln for ln in lines if len(ln) == len(head)]
    widths = [max([len(head[i])] + [len(ln[i]) for ln in full]) for i in range(len(head))]

    def fmt(cells: list[str]) -> str:
        if len(cells) != len(head):  # a model that could not be scored: its name and why
            return f"{cells[0].ljust(widths[0])}  {cells[2]}"
        return "  ".join(c.ljust(w) for c, w in zip(cells, widths)).rstrip()

    grouped = f", grouped by {result['groups']} groups" if result.get("groups") else ""
    folds = next((e["probe"]["folds"] for e in result["models"].values() if "probe" in e), result["folds"])
    title = (
        f"{result['labelled_files']} labelled files, labels "
        + ", ".join(f"{k} ({v})" for k, v in result["labels"].items())
        + f"; probe: logistic regression, {folds}-fold cross-validation (seed {result['seed']}){grouped}"
    )
    body = [fmt(ln) for ln in lines]
    if not full:  # no model could be scored: no columns to show
        return "\n".join([title, *body])
    return "\n".join([title, fmt(head), *body])


def bar_chart(result: dict) -> bytes:
    """A PNG: per model, probe accuracy (with its fold spread), balanced accuracy, P@k and mAP."""
    from matplotlib.figure import Figure

    scored = {m: e for m, e in result["models"].items() if "probe" in e}
    names = list(scored)
    ks = [
        k for k in (next(iter(scored.values()))["retrieval"] if scored else {}) if k.startswith("precision@")
    ]
    series = (
        [("probe accuracy", "accuracy"), ("balanced accuracy", "balanced_accuracy")]
        + [(k.replace("precision", "P"), k) for k in ks]
        + [("mAP", "mAP")]
    )
    fig = Figure(
        figsize=(max(5.0, 1.2 + 1.1 * len(names) * len(series) / 3), 4.0), dpi=100, layout="constrained"
    )
    ax = fig.subplots()
    width = 0.8 / max(1, len(series))
    colours = ["#1f77b4", "#aec7e8", "#ff7f0e", "#ffbb78", "#2ca02c", "#98df8a", "#d62728"]
    for j, (title, key) in enumerate(series):
        vals, errs = [], []
        for m in names:
            e = scored[m]
            src = e["probe"] if key in e["probe"] else e["retrieval"]
            vals.append(src.get(key) or 0.0)
            errs.append(e["probe"]["fold_std"] if key == "accuracy" else 0.0)
        xs = np.arange(len(names)) + (j - (len(series) - 1) / 2) * width
        ax.bar(
            xs,
            vals,
            width,
            yerr=errs if key == "accuracy" else None,
            label=title,
            color=colours[j % len(colours)],
            capsize=2,
        )
    if scored:
        chance = next(iter(scored.values()))["probe"]["chance"]
        ax.axhline(chance, color="0.3", ls="--", lw=1, label=f"chance ({chance:.2f})")
    ax.set_xticks(np.arange(len(names)), names)
    ax.set_ylim(0, 1.05)
    ax.set_ylabel("score")
    ax.set_title(f"{result['labelled_files']} labelled files: probe and retrieval per model", fontsize=10)
    fig.legend(
        *ax.get_legend_handles_labels(), fontsize=7, ncols=min(4, len(series) + 1), loc="outside lower center"
    )
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=fig.dpi, metadata={"Software": "embedkit evaluate"})
    return buf.getvalue()


# -- command line ------------------------------------------------------------------------------------------
def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("output_base", nargs="?", help="the run's output folder (holds <model>/features.json)")
    p.add_argument("--output_base", dest="output_base_opt", metavar="OUTPUT_BASE", help="same, as an option")
    p.add_argument(
        "--labels", required=True, help="CSV path,label[,group]; paths relative to the input folder"
    )
    p.add_argument("--models", nargs="+", help="model folders to compare (default: every embedding folder)")
    p.add_argument(
        "--folds", type=int, default=DEFAULT_FOLDS, help=f"cross-validation folds (default {DEFAULT_FOLDS})"
    )
    p.add_argument(
        "--seed", type=int, default=DEFAULT_SEED, help=f"fold shuffling seed (default {DEFAULT_SEED})"
    )
    p.add_argument(
        "--k", type=int, nargs="+", default=list(DEFAULT_KS), help="precision@k cut-offs (default 1 5 10)"
    )
    p.add_argument(
        "--shuffle_labels",
        type=int,
        metavar="SEED",
        help="permute the labels first (per group when grouped): a control that should score near chance",
    )
    p.add_argument("--out", help="folder for the JSON and the PNG (default <OUTPUT_BASE>/evaluation)")
    p.add_argument("--json", action="store_true", help="print the JSON on stdout instead of the table")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    base = args.output_base or args.output_base_opt
    try:
        if not base:
            raise ConfigError(
                "give the run's output folder (embedkit evaluate OUTPUT_BASE --labels labels.csv)"
            )
        if args.folds < 2:
            raise ConfigError("--folds must be at least 2")
        if any(k < 1 for k in args.k):
            raise ConfigError("--k values must be >= 1")
        rows = read_labelled(args.labels)
        if args.shuffle_labels is not None:
            rows = shuffled(rows, args.shuffle_labels)
        result = compare_models(base, rows, args.models, args.folds, args.seed, tuple(sorted(set(args.k))))
    except ConfigError as exc:
        print(f"configuration error: {exc}", file=sys.stderr)
        return 2
    result["labels_file"] = str(args.labels)
    if args.shuffle_labels is not None:
        result["shuffled_labels_seed"] = args.shuffle_labels
    from embedkit import outputs

    out_dir = Path(args.out) if args.out else Path(base) / "evaluation"
    stem = Path(args.labels).stem + (
        f"-shuffled{args.shuffle_labels}" if args.shuffle_labels is not None else ""
    )
    json_path, png_path = out_dir / f"{stem}.json", out_dir / f"{stem}.png"
    try:
        outputs.atomic_write_json(json_path, result)
        outputs.atomic_write_bytes(png_path, bar_chart(result))
    except OSError as exc:
        print(f"error: cannot write to {out_dir}: {outputs.explain_os_error(exc)}", file=sys.stderr)
        return 2
    print(json.dumps(result) if args.json else table(result))
    print(f"wrote {json_path} and {png_path}", file=sys.stderr)
    errors = [m for m, e in result["models"].items() if "error" in e]
    for m in errors:
        print(f"failed: {m}: {result['models'][m]['error']}", file=sys.stderr)
    return 1 if errors else 0


if __name__ == "__main__":
    sys.exit(main())
