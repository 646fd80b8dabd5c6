"""`zfnet dedupe`: images of one set that also occur in another (Sec. 5.2's overlap removal)."""

from __future__ import annotations

import json
import os

from .args import add_device, nonnegative, positive
from .registry import command


def _args(p) -> None:
    p.add_argument("set_a", metavar="SET_A", help="the set to clean (e.g. the training set): dataset spec or folder")
    p.add_argument("set_b", metavar="SET_B", help="the set whose images must not be in A (e.g. a test set)")
    p.add_argument("--split-a", help="split of SET_A (default: the dataset's evaluation split)")
    p.add_argument("--split-b", help="split of SET_B")
    p.add_argument("--threshold", type=float, default=0.9, help="normalized correlation that counts as a duplicate")
    p.add_argument("--size", type=positive, default=16, help="side of the downsampled copies, px")
    p.add_argument("--k", type=positive, default=5, help="A matches kept per B image")
    p.add_argument("--block", type=positive, default=4096, help="A images compared per matrix product")
    p.add_argument("--workers", type=nonnegative, default=4)
    p.add_argument("--out", required=True, metavar="DIR")
    add_device(p)
    p.add_argument("--no-progress", action="store_true")


@command(
    "dedupe",
    "find images of SET_B that also occur in SET_A (resized, re-encoded, cropped) and write an "
    "exclusion list (Sec. 5.2 footnote)",
    "zfnet dedupe fashion-mnist fashion-mnist --split-a train --split-b test --out dd\n"
    "  zfnet dedupe imagenet:/data/imagenet caltech256:/data/caltech --split-a train --device cuda --out dd\n"
    "  zfnet train --recipe r.json --exclude dd/exclude.txt --out runs/clean",
    arguments=_args,
    locks_out=True,
    output="fresh",
    legacy=("dedupe.json", "pairs.csv"),
)
def _run(args) -> int:
    from ..pipelines.dedupe import run_dedupe

    r = run_dedupe(
        args.set_a,
        args.set_b,
        out=args.work,
        split_a=args.split_a,
        split_b=args.split_b,
        threshold=args.threshold,
        size=args.size,
        k=args.k,
        block=args.block,
        workers=args.workers,
        device=args.device,
        progress=not args.no_progress,
    )
    print(
        json.dumps(
            {
                "out": args.out,
                "pairs": len(r["pairs"]),
                "excluded_a_images": r["excluded_a_images"],
                "exclude": os.path.join(args.out, "exclude.txt"),
                "comparisons_per_second": round(r["comparisons_per_second"]),
            },
            indent=2,
        )
    )
    return 0
