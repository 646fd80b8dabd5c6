"""`zfnet visualize` as a library call (issue 37): `zfnet.methods.visualize` on an opened model, written as

OUT/units/<layer>-<unit>[-<k>].png   each optimized image (written as each batch finishes: a rerun with the same
                                     settings resumes after the last finished batch)
OUT/grid.png                          every image of the run, in unit order, its value over the best dataset value
OUT/visualize.json                    per unit its objective value beside the best value over the data's images
                                      (the same objective, no transform), the settings, the colour matrix's source
"""

from __future__ import annotations

import os
import time

import torch

from .. import data as zdata
from ..io import atomic_write_json
from ..layers import features
from ..methods.atlas import fingerprint
from ..methods.visualize import Objective, Visualization, VisualizeSettings, layer_maps, visualize
from ..progress import bar
from ..provenance import write_result
from ..readback import read_json_or_none
from ..render.figures import save_png
from ..render.visualize import unit_image, visualize_grid
from ..settings import Run
from ..weights import Opened

COLOR_IMAGES = 256  # training images the colour covariance is measured on


def training_pixels(dataset: zdata.ImageSet | None, n: int = COLOR_IMAGES) -> torch.Tensor | None:
    """The first `n` images of `dataset` as the model sees them, in [0, 1] pixels (the colour matrix's data)."""
    if dataset is None or dataset.preprocess.channels == 1:
        return None
    pp = dataset.preprocess
    x = torch.stack([dataset.base(i) for i in range(min(n, len(dataset)))])
    return (pp.display(pp.eval_input(x)) / 255.0).clamp(0, 1)


def dataset_best(opened: Opened, dataset: zdata.ImageSet, layer: str, units: list[int], objective: str,
                 position, run: Run, progress: bool = True) -> tuple[list[float], list[int]]:  # fmt: skip
    """Per unit, the best value of the objective over the dataset's images (no transform) and the image giving it."""
    obj = Objective(layer, objective, tuple(units), position)
    best = torch.full((len(units),), float("-inf"), dtype=torch.float64)
    where = torch.full((len(units),), -1, dtype=torch.long)
    pp, model = dataset.preprocess, opened.model
    batch = run.batch_size or 128
    with torch.no_grad(), bar(total=len(dataset), desc="best dataset values", unit="img", disable=not progress) as b:
        for start in range(0, len(dataset), batch):
            idx = list(range(start, min(len(dataset), start + batch)))
            x = pp.eval_input(torch.stack([dataset.base(i) for i in idx]).to(run.device))
            maps = features(model, x, [layer])[layer]
            n = maps.shape[0]
            # every image against every unit: the maps repeated per unit, read by the same objective
            vals = torch.stack([obj_of(obj, maps, u) for u in range(len(units))], 1).double().cpu()  # n x units
            top, arg = vals.max(0)
            better = top > best
            best[better], where[better] = top[better], torch.tensor(idx)[arg[better]]
            b.update(n)
    return best.tolist(), where.tolist()


def obj_of(obj: Objective, maps: torch.Tensor, k: int) -> torch.Tensor:
    """The objective of unit `obj.units[k]` on every image of `maps`."""
    one = Objective(obj.layer, obj.kind, (obj.units[k],) * maps.shape[0], obj.position, obj.direction)
    return one(maps)


def run_visualize(
    opened: Opened,
    out: str,
    settings: VisualizeSettings = VisualizeSettings(),
    run: Run = Run(),
    data: zdata.ImageSet | None = None,
    train: zdata.ImageSet | None = None,
) -> dict:
    """The optimized image of every unit asked for, in batches written as they finish; with `data`, each unit's
    best dataset value beside its own; `train` (else `data`) gives the colour matrix. Returns visualize.json."""
    started = time.perf_counter()
    os.makedirs(os.path.join(out, "units"), exist_ok=True)
    pp = opened.preprocess
    pixels = training_pixels(train or data)
    key = fingerprint({"settings": settings.to_json(), "model": opened.name, "weights": opened.weights_sha256,
                       "color": None if pixels is None else float(pixels.double().sum())})  # fmt: skip
    state_path = os.path.join(out, ".partial.json")
    state = read_json_or_none(state_path)
    done: dict = state["units"] if isinstance(state, dict) and state.get("key") == key else {}
    layer, maps = layer_maps(opened.model, pp, settings)
    units = list(settings.units) if settings.units is not None else list(range(maps.shape[1]))
    layer, notes = _run_batches(opened, out, settings, run, units, pixels, key, done, layer)
    best = where = None
    if data is not None:
        best, where = dataset_best(opened, data, layer, units, settings.objective, settings.position, run, run.progress)
    rows = []
    for k, u in enumerate(units):
        entry = {"unit": u, **done[str(u)]}
        if best is not None and where is not None:
            entry |= {"best_dataset_value": best[k], "best_dataset_image": where[k],
                      "beats_dataset": max(entry["values"]) >= best[k]}  # fmt: skip
        rows.append(entry)
    visualize_grid(out, rows, pp.channels)
    body = {
        "method": "visualize (issue 37: Olah et al. 2017 - Fourier image, colour decorrelation, transformation "
        "robustness; batched over units)",
        "layer": layer,
        "objective": settings.objective,
        "settings": settings.to_json(),
        "color_decorrelation": notes.get("color") or (state or {}).get("color", ""),
        "arithmetic": notes.get("arithmetic") or (state or {}).get("arithmetic", ""),
        "data": None if data is None else {"spec": data.spec or data.name, "split": data.split, "images": len(data)},
        "units": rows,
        "beats_dataset": None if best is None else sum(r["beats_dataset"] for r in rows),
        "grid": "grid.png",
    }
    return write_result(os.path.join(out, "visualize.json"), body, started=started, device=run.device,
                        model=opened.info())  # fmt: skip


def _run_batches(opened, out, settings, run, units, pixels, key, done, layer) -> tuple[str, dict]:
    """The units in batches of `settings.batch` images, each batch written (images, entries, the resume state) as
    it finishes; batches already in `done` skipped. Returns the layer and the notes (the colour matrix's source,
    the steps' arithmetic) of the batches run."""
    state_path = os.path.join(out, ".partial.json")
    notes: dict = {}
    with bar(total=len(units), desc="visualize", unit="unit", disable=not run.progress) as pbar:
        per = max(1, settings.batch // settings.per_unit)
        for start in range(0, len(units), per):
            part = units[start : start + per]
            if all(str(u) in done for u in part):
                pbar.update(len(part))
                continue
            res = visualize(opened, training_pixels=pixels, settings=settings, units=tuple(part))
            layer, notes = res.layer, {"color": res.color, "arithmetic": res.arithmetic}
            _write_units(out, res, done)
            atomic_write_json(state_path, {"key": key, "units": done, **notes})
            pbar.update(len(part))
    return layer, notes


def _write_units(out: str, res: Visualization, done: dict) -> None:
    """Each image of a finished batch as OUT/units/<layer>-<unit>[-<k>].png, and its entry."""
    name = res.layer.replace("/", "_")
    for i in range(0, len(res.units), res.per_image):
        u = res.units[i]
        files, values = [], []
        for k in range(res.per_image):
            file = f"units/{name}-{u:04d}" + (f"-{k}" if res.per_image > 1 else "") + ".png"
            save_png(unit_image(res.images[i + k]), os.path.join(out, file))
            files.append(file)
            values.append(res.values[i + k])
        starts = None if res.start_values is None else res.start_values[i : i + res.per_image]
        done[str(u)] = {"files": files, "values": values, "history": res.history[i : i + res.per_image],
                        "start_values": starts}  # fmt: skip


__all__ = ["dataset_best", "run_visualize", "training_pixels"]
