"""The deconvnet (Sec. 2.1, Fig. 1): project one activation back to pixel space.

To examine an activation, keep it and zero every other activation of its layer, then go down to the input:
unpool with the switches recorded on the way up, rectify with a ReLU, filter with the transposed filters (no
bias); contrast normalization is skipped on the way down.

Built as backward rules on autograd, not as a mirrored decoder: the gradient of max-pooling already routes
through the switches (summing where overlapping windows share a maximum), the gradient of a convolution already
applies the transposed filters without bias, so only two rules change: ReLU and contrast normalization.
Rectification rules (footnote 1; `rule=`):

    deconvnet  ReLU on the signal coming down (the paper)
    backprop   the forward pass's binary mask (plain gradient)
    guided     both (guided backpropagation)

Rules are installed with a TorchFunctionMode for the duration of each projection, so they also catch
functional and in-place ReLUs (torchvision's AlexNet/VGG, a ResNet's shared ReLU) and leave no hook behind.

Fast path: a unit only depends on its receptive field, so each projection's forward and way down run on that
window only (`receptive_field.crop_plan`), many windows of a layer batched together; the result equals the
whole-image projection, borders included.
"""

from __future__ import annotations

import typing
from collections import defaultdict
from collections.abc import Iterable, Sequence
from contextlib import ExitStack
from dataclasses import dataclass, field
from typing import Any, ClassVar, Literal

import torch
from torch import nn
from torch.overrides import TorchFunctionMode

from ..calling import api
from ..errors import UsageError
from ..layers import StopForward, capture, features, local_response_norm, read_maps, sites, top_layer
from ..receptive_field import ReceptiveField, crop_plan, cut_box, layer_field, layer_geometries
from ..runtime import eval_mode
from ..settings import Settings, knob

Rule = Literal["deconvnet", "backprop", "guided"]  # footnote 1: how the way down passes a ReLU
RULES: tuple[str, ...] = typing.get_args(Rule)
RULE_HELP = "the rectification on the way down (footnote 1): deconvnet (the paper), backprop (the gradient), guided"
_RELU_NAMES = {"relu", "relu_"}


def gradient_instead(model: nn.Module, layers: list[str], x: torch.Tensor, rule: str) -> dict[str, str]:
    """Per layer reached through non-ReLU nonlinearities (GELU, SiLU, sigmoid gates, softmax, attention), why
    `rule` does not apply there and what ran instead (footnote 1 defines the rules for ReLU networks); empty for
    backprop."""
    refused = _not_relu(model, layers, x, rule)
    return {layer: f"{why}: projected with the gradient (backprop) instead" for layer, why in refused.items()}


def _not_relu(model: nn.Module, layers: list[str], x: torch.Tensor, rule: str) -> dict[str, str]:
    if rule == "backprop":
        return {}
    return {
        layer: f"the {rule} rule is defined for ReLU networks (footnote 1); {layer} is reached through "
        f"{', '.join(site.not_relu)}"
        for layer, site in sites(model, layers, x).items()
        if site.not_relu
    }


class _Rectify(torch.autograd.Function):
    """relu forward; the chosen rectification on the way down."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, rule: str) -> torch.Tensor:
        out = x.clamp_min(0)
        ctx.rule = rule
        if rule != "deconvnet":
            ctx.save_for_backward(out)
        return out

    @staticmethod
    def backward(ctx, g: torch.Tensor):
        if ctx.rule == "deconvnet":
            return g.clamp_min(0), None
        (out,) = ctx.saved_tensors
        if ctx.rule == "backprop":
            return g * (out > 0), None
        return g.clamp_min(0) * (out > 0), None


class _SkipOnTheWayDown(torch.autograd.Function):
    """Computes fn(x) on the way up and passes the signal through unchanged on the way down."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, fn) -> torch.Tensor:
        return fn(x)

    @staticmethod
    def backward(ctx, g: torch.Tensor):
        return g, None


def _bind_lrn(args: tuple, kwargs: dict) -> tuple:
    """F.local_response_norm's arguments (input, size, alpha, beta, k) with its defaults."""
    names, defaults = ("input", "size", "alpha", "beta", "k"), (None, None, 1e-4, 0.75, 1.0)
    return tuple(args[i] if i < len(args) else kwargs.get(n, d) for i, (n, d) in enumerate(zip(names, defaults)))


class _Rules(TorchFunctionMode):
    def __init__(self, rule: str, skip_norm: bool) -> None:
        super().__init__()
        self.rule, self.skip_norm = rule, skip_norm

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        name = getattr(func, "__name__", "")
        if name in _RELU_NAMES and args and isinstance(args[0], torch.Tensor):
            return _Rectify.apply(args[0], self.rule)
        if name == "local_response_norm" and self.skip_norm:
            x = args[0]
            rest, kw = args[1:], kwargs
            return _SkipOnTheWayDown.apply(x, lambda t: func(t, *rest, **kw))
        if name == "local_response_norm" and args[0].dim() == 4:  # its gradient, taken through channels-last slices
            return local_response_norm(*_bind_lrn(args, kwargs))
        return func(*args, **kwargs)


@dataclass(frozen=True)
class Target:
    """One activation to project: image index, layer, channel and position (None for fc layers)."""

    image: int
    layer: str
    channel: int
    y: int | None = None
    x: int | None = None


class Deconvnet:
    """Project activations of `model` back to pixels (Sec. 2.1).

        with Deconvnet(model, rule="deconvnet") as dn:
            rec = dn.project(images, layer="conv5", channel=12)          # each image's strongest unit
            recs = dn.project_targets(images, [Target(0, "conv5", 12, 3, 4), ...])

    Within the block the model is in eval mode; on exit its modes are restored, and no hook or rule remains
    (also when the block raised). `norm="skip"` (the paper) passes the signal unchanged through contrast
    normalization on the way down; `norm="gradient"` takes its gradient instead (what Captum does).

    The deconvnet and guided rules are defined for ReLU networks (footnote 1). A layer reached through another
    nonlinearity (GELU, SiLU, hard-swish, a sigmoid gate, a transformer's softmax or attention) is refused with
    them, in one line; with `other="gradient"` (what the pipelines pass) it is projected with the gradient
    instead and `substituted` says so, per layer.
    """

    def __init__(
        self,
        model: nn.Module,
        rule: str = "deconvnet",
        norm: str = "skip",
        fast: bool = True,
        max_batch_pixels: int = 32 * 224 * 224,
        other: str = "refuse",
    ) -> None:
        if rule not in RULES:
            raise UsageError(f"unknown rectification rule {rule!r}; choose one of {', '.join(RULES)}")
        if norm not in ("skip", "gradient"):
            raise UsageError(f"norm must be 'skip' (the paper) or 'gradient', not {norm!r}")
        self.model, self.rule, self.skip_norm, self.fast = model, rule, norm == "skip", fast
        self.max_batch_pixels = max_batch_pixels
        self.other = other
        self.substituted: dict[str, str] = {}  # layer -> why it was projected with the gradient
        self._stack: ExitStack | None = None
        self._geometry: dict = {}  # (layers, input shape) -> unit grids, valid inside the with block

    # --- context: eval mode in, modes restored out ---------------------------------------------------
    def __enter__(self) -> Deconvnet:
        self._stack = ExitStack()
        self._stack.enter_context(eval_mode(self.model))
        return self

    def __exit__(self, *exc) -> None:
        stack, self._stack, self._geometry = self._stack, None, {}
        if stack is not None:
            stack.close()

    def _check_open(self) -> None:
        if self._stack is None:
            raise RuntimeError("use the Deconvnet inside a `with` block")

    # --- public API -----------------------------------------------------------------------------------
    def activations(self, images: torch.Tensor, layer: str) -> torch.Tensor:
        """`layer`'s feature maps for `images` (plain forward, stopping at the layer)."""

        self._check_open()
        with torch.no_grad():
            return features(self.model, images, [layer])[layer]

    def project(
        self,
        images: torch.Tensor,
        layer: str,
        channel: int | Sequence[int],
        position: tuple[int, int] | None = None,
        unit: bool = False,
    ) -> torch.Tensor:
        """One reconstruction per image, shaped like `images`: map `channel` of `layer` (one channel for all or
        one per image), at `position` (y, x), or where each image's map is strongest when `position` is None."""
        self._check_open()
        n = images.shape[0]
        chans = [int(channel)] * n if isinstance(channel, int) else [int(c) for c in channel]
        if len(chans) != n:
            raise UsageError(f"{len(chans)} channels for {n} images; give one channel or one per image")
        targets = self.targets(images, layer, chans, position)
        return self.project_targets(images, targets, unit=unit)

    def targets(
        self,
        images: torch.Tensor,
        layer: str,
        channels: list[int],
        position: tuple[int, int] | None = None,
        acts: torch.Tensor | None = None,
    ) -> list[Target]:
        """One checked target per image: its channel at `position`, or where that map is strongest (`acts`:
        the layer's maps for `images`, when already computed)."""
        acts = self.activations(images, layer) if acts is None else acts
        n = images.shape[0]
        bad = [c for c in channels if not 0 <= c < acts.shape[1]]
        if bad:
            raise UsageError(
                f"channel {bad[0]} does not exist in {layer} ({acts.shape[1]} maps: 0..{acts.shape[1] - 1})"
            )
        if acts.dim() != 4:
            return [Target(i, layer, c) for i, c in enumerate(channels)]
        if position is None:
            flat = acts[torch.arange(n), torch.tensor(channels)].flatten(1).argmax(1)
            ys, xs = (flat // acts.shape[-1]).tolist(), (flat % acts.shape[-1]).tolist()
        else:
            y, x = position
            if not (0 <= y < acts.shape[2] and 0 <= x < acts.shape[3]):
                raise UsageError(
                    f"position {y},{x} is outside {layer}'s {acts.shape[2]}x{acts.shape[3]} maps "
                    f"(0..{acts.shape[2] - 1}, 0..{acts.shape[3] - 1})"
                )
            ys, xs = [y] * n, [x] * n
        return [Target(i, layer, c, y, x) for i, (c, y, x) in enumerate(zip(channels, ys, xs))]

    def project_targets(
        self, images: torch.Tensor, targets: Iterable[Target | tuple], unit: bool = False, output: str = "full"
    ) -> torch.Tensor:
        """Project each target; `output="full"` gives len(targets) x C x H x W (zero outside the unit's
        receptive field), `output="field"` gives just the receptive-field box of each (zero past the border),
        as for the patches of Fig. 2. With `unit`, the seed is 1 instead of the activation's value."""
        self._check_open()
        todo = [t if isinstance(t, Target) else Target(*t) for t in targets]
        if output not in ("full", "field"):
            raise UsageError("output must be 'full' or 'field'")
        by_layer: dict[str, list[int]] = defaultdict(list)
        for k, t in enumerate(todo):
            by_layer[t.layer].append(k)
        c, h, w = (int(v) for v in images.shape[1:])
        shape = (c, h, w)
        sites(self.model, list(by_layer), images)  # found on the whole image: the way down may run on crops
        missing = [l for l in by_layer if (l, shape) not in self._geometry]
        if missing:
            for l, g in layer_geometries(self.model, missing, shape).items():
                self._geometry[(l, shape)] = g
        geos = {l: self._geometry[(l, shape)] for l in by_layer}
        results: list[torch.Tensor] = [images.new_zeros(0)] * len(todo)
        for layer, ks in by_layer.items():
            g = geos[layer]
            rf = ReceptiveField(layer, g[0] if g else None, g[1] if g else None, (h, w))
            group = [todo[k] for k in ks]
            if g is None or not self.fast or group[0].y is None:
                outs = self._project_whole(images, group, unit)
                outs = [
                    rf.crop(o[None], t.y or 0, t.x or 0)[0] if output == "field" else o for o, t in zip(outs, group)
                ]
            else:
                outs = self._project_cropped(images, group, rf, unit, output)
            for k, o in zip(ks, outs):
                results[k] = o
        return torch.stack(results) if results else images.new_zeros(0, *shape)

    # --- the way down -----------------------------------------------------------------------------------
    def _down(self, x: torch.Tensor, layer: str, chans: torch.Tensor, ys, xs, unit: bool) -> torch.Tensor:
        """Forward `x` up to `layer`, seed one activation per sample, come down with the rules."""
        x = x.detach().requires_grad_(True)
        rule = self.rule_for(layer, x)
        with torch.enable_grad(), _Rules(rule, self.skip_norm), capture(self.model, [layer], x) as found:
            try:
                self.model(x)
            except StopForward:
                pass
            if layer not in found:
                raise UsageError(f"layer {layer!r} did not run in the forward pass")
            act = found[layer]
            n = x.shape[0]
            seed = torch.zeros_like(act)
            rows = torch.arange(n, device=act.device)
            idx: tuple[torch.Tensor, ...] = (rows, chans)
            if act.dim() == 4:
                idx = (rows, chans, torch.as_tensor(ys, device=act.device), torch.as_tensor(xs, device=act.device))
            seed[idx] = 1.0 if unit else act.detach()[idx]
            (grad,) = torch.autograd.grad(act, x, grad_outputs=seed)
        return grad

    def rule_for(self, layer: str, x: torch.Tensor) -> str:
        """The rule the way down from `layer` takes: this one's, unless the layer is reached through
        non-ReLU nonlinearities (then refused, or the gradient with `other="gradient"`, said in `substituted`)."""
        why = _not_relu(self.model, [layer], x, self.rule).get(layer)
        if why is None:
            return self.rule
        if self.other != "gradient":
            raise UsageError(f"{why}: pass rule='backprop' (--rule backprop), the gradient")
        self.substituted[layer] = f"{why}: projected with the gradient (backprop) instead"
        return "backprop"

    def _project_whole(self, images: torch.Tensor, group: list[Target], unit: bool) -> list[torch.Tensor]:
        per = max(1, self.max_batch_pixels // (images.shape[-1] * images.shape[-2]))
        outs: list[torch.Tensor] = []
        for s in range(0, len(group), per):
            part = group[s : s + per]
            x = images[[t.image for t in part]]
            chans = torch.tensor([t.channel for t in part], device=images.device)
            outs.extend(self._down(x, part[0].layer, chans, [t.y for t in part], [t.x for t in part], unit))
        return outs

    def _project_cropped(
        self, images: torch.Tensor, group: list[Target], rf: ReceptiveField, unit: bool, output: str
    ) -> list[torch.Tensor]:
        plans = [crop_plan(rf, t.y or 0, t.x or 0) for t in group]  # cropped targets are spatial
        by_shape: dict[tuple[int, int], list[int]] = defaultdict(list)
        for i, ((t, l, b, r), _) in enumerate(plans):
            by_shape[(b - t, r - l)].append(i)
        outs: list[torch.Tensor] = [images.new_zeros(0)] * len(group)
        c, h, w = images.shape[1:]
        for (ch, cw), members in by_shape.items():
            per = max(1, self.max_batch_pixels // (ch * cw))
            for s in range(0, len(members), per):
                part = members[s : s + per]
                crops = torch.stack(
                    [
                        images[group[i].image, :, plans[i][0][0] : plans[i][0][2], plans[i][0][1] : plans[i][0][3]]
                        for i in part
                    ]
                ).contiguous(memory_format=torch.channels_last)  # oneDNN's convs, up and down, prefer it
                chans = torch.tensor([group[i].channel for i in part], device=images.device)
                grads = self._down(
                    crops, group[0].layer, chans, [plans[i][1][0] for i in part], [plans[i][1][1] for i in part], unit
                )
                for i, g in zip(part, grads):
                    (top, left, bottom, right), _ = plans[i]
                    if output == "full":
                        full = images.new_zeros(c, h, w)
                        full[:, top:bottom, left:right] = g
                        outs[i] = full
                    else:  # the receptive-field box, zero past the image border
                        outs[i] = cut_box(g, (top, left), rf.box(group[i].y or 0, group[i].x or 0))
        return outs


@dataclass
class Projection:
    """Sec. 2.1 on a batch: per image, one activation of `layer` (its map `channels[i]` at `positions[i]`)
    projected down to pixel space by the deconvnet (Fig. 1), and the unit's receptive field."""

    layer: str
    settings: ProjectSettings
    channels: list[int]
    positions: list[tuple[int, int] | None]  # (y, x) in the layer's maps; None for fc layers
    activations: torch.Tensor  # N: the projected activation's value
    boxes: list[tuple[int, int, int, int]]  # receptive field (top, left, bottom, right), input px, end-exclusive
    images: torch.Tensor  # N x C x H x W projections, zero outside each unit's receptive field
    maps: dict[str, dict] = field(default_factory=dict)  # the tensor seeded (`zfnet.layers.read_maps`)

    @property
    def rule(self) -> str:
        return self.settings.rule

    def field(self, i: int) -> torch.Tensor:
        """Image `i`'s projection over its unit's receptive-field box (zero past the image border)."""
        return cut_box(self.images[i], (0, 0), self.boxes[i])

    def to_json(self) -> dict:
        return {
            "layer": self.layer,
            "settings": self.settings.to_json(),
            "channels": self.channels,
            "positions": [list(p) if p else None for p in self.positions],
            "activations": self.activations.tolist(),
            "boxes": [list(b) for b in self.boxes],
            "shape": list(self.images.shape),
            "feature_maps": self.maps,
        }


@dataclass(frozen=True)
class ProjectSettings(Settings):
    """Sec. 2.1's projection (`project`): how the way down passes each ReLU, and what seeds it."""

    method: ClassVar[str] = "project"
    renamed: ClassVar[dict[str, str]] = {"mode": "rule"}

    rule: Rule = knob("deconvnet", RULE_HELP, aliases=("--mode",))
    unit: bool = knob(False, "seed 1 at the unit instead of its activation (the picture's scale, not its shape)")


@api
def project(
    model: nn.Module,
    images: torch.Tensor,
    *,
    channel: int | Sequence[int],
    layer: str | None = None,
    position: tuple[int, int] | None = None,
    settings: ProjectSettings | None = None,
    **changes: Any,
) -> Projection:
    """Project map `channel` of `layer` (default: the model's top stage layer, conv5 for Fig. 3's family; one
    channel for all images, or one per image) at `position` (y, x), or where each image's map is strongest, back
    to pixels for a batch of model input `images` (Sec. 2.1). Settings (`ProjectSettings`: `rule`, `unit`) as a
    value or as keywords."""
    s = ProjectSettings.build(settings, **changes)
    if images.dim() != 4:
        raise UsageError(
            f"project takes a batch N x C x H x W (got shape {tuple(images.shape)}); "
            "add a batch dimension with images[None]"
        )
    layer = layer if layer is not None else top_layer(model, tuple(images.shape[1:]))
    n = images.shape[0]
    chans = [int(channel)] * n if isinstance(channel, int) else [int(c) for c in channel]
    if len(chans) != n:
        raise UsageError(f"{len(chans)} channels for {n} images; give one channel or one per image")
    with Deconvnet(model, s.rule) as dn:
        acts = dn.activations(images, layer)
        targets = dn.targets(images, layer, chans, position, acts)
        values = (
            torch.stack(
                [acts[t.image, t.channel, t.y, t.x] if t.y is not None else acts[t.image, t.channel] for t in targets]
            )
            .detach()
            .float()
            .cpu()
        )
        out = dn.project_targets(images, targets, unit=s.unit)
    rf = layer_field(model, layer, tuple(images.shape[1:]))
    return Projection(
        layer,
        s,
        chans,
        [(t.y, t.x or 0) if t.y is not None else None for t in targets],
        values,
        [rf.box(t.y or 0, t.x or 0) for t in targets],
        out,
        read_maps(model, [layer], images),
    )


__all__ = ["RULES", "Deconvnet", "ProjectSettings", "Projection", "Rule", "Target", "project"]
