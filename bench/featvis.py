"""Feature visualization (issue 37) against Lucent (torch-lucent 0.1.8), in one run, on the same model, units,
image size, step count and learning rate:

  embedded    the shipped Fashion-MNIST model, conv5, units 0-15, 28 px
  zfnet-224   ZFNet (Fig. 3), He-initialised (seed 0), conv5, units 0-7, 224 px
  resnet18    torchvision ResNet-18 at its seeded initialization, layer3, units 0-7, 224 px

Both optimize the channel objective (a map's mean) of a Fourier-parameterized image (colour decorrelation off for
one channel; Lucent's fixed ImageNet matrix, ours from no data - the identity - for the two RGB models: neither
has training images here) with Adam, through the model's own preprocessing (a module in front of the model for
Lucent: its `preprocess=False`, `fixed_image_size` the model's input size), each with its own transforms - ours by
default; Lucent's standard ones, their pixel sizes scaled to the image (12 px pad, 8 and 4 px jitter at 224;
Lucent takes a jitter of 2 px at least).
Lucent renders one unit per call; zfnet optimizes every unit of the model in one batch, with its default
arithmetic (`precision="auto"`: bfloat16 autocast where the processor multiplies it natively, channels-last;
recorded). Each final image is scored
the same way: the unit's channel mean of the maps zfnet reads (`zfnet.layers.features`), through the real
preprocessing, without transforms. Prints the median of each, the ratio, and units per second: each side timed
twice, in the order ours, Lucent, Lucent, ours, and averaged.

Install Lucent as its README says it runs (a benchmark dependency, never a package one):
    pip install torch-lucent==0.1.8 --no-deps && pip install kornia==0.4.1 --no-deps && pip install decorator ipython

    python bench/featvis.py --json bench/results/round4/featvis-issue37.json
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
import warnings

import torch
from _common import finish
from torch import nn

import zfnet
from zfnet import models
from zfnet.layers import features
from zfnet.methods.visualize import Objective


class Pixels(nn.Module):
    """[0, 1] pixels -> the model's input (its preprocessing), in front of the model for Lucent."""

    def __init__(self, pp) -> None:
        super().__init__()
        self.pp = pp

    def forward(self, x):
        return self.pp.from_pixels(x * 255.0)


def lucent_units(model, pp, layer: str, units, steps: int, lr: float) -> tuple[torch.Tensor, float]:
    from lucent.optvis import param, render, transform

    size, ch = pp.input_size, pp.channels
    k = size / 224
    tf = [
        transform.pad(max(1, round(12 * k)), mode="constant", constant_value=0.5),
        transform.jitter(max(2, round(8 * k))),
        transform.random_scale([1 + (i - 5) / 50.0 for i in range(11)]),
        transform.random_rotate(list(range(-10, 11)) + 5 * [0]),
        transform.jitter(max(2, round(4 * k))),
    ]
    wrapped = nn.Sequential(Pixels(pp), model).eval()
    out = []
    t0 = time.perf_counter()
    for u in units:
        torch.manual_seed(u)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # Lucent warns when a layer past the objective cannot run
            imgs = render.render_vis(
                wrapped,
                f"1_{layer.replace('.', '_')}:{u}",
                lambda: param.image(size, channels=ch, decorrelate=ch == 3, fft=True),
                optimizer=lambda p: torch.optim.Adam(p, lr=lr),
                transforms=tf,
                thresholds=(steps,),
                preprocess=False,
                progress=False,
                show_image=False,
                fixed_image_size=size,
            )
        out.append(torch.from_numpy(imgs[-1]).permute(0, 3, 1, 2)[0])
    return torch.stack(out), time.perf_counter() - t0


def scores(model, pp, layer: str, units, pixels: torch.Tensor) -> list[float]:
    with torch.no_grad():
        maps = features(model, pp.from_pixels(pixels * 255.0), [layer])[layer]
    return Objective(layer, "channel", tuple(units))(maps).tolist()


def one(name: str, model, pp, layer: str, units, steps: int, lr: float) -> dict:
    model.eval()
    opened = zfnet.opened_module(model, pp)
    zfnet.visualize(opened, layer=layer, units=tuple(units[:1]), steps=2)  # warm-up

    def ours_units():
        t0 = time.perf_counter()
        v = zfnet.visualize(opened, layer=layer, units=tuple(units), steps=steps, lr=lr, batch=len(units))
        return v, time.perf_counter() - t0

    # ours, Lucent, Lucent, ours (ABBA): a drift of the machine's speed during the run falls on both alike
    ours, ours_a = ours_units()
    lucent_images, lucent_a = lucent_units(model, pp, layer, units, steps, lr)
    _, lucent_b = lucent_units(model, pp, layer, units, steps, lr)
    ours_again, ours_b = ours_units()
    assert torch.equal(ours.images, ours_again.images)  # seeded: the second run is the same images
    ours_s, lucent_s = (ours_a + ours_b) / 2, (lucent_a + lucent_b) / 2
    ours_v = scores(model, pp, layer, units, ours.images / 255.0)
    lucent_v = scores(model, pp, layer, units, lucent_images)
    row = {
        "layer": layer,
        "units": list(units),
        "steps": steps,
        "lr": lr,
        "size": pp.input_size,
        "ours_arithmetic": ours.arithmetic,
        "ours_seconds": ours_s,
        "ours_runs_seconds": [ours_a, ours_b],
        "lucent_runs_seconds": [lucent_a, lucent_b],
        "lucent_seconds": lucent_s,
        "ours_units_per_s": len(units) / ours_s,
        "lucent_units_per_s": len(units) / lucent_s,
        "speedup": lucent_s / ours_s,
        "ours_values": ours_v,
        "lucent_values": lucent_v,
        "ours_median": statistics.median(ours_v),
        "lucent_median": statistics.median(lucent_v),
    }
    row["median_ratio"] = row["ours_median"] / row["lucent_median"] if row["lucent_median"] else None
    print(f"{name}: median objective ours {row['ours_median']:.3f} vs Lucent {row['lucent_median']:.3f} "
          f"({row['median_ratio']:.2f}x); {row['ours_units_per_s']:.2f} vs {row['lucent_units_per_s']:.2f} units/s "
          f"({row['speedup']:.1f}x)", flush=True)  # fmt: skip
    return row


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--steps", type=int, default=128)
    ap.add_argument("--lr", type=float, default=0.05)
    ap.add_argument("--models", default="embedded,zfnet-224,resnet18")
    ap.add_argument("--json")
    args = ap.parse_args()
    wanted = args.models.split(",")
    result: dict = {}
    if "embedded" in wanted:
        p = zfnet.pretrained()
        result["embedded"] = one("embedded", p.model, p.preprocess, "conv5", list(range(16)), args.steps, args.lr)
    if "zfnet-224" in wanted:
        zf = models.build("zfnet", seed=0, init="kaiming")
        pp = zfnet.weights.default_preprocess(zf)
        result["zfnet-224"] = one("zfnet-224", zf, pp, "conv5", list(range(8)), args.steps, args.lr)
    if "resnet18" in wanted:
        torch.manual_seed(0)
        r18 = models.build("torchvision:resnet18")
        pp = zfnet.weights.default_preprocess(r18)
        result["resnet18"] = one("resnet18", r18, pp, "layer3", list(range(8)), args.steps, args.lr)
    return finish(result, args.json)


if __name__ == "__main__":
    sys.exit(main())
