"""Loading checkpoints without executing untrusted code.

Plain ``pickle.load`` runs whatever a file asks for.  By default vidattn never calls it:
torch files go through ``torch.load(weights_only=True)``, safetensors through safetensors,
and the numpy pickles some projects ship (e.g. DeepMind's I3D in flax layout) through
:class:`NumpyOnlyUnpickler`, which admits plain containers and numpy arrays and nothing else.

A checkpoint saved as whole Python objects (``torch.save(model)``, a trainer's checkpoint
class) cannot be read that way.  It is refused with :class:`UntrustedCheckpointError`,
which names the classes the file asks for (found by :func:`pickle_globals` without
importing or calling any of them).  ``trust_checkpoint=True`` (``--trust-checkpoint``)
then loads it with ``torch.load(weights_only=False)``, after a warning on stderr: only
for files whose origin you trust, since unpickling them runs their code.
"""

from __future__ import annotations

import hashlib
import io
import pickle
import re
import sys
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
    """Load a pickle that holds only dicts/lists/tuples of numpy arrays and scalars.

    A file that is no pickle raises ``pickle.UnpicklingError`` naming it, whatever the
    unpickler tripped on: damaged bytes can declare a 2**62-byte string (MemoryError),
    index an empty memo (KeyError), or truncate anywhere (EOFError).
    """
    path = Path(path)
    with open(path, "rb") as f:
        try:
            obj = NumpyOnlyUnpickler(f).load()
        except UnsafePickleError:
            raise
        except Exception as e:  # MemoryError, KeyError, EOFError, struct.error, ...
            raise pickle.UnpicklingError(
                f"{path}: not a readable pickle ({type(e).__name__}: {e})") from None
    _check_no_objects(obj, path)
    return obj


class UntrustedCheckpointError(ValueError):
    """A checkpoint is a pickle of arbitrary Python objects; only a trusted load reads it."""


# ------------------------------------------------------------ listing a pickle's globals
class _Stub:
    """Stands in for every global while listing: absorbs calls, state and items."""

    def __init__(self, *args, **kwargs):
        pass

    def __call__(self, *args, **kwargs):
        return _Stub()

    def __setstate__(self, state):
        pass

    def __setitem__(self, key, value):
        pass

    def append(self, value):
        pass

    def extend(self, values):
        pass


class _GlobalLister(pickle.Unpickler):
    """Records the globals a pickle names; resolves each to :class:`_Stub`, never importing."""

    def __init__(self, f):
        super().__init__(f)
        self.names: list[str] = []

    def find_class(self, module: str, name: str):  # noqa: D401 - pickle API
        self.names.append(f"{module}.{name}")
        return _Stub

    def persistent_load(self, pid):
        return None  # torch's tensor storages: not needed to list globals


def pickle_globals(path: str | Path) -> list[str]:
    """``module.name`` of every global a pickle file refers to, in order, without loading any.

    A torch zip is read through its ``data.pkl``; any other file as up to four pickles in
    a row (the legacy torch format: magic number, protocol, system info, then the data).
    Only pickles that parse to the end count: random bytes can look like a GLOBAL opcode,
    and a file that is not a well-formed pickle is reported as unreadable, not as unsafe.
    """
    path = Path(path)
    try:
        if zipfile.is_zipfile(path):
            with zipfile.ZipFile(path) as z:
                streams = [z.read(n) for n in z.namelist() if n.endswith("data.pkl")]
        else:
            streams = [path.read_bytes()]
    except (OSError, zipfile.BadZipFile):
        return []
    names: list[str] = []
    for data in streams:
        f = io.BytesIO(data)
        for _ in range(4):
            lister = _GlobalLister(f)
            try:
                lister.load()
            except Exception:  # malformed or truncated: nothing more is trustworthy
                break
            names += lister.names
            if f.tell() >= len(data):
                break
    return list(dict.fromkeys(names))


def _safe_globals() -> set[str]:
    """Globals the weights-only loaders accept (torch's allowlist and our numpy one)."""
    names = {f"{m}.{n}" for m, n in _NUMPY_GLOBALS}
    try:  # private in torch; without it only the prefix rule below applies
        from torch import _weights_only_unpickler

        names |= set(_weights_only_unpickler._get_allowed_globals())
    except (ImportError, AttributeError):
        pass
    return names


def foreign_globals(path: str | Path) -> list[str]:
    """The globals of ``path`` that no weights-only loader accepts (classes, functions)."""
    safe = _safe_globals()
    return [g for g in pickle_globals(path)
            if g not in safe and not g.startswith("torch._utils._rebuild")]


def _reason(e: BaseException) -> str:
    """One line of a torch.load error: its WeightsUnpickler line when present, else the first."""
    lines = [re.sub(r"\x1b\[[0-9;]*m", "", ln).strip() for ln in str(e).splitlines()]
    lines = [ln for ln in lines if ln]
    for i, ln in enumerate(lines):
        if "WeightsUnpickler error:" in ln:  # torch's own reason, sometimes on the next line
            rest = [ln.split("WeightsUnpickler error:", 1)[1].strip(), *lines[i + 1 : i + 2]]
            return next(r for r in rest + [ln] if r)
    return lines[0] if lines else type(e).__name__


# --------------------------------------------------------------------------- loading
def load_trusted(path: str | Path):
    """``torch.load(weights_only=False)``: for ``--trust-checkpoint`` only (runs file code)."""
    import torch

    print(f"WARNING: {path}: loading with --trust-checkpoint (torch.load weights_only=False); "
          "this runs any code the file holds", file=sys.stderr)
    try:
        return torch.load(path, map_location="cpu", weights_only=False)
    except Exception as e:  # a file that no loader reads, trusted or not
        raise ValueError(f"{path}: not loadable even as a trusted pickle: {_reason(e)}") from None


def load_torch(path: str | Path, trust_checkpoint: bool = False,
               failure: str = "not a safe torch checkpoint") -> object:
    """``torch.load(weights_only=True)``; what it refuses is handled by trust.

    A file that needs arbitrary objects raises UntrustedCheckpointError (one line naming
    the file and its classes) unless ``trust_checkpoint``, which loads it fully.  Any
    other failure is a ValueError ``"<path>: <failure> (<torch's reason>)"``.
    """
    import torch

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: checkpoint not found")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # UnpicklingError, RuntimeError, EOFError: torch varies
        reason = _reason(e)
    if trust_checkpoint:
        return load_trusted(path)
    foreign = foreign_globals(path)
    if foreign:
        shown = ", ".join(foreign[:3]) + (", ..." if len(foreign) > 3 else "")
        raise UntrustedCheckpointError(
            f"{path}: not a safe torch checkpoint: it is a pickle with arbitrary Python "
            f"objects ({shown}), which only a full unpickling can read, running code from "
            "the file; --trust-checkpoint loads it anyway (only for files you trust)")
    raise ValueError(f"{path}: {failure} (torch.load weights_only=True failed: {reason})")


def state_dict_of(obj, path: str | Path) -> dict:
    """A loaded checkpoint as a dict: a mapping as it is, a module's (or any object's)
    ``state_dict()``; anything else is a ValueError naming the file and the type."""
    if isinstance(obj, dict):
        return obj
    if hasattr(obj, "keys") and hasattr(obj, "__getitem__"):  # a Mapping that is no dict
        return {k: obj[k] for k in obj.keys()}
    if callable(getattr(obj, "state_dict", None)):
        return dict(obj.state_dict())
    raise ValueError(f"{path}: checkpoint holds a {type(obj).__name__}, not a state dict "
                     "or a module")


def load_state(path: str | Path, trust_checkpoint: bool = False) -> dict:
    """Load a checkpoint file into a nested dict of tensors or numpy arrays.

    - ``*.safetensors`` -> safetensors;
    - a zip (torch >= 1.6 ``torch.save``) -> ``torch.load(weights_only=True)``;
    - otherwise a numpy-only pickle is tried first (flax/numpy checkpoints), then the
      legacy torch format, again with ``weights_only=True``.
    A pickle of arbitrary objects raises UntrustedCheckpointError unless
    ``trust_checkpoint`` (then ``torch.load(weights_only=False)``; a module or object
    with ``state_dict()`` gives its state dict).  A file that is none of these raises
    ``ValueError`` naming it.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: checkpoint not found")
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        return load_file(str(path))
    if not zipfile.is_zipfile(path):
        try:
            obj = load_numpy_pickle(path)
            if isinstance(obj, dict):
                return obj
        except (pickle.UnpicklingError, ValueError):  # not a numpy pickle: try torch
            pass
    obj = load_torch(path, trust_checkpoint, failure="not a loadable checkpoint "
                     "(safetensors, torch weights-only, or numpy pickle)")
    return state_dict_of(obj, path)


def sha256_file(path: str | Path, block: int = 1 << 20) -> str:
    """Hex sha256 of a file, for provenance."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(block):
            h.update(chunk)
    return h.hexdigest()
