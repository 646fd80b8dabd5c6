"""Evidence beside a unit's pictures (issue 36): does a projection show the unit, or only the image?

For a unit (layer, channel) at its strongest position on each of a few images:

- **Weight dependence** - cascading randomization (Adebayo et al., "Sanity Checks for Saliency Maps", NeurIPS
  2018, Sec. 3), applied to units: re-initialize the unit's own layer, then each parameterized layer below it in
  turn down to the first (each with its own initializer, seeded), and project the same unit at the same position
  again after each step. The similarity of each projection to the trained one - SSIM of the absolute maps,
  Spearman rank correlation with and without the absolute value - is the curve; its last value the score.
- **Specificity** (Nie, Zhang and Patel, ICML 2018: the deconvnet and guided backprop largely recover the image):
  the similarity between this unit's projection and those of other units of the same layer at the same image and
  position, and the similarity to the image's own Sobel edge map (Adebayo et al.'s baseline).
- **Causal map**: the grey square pasted at each position inside the unit's receptive field, and the drop of the
  unit's own activation at its own position; the agreement of the projection's energy (pooled to the occluder
  grid) with the drop is a rank correlation.

Each score comes with its baseline (a fully randomized model, other units, the edge map); no thresholds.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import nn

from ..calling import api
from ..errors import UsageError
from ..layers import StopForward, capture, default_stage_layers, features, read_maps, resolve_layer
from ..pixels import FILL_HELP, Fill, WithPreprocess, fill_problem, parse_fill, resolve_fill, split_model
from ..receptive_field import layer_field
from ..runtime import eval_mode, model_device
from ..settings import Settings, knob
from .deconvnet import RULES, Deconvnet, Target, gradient_instead

RuleName = str


def _rules_problem(v: Any) -> str:
    bad = [r for r in v if r not in RULES]
    return f"each rule one of {', '.join(RULES)}" if bad or not v else ""


@dataclass(frozen=True)
class EvidenceSettings(Settings):
    """What the evidence is computed on (issue 36): which layers and units, which rules, how many other units for
    specificity, the causal map's occluder, and the seed of every random draw (units, re-initializations)."""

    method: ClassVar[str] = "evidence"

    layers: tuple[str, ...] | None = knob(None, "layers whose units are checked (none: the default stage layers)")
    units: int = knob(4, "units per layer, drawn with seed among those that fire on the images", low=1)
    rules: tuple[str, ...] = knob(
        ("deconvnet", "guided", "backprop"),
        "projection rules checked (deconvnet, guided, backprop)",
        check=_rules_problem,
    )
    others: int = knob(8, "other units of the layer each projection is compared with (specificity)", low=1)
    window: int | None = knob(
        None,
        "the causal map's grey square, model-input pixels (none: a quarter of the unit's field, at least 1)",
        low=1,
    )
    stride: int | None = knob(None, "the causal map's step in pixels (none: half the window)", low=1)
    fill: Fill = knob("grey", "the causal map's square: " + FILL_HELP, parse=parse_fill, check=fill_problem)
    seed: int = knob(0, "units drawn, other units drawn, re-initializations", low=0)


# --- similarity (Adebayo et al. Sec. 3: each map normalized, then compared) --------------------------------------


def ranks(x: torch.Tensor) -> torch.Tensor:
    """Ranks 1..n of a flat tensor, ties given their average rank (as scipy.stats.rankdata)."""
    values, inverse, counts = torch.unique(x.flatten(), return_inverse=True, return_counts=True)
    ends = counts.cumsum(0).double()
    average = ends - (counts.double() - 1) / 2
    return average[inverse]


def spearman(a: torch.Tensor, b: torch.Tensor) -> float | None:
    """Spearman's rank correlation of two maps (None where one is constant: no ranking to compare)."""
    ra, rb = ranks(a.double()), ranks(b.double())
    ra, rb = ra - ra.mean(), rb - rb.mean()
    denom = float(ra.norm() * rb.norm())
    return None if denom == 0 else float((ra * rb).sum()) / denom


def ssim(a: torch.Tensor, b: torch.Tensor, window: int = 7) -> float | None:
    """Mean structural similarity of two 2-D maps in [0, 1] (data range 1), scikit-image's defaults: a uniform
    `window` x `window` filter, sample covariances, K1 = 0.01, K2 = 0.03, the border's half window left out. A map
    smaller than the window takes the largest odd window that fits (scikit-image's `win_size`); below 3 px, None."""
    window = min(window, *a.shape[-2:])
    window -= 1 - window % 2
    if window < 3:
        return None
    x, y = a.double()[None, None], b.double()[None, None]
    n = window * window
    mean = lambda t: F.avg_pool2d(t, window, 1)  # noqa: E731 - the valid part only, as skimage crops after
    ux, uy = mean(x), mean(y)
    cov = n / (n - 1)
    vx, vy = cov * (mean(x * x) - ux * ux), cov * (mean(y * y) - uy * uy)
    vxy = cov * (mean(x * y) - ux * uy)
    c1, c2 = 0.01**2, 0.03**2
    s = ((2 * ux * uy + c1) * (2 * vxy + c2)) / ((ux * ux + uy * uy + c1) * (vx + vy + c2))
    return float(s.mean())


def energy(projection: torch.Tensor) -> torch.Tensor:
    """A projection as a 2-D map in [0, 1]: the absolute values summed over channels, divided by their maximum."""
    m = projection.abs().sum(0).double()
    top = float(m.max())
    return m / top if top > 0 else m


def signed(projection: torch.Tensor) -> torch.Tensor:
    """A projection as a 2-D signed map: summed over channels."""
    return projection.sum(0).double()


def similarity(a: torch.Tensor, b: torch.Tensor, box: tuple[int, int, int, int] | None = None) -> dict:
    """The three measures of Adebayo et al. between two C x H x W projections, over the unit's receptive field
    `box` (top, left, bottom, right; the rest of a unit's projection is zero by construction and would only add
    agreement): SSIM and Spearman of the absolute maps, Spearman of the signed maps."""
    a, b = _crop(a, box), _crop(b, box)
    return {"ssim": ssim(energy(a), energy(b)), "spearman_abs": spearman(energy(a), energy(b)),
            "spearman": spearman(signed(a), signed(b))}  # fmt: skip


def _crop(t: torch.Tensor, box: tuple[int, int, int, int] | None) -> torch.Tensor:
    if box is None:
        return t
    top, left, bottom, right = box
    return t[..., top:bottom, left:right]


def sobel(image: torch.Tensor) -> torch.Tensor:
    """The image's edge map: the Sobel gradient magnitude of its channel sum, C x H x W -> 1 x H x W (edge pixels
    replicated, as scikit-image's `filters.sobel` reflects)."""
    x = image.double().sum(0)[None, None]
    kx = torch.tensor([[1.0, 0.0, -1.0], [2.0, 0.0, -2.0], [1.0, 0.0, -1.0]], dtype=torch.float64)[None, None]
    padded = F.pad(x, (1, 1, 1, 1), mode="replicate")
    gx, gy = F.conv2d(padded, kx), F.conv2d(padded, kx.transpose(-1, -2))
    return (gx * gx + gy * gy).sqrt()[0]


# --- the cascade ------------------------------------------------------------------------------------------------


def cascade_layers(model: nn.Module, layer: str, image_shape: tuple[int, ...]) -> list[str]:
    """The parameterized modules that run before `layer`'s maps are read, the unit's own layer first, then down
    to the first (Adebayo et al.'s cascade, from the unit down)."""
    order: list[str] = []
    names = {m: n for n, m in model.named_modules()}

    def hook(module, _inputs, _output) -> None:
        name = names[module]
        if name not in order and next(module.parameters(recurse=False), None) is not None:
            order.append(name)

    hooks = [m.register_forward_hook(hook) for m in model.modules()]
    try:
        x = torch.zeros(1, *image_shape, device=model_device(model))
        with torch.no_grad(), eval_mode(model), capture(model, [layer], x):
            try:
                model(x)
            except StopForward:
                pass
    finally:
        for h in hooks:
            h.remove()
    return list(reversed(order))


def reinitialize(module: nn.Module, seed: int) -> None:
    """The module's own parameters drawn again with its own initializer (`reset_parameters`), seeded; a module
    without one gets N(0, 0.01) weights and zero biases (the paper's initialization, Sec. 3)."""
    with torch.random.fork_rng(devices=[]), torch.no_grad():
        torch.manual_seed(seed)
        reset = getattr(module, "reset_parameters", None)
        if callable(reset):
            reset()
        else:
            for name, p in module.named_parameters(recurse=False):
                p.copy_(torch.zeros_like(p) if "bias" in name else torch.randn_like(p) * 0.01)


# --- the result -------------------------------------------------------------------------------------------------


@dataclass
class UnitEvidence:
    """One unit on one image: where it was read, and every score with its baseline."""

    layer: str
    channel: int
    image: int
    position: tuple[int, int] | None
    activation: float
    cascade: dict[str, list[dict]]  # rule -> per step {"randomized": module, ssim, spearman_abs, spearman}
    specificity: dict[str, dict]  # rule -> {"other_units": mean similarity, "edges": similarity to the edge map}
    causal: torch.Tensor | None = field(default=None, repr=False)  # drop of the unit per occluder position
    causal_grid: tuple[list[int], list[int]] | None = None  # the occluder's top-left ys, xs
    causal_window: int = 0  # the occluder's side
    box: tuple[int, int, int, int] | None = None  # the unit's receptive field on the image, clipped (None: fc)
    agreement: dict[str, float | None] = field(default_factory=dict)  # rule -> Spearman(energy pooled, drop)
    projections: dict[str, torch.Tensor] = field(default_factory=dict, repr=False)  # rule -> trained, C x H x W
    randomized: dict[str, torch.Tensor] = field(default_factory=dict, repr=False)  # rule -> the cascade's last

    def to_json(self) -> dict:
        return {
            "layer": self.layer,
            "channel": self.channel,
            "image": self.image,
            "position": list(self.position) if self.position else None,
            "field_box": list(self.box) if self.box else None,
            "activation": self.activation,
            "cascade": self.cascade,
            "weight_dependence": {r: steps[-1] for r, steps in self.cascade.items() if steps},
            "specificity": self.specificity,
            "causal": None if self.causal is None else self.causal.tolist(),
            "causal_grid": None
            if self.causal_grid is None
            else {"ys": self.causal_grid[0], "xs": self.causal_grid[1], "window": self.causal_window},
            "agreement": self.agreement,
        }


@dataclass
class Evidence:
    """The evidence for every checked unit (`units`), the settings, and what each layer's maps read."""

    units: list[UnitEvidence]
    settings: EvidenceSettings
    fill: str = "grey"
    fill_source: str = ""
    maps: dict[str, dict] = field(default_factory=dict)
    substituted: dict[str, dict[str, str]] = field(default_factory=dict)  # rule -> layer -> why it is the gradient

    def to_json(self) -> dict:
        return {
            "settings": self.settings.to_json(),
            "feature_maps": self.maps,
            "rule_substituted": self.substituted,
            "fill": self.fill,
            "fill_source": self.fill_source,
            "units": [u.to_json() for u in self.units],
            "summary": self.summary(),
        }

    def summary(self) -> dict:
        """Per layer and rule: the median of each score over the layer's units (None-free)."""
        out: dict[str, dict] = {}
        for u in self.units:
            for rule, steps in u.cascade.items():
                if not steps:  # no parameterized layer below the unit: nothing was randomized
                    continue
                row = out.setdefault(u.layer, {}).setdefault(rule, {"weight_ssim": [], "other_ssim": [],
                                                                    "edge_ssim": [], "agreement": []})  # fmt: skip
                row["weight_ssim"].append(steps[-1]["ssim"])
                row["other_ssim"].append(u.specificity[rule]["other_units"]["ssim"])
                row["edge_ssim"].append(u.specificity[rule]["edges"]["ssim"])
                row["agreement"].append(u.agreement.get(rule))
        return {
            layer: {rule: {k: _median(v) for k, v in row.items()} for rule, row in rules.items()}
            for layer, rules in out.items()
        }


def _median(values: Sequence[float | None]) -> float | None:
    kept = sorted(v for v in values if v is not None)
    return None if not kept else float(torch.tensor(kept, dtype=torch.float64).median())


# --- the method -----------------------------------------------------------------------------------------------


@api
def evidence(
    model: nn.Module | WithPreprocess,
    images: torch.Tensor,
    *,
    channels: dict[str, Sequence[int]] | None = None,
    preprocess=None,
    settings: EvidenceSettings | None = None,
    **changes: Any,
) -> Evidence:
    """Issue 36's evidence for units of `layers` on a batch of model input `images` (N x C x H x W): for each unit,
    on the image where it fires most (among `images`) at its strongest position, its weight dependence under
    cascading randomization, its specificity against other units and the edge map, and its causal map.
    `channels` (layer -> channels) names the units, else `settings.units` per layer are drawn with the seed among
    the maps that fire. The model is left as it was (the cascade runs on a copy). Settings (`EvidenceSettings`) as
    a value or as keywords."""
    s = EvidenceSettings.build(settings, **changes)
    net, pp = split_model(model, preprocess)
    if images.dim() != 4 or images.shape[0] < 1:
        raise UsageError(f"evidence takes a batch N x C x H x W (got shape {tuple(images.shape)})")
    shape = tuple(images.shape[1:])
    layers = list(s.layers or default_stage_layers(net, shape))
    for layer in layers:
        resolve_layer(net, layer)
    fill_map, fill_name, _, fill_from = resolve_fill(net, s.fill, pp, images, "evidence's grey square")
    with torch.no_grad(), eval_mode(net):
        acts = features(net, images, layers)
    chosen = channels or {l: _draw_units(acts[l], s.units, s.seed + k) for k, l in enumerate(layers)}
    out = []
    for layer in layers:
        rf = layer_field(net, layer, shape)
        for c in chosen.get(layer, []):
            image, position, value = _strongest(acts[layer], int(c))
            x = images[image : image + 1]
            u = UnitEvidence(layer, int(c), image, position, value, {}, {})
            box = u.box = rf.clipped_box(*position) if position is not None else None
            for r in s.rules:
                u.cascade[r], u.projections[r], u.randomized[r] = _cascade(net, x, (layer, int(c), position), r, s, box)
            u.specificity = {
                r: _specificity(net, x, (layer, int(c), position), r, acts[layer], s, box) for r in s.rules
            }
            if position is not None:
                u.causal, u.causal_grid, u.causal_window = causal_map(net, x, layer, int(c), position, rf, fill_map, s)
                u.agreement = {r: _agreement(net, x, layer, int(c), position, r, u) for r in s.rules}
            out.append(u)
    substituted = {r: gradient_instead(net, layers, images[:1], r) for r in s.rules}
    return Evidence(
        out, s, fill_name, fill_from, read_maps(net, layers, images), {r: d for r, d in substituted.items() if d}
    )


def _draw_units(act: torch.Tensor, n: int, seed: int) -> list[int]:
    """`n` channels drawn with `seed` among those that fire (maximum > 0) on some image; all when fewer."""
    peak = act.flatten(2).amax(2).amax(0) if act.dim() == 4 else act.amax(0)
    fired = (peak > 0).nonzero().flatten()
    pool = fired if len(fired) else torch.arange(act.shape[1])
    g = torch.Generator().manual_seed(seed)
    return sorted(pool[torch.randperm(len(pool), generator=g)[:n]].tolist())


def _strongest(act: torch.Tensor, c: int) -> tuple[int, tuple[int, int] | None, float]:
    """(image, position, value) of map `c`'s strongest activation over the batch (first in row-major order)."""
    if act.dim() != 4:
        image = int(act[:, c].argmax())
        return image, None, float(act[image, c])
    peaks = act[:, c].flatten(1)
    image = int(peaks.amax(1).argmax())
    where = int(peaks[image].argmax())
    return image, divmod(where, act.shape[-1]), float(peaks[image, where])


def _project(net: nn.Module, x: torch.Tensor, layer: str, c: int | list[int], position, rule: str) -> torch.Tensor:
    """The unit's projection seeded with 1 (the picture's shape, whatever the activation), C x H x W; for a list
    of channels, one per channel at the same position (K x C x H x W), in one batched pass."""
    y, xx = position if position is not None else (None, None)
    chans = c if isinstance(c, list) else [c]
    with Deconvnet(net, rule=rule, other="gradient") as dn:
        out = dn.project_targets(x, [Target(0, layer, k, y, xx) for k in chans], unit=True).detach().cpu()
    return out if isinstance(c, list) else out[0]


def _cascade(net, x, unit, rule, s: EvidenceSettings, box) -> tuple[list[dict], torch.Tensor, torch.Tensor]:
    """Adebayo et al.'s cascade for one unit: the unit's layer re-initialized, then each layer below in turn; after
    each step the projection's similarity to the trained one. Returns the steps, the trained projection and the
    last step's."""
    layer, c, position = unit
    trained = _project(net, x, layer, c, position, rule)
    copied = copy.deepcopy(net)
    modules = dict(copied.named_modules())
    steps, last = [], trained
    for k, name in enumerate(cascade_layers(copied, layer, tuple(x.shape[1:]))):
        reinitialize(modules[name], s.seed + 1000 + k)
        last = _project(copied, x, layer, c, position, rule)
        vanished = bool(last.abs().max() == 0)  # the unit fell silent: no picture left to compare (None ranks)
        steps.append({"randomized": name, **similarity(trained, last, box), "vanished": vanished})
    return steps, trained, last


def _specificity(net, x, unit, rule, act: torch.Tensor, s: EvidenceSettings, box) -> dict:
    """The unit's projection against other units of the layer at the same image and position (their mean
    similarity), and against the image's Sobel edge map."""
    layer, c, position = unit
    g = torch.Generator().manual_seed(s.seed + 7 * c + 1)
    rest = [k for k in torch.randperm(act.shape[1], generator=g).tolist() if k != c][: s.others]
    mine, *theirs = _project(net, x, layer, [c, *rest], position, rule)
    scores = [similarity(mine, other, box) for other in theirs]
    mean = {m: _mean([d[m] for d in scores]) for m in ("ssim", "spearman_abs", "spearman")}
    edges = _crop(sobel(x[0].detach().cpu()), box)[0]
    top = float(edges.max())
    mine_e = energy(_crop(mine, box))
    e = {"ssim": ssim(mine_e, edges / top if top > 0 else edges), "spearman_abs": spearman(mine_e, edges),
         "spearman": None}  # fmt: skip
    return {"other_units": mean, "others": rest, "edges": e}


def _mean(values: list[float | None]) -> float | None:
    kept = [v for v in values if v is not None]
    return sum(kept) / len(kept) if kept else None


def causal_map(net, x, layer, c, position, rf, fill_map, s: EvidenceSettings, batch: int = 64):
    """The grey square at each position inside the unit's receptive field (clipped to the image), and the drop of
    the unit's activation at its own position (unoccluded minus occluded); forwards batched and stopped at the
    layer. Returns (n_y x n_x drops, (ys, xs) of the square's top-left corner, the square's side)."""
    h, w = x.shape[-2:]
    top, left, bottom, right = rf.clipped_box(*position)
    field_side = max(bottom - top, right - left)
    window = s.window or max(1, field_side // 4)
    stride = s.stride or max(1, window // 2)
    ys = list(range(max(0, top - window + 1), max(1, min(bottom, h - window + 1)), stride))
    xs = list(range(max(0, left - window + 1), max(1, min(right, w - window + 1)), stride))
    y0, x0 = position
    base = _unit(net, x, layer, c, y0, x0)
    drops = torch.zeros(len(ys), len(xs), dtype=torch.float64)
    spots = [(i, j) for i in range(len(ys)) for j in range(len(xs))]
    for k in range(0, len(spots), batch):
        part = spots[k : k + batch]
        xb = x.repeat(len(part), 1, 1, 1)
        for n, (i, j) in enumerate(part):
            xb[n, :, ys[i] : ys[i] + window, xs[j] : xs[j] + window] = fill_map[:, ys[i] : ys[i] + window,
                                                                                  xs[j] : xs[j] + window]  # fmt: skip
        vals = _unit(net, xb, layer, c, y0, x0)
        for n, (i, j) in enumerate(part):
            drops[i, j] = float(base[0] - vals[n])
    return drops, (ys, xs), window


def _unit(net, x, layer, c, y, xx) -> torch.Tensor:
    """Unit (c, y, xx) of `layer` for each image of `x`, from a forward stopped at the layer."""
    with torch.no_grad(), eval_mode(net):
        return features(net, x, [layer])[layer][:, c, y, xx].double().cpu()


def _agreement(net, x, layer, c, position, rule, u: UnitEvidence) -> float | None:
    """Spearman correlation of the projection's energy summed over each occluder square against the drop."""
    if u.causal is None or u.causal_grid is None:
        return None
    e = energy(_project(net, x, layer, c, position, rule))
    ys, xs = u.causal_grid
    side = u.causal_window
    pooled = torch.tensor([[float(e[y : y + side, x0 : x0 + side].sum()) for x0 in xs] for y in ys])
    return spearman(pooled, u.causal)
