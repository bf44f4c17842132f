"""Checkpoint loading that never executes code from the file."""

from __future__ import annotations

import io
import os
import pickle
import struct
import sys

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

from vidattn.safeload import (
    NumpyOnlyUnpickler,
    UnsafePickleError,
    UntrustedCheckpointError,
    foreign_globals,
    load_numpy_pickle,
    load_state,
    load_torch,
    pickle_globals,
    sha256_file,
)

# A module of checkpoint classes, as a training framework would define them: importable
# (so a trusted load can rebuild them) but unknown to the weights-only loaders.
WRAPPERS = '''
class TrainerCheckpoint(dict):
    """A state dict with training metadata, saved as one object."""

    def __init__(self, state, epoch):
        super().__init__(state)
        self.epoch = epoch


class Holder:
    """An object that hands out its state dict."""

    def __init__(self, state):
        self._state = state

    def state_dict(self):
        return self._state
'''


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


@pytest.mark.parametrize("seed", range(40))
def test_load_state_garbage_names_the_file(tmp_path, seed):
    path = tmp_path / "garbage.bin"
    noise = np.random.default_rng(seed).integers(0, 256, 64, dtype=np.uint8).tobytes()
    path.write_bytes(noise + b"\x00not a checkpoint")
    with pytest.raises(ValueError, match="garbage.bin.*not a loadable checkpoint"):
        load_state(path)
    with pytest.raises(FileNotFoundError, match="missing.pt"):
        load_state(tmp_path / "missing.pt")


def test_a_pickle_declaring_a_huge_string_is_a_one_line_error(tmp_path):
    # protocol 4, BINBYTES8 with a length of 2**62: the unpickler allocates before reading
    path = tmp_path / "huge.pkl"
    path.write_bytes(b"\x80\x04\x8e" + struct.pack("<Q", 1 << 62) + b"\x00" * 8)
    with pytest.raises(pickle.UnpicklingError, match="huge.pkl: not a readable pickle"):
        load_numpy_pickle(path)
    with pytest.raises(ValueError, match="huge.pkl.*not a loadable checkpoint"):
        load_state(path)


def test_sha256_file(tmp_path):
    path = tmp_path / "f"
    path.write_bytes(b"abc")
    assert sha256_file(path, block=2) == (
        "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
    )


# ------------------------------------------------------------------- trusted loading
@pytest.fixture
def wrappers(tmp_path, monkeypatch):
    (tmp_path / "ckpt_wrappers.py").write_text(WRAPPERS)
    monkeypatch.syspath_prepend(str(tmp_path))
    import ckpt_wrappers

    yield ckpt_wrappers
    sys.modules.pop("ckpt_wrappers", None)


def _one_line(e: pytest.ExceptionInfo) -> str:
    text = str(e.value)
    assert "\n" not in text
    return text


@pytest.mark.parametrize("fmt", ["plain", "zip", "legacy"])
def test_command_pickle_is_refused_naming_the_flag(tmp_path, fmt):
    marker = tmp_path / "pwned"
    path = tmp_path / f"evil-{fmt}.ckpt"
    obj = {"w": torch.zeros(2), "evil": _RunsACommand(marker)}
    if fmt == "plain":
        path.write_bytes(pickle.dumps(obj))
    else:
        torch.save(obj, path, _use_new_zipfile_serialization=(fmt == "zip"))
    with pytest.raises(UntrustedCheckpointError) as e:
        load_state(path)
    text = _one_line(e)
    assert text.startswith(f"{path}: ") and "arbitrary Python objects" in text
    assert "system" in text and "--trust-checkpoint" in text
    assert not marker.exists()


@pytest.mark.parametrize("zipped", [True, False])
def test_trusted_load_of_a_wrapped_state_dict(tmp_path, wrappers, capsys, zipped):
    sd = {"a.weight": torch.randn(3, 2), "a.bias": torch.arange(3.0)}
    path = tmp_path / "trainer.pt"
    torch.save(wrappers.TrainerCheckpoint(sd, epoch=7), path,
               _use_new_zipfile_serialization=zipped)
    with pytest.raises(UntrustedCheckpointError, match="ckpt_wrappers.TrainerCheckpoint"):
        load_state(path)
    assert "WARNING" not in capsys.readouterr().err  # nothing loaded, nothing to warn of
    got = load_state(path, trust_checkpoint=True)
    assert set(got) == set(sd) and torch.equal(got["a.weight"], sd["a.weight"])
    err = capsys.readouterr().err
    assert "WARNING" in err and str(path) in err and "trust-checkpoint" in err
    # an object exposing state_dict() (as an nn.Module does) gives that
    holder = tmp_path / "holder.pt"
    torch.save(wrappers.Holder(sd), holder)
    assert torch.equal(load_state(holder, trust_checkpoint=True)["a.bias"], sd["a.bias"])


def test_safe_files_never_take_the_trusted_path(tmp_path, capsys):
    path = tmp_path / "plain.pt"
    torch.save({"w": torch.ones(2)}, path)
    assert torch.equal(load_state(path, trust_checkpoint=True)["w"], torch.ones(2))
    assert torch.equal(load_torch(path, trust_checkpoint=True)["w"], torch.ones(2))
    assert "WARNING" not in capsys.readouterr().err


def test_trusted_load_of_garbage_still_fails_naming_the_file(tmp_path):
    path = tmp_path / "garbage.pt"
    path.write_bytes(b"\x80\x04definitely not a checkpoint")
    with pytest.raises(ValueError, match="garbage.pt: not loadable even as a trusted"):
        load_state(path, trust_checkpoint=True)


def test_globals_are_listed_without_importing(tmp_path):
    # GLOBAL nonexistent_vidattn_mod.Thing, (), REDUCE, STOP: loading would import it
    path = tmp_path / "foreign.pkl"
    path.write_bytes(b"cnonexistent_vidattn_mod\nThing\n)R.")
    assert pickle_globals(path) == ["nonexistent_vidattn_mod.Thing"]
    assert foreign_globals(path) == ["nonexistent_vidattn_mod.Thing"]
    assert "nonexistent_vidattn_mod" not in sys.modules
    with pytest.raises(UntrustedCheckpointError, match="nonexistent_vidattn_mod.Thing"):
        load_state(path)


def test_torch_weights_are_not_foreign(tmp_path):
    path = tmp_path / "w.pt"
    torch.save({"w": torch.zeros(2), "n": torch.nn.Parameter(torch.ones(1))}, path)
    assert any(g.startswith("torch.") for g in pickle_globals(path))
    assert foreign_globals(path) == []


def test_a_pickle_cut_before_its_end_is_unreadable_not_unsafe(tmp_path):
    """Random or truncated bytes can spell a GLOBAL; only whole pickles are called unsafe."""
    path = tmp_path / "cut.pkl"
    path.write_bytes(b"cos\nsystem\n(S'touch x'\ntR")  # no STOP opcode
    assert pickle_globals(path) == []
    with pytest.raises(ValueError, match="not a loadable checkpoint") as e:
        load_state(path)
    assert not isinstance(e.value, UntrustedCheckpointError)
