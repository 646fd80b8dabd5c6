"""`zfnet evidence`: per-unit sanity and causal scores beside the projections (issue 36)."""

from __future__ import annotations

import json
import os

from ..methods.evidence import EvidenceSettings
from ..methods.faithfulness import FaithfulnessSettings
from .args import add_device, add_images, add_model, check_images, nonnegative, positive
from .registry import command
from .settings import add_settings, settings_from_args


def _evidence_args(p) -> None:
    add_model(p)
    add_images(p)
    p.add_argument(
        "--limit", type=positive, default=64, help="without --image/--index: the first N images of --data (64)"
    )
    add_settings(p, EvidenceSettings)
    p.add_argument(
        "--faithful-images",
        type=nonnegative,
        default=4,
        metavar="N",
        help="deletion and insertion curves of the class-level maps of the first N images (0: none; default 4)",
    )
    add_settings(p, FaithfulnessSettings, skip=("fill", "seed"))  # the evidence's fill and seed
    p.add_argument("--out", required=True, metavar="DIR")
    add_device(p)


@command(
    "evidence",
    "does a projection show the unit? cascading randomization, specificity and causal maps per unit (issue 36)",
    "zfnet evidence --pretrained --layers conv1,conv3,conv5 --out ev\n"
    "  zfnet evidence --model torchvision:resnet18 --weights IMAGENET1K_V1 --data photos/ --limit 32 --out ev",
    arguments=_evidence_args,
    locks_out=True,
    output="fresh",
    legacy=("evidence.json",),
)
def _evidence_run(args) -> int:
    from .. import data as zdata
    from ..errors import UsageError
    from ..pipelines.evidence import run_evidence
    from ..pipelines.inputs import dataset_inputs
    from ..pretrained import EMBEDDED_DATA
    from ..runtime import resolve_device
    from ..settings import Run
    from .args import inputs_from_args, open_from_args

    settings = settings_from_args(args, EvidenceSettings)  # a bad setting costs nothing: refused before loading
    faithful = settings_from_args(args, FaithfulnessSettings, fill=settings.fill, seed=settings.seed)
    pil = check_images(args)
    dev = resolve_device(args.device)
    opened = open_from_args(args, dev, grey=True)
    if args.image or args.index:
        inputs = inputs_from_args(args, opened, pil)
    else:
        spec = args.data or (EMBEDDED_DATA if args.pretrained else None)
        if spec is None:
            raise UsageError("pass --data SPEC (its first --limit images), or --image FILE / --data SPEC --index N")
        dataset = zdata.open_dataset(spec, args.split, opened.preprocess)
        inputs = dataset_inputs(dataset, list(range(min(args.limit, len(dataset)))), opened.classes)
    result = run_evidence(opened, inputs, args.work, settings, Run(device=dev), faithful, args.faithful_images)
    print(json.dumps({"out": args.out, "json": os.path.join(args.out, "evidence.json"),
                      "figures": result["figures"], "summary": result["summary"]}, indent=2))  # fmt: skip
    return 0
