"""vidattn.malloc: glibc keeps freed memory for the next chunk; nothing changes on import."""

from __future__ import annotations

import subprocess
import sys

import pytest

from vidattn.malloc import set_malloc


def _in_a_fresh_process(code: str) -> str:
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          check=True).stdout.split()


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="the settings are glibc's")
def test_reuse_is_applied_once_asked_and_not_on_import():
    out = _in_a_fresh_process(
        "import vidattn.malloc as m, vidattn.pipeline.extract; print(m.malloc_mode()); "
        "print(m.set_malloc('system'), m.malloc_mode()); "
        "print(m.set_malloc('reuse'), m.malloc_mode(), m.set_malloc('reuse'))")
    assert out == ["system", "False", "system", "True", "reuse", "True"]


def test_unknown_mode():
    with pytest.raises(ValueError, match="malloc mode must be one of"):
        set_malloc("jemalloc")
