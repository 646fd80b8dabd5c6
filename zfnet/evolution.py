"""Feature evolution during training (Fig. 4): for chosen feature maps, the strongest activation across the
training set at each snapshot epoch, projected down to pixel space. "Sudden jumps in appearance result from a
change in the image from which the strongest activation originates."
"""
from __future__ import annotations

import glob
import json
import os
import re
from dataclasses import dataclass

import torch
from torch import nn

from . import data as zdata
from .atlas import scan, top_projections
from .deconvnet import Deconvnet
from .errors import UsageError
from .io import load_tensors
from .models import read_weights, weights_metadata
from .receptive_field import receptive_field


def find_snapshots(folder: str) -> list[tuple[int, str]]:
    """(epoch, path) of every `epoch-NNN.safetensors` in `folder` (a run's snapshots/ or the run itself)."""
    for cand in (os.path.join(folder, "snapshots"), folder):
        files = sorted(glob.glob(os.path.join(cand, "epoch-*.safetensors")))
        if files:
            return [(int(re.search(r"epoch-(\d+)", f).group(1)), f) for f in files]
    raise UsageError(f"no snapshots (epoch-NNN.safetensors) in {folder!r}; pass a `zfnet train` run folder")


def load_snapshot(model: nn.Module, path: str) -> None:
    """Load a snapshot; snapshots may hold the conv layers only (enough for every conv visualization)."""
    state = read_weights(path)
    own = model.state_dict()
    convs = [n for n, m in model.named_modules() if isinstance(m, nn.Conv2d)]
    missing = [f"{c}.weight" for c in convs if f"{c}.weight" not in state]
    wrong = [f"{c}.weight" for c in convs if c not in missing and state[f"{c}.weight"].shape != own[f"{c}.weight"].shape]
    if missing or wrong:
        raise UsageError(f"snapshot {path!r} {'lacks' if missing else 'has another shape for'} "
                         f"{(missing or wrong)[0]}; it was not made for this model (pass the matching --model)")
    # the classifier may differ (another class count): conv visualizations never read it
    model.load_state_dict({k: v for k, v in state.items() if k in own and v.shape == own[k].shape}, strict=False)


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
    from .layers import features

    with torch.no_grad():
        was = model.training
        model.eval()
        feats = features(model, torch.zeros(1, *shape, device=next(model.parameters()).device), layers)
        model.train(was)
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
    """For each snapshot: scan `dataset` for each chosen map's strongest activation and project it."""
    from .train import Dist

    cells: dict[str, dict[int, list]] = {l: {c: [] for c in channels[l]} for l in layers}
    for i, (epoch, path) in enumerate(snapshots):
        load_snapshot(model, path)
        meta_mean = load_tensors(path).get("preprocess/mean_image")
        pp = zdata.preprocess_for(model, meta_mean if meta_mean is not None else dataset.preprocess.mean_image)
        dataset.preprocess = pp
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
