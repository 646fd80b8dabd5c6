"""Feature invariance (arXiv version, "Feature Invariance" and its figure): images translated vertically, scaled
and rotated by varying amounts; for each amount the Euclidean distance between the features of the original
and of the transformed image at a low and a high layer, and the probability of the true class.

Features are a layer's rectified output, flattened (as everywhere in zfnet). The paper transforms the images:
each model input is taken back to its pixels (`Preprocess.to_pixels`), transformed there about the image
centre, and preprocessed again, so the object moves and the mean image stays where it is; pixels the
transformation uncovers take `fill` (default the training mean pixel, grey; see `zfnet.pixels`):
    translate  vertical shift by an integer number of pixels (positive = down), no interpolation
    scale      zoom by a factor (>1 enlarges), bilinear
    rotate     by degrees (positive = counter-clockwise), bilinear
The untransformed reference is the image through the same round trip (equal to the input up to float
rounding), so that the identity (0 px, factor 1, 0 degrees) gives distance 0 by the same arithmetic as every
other value, with no special case.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import nn

from ..calling import api
from ..data.preprocess import Preprocess
from ..errors import UsageError
from ..layers import capture, features, paper_layers, read_maps
from ..pixels import (
    FILL_HELP,
    Fill,
    WithPreprocess,
    fill_pixel_map,
    fill_pixels,
    fill_problem,
    fill_source,
    parse_fill,
    pixel_preprocess,
    split_model,
)
from ..runtime import eval_mode
from ..settings import Settings, knob

TRANSFORMS = ("translate", "scale", "rotate")
IDENTITY = {"translate": 0.0, "scale": 1.0, "rotate": 0.0}
# the paper's figure spans about these ranges (its x axes)
DEFAULT_VALUES: dict[str, list[float]] = {
    "translate": [-60, -40, -20, -10, 0, 10, 20, 40, 60],  # px of a 224 px input
    "scale": [0.6, 0.8, 0.9, 1.0, 1.1, 1.2, 1.4, 1.6, 1.8],
    "rotate": [0, 45, 90, 135, 180, 225, 270, 315, 360],
}


@dataclass
class TransformCurve:
    """One transformation's sweep: per layer the distance to the untransformed features, and p(true class)."""

    transform: str
    values: list[float]
    distance: dict[str, torch.Tensor]  # layer -> N x V Euclidean distance to the untransformed features
    prob: torch.Tensor  # N x V probability of the true class

    def to_json(self) -> dict:
        return {
            "transform": self.transform,
            "values": self.values,
            "distance": {l: d.tolist() for l, d in self.distance.items()},
            "prob": self.prob.tolist(),
        }


@dataclass
class InvarianceResult:
    """The invariance figure's curves for a batch: one `TransformCurve` per transformation."""

    layers: list[str]
    labels: torch.Tensor  # N: the class whose probability the curves show
    fill: str  # "grey", "mean-image" or "pixels"
    curves: list[TransformCurve]
    predicted: list[bool] | None = None  # per image: its class is the predicted one (it had no label)
    fill_pixels: list[float] | None = None  # the uncovered pixels' values per channel (None: the mean image)
    settings: InvarianceSettings = field(default_factory=lambda: InvarianceSettings())
    maps: dict[str, dict] = field(default_factory=dict)  # layer -> the tensor read (`zfnet.layers.read_maps`)
    fill_source: str = ""  # where the uncovered pixels' values come from (`zfnet.pixels.fill_source`)

    def curve(self, transform: str) -> TransformCurve:
        return next(c for c in self.curves if c.transform == transform)

    def to_json(self) -> dict:
        return {
            "settings": self.settings.to_json(),
            "feature_maps": self.maps,
            "layers": self.layers,
            "labels": self.labels.tolist(),
            "predicted": self.predicted or [False] * len(self.labels),
            "fill": self.fill,
            "fill_pixels": self.fill_pixels,
            "fill_source": self.fill_source,
            "space": "pixels",
            "transforms": [
                {
                    **c.to_json(),
                    "layers": self.layers,
                    "fill": self.fill,
                    "labels": self.labels.tolist(),
                    "predicted": self.predicted or [False] * len(self.labels),
                }
                for c in self.curves
            ],
        }


def check_transforms(transforms: Sequence[str]) -> None:
    """Refuse a transformation the invariance analysis does not know (one line naming the known ones)."""
    bad = [t for t in transforms if t not in TRANSFORMS]
    if bad:
        raise UsageError(f"unknown transform {bad[0]!r}; choose one of {', '.join(TRANSFORMS)}")


def transform_pixels(pixels: torch.Tensor, transform: str, value: float, fill: torch.Tensor) -> torch.Tensor:
    """`pixels` (N x C x H x W, pixel space) translated, scaled or rotated by `value` about the centre (see the
    module docstring); uncovered pixels take `fill` (C x H x W pixel values at those positions)."""
    check_transforms([transform])
    n, c, h, w = pixels.shape
    fill = fill.to(pixels).expand(n, c, h, w)
    if transform == "translate":
        dy = int(round(value))
        out = fill.clone()
        if abs(dy) < h:
            if dy >= 0:
                out[:, :, dy:] = pixels[:, :, : h - dy]
            else:
                out[:, :, : h + dy] = pixels[:, :, -dy:]
        return out
    if transform == "scale" and value <= 0:
        raise UsageError(f"scale factor {value} must be positive")
    # inverse map: output pixel -> input position, in normalized coordinates about the centre
    if transform == "scale":
        theta = torch.tensor([[1 / value, 0.0, 0.0], [0.0, 1 / value, 0.0]])
    else:
        a = torch.deg2rad(torch.tensor(float(value)))
        cos, sin = torch.cos(a), torch.sin(a)
        # counter-clockwise on screen (y down): sample the source at R(-a) applied to the output position,
        # with the aspect ratio of non-square inputs kept
        theta = torch.tensor([[cos, -sin * h / w, 0.0], [sin * w / h, cos, 0.0]])
    grid = F.affine_grid(theta[None].expand(n, 2, 3).to(pixels), [n, c, h, w], align_corners=False)
    # sample (pixels - fill) with zeros outside, then add the fill back: uncovered pixels = fill, and a pixel
    # half outside mixes the image with the fill as bilinear interpolation mixes neighbours
    return F.grid_sample(pixels - fill, grid, mode="bilinear", padding_mode="zeros", align_corners=False) + fill


def transform_images(
    images: torch.Tensor,
    transform: str,
    value: float,
    *,
    preprocess: Preprocess,
    fill: Fill = "grey",
) -> torch.Tensor:
    """Model input (N x C x H x W) -> the model input of the transformed images: back to pixels, transformed
    there (`transform_pixels`), preprocessed again."""
    pixels = preprocess.to_pixels(images.float())
    moved = transform_pixels(pixels, transform, value, fill_pixel_map(fill, preprocess, images))
    return preprocess.from_pixels(moved).to(images.dtype)


def _transforms_problem(value: object) -> str:
    ok = isinstance(value, tuple) and value and all(t in TRANSFORMS for t in value)
    return "" if ok else f"must be one or more of {', '.join(TRANSFORMS)}"


@dataclass(frozen=True)
class InvarianceSettings(Settings):
    """The arXiv invariance figure (Sec. 4.4): which transformations, the layers whose feature distance is
    plotted, and the pixels a transformation uncovers. The values swept are an input (`values=`, default
    `DEFAULT_VALUES`)."""

    method: ClassVar[str] = "invariance"

    transforms: tuple[str, ...] = knob(
        TRANSFORMS, f"transformations swept: {', '.join(TRANSFORMS)}", check=_transforms_problem
    )
    layers: tuple[str, ...] | None = knob(
        None,
        "layers whose feature distance is plotted (none: the figure's conv1 and fc7, else the first and top "
        "stage layers)",
    )
    fill: Fill = knob("grey", "pixels a transformation uncovers: " + FILL_HELP, parse=parse_fill, check=fill_problem)


def _targets(
    model: nn.Module, images: torch.Tensor, labels: torch.Tensor | Sequence[int | None] | None
) -> tuple[torch.Tensor, list[bool]]:
    """Each image's class (its label, else the class the model predicts on it), and which were predicted."""
    given = [None] * len(images) if labels is None else [None if l is None else int(l) for l in labels]
    predicted = [l is None for l in given]
    if any(predicted) and images.dim() == 4 and len(given) == len(images):
        with torch.no_grad(), eval_mode(model):
            top = model(images).argmax(1).tolist()
        given = [top[i] if l is None else l for i, l in enumerate(given)]
    return torch.as_tensor(given, dtype=torch.long), predicted


@api
def invariance(
    model: nn.Module | WithPreprocess,
    images: torch.Tensor,
    *,
    labels: torch.Tensor | Sequence[int | None] | None = None,
    values: dict[str, Sequence[float]] | None = None,
    preprocess: Preprocess | None = None,
    settings: InvarianceSettings | None = None,
    **changes: Any,
) -> InvarianceResult:
    """For a batch of model input (N x C x H x W) with their true classes: under each transformation and value
    (`values[t]`, default `DEFAULT_VALUES[t]`), the distance to the untransformed features per layer and
    p(true class) (arXiv Sec. 4.4). An image without a label (None, or `labels` None) follows the class the
    model predicts on it untransformed. The transformations act on the pixels, so the preprocessing is needed:
    pass an opened model (`zfnet.pretrained()`, `zfnet.open_model`) or `preprocess=`. Settings
    (`InvarianceSettings`) as a value or as keywords."""
    st = InvarianceSettings.build(settings, **changes)
    model, pp = split_model(model, preprocess)
    if st.layers is None:  # the figure's layers 1 and 7, or the first and top stage layers standing for them
        st = st.replace(layers=paper_layers(model, ("conv1", "fc7"), tuple(images.shape[1:])))
    assert st.layers is not None
    transforms, layers, fill = st.transforms, list(st.layers), st.fill
    pp = pixel_preprocess(model, pp, "invariance's transformations")
    labels, predicted = _targets(model, images, labels)
    if images.dim() != 4 or len(labels) != len(images):
        raise UsageError(
            f"invariance takes N x C x H x W images with one label each (got {tuple(images.shape)}, "
            f"{len(labels)} labels)"
        )
    curves = []
    fill_map = fill_pixel_map(fill, pp, images)
    pixels = pp.to_pixels(images.float())
    with torch.no_grad(), eval_mode(model):
        reference = pp.from_pixels(pixels).to(images.dtype)  # the images through the same round trip
        base = {l: f.flatten(1) for l, f in features(model, reference, layers).items()}
        for t in transforms:
            vals = list(DEFAULT_VALUES[t] if values is None or t not in values else values[t])
            if not vals:
                raise UsageError(f"invariance needs at least one value for {t}")
            dist = {l: torch.zeros(len(images), len(vals)) for l in layers}
            prob = torch.zeros(len(images), len(vals))
            for k, v in enumerate(vals):
                x = pp.from_pixels(transform_pixels(pixels, t, v, fill_map)).to(images.dtype)
                with capture(model, layers, x, stop=False) as found:
                    logits = model(x)
                p = F.softmax(logits.float(), 1)
                if int(labels.max()) >= p.shape[1]:
                    raise UsageError(f"label {int(labels.max())} does not exist: the model has {p.shape[1]} classes")
                prob[:, k] = p[torch.arange(len(labels)), labels].cpu()
                for l in layers:
                    dist[l][:, k] = (found[l].flatten(1) - base[l]).norm(dim=1).cpu()
            curves.append(TransformCurve(t, vals, dist, prob))
    shown = fill_pixels(fill, pp)
    name = fill if isinstance(fill, str) else "pixels"
    maps = read_maps(model, list(layers), reference)
    return InvarianceResult(
        list(layers), labels, name, curves, predicted, list(shown) if shown else None, st, maps, fill_source(fill, pp)
    )
