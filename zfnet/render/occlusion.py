"""Fig. 6's five panels from an occlusion result (never a model): (a) the image as the model saw it with the
occluder at its most sensitive position (where p(target) is lowest; a grey square is pasted in its pixel values),
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
from ..layers import unrectified_note
from .render import stretch


def _show(t: torch.Tensor) -> np.ndarray:
    arr = t.detach().float().clamp(0, 255).cpu().numpy() / 255.0
    return arr[0] if arr.shape[0] == 1 else np.transpose(arr, (1, 2, 0))


def cell_edges(starts: torch.Tensor, window: int) -> np.ndarray:
    """Cell boundaries along one axis: each cell around its occluder's centre, split halfway between
    neighbouring centres (so the flush last position, closer than one stride, gets a narrower cell); the outer
    cells extend half a step beyond their centres."""
    c = starts.double().numpy() + window / 2
    if len(c) == 1:
        return np.array([c[0] - window / 2, c[0] + window / 2])
    mid = (c[1:] + c[:-1]) / 2
    return np.concatenate([[c[0] - (c[1] - c[0]) / 2], mid, [c[-1] + (c[-1] - c[-2]) / 2]])


def _cells(ax, result, values, **kw):
    """A per-position map drawn on the image's pixel axes with `cell_edges`."""
    return ax.pcolormesh(cell_edges(result.xs, result.window), cell_edges(result.ys, result.window), values, **kw)


def with_occluder(result, image: torch.Tensor) -> tuple[torch.Tensor, tuple[int, int]]:
    """The display image with the occluder pasted where p(target) is lowest (when the fill is uniform in pixels,
    its pixel values; the mean image is left as drawn) and that top-left corner."""
    flat = int(result.prob.argmin())
    y, x = int(result.ys[flat // len(result.xs)]), int(result.xs[flat % len(result.xs)])
    out = image.clone().float()
    if getattr(result, "fill_pixels", None):
        out[:, y : y + result.window, x : x + result.window] = torch.tensor(result.fill_pixels).view(-1, 1, 1)
    return out, (y, x)


def occlusion_figure(result, image: torch.Tensor, classes: list[str] | None, path: str, title: str = "") -> None:
    """Write Fig. 6's row for one image. `image`: C x H x W display pixels [0, 255]."""
    fig = occlusion_plot(result, image, classes, title)
    atomic_save_figure(fig, path, dpi=90)
    plt.close(fig)


def _fill_words(result) -> str:
    """Panel (a)'s words for the occluder: its grey and where that grey comes from, or the fill's name."""
    if not (getattr(result, "fill_pixels", None) and result.fill == "grey"):
        return result.fill
    grey = f"grey {'/'.join(f'{v:g}' for v in result.fill_pixels)}"
    return grey + (f"\n({result.fill_source})" if getattr(result, "fill_source", "") else "")


def _most_probable(ax, result, name) -> None:
    """Panel (e): the most probable class at each occluder position, one colour a class, with its legend."""
    present = sorted(set(result.top_class.flatten().tolist()))
    palette = plt.get_cmap("tab20")
    colours = [palette(i % 20) for i in range(len(present))]
    index = {k: i for i, k in enumerate(present)}
    codes = result.top_class.clone().apply_(lambda k: index[k]).numpy()
    _cells(ax, result, codes, cmap=ListedColormap(colours), vmin=-0.5, vmax=len(present) - 0.5)
    handles = [Patch(color=colours[index[k]], label=name(k)) for k in present]
    ax.legend(handles=handles, loc="upper left", bbox_to_anchor=(1.0, 1.0), fontsize=8, frameon=False)
    ax.set_title("(e) most probable class")


def occlusion_plot(result, image: torch.Tensor, classes: list[str] | None, title: str = ""):
    """Fig. 6's row for one image as a matplotlib figure (the caption line says which computation ran)."""
    names = classes or [str(i) for i in range(int(result.top_class.max()) + 1)]

    def name(k: int) -> str:
        return names[k] if k < len(names) else str(k)

    h, w = image.shape[-2:]
    fig, ax = plt.subplots(1, 5, figsize=(19, 4.2))
    grey = "gray" if image.shape[0] == 1 else None
    shown, (oy, ox) = with_occluder(result, image)
    ax[0].imshow(_show(shown), cmap=grey, vmin=0, vmax=1)
    ax[0].add_patch(Rectangle((ox - 0.5, oy - 0.5), result.window, result.window, fill=False, edgecolor="red", lw=1.5))
    said = "predicted" if result.target_source == "predicted" else "true"
    what = _fill_words(result)
    ax[0].set_title(
        f"(a) input; {said}: {name(result.target)}\noccluder {result.window}px, stride {result.stride}\n{what}",
        fontsize=10,
    )
    im = _cells(ax[1], result, result.activity.numpy(), cmap="jet")
    fig.colorbar(im, ax=ax[1], fraction=0.046, pad=0.04)
    ax[1].set_title(
        f"(b) total activation, {result.layer} map {result.channel}\n(unoccluded: {result.base_activity:.3g})"
    )
    # pixel i spans [i, i + 1] on (b)-(e): the occluder at top-left y covers [y, y + window]
    ax[2].imshow(_show(stretch(result.projection)), cmap=grey, vmin=0, vmax=1, extent=(0, w, h, 0))
    ax[2].set_title(f"(c) projection of {result.layer} map {result.channel}")
    im = _cells(ax[3], result, result.prob.numpy(), cmap="jet", vmin=0, vmax=1)
    fig.colorbar(im, ax=ax[3], fraction=0.046, pad=0.04)
    ax[3].set_title(f"(d) p({name(result.target)}, {said} class)\n(unoccluded: {result.base_prob:.3f})")
    _most_probable(ax[4], result, name)
    for a in ax[1:]:
        a.set_xlim(0, w)
        a.set_ylim(h, 0)
        a.set_aspect("equal")
    for a in (ax[1], ax[3], ax[4]):
        a.set_xlabel("occluder centre x (px)")
    ax[1].set_ylabel("occluder centre y (px)")
    for a in (ax[0], ax[2]):
        a.set_xticks([])
        a.set_yticks([])
    said = "; ".join(n for n in (unrectified_note(result.maps), result.rule_note) if n)
    fig.suptitle(((title + "\n") if title else "") + result.describe() + (f"\n{said}" if said else ""), fontsize=10)
    fig.tight_layout()
    return fig
