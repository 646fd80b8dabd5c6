"""`zfnet atlas` (Fig. 2, with Fig. 4 and 5), `zfnet evolution` (Fig. 4) and `zfnet filters` (Fig. 5, Sec. 4.1)."""

from __future__ import annotations

import json
import os

from ..errors import UsageError
from ..methods.evolution import EvolutionSettings
from ..methods.filters import FiltersSettings
from .args import add_data, add_device, add_model, nonnegative, positive
from .registry import command
from .settings import add_settings, settings_from_args


def _atlas_args(p) -> None:
    add_model(p)
    add_data(p, limit=False)  # --limit is a setting here (AtlasSiteSettings.limit)
    from ..pipelines.atlas import AtlasSiteSettings

    add_settings(p, AtlasSiteSettings)
    p.add_argument(
        "--evolution",
        metavar="RUN",
        help="training run folder with snapshots (Fig. 4); 'pretrained' for the embedded model's",
    )
    p.add_argument("--out", required=True, metavar="DIR")
    p.add_argument("--batch-size", type=positive, default=128)
    p.add_argument("--workers", type=nonnegative, default=4, help="image-decoding processes (file datasets)")
    p.add_argument("--index", metavar="IDX", help="read the top-k from an activation index of this model and data "
                   "(zfnet index): no pass over the data")  # fmt: skip
    add_device(p)
    p.add_argument("--no-progress", action="store_true")


@command(
    "atlas",
    "top-k activations of every feature map over a dataset, projected (Fig. 2), with filters "
    "(Fig. 5) and evolution (Fig. 4), as a web page",
    "zfnet atlas --pretrained --data fashion-mnist --evolution pretrained --out atlas-fm\n"
    "  zfnet atlas --model zfnet --weights zf.safetensors --data imagenet:/data/imagenet --split val "
    "--out atlas-zf\n"
    "  zfnet atlas --model zfnet-small-64 --weights plain.safetensors --mean data --data folder:photos "
    "--split all --out atlas-photos\n"
    "  torchrun --nproc_per_node 2 -m zfnet atlas --model torchvision:vgg16 --weights vgg16.safetensors "
    "--data folder:photos --split all --layers conv5,conv10,conv13 --out atlas-vgg",
    arguments=_atlas_args,
    locks_out=True,
    output="reuse",
    legacy=("settings.json", "manifest.json"),
)
def _atlas_run(args) -> int:
    from .. import data as zdata
    from ..checkpoints import find_snapshots
    from ..pipelines.atlas import AtlasConfig, AtlasSiteSettings, build_atlas
    from ..pretrained import snapshots as embedded_snapshots
    from ..runtime import Dist, resolve_device, setup_processes, teardown, under_torchrun
    from .args import open_from_args

    if args.evolution == "pretrained" and not args.pretrained:
        raise UsageError("--evolution pretrained goes with --pretrained; for another model pass its run folder")
    cfg = AtlasConfig(
        out=args.work,
        settings=settings_from_args(args, AtlasSiteSettings),
        evolution=args.evolution if args.evolution in (None, "pretrained") else os.path.abspath(args.evolution),
        batch_size=args.batch_size,
        workers=args.workers,
        device=args.device,
        index=args.index,
    )
    dist = setup_processes(args.device) if under_torchrun() else Dist(device=resolve_device(args.device))
    snaps = None
    if args.evolution:
        snaps = embedded_snapshots() if args.evolution == "pretrained" else find_snapshots(args.evolution)
    opened = open_from_args(args, dist.device)
    dataset = zdata.open_dataset(args.data, args.split, opened.preprocess, args.exclude)
    train = zdata.open_dataset(args.data, "train", opened.preprocess) if snaps else None
    manifest = build_atlas(opened, dataset, cfg, snapshots=snaps, train=train, dist=dist, progress=not args.no_progress)
    teardown(dist)
    if manifest is not None:
        print(
            json.dumps(
                {
                    "out": args.out,
                    "page": os.path.join(args.out, "index.html"),
                    "layers": {l: manifest["layers"][l]["channels"] for l in manifest["layer_order"]},
                    "images": manifest["dataset"]["images"],
                    "skipped": len(manifest["skipped"]),
                    "scan_seconds": round(manifest["scan_seconds"], 2),
                    "wall_seconds": round(manifest["wall_seconds"], 2),
                },
                indent=2,
            )
        )
    return 0


def _filters_args(p) -> None:
    add_model(p)
    p.add_argument("--title", help="label of the first model (default: its name)")
    p.add_argument("--compare-model", metavar="NAME", help="a second model shown beside the first (Fig. 5)")
    p.add_argument("--compare-weights", metavar="FILE")
    p.add_argument("--compare-title")
    add_data(p, required=False, limit_default=2000)
    add_settings(p, FiltersSettings)
    p.add_argument("--out", required=True, metavar="DIR")
    add_device(p)


@command(
    "filters",
    "first-layer filters with RMS, dominant, dead and frequency diagnostics; two models side by "
    "side (Fig. 5, Sec. 4.1)",
    "zfnet filters --pretrained --data fashion-mnist --out filt\n"
    "  zfnet filters --model zfnet-small --weights clip.safetensors --title clipping "
    "--compare-model zfnet-small --compare-weights noclip.safetensors --compare-title 'no clipping' "
    "--data fashion-mnist --out filt",
    arguments=_filters_args,
    locks_out=True,
    output="fresh",
    legacy=("filters.json",),
)
def _filters_run(args) -> int:
    from .. import data as zdata
    from ..methods.filters import filters
    from ..render.atlas_site import write_filters
    from ..runtime import resolve_device
    from .args import open_from_args

    settings = settings_from_args(args, FiltersSettings)
    dev = resolve_device(args.device)
    entries = [(open_from_args(args, dev), args.title or ("embedded" if args.pretrained else args.model))]
    if args.compare_model:
        other = open_from_args(args, dev, model=args.compare_model, weights=args.compare_weights, pretrained=False)
        entries.append((other, args.compare_title or args.compare_model))
    reports = []
    for opened, title in entries:
        ds = None
        if args.data:
            ds = zdata.open_dataset(args.data, args.split, opened.preprocess, args.exclude).head(args.limit)
        reports.append((title, filters(opened.model, ds, settings=settings, progress=True)))
    info = write_filters(args.work, reports)
    print(json.dumps({"out": args.out, **info}, indent=2))
    return 0


def _evolution_args(p) -> None:
    p.add_argument("--model", metavar="NAME", help="the architecture the run trained")
    p.add_argument("--run", metavar="DIR", help="a `zfnet train` run folder (its snapshots/)")
    p.add_argument("--pretrained", action="store_true", help="the embedded model's snapshots")
    p.add_argument("--data", required=True, metavar="SPEC", help="the training data")
    p.add_argument("--split", default="train")
    add_settings(p, EvolutionSettings)
    p.add_argument("--limit", type=positive, help="training images scanned per snapshot (default: all)")
    p.add_argument("--out", required=True, metavar="DIR")
    add_device(p)


@command(
    "evolution",
    "strongest activation across the training set at each snapshot epoch, projected (Fig. 4)",
    "zfnet evolution --pretrained --data fashion-mnist --out evo\n"
    "  zfnet evolution --model zfnet --run runs/zf --data imagenet:/data/imagenet --limit 50000 --out evo",
    arguments=_evolution_args,
    locks_out=True,
    output="fresh",
    legacy=("evolution",),
)
def _evolution_run(args) -> int:
    from .. import data as zdata
    from ..checkpoints import find_snapshots
    from ..pipelines.atlas import run_evolution
    from ..pretrained import open_embedded
    from ..pretrained import snapshots as embedded_snapshots
    from ..runtime import resolve_device
    from ..settings import Run
    from ..weights import WeightsFile, open_model

    settings = settings_from_args(args, EvolutionSettings)

    dev = resolve_device(args.device)
    if args.pretrained:
        if args.model or args.run:
            raise UsageError("--pretrained uses the embedded model's snapshots; drop --model/--run")
        opened = open_embedded(dev)
        snaps: list = embedded_snapshots()
    else:
        if not (args.model and args.run):
            raise UsageError("evolution needs --model and --run (or --pretrained)")
        found = find_snapshots(args.run)
        last = WeightsFile.read(found[-1][1])  # the architecture and preprocessing, read once
        opened = open_model(args.model, last, device=dev)
        snaps = [*found[:-1], (found[-1][0], last)]
    train = zdata.open_dataset(args.data, args.split, opened.preprocess).head(args.limit)
    info = run_evolution(
        opened.model, train, snaps, args.work, settings, Run(device=dev, batch_size=256, progress=True)
    )
    print(json.dumps({"out": args.out, **info}, indent=2))
    return 0
