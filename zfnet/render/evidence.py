"""Issue 36's evidence as a figure (never a model): per unit a row - the image with the unit's field, its
projection by each rule, the last step of the cascade (every layer up to the unit re-initialized) and the causal
map - with the scores in the titles."""

from __future__ import annotations

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np
import torch
from matplotlib.patches import Rectangle
from PIL import Image

from ..io import atomic_save_figure
from .render import stretch


def _rgb(t: torch.Tensor) -> np.ndarray:
    arr = t.detach().float().clamp(0, 255).cpu().numpy() / 255.0
    return arr[0] if arr.shape[0] == 1 else np.transpose(arr, (1, 2, 0))


def _fmt(v) -> str:
    return "-" if v is None else f"{v:.2f}"


def evidence_figure(rows: list[dict], path: str, title: str = "") -> None:
    """`evidence_plot` saved to `path`."""
    fig = evidence_plot(rows, title)
    atomic_save_figure(fig, path)
    plt.close(fig)


def evidence_plot(rows: list[dict], title: str = ""):
    """`rows`: per unit {"image": C x H x W display pixels, "box": (top, left, bottom, right), "label": str,
    "projections": {rule: C x H x W}, "randomized": {rule: C x H x W}, "scores": {rule: unit json}, "causal":
    n_y x n_x or None}. One row per unit."""
    rules = list(rows[0]["projections"]) if rows else []
    cols = 2 + 2 * len(rules)
    fig, axes = plt.subplots(len(rows), cols, figsize=(2.2 * cols, 2.4 * len(rows)), squeeze=False)
    for ax_row, r in zip(axes, rows):
        grey = "gray" if r["image"].shape[0] == 1 else None
        ax_row[0].imshow(_rgb(r["image"]), cmap=grey, vmin=0, vmax=1, interpolation="nearest")
        t, l, b, rr = r["box"]
        ax_row[0].add_patch(Rectangle((l - 0.5, t - 0.5), rr - l, b - t, fill=False, edgecolor="red", lw=1.2))
        ax_row[0].set_title(r["label"], fontsize=8)
        for k, rule in enumerate(rules):
            unit = r["scores"]
            spec = unit["specificity"][rule]
            last = unit["cascade"][rule][-1] if unit["cascade"][rule] else {}
            ax = ax_row[1 + 2 * k]
            ax.imshow(_rgb(stretch(r["projections"][rule])), cmap=grey, vmin=0, vmax=1, interpolation="nearest")
            ax.set_title(
                f"{rule}\nvs others {_fmt(spec['other_units']['ssim'])}, edges {_fmt(spec['edges']['ssim'])}",
                fontsize=7,
            )
            ax = ax_row[2 + 2 * k]
            ax.imshow(_rgb(stretch(r["randomized"][rule])), cmap=grey, vmin=0, vmax=1, interpolation="nearest")
            ax.set_title(f"all up to the unit randomized\nSSIM to trained {_fmt(last.get('ssim'))}", fontsize=7)
        ax = ax_row[-1]
        if r["causal"] is not None:
            top = float(r["causal"].abs().max()) or 1.0  # red: covering it lowers the unit, blue: raises it
            ax.imshow(r["causal"].numpy(), cmap="RdBu_r", vmin=-top, vmax=top, interpolation="nearest")
            agree = ", ".join(f"{k[:4]} {_fmt(v)}" for k, v in r["scores"]["agreement"].items())
            ax.set_title(f"causal: drop (max {top:.2g})\nagreement {agree}", fontsize=7)
        else:
            ax.set_title("causal: no position (fc)", fontsize=7)
        for ax in ax_row:
            ax.set_xticks([])
            ax.set_yticks([])
    if title:
        fig.suptitle(title, fontsize=9)
    # a fixed layout (tight_layout measured every title: most of the figure's time)
    head = 0.75 + (0.3 if title else 0)  # inches above the first row: the suptitle and the two-line titles
    fig.subplots_adjust(left=0.01, right=0.99, bottom=0.01, top=1 - head / fig.get_figheight(), wspace=0.15,
                        hspace=0.55)  # fmt: skip
    return fig


def faithfulness_figure(result: dict, path: str, name: str) -> None:
    """`faithfulness_plot` saved to `path`."""
    fig = faithfulness_plot(result, name)
    atomic_save_figure(fig, path)
    plt.close(fig)


def faithfulness_plot(result: dict, name: str):
    """Deletion (left) and insertion (right) curves, the mean over images of each class-level map, with the
    random orders' mean dashed; the median areas in the legend."""
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.8))
    for k, (key, label) in enumerate((("deletion", "deletion (low area: faithful)"),
                                      ("insertion", "insertion (high area: faithful)"))):  # fmt: skip
        ax = axes[k]
        for method, res in result.items():
            frac = res["images"][0]["fractions"]
            mean = np.mean([im[key] for im in res["images"]], axis=0)
            ax.plot(frac, mean, label=f"{method} ({res['median_auc'][key]:.2f})")
        first = next(iter(result.values()))
        if first["images"][0].get(f"random_{key}") is not None:
            rnd = np.mean([im[f"random_{key}"] for im in first["images"]], axis=0)
            ax.plot(
                first["images"][0]["fractions"],
                rnd,
                "k--",
                label=f"random ({first['median_auc']['random_' + key]:.2f})",
            )
        ax.set_xlabel("fraction of pixels " + ("removed" if key == "deletion" else "revealed"))
        ax.set_ylabel("p(predicted class)")
        ax.set_title(label, fontsize=9)
        ax.legend(fontsize=7)
    fig.suptitle(f"{name}: faithfulness of the class-level maps (Petsiuk et al. 2018)", fontsize=9)
    fig.tight_layout()
    return fig


def logit_cascade_figure(cascade: dict, image: torch.Tensor, path: str, title: str = "") -> None:
    """Adebayo et al.'s Fig. 2 layout: a row per rule, the image, then the class map on the trained model and
    after each cumulative re-initialization from the logits down (SSIM to the trained map in each title)."""
    rules = list(cascade["maps"])
    steps = ["trained", *cascade["steps"]]
    fig, axes = plt.subplots(len(rules), len(steps) + 1, figsize=(1.5 * (len(steps) + 1), 1.7 * len(rules)),
                             squeeze=False)  # fmt: skip
    grey = "gray" if image.shape[0] == 1 else None
    for row, rule in zip(axes, rules):
        row[0].imshow(_rgb(image), cmap=grey, vmin=0, vmax=1)
        row[0].set_title(rule, fontsize=8)
        for k, (ax, m) in enumerate(zip(row[1:], cascade["maps"][rule])):
            ax.imshow(m.numpy(), cmap="gray")
            said = steps[k] if k == 0 else f"+{steps[k]}\nSSIM {_fmt(cascade['ssim'][rule][k - 1])}"
            ax.set_title(said, fontsize=7)
        for ax in row:
            ax.set_xticks([])
            ax.set_yticks([])
    if title:
        fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    atomic_save_figure(fig, path)
    plt.close(fig)


def causal_tile(drops: torch.Tensor, side: int = 96) -> Image.Image:
    """A unit's causal map as a small picture (the atlas's unit page): each occluder position a cell, red where
    covering it lowers the unit, blue where it raises it, white at zero (scaled by the largest absolute drop),
    enlarged to about `side` pixels."""
    d = drops.double()
    top = float(d.abs().max())
    v = (d / top).numpy() if top > 0 else np.zeros(tuple(d.shape))
    rgba = matplotlib.colormaps["RdBu_r"]((v + 1) / 2)
    img = Image.fromarray((rgba[..., :3] * 255).astype(np.uint8))
    cell = max(1, side // max(d.shape))
    return img.resize((d.shape[1] * cell, d.shape[0] * cell), Image.Resampling.NEAREST)


__all__ = [
    "causal_tile",
    "logit_cascade_figure",
    "evidence_figure",
    "evidence_plot",
    "faithfulness_figure",
    "faithfulness_plot",
]
