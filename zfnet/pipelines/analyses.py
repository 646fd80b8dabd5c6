"""`zfnet correspondence` and `zfnet invariance` as library calls (arXiv analyses): open the model and images,
run the method, write OUT/<concept>.json, the table or figure, and the provenance."""
from __future__ import annotations

import json
import os
import time


from ..checkpoints import embedded_folder, open_model
from ..errors import UsageError
from ..io import atomic_write_json, atomic_write_text
from ..methods.correspondence import correspondence
from ..methods.invariance import DEFAULT_VALUES, TRANSFORMS, invariance, transform_images
from ..provenance import environment, file_sha256
from ..report.analyses import correspondence_figure, correspondence_markdown, invariance_figure
from ..runtime import resolve_device
from .inputs import check_files, load_inputs

EMBEDDED_PARTS = "parts-ankle-boot.json"


def _model_info(opened) -> dict:
    return {"name": opened.name, "weights": opened.weights,
            "weights_sha256": file_sha256(opened.weights) if opened.weights else None}


def read_parts(path: str) -> dict:
    """A parts file: {"parts": {name: [[y0, x0, y1, x1] per image]}, "images": [dataset indices or file names],
    optional "data" and "split"}."""
    if not os.path.isfile(path):
        raise UsageError(f"parts file {path!r} does not exist; check the path given to --parts")
    try:
        with open(path, encoding="utf-8") as f:
            spec = json.load(f)
        parts = {str(k): [tuple(int(v) for v in b) for b in boxes] for k, boxes in spec["parts"].items()}
        images = list(spec["images"])
    except (ValueError, KeyError, TypeError) as e:
        raise UsageError(f"cannot read parts file {path!r} ({type(e).__name__}: {e}); it needs 'images' and "
                         "'parts': {name: [[y0, x0, y1, x1], ...]}") from None
    for name, boxes in parts.items():
        if len(boxes) != len(images) or any(len(b) != 4 for b in boxes):
            raise UsageError(f"parts file {path!r}: part {name!r} needs one [y0, x0, y1, x1] box per image "
                             f"({len(images)} images)")
    return {**spec, "parts": parts, "images": images}


def run_correspondence(out: str, parts_file: str | None = None, images_dir: str | None = None,
                       model: str | None = None, weights: str | None = None, pretrained: bool = False,
                       mean: str | None = None, data: str | None = None, split: str | None = None,
                       layers: tuple[str, ...] = ("conv5", "fc7"), fill: float = 0.0, random_draws: int = 10,
                       seed: int = 0, device: str = "auto") -> dict:
    """The correspondence table (Markdown + JSON) and the masked-images figure. Images are the parts file's
    dataset indices (its "data"/"split", or `data`/`split`), or with `images_dir` its file names there."""
    if parts_file is None:
        if not pretrained:
            raise UsageError("pass --parts FILE (which part sits where in each image)")
        parts_file = os.path.join(embedded_folder(), EMBEDDED_PARTS)
    spec = read_parts(parts_file)
    files = [os.path.join(images_dir, str(n)) for n in spec["images"]] if images_dir else []
    pil = check_files(files)
    started = time.perf_counter()
    dev = resolve_device(device)
    data, split = (None, None) if images_dir else (data or spec.get("data"), split or spec.get("split"))
    if not images_dir and not data:
        raise UsageError("the parts file names dataset indices but no dataset: pass --data SPEC (or --images DIR "
                         "for files)")
    opened = open_model(model, weights, pretrained, dev, mean=mean, data=data, split=split)
    indices = [] if images_dir else [int(i) for i in spec["images"]]
    inputs = load_inputs(opened.preprocess, pil, files, [], data, split, indices, opened.classes)
    res = correspondence(opened.model, inputs.x.to(dev), spec["parts"], tuple(layers), fill, random_draws, seed)
    os.makedirs(out, exist_ok=True)
    body = res.to_json()
    title = f"{opened.name} on {len(inputs.names)} images ({spec.get('class', 'parts file')})"
    atomic_write_text(os.path.join(out, "correspondence.md"), correspondence_markdown(body, title))
    shown_random = res.random_boxes[:3]
    titles = ["original", *spec["parts"], *[f"random {k + 1}" for k in range(len(shown_random))]]
    panels = []
    for i in range(min(5, len(inputs.names))):  # the masked images as the model sees them (fill = its value)
        boxes = [None, *[spec["parts"][p][i] for p in spec["parts"]], *shown_random]
        x = inputs.x[i:i + 1].repeat(len(boxes), 1, 1, 1)
        for k, b in enumerate(boxes):
            if b is not None:
                x[k, :, b[0]:b[2], b[1]:b[3]] = fill
        panels.append(list(opened.preprocess.display(x).cpu()))
    correspondence_figure(panels, titles, inputs.names[:len(panels)], os.path.join(out, "correspondence.png"),
                          f"Correspondence (arXiv Sec. 4.3): {title}, each part masked (fill {fill:g}) as the model sees it")
    result = {"method": "correspondence (arXiv Sec. 4.3)", **body, "images": inputs.names,
              "parts_file": os.path.abspath(parts_file), "boxes": {k: [list(b) for b in v] for k, v in spec["parts"].items()},
              "settings": {"random_draws": random_draws, "seed": seed, "fill": fill, "layers": list(layers)},
              "model": _model_info(opened), "table": "correspondence.md", "figure": "correspondence.png",
              "wall_seconds": time.perf_counter() - started, "environment": environment(dev)}
    atomic_write_json(os.path.join(out, "correspondence.json"), result)
    return result


def run_invariance(out: str, images: list[str] = (), labels: list[str] = (), data: str | None = None,
                   split: str | None = None, indices: list[int] = (), model: str | None = None,
                   weights: str | None = None, pretrained: bool = False, mean: str | None = None,
                   transforms: tuple[str, ...] = TRANSFORMS, layers: tuple[str, ...] = ("conv1", "fc7"),
                   fill: float = 0.0, device: str = "auto") -> dict:
    """The invariance figure (one row per transformation) and invariance.json. Translations are the paper's
    range scaled to the input size (its 224 px -> ours)."""
    bad = [t for t in transforms if t not in TRANSFORMS]
    if bad:
        raise UsageError(f"unknown transform {bad[0]!r}; choose from {', '.join(TRANSFORMS)}")
    pil = check_files(list(images))
    started = time.perf_counter()
    dev = resolve_device(device)
    opened = open_model(model, weights, pretrained, dev, mean=mean, data=data, split=split)
    inputs = load_inputs(opened.preprocess, pil, list(images), list(labels), data, split, list(indices),
                         opened.classes)
    if any(l is None for l in inputs.labels):
        raise UsageError("invariance needs each image's true class: pass --label for every --image")
    x = inputs.x.to(dev)
    size = x.shape[-1]
    rows, examples = [], {}
    for t in transforms:
        values = DEFAULT_VALUES[t]
        if t == "translate":
            values = sorted({int(round(v * size / 224)) for v in values})
        res = invariance(opened.model, x, inputs.labels, t, values, tuple(layers), fill)
        shown = values[:: max(1, len(values) // 5)]
        examples[t] = [opened.preprocess.display(transform_images(x[:1], t, v, fill))[0].cpu() for v in shown]
        rows.append({**res.to_json(), "shown_values": shown})
    classes = inputs.classes or []
    os.makedirs(out, exist_ok=True)
    invariance_figure(rows, examples, classes, os.path.join(out, "invariance.png"),
                      f"Feature invariance (arXiv Sec. 4.4): {opened.name}, {len(inputs.names)} images")
    result = {"method": "feature invariance (arXiv 'Feature Invariance' figure)", "images": inputs.names,
              "labels": inputs.labels, "classes": classes, "transforms": rows,
              "interpolation": "translate: integer shift; scale, rotate: bilinear about the centre",
              "fill": fill, "layers": list(layers), "model": _model_info(opened), "figure": "invariance.png",
              "wall_seconds": time.perf_counter() - started, "environment": environment(dev)}
    atomic_write_json(os.path.join(out, "invariance.json"), result)
    return result


__all__ = ["read_parts", "run_correspondence", "run_invariance"]
