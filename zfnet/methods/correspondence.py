"""Correspondence analysis (arXiv version, Sec. 4.3 "Correspondence Analysis" and its table): does masking the
same object part in different images change the features in a consistent way?

For each image i and layer l, x_i are the layer's features - its rectified output (the feature maps the atlas
uses; for fc layers the ReLU after them), flattened - and x~_i those of the image with the part masked
(filled with `fill`, model-input units, in all channels). With e_i = x_i - x~_i,

    Delta_l = mean over ordered pairs (i, j), i != j, of  (1/D) * #{d : sign(e_i[d]) != sign(e_j[d])}

signs in {-1, 0, +1} (the paper's Hamming distance between sign vectors, divided by the feature length D so
that it reads as a fraction), and its std over those pairs. Lower = the part's removal changes the
representation the same way in every image. The baseline "random" masks, for each of `random_draws` draws, one
box at a random position - the same in every image - of the parts' median size; its Delta and std pool the
pairs of all draws.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import torch
from torch import nn

from ..errors import UsageError
from ..layers import features
from ..runtime import eval_mode

Box = tuple[int, int, int, int]  # (y0, x0, y1, x1) in model-input pixels, end-exclusive


@dataclass
class CorrespondenceResult:
    delta: dict[str, dict[str, float]]  # layer -> part (and "random") -> mean sign change
    std: dict[str, dict[str, float]]
    layers: list[str]
    parts: list[str]
    images: int
    fill: float
    random_boxes: list[Box] = field(default_factory=list)
    pairs: dict[str, torch.Tensor] = field(default_factory=dict, repr=False)  # "layer/part" -> per-pair values

    def to_json(self) -> dict:
        return {
            "delta": self.delta,
            "std": self.std,
            "layers": self.layers,
            "parts": self.parts,
            "images": self.images,
            "fill": self.fill,
            "random_boxes": [list(b) for b in self.random_boxes],
        }


def sign_change(eps: torch.Tensor) -> torch.Tensor:
    """Per ordered pair (i, j), i != j, of the rows of `eps` (N x D): the fraction of entries whose signs differ."""
    s = torch.sign(eps)
    n = s.shape[0]
    diff = torch.stack([(s[i][None] != s).double().mean(1) for i in range(n)])  # N x N
    return diff[~torch.eye(n, dtype=torch.bool)]


def mask(images: torch.Tensor, boxes: list[Box], fill: float) -> torch.Tensor:
    out = images.clone()
    for i, (y0, x0, y1, x1) in enumerate(boxes):
        out[i, :, y0:y1, x0:x1] = fill
    return out


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


def correspondence(
    model: nn.Module,
    images: torch.Tensor,
    *,
    parts: dict[str, list[Box]],
    layers: Sequence[str] = ("conv5", "fc7"),
    fill: float = 0.0,
    random_draws: int = 10,
    seed: int = 0,
    batch_size: int = 256,
) -> CorrespondenceResult:
    """Delta (see the module docstring) per layer for each part (`parts`: name -> one box per image of the
    batch) and for random boxes (arXiv Sec. 4.3)."""
    boxes = parts
    if images.dim() != 4 or images.shape[0] < 2:
        raise UsageError("correspondence needs N x C x H x W model input with at least 2 images")
    n, _, h, w = images.shape
    for name, bs in boxes.items():
        _check_boxes(name, bs, n, h, w)
    if not boxes:
        raise UsageError("correspondence needs at least one part")
    if random_draws < 0:
        raise UsageError("random_draws must be 0 or more")
    sizes = torch.tensor([[b[2] - b[0], b[3] - b[1]] for bs in boxes.values() for b in bs], dtype=torch.float)
    bh, bw = (int(v) for v in sizes.median(0).values)
    g = torch.Generator().manual_seed(seed)
    random_boxes = []
    for _ in range(random_draws):
        y0 = int(torch.randint(0, h - bh + 1, (1,), generator=g))
        x0 = int(torch.randint(0, w - bw + 1, (1,), generator=g))
        random_boxes.append((y0, x0, y0 + bh, x0 + bw))
    variants = {name: mask(images, bs, fill) for name, bs in boxes.items()}
    for k, b in enumerate(random_boxes):
        variants[f"random/{k}"] = mask(images, [b] * n, fill)
    layers = list(layers)

    def feats(x: torch.Tensor) -> dict[str, torch.Tensor]:
        out: dict[str, list[torch.Tensor]] = {l: [] for l in layers}
        for s in range(0, len(x), batch_size):
            f = features(model, x[s : s + batch_size], layers)
            for l in layers:
                out[l].append(f[l].flatten(1).double())
        return {l: torch.cat(v) for l, v in out.items()}

    with torch.no_grad(), eval_mode(model):
        base = feats(images)
        changed = {name: feats(x) for name, x in variants.items()}
    delta: dict[str, dict[str, float]] = {l: {} for l in layers}
    std: dict[str, dict[str, float]] = {l: {} for l in layers}
    pairs = {}
    for l in layers:
        for name in boxes:
            p = sign_change(base[l] - changed[name][l])
            pairs[f"{l}/{name}"] = p
            delta[l][name], std[l][name] = float(p.mean()), float(p.std())
        if random_boxes:
            p = torch.cat([sign_change(base[l] - changed[f"random/{k}"][l]) for k in range(len(random_boxes))])
            pairs[f"{l}/random"] = p
            delta[l]["random"], std[l]["random"] = float(p.mean()), float(p.std())
    return CorrespondenceResult(delta, std, layers, list(boxes), n, fill, random_boxes, pairs)
