"""Same-label retrieval metrics: precision@k, recall@k, mAP; and the labels CSV they read."""

from __future__ import annotations

import os
from collections.abc import Iterable

import numpy as np

from embedkit.extractors.base import ConfigError


def retrieval_metrics(
    rankings: list[tuple[str, list[str]]],
    labels: dict[str, str],
    ks: Iterable[int] = (1, 5, 10),
    pool: Iterable[str] | None = None,
) -> dict:
    """precision@k, recall@k and mAP of same-label retrieval.

    rankings: (query label-key, ranked result paths with the query itself already left out).
    labels: path -> label for the collection and the queries. The relevant set of a query is every
    item of `pool` (default: all labelled items) with its label, itself excluded. A query with no
    relevant item (alone with its label) is not counted: `alone` lists them.
    """
    pool = list(pool if pool is not None else labels)
    per_label: dict[str, int] = {}
    for p in pool:
        per_label[labels[p]] = per_label.get(labels[p], 0) + 1
    ks = sorted(set(ks))
    sums = {f"precision@{k}": 0.0 for k in ks} | {f"recall@{k}": 0.0 for k in ks}
    aps = []
    counted = 0
    alone = []
    pool_set = set(pool)
    for query, ranked in rankings:
        label = labels[query]
        n_rel = per_label.get(label, 0) - (1 if query in pool_set else 0)
        if n_rel <= 0:
            alone.append(query)
            continue
        rel = np.array([labels.get(r) == label for r in ranked if r in labels and r != query], bool)
        counted += 1
        for k in ks:
            sums[f"precision@{k}"] += rel[:k].sum() / k
            sums[f"recall@{k}"] += rel[:k].sum() / n_rel
        aps.append(float(np.sum(np.cumsum(rel) / np.arange(1, len(rel) + 1) * rel) / n_rel))
    out: dict = {key: (round(v / counted, 4) if counted else None) for key, v in sums.items()}
    out["mAP"] = round(float(np.mean(aps)), 4) if aps else None
    out["queries"] = counted
    out["alone"] = alone
    return out


def read_labels(path: str | os.PathLike) -> dict[str, str]:
    """CSV `path,label` (a header line `path,label` is optional) -> {path: label}."""
    import csv

    labels: dict[str, str] = {}
    try:
        with open(path, newline="", encoding="utf-8", errors="surrogateescape") as f:
            for i, row in enumerate(csv.reader(f)):
                if not row or row[0].startswith("#"):
                    continue
                if len(row) < 2:
                    raise ConfigError(f"{path} line {i + 1}: expected 'path,label', got {row!r}")
                if i == 0 and [c.strip().lower() for c in row[:2]] == ["path", "label"]:
                    continue
                labels[row[0].strip()] = row[1].strip()
    except OSError as exc:
        raise ConfigError(f"cannot read labels {path}: {exc}") from exc
    if not labels:
        raise ConfigError(f"{path} holds no labels (expected lines 'path,label')")
    return labels
