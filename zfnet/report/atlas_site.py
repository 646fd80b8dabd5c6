"""`zfnet atlas`: scan (Fig. 2 top-k), project, render, and write the web atlas into one folder.

OUT/manifest.json   per layer and channel the top-k {image, id, label, value, y, x}, plus model, weights hash,
                    dataset, settings, versions and wall time
OUT/maps/L/CCCC.png one sprite per map: row 0 the k projections, row 1 the k receptive-field patches
OUT/figures/L.png   Fig. 2 panels (a fixed random subset of maps per layer)
OUT/filters.png     Fig. 5: first-layer filters with RMS / dominance / dead / frequency (filters.json)
OUT/evolution/L.png Fig. 4, when training snapshots are given (evolution.json)
OUT/index.html      the viewer (works from the file system)

Every step skips what is already on disk for the same settings, so a killed run continues when rerun.
"""
from __future__ import annotations

import json
import os
import time
from dataclasses import asdict, dataclass, field

import torch

from .. import data as zdata
from ..atlas import (
    Scan,
    default_layers,
    fingerprint,
    manifest_layers,
    scan,
    top_projections,
)
from ..deconvnet import MODES, Deconvnet
from ..errors import UsageError
from ..io import atomic_write_json
from ..progress import bar
from ..provenance import environment, file_sha256
from ..receptive_field import receptive_field
from ..render import display_scale
from ..train import Dist, open_model, resolve_device, setup_processes, teardown
from . import figures
from .web import write_site


@dataclass(frozen=True)
class AtlasConfig:
    """Settings of one atlas (written into the manifest)."""

    out: str
    data: str
    model: str | None = None
    weights: str | None = None
    pretrained: bool = False
    split: str | None = None  # None: the dataset's evaluation split
    layers: tuple[str, ...] = ()  # () = conv1..conv5 (or every conv layer)
    k: int = 9  # top-k per map (Fig. 2: 9)
    mode: str = "deconvnet"
    limit: int | None = None  # scan only the first N images
    batch_size: int = 128
    workers: int = 4
    panel_maps: int = 16  # maps per Fig. 2 panel
    evolution: str | None = None  # training run folder with snapshots; "pretrained" for the embedded model's
    evolution_split: str = "train"  # Fig. 4 looks across the training set
    evolution_maps: int = 8  # maps per layer in Fig. 4
    evolution_limit: int | None = None  # training images scanned per snapshot (None: all)
    seed: int = 0  # which maps the panels and Fig. 4 show
    device: str = "auto"
    extra: dict = field(default_factory=dict)


def _model(cfg: AtlasConfig, device: torch.device):
    return open_model(cfg.model, cfg.weights, cfg.pretrained, device, cfg.seed)


def build_atlas(cfg: AtlasConfig, progress: bool = True) -> dict | None:
    """Run the whole atlas; returns the manifest (None on processes other than rank 0 under torchrun)."""
    from ..progress import set_enabled

    set_enabled(progress)
    if cfg.mode not in MODES:
        raise UsageError(f"--mode must be one of {', '.join(MODES)}")
    started = time.perf_counter()
    from ..recipe import Recipe

    dist = setup_processes(Recipe(device=cfg.device)) if int(os.environ.get("WORLD_SIZE", "1")) > 1 else \
        Dist(device=resolve_device(cfg.device))
    model, pp, name, weights = _model(cfg, dist.device)
    dataset = zdata.open_dataset(cfg.data, cfg.split, pp).head(cfg.limit)
    layers = list(cfg.layers) or default_layers(model)
    weights_hash = file_sha256(weights) if weights else None
    key = fingerprint({"model": name, "weights": weights_hash, "data": cfg.data, "split": dataset.split,
                       "images": len(dataset), "layers": layers, "k": cfg.k, "pp": pp.to_dict()})
    os.makedirs(cfg.out, exist_ok=True)
    manifest_path = os.path.join(cfg.out, "manifest.json")
    if os.path.isfile(manifest_path):
        with open(manifest_path) as f:
            old = json.load(f)
        if old.get("key") != key:
            raise UsageError(f"{cfg.out!r} already holds an atlas of other settings ({old.get('model', {}).get('name')} "
                             f"on {old.get('dataset', {}).get('spec')}); pass a new --out to keep it")

    result = scan(model, dataset, pp, layers, k=cfg.k, batch_size=cfg.batch_size, workers=cfg.workers,
                  state_path=os.path.join(cfg.out, ".scan-state.safetensors"), key=key, dist=dist,
                  progress=progress)
    if not dist.main:
        teardown(dist)
        return None
    fields = {}
    tiles = {}
    shape = (pp.channels, pp.input_size, pp.input_size)
    rfs = {layer: receptive_field(model, layer, shape) for layer in layers}
    for layer, rf in rfs.items():
        h, w = rf.size
        s = display_scale(max(h, w), 64)
        tiles[layer] = s
        fields[layer] = {"field": list(rf.size), "jump": None if rf.is_global else [rf.rows.jump, rf.cols.jump],
                         "k": cfg.k, "tile": [h * s, w * s]}
    manifest = {
        "key": key, "complete": False,
        "model": {"name": name, "weights": weights, "weights_sha256": weights_hash},
        "dataset": {"spec": cfg.data, "split": dataset.split, "images": len(dataset), "classes": dataset.classes},
        "mode": cfg.mode, "settings": asdict(cfg), "layer_order": layers,
        "layers": manifest_layers(result, dataset, fields),
        "preprocess": pp.to_dict(), "scan_seconds": result.seconds,
    }
    atomic_write_json(manifest_path, manifest)

    panel_choice = _panel_maps(result, layers, cfg)
    panels: dict[str, list] = {layer: [] for layer in layers}
    with Deconvnet(model, mode=cfg.mode) as dn:
        total = sum(result.top[l].values.shape[1] for l in layers)
        with bar(total=total, desc="atlas projections", unit="map", disable=not progress) as pbar:
            for layer in layers:
                tk, rf = result.top[layer], rfs[layer]
                folder = os.path.join(cfg.out, "maps", layer)
                os.makedirs(folder, exist_ok=True)
                channels = list(range(tk.values.shape[1]))
                todo = [c for c in channels if c in panel_choice[layer]
                        or not os.path.isfile(os.path.join(folder, f"{c:04d}.png"))]
                pbar.update(len(channels) - len(todo))
                per = max(1, 256 // cfg.k)
                for s in range(0, len(todo), per):
                    chunk = todo[s:s + per]
                    proj = top_projections(dn, dataset, pp, tk, layer, chunk, rf, dist.device)
                    for c in chunk:
                        fields_, patches = proj[c]
                        if len(fields_):
                            figures.save_png(figures.map_sprite(fields_, patches, tiles[layer]),
                                             os.path.join(folder, f"{c:04d}.png"))
                        if c in panel_choice[layer] and len(fields_):
                            panels[layer].append((c, fields_, patches))
                    pbar.update(len(chunk))
    os.makedirs(os.path.join(cfg.out, "figures"), exist_ok=True)
    for layer in layers:
        blocks = sorted(panels[layer], key=lambda b: b[0])
        figures.save_png(figures.layer_panel(blocks, scale=max(1, tiles[layer] // 2)),
                         os.path.join(cfg.out, "figures", f"{layer}.png"))
    manifest["figures"] = {layer: f"figures/{layer}.png" for layer in layers}
    manifest["panel_maps"] = panel_choice

    manifest["filters"] = _filters(model, result, layers, cfg.out, name, manifest)
    if cfg.evolution:
        manifest["evolution"] = _evolution(cfg, model, pp, layers, dist.device, progress)
    manifest["complete"] = True
    manifest["wall_seconds"] = time.perf_counter() - started
    manifest["provenance"] = environment(dist.device)
    atomic_write_json(manifest_path, manifest)
    write_site(cfg.out, _site_data(manifest))
    teardown(dist)
    return manifest


def _panel_maps(result: Scan, layers: list[str], cfg: AtlasConfig) -> dict[str, list[int]]:
    g = torch.Generator().manual_seed(cfg.seed)
    out = {}
    for layer in layers:
        c = result.top[layer].values.shape[1]
        out[layer] = sorted(torch.randperm(c, generator=g)[:min(cfg.panel_maps, c)].tolist())
    return out


def _filters(model, result: Scan, layers: list[str], out: str, title: str, manifest: dict) -> dict:
    """Fig. 5's filter analysis; when the first conv layer is in the atlas, also its filters one tile per
    channel (maps/<layer>/filters.png), shown beside each of its maps as in Fig. 2."""
    from ..filters import analyse, first_conv
    from ..layers import resolve_layer

    conv = first_conv(model)
    first = next((l for l in layers if resolve_layer(model, l) is conv), None)
    if first is not None:
        kh, kw = conv.weight.shape[-2:]
        s = display_scale(max(kh, kw), 64)
        path = f"maps/{first}/filters.png"
        figures.save_png(figures.filter_strip(conv.weight, s), os.path.join(out, path))
        manifest["layers"][first]["filter"] = {"sprite": path, "tile": [kh * s, kw * s]}
    max_resp = result.top[first].values[0] if first in result.top else None
    return write_filters(out, [(title, analyse(conv.weight, max_resp))])


def write_filters(out: str, reports: list) -> dict:
    """filters.png (Fig. 5 panels, one row per model) and filters.json (summaries and per-filter rows)."""
    figures.filters_figure(reports, os.path.join(out, "filters.png"))
    info = {"figure": "filters.png", "models": [{"title": t, "summary": r.summary()} for t, r in reports]}
    atomic_write_json(os.path.join(out, "filters.json"),
                      {**info, "per_filter": {t: r.per_filter() for t, r in reports}})
    return info


def _evolution(cfg: AtlasConfig, model, pp, layers: list[str], device, progress: bool) -> dict:
    """Fig. 4 from training snapshots, on the training split of the atlas's dataset."""
    import copy

    from ..evolution import choose_channels, evolution, find_snapshots

    if cfg.evolution == "pretrained":
        from ..pretrained import pretrained

        snaps = pretrained().snapshots
    else:
        snaps = find_snapshots(cfg.evolution)
    evo_model = copy.deepcopy(model)  # same architecture; each snapshot's weights are loaded into it
    train = zdata.open_dataset(cfg.data, cfg.evolution_split, pp).head(cfg.evolution_limit)
    shape = (pp.channels, pp.input_size, pp.input_size)
    channels = choose_channels(evo_model, layers, cfg.evolution_maps, cfg.seed, shape)
    evo = evolution(evo_model, snaps, train, layers, channels, batch_size=max(cfg.batch_size, 256),
                    workers=cfg.workers, mode=cfg.mode, progress=progress, device=device)
    return write_evolution(cfg.out, evo, train)


def write_evolution(out: str, evo, train) -> dict:
    """evolution/L.png (Fig. 4: maps as rows, snapshot epochs as columns) and evolution.json."""
    folder = os.path.join(out, "evolution")
    os.makedirs(folder, exist_ok=True)
    figs = {}
    for layer, chans in evo.layers.items():
        rows = [[cell[0] for cell in evo.cells[layer][c]] for c in chans]
        size = rows[0][0].shape[-1] if rows and rows[0] else 1
        figures.save_png(figures.evolution_grid(rows, scale=display_scale(size, 64)),
                         os.path.join(folder, f"{layer}.png"))
        figs[layer] = f"evolution/{layer}.png"
    info = {"epochs": evo.epochs, "channels": evo.layers, "figures": figs,
            "dataset": {"spec": train.name, "split": train.split, "images": len(train)}}
    atomic_write_json(os.path.join(out, "evolution.json"), {**info, **evo.to_json(train)})
    return info


def _site_data(manifest: dict) -> dict:
    """What the viewer needs: the manifest without settings noise."""
    keep = ("model", "dataset", "mode", "layer_order", "layers", "figures", "filters", "evolution", "provenance",
            "wall_seconds")
    return {k: manifest[k] for k in keep if k in manifest}
