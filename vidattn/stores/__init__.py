"""Feature stores: a Zarr v3 group of part arrays with parquet tables (layout in schema.py)."""

from vidattn.stores.zarr_store import ChecksumError, FeatureStore, StoreError, open_store

__all__ = ["ChecksumError", "FeatureStore", "StoreError", "open_store"]
