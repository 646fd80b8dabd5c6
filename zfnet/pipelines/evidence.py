"""`zfnet evidence` as a library call (issue 36): `zfnet.methods.evidence` on an opened model's images, written as
OUT/evidence.json (every score with its baselines, per unit and as per-layer medians, the settings, provenance)
and OUT/evidence-<layer>.png (per unit: the image and field, each rule's projection beside its fully randomized
one, the causal map)."""

from __future__ import annotations

import copy
import os
import time
from dataclasses import replace

import torch
from torch import nn

from ..io import atomic_write_json
from ..methods.deconvnet import Deconvnet, Target
from ..methods.evidence import (
    Evidence,
    EvidenceSettings,
    UnitAt,
    cascade_layers,
    evidence,
    reinitialize,
    shown,
    ssim,
)
from ..methods.faithfulness import FaithfulnessSettings, faithfulness
from ..methods.occlusion import OcclusionSettings, occlusion
from ..provenance import write_result
from ..render.evidence import causal_tile, evidence_figure, faithfulness_figure, logit_cascade_figure
from ..render.figures import save_png
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
    cascade = logit_cascade(opened, x[:1], settings.rules, settings.seed)
    if cascade:
        figures["logit_cascade"] = "cascade-logits.png"
        title = f"{opened.name}: the predicted class's map as the weights are randomized from the logits down"
        logit_cascade_figure(cascade, pp_display(opened, x[:1]), os.path.join(out, "cascade-logits.png"), title)
        body["logit_cascade"] = {k: v for k, v in cascade.items() if k != "maps"}
    body["reading"] = reading(res.summary(), body.get("logit_cascade"))
    if faithful is not None and faithful_images > 0:
        body["faithfulness"] = class_faithfulness(opened, x[:faithful_images], faithful, settings.rules)
        figures["faithfulness"] = "faithfulness.png"
        faithfulness_figure(body["faithfulness"], os.path.join(out, "faithfulness.png"), opened.name)
    return write_result(
        os.path.join(out, "evidence.json"), body, started=started, device=run.device, model=opened.info()
    )


ATLAS_EVIDENCE = EvidenceSettings(
    others=4, curve=False, step=1.0, baseline=False
)  # the atlas's: every unit, at most its own time


def atlas_evidence(model, pp, dataset, tops: dict, channels: dict[str, list[int]], out: str, rule: str, seed: int,
                   device, progress: bool = True) -> dict:  # fmt: skip
    """Issue 36's scores for every unit an atlas shows, each on its top-1 image at its top-1 position (Fig. 2's
    strongest activation): one rule (the atlas's), the cascade's last step, 4 other units, the causal map
    stepped by the square's side (`ATLAS_EVIDENCE`). Writes OUT/evidence.json (every number) and each unit's
    causal map as maps/<layer>/<channel>-causal.png; returns the manifest's entry: per layer and channel the
    scores, and per layer the medians."""
    started = time.perf_counter()
    settings = replace(ATLAS_EVIDENCE, rules=(rule,), seed=seed)
    body: dict = {"settings": settings.to_json(), "units": [], "summary": {}, "feature_maps": {},
                  "rule_substituted": {}, "causal_strategy": {}}  # fmt: skip
    layers: dict[str, dict] = {}
    for layer, cs in channels.items():  # a layer at a time: its units' top-1 images, not every layer's, in memory
        res, wanted = _layer_at_top1(model, pp, dataset, tops[layer], layer, cs, settings, device, progress)
        if res is None:
            continue
        part = res.to_json()
        for u, j in zip(res.units, part["units"]):
            j["image"] = wanted[j["image"]]  # the dataset's index
            entry = {"image": j["image"], "activation": u.activation, **unit_scores(j, rule)}
            if u.causal is not None:
                name = f"maps/{u.layer}/{u.channel:04d}-causal.png"
                save_png(causal_tile(u.causal), os.path.join(out, name))
                entry["causal"] = name
            layers.setdefault(u.layer, {})[str(u.channel)] = entry
        body["units"] += part["units"]
        for key in ("summary", "feature_maps", "causal_strategy"):
            body[key] |= part[key]
        for r, per in part["rule_substituted"].items():
            body["rule_substituted"].setdefault(r, {}).update(per)
        body["fill"], body["fill_source"] = part["fill"], part["fill_source"]
    if not layers:
        return {}
    body["seconds"] = time.perf_counter() - started
    atomic_write_json(os.path.join(out, "evidence.json"), body)
    return {
        "rule": rule,
        "settings": settings.to_json(),
        "layers": layers,
        "summary": body["summary"],
        "causal_strategy": body["causal_strategy"],
        "json": "evidence.json",
    }  # fmt: skip (its time: in the JSON)


def _layer_at_top1(model, pp, dataset, tk, layer: str, channels: list[int], settings, device, progress):
    """`evidence` for one layer's `channels`, each on its top-1 image at its top-1 position (those that fired);
    (None, []) when none did. Returns the result and the dataset index of each image of its batch."""
    fired = [c for c in channels if int(tk.images[0, c]) >= 0 and float(tk.values[0, c]) > 0]
    wanted = sorted({int(tk.images[0, c]) for c in fired})
    if not wanted:
        return None, []
    slot = {i: k for k, i in enumerate(wanted)}
    x = pp.eval_input(torch.stack([dataset.base(i) for i in wanted]).to(device))
    at = []
    for c in fired:
        y, xx = int(tk.ys[0, c]), int(tk.xs[0, c])
        at.append(UnitAt(layer, c, slot[int(tk.images[0, c])], None if y < 0 else (y, xx)))
    return evidence(model, x, at=at, preprocess=pp, pictures=False, progress=progress, settings=settings), wanted


def unit_scores(unit: dict, rule: str) -> dict:
    """A unit's three scores (and baselines) for `rule` from its evidence JSON: weight dependence (SSIM and
    Spearman of the trained projection to the cascade's last), specificity (mean SSIM to other units, SSIM to the
    edge map), causal agreement."""
    last = unit["cascade"][rule][-1] if unit["cascade"].get(rule) else {}
    spec = unit["specificity"][rule]
    return {
        "weight_ssim": last.get("ssim"),
        "weight_spearman": last.get("spearman_abs"),
        "other_ssim": spec["other_units"]["ssim"],
        "edge_ssim": spec["edges"]["ssim"],
        "agreement": unit["agreement"].get(rule),
    }


def logit_cascade(opened: Opened, x: torch.Tensor, rules, seed: int) -> dict:
    """Adebayo et al.'s Fig. 2 on one image: the map of the predicted class's logit by each rule, on the trained
    model and after re-initializing each parameterized layer from the logits down (cumulatively, seeded as the
    unit cascade; a deep model drawn at `_marks`'s steps). Returns {"target", "steps": [the last layer
    re-initialized at each drawn step], "cascade": [every layer, in order], "maps": {rule: [H x W, ...]} (first the
    trained one), "ssim": {rule: [to the trained map, per drawn step]}}; {} for a model without a linear output."""
    model = opened.model
    logits = [n for n, m in model.named_modules() if isinstance(m, nn.Linear)]
    if not logits:
        return {}
    with torch.no_grad():
        target = int(model(x).argmax(1)[0])
    order = cascade_layers(model, logits[-1], tuple(x.shape[1:]))
    copied = copy.deepcopy(model)
    modules = dict(copied.named_modules())
    head = next((k for k, n in enumerate(order) if not isinstance(modules[n], nn.Linear)), len(order))
    marks = _marks(len(order), head)
    maps: dict[str, list[torch.Tensor]] = {r: [_logit_map(model, x, logits[-1], target, r)] for r in rules}
    for k, name in enumerate(order):
        reinitialize(modules[name], seed + 2000 + k)
        if k in marks:
            for r in rules:
                maps[r].append(_logit_map(copied, x, logits[-1], target, r))
    ssims = {r: [ssim(_unit_scale(m[0]), _unit_scale(step)) for step in m[1:]] for r, m in maps.items()}
    drawn = [shown(order[k]) for k in sorted(marks)]
    return {"target": target, "steps": drawn, "classifier_steps": min(head, len(marks)),
            "cascade": [shown(n) for n in order], "maps": maps, "ssim": ssims}  # fmt: skip


LOGIT_STEPS = 12  # pictures in a row of the logit-down cascade; a deeper model is drawn at evenly spaced steps


def _marks(n: int, head: int) -> set[int]:
    """The cascade steps drawn: every one for a short cascade; else the classifier's linear layers, then steps
    evenly spaced over the rest (the last always), LOGIT_STEPS in all (each drawn map has every layer up to it
    re-initialized)."""
    if n <= LOGIT_STEPS:
        return set(range(n))
    first = set(range(min(head, LOGIT_STEPS // 2)))
    left = LOGIT_STEPS - len(first)
    rest = range(len(first), n)
    return first | {rest[round(i * (len(rest) - 1) / (left - 1))] for i in range(left)}


def _logit_map(model, x, layer, target, rule) -> torch.Tensor:
    with Deconvnet(model, rule=rule, other="gradient") as dn:
        return dn.project_targets(x, [Target(0, layer, target)], unit=True)[0].detach().abs().sum(0).double().cpu()


def _unit_scale(m: torch.Tensor) -> torch.Tensor:
    top = float(m.max())
    return m / top if top > 0 else m


def pp_display(opened: Opened, x: torch.Tensor) -> torch.Tensor:
    return opened.preprocess.display(x)[0].cpu()


def reading(summary: dict, cascade: dict | None = None) -> list[str]:
    """Sentences that read the medians, no thresholds: which rule's unit pictures survive randomizing every layer up
    to the unit, whether a unit's picture resembles other units' more than its own randomized one, and (`cascade`,
    `logit_cascade`'s) how the class map of each rule holds as the classifier's layers are redrawn."""
    rules = sorted({r for per in summary.values() for r in per})
    if not rules:
        return []
    mean = {r: _avg([summary[l][r]["weight_ssim"] for l in summary if r in summary[l]]) for r in rules}
    known = {r: v for r, v in mean.items() if v is not None}
    out = []
    if known and len(set(known.values())) == 1:  # one rule, or every rule the gradient (a model without ReLUs)
        out.append(
            f"With every layer up to the unit re-initialized, the pictures keep a median SSIM of "
            f"{next(iter(known.values())):.2f} to the trained ones, averaged over layers ({', '.join(known)})."
        )
    elif known:
        most, least = max(known, key=lambda r: known[r]), min(known, key=lambda r: known[r])
        out.append(
            f"With every layer up to the unit re-initialized, the {most} pictures change least (median SSIM to the "
            f"trained picture {known[most]:.2f}, averaged over layers) and the {least} pictures most "
            f"({known[least]:.2f})."
        )
    pairs = [(l, r, v["other_ssim"], v["weight_ssim"]) for l, per in summary.items() for r, v in per.items()]
    alike = [f"{l} ({r})" for l, r, o, w in pairs if o is not None and w is not None and o > w]
    out.append(
        f"A unit's picture resembles other units' pictures at the same place more than its own randomized picture in "
        f"{len(alike)} of {len(pairs)} layer-rule pairs"
        + (f" ({', '.join(alike[:6])})" if alike else "")
        + ": there the picture shows the image and the place more than the unit (Nie et al., 2018)."
    )
    if cascade and cascade.get("ssim"):
        k = max(cascade.get("classifier_steps", 1), 1) - 1  # the classifier's linear layers, from the logits down
        held = ", ".join(f"{r} {v[k]:.2f}" for r, v in cascade["ssim"].items() if v[k] is not None)
        out.append(
            f"From the logits down (Adebayo et al.'s Fig. 2), the class map's SSIM to the trained one after "
            f"re-initializing {', '.join(cascade['steps'][: k + 1])}: {held}."
        )
    return out


def _avg(values) -> float | None:
    kept = [v for v in values if v is not None]
    return sum(kept) / len(kept) if kept else None


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


__all__ = ["ATLAS_EVIDENCE", "atlas_evidence", "run_evidence", "unit_scores"]
