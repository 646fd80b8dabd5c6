"""Feature visualization by optimization (issue 37): the image that excites a unit most, beside Fig. 2's top-9.

Olah, Mordvintsev and Schubert, "Feature Visualization" (Distill 2017), and Mordvintsev et al., "Differentiable
Image Parameterizations" (Distill 2018):

- **the image** is its 2-D real Fourier spectrum (`FourierImage`), each frequency scaled by 1 / max(|f|, 1/S)^decay
  so that the gradient is whitened and low frequencies are as easy to change as high ones; colours go through a
  fixed 3x3 matrix M with M M^T the colour covariance of the model's training images (`color_matrix`; identity for
  one-channel data), then a sigmoid to [0, 1] pixels, then the model's own preprocessing (`Preprocess.from_pixels`);
- **transformation robustness**: each step pads the image with grey and draws, per image, one affine map - a
  scale, a rotation and a translation (the jitter) - then takes the centre (`random_transforms`); never at
  evaluation;
- **objectives** (`Objective`): a map's mean (channel), one unit of it (neuron: the centre, or a position), a
  direction in the layer's channel space, a class logit; a diversity term (Gram-matrix dissimilarity) between the
  images of one unit; total-variation and L2 penalties; feature accentuation (`start`: begin at a real image, with
  a penalty on the distance to it).

Batched over units: one optimization in which batch member b maximizes unit `units[b]`, so a layer's units cost one
run of batch-sized forwards and backwards. Seeded: the same seed gives the same image, bit for bit, on CPU.
"""

from __future__ import annotations

import contextlib
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, ClassVar, Literal

import torch
import torch.nn.functional as F
from torch import nn

from ..calling import api
from ..errors import UsageError
from ..layers import features, resolve_layer, top_layer
from ..pixels import WithPreprocess, split_model
from ..progress import bar
from ..runtime import channels_last_weights, eval_mode, fast_bfloat16, model_device, weights_fixed
from ..settings import Settings, knob

ObjectiveName = Literal["channel", "neuron", "logit"]
PrecisionName = Literal["auto", "float32", "bfloat16"]


def parse_units(text: str) -> tuple[int, ...]:
    """'0-15,20' -> (0, 1, ..., 15, 20)."""
    out: list[int] = []
    for part in str(text).replace(" ", "").split(","):
        if not part:
            continue
        lo, sep, hi = part.partition("-")
        if not lo.isdigit() or (sep and not hi.isdigit()):
            raise ValueError(f"units are numbers and ranges like 0-15,20 (got {part!r})")
        out.extend(range(int(lo), int(hi) + 1) if sep else [int(lo)])
    return tuple(dict.fromkeys(out))


def _counts(v: Any) -> str:
    ok = isinstance(v, tuple) and v and all(isinstance(k, int) and not isinstance(k, bool) and k >= 0 for k in v)
    return "" if ok else "must be whole numbers >= 0, as 0-15,20"


@dataclass(frozen=True)
class VisualizeSettings(Settings):
    """What is optimized and how (issue 37). Transform sizes are in pixels of the optimized image; none: fitted to
    it (Lucid's 12 px pad and 8 px jitter at 224 px, scaled to the size)."""

    method: ClassVar[str] = "visualize"

    layer: str | None = knob(None, "layer whose units are optimized (none: the model's top layer)")
    units: tuple[int, ...] | None = knob(
        None, "units (maps), as 0-15,20 (none: every map of the layer)", parse=parse_units, check=_counts
    )
    objective: ObjectiveName = knob(
        "channel", "channel: a map's mean; neuron: its centre unit (or --position); logit: a class's output"
    )
    position: tuple[int, ...] | None = knob(
        None,
        "the neuron objective's unit y,x (none: the map's centre)",
        parse=parse_units,
        check=lambda v: _counts(v) or ("" if len(v) == 2 else "must be two numbers y,x"),
    )
    per_unit: int = knob(1, "images per unit (with --diversity they differ)", low=1)
    steps: int = knob(256, "optimization steps", low=1)
    lr: float = knob(0.05, "Adam's learning rate", above=0)
    decay: float = knob(1.0, "the spectrum's scale 1 / |f|^decay (0: plain pixels' gradient)", low=0)
    pad: int | None = knob(None, "grey border before the transforms, px (none: 12 px at 224)", low=0)
    jitter: int | None = knob(None, "largest translation, px (none: 8 px at 224)", low=0)
    scale: float = knob(0.05, "largest relative scale change (0.05: 0.95-1.05)", low=0, high=0.5)
    rotate: float = knob(5.0, "largest rotation, degrees", low=0, high=180)
    transforms: bool = knob(True, "transformation robustness (off: the image is optimized as it is evaluated)")
    tv: float = knob(0.0, "total-variation penalty weight (pixels in [0, 1])", low=0)
    l2: float = knob(0.0, "L2 penalty weight on the pixels' distance from grey 0.5", low=0)
    diversity: float = knob(0.0, "weight of the Gram-matrix dissimilarity between one unit's images", low=0)
    accentuate: float = knob(1.0, "with a start image: weight of its squared distance to the start", low=0)
    batch: int = knob(32, "images optimized at once (units x images)", low=1)
    seed: int = knob(0, "the starting noise and every transform", low=0)
    precision: PrecisionName = knob(
        "auto",
        "the steps' arithmetic: bfloat16 autocast, or float32; auto: bfloat16 where the processor multiplies it "
        "natively (AMX, CUDA). Values are always measured in float32",
    )


# --- the image ---------------------------------------------------------------------------------------------


def spectrum_scale(size: int, decay: float) -> torch.Tensor:
    """1 / max(|f|, 1/size)^decay for each frequency of a size x size real FFT (size x size//2+1), f in cycles
    per pixel."""
    fy = torch.fft.fftfreq(size, dtype=torch.float64)[:, None]
    fx = torch.fft.rfftfreq(size, dtype=torch.float64)[None, :]
    f = (fy * fy + fx * fx).sqrt()
    return (1.0 / f.clamp_min(1.0 / size) ** decay).float()


SIGMA = 4.0  # Lucid's spectrum divisor: images start near grey and keep room to saturate


@dataclass
class FourierImage:
    """B images of C channels and size S as their real spectra (B x C x S x S//2+1, real and imaginary parts as
    parameters), scaled by `spectrum_scale`: `linear()` gives the decorrelated colour space, `pixels(M)` the
    [0, 1] image (M the colour matrix, then a sigmoid)."""

    spectrum: torch.Tensor  # B x C x S x (S//2+1) x 2, the parameter
    scale: torch.Tensor  # S x (S//2+1)
    size: int

    @classmethod
    def noise(cls, b: int, c: int, size: int, decay: float, g: torch.Generator, sd: float = 0.01) -> FourierImage:
        spec = torch.randn(b, c, size, size // 2 + 1, 2, generator=g) * sd
        return cls(spec.requires_grad_(True), spectrum_scale(size, decay), size)

    @classmethod
    def of(cls, pixels: torch.Tensor, matrix: torch.Tensor, decay: float) -> FourierImage:
        """The parameter whose `pixels(matrix)` is `pixels` (B x C x S x S in (0, 1)): feature accentuation's
        start (Hamblin, Fel et al. 2024)."""
        size = pixels.shape[-1]
        p = pixels.double().clamp(1e-4, 1 - 1e-4)
        linear = torch.logit(p)
        linear = torch.einsum("ij,bjhw->bihw", torch.linalg.inv(matrix.double()), linear)
        spec = torch.fft.rfft2(linear * SIGMA, norm="ortho") / spectrum_scale(size, decay).double()
        return cls(
            torch.view_as_real(spec).float().contiguous().requires_grad_(True), spectrum_scale(size, decay), size
        )

    def linear(self) -> torch.Tensor:
        spec = torch.view_as_complex(self.spectrum) * self.scale
        return torch.fft.irfft2(spec, s=(self.size, self.size), norm="ortho") / SIGMA

    def pixels(self, matrix: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(torch.einsum("ij,bjhw->bihw", matrix, self.linear()))


def color_matrix(pixels: torch.Tensor | None) -> tuple[torch.Tensor, str]:
    """The fixed colour matrix M of Olah et al.: U sqrt(S) of the SVD of the colour covariance of `pixels`
    (N x C x H x W in [0, 1]), divided by its largest column norm (Lucid's normalization: M M^T is the covariance
    over that norm squared); identity for one channel or no data. Returns (M, what it rests on)."""
    if pixels is None or pixels.shape[1] == 1:
        c = 1 if pixels is None else pixels.shape[1]
        why = "identity: one channel" if pixels is not None else "identity: no training images given"
        return torch.eye(c if pixels is not None else 3), why
    flat = pixels.double().transpose(0, 1).reshape(pixels.shape[1], -1)
    cov = torch.cov(flat)
    u, s, _ = torch.linalg.svd(cov)
    m = u * s.sqrt()
    m = m / m.norm(dim=0).max()
    return m.float(), f"the colour covariance of {pixels.shape[0]} images (SVD square root)"


# --- transformation robustness -----------------------------------------------------------------------------


def random_transforms(x: torch.Tensor, pad: int, jitter: int, scale: float, rotate: float, g: torch.Generator):
    """Pad `x` (B x C x S x S, [0, 1]) with grey 0.5, then per image one affine map - scale in 1 +- `scale`,
    rotation in +- `rotate` degrees, translation in +- `jitter` px - sampled bilinearly, and the centre S px."""
    b, _, s, _ = x.shape
    if pad:
        x = F.pad(x, (pad, pad, pad, pad), value=0.5)
    n = x.shape[-1]
    u = torch.rand(b, 4, generator=g) * 2 - 1
    k = 1 + scale * u[:, 0]
    a = math.radians(rotate) * u[:, 1]
    shift = jitter * u[:, 2:] * 2 / n  # pixels to [-1, 1] units
    theta = torch.zeros(b, 2, 3)
    theta[:, 0, 0], theta[:, 0, 1], theta[:, 1, 0], theta[:, 1, 1] = a.cos() / k, -a.sin() / k, a.sin() / k, a.cos() / k
    theta[:, :, 2] = shift
    grid = F.affine_grid(theta.to(x.device, x.dtype), list(x.shape), align_corners=False)
    top = (n - s) // 2  # only the centre is sampled: each output pixel reads its own grid point
    return F.grid_sample(x, grid[:, top : top + s, top : top + s], mode="bilinear", padding_mode="border",
                         align_corners=False)  # fmt: skip


def fitted(value: int | None, at224: int, size: int) -> int:
    return value if value is not None else max(1 if at224 else 0, round(at224 * size / 224))


# --- objectives --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Objective:
    """What batch member b maximizes: `kind` of unit `units[b]` of `layer` (or, for "direction", the dot product
    of each position's channel vector with `direction`, averaged)."""

    layer: str
    kind: str
    units: tuple[int, ...]
    position: tuple[int, int] | None = None
    direction: torch.Tensor | None = None

    def __call__(self, maps: torch.Tensor) -> torch.Tensor:
        """Per batch member, its value (B) from the layer's maps (B x C x H x W, or B x C)."""
        b = torch.arange(maps.shape[0], device=maps.device)
        if self.kind == "direction":
            d = self.direction.to(maps.device, maps.dtype)  # type: ignore[union-attr]
            return torch.einsum("bc...,c->b...", maps, d).flatten(1).mean(1)
        c = torch.tensor(self.units, device=maps.device)
        if maps.dim() == 2 or self.kind in ("channel", "logit"):
            return maps[b, c] if maps.dim() == 2 else maps[b, c].flatten(1).mean(1)
        y, x = self.position or (maps.shape[-2] // 2, maps.shape[-1] // 2)
        return maps[b, c, y, x]


def gram_dissimilarity(maps: torch.Tensor, groups: list[list[int]]) -> torch.Tensor:
    """Minus the mean cosine similarity of the Gram matrices (channel x channel, over positions) of the members of
    each group (one unit's images), per member (B): the diversity term of Olah et al."""
    out = torch.zeros(maps.shape[0], device=maps.device, dtype=maps.dtype)
    if maps.dim() != 4:
        return out
    flat = maps.flatten(2)
    gram = torch.einsum("bcp,bdp->bcd", flat, flat).flatten(1)
    gram = F.normalize(gram, dim=1)
    for members in groups:
        if len(members) < 2:
            continue
        gm = gram[members]
        sim = gm @ gm.T
        n = len(members)
        off = (sim.sum(1) - sim.diagonal()) / (n - 1)
        out[members] = -off
    return out


def total_variation(x: torch.Tensor) -> torch.Tensor:
    """Per image, the mean absolute difference of neighbouring pixels."""
    dy = (x[..., 1:, :] - x[..., :-1, :]).abs().flatten(1).mean(1)
    dx = (x[..., :, 1:] - x[..., :, :-1]).abs().flatten(1).mean(1)
    return dy + dx


# --- the result -------------------------------------------------------------------------------------------


@dataclass
class Visualization:
    """The optimized images (display pixels, B x C x S x S, 0-255), their units and each one's objective value
    evaluated without transforms, through the model's preprocessing (`values`), with the settings."""

    layer: str
    objective: str
    units: list[int]
    images: torch.Tensor = field(repr=False)
    values: list[float]
    start_values: list[float] | None
    history: list[list[float]]  # per batch member, the objective every `every` steps (with transforms)
    every: int
    settings: VisualizeSettings
    color: str
    seconds: float
    per_image: int = 1
    arithmetic: str = "float32"

    def to_json(self) -> dict:
        return {
            "layer": self.layer,
            "objective": self.objective,
            "units": self.units,
            "values": self.values,
            "start_values": self.start_values,
            "images_per_unit": self.per_image,
            "history": self.history,
            "history_every": self.every,
            "settings": self.settings.to_json(),
            "color_decorrelation": self.color,
            "arithmetic": self.arithmetic,
            "seconds": self.seconds,
        }


@dataclass(frozen=True)
class Arithmetic:
    """How the steps compute: bfloat16 autocast or float32; channels-last inputs where the model takes them, and
    channels-last weights too where nothing else uses the model between steps (convolutions then run without
    reorders). Only the steps: every reported value is measured in float32."""

    bfloat16: bool
    channels_last: bool
    weights: bool = False

    @classmethod
    def choose(cls, net: nn.Module, pp, layer: str, s: VisualizeSettings, shared: bool) -> Arithmetic:
        """`s.precision` resolved on the model's device; channels-last where one forward of a channels-last input
        runs; the weights left as they are when the model is `shared` (the explorer's other requests run between
        steps: they see the model's own weights)."""
        device = model_device(net)
        bf16 = s.precision == "bfloat16" or (s.precision == "auto" and fast_bfloat16(device))
        probe = torch.zeros(1, pp.channels, pp.input_size, pp.input_size, device=device)
        try:
            with torch.no_grad():
                features(net, probe.contiguous(memory_format=torch.channels_last), [layer])
        except RuntimeError:  # a model that views its maps as contiguous: it keeps its layout
            return cls(bf16, False)
        return cls(bf16, True, not shared)

    def layout(self, net: nn.Module):
        """The weights' layout for the steps (`runtime.channels_last_weights`); the model's own outside them."""
        return channels_last_weights(net) if self.weights else contextlib.nullcontext()

    def describe(self) -> str:
        kind = "bfloat16 autocast (values measured in float32)" if self.bfloat16 else "float32"
        return kind + (", channels-last" if self.channels_last else "")

    def maps(self, net: nn.Module, pp, x: torch.Tensor, layer: str) -> torch.Tensor:
        """`layer`'s maps (float32) of [0, 1] pixels `x` through the model's preprocessing, in this arithmetic."""
        inp = pp.from_pixels(x * 255.0)
        if self.channels_last:
            inp = inp.contiguous(memory_format=torch.channels_last)
        with torch.autocast(inp.device.type, dtype=torch.bfloat16, enabled=self.bfloat16):
            return features(net, inp, [layer])[layer].float()


# --- the method -------------------------------------------------------------------------------------------


@api
def visualize(
    model: nn.Module | WithPreprocess,
    images: torch.Tensor | None = None,
    *,
    preprocess=None,
    color: torch.Tensor | None = None,
    training_pixels: torch.Tensor | None = None,
    start: torch.Tensor | None = None,
    direction: torch.Tensor | None = None,
    progress: bool = False,
    callback: Callable[[int, int], None] | None = None,
    settings: VisualizeSettings | None = None,
    **changes: Any,
) -> Visualization:
    """Issue 37: optimize an image per unit of `settings.layer` (every map by default, `settings.per_unit` each),
    batched over units. `images` (N x C x S x S model input) seed the optimization instead of noise (feature
    accentuation: image i for unit i, with the `accentuate` penalty on the distance to it). The colour matrix is
    `color`, else computed from `training_pixels` ([0, 1], N x C x H x W), else the identity. `callback(done,
    total)` is told the image-steps done after each step (it may raise to stop, or let other work use the model:
    with a callback the weights keep their layout). `direction` (C) with
    objective "direction" (Python only). Settings (`VisualizeSettings`) as a value or as keywords."""
    s = VisualizeSettings.build(settings, **changes)
    net, pp = split_model(model, preprocess)
    if pp is None:
        raise UsageError("visualize needs the model's preprocessing (pixels -> model input): pass preprocess=")
    ch = pp.channels
    layer, probe = layer_maps(net, pp, s)
    kind = "direction" if direction is not None else s.objective
    count = probe.shape[1] if direction is None else 1
    units = list(s.units if s.units is not None else range(count))
    _check(layer, units, kind, s, probe)
    if color is not None:
        matrix, color_note = color, "given"
    elif ch == 1 or training_pixels is None:
        matrix, color_note = torch.eye(ch), "identity: " + ("one channel" if ch == 1 else "no training images given")
    else:
        matrix, color_note = color_matrix(training_pixels)
    if images is not None and images.shape[0] != len(units) * s.per_unit:
        raise UsageError(f"{images.shape[0]} start images for {len(units)} units x {s.per_unit}; give one per image")
    members = [u for u in units for _ in range(s.per_unit)]
    started = time.perf_counter()
    out_images: list[torch.Tensor] = []
    values: list[float] = []
    starts: list[float] = []
    history: list[list[float]] = []
    every = max(1, s.steps // 32)
    device = model_device(net)
    shown = bar(total=len(members) * s.steps, desc=f"visualize {layer}", unit="step", disable=not progress)
    arith = Arithmetic.choose(net, pp, layer, s, shared=callback is not None)
    with eval_mode(net), weights_fixed(net), torch.enable_grad(), shown as pbar:
        for k in range(0, len(members), s.batch):
            part = members[k : k + s.batch]
            obj = Objective(layer, kind, tuple(part), s.position, direction)  # type: ignore[arg-type]
            g = torch.Generator().manual_seed(s.seed * 1_000_003 + k)
            first = None if images is None else pp.to_pixels(images[k : k + len(part)].detach().cpu()) / 255.0
            tick = None if callback is None else (lambda n, _k=k: callback(_k * s.steps + n, len(members) * s.steps))
            with arith.layout(net):
                pixels, trace, v0 = _optimize(net, pp, obj, part, s, matrix, g, first, arith, pbar, tick)
            out_images.append(pixels * 255.0)
            with torch.no_grad():
                values.extend(obj(features(net, pp.from_pixels(pixels.to(device) * 255.0), [layer])[layer]).tolist())
            starts.extend(v0 or [])
            history.extend(trace)
    return Visualization(layer, kind, members, torch.cat(out_images), values, starts or None, history, every, s,
                         color_note, time.perf_counter() - started, s.per_unit, arith.describe())  # fmt: skip


def _check(layer: str, units: list[int], kind: str, s: VisualizeSettings, probe: torch.Tensor) -> None:
    """Refuse units, objective and position that `layer`'s maps (`probe`) do not have, in one line each."""
    bad = [u for u in units if not 0 <= u < probe.shape[1]]
    if bad:
        raise UsageError(f"unit {bad[0]} does not exist in {layer} ({probe.shape[1]} maps: 0..{probe.shape[1] - 1})")
    if kind == "neuron" and probe.dim() != 4:
        raise UsageError(f"layer {layer!r} has no positions (it is fully connected); use --objective channel")
    if s.position is not None and (len(s.position) != 2 or probe.dim() != 4
                                   or not all(0 <= p < n for p, n in zip(s.position, probe.shape[-2:]))):  # fmt: skip
        raise UsageError(f"--position must be y,x inside {layer}'s {tuple(probe.shape[-2:])} maps")


def layer_maps(net: nn.Module, pp, s: VisualizeSettings) -> tuple[str, torch.Tensor]:
    """The layer optimized (`s.layer`, else the top layer; the last linear layer for the logit objective) and its
    maps on one grey input (their shape: how many units it has)."""
    size, ch = pp.input_size, pp.channels
    layer = s.layer or (_logits(net) if s.objective == "logit" else top_layer(net, (ch, size, size)))
    resolve_layer(net, layer)
    with torch.no_grad(), eval_mode(net):
        return layer, features(net, torch.zeros(1, ch, size, size, device=model_device(net)), [layer])[layer]


def _logits(net: nn.Module) -> str:
    """The model's last linear layer: the logit objective's layer when none is named."""
    linear = [n for n, m in net.named_modules() if isinstance(m, nn.Linear)]
    if not linear:
        raise UsageError("the model has no linear output layer; name the logits' layer with --layer")
    return linear[-1]


def _loss(value, maps, raw, obj: Objective, pixels, s: VisualizeSettings, groups, anchor) -> torch.Tensor:
    """Per batch member: minus the objective (a unit silent on the whole image climbs on the layer's raw output,
    where its gradient is not zero), minus the diversity, plus the penalties (total variation, L2 from grey, the
    distance to the start image)."""
    loss = -value
    if raw is not None and raw.shape == maps.shape:
        loss = loss - torch.where(value.detach() == 0, obj(raw), torch.zeros_like(value))
    if s.diversity:
        loss = loss - s.diversity * gram_dissimilarity(maps, groups)
    if s.tv:
        loss = loss + s.tv * total_variation(pixels)
    if s.l2:
        loss = loss + s.l2 * (pixels - 0.5).pow(2).flatten(1).mean(1)
    if anchor is not None and s.accentuate:
        loss = loss + s.accentuate * (pixels - anchor).pow(2).flatten(1).mean(1)
    return loss


def _optimize(net, pp, obj: Objective, part, s: VisualizeSettings, matrix, g, first, arith: Arithmetic, pbar, tick):
    """One batch: Adam on the spectra for `s.steps` steps in `arith`; returns the final [0, 1] pixels (CPU), the
    objective trace, and (with a start image) each start's value."""
    size, device = pp.input_size, model_device(net)
    b = len(part)
    img = (
        FourierImage.noise(b, pp.channels, size, s.decay, g)
        if first is None
        else FourierImage.of(first, matrix, s.decay)
    )
    opt = torch.optim.Adam([img.spectrum], lr=s.lr)
    pad, jitter = fitted(s.pad, 12, size), fitted(s.jitter, 8, size)
    groups = [list(range(i, min(b, i + s.per_unit))) for i in range(0, b, s.per_unit)]
    trace: list[list[float]] = [[] for _ in range(b)]
    start_values, anchor = None, None
    if first is not None:
        with torch.no_grad():
            start_values = obj(features(net, pp.from_pixels(first.to(device) * 255.0), [obj.layer])[obj.layer]).tolist()
        anchor = first.to(device)
    every = max(1, s.steps // 32)
    module = resolve_layer(net, obj.layer)
    raw: list[torch.Tensor] = []

    def keep_raw(_m, _i, out) -> None:  # the layer's own output: where a silent unit's gradient is not zero
        if isinstance(out, torch.Tensor):
            raw.append(out.float())

    for step in range(s.steps):
        pixels = img.pixels(matrix).to(device)
        x = random_transforms(pixels, pad, jitter, s.scale, s.rotate, g) if s.transforms else pixels
        raw.clear()
        handle = module.register_forward_hook(keep_raw)
        try:
            maps = arith.maps(net, pp, x, obj.layer)
        finally:
            handle.remove()
        value = obj(maps)
        loss = _loss(value, maps, raw[0] if raw else None, obj, pixels, s, groups, anchor)
        opt.zero_grad(set_to_none=True)
        loss.sum().backward()
        opt.step()
        if step % every == 0 or step == s.steps - 1:
            for i, v in enumerate(value.detach().cpu().tolist()):
                trace[i].append(v)
        pbar.update(b)
        if tick is not None:  # image-steps done so far (`callback(done, total)`: a job's progress, or its stop)
            tick((step + 1) * b)
    with torch.no_grad():
        return img.pixels(matrix).detach().cpu(), trace, start_values


__all__ = [
    "Arithmetic",
    "FourierImage",
    "Objective",
    "Visualization",
    "VisualizeSettings",
    "color_matrix",
    "gram_dissimilarity",
    "layer_maps",
    "parse_units",
    "random_transforms",
    "spectrum_scale",
    "visualize",
]
