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

import torch
from torch import nn

from ..checkpoints import EMBEDDED_FOLDER, embedded_folder, find_snapshots, open_model
from ..data import Preprocess

NAME = "zfnet-small"
FOLDER = EMBEDDED_FOLDER


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
    return embedded_folder()


def pretrained(device: str | torch.device = "cpu") -> Pretrained:
    """The embedded Fashion-MNIST model (eval mode), its class names and preprocessing."""
    opened = open_model(pretrained=True, device=device)
    root = folder()

    def read(name: str) -> dict:
        path = os.path.join(root, name)
        if not os.path.isfile(path):
            return {}
        with open(path) as f:
            return json.load(f)

    metrics = read("metrics.json")
    snaps = find_snapshots(root) if os.path.isdir(os.path.join(root, "snapshots")) else []
    snaps.append((int(metrics["epochs"]), opened.weights))  # the last epoch is the model itself (as in a run)
    return Pretrained(opened.model, opened.classes or [], opened.preprocess, opened.name, opened.weights,
                      read("recipe.json"), metrics, snaps)
