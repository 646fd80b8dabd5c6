"""Feature evolution during training (Fig. 4): for chosen feature maps, the strongest activation across the
training set at each snapshot epoch, projected down to pixel space. "Sudden jumps in appearance result from a
change in the image from which the strongest activation originates."
"""
from __future__ import annotations

import json
from dataclasses import dataclass

import torch
from torch import nn

from .. import data as zdata
from ..checkpoints import load_snapshot, stored_preprocess
from ..models import weights_metadata
from ..receptive_field import receptive_field
from ..runtime import Dist, eval_mode
from .atlas import scan, top_projections
from .deconvnet import Deconvnet


@dataclass
class Evolution:
    epochs: list[int]
    layers: dict[str, list[int]]  # layer -> channels shown
    # layer -> channel -> per epoch: (projection field, patch, value, image index)
    cells: dict[str, dict[int, list[tuple[torch.Tensor, torch.Tensor, float, int]]]]

    def to_json(self, dataset: zdata.ImageSet) -> dict:
        return {"epochs": self.epochs, "layers": {
            layer: {str(c): [{"epoch": e, "value": v, "image": i, "id": dataset.image_id(i)}
                             for e, (_, _, v, i) in zip(self.epochs, cells)]
                    for c, cells in chans.items()} for layer, chans in self.cells.items()}}


def choose_channels(model: nn.Module, layers: list[str], per_layer: int, seed: int, shape) -> dict[str, list[int]]:
    """'a randomly chosen subset of model features' (Fig. 4): `per_layer` maps per layer, fixed by `seed`."""
    from ..layers import features

    with torch.no_grad(), eval_mode(model):
        feats = features(model, torch.zeros(1, *shape, device=next(model.parameters()).device), layers)
    g = torch.Generator().manual_seed(seed)
    out = {}
    for layer in layers:
        c = feats[layer].shape[1]
        out[layer] = sorted(torch.randperm(c, generator=g)[:min(per_layer, c)].tolist())
    return out


def evolution(model: nn.Module, snapshots: list[tuple[int, str]], dataset: zdata.ImageSet,
              layers: list[str], channels: dict[str, list[int]], batch_size: int = 256, workers: int = 4,
              mode: str = "deconvnet", progress: bool = True, device: torch.device = torch.device("cpu")) \
        -> Evolution:
    """For each snapshot: scan `dataset` for each chosen map's strongest activation and project it. Each
    snapshot is fed with the preprocessing stored in it (its own mean image), else the dataset's."""
    cells: dict[str, dict[int, list]] = {l: {c: [] for c in channels[l]} for l in layers}
    for i, (epoch, path) in enumerate(snapshots):
        load_snapshot(model, path)
        stored = stored_preprocess(path, model)
        pp = dataset.preprocess if stored is None or stored.mean_image is None else \
            dataset.preprocess.with_mean(stored.mean_image)
        result = scan(model, dataset, pp, layers, k=1, batch_size=batch_size, workers=workers,
                      progress=progress, dist=Dist(device=device),
                      desc=f"evolution: epoch {epoch} ({i + 1}/{len(snapshots)})")
        with Deconvnet(model, mode=mode) as dn:
            for layer in layers:
                tk = result.top[layer]
                rf = receptive_field(model, layer, (pp.channels, pp.input_size, pp.input_size))
                proj = top_projections(dn, dataset, pp, tk, layer, channels[layer], rf, device)
                for c in channels[layer]:
                    fields, patches = proj[c]
                    cells[layer][c].append((fields[0], patches[0], float(tk.values[0, c]), int(tk.images[0, c])))
    return Evolution([e for e, _ in snapshots], channels, cells)


def snapshot_metrics(path: str) -> dict:
    meta = weights_metadata(path)
    return json.loads(meta["metrics"]) if "metrics" in meta else {}
