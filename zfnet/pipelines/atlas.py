"""`zfnet atlas` as a library call: open the model and data, scan (Fig. 2 top-k), project, and hand the results to
`zfnet.render.atlas_site`, which writes the folder's pictures and page.

OUT/manifest.json   per layer and channel the top-k {image, id, label, value, y, x}, plus model, weights hash,
                    dataset, settings, versions, wall time and the files that could not be read
OUT/settings.json   the settings that change results, and their key: a rerun with the same key continues
                    (every step skips what is on disk); any other key is refused for that folder
"""

from __future__ import annotations

import json
import os
import shutil
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

import torch

from .. import data as zdata
from ..errors import UsageError
from ..io import atomic_save_tensors, atomic_write_json, load_tensors, safetensors_metadata
from ..layers import resolve_layer
from ..methods.atlas import (
    AtlasSettings,
    Scan,
    ScanProgress,
    TopK,
    default_layers,
    fingerprint,
    manifest_layers,
    scan,
    tensor_hash,
    top_projections,
)
from ..methods.deconvnet import RULE_HELP, Deconvnet, Rule, gradient_instead
from ..methods.evolution import EvolutionSettings, evolution
from ..methods.filters import analyse, first_conv
from ..methods.visualize import visualize
from ..outputs import user_files
from ..progress import bar
from ..provenance import changed_keys, environment
from ..readback import read_json
from ..receptive_field import layer_field
from ..render import atlas_site
from ..render.figures import save_png
from ..render.render import display_scale
from ..render.visualize import unit_image
from ..runtime import Dist, model_device, model_dtype, teardown
from ..settings import Run, knob
from ..weights import Opened, WeightsFile
from .evidence import atlas_evidence


@dataclass(frozen=True)
class AtlasSiteSettings(AtlasSettings):
    """`zfnet atlas`'s settings: Fig. 2's selection (`AtlasSettings`: layers, k) and what the atlas draws of it -
    the projections' rule, per-class references, the Fig. 2 panels, Fig. 4's maps."""

    renamed: ClassVar[dict[str, str]] = {"mode": "rule"}

    rule: Rule = knob("deconvnet", RULE_HELP, aliases=("--mode",))
    per_class: int = knob(
        0,
        "also keep each map's top-K images within every class, in the same pass (the viewer and zfnet explore "
        "show them; 0: none)",
        low=0,
        high=100,
    )
    limit: int | None = knob(None, "scan only the first N images (none: all)", low=1)
    panel_maps: int = knob(16, "maps per Fig. 2 panel", low=1)
    max_maps: int | None = knob(
        None, "maps per layer projected for the viewer (none: every map; the panel's always)", low=1
    )
    evolution_maps: int = knob(8, "maps per layer in Fig. 4", low=1)
    evolution_limit: int | None = knob(None, "training images scanned per snapshot for Fig. 4 (none: all)", low=1)
    seed: int = knob(0, "which maps the panels and Fig. 4 show (and the evidence's draws)", low=0)
    visualize: bool = knob(
        False,
        "also optimize an image for every projected map (issue 37: Olah et al. 2017, the channel objective); its "
        "page shows it beside the top-k",
    )
    visualize_steps: int = knob(256, "optimization steps of --visualize", low=1)
    evidence: bool = knob(
        False,
        "also score every projected map (issue 36: weight dependence, specificity, causal map) on its top-1 image; "
        "its page shows them, the layer page sorts by them",
    )


@dataclass(frozen=True)
class AtlasConfig:
    """One atlas: where it goes, its settings, where Fig. 4's snapshots come from, and how it runs (batch size,
    decoding workers, device: never a change to the result)."""

    out: str
    settings: AtlasSiteSettings = AtlasSiteSettings()
    evolution: str | None = None  # where Fig. 4's snapshots come from (a run folder; "pretrained")
    batch_size: int = 128
    workers: int = 4
    device: str = "auto"
    index: str | None = None  # issue 39: an activation index of the same model and data: no pass over the data


def _check(cfg: AtlasConfig) -> None:
    Run(batch_size=cfg.batch_size, workers=cfg.workers)  # refuses a bad batch size or worker count
    if os.path.exists(cfg.out) and not os.path.isdir(cfg.out):
        raise UsageError(f"--out {cfg.out!r} is a file; pass a folder")


@dataclass(frozen=True)
class ScanFile:
    """A scan's resume state (`methods.atlas.ScanStore`) in one safetensors file per process: the top-k tables as
    tensors, the result key, positions done, shapes and unreadable images in its metadata. A file of another key,
    or a damaged one, is no state: the scan starts from the beginning."""

    path: str
    key: str

    @classmethod
    def of(cls, path: str, key: str, dist: Dist | None = None) -> ScanFile:
        """The file of this process (under torchrun each process keeps its own share's state)."""
        if dist is not None and dist.world > 1:
            path = f"{path}.rank{dist.rank}-of-{dist.world}"
        return cls(path, key)

    def load(self) -> ScanProgress | None:
        if not os.path.isfile(self.path):
            return None
        try:
            meta = safetensors_metadata(self.path)
            if meta.get("key") != self.key:
                return None
            t = load_tensors(self.path)
            names = {k.rsplit("/", 1)[0] for k in t}
            return ScanProgress(
                {n: TopK.from_tensors(t, n) for n in names},
                {n: tuple(s) for n, s in json.loads(meta["shapes"]).items()},
                int(meta["done"]),
                {int(i): str(r) for i, r in json.loads(meta.get("skipped", "{}")).items()},
            )
        except (OSError, ValueError, KeyError, TypeError, AttributeError):  # damaged: no state
            return None

    def save(self, progress: ScanProgress) -> None:
        tensors = {k: v for n, tk in progress.top.items() for k, v in tk.tensors(n).items()}
        meta = {
            "key": self.key,
            "done": str(progress.done),
            "shapes": json.dumps(progress.shapes),
            "skipped": json.dumps({str(i): r for i, r in progress.skipped.items()}),
        }
        atomic_save_tensors(tensors, self.path, meta)


def _claim_folder(out: str, key: str, settings: dict) -> None:
    """Record the result key in OUT/settings.json, or refuse a folder that holds results of another key."""
    path = os.path.join(out, "settings.json")
    if os.path.isfile(path):
        old = read_json(path, {"key": str, "settings": dict}, fix=f"delete the folder {out} to remake the atlas")
        if old["key"] != key:
            changed = changed_keys(old.get("settings", {}), settings)
            what = ", ".join(changed) or "the model or data"
            raise UsageError(
                f"{out!r} already holds an atlas made with other settings (changed: {what}); "
                "pass a new --out, or delete the folder to remake it"
            )
        return
    if os.path.isfile(os.path.join(out, "manifest.json")):
        raise UsageError(f"{out!r} already holds an atlas from an older zfnet; pass a new --out")
    atomic_write_json(path, {"key": key, "settings": settings})


def dataset_info(ds: zdata.ImageSet) -> dict:
    """How results name the images they were computed on."""
    info = {"spec": ds.spec or ds.name, "split": ds.split, "images": len(ds)}
    return {**info, "exclude": ds.exclude} if ds.exclude else info


def build_atlas(
    opened: Opened,
    dataset: zdata.ImageSet,
    cfg: AtlasConfig,
    *,
    snapshots: Sequence[tuple[int, str | WeightsFile]] | None = None,
    train: zdata.ImageSet | None = None,
    dist: Dist | None = None,
    progress: bool = True,
) -> dict | None:
    """The whole atlas of `opened` over `dataset` (Fig. 2, with Fig. 5's filters; Fig. 4 from `snapshots` on
    `train`, the training images, when given). Returns the manifest (None on processes other than rank 0 under
    torchrun, where `dist` is the process group the caller joined before opening the model)."""
    _check(cfg)
    if snapshots is not None and train is None:
        raise UsageError("Fig. 4 needs the training images the snapshots are scanned on")
    started = time.perf_counter()
    dist = dist or Dist(device=model_device(opened.model))
    dataset = dataset.head(cfg.settings.limit)
    if cfg.settings.per_class and len(dataset.classes) < 2:
        raise UsageError(
            "--per-class needs labelled data: this data names no classes (a folder of class folders, a dataset)"
        )
    train = train.head(cfg.settings.evolution_limit) if train is not None else None
    model = opened.model
    pp = opened.preprocess
    layers = list(cfg.settings.layers or ()) or default_layers(model, (pp.channels, pp.input_size, pp.input_size))
    for layer in layers:
        resolve_layer(model, layer)  # an unknown layer is refused before anything is written
    scan_key, key, settings = _keys(cfg, opened, dataset, layers, train)
    created = not os.path.isdir(cfg.out)
    os.makedirs(cfg.out, exist_ok=True)
    try:
        _claim_folder(cfg.out, key, settings)
        manifest = _build(cfg, dist, opened, dataset, layers, scan_key, key, snapshots, train, progress)
    except BaseException:
        if created and set(user_files(cfg.out)) <= {"settings.json"}:
            # a refused first run leaves no folder behind; an interrupted one (a full disk too) keeps its scan
            # state to resume
            shutil.rmtree(cfg.out, ignore_errors=True)
        raise
    if manifest is not None:
        manifest["wall_seconds"] = time.perf_counter() - started
        atomic_write_json(os.path.join(cfg.out, "manifest.json"), manifest)
        atlas_site.write_page(cfg.out, manifest)
    return manifest


def _keys(cfg: AtlasConfig, opened: Opened, dataset: zdata.ImageSet, layers: list[str], train) -> tuple:
    """(the scan's key: what its top-k tables depend on; the atlas's key and the settings it hashes, written to
    OUT/settings.json: a rerun with other settings is refused)."""
    pp, st = dataset.preprocess, cfg.settings
    ident: dict[str, Any] = {"model": opened.name, "weights": opened.weights_sha256, "data": dataset.spec}
    ident["split"] = dataset.split
    ident |= {"images": len(dataset), **({"exclude": dataset.exclude} if dataset.exclude else {})}
    scan = {**ident, "layers": layers, "k": st.k, "pp": pp.to_dict(), "mean": tensor_hash(pp.mean_image)}
    scan |= {"per_class": st.per_class} if st.per_class else {}  # atlases without it keep their keys
    settings = {**st.to_json(), "evolution": cfg.evolution}
    for extra, default in (("evidence", False), ("visualize", False), ("visualize_steps", 256)):
        if settings[extra] == default:
            del settings[extra]  # atlases without them keep their keys
    settings.update(
        model=opened.name,
        mean=opened.mean,
        data=dataset.spec,
        exclude=dataset.exclude,
        layers=layers,
        split=dataset.split,
        images=len(dataset),
        weights_sha256=opened.weights_sha256,
        mean_sha256=tensor_hash(pp.mean_image),
        evolution_images=None if train is None else dataset_info(train),
    )
    return fingerprint(scan), fingerprint(settings), settings


def _build(
    cfg: AtlasConfig,
    dist: Dist,
    opened: Opened,
    dataset: zdata.ImageSet,
    layers: list[str],
    scan_key: str,
    key: str,
    snapshots,
    train,
    progress: bool,
) -> dict | None:
    result = _scan_or_index(cfg, opened, dataset, layers, scan_key, dist, progress)
    teardown(dist)  # the scan was the last collective: the others need not wait while rank 0 renders
    if not dist.main:
        return None
    return _render(cfg, dist, opened, dataset, layers, key, snapshots, train, progress, result)


def _scan_or_index(cfg: AtlasConfig, opened: Opened, dataset, layers, scan_key: str, dist: Dist, progress: bool):
    """The top-k tables: read from `cfg.index` (issue 39) when given, else a scan of the data."""
    model = opened.model
    if cfg.index is not None:
        from .index import index_note, open_index, scan_from_index

        idx = open_index(cfg.index)
        _same_model(idx.manifest, opened, cfg.index)
        result = scan_from_index(idx, dataset, model, layers, cfg.settings.k, cfg.settings.per_class)
        result.extra["from_index"] = {"index": os.path.abspath(cfg.index), "dtype": idx.manifest["dtype"],
                                      "note": index_note(idx.manifest["dtype"])}  # fmt: skip
        return result
    return scan(
        model,
        dataset,
        layers=layers,
        k=cfg.settings.k,
        batch_size=cfg.batch_size,
        workers=cfg.workers,
        store=ScanFile.of(os.path.join(cfg.out, ".scan-state.safetensors"), scan_key, dist),
        dist=dist,
        progress=progress,
        per_class=cfg.settings.per_class,
    )


def _same_model(manifest: dict, opened: Opened, path: str) -> None:
    have, want = manifest.get("model", {}), opened.info()
    if (have.get("name"), have.get("weights_sha256")) != (want.get("name"), want.get("weights_sha256")):
        raise UsageError(f"the index {path} is of another model ({have.get('name')}); index this model first")


def _render(cfg: AtlasConfig, dist: Dist, opened: Opened, dataset, layers, key: str, snapshots, train, progress,
            result: Scan) -> dict:  # fmt: skip
    """Everything after the scan: the manifest, the projections, the panels, the filters, Fig. 4."""
    model, pp = opened.model, dataset.preprocess
    dataset.check_readable()
    shape = (pp.channels, pp.input_size, pp.input_size)
    rfs = {layer: layer_field(model, layer, shape) for layer in layers}
    tiles, fields = {}, {}
    for layer, rf in rfs.items():
        h, w = rf.size
        tiles[layer] = display_scale(max(h, w), 64)
        fields[layer] = {
            "field": list(rf.size),
            "jump": rf.jump,
            "k": cfg.settings.k,
            "tile": [h * tiles[layer], w * tiles[layer]],
        }
    manifest = {
        "key": key,
        "complete": False,
        "model": opened.info(),
        "dataset": {**dataset_info(dataset), "classes": dataset.classes},
        "rule": cfg.settings.rule,
        "rule_substituted": gradient_instead(model, layers, _probe(pp, dist.device, model), cfg.settings.rule),
        "feature_maps": result.maps,
        "settings": {**cfg.settings.to_json(), "evolution": cfg.evolution},
        "layer_order": layers,
        "layers": manifest_layers(result, dataset, fields),
        "preprocess": pp.to_dict(),
        "scan_seconds": result.seconds,
        "from_index": result.extra.get("from_index"),  # issue 39: the top-k read from an activation index
        "skipped": dataset.skipped_report(),
    }
    atomic_write_json(os.path.join(cfg.out, "manifest.json"), manifest)

    panel_choice = _panel_maps(result, layers, cfg)
    manifest["panel_maps"] = panel_choice
    if cfg.settings.max_maps is not None:
        for layer in layers:
            entry: dict = manifest["layers"][layer]
            entry["projected"] = _projected(result, layer, panel_choice[layer], cfg.settings.max_maps)
    panels = _project_maps(cfg, model, pp, dataset, result, layers, rfs, tiles, panel_choice, dist.device, progress)
    if cfg.settings.per_class and len(dataset.classes) <= CLASS_SHEETS_UP_TO:
        for layer in layers:
            manifest["layers"][layer]["class_sheets"] = _class_sheets(
                cfg, model, pp, dataset, result, layer, rfs[layer], tiles[layer], dist.device
            )
    optimized: dict[str, dict[int, torch.Tensor]] = {}
    if cfg.settings.visualize:
        manifest["visualized"] = _visualized(cfg, opened, result, layers, manifest, progress, optimized)
    if cfg.settings.evidence:
        manifest["evidence"] = _evidence(cfg, model, pp, dataset, result, layers, manifest, dist.device, progress)
    note = (result.extra.get("from_index") or {}).get("note", "")
    manifest["figures"] = {
        layer: atlas_site.write_panel(
            cfg.out, layer, panels[layer], max(1, tiles[layer] // 2), optimized=optimized.get(layer), note=note
        )
        for layer in layers
    }
    manifest["filters"] = _filters(model, result, layers, cfg.out, opened.name, manifest)
    if snapshots is not None:
        st = cfg.settings
        evo = EvolutionSettings(layers=tuple(layers), maps=st.evolution_maps, seed=st.seed, rule=st.rule)
        run = Run(device=dist.device, batch_size=max(cfg.batch_size, 256), workers=cfg.workers, progress=progress)
        manifest["evolution"] = run_evolution(model, train, snapshots, cfg.out, evo, run)
    manifest["complete"] = True
    manifest["provenance"] = environment(dist.device)
    return manifest


def run_evolution(
    model: torch.nn.Module,
    train: zdata.ImageSet,
    snapshots: Sequence[tuple[int, str | WeightsFile]],
    out: str,
    settings: EvolutionSettings = EvolutionSettings(),
    run: Run = Run(batch_size=256, progress=True),
) -> dict:
    """Fig. 4 (`zfnet evolution`, the atlas's and the report's): the evolution of randomly chosen maps per layer
    across `snapshots`, scanned on the training images `train`; writes OUT/evolution/ and returns its entry."""
    evo = evolution(
        model,
        train,
        snapshots=snapshots,
        settings=settings,
        batch_size=run.batch_size or 256,
        workers=run.workers,
        progress=run.progress,
        device=run.device,
    )
    train.check_readable()
    return atlas_site.write_evolution(out, evo, dataset_info(train), evo.to_json())


def _tokens(result: Scan, layer: str) -> int | None:
    """The patch grid's side of a token layer (its patches show the token's region), None for maps."""
    if "tokens" not in result.maps.get(layer, {}).get("layout", ""):
        return None
    return int(result.shapes[layer][-1])


def _probe(pp, device, model) -> torch.Tensor:
    """One image of zeros shaped like the model's input (where the layers' sites are traced)."""
    return torch.zeros(1, pp.channels, pp.input_size, pp.input_size, device=device, dtype=model_dtype(model))


def _project_maps(
    cfg: AtlasConfig, model, pp, dataset, result: Scan, layers, rfs, tiles, panel_choice, device, progress: bool
) -> dict[str, list]:
    """Each map's top-k projections and patches, written as its sprite; maps whose sprite is on disk are
    skipped unless a Fig. 2 panel needs them. Returns the panel maps' (channel, projections, patches)."""
    panels: dict[str, list] = {layer: [] for layer in layers}
    with Deconvnet(model, rule=cfg.settings.rule, other="gradient") as dn:
        total = sum(result.top[l].values.shape[1] for l in layers)
        with bar(total=total, desc="atlas projections", unit="map", disable=not progress) as pbar:
            for layer in layers:
                tk, rf = result.top[layer], rfs[layer]
                folder = os.path.join(cfg.out, "maps", layer)
                os.makedirs(folder, exist_ok=True)
                channels = (
                    list(range(tk.values.shape[1]))
                    if cfg.settings.max_maps is None
                    else _projected(result, layer, panel_choice[layer], cfg.settings.max_maps)
                )
                todo = [
                    c
                    for c in channels
                    if c in panel_choice[layer] or not os.path.isfile(os.path.join(folder, f"{c:04d}.png"))
                ]
                pbar.update(len(channels) - len(todo))
                per = max(1, 256 // cfg.settings.k)
                for s in range(0, len(todo), per):
                    chunk = todo[s : s + per]
                    proj = top_projections(dn, dataset, pp, tk, layer, chunk, rf, device, _tokens(result, layer))
                    for c in chunk:
                        projections, patches = proj[c]
                        if len(projections):
                            atlas_site.write_map(folder, c, projections, patches, tiles[layer])
                            if c in panel_choice[layer]:
                                panels[layer].append((c, projections, patches))
                    pbar.update(len(chunk))
    return panels


CLASS_SHEETS_UP_TO = 100  # classes; with more, per-class references are in the manifest (and zfnet explore) only
CLASS_SHEET_MAPS = 16  # maps per class sheet


def _class_sheets(cfg: AtlasConfig, model, pp, dataset, result: Scan, layer: str, rf, scale: int, device) -> dict:
    """Per class, the maps of `layer` that fire most within it (by their strongest activation on the class's
    images), each with its top projections and patches within the class, as one sheet; the manifest entry."""
    out = {}
    folder = os.path.join(cfg.out, "maps", layer)
    with Deconvnet(model, rule=cfg.settings.rule, other="gradient") as dn:
        for label, tk in sorted(result.per_class.get(layer, {}).items()):
            ranked = [c for c in tk.values[0].argsort(descending=True).tolist() if tk.images[0, c] >= 0]
            ranked = ranked[:CLASS_SHEET_MAPS]
            if not ranked:
                continue
            proj = top_projections(dn, dataset, pp, tk, layer, ranked, rf, device, _tokens(result, layer))
            rows = [proj[c] for c in ranked if len(proj[c][0])]
            name = atlas_site.write_class_sheet(folder, label, rows, max(1, scale // 2))
            out[dataset.classes[label]] = {"file": f"maps/{layer}/{name}", "maps": ranked, "k": tk.k}
    return out


def _visualized(cfg: AtlasConfig, opened: Opened, result: Scan, layers, manifest: dict, progress: bool,
                optimized: dict[str, dict[int, torch.Tensor]]) -> dict:  # fmt: skip
    """Issue 37: each shown map's optimized image (the channel objective, `zfnet.visualize`, every map of a layer
    in batches) as maps/<layer>/<map>-vis.png; per layer and map its file and objective value. The panel's maps'
    images go into `optimized` (layer -> map -> display pixels) for Fig. 2's panel."""
    panel = manifest.get("panel_maps") or {}
    out: dict[str, dict] = {}
    for layer in layers:
        shown = manifest["layers"][layer].get("projected") or list(range(result.top[layer].values.shape[1]))
        if len(result.shapes[layer]) != 3:  # fully connected: no map to take the mean of
            continue
        res = visualize(opened, layer=layer, units=tuple(shown), steps=cfg.settings.visualize_steps, batch=64,
                        seed=cfg.settings.seed, progress=progress)  # fmt: skip
        entries = {}
        for k, c in enumerate(res.units):
            name = f"maps/{layer}/{c:04d}-vis.png"
            save_png(unit_image(res.images[k]), os.path.join(cfg.out, name))
            entries[str(c)] = {"file": name, "value": res.values[k]}
            if c in panel.get(layer, ()):
                optimized.setdefault(layer, {})[c] = res.images[k]
        out[layer] = {"maps": entries, "objective": "channel", "color": res.color,
                      "arithmetic": res.arithmetic, "steps": res.settings.steps}  # fmt: skip
    return out


def _evidence(cfg: AtlasConfig, model, pp, dataset, result: Scan, layers, manifest: dict, device, progress) -> dict:
    """Issue 36's scores for every map the viewer shows (`pipelines.evidence.atlas_evidence`)."""
    shown = {l: manifest["layers"][l].get("projected") or list(range(result.top[l].values.shape[1])) for l in layers}
    return atlas_evidence(model, pp, dataset, result.top, shown, cfg.out, cfg.settings.rule, cfg.settings.seed, device,
                          progress)  # fmt: skip


def _projected(result: Scan, layer: str, panel: list[int], most: int) -> list[int]:
    """The maps of `layer` the viewer gets (`max_maps`): the panel's, then the first others, `most` in all."""
    rest = [c for c in range(result.top[layer].values.shape[1]) if c not in panel]
    return sorted([*panel, *rest][: max(most, len(panel))])


def _panel_maps(result: Scan, layers: list[str], cfg: AtlasConfig) -> dict[str, list[int]]:
    g = torch.Generator().manual_seed(cfg.settings.seed)
    out = {}
    for layer in layers:
        c = result.top[layer].values.shape[1]
        out[layer] = sorted(torch.randperm(c, generator=g)[: min(cfg.settings.panel_maps, c)].tolist())
    return out


def _filters(model, result: Scan, layers: list[str], out: str, title: str, manifest: dict) -> dict:
    """Fig. 5's filter analysis (`zfnet.methods.filters`) with the per-filter maxima the scan already found when
    the first conv layer is in the atlas; then also its filter strip."""
    conv = first_conv(model)
    first = next((l for l in layers if resolve_layer(model, l) is conv), None)
    max_resp = None
    if first is not None:
        manifest["layers"][first]["filter"] = atlas_site.write_filter_strip(out, first, conv.weight.detach().cpu())
        max_resp = result.top[first].values[0]
    return atlas_site.write_filters(out, [(title, analyse(conv.weight, max_resp))])
