"""Rendering: tensors from the analyses -> PNG images and grids. Nothing here computes an analysis.

Projections are contrast-stretched one by one, symmetric about grey (zero = mid-grey, the largest magnitude
= black or white), as the paper shows them ("color contrast is artificially enhanced", Fig. 4).
"""

from __future__ import annotations

import numpy as np
import torch
from PIL import Image


def stretch(x: torch.Tensor) -> torch.Tensor:
    """C x H x W signal -> [0, 255] float, zero at 128, max |x| at 0 or 255 (all-zero stays grey)."""
    m = float(x.abs().max())
    return torch.full_like(x, 128.0) if m == 0 else 128.0 + 127.0 * x / m


def minmax(x: torch.Tensor) -> torch.Tensor:
    """C x H x W -> [0, 255] by its own min and max (layer-1 filters, Fig. 5)."""
    lo, hi = float(x.min()), float(x.max())
    return torch.full_like(x, 128.0) if hi == lo else (x - lo) * (255.0 / (hi - lo))


def to_pil(x: torch.Tensor, scale: int = 1) -> Image.Image:
    """C x H x W in [0, 255] -> PIL (grey for 1 channel), optionally enlarged `scale` times (nearest)."""
    arr = x.detach().float().clamp(0, 255).round().to(torch.uint8).cpu().numpy()
    img = Image.fromarray(arr[0] if arr.shape[0] == 1 else np.transpose(arr, (1, 2, 0)))
    if scale > 1:
        img = img.resize((img.width * scale, img.height * scale), Image.Resampling.NEAREST)
    return img


def grid(
    tiles: list[torch.Tensor] | torch.Tensor, cols: int, pad: int = 2, background: int = 255, scale: int = 1
) -> Image.Image:
    """Tiles (C x h x w in [0, 255], all one size) in a grid of `cols` columns (torchvision's make_grid)."""
    from torchvision.utils import make_grid

    tiles = list(tiles)
    if not tiles:
        return Image.new("L", (1, 1), background)
    canvas = make_grid(torch.stack([t.float() for t in tiles]), nrow=cols, padding=pad, pad_value=float(background))
    return to_pil(canvas[:1] if tiles[0].shape[0] == 1 else canvas, scale)


def display_scale(size: int, target: int = 96) -> int:
    """Integer enlargement that brings a `size`-pixel tile to about `target` pixels (small images)."""
    return max(1, round(target / max(size, 1)))


def pair(patch: torch.Tensor, projection: torch.Tensor, scale: int = 1) -> Image.Image:
    """Image patch and its contrast-stretched projection side by side (Fig. 2 style)."""
    if patch.shape[0] != projection.shape[0]:
        patch = patch.expand(projection.shape[0], -1, -1)
    return grid([patch, stretch(projection)], cols=2, scale=scale)
