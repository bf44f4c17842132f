"""The feature store: a Zarr v3 group of part arrays plus parquet tables (see schema.py).

Write protocol (what makes runs resumable and crash-safe):

1. ``plan.parquet`` fixes which part every video belongs to before any part is written,
   so a restarted run rebuilds exactly the same parts.
2. A part's array is written whole by one writer, shard by shard, with ``overwrite``.
3. Its index fragment ``index/<stream>/part-NNNNN.parquet`` is written LAST, atomically
   (temp file + rename).  A part without its fragment is not done and is redone whole.

Concurrency (two runs on one store, see :class:`FeatureStore` for the knobs):

4. Computing a part happens under ``locks/<stream>/part-NNNNN.claim``, taken without
   waiting: a run that finds a part claimed by a live run moves on to other parts, so two
   runs share the work instead of doing it twice.
   Writing a part happens under ``locks/<stream>/part-NNNNN.lock``: one writer at a time
   per part, across processes and hosts sharing the directory.  A writer that waited for
   the lock and then finds a fragment it did not know of skips the part: the other run
   finished it.  Redoing a done part removes its fragment *before* touching its array, so
   a fragment always describes a complete array.
5. Read-merge-write of the tables and attributes (manifest, plan, provenance, classes)
   happens under ``locks/store.lock``, so two runs starting together cannot plan one video
   into two parts or drop each other's provenance.
6. A lock is a file created with ``O_CREAT | O_EXCL`` holding pid, host, time and a
   token.  A lock whose holder is dead (same host, pid gone) or older than
   ``stale_lock_s`` is broken; a live one is waited for, at most ``lock_timeout_s``.

   Limit: fsspec (object) stores have no atomic create: a lock is written, read back and
   kept if it still holds our token.  Writers starting within one round trip of each other
   may both write; they write identical bytes, so only the work is done twice.

A changed ``extractor_version`` (nothing else) invalidates a stream's parts instead of
refusing the run; the group attribute ``pending_invalidation`` marks one under way, so a
crash in the middle is finished by the next claim (see provenance.claim_stream).

A failed write (disk full, any OSError) commits nothing: no fragment, the partial array
removed (best effort), the lock released; a one-line :class:`StoreError` names store,
stream and part.

Writing a part (2-4): partwrite.py; provenance, claims: provenance.py (delegated to).
"""

from __future__ import annotations

import hashlib
import io
import json
from functools import cached_property
from pathlib import Path

import fsspec
import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import zarr

from vidattn.errors import one_line
from vidattn.stores import partwrite, provenance
from vidattn.stores.files import put_atomic
from vidattn.stores.locks import (  # noqa: F401 - LockTimeout is part of this module's API
    LOCK_TIMEOUT_S,
    STALE_LOCK_S,
    STORE_LOCK,
    Locks,
    LockTimeout,
    StoreError,
    part_claim_name,
    part_lock_name,
)
from vidattn.stores.partwrite import signature
from vidattn.stores.provenance import (  # noqa: F401 - part of this module's API
    PROVENANCE_KEYS,
    StoreNotice,
)
from vidattn.stores.schema import (
    ARRAYS,
    INDEX_SCHEMA,
    READABLE_VERSIONS,
    SCHEMA_VERSION,
    conform,
    manifest_conflict,
)

# What a store folder holds (schema.py); anything else means it is some other folder.
STORE_ENTRIES = {"zarr.json", "features", "index", "locks", "manifest.parquet",
                 "pairs.parquet", "boxes.parquet", "label_text.parquet", "plan.parquet"}


class ChecksumError(StoreError):
    """Stored bytes are corrupt: they do not match the index checksum, or do not decode."""


def checksum(values: np.ndarray) -> str:
    return hashlib.sha256(np.ascontiguousarray(values).tobytes()).hexdigest()


class FeatureStore:
    """A vidattn store at a local path or fsspec URL.

    ``read(video_id, stream)`` -> float32 (T, H, W, D); ``index()`` -> DataFrame of
    INDEX_SCHEMA rows; ``manifest()``/``pairs()``/``boxes()`` -> DataFrames.

    lock_timeout_s: how long a writer waits for a lock held by another live writer before
    a :class:`LockTimeout`; stale_lock_s: age after which a lock is taken to be abandoned
    and broken (sooner on this host when its holder's pid is gone).
    """

    def __init__(self, url: str | Path, mode: str = "r", *,
                 lock_timeout_s: float = LOCK_TIMEOUT_S, stale_lock_s: float = STALE_LOCK_S):
        self.url = str(url)
        if "://" not in self.url:  # a local path: keep it absolute so run dirs can find it
            self.url = str(Path(self.url).expanduser().resolve())
        self.mode = mode
        # (stream, part) -> signature of the fragment this object saw or wrote: a fragment
        # it has not seen was written by another run since this one planned its work.
        self._seen: dict[tuple[str, int], tuple] = {}
        self._claimed: dict[str, dict] = {}  # stream -> the provenance this run claimed
        self._index: pd.DataFrame | None = None
        self.fs, self.root = fsspec.core.url_to_fs(self.url)
        self.local = isinstance(self.fs, fsspec.implementations.local.LocalFileSystem)
        self.locks = Locks(self.fs, self._path, self.url, self.local, lock_timeout_s,
                           stale_lock_s)
        if self.local:
            self._zstore = zarr.storage.LocalStore(self.root, read_only=(mode == "r"))
        else:
            self._zstore = zarr.storage.FsspecStore.from_url(self.url,
                                                             read_only=(mode == "r"))
        exists = self.fs.exists(f"{self.root}/zarr.json")
        if not exists and mode == "r":
            raise StoreError(f"{self.url}: no vidattn store here (no zarr.json)")
        if not exists and self.fs.isdir(self.root):
            # a store is made in a new or empty folder (or one a racing run is making one
            # in): never among someone's files
            foreign = sorted(n for n in (e.rstrip("/").rsplit("/", 1)[-1]
                                         for e in self.fs.ls(self.root, detail=False))
                             if n not in STORE_ENTRIES and not n.startswith("."))
            if foreign:
                raise StoreError(f"{self.url}: not a vidattn store (no zarr.json) and not empty "
                                 f"({', '.join(foreign[:3])}{'...' if len(foreign) > 3 else ''}"
                                 f"); give a new or empty folder as --store")
        group = None
        if exists:
            try:
                group = zarr.open_group(self._zstore, mode="r" if mode == "r" else "a",
                                        zarr_format=3)
            except Exception:  # zarr.json being written by a run creating the store
                if mode == "r":
                    raise
        if mode != "r" and (group is None or "schema_version" not in group.attrs):
            # Created under the store lock: a second run starting at the same moment waits
            # and then finds a complete group, never one without its attributes.
            with self.lock(STORE_LOCK):
                group = zarr.open_group(self._zstore, mode="a", zarr_format=3)
                if "schema_version" not in group.attrs:
                    group.attrs.update(
                        {"schema_version": SCHEMA_VERSION, "provenance": {}, "classes": []}
                    )
                    for stream in ARRAYS:  # intermediate groups made once, never by racers
                        group.require_group(f"features/{stream}")
        self.group = group
        version = self.group.attrs.get("schema_version")
        if version not in READABLE_VERSIONS:
            raise StoreError(
                f"{self.url}: store schema version {version}, this vidattn reads "
                f"{', '.join(map(str, READABLE_VERSIONS))}; re-extract into a new store"
            )
        if version != SCHEMA_VERSION and mode != "r":
            # Older versions lack columns only; fragments read them as unknown.
            with self.lock(STORE_LOCK):
                self.group.attrs["schema_version"] = SCHEMA_VERSION

    @property
    def dataset_root(self) -> Path:
        """The root the manifest's relative video paths are resolved against."""
        return Path(self.group.attrs.get("dataset", {}).get("root", "."))

    # ------------------------------------------------------------------ locks
    def lock(self, name: str):
        """Hold ``locks/<name>`` (re-entrant within this object); see :class:`Locks`."""
        return self.locks.lock(name)

    def part_lock(self, stream: str, part: int):
        """The lock :meth:`write_part` holds while writing ``part`` of ``stream``."""
        return self.locks.lock(part_lock_name(stream, part))

    def claim_part(self, streams: tuple[str, ...], part: int):
        """Context manager yielding whether this run may compute ``part`` of ``streams``
        (True: claimed until the block exits; False: a live run is computing it)."""
        return self.locks.claim([part_claim_name(s, part) for s in streams])

    # ------------------------------------------------------------------ tables
    def _path(self, rel: str) -> str:
        return f"{self.root}/{rel}"

    def _write_table(self, rel: str, table: pa.Table) -> None:
        """Write a parquet file atomically: a reader sees the old file or the new, never half."""
        buf = io.BytesIO()
        pq.write_table(table, buf)
        put_atomic(self.fs, self._path(rel), buf.getvalue())

    def _read_table(self, rel: str) -> pd.DataFrame | None:
        path = self._path(rel)
        if not self.fs.exists(path):
            return None
        with self.fs.open(path, "rb") as f:
            return pq.read_table(f).to_pandas()

    def write_table(self, name: str, df) -> None:
        """Write manifest/pairs/boxes/label_text/plan, conformed to the schema."""
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

    def label_text(self) -> pd.DataFrame | None:
        """LABEL_TEXT_SCHEMA rows (class id, name, embedding), or None without detections."""
        return self._read_table("label_text.parquet")

    def plan(self) -> pd.DataFrame:
        df = self._read_table("plan.parquet")
        return df if df is not None else pd.DataFrame({"video_id": [], "part": []})

    @property
    def classes(self) -> list[str]:
        return list(self.group.attrs.get("classes", []))

    def set_classes(self, classes: list[str]) -> None:
        with self.lock(STORE_LOCK):
            self._refresh_attrs()
            old = self.classes
            if old and old != list(classes):
                raise StoreError(
                    f"{self.url}: store holds classes {old[:5]}..., not {classes[:5]}..."
                )
            self.group.attrs["classes"] = list(classes)

    def update_attrs(self, values: dict) -> None:
        """Set group attributes without losing another run's concurrent updates (a plain
        ``group.attrs[k] = v`` rewrites zarr.json from this object's possibly old copy)."""
        with self.lock(STORE_LOCK):
            self._refresh_attrs()
            self.group.attrs.update(values)

    def _refresh_attrs(self) -> dict:
        """Re-read the group from disk (under the store lock, before a read-modify-write)."""
        self.group = zarr.open_group(self._zstore, mode="a", zarr_format=3)
        return dict(self.group.attrs)

    def _disk_attrs(self) -> dict:
        """The group attributes as stored now, read without touching ``self.group``."""
        return json.loads(self.fs.cat_file(self._path("zarr.json"))).get("attributes", {})

    def merge_manifest(self, new: pd.DataFrame) -> pd.DataFrame:
        """Add new rows; an existing video id whose row changed is refused (would mix data)."""
        new = conform("manifest", new).to_pandas()
        with self.lock(STORE_LOCK):
            old = self._read_table("manifest.parquet")
            if old is not None:
                conflict = manifest_conflict(old, new)
                if conflict:
                    raise StoreError(f"{self.url}: manifest row for {conflict[0]!r} differs "
                                     f"from the stored one ({conflict[1]}); use a new store")
                new = pd.concat([old, new[~new.video_id.isin(old.video_id)]],
                                ignore_index=True)
            self.write_table("manifest", new)
        return new

    def extend_plan(self, video_ids: list[str], part_size: int) -> pd.DataFrame:
        """Assign videos not yet planned to new parts of ``part_size``, in the given order.

        Under the store lock: two runs extending the plan at once see each other's parts,
        so no video is ever planned into two parts.
        """
        with self.lock(STORE_LOCK):
            plan = self.plan()
            planned = set(plan.video_id)
            todo = [v for v in video_ids if v not in planned]
            if todo:
                first = int(plan.part.max()) + 1 if len(plan) else 0
                parts = [first + i // part_size for i in range(len(todo))]
                new = pd.DataFrame({"video_id": todo, "part": parts})
                plan = pd.concat([plan, new], ignore_index=True)
                self.write_table("plan", plan)
        return plan

    # ------------------------------------------------------------- provenance
    def provenance(self, stream: str) -> dict | None:
        return self.group.attrs.get("provenance", {}).get(stream)

    def claim_stream(self, stream: str, prov: dict) -> str | None:
        """Record ``prov`` for ``stream``, refusing other provenance; when only the
        extractor's version changed, invalidate the stream's parts and return a notice
        (see :func:`vidattn.stores.provenance.claim_stream`)."""
        return provenance.claim_stream(self, stream, prov)

    # ------------------------------------------------------------------ parts
    def _fragment(self, stream: str, part: int) -> str:
        return f"index/{stream}/part-{part:05d}.parquet"

    def _fragments(self, stream: str) -> dict[int, tuple[str, dict]]:
        """The index fragments of ``stream`` on storage now: part -> (path, file info)."""
        found = self.fs.glob(self._path(f"index/{stream}/part-*.parquet"), detail=True)
        return {int(Path(path).stem.split("-")[1]): (path, info)
                for path, info in found.items()}

    def done_parts(self, stream: str) -> set[int]:
        """Parts of ``stream`` whose index fragment exists (remembered, see write_part)."""
        found = self._fragments(stream)
        for part, (_, info) in found.items():
            self._seen[(stream, part)] = signature(info)
        return set(found)

    def part_done(self, stream: str, part: int) -> bool:
        """Whether ``part`` of ``stream`` has its index fragment now (one cheap check; unlike
        :meth:`done_parts` it does not count as having seen the fragment)."""
        return self._info(self._fragment(stream, part)) is not None

    def _info(self, rel: str) -> dict | None:
        try:
            return self.fs.info(self._path(rel))
        except FileNotFoundError:
            return None

    def _forget_index(self) -> None:
        self._index = None
        self.__dict__.pop("_rows", None)  # the cached_property built from the old index

    def write_part(self, stream: str, part: int, rows: list[dict],
                   maps: dict[str, np.ndarray], replace: bool | None = None) -> bool:
        """Write one part, its array then its index fragment, exclusively per part across
        processes; whether it was written (see :func:`vidattn.stores.partwrite.write_part`,
        also for ``replace``).

        rows: one dict per video of the part (video_id, status, error, n_frames, fps);
        maps: video_id -> (T, H, W, D) float map for the videos that succeeded.
        """
        return partwrite.write_part(self, stream, part, rows, maps, replace)

    # ------------------------------------------------------------------- read
    def index(self, stream: str | None = None) -> pd.DataFrame:
        """All index fragments (done parts only), optionally for one stream."""
        if self._index is None:
            frames = []
            for p in sorted(self.fs.glob(self._path("index/*/part-*.parquet"))):
                with self.fs.open(p, "rb") as f:  # conform: older fragments lack columns
                    frames.append(conform("index", pq.read_table(f)).to_pandas())
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
        """The (T, H, W, D) float32 map of one video.

        Raises ChecksumError naming the video when its stored bytes do not decode, or,
        with ``verify``, do not match the checksum of the index.
        """
        row = self._rows.get((video_id, stream))
        if row is None:
            raise KeyError(f"{self.url}: no {stream} features for video {video_id!r}")
        if row["status"] != "done":
            raise KeyError(f"{self.url}: video {video_id!r} failed extraction: {row['error']}")
        where = f"{video_id!r} ({stream}, part {row['part']})"
        arr = self.group[f"features/{stream}/part-{row['part']:05d}"]
        n = row["t"] * row["h"] * row["w"]
        try:
            flat = arr[row["offset"] : row["offset"] + n]
        except (RuntimeError, ValueError) as e:  # zstd / shard index: corrupt stored bytes
            raise ChecksumError(
                f"{self.url}: stored bytes of {where} do not decode ({one_line(e, with_type=True)})"
            ) from e
        if verify and checksum(flat) != row["checksum"]:
            raise ChecksumError(f"{self.url}: checksum mismatch for {where}")
        return flat.reshape(row["t"], row["h"], row["w"], -1).astype(np.float32)


def open_store(path_or_url: str | Path, mode: str = "r", **kwargs) -> FeatureStore:
    """Open a vidattn store; ``mode="a"`` creates it if needed.  ``kwargs``: lock settings
    of :class:`FeatureStore` (lock_timeout_s, stale_lock_s)."""
    return FeatureStore(path_or_url, mode=mode, **kwargs)
