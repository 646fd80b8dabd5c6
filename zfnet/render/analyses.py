"""Figures and tables of the arXiv analyses from their results (never a model): the correspondence table laid
out as the paper's with its numbers beside ours, the masked images, and the invariance figure."""

from __future__ import annotations

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np
import torch

from ..io import atomic_save_figure

# arXiv Table (correspondence): mean feature sign change +- std, 5 dog images, layers 5 and 7
PAPER_CORRESPONDENCE = {
    "Right Eye": ((0.067, 0.007), (0.069, 0.015)),
    "Left Eye": ((0.069, 0.007), (0.068, 0.013)),
    "Nose": ((0.079, 0.017), (0.069, 0.011)),
    "Random": ((0.107, 0.017), (0.073, 0.014)),
}


def _show(t: torch.Tensor) -> np.ndarray:
    arr = t.detach().float().clamp(0, 255).cpu().numpy() / 255.0
    return arr[0] if arr.shape[0] == 1 else np.transpose(arr, (1, 2, 0))


def correspondence_markdown(result: dict, title: str) -> str:
    """The table as the paper lays it out: one row per occlusion location, mean sign change +- std per layer;
    the paper's dog-face table beside it."""
    layers, parts = (
        result["layers"],
        result["parts"] + (["random"] if "random" in result["delta"][result["layers"][0]] else []),
    )
    head = "| Occlusion location | " + " | ".join(f"Mean feature sign change, {l}" for l in layers) + " |"
    lines = [f"### {title}", "", head, "|---|" + "---|" * len(layers)]
    for p in parts:
        cells = [f"{result['delta'][l][p]:.3f} ± {result['std'][l][p]:.3f}" for l in layers]
        lines.append(f"| {p.capitalize() if p == 'random' else p} | " + " | ".join(cells) + " |")
    lines += [
        "",
        "The paper's (arXiv, 5 dog images, ImageNet ZFNet):",
        "",
        "| Occlusion location | Layer 5 | Layer 7 |",
        "|---|---|---|",
    ]
    for p, ((m5, s5), (m7, s7)) in PAPER_CORRESPONDENCE.items():
        lines.append(f"| {p} | {m5:.3f} ± {s5:.3f} | {m7:.3f} ± {s7:.3f} |")
    return "\n".join(lines) + "\n"


def correspondence_figure(
    panels: list[list[torch.Tensor]], titles: list[str], names: list[str], path: str, title: str = ""
) -> None:
    """As the paper's figure: per image (row), the original, then each part masked, then some random masks,
    each shown as the model sees it (display pixels, C x H x W)."""
    rows, cols = len(panels), len(titles)
    fig, axes = plt.subplots(rows, cols, figsize=(1.7 * cols, 1.8 * rows), squeeze=False)
    for i, row in enumerate(panels):
        for j, img in enumerate(row):
            ax = axes[i][j]
            ax.imshow(_show(img), cmap="gray" if img.shape[0] == 1 else None, vmin=0, vmax=1, interpolation="nearest")
            ax.set_xticks([])
            ax.set_yticks([])
            if i == 0:
                ax.set_title(titles[j], fontsize=9)
            if j == 0:
                ax.set_ylabel(names[i], fontsize=7)
    if title:
        fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    atomic_save_figure(fig, path, dpi=100)
    plt.close(fig)


def invariance_figure(
    results: list, examples: dict[str, list[torch.Tensor]], class_names: list[str], path: str, title: str = ""
) -> None:
    """One row per transformation: (a) one image at several values, (b) distance at the low layer, (c) at the
    high layer, (d) p(true class); one curve per image, its class in the legend."""
    fig = invariance_plot(results, examples, class_names, title)
    atomic_save_figure(fig, path, dpi=90)
    plt.close(fig)


def invariance_plot(results: list, examples: dict[str, list[torch.Tensor]], class_names: list[str], title: str = ""):
    """The invariance figure as a matplotlib figure (see `invariance_figure`); an image without a label follows
    its predicted class, marked in the legend."""
    fig, axes = plt.subplots(
        len(results), 4, figsize=(17, 3.6 * len(results)), squeeze=False, gridspec_kw={"width_ratios": [1.4, 1, 1, 1]}
    )
    units = {"translate": "vertical translation (px)", "scale": "scale factor", "rotate": "rotation (degrees)"}
    for row, r in zip(axes, results):
        tiles = examples[r["transform"]]
        strip = np.concatenate([_show(t) for t in tiles], axis=1)
        row[0].imshow(strip, cmap="gray" if tiles[0].shape[0] == 1 else None, vmin=0, vmax=1)
        row[0].set_xticks([(k + 0.5) * tiles[0].shape[-1] for k in range(len(tiles))])
        row[0].set_xticklabels([f"{v:g}" for v in r["shown_values"]], fontsize=8)
        row[0].set_yticks([])
        row[0].set_title(f"(a) {r['transform']}")
        low, high = r["layers"][0], r["layers"][-1]
        predicted = r.get("predicted") or [False] * len(r["labels"])
        for k, label in enumerate(r["labels"]):
            name = (class_names[label] if label < len(class_names) else str(label)) + (
                " (predicted)" if predicted[k] else ""
            )
            row[1].plot(r["values"], r["distance"][low][k], marker=".", label=name)
            row[2].plot(r["values"], r["distance"][high][k], marker=".", label=name)
            row[3].plot(r["values"], r["prob"][k], marker=".", label=name)
        row[1].set_title(f"(b) {low}: distance to the original")
        row[2].set_title(f"(c) {high}: distance to the original")
        row[3].set_title("(d) p(predicted class)" if all(predicted) else "(d) p(true class)")
        row[3].set_ylim(-0.02, 1.02)
        for a in row[1:]:
            a.set_xlabel(units[r["transform"]])
            a.grid(alpha=0.3)
        row[1].set_ylabel("Euclidean distance")
        row[3].legend(fontsize=7, loc="best")
    if title:
        fig.suptitle(title, fontsize=12)
    fig.tight_layout()
    return fig


def invariance_rows(result, images: torch.Tensor | None, preprocess, fill) -> tuple[list[dict], dict[str, list]]:
    """The invariance figure's rows from an `InvarianceResult`: each transformation's curve with about five of its
    values picked for panel (a), and the first image at those values as display pixels (grey tiles when no image
    or preprocessing is given). What the report and `zfnet.show` both draw."""
    from ..methods.invariance import transform_images

    rows, examples = [], {}
    for curve, row in zip(result.curves, result.to_json()["transforms"]):
        shown = curve.values[:: max(1, len(curve.values) // 5)]
        if images is not None and preprocess is not None:
            x = images[:1].float().cpu()
            moved = [transform_images(x, curve.transform, v, preprocess=preprocess, fill=fill) for v in shown]
            examples[curve.transform] = [preprocess.display(m)[0].cpu() for m in moved]
        else:
            examples[curve.transform] = [torch.full((3, 32, 32), 128.0) for _ in shown]
        rows.append({**row, "shown_values": shown})
    return rows, examples
