"""Progress bars: shown on a terminal, silent in logs and pipes unless asked for.

``VIDATTN_PROGRESS=1`` forces bars on (e.g. a cluster job whose log you tail), ``=0`` off;
unset, tqdm decides from whether stderr is a terminal.
"""

from __future__ import annotations

import os

from tqdm import tqdm


def bar(iterable=None, **kwargs) -> tqdm:
    flag = os.environ.get("VIDATTN_PROGRESS")
    disable = None if flag is None else flag.strip() in ("0", "false", "no", "off")
    return tqdm(iterable, disable=disable, dynamic_ncols=True, **kwargs)
