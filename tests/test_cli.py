"""The ``vidattn`` executable's exit (cli.entry): what a normal exit guarantees still holds."""

import os
import subprocess
import sys
import textwrap
import time


def _entry(body: str, *argv: str) -> subprocess.CompletedProcess:
    """Run ``body`` and then cli.entry() with ``argv`` in a fresh interpreter."""
    code = textwrap.dedent(body) + textwrap.dedent(f"""
        sys.argv = ["vidattn", *{list(argv)!r}]
        from vidattn.cli import entry
        entry()
        raise AssertionError("entry() returned")
    """)
    # block-buffered stdout, as for a user's pipe: an unflushed line would be lost
    env = {k: v for k, v in os.environ.items() if k != "PYTHONUNBUFFERED"}
    return subprocess.run([sys.executable, "-c", "import sys\n" + code],
                          capture_output=True, text=True, timeout=120, env=env)


def test_exit_handlers_run_and_buffered_output_is_written():
    # stdout to a pipe is block-buffered: the version line and the handler's line are
    # lost unless the fast exit flushes after the handlers ran.
    out = _entry("""
        import atexit
        atexit.register(lambda: print("handler ran"))
    """, "--version")
    assert out.returncode == 0, out.stderr
    assert "version" in out.stdout
    assert out.stdout.rstrip().endswith("handler ran")


def test_exit_status_is_the_commands():
    out = _entry("", "extract", "--dataset", "no-such-dataset")
    assert out.returncode == 1
    assert "no-such-dataset" in out.stderr
    out = _entry("", "extract", "--no-such-option")
    assert out.returncode == 2  # click's usage error
    assert "--no-such-option" in out.stderr


def test_a_working_thread_is_waited_for(tmp_path):
    done = tmp_path / "done"
    out = _entry(f"""
        import threading, time
        def work():
            time.sleep(0.5)
            open({str(done)!r}, "w").write("ok")
        threading.Thread(target=work).start()
    """, "--version")
    assert out.returncode == 0, out.stderr
    assert done.read_text() == "ok"


def test_an_exit_message_is_printed():
    # SystemExit("...") prints its message and exits 1: left to Python's own exit.
    out = _entry("""
        import vidattn.cli
        def fail():
            raise SystemExit("stopped: reason")
        vidattn.cli.main = fail
    """)
    assert out.returncode == 1
    assert "stopped: reason" in out.stderr


def test_kept_flow_workers_do_not_hold_the_exit(tmp_path):
    # compute_flow keeps its TV-L1 processes between calls; started from a daemon thread
    # (as the extraction's flow thread does), nothing but its own exit handler stops them
    # before multiprocessing's handler joins them: without it, this exit never came.
    pids = tmp_path / "pids"
    out = _entry(f"""
        import threading
        import numpy as np
        import vidattn.extractors.flow as flow
        rng = np.random.default_rng(0)
        clip = rng.integers(0, 255, size=(3, 24, 24, 3), dtype=np.uint8)
        t = threading.Thread(target=flow.compute_flow, args=(clip,),
                             kwargs=dict(method="tvl1", workers=2), daemon=True)
        t.start()
        t.join()
        open({str(pids)!r}, "w").write(" ".join(map(str, flow._POOL[2]._processes)))
    """, "--version")
    assert out.returncode == 0, out.stderr
    workers = [int(p) for p in pids.read_text().split()]
    assert len(workers) == 2
    deadline = time.monotonic() + 10
    while workers and time.monotonic() < deadline:
        workers = [p for p in workers if _alive(p)]
        time.sleep(0.05)
    assert not workers, f"flow workers {workers} outlived the command"


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True
