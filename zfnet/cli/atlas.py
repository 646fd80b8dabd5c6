"""`zfnet atlas` (Fig. 2, with Fig. 4 and 5), `zfnet evolution` (Fig. 4) and `zfnet filters` (Fig. 5, Sec. 4.1)."""

from __future__ import annotations

import json
import os

from ..errors import UsageError
from .args import add_data, add_device, add_mode, add_model, nonnegative, positive
from .registry import command


def _atlas_args(p) -> None:
    add_model(p)
    add_data(p)
    p.add_argument("--layers", help="comma-separated layers (default conv1..conv5, or every conv layer)")
    p.add_argument("--k", type=positive, default=9, help="top-k activations per map (Fig. 2: 9)")
    p.add_argument(
        "--per-class",
        type=nonnegative,
        default=0,
        metavar="K",
        help="also keep each map's top-K images within every class (same pass; the viewer and zfnet explore show them)",
    )
    p.add_argument("--out", required=True, metavar="DIR")
    add_mode(p)
    p.add_argument("--batch-size", type=positive, default=128)
    p.add_argument("--workers", type=nonnegative, default=4, help="image-decoding processes (file datasets)")
    p.add_argument("--panel-maps", type=positive, default=16, help="maps per Fig. 2 panel")
    p.add_argument(
        "--max-maps",
        type=positive,
        help="maps per layer projected for the viewer (default: every map; the panel's always)",
    )
    p.add_argument(
        "--evolution",
        metavar="RUN",
        help="training run folder with snapshots (Fig. 4); 'pretrained' for the embedded model's",
    )
    p.add_argument("--evolution-maps", type=positive, default=8, help="maps per layer in Fig. 4")
    p.add_argument("--evolution-limit", type=positive, help="training images scanned per snapshot (default: all)")
    p.add_argument("--seed", type=int, default=0, help="which maps the panels and Fig. 4 show")
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
    from ..pipelines.atlas import AtlasConfig, build_atlas
    from ..pretrained import snapshots as embedded_snapshots
    from ..runtime import Dist, resolve_device, setup_processes, teardown, under_torchrun
    from .args import open_from_args

    if args.evolution == "pretrained" and not args.pretrained:
        raise UsageError("--evolution pretrained goes with --pretrained; for another model pass its run folder")
    cfg = AtlasConfig(
        out=args.work,
        layers=tuple(l for l in (args.layers or "").split(",") if l),
        k=args.k,
        mode=args.mode,
        limit=args.limit,
        batch_size=args.batch_size,
        workers=args.workers,
        panel_maps=args.panel_maps,
        max_maps=args.max_maps,
        evolution_limit=args.evolution_limit,
        evolution=None
        if args.evolution is None
        else ("pretrained" if args.evolution == "pretrained" else os.path.abspath(args.evolution)),
        evolution_maps=args.evolution_maps,
        seed=args.seed,
        per_class=args.per_class,
        device=args.device,
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
        reports.append((title, filters(opened.model, ds, progress=True)))
    info = write_filters(args.work, reports)
    print(json.dumps({"out": args.out, **info}, indent=2))
    return 0


def _evolution_args(p) -> None:
    p.add_argument("--model", metavar="NAME", help="the architecture the run trained")
    p.add_argument("--run", metavar="DIR", help="a `zfnet train` run folder (its snapshots/)")
    p.add_argument("--pretrained", action="store_true", help="the embedded model's snapshots")
    p.add_argument("--data", required=True, metavar="SPEC", help="the training data")
    p.add_argument("--split", default="train")
    p.add_argument("--layers", help="comma-separated layers (default conv1..conv5)")
    p.add_argument("--maps", type=positive, default=8, help="randomly chosen maps per layer")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--limit", type=positive, help="training images scanned per snapshot (default: all)")
    add_mode(p)
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
    from ..weights import WeightsFile, open_model

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
    layers = [l for l in (args.layers or "").split(",") if l] or None
    info = run_evolution(
        opened.model, train, snaps, args.work, layers=layers, maps=args.maps, seed=args.seed, mode=args.mode, device=dev
    )
    print(json.dumps({"out": args.out, **info}, indent=2))
    return 0
