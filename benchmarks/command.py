"""The whole ``vidattn extract`` command on real clips against the bare model, one run.

The clips: the ActivityNet clip three times over plus scikit-video's three (about 1,500
frames at 25 fps, 224² centre crops).  Every measurement is a fresh process, as a user runs
it, and the rounds alternate so that a busy machine slows all of them alike:

* bare: the packaged I3D's forward over the already decoded frames, timed alone (no
  start-up, no decoding), at its best chunking: one pass per clip, or 64 or 128 frames a
  chunk (the one with the lowest median over the rounds is the model's own speed), in
  fp32 and in bf16 autocast (bf16 only on a CPU with native bf16: elsewhere oneDNN
  emulates it, slower than fp32); each command is compared with the bare forward in its
  own precision;
* the stream: the extractor's exact ``StreamingMaps`` in the bare process, after the bare
  rounds and a warm-up on the first clip, on the same frames pushed 128 at a time (model
  input made from them included): what exact single-pass maps cost over the bare forward,
  before any decoding or start-up;
* the command: ``vidattn extract --dataset folder`` timed from outside, so interpreter
  start-up, imports, model load, decoding, the network and the store writes all count;
  decoding in a child process (the default), in a thread, with PyAV only (no decord first),
  and with ``--precision bf16``;
* what the command does beyond the forward: the bare process's start-up (import torch,
  load I3D) and the CPU its decoding of the same clips took, against the forward's CPU.
* the ceiling: the CPU the default command spends in all its processes (the decoding child
  and the forkserver are counted by making the benchmark their reaper), divided by the
  host's cores, is the least time it could take here, however well its work were
  overlapped.

``run.py --rounds`` sets the number of rounds (3).  Each command is reported fastest
against fastest and as the median of its rounds, each against the same round's bare
forward.

Both sides run with the extracting processes' malloc settings (vidattn/malloc.py).
"""

from __future__ import annotations

import ctypes
import functools
import json
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from extraction import SKVIDEO, _skvideo

from vidattn.cpus import usable_cores

_BARE = """
import json, sys, time
t_start = time.perf_counter()
import torch
from vidattn.malloc import set_malloc
set_malloc("reuse")
from vidattn.extractors.i3d_weights import load_i3d
from vidattn.video import DecodeConfig, load_clip, to_model_input
precisions, paths = sys.argv[1].split(","), sys.argv[2:]
model = load_i3d(None, "rgb", "cpu")
out = {"start": time.perf_counter() - t_start}
c = time.process_time()
to_tensor = lambda f: torch.from_numpy(to_model_input(f))[None]
frames = [load_clip(p, DecodeConfig(), None, None).frames for p in paths]
clips = [to_tensor(f) for f in frames]
out["decode_cpu"] = time.process_time() - c
def run(chunk, bf16):
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
        for x in clips:
            step = chunk or x.shape[2]
            for a in range(0, x.shape[2], step):
                model(x[:, :, a : a + step])
run(64, False)  # warm-up
out["n"] = sum(x.shape[2] for x in clips)
for bf16 in [p == "bf16" for p in precisions]:
    for chunk in (None, 64, 128):
        t, c = time.perf_counter(), time.process_time()
        run(chunk, bf16)
        key = ("bf16 " if bf16 else "fp32 ") + str(chunk or "clip")
        out[key] = time.perf_counter() - t
        out["cpu " + key] = time.process_time() - c
# The extractor's exact stream on the same frames, pushed as the command pushes them.
# Warmed up on the first clip, as the bare forward is: its own blocks would otherwise
# grow the heap during the timed pass (page faults a fresh command pays once).
from vidattn.extractors.stream_i3d import StreamingMaps
def stream(videos):
    for f in videos:
        maps = StreamingMaps(model, to_tensor, ("Mixed_5c",))
        for a in range(0, len(f), 128):
            maps.push(f[a : a + 128])
        maps.finish()
stream(frames[:1])
t, c = time.perf_counter(), time.process_time()
stream(frames)
out["stream fp32"] = time.perf_counter() - t
out["cpu stream fp32"] = time.process_time() - c
print(json.dumps(out))
"""

ROUNDS = 3  # run.py --rounds
_PR_SET_CHILD_SUBREAPER = 36  # linux/prctl.h
COMMANDS = {
    "decoding in a child process (default)": [],
    "decoding in a thread (--decode-in thread)": ["--decode-in", "thread"],
    "PyAV only (--decoder pyav)": ["--decoder", "pyav"],
    "--precision bf16": ["--precision", "bf16"],
}


def _folder(tmp: Path, real_clip: Path) -> Path | None:
    folder = tmp / "clips"
    folder.mkdir()
    if real_clip.is_file():
        for k in range(3):
            shutil.copy(real_clip, folder / f"activitynet{k}.mp4")  # no links: a root refuses them
    for name in SKVIDEO:
        path = _skvideo(name)
        if path is not None:
            shutil.copy(path, folder / name)
    return folder if any(folder.iterdir()) else None


@dataclass(frozen=True)
class Run:
    """One command: wall seconds, its own peak RSS (MiB), and the CPU seconds of all its
    processes (decoding child and forkserver included; None where they cannot be counted)
    and of its main process alone."""

    sec: float
    rss: float
    cpu: float | None
    cpu_main: float


@functools.cache
def _adopt_orphans() -> bool:
    """Make this process the reaper of its descendants' orphans (Linux), so the CPU of a
    command's forkserver and decoding children can be counted once they exit.  Once per
    process: the setting lasts."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        return libc.prctl(_PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) == 0
    except (OSError, AttributeError):
        return False


def _reap_orphans(grace_s: float = 5.0) -> None:
    """Reap the orphans a finished command left (its forkserver exits when the command
    does), waiting up to ``grace_s`` for each next one; 0 reaps only those already gone."""
    deadline = time.monotonic() + grace_s
    while True:
        try:
            pid, _ = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return  # no children left
        if pid:  # one reaped: look again at once, and wait afresh for the next
            deadline = time.monotonic() + grace_s
        elif time.monotonic() >= deadline:
            return
        else:
            time.sleep(0.02)


def _children_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def _command(folder: Path, store: Path, extra: list[str]) -> Run:
    shutil.rmtree(store, ignore_errors=True)
    exe = str(Path(sys.executable).with_name("vidattn"))
    argv = [exe, "extract", "--dataset", "folder", "--root", str(folder), "--store",
            str(store), "--device", "cpu", *extra]
    log = store.with_suffix(".log")
    counted = _adopt_orphans()
    _reap_orphans(0.0)
    before = _children_cpu()
    with open(log, "wb") as out:  # a file, not a pipe: wait4 must not block on output
        t = time.perf_counter()
        proc = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT)
        _, status, usage = os.wait4(proc.pid, 0)  # its own peak RSS, not all children's
        sec = time.perf_counter() - t
    proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode:
        raise RuntimeError(f"vidattn extract {' '.join(extra)} failed: "
                           f"{log.read_text(errors='replace').strip()[-500:]}")
    _reap_orphans()
    cpu = _children_cpu() - before if counted else None
    return Run(sec, usage.ru_maxrss / 1024, cpu, usage.ru_utime + usage.ru_stime)


def _rows(rows: list, n: int, n_clips: int, bare: dict, extra: dict,
          cmd: dict[str, list[Run]]) -> None:
    """The bare forward at each chunking and at its best; each command against it, fastest
    against fastest and round by round; what the command does beyond the forward; the
    least time the default command's CPU allows."""
    # The best chunking is the one whose rounds have the lowest median: picking, round by
    # round, whichever chunking happened to be fastest would compare the command's one
    # draw with the least of three noisy draws.
    fastest: dict[str, tuple[str, float]] = {}  # precision -> (chunking, its fastest round)
    for k, v in bare.items():
        precision, chunk = k.split()
        best = fastest.get(precision)
        if best is None or statistics.median(v) < statistics.median(bare[f"{precision} "
                                                                         f"{best[0]}"]):
            fastest[precision] = (chunk, min(v))
        how = "one pass per clip" if chunk == "clip" else f"{chunk}-frame chunks"
        rows.append((f"bare {precision} I3D forward on {n} decoded frames of {n_clips} real "
                     f"clips (224², cpu), {how}", f"{min(v):.2f} s",
                     f"{n / min(v):.1f} frames/s; median of the rounds "
                     f"{statistics.median(v):.2f} s"))
    for precision, (chunk, v) in fastest.items():
        rows.append((f"bare {precision} forward at its best chunking ({chunk}, the lowest "
                     f"median)", f"{v:.2f} s", f"{n / v:.1f} frames/s"))
    for label, runs in cmd.items():
        sec = min(r.sec for r in runs)
        rss = max(r.rss for r in runs)
        precision = "bf16" if "bf16" in label else "fp32"
        goal = "; goal >= 0.9x" if label.endswith("(default)") else ""
        # The host's speed drifts between minutes: each round's command against the bare
        # forward of the same round at the best chunking is the steadier ratio.  Against
        # the round's fastest chunking whatever it was, the stricter figure, alongside.
        at_best = bare[f"{precision} {fastest[precision][0]}"]
        paired = [at_best[i] / run.sec for i, run in enumerate(runs)]
        strict = [min(v[i] for k, v in bare.items() if k.startswith(precision)) / run.sec
                  for i, run in enumerate(runs)]
        rows.append((f"`vidattn extract` whole command, start-up and model load included, "
                     f"{label}", f"{sec:.2f} s (peak RSS {rss:.0f} MiB)",
                     f"{n / sec:.1f} frames/s = {fastest[precision][1] / sec:.2f}x bare "
                     f"{precision} (fastest of each); median of the rounds "
                     f"{statistics.median(paired):.2f}x "
                     f"({', '.join(f'{x:.2f}x' for x in paired)}){goal}; against each "
                     f"round's fastest chunking {statistics.median(strict):.2f}x"))
    # On a host the forward keeps busy, the command's other work comes on top of it.
    chunk, _ = fastest["fp32"]
    fwd = statistics.median(bare[f"fp32 {chunk}"])
    if "stream fp32" in extra:  # what exactness costs, before any decoding or start-up
        stream = extra["stream fp32"]
        over = [s / b - 1 for s, b in zip(stream, bare[f"fp32 {chunk}"])]
        rows.append(("the extractor's exact streamed forward (`StreamingMaps`, Mixed_5c as "
                     "one pass over each padded clip) on the same decoded frames, pushed 128 "
                     "at a time, model input made from them included, warmed up as the bare "
                     "forward is",
                     f"{min(stream):.2f} s",
                     f"median {statistics.median(over):+.1%} against the bare forward at its "
                     f"best chunking, round by round, same process "
                     f"({', '.join(f'{x:+.1%}' for x in over)}); CPU "
                     f"{statistics.median(extra['cpu stream fp32']):.1f} s"))
    fwd_cpu = statistics.median(extra[f"cpu fp32 {chunk}"])
    start, dec = statistics.median(extra["start"]), statistics.median(extra["decode_cpu"])
    cores = fwd_cpu / fwd
    rows.append(("what the command does beyond the fp32 forward: start-up (import torch, load "
                 "I3D) and decoding the clips (one process)",
                 f"{start:.2f} s; decoding {dec:.2f} s CPU",
                 f"decoding is {dec / fwd_cpu:.1%} of the forward's {fwd_cpu:.1f} s CPU "
                 f"({cores:.2f} cores busy); free start-up and decoding's CPU added at those "
                 f"cores would give {fwd / (fwd + dec / cores):.2f}x bare"))
    # All the CPU the default command spends, packed perfectly on all the cores, is the
    # least time it can take on this host: the ratio's ceiling here.
    runs = cmd["decoding in a child process (default)"]
    if all(r.cpu is not None for r in runs):
        cpu = statistics.median(r.cpu for r in runs)
        main = statistics.median(r.cpu_main for r in runs)
        n_cores = usable_cores()
        floor = max(cpu / n_cores, fwd)
        rows.append(("CPU of the default command, all its processes (median of the rounds)",
                     f"{cpu:.1f} s (main process {main:.1f} s, decoding child and "
                     f"forkserver {cpu - main:.1f} s)",
                     f"the forward's {fwd_cpu:.1f} s + {cpu - fwd_cpu:.1f} s more; on all "
                     f"{n_cores} cores it cannot take less than {floor:.1f} s = "
                     f"{fwd / floor:.2f}x bare, this host's ceiling for the ratio"))


def _cosine(a_store: Path, b_store: Path) -> float:
    from vidattn.stores import open_store

    a, b = open_store(str(a_store)), open_store(str(b_store))
    num = den_a = den_b = 0.0
    for vid in a.video_ids("rgb"):
        x = a.read(vid).astype(np.float64).ravel()
        y = b.read(vid).astype(np.float64).ravel()
        num, den_a, den_b = num + x @ y, den_a + x @ x, den_b + y @ y
    return num / np.sqrt(den_a * den_b)


def bench_whole_command(rows: list, device: str, real_clip: Path) -> None:
    if device != "cpu":
        rows.append(("whole extract command vs bare", "skipped: a CPU measurement", ""))
        return
    from vidattn.extractors.two_stream import native_cpu_bf16

    # Without AVX512-BF16 (or AMX) oneDNN emulates bf16, far slower than fp32: not a mode
    # anyone would run, so it is left out rather than timed.
    native_bf16 = native_cpu_bf16()
    commands = {k: v for k, v in COMMANDS.items() if native_bf16 or "bf16" not in k}
    precisions = "fp32,bf16" if native_bf16 else "fp32"
    tmp = Path(tempfile.mkdtemp())
    try:
        folder = _folder(tmp, real_clip)
        if folder is None:
            rows.append(("whole extract command vs bare", "skipped: no real clips", ""))
            return
        paths = sorted(str(p) for p in folder.iterdir())
        bare: dict[str, list[float]] = {}
        extra: dict[str, list[float]] = {}  # start-up, decoding CPU, the forward's CPU
        cmd: dict[str, list[Run]] = {k: [] for k in commands}
        n = 0
        for _ in range(ROUNDS):
            res = subprocess.run([sys.executable, "-c", _BARE, precisions, *paths],
                                 capture_output=True, text=True, check=True)
            got = json.loads(res.stdout.strip().splitlines()[-1])
            n = got.pop("n")
            for k, v in got.items():
                (bare if k.split()[0] in ("fp32", "bf16") else extra).setdefault(k, []).append(v)
            for label, opts in commands.items():
                cmd[label].append(_command(folder, tmp / label.split()[0].strip("-"), opts))
        cosine = _cosine(tmp / "decoding", tmp / "precision") if native_bf16 else None
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    _rows(rows, n, len(paths), bare, extra, cmd)
    if cosine is None:
        rows.append(("bf16 rows (bare and `--precision bf16`)", "skipped",
                     "this CPU has no native bf16 (AVX512-BF16 or AMX)"))
    else:
        rows.append(("cosine of the bf16 command's stored maps to the fp32 command's",
                     f"{cosine:.5f}", "bar: >= 0.999"))
