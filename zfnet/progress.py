"""Progress bars for long work (tqdm): images/s and ETA; silenced with ZFNET_PROGRESS=0 or --no-progress."""
from __future__ import annotations

import os
import sys

from tqdm.auto import tqdm

_enabled = os.environ.get("ZFNET_PROGRESS", "1") != "0"


def set_enabled(on: bool) -> None:
    global _enabled
    _enabled = on


def bar(total: int | None = None, desc: str = "", unit: str = "img", disable: bool = False, **kw) -> tqdm:
    return tqdm(total=total, desc=desc, unit=unit, unit_scale=False, dynamic_ncols=True, file=sys.stderr,
                disable=disable or not _enabled, leave=False, mininterval=0.5, smoothing=0.1, **kw)
