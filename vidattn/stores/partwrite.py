"""Writing one part of a stream: its array shard by shard, then its index fragment (the
write protocol's points 2-4, see zarr_store.py).  :meth:`FeatureStore.write_part
<vidattn.stores.zarr_store.FeatureStore.write_part>` delegates here, passing itself as
``store`` (untyped here: zarr_store imports this module).
"""

from __future__ import annotations

import errno
import hashlib
import logging
from typing import Any

import numpy as np
import pandas as pd
from zarr.codecs import ZstdCodec

from vidattn.errors import one_line
from vidattn.spill import row_blocks
from vidattn.stores.locks import StoreError
from vidattn.stores.provenance import check_claim
from vidattn.stores.schema import ARRAYS, conform

_log = logging.getLogger(__name__)


def signature(info: dict) -> tuple:
    """What identifies one version of a file: a fragment replaced by rename gets a new
    inode (local) or ETag / generation (object stores), even with equal size and mtime."""
    keys = ("size", "mtime", "ino", "ETag", "etag", "LastModified", "generation")
    return tuple(str(info.get(k)) for k in keys)


def _remove_quietly(store: Any, path: str) -> None:
    """Best effort: the error being handled matters more than a failed cleanup."""
    try:
        if store.fs.exists(path):
            store.fs.rm(path, recursive=True)
    except Exception as e:
        _log.warning("%s: could not remove %s (%s)", store.url, path,
                     one_line(e, with_type=True))


def write_shards(arr, sources: list, n_rows: int, shard: int, dtype: str) -> None:
    """Fill ``arr`` (n_rows, C) from ``sources`` [(row dict, map)], one whole shard per
    write (no shard is read back), setting each row dict's ``checksum``."""
    buf = np.empty((min(shard, n_rows), arr.shape[1]), dtype)
    pos = fill = 0  # rows of arr written; rows of buf filled
    for rec, m in sources:
        digest = hashlib.sha256()
        for block in row_blocks(m):
            block = block.astype(dtype, copy=False)
            digest.update(np.ascontiguousarray(block).data)
            while len(block):
                k = min(len(block), len(buf) - fill)
                buf[fill : fill + k] = block[:k]
                block, fill = block[k:], fill + k
                if fill == len(buf) or pos + fill == n_rows:
                    arr[pos : pos + fill] = buf[:fill]
                    pos, fill = pos + fill, 0
        rec["checksum"] = digest.hexdigest()
    if pos != n_rows:
        raise RuntimeError(f"wrote {pos} of {n_rows} rows: a map changed while written")


def write_part(store: Any, stream: str, part: int, rows: list[dict],
               maps: dict[str, np.ndarray], replace: bool | None = None) -> bool:
    """Write one part: its array (all ``maps`` concatenated), then its index fragment.

    rows: one dict per video of the part (video_id, status, error, n_frames, fps);
    maps: video_id -> (T, H, W, D) float map for the videos that succeeded.

    Exclusive per (stream, part) across processes (the part lock).  When the part's
    fragment already exists, ``replace=None`` (default) overwrites it if ``store``
    saw that very fragment (through done_parts or its own write: a deliberate redo) or
    if it records a failed video (a --retry-failed redo, perhaps from a worker's fresh
    store object); it skips the part when the fragment is one it never saw recording
    these same videos, all done: another run finished the part meanwhile.
    ``replace=True`` always overwrites, False never does.  Returns whether the part
    was written.  Any OSError while writing (disk full...) becomes a one-line
    StoreError, with nothing of the part committed.
    """
    spec = ARRAYS[stream]
    sources, offset, out_rows = [], 0, []
    for row in rows:  # validated before any lock is taken or byte written
        vid = row["video_id"]
        rec = {"stream": stream, "part": part, "offset": -1, "t": 0, "h": 0, "w": 0,
               "checksum": None, **row}
        if vid in maps:
            m = maps[vid]
            spec.check(m)
            t, h, w = m.shape[:3]
            rec.update(offset=offset, t=t, h=h, w=w)
            sources.append((rec, m))
            offset += t * h * w
        out_rows.append(rec)
    conform("index", pd.DataFrame(out_rows))  # refused here, before the lock
    frag = store._fragment(stream, part)
    try:
        with store.part_lock(stream, part):
            info = store._info(frag)
            if info is not None and replace is not True:
                seen = store._seen.get((stream, part)) == signature(info)
                if replace is False or (not seen and _finished(store, frag, out_rows)):
                    _log.info("%s: %s part %05d was written by another run; skipped",
                              store.url, stream, part)
                    store._seen[(stream, part)] = signature(info)
                    store._forget_index()
                    return False
            check_claim(store, stream, part)
            _commit_part(store, stream, part, frag, sources, offset, out_rows,
                         had_fragment=info is not None)
            store._seen[(stream, part)] = signature(store.fs.info(store._path(frag)))
    except OSError as e:
        why = "disk full" if e.errno == errno.ENOSPC else "write failed"
        raise StoreError(
            f"{store.url}: {why} while writing {stream} part {part:05d}; nothing of the "
            f"part was committed ({one_line(e, with_type=True)})"
        ) from e
    finally:
        store._forget_index()
    return True


def _finished(store: Any, frag: str, rows: list[dict]) -> bool:
    """Whether fragment ``frag`` records exactly the videos of ``rows``, all done."""
    stored = store._read_table(frag)
    if stored is None:
        return False
    same = sorted(stored.video_id) == sorted(r["video_id"] for r in rows)
    return same and bool((stored.status == "done").all())


def _commit_part(store: Any, stream: str, part: int, frag: str, sources: list, n_rows: int,
                 out_rows: list[dict], had_fragment: bool) -> None:
    """Array, then fragment ``frag``; on an OSError the partial array goes, nothing is done.

    sources: (index row, (T, H, W, C) map) in row order, the maps in memory or spilled
    (vidattn.spill); they are copied shard by shard, so writing needs one shard's
    memory however long the part.  Each row's checksum is of its float16 bytes.
    """
    name = f"features/{stream}/part-{part:05d}"
    if had_fragment:
        # The part stops being done before its array changes: a fragment always
        # describes a complete array, whenever this process dies.
        store.fs.rm(store._path(frag))
    try:
        if sources:
            spec = ARRAYS[stream]
            c = spec.chunk_rows
            shard = min(-(-n_rows // c), spec.shard_chunks) * c
            arr = store.group.create_array(
                name, shape=(n_rows, spec.channels), dtype=spec.dtype,
                chunks=(c, spec.channels), shards=(shard, spec.channels),
                compressors=ZstdCodec(level=spec.codec_level),
                dimension_names=spec.dims, overwrite=True,
            )
            write_shards(arr, sources, n_rows, shard, spec.dtype)
        store._write_table(frag, conform("index", pd.DataFrame(out_rows)))
    except OSError:
        _remove_quietly(store, store._path(name))
        raise
