"""The 8-layer convnet family of Sec. 2 / Fig. 3: five conv layers, two fully connected layers, C-way softmax.

One layer table (`Arch`) describes ZFNet, Krizhevsky's grouped AlexNet, the small-image family and every
Table 2 variant; `ConvNet` builds it as a flat `nn.Sequential` whose children carry the paper's names
(`conv1` ... `conv5`, `fc6`, `fc7`, `fc8`), so `dict(model.named_modules())["conv3"]` is layer 3.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass, replace

import torch
import torch.nn.functional as F
from torch import nn
from torch.overrides import has_torch_function_unary

from ..errors import UsageError
from ..layers import local_response_norm


@dataclass(frozen=True)
class Conv:
    """One convolutional layer of the table (sizes in pixels of the layer's input map)."""

    out: int  # feature maps
    kernel: int  # filter size
    stride: int = 1
    padding: int = 0
    pool: bool = False  # 3x3 max-pool, stride 2, after the ReLU
    norm: bool = False  # contrast normalization across feature maps
    groups: int = 1  # 2: Krizhevsky et al.'s two GPU towers (each half of the maps sees only its half of the input)


@dataclass(frozen=True)
class Arch:
    """A layer table for the Fig. 3 family."""

    name: str
    in_channels: int
    input_size: int  # square input, pixels
    convs: tuple[Conv | None, ...]  # conv1..conv5; None marks a layer removed (Table 2)
    fcs: tuple[int | None, int | None]  # fc6, fc7 units; None marks a layer removed (Table 2)
    # ZFNet (Fig. 3) pools, then normalizes; Krizhevsky et al. normalize, then pool.
    norm_before_pool: bool = False
    dropout: float = 0.5  # on fc6 and fc7 (Sec. 3)
    # Contrast normalization across maps: Krizhevsky et al. Sec. 3.3 (n=5, alpha=1e-4, beta=0.75, k=2),
    # with PyTorch's (and Caffe's) convention of dividing alpha by n.
    lrn: tuple[int, float, float, float] = (5, 1e-4, 0.75, 2.0)
    # Overlapping 3x3 stride-2 pooling; ceil rounding gives Fig. 3's 110->55 and 26->13 exactly.
    pool_kernel: int = 3
    pool_stride: int = 2
    pool_ceil: bool = True
    # Pixel range fed to the model: 255 = raw pixels, "roughly in the [-128,128] range" after the mean (Sec. 3).
    pixel_scale: float = 255.0
    # Initialization used when none is asked for (see zfnet.models.init): the paper's N(0, 1e-2) for the paper's
    # models; the small family overrides it because it does not train from there.
    default_init: str = "paper"

    def with_(self, **changes) -> Arch:
        return replace(self, **changes)


class LocalResponseNorm(nn.LocalResponseNorm):
    """Sec. 3's contrast normalization across maps, `nn.LocalResponseNorm`'s formula, summed as shifted channel
    slices (`zfnet.layers.local_response_norm`, twice as fast on CPU as torch's 3-D average pool). Under a torch
    function mode (the deconvnet's rules, the site tracer) it is `F.local_response_norm`, so they see it."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() != 4 or has_torch_function_unary(x):
            return F.local_response_norm(x, self.size, self.alpha, self.beta, self.k)
        return local_response_norm(x, self.size, self.alpha, self.beta, self.k)


class MaxPool2d(nn.MaxPool2d):
    """Sec. 3's overlapping max pooling, taken in channels-last on CPU (vectorized there, 2-4x faster; a maximum
    is exact in any layout) and handed back contiguous, 4 MiB of input at a time. Under autograd it pools in the
    input's own layout: the chunks' slices and copies cost the backward more than the layout gains. Under a torch
    function mode (the deconvnet records its switches) it is `F.max_pool2d` itself."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        plain = x.dim() != 4 or self.return_indices or has_torch_function_unary(x) or x.is_cuda
        if plain or (torch.is_grad_enabled() and x.requires_grad):
            return super().forward(x)
        k, s, p, d = self.kernel_size, self.stride, self.padding, self.dilation
        step = max(1, (4 << 20) // max(1, x[0].numel() * x.element_size()))  # 4 MiB of input at a time: no peak
        parts = []
        for i in range(0, x.shape[0], step):
            fast = x[i : i + step].to(memory_format=torch.channels_last)
            parts.append(F.max_pool2d(fast, k, s, p, d, ceil_mode=self.ceil_mode).contiguous())
        return parts[0] if len(parts) == 1 else torch.cat(parts)


def _conv_layers(arch: Arch) -> OrderedDict[str, nn.Module]:
    """conv1 .. pool5 of the table, named as in the paper."""
    layers: OrderedDict[str, nn.Module] = OrderedDict()
    c_in = arch.in_channels
    n, alpha, beta, k = arch.lrn
    for i, conv in enumerate(arch.convs, start=1):
        if conv is None:
            continue
        groups = conv.groups if c_in % conv.groups == 0 and conv.out % conv.groups == 0 else 1
        layers[f"conv{i}"] = nn.Conv2d(c_in, conv.out, conv.kernel, conv.stride, conv.padding, groups=groups)
        layers[f"relu{i}"] = nn.ReLU()
        steps = [("pool", conv.pool), ("norm", conv.norm)]
        for kind, on in reversed(steps) if arch.norm_before_pool else steps:
            if on and kind == "pool":
                layers[f"pool{i}"] = MaxPool2d(arch.pool_kernel, arch.pool_stride, ceil_mode=arch.pool_ceil)
            elif on:
                layers[f"norm{i}"] = LocalResponseNorm(n, alpha, beta, k)
        c_in = conv.out
    return layers


class Flatten(nn.Flatten):
    """Flatten that names the input size when the conv stack's output does not fit fc6."""

    def __init__(self, expected: tuple[int, int, int], arch: Arch) -> None:
        super().__init__()
        self.expected = expected
        self._arch = arch

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if tuple(x.shape[1:]) != self.expected:
            a = self._arch
            raise UsageError(
                f"model {a.name!r} takes {a.in_channels}x{a.input_size}x{a.input_size} input, but the conv layers "
                f"gave {tuple(x.shape[1:])} instead of {self.expected}; resize the images to "
                f"{a.input_size}x{a.input_size} (or build the model with input_size=...)"
            )
        return super().forward(x)


def _pooled(n: int, kernel: int, stride: int, ceil: bool) -> int:
    """A max pool's output side, torch's rule: with ceil rounding, the last window must start inside the map."""
    if n < kernel:
        return 0
    out = -(-(n - kernel) // stride) + 1 if ceil else (n - kernel) // stride + 1
    return out - 1 if ceil and (out - 1) * stride >= n else out


def conv_output_shape(arch: Arch) -> tuple[int, int, int]:
    """pool5's output (maps, side, side) by the layers' size arithmetic (no forward: building a model costs no
    tensor work); a side below 1 means the input is too small for the table."""
    c, n = arch.in_channels, arch.input_size
    for conv in arch.convs:
        if conv is None:
            continue
        c, n = conv.out, (n + 2 * conv.padding - conv.kernel) // conv.stride + 1
        if conv.pool and n > 0:
            n = _pooled(n, arch.pool_kernel, arch.pool_stride, arch.pool_ceil)
    return (c, max(n, 0), max(n, 0))


class ConvNet(nn.Sequential):
    """A Fig. 3-style convnet built from an `Arch` table; children are named as in the paper."""

    def __init__(self, arch: Arch, num_classes: int) -> None:
        shape = conv_output_shape(arch)
        if min(shape) < 1:
            raise UsageError(f"input size {arch.input_size} is too small for {arch.name!r}; use a larger input_size")
        layers = _conv_layers(arch)
        layers["flatten"] = Flatten(shape, arch)
        width = shape[0] * shape[1] * shape[2]
        for i, units in zip((6, 7), arch.fcs):
            if units is None:
                continue
            layers[f"fc{i}"] = nn.Linear(width, units)
            layers[f"relu{i}"] = nn.ReLU()
            layers[f"drop{i}"] = nn.Dropout(arch.dropout)
            width = units
        layers["fc8"] = nn.Linear(width, num_classes)
        super().__init__(layers)
        self.arch = arch
        self.num_classes = num_classes

    @property
    def input_shape(self) -> tuple[int, int, int]:
        a = self.arch
        return (a.in_channels, a.input_size, a.input_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() != 4 or x.shape[1] != self.arch.in_channels:
            c, h, w = self.input_shape
            raise UsageError(
                f"model {self.arch.name!r} takes N x {c} x {h} x {w} images, got {tuple(x.shape)}; "
                f"convert the images to {c} channel(s) and {h}x{w} pixels"
            )
        return super().forward(x)

    def layer_shapes(self) -> OrderedDict[str, tuple[int, ...]]:
        """Output shape (without batch) of every named child, computed on the meta device."""
        out: OrderedDict[str, tuple[int, ...]] = OrderedDict()
        with torch.device("meta"):
            x = torch.zeros(1, *self.input_shape)
            for name, module in ConvNet(self.arch, self.num_classes).named_children():
                x = module(x)
                out[name] = tuple(x.shape[1:])
        return out


# --- Table 2: architectural changes, as transforms of a base table -----------------------------------


def remove_layers(arch: Arch, names: tuple[str, ...]) -> Arch:
    """Table 2 'Removed layers ...': drop conv3/conv4/fc6/fc7 (the pooling of a removed conv moves nowhere:
    only conv1, conv2 and conv5 pool in the Fig. 3 family, and they are never removed)."""
    convs = list(arch.convs)
    fcs = list(arch.fcs)
    for name in names:
        if name in ("conv3", "conv4"):
            convs[int(name[-1]) - 1] = None
        elif name in ("fc6", "fc7"):
            fcs[int(name[-1]) - 6] = None
        else:
            raise UsageError(f"cannot remove layer {name!r}; Table 2 removes conv3, conv4, fc6 or fc7")
    return arch.with_(convs=tuple(convs), fcs=(fcs[0], fcs[1]))


def set_conv_channels(arch: Arch, channels: tuple[int, ...]) -> Arch:
    if len(channels) != 5:
        raise UsageError(f"conv_channels needs 5 numbers (conv1..conv5), got {len(channels)}")
    convs = tuple(None if c is None else replace(c, out=int(n)) for c, n in zip(arch.convs, channels))
    return arch.with_(convs=convs)


def set_fc_units(arch: Arch, units: int | tuple[int, int]) -> Arch:
    u6, u7 = (units, units) if isinstance(units, int) else units
    fcs = (None if arch.fcs[0] is None else int(u6), None if arch.fcs[1] is None else int(u7))
    return arch.with_(fcs=fcs)


def scale_conv345(arch: Arch) -> Arch:
    """Table 2 'layers 3,4,5: 512,1024,512 maps' = 384->512, 384->1024, 256->512 (x4/3, x8/3, x2)."""
    factors = (1, 1, 4 / 3, 8 / 3, 2)
    convs = tuple(None if c is None else replace(c, out=round(c.out * f)) for c, f in zip(arch.convs, factors))
    return arch.with_(convs=convs)


def scale_fc(arch: Arch, factor: float) -> Arch:
    """Table 2 'layers 6,7: 2048 / 8192 units' = 4096 x 1/2 or x 2."""
    return arch.with_(fcs=tuple(None if u is None else int(u * factor) for u in arch.fcs))


# name suffix -> (Table 2 row, transform)
TABLE2_VARIANTS = {
    "rm34": ("Removed layers 3,4", lambda a: remove_layers(a, ("conv3", "conv4"))),
    "rm7": ("Removed layer 7", lambda a: remove_layers(a, ("fc7",))),
    "rm67": ("Removed layers 6,7", lambda a: remove_layers(a, ("fc6", "fc7"))),
    "rm3467": ("Removed layers 3,4,6,7", lambda a: remove_layers(a, ("conv3", "conv4", "fc6", "fc7"))),
    "fc2048": ("Adjust layers 6,7: 2048 units", lambda a: scale_fc(a, 0.5)),
    "fc8192": ("Adjust layers 6,7: 8192 units", lambda a: scale_fc(a, 2)),
    "wide345": ("Adjust layers 3,4,5: 512,1024,512 maps", scale_conv345),
    "fc8192-wide345": (
        "Layers 6,7: 8192 units and layers 3,4,5: 512,1024,512 maps",
        lambda a: scale_conv345(scale_fc(a, 2)),
    ),
}
