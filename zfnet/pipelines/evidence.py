"""`zfnet evidence` as a library call (issue 36): `zfnet.methods.evidence` on an opened model's images, written as
OUT/evidence.json (every score with its baselines, per unit and as per-layer medians, the settings, provenance)
and OUT/evidence-<layer>.png (per unit: the image and field, each rule's projection beside its fully randomized
one, the causal map)."""

from __future__ import annotations

import os
import time

from ..methods.evidence import Evidence, EvidenceSettings, evidence
from ..provenance import write_result
from ..receptive_field import layer_field
from ..render.evidence import evidence_figure
from ..settings import Run
from ..weights import Opened
from .inputs import Inputs


def run_evidence(
    opened: Opened, inputs: Inputs, out: str, settings: EvidenceSettings = EvidenceSettings(), run: Run = Run()
) -> dict:
    """The evidence for units of `settings.layers` on `inputs` (each unit on the image where it fires most);
    returns evidence.json's content."""
    started = time.perf_counter()
    x = inputs.x.to(run.device)
    res = evidence(opened, x, settings=settings)
    os.makedirs(out, exist_ok=True)
    figures = _figures(opened, inputs, res, out)
    body = {
        "method": "evidence (issue 36: Adebayo et al. 2018 cascading randomization, Nie et al. 2018 specificity, "
        "causal maps)",
        **res.to_json(),
        "images": inputs.names,
        "figures": figures,
    }
    return write_result(
        os.path.join(out, "evidence.json"), body, started=started, device=run.device, model=opened.info()
    )


def _figures(opened: Opened, inputs: Inputs, res: Evidence, out: str) -> dict[str, str]:
    """One figure per layer: a row per unit."""
    pp = opened.preprocess
    shape = tuple(inputs.x.shape[1:])
    figures = {}
    for layer in dict.fromkeys(u.layer for u in res.units):
        rf = layer_field(opened.model, layer, shape)
        rows = []
        for u in (u for u in res.units if u.layer == layer):
            image = pp.display(inputs.x[u.image : u.image + 1])[0].cpu()
            box = rf.clipped_box(*u.position) if u.position else (0, 0, shape[1], shape[2])
            where = f" at {u.position[0]},{u.position[1]}" if u.position else ""
            rows.append(
                {
                    "image": image,
                    "box": box,
                    "label": f"{layer} #{u.channel}{where}\n{inputs.names[u.image]}",
                    "projections": u.projections,
                    "randomized": u.randomized,
                    "scores": u.to_json(),
                    "causal": u.causal,
                }
            )
        name = f"evidence-{layer.replace('/', '_')}.png"
        evidence_figure(rows, os.path.join(out, name), f"{opened.name}, {layer}: does the picture show the unit?")
        figures[layer] = name
    return figures


__all__ = ["run_evidence"]
