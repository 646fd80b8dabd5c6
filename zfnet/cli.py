"""`zfnet <command>` and `python -m zfnet`: subcommands come from a registry; every user error is one line on
stderr and exit code 2."""
from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
import typing
from collections.abc import Callable
from dataclasses import dataclass

from .errors import NOTES, UsageError
from .registry import Registry


@dataclass(frozen=True)
class Command:
    help: str
    example: str
    add_arguments: Callable[[argparse.ArgumentParser], None]
    run: Callable[[argparse.Namespace], int | None]


COMMANDS: Registry[Command] = Registry("command")


def command(name: str, help: str, example: str, arguments: Callable[[argparse.ArgumentParser], None]):
    """Register the decorated `run(args)` as subcommand `name`, with its argument builder and an example."""
    def wrap(run):
        COMMANDS.register(name, Command(help, example, arguments, run))
        return run
    return wrap


class Parser(argparse.ArgumentParser):
    """argparse with one-line errors (no usage block), exit code 2."""

    def error(self, message: str) -> typing.NoReturn:
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def _add_common_model(p: argparse.ArgumentParser, required: bool = True) -> None:
    p.add_argument("--model", required=required, metavar="NAME",
                   help="registry name (zfnet models) or torchvision:<name>")
    p.add_argument("--weights", metavar="FILE", help="weights file (.safetensors, or a torch state dict)")


def _device(args):
    from .train import resolve_device

    return resolve_device(getattr(args, "device", "auto") or "auto")


# --- zfnet models -------------------------------------------------------------------------------------

def _models_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--name", action="append", metavar="NAME", help="only these models (repeatable)")
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")


@command("models", "list the model zoo: input size, parameters, layer sizes",
         "zfnet models\n  zfnet models --name zfnet --json", arguments=_models_args)
def _models_run(args) -> int:
    from . import models

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


# --- zfnet train ----------------------------------------------------------------------------------------

def _recipe_flags(p: argparse.ArgumentParser) -> None:
    from .recipe import Recipe

    for f in dataclasses.fields(Recipe):
        flag = "--" + f.name.replace("_", "-")
        default = f.default if f.default is not dataclasses.MISSING else "{}"
        text = f"(default: {default})"
        if f.name == "model_overrides":
            text = 'JSON, e.g. \'{"fc_units": 2048}\' (Table 2)'
        p.add_argument(flag, dest=f.name, default=None, metavar=f.name.upper(),
                       help=text)


def _train_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--recipe", metavar="FILE", help="recipe overrides (JSON or TOML); flags override the file")
    p.add_argument("--resume", action="store_true", help="continue the run found in --out")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    _recipe_flags(p)


@command("train", "train a model with the Sec. 3 recipe (checkpoints, snapshots, resume, torchrun)",
         "zfnet train --model zfnet-small --data fashion-mnist --out runs/fm --epochs 30\n"
         "  zfnet train --recipe recipe.json --out runs/fm --resume\n"
         "  torchrun --nproc_per_node 2 -m zfnet train --model zfnet --data imagenet:/data/imagenet --out runs/in", arguments=_train_args)
def _train_run(args) -> int:
    from .recipe import Recipe, resolve
    from .train import fit

    flags = {f.name: getattr(args, f.name) for f in dataclasses.fields(Recipe)}
    recipe = resolve(args.recipe, flags)
    result = fit(recipe, resume=args.resume, progress=not args.no_progress)
    if int(os.environ.get("RANK", "0")) == 0:
        print(json.dumps({"out": recipe.out, "val": result["val"], "train_top1_err": result["train_top1_err"]},
                         indent=2))
    return 0


# --- zfnet evaluate -------------------------------------------------------------------------------------

def _evaluate_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", metavar="NAME", help="registry name or torchvision:<name>")
    p.add_argument("--weights", metavar="FILE", action="append",
                   help="weights file; repeat for an ensemble (Table 1's '5 convnets')")
    p.add_argument("--pretrained", action="store_true", help="the embedded Fashion-MNIST model")
    p.add_argument("--data", required=True, metavar="SPEC", help="dataset spec or folder (see README)")
    p.add_argument("--split", help="dataset split (default: the dataset's evaluation split)")
    p.add_argument("--batch-size", type=int, default=256)
    p.add_argument("--workers", type=int, default=4)
    p.add_argument("--device", default="auto")
    p.add_argument("--limit", type=int, help="only the first N images")
    p.add_argument("--out", metavar="FILE", help="also write the JSON here")


@command("evaluate", "top-1/top-5 error, centre crop and 10-crop (Tables 1-2); ensembles average softmax",
         "zfnet evaluate --model zfnet-small --weights runs/fm/model.safetensors --data fashion-mnist --split test\n"
         "  zfnet evaluate --pretrained --data fashion-mnist --split test\n"
         "  zfnet evaluate --model zfnet-small --weights a.safetensors --weights b.safetensors --data fashion-mnist", arguments=_evaluate_args)
def _evaluate_run(args) -> int:
    from . import data as zdata
    from .io import atomic_write_json
    from .provenance import Timer, environment
    from .train import evaluate

    dev = _device(args)
    if args.pretrained:
        loaded = [_load_model(args, dev)]
        weights, name = ["(embedded)"], "zfnet-small (embedded)"
    else:
        if not args.model or not args.weights:
            raise UsageError("evaluate needs --model and --weights (or --pretrained)")
        loaded = [_load_model(argparse.Namespace(model=args.model, weights=w, pretrained=False), dev)
                  for w in args.weights]
        weights, name = args.weights, args.model
    nets, pp = [m for m, _ in loaded], loaded[0][1]
    dataset = zdata.open_dataset(args.data, args.split, pp).head(args.limit)
    if dataset.labels.dim() != 1:
        raise UsageError(f"{args.data} is multi-label; top-k error needs single-label data")
    result = {"model": name, "weights": weights, "data": args.data, "split": dataset.split,
              "images": len(dataset)}
    with Timer() as t:
        result["centre"] = evaluate(nets, dataset, pp, args.batch_size, workers=args.workers, progress=True)
        result["ten_crop"] = evaluate(nets, dataset, pp, args.batch_size, ten_crop=True, workers=args.workers,
                                      progress=True)
    result["top1_accuracy"] = 1 - result["centre"]["top1_err"]
    result["wall_seconds"] = t.seconds
    result["environment"] = environment(dev)
    print(json.dumps(result, indent=2))
    if args.out:
        atomic_write_json(args.out, result)
    return 0


# --- zfnet layers / project ---------------------------------------------------------------------------

def _load_model(args, device):
    """(model, preprocessing) from --pretrained, or --model with optional --weights."""
    from .train import open_model

    model, pp, _, _ = open_model(args.model, args.weights, getattr(args, "pretrained", False), device,
                                 getattr(args, "seed", 0) or 0)
    return model, pp


def _layers_args(p: argparse.ArgumentParser) -> None:
    _add_common_model(p, required=False)
    p.add_argument("--pretrained", action="store_true", help="the embedded Fashion-MNIST model")
    p.add_argument("--json", action="store_true")


@command("layers", "a model's layers: output size, receptive field and its spacing (Sec. 2.1)",
         "zfnet layers --model zfnet\n  zfnet layers --model torchvision:resnet18 --json", arguments=_layers_args)
def _layers_run(args) -> int:
    import torch

    from .layers import layer_names
    from .models import model_input_shape
    from .receptive_field import layer_geometries

    model, _ = _load_model(args, torch.device("cpu"))
    shape = model_input_shape(model)
    names = [n for n in layer_names(model)]
    shapes: dict[str, tuple[int, ...]] = {}

    def record(name):
        def hook(module, inputs, output) -> None:
            shapes.setdefault(name, tuple(output.shape[1:]))
        return hook

    hooks = [m.register_forward_hook(record(n)) for n, m in model.named_modules() if n in names]
    try:
        with torch.no_grad():
            model.eval()(torch.zeros(1, *shape))
    finally:
        for h in hooks:
            h.remove()
    names = [n for n in names if n in shapes]
    geos = layer_geometries(model, names, shape)
    rows = []
    for n in names:
        g = geos[n]
        rows.append({"layer": n, "type": type(dict(model.named_modules())[n]).__name__, "output": list(shapes[n]),
                     "field": None if g is None else g[0].size, "jump": None if g is None else g[0].jump})
    if args.json:
        print(json.dumps(rows, indent=2))
        return 0
    print(f"{'layer':28} {'type':18} {'output':18} {'field':>6} {'jump':>5}")
    for r in rows:
        print(f"{r['layer']:28} {r['type']:18} {'x'.join(map(str, r['output'])):18} "
              f"{r['field'] if r['field'] else 'all':>6} {r['jump'] or '-':>5}")
    return 0


def _project_args(p: argparse.ArgumentParser) -> None:
    _add_common_model(p, required=False)
    p.add_argument("--pretrained", action="store_true", help="the embedded Fashion-MNIST model")
    p.add_argument("--image", required=True, metavar="FILE", help="an image file (any size; Sec. 3 crop)")
    p.add_argument("--layer", required=True, help="layer name, e.g. conv5 (see `zfnet layers`)")
    p.add_argument("--channel", type=int, required=True, help="feature map index")
    p.add_argument("--position", metavar="Y,X", help="unit position (default: the map's strongest)")
    p.add_argument("--mode", default="deconvnet", choices=["deconvnet", "backprop", "guided"],
                   help="rectification on the way down (footnote 1)")
    p.add_argument("--unit", action="store_true", help="seed 1 instead of the activation's value")
    p.add_argument("--out", required=True, metavar="PNG", help="image patch | projection, side by side")
    p.add_argument("--device", default="auto")


@command("project", "project one activation back to pixels with the deconvnet (Sec. 2.1, Fig. 1)",
         "zfnet project --pretrained --image shoe.png --layer conv5 --channel 12 --out shoe-conv5-12.png\n"
         "  zfnet project --model zfnet --weights zf.safetensors --image dog.jpg --layer conv3 --channel 40 "
         "--position 6,7 --out dog.png", arguments=_project_args)
def _project_run(args) -> int:
    from PIL import Image

    from .deconvnet import Deconvnet, Target
    from .io import atomic_save_image
    from .receptive_field import receptive_field
    from .render import display_scale, pair

    if not os.path.isfile(args.image):  # before the model is loaded
        raise UsageError(f"image {args.image!r} does not exist; check the path")
    dev = _device(args)
    model, pp = _load_model(args, dev)
    try:
        with Image.open(args.image) as img:
            base = pp.base(img)[None].to(dev)
    except OSError as e:
        raise UsageError(f"cannot read image {args.image!r} ({e}); pass a PNG or JPEG") from None
    x = pp.eval_input(base)
    with Deconvnet(model, mode=args.mode) as dn:
        acts = dn.activations(x, args.layer)
        if not 0 <= args.channel < acts.shape[1]:
            raise UsageError(f"--channel {args.channel} does not exist in {args.layer} "
                             f"({acts.shape[1]} maps: 0..{acts.shape[1] - 1})")
        if acts.dim() != 4:
            y = xx = None
        elif args.position:
            try:
                y, xx = (int(v) for v in args.position.split(","))
            except ValueError:
                raise UsageError(f"--position {args.position!r} is not Y,X (two integers)") from None
        else:
            y, xx = divmod(int(acts[0, args.channel].argmax()), acts.shape[-1])
        value = float(acts[0, args.channel] if y is None else acts[0, args.channel, y, xx]) if acts.dim() == 4 \
            else float(acts[0, args.channel])
        if acts.dim() == 4 and not (0 <= y < acts.shape[2] and 0 <= xx < acts.shape[3]):
            raise UsageError(f"--position {y},{xx} is outside {args.layer}'s {acts.shape[2]}x{acts.shape[3]} maps")
        target = Target(0, args.layer, args.channel, y, xx)
        field = dn.project_targets(x, [target], unit=args.unit, output="field")[0]
    rf = receptive_field(model, args.layer, tuple(x.shape[1:]))
    patch = rf.crop(pp.display(x), y or 0, xx or 0)[0]
    atomic_save_image(pair(patch.cpu(), field.cpu(), scale=display_scale(patch.shape[-1], 160)), args.out)
    print(json.dumps({"out": args.out, "layer": args.layer, "channel": args.channel, "position": [y, xx],
                      "activation": value, "mode": args.mode, "field_box": list(rf.box(y or 0, xx or 0))}))
    return 0


# --- zfnet atlas / filters / evolution / serve ----------------------------------------------------------

def _atlas_args(p: argparse.ArgumentParser) -> None:
    _add_common_model(p, required=False)
    p.add_argument("--pretrained", action="store_true", help="the embedded Fashion-MNIST model")
    p.add_argument("--data", required=True, metavar="SPEC", help="dataset spec or image folder (see README)")
    p.add_argument("--split", help="dataset split (default: the dataset's evaluation split)")
    p.add_argument("--layers", help="comma-separated layers (default conv1..conv5, or every conv layer)")
    p.add_argument("--k", type=int, default=9, help="top-k activations per map (Fig. 2: 9)")
    p.add_argument("--out", required=True, metavar="DIR")
    p.add_argument("--mode", default="deconvnet", choices=["deconvnet", "backprop", "guided"])
    p.add_argument("--limit", type=int, help="scan only the first N images")
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--workers", type=int, default=4, help="image-decoding processes (file datasets)")
    p.add_argument("--panel-maps", type=int, default=16, help="maps per Fig. 2 panel")
    p.add_argument("--evolution", metavar="RUN", help="training run folder with snapshots (Fig. 4); "
                   "'pretrained' for the embedded model's")
    p.add_argument("--evolution-maps", type=int, default=8, help="maps per layer in Fig. 4")
    p.add_argument("--evolution-limit", type=int, help="training images scanned per snapshot (default: all)")
    p.add_argument("--seed", type=int, default=0, help="which maps the panels and Fig. 4 show")
    p.add_argument("--device", default="auto")
    p.add_argument("--no-progress", action="store_true")


@command("atlas", "top-k activations of every feature map over a dataset, projected (Fig. 2), with filters "
         "(Fig. 5) and evolution (Fig. 4), as a web page",
         "zfnet atlas --pretrained --data fashion-mnist --evolution pretrained --out atlas-fm\n"
         "  zfnet atlas --model zfnet --weights zf.safetensors --data imagenet:/data/imagenet --split val "
         "--out atlas-zf\n"
         "  torchrun --nproc_per_node 2 -m zfnet atlas --model torchvision:vgg16 --weights vgg16.safetensors "
         "--data folder:photos --split all --layers conv5,conv10,conv13 --out atlas-vgg", arguments=_atlas_args)
def _atlas_run(args) -> int:
    from .report.atlas_site import AtlasConfig, build_atlas

    if args.evolution == "pretrained" and not args.pretrained:
        raise UsageError("--evolution pretrained goes with --pretrained; for another model pass its run folder")
    cfg = AtlasConfig(out=args.out, data=args.data, model=args.model, weights=args.weights,
                      pretrained=args.pretrained, split=args.split,
                      layers=tuple(l for l in (args.layers or "").split(",") if l), k=args.k, mode=args.mode,
                      limit=args.limit, batch_size=args.batch_size, workers=args.workers,
                      panel_maps=args.panel_maps, evolution=args.evolution, evolution_maps=args.evolution_maps,
                      evolution_limit=args.evolution_limit, seed=args.seed, device=args.device)
    manifest = build_atlas(cfg, progress=not args.no_progress)
    if manifest is not None:
        print(json.dumps({"out": args.out, "page": os.path.join(args.out, "index.html"),
                          "layers": {l: manifest["layers"][l]["channels"] for l in manifest["layer_order"]},
                          "images": manifest["dataset"]["images"], "scan_seconds": round(manifest["scan_seconds"], 2),
                          "wall_seconds": round(manifest["wall_seconds"], 2)}, indent=2))
    return 0


def _filters_args(p: argparse.ArgumentParser) -> None:
    _add_common_model(p, required=False)
    p.add_argument("--pretrained", action="store_true", help="the embedded Fashion-MNIST model")
    p.add_argument("--title", help="label of the first model (default: its name)")
    p.add_argument("--compare-model", metavar="NAME", help="a second model shown beside the first (Fig. 5)")
    p.add_argument("--compare-weights", metavar="FILE")
    p.add_argument("--compare-title")
    p.add_argument("--data", metavar="SPEC", help="images to find dead filters on (optional)")
    p.add_argument("--split")
    p.add_argument("--limit", type=int, default=2000, help="images scanned for dead filters")
    p.add_argument("--out", required=True, metavar="DIR")
    p.add_argument("--device", default="auto")


@command("filters", "first-layer filters with RMS, dominant, dead and frequency diagnostics; two models side by "
         "side (Fig. 5, Sec. 4.1)",
         "zfnet filters --pretrained --data fashion-mnist --out filt\n"
         "  zfnet filters --model zfnet-small --weights clip.safetensors --title clipping "
         "--compare-model zfnet-small --compare-weights noclip.safetensors --compare-title 'no clipping' "
         "--data fashion-mnist --out filt", arguments=_filters_args)
def _filters_run(args) -> int:
    from . import data as zdata
    from .atlas import scan
    from .filters import analyse, first_conv
    from .layers import layer_names, resolve_layer
    from .report.atlas_site import write_filters

    dev = _device(args)
    entries = [(_load_model(args, dev), args.title or ("embedded" if args.pretrained else args.model))]
    if args.compare_model:
        other = argparse.Namespace(model=args.compare_model, weights=args.compare_weights, pretrained=False)
        entries.append((_load_model(other, dev), args.compare_title or args.compare_model))
    reports = []
    for (model, pp), title in entries:
        conv = first_conv(model)
        max_resp = None
        if args.data:
            name = next(n for n in layer_names(model) if resolve_layer(model, n) is conv)
            ds = zdata.open_dataset(args.data, args.split, pp).head(args.limit)
            result = scan(model, ds, pp, [name], k=1, progress=True)
            max_resp = result.top[name].values[0]
        reports.append((title, analyse(conv.weight, max_resp)))
    os.makedirs(args.out, exist_ok=True)
    info = write_filters(args.out, reports)
    print(json.dumps({"out": args.out, **info}, indent=2))
    return 0


def _evolution_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", metavar="NAME", help="the architecture the run trained")
    p.add_argument("--run", metavar="DIR", help="a `zfnet train` run folder (its snapshots/)")
    p.add_argument("--pretrained", action="store_true", help="the embedded model's snapshots")
    p.add_argument("--data", required=True, metavar="SPEC", help="the training data")
    p.add_argument("--split", default="train")
    p.add_argument("--layers", help="comma-separated layers (default conv1..conv5)")
    p.add_argument("--maps", type=int, default=8, help="randomly chosen maps per layer")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--limit", type=int, help="training images scanned per snapshot (default: all)")
    p.add_argument("--mode", default="deconvnet", choices=["deconvnet", "backprop", "guided"])
    p.add_argument("--out", required=True, metavar="DIR")
    p.add_argument("--device", default="auto")


@command("evolution", "strongest activation across the training set at each snapshot epoch, projected (Fig. 4)",
         "zfnet evolution --pretrained --data fashion-mnist --out evo\n"
         "  zfnet evolution --model zfnet --run runs/zf --data imagenet:/data/imagenet --limit 50000 --out evo",
         arguments=_evolution_args)
def _evolution_run(args) -> int:
    from . import data as zdata
    from . import models
    from .atlas import default_layers
    from .evolution import choose_channels, evolution, find_snapshots
    from .report.atlas_site import write_evolution

    dev = _device(args)
    if args.pretrained:
        from .pretrained import pretrained

        p = pretrained()
        model, snaps = p.model.to(dev), p.snapshots
    else:
        if not (args.model and args.run):
            raise UsageError("evolution needs --model and --run (or --pretrained)")
        snaps = find_snapshots(args.run)
        model = models.build(args.model, weights=snaps[-1][1]).to(dev)
    pp = zdata.preprocess_for(model)
    train = zdata.open_dataset(args.data, args.split, pp).head(args.limit)
    layers = [l for l in (args.layers or "").split(",") if l] or default_layers(model)
    channels = choose_channels(model, layers, args.maps, args.seed, (pp.channels, pp.input_size, pp.input_size))
    evo = evolution(model, snaps, train, layers, channels, mode=args.mode, device=dev)
    os.makedirs(args.out, exist_ok=True)
    info = write_evolution(args.out, evo, train)
    print(json.dumps({"out": args.out, **info}, indent=2))
    return 0


def _serve_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("folder", help="an atlas folder (zfnet atlas --out)")
    p.add_argument("--port", type=int, default=8000)
    p.add_argument("--host", default="127.0.0.1")


@command("serve", "serve an atlas folder over HTTP (optional: index.html also opens from the file system)",
         "zfnet serve atlas-fm --port 8000", arguments=_serve_args)
def _serve_run(args) -> int:
    import functools
    import http.server

    if not os.path.isfile(os.path.join(args.folder, "index.html")):
        raise UsageError(f"{args.folder!r} holds no atlas (index.html); run `zfnet atlas --out {args.folder}` first")
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=args.folder)
    try:
        server = http.server.ThreadingHTTPServer((args.host, args.port), handler)
    except OSError as e:
        raise UsageError(f"cannot listen on {args.host}:{args.port} ({e.strerror}); pass another --port") from None
    print(f"serving {args.folder} at http://{args.host}:{args.port}/ (Ctrl-C stops)", flush=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    return 0


# --- entry point ---------------------------------------------------------------------------------------

def build_parser() -> Parser:
    from . import __version__

    parser = Parser(prog="zfnet", description="Zeiler & Fergus (ECCV 2014) for any PyTorch CNN. "
                    "Run `zfnet <command> --help` for each command's options and an example.")
    parser.add_argument("--version", action="version", version=f"zfnet {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="<command>", parser_class=Parser)
    for name in COMMANDS:
        c = COMMANDS.get(name)
        p = sub.add_parser(name, help=c.help, description=f"{c.help}.",
                           epilog=f"example:\n  {c.example}", formatter_class=argparse.RawDescriptionHelpFormatter)
        c.add_arguments(p)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not args.command:
        parser.print_help()
        return 2
    NOTES.clear()
    try:
        code = COMMANDS.get(args.command).run(args) or 0
        if os.environ.get("RANK", "0") == "0":
            for line in NOTES:
                print(f"note: {line}", file=sys.stderr)
        return code
    except UsageError as e:
        print(f"zfnet {args.command}: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"zfnet {args.command}: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:
        return 0


if __name__ == "__main__":
    sys.exit(main())
