"""Training data from a store: ``StoreDataset`` (a torch Dataset) and its map readers.

``from vidattn.data import StoreDataset`` imports torch and the store only when used.
"""

from __future__ import annotations

__all__ = ["Draw", "StoreDataset"]


def __getattr__(name: str):
    if name in __all__:
        from vidattn.data import dataset

        return getattr(dataset, name)
    raise AttributeError(f"module 'vidattn.data' has no attribute {name!r}")
