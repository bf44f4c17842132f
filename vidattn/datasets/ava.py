"""AVA v2.2: atomic actions of every person at one keyframe per second, with boxes.

Multi-label per person: each (video, keyframe, person) is one manifest row, its segment a
``window_sec`` window centred on the keyframe (clips are read around keyframes), labels
the person's actions as indices in label-map order, group the AVA video (its context).
The boxes table holds the person's box at the keyframe; its ``frame`` is, as for every
boxes table here (``tasks/localize.py``, ``tasks/classify_explain.py``), the source frame
index in the *file*, floor(t * fps), so boxes need the fps: ``probe=true`` (one probe per
movie) or ``fps=RATE``; without it the table is None and boxes stay in ``extra["box"]``.
:func:`ground_truth` is the table AVA's frame-mAP (:func:`vidattn.metrics.frame_map`) scores
against.
"""

from __future__ import annotations

import csv
import json
import math
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import NoReturn

import pandas as pd
import pyarrow as pa

from vidattn.datasets import DatasetError, DatasetTables, require_root
from vidattn.metrics import FRAME_COLUMNS
from vidattn.options import parse_options
from vidattn.rows import extra, video_path
from vidattn.stores.schema import BOXES_SCHEMA, MANIFEST_SCHEMA, PAIRS_SCHEMA, conform

LAYOUT = """\
ROOT/
  ava_train_v2.2.csv, ava_val_v2.2.csv     video_id,timestamp,x1,y1,x2,y2,action_id,person_id
  ava_train_excluded_timestamps_v2.2.csv   video_id,timestamp (optional: keyframes to drop)
  ava_val_excluded_timestamps_v2.2.csv
  ava_action_list_v2.2.pbtxt               label { name: "..." label_id: N label_type: ... }
  videos/<video_id>.mp4|.mkv|.webm          whole movies (cut 15-minute files: time_offset=900)
"""
LABEL_MAP = "ava_action_list_v2.2.pbtxt"
VIDEO_EXTS = (".mp4", ".mkv", ".webm")  # preferred in this order when several exist
_EPS = 1e-6  # slack when mapping a time to a frame, as in video.py
# Protocol-buffer text format, as far as label maps use it: blocks of "field: value".
_PB_STRING = r'"(?:[^"\\\n]|\\.)*"'
_PB_BLOCK = re.compile(r"(\w+)\s*:?\s*\{([^{}]*)\}")
_PB_FIELD = re.compile(rf'\s*(\w+)\s*:\s*({_PB_STRING}|[^\s{{}}:"]+)')


@dataclass(frozen=True)
class Options:
    """splits: comma-separated of train, val (AVA's test set has no labels).  window_sec:
    segment centred on each keyframe.  time_offset: seconds subtracted from timestamps (900
    for files cut to AVA's 15-minute span).  label_map: pbtxt (absolute or under ROOT).
    drop_unlisted: with a smaller label map (the 60-class ActivityNet list) drop actions it
    lacks, and persons left with none, instead of refusing them.  fps: native rate to assume
    when not probing.  probe: read fps from every movie file (about 300).
    """

    splits: str = "train,val"
    window_sec: float = 2.0
    time_offset: float = 0.0
    label_map: str = LABEL_MAP
    drop_unlisted: bool = False
    fps: float | None = None
    probe: bool = False


@dataclass
class Keyframe:
    """One person at one keyframe: the unit of a manifest row (AVA and RefAVA)."""

    split: str
    video: str
    timestamp: int
    person_id: int
    box: tuple[float, float, float, float]
    labels: list[int]
    extra: dict = field(default_factory=dict)



def parse_pbtxt(path: Path) -> list[tuple[int, str]]:
    """(id, name) of each ``label { name: "..." label_id: N }`` block, in file order.

    ``item { name: ... id: N }`` blocks (the ActivityNet list) are read too; other fields
    (label_type) are ignored.  Errors name ``path:line``.
    """
    if not path.is_file():
        raise DatasetError(path, "AVA label map not found")
    # Blank out comments (not a '#' inside a quoted name) so offsets, hence lines, stay put.
    text = re.sub(rf"{_PB_STRING}|#[^\n]*", lambda m: m.group() if m.group()[0] == '"'
                  else " " * len(m.group()), path.read_text())

    def fail(pos: int, message: str) -> NoReturn:
        pos += len(text[pos:]) - len(text[pos:].lstrip())  # the line of the next token
        raise DatasetError(path, message, line=text.count("\n", 0, pos) + 1)

    out: list[tuple[int, str]] = []
    pos = 0
    for block in _PB_BLOCK.finditer(text):
        if text[pos:block.start()].strip():
            fail(pos, f"expected 'label {{ ... }}', got {text[pos:block.start()].split()[0]!r}")
        if block.group(1) not in ("label", "item"):
            fail(block.start(), f"expected 'label {{', got {block.group(1)!r}")
        fields: dict[str, tuple[str, int]] = {}
        at = block.start(2)
        while text[at:block.end(2)].strip():
            f = _PB_FIELD.match(text, at, block.end(2))
            if f is None:
                fail(at, f"expected 'field: value', got {text[at:block.end(2)].split()[0]!r}")
            fields[f.group(1)] = (f.group(2), f.start(1))
            at = f.end()
        name, at_name = fields.get("name", ("", block.start()))
        if len(name) < 2 or not name.startswith('"'):
            fail(at_name, 'block needs name: "..."')
        raw_id, at_id = fields.get("label_id", fields.get("id", ("", block.start())))
        if not raw_id.isdigit() or int(raw_id) < 1:
            fail(at_id, f"block needs a positive integer label_id, got {raw_id!r}")
        if int(raw_id) in {k for k, _ in out}:
            fail(at_id, f"label_id {raw_id} is listed twice")
        out.append((int(raw_id), re.sub(r"\\(.)", r"\1", name[1:-1])))
        pos = block.end()
    if text[pos:].strip():
        fail(pos, f"unclosed block or stray text {text[pos:].split()[0]!r}")
    if not out:
        raise DatasetError(path, "no label blocks")
    return out


def read_excluded(path: Path) -> set[tuple[str, int]]:
    """(video, timestamp) keyframes to drop; an absent file excludes nothing (optional)."""
    out: set[tuple[str, int]] = set()
    if not path.is_file():
        return out
    with open(path, newline="") as f:
        reader = csv.reader(f)
        for row in filter(None, reader):
            if len(row) != 2 or not row[0].strip() or not row[1].strip().isdigit():
                raise DatasetError(path, f"expected 'video_id,timestamp', got {','.join(row)!r}",
                                   line=reader.line_num)
            out.add((row[0].strip(), int(row[1])))
    return out


def box_problem(box) -> str | None:
    """Why ``box`` is not a normalised [x1, y1, x2, y2] with x1 < x2, y1 < y2; None if it is."""
    # one isfinite on the sum: NaN and inf propagate through it (this runs per CSV line)
    if len(box) != 4 or not math.isfinite(sum(box)):
        return "a box needs 4 finite numbers"
    x1, y1, x2, y2 = box
    # 1e-6: a coordinate written as 1.0000001 by a float round trip is not an error.
    if min(box) < -1e-6 or max(box) > 1 + 1e-6 or not (x1 < x2 and y1 < y2):
        return f"box {list(box)} is not normalised with x1 < x2 and y1 < y2"
    return None


def read_annotations(path: Path, split: str, id_to_index: dict[int, int],
                     drop_unlisted: bool, excluded: set[tuple[str, int]]) -> list[Keyframe]:
    """Keyframes of an AVA CSV (errors name path:line); excluded ones checked, then dropped."""
    if not path.is_file():
        raise DatasetError(path, "AVA annotation CSV not found")
    people: dict[tuple[str, int, int], Keyframe] = {}
    first: dict[tuple[str, int, int], int] = {}
    with open(path, newline="") as f:
        reader = csv.reader(f)
        for row in filter(None, reader):
            n = reader.line_num
            if len(row) != 8:
                raise DatasetError(path, f"expected 8 fields (video_id,timestamp,x1,y1,x2,y2,"
                                   f"action_id,person_id), got {len(row)}", line=n)
            vid = row[0].strip()
            try:
                ts, action, pid = int(row[1]), int(row[6]), int(row[7])
                box = (float(row[2]), float(row[3]), float(row[4]), float(row[5]))
            except ValueError:
                raise DatasetError(path, "timestamp, action_id and person_id must be integers, "
                                   "the box coordinates numbers", line=n) from None
            problem = box_problem(box) or ("" if vid and ts >= 0 else "empty video id or "
                                           "negative timestamp")
            if problem:
                raise DatasetError(path, problem, line=n)
            if action not in id_to_index and not drop_unlisted:
                raise DatasetError(path, f"action id {action} is not in the label map", line=n)
            if (vid, ts) in excluded:
                continue
            key = (vid, ts, pid)
            if key not in people:
                people[key] = Keyframe(split, vid, ts, pid, box, [])
                first[key] = n
            elif people[key].box != box and max(
                    abs(a - b) for a, b in zip(people[key].box, box)) > 1e-3:
                # Every line of a person at a keyframe repeats its box; a different box
                # means two people share an id, and merging them would corrupt both.
                raise DatasetError(path, f"person {pid} at {vid} {ts} has box {list(box)} "
                                   f"but {list(people[key].box)} on line {first[key]}", line=n)
            index = id_to_index.get(action)
            if index is not None and index not in people[key].labels:
                people[key].labels.append(index)
    for kf in people.values():
        kf.labels.sort()
    # a person can be left without labels only by drop_unlisted
    return [kf for kf in people.values() if kf.labels]


def find_videos(folder: Path) -> dict[str, str]:
    """File name of each video stem in ``folder`` (one scan; mp4 before mkv before webm)."""
    rank = {ext: i for i, ext in enumerate(VIDEO_EXTS)}
    names = [n for n in (os.listdir(folder) if folder.is_dir() else []) if Path(n).suffix in rank]
    # worst first, so the preferred extension is written last and wins
    return {Path(n).stem: n for n in sorted(names, key=lambda n: (-rank[Path(n).suffix], n))}


def keyframe_tables(name: str, root: Path, keyframes: list[Keyframe], window_sec: float,
                    time_offset: float, fps: float | None,
                    probe: bool) -> tuple[pd.DataFrame, pd.DataFrame | None]:
    """Manifest (one row per keyframe person) and boxes (None when no fps is known)."""
    from vidattn.video import VideoDecodeError
    from vidattn.video import probe as probe_file

    if not window_sec > 0 or (fps is not None and not fps > 0):
        raise DatasetError(name, f"need window_sec > 0 and fps > 0, got {window_sec}, {fps}")
    if not keyframes:
        raise DatasetError(root, "no annotated keyframes")
    videos = find_videos(root / "videos")
    rates: dict[str, float | None] = {}
    # Column lists and typed arrays, not a list of dicts: ~200k rows for AVA.
    cols: dict[str, list] = {n: [] for n in MANIFEST_SCHEMA.names}
    box_cols: dict[str, list] = {n: [] for n in BOXES_SCHEMA.names}
    for kf in sorted(keyframes, key=lambda k: (k.split, k.video, k.timestamp, k.person_id)):
        file = videos.get(kf.video)
        t = kf.timestamp - time_offset
        if t < 0:
            raise DatasetError(root, f"keyframe {kf.timestamp} of {kf.video} lies before the "
                               f"file start with time_offset={time_offset}")
        rate = fps
        if probe and file is not None:
            if kf.video not in rates:  # one probe per movie, not per person
                try:
                    rates[kf.video] = probe_file(root / "videos" / file)["fps"]
                except VideoDecodeError:
                    rates[kf.video] = None  # unreadable: extraction records the failure
            rate = rates[kf.video] or fps
        start, end = max(0.0, t - window_sec / 2), t + window_sec / 2
        vid = f"{kf.video}__{kf.timestamp:04d}__{kf.person_id}"
        # keyframe_sec: the keyframe in file time (the timestamp less time_offset), where
        # the referring extractor runs the detector.
        extra = {"timestamp": kf.timestamp, "keyframe_sec": t, "person_id": kf.person_id,
                 "box": list(kf.box), **kf.extra}
        row = (vid, f"videos/{file or kf.video + '.mp4'}", kf.split, kf.labels, "action",
               kf.video, start, end, name, rate, round((end - start) * rate) if rate else None,
               "ok" if file else "missing", json.dumps(extra))
        for col, value in zip(cols.values(), row):
            col.append(value)
        if rate:
            for col, value in zip(box_cols.values(),
                                  (vid, math.floor(t * rate + _EPS), *kf.box)):
                col.append(value)
    dup = pd.Series(cols["video_id"]).duplicated().to_numpy()
    if dup.any():
        raise DatasetError(root, f"keyframe person {cols['video_id'][dup.argmax()]} is listed "
                           f"in two splits")
    if "ok" not in cols["status"]:
        raise DatasetError(root / "videos", f"none of the {len(set(cols['group']))} videos "
                           f"exist (expected videos/<video_id>.mp4, .mkv or .webm)")
    return _typed("manifest", MANIFEST_SCHEMA, cols), (
        _typed("boxes", BOXES_SCHEMA, box_cols) if box_cols["video_id"] else None)


def _typed(table: str, schema: pa.Schema, cols: dict[str, list]) -> pd.DataFrame:
    """Columns to a conformed DataFrame, typed up front (inferring them costs seconds)."""
    return conform(table, {k: pa.array(v, schema.field(k).type) for k, v in cols.items()}
                   ).to_pandas()


def empty_pairs() -> pd.DataFrame:
    """A PAIRS_SCHEMA table without rows (AVA has no conjugates)."""
    return conform("pairs", pd.DataFrame({c: [] for c in PAIRS_SCHEMA.names})).to_pandas()


def parse_splits(name: str, text: str, known: tuple[str, ...]) -> list[str]:
    """``"train,val"`` -> ["train", "val"]; an unknown or empty list is a DatasetError."""
    splits = [s.strip() for s in text.split(",") if s.strip()]
    if not splits or not set(splits) <= set(known):
        raise DatasetError(name, f"splits must be a comma-separated subset of "
                           f"{','.join(known)}, got {text!r}")
    return splits


def under(root: Path, path: str) -> Path:
    """``path`` itself when absolute, else ROOT/path."""
    return video_path(path, root)


def load(root: str | Path | None = None, options: dict | None = None) -> DatasetTables:
    """AVA v2.2 person keyframes as a multi-label manifest (see the module docstring)."""
    opts = parse_options(Options, options)
    root = require_root("ava", root, "ava_train_v2.2.csv and videos/")
    label_map = parse_pbtxt(under(root, opts.label_map))
    id_to_index = {action_id: i for i, (action_id, _) in enumerate(label_map)}
    keyframes: list[Keyframe] = []
    for split in parse_splits("ava", opts.splits, ("train", "val")):
        excluded = read_excluded(root / f"ava_{split}_excluded_timestamps_v2.2.csv")
        keyframes += read_annotations(root / f"ava_{split}_v2.2.csv", split, id_to_index,
                                      opts.drop_unlisted, excluded)
    manifest, boxes = keyframe_tables("ava", root, keyframes, opts.window_sec,
                                      opts.time_offset, opts.fps, opts.probe)
    return DatasetTables("ava", root, [n for _, n in label_map], manifest, empty_pairs(),
                         boxes, multilabel=True)




def ground_truth(manifest: pd.DataFrame) -> pd.DataFrame:
    """The (video, timestamp, x1, y1, x2, y2, label) table of an AVA or RefAVA manifest."""
    extras = [extra(e) for e in manifest.extra]
    return pd.DataFrame([(g, e["timestamp"], *e["box"], int(k)) for g, e, labels in zip(
        manifest.group, extras, manifest.labels) for k in labels], columns=list(FRAME_COLUMNS))

