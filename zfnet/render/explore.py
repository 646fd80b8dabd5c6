"""Pictures for the live explorer (`zfnet explore`): one layer's feature maps as a grid, projections and patches
as PNG bytes. Tensors in, images out; nothing here runs a model."""

from __future__ import annotations

import base64
import io
import math

import torch
from PIL import Image

from .render import grid, stretch, to_pil


def png(image: Image.Image) -> bytes:
    buf = io.BytesIO()
    image.save(buf, format="PNG", compress_level=1)  # fast: these go over loopback, not to disk
    return buf.getvalue()


def data_url(image: Image.Image) -> str:
    return "data:image/png;base64," + base64.b64encode(png(image)).decode("ascii")


def figure_data_url(fig, dpi: int = 80) -> str:
    """A matplotlib figure as a PNG data URL; the figure is closed."""
    import matplotlib.pyplot as plt

    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=dpi)
    plt.close(fig)
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode("ascii")


def map_grid(maps: torch.Tensor, tile: int = 40, pad: int = 2) -> tuple[Image.Image, dict]:
    """A layer's feature maps (C x h x w) as DeepVis draws them: every map in one grid, each scaled by the
    layer's largest activation (a strong map shows bright, a silent one black), enlarged to about `tile` px.
    Returns the picture and its geometry (columns, rows, the cell size with padding) for the page to map a
    click to a map and a unit."""
    c, h, w = maps.shape
    top = float(maps.max())
    scaled = (maps.clamp(min=0) / top * 255.0 if top > 0 else torch.zeros_like(maps))[:, None]
    scale = max(1, round(tile / max(h, w)))
    cols = max(1, math.ceil(math.sqrt(c * h / w)))
    image = grid(scaled, cols=cols, pad=pad, background=64, scale=scale)
    cell_h, cell_w = (h + pad) * scale, (w + pad) * scale
    return image, {"cols": cols, "rows": math.ceil(c / cols), "cell": [cell_h, cell_w], "pad": pad * scale,
                   "map": [h, w], "scale": scale}  # fmt: skip


def projection_image(projection: torch.Tensor, size: int = 224) -> Image.Image:
    """A projection (C x H x W), contrast-stretched about grey as the paper shows them, enlarged to about `size`."""
    return to_pil(stretch(projection), max(1, round(size / max(projection.shape[-2:]))))


def pixels_image(pixels: torch.Tensor, size: int = 224) -> Image.Image:
    """Image pixels (C x H x W in 0-255) enlarged to about `size` (nearest)."""
    return to_pil(pixels, max(1, round(size / max(pixels.shape[-2:]))))


def activity_image(maps: torch.Tensor, scale: float, size: int = 160) -> Image.Image:
    """One feature map (h x w) as grey levels on a fixed `scale` (its value on the unpainted image: paint that
    silences it shows darker), enlarged to about `size` (nearest)."""
    level = (maps.clamp(min=0) / max(scale, 1e-12)).clamp(max=1) * 255
    return pixels_image(level[None].float(), size)
