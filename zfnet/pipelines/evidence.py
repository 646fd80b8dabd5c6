"""`zfnet evidence` as a library call (issue 36): `zfnet.methods.evidence` on an opened model's images, written as
OUT/evidence.json (every score with its baselines, per unit and as per-layer medians, the settings, provenance)
and OUT/evidence-<layer>.png (per unit: the image and field, each rule's projection beside its fully randomized
one, the causal map)."""

from __future__ import annotations

import os
import time

import torch
from torch import nn

from ..methods.deconvnet import Deconvnet, Target
from ..methods.evidence import Evidence, EvidenceSettings, evidence
from ..methods.faithfulness import FaithfulnessSettings, faithfulness
from ..methods.occlusion import OcclusionSettings, occlusion
from ..provenance import write_result
from ..render.evidence import evidence_figure, faithfulness_figure
from ..settings import Run
from ..weights import Opened
from .inputs import Inputs


def run_evidence(
    opened: Opened,
    inputs: Inputs,
    out: str,
    settings: EvidenceSettings = EvidenceSettings(),
    run: Run = Run(),
    faithful: FaithfulnessSettings | None = FaithfulnessSettings(),
    faithful_images: int = 4,
) -> dict:
    """The evidence for units of `settings.layers` on `inputs` (each unit on the image where it fires most), and
    (`faithful`) the deletion and insertion curves of the class-level maps of the first `faithful_images` images;
    returns evidence.json's content."""
    started = time.perf_counter()
    x = inputs.x.to(run.device)
    res = evidence(opened, x, settings=settings)
    os.makedirs(out, exist_ok=True)
    figures = _figures(opened, inputs, res, out)
    body = {
        "method": "evidence (issue 36: Adebayo et al. 2018 cascading randomization, Nie et al. 2018 specificity, "
        "causal maps; Petsiuk et al. 2018 deletion and insertion)",
        **res.to_json(),
        "images": inputs.names,
        "figures": figures,
    }
    if faithful is not None and faithful_images > 0:
        body["faithfulness"] = class_faithfulness(opened, x[:faithful_images], faithful, settings.rules)
        figures["faithfulness"] = "faithfulness.png"
        faithfulness_figure(body["faithfulness"], os.path.join(out, "faithfulness.png"), opened.name)
    return write_result(
        os.path.join(out, "evidence.json"), body, started=started, device=run.device, model=opened.info()
    )


def class_maps(opened: Opened, x: torch.Tensor, targets: list[int], rules) -> dict[str, torch.Tensor]:
    """The class-level maps of each image's target (N x H x W importance): Fig. 6's occlusion map (the drop of
    p(target) with the grey square, averaged over the squares covering each pixel), and each rule's projection of
    the target logit (its absolute values summed over channels)."""
    model, pp = opened.model, opened.preprocess
    n, _, h, w = x.shape
    occ = OcclusionSettings.for_input(pp.input_size)
    maps: dict[str, torch.Tensor] = {"occlusion": torch.zeros(n, h, w, dtype=torch.float64)}
    for i, r in enumerate(occlusion(opened, x, target=targets, settings=occ)):
        drop, cover = torch.zeros(h, w, dtype=torch.float64), torch.zeros(h, w, dtype=torch.float64)
        for a, y0 in enumerate(r.ys.tolist()):
            for b, x0 in enumerate(r.xs.tolist()):
                drop[y0 : y0 + r.window, x0 : x0 + r.window] += r.base_prob - float(r.prob[a, b])
                cover[y0 : y0 + r.window, x0 : x0 + r.window] += 1
        maps["occlusion"][i] = drop / cover.clamp_min(1)
    logits = [n for n, m in model.named_modules() if isinstance(m, nn.Linear)]
    if not logits:
        return maps
    for rule in rules:
        with Deconvnet(model, rule=rule, other="gradient") as dn:
            proj = dn.project_targets(x, [Target(i, logits[-1], t) for i, t in enumerate(targets)], unit=True)
        maps[rule] = proj.detach().abs().sum(1).double().cpu()
    return maps


def class_faithfulness(opened: Opened, x: torch.Tensor, settings: FaithfulnessSettings, rules) -> dict:
    """Deletion and insertion curves of every class-level map (`class_maps`) of each image's predicted class,
    with the random baseline, and the median areas per map."""
    with torch.no_grad():
        targets = opened.model(x).argmax(1).tolist()
    out: dict[str, dict] = {}
    for name, maps in class_maps(opened, x, targets, rules).items():
        out[name] = faithfulness(opened, x, maps=maps.to(x.device), target=targets, settings=settings).to_json()
    return out


def _figures(opened: Opened, inputs: Inputs, res: Evidence, out: str) -> dict[str, str]:
    """One figure per layer: a row per unit."""
    pp = opened.preprocess
    shape = tuple(inputs.x.shape[1:])
    figures = {}
    for layer in dict.fromkeys(u.layer for u in res.units):
        rows = []
        for u in (u for u in res.units if u.layer == layer):
            image = pp.display(inputs.x[u.image : u.image + 1])[0].cpu()
            box = u.box or (0, 0, shape[1], shape[2])
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
        notes = {r: d[layer] for r, d in res.substituted.items() if layer in d}  # a rule that is the gradient here
        said = "; ".join(f"{r}: {n}" for r, n in notes.items())
        name = f"evidence-{layer.replace('/', '_')}.png"
        title = f"{opened.name}, {layer}: does the picture show the unit?" + (f"\n{said}" if said else "")
        evidence_figure(rows, os.path.join(out, name), title)
        figures[layer] = name
    return figures


__all__ = ["run_evidence"]
