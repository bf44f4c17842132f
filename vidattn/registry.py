"""Name -> "module:function" tables, resolved lazily (no import-time registration)."""

from __future__ import annotations

import importlib
from typing import Any

EXTRACTORS: dict[str, str] = {
    "i3d": "vidattn.extractors.i3d:build",
}

HEADS: dict[str, str] = {
    "actx": "vidattn.heads.actx:build",
    "actx-nosatt": "vidattn.heads.actx:build_nosatt",
    "avgpool": "vidattn.heads.avgpool:build",
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


def head_config_class(name: str):
    """The frozen config dataclass of a head (its module's ``Config``)."""
    module = HEADS[name].partition(":")[0] if name in HEADS else None
    if module is None:
        resolve(HEADS, name, "head")  # raises with the known names
    return getattr(importlib.import_module(module), CONFIG_ATTR)
