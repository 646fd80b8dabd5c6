"""The embedded default model: the small-image ZFNet trained on Fashion-MNIST with `zfnet train` and the
recipe in fashion_mnist/recipe.json (README: 'The laptop model'), with its training snapshots (conv layers
only, enough for every visualization of Fig. 4).

    >>> p = zfnet.pretrained()
    >>> p.model, p.classes, p.preprocess     # eval-mode model, class names, Sec. 3 preprocessing
"""
from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from importlib import resources

import torch
from torch import nn

from ..data import Preprocess, preprocess_for
from ..errors import UsageError

NAME = "zfnet-small"
FOLDER = "fashion_mnist"


@dataclass
class Pretrained:
    model: nn.Module
    classes: list[str]
    preprocess: Preprocess
    name: str
    weights_path: str
    recipe: dict
    metrics: dict
    snapshots: list[tuple[int, str]] = field(default_factory=list)


def folder() -> str:
    return str(resources.files("zfnet") / "pretrained" / FOLDER)


def pretrained(device: str | torch.device = "cpu") -> Pretrained:
    """The embedded Fashion-MNIST model (eval mode), its class names and preprocessing."""
    from ..evolution import find_snapshots
    from ..io import load_tensors
    from ..models import build, weights_metadata

    root = folder()
    weights = os.path.join(root, "model.safetensors")
    if not os.path.isfile(weights):
        raise UsageError(f"the embedded model is missing ({weights}); reinstall zfnet or retrain it "
                         "(README: 'The laptop model')")
    meta = weights_metadata(weights)
    model = build(NAME, weights=weights).to(device).eval()
    pp = preprocess_for(model, load_tensors(weights)["preprocess/mean_image"])

    def read(name: str) -> dict:
        path = os.path.join(root, name)
        if not os.path.isfile(path):
            return {}
        with open(path) as f:
            return json.load(f)

    metrics = read("metrics.json")
    snaps = find_snapshots(root) if os.path.isdir(os.path.join(root, "snapshots")) else []
    snaps.append((int(metrics["epochs"]), weights))  # the last epoch is the model itself (as in a run folder)
    return Pretrained(model, json.loads(meta["classes"]), pp, NAME, weights, read("recipe.json"), metrics, snaps)
