"""RGB model input made on the device from uint8 frames: bit-identical to the host's."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from vidattn.extractors import i3d_r50
from vidattn.extractors.device_input import DeviceInput, level_table
from vidattn.video import to_model_input

DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])


def _frames(n: int = 5, h: int = 9, w: int = 11, seed: int = 0) -> np.ndarray:
    frames = np.random.default_rng(seed).integers(0, 256, (n, h, w, 3), dtype=np.uint8)
    frames[0, 0, :3] = [[0, 0, 0], [255, 255, 255], [127, 128, 1]]  # the ends and the middle
    return frames


@pytest.mark.parametrize("to_input", [to_model_input, i3d_r50.to_model_input],
                         ids=["inception [-1, 1]", "r50 mean/std"])
@pytest.mark.parametrize("device", DEVICES)
def test_the_device_input_is_the_hosts_bit_for_bit(to_input, device):
    frames = _frames()
    got = DeviceInput(to_input, device)(frames)
    assert got.device.type == device and got.dtype == torch.float32
    assert got.shape == (1, 3, 5, 9, 11)
    want = torch.from_numpy(to_input(frames))[None]
    assert torch.equal(got.cpu(), want)
    every = np.arange(256, dtype=np.uint8).reshape(1, 16, 16, 1).repeat(3, axis=3)
    assert torch.equal(DeviceInput(to_input, device)(every).cpu()[0],
                       torch.from_numpy(to_input(every)))


def test_a_table_refuses_an_input_that_is_not_per_level():
    table = level_table(to_model_input)
    assert table.shape == (3, 256) and table[0, 0] == -1.0 and table[2, 255] == 1.0
    with pytest.raises(ValueError, match="not a function of each channel's level"):
        level_table(lambda f: to_model_input(f[:, ::-1].copy()))  # moves pixels
    with pytest.raises(ValueError, match="not a function of each channel's level"):
        level_table(lambda f: to_model_input(f[..., ::-1].copy()))  # swaps channels
    with pytest.raises(ValueError, match=r"expects \(N, h, w, 3\) uint8"):
        DeviceInput(to_model_input, "cpu")(_frames().astype(np.float32))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_extractor_makes_rgb_input_on_the_device_and_flow_on_the_host():
    from vidattn.extractors.two_stream import I3DExtractor, I3DExtractorConfig

    ex = I3DExtractor(I3DExtractorConfig(rgb_weights="random", flow_weights="random",
                                         streams=("rgb", "flow"), device="cuda"))
    assert ex.nets["rgb"].on_device is not None and ex.nets["flow"].on_device is None
    frames = _frames(16, 32, 32)
    assert torch.equal(ex.nets["rgb"].input(frames).cpu(),
                       torch.from_numpy(to_model_input(frames))[None])
