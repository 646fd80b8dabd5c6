"""Occlusion sensitivity (Sec. 4.2, Fig. 6): cover part of the image with a grey square at every position of a
grid and record (b) the total activation of the layer's strongest feature map, (d) the probability of the true
class and (e) the most probable class; (c) is the deconvnet projection of that map on the unoccluded image.

Positions: the square's top-left corner at 0, S, 2S, ... <= H - W on each axis; when S does not divide H - W,
also the flush last position H - W, so that the bottom and right edges are always covered. The square is the
paper's grey square: uniform in pixel space, grey = the training set's mean pixel per channel
(`Preprocess.grey`), pasted into the image before preprocessing - in model-input units `grey - mean image`
(see `zfnet.pixels`). `fill="mean-image"` pastes 0 in model-input units instead (the per-pixel mean image
itself: not a square the model could have seen), a number or one per channel pastes those pixel values.
The strongest map is the one with the largest single activation on the unoccluded image (as in Fig. 2, and
where (c) projects it from); its activity (b) is the map's sum over all positions.

Strategies (`strategy=`):
  auto    (the default) exact where it pays, else naive: `incremental.estimate` prices both from the model's
          geometry (the share of each layer's map an occluder changes, the multiply-adds and copies that costs)
          and incremental inference runs when it is estimated faster (`AUTO_MARGIN`).
  naive   every occluded image through the whole model, batched (channels-last, which oneDNN's convs prefer).
  exact   incremental inference (`zfnet.methods.incremental`; the idea of Krypton, Nakandala et al., SIGMOD
          2019, carried from chains to any module graph): the unoccluded image runs once, recorded as a graph
          of modules and functions with every value kept; for a batch of occluder positions each conv / pool
          recomputes only the rectangle the occluder can have changed (its projective field, read from the
          kept maps around it), pointwise ops act on that rectangle alone, additions and concatenations on the
          union of their inputs' rectangles (ResNet, DenseNet), and any other op on whole maps from there on.
          Equal to `naive` up to float rounding. A model whose recorded graph cannot be replayed on a batch
          falls back to whole forwards, and the result says why.
  approx  Krypton's two approximations on top of exact: the changed region may grow to at most `tau` of each
          layer's map (projective-field threshold; outside it the unoccluded values are used), and adaptive
          drill-down: every other grid position is occluded first, the positions in between are interpolated,
          and the `drill` share of them where p(target) changes most around them is computed (drill=None: all
          positions). The result says how far it is from exact when asked (`compare_exact=True`).
"""

from __future__ import annotations

import time
import typing
import weakref
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar, Literal

import torch
import torch.nn.functional as F
from torch import nn

from ..calling import api
from ..data.preprocess import Preprocess
from ..errors import UsageError
from ..layers import Site, capture, features, resolve_layer, sites, top_layer, unrectified_note
from ..pixels import FILL_HELP, Fill, WithPreprocess, fill_problem, parse_fill, resolve_fill, split_model
from ..runtime import eval_mode
from ..settings import Settings, knob
from .deconvnet import RULE_HELP, Deconvnet, Rule
from .incremental import Batch, CostModel, Estimate, Region, Replay, estimate, order_positions, record

Strategy = Literal["auto", "exact", "naive", "approx"]
STRATEGIES: tuple[str, ...] = typing.get_args(Strategy)
Precision = Literal["bfloat16", "float32"]  # approx: what convs and linear layers take the change in
# auto runs incremental inference when it is estimated faster than whole forwards; measured on six bench cases the
# estimate errs low where incremental inference wins big (ZFNet-224: 3.4x estimated, 6.0x measured) and high by at
# most 25% on ResNets at 64 px (0.75x estimated, 0.60x measured), where whole forwards win either way
AUTO_MARGIN = 1.0


@dataclass(frozen=True)
class OcclusionSettings(Settings):
    """Fig. 6's settings (Sec. 4.2); sizes are in model-input pixels. The paper's 224 px figures use a 32 px
    square; `for_input` scales window and stride to another input (2/7 of it, a quarter of that) where the caller
    gave none - the report's and the explorer's rule."""

    method: ClassVar[str] = "occlusion"
    renamed: ClassVar[dict[str, str]] = {"mode": "strategy", "projection_mode": "rule"}

    window: int = knob(32, "the grey square's side, model-input pixels", low=1)
    stride: int = knob(8, "the step between occluder positions, model-input pixels", low=1)
    fill: Fill = knob("grey", "the occluder: " + FILL_HELP, parse=parse_fill, check=fill_problem)
    layer: str | None = knob(
        None, "the layer whose strongest map panels (b) and (c) show (default: the top one: conv5 for Fig. 3's family)"
    )
    strategy: Strategy = knob(
        "auto",
        "auto: exact where the model's geometry says it pays, else naive; exact: incremental inference; naive: "
        "whole forwards; approx: layers on the change in bfloat16 and a checkerboard drill-down",
        aliases=("--mode",),
    )
    rule: Rule = knob("deconvnet", "panel (c): " + RULE_HELP)
    tau: float = knob(
        1.0,
        "approx: the largest share of a map the region may grow to (Krypton's threshold; 1: no cap)",
        above=0,
        high=1,
    )
    drill: float | None = knob(
        0.4,
        "approx: the share of the checkerboard's interpolated positions computed too, where p(true) varies most "
        "(1 or none: all)",
        low=0,
        high=1,
    )
    precision: Precision = knob(
        "bfloat16", "approx: convs and linear layers see the change the occluder makes in this precision"
    )
    compare_exact: bool = knob(False, "approx: also run exact and report the deviation")

    @classmethod
    def for_input(cls, size: int, base: OcclusionSettings | None = None, **given: Any) -> OcclusionSettings:
        """Settings for a `size` px input: a window of 2/7 of it and a stride of a quarter of that, unless given."""
        window, stride = given.pop("window", None), given.pop("stride", None)  # a value given is never replaced
        window = max(2, round(size * 2 / 7)) if window is None else window
        stride = max(1, window // 4) if stride is None and isinstance(window, int) else stride
        return cls.build(base, window=window, stride=stride, **given)


@dataclass
class OcclusionResult:
    """Fig. 6's maps as plain tensors (n_y x n_x, one cell per occluder position) and what made them."""

    ys: torch.Tensor  # n_y top rows of the occluder
    xs: torch.Tensor  # n_x left columns
    activity: torch.Tensor  # (b) total activation of `channel` in `layer` per position
    prob: torch.Tensor  # (d) p(target) per position
    top_class: torch.Tensor  # (e) most probable class per position (long)
    top_prob: torch.Tensor  # its probability
    projection: torch.Tensor  # (c) C x H x W deconvnet projection of `channel` on the unoccluded image
    layer: str
    channel: int  # the strongest map of `layer` on the unoccluded image
    channel_position: tuple[int, int] | None  # where it is strongest (projected from there)
    target: int
    base_prob: float  # p(target) on the unoccluded image
    base_activity: float
    base_class: int
    settings: OcclusionSettings  # what was asked for
    fill: str  # "grey", "mean-image" or "pixels" (see the module docstring)
    strategy: str  # what ran: naive when incremental inference cannot, exact for auto when it pays
    seconds: float = 0.0
    deviation: dict = field(default_factory=dict)  # approx vs exact, when compared
    fallback: str = ""  # why incremental inference could not run, when it could not
    estimated_speedup: float | None = None  # auto: incremental inference's estimated speed over whole forwards
    target_source: str = "label"  # "label": the target was given; "predicted": the unoccluded image's top class
    fill_pixels: list[float] | None = None  # the square's pixel values per channel (None: the mean image)
    fill_source: str = ""  # where those values come from (`zfnet.pixels.fill_source`)
    maps: dict[str, dict] = field(default_factory=dict)  # the tensor panel (b) reads (`zfnet.layers.read_maps`)
    rule_note: str = ""  # panel (c)'s projection took the gradient: the rule does not apply to this model

    @property
    def window(self) -> int:
        return self.settings.window

    @property
    def stride(self) -> int:
        return self.settings.stride

    def describe(self) -> str:
        """What ran, in words, for captions: exact / naive / approx, why auto chose it, a fallback and its reason."""
        s = self.settings
        what = {
            "exact": "exact incremental computation (only the region each occluder changes is recomputed)",
            "naive": "whole forward passes",
            "approx": f"approximate (tau {s.tau}, drill {s.drill}, layers on the change in {s.precision})",
        }[self.strategy]
        if self.fallback:
            return f"{s.strategy} asked, fell back to {what}: {self.fallback}"
        if s.strategy == "auto" and self.estimated_speedup is not None:
            speed = f"{self.estimated_speedup:.3g}x"
            return f"{what}, chosen by auto (incremental inference estimated {speed} whole forwards)"
        return what

    def to_json(self) -> dict:
        return {
            "layer": self.layer,
            "channel": self.channel,
            "channel_position": list(self.channel_position) if self.channel_position else None,
            "target": self.target,
            "base_prob": self.base_prob,
            "base_activity": self.base_activity,
            "base_class": self.base_class,
            "settings": self.settings.to_json(),
            "window": self.window,
            "stride": self.stride,
            "fill": self.fill,
            "fill_pixels": self.fill_pixels,
            "fill_source": self.fill_source,
            "strategy": self.strategy,
            "seconds": self.seconds,
            "deviation": self.deviation,
            "fallback": self.fallback,
            "estimated_speedup": self.estimated_speedup,
            "target_source": self.target_source,
            "computation": self.describe(),
            "feature_maps": self.maps,
            "feature_maps_note": unrectified_note(self.maps),
            "projection_rule_note": self.rule_note,
            "ys": self.ys.tolist(),
            "xs": self.xs.tolist(),
            "activity": self.activity.tolist(),
            "prob": self.prob.tolist(),
            "top_class": self.top_class.tolist(),
            "top_prob": self.top_prob.tolist(),
        }


def positions(size: int, window: int, stride: int) -> list[int]:
    """Top-left corners 0, S, 2S, ... <= size - window, plus the flush last one when S does not divide it."""
    if not 1 <= window <= size:
        raise UsageError(f"occluder window {window} does not fit the {size} px input; pick 1..{size}")
    if stride < 1:
        raise UsageError(f"occluder stride {stride} must be at least 1")
    out = list(range(0, size - window + 1, stride))
    if out[-1] != size - window:
        out.append(size - window)
    return out


# --- one batch of occluder positions through the recorded graph ----------------------------------------------


def _region_sum(value: Region | Batch, channel: int) -> torch.Tensor:
    """Each sample's total of one feature map; for a region, the base map's total with the rectangle swapped
    (rectangle sums from a summed-area table, in float64)."""
    if isinstance(value, Batch):
        return value.value[:, channel].flatten(1).sum(1)
    if value.full():
        return value.patch[:, channel].flatten(1).sum(1)
    base = value.base[0, channel].double()
    sat = F.pad(base.cumsum(0).cumsum(1), (1, 0, 1, 0))
    h, w = value.size
    t, l = torch.tensor(value.top), torch.tensor(value.left)
    inside = sat[t + h, l + w] - sat[t, l + w] - sat[t + h, l] + sat[t, l]
    return (base.sum() - inside.to(base.device) + value.patch[:, channel].double().flatten(1).sum(1)).float()


def _whole(value: Region | Batch) -> torch.Tensor:
    return value.materialize() if isinstance(value, Region) else value.value


def _replays(model: nn.Module, x: torch.Tensor, replay: Replay, logits: torch.Tensor, probe) -> str:
    """ "" when a replay gives what whole forwards give, for a no-op occluder (the image's own pixels) and a real
    one (`probe`: top, left, patch); else why not. A replay that cannot follow the model (a batch size baked into
    an op, a branch the occluder takes) shows here."""
    top, left, patch = probe
    h, w = patch.shape[-2:]
    occluded_x = x.clone()
    occluded_x[0, :, top : top + h, left : left + w] = patch
    want = torch.cat([logits, model(occluded_x)])
    try:
        out, _ = replay.run([0, top], [0, left], torch.stack([x[0, :, :h, :w], patch]))
        got = _whole(out)
    except Exception as e:  # noqa: BLE001 - any op the replay cannot run means whole forwards, said in the result
        return f"its graph cannot be replayed on a batch ({type(e).__name__}: {str(e)[:80]})"
    # float rounding of a region against a whole map moves the logits by ~1e-6 of their size; a wrong op by far more
    scale = float(want.abs().max())
    if got.shape != want.shape or not torch.allclose(got, want, rtol=1e-3, atol=1e-3 * scale + 1e-7):
        return "a replay of its recorded graph does not give what its forward gives (control flow?)"
    return ""


@dataclass
class _Tally:
    """Positions computed so far over a batch of images, reported to a `progress(done, total)` callback."""

    callback: Callable[[int, int], None] | None
    images: int
    per_image: int
    image: int
    done: int = 0

    def add(self, n: int) -> None:
        self.done = min(self.per_image, self.done + n)
        if self.callback is not None:
            self.callback(self.image * self.per_image + self.done, self.images * self.per_image)


@dataclass
class _Plan:
    """What runs for one image: the mode, the replay (None: whole forwards), why incremental inference could not
    run (when asked for and it could not), the unoccluded logits and feature maps, auto's estimate."""

    mode: str
    replay: Replay | None
    fallback: str
    logits: torch.Tensor
    feature: torch.Tensor | None
    estimated: Estimate | None


# auto's estimates, by model (structure) and geometry: they depend on neither the weights nor the image, so a
# second image of the same model skips the recording when whole forwards win
_estimates: dict[tuple, tuple[weakref.ref, tuple, Estimate]] = {}


def _forget(key: tuple):
    def drop(_) -> None:  # the model is gone: so is its estimate
        _estimates.pop(key, None)

    return drop


def _structure(model: nn.Module) -> tuple:
    return tuple(type(m).__name__ for m in model.modules())


def _plan(
    model: nn.Module,
    x: torch.Tensor,
    feat: Site,
    mode: str,
    geometry: tuple,
    ys: list[int],
    xs: list[int],
    batch: int,
    probe: tuple[int, int, torch.Tensor],
) -> _Plan:
    """Decide how one image's occlusion runs (see the module docstring's modes)."""
    key = (id(model), tuple(x.shape), x.dtype, x.device, *geometry)
    hit = _estimates.get(key)
    known = hit[2] if hit is not None and hit[0]() is model and hit[1] == _structure(model) else None
    if mode == "naive" or (mode == "auto" and known is not None and known.speedup < AUTO_MARGIN):
        return _Plan("naive", None, "", model(x), None, known)
    if feat.layout != "maps":  # tokens mix across the image at every attention layer: no region to follow
        return _Plan("naive", None, f"the layer's maps are {feat.layout}, not convolutional", model(x), None, None)
    graph, logits = record(model, x, feat)
    if graph.output < 0 or not isinstance(logits, torch.Tensor):
        return _Plan("naive", None, "its output is not one tensor made by the recorded forward", logits, None, None)
    if graph.feature < 0:
        return _Plan("naive", None, "the feature layer's output is not a recorded value", logits, None, None)
    replay = Replay.of(graph)
    feature = graph.nodes[graph.feature].value
    estimated = known
    if mode == "auto" and estimated is None:  # priced on raster-order batches, before anything else is spent
        cells = [(y, xx) for y in ys for xx in xs]
        batches = [([y for y, _ in cells[s : s + batch]], [xx for _, xx in cells[s : s + batch]])
                   for s in range(0, len(cells), batch)]  # fmt: skip
        estimated = estimate(replay, batches, probe[2].shape[-1], None, CostModel())
        _estimates[key] = (weakref.ref(model, _forget(key)), _structure(model), estimated)
    if mode == "auto" and estimated is not None and estimated.speedup < AUTO_MARGIN:
        return _Plan("naive", None, "", logits, feature, estimated)
    why = _replays(model, x, replay, logits, probe)
    if why:
        return _Plan("naive", None, why, logits, feature, estimated)
    return _Plan("exact" if mode == "auto" else mode, replay, "", logits, feature, estimated)


# --- the method ---------------------------------------------------------------------------------------------


@dataclass
class OcclusionResults:
    """Fig. 6 for a batch: one `OcclusionResult` per image, in order."""

    results: list[OcclusionResult]

    def __len__(self) -> int:
        return len(self.results)

    def __getitem__(self, i: int) -> OcclusionResult:
        return self.results[i]

    def __iter__(self):
        return iter(self.results)

    def to_json(self) -> dict:
        return {"images": [r.to_json() for r in self.results]}


@api
def occlusion(
    model: nn.Module | WithPreprocess,
    images: torch.Tensor,
    *,
    target: int | Sequence[int | None] | None = None,
    preprocess: Preprocess | None = None,
    settings: OcclusionSettings | None = None,
    batch_size: int | None = None,
    progress: Callable[[int, int], None] | None = None,
    **changes: Any,
) -> OcclusionResults:
    """Fig. 6 for each image of a batch of model input (N x C x H x W): see the module docstring. `target`: the
    class whose probability (d) maps - one for all images, one per image, or None (each image's predicted
    class). `model` may be an opened model (its preprocessing gives the grey), else pass `preprocess`. Settings
    (`OcclusionSettings`) as a value or as keywords (`window=8, stride=2`); `batch_size` and `progress(done,
    total)` (positions computed, all images of the batch together) change only how it runs."""
    s = OcclusionSettings.build(settings, **changes)
    model, pp = split_model(model, preprocess)
    if s.layer is None:  # the top of the layers Fig. 2 shows (conv5 for the paper's models)
        s = s.replace(layer=top_layer(model, tuple(images.shape[1:])))
    if images.dim() != 4:
        raise UsageError(
            f"occlusion takes a batch N x C x H x W (got shape {tuple(images.shape)}); "
            "add a batch dimension with images[None]"
        )
    n = images.shape[0]
    targets: list[Any] = list(target) if isinstance(target, (list, tuple, torch.Tensor)) else [target] * n
    if len(targets) != n:
        raise UsageError(f"{len(targets)} targets for {n} images; give one target, one per image, or none")
    occluder = resolve_fill(model, s.fill, pp, images, "occlusion's grey square")
    per_image = len(positions(images.shape[-2], s.window, s.stride)) * len(
        positions(images.shape[-1], s.window, s.stride)
    )
    return OcclusionResults(
        [
            _occlude(
                model,
                images[i : i + 1],
                None if t is None else int(t),
                s,
                occluder,
                batch_size,
                _Tally(progress, n, per_image, i),
            )
            for i, t in enumerate(targets)
        ]
    )


@dataclass
class _Grid:
    """(probabilities, activity) for grid cells (i, j), i.e. occluders at (ys[i], xs[j]), in the order asked:
    whole forwards (`replay` None) or the recorded graph replayed on the changed rectangles, in batches of
    like-sized rectangles (`rank`), the layer's map `channel` summed on the way."""

    model: nn.Module
    layer: str
    x: torch.Tensor
    ys: list[int]
    xs: list[int]
    window: int
    fill_map: torch.Tensor
    channel: int
    replay: Replay | None
    rank: dict[tuple[int, int], int]
    batch: int = 64
    tau: float | None = None
    low: bool = False
    tally: _Tally | None = None

    def __call__(self, cells: list[tuple[int, int]]) -> tuple[torch.Tensor, torch.Tensor]:
        perm = sorted(range(len(cells)), key=lambda q: self.rank.get(cells[q], q))
        out_logits, activity = [], []
        w = self.window
        for s in range(0, len(cells), self.batch):
            part = [(self.ys[cells[q][0]], self.xs[cells[q][1]]) for q in perm[s : s + self.batch]]
            if self.replay is None:
                lg, act = _naive_batch(self.model, self.layer, self.x, part, w, self.fill_map, self.channel)
            else:
                patch = torch.stack([self.fill_map[:, y : y + w, xx : xx + w] for y, xx in part])
                out, fv = self.replay.run([y for y, _ in part], [xx for _, xx in part], patch, self.tau, self.low)
                lg, act = _whole(out), _region_sum(fv, self.channel)
            out_logits.append(lg.float())
            activity.append(act.float())
            if self.tally is not None:
                self.tally.add(len(part))
        back = torch.empty(len(cells), dtype=torch.long)
        back[torch.tensor(perm, dtype=torch.long)] = torch.arange(len(cells))
        return F.softmax(torch.cat(out_logits), 1)[back], torch.cat(activity)[back]


def _strongest(feat_out: torch.Tensor, layer: str) -> tuple[int, tuple[int, int]]:
    """The map of `layer` with the largest single activation on the unoccluded image, and where it is."""
    if feat_out.dim() != 4:
        raise UsageError(f"layer {layer!r} has no feature maps (it is fully connected); pick a conv layer")
    channel = int(feat_out[0].flatten(1).max(1).values.argmax())
    where = int(feat_out[0, channel].argmax())
    return channel, (where // feat_out.shape[-1], where % feat_out.shape[-1])


def _occlude(
    model: nn.Module,
    image: torch.Tensor,
    target: int | None,
    s: OcclusionSettings,
    fill: tuple[torch.Tensor, str, list[float] | None, str],
    batch_size: int | None = None,
    tally: _Tally | None = None,
) -> OcclusionResult:
    """Fig. 6 for one image (1 x C x H x W); `fill`: (the occluder as model input C x H x W, its name, its
    pixel values, where they come from)."""
    window, stride, layer, mode, tau, drill = s.window, s.stride, s.layer, s.strategy, s.tau, s.drill
    assert layer is not None, "occlusion() resolves the default layer"
    x = image[None] if image.dim() == 3 else image
    if x.dim() != 4 or x.shape[0] != 1:
        raise UsageError(f"occlusion takes one image (C x H x W), got shape {tuple(image.shape)}")
    source = "predicted" if target is None else "label"
    fill_map = fill[0].to(x)
    resolve_layer(model, layer)
    _, c_in, h, w = x.shape
    ys, xs = positions(h, window, stride), positions(w, window, stride)
    feat = sites(model, [layer], x)[layer]
    started = time.perf_counter()
    with torch.no_grad(), eval_mode(model):
        bs = batch_size or max(1, min(256, (64 * 224 * 224) // (h * w)))  # whole forwards
        bs_region = batch_size or 2 * bs  # regions are smaller: larger batches pay (measured on ZFNet-224)
        run_tau = tau if mode == "approx" and tau < 1 else None
        low = mode == "approx" and s.precision == "bfloat16"
        probe_y, probe_x = ys[len(ys) // 2], xs[len(xs) // 2]
        probe = (probe_y, probe_x, fill_map[:, probe_y : probe_y + window, probe_x : probe_x + window])
        plan = _plan(model, x, feat, mode, (layer, window, stride), ys, xs, bs_region, probe)
        replay, fallback, logits, estimated = plan.replay, plan.fallback, plan.logits, plan.estimated
        run_mode = plan.mode
        probs = F.softmax(logits.float(), 1)[0]
        if not 0 <= (target if target is not None else 0) < probs.numel():
            raise UsageError(f"target class {target} does not exist (the model has {probs.numel()} classes)")
        base_class = int(probs.argmax())
        target = base_class if target is None else int(target)
        feat_out = plan.feature if plan.feature is not None else features(model, x, [layer])[layer]
        channel, cpos = _strongest(feat_out, layer)
        rank: dict[tuple[int, int], int] = {}
        if replay is not None:  # like-sized rectangles batched together
            rank = {c: r for r, c in enumerate(order_positions(replay, ys, xs, window, run_tau))}
        whole = replay is None or run_mode == "naive"
        evaluate = _Grid(model, layer, x, ys, xs, window, fill_map, channel, None if whole else replay, rank,
                         bs if whole else bs_region, run_tau, low, tally)  # fmt: skip
        shape = (len(ys), len(xs))
        if run_mode == "approx" and drill is not None:
            p, act = _drill_down(evaluate, shape, target, drill)
        else:
            p, act = evaluate([(i, j) for i in range(shape[0]) for j in range(shape[1])])
            p, act = p.view(*shape, -1), act.view(shape)
        if tally is not None:  # drill-down interpolates some positions: the image is done all the same
            tally.add(tally.per_image)
    seconds = time.perf_counter() - started
    top_prob, top_class = p.max(-1)
    with Deconvnet(model, rule=s.rule, other="gradient") as dn:
        projection = dn.project(x, layer, channel, position=cpos)[0]
    rule_note = dn.substituted.get(layer, "")
    result = OcclusionResult(
        torch.tensor(ys),
        torch.tensor(xs),
        act.cpu(),
        p[..., target].cpu(),
        top_class.cpu(),
        top_prob.cpu(),
        projection.cpu(),
        layer,
        channel,
        cpos,
        target,
        float(probs[target]),
        float(feat_out[0, channel].sum()),
        base_class,
        s,
        fill[1],
        run_mode,
        seconds,
        fallback=fallback,
        estimated_speedup=estimated.speedup if estimated is not None else None,
        target_source=source,
        fill_pixels=fill[2],
        fill_source=fill[3],
        maps={layer: feat.to_json()},
        rule_note=rule_note,
    )
    if s.compare_exact and run_mode == "approx":
        exact = _occlude(model, image, target, s.replace(strategy="exact", compare_exact=False), fill, batch_size)
        result.deviation = deviation(result, exact)
    return result


def _drill_down(evaluate, shape: tuple[int, int], target: int, drill: float):
    """Adaptive drill-down (after Krypton's) on a checkerboard: the grid cells with i + j even are occluded
    first; every other cell then has its (up to) four direct neighbours computed and takes their mean, and the
    `drill` share of those cells whose neighbours' p(target) spans most is computed too. A checkerboard puts
    every interpolated cell one step from four computed ones (a coarse grid of every other row and column
    leaves cells a diagonal step from their corners, and loses more of the map's structure for the same
    work). Returns (n_y x n_x x classes probabilities, n_y x n_x activity)."""
    n_y, n_x = shape
    ii, jj = torch.meshgrid(torch.arange(n_y), torch.arange(n_x), indexing="ij")
    known = (ii + jj) % 2 == 0
    first = [(int(i), int(j)) for i, j in known.nonzero().tolist()]
    pc, ac = evaluate(first)
    k = pc.shape[1]
    p = torch.zeros(n_y, n_x, k)
    act = torch.zeros(n_y, n_x)
    p[known], act[known] = pc, ac
    # each cell's four direct neighbours (those inside the grid), as a mean and a range of p(target)
    grid = torch.cat([p.permute(2, 0, 1), act[None]])  # (K + 1) x n_y x n_x
    inside = F.pad(known.new_ones(1, 1, n_y, n_x).float(), (1, 1, 1, 1))[0, 0]
    padded = F.pad(grid[None], (1, 1, 1, 1))[0]
    shifts = [(0, 1), (2, 1), (1, 0), (1, 2)]  # north, south, west, east in padded coordinates
    weight = torch.stack([inside[a : a + n_y, b : b + n_x] for a, b in shifts])  # 4 x n_y x n_x
    values = torch.stack([padded[:, a : a + n_y, b : b + n_x] for a, b in shifts])  # 4 x (K + 1) x n_y x n_x
    mean = (values * weight[:, None]).sum(0) / weight.sum(0).clamp(min=1)
    t = values[:, target]
    spread = torch.where(weight > 0, t, -torch.inf).amax(0) - torch.where(weight > 0, t, torch.inf).amin(0)
    p[~known] = mean[:k].permute(1, 2, 0)[~known]
    act[~known] = mean[k][~known]
    between = int((~known).sum())
    n_fine = int(round(drill * between))
    if n_fine:
        score = torch.where(known, -torch.inf, spread)
        flat = score.flatten().topk(n_fine).indices
        cells = [(int(f) // n_x, int(f) % n_x) for f in flat]
        pf, af = evaluate(cells)
        for (i, j), pv, av in zip(cells, pf, af):
            p[i, j], act[i, j] = pv, av
    return p, act


def occluded(x: torch.Tensor, fill_map: torch.Tensor, part: Sequence[tuple[int, int]], window: int) -> torch.Tensor:
    """Copies of the image x (1 x C x H x W) with the occluder (from `fill_map`, C x H x W) at each (y, x)."""
    imgs = torch.empty(len(part), *x.shape[1:], dtype=x.dtype, device=x.device, memory_format=torch.channels_last)
    imgs.copy_(x.expand_as(imgs))  # a fresh batch (channels-last: oneDNN's convs prefer it; values unchanged)
    for i, (y, xx) in enumerate(part):
        imgs[i, :, y : y + window, xx : xx + window] = fill_map[:, y : y + window, xx : xx + window]
    return imgs


def _naive_batch(model, layer: str, x, part, window, fill_map, channel):
    """Whole forwards of the occluded images, with the feature map's total captured on the way."""
    imgs = occluded(x, fill_map, part, window)
    with capture(model, [layer], x, stop=False) as found:
        logits = model(imgs)
    return logits, found[layer][:, channel].flatten(1).sum(1)


def deviation(approx: OcclusionResult, exact: OcclusionResult) -> dict:
    """How far an approximate result is from the exact one, measured on the maps as Fig. 6 plots them (each
    scaled to its own range): SSIM of the p(target) maps and of the activity maps with the exact map's range
    as the data range (what `skimage.metrics.structural_similarity` takes), the largest |difference| of
    p(target) and of the activity (relative to that range), and the share of positions whose top class agrees."""

    def span(t: torch.Tensor) -> float:
        return float(t.max() - t.min()) or 1.0

    return {
        "max_abs_prob": float((approx.prob - exact.prob).abs().max()),
        "max_rel_prob": float((approx.prob - exact.prob).abs().max()) / span(exact.prob),
        "max_rel_activity": float((approx.activity - exact.activity).abs().max()) / span(exact.activity),
        "ssim_prob": ssim(approx.prob, exact.prob, data_range=span(exact.prob)),
        "ssim_activity": ssim(approx.activity, exact.activity, data_range=span(exact.activity)),
        "top_class_agreement": float((approx.top_class == exact.top_class).float().mean()),
    }


def ssim(a: torch.Tensor, b: torch.Tensor, data_range: float, window: int = 7) -> float:
    """Mean structural similarity (Wang et al. 2004) of two 2-D maps as scikit-image computes it by default:
    a uniform window (clipped to the map) over the positions where it fits, sample covariances, K1 = 0.01,
    K2 = 0.03. `data_range`: the range the maps are plotted over."""
    a, b = a.double()[None, None], b.double()[None, None]
    k = max(1, min(window, a.shape[-1], a.shape[-2]))
    n = k * k
    norm = n / (n - 1) if n > 1 else 1.0
    mu_a, mu_b = F.avg_pool2d(a, k, 1), F.avg_pool2d(b, k, 1)
    var_a = norm * (F.avg_pool2d(a * a, k, 1) - mu_a**2)
    var_b = norm * (F.avg_pool2d(b * b, k, 1) - mu_b**2)
    cov = norm * (F.avg_pool2d(a * b, k, 1) - mu_a * mu_b)
    c1, c2 = (0.01 * data_range) ** 2, (0.03 * data_range) ** 2
    s = ((2 * mu_a * mu_b + c1) * (2 * cov + c2)) / ((mu_a**2 + mu_b**2 + c1) * (var_a + var_b + c2))
    return float(s.mean())
