"""`zfnet correspondence` and `zfnet invariance` as library calls (arXiv analyses): open the model and images,
run the method, write OUT/<concept>.json, the table or figure, and the provenance."""

from __future__ import annotations

import json
import os
import time
from collections.abc import Sequence

import torch

from .. import data as zdata
from ..errors import UsageError
from ..io import atomic_write_text
from ..methods.correspondence import CorrespondenceResult, CorrespondenceSettings, correspondence, mask
from ..methods.invariance import DEFAULT_VALUES, InvarianceSettings, invariance
from ..pixels import Fill, resolve_fill
from ..provenance import write_result
from ..readback import read_text
from ..render.analyses import correspondence_figure, correspondence_markdown, invariance_figure, invariance_rows
from ..settings import Run
from ..weights import Opened
from .inputs import Inputs, load_inputs


def read_parts(path: str) -> dict:
    """A parts file: {"parts": {name: [[y0, x0, y1, x1] per image]}, "images": [dataset indices or file names],
    optional "object" (the object's box: one per image, or one for all; where the random control's parts go),
    "data" and "split"}."""
    if not os.path.isfile(path):
        raise UsageError(f"parts file {path!r} does not exist; check the path given to --parts")
    text = read_text(path, what=f"parts file {path!r}", fix="pass the JSON parts file for --parts")
    try:
        spec = json.loads(text)
        parts = {str(k): [tuple(int(v) for v in b) for b in boxes] for k, boxes in spec["parts"].items()}
        images = list(spec["images"])
        objects = spec.get("object")
        if objects is not None:
            one = len(objects) == 4 and all(isinstance(v, (int, float)) for v in objects)
            objects = [tuple(int(v) for v in (objects if one else b)) for b in (images if one else objects)]
    except (ValueError, KeyError, TypeError, AttributeError) as e:
        raise UsageError(
            f"cannot read parts file {path!r} ({type(e).__name__}: {e}); it needs 'images' and "
            "'parts': {name: [[y0, x0, y1, x1], ...]}"
        ) from None
    for name, boxes in parts.items():
        if len(boxes) != len(images) or any(len(b) != 4 for b in boxes):
            raise UsageError(
                f"parts file {path!r}: part {name!r} needs one [y0, x0, y1, x1] box per image ({len(images)} images)"
            )
    if objects is not None and (len(objects) != len(images) or any(len(b) != 4 for b in objects)):
        raise UsageError(
            f"parts file {path!r}: 'object' needs one [y0, x0, y1, x1] box per image ({len(images)} images), "
            "or one box for all"
        )
    return {**spec, "parts": parts, "images": images, "object": objects}


def parts_inputs(
    spec: dict, opened: Opened, pil: list, files: list[str], data: str | None = None, split: str | None = None
) -> Inputs:
    """The parts file's images as the model's input: files (opened with `check_files`) when `files` are given,
    else its dataset indices into `data`/`split` (default: the file's own "data"/"split")."""
    if files:
        return load_inputs(opened.preprocess, pil, files=files, classes=opened.classes)
    data, split = data or spec.get("data"), split or spec.get("split")
    if not data:
        raise UsageError(
            "the parts file names dataset indices but no dataset: pass --data SPEC (or --images DIR for files)"
        )
    dataset = zdata.open_dataset(data, split, opened.preprocess)
    indices = [int(i) for i in spec["images"]]
    return load_inputs(opened.preprocess, dataset=dataset, indices=indices, classes=opened.classes)


def object_masks(opened: Opened, x: torch.Tensor) -> torch.Tensor | None:
    """Where the data gives the object's pixels: images padded onto a black ground (the "pad" fit: Fashion-MNIST,
    the digits) have the object where a pixel is not black; photos give none (None: boxes only)."""
    if opened.preprocess.fit != "pad":
        return None
    pixels = opened.preprocess.to_pixels(x)
    return (pixels > 0.5).any(1).cpu()  # pixel units: above half a grey level


def _correspondence_figure(
    opened: Opened,
    inputs: Inputs,
    spec: dict,
    res: CorrespondenceResult,
    fill: Fill,
    on_masks: bool,
    title: str,
    path: str,
) -> None:
    """The masked-images figure: up to five images, the original then each part and three random boxes masked,
    as the model sees them."""
    shown_random = res.random_boxes[:3]
    titles = ["original", *spec["parts"], *[f"random {k + 1}" for k in range(len(shown_random))]]
    fill_map = resolve_fill(opened.model, fill, opened.preprocess, inputs.x, "correspondence's grey mask")[0]
    panels = []
    for i in range(min(5, len(inputs.names))):  # the original, then each mask as the model sees it
        boxes = [*[spec["parts"][p][i] for p in spec["parts"]], *[d[i] for d in shown_random]]
        x = inputs.x[i : i + 1]
        masked = mask(x.repeat(len(boxes), 1, 1, 1), boxes, fill_map)
        panels.append(list(opened.preprocess.display(torch.cat([x, masked])).cpu()))
    correspondence_figure(
        panels,
        titles,
        inputs.names[: len(panels)],
        path,
        f"Correspondence (arXiv Sec. 4.3): {title}, each part masked ({res.fill}) as the model sees it; "
        f"random: parts of the {'object box' if res.region_source.startswith('object') else 'parts hull'}"
        + (", at least half on the object's pixels" if on_masks else ""),
    )


def run_correspondence(
    opened: Opened,
    inputs: Inputs,
    spec: dict,
    out: str,
    settings: CorrespondenceSettings = CorrespondenceSettings(),
    run: Run = Run(),
    *,
    parts_file: str | None = None,
) -> dict:
    """The correspondence table (Markdown + JSON) and the masked-images figure for the parts file `spec`
    (`read_parts`) on `inputs` (its images, `parts_inputs`)."""
    started, device = time.perf_counter(), run.device
    masks = object_masks(opened, inputs.x)
    res = correspondence(
        opened,
        inputs.x.to(device),
        parts=spec["parts"],
        objects=spec.get("object"),
        object_masks=masks,
        settings=settings,
    )
    os.makedirs(out, exist_ok=True)
    body = res.to_json()
    title = f"{opened.name} on {len(inputs.names)} images ({spec.get('class', 'parts file')})"
    atomic_write_text(os.path.join(out, "correspondence.md"), correspondence_markdown(body, title))
    figure = os.path.join(out, "correspondence.png")
    _correspondence_figure(opened, inputs, spec, res, settings.fill, masks is not None, title, figure)
    result = {
        "method": "correspondence (arXiv Sec. 4.3)",
        **body,
        "images": inputs.names,
        "parts_file": os.path.abspath(parts_file) if parts_file else None,
        "boxes": {k: [list(b) for b in v] for k, v in spec["parts"].items()},
        "objects": [list(b) for b in spec["object"]] if spec.get("object") else None,
        "settings": {**settings.to_json(), "fill": res.fill},
        "random": (
            "in each draw every image gets its own box of the parts' median size, uniform inside its "
            + ("object box" if res.region_source == "object" else "named parts' hull grown to that size")
            + "; each pair's value is its mean over the draws, the +- the spread over pairs (as for a part)"
        ),
        "table": "correspondence.md",
        "figure": "correspondence.png",
    }
    path = os.path.join(out, "correspondence.json")
    return write_result(path, result, started=started, device=device, model=opened.info())


def run_invariance(
    opened: Opened,
    inputs: Inputs,
    out: str,
    settings: InvarianceSettings = InvarianceSettings(),
    run: Run = Run(),
) -> dict:
    """The invariance figure (one row per transformation) and invariance.json. Translations are the paper's
    range scaled to the input size (its 224 px -> ours); every transformation acts on the pixels."""
    started, device, transforms, fill = time.perf_counter(), run.device, settings.transforms, settings.fill
    x = inputs.x.to(device)
    size = x.shape[-1]
    values: dict[str, Sequence[float]] = {t: list(DEFAULT_VALUES[t]) for t in transforms}
    if "translate" in values:
        values["translate"] = sorted({int(round(v * size / 224)) for v in values["translate"]})
    labels = list(inputs.labels)  # None: the class predicted on the untransformed image
    res = invariance(opened, x, labels=labels, values=values, settings=settings)
    rows, examples = invariance_rows(res, x, opened.preprocess, fill)
    classes = inputs.classes or []
    os.makedirs(out, exist_ok=True)
    invariance_figure(
        rows,
        examples,
        classes,
        os.path.join(out, "invariance.png"),
        f"Feature invariance (arXiv Sec. 4.4): {opened.name}, {len(inputs.names)} images",
    )
    result = {
        "method": "feature invariance (arXiv 'Feature Invariance' figure)",
        "images": inputs.names,
        "labels": res.labels.tolist(),
        "predicted": res.predicted,
        "classes": classes,
        "transforms": rows,
        "interpolation": "translate: integer shift; scale, rotate: bilinear about the centre",
        "space": "pixels: each input back to its pixels, transformed, preprocessed again",
        "fill": res.fill,
        "fill_pixels": res.fill_pixels,
        "fill_source": res.fill_source,
        "layers": res.layers,
        "settings": res.settings.to_json(),
        "figure": "invariance.png",
    }
    return write_result(
        os.path.join(out, "invariance.json"), result, started=started, device=device, model=opened.info()
    )


__all__ = ["parts_inputs", "read_parts", "run_correspondence", "run_invariance"]
