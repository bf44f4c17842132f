"""Hollywood2 actions (Marszałek, Laptev & Schmid, CVPR 2009): 12 multi-label actions.

The release lists every clip once per action and split in ``ClipSets/<Action>_<split>.txt``
as ``<clip> 1`` (shows the action) or ``<clip> -1``; a clip's labels are every action
whose file marks it 1, so one clip may carry several labels (``multilabel=True``).  A clip
missing from some action file of its split is taken as a negative for that action (the
real release lists every clip in every file, so this only happens with edited lists); the
actions it was missing from are kept in ``extra["unlisted_in"]`` and logged.  A clip
marked 1 by no file is listed as an unlabelled ``background`` clip.

Imperfect conjugates (ActX, Wang et al. BMVC 2019, Sec. 4.2): Hollywood2 has no footage
around its clips, so the conjugates of an action sample are "the sequences right before
and after the temporally cropped action sample in the same clip", with a new crop per
batch.  By default (``conjugates=around``) clips stay whole, positives end to end, and the
training loader draws each crop and its before/after window (StoreDataset's "around"
conjugates); test clips are scored whole.  ``conjugates=fixed`` instead cuts every train
clip once, here, to its centred ``crop_frames`` and stores the parts before and after as
conjugate segments with pairs (fewer positive frames, but conjugates any head can use from
pairs.parquet); ``conjugates=none`` keeps clips whole without conjugates.
"""

from __future__ import annotations

import json
import logging
import re
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from vidattn.datasets import DatasetError, DatasetTables, require_root
from vidattn.options import parse_options
from vidattn.stores.schema import PAIRS_SCHEMA, conform
from vidattn.video import VideoDecodeError, probe

NAME = "hollywood2"
RULE = "hollywood2:before-after-crop"
# Alphabetical, as in the release; label i of the manifest is CLASSES[i].
CLASSES = ["AnswerPhone", "DriveCar", "Eat", "FightPerson", "GetOutCar", "HandShake",
           "HugPerson", "Kiss", "Run", "SitDown", "SitUp", "StandUp"]
SPLITS = ("train", "test")
LAYOUT = """\
ROOT/ClipSets/<Action>_train.txt   one line per clip: "<clip> 1" or "<clip> -1"
ROOT/ClipSets/<Action>_test.txt    (all 12 actions x 2 splits = 24 files)
ROOT/AVIClips/<clip>.avi           e.g. actioncliptrain00001.avi (823 train, 884 test)
"""
# The release separates clip and flag by two spaces; edited copies often use one.  Any
# other shape (tabs, a third field, a flag other than 1/-1) is refused as malformed.
_LINE = re.compile(r"(?P<clip>[\w-]+) {1,2}(?P<flag>1|-1)\s*")
_log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Options:
    """Where conjugates come from (module docstring): ``around`` (default), ``fixed`` or
    ``none``.  For ``fixed``: crop_frames: length of the centred action crop, in native
    frames (the paper's 6 I3D feature steps = 48 frames); min_conjugate_frames: a part
    before or after the crop becomes a conjugate only if it has at least this many frames.
    """

    crop_frames: int = 48
    min_conjugate_frames: int = 16
    conjugates: str = "around"

    def __post_init__(self) -> None:
        if self.crop_frames < 1 or self.min_conjugate_frames < 1:
            raise ValueError(f"{NAME}: crop_frames and min_conjugate_frames must be >= 1")
        if self.conjugates not in ("around", "fixed", "none"):
            raise ValueError(f"{NAME}: conjugates must be around, fixed or none, got "
                             f"{self.conjugates!r}")


def crop_plan(n_frames: int, opts: Options) -> tuple[int, int, bool, bool] | None:
    """Centred crop of a clip of ``n_frames``: (first, end, keep_pre, keep_post) in frames.

    None when the clip stays whole: shorter than ``crop_frames + min_conjugate_frames``,
    or long enough but with neither side reaching ``min_conjugate_frames`` (centring
    splits the spare frames in two; cropping would then only throw frames away).
    """
    spare = n_frames - opts.crop_frames
    if spare < opts.min_conjugate_frames:
        return None
    first = spare // 2  # the odd frame, if any, goes after the crop
    end = first + opts.crop_frames
    keep_pre = first >= opts.min_conjugate_frames
    keep_post = n_frames - end >= opts.min_conjugate_frames
    if not (keep_pre or keep_post):
        return None
    return first, end, keep_pre, keep_post


def _read_clip_set(path: Path) -> dict[str, tuple[bool, int]]:
    """``clip -> (positive, line)`` of one ClipSets file; DatasetError on any bad line."""
    if not path.is_file():
        raise DatasetError(path, "annotation file not found")
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as e:
        raise DatasetError(path, f"not UTF-8 text ({e.reason})") from None
    entries: dict[str, tuple[bool, int]] = {}
    for line_no, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        m = _LINE.fullmatch(line)
        if m is None:
            raise DatasetError(path, f"expected '<clip> 1' or '<clip> -1', got {line!r}",
                               line=line_no)
        clip = m["clip"]
        if clip in entries:  # a second verdict on one clip is ambiguous, even if it agrees
            raise DatasetError(path, f"clip {clip} already listed at line {entries[clip][1]}",
                               line=line_no)
        entries[clip] = (m["flag"] == "1", line_no)
    return entries


def _read_labels(sets: Path) -> dict[str, dict[str, list[bool | None]]]:
    """``split -> clip -> per-action flag`` (None: the clip is absent from that file)."""
    out: dict[str, dict[str, list[bool | None]]] = {s: {} for s in SPLITS}
    seen_in_train: dict[str, tuple[Path, int]] = {}
    for split in SPLITS:
        for k, action in enumerate(CLASSES):
            path = sets / f"{action}_{split}.txt"
            for clip, (positive, line) in _read_clip_set(path).items():
                if split == "train":
                    seen_in_train.setdefault(clip, (path, line))
                elif clip in seen_in_train:  # a test clip seen in training leaks labels
                    where = "{}:{}".format(*seen_in_train[clip])
                    raise DatasetError(path, f"clip {clip} is in the test split but also in "
                                       f"the train split ({where})", line=line)
                flags = out[split].setdefault(clip, [None] * len(CLASSES))
                flags[k] = positive
    return out


def _row(clip_id: str, clip: str, split: str, labels: list[int], role: str,
         bounds: tuple[float, float] | None, fps: float | None, n_frames: int | None,
         status: str, extra: dict) -> dict:
    return {
        "video_id": clip_id, "path": f"AVIClips/{clip}.avi", "split": split,
        "labels": labels, "role": role, "group": clip,
        "start_sec": None if bounds is None else bounds[0],
        "end_sec": None if bounds is None else bounds[1],
        "dataset": NAME, "fps": fps, "n_frames": n_frames, "status": status,
        "extra": json.dumps(extra, sort_keys=True) if extra else None,
    }


def load(root: str | Path | None = None, options: dict | None = None) -> DatasetTables:
    """Read Hollywood2 from ``root`` (see LAYOUT); ``options`` set :class:`Options`."""
    opts = parse_options(Options, options)
    root = require_root(NAME, root, "ClipSets/ and AVIClips/ of the Hollywood2 release")
    sets = root / "ClipSets"
    if not sets.is_dir():
        raise DatasetError(sets, "annotation directory not found")
    labels_by_split = _read_labels(sets)

    rows: list[dict] = []
    pairs: list[dict] = []
    n_present = n_unlisted = 0
    for split in SPLITS:
        for clip in sorted(labels_by_split[split]):
            flags = labels_by_split[split][clip]
            labels = [k for k, f in enumerate(flags) if f]
            extra: dict = {}
            unlisted = [CLASSES[k] for k, f in enumerate(flags) if f is None]
            if unlisted:
                extra["unlisted_in"] = unlisted
                n_unlisted += 1
            role = "action" if labels else "background"
            path = root / "AVIClips" / f"{clip}.avi"
            if not path.is_file():
                rows.append(_row(clip, clip, split, labels, role, None, None, None,
                                 "missing", extra))
                continue
            n_present += 1
            try:
                info = probe(path)
            except VideoDecodeError as e:
                # The file exists, so it is listed "ok"; extraction will record the failure.
                extra["probe_error"] = e.reason
                rows.append(_row(clip, clip, split, labels, role, None, None, None, "ok", extra))
                continue
            fps, n = info["fps"], info["n_frames"]
            plan = None
            if opts.conjugates == "fixed" and split == "train" and role == "action":
                plan = crop_plan(n, opts)
            if plan is None:
                rows.append(_row(clip, clip, split, labels, role, None, fps, n, "ok", extra))
                continue
            first, end, keep_pre, keep_post = plan
            segments = [(clip, labels, "action", first, end)]
            if keep_pre:
                segments.append((f"{clip}_pre", [], "conjugate", 0, first))
            if keep_post:
                segments.append((f"{clip}_post", [], "conjugate", end, n))
            for seg_id, seg_labels, seg_role, f0, f1 in segments:
                # Frame f is on screen from f / fps, so frames [f0, f1) span these seconds.
                seg_extra = {**(extra if seg_role == "action" else {}), "frames": [f0, f1]}
                rows.append(_row(seg_id, clip, split, seg_labels, seg_role, (f0 / fps, f1 / fps),
                                 fps, f1 - f0, "ok", seg_extra))
                if seg_role == "conjugate":
                    # The conjugate touches the crop: no gap between the two segments.
                    pairs.append({"video_id": clip, "conjugate_id": seg_id, "rule": RULE,
                                  "distance": 0.0})
    if n_present == 0:
        raise DatasetError(root / "AVIClips", f"none of the {len(rows)} listed clips was found "
                           "(expected AVIClips/<clip>.avi)")
    if n_unlisted:
        _log.warning("%s: %d clips are missing from some ClipSets files of their split; "
                     "taken as negatives there (see extra.unlisted_in)", NAME, n_unlisted)
    manifest = conform("manifest", pd.DataFrame(rows)).to_pandas()
    pairs_df = conform("pairs", pd.DataFrame(pairs, columns=PAIRS_SCHEMA.names)).to_pandas()
    return DatasetTables(name=NAME, root=root, classes=list(CLASSES), manifest=manifest,
                         pairs=pairs_df, boxes=None, multilabel=True,
                         conjugates="around" if opts.conjugates == "around" else "pairs")
