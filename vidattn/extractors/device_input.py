"""RGB model input made on the GPU: frames cross as uint8 and are scaled there.

Made on the host, the input of 128 frames at 224² is 77 MB of float32, written by numpy
on one core (22 ms warm on the 2-core CPU host: about 5,800 frames/s, a rate a GPU's
forward may well pass; not measured, no GPU here), then copied again into pinned memory.
Here the uint8 frames (a quarter of the bytes; 1.2 ms to copy) are pinned and sent
instead, and each value is looked up on the device in a table of the 256 values the
host's conversion gives each level of each channel.  A lookup, not the arithmetic redone
on the device: torch's CUDA kernel divides by a host scalar as a multiplication by its
reciprocal, which can be one rounding away from numpy's division, and the maps must not
depend on where their input was made.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch

from vidattn.video import check_rgb_frames

LEVELS = 256


def level_table(to_input: Callable[[np.ndarray], np.ndarray]) -> np.ndarray:
    """(3, 256) float32: ``to_input``'s value for each level of each channel.

    to_input: (N, h, w, 3) uint8 -> (3, N, h, w) float32, each value a function of its
    own channel's level alone (``x / 127.5 - 1``, or a channel's mean and std); checked
    on a probe of random frames, since a table cannot stand for anything else.
    """
    levels = np.repeat(np.arange(LEVELS, dtype=np.uint8)[None, :, None, None], 3, axis=3)
    table = np.ascontiguousarray(np.asarray(to_input(levels), np.float32).reshape(3, LEVELS))
    probe = np.random.default_rng(0).integers(0, LEVELS, (2, 5, 7, 3), dtype=np.uint8)
    looked_up = np.stack([table[c][probe[..., c]] for c in range(3)])
    if not np.array_equal(looked_up, to_input(probe)):
        raise ValueError("the model input is not a function of each channel's level "
                         "alone: it cannot be made from a table on the device")
    return table


class DeviceInput:
    """(n, h, w, 3) uint8 RGB frames -> (1, 3, n, h, w) float32 model input on
    ``device``, equal bit for bit to ``to_input``'s (see :func:`level_table`)."""

    def __init__(self, to_input: Callable[[np.ndarray], np.ndarray], device: str):
        self.device = torch.device(device)
        self.table = torch.from_numpy(level_table(to_input)).to(self.device)

    def __call__(self, frames: np.ndarray) -> torch.Tensor:
        check_rgb_frames(frames, "DeviceInput")
        u8 = torch.from_numpy(np.ascontiguousarray(frames))
        if self.device.type == "cuda":  # pinned: the copy overlaps work already queued
            u8 = u8.pin_memory().to(self.device, non_blocking=True)
        out = torch.empty((1, 3, *frames.shape[:3]), dtype=torch.float32, device=self.device)
        for c in range(3):
            out[0, c] = self.table[c][u8[..., c].long()]
        return out
