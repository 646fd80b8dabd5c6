"""`zfnet report`: the whole paper on one model, as one static page (the main job)."""

from __future__ import annotations

import os
import sys

from .args import add_device, add_model, positive
from .registry import command


def _args(p) -> None:
    add_model(p)  # none of --model/--weights/--pretrained: the embedded Fashion-MNIST model
    p.add_argument(
        "--data",
        metavar="SPEC",
        help="the images analysed (default with the embedded model: the Fashion-MNIST subset bundled with zfnet)",
    )
    p.add_argument("--split", help="the split analysed (default: the dataset's evaluation split)")
    p.add_argument("--train-split", default="train", help="the split Fig. 4 scans (default train)")
    p.add_argument("--snapshots", metavar="RUN_DIR", help="training snapshots for Fig. 4 (default: beside --weights)")
    p.add_argument(
        "--parts",
        metavar="FILE",
        help="parts file for the correspondence table (see zfnet "
        "correspondence; default with the embedded model: the shipped ankle-boot parts)",
    )
    p.add_argument("--parts-images", metavar="DIR", help="folder of the parts file's images (else dataset indices)")
    p.add_argument(
        "--include",
        action="append",
        default=[],
        metavar="DIR",
        help="a folder of zfnet transfer / layerprobe / ablate / archselect / dedupe results (repeatable)",
    )
    p.add_argument(
        "--layers",
        default="",
        help="comma-separated atlas layers (default: conv1..conv5 for the Fig. 3 family, else the rectified "
        "output of each resolution stage, at most five; see zfnet layers)",
    )
    p.add_argument("--limit", type=positive, help="images the atlas scans (default: the whole split)")
    p.add_argument(
        "--atlas-maps",
        type=positive,
        help="maps per layer projected for the atlas viewer (default: every map; 16 a layer are always shown)",
    )
    p.add_argument("--evolution-limit", type=positive, default=2000, help="training images scanned per snapshot")
    p.add_argument("--examples", type=positive, default=6, help="occlusion images, each of another class")
    p.add_argument("--window", type=positive, help="occluder side in pixels (default 2/7 of the input)")
    p.add_argument("--stride", type=positive, help="occluder step (default a quarter of the window)")
    p.add_argument("--only", default="", help="comma-separated stages to (re)run; the page shows all")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--workers", type=int, default=0, help="image decoding processes")
    p.add_argument("--out", default="report", metavar="DIR", help="output folder (default report/)")
    add_device(p)


@command(
    "report",
    "every analysis of the paper on one model (Figs. 2-6, correspondence, invariance, Tables "
    "2-6 with --include) as one static page: OUT/index.html",
    "zfnet report --out report/                         # the embedded model, in about a minute\n"
    "  zfnet report --model zfnet-small --weights runs/fm/model.safetensors --data fashion-mnist --out rep\n"
    "  zfnet report --model torchvision:resnet18 --weights IMAGENET1K_V1 --data photos/ --out rep\n"
    "  zfnet report --model mynets:build --weights my.pth --input-size 96 --classes classes.txt --data photos/ "
    "--out rep",
    arguments=_args,
    locks_out=True,
    output="reuse",
    legacy=("report.json",),
)
def _run(args) -> int:
    from .. import data as zdata
    from ..errors import UsageError
    from ..pipelines.report import STAGES, ReportConfig, build_report, check_config
    from ..pretrained import EMBEDDED_DATA
    from ..runtime import resolve_device
    from .args import open_from_args, wants_embedded

    only = tuple(s for s in args.only.split(",") if s)
    for s in only:
        if s not in STAGES:
            raise UsageError(f"--only {s!r} is not a stage; choose from {', '.join(STAGES)}")
    embedded = wants_embedded(args)
    if not embedded and not args.data:
        raise UsageError("pass --data SPEC: the images the report analyses (the model's own kind of images)")
    cfg = ReportConfig(
        out=args.work,
        train_split=args.train_split,
        embedded=embedded,
        snapshots=args.snapshots,
        parts=args.parts,
        parts_images=args.parts_images,
        include=tuple(args.include),
        layers=tuple(l for l in args.layers.split(",") if l),
        limit=args.limit,
        atlas_maps=args.atlas_maps,
        evolution_limit=args.evolution_limit,
        examples=args.examples,
        window=args.window,
        stride=args.stride,
        seed=args.seed,
        workers=args.workers,
        device=args.device,
    )
    check_config(cfg)
    dev = resolve_device(args.device)
    data = args.data or EMBEDDED_DATA
    opened = open_from_args(args, dev, pretrained=embedded, data=data)  # no --model/--weights: the embedded one
    dataset = zdata.open_dataset(data, args.split, opened.preprocess)
    state = build_report(opened, dataset, cfg, only=only)
    return _said(state, os.path.join(args.out, "index.html"))


def _said(state: dict, page: str) -> int:
    """One line naming the page and each stage's status; a failed stage is one error line and exit 2."""
    failed = {n: e for n, e in state["stages"].items() if e["status"] == "failed"}
    print(
        f"report: {page} ({state['wall_seconds']:.0f} s; "
        + ", ".join(f"{n} {e['status']}" for n, e in state["stages"].items())
        + ")"
    )
    if failed:
        n, e = next(iter(failed.items()))
        print(
            f"zfnet report: error: stage {n} failed ({e['reason']}); the other sections are in {page}; "
            f"fix it and rerun the same command (finished stages are reused)",
            file=sys.stderr,
        )
        return 2
    return 0
