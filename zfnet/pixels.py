"""Pixel space for the methods that change the image (Sec. 4.2's grey square, the arXiv invariance transforms):
the model input mapped back to the pixels it was made from, and a fill given in pixels mapped forward.

The methods take model input (preprocessed images) as every method does; to paste a grey square or to move the
object they need the preprocessing too: `preprocess=`, or an opened model (`zfnet.open_model`,
`zfnet.pretrained()`: anything with `.model` and `.preprocess`) in place of the module.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Protocol

import torch
from torch import nn

from .data.preprocess import Preprocess
from .errors import UsageError

# what `fill=` takes: "grey" (the training mean pixel per channel), "mean-image" (0 in model-input units: the
# per-pixel mean image, or the channel mean), a pixel value 0-255 (all channels) or one per channel
FILL_CHOICES = "grey, mean-image, a pixel value 0-255, or one value per channel (R,G,B)"


class WithPreprocess(Protocol):
    """An opened model: `zfnet.Opened`, `zfnet.pretrained()`'s result."""

    model: nn.Module
    preprocess: Preprocess


Fill = str | float | Sequence[float]


def split_model(model: Any, preprocess: Preprocess | None = None) -> tuple[nn.Module, Preprocess | None]:
    """(module, preprocessing) from a module or an opened model (`.model` + `.preprocess`); `preprocess` wins."""
    if not isinstance(model, nn.Module) and isinstance(getattr(model, "model", None), nn.Module):
        return model.model, preprocess or getattr(model, "preprocess", None)
    return model, preprocess


def pixel_preprocess(module: nn.Module, preprocess: Preprocess | None, what: str) -> Preprocess:
    """The preprocessing that maps pixels to `module`'s input: the one given, else the model family's default
    when that one knows the training mean (torchvision / timm normalisation); a paper-style model (its mean
    image comes with its weights) must be given its own."""
    if preprocess is not None:
        return preprocess
    from .weights import default_preprocess

    pp = default_preprocess(module)
    if pp.mean_image is None and pp.channel_mean is None:
        raise UsageError(
            f"{what} works in pixels and this model's mean image is not known: pass preprocess= (or the opened "
            "model, e.g. zfnet.pretrained()) in place of the module"
        )
    return pp


FILL_HELP = (
    "grey (the training mean pixel per channel, pasted in pixel space), mean-image (0 in model-input units), or "
    "pixel values 0-255 (one, or one per channel: 124,116,104)"
)


def parse_fill(text: str) -> str | float | tuple[float, ...]:
    """A fill from text (the command line, a URL): a name, one pixel value or one per channel (comma-separated).
    Text that is neither stays text, for `fill_problem` to refuse."""
    if text in ("grey", "gray", "mean-image"):
        return "grey" if text == "gray" else text
    try:
        values = tuple(float(v) for v in text.split(","))
    except ValueError:
        return text
    return values[0] if len(values) == 1 else values


def fill_problem(fill: object) -> str:
    """ "" for a fill `fill=` takes (see FILL_CHOICES), else what is wrong (the pixel values' count is checked
    against the model's channels when it is used)."""
    if isinstance(fill, str):
        return "" if fill in ("grey", "gray", "mean-image") else f"must be {FILL_CHOICES}"
    values = fill if isinstance(fill, (tuple, list)) else (fill,)
    ok = values and all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in values)
    if not ok or not all(0 <= v <= 255 for v in values):  # NaN fails this too
        return f"must be {FILL_CHOICES}"
    return ""


def fill_pixels(fill: Fill, pp: Preprocess) -> tuple[float, ...] | None:
    """The fill as pixel values per channel (None for "mean-image", which is not uniform in pixels)."""
    if isinstance(fill, str):
        if fill in ("grey", "gray"):
            return pp.grey
        if fill == "mean-image":
            return None
        raise UsageError(f"fill {fill!r}: pass {FILL_CHOICES}")
    values = (float(fill),) * pp.channels if isinstance(fill, (int, float)) else tuple(float(v) for v in fill)
    if len(values) != pp.channels or not all(0 <= v <= 255 for v in values):
        raise UsageError(f"fill {fill!r}: pass {FILL_CHOICES} ({pp.channels} channels, pixel values 0-255)")
    return values


def fill_pixel_map(fill: Fill, pp: Preprocess, like: torch.Tensor) -> torch.Tensor:
    """The fill in pixel values, C x H x W like one image of `like` (N x C x H x W): the grey (or the given
    values) everywhere, or for "mean-image" the mean image's pixels (the pixels that preprocess to 0)."""
    c, h, w = like.shape[-3:]
    pixels = fill_pixels(fill, pp)
    if pixels is None:
        return pp.to_pixels(like.new_zeros(1, c, h, w))[0]
    if len(pixels) != c:
        raise UsageError(f"the preprocessing has {len(pixels)} channels and the images {c}; pass matching ones")
    return torch.tensor(pixels, dtype=torch.float32).view(c, 1, 1).expand(c, h, w).to(like)


def fill_input(fill: Fill, pp: Preprocess, like: torch.Tensor) -> torch.Tensor:
    """The fill as model input, C x H x W: `fill_pixel_map` through the preprocessing (so with a per-pixel
    mean image a uniform grey varies over the image), exactly zeros for "mean-image"."""
    if fill == "mean-image":
        return like.new_zeros(like.shape[-3:])
    return pp.from_pixels(fill_pixel_map(fill, pp, like)).to(like)


def fill_source(fill: Fill, pp: Preprocess | None) -> str:
    """Where a fill's values come from, for results and captions (issue 40): the grey's source
    (`Preprocess.grey_source`), the mean image, or the values given."""
    if fill == "mean-image":
        return "0 in model-input units: each pixel the mean image's"
    if isinstance(fill, str) and pp is not None:
        return pp.grey_source
    return "the pixel values given"


def resolve_fill(
    module: nn.Module, fill: Fill, preprocess: Preprocess | None, like: torch.Tensor, what: str
) -> tuple[torch.Tensor, str, list[float] | None, str]:
    """(the fill as model input C x H x W, its name for results, its pixel values per channel or None, where
    its values come from: `fill_source`)."""
    if fill == "mean-image":  # needs no preprocessing: 0 in model-input units
        return like.new_zeros(like.shape[-3:]), "mean-image", None, fill_source(fill, None)
    pp = pixel_preprocess(module, preprocess, what)
    pixels = fill_pixels(fill, pp)
    name = fill if isinstance(fill, str) else "pixels"
    return fill_input(fill, pp, like), name, list(pixels) if pixels else None, fill_source(fill, pp)
