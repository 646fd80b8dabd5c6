"""The architecture as Fig. 3 draws it, read from the model itself (any CNN): for each layer in the order the
forward pass runs it, its kind, filter size, stride, padding, the maps it outputs and their size, its
parameters and (convolutions) its receptive field in input pixels.

    >>> arch = zfnet.architecture(model, (1, 28, 28))
    >>> [(l.name, l.kind, l.out_shape) for l in arch.layers]      # conv1 conv (48, 28, 28), pool1 pool ...
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import ClassVar

import torch
from torch import nn

from ..calling import api
from ..errors import UsageError
from ..receptive_field import layer_field
from ..runtime import eval_mode, model_device
from ..settings import Settings

# module kinds Fig. 3 shows (others - ReLU, dropout, flatten - are folded into the layer before them)
_POOLS = (nn.MaxPool2d, nn.AvgPool2d, nn.AdaptiveAvgPool2d, nn.AdaptiveMaxPool2d)
_NORMS = (nn.LocalResponseNorm, nn.BatchNorm2d, nn.GroupNorm, nn.LayerNorm, nn.InstanceNorm2d)


@dataclass
class LayerInfo:
    name: str
    kind: str  # conv, pool, norm, fc
    module: str  # the module's class name
    out_shape: list[int]  # without the batch dimension
    kernel: list[int] | None = None
    stride: list[int] | None = None
    padding: list[int] | None = None
    params: int = 0
    receptive_field: list[int] | None = None  # conv: field size in input pixels (rows, cols)
    detail: str = ""  # pool type, norm type, groups ...


@dataclass
class Architecture:
    """Fig. 3 for one model: the input, then the layers in forward order."""

    input_shape: list[int]
    layers: list[LayerInfo] = field(default_factory=list)
    params: int = 0
    trainable: int = 0

    def to_json(self) -> dict:
        return {
            "input_shape": self.input_shape,
            "params": self.params,
            "trainable": self.trainable,
            "layers": [asdict(l) for l in self.layers],
        }


def _pair(v) -> list[int]:
    return list(v) if isinstance(v, (tuple, list)) else [int(v), int(v)]


def _info(name: str, m: nn.Module, out: torch.Tensor) -> LayerInfo | None:
    shape = list(out.shape[1:])
    own = sum(p.numel() for p in m.parameters(recurse=False))
    if isinstance(m, nn.Conv2d):
        return LayerInfo(
            name,
            "conv",
            type(m).__name__,
            shape,
            _pair(m.kernel_size),
            _pair(m.stride),
            _pair(m.padding) if not isinstance(m.padding, str) else [0, 0],
            own,
            detail=f"groups {m.groups}" if m.groups > 1 else "",
        )
    if isinstance(m, _POOLS):
        kind = "max" if "Max" in type(m).__name__ else "average"
        if isinstance(m, (nn.AdaptiveAvgPool2d, nn.AdaptiveMaxPool2d)):
            return LayerInfo(name, "pool", type(m).__name__, shape, detail=f"adaptive {kind}")
        return LayerInfo(
            name,
            "pool",
            type(m).__name__,
            shape,
            _pair(m.kernel_size),
            _pair(m.stride if m.stride is not None else m.kernel_size),
            _pair(m.padding),
            own,
            detail=kind,
        )
    if isinstance(m, _NORMS):
        detail = f"contrast norm. across {m.size} maps" if isinstance(m, nn.LocalResponseNorm) else type(m).__name__
        return LayerInfo(name, "norm", type(m).__name__, shape, params=own, detail=detail)
    if isinstance(m, nn.Linear):
        return LayerInfo(name, "fc", type(m).__name__, shape, params=own)
    return None


@dataclass(frozen=True)
class ArchitectureSettings(Settings):
    """Fig. 3 has no knob: the reading depends on the model and the input shape alone (kept for the house's one
    call shape: every method takes `settings=`)."""

    method: ClassVar[str] = "architecture"


@api
def architecture(
    model: nn.Module, images: torch.Tensor, *, settings: ArchitectureSettings | None = None
) -> Architecture:
    """Fig. 3 read off the model: one forward of a batch of model input shaped like `images` (zeros; eval
    mode, no grad) records every conv / pool / norm / fc layer it passes through, in order; a module that runs
    twice is listed once. Hooks and mode are restored on exit."""
    ArchitectureSettings.build(settings)
    if images.dim() != 4:
        raise UsageError(f"architecture takes a batch N x C x H x W (got shape {tuple(images.shape)})")
    input_shape = tuple(int(v) for v in images.shape[1:])
    seen: dict[str, LayerInfo] = {}
    names = {m: n for n, m in model.named_modules() if n}
    handles = []

    def record(name):
        def hook(module, inputs, output) -> None:
            if name not in seen and isinstance(output, torch.Tensor):
                info = _info(name, module, output)
                if info is not None:
                    seen[name] = info

        return hook

    try:
        for m, n in names.items():
            if not list(m.children()):
                handles.append(m.register_forward_hook(record(n)))
        device = model_device(model)
        with torch.no_grad(), eval_mode(model):
            model(torch.zeros(1, *input_shape, device=device))
    finally:
        for h in handles:
            h.remove()
    layers = list(seen.values())
    for info in layers:
        if info.kind == "conv":
            try:
                info.receptive_field = list(layer_field(model, info.name, tuple(input_shape)).size)
            except Exception:  # a layer whose geometry cannot be traced keeps no field
                info.receptive_field = None
    total = sum(p.numel() for p in model.parameters())
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    return Architecture(list(input_shape), layers, total, trainable)
