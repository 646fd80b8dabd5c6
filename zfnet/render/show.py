"""`zfnet.show(result)`: the report's figure for any method's result, as a matplotlib figure (a notebook shows
it inline). It reads only the result (and, where a figure shows the input, the images given); never a model."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np
import torch
from matplotlib.patches import Rectangle

from ..methods.architecture import Architecture
from ..methods.atlas import Scan
from ..methods.correspondence import CorrespondenceResult
from ..methods.deconvnet import Projection
from ..methods.evidence import Evidence
from ..methods.evolution import Evolution
from ..methods.faithfulness import Faithfulness
from ..methods.filters import FilterReport
from ..methods.invariance import InvarianceResult
from ..methods.occlusion import OcclusionResult, OcclusionResults
from ..methods.paint import PaintResult
from ..methods.visualize import Visualization
from ..receptive_field import ReceptiveField
from .analyses import invariance_plot, invariance_rows
from .architecture import architecture_plot
from .evidence import evidence_plot, faithfulness_plot
from .figures import evolution_grid, filters_plot
from .occlusion import occlusion_plot
from .render import stretch


def _display(images: torch.Tensor | None, preprocess, i: int, shape) -> torch.Tensor:
    """Image `i` as display pixels [0, 255]: through `preprocess.display` when given, else contrast-stretched;
    a grey square when no images were passed."""
    if images is None:
        return torch.full(tuple(shape), 128.0)
    x = images[i : i + 1].detach().float().cpu()
    return (preprocess.display(x) if preprocess is not None else stretch(x))[0]


def _stack(figures: list) -> plt.Figure:
    """Several figures as the rows of one."""
    arrays = []
    for f in figures:
        f.canvas.draw()
        arrays.append(np.asarray(f.canvas.buffer_rgba()))
        plt.close(f)
    h = sum(a.shape[0] for a in arrays)
    w = max(a.shape[1] for a in arrays)
    fig = plt.figure(figsize=(w / 90, h / 90), dpi=90)
    top = 0.0
    for a in arrays:
        ax = fig.add_axes((0, 1 - (top + a.shape[0]) / h, a.shape[1] / w, a.shape[0] / h))
        ax.imshow(a)
        ax.axis("off")
        top += a.shape[0]
    return fig


def _occlusions(result: OcclusionResults, images, names, preprocess):
    rows = [
        _occlusion(r, None if images is None else images[i : i + 1], names, preprocess) for i, r in enumerate(result)
    ]
    return _stack(rows)


def _occlusion(result: OcclusionResult, images, names, preprocess):
    shape = result.projection.shape
    return occlusion_plot(result, _display(images, preprocess, 0, shape), names, "Fig. 6 (Sec. 4.2)")


def _invariance(result: InvarianceResult, images, names, preprocess):
    rows, examples = invariance_rows(result, images, preprocess, result.fill_pixels or "mean-image")
    return invariance_plot(rows, examples, names, "Feature invariance (arXiv Sec. 4.4)")


def _architecture(result: Architecture, images, names, preprocess):
    return architecture_plot(result.to_json(), f"{result.params:,} parameters (drawn as Fig. 3)")


def _filters(result: FilterReport, images, names, preprocess):
    return filters_plot([("layer 1", result)])


def _imshow(ax, pixels: torch.Tensor) -> None:
    """A C x H x W picture in [0, 1] (grey or colour) on `ax`."""
    grey = pixels.shape[0] == 1
    ax.imshow((pixels[0] if grey else pixels.permute(1, 2, 0)).numpy(), cmap="gray" if grey else None)


def _projection(result: Projection, images, names, preprocess):
    n = len(result.images)
    fig, axes = plt.subplots(1, n, figsize=(2.6 * n, 2.9), squeeze=False)
    for i, ax in enumerate(axes[0]):
        _imshow(ax, stretch(result.images[i : i + 1].detach().float().cpu())[0] / 255.0)
        t, l, b, r = result.boxes[i]
        ax.add_patch(Rectangle((l - 0.5, t - 0.5), r - l, b - t, fill=False, edgecolor="red", lw=1))
        ax.set_title(f"{result.layer} map {result.channels[i]}\nactivation {float(result.activations[i]):.3g}")
        ax.axis("off")
    fig.suptitle(f"Deconvnet projections (Sec. 2.1, {result.rule}); red: the unit's receptive field")
    fig.tight_layout()
    return fig


def _correspondence(result: CorrespondenceResult, images, names, preprocess):
    fig, axes = plt.subplots(1, len(result.layers), figsize=(5 * len(result.layers), 3.6), squeeze=False)
    for ax, layer in zip(axes[0], result.layers):
        keys = [*result.parts, "random"]
        ax.bar(keys, [result.delta[layer][k] for k in keys], yerr=[result.std[layer][k] for k in keys],
               color=["tab:blue"] * len(result.parts) + ["tab:grey"])  # fmt: skip
        ax.set_title(f"{layer}: mean sign change (lower = more consistent)")
        ax.tick_params(axis="x", rotation=30)
    fig.suptitle(f"Correspondence (arXiv Sec. 4.3), {result.images} images")
    fig.tight_layout()
    return fig


def _receptive_field(result: ReceptiveField, images, names, preprocess):
    h, w = result.input_size
    fig, ax = plt.subplots(figsize=(4, 4))
    if images is not None:
        _imshow(ax, _display(images, preprocess, 0, ()) / 255.0)
    else:
        ax.add_patch(Rectangle((-0.5, -0.5), w, h, fill=True, color="0.9"))
    t, l, b, r = result.box(0, 0)
    ax.add_patch(Rectangle((l - 0.5, t - 0.5), r - l, b - t, fill=False, edgecolor="red", lw=1.5))
    ax.set_xlim(-0.5, w - 0.5)
    ax.set_ylim(h - 0.5, -0.5)
    ax.set_title(f"{result.layer}: field {result.size[0]}x{result.size[1]} px, jump {result.jump}")
    return fig


def _evolution(result: Evolution, images, names, preprocess):
    figs = []
    for layer, chans in result.cells.items():
        cells = [[cell[0] for cell in chans[c]] for c in result.layers[layer]]
        title = f"{layer}: maps (rows) by epoch (columns)"
        img = evolution_grid(cells, 2, title, result.epochs, result.layers[layer])
        f, ax = plt.subplots(figsize=(img.width / 90, img.height / 90), dpi=90)
        ax.imshow(img)
        ax.axis("off")
        figs.append(f)
    return _stack(figs)


def _scan(result: Scan, images, names, preprocess):
    fig, axes = plt.subplots(1, len(result.top), figsize=(3.2 * len(result.top), 3), squeeze=False)
    for ax, (layer, tk) in zip(axes[0], result.top.items()):
        ax.imshow(tk.values.clamp_min(0).numpy(), aspect="auto", cmap="viridis", interpolation="nearest")
        ax.set_title(f"{layer}: top-{tk.k} per map")
        ax.set_xlabel("map")
        ax.set_ylabel("rank")
    fig.suptitle(f"Fig. 2's selection over {result.images} images (project them with zfnet.project)")
    fig.tight_layout()
    return fig


def _evidence(result: Evidence, images, names, preprocess):
    rows = []
    for u in result.units:
        like = next(iter(u.projections.values()), torch.zeros(1, 28, 28))  # no images given: a grey of its size
        shown = _display(images, preprocess, u.image, tuple(like.shape))
        where = f" at {u.position[0]},{u.position[1]}" if u.position else ""
        box = u.box or (0, 0, *shown.shape[-2:])
        rows.append({"image": shown, "box": box, "label": f"{u.layer} #{u.channel}{where}",
                     "projections": u.projections, "randomized": u.randomized, "scores": u.to_json(),
                     "causal": u.causal})  # fmt: skip
    return evidence_plot(rows, "does the picture show the unit?")


def _paint(result: PaintResult, images, names, preprocess):
    fig, (bars, act) = plt.subplots(1, 2, figsize=(7, 2.6))
    labels = [names[t["class"]] if t["class"] < len(names) else str(t["class"]) for t in result.top]
    bars.barh(range(len(labels))[::-1], [t["p"] for t in result.top], color="#4a7")
    bars.set_yticks(range(len(labels))[::-1], labels, fontsize=7)
    bars.set_xlim(0, 1)
    bars.set_title(f"p(class {result.target}) = {result.p:.3f}", fontsize=8)
    act.imshow(result.maps.numpy(), cmap="viridis")
    act.set_axis_off()
    a = result.activity
    act.set_title(f"{a['layer']} map {a['map']}: {a['value']:.2f} at {tuple(a['position'])}", fontsize=8)
    fig.suptitle(f"painted ({result.strategy})", fontsize=9)
    return fig


def _visualization(result: Visualization, images, names, preprocess):
    n = len(result.units)
    cols = min(8, n)
    rows = (n + cols - 1) // cols
    fig, axes = plt.subplots(rows, cols, figsize=(1.6 * cols, 1.8 * rows), squeeze=False)
    for k, ax in enumerate(axes.flat):
        ax.set_axis_off()
        if k < n:
            img = result.images[k].clamp(0, 255).div(255).permute(1, 2, 0).numpy()
            ax.imshow(img[..., 0] if img.shape[-1] == 1 else img, cmap="gray", vmin=0, vmax=1)
            ax.set_title(f"#{result.units[k]} {result.values[k]:.2f}", fontsize=7)
    fig.suptitle(f"{result.layer}: optimized for the {result.objective} objective ({result.arithmetic})", fontsize=9)
    return fig


def _faithfulness(result: Faithfulness, images, names, preprocess):
    return faithfulness_plot({"map": result.to_json()}, "the map")


# each method's result type -> the function drawing the report's figure for it
RENDERERS: dict[type, Callable[..., Any]] = {
    OcclusionResults: _occlusions,
    OcclusionResult: _occlusion,
    InvarianceResult: _invariance,
    Architecture: _architecture,
    FilterReport: _filters,
    Projection: _projection,
    CorrespondenceResult: _correspondence,
    ReceptiveField: _receptive_field,
    Evolution: _evolution,
    Scan: _scan,
    Evidence: _evidence,
    Faithfulness: _faithfulness,
    Visualization: _visualization,
    PaintResult: _paint,
}


def show(result, images: torch.Tensor | None = None, *, classes: list[str] | None = None, preprocess=None):
    """The figure the report draws for `result` (any `zfnet.METHODS` result) as a matplotlib Figure.
    `images`: the batch the method ran on, for the panels that show the input (occlusion (a), invariance (a),
    the receptive field); `preprocess` turns them back into pixels; `classes` names the classes."""
    draw = RENDERERS.get(type(result))
    if draw is None:
        raise TypeError(f"zfnet.show takes a zfnet method's result, not a {type(result).__name__}")
    return draw(result, images, classes or [], preprocess)


__all__ = ["show"]
