"""`zfnet models` and `zfnet layers`: the zoo and one model's layers."""

from __future__ import annotations

import json
from typing import Any

from .args import add_model
from .registry import command


def _models_args(p) -> None:
    p.add_argument("--name", action="append", metavar="NAME", help="only these models (repeatable)")
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")


@command(
    "models",
    "list the model zoo: input size, parameters, layer sizes",
    "zfnet models\n  zfnet models --name zfnet --json",
    arguments=_models_args,
)
def _models_run(args) -> int:
    from .. import models

    rows = [models.describe(n) for n in (args.name or models.names())]
    if args.json:
        print(json.dumps(rows, indent=2))
        return 0
    order = ("conv1", "conv2", "conv3", "conv4", "conv5", "pool5", "fc6", "fc7", "fc8")
    print(f"{'name':24} {'input':10} {'params':>12}  layer output sizes")
    for r in rows:
        sizes = "  ".join(f"{k} {'x'.join(map(str, r['layers'][k]))}" for k in order if k in r.get("layers", {}))
        print(f"{r['name']:24} {r['input']:10} {r['parameters']:>12,}  {sizes}")
    print("\nalso: torchvision:<name> for any torchvision classification model (weights from a local file)")
    return 0


def _layers_args(p) -> None:
    add_model(p)
    p.add_argument("--json", action="store_true")


@command(
    "layers",
    "a model's layers: output size, receptive field and its spacing (Sec. 2.1)",
    "zfnet layers --model zfnet\n  zfnet layers --model torchvision:resnet18 --json",
    arguments=_layers_args,
)
def _layers_run(args) -> int:
    from ..layers import layer_names, output_shapes
    from ..receptive_field import layer_geometries
    from .args import open_from_args

    opened = open_from_args(args)
    model, pp = opened.model, opened.preprocess
    shape = (pp.channels, pp.input_size, pp.input_size)  # --input-size as every command reads it
    shapes = output_shapes(model, layer_names(model), shape)
    names = list(shapes)
    why: dict[str, str] = {}
    geos = layer_geometries(model, names, shape, why)
    modules = dict(model.named_modules())
    rows: list[dict[str, Any]] = []
    for n in names:
        g = geos[n]
        rows.append(
            {
                "layer": n,
                "type": type(modules[n]).__name__,
                "output": list(shapes[n]),
                "field": None if g is None else g[0].size,
                "jump": None if g is None else g[0].jump,
                **({"whole_image": why[n]} if g is None else {}),
            }
        )
    if args.json:
        print(json.dumps(rows, indent=2))
        return 0
    print(f"{'layer':28} {'type':18} {'output':18} {'field':>6} {'jump':>5}")
    said = ""
    for r in rows:
        reason = str(r.get("whole_image", ""))
        print(
            f"{r['layer']:28} {r['type']:18} {'x'.join(map(str, r['output'])):18} "
            f"{r['field'] if r['field'] else 'all':>6} {r['jump'] or '-':>5}"
            + (f"  (whole image: {reason})" if reason and reason != said else "")
        )
        said = reason or said
    return 0
