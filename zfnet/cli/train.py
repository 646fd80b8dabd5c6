"""`zfnet train` (Sec. 3) and `zfnet evaluate` (Tables 1-2)."""

from __future__ import annotations

import argparse
import dataclasses
import json
import os

from ..errors import UsageError
from .args import add_data, add_device, add_model, nonnegative, positive
from .registry import command


def _recipe_flags(p) -> None:
    from ..recipe import Recipe, RunOptions

    for cls in (Recipe, RunOptions):
        for f in dataclasses.fields(cls):
            default = f.default if f.default is not dataclasses.MISSING else "{}"
            text = f"(default: {default})"
            if f.name == "model_overrides":
                text = "JSON, e.g. '{\"fc_units\": 2048}' (Table 2)"
            p.add_argument(
                "--" + f.name.replace("_", "-"), dest=f.name, default=None, metavar=f.name.upper(), help=text
            )


def _resolve(args, model_default: str | None = None):
    """(recipe, run options) from --recipe FILE and the recipe flags."""
    from ..recipe import Recipe, RunOptions, resolve_run

    flags = {f.name: getattr(args, f.name) for cls in (Recipe, RunOptions) for f in dataclasses.fields(cls)}
    if model_default is not None:
        flags["model"] = flags["model"] or model_default
    return resolve_run(args.recipe, flags)


def _claim(out: str, args, recipe, command: str, legacy: tuple[str, ...]) -> None:
    """The output guard (`zfnet.outputs.claim`) for a run folder: the inputs are the flags' and the recipe's data."""
    from ..outputs import claim, input_paths

    claim(out, command, [*input_paths(args), *input_paths(argparse.Namespace(data=recipe.data))], legacy)


def _lock(out: str):
    """The run folder held for this run (rank 0 only under torchrun)."""
    import contextlib

    from ..io import folder_lock

    return folder_lock(out) if int(os.environ.get("RANK", "0")) == 0 else contextlib.nullcontext()


def _train_args(p) -> None:
    p.add_argument("--recipe", metavar="FILE", help="recipe overrides (JSON or TOML); flags override the file")
    p.add_argument("--resume", action="store_true", help="continue the run found in --out")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    _recipe_flags(p)


@command(
    "train",
    "train a model with the Sec. 3 recipe (checkpoints, snapshots, resume, torchrun)",
    "zfnet train --model zfnet-small --data fashion-mnist --out runs/fm --epochs 30\n"
    "  zfnet train --recipe recipe.json --out runs/fm --resume\n"
    "  torchrun --nproc_per_node 2 -m zfnet train --model zfnet --data imagenet:/data/imagenet --out runs/in",
    arguments=_train_args,
)
def _train_run(args) -> int:
    from ..pipelines.train import train

    recipe, options = _resolve(args)
    _claim(options.out, args, recipe, "train", ("recipe.json", "checkpoint.safetensors", "metrics.json"))
    with _lock(options.out):
        result = train(recipe, options, resume=args.resume, progress=not args.no_progress)
    if int(os.environ.get("RANK", "0")) == 0:
        print(
            json.dumps({"out": options.out, "val": result["val"], "train_top1_err": result["train_top1_err"]}, indent=2)
        )
    return 0


def _evaluate_args(p) -> None:
    add_model(p, repeat_weights=True)
    add_data(p)
    p.add_argument("--batch-size", type=positive, default=256)
    p.add_argument("--workers", type=nonnegative, default=4)
    add_device(p)
    p.add_argument("--out", metavar="FILE", help="also write the JSON here")


def _check_labels(net, dataset, spec: str) -> None:
    """Top-k error needs one label per image, from the model's own classes."""
    from ..models import num_outputs

    if dataset.labels.dim() != 1:
        raise UsageError(f"{spec} is multi-label; top-k error needs single-label data")
    outputs = num_outputs(net)
    if outputs is not None and outputs != len(dataset.classes):
        raise UsageError(
            f"the model predicts {outputs} classes but {spec} split {dataset.split!r} has "
            f"{len(dataset.classes)}; evaluate on data with the model's classes"
        )


@command(
    "evaluate",
    "top-1/top-5 error, centre crop and 10-crop (Tables 1-2); ensembles average softmax",
    "zfnet evaluate --model zfnet-small --weights runs/fm/model.safetensors --data fashion-mnist --split test\n"
    "  zfnet evaluate --pretrained --data fashion-mnist --split test\n"
    "  zfnet evaluate --model zfnet-small --weights a.safetensors --weights b.safetensors --data fashion-mnist",
    arguments=_evaluate_args,
)
def _evaluate_run(args) -> int:
    from .. import data as zdata
    from ..io import atomic_write_json
    from ..outputs import check_file, input_paths
    from ..provenance import Timer, environment
    from ..runtime import resolve_device
    from ..train import evaluate
    from .args import open_from_args

    if args.out:
        check_file(args.out, input_paths(args), extensions=(".json",))
    dev = resolve_device(args.device)
    if not args.pretrained and not (args.model and args.weights):
        raise UsageError("evaluate needs --model and --weights (or --pretrained)")
    weights = [None] if args.pretrained else args.weights
    opened = [open_from_args(args, dev, weights=w) for w in weights]
    nets, pp = [o.model for o in opened], opened[0].preprocess
    dataset = zdata.open_dataset(args.data, args.split, pp, args.exclude).head(args.limit)
    _check_labels(nets[0], dataset, args.data)
    result = {
        "model": opened[0].name,
        "weights": [o.weights for o in opened],
        "data": args.data,
        "split": dataset.split,
        "images": len(dataset),
        "preprocess": pp.to_dict(),
    }
    with Timer() as t:
        result["centre"] = evaluate(nets, dataset, pp, args.batch_size, workers=args.workers, progress=True)
        result["ten_crop"] = evaluate(
            nets, dataset, pp, args.batch_size, ten_crop=True, workers=args.workers, progress=True
        )
    dataset.check_readable()
    result["top1_accuracy"] = 1 - result["centre"]["top1_err"]
    result["skipped"] = dataset.skipped_report()
    result["wall_seconds"] = t.seconds
    result["environment"] = environment(dev)
    print(json.dumps(result, indent=2))
    if args.out:
        atomic_write_json(args.out, result)
    return 0


def _ablate_args(p) -> None:
    p.add_argument(
        "--base",
        required=True,
        choices=("zfnet", "alexnet", "zfnet-small"),
        help="the model whose Table 2 rows are trained",
    )
    p.add_argument(
        "--variants",
        default="all",
        help="comma-separated Table 2 variants (rm34, rm7, rm67, rm3467, "
        "fc2048, fc8192, wide345, fc8192-wide345) or 'all'; the base is always a row",
    )
    p.add_argument("--table-only", action="store_true", help="only collect the table from the finished runs")
    p.add_argument("--recipe", metavar="FILE", help="recipe overrides (JSON or TOML); flags override the file")
    p.add_argument("--no-progress", action="store_true")
    _recipe_flags(p)


@command(
    "ablate",
    "Table 2: train a base model and its architectural variants with one recipe, table beside "
    "the paper's (each row its own resumable run)",
    "zfnet ablate --base zfnet-small --data fashion-mnist --epochs 8 --limit-train 20000 --out abl\n"
    "  zfnet ablate --base zfnet --variants rm34 --data imagenet:/data/imagenet --out abl   # one row per machine\n"
    "  zfnet ablate --base zfnet --data imagenet:/data/imagenet --out abl --table-only",
    arguments=_ablate_args,
)
def _ablate_run(args) -> int:
    from ..pipelines.ablation import run_ablation

    if args.model:
        raise UsageError("ablate builds each row's model from --base and --variants; drop --model")
    recipe, options = _resolve(args)
    if not args.out:
        raise UsageError("pass --out DIR (the ablation's folder)")
    _claim(options.out, args, recipe, "ablate", ("recipe.json", "table.md"))
    with _lock(options.out):
        r = run_ablation(
            options.out,
            args.base,
            variants=args.variants,
            recipe=recipe,
            options=options,
            progress=not args.no_progress,
            table_only=args.table_only,
        )
    print(
        json.dumps(
            {
                "out": options.out,
                "table": os.path.join(options.out, "table.md"),
                "complete": r["complete"],
                "rows": {row["variant"]: row["val_top1_err"] for row in r["rows"]},
            },
            indent=2,
        )
    )
    return 0


def _archselect_args(p) -> None:
    p.add_argument("--table-only", action="store_true", help="only analyse the finished runs")
    p.add_argument("--recipe", metavar="FILE", help="recipe overrides (JSON or TOML); flags override the file")
    p.add_argument("--no-progress", action="store_true")
    _recipe_flags(p)


@command(
    "archselect",
    "Sec. 4.1 / Fig. 5: a Krizhevsky-like and a ZFNet-like first layer, clipping on and off; "
    "dead/dominant filters, layer-2 aliasing, accuracy",
    "zfnet archselect --model zfnet-small --data fashion-mnist --epochs 6 --limit-train 15000 --out arch",
    arguments=_archselect_args,
)
def _archselect_run(args) -> int:
    from ..pipelines.archselect import run_archselect

    recipe, options = _resolve(args, model_default="zfnet-small")
    if not args.out:
        raise UsageError("pass --out DIR (the experiment's folder)")
    from ..models import family

    if not family(recipe.model).overrides:
        raise UsageError("archselect changes the first layer of a zfnet model; pick zfnet, alexnet or zfnet-small")
    _claim(options.out, args, recipe, "archselect", ("recipe.json", "table.md"))
    with _lock(options.out):
        r = run_archselect(
            options.out, recipe, options=options, progress=not args.no_progress, table_only=args.table_only
        )
    print(
        json.dumps(
            {
                "out": options.out,
                "table": os.path.join(options.out, "table.md"),
                "complete": r["complete"],
                "runs": {x["name"]: x["val_top1_err"] for x in r["runs"]},
            },
            indent=2,
        )
    )
    return 0
