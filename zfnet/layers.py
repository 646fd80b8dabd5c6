"""Naming layers of any CNN and reading their feature maps.

A layer is a module name from `model.named_modules()` ('conv5', 'features.10', 'layer3.1.conv2'); for models
without the paper's names, 'convN' / 'fcN' also mean the N-th Conv2d / Linear in definition order.
A layer's feature maps are its rectified outputs (Sec. 2.1: the deconvnet starts from them), found from one
traced forward (`sites`): the output of the first ReLU that follows the layer through elementwise ops only (a
bias, batch norm, a residual addition, a scale), an `nn.ReLU` anywhere or a functional one, in place or not;
with none, the layer's raw output, marked unrectified. Patch tokens (N x (p + g*g) x C) and channels-last maps
(N x H x W x C) are read as C maps of g x g / H x W (`Site.maps`).

`stage_layers` carries the paper's choice of layers (conv1..conv5, spanning the network) over to any CNN: the
rectified output of each resolution stage, the last one before each downsampling; a vision transformer's blocks,
a few evenly spaced.
"""

from __future__ import annotations

import math
import operator
import re
import weakref
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, replace
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.overrides import TorchFunctionMode
from torch.utils._pytree import tree_flatten

from .errors import UsageError
from .runtime import eval_mode, model_device, model_dtype


class StopForward(Exception):
    """Raised by a capture hook to end a forward pass once every asked-for layer has run."""


def resolve_layer(model: nn.Module, name: str) -> nn.Module:
    modules = dict(model.named_modules())
    if name in modules and name:
        return modules[name]
    m = re.fullmatch(r"(conv|fc)(\d+)", name)
    if m:
        kind = nn.Conv2d if m.group(1) == "conv" else nn.Linear
        found = [mod for mod in model.modules() if isinstance(mod, kind)]
        k = int(m.group(2))
        # fcN counts on from the conv layers, as in the paper (fc6 = the first Linear after 5 convs)
        if kind is nn.Linear:
            k -= sum(isinstance(mod, nn.Conv2d) for mod in model.modules())
        if 1 <= k <= len(found):
            return found[k - 1]
    raise UsageError(f"model has no layer {name!r}; {_layer_hint(model)}")


def _layer_hint(model: nn.Module) -> str:
    """What to pick instead: the default stage layers (the top one last), and where the full list is."""
    try:
        names = default_stage_layers(model)
    except Exception:  # noqa: BLE001 - a hint only: a model that runs only at some other size has none here
        names = []
    shown = f"its default layers are {', '.join(names)}" if names else "pick a module name"
    return f"{shown} (every layer: zfnet layers --model ...)"


def model_input_shape(model: nn.Module, default: int = 224) -> tuple[int, int, int]:
    """(channels, height, width) a model expects: its own `input_shape` (the Fig. 3 family's table), a fixed
    `image_size` (torchvision's ViT) or a timm ViT's patch embedding size, else 3 (or the first conv's channels)
    x default x default."""
    own = getattr(model, "input_shape", None)
    if isinstance(own, tuple) and len(own) == 3 and all(isinstance(v, int) for v in own):
        return own
    first = next((m for m in model.modules() if isinstance(m, nn.Conv2d)), None)
    c = first.in_channels if first is not None else 3
    side = getattr(model, "image_size", None)  # torchvision's ViT: fixed at construction
    embed = getattr(model, "patch_embed", None)  # timm's ViTs: the patch embedding's size
    if not isinstance(side, int) and embed is not None and not getattr(model, "dynamic_img_size", False):
        size = getattr(embed, "img_size", None)
        side = int(size[-1]) if isinstance(size, (tuple, list)) and size else None
    return (c, side, side) if isinstance(side, int) and side > 0 else (c, default, default)


FIG3_LAYERS = ("conv1", "conv2", "conv3", "conv4", "conv5")


def default_stage_layers(model: nn.Module, input_shape: tuple[int, ...] | None = None) -> list[str]:
    """The layers Fig. 2 shows: conv1..conv5 for a model named as Fig. 3 (those a Table 2 variant keeps), else
    the rectified output of each resolution stage, at most five (`stage_layers`), read at `input_shape`
    (default: the model's own, else 3 x 224 x 224). The last is the model's top layer (`top_layer`)."""
    modules = dict(model.named_modules())
    if getattr(model, "arch", None) is not None and "conv1" in modules:  # zfnet's ConvNet: the paper's names
        return [n for n in FIG3_LAYERS if n in modules]
    return stage_layers(model, tuple(input_shape or model_input_shape(model)))


def paper_layers(
    model: nn.Module, paper: tuple[str, ...], input_shape: tuple[int, ...] | None = None
) -> tuple[str, ...]:
    """The paper's layers by number (`paper`, e.g. conv5 and fc7 for Table 7, conv1 and fc7 for the invariance
    figure) where the model has them by those names (Fig. 3's family); on any other model the stage layers that
    stand for them: conv1 is the first stage layer, any deeper layer the top one (`top_layer`)."""
    modules = dict(model.named_modules())
    if getattr(model, "arch", None) is not None and "conv1" in modules:
        kept = tuple(n for n in paper if n in modules)
        if kept:
            return kept
    names = default_stage_layers(model, input_shape)
    if not names:
        raise UsageError("the model has no convolutional or token stage to read; pass layers (see zfnet layers)")
    return tuple(dict.fromkeys(names[0] if n == "conv1" else names[-1] for n in paper))


def top_layer(model: nn.Module, input_shape: tuple[int, ...] | None = None) -> str:
    """The default layer of a one-layer view (issue 40): the top of the default stage layers (conv5 for Fig. 3's
    family; ResNet's layer4, a ViT's last block)."""
    names = default_stage_layers(model, input_shape)
    if not names:
        raise UsageError("the model has no convolutional or token stage to read; pass a layer (see zfnet layers)")
    return names[-1]


def layer_names(model: nn.Module) -> list[str]:
    """Names of the conv and linear layers, plus every other leaf module, in definition order."""
    return [n for n, m in model.named_modules() if n and not list(m.children())]


@contextmanager
def capture(
    model: nn.Module,
    names: list[str],
    x: torch.Tensor,
    stop: bool = True,
    copy: bool = True,
    reduce: Callable[[torch.Tensor], Any] | None = None,
) -> Iterator[dict[str, Any]]:
    """Within the block, a forward fills the yielded dict with each layer's feature maps (its `Site`, found
    from `x`); with `stop`, the forward ends (StopForward) once all of them are in. With `copy`, a map that
    later ops could still change in place (seen to in the trace, or anywhere past it without `stop`) is kept as
    a copy. With `reduce`, what is kept is `reduce(maps)`, computed the moment the maps are made (no copy: the
    activation index's maxima). Hooks and modes go away on exit, also on errors."""
    where = sites(model, names, x)
    found: dict[str, Any] = {}

    def keep(name: str, out) -> None:
        if name in found:
            return
        t = where[name].maps(out[0] if isinstance(out, (tuple, list)) else out)
        last = stop and len(found) + 1 == len(where)
        if reduce is not None:
            found[name] = reduce(t)
            if last:
                raise StopForward
            return
        # a copy where later ops could change it in place: past the traced span (no stop), or seen to in it
        keep_copy = copy and not last and (not stop or where[name].overwritten)
        found[name] = t.clone() if keep_copy else t
        if last:
            raise StopForward

    by_module: dict[str, list[Site]] = {}
    by_ordinal: dict[int, list[str]] = {}
    for s in where.values():
        if s.module is None:
            by_ordinal.setdefault(s.ordinal, []).append(s.layer)
        else:
            by_module.setdefault(s.module, []).append(s)
    modules = dict(model.named_modules())

    def hook_for(wanted: list[Site]):
        count = [0]

        def hook(module, inputs, output):
            k, count[0] = count[0], count[0] + 1
            for s in wanted:
                if s.call == k:
                    keep(s.layer, output)

        return hook

    handles = [modules[m].register_forward_hook(hook_for(ss)) for m, ss in by_module.items()]
    try:
        if by_ordinal:
            with _CatchRectifiers(by_ordinal, keep):
                yield found
        else:
            yield found
    finally:
        for h in handles:
            h.remove()


def features(model: nn.Module, x: torch.Tensor, names: list[str]) -> dict[str, torch.Tensor]:
    """Feature maps of `names` for input `x` (Sec. 2.1: rectified where a rectifier follows, `sites`); the
    forward stops after the deepest of them."""
    with capture(model, names, x) as found:
        try:
            model(x)
        except StopForward:
            pass
    missing = [n for n in names if n not in found]
    if missing:
        raise UsageError(f"layer(s) {', '.join(missing)} did not run in the forward pass; pick layers the model uses")
    return found


def output_shapes(model: nn.Module, names: list[str], input_shape: tuple[int, ...]) -> dict[str, tuple[int, ...]]:
    """Each named module's own output shape (without the batch dimension), from one forward of zeros in eval
    mode; modules that do not run are left out. Hooks and modes are restored on exit."""

    shapes: dict[str, tuple[int, ...]] = {}
    modules = dict(model.named_modules())

    def record(name):
        def hook(module, inputs, output) -> None:
            if isinstance(output, torch.Tensor):
                shapes.setdefault(name, tuple(output.shape[1:]))

        return hook

    hooks = []
    try:
        for n in names:
            hooks.append(modules[n].register_forward_hook(record(n)))
        with torch.no_grad(), eval_mode(model):
            model(torch.zeros(1, *input_shape, device=model_device(model), dtype=model_dtype(model)))
    finally:
        for h in hooks:
            h.remove()
    return {n: shapes[n] for n in names if n in shapes}


# modules whose output is a rectified (non-linear) feature map, as the paper's ReLU outputs are
RECTIFIERS = (
    nn.ReLU,
    nn.ReLU6,
    nn.LeakyReLU,
    nn.PReLU,
    nn.ELU,
    nn.SELU,
    nn.CELU,
    nn.GELU,
    nn.SiLU,
    nn.Hardswish,
    nn.Mish,
)


def _module_outputs(model: nn.Module, modules: dict[str, nn.Module], x: torch.Tensor):
    """One forward of `x` in eval mode, hooks removed on exit: how often each module ran, every 3-D and 4-D
    module output in the order the modules finished, and where each module's k-th output is among them."""
    calls: Counter[str] = Counter()
    outputs: list[tuple[str, torch.Tensor]] = []
    at: dict[tuple[str, int], int] = {}

    def record(name):
        def hook(module, inputs, output) -> None:
            calls[name] += 1
            if isinstance(output, torch.Tensor) and output.dim() in (3, 4):
                at[(name, calls[name] - 1)] = len(outputs)
                outputs.append((name, output))

        return hook

    hooks = [m.register_forward_hook(record(n)) for n, m in modules.items() if n]
    try:
        with torch.no_grad(), eval_mode(model):
            model(x)
    finally:
        for h in hooks:
            h.remove()
    return calls, outputs, at


def _resolution_stages(
    model: nn.Module, modules: dict[str, nn.Module], outputs: list[tuple[str, torch.Tensor]], aliases: dict[int, list]
) -> dict[tuple[int, int], dict]:
    """The module outputs grouped by their map's resolution (1x1 left out): for each, the positions in `outputs`
    of its rectified feature maps and of all its feature maps, and whether a conv (or a token layer) made one."""
    stages: dict[tuple[int, int], dict] = {}
    for k, (name, out) in enumerate(outputs):
        read = _layout(model, Site(name, None, 0, -1, (), False, shape=tuple(out.shape)), ())
        if read.layout not in ("maps", "tokens", "channels-last"):
            continue
        grid = read.maps(out).shape
        hw = (int(grid[-2]), int(grid[-1]))
        if hw == (1, 1):
            continue
        st = stages.setdefault(hw, {"rectified": [], "all": [], "conv": False})
        st["conv"] |= isinstance(modules[name], nn.Conv2d) or read.layout != "maps"  # a transformer's stage too
        if id(out) in aliases:
            st["all"].append(k)
            if isinstance(modules[name], RECTIFIERS) and read.layout == "maps":  # a transformer's GELU: no
                st["rectified"].append(k)
    return stages


def stage_layers(model: nn.Module, input_shape: tuple[int, ...], most: int = 5) -> list[str]:
    """The paper's five layers carried over to any CNN (Sec. 2, Fig. 2 spans conv1..conv5): for each resolution
    stage, the last rectified output before the resolution drops (ResNet-18: conv1, read after its ReLU, layer1 ..
    layer4; VGG: the conv before each pool); the stage's own output (the shallowest module name) over one inside a
    block. A stage whose rectifiers no module returns (a functional ReLU inside a forward) gives its last
    module output instead; 1x1 maps (squeeze-excitation gates) and stages without a conv are no stages. With
    more than `most` stages, `most` of them evenly spread, the first and the last kept. Each layer is named
    by its outermost module that is called once and whose output is that feature map (`layer1`, not
    `layer1.1.relu`); one forward of zeros in eval mode, hooks removed on exit."""
    modules = dict(model.named_modules())
    x = torch.zeros(1, *input_shape, device=model_device(model), dtype=model_dtype(model))
    calls, outputs, at = _module_outputs(model, modules, x)
    candidates = [n for n in modules if n and calls[n] == 1 and (n, 0) in at]
    where = sites(model, candidates, x)
    # which names show each tensor as their feature map: called once, their site is a module's output
    aliases: dict[int, list[str]] = {}
    for name in candidates:
        s = where[name]
        # a functional ReLU no module returns: the layer's own output stands for its place in the stage
        key = (s.module, s.call) if s.module is not None else (name, 0)
        if key in at:
            aliases.setdefault(id(outputs[at[key]][1]), []).append(name)

    def rank(n: str) -> tuple:
        m = modules[n]
        kind = 0 if isinstance(m, (nn.Conv2d, nn.Linear)) else 1 if isinstance(m, RECTIFIERS) else 2
        return (n.count("."), kind, list(modules).index(n))

    def depth(k: int) -> int:
        return min(n.count(".") for n in aliases[id(outputs[k][1])])

    chosen = []
    for st in _resolution_stages(model, modules, outputs, aliases).values():
        pool = st["rectified"] or st["all"]
        if st["conv"] and pool:  # the stage's own output over one inside a block: the shallowest name, then last
            k = max(pool, key=lambda k: (-depth(k), k))
            chosen.append((k, min(aliases[id(outputs[k][1])], key=rank)))
    names = [n for _, n in sorted(chosen)]
    names = list(dict.fromkeys(names))
    blocks = _token_blocks(model, modules, candidates, where)
    if len(blocks) > len(names):  # a ViT: one resolution throughout, a few of its blocks instead
        most = min(most, 4)
        names = blocks
    if len(names) > most:
        names = [names[round(i * (len(names) - 1) / (most - 1))] for i in range(most)]
    return names


def _token_blocks(model: nn.Module, modules: dict[str, nn.Module], candidates: list[str], where) -> list[str]:
    """The longest run of sibling blocks (a ModuleList or Sequential's children, each called once) whose outputs
    are patch tokens of one shape: a vision transformer's encoder blocks."""
    best: list[str] = []
    for name, m in modules.items():
        if not isinstance(m, (nn.ModuleList, nn.Sequential)):
            continue
        kids = [f"{name}.{k}" if name else k for k, _ in m.named_children()]
        sites_ = [where.get(k) for k in kids]
        if (
            len(kids) >= 3
            and all(s is not None and s.layout == "tokens" for s in sites_)
            and len({s.shape for s in sites_}) == 1
            and len(kids) > len(best)
        ):
            best = kids
    return best


# --- a layer's feature maps, from the traced graph (Sec. 2.1) ----------------------------------------------

T = torch.Tensor
# what rectifies (the paper's ReLU, in any spelling) and what may lie between a layer and its rectifier
_RECTIFIER_MODULES = (nn.ReLU, nn.ReLU6)
RECTIFIER_FUNCTIONS = {F.relu, F.relu_, F.relu6, torch.relu, torch.relu_, T.relu, T.relu_}
_ELEMENTWISE_MODULES = (nn.BatchNorm1d, nn.BatchNorm2d, nn.Dropout, nn.Dropout2d, nn.Identity)
# what makes a network other than a ReLU network for the deconvnet's rules (footnote 1): other activations
# (GELU, SiLU, hard-swish, ...), sigmoid gates (squeeze-excitation), a transformer's softmax and attention
_NOT_RELU_FUNCTIONS = {
    F.gelu, F.silu, F.hardswish, F.mish, F.elu, F.selu, F.celu, F.leaky_relu, F.hardsigmoid,
    F.sigmoid, torch.sigmoid, T.sigmoid, torch.tanh, T.tanh,
    F.softmax, torch.softmax, T.softmax, F.scaled_dot_product_attention, F.multi_head_attention_forward,
}  # fmt: skip
# elementwise binary ops (additions, products: a residual addition, a scale), as the incremental engine knows them
BINARY_FUNCTIONS = {
    operator.add, operator.sub, operator.mul, operator.truediv, torch.add, torch.sub, torch.mul, torch.div,
    *(getattr(T, op) for op in ("add", "add_", "sub", "sub_", "mul", "mul_", "div", "div_")),
    *(getattr(T, f"__{op}__") for op in ("add", "radd", "iadd", "sub", "rsub", "isub", "mul", "rmul", "imul")),
    T.__truediv__, T.__itruediv__,
}  # fmt: skip
_ELEMENTWISE_FUNCTIONS = {*BINARY_FUNCTIONS, T.contiguous, T.clone, F.batch_norm, F.dropout, F.dropout2d}


@dataclass(frozen=True)
class Site:
    """Where `layer`'s feature maps are read: the output of call `call` of module `module`, or (`module` is
    None) the `ordinal`-th rectifier function call of a forward. `path` names the ops from the layer's own
    output to that tensor ('bn1', 'add', 'relu'); `rectified` is False when no rectifier follows the layer
    through elementwise ops only, and the maps are the layer's raw output."""

    layer: str
    module: str | None
    call: int
    ordinal: int
    path: tuple[str, ...]
    rectified: bool
    layout: str = "maps"  # "maps" (N C H W), "vector" (N C), "tokens" (N T C), "channels-last" (N H W C), "other"
    prefix: int = 0  # tokens: the class / distillation / register tokens before the patch grid (dropped)
    not_relu: tuple[str, ...] = ()  # non-ReLU nonlinearities before the maps (GELU, SiLU, sigmoid, attention)
    shape: tuple[int, ...] = ()  # the tensor's shape in the traced forward (batch of one)
    overwritten: bool = False  # an in-place op changes the tensor later in the traced forward (up to the deepest
    # site asked for with it): `capture` keeps a copy

    @property
    def reads(self) -> str:
        """The tensor read, as results record it: 'layer1.0.conv2 -> bn2 -> add -> relu'."""
        return " -> ".join((self.layer, *self.path))

    def to_json(self) -> dict:
        out: dict[str, Any] = {"reads": self.reads, "rectified": self.rectified}
        if self.layout == "tokens":
            out["layout"] = (
                f"tokens: a square grid of patch tokens, {self.prefix} leading token(s) dropped; past the first "
                "attention layer each unit sees the whole image (atlas patches show the token's own region)"
            )
        elif self.layout == "channels-last":
            out["layout"] = "channels-last (N x H x W x C), read as C maps"
        if self.not_relu:
            out["not_relu"] = list(self.not_relu)
        return out

    def maps(self, t: torch.Tensor) -> torch.Tensor:
        """The captured tensor as the paper's maps: N x C x H x W (a view; N x C for fc layers)."""
        if self.layout == "tokens":
            n, count, c = t.shape
            g = math.isqrt(count - self.prefix)
            return t[:, self.prefix :, :].transpose(1, 2).reshape(n, c, g, g)
        if self.layout == "channels-last":
            return t.permute(0, 3, 1, 2)
        if self.layout == "other":
            raise UsageError(
                f"layer {self.layer!r} gives outputs of shape {tuple(self.shape[1:])}, neither feature maps nor a "
                "square grid of tokens; pick another layer (`zfnet layers` lists them)"
            )
        return t


def _op_name(target, modules_by_id: dict[int, str]) -> str:
    if isinstance(target, nn.Module):
        return modules_by_id.get(id(target), type(target).__name__).rsplit(".", 1)[-1]
    name = getattr(target, "__name__", str(target)).strip("_")
    return {"iadd": "add", "radd": "add", "isub": "sub", "rsub": "sub", "imul": "mul", "rmul": "mul"}.get(
        name.rstrip("_"), name.rstrip("_")
    )


@dataclass
class _Event:
    """One step of a traced forward: an op (a leaf module call or a torch function outside leaf modules) with
    its input and output tensors as (id, version) keys, or the end of any module's call."""

    kind: str  # "op" | "end"
    target: Any
    inputs: tuple
    outputs: tuple
    rectifier: bool = False
    elementwise: bool = False
    ordinal: int = -1  # rectifier functions: their index among the forward's rectifier function calls
    call: int = 0  # "end": which call of the module
    shape: tuple[int, ...] = ()  # the first output's shape


def _shape(out) -> tuple[int, ...]:
    first = next((t for t in tree_flatten(out)[0] if isinstance(t, torch.Tensor)), None)
    return tuple(first.shape) if first is not None else ()


def _key(t: torch.Tensor) -> tuple[int, int]:
    return (id(t), t._version)


def _keys(obj) -> tuple:
    return tuple(_key(t) for t in tree_flatten(obj)[0] if isinstance(t, torch.Tensor))


class _Tracer(TorchFunctionMode):
    """Records a forward as `_Event`s; keeps every tensor alive so that ids are not reused."""

    def __init__(self) -> None:
        super().__init__()
        self.events: list[_Event] = []
        self.keep: list = []
        self.depth = 0  # > 0 inside a leaf module
        self.rectifiers = 0
        self.not_relu: list[tuple[int, str]] = []  # (event index when seen, name) of GELU, softmax, attention
        self.check: Callable[[], None] = lambda: None

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        ins = _keys((args, kwargs))
        out = func(*args, **kwargs)
        rect = func in RECTIFIER_FUNCTIONS
        if rect:
            self.rectifiers += 1
        if func in _NOT_RELU_FUNCTIONS:
            self.not_relu.append((len(self.events), getattr(func, "__name__", str(func))))
        if self.depth == 0 and _keys(out):
            self.keep.append(out)
            ev = _Event("op", func, ins, _keys(out), rect, func in _ELEMENTWISE_FUNCTIONS, shape=_shape(out))
            ev.ordinal = self.rectifiers - 1 if rect else -1
            self.events.append(ev)
            if rect:
                self.check()
        return out


_SITES: weakref.WeakKeyDictionary[nn.Module, dict[tuple[str, int], tuple[Site, int]]] = weakref.WeakKeyDictionary()


def sites(model: nn.Module, names: list[str], x: torch.Tensor) -> dict[str, Site]:
    """Each named layer's `Site`: the output of the first rectifier that follows the layer's (first) output when
    only elementwise ops lie between (bias, batch norm, a residual addition, a scale), be it an `nn.ReLU`
    anywhere, `F.relu` or `torch.relu`, in place or not; else the layer's raw output, marked unrectified.
    Found from one traced forward of `x[:1]` in eval mode, cached per model and layer while the layer's module
    and the module the maps are read from are the same objects (a tool that swaps a model's ReLU modules, as
    pytorch-grad-cam's guided backprop does, makes it trace again)."""
    cache = _SITES.setdefault(model, {})
    modules = dict(model.named_modules())

    def key(n: str) -> tuple[str, int]:
        return n, id(resolve_layer(model, n))

    def fresh(n: str) -> bool:
        hit = cache.get(key(n))
        return hit is not None and (hit[0].module is None or id(modules.get(hit[0].module)) == hit[1])

    todo = [n for n in names if not fresh(n)]
    if todo:
        for n, s in _trace_sites(model, todo, x).items():
            cache[key(n)] = (s, id(modules.get(s.module)) if s.module is not None else 0)
    return {n: cache[key(n)][0] for n in names}


def _trace_sites(model: nn.Module, names: list[str], x: torch.Tensor) -> dict[str, Site]:
    """Trace a forward of `x[:1]` until every layer's site is a rectifier (a few layers) or to its end (many)
    and read the sites off it. A forward that fails after every layer ran (a head that does not fit the input)
    ends the trace there."""
    tracer = _Tracer()
    named = {id(m): n for n, m in model.named_modules()}
    targets = {n: resolve_layer(model, n) for n in names}
    calls: Counter[int] = Counter()

    first_end: dict[int, int] = {}  # id of a module -> the event ending its first call

    def resolve() -> dict[str, Site] | None:
        if any(id(t) not in first_end for t in targets.values()):
            return None
        return {n: _site_of(n, tracer.events, first_end[id(t)], named) for n, t in targets.items()}

    def check() -> None:
        if len(names) > 8:  # each check walks the trace once per layer: many layers read it once, at the end
            return
        found = resolve()
        if found is not None and all(s.rectified for s in found.values()):
            raise StopForward

    tracer.check = check

    inputs: list[tuple] = []  # each running leaf call's input keys, taken before an in-place op bumps them

    def pre(m, args):
        if not list(m.children()):
            tracer.depth += 1
            inputs.append(_keys(args))

    def post(m, args, out):
        leaf = not list(m.children())
        tracer.keep.append(out)
        if leaf:
            tracer.depth -= 1
            ins = inputs.pop()
            if tracer.depth == 0 and _keys(out):
                kind = isinstance(m, _RECTIFIER_MODULES), isinstance(m, _ELEMENTWISE_MODULES)
                tracer.events.append(_Event("op", m, ins, _keys(out), *kind, shape=_shape(out)))
        first = out[0] if isinstance(out, (tuple, list)) and out else out
        first_end.setdefault(id(m), len(tracer.events))
        tracer.events.append(_Event("end", m, (), _keys(first), call=calls[id(m)], shape=_shape(first)))
        calls[id(m)] += 1
        if leaf and isinstance(m, _RECTIFIER_MODULES):
            check()

    handles = [m.register_forward_pre_hook(pre) for m in model.modules()]
    handles += [m.register_forward_hook(post) for m in model.modules()]
    try:
        with torch.no_grad(), eval_mode(model), tracer:
            model(x[:1].detach().clone())
    except StopForward:
        pass
    except Exception:
        if resolve() is None:
            raise
    finally:
        for h in handles:
            h.remove()
    found = resolve()
    if found is None:
        missing = [n for n, t in targets.items() if id(t) not in first_end]
        raise UsageError(f"layer(s) {', '.join(missing)} did not run in the forward pass; pick layers the model uses")
    out = {}
    for n, s in found.items():
        before = tuple(dict.fromkeys(name for k, name in tracer.not_relu if k < first_end[id(targets[n])]))
        out[n] = _layout(model, s, before)
    return out


def _site_of(name: str, events: list[_Event], end: int, named: dict[int, str]) -> Site:
    start = events[end].outputs[:1]
    if not start:
        raise UsageError(f"layer {name!r} returns no tensor; pick a layer whose output is a feature map")
    producer = next((e for e in reversed(events[:end]) if e.kind == "op" and start[0] in e.outputs), None)
    path: tuple[str, ...] = ()
    first = start[0]
    later = any(o[0] == first[0] and o[1] > first[1] for e in events[end + 1 :] if e.kind == "op" for o in e.outputs)
    raw = Site(name, named.get(id(events[end].target)), events[end].call, -1, (), False, shape=events[end].shape)
    raw = replace(raw, overwritten=later)
    if producer is not None and producer.rectifier:
        at, path = end, ()
    else:
        frontier: dict[tuple[int, int], tuple[str, ...]] = {start[0]: ()}
        at = -1
        for k in range(end + 1, len(events)):
            e = events[k]
            via = next((frontier[i] for i in e.inputs if i in frontier), None)
            if e.kind != "op" or via is None:
                continue
            path = (*via, _op_name(e.target, named))
            if e.rectifier:
                at = k
                break
            if e.elementwise:
                frontier.update({o: path for o in e.outputs})
        if at < 0:
            return raw
    out = events[at].outputs[0]
    # read it where a module returns it (a hook); a rectifier no module returns is caught by its call's ordinal
    holder = next((e for e in events[at:] if e.kind == "end" and e.outputs[:1] == (out,)), None)
    shape = events[at].shape
    later = any(o[0] == out[0] and o[1] > out[1] for e in events[at + 1 :] if e.kind == "op" for o in e.outputs)
    if holder is not None:
        return Site(name, named.get(id(holder.target)), holder.call, -1, path, True, shape=shape, overwritten=later)
    return Site(name, None, 0, events[at].ordinal, path, True, shape=shape, overwritten=later)


def _layout(model: nn.Module, site: Site, not_relu: tuple[str, ...]) -> Site:
    """How the site's tensor is read as maps, from its traced shape: N x C x H x W
    as it is; N x T x C tokens when T is a square grid after the model's leading tokens (timm's
    `num_prefix_tokens`, a torchvision ViT's class token, else the fewest of 0..8 that leave a square); N x H x W
    x C when H == W != C and a LayerNorm normalizes C (Swin)."""
    shape = site.shape
    layout, prefix = "maps", 0
    if len(shape) == 2:
        layout = "vector"
    elif len(shape) == 3:
        n_tok = shape[1]
        known = getattr(model, "num_prefix_tokens", None)
        if known is None and getattr(model, "class_token", None) is not None:
            known = 1
        tries = [int(known)] if known is not None else list(range(0, 9))
        prefix = next((p for p in tries if n_tok - p >= 1 and math.isqrt(n_tok - p) ** 2 == n_tok - p), -1)
        layout = "tokens" if prefix >= 0 else "other"
        prefix = max(prefix, 0)
    elif len(shape) == 4 and shape[1] == shape[2] != shape[3]:
        norms = [m for m in model.modules() if isinstance(m, nn.LayerNorm)]
        if any(tuple(m.normalized_shape)[-1:] == (shape[3],) for m in norms):
            layout = "channels-last"
    elif len(shape) != 4:
        layout = "other"
    return replace(site, layout=layout, prefix=prefix, not_relu=not_relu)


def read_maps(model: nn.Module, names: list[str], x: torch.Tensor) -> dict[str, dict]:
    """What each result records of the tensors it read: {layer: {"reads": "c3 -> add -> relu", "rectified"}}."""
    return {n: s.to_json() for n, s in sites(model, names, x).items()}


def unrectified_note(maps: dict[str, dict]) -> str:
    """A caption's word on layers read before any rectifier ('' when every map is rectified)."""
    raw = [n for n, m in maps.items() if not m.get("rectified", True)]
    if not raw:
        return ""
    return f"unrectified: {', '.join(raw)} {'is' if len(raw) == 1 else 'are'} read as raw outputs (no ReLU follows)"


class _CatchRectifiers(TorchFunctionMode):
    """Keeps the outputs of chosen rectifier function calls (by ordinal, as `_Tracer` counts them)."""

    def __init__(self, wanted: dict[int, list[str]], keep) -> None:
        super().__init__()
        self.wanted, self.keep, self.count = wanted, keep, 0

    def __torch_function__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        if func in RECTIFIER_FUNCTIONS:
            for name in self.wanted.get(self.count, ()):
                self.keep(name, out)
            self.count += 1
        return out


def _window_sum(t: torch.Tensor, size: int, before: int) -> torch.Tensor:
    """For each map c, the sum of `t` over maps c - before .. c - before + size - 1 (zero outside), as `size`
    shifted channel slices of a zero-padded channels-last copy: each slice one contiguous run."""
    c = t.shape[1]
    padded = torch.empty(
        t.shape[0], c + size - 1, *t.shape[2:], dtype=t.dtype, device=t.device, memory_format=torch.channels_last
    )
    padded[:, :before].zero_()
    padded[:, before + c :].zero_()
    padded[:, before : before + c] = t
    acc = padded[:, :c] + padded[:, 1 : 1 + c] if size > 1 else padded[:, :c].clone()
    for o in range(2, size):
        acc += padded[:, o : o + c]
    return acc


class _ContrastNorm(torch.autograd.Function):
    """Sec. 3's contrast normalization with its gradient written out: y = x d^-b, d = k + a/n sum_W x^2, so
    dL/dx_i = g_i d_i^-b - (2ab/n) x_i sum_{j: i in W(j)} g_j x_j d_j^(-b-1) (the window transposed). Autograd
    through the slices would allocate and zero a full padded map per slice; this is one window sum each way.
    Under create_graph the backward recomputes d from x, so higher derivatives are right too."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, size: int, alpha: float, beta: float, k: float) -> torch.Tensor:
        d = _window_sum(x * x, size, size // 2).mul_(alpha / size).add_(k)
        power = d.pow(beta)
        ctx.save_for_backward(x, d, power)
        ctx.args, ctx.k = (size, alpha, beta), k
        return x / power

    @staticmethod
    def backward(ctx, g: torch.Tensor):
        x, d, power = ctx.saved_tensors
        size, alpha, beta = ctx.args
        if torch.is_grad_enabled():  # a higher derivative: d and power again, as functions of x
            d = _window_sum(x * x, size, size // 2).mul(alpha / size) + ctx.k
            power = d.pow(beta)
        scaled = g / power
        inner = _window_sum(scaled * x / d, size, (size - 1) // 2)
        return scaled - (2 * alpha * beta / size) * x * inner, None, None, None, None


def local_response_norm(x: torch.Tensor, size: int, alpha: float, beta: float, k: float) -> torch.Tensor:
    """Contrast normalization across maps, PyTorch's definition (x / (k + alpha / size * sum of x^2 over `size`
    neighbouring maps, zero-padded)^beta), with the sum taken as `size` shifted channel slices: in channels-last
    each is one contiguous run, 3x faster than the 3-D average pooling torch uses (same terms, rounding aside).
    Its gradient is written out (`_ContrastNorm`): forward and backward about 3x faster than autograd
    through the slices."""
    if not torch.is_grad_enabled() or not x.requires_grad:
        return x / _window_sum(x * x, size, size // 2).mul_(alpha / size).add_(k).pow_(beta)
    return _ContrastNorm.apply(x, size, alpha, beta, k)
