"""Model families: where a model name comes from, as one record each (issue 34).

A name is zfnet's own (`zfnet`, `alexnet-rm34`, ...), `torchvision:<name>`, `timm:<name>` or a user's
`module:callable`. Everything that depends on the family (how to build it, whether it starts random, whether it
takes the Fig. 3 family's overrides, its class names, its published weights in torch hub's cache, renamed keys in
old weight files) is a field of its `Family` record, looked up once with `family(name)`; nothing else in zfnet
tests a name's prefix.
"""

from __future__ import annotations

import os
import re
import urllib.parse
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from ..data.preprocess import Preprocess
from ..errors import UsageError

_ENUM_NAME = re.compile(r"(?:\w+_Weights\.)?(DEFAULT|[A-Z][A-Z0-9_]*_V\d+|[A-Z][A-Z0-9_]*)")


@dataclass(frozen=True)
class HubWeights:
    """A torchvision weights enum member found in torch hub's cache: the file, its preprocessing and classes."""

    path: str
    preprocess: Preprocess
    classes: list[str] | None
    enum: str


def _none(arch: str, n: int | None) -> list[str] | None:
    return None


def _same(arch: str, state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return state


def _no_hub(arch: str, tag: str) -> HubWeights | None:
    return None


@dataclass(frozen=True)
class Family:
    """One source of models.

    prefix: what a name of the family starts with ('' for zfnet's registry; ':' anywhere for a user's callable).
    build: (the name without the prefix, class count or None, overrides) -> the module at its initialization.
    starts_random: its builders are known to start from random weights (a user's builder may load its own).
    overrides: it takes the Fig. 3 family's overrides (init, dropout, conv_channels, ... `models.build`).
    classes: (name without prefix, output count) -> the class names the family gives, or None.
    hub: (name without prefix, a weights tag such as IMAGENET1K_V1) -> its published weights in torch hub's cache,
        or None when the tag names no such weights (then it is a path).
    adapt: (name without prefix, a state dict) -> the state dict with old published key names renamed.
    """

    name: str
    prefix: str
    build: Callable[..., nn.Module]
    starts_random: bool
    overrides: bool
    classes: Callable[[str, int | None], list[str] | None] = _none
    hub: Callable[[str, str], HubWeights | None] = _no_hub
    adapt: Callable[[str, dict[str, torch.Tensor]], dict[str, torch.Tensor]] = _same

    def arch(self, name: str) -> str:
        """The name without the family's prefix."""
        return name[len(self.prefix) :] if self.prefix and name.startswith(self.prefix) else name

    def initial(self, name: str, seed: int) -> str:
        """What a model of this family is without a weights file, for the console and the report."""
        if self.starts_random:
            return f"at its random initialization (seed {seed})"
        return f"as its builder made it (torch seeded with {seed} first; no weights file given)"


# --- torchvision ---------------------------------------------------------------------------------------------------


def _torchvision(name: str, num_classes: int | None, **overrides: Any) -> nn.Module:
    import torchvision

    available = torchvision.models.list_models(module=torchvision.models)
    if name not in available:
        raise UsageError(f"unknown torchvision model {name!r}; known: {', '.join(sorted(available))}")
    if overrides:
        raise UsageError(
            f"torchvision:{name} takes no overrides ({', '.join(overrides)}); edit the model in Python instead"
        )
    kwargs = {} if num_classes is None else {"num_classes": int(num_classes)}
    return torchvision.models.get_model(name, weights=None, **kwargs)


def _torchvision_classes(arch: str, n: int | None) -> list[str] | None:
    """ImageNet-1k's names (the weights table's `meta["categories"]`) for an architecture with 1000 outputs."""
    import torchvision

    try:
        cats = torchvision.models.get_model_weights(arch).DEFAULT.meta.get("categories")
    except (ValueError, KeyError, AttributeError):
        cats = None
    return list(cats) if cats and len(cats) == n else None


def torchvision_weights(arch: str, tag: str) -> HubWeights | None:
    """`--weights IMAGENET1K_V1` (or DEFAULT, or ResNet18_Weights.IMAGENET1K_V1) for torchvision:`arch`: the file
    torch hub caches it as (`torch.hub.get_dir()/checkpoints/<the URL's file name>`), the enum's `transforms()`
    and `meta["categories"]`. Never downloads; a tag that is no member is None (then it is a path)."""
    if not _ENUM_NAME.fullmatch(tag):
        return None
    import torchvision

    try:
        enum = torchvision.models.get_model_weights(arch)
    except (ValueError, KeyError):
        return None
    member = tag.rsplit(".", 1)[-1]
    if member not in enum.__members__:
        raise UsageError(
            f"torchvision:{arch} has no weights {member!r}; known: {', '.join(enum.__members__)} (or a file path)"
        )
    w = enum[member]
    path = os.path.join(torch.hub.get_dir(), "checkpoints", os.path.basename(urllib.parse.urlparse(w.url).path))
    if not os.path.isfile(path):
        raise UsageError(
            f"{w} is not in torch hub's cache: put {w.url} at {path} (zfnet never downloads; "
            "TORCH_HOME moves the cache), or pass --weights FILE"
        )
    t = w.transforms()
    crop = int(t.crop_size[0])
    resize = int(t.resize_size[0]) if getattr(t, "resize_size", None) else round(crop * 256 / 224)
    pp = Preprocess(crop, resize, 3, "resize", 1.0, None, tuple(t.mean), tuple(t.std))
    cats = w.meta.get("categories")
    return HubWeights(path, pp, list(cats) if cats else None, str(w))


_DENSENET_KEY = re.compile(
    r"^(.*denselayer\d+\.(?:norm|relu|conv))\.((?:[12])\.(?:weight|bias|running_mean|running_var))$"
)


def _torchvision_adapt(arch: str, state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """torchvision's published DenseNet files name `norm.1` what the module calls `norm1` (its loader renames)."""
    if not arch.startswith("densenet"):
        return state
    out = {}
    for k, v in state.items():
        m = _DENSENET_KEY.match(k)
        out[m.group(1) + m.group(2) if m else k] = v
    return out


# --- timm ----------------------------------------------------------------------------------------------------------


def _timm(name: str, num_classes: int | None, **overrides: Any) -> nn.Module:
    try:
        import timm
    except ImportError:
        raise UsageError(f"timm:{name} needs timm: pip install 'zfnet[timm]' (or pip install timm)") from None
    if overrides:
        raise UsageError(f"timm:{name} takes no overrides ({', '.join(overrides)}); edit the model in Python instead")
    if not timm.list_models(name):
        raise UsageError(
            f"unknown timm model {name!r}; list them with python -c 'import timm; print(timm.list_models())'"
        )
    kwargs: dict[str, Any] = {} if num_classes is None else {"num_classes": int(num_classes)}
    return timm.create_model(name, pretrained=False, **kwargs)


def _timm_classes(arch: str, n: int | None) -> list[str] | None:
    """ImageNet-1k's names from timm's ImageNet info, for a model with 1000 outputs."""
    if n != 1000:
        return None
    from timm.data import ImageNetInfo

    return [d.split(",")[0] for d in ImageNetInfo().label_descriptions()]


# --- the table -----------------------------------------------------------------------------------------------------

_FAMILIES: list[Family] = []


def define(f: Family) -> Family:
    """Add a family (zfnet's own and the user's are added by `zfnet.models`, which holds their builders)."""
    _FAMILIES.append(f)
    return f


TORCHVISION = define(
    Family(
        "torchvision",
        "torchvision:",
        _torchvision,
        starts_random=True,
        overrides=False,
        classes=_torchvision_classes,
        hub=torchvision_weights,
        adapt=_torchvision_adapt,
    )
)
TIMM = define(Family("timm", "timm:", _timm, starts_random=True, overrides=False, classes=_timm_classes))


def family(name: str) -> Family:
    """The family of model `name`: the one whose prefix it starts with; a name with ':' otherwise is a user's
    `module:callable`, any other one zfnet's registry."""
    for f in _FAMILIES:
        if f.prefix and name.startswith(f.prefix):
            return f
    want = "user" if ":" in name else "zfnet"
    return next(f for f in _FAMILIES if f.name == want)


def families() -> list[Family]:
    """Every family, in lookup order."""
    return list(_FAMILIES)
