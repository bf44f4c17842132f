"""Checkpoint loading that never executes code from the file."""

from __future__ import annotations

import io
import os
import pickle

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

from vidattn.safeload import (
    NumpyOnlyUnpickler,
    UnsafePickleError,
    load_numpy_pickle,
    load_state,
    sha256_file,
)


class _RunsACommand:
    """Pickles to a call of os.system: what a malicious checkpoint looks like."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


class _CallsPrint:
    def __reduce__(self):
        return (print, ("pwned",))


def _tree() -> dict:
    rng = np.random.default_rng(0)
    return {
        "params": {
            "conv": {"kernel": rng.normal(size=(3, 3, 3, 2, 4)).astype(np.float32)},
            "bias": np.arange(4, dtype=np.float16),
        },
        "steps": [np.int64(7), np.array([1, 2], np.int32)],
        "scale": 0.5,
        "name": "i3d",
    }


def test_unpickler_loads_a_dict_of_numpy_arrays():
    tree = _tree()
    for protocol in range(3, pickle.HIGHEST_PROTOCOL + 1):
        got = NumpyOnlyUnpickler(io.BytesIO(pickle.dumps(tree, protocol=protocol))).load()
        np.testing.assert_array_equal(got["params"]["conv"]["kernel"],
                                      tree["params"]["conv"]["kernel"])
        assert got["params"]["bias"].dtype == np.float16
        assert got["steps"][0] == 7 and got["steps"][1].tolist() == [1, 2]
        assert got["scale"] == 0.5 and got["name"] == "i3d"


def test_load_numpy_pickle_from_file(tmp_path):
    path = tmp_path / "w.ckpt"
    path.write_bytes(pickle.dumps(_tree()))
    got = load_numpy_pickle(path)
    assert got["params"]["conv"]["kernel"].shape == (3, 3, 3, 2, 4)


def test_refuses_os_system_without_running_it(tmp_path):
    marker = tmp_path / "pwned"
    payload = pickle.dumps({"weights": np.zeros(2), "evil": _RunsACommand(marker)})
    assert b"system" in payload  # the pickle really references os.system / posix.system
    with pytest.raises(UnsafePickleError, match="system"):
        NumpyOnlyUnpickler(io.BytesIO(payload)).load()
    path = tmp_path / "evil.ckpt"
    path.write_bytes(payload)
    with pytest.raises(UnsafePickleError):
        load_numpy_pickle(path)
    assert not marker.exists()


def test_refuses_builtins(capsys):
    with pytest.raises(UnsafePickleError, match="builtins.print"):
        NumpyOnlyUnpickler(io.BytesIO(pickle.dumps(_CallsPrint()))).load()
    assert "pwned" not in capsys.readouterr().out


def test_refuses_object_arrays(tmp_path):
    path = tmp_path / "obj.ckpt"
    # an object array needs no global beyond numpy's, so the content check must catch it
    for protocol in range(3, pickle.HIGHEST_PROTOCOL + 1):
        path.write_bytes(
            pickle.dumps({"a": np.array([1, "x", None], dtype=object)}, protocol=protocol)
        )
        with pytest.raises(UnsafePickleError, match="object arrays"):
            load_numpy_pickle(path)
    nested = tmp_path / "nested.ckpt"
    nested.write_bytes(pickle.dumps({"a": [(np.zeros(1), np.empty(2, dtype=object))]}))
    with pytest.raises(UnsafePickleError, match="object arrays"):
        load_numpy_pickle(nested)


def test_load_state_torch_zip(tmp_path):
    sd = {"w": torch.randn(3, 4), "b": torch.arange(3)}
    path = tmp_path / "model.pt"
    torch.save(sd, path)
    got = load_state(path)
    assert set(got) == {"w", "b"}
    assert torch.equal(got["w"], sd["w"]) and torch.equal(got["b"], sd["b"])


def test_load_state_torch_zip_refuses_code(tmp_path):
    marker = tmp_path / "pwned"
    path = tmp_path / "evil.pt"
    torch.save({"w": torch.zeros(1), "evil": _RunsACommand(marker)}, path)
    with pytest.raises(Exception):  # noqa: B017 - torch's weights_only error type varies
        load_state(path)
    assert not marker.exists()


def test_load_state_safetensors(tmp_path):
    sd = {"a.weight": torch.randn(2, 5), "a.bias": torch.zeros(2)}
    path = tmp_path / "model.safetensors"
    save_file(sd, str(path))
    got = load_state(path)
    assert set(got) == set(sd)
    assert torch.equal(got["a.weight"], sd["a.weight"])


def test_load_state_numpy_pickle(tmp_path):
    path = tmp_path / "flax.ckpt"
    path.write_bytes(pickle.dumps(_tree()))
    got = load_state(path)
    assert isinstance(got["params"]["conv"]["kernel"], np.ndarray)


def test_load_state_garbage_names_the_file(tmp_path):
    path = tmp_path / "garbage.bin"
    path.write_bytes(os.urandom(64) + b"\x00not a checkpoint")
    with pytest.raises(ValueError, match="garbage.bin.*not a loadable checkpoint"):
        load_state(path)
    with pytest.raises(FileNotFoundError, match="missing.pt"):
        load_state(tmp_path / "missing.pt")


def test_sha256_file(tmp_path):
    path = tmp_path / "f"
    path.write_bytes(b"abc")
    assert sha256_file(path, block=2) == (
        "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
    )
