"""One-line error text: logs, the store's error column and the CLI all want one line."""

from __future__ import annotations


def one_line(e: BaseException, with_type: bool = False) -> str:
    """``str(e)`` with its whitespace (newlines included) collapsed; the exception's type
    name when it has no text, or as a prefix with ``with_type``.  A KeyError's message is
    given without the quotes its ``str`` adds."""
    # KeyError's str() is the repr of its key: a message would print in stray quotes
    raw = e.args[0] if isinstance(e, KeyError) and len(e.args) == 1 else e
    text = " ".join(str(raw).split())
    if not text:
        return type(e).__name__
    return f"{type(e).__name__}: {text}" if with_type else text
