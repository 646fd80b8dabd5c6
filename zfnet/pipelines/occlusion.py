"""`zfnet occlusion` as a library call: run `zfnet.methods.occlusion` on each image of an opened model's inputs
and write OUT/occlusion.json (every map, the settings, timings, provenance) and one Fig. 6 row per image
(OUT/occlusion-<k>.png)."""

from __future__ import annotations

import os
import time

from ..methods.occlusion import OcclusionSettings, occlusion
from ..progress import bar
from ..provenance import write_result
from ..render.occlusion import occlusion_figure
from ..settings import Run
from ..weights import Opened
from .inputs import Inputs


def run_occlusion(
    opened: Opened,
    inputs: Inputs,
    out: str,
    settings: OcclusionSettings = OcclusionSettings(),
    run: Run = Run(progress=True),
) -> dict:
    """Fig. 6 for every image of `inputs` (made with `opened.preprocess`); returns occlusion.json's content."""
    o, pp, classes, device = settings, opened.preprocess, inputs.classes, run.device
    items = list(zip(inputs.names, inputs.x, inputs.labels))
    os.makedirs(out, exist_ok=True)
    started = time.perf_counter()
    rows = []
    with bar(total=len(items), desc="occlusion", unit="image", disable=not run.progress) as pbar:
        for k, (name, x, label) in enumerate(items):
            res = occlusion(
                opened.model, x[None].to(device), target=label, preprocess=pp, settings=o, batch_size=run.batch_size
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
            **o.to_json(),
            "positions": "top-left corners 0, S, 2S, ... <= H - W, plus the flush last one H - W",
        },
        "preprocess": pp.to_dict(),
        "classes": classes,
        "images": rows,
    }
    return write_result(
        os.path.join(out, "occlusion.json"), result, started=started, device=device, model=opened.info()
    )
