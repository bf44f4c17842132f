"""The feature store: a Zarr v3 group of part arrays plus parquet tables (see schema.py).

Write protocol (what makes runs resumable and crash-safe):

1. ``plan.parquet`` fixes which part every video belongs to before any part is written,
   so a restarted run rebuilds exactly the same parts.
2. A part's array is written whole by one writer (one shard per part), with ``overwrite``.
3. Its index fragment ``index/<stream>/part-NNNNN.parquet`` is written LAST, atomically
   (temp file + rename).  A part without its fragment is not done and is redone whole.
"""

from __future__ import annotations

import hashlib
import io
import json
import uuid
from functools import cached_property
from pathlib import Path

import fsspec
import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import zarr
from zarr.codecs import ZstdCodec

from vidattn.stores.schema import ARRAYS, INDEX_SCHEMA, SCHEMA_VERSION, conform

# Provenance keys that must agree before a run may append to a stream.  vidattn's own
# version is recorded but not compared: upgrading vidattn must not orphan a store; a change
# to an extractor's numerics bumps that extractor's own version instead.
PROVENANCE_KEYS = ("extractor", "extractor_version", "weights_sha256", "preprocessing")


class StoreError(RuntimeError):
    """A store is missing, of another schema version, or would be written inconsistently."""


class ChecksumError(StoreError):
    """Stored bytes do not match the checksum recorded in the index."""


def checksum(values: np.ndarray) -> str:
    return hashlib.sha256(np.ascontiguousarray(values).tobytes()).hexdigest()


class FeatureStore:
    """A vidattn store at a local path or fsspec URL.

    ``read(video_id, stream)`` -> float32 (T, H, W, D); ``index()`` -> DataFrame of
    INDEX_SCHEMA rows; ``manifest()``/``pairs()``/``boxes()`` -> DataFrames.
    """

    def __init__(self, url: str | Path, mode: str = "r"):
        self.url = str(url)
        if "://" not in self.url:  # a local path: keep it absolute so run dirs can find it
            self.url = str(Path(self.url).expanduser().resolve())
        self.mode = mode
        self.fs, self.root = fsspec.core.url_to_fs(self.url)
        self.local = isinstance(self.fs, fsspec.implementations.local.LocalFileSystem)
        if self.local:
            zstore = zarr.storage.LocalStore(self.root, read_only=(mode == "r"))
        else:
            zstore = zarr.storage.FsspecStore.from_url(self.url, read_only=(mode == "r"))
        exists = self.fs.exists(f"{self.root}/zarr.json")
        if not exists and mode == "r":
            raise StoreError(f"{self.url}: no vidattn store here (no zarr.json)")
        self.group = zarr.open_group(zstore, mode="r" if mode == "r" else "a", zarr_format=3)
        if not exists:
            self.group.attrs.update(
                {"schema_version": SCHEMA_VERSION, "provenance": {}, "classes": []}
            )
            for stream in ARRAYS:  # intermediate groups made once, never by racing writers
                self.group.require_group(f"features/{stream}")
        version = self.group.attrs.get("schema_version")
        if version != SCHEMA_VERSION:
            raise StoreError(
                f"{self.url}: store schema version {version}, this vidattn reads "
                f"{SCHEMA_VERSION}; re-extract into a new store"
            )
        self._index: pd.DataFrame | None = None

    # ------------------------------------------------------------------ tables
    def _path(self, rel: str) -> str:
        return f"{self.root}/{rel}"

    def _write_table(self, rel: str, table: pa.Table) -> None:
        """Write a parquet file atomically: a reader sees the old file or the new, never half."""
        buf = io.BytesIO()
        pq.write_table(table, buf)
        final = self._path(rel)
        tmp = f"{final}.tmp-{uuid.uuid4().hex[:8]}"
        self.fs.makedirs(final.rsplit("/", 1)[0], exist_ok=True)
        with self.fs.open(tmp, "wb") as f:
            f.write(buf.getvalue())
        self.fs.mv(tmp, final)

    def _read_table(self, rel: str) -> pd.DataFrame | None:
        path = self._path(rel)
        if not self.fs.exists(path):
            return None
        with self.fs.open(path, "rb") as f:
            return pq.read_table(f).to_pandas()

    def write_table(self, name: str, df) -> None:
        """Write manifest/pairs/boxes/plan, conformed to the schema."""
        self._write_table(f"{name}.parquet", conform(name, df))

    def manifest(self) -> pd.DataFrame:
        df = self._read_table("manifest.parquet")
        if df is None:
            raise StoreError(f"{self.url}: store has no manifest.parquet")
        return df

    def pairs(self) -> pd.DataFrame:
        df = self._read_table("pairs.parquet")
        return df if df is not None else pd.DataFrame(columns=["video_id", "conjugate_id"])

    def boxes(self) -> pd.DataFrame | None:
        return self._read_table("boxes.parquet")

    def plan(self) -> pd.DataFrame:
        df = self._read_table("plan.parquet")
        return df if df is not None else pd.DataFrame({"video_id": [], "part": []})

    @property
    def classes(self) -> list[str]:
        return list(self.group.attrs.get("classes", []))

    def set_classes(self, classes: list[str]) -> None:
        old = self.classes
        if old and old != list(classes):
            raise StoreError(f"{self.url}: store holds classes {old[:5]}..., not {classes[:5]}...")
        self.group.attrs["classes"] = list(classes)

    def merge_manifest(self, new: pd.DataFrame) -> pd.DataFrame:
        """Add new rows; an existing video id whose row changed is refused (would mix data)."""
        new = conform("manifest", new).to_pandas()
        old = self._read_table("manifest.parquet")
        if old is not None:
            both = old.merge(new, on="video_id", suffixes=("_old", ""))
            for col in ("path", "split", "start_sec", "end_sec", "role", "group", "labels"):
                a, b = both[f"{col}_old"], both[col]
                if col == "labels":  # lists: compare as tuples
                    a, b = a.map(tuple), b.map(tuple)
                changed = ~((a == b) | (a.isna() & b.isna()))
                if changed.any():
                    vid = both.loc[changed, "video_id"].iloc[0]
                    raise StoreError(
                        f"{self.url}: manifest row for {vid!r} differs from the stored one "
                        f"({col}); use a new store"
                    )
            new = pd.concat([old, new[~new.video_id.isin(old.video_id)]], ignore_index=True)
        self.write_table("manifest", new)
        return new

    def extend_plan(self, video_ids: list[str], part_size: int) -> pd.DataFrame:
        """Assign videos not yet planned to new parts of ``part_size``, in the given order."""
        plan = self.plan()
        todo = [v for v in video_ids if v not in set(plan.video_id)]
        if todo:
            first = int(plan.part.max()) + 1 if len(plan) else 0
            parts = [first + i // part_size for i in range(len(todo))]
            plan = pd.concat(
                [plan, pd.DataFrame({"video_id": todo, "part": parts})], ignore_index=True
            )
            self.write_table("plan", plan)
        return plan

    # ------------------------------------------------------------- provenance
    def provenance(self, stream: str) -> dict | None:
        return self.group.attrs.get("provenance", {}).get(stream)

    def claim_stream(self, stream: str, prov: dict) -> None:
        """Record ``prov`` for ``stream``, or refuse if the store holds other provenance."""
        old = self.provenance(stream)
        if old is not None:
            diff = [k for k in PROVENANCE_KEYS if old.get(k) != prov.get(k)]
            if diff:
                k = diff[0]
                raise StoreError(
                    f"{self.url}: refusing to append {stream} features with different "
                    f"provenance ({k}: stored {json.dumps(old.get(k))}, this run "
                    f"{json.dumps(prov.get(k))}); use a new --store"
                )
            return
        allprov = dict(self.group.attrs.get("provenance", {}))
        allprov[stream] = prov
        self.group.attrs["provenance"] = allprov

    # ------------------------------------------------------------------ parts
    def _fragment(self, stream: str, part: int) -> str:
        return f"index/{stream}/part-{part:05d}.parquet"

    def done_parts(self, stream: str) -> set[int]:
        pattern = self._path(f"index/{stream}/part-*.parquet")
        return {int(Path(p).stem.split("-")[1]) for p in self.fs.glob(pattern)}

    def write_part(self, stream: str, part: int, rows: list[dict],
                   maps: dict[str, np.ndarray]) -> None:
        """Write one part: its array (all ``maps`` concatenated), then its index fragment.

        rows: one dict per video of the part (video_id, status, error, n_frames, fps);
        maps: video_id -> (T, H, W, D) float map for the videos that succeeded.
        """
        spec = ARRAYS[stream]
        blocks, offset, out_rows = [], 0, []
        for row in rows:
            vid = row["video_id"]
            rec = {"stream": stream, "part": part, "offset": -1, "t": 0, "h": 0, "w": 0,
                   "checksum": None, **row}
            if vid in maps:
                m = maps[vid]
                spec.check(m)
                m16 = np.ascontiguousarray(m.astype(spec.dtype).reshape(-1, spec.channels))
                t, h, w = m.shape[:3]
                rec.update(offset=offset, t=t, h=h, w=w, checksum=checksum(m16))
                blocks.append(m16)
                offset += len(m16)
            out_rows.append(rec)
        if blocks:
            data = np.concatenate(blocks)
            c = spec.chunk_rows
            shard = ((len(data) + c - 1) // c) * c  # one shard = the whole part
            arr = self.group.create_array(
                f"features/{stream}/part-{part:05d}", shape=data.shape, dtype=spec.dtype,
                chunks=(c, spec.channels), shards=(shard, spec.channels),
                compressors=ZstdCodec(level=spec.codec_level), dimension_names=spec.dims,
                overwrite=True,
            )
            arr[:] = data
        self._write_table(self._fragment(stream, part), conform("index", pd.DataFrame(out_rows)))
        self._index = None
        self.__dict__.pop("_rows", None)  # the cached_property built from the old index

    # ------------------------------------------------------------------- read
    def index(self, stream: str | None = None) -> pd.DataFrame:
        """All index fragments (done parts only), optionally for one stream."""
        if self._index is None:
            frames = []
            for p in sorted(self.fs.glob(self._path("index/*/part-*.parquet"))):
                with self.fs.open(p, "rb") as f:
                    frames.append(pq.read_table(f).to_pandas())
            empty = INDEX_SCHEMA.empty_table().to_pandas()
            self._index = pd.concat(frames, ignore_index=True) if frames else empty
        idx = self._index
        return idx[idx.stream == stream].reset_index(drop=True) if stream else idx

    def video_ids(self, stream: str = "rgb") -> list[str]:
        """Ids of videos whose ``stream`` map is stored (status done)."""
        idx = self.index(stream)
        return idx.loc[idx.status == "done", "video_id"].tolist()

    @cached_property
    def _rows(self) -> dict[tuple[str, str], dict]:
        return {(r["video_id"], r["stream"]): r for r in self.index().to_dict("records")}

    def read(self, video_id: str, stream: str = "rgb", verify: bool = False) -> np.ndarray:
        """The (T, H, W, D) float32 map of one video."""
        row = self._rows.get((video_id, stream))
        if row is None:
            raise KeyError(f"{self.url}: no {stream} features for video {video_id!r}")
        if row["status"] != "done":
            raise KeyError(f"{self.url}: video {video_id!r} failed extraction: {row['error']}")
        arr = self.group[f"features/{stream}/part-{row['part']:05d}"]
        n = row["t"] * row["h"] * row["w"]
        flat = arr[row["offset"] : row["offset"] + n]
        if verify and checksum(flat) != row["checksum"]:
            raise ChecksumError(
                f"{self.url}: checksum mismatch for {video_id!r} ({stream}, part {row['part']})"
            )
        return flat.reshape(row["t"], row["h"], row["w"], -1).astype(np.float32)


def open_store(path_or_url: str | Path, mode: str = "r") -> FeatureStore:
    """Open a vidattn store; ``mode="a"`` creates it if needed."""
    return FeatureStore(path_or_url, mode=mode)
