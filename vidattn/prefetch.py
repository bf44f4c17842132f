"""Run an iterator a few items ahead in a background thread.

Extraction uses it so that decoding the next frames (native code in decord / FFmpeg, which
releases the GIL) overlaps the network's forward pass on the current ones.  The queue is
bounded (``depth`` items), so memory stays that of ``depth`` chunks; an exception in the
producer is re-raised in the consumer; a consumer that stops early stops the producer.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Iterable, Iterator
from typing import TypeVar

T = TypeVar("T")
_END = object()


class _Failed:
    def __init__(self, error: BaseException):
        self.error = error


def prefetch(items: Iterable[T], depth: int = 2) -> Iterator[T]:
    """Yield ``items`` in order while a daemon thread produces up to ``depth`` ahead."""
    if depth < 1:
        raise ValueError(f"depth must be >= 1, got {depth}")
    box: queue.Queue = queue.Queue(maxsize=depth)
    stop = threading.Event()

    def put(item) -> bool:
        while not stop.is_set():  # never block forever on a consumer that has gone
            try:
                box.put(item, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def produce() -> None:
        try:
            for item in items:
                if not put(item):
                    return
        except BaseException as e:  # handed to the consumer, raised there
            put(_Failed(e))
            return
        put(_END)

    worker = threading.Thread(target=produce, daemon=True, name="vidattn-prefetch")
    worker.start()
    try:
        while True:
            item = box.get()
            if item is _END:
                return
            if isinstance(item, _Failed):
                raise item.error
            yield item
    finally:
        stop.set()
        worker.join(timeout=5.0)
