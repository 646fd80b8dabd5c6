"""Fig. 5 (a)-(e) as this run of Sec. 4.1 shows it - per run, the layer-1 filters beside the layer-2 projections -
and the table of diagnostics, from the experiment's results (never a model)."""

from __future__ import annotations

import math

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt

from ..io import atomic_save_figure
from .figures import filter_mosaic
from .render import grid, stretch


def archselect_figure(analyses: list, path: str, maps: int = 36) -> None:
    fig, axes = plt.subplots(
        len(analyses), 2, figsize=(11, 4.4 * len(analyses)), squeeze=False, gridspec_kw={"width_ratios": [1, 1.3]}
    )
    for row, a in zip(axes, analyses):
        k, s, _ = a.first_layer
        mosaic = filter_mosaic(a.filters.weight, scale=max(1, 48 // a.filters.weight.shape[-1]))
        row[0].imshow(mosaic, cmap="gray" if mosaic.mode == "L" else None, interpolation="nearest")
        summ = a.filters.summary()
        row[0].set_title(
            f"{a.name}: layer 1 {k}x{k} stride {s}, layer 2 stride {a.second_stride}, "
            f"clipping {'on' if a.clipping else 'off'}\n"
            f"dominant {summ['dominant']}, dead {summ.get('dead', '-')}; val top-1 err "
            f"{100 * a.val_top1_err:.2f}%",
            fontsize=9,
        )
        tiles = [stretch(p) for p in a.layer2_projections[:maps]]
        cols = math.ceil(math.sqrt(len(tiles)))
        img = grid(tiles, cols=cols, pad=1, scale=max(1, 96 // a.layer2_projections.shape[-1]))
        row[1].imshow(img, cmap="gray" if img.mode == "L" else None, interpolation="nearest")
        row[1].set_title(
            f"layer 2 ({a.layer2}): strongest activation of {len(tiles)} maps, projected\n"
            f"high-frequency share {a.layer2_high_frequency.mean():.3f}",
            fontsize=9,
        )
        for ax in row:
            ax.axis("off")
    fig.tight_layout()
    atomic_save_figure(fig, path, dpi=90)
    plt.close(fig)


def archselect_markdown(rows: list[dict], note: str) -> str:
    lines = [
        "### Architecture selection (Sec. 4.1, Fig. 5)",
        "",
        note,
        "",
        "| run | layer 1 | layer 2 stride | clipping | val top-1 error % | dominant filters | dead filters | "
        "layer-2 high-frequency share |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        f = r["first_layer"]
        lines.append(
            f"| {r['name']} | {f['kernel']}x{f['kernel']} stride {f['stride']} | {r.get('second_stride', 1)} | "
            f"{'on' if r['clipping'] else 'off'} | {100 * r['val_top1_err']:.2f} | "
            f"{r['filters']['dominant']} of {r['filters']['filters']} | {r['filters'].get('dead', '-')} | "
            f"{r['layer2_high_frequency_mean']:.3f} |"
        )
    return "\n".join(lines) + "\n"
