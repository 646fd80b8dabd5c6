"""Naming layers of any CNN and reading their feature maps.

A layer is a module name from `model.named_modules()` ('conv5', 'features.10', 'layer3.1.conv2'); for models
without the paper's names, 'convN' / 'fcN' also mean the N-th Conv2d / Linear in definition order.
A layer's feature maps are its rectified outputs (Sec. 2.1: the deconvnet starts from them): when the module
after it in its parent Sequential is a ReLU, that ReLU's output, else the module's own output.

`stage_layers` carries the paper's choice of layers (conv1..conv5, spanning the network) over to any CNN: the
rectified output of each resolution stage, the last one before each downsampling.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager

import torch
from torch import nn

from .errors import UsageError
from .runtime import eval_mode


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
    raise UsageError(f"model has no layer {name!r}; pick one of {', '.join(layer_names(model)[:40])}")


def layer_names(model: nn.Module) -> list[str]:
    """Names of the conv and linear layers, plus every other leaf module, in definition order."""
    return [n for n, m in model.named_modules() if n and not list(m.children())]


def feature_module(model: nn.Module, name: str) -> nn.Module:
    """The module whose output holds `name`'s feature maps: the ReLU right after it, if there is one."""
    target = resolve_layer(model, name)
    if isinstance(target, nn.ReLU):
        return target
    for parent in model.modules():
        if isinstance(parent, nn.Sequential):
            kids = list(parent.children())
            for a, b in zip(kids, kids[1:]):
                if a is target and isinstance(b, nn.ReLU):
                    return b
    return target


@contextmanager
def capture(model: nn.Module, names: list[str], stop: bool = True) -> Iterator[dict[str, torch.Tensor]]:
    """Within the block, a forward fills the yielded dict with each layer's feature maps (first call of each
    module); with `stop`, the forward ends (StopForward) once all of them are in. Hooks go away on exit,
    also on errors."""
    found: dict[str, torch.Tensor] = {}
    handles = []
    targets = {name: feature_module(model, name) for name in names}

    def hook_for(name):
        def hook(module, inputs, output):
            if name not in found:
                found[name] = output[0] if isinstance(output, (tuple, list)) else output
            if stop and len(found) == len(targets):
                raise StopForward

        return hook

    try:
        for name, m in targets.items():
            handles.append(m.register_forward_hook(hook_for(name)))
        yield found
    finally:
        for h in handles:
            h.remove()


def features(model: nn.Module, x: torch.Tensor, names: list[str]) -> dict[str, torch.Tensor]:
    """Feature maps of `names` for input `x`; the forward stops after the deepest of them."""
    with capture(model, names) as found:
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
            w = next(model.parameters())
            model(torch.zeros(1, *input_shape, device=w.device, dtype=w.dtype))
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


def _module_outputs(model: nn.Module, modules: dict[str, nn.Module], input_shape: tuple[int, ...]):
    """One forward of zeros in eval mode, hooks removed on exit: how often each module ran, every 4-D module
    output in the order the modules finished, and each module's first output (what `capture` records) as an
    index into them."""
    calls: Counter[str] = Counter()
    outputs: list[tuple[str, torch.Tensor]] = []
    first: dict[str, int] = {}

    def record(name):
        def hook(module, inputs, output) -> None:
            calls[name] += 1
            if isinstance(output, torch.Tensor) and output.dim() == 4:
                first.setdefault(name, len(outputs))
                outputs.append((name, output))

        return hook

    hooks = [m.register_forward_hook(record(n)) for n, m in modules.items() if n]
    try:
        w = next(model.parameters(), torch.zeros(()))
        with torch.no_grad(), eval_mode(model):
            model(torch.zeros(1, *input_shape, device=w.device, dtype=w.dtype))
    finally:
        for h in hooks:
            h.remove()
    return calls, outputs, first


def stage_layers(model: nn.Module, input_shape: tuple[int, ...], most: int = 5) -> list[str]:
    """The paper's five layers carried over to any CNN (Sec. 2, Fig. 2 spans conv1..conv5): for each resolution
    stage, the last rectified output before the resolution drops (ResNet-18: relu, layer1 .. layer4; VGG: the
    conv before each pool); the stage's own output (the shallowest module name) over one inside a block. A stage
    whose convs feed no rectifier module (the ReLU is functional) gives its last
    module output instead; 1x1 maps (squeeze-excitation gates) and stages without a conv are no stages. With
    more than `most` stages, `most` of them evenly spread, the first and the last kept. Each layer is named
    by its outermost module that is called once and whose output is that feature map (`layer1`, not
    `layer1.1.relu`); one forward of zeros in eval mode, hooks removed on exit."""
    modules = dict(model.named_modules())
    calls, outputs, first = _module_outputs(model, modules, input_shape)
    # which names show each tensor as their feature map: called once, their feature module's output is it
    aliases: dict[int, list[str]] = {}
    for name in first:
        if calls[name] != 1:
            continue
        fm = feature_module(model, name)
        fm_name = next((n for n, m in modules.items() if m is fm), name)
        if calls[fm_name] == 1 and fm_name in first:
            aliases.setdefault(id(outputs[first[fm_name]][1]), []).append(name)

    def rank(n: str) -> tuple:
        m = modules[n]
        kind = 0 if isinstance(m, (nn.Conv2d, nn.Linear)) else 1 if isinstance(m, RECTIFIERS) else 2
        return (n.count("."), kind, list(modules).index(n))

    def depth(k: int) -> int:
        return min(n.count(".") for n in aliases[id(outputs[k][1])])

    stages: dict[tuple[int, int], dict] = {}  # resolution -> its rectified outputs, its outputs, has it a conv
    for k, (name, out) in enumerate(outputs):
        hw = (int(out.shape[-2]), int(out.shape[-1]))
        if hw == (1, 1):
            continue
        st = stages.setdefault(hw, {"rectified": [], "all": [], "conv": False})
        st["conv"] |= isinstance(modules[name], nn.Conv2d)
        if id(out) in aliases:
            st["all"].append(k)
            if isinstance(modules[name], RECTIFIERS):
                st["rectified"].append(k)
    chosen = []
    for st in stages.values():
        pool = st["rectified"] or st["all"]
        if st["conv"] and pool:  # the stage's own output over one inside a block: the shallowest name, then last
            k = max(pool, key=lambda k: (-depth(k), k))
            chosen.append((k, min(aliases[id(outputs[k][1])], key=rank)))
    names = [n for _, n in sorted(chosen)]
    names = list(dict.fromkeys(names))
    if len(names) > most:
        names = [names[round(i * (len(names) - 1) / (most - 1))] for i in range(most)]
    return names


def local_response_norm(x: torch.Tensor, size: int, alpha: float, beta: float, k: float) -> torch.Tensor:
    """Contrast normalization across maps, PyTorch's definition (x / (k + alpha / size * sum of x^2 over `size`
    neighbouring maps, zero-padded)^beta), with the sum taken as `size` shifted channel slices: in channels-last
    each is one contiguous run, 3x faster than the 3-D average pooling torch uses (same terms, rounding aside)."""
    c = x.shape[1]
    padded = torch.empty(
        x.shape[0], c + size - 1, *x.shape[2:], dtype=x.dtype, device=x.device, memory_format=torch.channels_last
    )
    padded.zero_()[:, size // 2 : size // 2 + c] = x * x
    acc = padded[:, :c].clone()
    for o in range(1, size):
        acc += padded[:, o : o + c]
    return x / acc.mul_(alpha / size).add_(k).pow_(beta)
