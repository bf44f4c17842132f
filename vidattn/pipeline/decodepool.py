"""Several decoding children for one part: clip i is decoded by child i mod n.

One child (:class:`~vidattn.pipeline.subdecode.DecodeFeed`) decodes the bench's 480x360
H.264 clips at about 500 frames/s of 224² output, on about 1.7 cores (decord's decoding
thread and PIL's resample); larger sources decode slower (1280x720: about 80 frames per
second of CPU).  On 2 CPU cores the network is far slower than that, so one child is
right.  A network on a GPU is likely faster than one child (``make gpu-check`` measures
both), and there a pool deals the part's clips round-robin to ``procs`` feeds.  Each
feed decodes its own clips in order, ahead of the consumer, which still opens clips in
increasing order.  A clip that fails, hangs or is skipped is the business of the feed
that decodes it, with the feed's usual rules (after a hang, that feed's next clip gets a
new child).

Memory: each child holds what one feed holds (its ring's two slots and ``depth`` chunks
ahead), so a pool holds ``procs`` times that.

``auto`` (:func:`procs_for`): one child on a CPU, ``(cores - 2) // 2`` on a GPU, so that
the children (about 1.7 cores each) fill the cores that the network's process (one or two
cores feeding the GPU) leaves; at most ``AUTO_MAX``, since a node with several GPUs may
run one extracting process per GPU, each counting the node's cores as its own.
"""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path
from typing import Any

from vidattn.cpus import usable_cores
from vidattn.pipeline.subdecode import DecodeFeed, FedClip

AUTO = "auto"
AUTO_MAX = 8  # children per part that auto takes at most (make gpu-check measures 1-8)


def check_procs(procs, name: str = "procs", auto: bool = False) -> None:
    """Refuse a count of decoding children that is not an int >= 1, or ``"auto"`` where
    ``auto`` allows it (ValueError)."""
    if auto and procs == AUTO:
        return
    if isinstance(procs, bool) or not isinstance(procs, int) or procs < 1:
        also = " or 'auto'" if auto else ""
        raise ValueError(f"{name} must be an int >= 1{also} (decoding processes per part), "
                         f"got {procs!r}")


def procs_for(procs, device: str, cores: int | None = None) -> int:
    """The decoding children per part that ``procs`` (an int, or ``"auto"``) means for a
    network on ``device``: ``auto`` is 1 on a CPU, whose network needs every core and runs
    at 45 frames/s on 2 of them, a tenth of what one child decodes; on a GPU, whose
    network outruns one child, ``(cores - 2) // 2`` of the ``cores`` (default
    :func:`usable_cores`), at least 1 and at most ``AUTO_MAX``."""
    check_procs(procs, "decode_procs", auto=True)
    if procs != AUTO:
        return procs
    if not str(device).startswith("cuda"):
        return 1
    n = ((usable_cores() if cores is None else cores) - 2) // 2
    return min(AUTO_MAX, max(1, n))


def likely_device(device: str, dev: Path = Path("/dev")) -> str:
    """``device`` as :func:`vidattn.tasks.rundir.pick_device` will resolve it, judged
    without importing torch (which takes a second): ``auto`` is ``cuda`` when the torch
    installed was built for CUDA (or ROCm) and ``dev`` shows a GPU's driver that
    ``CUDA_VISIBLE_DEVICES`` does not hide.  Only for the head start's guess, which costs
    nothing when wrong (headstart.py)."""
    if device != "auto":
        return device
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    if visible is not None and visible.strip() in ("", "-1"):
        return "cpu"
    if not ((dev / "nvidiactl").exists() or (dev / "kfd").exists()):
        return "cpu"
    spec = importlib.util.find_spec("torch")
    try:
        version = Path(spec.submodule_search_locations[0], "version.py").read_text()
    except (AttributeError, TypeError, IndexError, OSError):
        return "cpu"
    return "cuda" if gpu_build(version) else "cpu"


def gpu_build(version_py: str) -> bool:
    """Whether torch's ``version.py`` (its text) is that of a CUDA or ROCm build: its
    ``cuda`` or ``hip`` is a version, not None."""
    for line in version_py.splitlines():
        name, eq, value = line.partition("=")
        if eq and name.split(":")[0].strip() in ("cuda", "hip"):
            if value.strip() not in ("None", ""):
                return True
    return False


def children_for(procs: int, n_clips: int) -> int:
    """How many children decode ``n_clips`` clips when ``procs`` are asked for: never more
    than there are clips (a DecodeFeed's one, for a single clip)."""
    return min(procs, n_clips)


def feed_for(items, cfg, *, procs: int = 1, chunk_frames: int, timeout_s: float | None,
             depth: int = 2, malloc: str = "system", priority: str = "low"):
    """A DecodeFeed of ``items`` (procs 1, or a single clip), else a :class:`DecodePool`
    of ``procs`` feeds (no more feeds than clips).  Arguments as DecodeFeed's."""
    check_procs(procs)
    items = list(items)
    n = children_for(procs, len(items))
    kw = {"chunk_frames": chunk_frames, "timeout_s": timeout_s, "depth": depth,
          "malloc": malloc, "priority": priority}
    if n <= 1:
        return DecodeFeed(items, cfg, **kw)
    return DecodePool(items, cfg, n, **kw)


class DecodePool:
    """``procs`` DecodeFeeds over one list of clips; the same interface as a DecodeFeed
    (``items``, ``cfg``, ``chunk_frames``, :meth:`prefetch`, :meth:`open`, :meth:`close`).

    items: (path, start_sec, end_sec) per clip; feed k decodes clips k, k + procs, ...
    """

    def __init__(self, items, cfg, procs: int, **feed_args: Any):
        if procs < 2:
            raise ValueError(f"a DecodePool needs procs >= 2, got {procs} (use DecodeFeed)")
        self.items = [(str(p), a, b) for p, a, b in items]
        self.cfg, self.procs = cfg, int(procs)
        self.chunk_frames = int(feed_args["chunk_frames"])
        self.feeds: list[DecodeFeed] = []
        try:
            for k in range(self.procs):
                self.feeds.append(DecodeFeed(self.items[k :: self.procs], cfg, **feed_args))
        except BaseException:
            self.close()
            raise
        self._opened = -1

    def prefetch(self) -> None:
        """Start every child now (see DecodeFeed.prefetch)."""
        for feed in self.feeds:
            feed.prefetch()

    def open(self, i: int) -> FedClip:
        """Clip ``i``, opened by the feed that decodes it; clips open once, in order."""
        if not 0 <= i < len(self.items) or i <= self._opened:
            raise ValueError(f"DecodePool.open({i}): clips open once, in order "
                             f"(last opened {self._opened}, {len(self.items)} clips)")
        self._opened = i
        return self.feeds[i % self.procs].open(i // self.procs)

    def close(self) -> None:
        """Kill every child still running; harmless twice."""
        for feed in self.feeds:
            feed.close()

    def __enter__(self) -> DecodePool:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()
