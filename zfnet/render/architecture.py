"""Fig. 3 drawn from `Architecture.to_json()`: one block per convolution (with the pooling and contrast
normalization that follow it), then the fully connected layers; each block's face is sized by its maps'
spatial size and its depth by their number, labelled with filter size, stride and output size as in Fig. 3."""

from __future__ import annotations

import math

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
from matplotlib.patches import Polygon, Rectangle

from ..io import atomic_save_figure

PER_ROW = 9


def _x(v: list[int] | None) -> str:
    return "" if not v else (f"{v[0]}" if len(set(v)) == 1 else "x".join(str(a) for a in v))


def blocks(arch: dict) -> list[dict]:
    """Group layers as Fig. 3 does: a conv with the pools/norms after it, then each fc; the input first."""
    c, h, w = (arch["input_shape"] + [1, 1])[:3]
    out = [{"title": "input", "lines": [f"{h}x{w}x{c}"], "shape": [c, h, w], "kind": "input"}]
    for layer in arch["layers"]:
        shape = layer["out_shape"]
        if layer["kind"] == "conv":
            k = layer["kernel"]
            lines = [
                f"{shape[0]} filters {k[0]}x{k[1]}",
                f"stride {_x(layer['stride'])}"
                + (f", pad {_x(layer['padding'])}" if any(layer["padding"] or []) else ""),
                f"-> {shape[1]}x{shape[2]}" if len(shape) == 3 else "",
            ]
            out.append({"title": layer["name"], "lines": [l for l in lines if l], "shape": shape, "kind": "conv"})
        elif layer["kind"] in ("pool", "norm") and out[-1]["kind"] == "conv":
            if layer["kind"] == "pool":
                k = layer.get("kernel")
                text = (
                    f"{k[0]}x{k[1]} {layer['detail']} pool st. {_x(layer['stride'])}"
                    if k
                    else f"{layer['detail']} pool"
                )
                if len(shape) == 3:
                    text += f" -> {shape[1]}x{shape[2]}"
            else:
                text = layer["detail"]
            out[-1]["lines"] = [*out[-1]["lines"], text]
            out[-1]["shape"] = shape
        elif layer["kind"] == "fc":
            out.append({"title": layer["name"], "lines": [f"{shape[-1]} units"], "shape": shape, "kind": "fc"})
    return out


def architecture_figure(arch: dict, path: str, title: str) -> None:
    """The Fig. 3 drawing as a PNG (rows of at most PER_ROW blocks)."""
    fig = architecture_plot(arch, title)
    atomic_save_figure(fig, path, dpi=100)
    plt.close(fig)


def architecture_plot(arch: dict, title: str = ""):
    """The Fig. 3 drawing as a matplotlib figure."""
    bl = blocks(arch)
    rows = math.ceil(len(bl) / PER_ROW)
    cols = min(len(bl), PER_ROW)
    fig, axes = plt.subplots(rows, 1, figsize=(max(6.0, 2.1 * cols), 3.4 * rows + 0.6), squeeze=False)
    biggest = max((b["shape"][1] for b in bl if len(b["shape"]) == 3), default=1)
    widest = max((b["shape"][0] for b in bl), default=1)
    for r, ax in enumerate(axes[:, 0]):
        ax.set_xlim(0, PER_ROW if rows > 1 else cols)
        ax.set_ylim(-1.7, 1.25)
        ax.axis("off")
        for i, b in enumerate(bl[r * PER_ROW : (r + 1) * PER_ROW]):
            cx = i + 0.5
            if len(b["shape"]) == 3:  # a stack of maps: face ~ spatial size, depth ~ number of maps
                side = 0.25 + 0.55 * math.sqrt(b["shape"][1] / biggest)
                depth = 0.06 + 0.22 * math.log1p(b["shape"][0]) / math.log1p(widest)
                x0, y0 = cx - side / 2 - depth / 2, 0.15 - side / 2
                colour = {"input": "#dddddd", "conv": "#9ecae1"}.get(b["kind"], "#9ecae1")
                ax.add_patch(
                    Polygon(
                        [
                            (x0, y0 + side),
                            (x0 + depth, y0 + side + depth),
                            (x0 + depth + side, y0 + side + depth),
                            (x0 + side, y0 + side),
                        ],
                        closed=True,
                        fc="#c6dbef",
                        ec="k",
                        lw=0.7,
                    )
                )
                ax.add_patch(
                    Polygon(
                        [
                            (x0 + side, y0),
                            (x0 + side + depth, y0 + depth),
                            (x0 + side + depth, y0 + side + depth),
                            (x0 + side, y0 + side),
                        ],
                        closed=True,
                        fc="#6baed6",
                        ec="k",
                        lw=0.7,
                    )
                )
                ax.add_patch(Rectangle((x0, y0), side, side, fc=colour, ec="k", lw=0.7))
            else:  # a fully connected layer: a bar
                hgt = 0.35 + 0.6 * math.log1p(b["shape"][-1]) / math.log1p(max(widest, b["shape"][-1]))
                ax.add_patch(Rectangle((cx - 0.06, 0.15 - hgt / 2), 0.12, hgt, fc="#fdae6b", ec="k", lw=0.7))
            if i:
                ax.annotate(
                    "", xy=(cx - 0.45, 0.15), xytext=(cx - 0.55, 0.15), arrowprops={"arrowstyle": "->", "lw": 0.8}
                )
            ax.text(cx, 1.0, b["title"], ha="center", va="bottom", fontsize=10, weight="bold")
            ax.text(cx, -0.62, "\n".join(b["lines"]), ha="center", va="top", fontsize=8.5, linespacing=1.3)
    fig.suptitle(title, fontsize=11)
    fig.tight_layout()
    return fig
