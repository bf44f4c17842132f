"""Feature maps that outgrow memory: held in RAM up to a limit, then in a temporary file.

A 10-minute video at 224² gives a Mixed_5c map of 1,875 x 7 x 7 x 1024 float16 values
(179 MiB), and a part of 16 such videos would hold 2.9 GiB until the part is written.  The
extractors append each chunk's output to a :class:`MapBuffer`; once it holds more than
``limit`` bytes its pieces go to an unlinked temporary file (in ``$TMPDIR``, gone when the
map is dropped or the process dies), so the process's memory does not grow with the video.
:func:`row_blocks` reads any map, in memory or spilled, as bounded (rows, C) blocks: the
store checks and writes maps that way, never as one more whole copy.
"""

from __future__ import annotations

import math
import os
import tempfile
from collections.abc import Iterator

import numpy as np

# Rows per block of row_blocks when the caller does not say: about 16 MiB of float16 at
# C = 1024, small beside a network's activations, big enough to amortise each read.
BLOCK_BYTES = 16 << 20

# The extractors' default limit: a video's map larger than this waits for its part's
# write in a temporary file rather than in memory.  16 MiB is 53 s of video at 224²
# (Mixed_5c, float16), so a part of short clips never touches the disk, and a long
# video's memory stops growing.
SPILL_BYTES = 16 << 20


class SpilledMap:
    """A read-only (T, H, W, C) map in a temporary file, C order.

    Quacks like the arrays the store accepts (``shape``, ``dtype``, ``ndim``, ``nbytes``,
    ``np.asarray``), and reads row ranges of its (T*H*W, C) view with :meth:`rows`.
    """

    ndim = 4

    def __init__(self, file, shape: tuple[int, ...], dtype):
        self._file = file
        self.shape = tuple(int(s) for s in shape)
        self.dtype = np.dtype(dtype)

    @property
    def nbytes(self) -> int:
        return math.prod(self.shape) * self.dtype.itemsize

    def rows(self, start: int, stop: int) -> np.ndarray:
        """Rows [start, stop) of the (T*H*W, C) view, as a fresh (stop - start, C) array."""
        c = self.shape[-1]
        width = c * self.dtype.itemsize
        out = np.empty((max(stop - start, 0), c), self.dtype)
        if not out.size:
            return out
        view, done = memoryview(out.reshape(-1).view(np.uint8)), 0
        while done < len(view):  # pread may return less than asked (2 GiB cap, signals)
            got = os.preadv(self._file.fileno(), [view[done:]], start * width + done)
            if got <= 0:
                raise OSError(f"spilled map: short read at row {start} ({self._file.name})")
            done += got
        return out

    def __array__(self, dtype=None, copy=None) -> np.ndarray:
        whole = self.rows(0, math.prod(self.shape[:-1])).reshape(self.shape)
        return whole if dtype is None else whole.astype(dtype)


class MapBuffer:
    """One map's pieces (t, H, W, C), appended in time order.

    ``limit``: bytes held in memory before the pieces move to a temporary file (None: never,
    0: from the first piece).  :meth:`result` gives an ndarray while under the limit, else a
    :class:`SpilledMap`.
    """

    def __init__(self, limit: int | None = None):
        if limit is not None and limit < 0:
            raise ValueError(f"spill limit must be >= 0 bytes, got {limit}")
        self.limit = limit
        self.pieces: list[np.ndarray] = []
        self.file = None
        self.t, self.nbytes = 0, 0
        self.tail: tuple[int, ...] | None = None
        self.dtype: np.dtype | None = None

    @property
    def spilled(self) -> bool:
        return self.file is not None

    def append(self, piece: np.ndarray) -> None:
        if self.tail is None:
            self.tail, self.dtype = tuple(piece.shape[1:]), piece.dtype
        elif tuple(piece.shape[1:]) != self.tail or piece.dtype != self.dtype:
            raise ValueError(f"map piece {piece.shape} {piece.dtype} does not continue "
                             f"(t, {self.tail}) {self.dtype}")
        self.t += len(piece)
        self.nbytes += piece.nbytes
        if self.file is None and self.limit is not None and self.nbytes > self.limit:
            self.file = tempfile.TemporaryFile(prefix="vidattn-map-")
            for held in self.pieces:
                self._write(held)
            self.pieces = []
        if self.file is None:
            self.pieces.append(piece)
        else:
            self._write(piece)

    def _write(self, piece: np.ndarray) -> None:
        self.file.write(memoryview(np.ascontiguousarray(piece).reshape(-1).view(np.uint8)))

    def result(self) -> np.ndarray | SpilledMap:
        """The whole map (T, H, W, C); the buffer lets go of its pieces."""
        if self.tail is None:
            raise ValueError("no map pieces were produced")
        if self.file is not None:
            self.file.flush()
            return SpilledMap(self.file, (self.t, *self.tail), self.dtype)
        pieces, self.pieces = self.pieces, []
        return pieces[0] if len(pieces) == 1 else np.concatenate(pieces, axis=0)


def row_blocks(values, rows: int | None = None) -> Iterator[np.ndarray]:
    """A (T, H, W, C) ndarray or :class:`SpilledMap` -> its (T*H*W, C) view as consecutive
    blocks of at most ``rows`` rows (default: about BLOCK_BYTES each).  Blocks of an
    in-memory C-contiguous map are views (no copy)."""
    shape = tuple(values.shape)
    c, total = shape[-1], math.prod(shape[:-1])
    if rows is None:
        rows = max(1, BLOCK_BYTES // max(1, c * np.dtype(values.dtype).itemsize))
    if isinstance(values, SpilledMap):
        for s in range(0, total, rows):
            yield values.rows(s, min(total, s + rows))
        return
    flat = np.asarray(values).reshape(total, c)
    for s in range(0, total, rows):
        yield flat[s : s + rows]
