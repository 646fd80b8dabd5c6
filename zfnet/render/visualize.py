"""Issue 37's optimized images as pictures: one per unit (enlarged to about 128 px, nearest neighbour) and a grid
of a run's images in unit order, each captioned with its objective value over the best dataset image's."""

from __future__ import annotations

import os

import torch
from PIL import Image, ImageDraw

from .figures import save_png

SIDE = 128  # display side of one optimized image


def unit_image(pixels: torch.Tensor, side: int = SIDE) -> Image.Image:
    """C x S x S display pixels (0-255) -> an RGB or grey picture about `side` px wide."""
    arr = pixels.detach().float().clamp(0, 255).round().to(torch.uint8).cpu()
    img = Image.fromarray(arr[0].numpy(), "L") if arr.shape[0] == 1 else Image.fromarray(arr.permute(1, 2, 0).numpy())
    k = max(1, side // arr.shape[-1])
    return img.resize((arr.shape[-1] * k, arr.shape[-2] * k), Image.Resampling.NEAREST)


def visualize_grid(out: str, rows: list[dict], channels: int, cols: int = 8) -> str:
    """OUT/grid.png: every image of `rows` (visualize.json's units) in order, under each its unit and value (over
    the best dataset value, where measured)."""
    tiles = [(r, f, v) for r in rows for f, v in zip(r["files"], r["values"])]
    if not tiles:
        return ""
    first = Image.open(os.path.join(out, tiles[0][1]))
    w, h = first.size
    band = 14
    n_cols = min(cols, len(tiles))
    n_rows = (len(tiles) + n_cols - 1) // n_cols
    grid = Image.new("RGB", (n_cols * (w + 4), n_rows * (h + band + 4)), "white")
    draw = ImageDraw.Draw(grid)
    for k, (r, f, v) in enumerate(tiles):
        x0, y0 = (k % n_cols) * (w + 4), (k // n_cols) * (h + band + 4)
        grid.paste(Image.open(os.path.join(out, f)).convert("RGB"), (x0 + 2, y0 + band))
        best = r.get("best_dataset_value")
        text = f"#{r['unit']} {v:.2f}" + (f" / {best:.2f}" if best is not None else "")
        draw.text((x0 + 2, y0 + 1), text, fill="black")
    save_png(grid, os.path.join(out, "grid.png"))
    return "grid.png"


__all__ = ["unit_image", "visualize_grid"]
