"""``vidattn explain RUN_DIR VIDEO_ID``: where a run's head looks, drawn over the video.

Classify runs: a PNG grid of the head's maps over the decoded frames and an animated GIF
(vidattn/tasks/classify_explain.py); refer runs: the keyframe with the detections, the
true and predicted boxes and the visual attention (vidattn/tasks/refer_explain.py).
"""

from __future__ import annotations

from dataclasses import dataclass

from vidattn.stores import open_store
from vidattn.tasks.rundir import RunDir, pick_device


@dataclass(frozen=True)
class ExplainConfig:
    run_dir: str
    video_id: str
    out: str | None = None
    device: str = "auto"


def run(cfg: ExplainConfig) -> tuple[str, str | None]:
    """-> (PNG path, GIF path or None)."""
    device = pick_device(cfg.device)
    run_dir = RunDir.open(cfg.run_dir)
    head = run_dir.load_head(device)
    store = open_store(run_dir.config["store"])
    return run_dir.task.explain(run_dir, head, store, cfg.video_id, cfg.out, device)
