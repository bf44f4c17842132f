"""A store's provenance: what made each stream's maps, and what a run must agree with
before it appends to them (the write protocol's point 5 and its invalidation, see
zarr_store.py).  :class:`~vidattn.stores.zarr_store.FeatureStore` delegates here; each
function takes that store (``store``, untyped here: zarr_store imports this module) and
uses its locks, attributes and the record of the fragments it has seen.
"""

from __future__ import annotations

import json
import warnings
from typing import Any

from vidattn.stores.locks import STORE_LOCK, StoreError

# Provenance keys that must agree before a run may append to a stream.  vidattn's own
# version is recorded but not compared: upgrading vidattn must not orphan a store; a change
# to an extractor's numerics bumps that extractor's own version instead, and a store then
# redoes that stream's parts (see claim_stream).
PROVENANCE_KEYS = ("extractor", "extractor_version", "weights_sha256", "preprocessing")


class StoreNotice(UserWarning):
    """Something a run should tell its user about a store, e.g. parts invalidated."""


def _differing(old: dict, new: dict) -> list[str]:
    """The PROVENANCE_KEYS on which two provenance records disagree, in that order."""
    return [k for k in PROVENANCE_KEYS if old.get(k) != new.get(k)]


def claim_stream(store: Any, stream: str, prov: dict) -> str | None:
    """Record ``prov`` for ``stream``; refuse if the store holds other provenance.

    When only ``extractor_version`` differs, the stream's parts are invalidated (their
    index fragments removed: they are extracted again, their arrays overwritten) and
    ``prov`` recorded.  Returns a one-line notice saying so (also issued as a
    :class:`StoreNotice` warning), or None when nothing was invalidated.

    Crash-safe and safe against a concurrent run of the old version: the new
    provenance is recorded first with a ``pending_invalidation`` mark, then each
    fragment is removed under its part lock, then the mark is cleared.  A writer
    re-checks the stored provenance under the part lock (partwrite.write_part), so an old
    run cannot add a fragment after its part was invalidated; a claim that finds the
    mark (a crash mid-way) finishes the invalidation.
    """
    with store.lock(STORE_LOCK):
        attrs = store._refresh_attrs()
        allprov = dict(attrs.get("provenance", {}))
        pending = dict(attrs.get("pending_invalidation", {}))
        old = allprov.get(stream)
        if old is None:
            allprov[stream] = prov
            store.group.attrs["provenance"] = allprov
            store._claimed[stream] = prov
            return None
        diff = _differing(old, prov)
        refused = [k for k in diff if k != "extractor_version"]
        if refused:
            k = refused[0]
            raise StoreError(
                f"{store.url}: refusing to append {stream} features with different "
                f"provenance ({k}: stored {json.dumps(old.get(k))}, this run "
                f"{json.dumps(prov.get(k))}); use a new --store"
            )
        if not diff and stream not in pending:
            store._claimed[stream] = prov
            return None
        was = old.get("extractor_version") if diff else pending[stream]
        if diff:
            allprov[stream] = prov
            pending[stream] = was
            store.group.attrs.update({"provenance": allprov,
                                      "pending_invalidation": pending})
        n = invalidate(store, stream)
        del pending[stream]
        store.group.attrs["pending_invalidation"] = pending
        store._claimed[stream] = prov
    notice = (
        f"{store.url}: {stream} maps were made by extractor_version {json.dumps(was)}, "
        f"this run's is {json.dumps(prov.get('extractor_version'))}: {n} part(s) "
        f"invalidated, to be extracted again"
    )
    warnings.warn(notice, StoreNotice, stacklevel=3)
    return notice


def invalidate(store: Any, stream: str) -> int:
    """Remove every index fragment of ``stream``, each under its part lock; how many."""
    n = 0
    for part, (path, _) in sorted(store._fragments(stream).items()):
        with store.part_lock(stream, part):
            if store.fs.exists(path):
                store.fs.rm(path)
                n += 1
        store._seen.pop((stream, part), None)
    store._forget_index()
    return n


def check_claim(store: Any, stream: str, part: int) -> None:
    """Refuse to write when the stream's stored provenance changed after our claim."""
    claimed = store._claimed.get(stream)
    if claimed is None:
        return
    now = store._disk_attrs().get("provenance", {}).get(stream) or {}
    diff = _differing(now, claimed)
    if diff:
        k = diff[0]
        raise StoreError(
            f"{store.url}: {stream} provenance changed since this run claimed it ({k}: "
            f"stored {json.dumps(now.get(k))}, this run {json.dumps(claimed.get(k))}); "
            f"not writing part {part:05d}"
        )
