"""Name -> "module:function" tables, resolved lazily (no import-time registration)."""

from __future__ import annotations

import importlib
from typing import Any

EXTRACTORS: dict[str, str] = {
    "i3d": "vidattn.extractors.two_stream:build",
}

HEADS: dict[str, str] = {
    "avgpool": "vidattn.heads.avgpool:build",
    "actx": "vidattn.heads.actx:build",
    "actx-nosatt": "vidattn.heads.actx:build_nosatt",
    "acf": "vidattn.heads.acf:build",
    "attnpool": "vidattn.heads.attnpool:build",
    "w3": "vidattn.heads.w3:build",
    "cbam": "vidattn.heads.w3:build_cbam",
    "lightgbm": "vidattn.heads.lightgbm:build",
    "refatomnet": "vidattn.heads.refatomnet:build",
    "refatomnet-paper": "vidattn.heads.refatomnet:build_paper",
    "refatomnet-add": "vidattn.heads.refatomnet:build_add",
    "refatomnet-concat": "vidattn.heads.refatomnet:build_concat",
    "refatomnet-noloc": "vidattn.heads.refatomnet:build_noloc",
    "refatomnet-nocaaf": "vidattn.heads.refatomnet:build_nocaaf",
    "refatomnet-nocatf": "vidattn.heads.refatomnet:build_nocatf",
}

# Each head module also exposes its config dataclass under this name.
CONFIG_ATTR = "Config"


def resolve(table: dict[str, str], name: str, kind: str) -> Any:
    """Import and return the object a table entry names; unknown names list the known ones."""
    try:
        spec = table[name]
    except KeyError:
        raise ValueError(f"unknown {kind} {name!r}; known: {', '.join(sorted(table))}") from None
    module, _, attr = spec.partition(":")
    return getattr(importlib.import_module(module), attr)


def head_module(name: str):
    """The module a head lives in (its ``Config``, ``build``, ``TASK`` and optional
    ``TRAINER``)."""
    if name not in HEADS:
        resolve(HEADS, name, "head")  # raises with the known names
    return importlib.import_module(HEADS[name].partition(":")[0])


def head_config_class(name: str):
    """The frozen config dataclass of a head (its module's ``Config``)."""
    return getattr(head_module(name), CONFIG_ATTR)


def head_train_defaults(name: str) -> dict[str, Any]:
    """Training values a head's module declares as its own (``TRAIN``: TrainConfig field ->
    value), used where the user gives none; {} for most heads."""
    return dict(getattr(head_module(name), "TRAIN", {}))


def head_trainer(name: str) -> str:
    """"torch" for heads trained by gradient descent, else the module's ``TRAINER``."""
    return getattr(head_module(name), "TRAINER", "torch")
