"""Feature evolution during training (Fig. 4): for chosen feature maps, the strongest activation across the
training set at each snapshot epoch, projected down to pixel space. "Sudden jumps in appearance result from a
change in the image from which the strongest activation originates."
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar

import torch
from torch import nn

from .. import data as zdata
from ..calling import api
from ..checkpoints import load_snapshot
from ..layers import features
from ..receptive_field import layer_field
from ..runtime import Dist, eval_mode, model_device
from ..settings import Settings, knob
from ..weights import WeightsFile
from .atlas import default_layers, scan, top_projections
from .deconvnet import RULE_HELP, Deconvnet, Rule


@dataclass
class Evolution:
    """Fig. 4's grid: per layer and chosen map, one cell per snapshot epoch."""

    epochs: list[int]
    layers: dict[str, list[int]]  # layer -> channels shown
    # layer -> channel -> per epoch: (projection field, patch, value, image index)
    cells: dict[str, dict[int, list[tuple[torch.Tensor, torch.Tensor, float, int]]]]
    ids: dict[int, str]  # image index -> the dataset's id of that image
    settings: EvolutionSettings = field(default_factory=lambda: EvolutionSettings())
    maps: dict[str, dict] = field(default_factory=dict)  # layer -> the tensor read (`zfnet.layers.read_maps`)

    def to_json(self) -> dict:
        return {
            "settings": self.settings.to_json(),
            "feature_maps": self.maps,
            "epochs": self.epochs,
            "layers": {
                layer: {
                    str(c): [
                        {"epoch": e, "value": v, "image": i, "id": self.ids.get(i)}
                        for e, (_, _, v, i) in zip(self.epochs, cells)
                    ]
                    for c, cells in chans.items()
                }
                for layer, chans in self.cells.items()
            },
        }


def choose_channels(model: nn.Module, layers: list[str], per_layer: int, seed: int, shape) -> dict[str, list[int]]:
    """'a randomly chosen subset of model features' (Fig. 4): `per_layer` maps per layer, fixed by `seed`."""
    with torch.no_grad(), eval_mode(model):
        feats = features(model, torch.zeros(1, *shape, device=model_device(model)), layers)
    g = torch.Generator().manual_seed(seed)
    out = {}
    for layer in layers:
        c = feats[layer].shape[1]
        out[layer] = sorted(torch.randperm(c, generator=g)[: min(per_layer, c)].tolist())
    return out


@dataclass(frozen=True)
class EvolutionSettings(Settings):
    """Fig. 4's settings: which layers, how many maps of each (drawn with `seed` unless `channels=` names them),
    and the rectification of the projections."""

    method: ClassVar[str] = "evolution"
    renamed: ClassVar[dict[str, str]] = {"mode": "rule"}

    layers: tuple[str, ...] | None = knob(None, "layers shown (none: conv1..conv5, or each stage's last layer)")
    maps: int = knob(8, "feature maps per layer, drawn at random with seed (Fig. 4 shows a few per layer)", low=1)
    seed: int = knob(0, "the random draw of the maps", low=0)
    rule: Rule = knob("deconvnet", RULE_HELP, aliases=("--mode",))


def _add_cells(net, rule, ds, pp, result, channels: dict, cells: dict, shape, device) -> set[int]:
    """One snapshot's column of Fig. 4: each chosen map's strongest activation projected (appended to `cells`);
    the images they came from."""
    seen = set()
    with Deconvnet(net, rule=rule) as dn:
        for layer, chosen in channels.items():
            tk = result.top[layer]
            proj = top_projections(dn, ds, pp, tk, layer, chosen, layer_field(net, layer, shape), device)
            for c in chosen:
                fields, patches = proj[c]
                cells[layer][c].append((fields[0], patches[0], float(tk.values[0, c]), int(tk.images[0, c])))
                seen.add(int(tk.images[0, c]))
    return seen


@api
def evolution(
    model: nn.Module,
    images: torch.Tensor | zdata.ImageSet,
    *,
    snapshots: Sequence[tuple[int, str | WeightsFile]],
    channels: dict[str, list[int]] | None = None,
    settings: EvolutionSettings | None = None,
    batch_size: int = 256,
    workers: int = 0,
    progress: bool = False,
    device: torch.device | str | None = None,
    **changes: Any,
) -> Evolution:
    """Fig. 4: for each snapshot (epoch, weights file), the strongest activation of each chosen map across
    `images` (the training set: a dataset, or a batch of model input), projected down. The maps are `channels`
    (layer -> maps), else `maps` per layer drawn with `seed`. Each snapshot is fed with the preprocessing stored
    in it (its own mean image), else the dataset's. `model` gives the architecture and is left as it was (the
    snapshots are loaded into a copy). Settings (`EvolutionSettings`) as a value or as keywords."""
    s = EvolutionSettings.build(settings, **changes)
    maps, seed = s.maps, s.seed
    ds = zdata.as_image_set(images)
    device = torch.device(device) if device is not None else model_device(model)
    net = copy.deepcopy(model)
    pp0 = ds.preprocess
    shape = (pp0.channels, pp0.input_size, pp0.input_size)
    layers = list(s.layers or default_layers(net, shape))
    channels = channels or choose_channels(net, layers, maps, seed, shape)
    cells: dict[str, dict[int, list]] = {l: {c: [] for c in channels[l]} for l in layers}
    seen: set[int] = set()
    for i, (epoch, snap) in enumerate(snapshots):
        wf = load_snapshot(net, snap)
        stored = wf.preprocess(net)
        pp = pp0 if stored is None or stored.mean_image is None else pp0.with_mean(stored.mean_image)
        result = scan(
            net,
            ds,
            layers=layers,
            k=1,
            preprocess=pp,
            batch_size=batch_size,
            workers=workers,
            progress=progress,
            dist=Dist(device=device),
            desc=f"evolution: epoch {epoch} ({i + 1}/{len(snapshots)})",
            fired_only=False,  # a map silent at an early epoch shows its zero: the cell the figure keeps
        )
        chosen = {l: channels[l] for l in layers}
        seen |= _add_cells(net, s.rule, ds, pp, result, chosen, cells, shape, device)
    return Evolution(
        [e for e, _ in snapshots],
        {l: channels[l] for l in layers},
        cells,
        {i: ds.image_id(i) for i in sorted(seen) if i >= 0},
        s,
        result.maps if snapshots else {},
    )
