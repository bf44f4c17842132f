"""ActionThread (Hoai & Zisserman, ACCV 2014): actions with their surrounding video threads.

Each thread is one video file holding an action and the footage right before and after
it.  ActX (Wang et al. BMVC 2019, Sec. 4.1) mines conjugates from "the pre- and
post-action sequences" of the same thread; this adapter cuts them as segments of the
thread's file:

    pre  = [max(0, start - gap - max_len), start - gap]
    post = [end + gap, min(duration, end + gap + max_len)]

(``max_len`` None = no cap), kept only when at least ``min_len_sec`` long.  The post
segment needs the file's duration, so it is skipped when the file is missing.  A thread
with several actions gets ids ``<thread>_<k>`` (k = 1, 2, ... by start time) and its
conjugates are trimmed to keep ``gap_sec`` clear of every action of the thread (the part
nearest the action survives); identical conjugate segments are listed once and paired
with every action they serve.

No public specification of the release's annotation files could be verified, so this
adapter reads its own documented CSV (see LAYOUT); convert the release into it.  A label
cell may name several actions separated by ``|``: one such row makes the whole dataset
multi-label (``multilabel=True``: BCE and per-class AP), otherwise it is single-label.

The default class list (DEFAULT_CLASSES) is an ASSUMPTION to be checked against the
release: the 12 Hollywood2 actions plus HighFive, in alphabetical order.  A label outside
it requires ``ROOT/classes.txt``, which, when present, always defines the classes.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath

import pandas as pd

from vidattn.datasets import DatasetError, DatasetTables, require_root
from vidattn.datasets.csvfile import read_rows
from vidattn.options import parse_options
from vidattn.stores.schema import PAIRS_SCHEMA, conform
from vidattn.video import VideoDecodeError, probe

NAME = "actionthread"
RULE = "actionthread:pre-post-same-thread"
HEADER = ["thread_id", "video", "label", "action_start", "action_end", "split"]
SPLITS = ("train", "val", "test")
DEFAULT_CLASSES = ["AnswerPhone", "DriveCar", "Eat", "FightPerson", "GetOutCar", "HandShake",
                   "HighFive", "HugPerson", "Kiss", "Run", "SitDown", "SitUp", "StandUp"]
LAYOUT = """\
ROOT/annotations.csv   header thread_id,video,label,action_start,action_end,split
                       one row per action; video relative to ROOT; seconds; train|val|test;
                       several labels of one action separated by "|"
ROOT/classes.txt       optional: one class name per line (required for labels outside
                       the default 13)
ROOT/<video>           one file per thread: the action with its pre- and post-action footage
"""


@dataclass(frozen=True)
class Options:
    """How pre- and post-action conjugate segments are cut (all in seconds).

    gap_sec: margin kept clear of every action on both sides (also the pairs' distance);
    min_len_sec: shorter segments are dropped; max_len_sec: cap on a segment's length,
    keeping the part nearest the action (None = up to the file's start / end).
    """

    gap_sec: float = 1.0
    min_len_sec: float = 1.0
    max_len_sec: float | None = None

    def __post_init__(self) -> None:
        if not (self.gap_sec >= 0 and self.min_len_sec > 0):
            raise ValueError(f"{NAME}: need gap_sec >= 0 and min_len_sec > 0")
        if self.max_len_sec is not None and not self.max_len_sec >= self.min_len_sec:
            raise ValueError(f"{NAME}: max_len_sec must be None or >= min_len_sec")


@dataclass
class _Thread:
    video: str
    split: str
    line: int
    actions: list[tuple[float, float, list[int], int]] = field(default_factory=list)


def _read_classes(path: Path) -> list[str]:
    names: list[str] = []
    for line_no, raw in enumerate(path.read_text(encoding="utf-8-sig").splitlines(), 1):
        name = raw.strip()
        if not name:
            continue
        if name in names or any(c in name for c in "|,"):
            raise DatasetError(path, f"class name {name!r} is repeated or contains '|' or ','",
                               line=line_no)
        names.append(name)
    if not names:
        raise DatasetError(path, "no class names")
    return names


def _seconds(text: str, what: str, path: Path, line: int) -> float:
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not (math.isfinite(value) and value >= 0):
        raise DatasetError(path, f"{what} must be a number of seconds >= 0, got {text!r}",
                           line=line)
    return value


def _read_annotations(path: Path, classes: list[str], custom: bool) -> dict[str, _Thread]:
    """Parse annotations.csv into threads (file order); DatasetError names file:line."""
    threads: dict[str, _Thread] = {}
    for line, _, cells in read_rows(path, [HEADER]):
        tid, video, label_text, start_text, end_text, split = cells
        video_path = PurePosixPath(video)
        if not tid or not video or video_path.is_absolute() or ".." in video_path.parts:
            raise DatasetError(path, "thread_id and video (a path relative to the root, "
                               "without '..') must be given", line=line)
        if split not in SPLITS:
            raise DatasetError(path, f"split must be one of {'|'.join(SPLITS)}, got "
                               f"{split!r}", line=line)
        start = _seconds(start_text, "action_start", path, line)
        end = _seconds(end_text, "action_end", path, line)
        if end <= start:
            raise DatasetError(path, f"action_end {end} is not after action_start {start}",
                               line=line)
        labels = []
        for name in (n.strip() for n in label_text.split("|")):
            if name not in classes:
                hint = ("not in classes.txt" if custom else "not in the default class "
                        "list; list the dataset's classes in ROOT/classes.txt")
                raise DatasetError(path, f"unknown label {name!r} ({hint})", line=line)
            labels.append(classes.index(name))
        thread = threads.setdefault(tid, _Thread(video, split, line))
        if (thread.video, thread.split) != (video, split):
            raise DatasetError(path, f"thread {tid} was given video {thread.video} and "
                               f"split {thread.split} at line {thread.line}", line=line)
        if any((s, e) == (start, end) for s, e, _, _ in thread.actions):
            raise DatasetError(path, f"thread {tid} already has an action at [{start}, "
                               f"{end}]; list several labels as A|B", line=line)
        thread.actions.append((start, end, sorted(set(labels)), line))
    if not threads:
        raise DatasetError(path, "no annotation rows")
    return threads


def conjugate_bounds(i: int, actions: list[tuple[float, float]], opts: Options,
                     duration: float | None) -> tuple[tuple | None, tuple | None]:
    """(pre, post) segments of action ``i`` of a thread, each (start, end) or None.

    ``actions`` are every action's (start, end) in the thread; each one, widened by
    ``gap_sec`` on both sides, is kept out of both segments.
    """
    start, end = actions[i]
    gap, cap = opts.gap_sec, opts.max_len_sec
    blocked = [(s - gap, e + gap) for s, e in actions]
    # Keep the part nearest the action: the pre segment starts after every blocked span
    # reaching into it, the post one ends before.  A span covering the end next to the
    # action leaves a non-positive length, dropped below with the too-short ones.
    hi = start - gap
    lo = 0.0 if cap is None else max(0.0, hi - cap)
    lo = max([lo, *(b1 for b0, b1 in blocked if b0 < hi and b1 > lo)])
    segments: list[tuple[float, float] | None] = [(lo, hi), None]
    if duration is not None:
        lo = end + gap
        hi = duration if cap is None else min(duration, lo + cap)
        hi = min([hi, *(b0 for b0, b1 in blocked if b0 < hi and b1 > lo)])
        segments[1] = (lo, hi)
    # Rounding to microseconds keeps bounds like 2.9999999999 out of the tables.
    keep = [None if seg is None or seg[1] - seg[0] < opts.min_len_sec - 1e-9
            else (round(seg[0], 6), round(seg[1], 6)) for seg in segments]
    return keep[0], keep[1]


def _probe(path: Path) -> tuple[str, dict | None, str | None]:
    """(status, probe info or None, probe error or None) of one thread's file."""
    if not path.is_file():
        return "missing", None, None
    try:
        return "ok", probe(path), None
    except VideoDecodeError as e:  # exists: listed "ok", extraction records the failure
        return "ok", None, e.reason


def _row(common: dict, vid: str, span: tuple[float, float], labels: list[int], role: str,
         extra: dict) -> dict:
    """One manifest row; ``common`` holds the fields shared by a thread's rows."""
    fps = common["fps"]
    return {**common, "video_id": vid, "labels": labels, "role": role,
            "start_sec": span[0], "end_sec": span[1],
            "n_frames": None if fps is None else round((span[1] - span[0]) * fps),
            "extra": json.dumps(extra, sort_keys=True)}


def load(root: str | Path | None = None, options: dict | None = None) -> DatasetTables:
    """Read ActionThread from ``root`` (see LAYOUT); ``options`` set :class:`Options`."""
    opts = parse_options(Options, options)
    root = require_root(NAME, root, "annotations.csv and the thread videos")
    ann = root / "annotations.csv"
    if not ann.is_file():
        raise DatasetError(ann, "annotation file not found")
    custom = (root / "classes.txt").is_file()
    classes = _read_classes(root / "classes.txt") if custom else list(DEFAULT_CLASSES)
    threads = _read_annotations(ann, classes, custom)

    rows: list[dict] = []
    pairs: list[dict] = []
    n_present = 0
    for tid, thread in threads.items():
        status, info, error = _probe(root / thread.video)
        n_present += status == "ok"
        fps = info["fps"] if info else None
        duration = info["duration"] if info else None
        acts = sorted(thread.actions, key=lambda a: (a[0], a[1]))
        spans = []
        for s, e, _, line in acts:
            if duration is not None and s >= duration:
                raise DatasetError(ann, f"action starts at {s}s, after the end of {thread.video} "
                                   f"({duration:.3f}s)", line=line)
            # Annotations rounded to whole seconds may overshoot the file's end a little.
            spans.append((s, e if duration is None else min(e, duration)))
        conj_ids: dict[tuple[float, float], str] = {}
        common = {"path": thread.video, "split": thread.split, "group": tid, "dataset": NAME,
                  "fps": fps, "status": status}

        for k, (_, e, labels, line) in enumerate(acts):
            vid = tid if len(acts) == 1 else f"{tid}_{k + 1}"
            extra: dict = {"line": line}
            if spans[k][1] != e:
                extra["end_clamped_from"] = e
            if error:
                extra["probe_error"] = error
            rows.append(_row(common, vid, spans[k], labels, "action", extra))
            for side, span in zip(("pre", "post"), conjugate_bounds(k, spans, opts, duration)):
                if span is None:
                    continue
                if span not in conj_ids:
                    conj_ids[span] = f"{vid}_{side}"
                    rows.append(_row(common, conj_ids[span], span, [], "conjugate",
                                     {"side": side}))
                pairs.append({"video_id": vid, "conjugate_id": conj_ids[span], "rule": RULE,
                              "distance": opts.gap_sec})
    if n_present == 0:
        raise DatasetError(root, f"none of the {len(threads)} thread videos named in {ann} "
                           "was found")
    manifest = pd.DataFrame(rows)
    dup = manifest.video_id[manifest.video_id.duplicated()]
    if len(dup):  # e.g. thread "a" with two actions and another thread named "a_1"
        raise DatasetError(ann, f"video_id {dup.iloc[0]} is produced twice; rename a thread")
    multilabel = any(len(a[2]) > 1 for t in threads.values() for a in t.actions)
    return DatasetTables(
        name=NAME, root=root, classes=classes,
        manifest=conform("manifest", manifest).to_pandas(),
        pairs=conform("pairs", pd.DataFrame(pairs, columns=PAIRS_SCHEMA.names)).to_pandas(),
        boxes=None, multilabel=multilabel)
