"""Receptive fields: which input pixels a unit (layer, y, x) sees (Sec. 2.1, Fig. 2 patches).

Computed from the model itself, never from a table: one traced forward records, for every tensor, the
geometry of its unit grid in input pixels - unit 0's first pixel (`start`, negative where padding reaches past
the border), the spacing between units (`jump`) and the field's size - through conv/pool ops (kernel, stride,
padding, dilation) and spatially pointwise ops (ReLU, additions, BatchNorm, contrast normalization across maps,
...). Branches that meet (residual additions) take the hull of their fields. Any other op on spatial data
(flatten, adaptive pooling, resizing) makes the field global: the whole image.

    >>> rf = zfnet.layer_field(model, "conv5")     # ZFNet: size 139, jump 16
    >>> top, left, bottom, right = rf.box(3, 4)         # half-open, may extend past the image
    >>> patches = rf.crop(images, 3, 4)                 # N x C x 139 x 139, zero past the border
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import ClassVar

import torch
from torch import nn
from torch.overrides import TorchFunctionMode

from .calling import api
from .errors import UsageError
from .layers import StopForward, capture, sites
from .models import model_input_shape
from .runtime import eval_mode, model_device, model_dtype
from .settings import Settings


@dataclass(frozen=True)
class Axis:
    """Unit i of a map covers input pixels [start + i*jump, start + i*jump + size) along one axis."""

    size: int
    jump: int
    start: int

    def span(self, i: int) -> tuple[int, int]:
        lo = self.start + i * self.jump
        return lo, lo + self.size

    def hull(self, other: Axis) -> Axis:
        if self.jump != other.jump:
            raise ValueError("branches with different strides meet")
        lo = min(self.start, other.start)
        hi = max(self.start + self.size, other.start + other.size)
        return Axis(hi - lo, self.jump, lo)


@dataclass(frozen=True)
class ReceptiveField:
    """The receptive field of every unit of one layer; `None` axes mean global (the whole image)."""

    layer: str
    rows: Axis | None
    cols: Axis | None
    input_size: tuple[int, int]  # (H, W) of the input it was computed for

    @property
    def is_global(self) -> bool:
        return self.rows is None or self.cols is None

    @property
    def axes(self) -> tuple[Axis, Axis]:
        """(rows, cols) of a local field; a global field has none."""
        if self.rows is None or self.cols is None:
            raise ValueError(f"the receptive field of {self.layer} is global (the whole image)")
        return self.rows, self.cols

    @property
    def jump(self) -> list[int] | None:
        """The spacing of neighbouring units' fields in input pixels, (rows, cols); None when global."""
        return None if self.is_global else [self.axes[0].jump, self.axes[1].jump]

    @property
    def size(self) -> tuple[int, int]:
        if self.is_global:
            return self.input_size
        rows, cols = self.axes
        return rows.size, cols.size

    def box(self, y: int = 0, x: int = 0) -> tuple[int, int, int, int]:
        """(top, left, bottom, right), half-open, in input pixels; may reach past the image border."""
        if self.is_global:
            return 0, 0, self.input_size[0], self.input_size[1]
        rows, cols = self.axes
        (t, b), (l, r) = rows.span(y), cols.span(x)
        return t, l, b, r

    def clipped_box(self, y: int = 0, x: int = 0) -> tuple[int, int, int, int]:
        t, l, b, r = self.box(y, x)
        h, w = self.input_size
        return max(t, 0), max(l, 0), min(b, h), min(r, w)

    def crop(self, images: torch.Tensor, y: int | torch.Tensor, x: int | torch.Tensor) -> torch.Tensor:
        """The field's box cut out of N images (one (y, x) for all, or one per image), zero past the border."""
        n = images.shape[0]
        ys = torch.as_tensor(y).expand(n) if torch.as_tensor(y).dim() == 0 else torch.as_tensor(y)
        xs = torch.as_tensor(x).expand(n) if torch.as_tensor(x).dim() == 0 else torch.as_tensor(x)
        return torch.stack([cut_box(images[i], (0, 0), self.box(int(ys[i]), int(xs[i]))) for i in range(n)])

    def to_json(self) -> dict:
        return {
            "layer": self.layer,
            "size": list(self.size),
            "global": self.is_global,
            "jump": self.jump,
            "start": None if self.is_global else [self.axes[0].start, self.axes[1].start],
        }


def cut_box(src: torch.Tensor, origin: tuple[int, int], box: tuple[int, int, int, int]) -> torch.Tensor:
    """The (top, left, bottom, right) box of the plane that `src` (C x h x w) covers from `origin` (top, left)
    on, as a C x (bottom - top) x (right - left) tensor: zero where `src` does not reach (past a border)."""
    (ot, ol), (t, l, b, r) = origin, box
    out = src.new_zeros(src.shape[0], b - t, r - l)
    ct, cl = max(t, ot), max(l, ol)
    cb, cr = min(b, ot + src.shape[-2]), min(r, ol + src.shape[-1])
    if cb > ct and cr > cl:
        out[:, ct - t : cb - t, cl - l : cr - l] = src[:, ct - ot : cb - ot, cl - ol : cr - ol]
    return out


# --- tracing ------------------------------------------------------------------------------------------

_WINDOWED_NAMES = {"conv2d", "max_pool2d", "_max_pool2d", "max_pool2d_with_indices", "avg_pool2d"}
# ops that act on each pixel position separately (channels may mix): the field passes through unchanged
_POINTWISE_NAMES = {
    "relu",
    "relu_",
    "relu6",
    "leaky_relu",
    "leaky_relu_",
    "elu",
    "elu_",
    "selu",
    "celu",
    "gelu",
    "silu",
    "mish",
    "sigmoid",
    "sigmoid_",
    "tanh",
    "tanh_",
    "hardtanh",
    "hardtanh_",
    "hardswish",
    "hardsigmoid",
    "softplus",
    "threshold",
    "add",
    "add_",
    "__add__",
    "__iadd__",
    "__radd__",
    "sub",
    "sub_",
    "__sub__",
    "__rsub__",
    "mul",
    "mul_",
    "__mul__",
    "__imul__",
    "__rmul__",
    "div",
    "div_",
    "__truediv__",
    "clamp",
    "clamp_",
    "clamp_min",
    "clamp_min_",
    "batch_norm",
    "instance_norm",
    "group_norm",
    "local_response_norm",
    "dropout",
    "dropout2d",
    "alpha_dropout",
    "feature_alpha_dropout",
    "contiguous",
    "clone",
    "detach",
    "float",
    "to",
    "type_as",
    "neg",
    "abs",
    "exp",
    "pow",
    "sqrt",
    "rsqrt",
    "__neg__",
    "__pow__",
    "square",
}
# ops that never touch the spatial grid of their data (reading shapes, ...)
_NEUTRAL_NAMES = {
    "size",
    "dim",
    "__len__",
    "numel",
    "__get__",
    "__getattribute__",
    "__bool__",
    "__format__",
    "__repr__",
    "shape",
    "element_size",
    "stride",
    "is_contiguous",
    "data_ptr",
    "requires_grad_",
    "register_hook",
    "__setstate__",
    "item",
    "tolist",
    "__index__",
    "__eq__",
    "__ne__",
    "all",
    "any",
    "isfinite",
}


def _pair(v) -> tuple[int, int]:
    if isinstance(v, (list, tuple)):
        return (int(v[0]), int(v[-1]))
    return (int(v), int(v))


class _GeometryMode(TorchFunctionMode):
    """Propagates unit-grid geometry (an (Axis, Axis) pair or None = global) alongside every tensor, with where
    its rows and columns are (dims 2 and 3 of N x C x H x W; 1 and 2 once permuted to channels-last, as
    ConvNeXt's LayerNorm2d and its blocks' Linear layers do) and, for a global one, the op that made it so."""

    def __init__(self, images: torch.Tensor) -> None:
        super().__init__()
        self.geo: dict[int, tuple[torch.Tensor, tuple[Axis, Axis] | None, tuple[int, int]]] = {}
        self.why: dict[int, str] = {}  # id of a tensor with a global field -> the op that made it global
        self.set(images, (Axis(1, 1, 0), Axis(1, 1, 0)), (images.dim() - 2, images.dim() - 1))

    def set(self, t: torch.Tensor, g, dims: tuple[int, int] | None = None, why: str = "") -> None:
        spatial = dims if dims is not None else (t.dim() - 2, t.dim() - 1)
        self.geo[id(t)] = (t, g, spatial)  # keep t alive so its id is not reused
        if g is None:
            self.why[id(t)] = why

    def get(self, t) -> tuple[bool, tuple[Axis, Axis] | None]:
        entry = self.geo.get(id(t)) if isinstance(t, torch.Tensor) else None
        if entry is None or entry[0] is not t:
            return False, None
        return True, entry[1]

    def dims(self, t: torch.Tensor) -> tuple[int, int]:
        return self.geo[id(t)][2]

    def reason(self, t: torch.Tensor) -> str:
        """Why `t`'s field is the whole image (the first op that made a field global on its way)."""
        return self.why.get(id(t), "") if self.get(t)[0] else ""

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        out = func(*args, **kwargs)
        flat = list(args) + list(kwargs.values())
        tensors = [a for a in flat if isinstance(a, torch.Tensor)]
        tensors += [t for a in flat if isinstance(a, (list, tuple)) for t in a if isinstance(t, torch.Tensor)]
        known = [t for t in tensors if self.get(t)[0]]
        if not known:
            return out
        name = getattr(func, "__name__", "")
        if name in _NEUTRAL_NAMES:
            return out
        data = args[0] if args and isinstance(args[0], torch.Tensor) and self.get(args[0])[0] else known[0]
        g, dims, why = self._step(name, args, kwargs, data, known)
        for o in out if isinstance(out, (tuple, list)) else (out,):
            if isinstance(o, torch.Tensor):
                self.set(o, g, dims if o.dim() == data.dim() else None, why)
        return out

    def _step(self, name, args, kwargs, data, known):
        """The output's geometry, spatial dims and (global) reason for op `name` on `data`."""
        g0, dims = self.get(data)[1], self.dims(data)
        standard = dims == (data.dim() - 2, data.dim() - 1)
        inherited = next((self.reason(t) for t in known if self.get(t)[1] is None and self.reason(t)), "")
        if name in _WINDOWED_NAMES or name == "pad":
            if g0 is None or not standard:
                return None, None, inherited or name
            return (
                (self._windowed(name, args, kwargs, g0) if name != "pad" else self._padded(args, kwargs, g0)),
                dims,
                "",
            )
        if name in ("permute", "transpose", "swapaxes", "movedim") and data.dim() >= 3:
            moved = _moved(name, args, kwargs, data.dim(), dims)
            return (g0, moved, inherited) if moved is not None else (None, None, inherited or name)
        pointwise = name in _POINTWISE_NAMES or (name == "cat" and _cat_dim(args, kwargs) % data.dim() not in dims)
        if name == "layer_norm":  # normalises over its last dims: a position's own channels, or a whole map
            shape = args[1] if len(args) > 1 else kwargs.get("normalized_shape", ())
            k = len(shape) if isinstance(shape, (list, tuple, torch.Size)) else 1
            pointwise = all(d < data.dim() - k for d in dims)
        if name == "linear":  # mixes the last dim only
            pointwise = data.dim() - 1 not in dims
        if pointwise:
            g = self._hull([self.get(t)[1] for t in known])
            return g, dims, (inherited or name) if g is None else ""
        return None, None, inherited or name  # an op that may mix positions: the field becomes the whole image

    @staticmethod
    def _hull(gs):
        if any(g is None for g in gs):
            return None
        try:
            rows, cols = gs[0]
            for r, c in gs[1:]:
                rows, cols = rows.hull(r), cols.hull(c)
            return rows, cols
        except ValueError:
            return None

    @staticmethod
    def _padded(args, kwargs, g):
        pad = list(args[1] if len(args) > 1 else kwargs["pad"]) + [0, 0, 0, 0]
        left, top = int(pad[0]), int(pad[2])
        rows, cols = g
        return Axis(rows.size, rows.jump, rows.start - top * rows.jump), Axis(
            cols.size, cols.jump, cols.start - left * cols.jump
        )

    @staticmethod
    def _windowed(name, args, kwargs, g):
        if "conv" in name:
            w = args[1] if len(args) > 1 else kwargs["weight"]
            k = tuple(w.shape[-2:])
            stride = _pair(args[3] if len(args) > 3 else kwargs.get("stride", 1))
            padding = args[4] if len(args) > 4 else kwargs.get("padding", 0)
            dilation = _pair(args[5] if len(args) > 5 else kwargs.get("dilation", 1))
            if isinstance(padding, str):  # 'same' / 'valid'
                padding = tuple(0 if padding == "valid" else (d * (kk - 1)) // 2 for kk, d in zip(k, dilation))
            padding = _pair(padding)
        else:
            k = _pair(args[1] if len(args) > 1 else kwargs["kernel_size"])
            s = args[2] if len(args) > 2 else kwargs.get("stride")
            stride = _pair(s if s not in (None, [], ()) else k)
            padding = _pair(args[3] if len(args) > 3 else kwargs.get("padding", 0))
            dilation = _pair(args[4] if len(args) > 4 and "max" in name else kwargs.get("dilation", 1))
        axes = []
        for ax, kk, st, p, d in zip(g, k, stride, padding, dilation):
            keff = d * (kk - 1) + 1
            axes.append(Axis(ax.size + (keff - 1) * ax.jump, ax.jump * st, ax.start - p * ax.jump))
        return tuple(axes)


def _moved(name: str, args, kwargs, ndim: int, dims: tuple[int, int]) -> tuple[int, int] | None:
    """Where the spatial dims go under a permute / transpose (None: an op not read here)."""
    if name == "permute":
        order = args[1] if len(args) == 2 and isinstance(args[1], (list, tuple)) else args[1:] or kwargs.get("dims")
        order = [int(d) % ndim for d in order]
        return (order.index(dims[0]), order.index(dims[1])) if len(order) == ndim else None
    if name in ("transpose", "swapaxes"):
        a = int(args[1] if len(args) > 1 else kwargs["dim0"]) % ndim
        b = int(args[2] if len(args) > 2 else kwargs["dim1"]) % ndim
        swap = {a: b, b: a}
        return (swap.get(dims[0], dims[0]), swap.get(dims[1], dims[1]))
    return None


def _cat_dim(args, kwargs) -> int:
    return int(args[1] if len(args) > 1 else kwargs.get("dim", 0))


def _whole_image(g: tuple[Axis, Axis] | None, out: torch.Tensor, input_shape: tuple[int, ...]) -> bool:
    """Every unit's field covers the whole input on both axes (DenseNet's deep layers at a small input): the
    field is global, and a box bigger than the image would only show padding."""
    if g is None or out.dim() != 4:
        return False
    sizes = (int(input_shape[-2]), int(input_shape[-1]))
    return all(
        a.start + (n - 1) * a.jump <= 0 and a.start + a.size >= size for a, n, size in zip(g, out.shape[-2:], sizes)
    )


def layer_geometries(
    model: nn.Module, layers: list[str], input_shape: tuple[int, ...], reasons: dict[str, str] | None = None
) -> dict[str, tuple[Axis, Axis] | None]:
    """Grid geometry of each named layer's output for an input of `input_shape` (C, H, W): one traced
    forward in eval mode that stops after the last of `layers`. `reasons`, when given, gets for each layer whose
    field is the whole image why: the first op that mixed positions on its way (a squeeze-excitation gate's
    adaptive_avg_pool2d, a flatten, ...), or "covers the image" when its window has grown past the image."""
    x = torch.zeros(1, *input_shape, device=model_device(model), dtype=model_dtype(model))  # its own float type
    sites(model, layers, x)  # traced before the geometry mode starts, which keys its record by tensor ids
    mode = _GeometryMode(x)
    with torch.no_grad(), eval_mode(model), mode, capture(model, layers, x, copy=False) as maps:
        try:
            model(x)
        except StopForward:
            pass
    found: dict[str, tuple[Axis, Axis] | None] = {}
    for name, out in maps.items():
        known, g = mode.get(out)
        found[name] = g if known and not _whole_image(g, out, input_shape) else None
        if reasons is not None and found[name] is None:
            reasons[name] = (mode.reason(out) or "an op zfnet does not read") if g is None else "covers the image"
    missing = [n for n in layers if n not in found]
    if missing:
        raise UsageError(
            f"layer(s) {', '.join(missing)} never ran in the model's forward pass; pick layers "
            "the forward uses (`zfnet layers --model NAME` lists them)"
        )
    return found


def layer_field(model: nn.Module, layer: str, input_shape: tuple[int, ...] | None = None) -> ReceptiveField:
    """The receptive field of units of `layer` (a module name, or convN/fcN aliases) for `input_shape`
    (C x H x W; default: the model's own input size)."""

    shape = tuple(input_shape or model_input_shape(model))
    g = layer_geometries(model, [layer], shape)[layer]
    rows, cols = (None, None) if g is None else g
    return ReceptiveField(layer, rows, cols, (shape[1], shape[2]))


@dataclass(frozen=True)
class ReceptiveFieldSettings(Settings):
    """The receptive field has no knob: it is the geometry of the model up to the layer (the house's one call
    shape: every method takes `settings=`)."""

    method: ClassVar[str] = "receptive_field"


@api
def receptive_field(
    model: nn.Module, images: torch.Tensor, *, layer: str, settings: ReceptiveFieldSettings | None = None
) -> ReceptiveField:
    """The receptive field (Fig. 2's patch sizes, Sec. 2.1) of every unit of `layer` for a batch of model
    input `images` shaped like N x C x H x W (only the shape is used: the field depends on the geometry)."""
    ReceptiveFieldSettings.build(settings)
    if images.dim() != 4:
        raise UsageError(f"receptive_field takes a batch N x C x H x W (got shape {tuple(images.shape)})")
    return layer_field(model, layer, tuple(images.shape[1:]))


def crop_plan(rf: ReceptiveField, y: int, x: int) -> tuple[tuple[int, int, int, int], tuple[int, int]]:
    """The input window on which unit (y, x) of `rf.layer` computes exactly as on the whole image, and the
    unit's index inside that window.

    The window is the unit's field, clipped to the image, with its start moved back to a multiple of the
    layer's jump so that every layer's unit grid inside the window lines up with the whole image's; where the
    field reaches past a border, the window starts (or ends) at the image's border, so that padding falls in
    the same place as in the whole image.
    """
    h, w = rf.input_size
    t, l, b, r = rf.box(y, x)
    rows, cols = rf.axes
    top = max(0, math.floor(t / rows.jump) * rows.jump)
    left = max(0, math.floor(l / cols.jump) * cols.jump)
    bottom, right = min(b, h), min(r, w)
    return (top, left, bottom, right), (y - top // rows.jump, x - left // cols.jump)
