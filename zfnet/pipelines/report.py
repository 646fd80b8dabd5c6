"""`zfnet report` as a library call: every analysis of the paper on one trained CNN, one stage at a time, each
into its own folder of OUT, then one static page (`zfnet.render.page`) that reads only those files.

OUT/report.json        the settings, and per stage: status (done / failed / skipped), the one-line reason, the
                       seconds it took and its key; a rerun reuses every stage whose key is unchanged
OUT/<stage>/...        what the stage's command writes (model.json, atlas/manifest.json, occlusion.json ...)
OUT/index.html         the report

A stage that fails is recorded with its reason (the traceback in OUT/<stage>/error.txt) and the others go on.
"""

from __future__ import annotations

import errno
import os
import shutil
import sys
import time
import traceback
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, replace
from functools import cached_property
from typing import ClassVar

import torch
from torch import nn

from .. import data as zdata
from ..checkpoints import find_snapshots
from ..errors import UsageError, note
from ..io import DiskFull, atomic_write_json, atomic_write_text, write_error
from ..layers import features, resolve_layer
from ..methods.architecture import Architecture, architecture
from ..methods.atlas import default_layers, fingerprint
from ..methods.correspondence import CorrespondenceSettings
from ..methods.evidence import EvidenceSettings
from ..methods.evolution import EvolutionSettings
from ..methods.faithfulness import FaithfulnessSettings
from ..methods.invariance import InvarianceSettings
from ..methods.occlusion import OcclusionSettings
from ..models import ConvNet, num_outputs
from ..outputs import staged, user_files
from ..pretrained import EMBEDDED_DATA, EMBEDDED_PARTS, folder, open_embedded
from ..pretrained import snapshots as embedded_snapshots
from ..provenance import changed_keys, environment, file_sha256
from ..readback import Damaged, Finite, parse_json, read_json, read_json_or_none
from ..registry import Registry
from ..render import page
from ..render.architecture import architecture_figure
from ..render.plots import training_curves
from ..runtime import Dist, eval_mode, model_device, resolve_device
from ..settings import Run, Settings, knob
from ..train import evaluate
from ..weights import Opened, opened_module, with_data_grey
from .analyses import parts_inputs, read_parts, run_correspondence, run_invariance
from .atlas import AtlasConfig, AtlasSiteSettings, build_atlas, run_evolution
from .evidence import run_evidence
from .inputs import Inputs, check_files, dataset_inputs
from .occlusion import run_occlusion


@dataclass(frozen=True)
class ReportConfig(Settings):
    """The report's settings (the model and the images come opened, see `build_report`): the `zfnet report`
    flags and the keywords of `zfnet.report` are derived from these fields. `RUN_ONLY` fields never change a
    result; the others are the report's settings in report.json."""

    method: ClassVar[str] = "report"

    out: str = knob("report", "output folder")
    train_split: str = knob("train", "the split Fig. 4 scans")
    embedded: bool = knob(False, "the model is the embedded one (its snapshots and parts file are used)")
    snapshots: str | None = knob(None, "a run folder with snapshots/ for Fig. 4 (none: beside the weights)")
    parts: str | None = knob(
        None, "parts file for the correspondence table (none with the embedded model: the shipped ankle-boot parts)"
    )
    parts_images: str | None = knob(None, "folder of the parts file's images (none: dataset indices)")
    include: tuple[str, ...] = knob((), "folders of zfnet transfer / layerprobe / ablate / archselect / dedupe results")
    layers: tuple[str, ...] = knob(
        (), "atlas layers (none: conv1..conv5 for the Fig. 3 family, else each resolution stage's, at most five)"
    )
    limit: int | None = knob(None, "images the atlas scans (none: the whole split)", low=1)
    atlas_maps: int | None = knob(
        None, "maps per layer projected for the atlas viewer (none: every map; 16 a layer are always shown)", low=1
    )
    evidence: bool = knob(
        True, "the evidence stage and the atlas's per-map scores (off: a quicker report without them)"
    )
    visualize: bool = knob(
        False, "Fig. 2's panels get a column of each map's optimized image (every map the atlas shows is optimized)"
    )
    evolution_limit: int | None = knob(2000, "training images scanned per snapshot (none: all)", low=1)
    examples: int = knob(6, "occlusion images, each of another class", low=1)
    window: int | None = knob(None, "occluder side in model-input pixels (none: 2/7 of the input)", low=1)
    stride: int | None = knob(None, "occluder step in pixels (none: a quarter of the window)", low=1)
    seed: int = knob(0, "the random draws (atlas maps, Fig. 4's maps, random parts)", low=0)
    workers: int = knob(0, "image decoding processes (0: decode in this process)", low=0)
    device: str = knob("auto", "cpu, cuda, cuda:N, mps or auto")


RUN_ONLY = ("out", "workers", "device", "include")


@dataclass
class Context:
    cfg: ReportConfig
    opened: Opened
    dataset: zdata.ImageSet
    device: torch.device
    picks: list[int] = field(default_factory=list)  # dataset indices of the example images, distinct classes

    def folder(self, stage: str) -> str:
        return os.path.join(self.cfg.out, stage)

    @property
    def data(self) -> str:
        return self.dataset.spec or self.dataset.name

    @cached_property
    def arch(self) -> Architecture:
        """Fig. 3's reading of the model (one forward), shared by the stages that need its layers."""
        pp = self.opened.preprocess
        return architecture(self.opened.model, torch.zeros(1, pp.channels, pp.input_size, pp.input_size))

    @cached_property
    def layers(self) -> list[str]:
        """The atlas's layers: --layers, else conv1..conv5 or each resolution stage's (`default_layers`)."""
        pp = self.opened.preprocess
        return list(self.cfg.layers) or default_layers(self.opened.model, (pp.channels, pp.input_size, pp.input_size))

    @cached_property
    def class_map(self) -> list[int] | None:
        """The model's class for each of the data's labels (see `label_classes`); None: the targets are the
        model's predicted classes."""
        outputs = self.opened.outputs if self.opened.outputs is not None else num_outputs(self.opened.model)
        return label_classes(self.dataset.classes, self.opened.classes, outputs)

    def inputs(self, indices: list[int]) -> Inputs:
        """Dataset images by index with their targets in the model's classes (None where the data's labels do
        not name the model's classes: the analyses then take the predicted class)."""
        got = dataset_inputs(self.dataset, indices)
        cm = self.class_map
        labels = [cm[l] if cm is not None and l is not None else None for l in got.labels]
        return Inputs(got.names, got.x, labels, self.opened.classes or (self.dataset.classes if cm else None))


def label_classes(data: list[str], model: list[str] | None, outputs: int | None) -> list[int] | None:
    """Which model class each of the data's labels is: by name when the model's classes name them all (a
    folder of class folders named like the model's classes), else by index when the counts agree (ImageNet's
    synset folders in class order, a dataset the model was trained on), else None - the labels are not the
    model's (one folder of photos for a 1000-class model) and the target is the predicted class."""
    if len(data) <= 1:
        return None
    if model:
        where = {c: i for i, c in enumerate(model)}
        if all(c in where for c in data):
            return [where[c] for c in data]
    if outputs is not None and len(data) == outputs:
        return list(range(outputs))
    return None


@dataclass(frozen=True)
class Stage:
    title: str
    paper: str
    run: Callable[[Context], dict]  # writes OUT/<stage>/ and returns its summary for report.json
    settings: Callable[[ReportConfig, Opened], dict]  # what its result depends on besides the model and data
    schema: dict  # what its result file must hold to be reused (`zfnet.readback`); anything less redoes it
    sections: tuple[page.Section, ...]  # the page's sections its result feeds, in page order


STAGES: Registry[Stage] = Registry("report stage")


def stage(
    name: str,
    title: str,
    paper: str,
    settings: Callable[[ReportConfig, Opened], dict] = lambda c, o: {},
    schema: dict | None = None,
    sections: tuple[page.Section, ...] = (),
):
    """Register the decorated `run(ctx)` as report stage `name`: its title, the part of the paper, the settings
    its result depends on (the resume key), the schema its result file is read back with and the page's sections
    it feeds."""

    def wrap(run):
        STAGES.register(name, Stage(title, paper, run, settings, schema or {}, sections))
        return run

    return wrap


class Skip(Exception):
    """A stage with nothing to run on (no snapshots, no parts file); the reason is shown in the report."""


# --- the stages -------------------------------------------------------------------------------------------


def _run_files_stamp(c: ReportConfig, opened: Opened) -> dict:
    """The training run's files beside the weights (metrics, history, recipe), so that a repaired or new one redoes
    the model stage."""
    source = os.path.dirname(os.path.abspath(opened.weights)) if opened.weights else None
    names = ("metrics.json", "metrics.jsonl", "recipe.json")
    return {"run_files": [_sha(os.path.join(source, n)) if source else None for n in names]}


@stage(
    "model",
    "The model",
    "Fig. 3 (architecture), Sec. 3 (training)",
    _run_files_stamp,
    {"name": str, "architecture": dict, "preprocess": dict, "layers": [str], "figure": str},
    sections=(page.MODEL,),
)
def _model(ctx: Context) -> dict:
    out = ctx.folder("model")
    os.makedirs(out, exist_ok=True)
    pp = ctx.opened.preprocess
    arch = ctx.arch.to_json()
    name = ctx.opened.name
    architecture_figure(
        arch,
        os.path.join(out, "fig3.png"),
        f"{name}: {arch['params']:,} parameters, {pp.channels}x{pp.input_size}x{pp.input_size} input (drawn as Fig. 3)",
    )
    measured, unmeasured = _accuracy(ctx)
    source = os.path.dirname(os.path.abspath(ctx.opened.weights)) if ctx.opened.weights else None
    stored, history, recipe = _run_files(source)
    curves = None
    if history:
        training_curves(history, os.path.join(out, "curves.png"), title=f"{name}: training (Sec. 3 recipe)")
        curves = "curves.png"
    body = {
        "name": name,
        "weights": ctx.opened.weights,
        "weights_sha256": ctx.opened.weights_sha256,
        "initialization": ctx.opened.initial,
        "embedded": ctx.cfg.embedded,
        "classes": ctx.opened.classes or (ctx.dataset.classes if ctx.class_map else None),
        "targets": "labels" if ctx.class_map is not None else "predicted",
        "layers": ctx.layers,
        "preprocess": pp.to_dict(),
        "architecture": arch,
        "figure": "fig3.png",
        "curves": curves,
        "measured": None
        if measured is None
        else {**measured, "data": ctx.dataset.name, "split": ctx.dataset.split, "crop": "centre"},
        "unmeasured": unmeasured,
        "stored_metrics": _stored_summary(stored),
        "recipe": recipe,
        "epochs_logged": len(history),
    }
    atomic_write_json(os.path.join(out, "model.json"), body)
    return {"json": "model/model.json"}


def _accuracy(ctx: Context) -> tuple[dict | None, str | None]:
    """The model's top-1/top-5 error on the report's data where its labels are the model's classes, else why
    it is not measured."""
    if ctx.class_map is not None and ctx.class_map == list(range(len(ctx.class_map))):
        try:
            dist = Dist(device=ctx.device)
            return evaluate(
                ctx.opened.model, ctx.dataset, ctx.opened.preprocess, workers=ctx.cfg.workers, dist=dist
            ), None
        except UsageError as e:  # e.g. other classes than the model's: the rest of the section still stands
            return None, str(e)
    if ctx.class_map is not None:
        return None, "the data's classes are a subset of the model's, in another order (accuracy is not measured)"
    why = (
        "the data has no class labels"
        if len(ctx.dataset.classes) <= 1
        else f"the data's labels ({', '.join(ctx.dataset.classes[:3])}, ...) are not the model's classes"
    )
    return None, why + "; every analysis targets the predicted class"


def _labelled(ds: zdata.ImageSet) -> bool:
    return len(ds.classes) > 1


def _run_files(folder: str | None) -> tuple[dict, list[dict], dict | None]:
    """metrics.json, the per-epoch history (metrics.jsonl) and recipe.json of a training run folder."""
    if not folder:
        return {}, [], None

    def read(name, lines=False):
        path = os.path.join(folder, name)
        if not os.path.isfile(path):
            return [] if lines else None
        try:
            if lines:
                with open(path, encoding="utf-8") as f:
                    return [parse_json(l, path, dict, fix="") for l in f if l.strip()]
            return read_json(path, dict, fix="")
        except (Damaged, OSError, UnicodeDecodeError) as e:
            note(f"{str(e).split(';')[0]}: left out of the report; rewrite or remove it")
            return [] if lines else None

    history = [r for r in read("metrics.jsonl", True) if isinstance(r, dict) and "epoch" in r]
    need = ("train_top1_err", "val_top1_err", "val_top5_err", "train_loss", "val_loss", "lr")
    history = history if history and all(all(k in r for k in need) for r in history) else []
    return read("metrics.json") or {}, history, read("recipe.json")


def _stored_summary(m: dict) -> dict | None:
    """The accuracy the training run measured (centre and 10-crop), when it is on disk: the full test set's
    ("test", the embedded model's), else what `zfnet train` writes, its evaluation split's ("val")."""
    split = next((k for k in ("test", "val") if isinstance(m, dict) and isinstance(m.get(k), dict)), None)
    if split is None:
        return None
    test = m[split]
    images = test.get("images") or (test.get("centre") or {}).get("images")
    out = {
        "split": split,
        "data": m.get("data"),
        "images": images,
        "epochs": m.get("epochs"),
        "train_wall_seconds": m.get("train_wall_seconds"),
    }
    for crop in ("centre", "ten_crop"):
        if isinstance(test.get(crop), dict):
            out[crop] = {k: test[crop].get(k) for k in ("top1_err", "top5_err")}
    return out


@stage(
    "atlas",
    "Top-9 atlas and layer-1 filters",
    "Fig. 2 (top-9 per map), Fig. 5 (filters)",
    lambda c, o: {
        "layers": list(c.layers),
        "limit": c.limit,
        "seed": c.seed,
        "maps": c.atlas_maps,
        "visualize": c.visualize,
        "evidence": c.evidence,
    },  # fmt: skip
    {"complete": bool, "layer_order": [str], "layers": dict, "dataset": {"images": int}},
    sections=(page.FILTERS, page.ATLAS),
)
def _atlas(ctx: Context) -> dict:
    c = ctx.cfg
    manifest = build_atlas(
        ctx.opened,
        ctx.dataset,
        AtlasConfig(
            out=ctx.folder("atlas"),
            settings=AtlasSiteSettings(
                layers=tuple(ctx.layers),
                limit=c.limit,
                max_maps=c.atlas_maps,
                seed=c.seed,
                evidence=c.evidence,
                visualize=c.visualize,
            ),
            workers=c.workers,
            device=c.device,
        ),
        progress=_progress(),
    )
    assert manifest is not None  # a single process
    return {"json": "atlas/manifest.json", "images": manifest["dataset"]["images"], "layers": manifest["layer_order"]}


@stage(
    "evolution",
    "Feature evolution during training",
    "Fig. 4",
    lambda c, o: {
        "snapshots": c.snapshots,
        "train_split": c.train_split,
        "limit": c.evolution_limit,
        "layers": list(c.layers),
        "seed": c.seed,
        "found": _snapshot_stamp(c, o),
    },
    {"epochs": [int], "channels": dict, "figures": dict},
    sections=(page.EVOLUTION,),
)
def _evolution(ctx: Context) -> dict:
    c, pp = ctx.cfg, ctx.opened.preprocess
    snaps = _find(c, ctx.opened)
    try:
        train = zdata.open_dataset(ctx.data, c.train_split, pp)
    except UsageError as e:
        raise Skip(f"no training split to scan ({e})") from None
    info = run_evolution(
        ctx.opened.model,
        train.head(c.evolution_limit),
        snaps,
        ctx.folder("evolution"),
        EvolutionSettings(layers=tuple(ctx.layers), seed=c.seed),
        Run(device=ctx.device, batch_size=256, workers=c.workers, progress=_progress()),
    )
    return {"json": "evolution/evolution.json", "epochs": info["epochs"]}


def _snapshot_stamp(c: ReportConfig, opened: Opened) -> list:
    """Epochs and sizes of the snapshots the stage would read (new snapshots redo Fig. 4)."""
    try:
        return [[e, os.path.getsize(p)] for e, p in _find(c, opened)]
    except (Skip, UsageError, OSError):
        return []


def _find(c: ReportConfig, opened: Opened) -> list[tuple[int, str]]:
    if c.embedded and not c.snapshots:
        return embedded_snapshots()
    if c.snapshots:
        return find_snapshots(c.snapshots)  # asked for: none there is an error
    run = os.path.dirname(os.path.abspath(opened.weights)) if opened.weights else None
    try:
        snaps = find_snapshots(run) if run else []
    except UsageError:
        snaps = []
    if not snaps:
        raise Skip(
            "no training snapshots (epoch-NNN.safetensors): pass --snapshots RUN_DIR, the folder "
            "`zfnet train --snapshots` wrote"
        )
    return snaps


def _occlusion_settings(c: ReportConfig, size: int, **given) -> OcclusionSettings:
    """Fig. 6 fitted to the input (`OcclusionSettings.for_input`), with --window / --stride where given."""
    return OcclusionSettings.for_input(size, window=c.window, stride=c.stride, **given)


@stage(
    "occlusion",
    "Occlusion sensitivity",
    "Sec. 4.2, Fig. 6",
    lambda c, o: {"examples": c.examples, **_occlusion_settings(c, o.preprocess.input_size).to_json()},
    {"images": [{"figure": str, "base_prob": Finite, "prob": [[Finite]]}], "settings": dict},
    sections=(page.OCCLUSION,),
)
def _occlusion(ctx: Context) -> dict:
    settings = _occlusion_settings(ctx.cfg, ctx.opened.preprocess.input_size, layer=_top(ctx))
    inputs = ctx.inputs(ctx.picks[: ctx.cfg.examples])
    run = Run(device=ctx.device, progress=_progress())
    res = run_occlusion(ctx.opened, inputs, ctx.folder("occlusion"), settings, run)
    return {"json": "occlusion/occlusion.json", "images": len(res["images"])}


@stage(
    "evidence",
    "Evidence beside the pictures",
    "Sec. 2.1's projections and Fig. 6's maps checked (Adebayo et al. 2018; Nie et al. 2018; Petsiuk et al. 2018)",
    lambda c, o: {"layers": list(c.layers), "seed": c.seed, "images": EVIDENCE_IMAGES, "on": c.evidence},
    {"units": [dict], "summary": dict, "figures": dict},
    sections=(page.EVIDENCE,),
)
def _evidence(ctx: Context) -> dict:
    if not ctx.cfg.evidence:
        raise Skip("turned off (--no-evidence)")
    inputs = dataset_inputs(ctx.dataset, list(range(min(EVIDENCE_IMAGES, len(ctx.dataset)))), ctx.opened.classes)
    res = run_evidence(
        ctx.opened,
        inputs,
        ctx.folder("evidence"),
        EvidenceSettings(
            layers=tuple(ctx.layers), seed=ctx.cfg.seed, curve=False
        ),  # the score; the figure: the logits'
        Run(device=ctx.device),
        FaithfulnessSettings(seed=ctx.cfg.seed),
        faithful_images=4,
    )
    return {"json": "evidence/evidence.json", "units": len(res["units"])}


EVIDENCE_IMAGES = 64  # the units are drawn among the maps that fire on the first 64 images, each on its strongest


@stage(
    "correspondence",
    "Correspondence analysis",
    "arXiv Sec. 4.3 (Table 7)",
    lambda c, o: {"parts": _parts_file(c), "parts_sha256": _sha(_parts_file(c)), "images": c.parts_images},
    {"images": [str], "table": str, "figure": str, "delta": dict},
    sections=(page.CORRESPONDENCE,),
)
def _correspondence(ctx: Context) -> dict:
    c = ctx.cfg
    parts = _parts_file(c)
    if parts is None:
        raise Skip("needs a parts file: pass --parts FILE (which part sits where in each image)")
    spec = read_parts(parts)
    files = [os.path.join(c.parts_images, str(n)) for n in spec["images"]] if c.parts_images else []
    inputs = parts_inputs(
        spec, ctx.opened, check_files(files), files, None if files else ctx.data, None if files else ctx.dataset.split
    )
    _, high = _low_high(ctx)
    res = run_correspondence(
        ctx.opened,
        inputs,
        spec,
        ctx.folder("correspondence"),
        CorrespondenceSettings(layers=tuple(dict.fromkeys((_top(ctx), high))), seed=c.seed),
        Run(device=ctx.device),
        parts_file=parts,
    )
    return {"json": "correspondence/correspondence.json", "images": len(res["images"])}


def _parts_file(c: ReportConfig) -> str | None:
    if c.parts:
        return os.path.abspath(c.parts)
    if c.embedded:
        return os.path.join(folder(), EMBEDDED_PARTS)
    return None


def _sha(path: str | None) -> str | None:
    return file_sha256(path) if path and os.path.isfile(path) else None


def _top(ctx: Context) -> str:
    """The top convolutional layer shown (conv5 in the paper): occlusion's (b)/(c), correspondence."""
    conv = [l for l in ctx.layers if feature_shape(ctx, l) is not None]
    return conv[-1] if conv else ctx.layers[-1]


def feature_shape(ctx: Context, layer: str) -> tuple[int, ...] | None:
    """C x H x W of `layer`'s feature maps (None: it has none, fully connected)."""
    pp = ctx.opened.preprocess
    x = torch.zeros(1, pp.channels, pp.input_size, pp.input_size, device=ctx.device)
    with torch.no_grad(), eval_mode(ctx.opened.model):
        out = features(ctx.opened.model, x, [layer])[layer]
    return tuple(out.shape[1:]) if out.dim() == 4 else None


def _low_high(ctx: Context) -> tuple[str, str]:
    """The invariance figure's low and high layer: for the Fig. 3 family the paper's layer 1 and 7 (the last fc
    before the classifier, else the last conv); for any other model the first and the top layer shown."""
    if not isinstance(ctx.opened.model, ConvNet):
        return ctx.layers[0], _top(ctx)
    convs = [l.name for l in ctx.arch.layers if l.kind == "conv"]
    fcs = [l.name for l in ctx.arch.layers if l.kind == "fc"]
    return convs[0], (fcs[-2] if len(fcs) >= 2 else convs[-1])


@stage(
    "invariance",
    "Feature invariance",
    "arXiv Sec. 4.4 (translation, scale, rotation)",
    lambda c, o: {"examples": 5},
    {"images": [str], "transforms": list, "figure": str},
    sections=(page.INVARIANCE,),
)
def _invariance(ctx: Context) -> dict:
    inputs = ctx.inputs(ctx.picks[:5])
    settings = InvarianceSettings(layers=tuple(_low_high(ctx)))
    res = run_invariance(ctx.opened, inputs, ctx.folder("invariance"), settings, Run(device=ctx.device))
    return {"json": "invariance/invariance.json", "images": len(res["images"])}


@stage(
    "included",
    "Transfer, per-layer and ablation results",
    "Tables 2-6, Fig. 7 (from --include)",
    lambda c, o: {"include": [os.path.abspath(d) for d in c.include], "stamps": [_stamp(d) for d in c.include]},
    {"results": [dict]},
    sections=(page.INCLUDED,),
)
def _included(ctx: Context) -> dict:
    if not ctx.cfg.include:
        raise Skip(
            "no results given: pass --include DIR (a folder zfnet transfer / layerprobe / ablate / "
            "archselect / dedupe wrote)"
        )
    found = collect_results(ctx.cfg.include, ctx.folder("included"))
    if not found:
        raise Skip(f"no zfnet results (results.json, dedupe.json) under {', '.join(ctx.cfg.include)}")
    return {"json": "included/included.json", "results": len(found)}


def collect_results(folders: tuple[str, ...], out: str, depth: int = 3) -> list[dict]:
    """Every experiment result under `folders` (results.json with an "experiment", or dedupe.json): its table
    (table.md) and figures are copied to OUT/included/<k>/ and listed in included.json. Only plain file names
    the result itself lists are copied, so a result file never makes a path outside `out`."""
    found = []
    for top in folders:
        top = os.path.abspath(top)
        for root, dirs, files in os.walk(top):
            if root[len(top) :].count(os.sep) >= depth:
                dirs[:] = []
            dirs.sort()
            for name in ("results.json", "dedupe.json"):
                if name in files:
                    entry = _result_entry(os.path.join(root, name), name)
                    if entry:
                        found.append((root, entry))
    rows = []
    for k, (root, entry) in enumerate(found):
        dest = os.path.join(out, f"{k:02d}")
        os.makedirs(dest, exist_ok=True)
        copied = []
        for f in entry.pop("files"):
            if (
                isinstance(f, str)
                and f == os.path.basename(f)
                and f not in ("", ".", "..")
                and os.path.isfile(os.path.join(root, f))
            ):
                shutil.copyfile(os.path.join(root, f), os.path.join(dest, f))
                copied.append(f"{k:02d}/{f}")
        rows.append(
            {
                **entry,
                "source": root,
                "table": next((c for c in copied if c.endswith(".md")), None),
                "figures": [c for c in copied if c.endswith(".png")],
            }
        )
    if rows:
        atomic_write_json(os.path.join(out, "included.json"), {"results": rows})
    return rows


def _result_entry(path: str, name: str) -> dict | None:
    r = read_json_or_none(path, dict)
    if r is None:
        return None
    if name == "dedupe.json":
        files: dict = r["files"] if isinstance(r.get("files"), dict) else {}
        a, b = r.get("a") or {}, r.get("b") or {}
        summary = (
            f"{b.get('spec')} {b.get('split')} vs {a.get('spec')} {a.get('split')}: "
            f"{r.get('b_images_with_a_match')} images with a near-duplicate, "
            f"{r.get('excluded_a_images')} excluded"
        )
        return {
            "experiment": "dataset overlap removal (Sec. 5.2)",
            "summary": summary,
            "files": [files.get("sheet"), files.get("histogram")],
        }
    if "experiment" not in r:
        return None
    return {
        "experiment": str(r["experiment"]),
        "summary": "",
        "files": [r.get("table"), r.get("plot"), r.get("figure")],
    }


def _stamp(folder: str) -> list:
    """Sizes and times of the result files under `folder`, so that new results redo the stage."""
    out = []
    for root, _, files in os.walk(folder):
        for f in sorted(files):
            if f in ("results.json", "dedupe.json", "table.md"):
                st = os.stat(os.path.join(root, f))
                out.append([os.path.relpath(os.path.join(root, f), folder), st.st_size, int(st.st_mtime)])
    return sorted(out)


# --- running them -----------------------------------------------------------------------------------------


def _progress() -> bool:
    return os.environ.get("ZFNET_PROGRESS", "1") != "0"


def check_config(cfg: ReportConfig) -> None:
    """The report's files, refused before any model is opened (the ranges are refused when the settings are made,
    `ReportConfig.check`)."""
    for d in cfg.include:
        if not os.path.isdir(d):
            raise UsageError(f"--include {d!r} is not a folder; pass a folder a zfnet experiment wrote")
    if cfg.parts and not os.path.isfile(cfg.parts):
        raise UsageError(f"parts file {cfg.parts!r} does not exist; check the path given to --parts")
    if cfg.snapshots and not os.path.isdir(cfg.snapshots):
        raise UsageError(f"--snapshots {cfg.snapshots!r} is not a folder; pass the run folder `zfnet train` wrote")


def pick_examples(ds: zdata.ImageSet, n: int) -> list[int]:
    """The first image of each class, in the order the classes first appear, up to `n` (several classes, as
    Fig. 6 shows); a set without class labels gives its first `n` images."""
    if not _labelled(ds):
        return list(range(min(n, len(ds))))
    picks, seen = [], set()
    for i, label in enumerate(ds.labels.tolist()):
        if label not in seen:
            seen.add(label)
            picks.append(i)
            if len(picks) == n:
                break
    return picks


def _claim(out: str, identity: dict) -> dict:
    """The report.json of `out` (a new one when the folder is new); refuses a folder holding other files or
    another model's report."""
    path = os.path.join(out, "report.json")
    old = None
    if os.path.isfile(path):
        try:
            old = read_json(path, {"identity": dict, "stages": {}}, fix="")
        except Damaged as e:
            note(f"{str(e).split(';')[0]}; every stage is redone")
    if old is not None:
        if old.get("identity") != identity:
            changed = changed_keys(old.get("identity", {}), identity)
            raise UsageError(
                f"{out!r} holds a report of another model or data (changed: {', '.join(changed)}); "
                "pass a new --out, or delete the folder to remake it"
            )
        return old
    if old is None and os.path.isfile(path):
        return {"identity": identity, "stages": {}}
    if user_files(out):
        raise UsageError(f"{out!r} is not empty and holds no zfnet report; pass a new or empty --out")
    return {"identity": identity, "stages": {}}


def build_report(
    opened: Opened, dataset: zdata.ImageSet, cfg: ReportConfig, *, progress: bool = True, only: tuple[str, ...] = ()
) -> dict:
    """Run every stage (or `only` these) on the opened model and dataset that is not already done with the same
    settings, record each one's status in OUT/report.json, and write OUT/index.html. The model is opened once,
    by the caller; every stage uses that object. Returns report.json's content."""
    check_config(cfg)
    started = time.perf_counter()
    device = model_device(opened.model)
    for layer in cfg.layers:
        resolve_layer(opened.model, layer)
    identity = {
        "model": opened.name,
        "weights_sha256": opened.weights_sha256,
        "data": dataset.spec or dataset.name,
        "split": dataset.split,
        "mean": opened.mean,
        "images": len(dataset),
    }
    state = _claim(cfg.out, identity)
    os.makedirs(cfg.out, exist_ok=True)
    ctx = Context(cfg, opened, dataset, device, pick_examples(dataset, max(cfg.examples, 5)))
    settings = {k: v for k, v in asdict(cfg).items() if k not in RUN_ONLY}
    state.update(settings=settings, title=f"{opened.name} on {dataset.name} ({dataset.split})")
    names = [n for n in STAGES if not only or n in only]
    for i, name in enumerate(names, 1):
        st = STAGES.get(name)
        key = fingerprint({"identity": identity, "stage": name, **st.settings(cfg, opened)})
        prev = state["stages"].get(name, {})
        head = f"[{i}/{len(names)}] {name}: {st.paper}"
        if prev.get("key") == key and prev.get("status") == "done" and _present(cfg.out, prev, st.schema):
            _say(progress, f"{head} - reused ({prev['status']})")
            continue
        folder_ = os.path.join(cfg.out, name)
        if os.path.isdir(folder_):
            shutil.rmtree(folder_)  # results of other settings, or of a failed try
        os.makedirs(folder_)  # the stage's folder exists while it runs
        _say(progress, head)
        t0 = time.perf_counter()
        try:
            summary = st.run(ctx)
            entry = {"status": "done", **summary}
        except Skip as e:
            entry = {"status": "skipped", "reason": str(e)}
        except DiskFull:
            raise  # the finished stages stay in the work folder; the rerun continues (zfnet.outputs.staged)
        except OSError as e:
            if e.errno in (errno.ENOSPC, errno.EDQUOT):
                raise write_error(folder_, e) from None
            entry = _failed(name, folder_, e)
        except Exception as e:  # noqa: BLE001 - a failed stage is reported, the others go on
            entry = _failed(name, folder_, e)
        entry.update(key=key, seconds=round(time.perf_counter() - t0, 2), title=st.title, paper=st.paper)
        state["stages"][name] = entry
        _say(
            progress,
            f"    {entry['status']} in {entry['seconds']:.1f} s"
            + (f": {entry['reason']}" if "reason" in entry else ""),
        )
        state.update(wall_seconds=time.perf_counter() - started, environment=environment(device))
        atomic_write_json(os.path.join(cfg.out, "report.json"), state)  # a kill keeps every finished stage
    state["order"] = list(STAGES)
    state.update(wall_seconds=time.perf_counter() - started, environment=environment(device))
    atomic_write_json(os.path.join(cfg.out, "report.json"), state)
    page.write_report(cfg.out, page_parts())
    return state


def page_parts() -> list[tuple[str, tuple[page.Section, ...]]]:
    """Each stage with the page sections it feeds, in stage order: the page `render.page.write_report` draws."""
    return [(name, STAGES.get(name).sections) for name in STAGES]


def report(
    model: nn.Module | Opened | None = None,
    data: str | zdata.ImageSet | None = None,
    *,
    out: str = "report",
    preprocess: zdata.Preprocess | None = None,
    classes: list[str] | None = None,
    split: str | None = None,
    device: str = "auto",
    progress: bool = True,
    only: tuple[str, ...] = (),
    **options,
) -> dict:
    """`zfnet report` from Python: every analysis of the paper on `model` - any `nn.Module` (with its
    `preprocess`, default the model's own: the Fig. 3 family's table, else torchvision's ImageNet
    normalisation, and its class names), an `Opened`, or None for the embedded model - over `data` (a dataset
    spec, a folder of images, or an opened `ImageSet`; default with the embedded model: the bundled subset).
    `options` are `ReportConfig` fields (layers, limit, examples, window, ...). Returns report.json's content;
    raises `UsageError` listing the stages that failed, after writing the others."""
    dev = resolve_device(device)
    cfg = ReportConfig.build(None, out=out, device=device, **options)
    check_config(cfg)
    if model is None:
        opened, cfg = open_embedded(dev), replace(cfg, embedded=True)
        data = EMBEDDED_DATA if data is None else data
    elif isinstance(model, Opened):
        opened = model
    else:
        opened = opened_module(model.to(dev), preprocess, classes)
    if data is None:
        raise UsageError("pass data=: the images the report analyses (a dataset spec, a folder or an ImageSet)")
    opened = with_data_grey(opened, data, split, cfg.workers)  # the grey from the data when no mean says it
    if isinstance(data, zdata.ImageSet):
        dataset = data
    else:
        dataset = zdata.open_dataset(str(data), split, opened.preprocess)
    with staged(out, "report", reuse=True, legacy=("report.json",)) as work:
        state = build_report(opened, dataset, replace(cfg, out=work), progress=progress, only=only)
    failed = {n: e for n, e in state["stages"].items() if e["status"] == "failed"}
    if failed:  # what succeeded is written; the call fails as `zfnet report` does (exit 2)
        named = "; ".join(f"{n}: {e['reason']}" for n, e in failed.items())
        raise UsageError(f"{len(failed)} report stage(s) failed ({named}); the others are in {out}")
    return state


def _failed(name: str, folder_: str, e: Exception) -> dict:
    """A stage that raised: its one-line reason, and the traceback in STAGE/error.txt."""
    text = str(e).strip()
    first = text.splitlines()[0] if text else "no message"
    reason = first if isinstance(e, UsageError) and text else f"{type(e).__name__}: {first}"
    os.makedirs(folder_, exist_ok=True)
    atomic_write_text(os.path.join(folder_, "error.txt"), traceback.format_exc())
    return {"status": "failed", "reason": reason, "traceback": f"{name}/error.txt"}


def _present(out: str, entry: dict, schema: dict) -> bool:
    """The stage's result file is there, sound, complete (an atlas), and names figures that are on disk."""
    rel = entry.get("json")
    if not isinstance(rel, str):
        return False
    path = os.path.join(out, rel)
    r = read_json_or_none(path, schema)
    if r is None or (os.path.basename(rel) == "manifest.json" and r["complete"] is not True):
        return False
    folder_ = os.path.dirname(path)
    named = [r.get("figure")] + [i.get("figure") for i in r.get("images", []) if isinstance(i, dict)]
    return all(os.path.isfile(os.path.join(folder_, f)) for f in named if isinstance(f, str))


def _say(progress: bool, line: str) -> None:
    if progress:
        print(line, file=sys.stderr, flush=True)


__all__ = ["STAGES", "ReportConfig", "build_report", "check_config", "collect_results", "pick_examples", "report"]
