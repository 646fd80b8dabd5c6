"""The pictures and the page of `zfnet diff` (issue 39): a unit's top-k images as a strip, the match correlations
per layer, and the page in the atlas's style (from `templates/diff.html.j2`)."""

from __future__ import annotations

import torch
from PIL import Image, ImageDraw

from ..io import atomic_save_figure, atomic_save_image
from .page import render

TILE = 64


def top_strip(pictures: list[torch.Tensor], marks: list[tuple[float, float] | None], path: str) -> None:
    """The images (C x S x S uint8 base squares) in a row, each about TILE px, a red ring where the unit's maximum
    is (its map position, scaled to the image)."""
    tiles = []
    for p, mark in zip(pictures, marks):
        arr = p.detach().cpu()
        img = (
            Image.fromarray(arr[0].numpy(), "L") if arr.shape[0] == 1 else Image.fromarray(arr.permute(1, 2, 0).numpy())
        )
        img = img.convert("RGB").resize((TILE, TILE), Image.Resampling.BILINEAR)
        if mark is not None:
            cy, cx, r = mark[0] * TILE, mark[1] * TILE, 4
            ImageDraw.Draw(img).ellipse((cx - r, cy - r, cx + r, cy + r), outline=(230, 30, 30), width=2)
        tiles.append(img)
    strip = Image.new("RGB", (len(tiles) * (TILE + 2), TILE), "white")
    for i, t in enumerate(tiles):
        strip.paste(t, (i * (TILE + 2), 0))
    atomic_save_image(strip, path)


def match_plot(result: dict, path: str) -> None:
    """Per layer pair, the sorted correlations of the one-to-one assignment's pairs (matched and not), the
    threshold drawn."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 3.2))
    for name, e in result["layers"].items():
        r = sorted((p["r"] for p in e["pairs"]), reverse=True)
        ax.plot(range(1, len(r) + 1), r, marker=".", label=f"{name} ({e['matched']} of {min(e['widths'])})")
    ax.axhline(result["threshold"], color="grey", ls="--", lw=1)
    ax.set_xlabel("matched pair, strongest first")
    ax.set_ylabel("correlation over the images")
    ax.set_ylim(min(0.0, result["threshold"] - 0.1), 1.02)
    ax.legend(fontsize=7)
    ax.set_title(f"{result['a']['name']} vs {result['b']['name']}: units matched (Li et al. 2016)", fontsize=9)
    fig.tight_layout()
    atomic_save_figure(fig, path, dpi=110)
    plt.close(fig)


def diff_page(result: dict, sections: list[dict], names: tuple[str, str]) -> str:
    return render("diff.html.j2", result=result, sections=sections, names=names)


__all__ = ["diff_page", "match_plot", "top_strip"]
