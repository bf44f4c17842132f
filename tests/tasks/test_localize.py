"""Localisation follows each array's own frames per step (Mixed_5c 8, Mixed_4f 4, R50 2)."""

from __future__ import annotations

import numpy as np
import pandas as pd

from vidattn.stores.schema import ARRAYS
from vidattn.tasks.localize import cell_cover, mass_share


def test_frames_per_step_of_the_arrays():
    assert [ARRAYS[n].frames_per_step for n in ("rgb", "rgb_mixed_4f", "rgb_mixed_3c",
                                                "rgb_r50")] == [8, 4, 2, 2]
    assert ARRAYS["detections"].frames_per_step == 0  # tokens, not a space-time map


def test_cell_cover_uses_the_arrays_step():
    # the box covers the left half of the frame in frames 0..3 only
    boxes = pd.DataFrame({"frame": range(4), "x1": 0.0, "y1": 0.0, "x2": 0.5, "y2": 1.0})
    full = (0.0, 0.0, 1.0, 1.0)
    c8 = cell_cover(boxes, (2, 1, 2), full, 25.0, 25.0, frames_per_step=8)
    c4 = cell_cover(boxes, (2, 1, 2), full, 25.0, 25.0, frames_per_step=4)
    # at 8 frames a step, step 0 holds frames 0..7: half its frames covered
    assert c8[:, 0, 0].tolist() == [0.5, 0.0] and c8[:, 0, 1].tolist() == [0.0, 0.0]
    # at 4, step 0 is frames 0..3, all covered; step 1 (frames 4..7) none
    assert c4[:, 0, 0].tolist() == [1.0, 0.0]
    attn = np.zeros((2, 1, 2))
    attn[0, 0, 0] = 1.0
    assert mass_share(attn, c4) == 1.0 and mass_share(attn, c8) == 0.5
