"""`zfnet occlusion`: Fig. 6 - occlusion sensitivity with incremental inference (Sec. 4.2)."""

from __future__ import annotations

import json
import os

from ..methods.occlusion import OcclusionSettings
from .args import add_device, add_images, add_model, check_images
from .registry import command
from .settings import add_settings, settings_from_args


def _occlusion_args(p) -> None:
    add_model(p)
    add_images(p)
    add_settings(p, OcclusionSettings)
    p.add_argument("--out", required=True, metavar="DIR")
    add_device(p)
    p.add_argument("--no-progress", action="store_true")


@command(
    "occlusion",
    "occlusion sensitivity: activity, p(true class) and most probable class per occluder position (Sec. 4.2, Fig. 6)",
    "zfnet occlusion --pretrained --data fashion-mnist --split test --index 0 --index 1 --window 8 --stride 2 "
    "--out occ\n"
    "  zfnet occlusion --model zfnet --weights zf.safetensors --image dog.jpg --label 151 --out occ-dog",
    arguments=_occlusion_args,
    locks_out=True,
    output="fresh",
    legacy=("occlusion.json",),
)
def _occlusion_run(args) -> int:
    from ..pipelines.occlusion import run_occlusion
    from ..runtime import resolve_device
    from ..settings import Run
    from .args import inputs_from_args, open_from_args

    settings = settings_from_args(args, OcclusionSettings)  # a bad setting costs nothing: refused before loading
    pil = check_images(args)  # unreadable images are refused before the model is loaded
    dev = resolve_device(args.device)
    opened = open_from_args(args, dev, grey=True)
    inputs = inputs_from_args(args, opened, pil)
    result = run_occlusion(opened, inputs, args.work, settings, Run(device=dev, progress=not args.no_progress))
    print(
        json.dumps(
            {
                "out": args.out,
                "json": os.path.join(args.out, "occlusion.json"),
                "figures": [r["figure"] for r in result["images"]],
                "seconds": [round(r["seconds"], 3) for r in result["images"]],
            },
            indent=2,
        )
    )
    return 0
