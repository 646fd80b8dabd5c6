"""`zfnet occlusion` as a library call: run `zfnet.methods.occlusion` on each image of an opened model's inputs
and write OUT/occlusion.json (every map, the settings, timings, provenance) and one Fig. 6 row per image
(OUT/occlusion-<k>.png)."""

from __future__ import annotations

import os
import time
from dataclasses import asdict, dataclass

import torch

from ..io import atomic_write_json
from ..methods.occlusion import occlusion
from ..progress import bar
from ..provenance import environment
from ..render.occlusion import occlusion_figure
from ..weights import Opened
from .inputs import Inputs


@dataclass(frozen=True)
class OcclusionOptions:
    """Fig. 6's settings (Sec. 4.2); units are model-input pixels."""

    window: int = 32  # occluder side
    stride: int = 8  # occluder step
    fill: str | float | tuple[float, ...] = "grey"  # grey | mean-image | pixel value(s) (zfnet.pixels)
    layer: str = "conv5"  # the layer whose strongest map (b) and (c) show
    mode: str = "auto"  # auto | exact | naive | approx (zfnet.methods.occlusion.MODES)
    tau: float = 1.0  # approx: projective-field threshold (1: none)
    drill: float = 0.4  # approx: share of the checkerboard's other half computed
    precision: str = "bfloat16"  # approx: convs and linear layers on the change in this precision
    compare_exact: bool = False  # approx: also run exact and report the deviation


def run_occlusion(
    opened: Opened,
    inputs: Inputs,
    out: str,
    *,
    options: OcclusionOptions = OcclusionOptions(),
    device: torch.device | str = "cpu",
    progress: bool = True,
) -> dict:
    """Fig. 6 for every image of `inputs` (made with `opened.preprocess`); returns occlusion.json's content."""
    o, pp, classes = options, opened.preprocess, inputs.classes
    items = list(zip(inputs.names, inputs.x, inputs.labels))
    os.makedirs(out, exist_ok=True)
    started = time.perf_counter()
    rows = []
    with bar(total=len(items), desc="occlusion", unit="image", disable=not progress) as pbar:
        for k, (name, x, label) in enumerate(items):
            res = occlusion(
                opened.model,
                x[None].to(device),
                target=label,
                window=o.window,
                stride=o.stride,
                fill=o.fill,
                preprocess=pp,
                layer=o.layer,
                mode=o.mode,
                tau=o.tau,
                compare_exact=o.compare_exact,
                drill=o.drill,
                precision=o.precision,
            )[0]
            figure = f"occlusion-{k}.png"
            occlusion_figure(
                res,
                pp.display(x[None])[0].cpu(),
                classes,
                os.path.join(out, figure),
                title=f"{name}: Fig. 6 ({opened.name}, {o.layer})",
            )
            rows.append(
                {
                    "image": name,
                    "label": label,
                    "label_name": classes[label] if classes and label is not None and label < len(classes) else None,
                    "figure": figure,
                    **res.to_json(),
                }
            )
            pbar.update(1)
    result = {
        "method": "occlusion (Sec. 4.2, Fig. 6)",
        "settings": {
            **asdict(o),
            "positions": "top-left corners 0, S, 2S, ... <= H - W, plus the flush last one H - W",
        },
        "model": opened.info(),
        "preprocess": pp.to_dict(),
        "classes": classes,
        "images": rows,
        "wall_seconds": time.perf_counter() - started,
        "environment": environment(device),
    }
    atomic_write_json(os.path.join(out, "occlusion.json"), result)
    return result
