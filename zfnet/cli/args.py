"""Argument groups shared by the commands (model, data, device, ranges), defined once."""

from __future__ import annotations

import argparse
from typing import Any

import torch

from .. import data as zdata
from ..calling import OUTPUT_HELP
from ..errors import UsageError
from ..pipelines.inputs import Inputs, check_files, load_inputs
from ..pretrained import open_embedded
from ..weights import FIT_CHOICES, Opened, open_model, read_classes, with_data_grey


def _at_least(lo: int):
    def parse(text: str) -> int:
        try:
            v = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
        if v < lo:
            raise argparse.ArgumentTypeError(f"{v} must be at least {lo}" if lo else f"{v} must be 0 or more")
        return v

    return parse


positive = _at_least(1)  # argparse type: an integer >= 1


nonnegative = _at_least(0)  # argparse type: an integer >= 0


def port(text: str) -> int:
    v = nonnegative(text)
    if v > 65535:
        raise argparse.ArgumentTypeError(f"{v} is not a TCP port (0..65535)")
    return v


def position(text: str) -> tuple[int, int]:
    """argparse type: 'Y,X'."""
    try:
        y, x = (int(v) for v in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not Y,X (two whole numbers)") from None
    return y, x


def add_model(p: argparse.ArgumentParser, repeat_weights: bool = False) -> None:
    """--model / --weights / --pretrained / --mean / --input-size / --normalize / --classes: which network, and
    how images become its input when its weights do not say."""
    p.add_argument(
        "--model",
        metavar="NAME",
        help="registry name (zfnet models), torchvision:<name>, timm:<name>, or module:callable - your own "
        "function or class returning an nn.Module, imported from the working directory or PYTHONPATH",
    )
    if repeat_weights:
        p.add_argument(
            "--weights",
            metavar="FILE",
            action="append",
            help="weights file; repeat for an ensemble (Table 1's '5 convnets')",
        )
    else:
        p.add_argument(
            "--weights",
            metavar="FILE|ENUM",
            help="weights file (.safetensors, or a torch state dict); with torchvision:<name> also the weights "
            "enum's name (IMAGENET1K_V1, DEFAULT), read from torch hub's cache",
        )
    p.add_argument("--pretrained", action="store_true", help="the embedded Fashion-MNIST model")
    _add_input(p)


def _add_input(p: argparse.ArgumentParser) -> None:
    """--mean / --input-size / --fit / --normalize / --classes / --output: how images become the model's input and
    its output becomes logits, when its weights do not say."""
    p.add_argument(
        "--mean",
        metavar="data|FILE|none",
        help="mean image for weights that carry none (or to replace theirs): 'data' = the per-pixel mean "
        "of --data's training split, a .safetensors/.npy image, or 'none'",
    )
    p.add_argument(
        "--input-size",
        type=positive,
        metavar="PX",
        help="side of the square input the model takes (default: the weights' or model's own, else 224)",
    )
    p.add_argument(
        "--normalize",
        metavar="imagenet|none|MEAN,STD",
        help="input normalisation of [0, 1] pixels (default: the weights' or model's own, else imagenet)",
    )
    p.add_argument(
        "--fit",
        choices=FIT_CHOICES,
        help="how an image becomes the input: paper (Sec. 3: shorter side to 256/224 of the input, centre crop), "
        "resize (shorter side to the input size, centre crop: an image of the input size goes in unchanged), none "
        "(images must have the input size) (default: the weights' own; paper for zfnet's, torchvision's and timm's "
        "models, resize for your module:callable)",
    )
    p.add_argument("--classes", metavar="FILE", help="class names, one per line (default: the weights' or model's own)")
    p.add_argument("--output", metavar="INDEX|KEY", help=OUTPUT_HELP)


def add_data(
    p: argparse.ArgumentParser, required: bool = True, limit_default: int | None = None, limit: bool = True
) -> None:
    """--data / --split / --exclude, and --limit unless the command's settings hold it (`limit=False`)."""
    p.add_argument("--data", required=required, metavar="SPEC", help="dataset spec or image folder (see README)")
    p.add_argument("--split", help="dataset split (default: the dataset's evaluation split)")
    if limit:
        p.add_argument("--limit", type=positive, default=limit_default, help="only the first N images")
    p.add_argument(
        "--exclude",
        metavar="FILE",
        help="leave out the images listed (ids, one per line: `zfnet dedupe`'s exclude.txt)",
    )


def add_images(p: argparse.ArgumentParser) -> None:
    """The images an analysis runs on: files (with their labels) and/or dataset images by index."""
    p.add_argument("--image", action="append", default=[], metavar="FILE", help="an image file (repeatable)")
    p.add_argument(
        "--label", action="append", default=[], metavar="L", help="true class of each --image, index or name"
    )
    p.add_argument("--data", metavar="SPEC", help="a dataset whose images --index picks (labels from the data)")
    p.add_argument("--split", help="dataset split (default: the dataset's evaluation split)")
    p.add_argument("--index", action="append", type=int, default=[], metavar="N", help="dataset image (repeatable)")


def add_device(p: argparse.ArgumentParser) -> None:
    p.add_argument("--device", default="auto", help="auto (CUDA when present), cpu, cuda or cuda:N")


def wants_embedded(args: argparse.Namespace) -> bool:
    """--pretrained, or none of --model / --weights: the commands that default to the embedded model (report,
    explore); --weights without --model is refused."""
    if args.weights and not args.model:
        raise UsageError("--weights needs --model NAME (the architecture the weights belong to; see zfnet models)")
    return bool(args.pretrained or (args.model is None and args.weights is None))


def open_from_args(
    args: argparse.Namespace, device: torch.device | str = "cpu", *, grey: bool = False, **overrides: Any
) -> Opened:
    """The model the flags name, opened once (weights read once): --pretrained, or --model with --weights (and
    --mean; --data/--split/--workers for --mean data). `overrides` replace flag values (a second model). With
    `grey` (the commands that paste Sec. 4.2's grey), a model whose mean is not known takes the grey from --data
    (`with_data_grey`)."""
    v = {**vars(args), **overrides}
    opened = _open(v, device)
    return with_data_grey(opened, v.get("data"), v.get("split"), v.get("workers") or 0) if grey else opened


def _open(v: dict[str, Any], device: torch.device | str) -> Opened:
    common: dict[str, Any] = {
        "mean": v.get("mean"),
        "data": v.get("data"),
        "split": v.get("split"),
        "workers": v.get("workers") or 0,
    }
    if v.get("pretrained"):
        if v.get("model") or v.get("weights"):
            raise UsageError("--pretrained is the embedded model; drop --model/--weights, or drop --pretrained")
        if v.get("input_size") or v.get("normalize") or v.get("classes") or v.get("output") or v.get("fit"):
            raise UsageError(
                "--pretrained carries its own input and classes; drop --input-size/--normalize/--fit/--classes"
            )
        return open_embedded(device, **common)
    return open_model(
        v.get("model"),
        v.get("weights"),
        device=device,
        seed=v.get("seed") or 0,
        input_size=v.get("input_size"),
        normalize=v.get("normalize"),
        fit=v.get("fit"),
        classes=read_classes(v["classes"]) if v.get("classes") else None,
        output=v.get("output"),
        **common,
    )


def check_images(args: argparse.Namespace) -> list:
    """Open every --image file now, so that an unreadable one is refused before any model is loaded."""
    return check_files(list(args.image))


def inputs_from_args(args: argparse.Namespace, opened: Opened, pil: list) -> Inputs:
    """The --image files (opened by `check_images`) and --data/--index images as the model's input."""
    dataset = zdata.open_dataset(args.data, args.split, opened.preprocess) if args.data and args.index else None
    return load_inputs(
        opened.preprocess,
        pil,
        files=args.image,
        labels=args.label,
        dataset=dataset,
        indices=args.index,
        classes=opened.classes,
    )
