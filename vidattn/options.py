"""``key=value`` options typed by a frozen dataclass (head Configs, dataset Options)."""

from __future__ import annotations

import dataclasses
import types
import typing

_TRUTH = {"1": True, "true": True, "yes": True, "on": True,
          "0": False, "false": False, "no": False, "off": False}


def _convert(key: str, kind, raw):
    if not isinstance(raw, str):
        return raw  # already typed (Python callers)
    if typing.get_origin(kind) in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(kind) if a is not type(None)]
        if raw.strip().lower() in ("none", "null", ""):
            return None
        kind = args[0]
    if kind is bool:
        if raw.strip().lower() not in _TRUTH:
            raise ValueError(f"option {key} expects true/false, got {raw!r}")
        return _TRUTH[raw.strip().lower()]
    try:
        return kind(raw)
    except (TypeError, ValueError):
        raise ValueError(f"option {key} expects {getattr(kind, '__name__', kind)}, "
                         f"got {raw!r}") from None


def parse_options(config_cls, options: dict | None, **fixed):
    """Build ``config_cls`` from ``key=value`` strings; ``fixed`` fields are set by the caller.

    Unknown keys are refused with the list of known ones.
    """
    fields = {f.name for f in dataclasses.fields(config_cls)}
    hints = typing.get_type_hints(config_cls)
    values = dict(fixed)
    for key, raw in (options or {}).items():
        if key not in fields:
            raise ValueError(
                f"unknown option {key!r} for {config_cls.__module__}; "
                f"known: {', '.join(k for k in sorted(fields) if k not in fixed)}"
            )
        values[key] = _convert(key, hints[key], raw)
    return config_cls(**{k: v for k, v in values.items() if k in fields})
