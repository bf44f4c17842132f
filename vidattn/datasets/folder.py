"""Any directory of videos, optionally labelled by a CSV: for custom data and re-scoring.

Every file under the root (recursively) whose extension is one of VIDEO_EXTENSIONS, in
any case, is a video; names starting with "." (hidden files, macOS ``._`` resource
forks) and everything inside hidden directories are skipped.  A video's id is its path
relative to the root without the extension, with "/" replaced by "__"
(``clips/a/x.mp4`` -> ``clips__a__x``); two files mapping to one id are an error.

Without a labels CSV every video is an unlabelled ``background`` clip (labels ``[]``) in
the ``Options.split`` split, "test" by default: the folder is then something to score
with a trained model, not to train on.  With ``Options.labels`` (a CSV with header
``path,label`` or ``path,label,split``):

* a row's video is an ``action`` with the named class; ``A|B`` names several (one such
  row makes the dataset multi-label); an empty label makes it ``background``;
* classes are the sorted unique names of the CSV;
* a row without a split column (or with an empty cell) goes to ``Options.split``; set
  ``split=train`` to train on a folder that has no split column;
* a row naming a file that does not exist is listed with status "missing";
* a video on disk that the CSV does not name is ``background`` in ``Options.split``.

There are no conjugates: ``pairs`` is empty and each video is its own group.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

import pandas as pd

from vidattn.datasets import DatasetError, DatasetTables, require_root
from vidattn.datasets.csvfile import read_rows
from vidattn.options import parse_options
from vidattn.stores.schema import PAIRS_SCHEMA, conform
from vidattn.video import VideoDecodeError, probe

HEADERS = (["path", "label"], ["path", "label", "split"])  # the labels CSV

NAME = "folder"
VIDEO_EXTENSIONS = (".mp4", ".avi", ".mkv", ".mov", ".webm", ".m4v")
SPLITS = ("train", "val", "test")
LAYOUT = """\
ROOT/**/<name>.{mp4,avi,mkv,mov,webm,m4v}   any depth; video_id = path without extension,
                                           "/" -> "__"
labels CSV (optional, --option labels=FILE, relative to ROOT or absolute):
  header path,label[,split]; path relative to ROOT; label a class name ("A|B" for several)
"""


@dataclass(frozen=True)
class Options:
    """labels: the labels CSV, relative to the root or absolute (None = no labels);
    split: the split of videos the CSV gives none (every video when there is no CSV).
    """

    labels: str | None = None
    split: str = "test"

    def __post_init__(self) -> None:
        if self.split not in SPLITS:
            raise ValueError(f"{NAME}: split must be one of {', '.join(SPLITS)}, "
                             f"got {self.split!r}")


def video_id(rel: str) -> str:
    """``a/b/c.mp4`` -> ``a__b__c``: unique ids that still show where the file lies."""
    return str(PurePosixPath(rel).with_suffix("")).replace("/", "__")


def scan(root: Path) -> list[str]:
    """Relative POSIX paths of the videos under ``root``, sorted, hidden entries skipped."""
    found = []
    for path in root.rglob("*"):
        rel = path.relative_to(root)
        if any(part.startswith(".") for part in rel.parts):
            continue
        if path.suffix.lower() in VIDEO_EXTENSIONS and path.is_file():
            found.append(rel.as_posix())
    return sorted(found)


def not_files(root: Path) -> dict[str, str]:
    """Entries named like videos that are no readable file -> why: a symbolic link to
    nothing, or a directory.  They are listed as missing, never skipped in silence."""
    odd = {}
    for path in root.rglob("*"):
        rel = path.relative_to(root)
        if any(part.startswith(".") for part in rel.parts):
            continue
        if path.suffix.lower() in VIDEO_EXTENSIONS and not path.is_file():
            odd[rel.as_posix()] = ("a symbolic link to nothing" if path.is_symlink()
                                   and not path.exists() else "a directory, not a video file")
    return odd


def _read_labels(path: Path) -> dict[str, tuple[list[str], str | None, int]]:
    """``rel path -> (label names, split or None, line)``; DatasetError names file:line."""
    if not path.is_file():
        raise DatasetError(path, "labels file not found")
    rows: dict[str, tuple[list[str], str | None, int]] = {}
    for line, _, cells in read_rows(path, HEADERS):
        rel = PurePosixPath(cells[0])
        if not cells[0] or rel.is_absolute() or ".." in rel.parts:
            raise DatasetError(path, f"path must be relative to the root, without '..', "
                               f"got {cells[0]!r}", line=line)
        key = rel.as_posix()  # "./a.mp4" and "a.mp4" are one file
        if key in rows:
            raise DatasetError(path, f"{key} already listed at line {rows[key][2]}",
                               line=line)
        names = [n.strip() for n in cells[1].split("|")] if cells[1] else []
        if any(not n for n in names):
            raise DatasetError(path, f"empty class name in label {cells[1]!r}", line=line)
        split = cells[2] if len(cells) == 3 and cells[2] else None
        if split is not None and split not in SPLITS:
            raise DatasetError(path, f"split must be one of {'|'.join(SPLITS)}, got "
                               f"{split!r}", line=line)
        rows[key] = (names, split, line)
    return rows


def load(root: str | Path | None = None, options: dict | None = None) -> DatasetTables:
    """List the videos under ``root`` (see the module docstring); options set :class:`Options`."""
    opts = parse_options(Options, options)
    root = require_root(NAME, root, "the videos, at any depth")
    on_disk = scan(root)
    odd = not_files(root)
    labelled: dict[str, tuple[list[str], str | None, int]] = {}
    if opts.labels is not None:
        labelled = _read_labels(root / opts.labels)  # an absolute labels path wins
    classes = sorted({n for names, _, _ in labelled.values() for n in names})

    rows: list[dict] = []
    owner: dict[str, str] = {}  # video_id -> the path that took it
    for rel in sorted(set(on_disk) | set(labelled) | set(odd)):
        vid = video_id(rel)
        if vid in owner:
            raise DatasetError(root, f"{owner[vid]} and {rel} both map to video_id {vid}; "
                               "rename one of them")
        owner[vid] = rel
        names, split, _ = labelled.get(rel, ([], None, 0))
        fps = n_frames = extra = None
        status = "ok" if (root / rel).is_file() else "missing"
        if rel in odd:
            extra = json.dumps({"reason": odd[rel]})
        if status == "ok":
            try:
                info = probe(root / rel)
                fps, n_frames = info["fps"], info["n_frames"]
            except VideoDecodeError as e:  # listed anyway: extraction records the failure
                extra = json.dumps({"probe_error": e.reason})
        rows.append({
            "video_id": vid, "path": rel, "split": split or opts.split,
            "labels": [classes.index(n) for n in names],
            "role": "action" if names else "background", "group": vid,
            "start_sec": None, "end_sec": None, "dataset": NAME, "fps": fps,
            "n_frames": n_frames, "status": status, "extra": extra,
        })
    if not any(r["status"] == "ok" for r in rows):
        where = f" and none of the {len(labelled)} files of the labels CSV" if labelled else ""
        raise DatasetError(root, f"no video files ({', '.join(VIDEO_EXTENSIONS)}) found"
                           f"{where}")
    multilabel = any(len(names) > 1 for names, _, _ in labelled.values())
    return DatasetTables(
        name=NAME, root=root, classes=classes,
        manifest=conform("manifest", pd.DataFrame(rows)).to_pandas(),
        pairs=conform("pairs", pd.DataFrame([], columns=PAIRS_SCHEMA.names)).to_pandas(),
        boxes=None, multilabel=multilabel)
