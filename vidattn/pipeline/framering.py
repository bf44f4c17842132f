"""Decoded frames from a decoding child to its parent through shared memory.

A chunk of 128 frames at 224² is 19 MB.  Sent through a multiprocessing queue it is
pickled, written through a 64 KB pipe, read and unpickled: measured on 2 cores, 14 chunks
cost 0.6-0.7 s of CPU on each side, taken from the cores the network runs on.  Through a
:class:`FrameRing` each chunk is copied once into a shared slot by the child and once out
of it by the parent, and only a small ticket ``("ring", slot, shape)`` goes through the
queue: 0.12-0.16 s on each side for the same chunks.

The ring is a few slots of one anonymous shared file (``memfd_create``: Linux; it is not
limited by the size of ``/dev/shm``, which containers often keep at 64 MB).  The child
fills slots in turn and the parent empties them in the same order, so one counting
semaphore (free slots) is all the bookkeeping; the parent copies a chunk out at once, so
a slot is never lent to the caller.  Where there is no memfd, or a chunk does not fit a
slot, the chunk goes through the queue as before.
"""

from __future__ import annotations

import mmap
import os
import queue
import threading
from multiprocessing import reduction

import numpy as np

# Slots in a ring: one the parent copies out of while the child fills the next.  More run
# ahead in the child's own memory (its backlog), not in memory both processes map.
RING_SLOTS = 2


def ticket_of(msg_part) -> bool:
    """Whether a message part is a ring ticket rather than frames."""
    return isinstance(msg_part, tuple) and len(msg_part) == 3 and msg_part[0] == "ring"


class FrameRing:
    """The parent's end: ``slots`` slots of ``slot_bytes`` bytes.  :meth:`child_end` is
    passed to the child (as a Process argument); :meth:`take` turns a ticket back into
    frames (a copy, so the slot is free again at once)."""

    def __init__(self, ctx, slots: int, slot_bytes: int):
        self.slots, self.slot_bytes = int(slots), int(slot_bytes)
        self._fd = os.memfd_create("vidattn-frames", os.MFD_CLOEXEC)
        try:
            os.ftruncate(self._fd, self.slots * self.slot_bytes)
            self._map = mmap.mmap(self._fd, self.slots * self.slot_bytes)
        except BaseException:
            os.close(self._fd)
            raise
        self._free = ctx.Semaphore(self.slots)

    @classmethod
    def create(cls, ctx, slots: int, slot_bytes: int | None) -> FrameRing | None:
        """A ring, or None where frames must go through the queue (no memfd on this
        system, or no known slot size)."""
        if not slot_bytes or not hasattr(os, "memfd_create"):
            return None
        try:
            return cls(ctx, slots, slot_bytes)
        except OSError:  # e.g. a sandbox that refuses memfd_create: the queue still works
            return None

    def child_end(self) -> RingEnd:
        return RingEnd(self._fd, self.slots, self.slot_bytes, self._free)

    def take(self, ticket: tuple) -> np.ndarray:
        """The frames of ``ticket``, copied out of their slot; the slot is freed."""
        _, slot, shape = ticket
        view = np.frombuffer(self._map, np.uint8, int(np.prod(shape)),
                             slot * self.slot_bytes).reshape(shape)
        frames = view.copy()
        del view  # no buffer export may outlive the copy, or close() would fail
        self._free.release()
        return frames

    def close(self) -> None:
        """Unmap and close; harmless twice.  A child still mapping it keeps its own."""
        if self._fd >= 0:
            self._map.close()
            os.close(self._fd)
            self._fd = -1


class RingEnd:
    """What the child gets: the ring's file (duplicated into the child when pickled for a
    process start), its size and the free-slot semaphore.  :meth:`put` (in the child)
    copies frames into the next slot, waiting for one to be free, and returns the ticket;
    None when the frames do not fit (send them through the queue)."""

    def __init__(self, fd, slots: int, slot_bytes: int, free):
        self.fd, self.slots, self.slot_bytes, self.free = fd, slots, slot_bytes, free
        self._map = None
        self._count = 0

    def __reduce__(self):
        # Only meaningful while a process is being started: DupFd hands the descriptor to
        # the new child (forkserver and spawn alike).
        return (_rebuild, (reduction.DupFd(self.fd), self.slots, self.slot_bytes, self.free))

    def put(self, frames: np.ndarray) -> tuple | None:
        if (frames.dtype != np.uint8 or frames.nbytes > self.slot_bytes
                or not frames.flags.c_contiguous):
            return None
        if self._map is None:
            self._map = mmap.mmap(self.fd, self.slots * self.slot_bytes)
        self.free.acquire()
        slot = self._count % self.slots
        self._count += 1
        view = np.frombuffer(self._map, np.uint8, frames.nbytes,
                             slot * self.slot_bytes).reshape(frames.shape)
        np.copyto(view, frames)
        del view
        return ("ring", slot, frames.shape)


def _rebuild(dup, slots: int, slot_bytes: int, free) -> RingEnd:
    return RingEnd(dup.detach(), slots, slot_bytes, free)


def pump(out, ring: RingEnd | None, depth: int):
    """In the child: how messages reach the queue ``out``.  Returns (send, finish):
    ``send(msg)`` queues a message, ``finish()`` waits until all are on ``out``.

    Without a ring, ``send`` is ``out.put`` itself (``depth`` chunks wait in the queue).
    With one, a bounded local backlog (``depth`` messages) and a thread that moves each
    message on, chunks through the ring where they fit: the decoder runs ahead into the
    backlog while the parent holds every slot, and the queue carries only tickets."""
    if ring is None:
        return out.put, lambda: None
    backlog: queue.Queue = queue.Queue(maxsize=max(1, depth))
    done = object()

    def move() -> None:
        nonlocal ring
        while (msg := backlog.get()) is not done:
            if ring is not None and msg[0] == "chunk":
                try:
                    ticket = ring.put(msg[2])
                except (OSError, ValueError):  # the ring is unusable: the queue still works
                    ticket, ring = None, None
                if ticket is not None:
                    msg = (msg[0], msg[1], ticket, *msg[3:])
            out.put(msg)

    mover = threading.Thread(target=move, name="vidattn-ring", daemon=True)
    mover.start()

    def finish() -> None:
        backlog.put(done)
        mover.join()

    return backlog.put, finish
