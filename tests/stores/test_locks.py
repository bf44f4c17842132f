"""Part and store locks across runs: waiting, timing out, breaking stale locks
(vidattn/stores/locks.py)."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import threading
import time

import numpy as np
import pytest

import vidattn.stores.zarr_store as zs
from vidattn.stores import open_store
from vidattn.stores.zarr_store import LockTimeout

from .store_data import PROV, feature_map, lock_files, manifest_of, part_row


# ------------------------------------------------------------------------------ locks
def _dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def _plant_lock(path, stream: str, part: int, **holder) -> None:
    lock = path / "locks" / stream / f"part-{part:05d}.lock"
    lock.parent.mkdir(parents=True, exist_ok=True)
    lock.write_text(json.dumps({"pid": os.getpid(), "host": socket.gethostname(),
                                "time": time.time(), "token": "planted", **holder}))


def test_write_part_waits_for_the_part_lock_then_skips_a_part_another_run_finished(tmp_path):
    a = open_store(tmp_path / "s", mode="a")
    b = open_store(tmp_path / "s", mode="a")
    assert b.done_parts("rgb") == set()  # b planned before a wrote
    ma, mb = feature_map(1, 2, 2, seed=1), feature_map(1, 2, 2, seed=2)
    out: dict = {}
    with a.part_lock("rgb", 0):
        thread = threading.Thread(
            target=lambda: out.update(wrote=b.write_part("rgb", 0, [part_row("x")], {"x": mb})))
        thread.start()
        time.sleep(0.3)
        assert thread.is_alive(), "b must wait for the lock a holds"
        assert a.done_parts("rgb") == set()
        assert a.write_part("rgb", 0, [part_row("x")], {"x": ma})  # re-entrant for its holder
    thread.join(10)
    assert out == {"wrote": False}  # b found a's fragment: a finished the part
    got = open_store(tmp_path / "s").read("x", verify=True)
    np.testing.assert_array_equal(got, ma.astype(np.float16).astype(np.float32))
    assert lock_files(tmp_path / "s") == []


def test_an_unseen_fragment_with_a_failed_video_is_redone(tmp_path):
    # --retry-failed from a worker's fresh store object: the failure must be retried
    open_store(tmp_path / "s", mode="a").write_part(
        "rgb", 0, [part_row("x", "failed", "decode: broken")], {})
    fresh = open_store(tmp_path / "s", mode="a")
    assert fresh.write_part("rgb", 0, [part_row("x")], {"x": feature_map(1, 1, 1, seed=0)})
    assert open_store(tmp_path / "s").video_ids() == ["x"]
    assert not fresh.write_part("rgb", 0, [part_row("x")], {}, replace=False)
    assert open_store(tmp_path / "s").video_ids() == ["x"]


def test_a_live_lock_times_out_with_a_clear_error(tmp_path):
    store = open_store(tmp_path / "s", mode="a", lock_timeout_s=0.3)
    _plant_lock(tmp_path / "s", "rgb", 3, host="elsewhere")  # fresh, another host
    t0 = time.monotonic()
    with pytest.raises(LockTimeout) as err:
        store.write_part("rgb", 3, [part_row("x")], {"x": feature_map(1, 1, 1, seed=0)})
    assert 0.3 <= time.monotonic() - t0 < 5
    msg = str(err.value)
    assert "part-00003.lock" in msg and "elsewhere" in msg and "\n" not in msg
    assert store.done_parts("rgb") == set()
    assert lock_files(tmp_path / "s") == ["part-00003.lock"]  # someone else's: kept


@pytest.mark.parametrize("holder", ["dead-pid", "too-old", "empty"])
def test_a_stale_lock_is_broken(tmp_path, holder):
    store = open_store(tmp_path / "s", mode="a", lock_timeout_s=5, stale_lock_s=60)
    if holder == "dead-pid":
        _plant_lock(tmp_path / "s", "rgb", 0, pid=_dead_pid())
    elif holder == "too-old":
        _plant_lock(tmp_path / "s", "rgb", 0, host="elsewhere", time=time.time() - 61)
    else:  # a creator died between O_EXCL and writing its details
        lock = tmp_path / "s" / "locks" / "rgb" / "part-00000.lock"
        lock.parent.mkdir(parents=True)
        lock.write_bytes(b"")
        os.utime(lock, (time.time() - 31, time.time() - 31))
    t0 = time.monotonic()
    assert store.write_part("rgb", 0, [part_row("x")], {"x": feature_map(1, 1, 1, seed=0)})
    assert time.monotonic() - t0 < 2
    assert store.done_parts("rgb") == {0}
    assert lock_files(tmp_path / "s") == []


def test_plan_and_manifest_wait_for_the_store_lock(tmp_path):
    a = open_store(tmp_path / "s", mode="a")
    b = open_store(tmp_path / "s", mode="a")
    done = threading.Event()

    def other_run():
        b.merge_manifest(manifest_of(["v0", "v1", "v2"]))
        b.extend_plan(["v0", "v1", "v2"], part_size=2)
        done.set()

    with a.lock(zs.STORE_LOCK):
        thread = threading.Thread(target=other_run)
        thread.start()
        time.sleep(0.3)
        assert not done.is_set() and a.plan().empty  # b waits: nothing written
        a.merge_manifest(manifest_of(["v2", "v3"]))
        a.extend_plan(["v2", "v3"], part_size=2)
    thread.join(10)
    assert done.is_set()
    plan = open_store(tmp_path / "s").plan()
    # one part per video, never two: b saw a's plan before extending it
    assert plan.video_id.tolist() == ["v2", "v3", "v0", "v1"]
    assert plan.part.tolist() == [0, 0, 1, 1]
    assert sorted(open_store(tmp_path / "s").manifest().video_id) == ["v0", "v1", "v2", "v3"]


def test_concurrent_claims_of_two_streams_keep_both(tmp_path):
    a = open_store(tmp_path / "s", mode="a")
    b = open_store(tmp_path / "s", mode="a")  # opened before a's claim: old attributes
    a.claim_stream("rgb", PROV)
    b.claim_stream("flow", {**PROV, "weights_sha256": "ef" * 32})
    b.set_classes(["a", "b"])
    stored = open_store(tmp_path / "s")
    assert stored.provenance("rgb") == PROV
    assert stored.provenance("flow")["weights_sha256"] == "ef" * 32
    assert stored.classes == ["a", "b"]
