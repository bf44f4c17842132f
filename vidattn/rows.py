"""Manifest-row helpers used by extraction, training, evaluation and explanation alike.

One place for what a manifest row means beyond its columns:

- :func:`extra`: the ``extra`` JSON object (null, NaN once read by pandas, a string or a
  dict) as a dict;
- :func:`bound`: a segment bound as a float, or None when null;
- :func:`video_path`: a row's ``path`` resolved against the dataset root;
- :func:`part_videos` and :func:`segments`: a part's rows as the dicts extraction works
  on, and the file segments they decode (consecutive rows of one segment share it), the
  one rule for both the part itself and the decoding started ahead of it;
- :func:`keyframe_sec` and :func:`track_box`: the one rule for a row's keyframe and the
  box of a per-frame track at it, shared by the referring extractor (annotated detections)
  and training (the referred person's ground-truth box), so both see the same frame.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from pathlib import Path


def extra(value) -> dict:
    """A manifest ``extra`` value as a dict ({} for null)."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return {}
    return json.loads(value) if isinstance(value, str) else dict(value)


def has_descriptions(manifest) -> bool:
    """Whether any row of a manifest (DataFrame with ``extra``) carries a referring sentence."""
    return any(extra(e).get("description") for e in manifest["extra"])


def bound(value) -> float | None:
    """A nullable manifest number (start_sec, end_sec, fps...) as a float, None when null
    (None, NaN or pandas' NA)."""
    try:
        x = float(value)
    except (TypeError, ValueError):
        return None
    return None if math.isnan(x) else x


def video_path(path: str, root: str | Path) -> Path:
    """``path`` itself when absolute, else ROOT/path."""
    return Path(path) if Path(path).is_absolute() else Path(root) / path


def part_videos(video_ids, rows_by_id, root: str | Path,
                referring: dict | None = None) -> tuple[dict, ...]:
    """The rows of ``video_ids`` (a manifest indexed by video_id) as plain dicts, paths
    made absolute; with ``referring`` (video_id -> planned keyframes, persons, ...) those
    keys and the row's fps too."""
    out = []
    for vid in video_ids:
        meta = rows_by_id.loc[vid]
        video = {"video_id": str(vid), "path": str(video_path(meta.path, root)),
                 "start_sec": bound(meta.start_sec), "end_sec": bound(meta.end_sec)}
        if referring is not None:
            video.update(referring[vid], fps=bound(meta.fps))
        out.append(video)
    return tuple(out)


def segments(videos) -> tuple[list[int], list[tuple[str, float | None, float | None]]]:
    """The decoding segments of a part's ``videos`` (dicts with path, start_sec, end_sec):
    for each row the index of its segment, and the segments ``(path, start_sec, end_sec)``.
    Rows that share a segment (AVA's persons of one keyframe, the instances of a referring
    clip) are consecutive in a plan and decoded once; a segment met again later is a new
    one."""
    clip_of: list[int] = []
    clips: list[tuple[str, float | None, float | None]] = []
    for v in videos:
        key = (str(v["path"]), bound(v["start_sec"]), bound(v["end_sec"]))
        if not clips or clips[-1] != key:
            clips.append(key)
        clip_of.append(len(clips) - 1)
    return clip_of, clips


def keyframe_sec(row_extra, start_sec, end_sec,
                 duration: float | Callable[[], float | None] | None) -> float | None:
    """Seconds in the file of a row's keyframe: ``extra.keyframe_sec`` when the dataset
    records it (AVA/RefAVA, the referring sample), else the segment's middle.

    ``duration``: the file's length in seconds, or a callable giving it (asked only when the
    segment has no end); None when unknown, and then an open segment has no keyframe.
    """
    recorded = extra(row_extra).get("keyframe_sec")
    if recorded is not None:
        return float(recorded)
    start, end = bound(start_sec), bound(end_sec)
    if start is not None and end is not None:
        return (start + end) / 2
    total = duration() if callable(duration) else duration
    if total is None:
        return None
    lo = start or 0.0
    hi = min(end, total) if end is not None else total
    return (lo + hi) / 2


def track_box(track: dict[int, list[float]], t: float, fps: float) -> list[float]:
    """The box of the track frame nearest time ``t`` (frames count at the file's ``fps``,
    as in every boxes table); ties go to the earlier frame."""
    target = round(t * fps)
    nearest = min(sorted(track), key=lambda f: abs(f - target))
    return list(track[nearest])
