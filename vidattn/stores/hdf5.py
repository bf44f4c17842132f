"""HDF5 interchange: ``vidattn store export-h5`` / ``import-h5``.

One self-describing ``.h5`` file holds a store's feature maps, its tables and the
provenance of every stream, for tools that read HDF5 (h5py, MATLAB, HDFView, Julia)::

    /                                   attrs: format = "vidattn-features"
                                               layout_version = 1 (this file layout)
                                               vidattn_schema_version (the store schema)
                                               vidattn_version
                                               classes: JSON list, classes[i] names label i
                                               dataset: JSON object (name, root, multilabel)
                                               streams: JSON list of the streams below
    /features/<stream>/                 group; attrs: provenance (JSON; null if never
                                        claimed), channels (int)
    /features/<stream>/<name>           one video: (T, H, W, C) float16, C-order, chunked
                                        (1, H, W, C) (one time step), shuffle + gzip,
                                        fletcher32 checksums per chunk;
                                        attrs: video_id, t, h, w, status = "done",
                                        n_frames, fps, sha256 (of the float16 bytes)
                                        a failed video: an empty (null dataspace) dataset
                                        with status = "failed", error, t = h = w = 0
    /tables/manifest                    uint8: the bytes of a parquet file (exact round trip)
    /tables/pairs                       uint8: parquet bytes
    /tables/boxes                       uint8: parquet bytes (only when the store has boxes)
    /tables/label_text                  uint8: parquet bytes (only with detection tokens)
    /columns/<table>/<column>           the same tables one 1-D dataset per column, for
                                        tools without a parquet reader (lossy, see below)

``<name>`` is the video id with "%" and "/" percent-encoded (HDF5 paths split on "/");
the ``video_id`` attribute always holds the id itself.  Videos of a stream are listed in
store order (the groups track insertion order).

The parquet bytes are the tables exactly as the store holds them (schema.py), so an
import gets them back value for value.  The plain columns are a convenience: strings are
UTF-8 (null -> ""), numbers float64 with NaN for null (integers without nulls stay
int64), list columns (``labels``) are JSON text per row.

``import_h5`` rebuilds a store through the store's own API: it claims each stream's
provenance (a store holding other provenance refuses), merges the manifest, and writes
parts with ``write_part``, so every map is checked again (shape, NaN/Inf, range).
Parts already done are skipped: an interrupted import is resumed by running it again.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import uuid
from pathlib import Path

import h5py
import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from vidattn.errors import one_line
from vidattn.progress import bar
from vidattn.stores.schema import ARRAYS, READABLE_VERSIONS, SCHEMA_VERSION, conform
from vidattn.stores.zarr_store import FeatureStore, StoreError, open_store

FORMAT = "vidattn-features"
LAYOUT_VERSION = 1
TABLE_NAMES = ("manifest", "pairs", "boxes", "label_text")
GZIP_LEVEL = 4  # float16 maps barely compress past level 4; higher only costs time


class H5FormatError(ValueError):
    """An .h5 file is unreadable or not in this layout; ``str(e)`` is one line naming it."""


def h5_name(video_id: str) -> str:
    """Video id -> an HDF5 link name: "%" and "/" percent-encoded, "." and ".." escaped."""
    name = video_id.replace("%", "%25").replace("/", "%2F")
    return name.replace(".", "%2E") if name in (".", "..") else name


# ---------------------------------------------------------------------------- tables
def _parquet_bytes(table: pa.Table) -> np.ndarray:
    buf = io.BytesIO()
    pq.write_table(table, buf)
    return np.frombuffer(buf.getvalue(), dtype=np.uint8)


def _plain_column(col: pa.ChunkedArray) -> np.ndarray:
    """One table column as an array every HDF5 reader understands (see module docstring)."""
    t = col.type
    if pa.types.is_list(t) or pa.types.is_large_list(t):
        return np.array([json.dumps(v) for v in col.to_pylist()], dtype=object)
    if pa.types.is_string(t) or pa.types.is_large_string(t):
        return np.array(["" if v is None else v for v in col.to_pylist()], dtype=object)
    if pa.types.is_integer(t) and col.null_count == 0:
        return col.to_numpy().astype(np.int64)
    return col.cast(pa.float64()).to_numpy(zero_copy_only=False)  # nulls -> NaN


def _write_table(f: h5py.File, name: str, table: pa.Table) -> None:
    ds = f.create_dataset(f"tables/{name}", data=_parquet_bytes(table))
    ds.attrs.update({"format": "parquet", "rows": table.num_rows,
                     "columns": json.dumps(table.column_names)})
    cols = f.require_group(f"columns/{name}")
    text = h5py.string_dtype("utf-8")
    for field in table.schema:
        values = _plain_column(table.column(field.name))
        cols.create_dataset(field.name, data=values,
                            dtype=text if values.dtype == object else values.dtype)


def _read_table(f: h5py.File, name: str) -> pd.DataFrame | None:
    if f"tables/{name}" not in f:
        return None
    raw = f[f"tables/{name}"][()]
    return pq.read_table(io.BytesIO(raw.tobytes())).to_pandas()


# ---------------------------------------------------------------------------- export
def _store_streams(store: FeatureStore, streams: tuple[str, ...] | None) -> list[str]:
    present = set(store.index().stream)
    if streams is None:
        return [s for s in ARRAYS if s in present]  # schema order: rgb before flow ...
    unknown = [s for s in streams if s not in present]
    if unknown:
        raise StoreError(f"{store.url}: no {', '.join(unknown)} features in this store "
                         f"(it holds {', '.join(sorted(present)) or 'none'})")
    return list(streams)


def _write_video(group: h5py.Group, row: dict, fmap: np.ndarray | None) -> None:
    """One index row (and its (T, H, W, C) float16 map when done) as a dataset."""
    name = h5_name(row["video_id"])
    if fmap is None:
        ds = group.create_dataset(name, data=h5py.Empty("f2"))
    else:
        ds = group.create_dataset(
            name, data=fmap, chunks=(1, *fmap.shape[1:]), compression="gzip",
            compression_opts=GZIP_LEVEL, shuffle=True, fletcher32=True)
    done = row["status"] == "done"
    ds.attrs.update({
        "video_id": row["video_id"], "status": row["status"],
        "t": int(row["t"]), "h": int(row["h"]), "w": int(row["w"]),
        "n_frames": int(row["n_frames"]) if pd.notna(row["n_frames"]) else 0,
        "fps": float(row["fps"]) if pd.notna(row["fps"]) else 0.0,
        "sha256": row["checksum"] if done else "",
        "error": "" if done or pd.isna(row["error"]) else str(row["error"]),
        "decoder": "" if pd.isna(row["decoder"]) else str(row["decoder"]),
        "frames_lost": int(row["frames_lost"]) if pd.notna(row["frames_lost"]) else 0,
    })


def export_h5(store_url: str, out: str, streams: tuple[str, ...] | None = None) -> dict:
    """Write the store at ``store_url`` (a path or fsspec URL) to ``out``, a local HDF5
    file (layout: module docstring; an existing file is replaced).

    streams: which feature streams to export (None = every stream with stored parts).
    Each map is read with its checksum verified, so a damaged store fails here rather
    than producing a file that looks whole.  The file is written beside ``out`` and
    renamed into place at the end: an interrupted export never leaves a partial ``out``.
    Returns {"path", "streams", "videos" (maps written), "failed", "bytes"}.
    """
    store = open_store(store_url)
    chosen = _store_streams(store, streams)
    out_path = Path(out).expanduser().resolve()
    out_path.parent.mkdir(parents=True, exist_ok=True)
    tmp = out_path.with_name(f".{out_path.name}.tmp-{uuid.uuid4().hex[:8]}")
    index = {s: store.index(s) for s in chosen}
    n_done = n_failed = 0
    progress = bar(total=sum(len(i) for i in index.values()), desc="export-h5", unit="video")
    try:
        with h5py.File(tmp, "w") as f:
            f.attrs.update({
                "format": FORMAT, "layout_version": LAYOUT_VERSION,
                "vidattn_schema_version": SCHEMA_VERSION, "vidattn_version": _version(),
                "classes": json.dumps(store.classes),
                "dataset": json.dumps(dict(store.group.attrs.get("dataset", {}))),
                "streams": json.dumps(chosen),
            })
            for stream in chosen:
                group = f.create_group(f"features/{stream}", track_order=True)
                group.attrs["provenance"] = json.dumps(store.provenance(stream))
                group.attrs["channels"] = ARRAYS[stream].channels
                for row in index[stream].to_dict("records"):
                    fmap = None
                    if row["status"] == "done":
                        # float16 -> float32 -> float16 is exact: these are the stored bits
                        fmap = store.read(row["video_id"], stream, verify=True)
                        fmap = fmap.astype(np.float16)
                        n_done += 1
                    else:
                        n_failed += 1
                    _write_video(group, row, fmap)
                    progress.update(1)
            _write_table(f, "manifest", conform("manifest", store.manifest()))
            _write_table(f, "pairs", conform("pairs", store.pairs()))
            for name, table in (("boxes", store.boxes()), ("label_text", store.label_text())):
                if table is not None:
                    _write_table(f, name, conform(name, table))
        os.replace(tmp, out_path)
    finally:
        progress.close()
        tmp.unlink(missing_ok=True)
    return {"path": str(out_path), "streams": chosen, "videos": n_done, "failed": n_failed,
            "bytes": out_path.stat().st_size}


def _version() -> str:
    from vidattn import __version__

    return __version__


# ---------------------------------------------------------------------------- import
class _Source:
    """What an .h5 file holds, read and validated before any store is touched.

    videos[stream]: the attrs of each video dataset (plus ``name``), in file order.
    """

    def __init__(self, f: h5py.File, path: Path):
        attrs = f.attrs
        if attrs.get("format") != FORMAT:
            raise H5FormatError(f"{path}: not a vidattn feature file (root attribute format "
                                f"is {attrs.get('format')!r}, expected {FORMAT!r})")
        if int(attrs["layout_version"]) > LAYOUT_VERSION:
            raise H5FormatError(f"{path}: file layout {attrs['layout_version']} is newer "
                                f"than this vidattn reads ({LAYOUT_VERSION}); upgrade vidattn")
        if int(attrs["vidattn_schema_version"]) not in READABLE_VERSIONS:
            raise H5FormatError(f"{path}: written from a store of schema version "
                                f"{attrs['vidattn_schema_version']}, this vidattn stores "
                                f"{SCHEMA_VERSION}")
        self.classes: list[str] = json.loads(attrs["classes"])
        self.dataset: dict = json.loads(attrs["dataset"])
        self.streams: list[str] = json.loads(attrs["streams"])
        unknown = [s for s in self.streams if s not in ARRAYS]
        if unknown:
            raise H5FormatError(f"{path}: unknown feature streams {unknown} "
                                f"(known: {', '.join(ARRAYS)})")
        self.provenance = {s: json.loads(f[f"features/{s}"].attrs["provenance"])
                           for s in self.streams}
        self.videos: dict[str, list[dict]] = {}
        for s in self.streams:
            group = f[f"features/{s}"]
            self.videos[s] = [{**dict(group[name].attrs), "name": name} for name in group]
        self.tables = {name: _read_table(f, name) for name in TABLE_NAMES}
        if self.tables["manifest"] is None:
            raise H5FormatError(f"{path}: no /tables/manifest")
        known = set(self.tables["manifest"].video_id)
        for s, entries in self.videos.items():
            stray = [e["video_id"] for e in entries if e["video_id"] not in known]
            if stray:
                raise H5FormatError(f"{path}: {s} video {stray[0]!r} is not in the manifest")


def _read_source(path: Path) -> _Source:
    if not path.is_file():
        raise FileNotFoundError(f"{path}: HDF5 file not found")
    try:
        with h5py.File(path, "r") as f:
            return _Source(f, path)
    except H5FormatError:
        raise
    except (OSError, KeyError, ValueError, TypeError) as e:  # h5py/parquet/json damage
        raise H5FormatError(f"{path}: not a readable vidattn HDF5 file "
                            f"({one_line(e)})") from None


def _read_map(f: h5py.File, path: Path, stream: str, entry: dict) -> np.ndarray:
    """One stored (T, H, W, C) float16 map, its shape and sha256 checked against its attrs."""
    where = f"/features/{stream}/{entry['name']}"
    try:
        values = f[where][()]
    except (OSError, KeyError, ValueError) as e:  # fletcher32 / gzip errors on damaged chunks
        raise H5FormatError(f"{path}: cannot read {where} ({one_line(e)})") from None
    shape = (int(entry["t"]), int(entry["h"]), int(entry["w"]))
    if values.ndim != 4 or values.shape[:3] != shape or values.dtype != np.float16:
        raise H5FormatError(f"{path}: {where} is {values.dtype} {values.shape}, its attrs "
                            f"say float16 {shape + (ARRAYS[stream].channels,)}")
    digest = hashlib.sha256(np.ascontiguousarray(values).tobytes()).hexdigest()
    if digest != entry["sha256"]:
        raise H5FormatError(f"{path}: {where} does not match its sha256 attribute")
    return values


def _check_target(store: FeatureStore, src: _Source) -> None:
    """Refuse before anything is written: other provenance for a stream, other classes.

    Any difference in the compared provenance keys refuses, extractor_version included:
    an import must never make the store invalidate (drop) parts it already holds.
    """
    from vidattn.stores.zarr_store import PROVENANCE_KEYS

    for s in src.streams:
        old, new = store.provenance(s), src.provenance[s] or {}
        diff = [k for k in PROVENANCE_KEYS if old is not None and old.get(k) != new.get(k)]
        if diff:
            k = diff[0]
            raise StoreError(
                f"{store.url}: refusing to import {s} features with different provenance "
                f"({k}: stored {json.dumps(old.get(k))}, file {json.dumps(new.get(k))}); "
                "import into a new store")
    if store.classes and store.classes != src.classes:
        store.set_classes(src.classes)  # raises naming both class lists


def _import_part(store: FeatureStore, f: h5py.File, path: Path, stream: str, part: int,
                 entries: list[dict]) -> tuple[int, int] | None:
    """Write one part of ``stream`` from its file entries: (maps, failed rows) written,
    or None when the store skipped it as done by a concurrent run."""
    rows, maps = [], {}
    for e in entries:
        vid = e["video_id"]
        rows.append({"video_id": vid, "status": str(e["status"]),
                     "error": str(e["error"]) or None, "n_frames": int(e["n_frames"]),
                     "fps": float(e["fps"]), "decoder": str(e.get("decoder", "")) or None,
                     "frames_lost": int(e.get("frames_lost", 0))})
        if e["status"] == "done":
            maps[vid] = _read_map(f, path, stream, e)
    if not store.write_part(stream, part, rows, maps):
        return None  # another run finished this part meanwhile (see write_part)
    return len(maps), len(rows) - len(maps)


def import_h5(path: str, store_url: str, part_size: int = 16) -> dict:
    """Rebuild a store at ``store_url`` (new, or one to append to) from an export_h5 file.

    Videos are planned in file order, ``part_size`` per part; each part is written with
    ``FeatureStore.write_part``.  A part the store already has done is skipped (so running
    an interrupted import again resumes it).  A part that would lack some of its videos for
    a stream (the file holds that stream for fewer videos) is left undone for that stream,
    its videos reported under ``incomplete``: ``vidattn extract`` can compute them later.
    Raises H5FormatError (one line naming the file) for an unreadable or foreign file, and
    StoreError when the store holds other provenance, classes or manifest rows.
    Returns {"store", "streams", "videos", "failed", "parts", "skipped_parts", "incomplete"}.
    """
    if part_size < 1:
        raise ValueError(f"part_size must be >= 1, got {part_size}")
    h5_path = Path(path).expanduser().resolve()
    src = _read_source(h5_path)
    store = open_store(store_url, mode="a")
    _check_target(store, src)
    for s in src.streams:
        if src.provenance[s] is not None:  # a stream written without a claim stays so
            store.claim_stream(s, src.provenance[s])
    store.set_classes(src.classes)
    store.merge_manifest(src.tables["manifest"])
    pairs = src.tables["pairs"]
    if pairs is not None and (len(pairs) or not len(store.pairs())):
        store.write_table("pairs", pairs)
    for name in ("boxes", "label_text"):
        if src.tables[name] is not None:
            store.write_table(name, src.tables[name])
    if src.dataset and "dataset" not in store.group.attrs:
        store.update_attrs({"dataset": src.dataset})

    entries = {s: {e["video_id"]: e for e in src.videos[s]} for s in src.streams}
    order = list(dict.fromkeys(v for s in src.streams for v in entries[s]))
    plan = store.extend_plan(order, part_size)
    # a part's rows are every video planned into it, imported here or by an earlier run
    members_of = plan.groupby("part").video_id.apply(list)
    parts = sorted(set(plan.loc[plan.video_id.isin(set(order)), "part"].astype(int)))
    result = {"store": store.url, "streams": list(src.streams), "videos": 0, "failed": 0,
              "parts": 0, "skipped_parts": 0, "incomplete": {}}
    done = {s: store.done_parts(s) for s in src.streams}
    try:
        f = h5py.File(h5_path, "r")
    except OSError as e:  # replaced or damaged since it was validated
        raise H5FormatError(f"{h5_path}: not a readable HDF5 file ({one_line(e)})") from None
    progress = bar(total=sum(len(e) for e in entries.values()), desc="import-h5",
                   unit="video")
    with f, progress:
        for part in parts:
            members = members_of[part]
            for s in src.streams:
                have = [v for v in members if v in entries[s]]
                if not have:  # the file holds none of this part for this stream
                    continue
                if part in done[s]:
                    result["skipped_parts"] += 1
                elif len(have) < len(members):  # writing it would mark absent videos done
                    result["incomplete"].setdefault(s, []).extend(have)
                else:
                    counts = _import_part(store, f, h5_path, s, part,
                                          [entries[s][v] for v in members])
                    if counts is None:
                        result["skipped_parts"] += 1
                    else:
                        result["videos"] += counts[0]
                        result["failed"] += counts[1]
                        result["parts"] += 1
                progress.update(len(have))
    return result
