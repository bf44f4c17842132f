"""prefetch: order kept, errors re-raised, bounded look-ahead, an early stop stops the thread."""

from __future__ import annotations

import threading
import time

import pytest

from vidattn.prefetch import prefetch


def test_items_come_in_order():
    assert list(prefetch(iter(range(100)), depth=3)) == list(range(100))
    assert list(prefetch([])) == []


def test_producer_error_reaches_the_consumer_after_the_good_items():
    def items():
        yield 1
        yield 2
        raise OSError("disk gone")

    got = []
    with pytest.raises(OSError, match="disk gone"):
        for x in prefetch(items()):
            got.append(x)
    assert got == [1, 2]


def test_look_ahead_is_bounded_and_early_stop_ends_the_thread():
    produced = []

    def items():
        for i in range(1000):
            produced.append(i)
            yield i

    gen = prefetch(items(), depth=2)
    assert next(gen) == 0
    time.sleep(0.3)  # let the producer run as far ahead as it may
    # one handed out + depth queued + one blocked in put
    assert len(produced) <= 1 + 2 + 1
    gen.close()
    time.sleep(0.3)
    assert not any(t.name == "vidattn-prefetch" and t.is_alive() for t in threading.enumerate())
    with pytest.raises(ValueError, match="depth"):
        next(prefetch([1], depth=0))
