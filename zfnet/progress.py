"""Progress bars for long work (tqdm): images/s and ETA. Each caller says whether it wants one; the
environment variable ZFNET_PROGRESS=0 silences them all (tests, logs)."""

from __future__ import annotations

import os
import sys

from tqdm.auto import tqdm


def bar(total: int | None = None, desc: str = "", unit: str = "img", disable: bool = False, **kw) -> tqdm:
    off = disable or os.environ.get("ZFNET_PROGRESS", "1") == "0"
    return tqdm(
        total=total,
        desc=desc,
        unit=unit,
        unit_scale=False,
        dynamic_ncols=True,
        file=sys.stderr,
        disable=off,
        leave=False,
        mininterval=0.5,
        smoothing=0.1,
        **kw,
    )
