"""`zfnet project`: one activation back to pixels (Sec. 2.1, Fig. 1)."""

from __future__ import annotations

import json

from ..methods.deconvnet import ProjectSettings
from .args import add_device, add_model, position
from .registry import command
from .settings import add_settings, settings_from_args


def _project_args(p) -> None:
    add_model(p)
    p.add_argument("--image", required=True, metavar="FILE", help="an image file (any size; Sec. 3 crop)")
    p.add_argument(
        "--layer", help="layer name (default: the model's top stage layer, conv5 for Fig. 3's family; zfnet layers)"
    )
    p.add_argument("--channel", type=int, required=True, help="feature map index")
    p.add_argument("--position", type=position, metavar="Y,X", help="unit position (default: the map's strongest)")
    add_settings(p, ProjectSettings)
    p.add_argument("--out", required=True, metavar="PNG", help="image patch | projection, side by side")
    add_device(p)


@command(
    "project",
    "project one activation back to pixels with the deconvnet (Sec. 2.1, Fig. 1)",
    "zfnet project --pretrained --image shoe.png --layer conv5 --channel 12 --out shoe-conv5-12.png\n"
    "  zfnet project --model zfnet --weights zf.safetensors --image dog.jpg --layer conv3 --channel 40 "
    "--position 6,7 --out dog.png",
    arguments=_project_args,
)
def _project_run(args) -> int:
    from ..data.base import open_image
    from ..io import atomic_save_image
    from ..methods.deconvnet import project
    from ..outputs import check_file, input_paths
    from ..receptive_field import layer_field
    from ..render.render import display_scale, pair
    from ..runtime import resolve_device
    from .args import open_from_args

    settings = settings_from_args(args, ProjectSettings)
    check_file(args.out, input_paths(args), extensions=(".png", ".jpg", ".jpeg"))
    dev = resolve_device(args.device)
    image = open_image(args.image)  # a missing or broken image is refused before the model is loaded
    opened = open_from_args(args, dev)
    pp = opened.preprocess
    x = pp(image).to(dev)
    res = project(opened.model, x, layer=args.layer, channel=args.channel, position=args.position, settings=settings)
    y, xx = res.positions[0] or (0, 0)
    patch = layer_field(opened.model, res.layer, tuple(x.shape[1:])).crop(pp.display(x), y, xx)[0]
    atomic_save_image(pair(patch.cpu(), res.field(0).cpu(), scale=display_scale(patch.shape[-1], 160)), args.out)
    print(
        json.dumps(
            {
                "out": args.out,
                "layer": res.layer,
                "channel": res.channels[0],
                "position": list(res.positions[0]) if res.positions[0] else [None, None],
                "activation": float(res.activations[0]),
                "settings": res.settings.to_json(),
                "field_box": list(res.boxes[0]),
            }
        )
    )
    return 0
