"""``vidattn manifest``: a dataset root -> the store's manifest table, with a summary."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd
import pyarrow.parquet as pq

from vidattn.stores.schema import conform


@dataclass(frozen=True)
class ManifestConfig:
    dataset: str
    root: str | None = None
    out: str | None = None  # default: manifests/<dataset>.parquet
    options: dict = field(default_factory=dict)  # the dataset's Options, key -> str


def summary(ds) -> str:
    """Counts per split and role, per class and split, and the missing files."""
    man = ds.manifest
    lines = [f"{ds.name}: {len(man)} rows, {len(ds.classes)} classes, root {ds.root}"]
    lines.append(man.groupby(["split", "role"]).size().unstack(fill_value=0).to_string())
    labelled = man[man.labels.map(len) > 0].explode("labels")
    if len(labelled):
        counts = labelled.groupby(["labels", "split"]).size().unstack(fill_value=0)
        counts.index = [ds.classes[int(i)] for i in counts.index]
        lines.append(counts.to_string())
    missing = man[man.status == "missing"]
    if len(missing):
        shown = ", ".join(missing.path.head(5))
        lines.append(f"missing files: {len(missing)} (e.g. {shown})")
    if len(ds.pairs):
        lines.append(f"conjugate pairs: {len(ds.pairs)} ({', '.join(sorted(set(ds.pairs.rule)))})")
    return "\n".join(lines)


def run(cfg: ManifestConfig):
    """Load the dataset, write its manifest (and pairs, if any) -> (DatasetTables, out path)."""
    from vidattn.datasets import load_dataset

    ds = load_dataset(cfg.dataset, cfg.root, cfg.options or None)
    out = Path(cfg.out or f"manifests/{ds.name}.parquet")
    out.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(conform("manifest", ds.manifest), out)
    if len(ds.pairs):
        pq.write_table(conform("pairs", pd.DataFrame(ds.pairs)),
                       out.with_name(out.stem + ".pairs.parquet"))
    return ds, out
