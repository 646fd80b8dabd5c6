"""The atlas folder's pictures and page, from analysis results (tensors, result objects, the manifest); nothing
here loads a model, reads a dataset or computes an analysis.

OUT/maps/L/CCCC.png one sprite per map: row 0 the k projections, row 1 the k receptive-field patches
OUT/maps/L/filters.png  the first layer's filters, one tile per map (shown beside each map, Fig. 2)
OUT/maps/L/class-NNNN.png  with --per-class: the maps that fire most for class N, a row each (projections, patches)
OUT/figures/L.png   Fig. 2 panels (a fixed random subset of maps per layer)
OUT/filters.png     Fig. 5: first-layer filters with RMS / dominance / dead / frequency (filters.json)
OUT/evolution/L.png Fig. 4 (evolution.json)
OUT/index.html      the viewer (works from the file system), fed by atlas-data.js
"""

from __future__ import annotations

import os

import torch

from ..io import atomic_write_json
from . import figures
from .render import display_scale, grid, stretch
from .web import write_site


def write_map(folder: str, channel: int, projections: torch.Tensor, patches: torch.Tensor, scale: int) -> None:
    """maps/<layer>/<channel>.png: the map's k projections over the k patches."""
    figures.save_png(figures.map_sprite(projections, patches, scale), os.path.join(folder, f"{channel:04d}.png"))


def write_class_sheet(folder: str, label: int, rows: list[tuple[torch.Tensor, torch.Tensor]], scale: int) -> str:
    """maps/<layer>/class-<label>.png: one row per map, its top projections within the class then their patches
    (per-class references); returns the file name."""
    k = max(len(p) for p, _ in rows)
    tiles = []
    for projections, patches in rows:
        blank = torch.full_like(patches[0], 255.0)
        row = [figures._rgb(stretch(p)) for p in projections] + [figures._rgb(blank)] * (k - len(projections))
        row += [figures._rgb(q) for q in patches] + [figures._rgb(blank)] * (k - len(patches))
        tiles += row
    name = f"class-{label:04d}.png"
    figures.save_png(grid(tiles, cols=2 * k, pad=1, scale=scale), os.path.join(folder, name))
    return name


def write_filter_strip(out: str, layer: str, weight: torch.Tensor) -> dict:
    """maps/<layer>/filters.png, the first layer's filters side by side; returns the manifest entry."""
    kh, kw = weight.shape[-2:]
    s = display_scale(max(kh, kw), 64)
    path = f"maps/{layer}/filters.png"
    figures.save_png(figures.filter_strip(weight, s), os.path.join(out, path))
    return {"sprite": path, "tile": [kh * s, kw * s]}


def write_panel(out: str, layer: str, blocks: list, scale: int, title: str = "", optimized: dict | None = None,
                note: str = "") -> str:  # fmt: skip
    """figures/<layer>.png: Fig. 2's panel of the chosen maps (channel, projections, patches, and with
    `optimized` each map's optimized image, issue 37); `note`, what the panel rests on, under its title."""
    path = f"figures/{layer}.png"
    k = blocks[0][1].shape[0] if blocks else 0
    third = ", optimized image (right, Olah et al. 2017)" if optimized else ""
    title = title or (
        f"{layer}: top-{k} activations of {len(blocks)} maps - deconvnet projection (left), "
        f"image patch ({'middle' if optimized else 'right'}){third} (Fig. 2)"
    ) + (f" - {note}" if note else "")
    panel = figures.layer_panel(sorted(blocks, key=lambda b: b[0]), scale=scale, title=title, optimized=optimized)
    figures.save_png(panel, os.path.join(out, path))
    return path


def write_filters(out: str, reports: list) -> dict:
    """filters.png (Fig. 5 panels, one row per model) and filters.json (summaries and per-filter rows)."""
    os.makedirs(out, exist_ok=True)
    figures.filters_figure(reports, os.path.join(out, "filters.png"))
    info = {"figure": "filters.png", "models": [{"title": t, "summary": r.summary()} for t, r in reports]}
    atomic_write_json(
        os.path.join(out, "filters.json"), {**info, "per_filter": {t: r.per_filter() for t, r in reports}}
    )
    return info


def write_evolution(out: str, evo, dataset_info: dict, records: dict) -> dict:
    """evolution/L.png (Fig. 4: maps as rows, snapshot epochs as columns) and evolution.json (`records`: the
    per-epoch values and images, `Evolution.to_json`)."""
    folder = os.path.join(out, "evolution")
    os.makedirs(folder, exist_ok=True)
    figs = {}
    for layer, chans in evo.layers.items():
        rows = [[cell[0] for cell in evo.cells[layer][c]] for c in chans]
        size = rows[0][0].shape[-1] if rows and rows[0] else 1
        title = f"{layer}: strongest activation's projection per training epoch (Fig. 4)"
        figures.save_png(
            figures.evolution_grid(rows, scale=display_scale(size, 64), title=title, epochs=evo.epochs, channels=chans),
            os.path.join(folder, f"{layer}.png"),
        )
        figs[layer] = f"evolution/{layer}.png"
    info = {"epochs": evo.epochs, "channels": evo.layers, "figures": figs, "dataset": dataset_info}
    atomic_write_json(os.path.join(out, "evolution.json"), {**info, **records})
    return info


def write_page(out: str, manifest: dict) -> str:
    """index.html and what it reads: the manifest without settings noise."""
    keep = (
        "model",
        "dataset",
        "rule",
        "layer_order",
        "layers",
        "figures",
        "filters",
        "evolution",
        "provenance",
        "wall_seconds",
        "skipped",
        "feature_maps",
        "rule_substituted",
        "evidence",
        "visualized",
        "from_index",
    )
    return write_site(out, {k: manifest[k] for k in keep if k in manifest})
