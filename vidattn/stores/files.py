"""Whole-file writes through fsspec that readers never see half done, and write errors
that name their file."""

from __future__ import annotations

import errno
import uuid
from contextlib import contextmanager
from pathlib import Path

from vidattn.errors import one_line


@contextmanager
def naming(path: str | Path):
    """Re-raise an OSError met while writing ``path`` as one line that names it and says
    whether the disk was full (errno and type kept, so callers can still tell)."""
    try:
        yield
    except OSError as e:
        why = ("disk full" if e.errno == errno.ENOSPC else
               "permission denied" if e.errno == errno.EACCES else "write failed")
        text = f"{path}: {why} ({one_line(e, with_type=True)})"
        try:
            err = type(e)(text)
        except Exception:  # a subclass with a constructor of its own
            err = OSError(text)
        err.errno = e.errno
        raise err from e


def put_atomic(fs, path: str, data: bytes) -> None:
    """Write ``data`` to ``path`` under a hidden temporary name, then rename it into place:
    a reader (or a resumed run) sees the old file or the new one, never a half.  The
    leading dot keeps pyarrow's dataset discovery (``pd.read_parquet(folder)``) off the
    temporary file; on failure it is removed and the error re-raised."""
    folder, name = path.rsplit("/", 1)
    tmp = f"{folder}/.{name}.tmp-{uuid.uuid4().hex[:8]}"
    try:
        with naming(path):
            fs.makedirs(folder, exist_ok=True)
            with fs.open(tmp, "wb") as f:
                f.write(data)
            fs.mv(tmp, path)
    except BaseException:
        try:  # best effort: the error being handled matters more than a failed cleanup
            if fs.exists(tmp):
                fs.rm(tmp)
        except Exception:
            pass
        raise
