"""Loading checkpoints without executing untrusted code.

Plain ``pickle.load`` runs whatever a file asks for.  vidattn never calls it: torch files
go through ``torch.load(weights_only=True)``, safetensors through safetensors, and the
numpy pickles some projects ship (e.g. DeepMind's I3D in flax layout) through
:class:`NumpyOnlyUnpickler`, which admits plain containers and numpy arrays and nothing else.
"""

from __future__ import annotations

import hashlib
import pickle
import zipfile
from pathlib import Path

import numpy as np

# (module, name) pairs a numpy pickle needs.  numpy 1.x wrote numpy.core.*, numpy 2.x
# writes numpy._core.*; both resolve to the same, side-effect-free constructors.
_NUMPY_GLOBALS = {
    ("numpy.core.multiarray", "_reconstruct"): np._core.multiarray._reconstruct,
    ("numpy._core.multiarray", "_reconstruct"): np._core.multiarray._reconstruct,
    ("numpy.core.multiarray", "scalar"): np._core.multiarray.scalar,
    ("numpy._core.multiarray", "scalar"): np._core.multiarray.scalar,
    # pickle protocol 5 (pickle.HIGHEST_PROTOCOL) writes arrays through _frombuffer
    ("numpy.core.numeric", "_frombuffer"): np._core.numeric._frombuffer,
    ("numpy._core.numeric", "_frombuffer"): np._core.numeric._frombuffer,
    ("numpy", "ndarray"): np.ndarray,
    ("numpy", "dtype"): np.dtype,
}


class UnsafePickleError(pickle.UnpicklingError):
    """The file asked for something other than numpy arrays and plain containers."""


class NumpyOnlyUnpickler(pickle.Unpickler):
    """Unpickler that resolves only the numpy array constructors."""

    def find_class(self, module: str, name: str):  # noqa: D401 - pickle API
        try:
            return _NUMPY_GLOBALS[(module, name)]
        except KeyError:
            raise UnsafePickleError(
                f"refusing to load {module}.{name}: only numpy arrays are allowed"
            ) from None

    def persistent_load(self, pid):
        raise UnsafePickleError("refusing persistent ids (not a plain numpy pickle)")


def _check_no_objects(obj, path: Path) -> None:
    """Object arrays could smuggle arbitrary values; a weights file never needs them."""
    if isinstance(obj, dict):
        for v in obj.values():
            _check_no_objects(v, path)
    elif isinstance(obj, (list, tuple)):
        for v in obj:
            _check_no_objects(v, path)
    elif isinstance(obj, np.ndarray) and obj.dtype.hasobject:
        raise UnsafePickleError(f"{path}: object arrays are not allowed in a weights file")


def load_numpy_pickle(path: str | Path):
    """Load a pickle that holds only dicts/lists/tuples of numpy arrays and scalars."""
    path = Path(path)
    with open(path, "rb") as f:
        obj = NumpyOnlyUnpickler(f).load()
    _check_no_objects(obj, path)
    return obj


def load_state(path: str | Path) -> dict:
    """Load a checkpoint file into a nested dict of tensors or numpy arrays.

    - ``*.safetensors`` -> safetensors;
    - a zip (torch >= 1.6 ``torch.save``) -> ``torch.load(weights_only=True)``;
    - otherwise a numpy-only pickle is tried first (flax/numpy checkpoints), then the
      legacy torch format, again with ``weights_only=True``.
    A file that is none of these raises ``ValueError`` naming it.
    """
    import torch

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: checkpoint not found")
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        return load_file(str(path))
    if zipfile.is_zipfile(path):
        return torch.load(path, map_location="cpu", weights_only=True)
    try:
        obj = load_numpy_pickle(path)
        if isinstance(obj, dict):
            return obj
    except (pickle.UnpicklingError, EOFError, ValueError):
        pass
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # torch raises several types for foreign files
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise ValueError(
            f"{path}: not a loadable checkpoint (safetensors, torch weights-only, "
            f"or numpy pickle): {first}"
        ) from None


def sha256_file(path: str | Path, block: int = 1 << 20) -> str:
    """Hex sha256 of a file, for provenance."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(block):
            h.update(chunk)
    return h.hexdigest()
