"""Model zoo (Fig. 3, Table 2, a small-image family, any torchvision, timm or user CNN): `build(name)`, `names()`.

    >>> from zfnet import models
    >>> net = models.build("zfnet", num_classes=1000)          # Fig. 3
    >>> net = models.build("alexnet-rm34")                       # Table 2: AlexNet without layers 3,4
    >>> net = models.build("zfnet", conv_channels=(96, 256, 512, 1024, 512), fc_units=8192)
    >>> net = models.build("torchvision:vgg16")
    >>> net = models.build("timm:resnet18")                      # pip install zfnet[timm]
    >>> net = models.build("mynets:build")                       # your own: module:callable (uvicorn's convention)
Weights are read and loaded by `zfnet.weights` (`open_model`, `WeightsFile.load_into`); this room only builds.
"""

from __future__ import annotations

import importlib
import inspect
import os
import re
import sys
from collections.abc import Callable
from dataclasses import replace
from typing import Any

import torch
from torch import nn

from .. import usercode
from ..errors import UsageError
from ..layers import model_input_shape
from ..registry import Registry
from .alexnet import ALEXNET, ALEXNET_DENSE
from .convnet import (
    TABLE2_VARIANTS,
    Arch,
    ConvNet,
    remove_layers,
    set_conv_channels,
    set_fc_units,
)
from .families import Family, HubWeights, define, family
from .init import init_weights
from .small import SMALL
from .zfnet import ZFNET

__all__ = [
    "REGISTRY",
    "TABLE2_VARIANTS",
    "Arch",
    "ConvNet",
    "Family",
    "HubWeights",
    "family",
    "name_of",
    "build",
    "describe",
    "init_weights",
    "kind",
    "model_input_shape",
    "names",
    "num_outputs",
    "register",
    "user_callable",
]

REGISTRY: Registry[Callable[..., nn.Module]] = Registry(
    "model",
    hint=", torchvision:<name>, timm:<name> or module:callable (your own, e.g. mynets:build); "
    "run `zfnet models` for the table",
)

# name -> one-line description (the `zfnet models` table)
DESCRIPTIONS: dict[str, str] = {}


def register(name: str, description: str = ""):
    """Decorator: register a builder `fn(num_classes=..., **overrides) -> nn.Module` under `name`."""

    def add(fn):
        REGISTRY.register(name, fn)
        DESCRIPTIONS[name] = description
        return fn

    return add


def _first_layers(
    arch: Arch,
    first_layer: tuple[int, int, int] | None,
    second_stride: int | None,
    second_padding: int | None = None,
) -> Arch:
    """Sec. 4.1's architecture selection: conv1's (kernel, stride, padding), and conv2's stride (the paper moves
    stride 2 from ZFNet's conv1 to its conv2) and padding (so that both variants reach one resolution)."""
    if first_layer is not None:
        k, s, pad = (int(v) for v in first_layer)
        conv1 = arch.convs[0]
        assert conv1 is not None  # conv1 is never removed
        arch = arch.with_(convs=(replace(conv1, kernel=k, stride=s, padding=pad), *arch.convs[1:]))
    conv2 = arch.convs[1]
    if second_stride is not None and conv2 is not None:
        conv2 = replace(conv2, stride=int(second_stride))
    if second_padding is not None and conv2 is not None:
        conv2 = replace(conv2, padding=int(second_padding))
    return arch.with_(convs=(arch.convs[0], conv2, *arch.convs[2:]))


def _arch_builder(base: Arch, default_classes: int, transform=None):
    def build_arch(
        num_classes: int | None = None,
        *,
        in_channels: int | None = None,
        input_size: int | None = None,
        conv_channels: tuple[int, ...] | None = None,
        fc_units: int | tuple[int, int] | None = None,
        remove: tuple[str, ...] = (),
        norm: bool = True,
        dropout: float | None = None,
        init: str | None = None,
        seed: int | None = None,
        first_layer: tuple[int, int, int] | None = None,
        second_stride: int | None = None,
        second_padding: int | None = None,
    ) -> ConvNet:
        arch = _first_layers(transform(base) if transform else base, first_layer, second_stride, second_padding)
        if in_channels is not None:
            arch = arch.with_(in_channels=int(in_channels))
        if input_size is not None:
            arch = arch.with_(input_size=int(input_size))
        if conv_channels is not None:
            arch = set_conv_channels(arch, tuple(conv_channels))
        if fc_units is not None:
            arch = set_fc_units(arch, fc_units)
        if remove:
            arch = remove_layers(arch, tuple(remove))
        if not norm:  # no contrast normalization (e.g. to compare with tools that cannot skip it)
            arch = arch.with_(convs=tuple(None if c is None else replace(c, norm=False) for c in arch.convs))
        if dropout is not None:
            arch = arch.with_(dropout=float(dropout))
        if seed is not None:
            torch.manual_seed(seed)
        model = ConvNet(arch, default_classes if num_classes is None else int(num_classes))
        init_weights(model, init or arch.default_init)
        return model

    return build_arch


_BASES = {
    "zfnet": (ZFNET, 1000, "Zeiler & Fergus Fig. 3: 7x7/2 conv1, 5x5/2 conv2, dense 3-5"),
    "alexnet": (ALEXNET, 1000, "Krizhevsky et al. exactly: groups=2 in conv2, 4, 5 (Table 2's replication baseline)"),
    "zfnet-small": (SMALL, 10, "small-image family (28-64 px, grey or colour), trainable on a laptop"),
}
for _name, (_arch, _classes, _desc) in _BASES.items():
    register(_name, _desc)(_arch_builder(_arch, _classes))
    for _suffix, (_row, _fn) in TABLE2_VARIANTS.items():
        register(f"{_name}-{_suffix}", f"Table 2 '{_row}' of {_name}")(
            _arch_builder(_arch.with_(name=f"{_name}-{_suffix}"), _classes, _fn)
        )
register("alexnet-dense", "Krizhevsky et al. with dense layers 2-5 (no two-GPU towers)")(
    _arch_builder(ALEXNET_DENSE, 1000)
)
register("zfnet-small-rgb", "small-image family for 32x32 colour images (CIFAR-sized)")(
    _arch_builder(SMALL.with_(name="zfnet-small-rgb", in_channels=3, input_size=32), 10)
)
register("zfnet-small-64", "small-image family for 64x64 colour images")(
    _arch_builder(SMALL.with_(name="zfnet-small-64", in_channels=3, input_size=64), 10)
)


def names() -> list[str]:
    """Registered model names (torchvision models are reached as 'torchvision:<name>')."""
    return REGISTRY.names()


def user_callable(spec: str) -> Callable[..., Any]:
    """`package.module:callable` (the `module:attr` convention of uvicorn and gunicorn), imported from the
    working directory or PYTHONPATH."""
    module_name, _, attr = spec.partition(":")
    if not re.fullmatch(r"[A-Za-z_][\w]*(\.[A-Za-z_][\w]*)*", module_name) or not re.fullmatch(
        r"[A-Za-z_][\w]*(\.[A-Za-z_][\w]*)*", attr
    ):
        raise UsageError(f"--model {spec!r} is not module:callable (e.g. mynets:build or pkg.nets:Net)")
    if os.getcwd() not in sys.path and "" not in sys.path:
        sys.path.insert(0, os.getcwd())  # as `python -m` and uvicorn do: modules in the working directory
    try:
        obj: Any = importlib.import_module(module_name)
    except KeyboardInterrupt:
        raise
    except BaseException as e:  # noqa: BLE001 - ModuleNotFoundError, an error or sys.exit inside the module
        first = str(e).splitlines()[0] if str(e) else ""
        if isinstance(e, SystemExit):
            first = f"it called sys.exit({e.code!r}) on import"
        raise UsageError(
            f"cannot import {module_name!r} for --model {spec} ({type(e).__name__}: {first}); run zfnet from the "
            f"folder that holds {module_name.split('.')[0]}.py, or add that folder to PYTHONPATH"
        ) from None
    usercode.register(obj, spec)
    for part in attr.split("."):
        if not hasattr(obj, part):
            raise UsageError(f"module {module_name!r} has no {attr!r} (for --model {spec}); check the name after ':'")
        obj = getattr(obj, part)
    if not callable(obj):
        raise UsageError(f"--model {spec}: {attr} is not callable; name a function or class returning an nn.Module")
    return obj


def _user(spec: str, num_classes: int | None, **overrides: Any) -> nn.Module:
    fn = user_callable(spec)
    kwargs = dict(overrides)
    if num_classes is not None:
        try:
            params: Any = inspect.signature(fn).parameters
        except (TypeError, ValueError):
            params = {}
        if "num_classes" in params or any(p.kind is p.VAR_KEYWORD for p in params.values()):
            kwargs["num_classes"] = int(num_classes)
    try:
        with usercode.running(spec, "its builder"):  # an error inside the builder: named with where it was raised
            model = fn(**kwargs)
    except TypeError as e:  # the call itself did not fit the callable's signature
        raise UsageError(f"--model {spec}: calling it failed ({e}); it must build the model from keywords") from None
    if not isinstance(model, nn.Module):
        raise UsageError(f"--model {spec} returned a {type(model).__name__}, not a torch nn.Module")
    return model


def _zfnet(name: str, num_classes: int | None, **overrides: Any) -> nn.Module:
    builder = REGISTRY.get(name)
    try:
        return builder(num_classes, **overrides)
    except TypeError as e:  # an unknown override keyword
        raise UsageError(f"bad override for model {name!r}: {e}; see `zfnet models --help`") from None


ZFNET_FAMILY = define(Family("zfnet", "", _zfnet, starts_random=True, overrides=True))
USER = define(Family("user", "", _user, starts_random=False, overrides=False))


def kind(name: str) -> str:
    """Where model `name` comes from: 'zfnet' (the registry), 'torchvision', 'timm' or 'user' (module:callable)."""
    return family(name).name


def build(name: str, num_classes: int | None = None, **overrides: Any) -> nn.Module:
    """Build model `name` at its initialization: a registry name, 'torchvision:<name>', 'timm:<name>' or
    'module:callable' (a function or class of yours returning an nn.Module; it gets `num_classes=` when it
    takes it, and `overrides` as keywords).

    Overrides for the Fig. 3 family: in_channels, input_size, conv_channels (5 ints), fc_units (int or pair),
    remove (layer names), first_layer ((kernel, stride, padding) of conv1, Sec. 4.1), norm (contrast
    normalization on/off), dropout, init ('paper' | 'kaiming' | 'torch';
    default: the family's, 'paper' for zfnet/alexnet and 'kaiming' for the small family), seed.
    """
    f = family(name)
    model = f.build(f.arch(name), num_classes, **overrides)
    if f is not USER or not hasattr(model, "zfnet_name"):  # a user's module may name itself
        setattr(model, "zfnet_name", name)  # noqa: B010 - a plain attribute on the module, not a submodule
    return model


def name_of(model: nn.Module) -> str:
    """The name a model was built under (`build`), else its class name (a module a Python user built)."""
    return str(getattr(model, "zfnet_name", "") or type(model).__name__)


def describe(name: str, **overrides: Any) -> dict[str, Any]:
    """One row of the `zfnet models` table: input size, parameters and the output size of each named layer.
    Built on the meta device: shapes and counts without allocating or initialising any weights."""
    with torch.device("meta"):
        return _describe(name, **overrides)


def _describe(name: str, **overrides: Any) -> dict[str, Any]:
    model = build(name, init="torch", **overrides) if family(name) is ZFNET_FAMILY else build(name, **overrides)
    c, h, w = model_input_shape(model)
    row: dict[str, Any] = {
        "name": name,
        "input": f"{c}x{h}x{w}",
        "parameters": sum(p.numel() for p in model.parameters()),
        "description": DESCRIPTIONS.get(name, f"{kind(name)} model"),
    }
    if isinstance(model, ConvNet):
        row["layers"] = {k: list(v) for k, v in model.layer_shapes().items() if k.startswith(("conv", "pool", "fc"))}
    return row


def num_outputs(model: nn.Module) -> int | None:
    """How many classes the model predicts: a zfnet model's class count, else the last Linear's outputs."""
    if isinstance(model, ConvNet):
        return model.num_classes
    last = [m for m in model.modules() if isinstance(m, nn.Linear)]
    return last[-1].out_features if last else None
