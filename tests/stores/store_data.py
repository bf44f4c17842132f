"""Made-up feature maps, index rows, manifests and provenance for the store's tests."""

from __future__ import annotations

import numpy as np
import pandas as pd

from vidattn.stores.schema import ARRAYS

D = ARRAYS["rgb"].channels  # 1024
SHAPES = {"v_a": (3, 2, 4), "v_b": (1, 5, 3), "v_c": (4, 7, 7)}  # (T, H, W), different sizes


def feature_map(t: int, h: int, w: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).normal(0, 2, (t, h, w, D)).astype(np.float32)


def part_row(vid: str, status: str = "done", error: str | None = None) -> dict:
    return {"video_id": vid, "status": status, "error": error, "n_frames": 64, "fps": 25.0}


def manifest_of(ids, path_of=lambda v: f"videos/{v}.mp4") -> pd.DataFrame:
    return pd.DataFrame({
        "video_id": ids,
        "path": [path_of(v) for v in ids],
        "split": ["train"] * len(ids),
        "labels": [[sum(map(ord, v)) % 3] for v in ids],  # a function of the id, not the row
        "role": ["action"] * len(ids),
        "group": [f"g{v}" for v in ids],
        "start_sec": [None] * len(ids),
        "end_sec": [None] * len(ids),
        "dataset": ["unit"] * len(ids),
    })


PROV = {
    "extractor": "i3d",
    "extractor_version": 1,
    "weights_sha256": "ab" * 32,
    "preprocessing": {"fps": 25.0, "short_side": 256, "crop": 224},
    "vidattn_version": "0.1.0",
}


def lock_files(path) -> list[str]:
    return sorted(p.name for p in (path / "locks").rglob("*") if p.is_file())
