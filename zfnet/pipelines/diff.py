"""`zfnet diff` (issue 39): two models' units matched by what they respond to (`zfnet.methods.matching`), drawn as
a page in the atlas's style - the matched pairs' top-9 side by side, strongest match first, and the units gone and
new - from two activation indexes over the same images (`zfnet index`).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np

from .. import data as zdata
from ..data.preprocess import Preprocess
from ..errors import UsageError
from ..io import atomic_write_json, atomic_write_text
from ..methods.matching import match_units
from ..provenance import environment
from ..render.diff import diff_page, match_plot, top_strip
from ..settings import Settings, knob
from .index import ActivationIndex, open_index


@dataclass(frozen=True)
class DiffSettings(Settings):
    """How `zfnet diff` matches two indexes' units and shows them (issue 39; Li et al. 2016)."""

    method: ClassVar[str] = "diff"

    layers: tuple[str, ...] | None = knob(None, "layers matched, as conv5 or pairs a:b (none: the layers both have)")
    threshold: float = knob(0.5, "least correlation of a match (a unit without one is gone, or new)", low=0, high=1)
    k: int = knob(9, "top images shown per unit", low=1)
    names: tuple[str, ...] | None = knob(
        None,
        "what to call the two models on the page, as 'epoch 10,epoch 30' (none: A,B, or the weights files' names)",
        check=lambda v: "" if len(v) == 2 and all(v) else "must be two names, as 'epoch 10,epoch 30'",
    )
    pictures: bool = knob(True, "the units' top images on the page (off: the tables alone, quicker)")


def aligned(a: ActivationIndex, b: ActivationIndex, la: str, lb: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The two indexes' maxima of layers `la` and `lb` over the images both hold (matched by source data, split and
    index in it), and those images' numbers in `a`."""
    ka, va = a.values(la)
    kb, vb = b.values(lb)
    keys_a, keys_b = _keys(a, ka), _keys(b, kb)
    where_b = {k: i for i, k in enumerate(keys_b)}
    both = [(i, where_b[k]) for i, k in enumerate(keys_a) if k in where_b]
    if len(both) < 2:
        raise UsageError("the two indexes share fewer than 2 images; index the same --data with both models")
    ia, ib = np.array([i for i, _ in both]), np.array([j for _, j in both])
    return va[ia], vb[ib], ka[ia]


def _keys(idx: ActivationIndex, images: np.ndarray) -> list[tuple]:
    t = idx.table("SELECT image, source, index FROM images ORDER BY image")
    src = {s["number"]: (s["spec"], s["split"]) for s in idx.manifest["sources"]}
    by_image = dict(
        zip(t.column("image").to_pylist(), zip(t.column("source").to_pylist(), t.column("index").to_pylist()))
    )
    return [(*src[by_image[int(i)][0]], by_image[int(i)][1]) for i in images]


def run_diff(path_a: str, path_b: str, out: str, settings: DiffSettings | None = None, **changes: Any) -> dict:
    """Match every layer pair (`layers`: "L" or "LA:LB"; none: the layers both indexes have), write diff.json,
    the correlation plot and the page (index.html) into `out`; returns diff.json's content. Settings
    (`DiffSettings`) as a value or as keywords."""
    s = DiffSettings.build(settings, **changes)
    names = (s.names[0], s.names[1]) if s.names else ("A", "B")
    a, b = open_index(path_a), open_index(path_b)
    pairs = (
        [tuple(x.split(":", 1)) if ":" in x else (x, x) for x in s.layers]
        if s.layers
        else [(x, x) for x in a.layers if x in b.layers]
    )
    if not pairs:
        raise UsageError("the two indexes share no layer; name the pairs with --layers conv5:layer4")
    os.makedirs(os.path.join(out, "tiles"), exist_ok=True)
    result: dict = {"a": {"index": path_a, "model": a.manifest["model"], "name": names[0]},
                    "b": {"index": path_b, "model": b.manifest["model"], "name": names[1]},
                    "threshold": s.threshold, "settings": s.to_json(), "layers": {}}  # fmt: skip
    data_a = _dataset(a) if s.pictures else {}
    data_b = _dataset(b) if s.pictures else {}
    sections = []
    for la, lb in pairs:
        va, vb, _ = aligned(a, b, la, lb)
        m = match_units(va, vb, s.threshold)
        entry = {"a_layer": la, "b_layer": lb, "images": int(va.shape[0]), **m.to_json()}
        result["layers"][f"{la}:{lb}" if la != lb else la] = entry
        rows = []
        for ua, ub, r in zip(m.a, m.b, m.r):
            rows.append({"a": ua, "b": ub, "r": r, "a_tiles": _tiles(out, a, data_a, la, ua, s.k, "a"),
                         "b_tiles": _tiles(out, b, data_b, lb, ub, s.k, "b")})  # fmt: skip
        gone = [{"unit": u, "tiles": _tiles(out, a, data_a, la, u, s.k, "a")} for u in m.gone]
        new = [{"unit": u, "tiles": _tiles(out, b, data_b, lb, u, s.k, "b")} for u in m.new]
        sections.append({"a_layer": la, "b_layer": lb, "rows": rows, "gone": gone, "new": new, "matched": len(m.a),
                         "widths": m.widths, "images": int(va.shape[0])})  # fmt: skip
    match_plot(result, os.path.join(out, "matches.png"))
    result["figure"] = "matches.png"
    result["provenance"] = environment("cpu")
    atomic_write_json(os.path.join(out, "diff.json"), result)
    atomic_write_text(os.path.join(out, "index.html"), diff_page(result, sections, names))
    return result


def _dataset(idx: ActivationIndex) -> dict[int, zdata.ImageSet | None]:
    """Each source of the index opened again for its images' pictures (None where it cannot be: no tiles)."""
    pp = Preprocess.from_dict(idx.manifest["preprocess"])
    out: dict[int, zdata.ImageSet | None] = {}
    for s in idx.manifest["sources"]:
        try:
            out[s["number"]] = zdata.open_dataset(s["spec"], s["split"], pp)
        except UsageError:
            out[s["number"]] = None
    return out


def _tiles(out: str, idx: ActivationIndex, data: dict, layer: str, unit: int, k: int, side: str) -> str | None:
    """tiles/<side>-<layer>-<unit>.png: the unit's top-k images with a mark where its maximum is; None when the
    images cannot be opened."""
    if not data:
        return None
    top = idx.top(layer, unit, k)
    if top.num_rows == 0:
        return None
    wanted = ", ".join(str(int(i)) for i in top.column("image").to_pylist())
    rows = idx.table(f"SELECT image, source, index FROM images WHERE image IN ({wanted})")
    where = {i: (s, j) for i, s, j in zip(*(rows.column(c).to_pylist() for c in ("image", "source", "index")))}
    shape = idx.shapes[layer]
    pictures, marks = [], []
    for image, y, x in zip(*(top.column(c).to_pylist() for c in ("image", "y", "x"))):
        s, j = where[image]
        ds = data.get(s)
        if ds is None:
            return None
        pictures.append(ds.base(int(j)))
        marks.append(None if y is None or len(shape) != 3 else ((y + 0.5) / shape[1], (x + 0.5) / shape[2]))
    name = f"tiles/{side}-{layer.replace('/', '_')}-{unit}.png"
    top_strip(pictures, marks, os.path.join(out, name))
    return name


__all__ = ["DiffSettings", "aligned", "run_diff"]
