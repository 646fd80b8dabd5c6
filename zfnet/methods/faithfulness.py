"""Faithfulness of a class-level map (issue 36): deletion and insertion curves (Petsiuk, Das and Saenko, "RISE",
BMVC 2018). Pixels are removed (deletion: replaced by the fill) or revealed (insertion: put back into an image of
the fill) in the map's order, most important first, in equal steps, and p(class) is recorded after each; the same
for random orders is the baseline. A faithful map makes p fall fast under deletion (low area) and rise fast under
insertion (high area). Deletion with a constant fill is Quantus's `PixelFlipping` (tests/test_evidence.py)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import nn

from ..calling import api
from ..errors import UsageError
from ..pixels import FILL_HELP, Fill, WithPreprocess, fill_problem, parse_fill, resolve_fill, split_model
from ..runtime import eval_mode
from ..settings import Settings, knob


@dataclass(frozen=True)
class FaithfulnessSettings(Settings):
    """Deletion and insertion (RISE, Sec. 4.1): how many steps, what replaces a pixel, the random baseline."""

    method: ClassVar[str] = "faithfulness"

    steps: int = knob(16, "the pixels are changed in this many equal steps (p is read after each)", low=1)
    fill: Fill = knob("grey", "what a deleted pixel becomes: " + FILL_HELP, parse=parse_fill, check=fill_problem)
    random_orders: int = knob(4, "random orders whose mean curve is the baseline", low=0)
    seed: int = knob(0, "the random orders", low=0)


@dataclass
class Curves:
    """One image's curves: p(target) after 0, 1, ..., steps steps, for the map's order and the random baseline."""

    target: int
    fractions: list[float]
    deletion: list[float]
    insertion: list[float]
    random_deletion: list[float] | None
    random_insertion: list[float] | None

    def to_json(self) -> dict:
        return {
            "target": self.target,
            "fractions": self.fractions,
            "deletion": self.deletion,
            "insertion": self.insertion,
            "random_deletion": self.random_deletion,
            "random_insertion": self.random_insertion,
            "auc": {k: area(self.fractions, v) for k, v in self.curves().items()},
        }

    def curves(self) -> dict[str, list[float]]:
        out = {"deletion": self.deletion, "insertion": self.insertion}
        if self.random_deletion is not None and self.random_insertion is not None:
            out |= {"random_deletion": self.random_deletion, "random_insertion": self.random_insertion}
        return out


def area(fractions: list[float], values: list[float]) -> float:
    """Area under a curve over the fraction of pixels changed, by the trapezoid rule."""
    return float(
        torch.trapezoid(torch.tensor(values, dtype=torch.float64), torch.tensor(fractions, dtype=torch.float64))
    )


@dataclass
class Faithfulness:
    """Per image its curves (`images`), the settings, and where the fill came from."""

    images: list[Curves]
    settings: FaithfulnessSettings = field(default_factory=lambda: FaithfulnessSettings())
    fill: str = "grey"
    fill_source: str = ""

    def to_json(self) -> dict:
        return {
            "settings": self.settings.to_json(),
            "fill": self.fill,
            "fill_source": self.fill_source,
            "images": [c.to_json() for c in self.images],
            "median_auc": self.median_auc(),
        }

    def median_auc(self) -> dict[str, float]:
        """Per curve (deletion, insertion, their random baselines), the median area over the images."""
        areas = [c.to_json()["auc"] for c in self.images]
        if not areas:
            return {}
        return {k: float(torch.tensor([a[k] for a in areas], dtype=torch.float64).median()) for k in areas[0]}


@api
def faithfulness(
    model: nn.Module | WithPreprocess,
    images: torch.Tensor,
    *,
    maps: torch.Tensor,
    target: int | list[int] | None = None,
    preprocess=None,
    settings: FaithfulnessSettings | None = None,
    batch_size: int = 64,
    **changes: Any,
) -> Faithfulness:
    """Deletion and insertion curves of `maps` (N x H x W importance, higher first; ties to the lower pixel index)
    for a batch of model input `images` and their `target` classes (default: each image's predicted class), with
    the mean of `random_orders` seeded random orders as the baseline. Settings (`FaithfulnessSettings`) as a value
    or as keywords."""
    s = FaithfulnessSettings.build(settings, **changes)
    net, pp = split_model(model, preprocess)
    n, _, h, w = images.shape
    if maps.shape != (n, h, w):
        raise UsageError(f"maps has shape {tuple(maps.shape)}; pass one {h}x{w} importance map per image")
    fill_map, fill_name, _, source = resolve_fill(net, s.fill, pp, images, "faithfulness's deleted pixels")
    if target is None:  # each image's predicted class
        with torch.no_grad(), eval_mode(net):
            targets = net(images).argmax(1).tolist()
    else:
        targets = [int(target)] * n if isinstance(target, int) else [int(t) for t in target]
    counts = [round(k * h * w / s.steps) for k in range(s.steps + 1)]
    fractions = [c / (h * w) for c in counts]
    g = torch.Generator().manual_seed(s.seed)
    out = []
    for i in range(n):
        order = torch.argsort(-maps[i].flatten().double(), stable=True)
        x = images[i]
        dele, ins = _curves(net, x, fill_map, order, counts, targets[i], batch_size)
        rd = ri = None
        if s.random_orders:
            runs = [_curves(net, x, fill_map, torch.randperm(h * w, generator=g), counts, targets[i], batch_size)
                    for _ in range(s.random_orders)]  # fmt: skip
            rd = torch.tensor([r[0] for r in runs]).mean(0).tolist()
            ri = torch.tensor([r[1] for r in runs]).mean(0).tolist()
        out.append(Curves(targets[i], fractions, dele, ins, rd, ri))
    return Faithfulness(out, s, fill_name, source)


def _curves(net, x, fill_map, order, counts, target, batch_size) -> tuple[list[float], list[float]]:
    """p(target) after each step of deletion (pixels in `order` replaced by the fill) and of insertion (the fill
    image with those pixels put back)."""
    h, w = x.shape[-2:]
    changed = torch.zeros(len(counts), h * w, dtype=torch.bool)
    for k, c in enumerate(counts):
        changed[k, order[:c]] = True
    changed = changed.view(len(counts), 1, h, w).to(x.device)
    deleted = torch.where(changed, fill_map.to(x), x)
    inserted = torch.where(changed, x, fill_map.to(x))
    return _p(net, deleted, target, batch_size), _p(net, inserted, target, batch_size)


def _p(net, xs: torch.Tensor, target: int, batch_size: int) -> list[float]:
    with torch.no_grad(), eval_mode(net):
        probs = [F.softmax(net(xs[k : k + batch_size]).float(), 1)[:, target] for k in range(0, len(xs), batch_size)]
    return torch.cat(probs).double().cpu().tolist()


__all__ = ["Faithfulness", "FaithfulnessSettings", "area", "faithfulness"]
