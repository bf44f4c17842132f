"""RefAVA (RefAtomNet, Peng et al. ECCV 2024): AVA persons named by a sentence.

Referring atomic video action recognition: given a video and a text describing one person
("the man in the blue shirt on the left"), predict that person's AVA actions (80,
multi-label) and box.  RefAVA re-annotates AVA keyframes: 36,630 instances, split
train / val / test.  Its release is three pickles per split, each a dict keyed
``"<video>___<timestamp>___<person_id>"``.  The value layout below is this adapter's
reading of the release (it could not be checked against the files) and is validated
strictly, so a file that differs fails with a message naming it rather than loading wrong:

* keyframe: the person's box ``[x1, y1, x2, y2]`` at the keyframe, normalised to [0, 1]
  (4 numbers as a list, tuple or numpy array), or a list of boxes whose first is the
  person's (its first 4 numbers);
* label: the person's AVA action ids (1..80, a list or integer array), or an 80-long
  0/1 multi-hot vector (unambiguous: an id list never holds a 0);
* description: the referring sentence (a non-empty str), or a list of sentences whose
  first is used.

The list forms and the key layout follow a published copy of the RAVAR training loader
(keys split on ``___``, ``np.array(boxes)[0][:4]``, ``captions[0]``, labels binarised over
ids 1..80); unlike it, values are matched by key, never by dict order.  That loader reads
frames at ``(timestamp - 900) * 30``: keys carry AVA movie times, so files cut to the
15-minute span need ``time_offset=900``.

Pickles are read with :func:`vidattn.safeload.load_numpy_pickle`, which resolves numpy's
array constructors and nothing else, so a pickle cannot run code on load.  Rows, segments
and boxes follow :mod:`vidattn.datasets.ava`, with the sentence in ``extra``.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from vidattn.datasets import DatasetError, DatasetTables, require_root
from vidattn.datasets.ava import (
    LABEL_MAP,
    Keyframe,
    box_problem,
    empty_pairs,
    keyframe_tables,
    parse_pbtxt,
    parse_splits,
    under,
)
from vidattn.options import parse_options
from vidattn.safeload import UnsafePickleError, load_numpy_pickle

LAYOUT = """\
ROOT/
  <split>_set_keyframe_crr_final.pkl      {"<video>___<timestamp>___<person_id>": [x1,y1,x2,y2]
                                           or [[x1,y1,x2,y2], ...] (the first is the person)}
  <split>_set_label_crr_final.pkl         {key: [AVA action ids 1..80]} (or 80-long 0/1)
  <split>_set_description_crr_final.pkl   {key: "referring sentence" or ["sentence", ...]}
                                          for each split of train, val, test
  ava_action_list_v2.2.pbtxt              optional class names; else action_1 .. action_80
  videos/<video>.mp4|.mkv|.webm
"""
SPLITS = ("train", "val", "test")
KINDS = ("keyframe", "label", "description")
N_ACTIONS = 80
# Greedy video part: a video id holding "___" still leaves timestamp and person last.
_KEY = re.compile(r"(.+)___(\d+)___(-?\d+)")


@dataclass(frozen=True)
class Options:
    """splits: comma-separated of train, val, test.  window_sec, time_offset, fps, probe:
    as for AVA (segment centred on the keyframe; seconds subtracted from timestamps; native
    rate to assume; read fps from the files).  label_map: AVA pbtxt naming the classes;
    None = ROOT/ava_action_list_v2.2.pbtxt when present, else action_1 .. action_80.
    """

    splits: str = "train,val,test"
    window_sec: float = 2.0
    time_offset: float = 0.0
    label_map: str | None = None
    fps: float | None = None
    probe: bool = False


def pickle_path(root: Path, split: str, kind: str) -> Path:
    """ROOT/<split>_set_<kind>_crr_final.pkl."""
    return root / f"{split}_set_{kind}_crr_final.pkl"


def read_pickle(path: Path) -> dict:
    """A RefAVA dict through the restricted unpickler; anything else is a DatasetError."""
    if not path.is_file():
        raise DatasetError(path, "RefAVA annotation pickle not found")
    try:
        obj = load_numpy_pickle(path)
    except UnsafePickleError as e:
        raise DatasetError(path, f"unsafe pickle, not loaded: {e}") from None
    except Exception as e:  # a damaged pickle fails in many ways; each is one answer
        raise DatasetError(path, f"not a readable pickle ({type(e).__name__}: {e})") from None
    if not isinstance(obj, dict):
        raise DatasetError(path, f"expected a dict keyed '<video>___<timestamp>___"
                           f"<person_id>', got {type(obj).__name__}")
    return obj


def _short(value) -> str:
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."


def _numbers(value, kinds: str, ndim: int = 1) -> np.ndarray | None:
    """``value`` as an array when it is a list/tuple/array of ``ndim`` dimensions holding
    numbers of dtype kinds ``kinds`` (strings, objects and ragged nesting give None)."""
    if not isinstance(value, (list, tuple, np.ndarray)):
        return None
    try:
        arr = np.asarray(value)
    except ValueError:  # ragged nesting
        return None
    return arr if arr.ndim == ndim and arr.dtype.kind in kinds else None


def parse_key(path: Path, key) -> tuple[str, int, int]:
    """``"<video>___<timestamp>___<person_id>"`` -> (video, timestamp, person_id)."""
    m = _KEY.fullmatch(key) if isinstance(key, str) else None
    if m is None:
        raise DatasetError(path, f"key {_short(key)} is not '<video>___<timestamp>___"
                           f"<person_id>'")
    return m.group(1), int(m.group(2)), int(m.group(3))


def parse_box(path: Path, key: str, value) -> tuple[float, float, float, float]:
    """The keyframe value: 4 normalised numbers with x1 < x2 and y1 < y2, or a list of
    boxes of which the first is the person's.  The RAVAR loader reads ``value[0][:4]``, so
    rows of a list may carry more than the 4 coordinates; the rest is ignored."""
    arr = _numbers(value, "iuf")
    if arr is None:
        boxes = _numbers(value, "iuf", ndim=2)
        if boxes is not None and boxes.shape[0] and boxes.shape[1] >= 4:
            arr = boxes[0, :4]
    problem = "not 4 numbers or a list of boxes" if arr is None else box_problem(
        tuple(float(v) for v in arr))
    if problem:
        raise DatasetError(path, f"key {key!r}: keyframe box {_short(value)}: {problem}")
    return tuple(float(v) for v in arr)  # type: ignore[return-value]


def parse_actions(path: Path, key: str, value) -> list[int]:
    """The label value: sorted unique AVA action ids (from ids or an 80-long multi-hot)."""
    arr = _numbers(value, "iufb")
    if arr is not None and len(arr) == N_ACTIONS and np.isin(arr, (0, 1)).all():
        ids = [int(i) + 1 for i in np.flatnonzero(arr)]
    elif arr is not None and (arr.dtype.kind in "iu" or arr.size == 0):
        ids = [int(i) for i in arr]
    else:
        raise DatasetError(path, f"key {key!r}: label {_short(value)} is neither a list of "
                           f"action ids nor an {N_ACTIONS}-long 0/1 vector")
    bad = [i for i in ids if not 1 <= i <= N_ACTIONS]
    if bad or not ids:
        raise DatasetError(path, f"key {key!r}: label {_short(value)} needs action ids in "
                           f"1..{N_ACTIONS}" + (f", got {bad[0]}" if bad else ", got none"))
    return sorted(set(ids))


def _check_keys(split: str, paths: dict[str, Path], data: dict[str, dict]) -> None:
    union = set().union(*(d.keys() for d in data.values()))
    problems = []
    for kind, d in data.items():
        lacking = sorted(map(str, union - d.keys()))
        if lacking:
            problems.append(f"{paths[kind].name} lacks {len(lacking)} key(s), e.g. "
                            f"{', '.join(map(repr, lacking[:3]))}")
    if problems:
        raise DatasetError(paths["keyframe"].parent, f"the {split} pickles do not hold the "
                           f"same keys: {'; '.join(problems)}")


def read_split(root: Path, split: str, id_to_index: dict[int, int],
               map_name: str) -> list[Keyframe]:
    """The Keyframes of one split, every value validated (errors name the pickle)."""
    paths = {kind: pickle_path(root, split, kind) for kind in KINDS}
    data = {kind: read_pickle(path) for kind, path in paths.items()}
    _check_keys(split, paths, data)
    out = []
    for key, box_value in data["keyframe"].items():
        video, ts, pid = parse_key(paths["keyframe"], key)
        box = parse_box(paths["keyframe"], key, box_value)
        ids = parse_actions(paths["label"], key, data["label"][key])
        unknown = [i for i in ids if i not in id_to_index]
        if unknown:
            raise DatasetError(paths["label"], f"key {key!r}: action id {unknown[0]} is not "
                               f"in {map_name}")
        text = data["description"][key]
        if isinstance(text, (list, tuple, np.ndarray)) and len(text):
            text = text[0]  # a list of sentences: the RAVAR loader uses the first
        if not isinstance(text, str) or not text.strip():
            raise DatasetError(paths["description"], f"key {key!r}: description "
                               f"{_short(text)} is not a non-empty str")
        out.append(Keyframe(split, video, ts, pid, box, [id_to_index[i] for i in ids],
                            {"description": text.strip()}))
    return out


def _classes(root: Path, opts: Options) -> tuple[list[str], dict[int, int], str]:
    """Class names, action id -> class index, and what defined them (for messages)."""
    path = under(root, opts.label_map) if opts.label_map else root / LABEL_MAP
    if opts.label_map or path.is_file():
        label_map = parse_pbtxt(path)
        return ([n for _, n in label_map], {a: i for i, (a, _) in enumerate(label_map)},
                str(path))
    ids = range(1, N_ACTIONS + 1)
    return [f"action_{i}" for i in ids], {i: i - 1 for i in ids}, f"1..{N_ACTIONS}"


def load(root: str | Path | None = None, options: dict | None = None) -> DatasetTables:
    """RefAVA as a multi-label manifest with boxes (see the module docstring)."""
    opts = parse_options(Options, options)
    root = require_root("refava", root, "train_set_*_crr_final.pkl and videos/")
    classes, id_to_index, map_name = _classes(root, opts)
    keyframes: list[Keyframe] = []
    for split in parse_splits("refava", opts.splits, SPLITS):
        keyframes += read_split(root, split, id_to_index, map_name)
    manifest, boxes = keyframe_tables("refava", root, keyframes, opts.window_sec,
                                      opts.time_offset, opts.fps, opts.probe)
    return DatasetTables("refava", root, classes, manifest, empty_pairs(), boxes,
                         multilabel=True)

