"""``vidattn evaluate RUN_DIR [RUN_DIR_2]``: a run's metrics on a split of its store.

The run's task (vidattn.tasks) does the work: classify runs report mAP, per-class AP,
accuracies, AVA's frame-mAP on AVA stores, the share of attention on the action where the
store has boxes, and with a second run the late fusion of both; refer runs report RefAVA's
metrics.  Writes RUN_DIR/eval-<split>[-fusion].json.
"""

from __future__ import annotations

from dataclasses import dataclass

from vidattn.stores import open_store
from vidattn.tasks.rundir import RunDir, pick_device


@dataclass(frozen=True)
class EvaluateConfig:
    run_dir: str
    fuse_with: str | None = None  # a second run (e.g. the flow stream): late fusion
    split: str = "test"
    store: str | None = None  # default: the store the run was trained on
    device: str = "auto"
    workers: int = 0  # DataLoader processes reading the maps
    in_memory: bool = False


def run(cfg: EvaluateConfig) -> dict:
    """Evaluate; return the summary (with "path": the eval file written)."""
    device = pick_device(cfg.device)
    run_dir = RunDir.open(cfg.run_dir)
    task = run_dir.task
    store = open_store(cfg.store or run_dir.config["store"])
    if store.classes != run_dir.config["classes"]:
        raise ValueError(f"{store.url}: its classes differ from those {cfg.run_dir} was "
                         f"trained on")
    other = RunDir.open(cfg.fuse_with) if cfg.fuse_with else None
    summary = task.evaluate(run_dir, store, cfg.split, device, fuse_with=other,
                            workers=cfg.workers, in_memory=cfg.in_memory)
    summary["task"] = task.NAME
    warning = selection_warning(run_dir.config, cfg.split)
    if warning:
        summary["warning"] = f"{cfg.run_dir}: {warning}"
    if run_dir.interrupted:
        summary["interrupted"] = True
    summary["path"] = str(run_dir.write_eval(cfg.split, summary, fusion=other is not None))
    return summary


def selection_warning(config: dict, split: str) -> str | None:
    """Why reporting ``split`` is optimistic for a run, or None: the run chose its epoch on
    it.  ``config["selected_on"]`` names that split (runs from before it was recorded
    chose on val)."""
    if split == config.get("selected_on", "val"):
        return ("its checkpoint was selected on this split, so these metrics are optimistic; "
                "report a split it never saw")
    return None


def format_table(summary: dict) -> str:
    """The summary as the run's task prints it."""
    from vidattn import tasks

    return tasks.get(summary.get("task", "classify")).format_table(summary)


def headline(summary: dict) -> str:
    from vidattn import tasks

    return tasks.get(summary.get("task", "classify")).headline(summary)
