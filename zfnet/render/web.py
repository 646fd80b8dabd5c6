"""The static web atlas: index.html + viewer.js + style.css + atlas-data.js, all read from disk (file://).
The page reads only saved artifacts: the manifest (as atlas-data.js) and the PNGs beside it."""

from __future__ import annotations

import json
import os
import shutil
from importlib import resources

from ..io import atomic_write_text

ASSETS = ("index.html", "viewer.js", "style.css")


def write_site(out: str, data: dict) -> str:
    """Write the viewer into `out`; `data` becomes window.ZFNET_ATLAS. Returns the index.html path."""
    web = resources.files("zfnet") / "web"
    for name in ASSETS:
        with resources.as_file(web / name) as src:
            shutil.copyfile(src, os.path.join(out, name + ".tmp"))
            os.replace(os.path.join(out, name + ".tmp"), os.path.join(out, name))
    # ensure_ascii escapes U+2028/2029 and every non-ASCII character, so the JSON is also valid JavaScript
    atomic_write_text(
        os.path.join(out, "atlas-data.js"), "window.ZFNET_ATLAS = " + json.dumps(data, ensure_ascii=True) + ";\n"
    )
    return os.path.join(out, "index.html")
