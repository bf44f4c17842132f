"""Keep freed memory for reuse: glibc malloc tuned for a network's repeating allocations.

A forward pass of I3D allocates activations of 10-200 MB, frees them, and allocates the
same sizes again for the next chunk.  glibc serves every block above its mmap threshold
(at most 32 MB) with a fresh ``mmap`` and returns it with ``munmap``, so each chunk's
activations are page-faulted and zeroed by the kernel again.  Measured on 2 cores, 1,533
frames at 224², I3D forward in 64-frame chunks: 38.4 s wall of which 14.6 s system time,
against 28.0 s (0.4 s system) with the settings below — the same arithmetic, 1.37x faster.

``reuse`` sets ``M_MMAP_MAX = 0`` (large blocks come from the heap, whose freed space is
reused) and ``M_TRIM_THRESHOLD = 1 GiB`` (the heap is not shrunk after each chunk).  The
cost: the process keeps its peak heap until it exits, so the peak RSS is that of the
largest chunk, as before, but it is not handed back between videos.  Other C libraries
(musl, macOS) are left alone.  The settings are process-wide, so they are applied by the
commands that extract (``vidattn extract``, and each extraction worker), never on import.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import sys

MODES = ("reuse", "system")
# mallopt parameters (glibc's malloc.h)
_M_TRIM_THRESHOLD, _M_MMAP_MAX = -1, -4
_TRIM_BYTES = 1 << 30
_applied: str | None = None


def _glibc():
    if not sys.platform.startswith("linux"):
        return None
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        libc.gnu_get_libc_version  # noqa: B018 - glibc only (musl has no such symbol)
        return libc
    except (OSError, AttributeError):
        return None


def set_malloc(mode: str = "reuse") -> bool:
    """Apply ``mode`` (``reuse`` | ``system``) to this process's malloc; True when glibc
    took the settings.  ``system`` changes nothing (a process keeps what it was given)."""
    global _applied
    if mode not in MODES:
        raise ValueError(f"malloc mode must be one of {MODES}, got {mode!r}")
    if mode == "system" or _applied == mode:
        return _applied == mode
    libc = _glibc()
    if libc is None:
        return False
    ok = bool(libc.mallopt(_M_MMAP_MAX, 0)) and bool(libc.mallopt(_M_TRIM_THRESHOLD, _TRIM_BYTES))
    if ok:
        _applied = mode
    return ok


def malloc_mode() -> str:
    """``reuse`` once :func:`set_malloc` applied it in this process, else ``system``."""
    return _applied or "system"
