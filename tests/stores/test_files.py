"""Write errors name their file, whatever OSError they come as."""

from __future__ import annotations

import errno

import pytest

from vidattn.stores.files import naming


def test_write_errors_name_the_file_and_keep_errno():
    with pytest.raises(OSError) as e:
        with naming("/data/run/model.safetensors"):
            raise OSError(errno.ENOSPC, "No space left on device")
    assert str(e.value).startswith("/data/run/model.safetensors: disk full (")
    assert e.value.errno == errno.ENOSPC
    with pytest.raises(PermissionError, match="out.parquet: permission denied"):
        with naming("out.parquet"):
            raise PermissionError(errno.EACCES, "Permission denied")

    class Odd(OSError):  # a library's subclass with a constructor of its own
        def __init__(self, code, why):
            super().__init__(code, why)

    with pytest.raises(OSError, match="x.json: disk full") as e:
        with naming("x.json"):
            raise Odd(errno.ENOSPC, "full")
    assert e.value.errno == errno.ENOSPC
