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

Modes:
  naive   every occluded image through the whole model, batched.
  exact   incremental inference (the idea of Krypton, Nakandala et al., SIGMOD 2019): the unoccluded image runs
          once and every layer's output is kept; for a batch of occluder positions each conv / pool layer
          recomputes only the region the occluder can have changed - the window's projective field, read from
          the kept maps around it - pointwise layers (ReLU, contrast normalization, dropout, batch norm) act on
          that region alone, and fully-connected layers run in full. Equal to `naive` up to float rounding.
          A model that is not a chain of such modules (a ResNet's additions, functional ops between modules)
          falls back to whole forwards; a module it does not know makes the rest of the chain run in full.
  approx  Krypton's two approximations on top of exact: the changed region may grow to at most `tau` of each
          layer's map (projective-field threshold; outside it the unoccluded values are used), and adaptive
          drill-down: every other grid position is occluded first, the positions in between are interpolated,
          and the `drill` share of them where p(target) changes most around them is computed (drill=None: all
          positions). The result says how far it is from exact when asked (`compare_exact=True`).
"""

from __future__ import annotations

import math
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from ..data.preprocess import Preprocess
from ..errors import UsageError
from ..layers import feature_module, features, resolve_layer
from ..pixels import Fill, WithPreprocess, resolve_fill, split_model
from ..runtime import eval_mode
from .deconvnet import Deconvnet

MODES = ("exact", "naive", "approx")

_POINTWISE = (
    nn.ReLU,
    nn.ReLU6,
    nn.LeakyReLU,
    nn.ELU,
    nn.GELU,
    nn.SiLU,
    nn.Sigmoid,
    nn.Tanh,
    nn.Hardtanh,
    nn.LocalResponseNorm,
    nn.Dropout,
    nn.Dropout2d,
    nn.BatchNorm2d,
    nn.Identity,
)


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
    window: int
    stride: int
    fill: str  # "grey", "mean-image" or "pixels" (see the module docstring)
    mode: str
    tau: float | None = None
    drill: float | None = None
    seconds: float = 0.0
    deviation: dict = field(default_factory=dict)  # approx vs exact, when compared
    requested: str = ""  # the mode asked for (`mode` is what ran: naive when the model is not a chain)
    target_source: str = "label"  # "label": the target was given; "predicted": the unoccluded image's top class
    fill_pixels: list[float] | None = None  # the square's pixel values per channel (None: the mean image)

    def describe(self) -> str:
        """What ran, in words, for captions: exact / naive / approx, and a fallback with its reason."""
        what = {
            "exact": "exact incremental computation (only the region each occluder changes is recomputed)",
            "naive": "whole forward passes",
            "approx": f"approximate (tau {self.tau}, drill {self.drill})",
        }[self.mode]
        if self.requested and self.requested != self.mode:
            return f"{self.requested} asked, fell back to {what}: the model is not a chain of modules"
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
            "window": self.window,
            "stride": self.stride,
            "fill": self.fill,
            "fill_pixels": self.fill_pixels,
            "mode": self.mode,
            "tau": self.tau,
            "drill": self.drill,
            "seconds": self.seconds,
            "deviation": self.deviation,
            "requested": self.requested or self.mode,
            "target_source": self.target_source,
            "computation": self.describe(),
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


# --- the chain of modules, from one traced forward -------------------------------------------------------


@dataclass
class _Step:
    module: nn.Module
    kind: str  # "window", "pointwise", "reshape+full" or "full"
    base_in: torch.Tensor
    base_out: torch.Tensor


def _window_geometry(m: nn.Module):
    """(kernel, stride, padding, dilation, pad value, op) for modules the incremental path recomputes by region."""

    def pair(v):
        return (v, v) if isinstance(v, int) else tuple(v)

    if isinstance(m, nn.Conv2d) and m.padding_mode == "zeros" and not isinstance(m.padding, str):

        def op(x):
            return F.conv2d(x, m.weight, m.bias, m.stride, 0, m.dilation, m.groups)

        return pair(m.kernel_size), pair(m.stride), pair(m.padding), pair(m.dilation), 0.0, op
    if isinstance(m, nn.MaxPool2d) and not m.return_indices:
        k, s, d = pair(m.kernel_size), pair(m.stride or m.kernel_size), pair(m.dilation)

        def op(x):
            return F.max_pool2d(x, k, s, 0, d)

        return k, s, pair(m.padding), d, float("-inf"), op
    if isinstance(m, nn.AvgPool2d) and not m.ceil_mode and m.count_include_pad and m.divisor_override is None:
        k, s = pair(m.kernel_size), pair(m.stride or m.kernel_size)

        def op(x):
            return F.avg_pool2d(x, k, s, 0)

        return k, s, pair(m.padding), (1, 1), 0.0, op
    return None


def _trace(model: nn.Module, x: torch.Tensor) -> tuple[list[_Step] | None, torch.Tensor]:
    """The model's leaf modules in call order with their inputs and outputs, when it is a chain (each module
    fed by the previous one's output, or by a flattened copy of it); else None. Returns (steps, output)."""
    calls: list[tuple[nn.Module, torch.Tensor, torch.Tensor]] = []

    def hook(module, inputs, output):
        calls.append((module, inputs[0] if inputs else None, output))

    leaves = [m for m in model.modules() if not list(m.children())]
    handles = [m.register_forward_hook(hook) for m in leaves]
    try:
        out = model(x)
    finally:
        for h in handles:
            h.remove()
    steps: list[_Step] = []
    prev = x
    for module, inp, output in calls:
        if not isinstance(inp, torch.Tensor) or not isinstance(output, torch.Tensor):
            return None, out
        if inp is prev:
            reshaped = False
        elif (
            inp.numel() == prev.numel()
            and inp.shape[0] == prev.shape[0]
            and torch.equal(inp.reshape(-1), prev.reshape(-1))
        ):
            reshaped = True  # a functional flatten between modules
        else:
            return None, out
        if reshaped or prev.dim() != 4:
            kind = "reshape+full" if reshaped else "full"
        elif _window_geometry(module) is not None:
            kind = "window"
        elif isinstance(module, _POINTWISE) or (
            isinstance(module, nn.AdaptiveAvgPool2d) and output.shape[-2:] == inp.shape[-2:]
        ):
            kind = "pointwise"
        else:
            kind = "full"
        steps.append(_Step(module, kind, inp, output))
        prev = output
    if prev is not out or len({id(s.module) for s in steps}) != len(steps):
        return None, out  # the output is not the last module's, or a module runs twice
    return steps, out


# --- one batch of occluder positions, region by region -----------------------------------------------------


def _out_range(a: torch.Tensor, n: torch.Tensor, k: int, s: int, p: int, d: int, size_out: int):
    """Output indices a window op changes for input rows [a, a + n): (lo, hi) inclusive, clipped."""
    ke = d * (k - 1) + 1
    lo = torch.clamp(torch.div(a + p - ke + 1 + s - 1, s, rounding_mode="floor"), min=0)
    hi = torch.clamp(torch.div(a + n - 1 + p, s, rounding_mode="floor"), max=size_out - 1)
    return lo, torch.maximum(hi, lo)


def _region_step(step: _Step, box: torch.Tensor, patch: torch.Tensor, tau: float | None):
    """Recompute a window op (conv / pool) over the region its changed input can reach."""
    (kh, kw), (sh, sw), (ph, pw), (dh, dw), pad_value, op = _window_geometry(step.module)
    base_in, base_out = step.base_in, step.base_out
    h_in, w_in = base_in.shape[-2:]
    h_out, w_out = base_out.shape[-2:]
    ke_h, ke_w = dh * (kh - 1) + 1, dw * (kw - 1) + 1
    r_lo, r_hi = _out_range(box[:, 0], box[:, 2], kh, sh, ph, dh, h_out)
    c_lo, c_hi = _out_range(box[:, 1], box[:, 3], kw, sw, pw, dw, w_out)
    n_r, n_c = int((r_hi - r_lo).max()) + 1, int((c_hi - c_lo).max()) + 1
    if tau is not None:  # Krypton's projective-field threshold: the region grows to at most tau of the map
        cap_r, cap_c = max(1, math.ceil(tau * h_out)), max(1, math.ceil(tau * w_out))
        if n_r > cap_r:
            r_lo, n_r = torch.clamp((r_lo + r_hi) // 2 - cap_r // 2, min=0), cap_r
        if n_c > cap_c:
            c_lo, n_c = torch.clamp((c_lo + c_hi) // 2 - cap_c // 2, min=0), cap_c
    r0 = torch.clamp(r_lo, max=h_out - n_r)
    c0 = torch.clamp(c_lo, max=w_out - n_c)
    hs, ws = (n_r - 1) * sh + ke_h, (n_c - 1) * sw + ke_w
    pad_b = max(0, (h_out - 1) * sh + ke_h - ph - h_in)
    pad_r = max(0, (w_out - 1) * sw + ke_w - pw - w_in)
    padded = F.pad(base_in, (pw, pad_r, ph, pad_b), value=pad_value) if (ph or pw or pad_b or pad_r) else base_in
    # every sample's slab (its origin in padded coordinates: r0 * stride), gathered in one indexing op
    top, left = r0 * sh, c0 * sw
    rows = top[:, None] + torch.arange(hs)
    cols = left[:, None] + torch.arange(ws)
    slabs = padded[0][:, rows[:, :, None], cols[:, None, :]].permute(1, 0, 2, 3).contiguous()  # B x C x hs x ws
    # the changed patch pasted into its slab (patch rows or columns past the slab change no output here)
    _paste(slabs, patch, box[:, 0] + ph - top, box[:, 1] + pw - left)
    out = op(slabs)
    new_box = torch.stack([r0, c0, torch.full_like(r0, n_r), torch.full_like(c0, n_c)], 1)
    return new_box, out


def _paste(dest: torch.Tensor, patch: torch.Tensor, top: torch.Tensor, left: torch.Tensor) -> None:
    """dest[b, :, top_b + u, left_b + v] = patch[b, :, u, v] wherever that lies inside dest (in place)."""
    b, _, h, w = patch.shape
    rows = top[:, None, None] + torch.arange(h)[None, :, None]  # B x h x 1
    cols = left[:, None, None] + torch.arange(w)[None, None, :]  # B x 1 x w
    ok = (rows >= 0) & (rows < dest.shape[-2]) & (cols >= 0) & (cols < dest.shape[-1])  # B x h x w
    bi = torch.arange(b)[:, None, None].expand(b, h, w)[ok]
    ui = torch.arange(h)[None, :, None].expand(b, h, w)[ok]
    vi = torch.arange(w)[None, None, :].expand(b, h, w)[ok]
    ri, ci = rows.expand(b, h, w)[ok], cols.expand(b, h, w)[ok]
    dest.permute(0, 2, 3, 1)[bi, ri, ci] = patch.permute(0, 2, 3, 1)[bi, ui, vi]


def _materialize(base: torch.Tensor, box: torch.Tensor, patch: torch.Tensor) -> torch.Tensor:
    """The whole maps of each sample: the kept unoccluded maps with each sample's changed region pasted in."""
    full = base.expand(len(box), *base.shape[1:]).clone()
    _paste(full, patch, box[:, 0], box[:, 1])
    return full


def _incremental_batch(
    steps: list[_Step], feature_step: int, channel: int, box: torch.Tensor, patch: torch.Tensor, tau: float | None
) -> tuple[torch.Tensor, torch.Tensor]:
    """(logits, activity of `channel` at the feature step) for one batch of occluded inputs."""
    full = None
    activity = None
    for i, step in enumerate(steps):
        if full is None and step.kind == "window":
            box, patch = _region_step(step, box, patch, tau)
        elif full is None and step.kind == "pointwise":
            patch = step.module(patch)
        else:
            if full is None:
                full = _materialize(step.base_in, box, patch) if step.base_in.dim() == 4 else None
                if full is None:
                    raise RuntimeError("occlusion: lost track of the changed region")
            if step.kind == "reshape+full":
                full = full.reshape(len(full), *step.base_in.shape[1:])
            full = step.module(full)
        if i == feature_step:
            if full is not None:
                activity = full[:, channel].flatten(1).sum(1)
            else:  # the map's total, with each sample's region swapped (box sums from a summed-area table)
                base = step.base_out[0, channel].double()
                sat = F.pad(base.cumsum(0).cumsum(1), (1, 0, 1, 0))
                t, l, h, w = box.unbind(1)
                inside = sat[t + h, l + w] - sat[t, l + w] - sat[t + h, l] + sat[t, l]
                activity = (base.sum() - inside + patch[:, channel].double().flatten(1).sum(1)).float()
    if full is None:
        full = _materialize(steps[-1].base_out, box, patch)
    assert activity is not None, "the feature step is part of the chain"
    return full, activity


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


def occlusion(
    model: nn.Module | WithPreprocess,
    images: torch.Tensor,
    *,
    target: int | Sequence[int | None] | None = None,
    window: int = 32,
    stride: int = 8,
    fill: Fill = "grey",
    preprocess: Preprocess | None = None,
    layer: str = "conv5",
    mode: str = "exact",
    tau: float = 0.5,
    batch_size: int | None = None,
    compare_exact: bool = False,
    projection_mode: str = "deconvnet",
    drill: float | None = 0.5,
) -> OcclusionResults:
    """Fig. 6 for each image of a batch of model input (N x C x H x W): see the module docstring. `target`: the
    class whose probability (d) maps - one for all images, one per image, or None (each image's predicted
    class). `model` may be an opened model (its preprocessing gives the grey), else pass `preprocess`."""
    model, pp = split_model(model, preprocess)
    if images.dim() != 4:
        raise UsageError(
            f"occlusion takes a batch N x C x H x W (got shape {tuple(images.shape)}); "
            "add a batch dimension with images[None]"
        )
    n = images.shape[0]
    targets: list[Any] = list(target) if isinstance(target, (list, tuple, torch.Tensor)) else [target] * n
    if len(targets) != n:
        raise UsageError(f"{len(targets)} targets for {n} images; give one target, one per image, or none")
    occluder = resolve_fill(model, fill, pp, images, "occlusion's grey square")
    return OcclusionResults(
        [
            _occlude(
                model,
                images[i : i + 1],
                None if t is None else int(t),
                window,
                stride,
                occluder,
                layer,
                mode,
                tau,
                batch_size,
                compare_exact,
                projection_mode,
                drill,
            )
            for i, t in enumerate(targets)
        ]
    )


def _occlude(
    model: nn.Module,
    image: torch.Tensor,
    target: int | None,
    window: int,
    stride: int,
    fill: tuple[torch.Tensor, str, list[float] | None],
    layer: str,
    mode: str,
    tau: float,
    batch_size: int | None,
    compare_exact: bool,
    projection_mode: str,
    drill: float | None,
) -> OcclusionResult:
    """Fig. 6 for one image (1 x C x H x W); `fill`: (the occluder as model input C x H x W, its name, its
    pixel values)."""
    if mode not in MODES:
        raise UsageError(f"unknown occlusion mode {mode!r}; choose one of {', '.join(MODES)}")
    if not 0 < tau <= 1:
        raise UsageError(f"tau {tau} must be in (0, 1]")
    if drill is not None and not 0 <= drill <= 1:
        raise UsageError(f"drill {drill} must be in [0, 1] (the share of in-between positions computed)")
    x = image[None] if image.dim() == 3 else image
    if x.dim() != 4 or x.shape[0] != 1:
        raise UsageError(f"occlusion takes one image (C x H x W), got shape {tuple(image.shape)}")
    source = "predicted" if target is None else "label"
    fill_map = fill[0].to(x)
    resolve_layer(model, layer)
    _, c_in, h, w = x.shape
    ys, xs = positions(h, window, stride), positions(w, window, stride)
    feat = feature_module(model, layer)
    started = time.perf_counter()
    with torch.no_grad(), eval_mode(model):
        steps, logits = _trace(model, x)
        probs = F.softmax(logits.float(), 1)[0]
        if not 0 <= (target if target is not None else 0) < probs.numel():
            raise UsageError(f"target class {target} does not exist (the model has {probs.numel()} classes)")
        base_class = int(probs.argmax())
        target = base_class if target is None else int(target)
        feature_step = next((i for i, s in enumerate(steps or []) if s.module is feat), None)
        feat_out = (
            steps[feature_step].base_out if steps and feature_step is not None else features(model, x, [layer])[layer]
        )
        if feat_out.dim() != 4:
            raise UsageError(f"layer {layer!r} has no feature maps (it is fully connected); pick a conv layer")
        channel = int(feat_out[0].flatten(1).max(1).values.argmax())
        where = int(feat_out[0, channel].argmax())
        cpos = (where // feat_out.shape[-1], where % feat_out.shape[-1])
        run_mode = mode if feature_step is not None else "naive"  # not a chain: whole forwards
        bs = batch_size or max(1, min(256, (64 * 224 * 224) // (h * w)))

        def evaluate(cells: list[tuple[int, int]]) -> tuple[torch.Tensor, torch.Tensor]:
            """(probabilities, activity) for grid cells (i, j), i.e. occluders at (ys[i], xs[j])."""
            out_logits, activity = [], []
            for s in range(0, len(cells), bs):
                part = [(ys[i], xs[j]) for i, j in cells[s : s + bs]]
                if run_mode == "naive":
                    lg, act = _naive_batch(model, feat, x, part, window, fill_map, channel)
                else:
                    box = torch.tensor([[y, xx, window, window] for y, xx in part])
                    patch = torch.stack([fill_map[:, y : y + window, xx : xx + window] for y, xx in part])
                    assert steps is not None and feature_step is not None  # a traced chain
                    lg, act = _incremental_batch(
                        steps, feature_step, channel, box, patch, tau if run_mode == "approx" else None
                    )
                out_logits.append(lg.float())
                activity.append(act.float())
            return F.softmax(torch.cat(out_logits), 1), torch.cat(activity)

        shape = (len(ys), len(xs))
        if run_mode == "approx" and drill is not None:
            p, act = _drill_down(evaluate, shape, target, drill)
        else:
            p, act = evaluate([(i, j) for i in range(shape[0]) for j in range(shape[1])])
            p, act = p.view(*shape, -1), act.view(shape)
    seconds = time.perf_counter() - started
    top_prob, top_class = p.max(-1)
    with Deconvnet(model, mode=projection_mode) as dn:
        projection = dn.project(x, layer, channel, position=cpos)[0]
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
        window,
        stride,
        fill[1],
        run_mode,
        tau if run_mode == "approx" else None,
        drill if run_mode == "approx" else None,
        seconds,
        requested=mode,
        target_source=source,
        fill_pixels=fill[2],
    )
    if compare_exact and run_mode == "approx":
        exact = _occlude(
            model, image, target, window, stride, fill, layer, "exact", tau, batch_size, False, projection_mode, None
        )
        result.deviation = deviation(result, exact)
    return result


def _drill_down(evaluate, shape: tuple[int, int], target: int, drill: float):
    """Krypton's adaptive drill-down: occlude at every other grid position first (and the last row and column),
    fill the positions in between by bilinear interpolation, then compute the `drill` share of them whose
    neighbourhood changes p(target) the most. Returns (n_y x n_x x classes probabilities, n_y x n_x activity)."""
    n_y, n_x = shape
    rows = sorted(set(range(0, n_y, 2)) | {n_y - 1})
    cols = sorted(set(range(0, n_x, 2)) | {n_x - 1})
    coarse = [(i, j) for i in rows for j in cols]
    pc, ac = evaluate(coarse)
    k = pc.shape[1]
    grid_p = pc.view(len(rows), len(cols), k).permute(2, 0, 1)[None]  # 1 x K x r x c
    grid_a = ac.view(1, 1, len(rows), len(cols))
    # bilinear in grid-index space: coarse rows/cols sit at their indices (not necessarily evenly spaced at the end)
    ri = torch.tensor(rows, dtype=torch.float)
    ci = torch.tensor(cols, dtype=torch.float)

    def coords(idx, n):
        pos = torch.arange(n, dtype=torch.float)
        hi = torch.searchsorted(idx, pos).clamp(1, len(idx) - 1) if len(idx) > 1 else torch.zeros(n, dtype=torch.long)
        lo = (hi - 1).clamp(min=0)
        span = (idx[hi] - idx[lo]).clamp(min=1)
        return lo, hi, ((pos - idx[lo]) / span).clamp(0, 1)

    (r0, r1, fr), (c0, c1, fc) = coords(ri, n_y), coords(ci, n_x)

    def interp(g):
        top = g[..., r0, :][..., :, c0] * (1 - fc) + g[..., r0, :][..., :, c1] * fc
        bot = g[..., r1, :][..., :, c0] * (1 - fc) + g[..., r1, :][..., :, c1] * fc
        return top * (1 - fr[:, None]) + bot * fr[:, None]

    p = interp(grid_p)[0].permute(1, 2, 0).contiguous()  # n_y x n_x x K
    act = interp(grid_a)[0, 0]
    # how much p(target) changes around each in-between position: the range over its coarse neighbours
    t = grid_p[0, target]
    corners = torch.stack([t[r0][:, c0], t[r0][:, c1], t[r1][:, c0], t[r1][:, c1]])
    score = corners.amax(0) - corners.amin(0)
    is_coarse = torch.zeros(shape, dtype=torch.bool)
    is_coarse[torch.tensor(rows)[:, None], torch.tensor(cols)[None, :]] = True
    score[is_coarse] = float("-inf")
    between = int((~is_coarse).sum())
    n_fine = int(round(drill * between))
    if n_fine:
        flat = score.flatten().topk(n_fine).indices
        cells = [(int(f) // n_x, int(f) % n_x) for f in flat]
        pf, af = evaluate(cells)
        for (i, j), pv, av in zip(cells, pf, af):
            p[i, j], act[i, j] = pv, av
    for (i, j), pv, av in zip(coarse, pc, ac):  # computed positions keep their exact values
        p[i, j], act[i, j] = pv, av
    return p, act


def occluded(x: torch.Tensor, fill_map: torch.Tensor, part: Sequence[tuple[int, int]], window: int) -> torch.Tensor:
    """Copies of the image x (1 x C x H x W) with the occluder (from `fill_map`, C x H x W) at each (y, x)."""
    imgs = x.expand(len(part), *x.shape[1:]).clone()
    for i, (y, xx) in enumerate(part):
        imgs[i, :, y : y + window, xx : xx + window] = fill_map[:, y : y + window, xx : xx + window]
    return imgs


def _naive_batch(model, feat, x, part, window, fill_map, channel):
    """Whole forwards of the occluded images, with the feature map's total captured on the way."""
    imgs = occluded(x, fill_map, part, window)
    found = []
    h = feat.register_forward_hook(lambda m, i, o: found.append(o[:, channel].flatten(1).sum(1)))
    try:
        logits = model(imgs)
    finally:
        h.remove()
    return logits, found[0]


def deviation(approx: OcclusionResult, exact: OcclusionResult) -> dict:
    """How far an approximate result is from the exact one: max |diff| of p(target) and of the activity
    (relative to the exact activity's range), SSIM of the two p(target) maps and of the two activity maps
    (scaled by that range), and the share of positions whose top class agrees."""
    lo = float(exact.activity.min())
    span = float(exact.activity.max()) - lo or 1.0
    return {
        "max_abs_prob": float((approx.prob - exact.prob).abs().max()),
        "max_rel_activity": float((approx.activity - exact.activity).abs().max()) / span,
        "ssim_prob": ssim(approx.prob, exact.prob, data_range=1.0),
        "ssim_activity": ssim((approx.activity - lo) / span, (exact.activity - lo) / span, data_range=1.0),
        "top_class_agreement": float((approx.top_class == exact.top_class).float().mean()),
    }


def ssim(a: torch.Tensor, b: torch.Tensor, data_range: float = 1.0, window: int = 7) -> float:
    """Mean structural similarity (Wang et al. 2004) of two 2-D maps, uniform window (clipped to the map),
    K1 = 0.01, K2 = 0.03."""
    a, b = a.double()[None, None], b.double()[None, None]
    k = max(1, min(window, a.shape[-1], a.shape[-2]))
    mu_a, mu_b = F.avg_pool2d(a, k, 1), F.avg_pool2d(b, k, 1)
    var_a = F.avg_pool2d(a * a, k, 1) - mu_a**2
    var_b = F.avg_pool2d(b * b, k, 1) - mu_b**2
    cov = F.avg_pool2d(a * b, k, 1) - mu_a * mu_b
    c1, c2 = (0.01 * data_range) ** 2, (0.03 * data_range) ** 2
    s = ((2 * mu_a * mu_b + c1) * (2 * cov + c2)) / ((mu_a**2 + mu_b**2 + c1) * (var_a + var_b + c2))
    return float(s.mean())
