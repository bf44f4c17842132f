"""Store locks: files under ``STORE/locks/`` that keep two writers off one part or table.

A lock is a file created with ``O_CREAT | O_EXCL`` holding pid, host, time and a token.
A lock whose holder is dead (same host, pid gone) or older than ``stale_lock_s`` is
broken (breakers take ``<lock>.break`` first, so two of them cannot remove a fresh lock);
a live one is waited for, at most ``lock_timeout_s``, then :class:`LockTimeout`.

Limit: fsspec stores (object stores) have no atomic create.  There a lock is written, read
back and kept only if it still holds our token: that narrows the race to writers starting
within one round trip of each other but cannot close it (see zarr_store's docstring for
why the store stays consistent even then).
"""

from __future__ import annotations

import json
import logging
import os
import socket
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager

# Lock defaults.  A part lock is held only while one part is written (seconds, a minute on
# a slow object store), so a lock older than STALE_LOCK_S lost its holder.  A waiter gives
# up after LOCK_TIMEOUT_S, later than STALE_LOCK_S so that a dead holder on another host
# is broken before anyone gives up on it.
STALE_LOCK_S = 600.0
LOCK_TIMEOUT_S = 900.0
# A lock file is created empty and filled at once; one still empty after this long was
# abandoned by a process that died between the two steps.
_EMPTY_LOCK_S = 30.0
STORE_LOCK = "store.lock"

_log = logging.getLogger(__name__)


class StoreError(RuntimeError):
    """A store is missing, of another schema version, or would be written inconsistently."""


class LockTimeout(StoreError):
    """Another live writer held a store lock for longer than the caller would wait."""


def _pid_alive(pid: object) -> bool:
    """Whether process ``pid`` exists on this host (a pid we may not signal exists too)."""
    if not isinstance(pid, int) or pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def part_lock_name(stream: str, part: int) -> str:
    """The lock :meth:`FeatureStore.write_part` holds while writing one part."""
    return f"{stream}/part-{part:05d}.lock"


def part_claim_name(stream: str, part: int) -> str:
    """The claim an extract run holds while it computes one part (decoding and the
    network, before any write): a second run finding it moves on to other parts."""
    return f"{stream}/part-{part:05d}.claim"


def _start_small(thread: threading.Thread) -> None:
    """Start a thread that only sleeps and writes a small file with a 256 KiB stack, not
    the default 8 MiB: under an address-space cap (RLIMIT_AS) those megabytes are what
    the decoder's own threads need."""
    old = threading.stack_size(256 << 10)
    try:
        thread.start()
    finally:
        threading.stack_size(old)


class Locks:
    """The locks of one store: ``fs`` its fsspec filesystem, ``path(rel)`` the full path of
    a store-relative name, ``local`` whether ``fs`` is the local disk (atomic create)."""

    def __init__(self, fs, path: Callable[[str], str], url: str, local: bool,
                 lock_timeout_s: float = LOCK_TIMEOUT_S, stale_lock_s: float = STALE_LOCK_S):
        self.fs, self._path, self.url, self.local = fs, path, url, local
        self.lock_timeout_s = float(lock_timeout_s)
        self.stale_lock_s = float(stale_lock_s)
        self._held: dict[str, list] = {}  # lock name -> [token, depth] (locks are re-entrant)

    @contextmanager
    def lock(self, name: str) -> Iterator[None]:
        """Hold ``locks/<name>`` (re-entrant within this object), see the module docstring.

        Waits for a live holder at most ``lock_timeout_s``, then raises LockTimeout naming
        the holder; a stale lock (dead holder pid on this host, or older than
        ``stale_lock_s``) is broken with a warning in the log.
        """
        held = self._held.get(name)
        if held is not None:
            held[1] += 1
            try:
                yield
            finally:
                held[1] -= 1
            return
        token = self._acquire(name)
        self._held[name] = [token, 1]
        try:
            yield
        finally:
            del self._held[name]
            self._release(name, token)

    @contextmanager
    def claim(self, names: list[str]) -> Iterator[bool]:
        """Take every lock of ``names`` at once if no live holder has any of them: yields
        True and holds them until the block exits (refreshed in the background, so a
        long hold never looks stale), or False with nothing taken.  Never waits."""
        taken: list[tuple[str, str]] = []
        try:
            for name in names:
                token = self._try_acquire(name)
                if token is None:
                    break
                taken.append((name, token))
            if len(taken) < len(names):
                yield False
                return
            stop = threading.Event()
            beat = threading.Thread(target=self._heartbeat, args=(taken, stop), daemon=True,
                                    name="vidattn-claim")
            _start_small(beat)
            try:
                yield True
            finally:
                stop.set()
                beat.join()
        finally:
            for name, token in reversed(taken):
                self._release(name, token)

    def _try_acquire(self, name: str) -> str | None:
        """One attempt at ``name`` (breaking it when stale): our token, or None."""
        path = self._path(f"locks/{name}")
        while True:
            token = self._try_create(path)
            if token is not None:
                return token
            seen = self._read_lock(path)
            if seen is None:
                continue
            why = self._stale(*seen)
            if why is None:
                return None
            self._break(path, seen[0], why)

    def _heartbeat(self, taken: list[tuple[str, str]], stop: threading.Event) -> None:
        """Rewrite the held locks' time every quarter of ``stale_lock_s`` until ``stop``."""
        while not stop.wait(self.stale_lock_s / 4):
            for name, token in taken:
                path = self._path(f"locks/{name}")
                seen = self._read_lock(path)
                if seen is None or seen[0].get("token") != token:
                    continue  # broken by someone who judged us stale: leave theirs alone
                body = {**seen[0], "time": time.time()}
                try:
                    self.fs.pipe_file(path, json.dumps(body).encode())
                except OSError as e:  # a missed beat only risks work done twice
                    _log.warning("%s: could not refresh %s (%s)", self.url, path, e)

    def _acquire(self, name: str) -> str:
        path = self._path(f"locks/{name}")
        deadline = time.monotonic() + self.lock_timeout_s
        delay = 0.01
        while True:
            token = self._try_create(path)
            if token is not None:
                return token
            seen = self._read_lock(path)
            if seen is None:  # released between our attempt and the read: try again
                continue
            holder, born = seen
            why = self._stale(holder, born)
            if why is not None:
                self._break(path, holder, why)
                continue
            if time.monotonic() >= deadline:
                raise LockTimeout(
                    f"{self.url}: waited {self.lock_timeout_s:g} s for {path}, held by "
                    f"pid {holder.get('pid')} on {holder.get('host')} since "
                    f"{time.strftime('%Y-%m-%d %H:%M:%S', time.localtime(born))}; if no "
                    f"run is writing this store, delete that file"
                )
            time.sleep(delay)
            delay = min(2 * delay, 0.25)

    def _lock_body(self) -> tuple[str, bytes]:
        token = uuid.uuid4().hex
        body = {"pid": os.getpid(), "host": socket.gethostname(), "time": time.time(),
                "token": token}
        return token, json.dumps(body).encode()

    def _try_create(self, path: str) -> str | None:
        """Create the lock file at ``path`` if nobody holds it; our token, or None."""
        token, body = self._lock_body()
        self.fs.makedirs(path.rsplit("/", 1)[0], exist_ok=True)
        if self.local:
            try:
                fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
            except FileExistsError:
                return None
            try:
                os.write(fd, body)
            except BaseException:
                os.close(fd)
                os.unlink(path)  # an empty lock would block others for _EMPTY_LOCK_S
                raise
            os.close(fd)
            return token
        # No atomic create on object stores: write, read back, keep it if still ours.
        if self.fs.exists(path):
            return None
        self.fs.pipe_file(path, body)
        seen = self._read_lock(path)
        return token if seen is not None and seen[0].get("token") == token else None

    def _read_lock(self, path: str) -> tuple[dict, float] | None:
        """(holder, creation time) of a lock file, or None when there is none.  An empty or
        unreadable file gives holder {} (its creator is writing it, or died doing so)."""
        try:
            with self.fs.open(path, "rb") as f:
                raw = f.read()
            info = self.fs.info(path)
        except FileNotFoundError:
            return None
        try:
            holder = json.loads(raw)
            holder = holder if isinstance(holder, dict) else {}
        except ValueError:
            holder = {}
        mtime = info.get("mtime") or info.get("LastModified") or time.time()
        if not isinstance(mtime, int | float):  # object stores give a datetime
            mtime = mtime.timestamp()
        born = holder.get("time", mtime)
        return holder, float(born) if isinstance(born, int | float) else float(mtime)

    def _stale(self, holder: dict, born: float) -> str | None:
        """Why the lock is abandoned, or None while its holder may still be writing."""
        age = time.time() - born
        if not holder:
            return f"empty for {age:.0f} s" if age > _EMPTY_LOCK_S else None
        if holder.get("host") == socket.gethostname() and not _pid_alive(holder.get("pid")):
            return f"its holder, pid {holder.get('pid')} on this host, is gone"
        if age > self.stale_lock_s:
            return f"held for {age:.0f} s, longer than stale_lock_s={self.stale_lock_s:g}"
        return None

    def _break(self, path: str, holder: dict, why: str) -> None:
        """Remove the stale lock ``holder`` at ``path``, unless someone beat us to it.

        Breakers take ``<lock>.break`` first, and remove the lock only if it still holds
        the token judged stale: two breakers cannot remove a fresh lock that one of them
        created in between.
        """
        guard = f"{path}.break"
        if self._try_create(guard) is None:
            seen = self._read_lock(guard)
            if seen is not None and time.time() - seen[1] > _EMPTY_LOCK_S:
                self.fs.rm(guard)  # a breaker died holding the guard
            time.sleep(0.01)
            return
        try:
            now = self._read_lock(path)
            if now is not None and now[0].get("token") == holder.get("token"):
                self.fs.rm(path)
                _log.warning("%s: broke stale lock %s (%s)", self.url, path, why)
        finally:
            self.fs.rm(guard)

    def _release(self, name: str, token: str) -> None:
        path = self._path(f"locks/{name}")
        seen = self._read_lock(path)
        if seen is not None and seen[0].get("token") == token:
            self.fs.rm(path)
        else:  # someone judged us stale and broke the lock: say so, do not remove theirs
            _log.warning("%s: lock %s was broken while this process held it", self.url, path)
