"""Incremental inference for occlusion (Sec. 4.2, Fig. 6): the idea of Krypton (Nakandala et al., SIGMOD 2019)
carried from chains of layers to any module graph.

One forward of the unoccluded image is recorded as a graph of leaf-module calls and the torch functions called
between them (`record`: a `TorchFunctionMode` and module hooks, so functional ReLUs, additions, concatenations
and views are nodes; control flow is resolved by the run itself). Every node keeps its value on that image. A
batch of occluded images then replays the graph (`Replay.run`) with each value held as a `Region` - the kept map
of the unoccluded image and, per sample, the rectangle the occluder can have changed with its new contents -
for as long as the ops allow:

  window ops (conv, max / average pooling)  the output rectangle the changed input reaches (its projective
                                            field), computed from that input rectangle widened by the halo
  pointwise ops (ReLU, batch norm in eval,  the rectangle alone
  contrast normalization, dropout, ...)
  additions, products, concatenations       the union of the inputs' rectangles
  anything else                             whole maps (`Batch`), from there on: the region falls back only
                                            where an op is not known

Approximate mode adds `tau`, which caps each window op's rectangle at that share of its map (Krypton's
projective-field threshold), and `low`: each conv and linear layer is its kept output plus the layer applied to
the change alone in bfloat16 (AMX / AVX-512 BF16 on CPUs that have them), so that the rounding error scales with
what the occluder changed, not with the activations. `estimate` walks the same rules on rectangles alone, to
price incremental inference against whole forwards from the model's geometry (`mode="auto"`).
"""

from __future__ import annotations

import math
import operator
import weakref
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.overrides import TorchFunctionMode
from torch.utils._pytree import tree_flatten, tree_map

from ..layers import BINARY_FUNCTIONS, RECTIFIER_FUNCTIONS, RECTIFIERS, Site, local_response_norm

# --- what each op does to a changed rectangle --------------------------------------------------------------

_POINTWISE_MODULES: tuple[type[nn.Module], ...] = (
    *RECTIFIERS,
    nn.Hardsigmoid,
    nn.Sigmoid,
    nn.Tanh,
    nn.Hardtanh,
    nn.Softplus,
    nn.LocalResponseNorm,  # mixes channels at one position only
    nn.Dropout,
    nn.Dropout2d,
    nn.Identity,
)

T = torch.Tensor
CL = torch.channels_last  # the replay's layout: whole rows of channels copy fast and oneDNN's convs prefer it
LOW = torch.bfloat16  # approximate mode's precision for the change a conv or linear layer sees
_POINTWISE_FUNCTIONS = {
    F.relu,
    F.relu_,
    torch.relu,
    torch.relu_,
    T.relu,
    T.relu_,
    F.relu6,
    F.leaky_relu,
    F.leaky_relu_,
    F.elu,
    F.selu,
    F.celu,
    F.gelu,
    F.silu,
    F.mish,
    F.hardswish,
    F.hardsigmoid,
    F.hardtanh,
    F.softplus,
    torch.sigmoid,
    T.sigmoid,
    F.sigmoid,
    torch.tanh,
    T.tanh,
    F.dropout,
    F.dropout2d,
    F.local_response_norm,
    torch.clamp,
    T.clamp,
    T.clamp_,
    torch.clamp_min,
    T.clamp_min,
    T.clamp_min_,
    T.contiguous,
    T.clone,
    T.detach,
}
_CAT_FUNCTIONS = {torch.cat, torch.concat, torch.concatenate}
# ops that split a value into parts along a channel dimension (issue 38: ShuffleNet's chunk, split, unbind)
_PARTS_FUNCTIONS = {torch.chunk, T.chunk, torch.split, T.split, torch.tensor_split, T.tensor_split, torch.unbind,
                    T.unbind}  # fmt: skip
# ops that move channels only, keeping the batch first and the two spatial dimensions last (channel shuffle)
_CHANNEL_FUNCTIONS = {T.view, T.reshape, torch.reshape, T.transpose, torch.transpose, T.permute, torch.permute,
                      T.contiguous, T.clone, T.flatten, torch.flatten, T.unflatten, torch.unflatten}  # fmt: skip
_VIEW_FUNCTIONS = {T.view, T.reshape, torch.reshape}
# queries about a tensor that return no tensor (shapes, dtypes) are not recorded; these are not either
_NOT_RECORDED = {T.__format__, T.__repr__, T.__bool__, T.__len__, T.__iter__, T.__hash__, T.item, T.tolist}


_low_copies: dict[int, tuple[int, torch.Tensor]] = {}


def low_copy(w: torch.Tensor) -> torch.Tensor:
    """`w` in LOW precision, cast once per tensor and version (an in-place update makes a new one); the copy
    goes when the tensor does."""
    key = id(w)
    hit = _low_copies.get(key)
    if hit is None or hit[0] != w._version:
        if hit is None:
            weakref.finalize(w, _low_copies.pop, key, None)
        hit = (w._version, w.detach().to(LOW))
        _low_copies[key] = hit
    return hit[1]


def _pair(v) -> tuple[int, int]:
    return (v, v) if isinstance(v, int) else (int(v[0]), int(v[1]))


@dataclass(frozen=True)
class Window:
    """A sliding-window op's geometry; `op` runs it without padding on an already padded slab."""

    kernel: tuple[int, int]
    stride: tuple[int, int]
    padding: tuple[int, int]
    dilation: tuple[int, int]
    pad_value: float
    op: Callable[[torch.Tensor], torch.Tensor]
    macs_per_output: int  # multiply-adds per output element (per output channel for convs: c_in / groups * k * k)
    change: Callable[[torch.Tensor], torch.Tensor] | None = None  # a conv on a LOW-precision change, no bias


def window_of_module(m: nn.Module) -> Window | None:
    """The geometry of convs (zero padding) and max / average pooling modules; None for anything else."""
    if isinstance(m, nn.Conv2d) and m.padding_mode == "zeros" and not isinstance(m.padding, str):
        return _conv_window(m.weight, m.bias, m.stride, m.padding, m.dilation, m.groups)
    if isinstance(m, nn.MaxPool2d) and not m.return_indices:
        return _max_window(m.kernel_size, m.stride, m.padding, m.dilation)
    if isinstance(m, nn.AvgPool2d):
        return _avg_window(m.kernel_size, m.stride, m.padding, m.ceil_mode, m.count_include_pad, m.divisor_override)
    return None


def _conv_window(weight, bias, stride, padding, dilation, groups) -> Window | None:
    if isinstance(padding, str):
        return None
    s, d = _pair(stride), _pair(dilation)
    k = (int(weight.shape[-2]), int(weight.shape[-1]))

    def op(x):
        return F.conv2d(x, weight, bias, s, 0, d, groups)

    def change(x):  # x: in LOW precision; the result stays in it
        return F.conv2d(x, low_copy(weight), None, s, 0, d, groups)

    return Window(k, s, _pair(padding), d, 0.0, op, int(weight.shape[1]) * k[0] * k[1], change)


def _max_window(kernel, stride, padding, dilation) -> Window:
    k, d = _pair(kernel), _pair(dilation)
    s = _pair(stride or kernel)

    def op(x):
        return F.max_pool2d(x, k, s, 0, d)

    return Window(k, s, _pair(padding), d, float("-inf"), op, k[0] * k[1])


def _avg_window(kernel, stride, padding, ceil_mode, count_include_pad, divisor_override) -> Window | None:
    if ceil_mode or not count_include_pad or divisor_override is not None:
        return None  # the divisor would depend on where the window sits
    k, s = _pair(kernel), _pair(stride or kernel)

    def op(x):
        return F.avg_pool2d(x, k, s, 0)

    return Window(k, s, _pair(padding), (1, 1), 0.0, op, k[0] * k[1])


def _bind(args: tuple, kwargs: dict, names: tuple[str, ...], defaults: tuple) -> list:
    """Positional and keyword arguments of a functional op as one list in signature order."""
    out = list(args) + [None] * (len(names) - len(args))
    for i, n in enumerate(names):
        if n in kwargs:
            out[i] = kwargs[n]
        elif i >= len(args):
            out[i] = defaults[i]
    return out


def window_of_function(func, args: tuple, kwargs: dict) -> Window | None:
    """The geometry of functional convs and poolings (F.conv2d, F.max_pool2d, F.avg_pool2d)."""
    if func is F.conv2d or func is torch.conv2d:
        names = ("input", "weight", "bias", "stride", "padding", "dilation", "groups")
        _, w, b, s, p, d, g = _bind(args, kwargs, names, (None, None, None, 1, 0, 1, 1))
        fixed = isinstance(w, torch.Tensor) and not isinstance(b, Ref)  # the weights are no node's value
        return _conv_window(w, b, s, p, d, g) if fixed else None
    if getattr(func, "__name__", "") in ("max_pool2d", "_max_pool2d"):
        _, k, s, p, d, ceil, ind = _bind(
            args, kwargs, ("input", "kernel_size", "stride", "padding", "dilation", "ceil_mode", "return_indices"),
            (None, None, None, 0, 1, False, False),
        )  # fmt: skip
        return None if ind else _max_window(k, s, p, d)
    if func is F.avg_pool2d:
        _, k, s, p, ceil, cip, div = _bind(
            args, kwargs,
            ("input", "kernel_size", "stride", "padding", "ceil_mode", "count_include_pad", "divisor_override"),
            (None, None, None, 0, False, True, None),
        )  # fmt: skip
        return _avg_window(k, s, p, ceil, cip, div)
    return None


def pointwise_module(m: nn.Module, out_hw: tuple[int, ...], in_hw: tuple[int, ...]) -> bool:
    """Modules that act on each position alone (in eval mode)."""
    if isinstance(m, _POINTWISE_MODULES):
        return True
    if isinstance(m, nn.BatchNorm2d):  # running statistics: a per-channel affine map; batch statistics are global
        return m.running_mean is not None and not m.training
    return isinstance(m, (nn.AdaptiveAvgPool2d, nn.AdaptiveMaxPool2d)) and out_hw == in_hw


# --- the recorded graph ----------------------------------------------------------------------------------


@dataclass
class Ref:
    """An argument that is the value of an earlier node."""

    node: int


@dataclass
class Node:
    """One recorded call: a leaf module or a torch function, its arguments (earlier values as `Ref`s) and its
    value on the unoccluded image (a copy taken when it was made, so later in-place ops do not change it)."""

    target: Any  # nn.Module or a function
    args: tuple
    kwargs: dict
    value: Any
    is_module: bool
    varies: bool = False  # depends on the input image


class _Recorder(TorchFunctionMode):
    """Records the torch functions called outside leaf modules, in order, as graph nodes."""

    def __init__(self, graph: Graph) -> None:
        super().__init__()
        self.graph = graph

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        out = func(*args, **kwargs)
        g = self.graph
        if g.depth == 0 and func not in _NOT_RECORDED:
            g.add(func, args, kwargs, out, is_module=False)
        if func in RECTIFIER_FUNCTIONS:  # counted as `sites` counts them: the feature may be one of these calls
            if g.rectifier == 0 and g.feature < 0 and isinstance(out, torch.Tensor) and id(out) in g.by_id:
                g.feature = g.by_id[id(out)]
            g.rectifier -= 1
        return out


class Graph:
    """A model's forward on one input, as recorded by `record`."""

    def __init__(self) -> None:
        self.nodes: list[Node] = [Node(None, (), {}, None, False, True)]  # node 0: the input
        self.by_id: dict[int, int] = {}  # id of a live tensor -> the node whose value it is
        self.keep: list[Any] = []  # the recorded tensors, alive while recording (so their ids are not reused)
        self.depth = 0  # > 0 inside a leaf module
        self.output = -1
        self.feature = -1  # the node holding the layer's feature maps
        self.rectifier = -1  # rectifier function calls to go until the feature maps' (when a function's)

    def ref(self, a):
        if isinstance(a, torch.Tensor) and id(a) in self.by_id:
            return Ref(self.by_id[id(a)])
        return a

    def add(self, target, args, kwargs, out, is_module: bool) -> None:
        flat, _ = tree_flatten(out)
        if not any(isinstance(t, torch.Tensor) for t in flat):
            return  # shapes, flags: the run resolved the control flow they steer
        args, kwargs = tree_map(self.ref, args), tree_map(self.ref, kwargs)
        used = [a.node for a in tree_flatten((args, kwargs))[0] if isinstance(a, Ref)]
        varies = any(self.nodes[i].varies for i in used)
        self.depth += 1  # the copies below are the recorder's own, not the model's
        value = tree_map(lambda t: t.detach().clone() if isinstance(t, torch.Tensor) else t, out)
        self.depth -= 1
        self.nodes.append(Node(target, args, kwargs, value, is_module, varies))
        self.keep.append(out)
        k = len(self.nodes) - 1
        if isinstance(out, torch.Tensor):
            self.by_id[id(out)] = k
        else:  # a tuple of tensors: each element is a getitem of this node
            for i, t in enumerate(out if isinstance(out, (tuple, list)) else []):
                if isinstance(t, torch.Tensor):
                    self.nodes.append(Node(operator.getitem, (Ref(k), i), {}, value[i], False, varies))
                    self.by_id[id(t)] = len(self.nodes) - 1
                    self.keep.append(t)


def record(model: nn.Module, x: torch.Tensor, feature: Site) -> tuple[Graph, torch.Tensor]:
    """Run `model` on `x` (1 x C x H x W, no grad, eval mode set by the caller) and record its graph; the graph's
    `feature` is the tensor the layer's feature maps are read from (`zfnet.layers.sites`). Hooks and the mode
    are gone on return."""
    g = Graph()
    g.nodes[0].value = x
    g.by_id[id(x)] = 0
    g.rectifier = feature.ordinal if feature.module is None else -1
    leaves = [m for m in model.modules() if not list(m.children())]
    holder = dict(model.named_modules())[feature.module] if feature.module is not None else None
    calls = [0]

    def pre(m, args, kwargs):
        g.depth += 1

    def post(m, args, kwargs, out):
        g.depth -= 1
        if g.depth == 0:
            g.add(m, args, kwargs, out, is_module=True)

    def on_feature(m, args, out):
        k, calls[0] = calls[0], calls[0] + 1
        if k == feature.call and g.feature < 0 and isinstance(out, torch.Tensor) and id(out) in g.by_id:
            g.feature = g.by_id[id(out)]

    handles = [m.register_forward_pre_hook(pre, with_kwargs=True) for m in leaves]
    handles += [m.register_forward_hook(post, with_kwargs=True) for m in leaves]
    if holder is not None:
        handles.append(holder.register_forward_hook(on_feature))  # after `post`: the output is a node by then
    try:
        with _Recorder(g):
            out = model(x)
    finally:
        for h in handles:
            h.remove()
    if isinstance(out, torch.Tensor) and id(out) in g.by_id:
        g.output = g.by_id[id(out)]
    g.by_id.clear()
    g.keep.clear()
    return g, out


# --- values during a replay --------------------------------------------------------------------------------


@dataclass
class Region:
    """B samples of a 4-D value that equals `base` (1 x C x H x W) except in one rectangle per sample: rows
    top[b] .. top[b] + h - 1, columns left[b] .. + w - 1 (h, w: `patch`'s last two sizes, shared by the batch),
    where it is `patch[b]`."""

    base: torch.Tensor
    top: list[int]
    left: list[int]
    patch: torch.Tensor

    @property
    def size(self) -> tuple[int, int]:
        return int(self.patch.shape[-2]), int(self.patch.shape[-1])

    def full(self) -> bool:
        return self.size == tuple(self.base.shape[-2:])

    def crop(self, top: list[int], left: list[int], h: int, w: int) -> torch.Tensor:
        """Each sample's h x w window at (top[b], left[b]): the base there with the sample's patch pasted in."""
        if (h, w) == self.size and top == self.top and left == self.left:
            return self.patch
        if self.base.dim() != 4:  # channels in several dimensions (a channel shuffle's view): one, while cropping
            mid = self.base.shape[1:-2]
            flat = Region(self.base.flatten(1, -3), self.top, self.left, self.patch.flatten(1, -3))
            return flat.crop(top, left, h, w).unflatten(1, mid)
        out = gather(self.base, top, left, h, w)
        _paste(out, self.patch, [a - t for a, t in zip(self.top, top)], [a - l for a, l in zip(self.left, left)])
        return out

    def materialize(self) -> torch.Tensor:
        if self.full():
            return self.patch
        return self.crop([0] * len(self.top), [0] * len(self.top), *self.base.shape[-2:])


@dataclass
class Batch:
    """B samples of a value that may differ anywhere (its leading dimension is the batch)."""

    value: Any


def _grid(top: list[int], left: list[int], h: int, w: int, device) -> tuple[torch.Tensor, torch.Tensor]:
    """B x h x 1 row and B x 1 x w column indices of each sample's rectangle."""
    rows = torch.tensor(top, device=device)[:, None, None] + torch.arange(h, device=device)[None, :, None]
    cols = torch.tensor(left, device=device)[:, None, None] + torch.arange(w, device=device)[None, None, :]
    return rows, cols


def gather(base: torch.Tensor, top: list[int], left: list[int], h: int, w: int) -> torch.Tensor:
    """B x C x h x w (channels last): the windows of base (1 x C x H x W) at (top[b], left[b]), in one indexing
    op over the channels-last rows (each element a run of C)."""
    rows, cols = _grid(top, left, h, w, base.device)
    return base[0].permute(1, 2, 0)[rows, cols].permute(0, 3, 1, 2)


def _paste(dest: torch.Tensor, patch: torch.Tensor, top: list[int], left: list[int]) -> None:
    """dest[b, :, top[b] + u, left[b] + v] = patch[b, :, u, v] wherever that lies inside dest (in place; cast to
    dest's type)."""
    b, _, h, w = patch.shape
    rows, cols = _grid(top, left, h, w, dest.device)
    ok = (rows >= 0) & (rows < dest.shape[-2]) & (cols >= 0) & (cols < dest.shape[-1])  # B x h x w
    src = patch.permute(0, 2, 3, 1)
    if bool(ok.all()):
        dest.permute(0, 2, 3, 1)[torch.arange(b, device=dest.device)[:, None, None], rows, cols] = src.to(dest.dtype)
        return
    bi = torch.arange(b, device=dest.device)[:, None, None].expand(b, h, w)[ok]
    ui = torch.arange(h, device=dest.device)[None, :, None].expand(b, h, w)[ok]
    vi = torch.arange(w, device=dest.device)[None, None, :].expand(b, h, w)[ok]
    dest.permute(0, 2, 3, 1)[bi, rows.expand(b, h, w)[ok], cols.expand(b, h, w)[ok]] = src[bi, ui, vi].to(dest.dtype)


# --- rectangles: where each op's output can differ from the unoccluded one ---------------------------------


@dataclass(frozen=True)
class Rects:
    """One rectangle per sample (one size for the batch): rows top[b] .. top[b] + h - 1, columns likewise."""

    top: list[int]
    left: list[int]
    h: int
    w: int


def _out_range(a: int, n: int, k: int, s: int, p: int, d: int, size_out: int) -> tuple[int, int]:
    """Output indices [lo, hi] (inclusive, clipped) a window op changes when its input rows [a, a + n) change."""
    ke = d * (k - 1) + 1
    lo = max(0, -((ke - 1 - a - p) // s))  # ceil((a + p - ke + 1) / s)
    hi = min(size_out - 1, (a + n - 1 + p) // s)
    return lo, max(hi, lo)


def _fit(lo: list[int], hi: list[int], size: int, cap: int | None) -> tuple[list[int], int]:
    """One extent for the batch covering every [lo, hi], kept inside the map (and, capped, centred on each)."""
    n = max(h - l for l, h in zip(lo, hi)) + 1
    if cap is not None and n > cap:
        lo, n = [max(0, (l + h) // 2 - cap // 2) for l, h in zip(lo, hi)], cap
    n = min(n, size)
    return [min(l, size - n) for l in lo], n


def window_rects(win: Window, r: Rects, h_out: int, w_out: int, tau: float | None) -> Rects:
    """The output rectangles a window op recomputes for changed input rectangles (its projective field); with
    `tau`, at most that share of each side of the map (Krypton's threshold)."""
    (kh, kw), (sh, sw), (ph, pw), (dh, dw) = win.kernel, win.stride, win.padding, win.dilation
    rows = [_out_range(t, r.h, kh, sh, ph, dh, h_out) for t in r.top]
    cols = [_out_range(l, r.w, kw, sw, pw, dw, w_out) for l in r.left]
    cap_r = max(1, math.ceil(tau * h_out)) if tau is not None else None
    cap_c = max(1, math.ceil(tau * w_out)) if tau is not None else None
    r0, n_r = _fit([a for a, _ in rows], [b for _, b in rows], h_out, cap_r)
    c0, n_c = _fit([a for a, _ in cols], [b for _, b in cols], w_out, cap_c)
    return Rects(r0, c0, n_r, n_c)


def union_rects(rs: list[Rects], h_map: int, w_map: int) -> Rects:
    """Per sample, the smallest rectangle (one size for the batch) holding each input's rectangle."""
    n = len(rs[0].top)
    tops = [min(r.top[b] for r in rs) for b in range(n)]
    lefts = [min(r.left[b] for r in rs) for b in range(n)]
    top, h = _fit(tops, [max(r.top[b] + r.h for r in rs) - 1 for b in range(n)], h_map, None)
    left, w = _fit(lefts, [max(r.left[b] + r.w for r in rs) - 1 for b in range(n)], w_map, None)
    return Rects(top, left, h, w)


def _rects(reg: Region) -> Rects:
    return Rects(reg.top, reg.left, *reg.size)


def window_region(win: Window, reg: Region, base_out: torch.Tensor, padded: torch.Tensor, tau, low: bool) -> Region:
    """Recompute a window op over the rectangle its changed input reaches; `padded`: the input's base, padded.
    With `low`, a conv is its kept output plus the conv of the change alone (no bias) in LOW precision: the
    rounding error scales with the change, not with the activations."""
    h_out, w_out = base_out.shape[-2:]
    out = window_rects(win, _rects(reg), h_out, w_out, tau)
    (kh, kw), (sh, sw), (ph, pw), (dh, dw) = win.kernel, win.stride, win.padding, win.dilation
    everywhere = reg.full() and (out.h, out.w) == (h_out, w_out)  # changed everywhere: the padded patch is the slab
    hs, ws = (out.h - 1) * sh + dh * (kh - 1) + 1, (out.w - 1) * sw + dw * (kw - 1) + 1
    tops, lefts = [r * sh for r in out.top], [c * sw for c in out.left]  # slab origins, padded coordinates
    paste_at = ([a + ph - t for a, t in zip(reg.top, tops)], [a + pw - l for a, l in zip(reg.left, lefts)])
    if low and win.change is not None:
        if everywhere:
            change = win.change(pad_like(win, (reg.patch - reg.base).to(LOW), base_out, value=0.0))
            return Region(base_out, out.top, out.left, base_out + change)
        # the change (patch - base) in a zero slab, cast to LOW as it is pasted; then kept + conv(change)
        h, w = reg.size
        shape = (len(tops), reg.patch.shape[1], hs, ws)
        slabs = torch.empty(shape, dtype=LOW, device=reg.patch.device, memory_format=CL).zero_()
        _paste(slabs, reg.patch - gather(reg.base, reg.top, reg.left, h, w), *paste_at)
        kept = gather(base_out, out.top, out.left, out.h, out.w).add_(win.change(slabs))
        return Region(base_out, out.top, out.left, kept)
    if everywhere:
        slabs = pad_like(win, reg.patch, base_out)
    else:
        slabs = gather(padded, tops, lefts, hs, ws)
        # the changed patch pasted into its slab (patch rows or columns past the slab change no output here)
        _paste(slabs, reg.patch, *paste_at)
    return Region(base_out, out.top, out.left, win.op(slabs))


def pad_like(win: Window, x: torch.Tensor, base_out: torch.Tensor, value: float | None = None) -> torch.Tensor:
    """x padded as the op pads its input, plus what a ceil-mode pooling reads past the edge."""
    (kh, kw), (sh, sw), (ph, pw), (dh, dw) = win.kernel, win.stride, win.padding, win.dilation
    h_in, w_in = x.shape[-2:]
    h_out, w_out = base_out.shape[-2:]
    pad_b = max(0, (h_out - 1) * sh + dh * (kh - 1) + 1 - ph - h_in)
    pad_r = max(0, (w_out - 1) * sw + dw * (kw - 1) + 1 - pw - w_in)
    if not (ph or pw or pad_b or pad_r):
        return x
    return F.pad(x, (pw, pad_r, ph, pad_b), value=win.pad_value if value is None else value)


def _dim_arg(n: Node, position: int, name: str, default: Any) -> Any:
    """A recorded call's argument by position (after the tensor) or keyword."""
    if len(n.args) > position:
        return n.args[position]
    return n.kwargs.get(name, default)


def _channel_op(n: Node, nodes: list[Node]) -> str:
    """ "channel" for an op that moves channels only (a view regrouping them, a transpose or permutation among
    them: the channel shuffle), "parts" for one that splits the channels into parts (chunk, split, unbind),
    "pick" for a part taken from those; else "". The batch stays first and the two spatial dimensions last, so
    the op acts on each sample's patch as on the whole map (issue 38)."""
    first = n.args[0] if n.args else None
    if n.target is operator.getitem:
        parent = nodes[first.node] if isinstance(first, Ref) else None
        ok = parent is not None and parent.varies and isinstance(parent.value, (tuple, list))
        return "pick" if ok and isinstance(n.args[1], int) and isinstance(n.value, torch.Tensor) else ""
    if not isinstance(first, Ref) or not nodes[first.node].varies:
        return ""
    x = nodes[first.node].value
    varying = [i for i in _refs(n) if nodes[i].varies]
    if not isinstance(x, torch.Tensor) or x.dim() < 4 or len(varying) != 1 or x.shape[0] != 1:
        return ""
    nd, hw = x.dim(), tuple(x.shape[-2:])
    middle = range(1, nd - 2)

    def channel_dim(d: Any) -> bool:
        return isinstance(d, int) and -nd <= d < nd and d % nd in middle

    if n.target in _PARTS_FUNCTIONS:
        parts = n.value if isinstance(n.value, (tuple, list)) else ()
        unbind = n.target in (torch.unbind, T.unbind)
        ok = channel_dim(_dim_arg(n, 1 if unbind else 2, "dim", 0)) and len(parts) > 0
        ok = ok and all(isinstance(p, torch.Tensor) and p.dim() >= 4 and tuple(p.shape[-2:]) == hw for p in parts)
        return "parts" if ok else ""
    out = n.value
    if n.target not in _CHANNEL_FUNCTIONS or not isinstance(out, torch.Tensor) or out.dim() < 4:
        return ""
    if out.shape[0] != 1 or tuple(out.shape[-2:]) != hw or (nd == 4 and out.dim() == 4 and out.shape == x.shape):
        return ""  # a 4-D value that keeps its shape: the pointwise rules already follow it
    t = n.target
    if t in (T.transpose, torch.transpose):
        ok = channel_dim(_dim_arg(n, 1, "dim0", None)) and channel_dim(_dim_arg(n, 2, "dim1", None))
        return "channel" if ok else ""
    if t in (T.permute, torch.permute):
        given = n.args[1:] or (n.kwargs.get("dims"),)
        dims = given[0] if len(given) == 1 and isinstance(given[0], (tuple, list)) else given
        dims = [d % nd for d in dims] if all(isinstance(d, int) for d in dims) else []
        return "channel" if len(dims) == nd and dims[0] == 0 and dims[-2:] == [nd - 2, nd - 1] else ""
    if t in (T.flatten, torch.flatten):
        start, end = _dim_arg(n, 1, "start_dim", 0), _dim_arg(n, 2, "end_dim", -1)
        return "channel" if channel_dim(start) and channel_dim(end) else ""
    if t in (T.unflatten, torch.unflatten):
        return "channel" if channel_dim(_dim_arg(n, 1, "dim", None)) else ""
    return "channel"  # view / reshape (the batch and spatial sizes checked above), contiguous, clone


def _spatially_constant(a: Any) -> bool:
    """A fixed operand that broadcasts over the map without spatial extent (a number, a per-channel scale)."""
    if not isinstance(a, torch.Tensor):
        return True
    return a.dim() < 2 or tuple(a.shape[-2:]) == (1, 1)


# --- the replay --------------------------------------------------------------------------------------------


def _name(target) -> str:
    if isinstance(target, nn.Module):
        return type(target).__name__
    return getattr(target, "__qualname__", None) or getattr(target, "__name__", None) or repr(target)


def _refs(n: Node) -> list[int]:
    return [a.node for a in tree_flatten((n.args, n.kwargs))[0] if isinstance(a, Ref)]


@dataclass
class Replay:
    """A recorded graph ready to run batches of occluded inputs. Each node that depends on the input has a
    kind, fixed from the recorded values: "window" (with its `Window`), "pointwise", "union" (additions,
    products, concatenations over the union of their inputs' rectangles) or "whole" (run on whole maps)."""

    graph: Graph
    live: list[int] = field(default_factory=list)  # the nodes the output and the feature depend on, in order
    kinds: dict[int, str] = field(default_factory=dict)
    windows: dict[int, Window] = field(default_factory=dict)
    varying: dict[int, list[int]] = field(default_factory=dict)  # each node's inputs that depend on the image
    fixed: dict[int, tuple[tuple, dict]] = field(default_factory=dict)  # a pointwise op's other arguments
    padded: dict[int, torch.Tensor] = field(default_factory=dict)  # each window op's input base, padded

    @classmethod
    def of(cls, graph: Graph, feature_only: bool = False) -> Replay:
        """The replay of `graph` up to its output and its feature node (`feature_only`: the feature alone)."""
        need = {graph.feature} if feature_only else {graph.output, graph.feature}
        for k in range(len(graph.nodes) - 1, 0, -1):
            if k in need:
                need |= set(_refs(graph.nodes[k]))
        r = cls(graph, sorted(k for k in need if k > 0 and graph.nodes[k].varies))
        for n in graph.nodes:
            if isinstance(n.value, torch.Tensor) and n.value.dim() == 4:
                n.value = n.value.contiguous(memory_format=CL)
        for k in r.live:
            n = graph.nodes[k]
            r.kinds[k] = r._kind(k, n)
            r.varying[k] = [i for i in _refs(n) if graph.nodes[i].varies]
            if r.kinds[k] == "pointwise":  # its first argument is the only one that varies
                r.fixed[k] = r._args(Node(n.target, n.args[1:], n.kwargs, None, False), {})
        return r

    def _kind(self, k: int, n: Node) -> str:
        nodes = self.graph.nodes
        out = n.value
        moved = _channel_op(n, nodes)
        if moved:
            return moved
        if not isinstance(out, torch.Tensor) or out.dim() != 4:
            return "whole"
        varying = [i for i in _refs(n) if nodes[i].varies]
        if not all(isinstance(nodes[i].value, torch.Tensor) and nodes[i].value.dim() == 4 for i in varying):
            return "whole"
        first = n.args[0] if n.args else None
        first_varies = isinstance(first, Ref) and nodes[first.node].varies
        fixed = [a for a in tree_flatten((n.args[1:], n.kwargs))[0] if not isinstance(a, Ref)]
        hw = tuple(out.shape[-2:])
        win = window_of_module(n.target) if n.is_module else window_of_function(n.target, n.args, n.kwargs)
        if win is not None and first_varies and len(varying) == 1:
            self.windows[k] = win
            return "window"
        same_hw = isinstance(first, Ref) and first_varies and tuple(nodes[first.node].value.shape[-2:]) == hw
        if n.is_module:
            ok = same_hw and len(varying) == 1 and pointwise_module(n.target, hw, hw)
            return "pointwise" if ok else "whole"
        if n.target in _POINTWISE_FUNCTIONS and same_hw and len(varying) == 1:
            training = n.kwargs.get("training") or (len(n.args) > 2 and n.args[2] is True)
            if all(_spatially_constant(a) for a in fixed) and not (n.target in (F.dropout, F.dropout2d) and training):
                return "pointwise"
            return "whole"
        if n.target in BINARY_FUNCTIONS:
            others = [
                a for a in tree_flatten((n.args, n.kwargs))[0] if not isinstance(a, Ref) or not nodes[a.node].varies
            ]
            others = [nodes[a.node].value if isinstance(a, Ref) else a for a in others]
            if all(tuple(nodes[i].value.shape[-2:]) == hw for i in varying) and all(map(_spatially_constant, others)):
                return "union"
            return "whole"
        if n.target in _CAT_FUNCTIONS:
            parts = n.args[0] if n.args else n.kwargs.get("tensors")
            dim = n.args[1] if len(n.args) > 1 else n.kwargs.get("dim", 0)
            if dim in (1, -3) and all(isinstance(p, Ref) and nodes[p.node].varies for p in parts or ()):
                return "union"
        return "whole"

    def run(self, top: list[int], left: list[int], patch: torch.Tensor, tau: float | None = None, low: bool = False):
        """Replay on B occluded inputs: the input equals the recorded one but for `patch[b]` at (top[b], left[b]).
        Returns (the output's values, the feature node's value) - each a Region or a Batch. `tau` and `low`
        (convs and linear layers on the change, in LOW precision) are approximate mode's."""
        env = self._replayed(list(top), list(left), patch, tau, low)
        return env.get(self.graph.output), env[self.graph.feature]

    def _replayed(self, top: list[int], left: list[int], patch: torch.Tensor, tau, low: bool) -> dict[int, Any]:
        """Every live node's value on the inputs `patch` makes (a Region, a Batch, or a tuple of them)."""
        g = self.graph
        env: dict[int, Any] = {0: Region(g.nodes[0].value, top, left, patch.contiguous(memory_format=CL))}
        for k in self.live:
            env[k] = self._step(k, g.nodes[k], env, tau, low)
        return env

    def advance(self, top: int, left: int, patch: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """One input (batch 1) that equals the recorded one but for `patch` at (top, left): replayed exactly, and
        every live node's value becomes its value on that input, so that the next change replays from there (paint
        to occlude, issue 38). Returns the output's and the feature node's new values."""
        g = self.graph
        env = self._replayed([top], [left], patch, None, False)
        for k, v in env.items():  # a changed rectangle is pasted into the kept map in place (not into the caller's
            # input, node 0): no full copies
            n = g.nodes[k]
            if k > 0 and isinstance(v, Region) and v.base is n.value and v.base.dim() == 4 and not v.full():
                _paste(n.value, v.patch, v.top, v.left)
                continue
            value = tree_map(_whole, v)
            n.value = (
                value.contiguous(memory_format=CL) if isinstance(value, torch.Tensor) and value.dim() == 4 else value
            )
        for k, padded in list(self.padded.items()):  # each window op's padded input, moved along likewise
            i = self.varying[k][0]
            v, (ph, pw) = env.get(i), self.windows[k].padding
            if padded is g.nodes[i].value:  # no padding: the input itself, already moved along
                continue
            if isinstance(v, Region) and padded.dim() == 4 and v.base.dim() == 4 and not v.full():
                _paste(padded, v.patch, [t + ph for t in v.top], [x + pw for x in v.left])
            else:
                del self.padded[k]
        return g.nodes[g.output].value, g.nodes[g.feature].value

    def _step(self, k: int, n: Node, env: dict[int, Any], tau, low: bool):
        kind = self.kinds[k]
        variable = [env[i] for i in self.varying[k]]
        if kind == "pick" and isinstance(variable[0], (tuple, list)) and isinstance(variable[0][n.args[1]], Region):
            return variable[0][n.args[1]]
        if kind != "whole" and all(isinstance(a, Region) for a in variable):
            first = variable[0]
            if kind in ("channel", "parts"):  # the same op on each sample's patch: its spatial dimensions stay last
                if n.target in (T.view, T.reshape, torch.reshape):  # the recorded shape, this batch's and patch's
                    # sizes (reshape: a patch cut from a channels-last map may need the copy a view would refuse)
                    made = first.patch.reshape(first.patch.shape[0], *n.value.shape[1:-2], *first.size)
                else:
                    rest, kw = self._args(Node(n.target, n.args[1:], n.kwargs, None, False), {})
                    made = n.target(first.patch, *rest, **kw)
                if kind == "channel":
                    return Region(n.value, first.top, first.left, made)
                return tuple(Region(v, first.top, first.left, p) for v, p in zip(n.value, made))
            if kind == "window":
                if k not in self.padded:
                    self.padded[k] = pad_like(self.windows[k], first.base, n.value)
                return window_region(self.windows[k], first, n.value, self.padded[k], tau, low)
            if kind == "pointwise":
                t = n.target
                if isinstance(t, nn.LocalResponseNorm):
                    patch = local_response_norm(first.patch, t.size, t.alpha, t.beta, t.k)
                elif isinstance(t, (nn.AdaptiveAvgPool2d, nn.AdaptiveMaxPool2d)):
                    patch = first.patch  # output size = input size: the identity (on a patch it would resample)
                else:
                    rest, kw = self.fixed[k]
                    patch = t(first.patch, *rest, **kw)
                return Region(n.value, first.top, first.left, patch)
            # union: each input cropped to the union of their rectangles, then the op
            u = union_rects([_rects(a) for a in variable], int(n.value.shape[-2]), int(n.value.shape[-1]))
            crops = {id(a): a.crop(u.top, u.left, u.h, u.w) for a in variable}
            args, kwargs = self._args(n, env)
            args, kwargs = tree_map(lambda a: crops[id(a)] if isinstance(a, Region) else a, (args, kwargs))
            return Region(n.value, u.top, u.left, n.target(*args, **kwargs))
        args, kwargs = self._args(n, env)
        batch = next(len(a.top) if isinstance(a, Region) else _batch_of(a.value) for a in variable)
        args, kwargs = tree_map(_whole, (args, kwargs))
        if low and isinstance(n.target, nn.Linear) and len(args) == 1 and not kwargs and isinstance(n.args[0], Ref):
            # the kept output plus the layer on the change alone (no bias), in LOW precision
            change = (args[0] - self.graph.nodes[n.args[0].node].value).to(LOW)
            return Batch(n.value + F.linear(change, low_copy(n.target.weight)))  # LOW promoted as it is added
        if n.target in _VIEW_FUNCTIONS:
            args = _batch_shape(args, batch)
        return tree_map(lambda t: Batch(t) if isinstance(t, torch.Tensor) else t, n.target(*args, **kwargs))

    def _args(self, n: Node, env: dict[int, Any]) -> tuple[tuple, dict]:
        """The node's arguments with each earlier value filled in (this batch's, or the kept one)."""
        nodes = self.graph.nodes

        def val(a):
            if isinstance(a, Ref):
                return env[a.node] if a.node in env else nodes[a.node].value
            return a

        if any(isinstance(a, (list, tuple, dict)) for a in (*n.args, *n.kwargs.values())):
            return tree_map(val, n.args), tree_map(val, n.kwargs)
        return tuple(val(a) for a in n.args), {key: val(a) for key, a in n.kwargs.items()}

    def whole_ops(self) -> list[str]:
        """The ops where incremental inference stops: they run on whole maps although a region comes in."""
        nodes, region, stops = self.graph.nodes, {0: True}, []
        for k in self.live:
            ins = [region.get(i, False) for i in _refs(nodes[k]) if nodes[i].varies]
            region[k] = self.kinds[k] != "whole" and all(ins)
            if not region[k] and any(ins):
                stops.append(_name(nodes[k].target))
        return stops


def _whole(a):
    if isinstance(a, Region):
        return a.materialize()
    return a.value if isinstance(a, Batch) else a


def _batch_of(t) -> int:
    flat = [x for x in tree_flatten(t)[0] if isinstance(x, torch.Tensor)]
    return int(flat[0].shape[0]) if flat else 1


def _batch_shape(args: tuple, batch: int) -> tuple:
    """view / reshape: the recorded shape's leading 1 (the recorded batch) becomes this batch's size."""
    shape = args[1] if len(args) == 2 and isinstance(args[1], (tuple, list, torch.Size)) else args[1:]
    if shape and shape[0] == 1:
        shape = (batch, *shape[1:])
    return (args[0], tuple(shape))


# --- pricing a replay from the model's geometry (mode="auto") ----------------------------------------------


@dataclass(frozen=True)
class CostModel:
    """Seconds per unit of work, measured on the bench machine (2 cores, channels-last, one multiply-add of a
    mid-sized conv; an element through a copy or a pointwise op; one op of the replay with its Python around it);
    only their ratios steer `auto`, which also wants a clear margin (`AUTO_MARGIN` in `methods.occlusion`)."""

    mac: float = 6e-12  # a multiply-add of a conv or linear layer
    element: float = 5e-10  # an element read and written by a pointwise op, a pooling tap or a copy
    call: float = 5e-5  # one op called on a batch (dispatch, allocation, the replay's bookkeeping)
    sample: float = 2e-7  # one sample's rectangle in a gather or paste (its index arithmetic)


def _numel(v) -> int:
    return sum(t.numel() for t in tree_flatten(v)[0] if isinstance(t, torch.Tensor))


@dataclass(frozen=True)
class Estimate:
    """What a run of the given positions should cost, incremental against whole forwards (seconds)."""

    incremental: float
    whole: float

    @property
    def speedup(self) -> float:
        return self.whole / self.incremental if self.incremental > 0 else float("inf")


def _full_cost(n: Node, win: Window | None, cm: CostModel) -> float:
    """One sample of a node on whole maps."""
    if win is not None:
        taps = win.macs_per_output if isinstance(n.target, nn.Conv2d) or n.target in (F.conv2d, torch.conv2d) else 0
        if taps:
            return n.value.numel() * taps * cm.mac
        return n.value.numel() * win.kernel[0] * win.kernel[1] * cm.element
    if isinstance(n.target, nn.Linear):
        return n.target.weight.numel() * cm.mac
    if isinstance(n.target, nn.Conv2d):  # a conv the replay runs whole (padding modes, strings)
        return n.value.numel() * n.target.weight[0].numel() * cm.mac
    return _numel(n.value) * cm.element


def rects_of(replay: Replay, tops: list[int], lefts: list[int], window: int, tau: float | None):
    """Each live node's rectangles for occluders at (tops[b], lefts[b]) (None: whole maps), walking the same
    rules as `Replay.run` without computing anything."""
    nodes = replay.graph.nodes
    env: dict[int, Rects | None] = {0: Rects(list(tops), list(lefts), window, window)}
    for k in replay.live:
        n = nodes[k]
        ins = [env[i] for i in _refs(n) if nodes[i].varies]
        kind = replay.kinds[k]
        if kind == "whole" or any(r is None for r in ins):
            env[k] = None
        elif kind == "window":
            env[k] = window_rects(replay.windows[k], ins[0], int(n.value.shape[-2]), int(n.value.shape[-1]), tau)  # type: ignore[arg-type]
        elif kind in ("pointwise", "channel", "parts", "pick"):
            env[k] = ins[0]
        else:
            env[k] = union_rects([r for r in ins if r is not None], *n.value.shape[-2:])
    return env


def _weights(n: Node) -> int:
    """Elements of a conv's or linear layer's weights: oneDNN reorders them at every call."""
    w = getattr(n.target, "weight", None) if n.is_module else None
    if w is None and n.target in (F.conv2d, torch.conv2d) and len(n.args) > 1:
        w = n.args[1]
    return w.numel() if isinstance(w, torch.Tensor) else 0


def estimate(
    replay: Replay, batches: list[tuple[list[int], list[int]]], window: int, tau: float | None, cm: CostModel
) -> Estimate:
    """Price the batches of occluder positions (tops, lefts) incremental and as whole forwards. Incremental
    inference also pays, once, for recording the image's graph (a forward that keeps a copy of every value)
    and for its check against whole forwards (one whole forward and a replay of two occluders)."""
    nodes = replay.graph.nodes
    x = nodes[0].value
    per_call = {k: cm.call + _weights(nodes[k]) * cm.element for k in replay.live}
    full = {k: _full_cost(nodes[k], replay.windows.get(k), cm) for k in replay.live}
    one_forward = sum(per_call.values()) + sum(full.values())
    kept = sum(_numel(nodes[k].value) for k in replay.live) * cm.element
    inc = 3 * one_forward + kept  # the recording, the check's whole forward, its replay of two (about one forward)
    whole = 0.0
    for tops, lefts in batches:
        b = len(tops)
        env = rects_of(replay, tops, lefts, window, tau)
        whole += b * x.numel() * cm.element + b * cm.sample  # the occluded images
        for k in replay.live:
            n = nodes[k]
            whole += b * full[k] + per_call[k]
            r = env[k]
            ins = [(i, env[i]) for i in _refs(n) if nodes[i].varies]
            if r is None:  # whole maps; regions coming in are materialized first
                made = [_numel(nodes[i].value) for i, ri in ins if ri is not None and not _covers(ri, nodes[i].value)]
                inc += b * (full[k] + sum(made) * cm.element) + len(made) * b * cm.sample + per_call[k]
                continue
            area = r.h * r.w
            if replay.kinds[k] in ("channel", "parts", "pick"):  # a copy of the patch at most
                hw = nodes[ins[0][0]].value.shape[-2:]
                inc += b * _numel(n.value) * area / (hw[0] * hw[1]) * cm.element + per_call[k]
                continue
            out_hw = n.value.shape[-2] * n.value.shape[-1]
            if replay.kinds[k] == "window":
                win = replay.windows[k]
                i, ri = ins[0]
                c_in = nodes[i].value.shape[1]
                (kh, kw), (sh, sw), (dh, dw) = win.kernel, win.stride, win.dilation
                slab = c_in * ((r.h - 1) * sh + dh * (kh - 1) + 1) * ((r.w - 1) * sw + dw * (kw - 1) + 1)
                copies = 0 if ri is None or _covers(ri, nodes[i].value) else slab + c_in * ri.h * ri.w
                inc += b * (full[k] * area / out_hw + copies * cm.element) + 2 * b * cm.sample + per_call[k]
            else:
                c = n.value.shape[1]
                crops = (
                    [nodes[i].value.shape[1] * area for i, ri in ins if ri != r] if replay.kinds[k] == "union" else []
                )
                inc += b * (c * area + 2 * sum(crops)) * cm.element + 2 * b * len(crops) * cm.sample + per_call[k]
    return Estimate(inc, whole)


def _covers(r: Rects | None, value: Any) -> bool:
    first = next((t for t in tree_flatten(value)[0] if isinstance(t, torch.Tensor)), None)
    return r is not None and first is not None and (r.h, r.w) == tuple(first.shape[-2:])


def order_positions(
    replay: Replay, ys: list[int], xs: list[int], window: int, tau: float | None
) -> list[tuple[int, int]]:
    """Grid cells (i, j) ordered so that cells whose rectangles have the same sizes at every op sit together:
    a batch computes each op over its largest rectangle, so like with like wastes nothing. Rows and columns
    are independent (every rule acts on each axis alone), so one walk per row and one per column suffice."""

    def sizes(env, axis):
        return tuple((getattr(r, axis) if r is not None else -1) for r in env.values())

    row_sig = [sizes(rects_of(replay, [y], [0], window, tau), "h") for y in ys]
    col_sig = [sizes(rects_of(replay, [0], [x], window, tau), "w") for x in xs]
    cells = [(i, j) for i in range(len(ys)) for j in range(len(xs))]
    return sorted(cells, key=lambda c: (row_sig[c[0]], col_sig[c[1]]))
