#!/usr/bin/env python
"""Pack a model folder into one file that a training script loads in one line.

    python export.py output/embeddings                # every model -> output/embeddings/exports/<model>.npz
    python export.py output/embeddings --models crepe openl3 --format hdf5 parquet
    python export.py output/embeddings/openl3 --out /data/packs  # one model folder

Each file holds the arrays, the relative paths (`paths`: outputs, `sources`: inputs), the
timestamps (the rule, or per-frame times for irregular time axes), the model's
features.json and an export fingerprint:

    layout "stacked" (no time axis, e.g. pooled): data (N, ...)          file i = data[i]
    layout "ragged" (a time axis):                data (sum T_i, ...)  file i = data[offsets[i]:offsets[i+1]]
                                                  offsets (N + 1,) int64 (time axis moved first)

    np.load("openl3.npz")      h5py.File("openl3.h5")      pyarrow.parquet.read_table("openl3.parquet")
    export.load(path) -> Exported: len(), [i] -> (T_i, ...) array, .timestamps(i), .extra(name, i)

Pooled (one vector per file) models also get `<model>.csv` (path, source, one column per dim).
Rerunning is cheap: a file whose fingerprint (every input's path, size and mtime, features.json,
options) is unchanged is kept; otherwise it is rebuilt in a temporary file and renamed into place.
Exit status: 0 done, 1 some model could not be exported (said why), 2 usage error.
"""

from __future__ import annotations

if not __package__:  # `python export.py` from a checkout: the checkout is the package embedkit
    import _checkout  # noqa: F401

import argparse
import csv
import hashlib
import io
import json
import os
import sys
import zipfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath

import numpy as np

from embedkit import outputs, results

FORMATS = {"npz": ".npz", "hdf5": ".h5", "parquet": ".parquet", "csv": ".csv"}
EXPORT_VERSION = 1
METADATA_KEY = "embedkit"  # parquet schema metadata key / hdf5 attribute holding the metadata JSON
_ROW_GROUP_BYTES = 64 << 20  # parquet: files per row group up to about this many bytes of data
# metadata "names" when some file name is not UTF-8: every format keeps the names' exact bytes
_NAMES_BYTES = ("bytes: some file names are not UTF-8; their exact bytes are kept (npz: str with surrogate "
                "escapes, hdf5: bytes, read .asstr(errors='surrogateescape'); parquet: binary columns; "
                "csv: the bytes as they are)")


class ExportError(RuntimeError):
    """A model folder cannot be exported as asked; the message says why and what to do."""


# -- planning: shapes from .npy headers, no data read ------------------------------------
def _npy_header(path: Path) -> tuple[tuple[int, ...], np.dtype]:
    try:
        return results.npy_header(path)
    except results.ResultsError as exc:
        raise ExportError(str(exc)) from None


@dataclass
class _Part:
    """One array family of a model folder (main data, an extra, or per-file timestamps)."""

    key: str  # name inside the export: "data", "timestamps", "extras/<name>"
    paths: list[Path]  # one .npy per item
    shapes: list[tuple[int, ...]]
    dtype: np.dtype
    layout: str  # "stacked" | "ragged"
    axis: int | None  # ragged: the variable axis of each array (moved first when stored)

    def stored(self, a: np.ndarray) -> np.ndarray:
        """One item as stored: ragged axis first."""
        if self.layout == "ragged" and a.ndim == 0:
            a = a.reshape(1)
        return np.moveaxis(a, self.axis, 0) if self.layout == "ragged" and self.axis else a

    @property
    def tail(self) -> tuple[int, ...]:
        """Shape of one stored row: ragged -> per frame, stacked -> per item."""
        if self.layout == "stacked":
            return self.shapes[0]
        s = self.shapes[0] or (1,)
        return tuple(d for i, d in enumerate(s) if i != self.axis)

    @property
    def lengths(self) -> np.ndarray:
        return np.array([(s or (1,))[self.axis] for s in self.shapes], dtype=np.int64)

    @property
    def offsets(self) -> np.ndarray:
        return np.concatenate([[0], np.cumsum(self.lengths)]).astype(np.int64)

    @property
    def stored_shape(self) -> tuple[int, ...]:
        if self.layout == "stacked":
            return (len(self.shapes), *self.tail)
        return (int(self.lengths.sum()), *self.tail)

    def arrays(self, load: Callable[[Path], np.ndarray]) -> Iterator[np.ndarray]:
        """Each item as stored, checked against the planned shape and dtype."""
        for path, shape in zip(self.paths, self.shapes):
            a = load(path)
            if tuple(a.shape) != shape:
                raise ExportError(
                    f"{path} changed during the export (shape {a.shape}, planned {shape}); rerun"
                )
            yield np.ascontiguousarray(self.stored(a), dtype=self.dtype)


def _plan_part(key: str, paths: list[Path], layout: str, axis: int | None) -> _Part:
    headers = [_npy_header(p) for p in paths]
    shapes = [h[0] for h in headers]
    dtypes = {h[1] for h in headers}
    if len(dtypes) > 1:
        raise ExportError(
            f"{key}: arrays of several dtypes ({', '.join(map(str, dtypes))}); rerun with --overwrite"
        )
    dtype = dtypes.pop()
    if layout == "ragged":
        axis = 0 if axis is None else axis
        tails = {tuple(d for i, d in enumerate(s or (1,)) if i != axis) for s in shapes}
        if len(tails) > 1:
            raise ExportError(
                f"{key}: arrays differ beyond axis {axis} ({sorted(tails)[:3]} ...); "
                "they cannot be concatenated"
            )
    elif len(set(shapes)) > 1:
        raise ExportError(
            f"{key}: arrays have different shapes ({sorted(set(shapes))[:3]} ...); use --layout ragged"
        )
    return _Part(key, paths, shapes, dtype, layout, axis)


@dataclass
class Plan:
    """What one export file holds (one model folder's items of one array layout), from the .npy headers.

    kind: None for the model's own kind; "video" etc. for the files whose arrays features.json
    describes apart (`per_kind`: an image model's videos are (time, dim), its images (dim,)).
    """

    folder: results.ModelFolder
    items: list[PurePosixPath]
    sources: list[str]
    parts: list[_Part]  # main data first
    kind: str | None = None
    fingerprint: str = ""
    metadata: dict = field(default_factory=dict)

    @property
    def data(self) -> _Part:
        return self.parts[0]

    @property
    def spec(self) -> dict:
        return self.folder.spec(self.kind)

    @property
    def axes(self) -> list[str]:
        return list(self.spec.get("axes") or [])

    @property
    def name(self) -> str:
        """The export's file stem: `<model>`, or `<model>.<kind>` for a per-kind group."""
        return self.folder.name + (f".{self.kind}" if self.kind else "")

    @property
    def pooled(self) -> bool:
        """One 1-D vector per file: the case a CSV can hold."""
        return self.data.layout == "stacked" and len(self.data.tail) == 1


def groups(folder: results.ModelFolder) -> dict[str | None, list[results.Item]]:
    """The folder's current items by array layout: None = the model's own kind, else a `per_kind` kind.

    Each group goes to its own export file (`<model>.npz`, `<model>.video.npz`), so every file
    holds arrays of one set of axes.
    """
    per_kind = set((folder.meta.get("per_kind") or {}))
    out: dict[str | None, list[results.Item]] = {}
    for item in folder.items:
        out.setdefault(item.kind if item.kind in per_kind else None, []).append(item)
    return out


def plan(output_base: str | os.PathLike | results.ModelFolder, model: str | None = None, layout: str = "auto",
         compress: bool = False, kind: str | None = None) -> Plan:
    """Plan the export of `<output_base>/<model>` (its items of `kind`): items, shapes, layout, metadata.

    layout: "auto" = ragged along the time axis when the arrays have one, else stacked;
    "stacked" needs every array to have the same shape; "ragged" concatenates along the
    time axis (axis 0 when there is none).
    """
    folder = output_base if isinstance(output_base, results.ModelFolder) else \
        results.ModelFolder.open(output_base, model)
    chosen = groups(folder).get(kind, [])
    if not chosen:
        raise ExportError(f"{folder.dir} holds no current arrays" + (f" of {kind} files" if kind else "")
                          + (f" ({len(folder.excluded)} left out: stale or of another configuration)"
                             if folder.excluded else "")
                          + "; run the extraction first")
    spec = folder.spec(kind)
    axes = list(spec.get("axes") or [])
    time_axis = axes.index("time") if "time" in axes else None
    items = [i.output for i in chosen]
    main_layout = ("ragged" if time_axis is not None else "stacked") if layout == "auto" else layout
    parts = [_plan_part("data", [i.path for i in chosen], main_layout, time_axis)]
    if chosen[0].times_from_file:
        paths = [i.extra_path(results.TIMESTAMPS_EXTRA) for i in chosen]
        _require(paths, "timestamps")
        t = _plan_part("timestamps", paths, main_layout, 0)
        if main_layout == "ragged" and not np.array_equal(t.lengths, parts[0].lengths):
            raise ExportError(
                f"{folder.name}: per-file timestamps and arrays disagree in length; rerun the extraction"
            )
        parts.append(t)
    for extra in (e for e in spec.get("extras") or [] if e != results.TIMESTAMPS_EXTRA):
        paths = [i.extra_path(extra) for i in chosen]
        _require(paths, extra)
        parts.append(_plan_part(f"extras/{extra}", paths, "ragged", 0))
    p = Plan(folder, items, [i.source for i in chosen], parts, kind)
    p.fingerprint = _fingerprint(p, compress)
    p.metadata = _metadata(p)
    return p


def _require(paths: list[Path], what: str) -> None:
    missing = [p for p in paths if not p.is_file()]
    if missing:
        raise ExportError(f"{len(missing)} {what} array(s) missing, e.g. {results.display_name(missing[0])}; "
                          "rerun the extraction")


def _fingerprint(p: Plan, compress: bool) -> str:
    """sha256 over every input's relative path, size and mtime, features.json, sources and options."""
    h = hashlib.sha256()
    h.update(json.dumps([EXPORT_VERSION, [q.layout for q in p.parts], compress, p.sources]).encode())
    h.update((p.folder.dir / "features.json").read_bytes())
    for part in p.parts:
        for path in part.paths:
            st = path.stat()
            rel = path.relative_to(p.folder.output_base).as_posix()
            h.update(f"{rel}\0{st.st_size}\0{st.st_mtime_ns}\n".encode("utf-8", "surrogateescape"))
    return h.hexdigest()


def _metadata(p: Plan) -> dict:
    folder, data, spec = p.folder, p.data, p.spec
    axes = p.axes or [f"axis{i}" for i in range(len(data.shapes[0]))]
    if data.layout == "ragged":
        ragged_axis = axes[data.axis] if data.axis is not None and data.axis < len(axes) else "axis0"
        stored_axes = [ragged_axis] + [a for i, a in enumerate(axes) if i != data.axis]
    else:
        ragged_axis, stored_axes = None, ["file", *axes]
    if any(part.key == "timestamps" for part in p.parts):
        rule: dict | None = {"rule": "file", "key": "timestamps", "unit": "seconds",
                             "meaning": spec.get("timestamp_note") or spec.get("timestamps")}
    elif "time" in p.axes and spec.get("hop_seconds"):
        rule = {
            "rule": "formula",
            "first_frame_seconds": float(spec.get("first_frame_seconds") or 0.0),
            "hop_seconds": float(spec["hop_seconds"]),
            "formula": "t[i] = first_frame_seconds + i * hop_seconds (i: frame within its file)",
        }
    else:
        rule = None
    return {
        "format": "embedkit-export",
        "version": EXPORT_VERSION,
        "model": folder.name,
        "kind": p.kind,
        "axes": p.axes,
        "n_items": len(p.items),
        "names": "utf-8" if all(map(results.is_utf8, [*map(str, p.items), *p.sources])) else _NAMES_BYTES,
        "layout": data.layout,
        "ragged_axis": ragged_axis,
        "stored_axes": stored_axes,
        "dtype": str(data.dtype),
        "timestamps": rule,
        "extras": {
            part.key.split("/", 1)[1]: {"key": part.key, "layout": "ragged", "dtype": str(part.dtype)}
            for part in p.parts
            if part.key.startswith("extras/")
        },
        "features": folder.meta,
        "fingerprint": p.fingerprint,
        "created": outputs.now_iso(),
    }


# -- atomic file ---------------------------------------------------------------------------
@contextmanager
def _atomic_path(path: Path) -> Iterator[Path]:
    """A temporary path beside `path`; renamed onto it (after fsync) only if the body succeeds."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = outputs.tmp_path(path)  # the naming outputs.clean_stale recognises (host + pid)
    try:
        yield tmp
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def _load_npy(path: Path) -> np.ndarray:
    return np.load(path, allow_pickle=False)


# -- writers -------------------------------------------------------------------------------
def _npz_member(
    zf: zipfile.ZipFile, name: str, shape: tuple[int, ...], dtype: np.dtype, chunks: Iterator[np.ndarray]
) -> None:
    """Stream one .npy member into the zip: header from the planned shape, then each chunk's bytes."""
    header = {"descr": np.lib.format.dtype_to_descr(dtype), "fortran_order": False, "shape": shape}
    with zf.open(f"{name}.npy", "w", force_zip64=True) as f:
        try:
            np.lib.format.write_array_header_1_0(f, header)
        except ValueError:  # header too long for format 1.0
            np.lib.format.write_array_header_2_0(f, header)
        for chunk in chunks:
            f.write(chunk.tobytes())


def _npz_small(zf: zipfile.ZipFile, name: str, array: np.ndarray) -> None:
    buf = io.BytesIO()
    np.save(buf, array, allow_pickle=False)
    zf.writestr(f"{name}.npy", buf.getvalue())


def _str_array(values: list[str]) -> np.ndarray:
    return np.array(values, dtype=str) if values else np.zeros(0, dtype="<U1")


def write_npz(p: Plan, path: Path, compress: bool = False) -> None:
    comp = zipfile.ZIP_DEFLATED if compress else zipfile.ZIP_STORED
    with zipfile.ZipFile(path, "w", compression=comp, allowZip64=True) as zf:
        for part in p.parts:
            key = part.key if part.key in ("data", "timestamps") else f"{part.key}/data"
            _npz_member(zf, key, part.stored_shape, part.dtype, part.arrays(_load_npy))
            if part.layout == "ragged" and part.key != "timestamps":
                _npz_small(zf, "offsets" if part.key == "data" else f"{part.key}/offsets", part.offsets)
        _npz_small(zf, "paths", _str_array([str(r) for r in p.items]))
        _npz_small(zf, "sources", _str_array(p.sources))
        _npz_small(zf, "metadata", np.array(json.dumps(p.metadata)))


def write_hdf5(p: Plan, path: Path, compress: bool = False) -> None:
    import h5py

    opts = {"compression": "gzip", "compression_opts": 4, "shuffle": True} if compress else {}
    with h5py.File(path, "w") as f:
        for part in p.parts:
            key = part.key if part.key in ("data", "timestamps") else f"{part.key}/data"
            shape = part.stored_shape
            ds = f.create_dataset(
                key, shape=shape, dtype=part.dtype, **(opts if shape[0] > 0 and np.prod(shape) > 0 else {})
            )
            at = 0
            for a in part.arrays(_load_npy):
                n = 1 if part.layout == "stacked" else a.shape[0]
                ds[at : at + n] = a[None] if part.layout == "stacked" else a
                at += n
            if part.layout == "ragged" and part.key != "timestamps":
                f.create_dataset(
                    "offsets" if part.key == "data" else f"{part.key}/offsets", data=part.offsets
                )
        # names as bytes in UTF-8 strings: identical for UTF-8 names, and exact for the others
        # (read them with .asstr(errors="surrogateescape"))
        for key, values in (("paths", [str(r) for r in p.items]), ("sources", p.sources)):
            f.create_dataset(key, data=[results.name_bytes(v) for v in values], dtype=h5py.string_dtype())
        f.attrs[METADATA_KEY] = json.dumps(p.metadata)


def _arrow_nested(values, tail: tuple[int, ...]):
    import pyarrow as pa

    for size in reversed(tail):
        values = pa.FixedSizeListArray.from_arrays(values, size)
    return values


def _arrow_type(dtype: np.dtype, tail: tuple[int, ...], ragged: bool):
    import pyarrow as pa

    t = pa.from_numpy_dtype(dtype)
    for size in reversed(tail):
        t = pa.list_(t, size)
    return pa.list_(t) if ragged else t


def _arrow_column(part: _Part, arrays: list[np.ndarray]):
    import pyarrow as pa

    flat = np.concatenate([a.reshape(-1) for a in arrays]) if arrays else np.zeros(0, part.dtype)
    values = _arrow_nested(pa.array(flat), part.tail)
    if part.layout == "stacked":
        return values
    offsets = np.concatenate([[0], np.cumsum([a.shape[0] for a in arrays])]).astype(np.int32)
    return pa.ListArray.from_arrays(pa.array(offsets), values)


def write_parquet(p: Plan, path: Path, compress: bool = False) -> None:
    """One row per file: path, source, data (nested lists), [timestamps], one column per extra."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    names = ["path", "source"] + [part.key.split("/", 1)[-1] for part in p.parts]
    if len(set(names)) != len(names):
        raise ExportError(
            f"{p.folder.name}: an extra output is named like a column ({names}); use npz or hdf5"
        )
    as_bytes = p.metadata["names"] != "utf-8"  # binary columns keep names that are not UTF-8 exactly
    name_type = pa.binary() if as_bytes else pa.string()

    def name_column(values: list[str]):
        return pa.array([results.name_bytes(v) for v in values] if as_bytes else values, name_type)

    fields = [pa.field("path", name_type), pa.field("source", name_type)] + [
        pa.field(n, _arrow_type(part.dtype, part.tail, part.layout == "ragged"))
        for n, part in zip(names[2:], p.parts)
    ]
    schema = pa.schema(fields, metadata={METADATA_KEY: json.dumps(p.metadata)})
    iters = [part.arrays(_load_npy) for part in p.parts]
    row_bytes = max(
        1, sum(int(np.prod(s)) * part.dtype.itemsize for part in p.parts for s in part.shapes[:1])
    )
    per_group = max(1, _ROW_GROUP_BYTES // row_bytes)
    with pq.ParquetWriter(path, schema, compression="zstd" if compress else "snappy") as w:
        for start in range(0, len(p.items), per_group):
            stop = min(len(p.items), start + per_group)
            cols = [name_column([str(r) for r in p.items[start:stop]]), name_column(p.sources[start:stop])]
            for part, it in zip(p.parts, iters):
                cols.append(_arrow_column(part, [next(it) for _ in range(stop - start)]))
            w.write_batch(pa.record_batch(cols, schema=schema))


def write_csv(p: Plan, path: Path, compress: bool = False) -> None:
    """Pooled features: one row per file, `path,source,<one column per dim>`; float32 round-trips (%.9g)."""
    if not p.pooled:
        raise ExportError(
            f"{p.name}: CSV holds one vector per file; these arrays are {p.axes} (use npz, hdf5 or parquet)"
        )
    cols = p.folder.meta.get("columns") or []
    (dim,) = p.data.tail
    if len(cols) != dim:
        axis = (p.axes or ["dim"])[-1]
        cols = [f"{axis}_{j}" for j in range(dim)]
    fmt = "%.9g" if p.data.dtype.itemsize <= 4 else "%.17g"
    # a file name that is not UTF-8 is written as its bytes (what the file system holds)
    with open(path, "w", newline="", encoding="utf-8", errors="surrogateescape") as f:
        w = csv.writer(f)
        w.writerow(["path", "source", *cols])
        for rel, src, a in zip(p.items, p.sources, p.data.arrays(_load_npy)):
            w.writerow([str(rel), src, *(fmt % v for v in a.tolist())])


WRITERS = {"npz": write_npz, "hdf5": write_hdf5, "parquet": write_parquet, "csv": write_csv}


# -- reading back --------------------------------------------------------------------------
def read_metadata(path: str | os.PathLike) -> dict | None:
    """The metadata of an existing export (None when absent or unreadable), without reading its data."""
    path = Path(path)
    try:
        if path.suffix == ".npz":
            with zipfile.ZipFile(path) as zf:
                return json.loads(str(np.load(io.BytesIO(zf.read("metadata.npy")), allow_pickle=False)))
        if path.suffix in (".h5", ".hdf5"):
            import h5py

            with h5py.File(path, "r") as f:
                return json.loads(f.attrs[METADATA_KEY])
        if path.suffix == ".parquet":
            import pyarrow.parquet as pq

            return json.loads(pq.read_schema(path).metadata[METADATA_KEY.encode()])
        if path.suffix == ".csv":
            return json.loads(_csv_sidecar(path).read_text()) if path.is_file() else None
    except Exception:  # noqa: BLE001 - a missing, partial or foreign file just means "rebuild"
        return None
    return None


def _csv_sidecar(path: Path) -> Path:
    return path.with_name(path.name + ".json")


@dataclass
class Exported:
    """An export read back into memory.

    data: stacked (N, ...) or ragged (sum T_i, ...) with offsets (N + 1,); items are
    time-first (metadata["stored_axes"]). extras: name -> (data, offsets).
    """

    metadata: dict
    paths: list[str]
    sources: list[str]
    data: np.ndarray
    offsets: np.ndarray | None = None
    timestamps_data: np.ndarray | None = None
    extras: dict[str, tuple[np.ndarray, np.ndarray]] = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i: int) -> np.ndarray:
        if self.offsets is None:
            return self.data[i]
        return self.data[self.offsets[i] : self.offsets[i + 1]]

    def timestamps(self, i: int) -> np.ndarray | None:
        """Frame times (s) of item i, float64; None when the model has no time axis."""
        rule = self.metadata.get("timestamps")
        if not rule:
            return None
        if rule["rule"] == "file":
            assert self.timestamps_data is not None
            if self.offsets is None:
                return self.timestamps_data[i]
            return self.timestamps_data[self.offsets[i] : self.offsets[i + 1]]
        axes = self.metadata["stored_axes"]
        n = self[i].shape[axes.index("time") - (0 if self.offsets is not None else 1)]
        return rule["first_frame_seconds"] + np.arange(n, dtype=np.float64) * rule["hop_seconds"]

    def extra(self, name: str, i: int) -> np.ndarray:
        data, offsets = self.extras[name]
        return data[offsets[i] : offsets[i + 1]]


def load(path: str | os.PathLike) -> Exported:
    """Read an export written by this module (.npz, .h5 or .parquet) into memory."""
    path = Path(path)
    if path.suffix == ".npz":
        with np.load(path, allow_pickle=False) as z:
            meta = json.loads(str(z["metadata"]))
            return Exported(
                meta,
                z["paths"].tolist(),
                z["sources"].tolist(),
                z["data"],
                z.get("offsets"),
                z.get("timestamps"),
                {n: (z[f"extras/{n}/data"], z[f"extras/{n}/offsets"]) for n in meta["extras"]},
            )
    if path.suffix in (".h5", ".hdf5"):
        import h5py

        with h5py.File(path, "r") as f:
            meta = json.loads(f.attrs[METADATA_KEY])
            return Exported(
                meta,
                list(f["paths"].asstr(errors="surrogateescape")[:]),
                list(f["sources"].asstr(errors="surrogateescape")[:]),
                f["data"][:],
                f["offsets"][:] if "offsets" in f else None,
                f["timestamps"][:] if "timestamps" in f else None,
                {n: (f[f"extras/{n}/data"][:], f[f"extras/{n}/offsets"][:]) for n in meta["extras"]},
            )
    if path.suffix == ".parquet":
        import pyarrow.parquet as pq

        table = pq.read_table(path)
        meta = json.loads(table.schema.metadata[METADATA_KEY.encode()])
        ragged = meta["layout"] == "ragged"
        data, offsets = _from_arrow(table.column("data"), ragged)
        stamps = (
            _from_arrow(table.column("timestamps"), ragged)[0] if "timestamps" in table.column_names else None
        )
        extras = {n: _from_arrow(table.column(n), True) for n in meta["extras"]}
        return Exported(
            meta,
            _names(table.column("path")),
            _names(table.column("source")),
            data,
            offsets,
            stamps,
            extras,
        )
    raise ExportError(f"{path}: unknown export format (expected .npz, .h5 or .parquet)")


def _names(column) -> list[str]:
    """A path/source column as str: binary ones (names that are not UTF-8) via surrogate escapes."""
    values = column.to_pylist()
    return [v.decode("utf-8", "surrogateescape") if isinstance(v, bytes) else v for v in values]


def _from_arrow(column, ragged: bool) -> tuple[np.ndarray, np.ndarray | None]:
    """A (nested) list column -> numpy values with the fixed-size dims as axes, and offsets if ragged."""
    import pyarrow as pa

    arr = column.combine_chunks()
    offsets = None
    if ragged:
        lengths = arr.value_lengths().to_numpy(zero_copy_only=False).astype(np.int64)
        offsets = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)
        arr = arr.flatten()
    tail = []
    while pa.types.is_fixed_size_list(arr.type):
        tail.append(arr.type.list_size)
        arr = arr.flatten()
    return arr.to_numpy(zero_copy_only=False).reshape(-1, *tail), offsets


# -- driver ----------------------------------------------------------------------------------
def export_model(
    output_base: str | os.PathLike,
    model: str,
    formats: list[str],
    out_dir: str | os.PathLike,
    layout: str = "auto",
    compress: bool = False,
    force: bool = False,
    csv_for_pooled: bool = True,
    log: Callable[[str], None] = print,
) -> list[Path]:
    """Export one model folder in each format; returns the files (re)written or found up to date.

    One file per array layout: `<model>.<ext>`, and `<model>.<kind>.<ext>` for files whose arrays
    features.json describes apart (an image model's videos: frames with times).
    """
    folder = results.ModelFolder.open(output_base, model)
    by_kind = groups(folder)
    if not by_kind:
        plan(folder, layout=layout, compress=compress)  # raises: says why nothing is there
    done: list[Path] = []
    for kind in by_kind:
        p = plan(folder, layout=layout, compress=compress, kind=kind)
        wanted = list(dict.fromkeys(formats + (["csv"] if csv_for_pooled and p.pooled else [])))
        for fmt in wanted:
            target = Path(out_dir) / f"{p.name}{FORMATS[fmt]}"
            if fmt == "csv" and not p.pooled and len(by_kind) > 1:  # e.g. an image model's videos
                log(f"{p.name}: no CSV (its arrays are {p.axes}: CSV holds one vector per file)")
                continue
            old = read_metadata(target)
            if not force and old and old.get("fingerprint") == p.fingerprint and target.is_file():
                log(f"{p.name}: {target} is up to date ({len(p.items)} files)")
                done.append(target)
                continue
            with _atomic_path(target) as tmp:
                WRITERS[fmt](p, tmp, compress)
            if fmt == "csv":  # written after the CSV: a crash between the two means a rebuild next time
                outputs.atomic_write_json(_csv_sidecar(target), p.metadata)
            size = target.stat().st_size
            shown = f"{size / 1e6:.1f} MB" if size >= 100_000 else f"{size / 1e3:.0f} kB"
            log(f"{p.name}: {len(p.items)} files ({p.data.layout}, {p.data.stored_shape}) -> {target} "
                f"({shown})")
            done.append(target)
    return done


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(
        prog="export", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("output_base", help="a run's --output_base (or one model folder inside it)")
    ap.add_argument("--models", nargs="+", help="model folders to export (default: every one)")
    ap.add_argument(
        "--format",
        nargs="+",
        choices=list(FORMATS),
        default=["npz"],
        dest="formats",
        help="npz (numpy), hdf5 (h5py), parquet (pyarrow), csv (pooled models only); default npz",
    )
    ap.add_argument("--out", help="folder for the exports (default: <output_base>/exports)")
    ap.add_argument(
        "--layout",
        choices=["auto", "stacked", "ragged"],
        default="auto",
        help="auto: ragged along the time axis when there is one, else stacked (N, ...)",
    )
    ap.add_argument("--compress", action="store_true", help="deflate (npz), gzip (hdf5), zstd (parquet)")
    ap.add_argument("--force", action="store_true", help="rebuild even when nothing changed")
    ap.add_argument("--no_csv", action="store_true", help="no CSV beside the exports of pooled models")
    return ap.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    base = Path(args.output_base)
    models = args.models
    if (base / "features.json").is_file():  # a model folder was given
        if models and models != [base.name]:
            print(
                f"error: {base} is the model folder {base.name}; drop --models or give its parent",
                file=sys.stderr,
            )
            return 2
        base, models = base.parent, [base.name]
    try:
        run = results.Results(base)
    except results.ResultsError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    available = run.models
    models = models or available
    unknown = [m for m in models if m not in available]
    if unknown or not models:
        print(
            f"error: no model folder {', '.join(unknown) or ''} in {base} "
            f"(there: {', '.join(available) or 'none'})",
            file=sys.stderr,
        )
        return 2
    out_dir = Path(args.out) if args.out else base / "exports"
    failed = 0
    for model in models:
        try:
            for note in run.model(model).notes:
                print(f"note: {note}", file=sys.stderr)
            export_model(
                base, model, args.formats, out_dir, args.layout, args.compress, args.force, not args.no_csv
            )
        except (ExportError, results.ResultsError, OSError) as exc:
            cause = outputs.explain_os_error(exc) if isinstance(exc, OSError) else str(exc)
            print(f"error: {model}: {cause}", file=sys.stderr)
            failed += 1
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
