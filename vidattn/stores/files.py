"""Whole-file writes through fsspec that readers never see half done."""

from __future__ import annotations

import uuid


def put_atomic(fs, path: str, data: bytes) -> None:
    """Write ``data`` to ``path`` under a hidden temporary name, then rename it into place:
    a reader (or a resumed run) sees the old file or the new one, never a half.  The
    leading dot keeps pyarrow's dataset discovery (``pd.read_parquet(folder)``) off the
    temporary file; on failure it is removed and the error re-raised."""
    folder, name = path.rsplit("/", 1)
    tmp = f"{folder}/.{name}.tmp-{uuid.uuid4().hex[:8]}"
    fs.makedirs(folder, exist_ok=True)
    try:
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
