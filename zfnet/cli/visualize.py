"""`zfnet visualize`: the image that excites each unit most, by optimization (issue 37)."""

from __future__ import annotations

import json
import os

from ..methods.visualize import VisualizeSettings
from .args import add_device, add_model, positive
from .registry import command
from .settings import add_settings, settings_from_args


def _visualize_args(p) -> None:
    add_model(p)
    p.add_argument("--data", metavar="SPEC", help="images whose best value each unit's is set beside (and, for RGB, "
                   "the colour matrix's); with --pretrained the embedded test images")  # fmt: skip
    p.add_argument("--split", default=None, help="the data's split")
    p.add_argument("--limit", type=positive, default=2000, help="the first N images of --data (2000)")
    add_settings(p, VisualizeSettings)
    p.add_argument("--out", required=True, metavar="DIR")
    add_device(p)


@command(
    "visualize",
    "the image each unit wants most, optimized (Olah et al. 2017), beside its best dataset image's value",
    "zfnet visualize --pretrained --layer conv5 --units 0-15 --out vis\n"
    "  zfnet visualize --model torchvision:resnet18 --weights IMAGENET1K_V1 --data photos/ --layer layer3 "
    "--units 0-31 --out vis",
    arguments=_visualize_args,
    locks_out=True,
    output="reuse",
    legacy=("visualize.json",),
)
def _visualize_run(args) -> int:
    from .. import data as zdata
    from ..pipelines.visualize import run_visualize
    from ..pretrained import EMBEDDED_DATA
    from ..runtime import resolve_device
    from ..settings import Run
    from .args import open_from_args

    settings = settings_from_args(args, VisualizeSettings)  # a bad setting costs nothing: refused before loading
    dev = resolve_device(args.device)
    opened = open_from_args(args, dev)
    spec = args.data or (EMBEDDED_DATA if args.pretrained else None)
    data = zdata.open_dataset(spec, args.split, opened.preprocess).head(args.limit) if spec else None
    result = run_visualize(opened, args.work, settings, Run(device=dev), data)
    print(json.dumps({"out": args.out, "json": os.path.join(args.out, "visualize.json"), "layer": result["layer"],
                      "beats_dataset": result["beats_dataset"], "units": len(result["units"])}, indent=2))  # fmt: skip
    return 0
