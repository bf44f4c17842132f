"""``vidattn compare RUN_DIR...``: one table over runs, like the papers' (ActX Table 1).

Each run is evaluated on the same split; the table has method, stream, #params, mAP,
mAcc / top-1 / top-5 (single-label) and, for heads with attention on a dataset with boxes,
the share of the head's map on the action; referring runs (RefAtomNet and its ablations,
the paper's Tables 3-4) add mIoU, AUROC and the IoU-gated mAP, and two yardsticks below
them: a sentence-blind linear probe and one pooled over the true box (an oracle), so a
glance says whether a head uses the sentence.  The cells come from each run's task
(``compare_row``, ``yardsticks``).
Written as markdown and CSV.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pandas as pd


@dataclass(frozen=True)
class CompareConfig:
    run_dirs: tuple[str, ...]
    out: str = "compare"  # writes OUT.md and OUT.csv
    split: str = "test"
    device: str = "auto"
    yardsticks: bool = True  # refer runs: sentence-blind and box-oracle probes below them


def human(n: int) -> str:
    """Parameter counts the way papers print them: 13.4M, 2.1K."""
    for unit, size in (("M", 1e6), ("K", 1e3)):
        if n >= size:
            return f"{n / size:.1f}{unit}"
    return str(n)


def run(cfg: CompareConfig) -> pd.DataFrame:
    from vidattn.pipeline.evaluate import EvaluateConfig
    from vidattn.pipeline.evaluate import run as evaluate
    from vidattn.tasks.rundir import RunDir

    if not cfg.run_dirs:
        raise ValueError("compare needs at least one run directory")
    rows, by_task = [], {}
    for run_dir in cfg.run_dirs:
        res = evaluate(EvaluateConfig(run_dir, split=cfg.split, device=cfg.device))
        run = RunDir.open(run_dir)
        rows.append({"method": run.label, "run": str(run_dir), "stream": run.config["stream"],
                     "params": run.metrics.get("n_params", 0),
                     **run.task.compare_row(res)})
        by_task.setdefault(run.task.NAME, (run.task, []))[1].append(run)
    if cfg.yardsticks:
        for task, runs in by_task.values():
            rows += task.yardsticks(runs, cfg.split)
    table = pd.DataFrame(rows)
    out = Path(cfg.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    table.to_csv(out.with_suffix(".csv"), index=False)
    out.with_suffix(".md").write_text(to_markdown(table) + "\n")
    return table


def to_markdown(table: pd.DataFrame) -> str:
    """Percentages with one decimal, '-' where a metric does not apply."""
    cols = [c for c in ("method", "stream", "params", "mIoU", "mAP", "AUROC", "mAP_gated",
                        "mAcc", "top1", "top5", "attention on action") if c in table]
    lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    for _, r in table.iterrows():
        cells = []
        for c in cols:
            v = r[c]
            if c == "params":
                cells.append(human(int(v)))
            elif isinstance(v, float):
                cells.append("-" if pd.isna(v) else f"{100 * v:.1f}")
            else:
                cells.append("-" if v is None else str(v))
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)
