"""Naming layers of any CNN and reading their feature maps.

A layer is a module name from `model.named_modules()` ('conv5', 'features.10', 'layer3.1.conv2'); for models
without the paper's names, 'convN' / 'fcN' also mean the N-th Conv2d / Linear in definition order.
A layer's feature maps are its rectified outputs (Sec. 2.1: the deconvnet starts from them): when the module
after it in its parent Sequential is a ReLU, that ReLU's output, else the module's own output.
"""

from __future__ import annotations

import re
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
            model(torch.zeros(1, *input_shape, device=next(model.parameters()).device))
    finally:
        for h in hooks:
            h.remove()
    return {n: shapes[n] for n in names if n in shapes}
