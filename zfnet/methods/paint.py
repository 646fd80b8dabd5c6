"""Paint to occlude (issue 38): Fig. 6's question - what does the model lose when this part is hidden? - asked of
the part the user paints, not of a grid of squares, and answered live.

The image's forward is recorded once (`zfnet.methods.incremental.record`). Each stroke changes the painted
pixels (to the grey fill, or to the image blurred); the rectangle around the pixels it changed is replayed through
the graph (`Replay.advance`: exact incremental inference, Krypton's idea on any module graph), and the replay
becomes the new recorded state, so the next stroke replays only its own rectangle. The answer - the target's
probability, the top classes, the chosen map's strongest activation - equals a whole forward of the painted image
to float rounding (tested at 1e-4). A model whose graph the engine cannot replay, or a layer whose maps are
tokens, runs whole forwards, and says so (`strategy`).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any, ClassVar, Literal

import torch
import torch.nn.functional as F
from torch import nn

from ..calling import api
from ..errors import UsageError
from ..layers import capture, resolve_layer, sites, top_layer
from ..pixels import FILL_HELP, Fill, WithPreprocess, fill_problem, parse_fill, resolve_fill, split_model
from ..runtime import eval_mode
from ..settings import Settings, knob
from .incremental import Replay, record
from .occlusion import _replays

PaintStrategy = Literal["auto", "incremental", "whole"]


@dataclass(frozen=True)
class PaintSettings(Settings):
    """What a painted stroke covers the image with and what is read back (issue 38)."""

    method: ClassVar[str] = "paint"

    target: int | None = knob(None, "the class whose probability is read (none: the unpainted image's prediction)")
    layer: str | None = knob(None, "the layer whose map's activity is read (none: the top layer)")
    map: int | None = knob(None, "that layer's map (none: the strongest on the unpainted image)", low=0)
    fill: Fill = knob("grey", "what painted pixels become: " + FILL_HELP, parse=parse_fill, check=fill_problem)
    blur: float | None = knob(None, "painted pixels become the image blurred with this sigma, px (none: the fill)",
                              above=0)  # fmt: skip
    top: int = knob(5, "classes listed", low=1)
    strategy: PaintStrategy = knob(
        "auto",
        "auto: incremental where the model's graph replays, until a stroke replays slower than a whole forward; "
        "incremental: always (refused where it cannot); whole: whole forwards",
    )


@dataclass
class PaintResult:
    """One painted state: the target's probability `p`, the `top` classes, the map's `activity` (its strongest
    activation and where, in map units), the map itself (`maps`, H x W), how it was computed and how long it took."""

    p: float
    target: int
    top: list[dict]
    activity: dict
    maps: torch.Tensor = field(repr=False)
    strategy: str
    why_whole: str
    changed: list[int] | None  # the rectangle replayed: top, left, height, width (None: nothing changed)
    seconds: float
    settings: PaintSettings

    def to_json(self) -> dict:
        return {"p": self.p, "target": self.target, "top": self.top, "activity": self.activity,
                "strategy": self.strategy, "why_whole": self.why_whole, "changed": self.changed,
                "seconds": self.seconds, "settings": self.settings.to_json()}  # fmt: skip


class Painter:
    """One image (1 x C x H x W model input) being painted: its recorded forward, moved along stroke by stroke.
    `apply(mask)` (H x W, True = painted) gives the `PaintResult` of the image painted so - from the replay of the
    rectangle where it differs from the last painted state."""

    def __init__(self, model: nn.Module, pp, image: torch.Tensor, settings: PaintSettings) -> None:
        self.model, self.s = model, settings
        x = image[None] if image.dim() == 3 else image
        if x.dim() != 4 or x.shape[0] != 1:
            raise UsageError(f"paint takes one image (C x H x W), got shape {tuple(image.shape)}")
        self.x = x.detach()
        self.layer = settings.layer or top_layer(model, tuple(x.shape[1:]))
        resolve_layer(model, self.layer)
        self.cover = _cover(model, pp, self.x, settings)
        self.replay: Replay | None = None
        self.why_whole = ""
        with torch.no_grad(), eval_mode(model):
            t0 = time.perf_counter()
            logits, maps = self._whole(self.x)
            self.whole_seconds = time.perf_counter() - t0  # auto compares the first replayed stroke with it
            self.target = int(logits.argmax(1)) if settings.target is None else settings.target
            if not 0 <= self.target < logits.shape[1]:
                raise UsageError(f"class {self.target} does not exist (the model has {logits.shape[1]} outputs)")
            if maps.dim() != 3:
                raise UsageError(f"layer {self.layer!r} has no maps (it is fully connected); pick a conv layer")
            self.map = int(maps.flatten(1).amax(1).argmax()) if settings.map is None else settings.map
            if not 0 <= self.map < maps.shape[0]:
                raise UsageError(f"map {self.map} does not exist in {self.layer} ({maps.shape[0]} maps)")
            if settings.strategy != "whole":
                self._record(logits)
            if settings.strategy == "incremental" and self.replay is None:
                raise UsageError(f"this model cannot be painted incrementally ({self.why_whole}); use strategy whole")
        self.current = self.x.clone()
        self.first = self.last = self._result(logits, maps, None, 0.0)  # the unpainted image's

    def _record(self, logits: torch.Tensor) -> None:
        site = sites(self.model, [self.layer], self.x)[self.layer]
        if site.layout != "maps":
            self.why_whole = f"the layer's maps are {site.layout}, not convolutional"
            return
        graph, out = record(self.model, self.x.clone(), site)  # the replay moves its values along in place
        if graph.output < 0 or graph.feature < 0 or not isinstance(out, torch.Tensor):
            self.why_whole = "the output or the layer's maps are not values of the recorded forward"
            return
        replay = Replay.of(graph)
        h, w = self.x.shape[-2:]
        probe = (h // 4, w // 4, self.cover[..., h // 4 : h // 2, w // 4 : w // 2][0])
        why = _replays(self.model, self.x, replay, logits, probe)
        if why:
            self.why_whole = why
            return
        self.replay = replay

    def _whole(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Logits and the layer's maps (C x H x W) from one whole forward."""
        with capture(self.model, [self.layer], x, stop=False) as found:
            logits = self.model(x)
        return logits.float(), found[self.layer][0].float()

    def painted(self, mask: torch.Tensor) -> torch.Tensor:
        """The image with the `mask`'s pixels covered."""
        m = _mask(mask, self.x)
        return torch.where(m, self.cover, self.x)

    def apply(self, mask: torch.Tensor) -> PaintResult:
        started = time.perf_counter()
        new = self.painted(mask)
        diff = (new != self.current).any(1)[0]
        if not bool(diff.any()):
            return self.last
        rows, cols = diff.any(1).nonzero().flatten(), diff.any(0).nonzero().flatten()
        t, b, l, r = int(rows[0]), int(rows[-1]) + 1, int(cols[0]), int(cols[-1]) + 1
        with torch.no_grad(), eval_mode(self.model):
            how = "exact incremental" if self.replay is not None else "whole forwards"
            if self.replay is not None:
                out, feat = self.replay.advance(t, l, new[..., t:b, l:r])
                logits, maps = out.float(), feat[0].float()
                spent = time.perf_counter() - started
                if self.s.strategy == "auto" and spent > 1.5 * self.whole_seconds:  # small models: whole is faster
                    self.replay = None
                    self.why_whole = (f"whole forwards are faster here ({1000 * self.whole_seconds:.1f} ms against "
                                      f"{1000 * spent:.1f} ms for the first replayed stroke)")  # fmt: skip
            else:
                logits, maps = self._whole(new)
        self.current = new
        self.last = self._result(logits, maps, [t, l, b - t, r - l], time.perf_counter() - started, how)
        return self.last

    def _result(self, logits: torch.Tensor, maps: torch.Tensor, changed, seconds: float, how: str = "") -> PaintResult:
        probs = F.softmax(logits, 1)[0]
        k = min(self.s.top, probs.shape[0])
        top = [{"class": int(c), "p": float(probs[c])} for c in probs.topk(k).indices]
        m = maps[self.map]
        where = int(m.flatten().argmax())
        activity = {"layer": self.layer, "map": self.map, "value": float(m.flatten()[where]),
                    "position": [where // m.shape[-1], where % m.shape[-1]]}  # fmt: skip
        strategy = how or ("exact incremental" if self.replay is not None else "whole forwards")
        return PaintResult(float(probs[self.target]), self.target, top, activity, m.detach().clone(), strategy,
                           self.why_whole, changed, seconds, self.s)  # fmt: skip


def _cover(model: nn.Module, pp, x: torch.Tensor, s: PaintSettings) -> torch.Tensor:
    """What painted pixels become (1 x C x H x W model input): the fill (pasted in pixels, `resolve_fill`), or the
    image blurred - in pixels, then preprocessed again, so that a per-pixel mean image is not blurred with it."""
    if s.blur is None:
        return resolve_fill(model, s.fill, pp, x, "paint's fill")[0].to(x)[None].expand_as(x)
    if pp is None:
        raise UsageError("blurring paints in pixels: pass the model's preprocessing (preprocess=) or an opened model")
    return pp.from_pixels(_blur(pp.to_pixels(x), float(s.blur))).to(x)


def _blur(x: torch.Tensor, sigma: float) -> torch.Tensor:
    """A Gaussian blur of `x` (N x C x H x W) truncated at 3 sigma, edges mirrored (torchvision's)."""
    from torchvision.transforms.v2.functional import gaussian_blur

    r = max(1, int(3 * sigma + 0.5))
    return gaussian_blur(x, [2 * r + 1, 2 * r + 1], [sigma, sigma])


def _mask(mask: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """H x W (or 1 x H x W) true where painted -> 1 x 1 x H x W bool; refused when not the image's size."""
    m = torch.as_tensor(mask)
    while m.dim() > 2 and m.shape[0] == 1:
        m = m[0]
    if tuple(m.shape) != tuple(x.shape[-2:]):
        raise UsageError(
            f"the mask is {'x'.join(map(str, m.shape))}, the image {x.shape[-2]}x{x.shape[-1]}; "
            "paint a mask of the model's input size"
        )
    return (m > 0.5 if m.is_floating_point() else m.bool())[None, None].to(x.device)


@api
def paint(
    model: nn.Module | WithPreprocess,
    images: torch.Tensor,
    *,
    mask: torch.Tensor,
    preprocess=None,
    settings: PaintSettings | None = None,
    **changes: Any,
) -> PaintResult:
    """Issue 38: the model on `images` (one image, 1 x C x H x W model input) with the pixels of `mask` (H x W,
    True = painted; keyword-only, the house's call shape) covered - by the grey fill or the image blurred.
    Returns the target's probability, the top classes and the chosen map's activity, computed by replaying the
    painted rectangle (`Painter`). Settings (`PaintSettings`) as a value or as keywords."""
    s = PaintSettings.build(settings, **changes)
    net, pp = split_model(model, preprocess)
    return Painter(net, pp, images, s).apply(mask)


__all__ = ["PaintResult", "PaintSettings", "Painter", "paint"]
