"""`zfnet transfer` (Sec. 5.2, Tables 3-5, Fig. 7) and `zfnet layerprobe` (Sec. 5.3, Table 6)."""

from __future__ import annotations

import argparse
import json
import os

from .args import add_device, add_model, positive
from .registry import command


def _common(p) -> None:
    add_model(p)
    p.add_argument("--data", required=True, metavar="SPEC", help="the target dataset (caltech101:DIR, mnist5k, ...)")
    p.add_argument("--split", help="the split the folds are drawn from (Caltech: all)")
    p.add_argument("--exclude", metavar="FILE", help="leave out the images listed (`zfnet dedupe`)")
    p.add_argument("--protocol", default="folds", help="caltech101, caltech256, pascal2012 or folds")
    p.add_argument("--folds", type=positive, default=5)
    p.add_argument("--test-per-class", type=positive, help="test images per class (default: the protocol's)")
    p.add_argument("--out", required=True, metavar="DIR")
    add_device(p)
    p.add_argument("--no-progress", action="store_true")


def _transfer_args(p) -> None:
    _common(p)
    p.add_argument(
        "--per-class",
        default=None,
        help="comma-separated training images per class (default: the protocol's, e.g. 15,30)",
    )
    p.add_argument("--layer", default="fc7", help="the fixed features the softmax is trained on (layer 7)")
    p.add_argument("--scratch-epochs", type=positive, default=30, help="epochs of the from-scratch rows")
    p.add_argument("--no-scratch", action="store_true", help="skip the from-scratch rows")


@command(
    "transfer",
    "fixed layers 1-7 + a new softmax on another dataset, vs the same net trained from scratch "
    "(Sec. 5.2, Tables 3-5, Fig. 7)",
    "zfnet transfer --pretrained --data mnist5k --split trainval --per-class 1,2,5,10,15,30 --out tr\n"
    "  zfnet transfer --model zfnet --weights zf.safetensors --data caltech101:/data/caltech --protocol "
    "caltech101 --out tr101",
    arguments=_transfer_args,
    locks_out=True,
    output="reuse",
    legacy=("results.json",),
)
def _transfer_run(args) -> int:
    from .. import data as zdata
    from ..errors import UsageError
    from ..pipelines.transfer import TransferOptions, check_protocol, run_pascal, run_transfer
    from ..runtime import resolve_device
    from .args import open_from_args

    try:
        per = tuple(positive(v) for v in args.per_class.split(",")) if args.per_class else None
    except argparse.ArgumentTypeError as e:
        raise UsageError(f"--per-class {args.per_class!r}: {e}; pass whole numbers >= 1, comma-separated") from None
    check_protocol(args.protocol)
    dev = resolve_device(args.device)
    progress = not args.no_progress
    if args.protocol == "pascal2012":
        opened = open_from_args(args, dev, split="train")
        train = zdata.open_dataset(args.data, "train", opened.preprocess, args.exclude)
        val = zdata.open_dataset(args.data, "val", opened.preprocess, args.exclude)
        r = run_pascal(opened, train, val, args.work, layer=args.layer, device=dev, progress=progress)
    else:
        opened = open_from_args(args, dev)
        ds = zdata.open_dataset(args.data, args.split, opened.preprocess, args.exclude)
        options = TransferOptions(
            protocol=args.protocol,
            per_class=per,
            folds=args.folds,
            layer=args.layer,
            scratch_epochs=args.scratch_epochs,
            no_scratch=args.no_scratch,
            test_per_class=args.test_per_class,
        )
        r = run_transfer(opened, ds, args.work, options=options, device=dev, progress=progress)
    print(
        json.dumps(
            {
                "out": args.out,
                "table": os.path.join(args.out, "table.md"),
                "summary": {k: round(v["mean"], 4) for k, v in r.get("summary", {}).items()},
            },
            indent=2,
        )
    )
    return 0


def _probe_args(p) -> None:
    _common(p)
    p.add_argument("--per-class", type=positive, help="training images per class (default: the protocol's largest)")
    p.add_argument("--layers", help="comma-separated layers (default: 1-7 = conv1-conv5, fc6, fc7)")
    p.add_argument(
        "--store-dtype",
        choices=("float32", "float16"),
        default="float32",
        help="the on-disk feature store's type (OUT/.features; float16 halves it)",
    )


@command(
    "layerprobe",
    "a linear SVM and a softmax on each layer's features (Sec. 5.3, Table 6)",
    "zfnet layerprobe --pretrained --data mnist5k --split trainval --per-class 30 --out probe",
    arguments=_probe_args,
    locks_out=True,
)
def _probe_run(args) -> int:
    from .. import data as zdata
    from ..outputs import claim, input_paths
    from ..pipelines.transfer import ProbeOptions, check_protocol, run_layerprobe
    from ..runtime import Dist, resolve_device, setup_processes, teardown, under_torchrun
    from .args import open_from_args

    check_protocol(args.protocol, probe=True)
    claim(args.out, "layerprobe", input_paths(args), legacy=("results.json", ".features"))
    layers = tuple(l for l in args.layers.split(",") if l) if args.layers else None
    dist = setup_processes(args.device) if under_torchrun() else Dist(device=resolve_device(args.device))
    try:
        opened = open_from_args(args, dist.device)
        ds = zdata.open_dataset(args.data, args.split, opened.preprocess, args.exclude)
        options = ProbeOptions(
            protocol=args.protocol,
            per_class=args.per_class,
            folds=args.folds,
            layers=layers,
            test_per_class=args.test_per_class,
            store_dtype=args.store_dtype,
        )
        r = run_layerprobe(
            opened, ds, args.out, options=options, device=dist.device, progress=not args.no_progress, dist=dist
        )
    finally:
        teardown(dist)
    if r is None:  # another torchrun process: rank 0 writes
        return 0
    print(
        json.dumps(
            {
                "out": args.out,
                "table": os.path.join(args.out, "table.md"),
                "summary": {k: round(v["mean"], 4) for k, v in r["summary"].items()},
            },
            indent=2,
        )
    )
    return 0
