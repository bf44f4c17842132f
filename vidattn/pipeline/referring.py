"""What the referring extractor needs of each manifest row, worked out once, up front.

Workers see one part's rows as plain dicts, never the whole manifest; but a row's
annotated "detections" are the boxes of *every* person at its keyframe, which AVA and
RefAVA spread over one row per person.  So the main process gathers, per row:

- ``keyframes``: seconds in the file of the row's keyframes: ``extra.keyframe_sec`` when
  the adapter records it (AVA/RefAVA, the referring sample), else None (the worker takes
  the segment's middle);
- ``persons``: per keyframe, the [x1, y1, x2, y2] boxes of all annotated persons:
  ``extra.persons`` (the referring sample), else the ``extra.box`` of every row sharing
  the row's ``group`` (movie) and ``extra.timestamp`` (AVA/RefAVA), else None;
- ``track``: the row's own boxes-table rows {frame: box} when ``persons`` is None (a
  dataset with one annotated actor per clip, like the plain sample);
- ``description``: the referring sentence (``extra.description``), or None.
"""

from __future__ import annotations

import pandas as pd

from vidattn.data.refer import box_tracks
from vidattn.rows import extra


def plan(manifest: pd.DataFrame, boxes: pd.DataFrame | None) -> dict[str, dict]:
    """video_id -> {"keyframes", "persons", "track", "description"} (module docstring)."""
    extras = {v: extra(e) for v, e in zip(manifest.video_id, manifest.extra)}
    groups = dict(zip(manifest.video_id, manifest.group))
    # (movie, timestamp) -> every annotated person's box there (AVA: one row per person)
    at_keyframe: dict[tuple, list] = {}
    for vid, ex in extras.items():
        if "timestamp" in ex and "box" in ex:
            at_keyframe.setdefault((groups[vid], ex["timestamp"]), []).append(ex["box"])
    tracks = box_tracks(boxes)
    out = {}
    for vid, ex in extras.items():
        keyframe = ex.get("keyframe_sec")
        if ex.get("persons") is not None:
            persons = [ex["persons"]]
        elif "timestamp" in ex and "box" in ex:
            persons = [at_keyframe[(groups[vid], ex["timestamp"])]]
        else:
            persons = None
        out[vid] = {
            "keyframes": [float(keyframe)] if keyframe is not None else None,
            "persons": persons,
            "track": tracks.get(vid) if persons is None else None,
            "description": ex.get("description"),
        }
    return out

