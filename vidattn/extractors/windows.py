"""Feature maps of clips of any length, computed window by window, memory bounded.

A clip arrives in chunks of frames (a decoder's stream); :class:`WindowedMaps` runs the
network on windows of ``window_steps`` output steps with ``margin_steps`` steps of real
context on each side, keeps each window's core steps, and forgets frames it no longer
needs.  Memory is one window's frames and activations plus the (float16) output, whatever
the clip's length.

The padding rule (the same for every clip, so that windows can be exact): a clip of N >= 1
frames is extended at its end by repeating its last frame up to a multiple of ``unit``, the
input frames per output step (8 for I3D's Mixed_5c, 2 for the R50's res5), so it gives
T = ceil(N / unit) steps -- never an empty map, however short the clip.  Inside the network
the usual padding of each layer (TF "SAME" for I3D) stands for what lies beyond the clip.

Why windows equal one pass over the padded clip: with every window starting at a multiple
of ``unit`` and spanning a multiple of it, each layer's padding and strides fall on the
same frames as in the single pass; an output step depends only on frames within its
receptive field (99 frames for Mixed_5c, so 49 each side), and each kept step has at least
``margin_steps * unit`` real frames on both sides in its window (or the clip's own ends).
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch

from vidattn.spill import MapBuffer

Forward = Callable[[np.ndarray], dict[str, torch.Tensor]]
FLOAT16_MAX = float(np.finfo(np.float16).max)


def pad_to_unit(n: int, unit: int) -> int:
    """Frames a clip of ``n`` frames has after the padding rule: ``unit * ceil(n / unit)``."""
    if n < 1:
        raise ValueError("a clip needs at least one frame")
    return unit * -(-n // unit)


def bf16_autocast(device_type: str | None):
    """bf16 autocast on ``device_type`` ("cpu" | "cuda"); a no-op context for None."""
    return torch.autocast(device_type or "cpu", dtype=torch.bfloat16,
                          enabled=device_type is not None)


def to_stored(endpoint: str, fmap: torch.Tensor, dtype: torch.dtype) -> np.ndarray:
    """(C, t, H, W) map on any device -> (t, H, W, C) numpy of ``dtype``; NaN/Inf, or values
    beyond float16's range when storing float16, are refused rather than stored."""
    core = fmap.float().cpu()
    limit = FLOAT16_MAX if dtype == torch.float16 else float("inf")
    if not torch.isfinite(core).all() or core.abs().max() > limit:
        raise ValueError(f"{endpoint}: the network produced NaN/Inf or values beyond "
                         f"{dtype}; refusing to store them")
    return core.permute(1, 2, 3, 0).to(dtype).numpy()


class WindowedMaps:
    """Collect one clip's maps window by window.

    forward: (n, ...) frames (n a multiple of ``unit``) -> {endpoint: (C_e, n / s_e, H_e,
    W_e)} float tensors, s_e = ``strides[endpoint]`` input frames per step (``unit`` must
    be a multiple of every s_e).  ``push`` frames as they are decoded, then ``finish`` for
    {endpoint: (T_e, H_e, W_e, C_e)} with T_e = pad_to_unit(N, unit) / s_e, kept as
    ``dtype`` (float16, the store's type, halves the output's memory; values beyond its
    range are refused, like NaN/Inf).  A map beyond ``spill_bytes`` comes back as a
    :class:`~vidattn.spill.SpilledMap` (None: always an ndarray).
    """

    def __init__(self, forward: Forward, unit: int, strides: dict[str, int],
                 window_steps: int, margin_steps: int, dtype: torch.dtype = torch.float16,
                 spill_bytes: int | None = None):
        if window_steps < 1 or margin_steps < 0:
            raise ValueError(f"window_steps must be >= 1 and margin_steps >= 0, got "
                             f"{window_steps}, {margin_steps}")
        if any(unit % s for s in strides.values()):
            raise ValueError(f"unit {unit} is not a multiple of every stride {strides}")
        self.forward, self.unit, self.strides = forward, unit, strides
        self.window, self.margin, self.dtype = window_steps, margin_steps, dtype
        self.chunks: list[np.ndarray] = []  # frames [self.first, self.n) in order
        self.first = 0  # index of the first frame still held
        self.n = 0  # frames pushed so far
        self.next_step = 0  # first output step not computed yet
        self.cores = {e: MapBuffer(spill_bytes) for e in strides}  # see vidattn.spill
        self.done = False

    def push(self, frames: np.ndarray) -> None:
        """Add the clip's next frames (k, ...); runs every window that is now complete."""
        if self.done:
            raise RuntimeError("push after finish")
        if len(frames):
            self.chunks.append(frames)
            self.n += len(frames)
            self._run(final=False)

    def finish(self) -> dict[str, np.ndarray]:
        """Apply the padding rule, run the remaining windows, return the maps."""
        if self.done:
            raise RuntimeError("finish called twice")
        padded = pad_to_unit(self.n, self.unit)
        if padded > self.n:
            last = self.chunks[-1][-1:]
            self.chunks.append(np.repeat(last, padded - self.n, axis=0))
            self.n = padded
        self._run(final=True)
        self.done = True
        return {e: c.result() for e, c in self.cores.items()}

    def _take(self, start: int, end: int) -> np.ndarray:
        """Frames [start, end) of the clip from the held chunks (start >= self.first)."""
        out, pos = [], self.first
        for c in self.chunks:
            a, b = max(start, pos), min(end, pos + len(c))
            if a < b:
                out.append(c[a - pos : b - pos])
            pos += len(c)
        return out[0] if len(out) == 1 else np.concatenate(out, axis=0)

    def _forget(self, before: int) -> None:
        """Drop held frames before index ``before``."""
        while self.chunks and self.first + len(self.chunks[0]) <= before:
            self.first += len(self.chunks.pop(0))
        if self.chunks and self.first < before:
            self.chunks[0] = self.chunks[0][before - self.first :]
            self.first = before

    def _run(self, final: bool) -> None:
        u = self.unit
        while True:
            c0 = self.next_step
            c1 = c0 + self.window
            end = u * (c1 + self.margin)
            if final:
                c1 = min(c1, self.n // u)
                end = min(end, self.n)
                if c0 >= c1:
                    return
            elif end > self.n:
                return  # wait for more frames
            start = max(0, u * (c0 - self.margin))
            maps = self.forward(self._take(start, end))
            for e, fmap in maps.items():
                per = u // self.strides[e]  # endpoint steps per unit step
                first = (c0 * u - start) // self.strides[e]
                core = fmap[:, first : first + (c1 - c0) * per]
                self.cores[e].append(to_stored(e, core, self.dtype))
            self.next_step = c1
            self._forget(u * (c1 - self.margin))
