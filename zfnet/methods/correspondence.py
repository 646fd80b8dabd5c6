"""Correspondence analysis (arXiv version, Sec. 4.3 "Correspondence Analysis" and its table): does masking the
same object part in different images change the features in a consistent way?

For each image i and layer l, x_i are the layer's features - its rectified output (the feature maps the atlas
uses; for fc layers the ReLU after them), flattened - and x~_i those of the image with the part masked by a
grey square (`fill`, pasted in pixel space as occlusion's, see `zfnet.pixels`). With e_i = x_i - x~_i,

    Delta_l = mean over ordered pairs (i, j), i != j, of  (1/D) * #{d : sign(e_i[d]) != sign(e_j[d])}

signs in {-1, 0, +1} (the paper's Hamming distance between sign vectors, divided by the feature length D so
that it reads as a fraction), and its std over those pairs. Lower = the part's removal changes the
representation the same way in every image.

The baseline compares "to random parts of the object": in each of `random_draws` draws every image gets its own
box of the parts' median size, placed uniformly at random on the object - inside the image's object box when
one is given (`objects`), else inside the hull of its named parts grown to at least the box size - and
clipped to the image. Each pair's value is its mean over the draws, so Delta_random and its std are a mean
and a spread over image pairs exactly as for a part (the draws' own scatter is averaged out, not added in).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, ClassVar

import torch
from torch import nn

from ..calling import api
from ..data.preprocess import Preprocess
from ..errors import UsageError
from ..layers import features, paper_layers, read_maps
from ..pixels import FILL_HELP, Fill, WithPreprocess, fill_problem, parse_fill, resolve_fill, split_model
from ..runtime import eval_mode
from ..settings import Settings, knob

Box = tuple[int, int, int, int]  # (y0, x0, y1, x1) in model-input pixels, end-exclusive


@dataclass
class CorrespondenceResult:
    delta: dict[str, dict[str, float]]  # layer -> part (and "random") -> mean sign change
    std: dict[str, dict[str, float]]
    layers: list[str]
    parts: list[str]
    images: int
    fill: str  # "grey", "mean-image" or "pixels"
    random_boxes: list[list[Box]] = field(default_factory=list)  # per draw, one box per image
    pairs: dict[str, torch.Tensor] = field(default_factory=dict, repr=False)  # "layer/part" -> per-pair values
    regions: list[Box] = field(default_factory=list)  # per image, where its random boxes were placed
    region_source: str = "parts"  # "object": the object boxes given; "parts": the hull of the named parts;
    # "+mask ...": inside it, only positions whose box is at least half the object's pixels
    fill_pixels: list[float] | None = None
    fill_source: str = ""  # where the fill's values come from (`zfnet.pixels.fill_source`)
    settings: CorrespondenceSettings = field(default_factory=lambda: CorrespondenceSettings())
    maps: dict[str, dict] = field(default_factory=dict)  # layer -> the tensor read (`zfnet.layers.read_maps`)

    def to_json(self) -> dict:
        return {
            "settings": self.settings.to_json(),
            "feature_maps": self.maps,
            "delta": self.delta,
            "std": self.std,
            "layers": self.layers,
            "parts": self.parts,
            "images": self.images,
            "fill": self.fill,
            "fill_pixels": self.fill_pixels,
            "fill_source": self.fill_source,
            "random_boxes": [[list(b) for b in draw] for draw in self.random_boxes],
            "random_regions": [list(b) for b in self.regions],
            "random_region_source": self.region_source,
        }


def sign_change(eps: torch.Tensor) -> torch.Tensor:
    """Per ordered pair (i, j), i != j, of the rows of `eps` (N x D): the fraction of entries whose signs differ."""
    s = torch.sign(eps)
    n = s.shape[0]
    diff = torch.stack([(s[i][None] != s).double().mean(1) for i in range(n)])  # N x N
    return diff[~torch.eye(n, dtype=torch.bool)]


def mask(images: torch.Tensor, boxes: list[Box], fill: torch.Tensor) -> torch.Tensor:
    """Each image with its box replaced by the fill (model input, C x H x W or a number)."""
    out = images.clone()
    fill = torch.as_tensor(fill, dtype=images.dtype).expand(images.shape[1:])
    for i, (y0, x0, y1, x1) in enumerate(boxes):
        out[i, :, y0:y1, x0:x1] = fill[:, y0:y1, x0:x1]
    return out


def object_regions(parts: dict[str, list[Box]], n: int, size: tuple[int, int], h: int, w: int) -> list[Box]:
    """Per image, where its random parts go when no object box is given: the hull of its named parts, grown
    symmetrically (then shifted inside the image) to at least `size`."""
    out = []
    for i in range(n):
        boxes = [bs[i] for bs in parts.values()]
        y0, x0 = min(b[0] for b in boxes), min(b[1] for b in boxes)
        y1, x1 = max(b[2] for b in boxes), max(b[3] for b in boxes)
        out.append(_grow((y0, x0, y1, x1), size, h, w))
    return out


def _grow(box: Box, size: tuple[int, int], h: int, w: int) -> Box:
    """`box` grown about its centre to at least `size` (bh, bw), moved to lie inside the h x w image."""
    y0, x0, y1, x1 = box

    def axis(a0: int, a1: int, want: int, limit: int) -> tuple[int, int]:
        if a1 - a0 >= want:
            return a0, a1
        a0 -= (want - (a1 - a0)) // 2
        a0 = min(max(0, a0), limit - want)
        return a0, a0 + want

    (y0, y1), (x0, x1) = axis(y0, y1, size[0], h), axis(x0, x1, size[1], w)
    return y0, x0, y1, x1


def random_parts(regions: list[Box], size: tuple[int, int], draws: int, seed: int) -> list[list[Box]]:
    """`draws` x images boxes of `size`, each uniform over the positions that keep it inside its image's region
    (a region smaller than the box on an axis: the box centred on it there)."""
    g = torch.Generator().manual_seed(seed)
    bh, bw = size
    out = []
    for _ in range(draws):
        draw = []
        for y0, x0, y1, x1 in regions:
            ys = int(torch.randint(y0, y1 - bh + 1, (1,), generator=g)) if y1 - y0 >= bh else (y0 + y1 - bh) // 2
            xs = int(torch.randint(x0, x1 - bw + 1, (1,), generator=g)) if x1 - x0 >= bw else (x0 + x1 - bw) // 2
            draw.append((ys, xs, ys + bh, xs + bw))
        out.append(draw)
    return out


def random_parts_on_mask(
    regions: list[Box], masks: torch.Tensor, size: tuple[int, int], draws: int, seed: int
) -> tuple[list[list[Box]], int]:
    """Like `random_parts`, but each box uniform over the positions inside its image's region where at least
    half of its pixels are the object's (`masks`: N x H x W, True on the object); an image with no such position
    draws from its whole region. Returns the draws and how many images fell back so."""
    g = torch.Generator().manual_seed(seed)
    bh, bw = size
    n, h, w = masks.shape
    need = (bh * bw + 1) // 2
    integral = torch.zeros(n, h + 1, w + 1, dtype=torch.long)
    integral[:, 1:, 1:] = masks.long().cumsum(1).cumsum(2)
    cover = (  # object pixels in the box at each top-left corner: N x (H - bh + 1) x (W - bw + 1)
        integral[:, bh:, bw:] - integral[:, :-bh, bw:] - integral[:, bh:, :-bw] + integral[:, :-bh, :-bw]
    )
    allowed = []
    fallbacks = 0
    for i, (y0, x0, y1, x1) in enumerate(regions):
        ok = torch.zeros_like(cover[i], dtype=torch.bool)
        top, left = max(0, y0), max(0, x0)
        ok[top : max(top, y1 - bh + 1), left : max(left, x1 - bw + 1)] = True
        good = (ok & (cover[i] >= need)).nonzero()
        if not len(good):
            fallbacks += 1
        allowed.append(good)
    plain = random_parts(regions, size, draws, seed) if fallbacks else []
    out = []
    for d in range(draws):
        draw = []
        for i, good in enumerate(allowed):
            if len(good):
                y, x = (int(v) for v in good[int(torch.randint(len(good), (1,), generator=g))])
                draw.append((y, x, y + bh, x + bw))
            else:
                draw.append(plain[d][i])
        out.append(draw)
    return out, fallbacks


def _check_boxes(name: str, boxes: list[Box], n: int, h: int, w: int) -> None:
    if len(boxes) != n:
        raise UsageError(f"part {name!r} has {len(boxes)} boxes for {n} images; give one box per image")
    for b in boxes:
        y0, x0, y1, x1 = b
        if not (0 <= y0 < y1 <= h and 0 <= x0 < x1 <= w):
            raise UsageError(
                f"part {name!r} box {list(b)} is not inside the {h}x{w} model input "
                "(y0, x0, y1, x1; end-exclusive, 0 <= y0 < y1 <= H)"
            )


@dataclass(frozen=True)
class CorrespondenceSettings(Settings):
    """The arXiv correspondence analysis (Sec. 4.3, Table 7): the layers compared, what masks a part, and the
    random control's draws."""

    method: ClassVar[str] = "correspondence"

    layers: tuple[str, ...] | None = knob(
        None, "layers whose feature changes are compared (none: Table 7's conv5 and fc7, else the top stage layer)"
    )
    fill: Fill = knob("grey", "what masks a part: " + FILL_HELP, parse=parse_fill, check=fill_problem)
    random_draws: int = knob(10, "random parts drawn on the object per image, the control row", low=0)
    seed: int = knob(0, "the random parts' draw", low=0)


def _random_regions(boxes: dict[str, list[Box]], objects, n: int, h: int, w: int) -> tuple[tuple[int, int], list]:
    """The random control's part size (the named parts' median) and, per image, where its random parts go: the
    object's box when given, else the named parts' hull, grown to hold one part."""
    sizes = torch.tensor([[b[2] - b[0], b[3] - b[1]] for bs in boxes.values() for b in bs], dtype=torch.float)
    bh, bw = (int(v) for v in sizes.median(0).values)
    if objects is None:
        return (bh, bw), object_regions(boxes, n, (bh, bw), h, w)
    _check_boxes("object", list(objects), n, h, w)
    return (bh, bw), [_grow(b, (bh, bw), h, w) for b in objects]


def _flat_features(model: nn.Module, x: torch.Tensor, layers: list[str], batch_size: int) -> dict[str, torch.Tensor]:
    """Each layer's features of `x`, one flat float64 row per image, in batches."""
    out: dict[str, list[torch.Tensor]] = {l: [] for l in layers}
    for s in range(0, len(x), batch_size):
        f = features(model, x[s : s + batch_size], layers)
        for l in layers:
            out[l].append(f[l].flatten(1).double())
    return {l: torch.cat(v) for l, v in out.items()}


def _draw_random_parts(
    regions: list[Box], size: tuple[int, int], object_masks: torch.Tensor | None, draws: int, seed: int, nhw: tuple
) -> tuple[list[list[Box]], int | None]:
    """The random parts' boxes: uniform in each image's region, or (object masks given) at least half on the object;
    with how many images had no such position (None without masks)."""
    if object_masks is None:
        return random_parts(regions, size, draws, seed), None
    if tuple(object_masks.shape) != nhw:
        n, h, w = nhw
        raise UsageError(f"object_masks has shape {tuple(object_masks.shape)}; pass one {h}x{w} mask per image")
    return random_parts_on_mask(regions, object_masks.bool().cpu(), size, draws, seed)


def _deltas(base: dict, changed: dict, layers: list[str], parts: list[str], draws: int) -> tuple[dict, dict, dict]:
    """Delta_l and its spread per layer for each part and for the random parts (each pair's mean over the draws:
    a spread over pairs, as for a part), with the per-pair values."""
    delta: dict[str, dict[str, float]] = {l: {} for l in layers}
    std: dict[str, dict[str, float]] = {l: {} for l in layers}
    pairs = {}
    for l in layers:
        for name in parts:
            p = sign_change(base[l] - changed[name][l])
            pairs[f"{l}/{name}"] = p
            delta[l][name], std[l][name] = float(p.mean()), float(p.std())
        if draws:
            p = torch.stack([sign_change(base[l] - changed[f"random/{k}"][l]) for k in range(draws)]).mean(0)
            pairs[f"{l}/random"] = p
            delta[l]["random"], std[l]["random"] = float(p.mean()), float(p.std())
    return delta, std, pairs


@api
def correspondence(
    model: nn.Module | WithPreprocess,
    images: torch.Tensor,
    *,
    parts: dict[str, list[Box]],
    objects: list[Box] | None = None,
    object_masks: torch.Tensor | None = None,
    preprocess: Preprocess | None = None,
    settings: CorrespondenceSettings | None = None,
    batch_size: int = 256,
    **changes: Any,
) -> CorrespondenceResult:
    """Delta (see the module docstring) per layer for each part (`parts`: name -> one box per image of the
    batch) and for random parts of the object (`objects`: one box per image, else the parts' hull; with
    `object_masks`, N x H x W True on the object, each random box covers at least half object pixels) (arXiv
    Sec. 4.3). `model` may be an opened model (its preprocessing gives the grey), else pass `preprocess`.
    Settings (`CorrespondenceSettings`) as a value or as keywords."""
    st = CorrespondenceSettings.build(settings, **changes)
    model, pp = split_model(model, preprocess)
    if st.layers is None:  # Table 7's layers 5 and 7, or the top stage layer standing for them
        st = st.replace(layers=paper_layers(model, ("conv5", "fc7"), tuple(images.shape[1:])))
    assert st.layers is not None
    layers, fill, random_draws, seed = list(st.layers), st.fill, st.random_draws, st.seed
    boxes = parts
    if images.dim() != 4 or images.shape[0] < 2:
        raise UsageError("correspondence needs N x C x H x W model input with at least 2 images")
    n, _, h, w = images.shape
    for name, bs in boxes.items():
        _check_boxes(name, bs, n, h, w)
    if not boxes:
        raise UsageError("correspondence needs at least one part")
    size, regions = _random_regions(boxes, objects, n, h, w)
    random_boxes, fallbacks = _draw_random_parts(regions, size, object_masks, random_draws, seed, (n, h, w))
    fill_map, fill_name, shown, fill_from = resolve_fill(model, fill, pp, images, "correspondence's grey mask")
    variants = {name: mask(images, bs, fill_map) for name, bs in boxes.items()}
    for k, draw in enumerate(random_boxes):
        variants[f"random/{k}"] = mask(images, draw, fill_map)

    with torch.no_grad(), eval_mode(model):
        base = _flat_features(model, images, layers, batch_size)
        changed = {name: _flat_features(model, x, layers, batch_size) for name, x in variants.items()}
    delta, std, pairs = _deltas(base, changed, layers, list(boxes), len(random_boxes))
    source = "object" if objects is not None else "parts"
    if fallbacks is not None:
        source += f"+mask ({fallbacks} of {n} images had no position with half object pixels: their whole region)"
    return CorrespondenceResult(
        delta,
        std,
        layers,
        list(boxes),
        n,
        fill_name,
        random_boxes,
        pairs,
        regions,
        source,
        shown,
        fill_from,
        st,
        read_maps(model, layers, images),
    )
