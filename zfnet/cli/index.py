"""`zfnet index`, `zfnet query`, `zfnet diff`: the activation index and what reads it (issue 39)."""

from __future__ import annotations

import csv
import json
import os
import sys
import tempfile

from ..errors import UsageError
from .args import add_device, add_model, positive
from .registry import command
from .settings import add_settings, settings_from_args


def _index_args(p) -> None:
    from ..pipelines.index import IndexSettings

    add_model(p)
    p.add_argument("--data", metavar="SPEC", help="images to index (with --pretrained: the embedded test images)")
    p.add_argument("--split", default=None, help="the data's split")
    add_settings(p, IndexSettings)
    p.add_argument("--batch-size", type=positive, default=None, help="images per forward (none: from the input size)")
    p.add_argument("--workers", type=int, default=0, help="image decoding processes (0: in this process)")
    p.add_argument("--out", required=True, metavar="DIR")
    add_device(p)


@command(
    "index",
    "every image x every unit (its maximum and where) in Parquet shards, for SQL queries and unit-matched diffs",
    "zfnet index --pretrained --data fashion-mnist --split train --out idx-fm\n"
    "  zfnet index --model torchvision:resnet18 --weights IMAGENET1K_V1 --data photos/ --out idx-r18",
    arguments=_index_args,
    locks_out=True,
    output="reuse",
    legacy=("manifest.json",),
    uri_out=True,
)
def _index_run(args) -> int:
    from .. import data as zdata
    from ..pipelines.index import IndexSettings, build_index
    from ..pretrained import EMBEDDED_DATA
    from ..runtime import Dist, resolve_device, setup_processes, teardown, under_torchrun
    from ..settings import Run
    from .args import open_from_args

    settings = settings_from_args(args, IndexSettings)  # a bad setting costs nothing: refused before loading
    _needs_index_extra()
    dist = setup_processes(args.device) if under_torchrun() else Dist(device=resolve_device(args.device))
    opened = open_from_args(args, dist.device)
    spec = args.data or (EMBEDDED_DATA if args.pretrained else None)
    if spec is None:
        raise UsageError("zfnet index needs --data SPEC (the images to index)")
    dataset = zdata.open_dataset(spec, args.split, opened.preprocess)
    run = Run(device=dist.device, batch_size=args.batch_size, workers=args.workers,
              progress=sys.stderr.isatty() and dist.main)  # fmt: skip
    m = build_index(opened, dataset, args.work, settings, run, dist)
    teardown(dist)
    if not dist.main:
        return 0
    rows = sum(sh["rows"] for s in m["sources"] for sh in s["shards"])
    print(json.dumps({"out": args.out, "images": rows, "layers": m["layers"],
                      "shards": sum(len(s["shards"]) for s in m["sources"])}, indent=2))  # fmt: skip
    return 0


def _needs_index_extra() -> None:
    try:
        import duckdb  # noqa: F401
        import pyarrow  # noqa: F401
    except ImportError:
        from ..pipelines.index import NEEDS

        raise UsageError(NEEDS) from None


def _query_args(p) -> None:
    p.add_argument("index", metavar="IDX", help="an index folder (zfnet index --out IDX)")
    p.add_argument("sql", nargs="?", help="SQL over the views images(image, source, index, path, label, predicted) "
                   "and units(layer, unit, image, value, y, x)")  # fmt: skip
    p.add_argument("--top", metavar="LAYER:UNIT", help="the unit's strongest images")
    p.add_argument("--units-of", type=int, metavar="IMAGE", help="the units that fire most for the image")
    p.add_argument("--k", type=positive, default=9, help="rows of --top / per layer of --units-of (9)")
    p.add_argument("--class", dest="label", metavar="C", help="--top within a class (its number or name)")
    fmt = p.add_mutually_exclusive_group()
    fmt.add_argument("--json", action="store_true", help="print JSON rows")
    fmt.add_argument("--csv", action="store_true", help="print CSV")


@command(
    "query",
    "SQL (DuckDB) over an activation index, or its named queries: a unit's top images, an image's top units",
    "zfnet query idx-fm --top conv5:12 --k 9 --class Sneaker\n"
    "  zfnet query idx-fm --units-of 3\n"
    '  zfnet query idx-fm "SELECT layer, count(*) FROM units WHERE value > 0 GROUP BY layer"',
    arguments=_query_args,
)
def _query_run(args) -> int:
    _needs_index_extra()
    from ..pipelines.index import open_index

    asked = [x for x in (args.sql, args.top, args.units_of) if x is not None]
    if len(asked) != 1:
        raise UsageError("give one of: SQL, --top LAYER:UNIT, --units-of IMAGE")
    idx = open_index(args.index)
    if args.top is not None:
        layer, sep, unit = args.top.rpartition(":")
        if not sep or not unit.isdigit():
            raise UsageError(f"--top takes LAYER:UNIT, as conv5:12 (got {args.top!r})")
        table = idx.top(layer, int(unit), args.k, _label(idx, args.label))
    elif args.units_of is not None:
        table = idx.units_of(args.units_of, args.k)
    else:
        table = idx.sql(args.sql)
    _print(table, args)
    return 0


def _label(idx, given: str | None) -> int | None:
    """--class as a number or as a name of the index's first data's classes."""
    if given is None:
        return None
    if given.lstrip("-").isdigit():
        return int(given)
    classes = idx.manifest["sources"][0].get("classes") or []
    if given not in classes:
        raise UsageError(f"--class {given!r} is not a class of the indexed data; choose from {', '.join(classes)}")
    return classes.index(given)


def _print(table, args) -> None:
    rows = table.to_pylist()
    if args.json:
        print(json.dumps(rows, indent=1))
        return
    names = table.column_names
    if args.csv:
        w = csv.writer(sys.stdout)
        w.writerow(names)
        w.writerows([[r[n] for n in names] for r in rows])
        return
    cells = [[_cell(r[n]) for n in names] for r in rows]
    widths = [max([len(n)] + [len(c[i]) for c in cells]) for i, n in enumerate(names)]
    print("  ".join(n.ljust(w) for n, w in zip(names, widths)))
    for c in cells:
        print("  ".join(v.ljust(w) for v, w in zip(c, widths)))
    print(f"({len(rows)} rows)")


def _cell(v) -> str:
    if isinstance(v, float):
        return f"{v:.6g}"
    return "NULL" if v is None else str(v)


def _name(path: str) -> str:
    """A weights file's name on the page (a folder: A / B are the defaults' letters)."""
    return os.path.splitext(os.path.basename(path))[0].replace(",", " ") if os.path.isfile(path) else ""


def _side(args, path: str, tmp: str, layers: list[str] | None) -> str:
    """An index folder as it is; a weights file loaded into --model's (or the embedded) model - its conv layers at
    least, as a training snapshot - and indexed on the fly over --data into `tmp`."""
    if os.path.isfile(os.path.join(path, "manifest.json")):
        return path
    if not os.path.isfile(path):
        raise UsageError(f"{path!r} is neither an index folder (zfnet index --out) nor a weights file")
    if not (args.model or args.pretrained):
        raise UsageError(f"{path} is a weights file: name its architecture with --model NAME (or --pretrained)")
    from .. import data as zdata
    from ..checkpoints import load_snapshot
    from ..pipelines.index import IndexSettings, build_index
    from ..pretrained import EMBEDDED_DATA
    from ..settings import Run
    from .args import open_from_args

    opened = open_from_args(args, "cpu")
    stored = load_snapshot(opened.model, path).preprocess(opened.model)
    if stored is not None and stored.mean_image is not None:  # a snapshot's own mean image
        opened.preprocess = opened.preprocess.with_mean(stored.mean_image)
    spec = args.data or (EMBEDDED_DATA if args.pretrained else None)
    if spec is None:
        raise UsageError("comparing weights files needs --data SPEC (the images both models are indexed on)")
    dataset = zdata.open_dataset(spec, args.split, opened.preprocess)
    keep = tuple(x.split(":")[0] if path == args.a else x.split(":")[-1] for x in layers or ())
    build_index(opened, dataset, tmp, IndexSettings(layers=keep or None, dtype="float32", limit=args.limit), Run())
    return tmp


def _diff_args(p) -> None:
    p.add_argument("a", metavar="A", help="the first model's index (zfnet index), or a weights file of --model")
    p.add_argument("b", metavar="B", help="the second model's index over the same images, or a weights file")
    add_model(p)
    p.add_argument("--data", metavar="SPEC", help="with weights files: the images both are indexed on (with "
                   "--pretrained: the embedded test images)")  # fmt: skip
    p.add_argument("--split", default=None, help="the data's split")
    p.add_argument("--limit", type=positive, default=2000, help="with weights files: the first N images (2000)")
    from ..pipelines.diff import DiffSettings

    add_settings(p, DiffSettings)
    p.add_argument("--out", required=True, metavar="DIR")


@command(
    "diff",
    "two models' units matched by what they respond to (Li et al. 2016): a page of matched, gone and new units",
    "zfnet diff idx-epoch10 idx-epoch30 --names 'epoch 10,epoch 30' --out diff-10-30\n"
    "  zfnet diff run/snapshots/epoch-010.safetensors run/model.safetensors --model zfnet-small --data fashion-mnist "
    "--out diff",
    arguments=_diff_args,
    output="fresh",
    legacy=("diff.json",),
)
def _diff_run(args) -> int:
    from ..pipelines.diff import DiffSettings, run_diff

    s = settings_from_args(args, DiffSettings)  # a bad setting costs nothing: refused before any index is read
    _needs_index_extra()

    files = tuple(_name(x) for x in (args.a, args.b))
    names = s.names or (files if all(files) else ("A", "B"))
    layers = list(s.layers) if s.layers else None
    with tempfile.TemporaryDirectory() as tmp:
        a, b = (_side(args, path, os.path.join(tmp, side), layers) for side, path in (("a", args.a), ("b", args.b)))
        res = run_diff(a, b, args.work, s, names=names)
    print(json.dumps({"out": args.out, "page": os.path.join(args.out, "index.html"),
                      "matched": {k: v["matched"] for k, v in res["layers"].items()}}, indent=2))  # fmt: skip
    return 0
