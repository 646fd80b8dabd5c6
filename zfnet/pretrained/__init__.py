"""The embedded default model: the small-image ZFNet trained on Fashion-MNIST with `zfnet train` and the
recipe in fashion_mnist/recipe.json (README: 'The laptop model'), with its training snapshots (conv layers
only, enough for every visualization of Fig. 4).

    >>> p = zfnet.pretrained()
    >>> p.model, p.classes, p.preprocess     # eval-mode model, class names, Sec. 3 preprocessing
    >>> x = p.preprocess(images)             # PIL images / uint8 arrays or tensors -> the model's input
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from importlib import resources

import torch
from torch import nn

from ..checkpoints import find_snapshots
from ..data import Preprocess
from ..errors import UsageError
from ..weights import Opened, WeightsFile, open_model

NAME = "zfnet-small"  # the embedded default's architecture (README: 'The laptop model')
FOLDER = "fashion_mnist"
EMBEDDED_DATA = "fashion-mnist-mini"  # the bundled images it is shown on
EMBEDDED_PARTS = "parts-ankle-boot.json"  # the shipped correspondence parts file


@dataclass
class Pretrained:
    model: nn.Module
    classes: list[str]
    preprocess: Preprocess  # the preprocessing stored in the weights file (fit, sizes, mean image)
    name: str
    weights_path: str
    recipe: dict
    metrics: dict
    snapshots: list[tuple[int, str]] = field(default_factory=list)


def folder() -> str:
    """The embedded model's folder inside the installed package."""
    return str(resources.files("zfnet") / "pretrained" / FOLDER)


def weights_path() -> str:
    path = os.path.join(folder(), "model.safetensors")
    if not os.path.isfile(path):
        raise UsageError(
            f"the embedded model is missing ({path}); reinstall zfnet or retrain it (README: 'The laptop model')"
        )
    return path


def _read(name: str) -> dict:
    path = os.path.join(folder(), name)
    if not os.path.isfile(path):
        return {}
    with open(path, encoding="utf-8") as f:
        got = json.load(f)
    return got if isinstance(got, dict) else {}


def snapshots() -> list[tuple[int, str]]:
    """(epoch, path) of the embedded run's snapshots, the last epoch being the model itself (as in a run);
    reads no weights."""
    root = folder()
    snaps = find_snapshots(root) if os.path.isdir(os.path.join(root, "snapshots")) else []
    snaps.append((int(_read("metrics.json").get("epochs", len(snaps) + 1)), weights_path()))
    return snaps


def open_embedded(
    device: str | torch.device = "cpu",
    mean: str | None = None,
    data: str | None = None,
    split: str | None = None,
    workers: int = 0,
    weights: WeightsFile | None = None,
) -> Opened:
    """The embedded model as an `Opened` (what `--pretrained` opens)."""
    return open_model(
        NAME, weights or weights_path(), device=device, mean=mean, data=data, split=split, workers=workers
    )


def pretrained(device: str | torch.device = "cpu") -> Pretrained:
    """The embedded Fashion-MNIST model (eval mode), its class names and preprocessing."""
    opened = open_embedded(device)
    return Pretrained(
        opened.model,
        opened.classes or [],
        opened.preprocess,
        opened.name,
        opened.weights or "",
        _read("recipe.json"),
        _read("metrics.json"),
        snapshots(),
    )
