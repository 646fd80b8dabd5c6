"""`zfnet occlusion` as a library call: open the model and the images, run `zfnet.methods.occlusion` on each, and
write OUT/occlusion.json (every map, the settings, timings, provenance) and one Fig. 6 row per image
(OUT/occlusion-<k>.png)."""
from __future__ import annotations

import os
import time

from ..checkpoints import open_model
from ..io import atomic_write_json
from ..methods.occlusion import occlusion
from ..progress import bar
from ..provenance import environment, file_sha256
from ..report.occlusion import occlusion_figure
from ..runtime import resolve_device
from .inputs import check_files, load_inputs


def run_occlusion(out: str, images: list[str] = (), labels: list[str] = (), data: str | None = None,
                  split: str | None = None, indices: list[int] = (), model: str | None = None,
                  weights: str | None = None, pretrained: bool = False, mean: str | None = None,
                  window: int = 32, stride: int = 8, fill: float = 0.0, layer: str = "conv5", mode: str = "exact",
                  tau: float = 0.5, compare_exact: bool = False, device: str = "auto", drill: float = 0.5,
                  progress: bool = True) -> dict:
    """Fig. 6 for each image file (`images`, with optional `labels`) and each dataset image (`indices` of
    `data`/`split`, labelled by the dataset)."""
    pil = check_files(images)  # unreadable images are refused before the model is loaded
    dev = resolve_device(device)
    opened = open_model(model, weights, pretrained, dev, mean=mean, data=data, split=split)
    pp = opened.preprocess
    inputs = load_inputs(pp, pil, images, labels, data, split, indices, opened.classes)
    classes = inputs.classes
    items = list(zip(inputs.names, inputs.x, inputs.labels))
    os.makedirs(out, exist_ok=True)
    started = time.perf_counter()
    rows = []
    with bar(total=len(items), desc="occlusion", unit="image", disable=not progress) as pbar:
        for k, (name, x, label) in enumerate(items):
            res = occlusion(opened.model, x.to(dev), label, window, stride, fill, layer, mode, tau,
                            compare_exact=compare_exact, drill=drill)
            figure = f"occlusion-{k}.png"
            occlusion_figure(res, pp.display(x[None])[0].cpu(), classes, os.path.join(out, figure),
                             title=f"{name}: Fig. 6 ({opened.name}, {res.mode})")
            rows.append({"image": name, "label": label, "label_name": classes[label] if classes and label is not None
                         and label < len(classes) else None, "figure": figure, **res.to_json()})
            pbar.update(1)
    result = {
        "method": "occlusion (Sec. 4.2, Fig. 6)",
        "settings": {"window": window, "stride": stride, "fill": fill, "layer": layer, "mode": mode, "tau": tau,
                     "drill": drill,
                     "positions": "top-left corners 0, S, 2S, ... <= H - W, plus the flush last one H - W"},
        "model": {"name": opened.name, "weights": opened.weights,
                  "weights_sha256": file_sha256(opened.weights) if opened.weights else None},
        "preprocess": pp.to_dict(), "classes": classes, "images": rows,
        "wall_seconds": time.perf_counter() - started, "environment": environment(dev),
    }
    atomic_write_json(os.path.join(out, "occlusion.json"), result)
    return result
