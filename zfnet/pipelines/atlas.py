"""`zfnet atlas` as a library call: open the model and data, scan (Fig. 2 top-k), project, and hand the results to
`zfnet.report.atlas_site`, which writes the folder's pictures and page.

OUT/manifest.json   per layer and channel the top-k {image, id, label, value, y, x}, plus model, weights hash,
                    dataset, settings, versions, wall time and the files that could not be read
OUT/settings.json   the settings that change results, and their key: a rerun with the same key continues
                    (every step skips what is on disk); any other key is refused for that folder
"""
from __future__ import annotations

import copy
import hashlib
import json
import os
import shutil
import time
from dataclasses import asdict, dataclass

import torch

from .. import data as zdata
from ..checkpoints import find_snapshots, open_model
from ..errors import UsageError
from ..io import atomic_write_json
from ..methods.atlas import Scan, default_layers, fingerprint, manifest_layers, scan, top_projections
from ..methods.deconvnet import MODES, Deconvnet
from ..methods.evolution import choose_channels, evolution
from ..methods.filters import analyse, first_conv
from ..layers import resolve_layer
from ..progress import bar
from ..provenance import changed_keys, environment, file_sha256
from ..receptive_field import receptive_field
from ..report import atlas_site
from ..report.render import display_scale
from ..runtime import Dist, resolve_device, setup_processes, teardown, under_torchrun


@dataclass(frozen=True)
class AtlasConfig:
    """Settings of one atlas (written into the manifest). `RUN_ONLY` fields never change a result."""

    out: str
    data: str
    model: str | None = None
    weights: str | None = None
    pretrained: bool = False
    mean: str | None = None  # None: the weights' stored mean; "data", "none" or a file (see checkpoints)
    split: str | None = None  # None: the dataset's evaluation split
    exclude: str | None = None  # exclusion list file (image ids) left out of the scan
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


RUN_ONLY = ("out", "batch_size", "workers", "device")


def _check(cfg: AtlasConfig) -> None:
    if cfg.mode not in MODES:
        raise UsageError(f"--mode must be one of {', '.join(MODES)}")
    for name in ("k", "batch_size", "panel_maps", "evolution_maps"):
        if getattr(cfg, name) < 1:
            raise UsageError(f"--{name.replace('_', '-')} {getattr(cfg, name)} must be at least 1")
    for name in ("limit", "evolution_limit"):
        if getattr(cfg, name) is not None and getattr(cfg, name) < 1:
            raise UsageError(f"--{name.replace('_', '-')} {getattr(cfg, name)} must be at least 1 (or left out)")
    if cfg.workers < 0:
        raise UsageError(f"--workers {cfg.workers} must be 0 (decode in this process) or more")
    if cfg.evolution == "pretrained" and not cfg.pretrained:
        raise UsageError("--evolution pretrained goes with --pretrained; for another model pass its run folder")
    if os.path.exists(cfg.out) and not os.path.isdir(cfg.out):
        raise UsageError(f"--out {cfg.out!r} is a file; pass a folder")


def _tensor_hash(t: torch.Tensor | None) -> str | None:
    return None if t is None else hashlib.sha256(t.float().contiguous().numpy().tobytes()).hexdigest()[:16]


def _claim_folder(out: str, key: str, settings: dict) -> None:
    """Record the result key in OUT/settings.json, or refuse a folder that holds results of another key."""
    path = os.path.join(out, "settings.json")
    if os.path.isfile(path):
        with open(path) as f:
            old = json.load(f)
        if old.get("key") != key:
            changed = changed_keys(old.get("settings", {}), settings)
            raise UsageError(f"{out!r} already holds an atlas made with other settings (changed: {', '.join(changed) or 'the model or data'}); "
                             "pass a new --out, or delete the folder to remake it")
        return
    if os.path.isfile(os.path.join(out, "manifest.json")):
        raise UsageError(f"{out!r} already holds an atlas from an older zfnet; pass a new --out")
    atomic_write_json(path, {"key": key, "settings": settings})


def build_atlas(cfg: AtlasConfig, progress: bool = True) -> dict | None:
    """Run the whole atlas; returns the manifest (None on processes other than rank 0 under torchrun)."""
    _check(cfg)
    started = time.perf_counter()
    dist = setup_processes(cfg.device) if under_torchrun() else Dist(device=resolve_device(cfg.device))
    opened = open_model(cfg.model, cfg.weights, cfg.pretrained, dist.device, cfg.seed, cfg.mean, cfg.data, cfg.split,
                        cfg.workers)
    model, pp = opened.model, opened.preprocess
    dataset = zdata.open_dataset(cfg.data, cfg.split, pp, cfg.exclude).head(cfg.limit)
    layers = list(cfg.layers) or default_layers(model)
    for layer in layers:
        resolve_layer(model, layer)  # an unknown layer is refused before anything is written
    snaps = None
    if cfg.evolution:
        snaps = find_snapshots(cfg.evolution) if cfg.evolution != "pretrained" else None
    weights_hash = file_sha256(opened.weights) if opened.weights else None
    scan_key = fingerprint({"model": opened.name, "weights": weights_hash, "data": cfg.data, "split": dataset.split,
                            "images": len(dataset), "layers": layers, "k": cfg.k, "pp": pp.to_dict(),
                            "mean": _tensor_hash(pp.mean_image)})
    settings = {k: v for k, v in asdict(cfg).items() if k not in RUN_ONLY}
    settings.update(layers=layers, split=dataset.split, images=len(dataset), weights_sha256=weights_hash,
                    mean_sha256=_tensor_hash(pp.mean_image))
    key = fingerprint(settings)
    created = not os.path.isdir(cfg.out)
    os.makedirs(cfg.out, exist_ok=True)
    try:
        _claim_folder(cfg.out, key, settings)
        manifest = _build(cfg, dist, opened, dataset, layers, scan_key, key, snaps, progress)
    except BaseException as e:
        if created and (isinstance(e, UsageError) or set(os.listdir(cfg.out)) <= {"settings.json"}):
            # a refused first run leaves no folder behind; an interrupted one keeps its scan state to resume
            shutil.rmtree(cfg.out, ignore_errors=True)
        raise
    if manifest is not None:
        manifest["wall_seconds"] = time.perf_counter() - started
        atomic_write_json(os.path.join(cfg.out, "manifest.json"), manifest)
        atlas_site.write_page(cfg.out, manifest)
    teardown(dist)
    return manifest


def _build(cfg: AtlasConfig, dist: Dist, opened, dataset: zdata.ImageSet, layers: list[str], scan_key: str,
           key: str, snaps, progress: bool) -> dict | None:
    model, pp = opened.model, opened.preprocess
    result = scan(model, dataset, pp, layers, k=cfg.k, batch_size=cfg.batch_size, workers=cfg.workers,
                  state_path=os.path.join(cfg.out, ".scan-state.safetensors"), key=scan_key, dist=dist,
                  progress=progress)
    if not dist.main:
        return None
    dataset.check_readable()
    shape = (pp.channels, pp.input_size, pp.input_size)
    rfs = {layer: receptive_field(model, layer, shape) for layer in layers}
    tiles, fields = {}, {}
    for layer, rf in rfs.items():
        h, w = rf.size
        tiles[layer] = display_scale(max(h, w), 64)
        fields[layer] = {"field": list(rf.size), "jump": None if rf.is_global else [rf.rows.jump, rf.cols.jump],
                         "k": cfg.k, "tile": [h * tiles[layer], w * tiles[layer]]}
    manifest = {
        "key": key, "complete": False,
        "model": {"name": opened.name, "weights": opened.weights,
                  "weights_sha256": file_sha256(opened.weights) if opened.weights else None},
        "dataset": {"spec": cfg.data, "split": dataset.split, "images": len(dataset), "classes": dataset.classes},
        "mode": cfg.mode, "settings": asdict(cfg), "layer_order": layers,
        "layers": manifest_layers(result, dataset, fields),
        "preprocess": pp.to_dict(), "scan_seconds": result.seconds, "skipped": dataset.skipped_report(),
    }
    atomic_write_json(os.path.join(cfg.out, "manifest.json"), manifest)

    panel_choice = _panel_maps(result, layers, cfg)
    panels = _project_maps(cfg, model, pp, dataset, result, layers, rfs, tiles, panel_choice, dist.device, progress)
    manifest["figures"] = {layer: atlas_site.write_panel(cfg.out, layer, panels[layer], max(1, tiles[layer] // 2))
                           for layer in layers}
    manifest["panel_maps"] = panel_choice
    manifest["filters"] = _filters(model, result, layers, cfg.out, opened.name, manifest)
    if cfg.evolution:
        manifest["evolution"] = _evolution(cfg, model, pp, layers, snaps, dist.device, progress)
    manifest["complete"] = True
    manifest["provenance"] = environment(dist.device)
    return manifest


def _project_maps(cfg: AtlasConfig, model, pp, dataset, result: Scan, layers, rfs, tiles, panel_choice, device,
                  progress: bool) -> dict[str, list]:
    """Each map's top-k projections and patches, written as its sprite; maps whose sprite is on disk are
    skipped unless a Fig. 2 panel needs them. Returns the panel maps' (channel, projections, patches)."""
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
                    proj = top_projections(dn, dataset, pp, tk, layer, chunk, rf, device)
                    for c in chunk:
                        projections, patches = proj[c]
                        if len(projections):
                            atlas_site.write_map(folder, c, projections, patches, tiles[layer])
                            if c in panel_choice[layer]:
                                panels[layer].append((c, projections, patches))
                    pbar.update(len(chunk))
    return panels


def _panel_maps(result: Scan, layers: list[str], cfg: AtlasConfig) -> dict[str, list[int]]:
    g = torch.Generator().manual_seed(cfg.seed)
    out = {}
    for layer in layers:
        c = result.top[layer].values.shape[1]
        out[layer] = sorted(torch.randperm(c, generator=g)[:min(cfg.panel_maps, c)].tolist())
    return out


def first_conv_layer(model, layers: list[str]) -> str | None:
    """The atlas layer that is the model's first convolution (Fig. 2 shows its filters beside its maps)."""
    conv = first_conv(model)
    return next((l for l in layers if resolve_layer(model, l) is conv), None)


def _filters(model, result: Scan, layers: list[str], out: str, title: str, manifest: dict) -> dict:
    """Fig. 5's filter analysis; when the first conv layer is in the atlas, also its filter strip."""
    conv = first_conv(model)
    first = first_conv_layer(model, layers)
    if first is not None:
        manifest["layers"][first]["filter"] = atlas_site.write_filter_strip(out, first, conv.weight.detach().cpu())
    max_resp = result.top[first].values[0] if first is not None else None
    return atlas_site.write_filters(out, [(title, analyse(conv.weight, max_resp))])


def _evolution(cfg: AtlasConfig, model, pp, layers: list[str], snaps, device, progress: bool) -> dict:
    """Fig. 4 from training snapshots, on the training split of the atlas's dataset."""
    if snaps is None:  # --evolution pretrained
        from ..pretrained import pretrained

        snaps = pretrained().snapshots
    evo_model = copy.deepcopy(model)  # same architecture; each snapshot's weights are loaded into it
    train = zdata.open_dataset(cfg.data, cfg.evolution_split, pp).head(cfg.evolution_limit)
    shape = (pp.channels, pp.input_size, pp.input_size)
    channels = choose_channels(evo_model, layers, cfg.evolution_maps, cfg.seed, shape)
    evo = evolution(evo_model, snaps, train, layers, channels, batch_size=max(cfg.batch_size, 256),
                    workers=cfg.workers, mode=cfg.mode, progress=progress, device=device)
    return atlas_site.write_evolution(cfg.out, evo, {"spec": train.name, "split": train.split, "images": len(train)},
                                      evo.to_json(train))
