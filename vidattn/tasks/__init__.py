"""The task layer: what a head maps from and to, and everything that follows from it.

Two tasks (see :class:`Task` for the interface each module provides):

- ``classify`` (:mod:`vidattn.tasks.classify`): a feature map -> class scores;
- ``refer`` (:mod:`vidattn.tasks.refer`): a map + a sentence's tokens + detections ->
  class scores and the referred person's box.

Each head module declares its task (``TASK = "refer"``; "classify" when absent), and a run
directory records the task it was trained for.  The commands look the task up once --
:func:`for_head` in train-head, :func:`for_run` everywhere else -- and call it; no command
tests for a particular task.  Tasks are modules, imported on first use.
"""

from __future__ import annotations

import importlib
from types import ModuleType
from typing import Protocol

TASKS: dict[str, str] = {
    "classify": "vidattn.tasks.classify",
    "refer": "vidattn.tasks.refer",
}


class Task(Protocol):
    """What a task module provides (a module satisfies this protocol).

    NAME: its name.  head_fields(store, stream) -> the head Config fields the data fixes.
    dataset(store, ids, stream, **kw) -> a StoreDataset of the rows it can use.
    loss(head, batch, teacher, mfr_weight, mfr_rms) -> (loss, {term: float}) for one batch.
    predict(head, ds, device, workers) -> Predictions of whole maps.
    summarize(pred, ds) -> metrics dict; val_record(summary) -> the history fields;
    selection_key(record) -> what the best epoch maximises.
    run_fields(store, ds) -> what a run directory records besides the common fields.
    evaluate(run, store, split, device, **kw) -> summary (with the task's extras);
    format_table(summary) -> markdown; compare_row(summary) -> the compare table's cells;
    yardsticks(runs, split) -> reference rows compare adds below the runs of this task.
    explain(run, head, store, video_id, out, device) -> (PNG path, GIF path or None).
    score_check(run) -> None, or raise when the task's runs cannot be re-scored by maps alone.
    """

    NAME: str


def get(name: str) -> ModuleType:
    """The task module named ``name``."""
    if name not in TASKS:
        raise ValueError(f"unknown task {name!r}; known: {', '.join(TASKS)}")
    return importlib.import_module(TASKS[name])


def for_head(head: str) -> ModuleType:
    """The task a head declares (its module's TASK; classify by default)."""
    from vidattn.registry import head_module

    return get(getattr(head_module(head), "TASK", "classify"))


def for_run(config: dict) -> ModuleType:
    """The task of a run directory's config: its "task", or, for runs written before tasks
    were recorded, "refer" when it says "referring"."""
    return get(config.get("task") or ("refer" if config.get("referring") else "classify"))
