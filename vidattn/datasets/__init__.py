"""Dataset registry: names map to lazy ``"module:function"`` loaders.

Nothing is imported until a dataset is asked for, so optional heavy dependencies of one
dataset never slow down or break the others.

Every manifest path must lie inside the dataset root (:func:`check_paths`): a path is
joined to the root (an absolute one stands alone), symlinks are resolved, and the result
must be the root's resolved directory or below it.  Annotation files come from elsewhere
and can be crafted: ``../../etc/passwd`` or a symlink planted in a downloaded archive would
otherwise make extraction open files the user never meant to hand over.  Absolute paths
inside the root are fine.  No adapter produces paths outside its root (the folder adapter
and ActionThread refuse absolute and ``..`` paths in their CSVs already), so the rule has
no exception; a dataset kept on another disk is reached by making that directory the
root, or by symlinking the root itself (it is resolved before comparing).
"""

from __future__ import annotations

import importlib
import os
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
    source: Path | None = None  # the annotation file the manifest came from, for messages
    # Where a clip's conjugates come from when training: "pairs" (pairs.parquet) or
    # "around" (its own steps before/after each training crop, drawn by the loader)
    conjugates: str = "pairs"


def require_root(name: str, root: str | Path | None, holding: str) -> Path:
    """ROOT as a Path; None or a missing directory is a one-line DatasetError."""
    if root is None:
        raise DatasetError(name, f"--root is required (the directory holding {holding})")
    root = Path(root)
    if not root.is_dir():
        raise DatasetError(root, f"dataset root not found (expected {holding} inside)")
    return root


def check_paths(manifest: pd.DataFrame, root: str | Path, source: str | Path | None = None,
                ) -> None:
    """Refuse a manifest row whose ``path`` resolves outside ``root`` (module docstring).

    The error is one line naming ``source`` (the annotation file, else the root), the
    row's video id and its path.  Cost: one ``realpath`` per distinct directory and one
    ``lstat`` per distinct file, so HACS's 1.5M rows stay fast.
    """
    real_root = os.path.realpath(root)
    prefix = real_root if real_root.endswith(os.sep) else real_root + os.sep
    real_dirs: dict[str, str] = {}  # directory as joined -> resolved
    seen: set[str] = set()
    where = source if source is not None else root
    for vid, rel in zip(manifest["video_id"], manifest["path"]):
        if rel in seen:
            continue
        seen.add(rel)
        if not isinstance(rel, str) or not rel:
            raise DatasetError(where, f"video {vid!r} has an empty path")
        full = os.path.join(root, rel)  # an absolute rel replaces the root
        parent, name = os.path.split(full)
        if parent not in real_dirs:
            real_dirs[parent] = os.path.realpath(parent)  # resolves links, then ".."
        real = os.path.join(real_dirs[parent], name)
        if name in ("", ".", "..") or os.path.islink(real):
            real = os.path.realpath(real)
        if real != real_root and not real.startswith(prefix):
            raise DatasetError(where, f"video {vid!r}: path {rel!r} resolves to {real}, "
                               f"outside the dataset root {real_root}; refusing it")


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
    manifest = conform("manifest", ds.manifest).to_pandas()
    check_paths(manifest, ds.root, ds.source)
    return replace(ds, manifest=manifest, pairs=conform("pairs", pairs).to_pandas())
