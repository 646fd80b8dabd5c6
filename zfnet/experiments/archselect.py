"""Architecture selection (Sec. 4.1, Fig. 5): the same data trained with layers 1-2 like Krizhevsky's (large
filters, large stride in layer 1, stride 1 in layer 2) and like ZFNet's ("reduced the 1st layer filter size from
11x11 to 7x7 and made the stride of the convolution 2, rather than 4" - and conv2 stride 2, Fig. 3), each with
feature scale clipping on and off; then, per run, the first layer's dead and dominant filters, how much aliasing
its second layer shows, and the accuracy.

Layers 1-2: (conv1 kernel, stride, padding) and conv2's stride and padding. The paper's pair on 224 px images:
Krizhevsky 11x11/4 (padding 4) then conv2 stride 1 (padding 1), ZFNet 7x7/2 (padding 1) then conv2 stride 2
(padding 0) - both reach 26 after conv2 and 13 after conv3-5 on either base (zfnet, alexnet), as ZFNet does; the
stride only moves from layer 1 to layer 2. The paddings are chosen for that (with the paper's 11x11/4 padding 2
and conv2 padding 0, the Krizhevsky-like variant of ZFNet would reach 23 and 11). For the small family (28-64
px; its own conv1 5x5/1): Krizhevsky-like 7x7/2 then conv2 stride 1, ZFNet-like 5x5/1 then conv2 stride 2 -
again the same resolution from layer 2 on (7 and 3 at 28 px).

Aliasing in layer 2 (Fig. 5(d)): for every layer-2 map, its strongest activation over the scanned images is
projected to pixels (deconvnet); the measure is the share of each projection's spectral power (mean removed)
above the Nyquist frequency of the coarser first-layer grid, 1 / (2 x its stride) cycles/px (0.125 for the
paper's stride 4, 0.25 for the small family's stride 2), averaged over maps. A large first-layer stride folds
detail it cannot sample into grid-like artefacts at and above that frequency, i.e. a larger share. Power
exactly on the cutoff (where a coarser grid's harmonics can sit) counts half, as a DFT's Nyquist bin belongs
half to each band, so that no spectral peak flips the measure by rounding.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field

import torch

from .. import data as zdata
from ..layers import layer_names
from ..methods.atlas import scan, top_projections
from ..methods.deconvnet import Deconvnet
from ..methods.filters import FilterReport, analyse, first_conv
from ..readback import Finite, read_json
from ..receptive_field import layer_field
from ..recipe import Recipe, RunOptions
from ..weights import open_model
from .runs import finished, train_runs

SECOND_PADDING = {"paper": {"krizhevsky-like": 1, "zfnet-like": 0}}  # conv2's: one resolution from layer 2 on
FIRST_LAYERS = {  # name -> ((conv1 kernel, stride, padding), conv2 stride)
    "small": {"krizhevsky-like": ((7, 2, 3), 1), "zfnet-like": ((5, 1, 2), 2)},
    "paper": {"krizhevsky-like": ((11, 4, 4), 1), "zfnet-like": ((7, 2, 1), 2)},
}


def scale(model: str) -> str:
    """Which of Sec. 4.1's first-layer pairs a zfnet model takes: the small-image family's or the paper's."""
    return "small" if model.startswith("zfnet-small") else "paper"


def cutoff(model: str) -> float:
    """The aliasing measure's cutoff: the Nyquist frequency of the coarser first-layer grid (cycles/px)."""
    pair = FIRST_LAYERS[scale(model)]
    return 1.0 / (2 * max(first[1] for first, _ in pair.values()))


def configs(model: str) -> dict[str, tuple[tuple[int, int, int], int, bool]]:
    """run name -> (first layer, conv2 stride, clipping on) for the four runs."""
    pair = FIRST_LAYERS[scale(model)]
    out = {}
    for name, (first, second) in pair.items():
        out[name] = (first, second, True)
        out[f"{name}-noclip"] = (first, second, False)
    return out


def recipes(base: Recipe) -> dict[str, Recipe]:
    family = scale(base.model)
    out = {}
    for name, (first, second, clip) in configs(base.model).items():
        overrides = {**base.model_overrides, "first_layer": list(first), "second_stride": second}
        padding = SECOND_PADDING.get(family, {}).get(name.removesuffix("-noclip"))
        if padding is not None:
            overrides["second_padding"] = padding
        out[name] = base.replace(model_overrides=overrides, clip_radius=base.clip_radius if clip else None)
    return out


def high_frequency_share(x: torch.Tensor, cut: float = 0.25) -> torch.Tensor:
    """Per image (N x C x H x W): share of spectral power (mean removed, summed over channels) above `cut`
    cycles/px; power on the cutoff (to 1e-9) counts half."""
    x = x.double()
    x = x - x.mean(dim=(-1, -2), keepdim=True)
    power = torch.fft.fft2(x).abs().pow(2).sum(1)  # N x H x W
    h, w = x.shape[-2:]
    radius = (torch.fft.fftfreq(h).double().view(-1, 1) ** 2 + torch.fft.fftfreq(w).double().view(1, -1) ** 2).sqrt()
    weight = (radius > cut + 1e-9).double() + 0.5 * ((radius - cut).abs() <= 1e-9).double()
    total = power.flatten(1).sum(1).clamp_min(1e-30)
    return (power * weight).flatten(1).sum(1) / total


@dataclass
class RunAnalysis:
    name: str
    first_layer: tuple[int, int, int]
    second_stride: int
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
            "second_stride": self.second_stride,
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
    second = int(overrides.get("second_stride", 1))
    opened = open_model(recipe.model, os.path.join(folder, "model.safetensors"), device=device, overrides=overrides)
    model, pp = opened.model, opened.preprocess
    ds = zdata.open_dataset(recipe.data, recipe.val_split, pp).head(limit)
    names = layer_names(model)
    convs = [n for n in names if isinstance(dict(model.named_modules())[n], torch.nn.Conv2d)]
    first, layer2 = convs[0], convs[1]
    result = scan(model, ds, layers=[first, layer2], k=1, workers=0, progress=False)
    conv = first_conv(model)
    report = analyse(conv.weight, result.top[first].values[0])
    tk = result.top[layer2]
    rf = layer_field(model, layer2, (pp.channels, pp.input_size, pp.input_size))
    chans = list(range(tk.values.shape[1]))
    with Deconvnet(model) as dn:
        proj = top_projections(dn, ds, pp, tk, layer2, chans, rf, torch.device(device))
    fields = torch.stack([proj[c][0][0] for c in chans])
    path = os.path.join(folder, "metrics.json")
    fix = f"delete the run folder {folder} to retrain it"
    err = read_json(path, {"val": {"centre": {"top1_err": Finite}}}, fix=fix)["val"]["centre"]["top1_err"]
    first_layer = tuple(recipe.model_overrides["first_layer"])
    share = high_frequency_share(fields, cutoff(recipe.model))
    return RunAnalysis(name, first_layer, second, recipe.clip_radius is not None, err, report, layer2, fields, share)


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


__all__ = ["FIRST_LAYERS", "RunAnalysis", "analyse_run", "configs", "cutoff", "high_frequency_share", "recipes", "run"]
