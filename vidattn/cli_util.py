"""What the ``vidattn`` commands share: one-line errors and KEY=VALUE options."""

from __future__ import annotations

import sys

import click

from vidattn.errors import one_line


def fail(e: BaseException) -> None:
    """One clear line on stderr and exit 1 (tracebacks only with VIDATTN_DEBUG=1)."""
    import os

    if os.environ.get("VIDATTN_DEBUG"):
        raise e
    click.echo(f"error: {one_line(e)}", err=True)
    sys.exit(1)


def key_values(pairs: tuple[str, ...]) -> dict[str, str]:
    """``-o KEY=VALUE`` pairs -> {key: value}, a dash in a key read as an underscore; a pair
    without "=" is a usage error naming --option."""
    out = {}
    for p in pairs:
        key, sep, value = p.partition("=")
        if not sep:
            raise click.BadParameter(f"expected KEY=VALUE, got {p!r}", param_hint="--option")
        out[key.strip().replace("-", "_")] = value.strip()
    return out
