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
from typing import Any, ClassVar, Literal

import torch
import torch.nn.functional as F
from torch import nn

from ..calling import api
from ..errors import UsageError
from ..layers import StopForward, capture, default_stage_layers, features, read_maps, resolve_layer, sites
from ..pixels import FILL_HELP, Fill, WithPreprocess, fill_problem, parse_fill, resolve_fill, split_model
from ..progress import bar
from ..receptive_field import crop_plan, layer_field, layer_geometries
from ..runtime import eval_mode, model_device
from ..settings import Settings, knob
from .deconvnet import RULES, Deconvnet, Target, gradient_instead
from .incremental import CostModel, Region, Replay, estimate, record

RuleName = str
Engine = Literal["auto", "field", "incremental", "whole"]  # how the causal maps' occluded copies run


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
    curve: bool = knob(
        True,
        "the whole cascade, one step a layer (false: its last step alone - every layer up to the unit re-initialized "
        "at once, the same draws - which is the score)",
    )
    baseline: bool = knob(
        True,
        "also score the specificity of the fully randomized model (the cascade's last state): the same score's "
        "baseline",
    )
    others: int = knob(8, "other units of the layer each projection is compared with (specificity)", low=1)
    window: int | None = knob(
        None,
        "the causal map's grey square, model-input pixels (none: a quarter of the unit's field, at least 1)",
        low=1,
    )
    stride: int | None = knob(None, "the causal map's step in pixels (none: --step of the window)", low=1)
    step: float = knob(
        0.5, "the causal map's step as a share of the window, when --stride is not given", above=0, high=1
    )
    engine: Engine = knob(
        "auto",
        "how the causal map's occluded copies run, each exact: field (each copy cut to the unit's receptive field), "
        "incremental (the incremental engine, where it replays the model), whole (forwards stopped at the layer), "
        "auto (field where the layer's fields are local, else incremental where its estimate says it is faster)",
    )
    fill: Fill = knob("grey", "the causal map's square: " + FILL_HELP, parse=parse_fill, check=fill_problem)
    seed: int = knob(0, "units drawn, other units drawn, re-initializations", low=0)


# --- similarity (Adebayo et al. Sec. 3: each map normalized, then compared) --------------------------------------


def ranks(x: torch.Tensor) -> torch.Tensor:
    """Ranks 1..n of a flat tensor, ties given their average rank (as scipy.stats.rankdata)."""
    return batched_ranks(x.flatten()[None].double())[0]


def spearman(a: torch.Tensor, b: torch.Tensor) -> float | None:
    """Spearman's rank correlation of two maps (None where one is constant: no ranking to compare)."""
    return _spearmans(a.flatten()[None], b.flatten()[None])[0]


def ssim(a: torch.Tensor, b: torch.Tensor, window: int = 7) -> float | None:
    """Mean structural similarity of two 2-D maps in [0, 1] (data range 1), scikit-image's defaults: a uniform
    `window` x `window` filter, sample covariances, K1 = 0.01, K2 = 0.03, the border's half window left out. A map
    smaller than the window takes the largest odd window that fits (scikit-image's `win_size`); below 3 px, None."""
    return _ssims(a.double()[None], b.double()[None], window)[0]


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
    return similarities([a], [b], [box])[0]


def similarities(
    a: Sequence[torch.Tensor] | torch.Tensor, b: Sequence[torch.Tensor] | torch.Tensor, boxes: Sequence[tuple | None]
) -> list[dict]:
    """`similarity` of each pair (a[i], b[i]) over boxes[i], computed batched for the pairs whose crops share a
    shape (thousands of pairs for an atlas's units)."""
    out: list[dict] = [{}] * len(a)
    groups: dict[tuple, list[int]] = {}
    crops = [(_crop(x, box), _crop(y, box)) for x, y, box in zip(a, b, boxes)]
    for i, (x, y) in enumerate(crops):
        groups.setdefault((tuple(x.shape), tuple(y.shape)), []).append(i)
    for members in groups.values():
        xs = torch.stack([crops[i][0] for i in members]).double()
        ys = torch.stack([crops[i][1] for i in members]).double()
        ex, ey = _energies(xs), _energies(ys)
        s = _ssims(ex, ey)
        sa = _spearmans(ex.flatten(1), ey.flatten(1))
        sg = _spearmans(xs.sum(1).flatten(1), ys.sum(1).flatten(1))
        for k, i in enumerate(members):
            out[i] = {"ssim": s[k], "spearman_abs": sa[k], "spearman": sg[k]}
    return out


def _energies(p: torch.Tensor) -> torch.Tensor:
    """`energy` of each of K x C x H x W projections: K x H x W."""
    m = p.abs().sum(1)
    top = m.flatten(1).amax(1)
    return m / torch.where(top > 0, top, 1.0)[:, None, None]


def _ssims(a: torch.Tensor, b: torch.Tensor, window: int = 7) -> list[float | None]:
    """`ssim` of each pair of K x H x W maps."""
    window = min(window, *a.shape[-2:])
    window -= 1 - window % 2
    if window < 3:
        return [None] * a.shape[0]
    x, y = a[:, None], b[:, None]
    n = window * window
    mean = lambda t: F.avg_pool2d(t, window, 1)  # noqa: E731 - the valid part only, as skimage crops after
    ux, uy = mean(x), mean(y)
    cov = n / (n - 1)
    vx, vy = cov * (mean(x * x) - ux * ux), cov * (mean(y * y) - uy * uy)
    vxy = cov * (mean(x * y) - ux * uy)
    c1, c2 = 0.01**2, 0.03**2
    s = ((2 * ux * uy + c1) * (2 * vxy + c2)) / ((ux * ux + uy * uy + c1) * (vx + vy + c2))
    return s.flatten(1).mean(1).tolist()


def batched_ranks(x: torch.Tensor) -> torch.Tensor:
    """`ranks` of each row of a K x n tensor (ties: their average rank)."""
    k, n = x.shape
    order = x.argsort(dim=1, stable=True)
    xs = x.gather(1, order)
    new = torch.ones_like(xs, dtype=torch.bool)
    new[:, 1:] = xs[:, 1:] != xs[:, :-1]
    group = new.long().cumsum(1) - 1
    place = torch.arange(1, n + 1, dtype=torch.float64).expand(k, n)
    sums = torch.zeros(k, n, dtype=torch.float64).scatter_add_(1, group, place)
    counts = torch.zeros(k, n, dtype=torch.float64).scatter_add_(1, group, torch.ones_like(place))
    avg = (sums / counts.clamp_min(1)).gather(1, group)
    return torch.empty_like(avg).scatter_(1, order, avg)


def _spearmans(a: torch.Tensor, b: torch.Tensor) -> list[float | None]:
    """`spearman` of each row pair of two K x n tensors."""
    ra, rb = batched_ranks(a.double()), batched_ranks(b.double())
    ra, rb = ra - ra.mean(1, keepdim=True), rb - rb.mean(1, keepdim=True)
    denom = ra.norm(dim=1) * rb.norm(dim=1)
    r = (ra * rb).sum(1) / torch.where(denom > 0, denom, 1.0)
    return [None if d == 0 else v for v, d in zip(r.tolist(), denom.tolist())]


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
    """The modules with parameters of their own that start running before `layer`'s maps are read, the unit's own
    layer first, then down to the first (Adebayo et al.'s cascade, from the unit down). Ordered by when each
    module's forward starts, so a container whose own parameters the unit depends on without its forward ending
    first (a ViT's class token on the model, its position embedding on the encoder) is in the cascade, where its
    forward starts."""
    order: list[str] = []
    names = {m: n for n, m in model.named_modules()}

    def hook(module, _inputs) -> None:
        name = names[module]
        if name not in order and next(module.parameters(recurse=False), None) is not None:
            order.append(name)

    hooks = [m.register_forward_pre_hook(hook) for m in model.modules()]
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


def shown(name: str) -> str:
    """A cascade step's module as results name it (the model's own parameters - a ViT's class token - have no
    name)."""
    return name or "(the model's own parameters)"


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
    randomized_specificity: dict[str, dict] = field(default_factory=dict)  # the same on the cascade's last model
    causal: torch.Tensor | None = field(default=None, repr=False)  # drop of the unit per occluder position
    causal_grid: tuple[list[int], list[int]] | None = None  # the occluder's top-left ys, xs
    causal_window: int = 0  # the occluder's side
    box: tuple[int, int, int, int] | None = None  # the unit's receptive field on the image, clipped (None: fc)
    agreement: dict[str, float | None] = field(default_factory=dict)  # rule -> Spearman(energy pooled, drop)
    projections: dict[str, torch.Tensor] = field(default_factory=dict, repr=False)  # rule -> trained, C x H x W
    randomized: dict[str, torch.Tensor] = field(default_factory=dict, repr=False)  # rule -> the cascade's last
    trained_energy: dict[str, torch.Tensor] = field(default_factory=dict, repr=False)  # while the causal map runs

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
            "randomized_specificity": self.randomized_specificity,
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
    causal_strategy: dict[str, str] = field(default_factory=dict)  # layer -> how its causal maps ran

    def to_json(self) -> dict:
        return {
            "settings": self.settings.to_json(),
            "feature_maps": self.maps,
            "rule_substituted": self.substituted,
            "causal_strategy": self.causal_strategy,
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
                                                                    "edge_ssim": [], "agreement": [],
                                                                    "randomized_other_ssim": []})  # fmt: skip
                row["weight_ssim"].append(steps[-1]["ssim"])
                base = u.randomized_specificity.get(rule)
                row["randomized_other_ssim"].append(base["other_units"]["ssim"] if base else None)
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


@dataclass(frozen=True)
class UnitAt:
    """A unit to check and where: `layer`'s map `channel` on image `image` of the batch at `position` (y, x) of
    its map (None: where it is strongest on that image; fc layers have none)."""

    layer: str
    channel: int
    image: int
    position: tuple[int, int] | None = None


@api
def evidence(
    model: nn.Module | WithPreprocess,
    images: torch.Tensor,
    *,
    channels: dict[str, Sequence[int]] | None = None,
    at: Sequence[UnitAt] | None = None,
    preprocess=None,
    pictures: bool = True,
    progress: bool = False,
    settings: EvidenceSettings | None = None,
    **changes: Any,
) -> Evidence:
    """Issue 36's evidence for units of `layers` on a batch of model input `images` (N x C x H x W): for each unit,
    on the image where it fires most (among `images`) at its strongest position, its weight dependence under
    cascading randomization, its specificity against other units and the edge map, and its causal map.
    `channels` (layer -> channels) names the units, `at` names units with their image and position (an atlas's
    top-1), else `settings.units` per layer are drawn with the seed among the maps that fire. All units of a layer
    share each projection pass and one copy of the model for the cascade; the causal maps run on the incremental
    engine where it replays the model (`causal_strategy` says, per layer). `pictures=False` keeps no projection
    (for thousands of units). The model is left as it was. Settings (`EvidenceSettings`) as a value or keywords."""
    s = EvidenceSettings.build(settings, **changes)
    net, pp = split_model(model, preprocess)
    if images.dim() != 4 or images.shape[0] < 1:
        raise UsageError(f"evidence takes a batch N x C x H x W (got shape {tuple(images.shape)})")
    shape = tuple(images.shape[1:])
    if at is not None:
        at = [u if isinstance(u, UnitAt) else UnitAt(*u) for u in at]
    layers = list(dict.fromkeys(u.layer for u in at)) if at else list(s.layers or default_stage_layers(net, shape))
    for layer in layers:
        resolve_layer(net, layer)
    fill_map, fill_name, _, fill_from = resolve_fill(net, s.fill, pp, images, "evidence's grey square")
    with torch.no_grad(), eval_mode(net):
        acts = features(net, images, layers)
    todo = list(at) if at else _units_to_check(acts, layers, channels, s)
    _check_units(todo, acts, images.shape[0])
    out: list[UnitEvidence] = []
    strategies: dict[str, str] = {}
    with bar(total=len(todo), desc="evidence", unit="unit", disable=not progress) as pbar:
        for layer in layers:
            mine = [u for u in todo if u.layer == layer]
            if mine:
                checked, strategies[layer] = _layer_evidence(
                    net, images, layer, mine, acts[layer], fill_map, s, pictures
                )
                out.extend(checked)
                pbar.update(len(mine))
    substituted = {r: gradient_instead(net, layers, images[:1], r) for r in s.rules}
    return Evidence(
        out,
        s,
        fill_name,
        fill_from,
        read_maps(net, layers, images),
        {r: d for r, d in substituted.items() if d},
        strategies,
    )


def _units_to_check(acts: dict[str, torch.Tensor], layers, channels, s: EvidenceSettings) -> list[UnitAt]:
    """Each named (or drawn) channel on the image where it fires most, at its strongest position."""
    chosen = channels or {l: _draw_units(acts[l], s.units, s.seed + k) for k, l in enumerate(layers)}
    out = []
    for layer in layers:
        for c in chosen.get(layer, []):
            image, position, _ = _strongest(acts[layer], int(c))
            out.append(UnitAt(layer, int(c), image, position))
    return out


def _check_units(todo: list[UnitAt], acts: dict[str, torch.Tensor], n: int) -> None:
    for u in todo:
        a = acts[u.layer]
        if not 0 <= u.channel < a.shape[1]:
            raise UsageError(
                f"channel {u.channel} does not exist in {u.layer} ({a.shape[1]} maps: 0..{a.shape[1] - 1})"
            )
        if not 0 <= u.image < n:
            raise UsageError(f"image {u.image} is not in the batch of {n}; pass an index 0..{n - 1}")
        if u.position is not None and (
            a.dim() != 4 or not (0 <= u.position[0] < a.shape[2] and 0 <= u.position[1] < a.shape[3])
        ):
            where = f"{a.shape[2]}x{a.shape[3]} maps" if a.dim() == 4 else "no maps (fully connected)"
            raise UsageError(f"position {u.position} is outside {u.layer}'s {where}; pass one inside or none")


def _draw_units(act: torch.Tensor, n: int, seed: int) -> list[int]:
    """`n` channels drawn with `seed` among those that fire (maximum > 0) on some image; all when fewer."""
    peak = act.flatten(2).amax(2).amax(0) if act.dim() == 4 else act.amax(0)
    fired = (peak > 0).nonzero().flatten()
    pool = fired if len(fired) else torch.arange(act.shape[1])
    g = torch.Generator().manual_seed(seed)
    return sorted(pool[torch.randperm(len(pool), generator=g)[:n]].tolist())


def _strongest(act: torch.Tensor, c: int, image: int | None = None) -> tuple[int, tuple[int, int] | None, float]:
    """(image, position, value) of map `c`'s strongest activation over the batch (or on `image`; first in
    row-major order)."""
    if act.dim() != 4:
        image = int(act[:, c].argmax()) if image is None else image
        return image, None, float(act[image, c])
    peaks = act[:, c].flatten(1)
    image = int(peaks.amax(1).argmax()) if image is None else image
    where = int(peaks[image].argmax())
    return image, divmod(where, act.shape[-1]), float(peaks[image, where])


PROJECTION_BYTES = 64 << 20  # projections held at once while a layer's units are compared


def _layer_evidence(
    net, images, layer: str, todo: list[UnitAt], act: torch.Tensor, fill_map, s: EvidenceSettings, pictures: bool
) -> tuple[list[UnitEvidence], str]:
    """Every score of `todo` (units of one layer), in chunks of units whose projections fit PROJECTION_BYTES:
    each rule's projections of a chunk in one pass, the cascade on one copy of the model per chunk (each step's
    re-initialization is the same for every unit: seeded by the step)."""
    shape = tuple(images.shape[1:])
    rf = layer_field(net, layer, shape)
    units = []
    for want in todo:
        if want.position is None:
            image, position, value = _strongest(act, want.channel, want.image)
        else:
            y, x = want.position
            image, position, value = want.image, want.position, float(act[want.image, want.channel, y, x])
        e = UnitEvidence(layer, want.channel, image, position, value, {r: [] for r in s.rules}, {})
        e.box = rf.clipped_box(*position) if position is not None else None
        units.append(e)
    per = max(1, PROJECTION_BYTES // (images[0].numel() * images.element_size() * (s.others + 2) * len(s.rules)))
    order = cascade_layers(net, layer, shape)
    for start in range(0, len(units), per):
        chunk = units[start : start + per]
        targets = [Target(u.image, layer, u.channel, *(u.position or (None, None))) for u in chunk]
        trained = {r: _project_all(net, images, targets, r) for r in s.rules}
        randomized, last = _cascade(net, images, targets, chunk, trained, order, s, pictures)
        for r in s.rules:
            for u, spec in zip(chunk, _specificity(net, images, targets, chunk, trained[r], r, act.shape[1], s)):
                u.specificity[r] = spec
            if s.baseline and r in last:  # the same score on the fully randomized model: its baseline
                for u, spec in zip(
                    chunk, _specificity(randomized, images, targets, chunk, last[r], r, act.shape[1], s)
                ):
                    u.randomized_specificity[r] = spec
        del randomized
        if pictures:
            for i, u in enumerate(chunk):
                u.projections = {r: trained[r][i] for r in s.rules}
        for i, u in enumerate(chunk):
            u.trained_energy = {r: energy(trained[r][i]) for r in s.rules}
    strategy = causal_maps(net, images, layer, units, rf, fill_map, s)
    for u in units:
        if u.causal is not None:
            u.agreement = {r: _agreement(u.trained_energy[r], u) for r in s.rules}
        u.trained_energy = {}
    return units, strategy


def _project_all(net: nn.Module, images: torch.Tensor, targets: list[Target], rule: str) -> torch.Tensor:
    """Each target's projection seeded with 1 (the picture's shape, whatever the activation), K x C x H x W, in
    batched passes."""
    with Deconvnet(net, rule=rule, other="gradient") as dn:
        return dn.project_targets(images, targets, unit=True).detach().cpu()


def _cascade(net, images, targets, chunk: list[UnitEvidence], trained: dict, order: list[str], s, keep: bool):
    """Adebayo et al.'s cascade for a chunk of one layer's units: the layer re-initialized, then each layer below
    in turn (the same draw for every unit); after each step each unit's projection compared with its trained
    one. The last step's projections are kept as the units' `randomized` (`keep`). Returns the randomized model
    and the last step's projections per rule."""
    copied = copy.deepcopy(net)
    lasts: dict[str, torch.Tensor] = {}
    modules = dict(copied.named_modules())
    for k, name in enumerate(order):
        reinitialize(modules[name], s.seed + 1000 + k)
        if not s.curve and k < len(order) - 1:
            continue
        for r in s.rules:
            last = _project_all(copied, images, targets, r)
            scores = similarities(trained[r], last, [u.box for u in chunk])
            silent = last.flatten(1).abs().amax(1) == 0  # a unit fell silent: nothing left to compare
            for i, u in enumerate(chunk):
                done = shown(name) if s.curve else ", ".join(map(shown, order))
                u.cascade[r].append({"randomized": done, **scores[i], "vanished": bool(silent[i])})
                if keep and k == len(order) - 1:
                    u.randomized[r] = last[i]
            if k == len(order) - 1:
                lasts[r] = last
    return copied, lasts


def _others(c: int, channels: int, s: EvidenceSettings) -> list[int]:
    g = torch.Generator().manual_seed(s.seed + 7 * c + 1)
    return [k for k in torch.randperm(channels, generator=g).tolist() if k != c][: s.others]


def _specificity(net, images, targets, chunk: list[UnitEvidence], mine: torch.Tensor, rule, channels: int, s) -> list:
    """Each unit's projection against `s.others` other units of the layer at the same image and position (their
    mean similarity; all of the chunk's in one pass), and against the image's Sobel edge map; one entry a unit."""
    rests = [_others(u.channel, channels, s) for u in chunk]
    flat = [Target(t.image, t.layer, k, t.y, t.x) for t, rest in zip(targets, rests) for k in rest]
    theirs = _project_all(net, images, flat, rule) if flat else None
    pairs = [(i, j) for i, rest in enumerate(rests) for j in range(len(rest))]
    scores = similarities([mine[i] for i, _ in pairs], list(theirs) if theirs is not None else [],
                          [chunk[i].box for i, _ in pairs])  # fmt: skip
    edges_of = {u.image: sobel(images[u.image].detach().cpu()) for u in chunk}
    to_edges = similarities(mine, [edges_of[u.image] for u in chunk], [u.box for u in chunk])
    at, out = 0, []
    for i, rest in enumerate(rests):
        mean = {m: _mean([d[m] for d in scores[at : at + len(rest)]]) for m in ("ssim", "spearman_abs", "spearman")}
        at += len(rest)
        e = {**to_edges[i], "spearman": None}  # an edge map has no sign
        out.append({"other_units": mean, "others": rest, "edges": e})
    return out


def _mean(values: list[float | None]) -> float | None:
    kept = [v for v in values if v is not None]
    return sum(kept) / len(kept) if kept else None


def causal_grid(rf, position, hw: tuple[int, int], s: EvidenceSettings) -> tuple[list[int], list[int], int]:
    """The occluder's top-left corners (ys, xs) over the unit's receptive field (clipped to the image) and its
    side: `s.window` (none: a quarter of the field's side, at least 1), step `s.stride` (none: `s.step` of the side)."""
    h, w = hw
    top, left, bottom, right = rf.clipped_box(*position)
    window = s.window or max(1, (max(h, w) if rf.is_global else max(rf.size)) // 4)
    window = min(window, h, w)
    stride = s.stride or max(1, round(window * s.step))
    ys = list(range(max(0, top - window + 1), max(1, min(bottom, h - window + 1)), stride))
    xs = list(range(max(0, left - window + 1), max(1, min(right, w - window + 1)), stride))
    return ys, xs, window


def causal_maps(net, images, layer, units: list[UnitEvidence], rf, fill_map, s: EvidenceSettings) -> str:
    """Each unit's causal map (`UnitEvidence.causal`): the grey square at each position of `causal_grid`, and
    the drop of the unit's activation at its own position (unoccluded minus occluded). Three exact ways to run
    the occluded copies (`s.engine`): "field" cuts each to the unit's receptive field (batched across units),
    "incremental" replays one image's recorded forward on the incremental engine (`zfnet.methods.incremental`:
    only the rectangle the square reaches is recomputed, up to the layer), "whole" runs forwards stopped at the
    layer. "auto" prices the incremental engine on the layer's first image against the field's share of the
    image and takes the cheaper; an image the engine cannot replay falls back. Returns what ran, and why."""
    h, w = images.shape[-2:]
    jobs: dict[int, list[tuple[UnitEvidence, int, int, int, int]]] = {}
    for u in (u for u in units if u.position is not None):
        ys, xs, window = causal_grid(rf, u.position, (h, w), s)
        u.causal, u.causal_grid, u.causal_window = torch.zeros(len(ys), len(xs), dtype=torch.float64), (ys, xs), window
        for i, y in enumerate(ys):
            for j, x in enumerate(xs):
                jobs.setdefault(u.image, []).append((u, i, j, y, x))
    if not jobs:
        return "none (no spatial unit)"
    local = layer_geometries(net, [layer], tuple(images.shape[1:])).get(layer) is not None
    fallback = "field" if local and s.engine != "whole" else "whole"
    engine: str = s.engine if s.engine != "field" or local else "whole"
    recorded: dict[int, Replay | str] = {}  # image -> its replay (or why none): the first is recorded once
    if engine == "auto":
        engine = _cheaper(net, images, layer, next(iter(jobs.items())), rf, local, recorded)
    rest: list[tuple[UnitEvidence, int, int, int, int]] = []
    why: set[str] = set()
    for image, part in jobs.items():
        reason = (
            _causal_incremental(net, images, image, layer, part, fill_map, recorded) if engine == "incremental" else ""
        )
        if engine != "incremental" or reason:
            rest.extend(part)
            why.add(reason)
    if fallback == "field":
        _causal_field(net, images, layer, rest, fill_map, rf)
    else:
        _causal_whole(net, images, layer, rest, fill_map)
    said = {"field": "field (each occluded copy cut to the unit's receptive field)",
            "whole": "whole forwards stopped at the layer"}[fallback]  # fmt: skip
    if engine == "incremental" and not rest:
        return "incremental"
    if engine == "incremental":
        return "incremental, " + said + " where " + "; ".join(sorted(why))
    return said + ("" if local else " (the layer's fields are not local: each unit sees the whole image)")


def _replay(net, images, image: int, layer: str, recorded: dict) -> Replay | str:
    """Image `image`'s forward recorded up to `layer`'s maps, as a replay (kept in `recorded`); else why not."""
    if image not in recorded:
        x = images[image : image + 1]
        feat = sites(net, [layer], x)[layer]
        if feat.layout != "maps":
            recorded[image] = f"the layer's maps are {feat.layout}, not convolutional"
        else:
            with torch.no_grad(), eval_mode(net):
                graph, _ = record(net, x, feat)
            recorded[image] = (
                Replay.of(graph, feature_only=True)
                if graph.feature >= 0
                else "the layer's output is not a recorded value"
            )
    return recorded[image]


def _cheaper(net, images, layer, first, rf, local: bool, recorded: dict, batch: int = 64) -> str:
    """ "incremental" where the engine's estimate (`incremental.estimate`, on the layer's first image) beats the
    field's share of a whole forward (or whole forwards, for a layer without local fields); else the fallback."""
    image, part = first
    share = 1.0
    if local:
        boxes = [crop_plan(rf, *u.position)[0] for u, *_ in part]
        share = sum((b - t) * (r - l) for t, l, b, r in boxes) / (len(boxes) * images.shape[-1] * images.shape[-2])
    replay = _replay(net, images, image, layer, recorded)
    if isinstance(replay, str):
        return "field" if local else "whole"
    cells = [(y, xx) for *_, y, xx in part]
    batches = [([y for y, _ in cells[k : k + batch]], [xx for _, xx in cells[k : k + batch]])
               for k in range(0, len(cells), batch)]  # fmt: skip
    speedup = estimate(replay, batches, part[0][0].causal_window, None, CostModel()).speedup
    return "incremental" if speedup * share > 1.0 else ("field" if local else "whole")


def _causal_field(net, images, layer, jobs, fill_map, rf, pixels: int = 32 * 224 * 224) -> None:
    """The jobs' occluded images cut to each unit's receptive field (`receptive_field.crop_plan`: the window on
    which the unit computes exactly as on the whole image; the square's part outside it cannot reach the unit),
    as forwards stopped at `layer`, batched across units by the window's shape."""
    by_shape: dict[tuple[int, int], list[tuple]] = {}
    for job in jobs:
        u, _, _, y, x = job
        (t, l, b, r), inside = crop_plan(rf, *u.position)
        by_shape.setdefault((b - t, r - l), []).append((job, (t, l, b, r), inside))
    for (ch, cw), members in by_shape.items():
        per = max(1, min(1024, pixels // (ch * cw)))
        for k in range(0, len(members), per):
            part = members[k : k + per]
            crops = []
            for (u, _, _, y, x), (t, l, b, r), _ in part:
                crop = images[u.image, :, t:b, l:r].clone()
                w = u.causal_window
                y0, x0, y1, x1 = max(y, t), max(x, l), min(y + w, b), min(x + w, r)
                if y1 > y0 and x1 > x0:
                    crop[:, y0 - t : y1 - t, x0 - l : x1 - l] = fill_map[:, y0:y1, x0:x1]
                crops.append(crop)
            maps = _maps(net, torch.stack(crops), layer)
            n = torch.arange(len(part))
            c = torch.tensor([job[0].channel for job, _, _ in part])
            ys = torch.tensor([inside[0] for _, _, inside in part])
            xs = torch.tensor([inside[1] for _, _, inside in part])
            vals = maps[n, c, ys, xs].double().cpu()
            for q, ((u, i, j, _, _), _, _) in enumerate(part):
                u.causal[i, j] = float(u.activation - vals[q])


def _pasted(x: torch.Tensor, fill_map: torch.Tensor, y: int, xx: int, window: int) -> torch.Tensor:
    out = x.clone()
    out[:, y : y + window, xx : xx + window] = fill_map[:, y : y + window, xx : xx + window]
    return out


def _causal_whole(net, images, layer, jobs, fill_map, pixels: int = 32 * 224 * 224) -> None:
    """The jobs' occluded images as whole forwards stopped at `layer`, batched across units and images."""
    per = max(1, min(1024, pixels // (images.shape[-1] * images.shape[-2])))
    for k in range(0, len(jobs), per):
        part = jobs[k : k + per]
        xb = torch.stack([_pasted(images[u.image], fill_map, y, x, u.causal_window) for u, _, _, y, x in part])
        vals = _units_of(_maps(net, xb, layer), part)
        for n, (u, i, j, _, _) in enumerate(part):
            u.causal[i, j] = float(u.activation - vals[n])


def _maps(net, x, layer) -> torch.Tensor:
    with torch.no_grad(), eval_mode(net):
        return features(net, x, [layer])[layer]


def _units_of(maps: torch.Tensor, part) -> torch.Tensor:
    """Each job's unit (channel, y, x) from a batch of maps, one sample per job."""
    n = torch.arange(len(part), device=maps.device)
    c = torch.tensor([u.channel for u, *_ in part], device=maps.device)
    y = torch.tensor([u.position[0] for u, *_ in part], device=maps.device)
    x = torch.tensor([u.position[1] for u, *_ in part], device=maps.device)
    return maps[n, c, y, x].double().cpu()


def _causal_incremental(net, images, image: int, layer, jobs, fill_map, recorded: dict, batch: int = 64) -> str:
    """One image's jobs on the incremental engine ("" when done; else why not, and nothing is filled in)."""
    replay = _replay(net, images, image, layer, recorded)
    if isinstance(replay, str):
        return replay
    x = images[image : image + 1]
    window = jobs[0][0].causal_window
    with torch.no_grad(), eval_mode(net):
        base = replay.graph.nodes[replay.graph.feature].value
        done: list[tuple[tuple, float]] = []
        for k in range(0, len(jobs), batch):
            part = jobs[k : k + batch]
            patch = torch.stack([fill_map[:, y : y + window, xx : xx + window] for *_, y, xx in part]).to(x.dtype)
            try:
                _, fv = replay.run([y for *_, y, _ in part], [xx for *_, xx in part], patch)
            except Exception as e:  # noqa: BLE001 - an op the replay cannot run means another way, said
                return f"its graph cannot be replayed on a batch ({type(e).__name__})"
            maps = fv.materialize() if isinstance(fv, Region) else fv.value
            if k == 0 and not _same_as_whole(net, x, layer, part[0], maps[0], fill_map, window, base):
                return "a replay of its recorded graph does not give what its forward gives"
            done.extend(zip(part, _units_of(maps, part).tolist()))
    for (u, i, j, _, _), v in done:
        u.causal[i, j] = u.activation - v
    return ""


def _same_as_whole(net, x, layer, job, got: torch.Tensor, fill_map, window: int, base: torch.Tensor) -> bool:
    """The first replayed sample against a whole forward of the same occluded image (float rounding of a region
    against a whole map is ~1e-6 of the maps' size; a wrong op far more)."""
    _, _, _, y, xx = job
    want = _maps(net, _pasted(x[0], fill_map, y, xx, window)[None], layer)[0]
    scale = float(base.abs().max()) + float(want.abs().max())
    return got.shape == want.shape and bool(torch.allclose(got, want, rtol=1e-3, atol=1e-4 * scale + 1e-7))


def _agreement(e: torch.Tensor, u: UnitEvidence) -> float | None:
    """Spearman correlation of the projection's energy `e` summed over each occluder square against the drop."""
    if u.causal is None or u.causal_grid is None:
        return None
    ys, xs = u.causal_grid
    side = u.causal_window
    sat = F.pad(e.cumsum(0).cumsum(1), (1, 0, 1, 0))  # summed-area table: each square's sum in four lookups
    t = torch.tensor(ys)[:, None]
    l = torch.tensor(xs)[None, :]
    b, r = (t + side).clamp(max=e.shape[0]), (l + side).clamp(max=e.shape[1])
    pooled = sat[b, r] - sat[t, r] - sat[b, l] + sat[t, l]
    return spearman(pooled, u.causal)
