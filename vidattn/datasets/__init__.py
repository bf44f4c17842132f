"""Dataset registry: names map to lazy ``"module:function"`` loaders.

Nothing is imported until a dataset is asked for, so optional heavy dependencies of one
dataset never slow down or break the others.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass, replace
from pathlib import Path

import pandas as pd

DATASETS: dict[str, str] = {
    "sample": "vidattn.datasets.sample:load",
    "hollywood2": "vidattn.datasets.hollywood2:load",
    "actionthread": "vidattn.datasets.actionthread:load",
    "hacs": "vidattn.datasets.hacs:load",
    "hacs30": "vidattn.datasets.hacs:load_hacs30",
    "ava": "vidattn.datasets.ava:load",
    "refava": "vidattn.datasets.refava:load",
    "folder": "vidattn.datasets.folder:load",
}


class DatasetError(ValueError):
    """Bad dataset input; ``str(e)`` is one line naming the file (and line): ``f:12: msg``."""

    def __init__(self, path, message: str, line: int | None = None):
        self.path, self.line = str(path), line
        where = f"{path}:{line}" if line is not None else str(path)
        super().__init__(f"{where}: {' '.join(str(message).split())}")


# eq=False: comparing DataFrames with == is elementwise, so a generated __eq__ would break.
@dataclass(frozen=True, eq=False)
class DatasetTables:
    """A dataset's tables, as read from its root.

    manifest: MANIFEST_SCHEMA rows; pairs: PAIRS_SCHEMA rows; boxes: BOXES_SCHEMA rows
    or None when the dataset has no ground-truth boxes; classes[i] names label i.
    """

    name: str
    root: Path
    classes: list[str]
    manifest: pd.DataFrame
    pairs: pd.DataFrame
    boxes: pd.DataFrame | None
    multilabel: bool = False  # clips may carry several labels: BCE and per-class AP


def require_root(name: str, root: str | Path | None, holding: str) -> Path:
    """ROOT as a Path; None or a missing directory is a one-line DatasetError."""
    if root is None:
        raise DatasetError(name, f"--root is required (the directory holding {holding})")
    root = Path(root)
    if not root.is_dir():
        raise DatasetError(root, f"dataset root not found (expected {holding} inside)")
    return root


def load_dataset(name: str, root: str | Path | None = None,
                 options: dict[str, str] | None = None) -> DatasetTables:
    """Load dataset ``name`` (a key of DATASETS) from ``root`` (None = its default place).

    ``options`` are ``key=value`` strings for the dataset module's ``Options`` dataclass.
    """
    if name not in DATASETS:
        raise ValueError(f"unknown dataset {name!r}; known datasets: {', '.join(sorted(DATASETS))}")
    module_name, _, func_name = DATASETS[name].partition(":")
    loader = getattr(importlib.import_module(module_name), func_name)
    ds = loader(root=root, options=options) if options else loader(root=root)
    # every adapter's tables leave here in the store's exact layout (optional columns filled)
    from vidattn.stores.schema import conform

    pairs = ds.pairs if len(ds.pairs) else pd.DataFrame(
        {"video_id": [], "conjugate_id": [], "rule": [], "distance": []})
    return replace(ds, manifest=conform("manifest", ds.manifest).to_pandas(),
                   pairs=conform("pairs", pairs).to_pandas())
