"""HACS Clips (Zhao et al. 2019): 2-second clips of 200 action classes, with negatives.

Each row of the clips CSV is a segment ``[start, end]`` (seconds) of a YouTube video:
label 1 marks a positive clip of its class, label -1 a negative sampled for that class
with the action absent (some from the very videos of positives, ActX Sec. 4.2).
Negatives are the pool ActX mines conjugates from, so they are kept as
``role="background"`` rows whose ``group`` is the YouTube id (mining's non-default option
``same_video_first`` uses it to prefer negatives from the same video) and whose ``extra``
records the class they were sampled for.  Pairs are left empty: mining needs features, a
later step (vidattn/pipeline/mine.py) reads them from the store.
Training and validation rows are validated strictly; a testing row without a class name
or a 1/-1 label is unlabelled (the official downloader skips the test videos anyway) and
is skipped rather than refused.

``load_hacs30`` builds HACS-30 of the ActX paper (Sec. 4.2): the 30 classes with the
fewest positive samples plus one "background" class that negatives belong to.
"""

from __future__ import annotations

import csv
import json
import logging
import math
import os
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import pandas as pd
import pyarrow as pa

from vidattn.datasets import DatasetError, DatasetTables, require_root
from vidattn.options import parse_options
from vidattn.rows import video_path
from vidattn.stores.schema import MANIFEST_SCHEMA, conform

LAYOUT = """\
ROOT/
  HACS_clips_v1.1.1.csv          clips CSV (HACS_clips_v1.1.csv is accepted too;
                                 option annotations=PATH names another file)
  <Class_Name>/v_<youtube_id>.mp4   one folder per class, spaces in the class name
                                 replaced by underscores (the official downloader's
                                 layout); folders keeping the spaces are accepted too
"""

# Newest release first: when both are present the corrected v1.1.1 file wins.
CSV_NAMES = ("HACS_clips_v1.1.1.csv", "HACS_clips_v1.1.csv")
COLUMNS = ("classname", "youtube_id", "subset", "start", "end", "label")
SPLITS = {"training": "train", "validation": "val", "testing": "test"}
# youtube-dl sometimes merges into mkv/webm; mp4 is preferred when several exist.
VIDEO_EXTS = (".mp4", ".mkv", ".webm")
BACKGROUND = "background"
_log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Options:
    """HACS loading options.

    annotations: the clips CSV (absolute, or relative to ROOT); None = the first of
    CSV_NAMES found in ROOT.  label_map: a text file with one class name a line (line i
    names class i); None = the sorted unique class names of the CSV.  probe: read fps and
    frame counts from every video file (slow for the ~500k HACS videos; off by default).
    """

    annotations: str | None = None
    label_map: str | None = None
    probe: bool = False


@dataclass(frozen=True)
class Hacs30Options(Options):
    """Options of HACS-30; n_classes: how many fewest-positive classes to keep (paper: 30)."""

    n_classes: int = 30


# One parsed CSV row: classname, youtube_id, split, start, end, positive, line number.
_Row = tuple[str, str, str, float, float, bool, int]


def _find_csv(root: Path, opts: Options) -> Path:
    if opts.annotations is not None:
        path = _under(root, opts.annotations)
        if not path.is_file():
            raise DatasetError(path, "HACS clips CSV not found")
        return path
    for name in CSV_NAMES:
        if (root / name).is_file():
            return root / name
    raise DatasetError(root / CSV_NAMES[0], f"HACS clips CSV not found (also looked for "
                       f"{', '.join(CSV_NAMES[1:])})")


def _parse_row(path: Path, line: int, row: list[str], cols: list[int]) -> _Row | None:
    classname, yid, subset, start_s, end_s, label_s = [row[i].strip() for i in cols]
    if subset == "testing" and (not classname or label_s not in ("1", "-1")):
        return None  # an unlabelled test row (the release may withhold test labels)
    if not classname or not yid:
        raise DatasetError(path, "empty classname or youtube_id", line=line)
    if subset not in SPLITS:
        raise DatasetError(path, f"unknown subset {subset!r} (expected one of "
                           f"{', '.join(SPLITS)})", line=line)
    try:
        start, end, label = float(start_s), float(end_s), float(label_s)
    except ValueError:
        raise DatasetError(path, f"start, end and label must be numbers, got {start_s!r}, "
                           f"{end_s!r}, {label_s!r}", line=line) from None
    if not (math.isfinite(start) and math.isfinite(end) and 0 <= start < end):
        raise DatasetError(path, f"bad segment [{start_s}, {end_s}]: need 0 <= start < end",
                           line=line)
    if label not in (1.0, -1.0):
        raise DatasetError(path, f"label must be 1 (positive) or -1 (negative), got "
                           f"{label_s!r}", line=line)
    return classname, yid, SPLITS[subset], start, end, label == 1.0, line


def read_clips(path: Path) -> list[_Row]:
    """Parse and validate the clips CSV; errors name ``path:line`` (the header is line 1)."""
    rows: list[_Row] = []
    skipped = 0
    # utf-8-sig: a CSV saved by a spreadsheet may start with a byte-order mark.
    with open(path, newline="", encoding="utf-8-sig") as f:
        reader = csv.reader(f)
        header = [h.strip() for h in next(reader, [])]
        missing = [c for c in COLUMNS if c not in header]
        if missing:
            raise DatasetError(path, f"header lacks columns {missing}; expected "
                               f"{','.join(COLUMNS)}", line=1)
        cols = [header.index(c) for c in COLUMNS]
        for row in reader:
            if not row or all(not v.strip() for v in row):
                continue  # blank lines (a trailing newline) carry nothing
            if len(row) != len(header):
                raise DatasetError(path, f"expected {len(header)} fields, got {len(row)}",
                                   line=reader.line_num)
            parsed = _parse_row(path, reader.line_num, row, cols)
            if parsed is None:
                skipped += 1
            else:
                rows.append(parsed)
    if skipped:
        _log.info("%s: skipped %d unlabelled testing rows", path, skipped)
    if not rows:
        raise DatasetError(path, "no clips listed")
    return rows


def read_label_map(path: Path) -> list[str]:
    """One class name a line; blank lines are skipped, a repeated name is an error."""
    if not path.is_file():
        raise DatasetError(path, "label map not found")
    names: list[str] = []
    for line, text in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        name = text.strip()
        if not name:
            continue
        if name in names:
            raise DatasetError(path, f"class {name!r} is listed twice", line=line)
        names.append(name)
    if not names:
        raise DatasetError(path, "label map lists no class")
    return names


def fewest_positive_classes(rows: list[_Row], n: int) -> list[str]:
    """The ``n`` classes with the fewest training positives; ties go to the smaller name.

    Classes without any training positive are not candidates: a class nothing can be
    learned from would make HACS-30 a degenerate benchmark, not a harder one.
    """
    counts = Counter(r[0] for r in rows if r[5] and r[2] == "train")
    if len(counts) < n:
        raise DatasetError("hacs30", f"n_classes={n} but only {len(counts)} classes have "
                           f"training positives")
    return [c for c, _ in sorted(counts.items(), key=lambda kv: (kv[1], kv[0]))[:n]]


def _clip_ids(rows: list[_Row]) -> list[str]:
    """``<youtube_id>_<start>_<end>``; a repeat (the same segment listed for two classes)
    gets ``__2``, ``__3`` in CSV order.  Computed over the whole CSV, so an id does not
    change when HACS-30 keeps only some rows."""
    seen: Counter[str] = Counter()
    ids = []
    for _, yid, _, start, end, _, _ in rows:
        base = f"{yid}_{start:.1f}_{end:.1f}"
        seen[base] += 1
        ids.append(base if seen[base] == 1 else f"{base}__{seen[base]}")
    return ids


class _VideoIndex:
    """Every ``<folder>/v_<id>.<ext>`` under ROOT, found by one directory scan.

    Scanning ~200 folders once is far cheaper than a stat per clip (1.5M rows).
    """

    def __init__(self, root: Path):
        self.in_folder: dict[tuple[str, str], str] = {}
        self.anywhere: dict[str, str] = {}
        rank = {ext: i for i, ext in enumerate(VIDEO_EXTS)}
        for folder in sorted(e.name for e in os.scandir(root) if e.is_dir()):
            names = os.listdir(root / folder)
            for name in sorted(names, key=lambda n: (rank.get(os.path.splitext(n)[1], 9), n)):
                stem, ext = os.path.splitext(name)
                if ext in rank and stem.startswith("v_"):
                    rel = f"{folder}/{name}"
                    self.in_folder.setdefault((folder, stem[2:]), rel)
                    self.anywhere.setdefault(stem[2:], rel)

    def find(self, classname: str, yid: str) -> str | None:
        """The class folder (underscored, then as written); else the same video filed
        under another class (one download may serve clips of several classes)."""
        for folder in (classname.replace(" ", "_"), classname):
            if (folder, yid) in self.in_folder:
                return self.in_folder[(folder, yid)]
        return self.anywhere.get(yid)


def _manifest(name: str, root: Path, rows: list[_Row], ids: list[str],
              labels: list[list[int]], roles: list[str], probe: bool) -> pd.DataFrame:
    from vidattn.video import VideoDecodeError
    from vidattn.video import probe as probe_file

    index = _VideoIndex(root)
    paths, status, rates, counts, extra = [], [], [], [], []
    extras: dict[str, str] = {}  # one JSON string per class name, shared by its rows
    probed: dict[str, dict | None] = {}
    # Plain loops and per-column lists: this runs once per clip, 1.5M times for HACS.
    for classname, yid, _, start, end, _, _ in rows:
        rel = index.find(classname, yid)
        fps = n_frames = None
        if rel is not None and probe:
            if rel not in probed:
                try:
                    probed[rel] = probe_file(root / rel)
                except VideoDecodeError:
                    probed[rel] = None  # unreadable: extraction will record the failure
            info = probed[rel]
            if info is not None:
                fps = info["fps"]
                n_frames = max(0, round((min(end, info["duration"]) - start) * fps))
        if classname not in extras:
            extras[classname] = json.dumps({"classname": classname})
        paths.append(rel or f"{classname.replace(' ', '_')}/v_{yid}.mp4")
        status.append("ok" if rel is not None else "missing")
        rates.append(fps)
        counts.append(n_frames)
        extra.append(extras[classname])
    if "ok" not in status:
        raise DatasetError(root, f"none of the {len(rows)} clips' videos exist (expected "
                           f"<Class_Name>/v_<youtube_id>.mp4)")
    cols = {"video_id": ids, "path": paths, "split": [r[2] for r in rows], "labels": labels,
            "role": roles, "group": [r[1] for r in rows], "start_sec": [r[3] for r in rows],
            "end_sec": [r[4] for r in rows], "dataset": [name] * len(rows), "fps": rates,
            "n_frames": counts, "status": status, "extra": extra}
    # Typed arrays straight to pyarrow: a DataFrame, or letting pyarrow infer types from
    # 1.5M Python lists, costs seconds.
    typed = {k: pa.array(v, MANIFEST_SCHEMA.field(k).type) for k, v in cols.items()}
    return conform("manifest", typed).to_pandas()


def _empty_pairs() -> pd.DataFrame:
    cols = {"video_id": [], "conjugate_id": [], "rule": [], "distance": []}
    return conform("pairs", pd.DataFrame(cols)).to_pandas()


def _check_labels(path: Path, rows: list[_Row], classes: list[str]) -> dict[str, int]:
    index = {c: i for i, c in enumerate(classes)}
    for classname, *_, line in rows:
        if classname not in index:
            raise DatasetError(path, f"label {classname!r} is not in the label map", line=line)
    return index


def _under(root: Path, path: str) -> Path:
    return video_path(path, root)


def _read(name: str, root, options, cls) -> tuple[Path, Options, Path, list[_Row]]:
    opts = parse_options(cls, options)
    root = require_root(name, root, "HACS_clips_v1.1.1.csv and <Class_Name>/v_<youtube_id>.mp4")
    path = _find_csv(root, opts)
    return root, opts, path, read_clips(path)


def load(root: str | Path | None = None, options: dict | None = None) -> DatasetTables:
    """All HACS clips: positives (role action, one label) and negatives (background)."""
    root, opts, path, rows = _read("hacs", root, options, Options)
    if opts.label_map:
        classes = read_label_map(_under(root, opts.label_map))
    else:
        classes = sorted({r[0] for r in rows})
    index = _check_labels(path, rows, classes)
    labels = [[index[r[0]]] if r[5] else [] for r in rows]
    roles = ["action" if r[5] else "background" for r in rows]
    manifest = _manifest("hacs", root, rows, _clip_ids(rows), labels, roles, opts.probe)
    return DatasetTables("hacs", root, classes, manifest, _empty_pairs(), None)


def load_hacs30(root: str | Path | None = None, options: dict | None = None) -> DatasetTables:
    """HACS-30 (ActX Sec. 4.2): the ``n_classes`` classes with the fewest training
    positives, sorted by name, then "background" as class ``n_classes``.

    Kept rows: positives of those classes (labels [k]) and negatives sampled for them
    (role background, labels [n_classes]: background is a real class of the 31-way
    softmax there).  Every other row is dropped.  A label map option only validates the
    class names of the CSV.
    """
    root, opts, path, rows = _read("hacs30", root, options, Hacs30Options)
    if opts.n_classes < 1:
        raise DatasetError("hacs30", f"n_classes must be >= 1, got {opts.n_classes}")
    ids = _clip_ids(rows)
    if opts.label_map:  # validates the names; the class choice is HACS-30's own
        _check_labels(path, rows, read_label_map(_under(root, opts.label_map)))
    chosen = sorted(fewest_positive_classes(rows, opts.n_classes))
    if BACKGROUND in chosen:
        raise DatasetError(path, f"a class named {BACKGROUND!r} clashes with HACS-30's "
                           f"background class")
    index = {c: i for i, c in enumerate(chosen)}
    keep = [i for i, r in enumerate(rows) if r[0] in index]
    rows, ids = [rows[i] for i in keep], [ids[i] for i in keep]
    labels = [[index[r[0]]] if r[5] else [opts.n_classes] for r in rows]
    roles = ["action" if r[5] else "background" for r in rows]
    manifest = _manifest("hacs30", root, rows, ids, labels, roles, opts.probe)
    return DatasetTables("hacs30", root, chosen + [BACKGROUND], manifest, _empty_pairs(),
                         None)
