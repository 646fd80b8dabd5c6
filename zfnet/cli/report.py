"""`zfnet report`: the whole paper on one model, as one static page (the main job)."""

from __future__ import annotations

import os
import sys

from .args import add_device, add_model
from .registry import command
from .settings import add_settings, settings_from_args


def _args(p) -> None:
    from ..pipelines.report import ReportConfig

    add_model(p)  # none of --model/--weights/--pretrained: the embedded Fashion-MNIST model
    p.add_argument(
        "--data",
        metavar="SPEC",
        help="the images analysed (default with the embedded model: the Fashion-MNIST subset bundled with zfnet)",
    )
    p.add_argument("--split", help="the split analysed (default: the dataset's evaluation split)")
    p.add_argument(
        "--include",
        action="append",
        default=[],
        metavar="DIR",
        help="a folder of zfnet transfer / layerprobe / ablate / archselect / dedupe results (repeatable)",
    )
    p.add_argument("--only", default="", help="comma-separated stages to (re)run; the page shows all")
    p.add_argument("--out", default="report", metavar="DIR", help="output folder (default report/)")
    add_device(p)
    add_settings(p, ReportConfig, skip=("out", "embedded", "include", "device"))


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
    cfg = settings_from_args(
        args, ReportConfig, out=args.work, embedded=embedded, include=tuple(args.include), device=args.device
    )
    check_config(cfg)
    dev = resolve_device(args.device)
    data = args.data or EMBEDDED_DATA
    opened = open_from_args(  # none of --model/--weights: the embedded one; --seed seeds an unweighted model
        args, dev, grey=True, pretrained=embedded, data=data, seed=cfg.seed, workers=cfg.workers
    )
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
