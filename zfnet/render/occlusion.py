"""Fig. 6's five panels from an occlusion result (never a model): (a) the image with the occluder's size drawn,
(b) the activity of the strongest map per occluder position with a colour bar, (c) that map's deconvnet
projection, (d) p(true class) per position with a colour bar, (e) the most probable class per position with
the class names in a legend."""

from __future__ import annotations

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np
import torch
from matplotlib.colors import ListedColormap
from matplotlib.patches import Patch, Rectangle

from ..io import atomic_save_figure
from .render import stretch


def _show(t: torch.Tensor) -> np.ndarray:
    arr = t.detach().float().clamp(0, 255).cpu().numpy() / 255.0
    return arr[0] if arr.shape[0] == 1 else np.transpose(arr, (1, 2, 0))


def _extent(result, h: int, w: int) -> tuple[float, float, float, float]:
    """Each cell centred on its occluder's centre, in image pixels."""
    half = result.window / 2
    step_y = float(result.ys[1] - result.ys[0]) if len(result.ys) > 1 else result.window
    step_x = float(result.xs[1] - result.xs[0]) if len(result.xs) > 1 else result.window
    return (
        float(result.xs[0]) + half - step_x / 2,
        float(result.xs[-1]) + half + step_x / 2,
        float(result.ys[-1]) + half + step_y / 2,
        float(result.ys[0]) + half - step_y / 2,
    )


def occlusion_figure(result, image: torch.Tensor, classes: list[str] | None, path: str, title: str = "") -> None:
    """Write Fig. 6's row for one image. `image`: C x H x W display pixels [0, 255]."""
    fig = occlusion_plot(result, image, classes, title)
    atomic_save_figure(fig, path, dpi=90)
    plt.close(fig)


def occlusion_plot(result, image: torch.Tensor, classes: list[str] | None, title: str = ""):
    """Fig. 6's row for one image as a matplotlib figure (the caption line says which computation ran)."""
    names = classes or [str(i) for i in range(int(result.top_class.max()) + 1)]

    def name(k: int) -> str:
        return names[k] if k < len(names) else str(k)

    h, w = image.shape[-2:]
    ext = _extent(result, h, w)
    fig, ax = plt.subplots(1, 5, figsize=(19, 4.2))
    grey = "gray" if image.shape[0] == 1 else None
    ax[0].imshow(_show(image), cmap=grey, vmin=0, vmax=1)
    ax[0].add_patch(
        Rectangle(
            (-0.5, -0.5),
            result.window,
            result.window,
            fill=True,
            facecolor=(0.5, 0.5, 0.5, 0.8),
            edgecolor="red",
            lw=1.5,
        )
    )
    said = "predicted" if result.target_source == "predicted" else "true"
    ax[0].set_title(f"(a) input; {said}: {name(result.target)}\noccluder {result.window}px, stride {result.stride}")
    im = ax[1].imshow(result.activity.numpy(), extent=ext, cmap="jet")
    fig.colorbar(im, ax=ax[1], fraction=0.046, pad=0.04)
    ax[1].set_title(
        f"(b) total activation, {result.layer} map {result.channel}\n(unoccluded: {result.base_activity:.3g})"
    )
    ax[2].imshow(_show(stretch(result.projection)), cmap=grey, vmin=0, vmax=1)
    ax[2].set_title(f"(c) projection of {result.layer} map {result.channel}")
    im = ax[3].imshow(result.prob.numpy(), extent=ext, cmap="jet", vmin=0, vmax=1)
    fig.colorbar(im, ax=ax[3], fraction=0.046, pad=0.04)
    ax[3].set_title(f"(d) p({name(result.target)}, {said} class)\n(unoccluded: {result.base_prob:.3f})")
    present = sorted(set(result.top_class.flatten().tolist()))
    palette = plt.get_cmap("tab20")
    colours = [palette(i % 20) for i in range(len(present))]
    index = {k: i for i, k in enumerate(present)}
    codes = result.top_class.clone().apply_(lambda k: index[k]).numpy()
    ax[4].imshow(
        codes, extent=ext, cmap=ListedColormap(colours), vmin=-0.5, vmax=len(present) - 0.5, interpolation="nearest"
    )
    ax[4].legend(
        handles=[Patch(color=colours[index[k]], label=name(k)) for k in present],
        loc="upper left",
        bbox_to_anchor=(1.0, 1.0),
        fontsize=8,
        frameon=False,
    )
    ax[4].set_title("(e) most probable class")
    for a in ax[1:]:
        a.set_xlim(0, w)
        a.set_ylim(h, 0)
    for a in (ax[1], ax[3], ax[4]):
        a.set_xlabel("occluder centre x (px)")
    ax[1].set_ylabel("occluder centre y (px)")
    for a in (ax[0], ax[2]):
        a.set_xticks([])
        a.set_yticks([])
    fig.suptitle(((title + "\n") if title else "") + result.describe(), fontsize=10)
    fig.tight_layout()
    return fig
