"""`zfnet correspondence` and `zfnet invariance` (arXiv version's analyses)."""

from __future__ import annotations

import json
import os

from ..methods.correspondence import CorrespondenceSettings
from ..methods.invariance import InvarianceSettings
from ..settings import Run
from .args import add_device, add_images, add_model
from .registry import command
from .settings import add_settings, settings_from_args


def _corr_args(p) -> None:
    add_model(p)
    p.add_argument(
        "--parts",
        metavar="FILE",
        help="JSON: images and a box per image for each part (default with --pretrained: the shipped ankle-boot parts)",
    )
    p.add_argument(
        "--images", metavar="DIR", help="a folder holding the parts file's images (else they are indices into --data)"
    )
    p.add_argument(
        "--data", metavar="SPEC", help="the dataset the parts file's indices point into (default: the file's 'data')"
    )
    p.add_argument("--split")
    add_settings(p, CorrespondenceSettings)
    p.add_argument("--out", required=True, metavar="DIR")
    add_device(p)


@command(
    "correspondence",
    "mean feature sign change when the same part is masked in different images (arXiv Sec. 4.3, correspondence table)",
    "zfnet correspondence --pretrained --out corr\n"
    "  zfnet correspondence --model zfnet --weights zf.safetensors --parts dogs.json --images dogs/ --out corr",
    arguments=_corr_args,
    locks_out=True,
    output="fresh",
    legacy=("correspondence.json",),
)
def _corr_run(args) -> int:
    from ..errors import UsageError
    from ..pipelines.analyses import parts_inputs, read_parts, run_correspondence
    from ..pipelines.inputs import check_files
    from ..pretrained import EMBEDDED_PARTS, folder
    from ..runtime import resolve_device
    from .args import open_from_args

    settings = settings_from_args(args, CorrespondenceSettings)
    parts_file = args.parts
    if parts_file is None:
        if not args.pretrained:
            raise UsageError("pass --parts FILE (which part sits where in each image)")
        parts_file = os.path.join(folder(), EMBEDDED_PARTS)
    spec = read_parts(parts_file)
    files = [os.path.join(args.images, str(n)) for n in spec["images"]] if args.images else []
    pil = check_files(files)  # unreadable images are refused before the model is loaded
    dev = resolve_device(args.device)
    if not args.images and not (args.data or spec.get("data")):
        raise UsageError(
            "the parts file names dataset indices but no dataset: pass --data SPEC (or --images DIR for files)"
        )
    opened = open_from_args(
        args, dev, grey=True, data=args.data or spec.get("data"), split=args.split or spec.get("split")
    )
    inputs = parts_inputs(spec, opened, pil, files, args.data, args.split)
    r = run_correspondence(
        opened,
        inputs,
        spec,
        args.work,
        settings,
        Run(device=dev),
        parts_file=parts_file,
    )
    print(
        json.dumps(
            {"out": args.out, "delta": r["delta"], "std": r["std"], "table": os.path.join(args.out, r["table"])},
            indent=2,
        )
    )
    return 0


def _inv_args(p) -> None:
    add_model(p)
    add_images(p)
    add_settings(p, InvarianceSettings)
    p.add_argument("--out", required=True, metavar="DIR")
    add_device(p)


@command(
    "invariance",
    "feature distance and p(true class) under translation, scaling and rotation (arXiv 'Feature Invariance' figure)",
    "zfnet invariance --pretrained --data fashion-mnist --split test --index 0 --index 1 --index 2 --out inv\n"
    "  zfnet invariance --model zfnet --weights zf.safetensors --image a.jpg --label 3 --out inv",
    arguments=_inv_args,
    locks_out=True,
    output="fresh",
    legacy=("invariance.json",),
)
def _inv_run(args) -> int:
    from ..pipelines.analyses import run_invariance
    from ..runtime import resolve_device
    from .args import check_images, inputs_from_args, open_from_args

    settings = settings_from_args(args, InvarianceSettings)  # before any model is opened
    pil = check_images(args)
    dev = resolve_device(args.device)
    opened = open_from_args(args, dev, grey=True)
    inputs = inputs_from_args(args, opened, pil)
    r = run_invariance(opened, inputs, args.work, settings, Run(device=dev))
    print(json.dumps({"out": args.out, "figure": os.path.join(args.out, r["figure"]), "images": r["images"]}, indent=2))
    return 0
