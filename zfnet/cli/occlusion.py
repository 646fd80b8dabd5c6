"""`zfnet occlusion`: Fig. 6 - occlusion sensitivity with incremental inference (Sec. 4.2)."""

from __future__ import annotations

import json
import os

from ..methods.occlusion import MODES, PRECISIONS
from .args import FILL_HELP, add_device, add_images, add_model, check_images, fill, positive
from .registry import command


def _occlusion_args(p) -> None:
    add_model(p)
    add_images(p)
    p.add_argument("--window", type=positive, default=32, help="occluder side, px (model input)")
    p.add_argument("--stride", type=positive, default=8, help="occluder step, px")
    p.add_argument("--fill", type=fill, default="grey", help="the occluder: " + FILL_HELP)
    p.add_argument("--layer", default="conv5", help="layer whose strongest map (b) and (c) show")
    p.add_argument(
        "--mode",
        default="auto",
        choices=MODES,
        help="auto (default): exact where the model's geometry says it pays, else naive; exact: incremental "
        "inference; naive: whole forwards; approx: layers on the change in bfloat16 and checkerboard drill-down",
    )
    p.add_argument(
        "--tau",
        type=float,
        default=1.0,
        help="approx: the largest share of a map the region may grow to (Krypton's threshold; 1: no cap)",
    )
    p.add_argument(
        "--drill",
        type=float,
        default=0.4,
        help="approx: the checkerboard's half is computed, the other half interpolated from its four neighbours; "
        "this share of those, where p(true) varies most around them, is computed too (1 = all)",
    )
    p.add_argument(
        "--precision",
        default="bfloat16",
        choices=PRECISIONS,
        help="approx: convs and linear layers see the change the occluder makes in this precision "
        "(the kept fp32 values plus the change: the error scales with the change)",
    )
    p.add_argument("--compare-exact", action="store_true", help="approx: also run exact and report the deviation")
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
    from ..pipelines.occlusion import OcclusionOptions, run_occlusion
    from ..runtime import resolve_device
    from .args import inputs_from_args, open_from_args

    pil = check_images(args)  # unreadable images are refused before the model is loaded
    dev = resolve_device(args.device)
    opened = open_from_args(args, dev)
    inputs = inputs_from_args(args, opened, pil)
    options = OcclusionOptions(
        window=args.window,
        stride=args.stride,
        fill=args.fill,
        layer=args.layer,
        mode=args.mode,
        tau=args.tau,
        drill=args.drill,
        precision=args.precision,
        compare_exact=args.compare_exact,
    )
    result = run_occlusion(opened, inputs, args.work, options=options, device=dev, progress=not args.no_progress)
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
