"""Inception I3D run as a stream: each frame computed once, memory bounded, exact.

Windows (``windows.py``) recompute ``2 x margin`` frames of context per window (2 x 56 of
every 256 for Mixed_5c: 44% extra).  Here every temporal layer keeps instead the few frames
of its own input that its next outputs need, and emits an output step as soon as the frames
under its kernel are there:

* a layer of temporal kernel k and stride s, fed frames one chunk at a time, holds at most
  k - 1 + s input frames after each push; output j reads its input frames j s .. j s + k - 1;
* TF "SAME" in time is padding at the clip's two ends only: (k - s) // 2 frames before the
  first frame (zeros for convolutions, -inf for max pools) and the rest after the last.
  That is the single pass's padding whenever each strided layer gets a whole number of
  strides, which the padding rule guarantees (clips are extended to a multiple of 8 frames
  by repeating their last frame, as ``windows.py`` does);
* an Inception block's four branches delay their outputs differently (a 3-frame kernel
  needs the next frame, a 1x1x1 does not): each branch's output is queued and the block
  emits the steps all four have.

Spatial padding, BatchNorm and ReLU are those of :mod:`vidattn.extractors.i3d`; the same
weights are used, so the maps equal one pass over the padded clip up to float rounding
(tests: <= 1e-5 of the map's scale, clips of 1 to 200+ frames, RGB and flow).  Memory is
one chunk's activations plus the held frames, whatever the clip's length.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from vidattn.extractors.i3d import (
    I3D,
    LAYERS,
    Inception,
    MaxPoolSame,
    Unit3D,
    max_pool_valid,
    same_pads,
)
from vidattn.extractors.windows import bf16_autocast, pad_to_unit, to_stored
from vidattn.spill import MapBuffer

UNIT = 8  # input frames per Mixed_5c step


class _Temporal:
    """One layer streamed in time: ``op`` maps (B, C, t, H', W'), unpadded in time and
    already padded in space where ``space`` says so, to its (t - k) // s + 1 outputs; the
    stream adds TF SAME's padding at the clip's two ends.

    ``space``: the (kernel, stride) in H and W whose TF SAME padding the op's input needs
    (None: the op pads in space itself, or needs none).  The op's input is made by one
    F.pad of the new frames: the held frames' place and the clip's padding in time, the
    padding in space, and the frames the op does not need yet cut off, all in the copy the
    padding makes anyway; the held frames (fewer than k) are then written into their place.
    Joining them first would copy every chunk's activations once more per layer.
    """

    def __init__(self, op, k: int, s: int, value: float, space=None):
        self.op, self.k, self.s, self.value, self.space = op, k, s, value, space
        total = max(k - s, 0)
        self.front, self.back = total // 2, total - total // 2
        self.held: torch.Tensor | None = None  # input frames not yet consumed
        self.started = False

    def _fill(self, like: torch.Tensor, n: int) -> torch.Tensor:
        shape = (*like.shape[:2], n, *like.shape[3:])
        return torch.full(shape, self.value, dtype=like.dtype, device=like.device)

    def push(self, x: torch.Tensor | None, final: bool = False) -> torch.Tensor | None:
        if x is not None and not x.shape[2]:
            x = None
        front = 0
        if x is not None and not self.started:
            front, self.started = self.front, True
        n_held = 0 if self.held is None else self.held.shape[2]
        stop = n_held + front + (0 if x is None else x.shape[2])  # frames before the end's pad
        if stop == 0:
            return None
        back = self.back if final else 0
        total = stop + back
        n_out = (total - self.k) // self.s + 1 if total >= self.k else 0
        y = None
        if n_out:
            y = self.op(self._input(x, front, back, total - (n_out - 1) * self.s - self.k))
        # what the next outputs need, copied so the chunk's activations can be freed
        self.held = None if final else self._rest(x, front, n_out * self.s, stop)
        return y

    def _input(self, x: torch.Tensor | None, front: int, back: int, unused: int) -> torch.Tensor:
        """The op's input: held frames, front padding, x, back padding, less the last
        ``unused`` frames, padded in space."""
        held = self.held
        like = x if x is not None else held
        pads = same_pads(like.shape[3:], *self.space) if self.space else [0, 0, 0, 0]
        if x is None:  # the clip's end with nothing new: the held frames, a few
            x, held, front = torch.cat([held, self._fill(held, back)], dim=2), None, 0
            back = 0
        lead = front + (0 if held is None else held.shape[2])
        if not any(pads) and lead == 0 and back == unused == 0:
            return x
        buf = F.pad(x, [*pads, lead, back - unused], value=self.value)
        if held is not None:
            (h, w), top, left = held.shape[3:], pads[2], pads[0]
            buf[:, :, : held.shape[2], top : top + h, left : left + w] = held
        return buf

    def _rest(self, x: torch.Tensor | None, front: int, start: int, stop: int):
        """Frames ``start`` .. ``stop`` of held + front padding + x, as a new tensor."""
        if start >= stop:
            return None
        n_x = 0 if x is None else x.shape[2]
        if start >= stop - n_x:  # the usual case: the last few frames of x
            return x[:, :, start - (stop - n_x) :].clone()
        parts = [] if self.held is None else [self.held]  # fewer than 3k frames in all
        if front:
            parts.append(self._fill(x, front))
        if x is not None:
            parts.append(x)
        return torch.cat(parts, dim=2)[:, :, start:].clone()


def _unit(u: Unit3D) -> _Temporal:
    (kt, kh, kw), (st, sh, sw) = u.kernel, u.stride
    # Where SAME is symmetric in space (stride 1, odd kernel) the convolution pads H and W
    # itself, as the single pass does: no padded copy of the input.
    inner = (sh, sw) == (1, 1) and kh % 2 and kw % 2
    padding = (0, kh // 2, kw // 2) if inner else 0

    def op(x: torch.Tensor) -> torch.Tensor:
        return u.activate(F.conv3d(x, u.conv3d.weight, u.conv3d.bias, (st, sh, sw), padding))

    return _Temporal(op, kt, st, 0.0, None if inner else ((kh, kw), (sh, sw)))


def _pool(p: MaxPoolSame) -> _Temporal:
    (kt, kh, kw), (st, sh, sw) = p.kernel, p.stride

    def op(x: torch.Tensor) -> torch.Tensor:
        return max_pool_valid(x, (kt, kh, kw), (st, sh, sw))

    return _Temporal(op, kt, st, float("-inf"), ((kh, kw), (sh, sw)))


class _Mixed:
    """An Inception block: four branch streams, concatenated where all have output."""

    def __init__(self, block: Inception):
        self.branches = [[_unit(block.b0)], [_unit(block.b1a), _unit(block.b1b)],
                         [_unit(block.b2a), _unit(block.b2b)], [_pool(block.b3a),
                                                                _unit(block.b3b)]]
        # each branch's outputs not yet emitted, in time order
        self.queued: list[list[torch.Tensor]] = [[] for _ in self.branches]

    def push(self, x: torch.Tensor | None, final: bool = False) -> torch.Tensor | None:
        for i, branch in enumerate(self.branches):
            y = x
            for node in branch:
                y = node.push(y, final)
            if y is not None and y.shape[2]:
                self.queued[i].append(y)
        ready = min(sum(p.shape[2] for p in q) for q in self.queued)
        if ready == 0:
            return None
        # The block's output is written once: a branch ahead of the others (a 1x1x1 one
        # needs no next frame) keeps its surplus as a view, not joined to its next output.
        first = self.queued[0][0]
        sizes = [q[0].shape[1] for q in self.queued]
        out = first.new_empty((first.shape[0], sum(sizes), ready, *first.shape[3:]))
        c = 0
        for i, q in enumerate(self.queued):
            t, keep = 0, []
            for p in q:
                n = min(p.shape[2], ready - t)
                if n > 0:
                    out[:, c : c + sizes[i], t : t + n] = p[:, :, :n]
                    t += n
                if n < p.shape[2]:
                    keep.append(p[:, :, n:])
            self.queued[i] = keep
            c += sizes[i]
        return out


class StreamingI3D:
    """I3D's endpoints of one clip, computed as its frames arrive.

    ``push(x)``: the next frames of the clip as model input (1, C, t, H, W), any t;
    ``finish(x=None)``: the last frames, if any, and the end of the clip (padded to a
    multiple of 8 already) -> {endpoint: list of (1, C_e, t_e, H_e, W_e) pieces in order}.
    Passing the last frames to ``finish`` runs them and the flush of every layer's held
    frames as one call per layer, not two (tiny tails are the slowest convolutions: below
    a size oneDNN hands them to the im2col path).  ``on_output(endpoint, piece)``, if
    given, receives each piece as it is made instead (bounded memory).
    """

    def __init__(self, model: I3D, endpoints=("Mixed_5c",), on_output=None):
        self.endpoints = tuple(endpoints)
        last = max(i for i, (name, _, _) in enumerate(LAYERS) if name in self.endpoints)
        self.nodes = []
        for name, kind, _ in LAYERS[: last + 1]:
            layer = getattr(model, name)
            node = (_unit(layer) if kind == "unit" else _pool(layer) if kind == "pool"
                    else _Mixed(layer))
            self.nodes.append((name, node))
        self.pieces: dict[str, list[torch.Tensor]] = {e: [] for e in self.endpoints}
        self.on_output = on_output or (lambda e, y: self.pieces[e].append(y))

    def _run(self, x: torch.Tensor | None, final: bool) -> None:
        for name, node in self.nodes:
            x = node.push(x, final)
            if x is not None and name in self.pieces:
                self.on_output(name, x)
            if x is None and not final:
                return  # nothing new reaches the later layers yet

    def push(self, x: torch.Tensor) -> None:
        with torch.no_grad():
            self._run(x, final=False)

    def finish(self, x: torch.Tensor | None = None) -> dict[str, list[torch.Tensor]]:
        with torch.no_grad():
            self._run(x, final=True)
        return self.pieces

    def held_frames(self) -> int:
        """Input frames held across all layers now (the streaming state's size)."""
        count = 0
        for _, node in self.nodes:
            temporal = [n for b in node.branches for n in b] if isinstance(node, _Mixed) \
                else [node]
            count += sum(n.held.shape[2] for n in temporal if n.held is not None)
            if isinstance(node, _Mixed):
                count += sum(p.shape[2] for q in node.queued for p in q)
        return count


class StreamingMaps:
    """The drop-in for :class:`~vidattn.extractors.windows.WindowedMaps` with Inception I3D:
    ``push`` decoded frames (n, ...) as they come, ``finish`` -> {endpoint: (T_e, H_e, W_e,
    C_e)} (an ndarray, or a SpilledMap past ``spill_bytes``) kept as ``dtype`` (float16
    refuses NaN/Inf and values beyond its range).  Frames are turned into model input and
    run ``min_chunk`` or more at a time (bigger chunks use the cores better; the state does
    not grow with them).  The newest frames wait for the next push, so that the clip's last
    frames run together with the flush at ``finish``."""

    def __init__(self, model: I3D, to_tensor, endpoints, autocast: str | None = None,
                 min_chunk: int = 64, dtype: torch.dtype = torch.float16,
                 spill_bytes: int | None = None):
        """to_tensor: (n, ...) frames -> (1, C, n, H, W) model input on the model's device
        (the extractor's ``_Net.input``); autocast: the device type to run in bf16 autocast
        on ("cpu" | "cuda"), None for fp32; spill_bytes: a map beyond this many bytes is
        kept in a temporary file (vidattn.spill; None: always in memory)."""
        self.to_tensor, self.autocast = to_tensor, autocast
        self.min_chunk, self.dtype = min_chunk, dtype
        self.stream = StreamingI3D(model, endpoints, on_output=self._keep)
        self.out = {e: MapBuffer(spill_bytes) for e in endpoints}
        self.pending: list[np.ndarray] = []
        self.n = 0
        self.done = False

    def _keep(self, endpoint: str, y: torch.Tensor) -> None:
        self.out[endpoint].append(to_stored(endpoint, y[0], self.dtype))

    def _run_pending(self, final: bool = False) -> None:
        # never empty here: push runs it before adding frames, finish after padding
        frames = np.concatenate(self.pending) if len(self.pending) > 1 else self.pending[0]
        self.pending = []
        x = self.to_tensor(frames)
        with bf16_autocast(self.autocast):
            if final:
                self.stream.finish(x)
            else:
                self.stream.push(x)

    def push(self, frames: np.ndarray) -> None:
        if self.done:
            raise RuntimeError("push after finish")
        if len(frames):
            if sum(len(p) for p in self.pending) >= self.min_chunk:
                self._run_pending()  # more frames came, so these were not the last
            self.pending.append(frames)
            self.n += len(frames)

    def finish(self) -> dict[str, np.ndarray]:
        if self.done:
            raise RuntimeError("finish called twice")
        padded = pad_to_unit(self.n, UNIT)  # raises for an empty clip
        if padded > self.n:  # the last frame is always pending: push keeps the newest
            self.pending.append(np.repeat(self.pending[-1][-1:], padded - self.n, axis=0))
        self._run_pending(final=True)
        self.done = True
        return {e: v.result() for e, v in self.out.items()}
