"""Architecture selection (Sec. 4.1, Fig. 5): the same data trained with a first layer like Krizhevsky's (large
filters, large stride) and like ZFNet's (smaller filters, smaller stride), each with feature scale clipping on and
off; then, per run, the first layer's dead and dominant filters, how much aliasing its second layer shows, and
the accuracy.

First layers (kernel, stride, padding). The paper compares 11x11 stride 4 (Krizhevsky) with 7x7 stride 2 (ZFNet)
on 224 px images; for the small family (28-64 px), whose own first layer is 5x5 stride 1, Krizhevsky-like is
7x7 stride 2 (larger filters, 2x the stride) and ZFNet-like is the family's 5x5 stride 1. Other models keep the
paper's pair. The Krizhevsky-like net sees its input at half the resolution from layer 1 on, as AlexNet does
relative to ZFNet at layer 1.

Aliasing in layer 2 (Fig. 5(d)): for every layer-2 map, its strongest activation over the scanned images is
projected to pixels (deconvnet); the measure is the share of each projection's spectral power (mean removed)
above half the Nyquist frequency (radial frequency > 0.25 cycles/px), averaged over maps. Aliasing from a large
first-layer stride shows as grid-like high-frequency artefacts, i.e. a larger share.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field

import torch

from .. import data as zdata
from ..layers import layer_names
from ..methods.atlas import scan, top_projections
from ..methods.deconvnet import Deconvnet
from ..methods.filters import FilterReport, analyse, first_conv
from ..receptive_field import layer_field
from ..recipe import Recipe, RunOptions
from ..weights import open_model
from .runs import finished, train_runs

FIRST_LAYERS = {
    "small": {"krizhevsky-like": (7, 2, 3), "zfnet-like": (5, 1, 2)},
    "paper": {"krizhevsky-like": (11, 4, 2), "zfnet-like": (7, 2, 1)},
}
HIGH = 0.25  # cycles/px: half the Nyquist frequency


def configs(model: str) -> dict[str, tuple[tuple[int, int, int], bool]]:
    """run name -> (first layer, clipping on) for the four runs."""
    pair = FIRST_LAYERS["small" if model.startswith("zfnet-small") else "paper"]
    out = {}
    for name, first in pair.items():
        out[name] = (first, True)
        out[f"{name}-noclip"] = (first, False)
    return out


def recipes(base: Recipe) -> dict[str, Recipe]:
    return {
        name: base.replace(
            model_overrides={**base.model_overrides, "first_layer": list(first)},
            clip_radius=base.clip_radius if clip else None,
        )
        for name, (first, clip) in configs(base.model).items()
    }


def high_frequency_share(x: torch.Tensor) -> torch.Tensor:
    """Per image (N x C x H x W): share of spectral power (mean removed, summed over channels) above HIGH."""
    x = x.double()
    x = x - x.mean(dim=(-1, -2), keepdim=True)
    power = torch.fft.fft2(x).abs().pow(2).sum(1)  # N x H x W
    h, w = x.shape[-2:]
    radius = (torch.fft.fftfreq(h).view(-1, 1) ** 2 + torch.fft.fftfreq(w).view(1, -1) ** 2).sqrt()
    total = power.flatten(1).sum(1).clamp_min(1e-30)
    return (power * (radius > HIGH)).flatten(1).sum(1) / total


@dataclass
class RunAnalysis:
    name: str
    first_layer: tuple[int, int, int]
    clipping: bool
    val_top1_err: float
    filters: FilterReport
    layer2: str
    layer2_projections: torch.Tensor = field(repr=False)  # maps x C x h x w, strongest activation of each map
    layer2_high_frequency: torch.Tensor = field(repr=False)  # per map

    def to_json(self) -> dict:
        s = self.filters.summary()
        return {
            "name": self.name,
            "first_layer": {
                "kernel": self.first_layer[0],
                "stride": self.first_layer[1],
                "padding": self.first_layer[2],
            },
            "clipping": self.clipping,
            "val_top1_err": self.val_top1_err,
            "filters": s,
            "layer2": self.layer2,
            "layer2_high_frequency_mean": float(self.layer2_high_frequency.mean()),
            "layer2_high_frequency_per_map": self.layer2_high_frequency.tolist(),
        }


def analyse_run(folder: str, name: str, recipe: Recipe, limit: int = 2000, device: str = "cpu") -> RunAnalysis:
    """Filters, layer-2 aliasing and accuracy of one finished run."""
    overrides = dict(recipe.model_overrides)
    overrides["first_layer"] = tuple(overrides["first_layer"])
    opened = open_model(recipe.model, os.path.join(folder, "model.safetensors"), device=device, overrides=overrides)
    model, pp = opened.model, opened.preprocess
    ds = zdata.open_dataset(recipe.data, recipe.val_split, pp).head(limit)
    names = layer_names(model)
    convs = [n for n in names if isinstance(dict(model.named_modules())[n], torch.nn.Conv2d)]
    first, second = convs[0], convs[1]
    result = scan(model, ds, layers=[first, second], k=1, workers=0, progress=False)
    conv = first_conv(model)
    report = analyse(conv.weight, result.top[first].values[0])
    tk = result.top[second]
    rf = layer_field(model, second, (pp.channels, pp.input_size, pp.input_size))
    chans = list(range(tk.values.shape[1]))
    with Deconvnet(model) as dn:
        proj = top_projections(dn, ds, pp, tk, second, chans, rf, torch.device(device))
    fields = torch.stack([proj[c][0][0] for c in chans])
    with open(os.path.join(folder, "metrics.json")) as f:
        err = json.load(f)["val"]["centre"]["top1_err"]
    first_layer = tuple(recipe.model_overrides["first_layer"])
    return RunAnalysis(
        name, first_layer, recipe.clip_radius is not None, err, report, second, fields, high_frequency_share(fields)
    )


def run(
    out: str,
    base: Recipe,
    *,
    options: RunOptions,
    progress: bool = True,
    on_logs=None,
    on_run=None,
    train: bool = True,
) -> list[RunAnalysis]:
    """Train the four runs that have not finished, then analyse every finished one."""
    rs = recipes(base)
    if train:
        train_runs(out, rs, options, progress, on_logs, on_run)
    return [analyse_run(os.path.join(out, n), n, r) for n, r in rs.items() if finished(os.path.join(out, n))]


__all__ = ["FIRST_LAYERS", "RunAnalysis", "analyse_run", "configs", "high_frequency_share", "recipes", "run"]
