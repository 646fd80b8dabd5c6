"""Figures from analysis results: per-map sprites and Fig. 2 layer panels, Fig. 4 evolution grids, Fig. 5
filter panels. Inputs are tensors and result objects; outputs are PIL images or PNG files."""

from __future__ import annotations

import math
from collections.abc import Sequence

import matplotlib

from ..io import atomic_save_image

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import torch
from PIL import Image

from ..io import atomic_save_figure
from ..methods.filters import FilterReport
from .render import grid, minmax, stretch, to_pil


def _rgb(t: torch.Tensor) -> torch.Tensor:
    return t.expand(3, -1, -1) if t.shape[0] == 1 else t


def map_sprite(projections: torch.Tensor, patches: torch.Tensor, scale: int) -> Image.Image:
    """One map's top-k as a sprite: row 0 the k projections (each contrast-stretched), row 1 the k patches.
    Tiles touch (no gaps) so the viewer can cut them by offset."""
    k = projections.shape[0]
    tiles = [_rgb(stretch(p)) for p in projections] + [_rgb(q) for q in patches]
    return grid(tiles, cols=k, pad=0, scale=scale)


def layer_panel(
    blocks: list[tuple[int, torch.Tensor, torch.Tensor]],
    scale: int,
    maps_per_row: int = 4,
    title: str = "",
    optimized: dict[int, torch.Tensor] | None = None,
) -> Image.Image:
    """Fig. 2: for each map, its top-k projections (left) beside the matching patches (right), k as a square;
    each map's number above it and `title` above all. With `optimized` (map -> C x S x S display pixels, issue
    37), a third column: the map's optimized image, as tall as the patches' square."""
    cells = []
    for channel, projections, patches in blocks:
        k = projections.shape[0]
        side = math.ceil(math.sqrt(k))
        parts = [
            grid([_rgb(stretch(p)) for p in projections], cols=side, pad=1, background=255).convert("RGB"),
            grid([_rgb(q) for q in patches], cols=side, pad=1, background=255).convert("RGB"),
        ]
        if optimized is not None and channel in optimized:
            vis = grid([_rgb(optimized[channel].float().clamp(0, 255))], cols=1, pad=1, background=255).convert("RGB")
            up = parts[1].height >= vis.height  # enlarged pixel for pixel, reduced by area
            parts.append(vis.resize((parts[1].height,) * 2, Image.Resampling.NEAREST if up else Image.Resampling.BOX))
        cell = Image.new("RGB", (sum(p.width for p in parts) + 4 * (len(parts) - 1), max(p.height for p in parts)),
                         "white")  # fmt: skip
        x = 0
        for part in parts:
            cell.paste(part, (x, 0))
            x += part.width + 4
        cells.append(cell)
    if not cells:
        return Image.new("RGB", (1, 1), "white")
    from PIL import ImageDraw

    if scale > 1:
        cells = [c.resize((c.width * scale, c.height * scale), Image.Resampling.NEAREST) for c in cells]
    w, h = cells[0].size
    gap, label = 10, 18
    rows = math.ceil(len(cells) / maps_per_row)
    out = Image.new("RGB", (maps_per_row * (w + gap) + gap, rows * (h + gap + label) + gap), (235, 235, 235))
    draw, font = ImageDraw.Draw(out), _font(13)
    for i, (cell, block) in enumerate(zip(cells, blocks)):
        r, q = divmod(i, maps_per_row)
        x, y = gap + q * (w + gap), gap + r * (h + gap + label)
        draw.text((x, y), f"map {block[0]}", fill=(40, 40, 40), font=font)
        out.paste(cell, (x, y + label))
    return labelled(out, title) if title else out


def evolution_grid(
    rows: list[list[torch.Tensor]],
    scale: int,
    title: str = "",
    epochs: Sequence[int] = (),
    channels: Sequence[int] = (),
) -> Image.Image:
    """Fig. 4: one row per feature map, one column per snapshot epoch, each the projection of that epoch's
    strongest activation (contrast-stretched); with `title`, `epochs` and `channels` the grid is labelled
    (epoch over each column, map number beside each row)."""
    tiles = [_rgb(stretch(cell)) for row in rows for cell in row]
    image = grid(tiles, cols=len(rows[0]) if rows else 1, pad=2, scale=scale)
    if not (title or epochs or channels):
        return image
    size = rows[0][0].shape[-1] if rows and rows[0] else 1
    return labelled(
        image,
        title,
        [f"ep {e}" for e in epochs],
        [f"map {c}" for c in channels],
        pitch=((size + 2) * scale, (size + 2) * scale),
        offset=(2 * scale, 2 * scale),
    )


def _font(size: int):
    from PIL import ImageFont

    try:
        return ImageFont.load_default(size=size)
    except TypeError:  # Pillow < 10.1: the fixed bitmap font
        return ImageFont.load_default()


def labelled(
    image: Image.Image,
    title: str,
    columns: Sequence[str] = (),
    rows: Sequence[str] = (),
    pitch: tuple[int, int] = (0, 0),
    offset: tuple[int, int] = (0, 0),
    size: int = 13,
) -> Image.Image:
    """`image` with a title line above, a label over each column and beside each row of its grid of cells
    (`pitch`: the cells' spacing in pixels, `offset`: where the first cell starts), so the PNG reads on its own."""
    from PIL import ImageDraw

    font = _font(size)
    probe = ImageDraw.Draw(Image.new("RGB", (1, 1)))

    def width(t: str) -> int:
        return int(probe.textlength(t, font=font))

    left = (max((width(r) for r in rows), default=0) + 8) if rows else 0
    top = (size + 10 if title else 0) + (size + 6 if columns else 0)
    out = Image.new("RGB", (max(image.width + left, width(title) + 12), image.height + top + 4), "white")
    out.paste(image.convert("RGB"), (left, top))
    draw = ImageDraw.Draw(out)
    if title:
        draw.text((6, 4), title, fill="black", font=font)
    for i, label in enumerate(columns):
        x = left + offset[0] + i * pitch[0] + max(0, (pitch[0] - offset[0] - width(label)) // 2)
        draw.text((x, top - size - 4), label, fill=(60, 60, 60), font=font)
    for j, label in enumerate(rows):
        y = top + offset[1] + j * pitch[1] + max(0, (pitch[1] - offset[1] - size) // 2)
        draw.text((4, y), label, fill=(60, 60, 60), font=font)
    return out


def filter_mosaic(weight: torch.Tensor, scale: int = 8) -> Image.Image:
    """First-layer filters, each min-max stretched on its own, in a near-square grid."""
    tiles = [minmax(w) if w.shape[0] in (1, 3) else minmax(w.mean(0, keepdim=True)) for w in weight]
    return grid(tiles, cols=math.ceil(math.sqrt(len(tiles))), pad=1, background=255, scale=scale)


def filter_strip(weight: torch.Tensor, scale: int) -> Image.Image:
    """Each first-layer filter min-max stretched on its own, side by side with no gaps (a sprite the viewer
    cuts by offset: filter c at x = c * kernel width * scale)."""
    tiles = [minmax(w) if w.shape[0] in (1, 3) else minmax(w.mean(0, keepdim=True)) for w in weight.detach()]
    return grid(tiles, cols=len(tiles), pad=0, scale=scale)


def filters_figure(reports: list[tuple[str, FilterReport]], path: str) -> None:
    """Fig. 5 panel per model: the filters, their RMS (dominant ones marked) and their frequency spread."""
    fig = filters_plot(reports)
    atomic_save_figure(fig, path, dpi=100)
    plt.close(fig)


def filters_plot(reports: list[tuple[str, FilterReport]]):
    """Fig. 5's panels (see `filters_figure`) as a matplotlib figure."""
    n = len(reports)
    fig, axes = plt.subplots(n, 3, figsize=(13, 4 * n), squeeze=False, gridspec_kw={"width_ratios": [1.3, 1, 1]})
    for row, (title, rep) in zip(axes, reports):
        mosaic = filter_mosaic(rep.weight, scale=max(1, 48 // rep.weight.shape[-1]))
        row[0].imshow(mosaic, cmap="gray" if mosaic.mode == "L" else None, interpolation="nearest")
        row[0].set_title(f"{title}: {rep.weight.shape[0]} filters {rep.weight.shape[-2]}x{rep.weight.shape[-1]}")
        row[0].axis("off")
        order = torch.argsort(rep.rms, descending=True)
        colours = [
            "tab:red" if rep.dominant[i] else ("tab:gray" if rep.dead is not None and rep.dead[i] else "tab:blue")
            for i in order
        ]
        row[1].bar(range(len(order)), rep.rms[order].numpy(), color=colours, width=1.0)
        row[1].axhline(float(rep.rms.median()), color="k", lw=0.8, ls="--", label="median")
        s = rep.summary()
        dead = f", dead {s['dead']}" if "dead" in s else ""
        row[1].set_title(f"RMS per filter (dominant {s['dominant']}{dead})")
        row[1].set_xlabel("filter (sorted)")
        row[1].legend(loc="upper right")
        row[2].hist(rep.frequency.numpy(), bins=20, range=(0, 0.5), color="tab:green")
        row[2].set_title("mean spatial frequency per filter")
        row[2].set_xlabel("cycles / pixel (0.5 = Nyquist)")
    fig.tight_layout()
    return fig


def save_png(image: Image.Image, path: str) -> None:

    atomic_save_image(image, path)


__all__ = ["evolution_grid", "filter_mosaic", "filters_figure", "layer_panel", "map_sprite", "save_png", "to_pil"]
