"""`zfnet explore`: the live toolbox - any image, every layer's feature maps, a map's deconvnet projection and
its top-9, occlusion maps - in the browser (zfnet.pipelines.explore)."""

from __future__ import annotations

from .args import add_device, add_model, port, positive
from .registry import command
from .serve import NEEDS_SERVER, Lifetime, Stopped, run_server


def _explore_args(p) -> None:
    add_model(p)  # none of --model/--weights/--pretrained: the embedded Fashion-MNIST model
    p.add_argument(
        "--data",
        metavar="SPEC",
        help="images to browse (default with the embedded model: the Fashion-MNIST test images bundled with zfnet)",
    )
    p.add_argument("--split", help="dataset split (default: the dataset's evaluation split)")
    p.add_argument("--atlas", metavar="DIR", help="an atlas of the same model (zfnet atlas --out DIR): top-9 per map")
    p.add_argument("--index", metavar="IDX", help="an activation index of the same model (zfnet index): a unit's "
                   "images over all of it, an image's units")  # fmt: skip
    p.add_argument("--port", type=port, default=0, help="TCP port (default 0: a free one; the URL is printed)")
    p.add_argument(
        "--job-limit",
        type=positive,
        default=600,
        metavar="SECONDS",
        help="an occlusion job that runs longer ends with an error (default 600)",
    )
    p.add_argument(
        "--host", default="127.0.0.1", help="listen address (another than loopback exposes the model: warned)"
    )
    p.add_argument(
        "--no-token",
        action="store_true",
        help="answer without the random token the printed URL carries (any local program could then use it)",
    )
    add_device(p)


@command(
    "explore",
    "the live toolbox: browse or upload images, every layer's maps, click a map for its projection and top-9",
    "zfnet explore                                       # the embedded model on its bundled images\n"
    "  zfnet explore --pretrained --atlas atlas-fm --port 8800\n"
    "  zfnet explore --model torchvision:resnet18 --weights IMAGENET1K_V1 --data photos/",
    arguments=_explore_args,
)
def _explore_run(args) -> int:
    life = Lifetime().install()  # first: a Ctrl-C while the model loads ends the command (issue 41)
    try:
        return _explore(args, life)
    except Stopped:
        return 0


def _explore(args, life: Lifetime) -> int:
    from .. import data as zdata
    from ..errors import UsageError
    from ..pipelines.guard import new_token
    from ..pretrained import EMBEDDED_DATA
    from ..runtime import resolve_device
    from .args import open_from_args, wants_embedded

    try:  # the server is an extra: say so before any model is opened
        import starlette  # noqa: F401
        import uvicorn  # noqa: F401

        from ..pipelines.explore import ExploreLimits, Explorer, explore_app
    except ImportError:
        raise UsageError(f"zfnet explore: {NEEDS_SERVER}") from None
    embedded = wants_embedded(args)
    dev = resolve_device(args.device)
    opened = open_from_args(args, dev, pretrained=True) if embedded else open_from_args(args, dev, grey=True)
    spec = args.data or (EMBEDDED_DATA if embedded else None)
    dataset = zdata.open_dataset(spec, args.split, opened.preprocess) if spec else None
    limits = ExploreLimits(job_seconds=float(args.job_limit))
    with Explorer(opened, dataset, args.atlas, limits, index=args.index) as explorer:
        token = None if args.no_token else new_token()
        app = explore_app(explorer)
        return run_server(app, args.host, args.port, f"zfnet explore ({opened.name})", life, token)
