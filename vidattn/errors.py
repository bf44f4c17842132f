"""One-line error text: logs, the store's error column and the CLI all want one line."""

from __future__ import annotations


def one_line(e: BaseException, with_type: bool = False) -> str:
    """``str(e)`` with its whitespace (newlines included) collapsed; the exception's type
    name when it has no text, or as a prefix with ``with_type``."""
    text = " ".join(str(e).split())
    if not text:
        return type(e).__name__
    return f"{type(e).__name__}: {text}" if with_type else text
