"""Occlusion sensitivity speed (Fig. 6): Captum's Occlusion against our naive, exact (incremental), auto and
approximate modes, in one run, on the same images, windows, strides and fill (0 in model-input units, Captum's
baseline 0).

  embedded    the shipped Fashion-MNIST model, 28 px, 8 px window, stride 2 (11 x 11 positions), 3 test images
  zfnet-224   ZFNet (Fig. 3), 32 px window, stride 8 (25 x 25), 2 smooth-noise images and 3 scikit-image photos
  alexnet     Krizhevsky's grouped AlexNet (zfnet's), 224 px, 32 / 8
  vgg11       torchvision VGG-11, 224 px, 32 / 16 (13 x 13)
  resnet18    torchvision ResNet-18, 224 px, 64 / 16 (11 x 11): residual additions

The 224 px models are He-initialised (seed 0; torchvision's own initialisation for VGG / ResNet): the cost does
not depend on training. ZFNet's and AlexNet's fc8 are scaled so that the logits' std is 2 on the bench images
(a He-initialised net on [-128, 128] pixels puts p = 1.0 on one class everywhere, and its p(true) maps would be
flat). Captum runs with the best `perturbations_per_eval` of 16 / 64 / 256 (timed on the first image, which also warms
it up); each zfnet mode runs once untimed first.

A run under a second (the embedded model's) is repeated, about a second in all and at most 10 times, and the
best kept, Captum's alike. Per model it prints seconds per image (the p(true) and activity maps; the deconvnet
projection (c), which Captum does not make, is not counted), each mode's ratio to Captum and to naive, auto
against the better of exact and naive, what auto estimated, and how far approx is from exact, measured as Fig. 6 plots
them: SSIM of p(true) with the exact map's range as data range, and the share of positions with the same top
class.

    python bench/occlusion.py --json bench/results/occlusion.json     # about 25 minutes on 2 cores
    python bench/occlusion.py --models zfnet-224 --images 1           # a quick look
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time

import torch
import torch.nn.functional as F
from _common import finish

from zfnet import models
from zfnet.methods.occlusion import deviation, occlusion


def smooth_images(n: int, size: int, channels: int, seed: int = 0, scale: float = 128.0) -> torch.Tensor:
    """Natural-ish test images: low-pass noise at several scales, in the paper's [-128, 128] range."""
    g = torch.Generator().manual_seed(seed)
    x = torch.zeros(n, channels, size, size)
    for s in (4, 16, 56, size):
        noise = torch.randn(n, channels, min(s, size), min(s, size), generator=g)
        x += F.interpolate(noise, size=size, mode="bilinear", align_corners=False)
    return (x / x.abs().amax() * scale).contiguous()


def photos(size: int = 224) -> torch.Tensor:
    """scikit-image's astronaut, coffee and cat, centre squares resized to `size`, in [-128, 128]."""
    from skimage import data as sk

    out = []
    for name in ("astronaut", "coffee", "chelsea"):
        im = torch.from_numpy(getattr(sk, name)()).permute(2, 0, 1).float()[None]
        s = min(im.shape[-2:])
        top, left = (im.shape[-2] - s) // 2, (im.shape[-1] - s) // 2
        im = F.interpolate(im[..., top : top + s, left : left + s], size=size, mode="bilinear", antialias=True)
        out.append(im[0] - 128.0)
    return torch.stack(out)


def captum_seconds(model, x, target, window, stride, ppe) -> float:
    from captum.attr import Occlusion

    occ = Occlusion(lambda t: F.softmax(model(t), 1))
    t0 = time.perf_counter()
    with torch.no_grad():
        occ.attribute(
            x[None],
            sliding_window_shapes=(x.shape[0], window, window),
            strides=(x.shape[0], stride, stride),
            baselines=0.0,
            target=target,
            perturbations_per_eval=ppe,
        )
    return time.perf_counter() - t0


def bench(name, model, images, window, stride, layer, sweep, with_captum, approx_kw, profile=False) -> dict:
    model.eval()
    with torch.no_grad():
        targets = model(images).argmax(1).tolist()
    modes = ["naive", "exact", "auto"] + (["approx"] if approx_kw is not None else [])
    rows: dict[str, list[float]] = {m: [] for m in (["captum"] if with_captum else []) + modes}
    best = None
    if with_captum:  # its best perturbations_per_eval, on the first image
        best = min(sweep, key=lambda p: captum_seconds(model, images[0], targets[0], window, stride, p))
    devs, estimates, auto_ran = [], [], []
    for mode in modes:  # one untimed run of each (Captum's is the sweep above): first calls set up oneDNN's kernels
        occlusion(model, images[:1], target=targets[0], window=window, stride=stride, fill="mean-image", layer=layer,
                  strategy=mode, **(approx_kw if mode == "approx" else {}))  # fmt: skip
    for x, t in zip(images, targets):
        if with_captum:
            first = captum_seconds(model, x, t, window, stride, best)
            more = [captum_seconds(model, x, t, window, stride, best) for _ in range(min(9, int(1.0 / first)))]
            rows["captum"].append(min([first, *more]))
        res = {}
        for mode in modes:
            kw = approx_kw if mode == "approx" else {}
            runs = []  # a run under a second is repeated (about a second in all, at most 10) and the best kept
            while not runs or (sum(r.seconds for r in runs) < 1.0 and len(runs) < 10):
                runs.append(occlusion(model, x[None], target=t, window=window, stride=stride, fill="mean-image",
                                      layer=layer, strategy=mode, **kw)[0])  # fmt: skip
            res[mode] = min(runs, key=lambda r: r.seconds)
            rows[mode].append(res[mode].seconds)
        estimates.append(res["auto"].estimated_speedup)
        auto_ran.append(res["auto"].strategy)
        d = deviation(res["approx"], res["exact"]) if "approx" in res else {}
        d["exact_vs_naive_max_abs_prob"] = float((res["exact"].prob - res["naive"].prob).abs().max())
        devs.append(d)
        print(f"  {name}: " + ", ".join(f"{k} {v[-1]:.2f}s" for k, v in rows.items()), end="", flush=True)
        if "approx" in res:
            print(f"; approx p(true) SSIM {d['ssim_prob']:.4f}, top class {d['top_class_agreement']:.4f}", end="")
        print(flush=True)
    med = {k: statistics.median(v) for k, v in rows.items()}
    better = min(med["exact"], med["naive"])
    out = {
        "model": name,
        "window": window,
        "stride": stride,
        "positions": res["exact"].prob.numel(),
        "images": len(images),
        "layer": layer,
        "seconds_per_image": med,
        "exact_vs_naive": med["naive"] / med["exact"],
        "auto_vs_better": better / med["auto"],
        "auto_ran": auto_ran,
        "auto_estimated_speedup": estimates,
        "exact_vs_naive_max_abs_prob": max(d["exact_vs_naive_max_abs_prob"] for d in devs),
    }
    if with_captum:
        out["captum_perturbations_per_eval"] = best
        out["speedup_vs_captum"] = {k: med["captum"] / med[k] for k in modes}
    if profile:
        print(f"  {name}, where the time goes (one image, torch.profiler, self CPU time by kind of op):", flush=True)
        out["time_by_op"] = {
            m: where_the_time_goes(
                model, images[0], targets[0], window, stride, layer, m, approx_kw if m == "approx" else {}
            )  # fmt: skip
            for m in modes
            if m != "auto"
        }
    if approx_kw is not None:
        out["approx"] = dict(approx_kw)
        out["approx_vs_exact"] = med["exact"] / med["approx"]
        for key in ("ssim_prob", "ssim_activity", "top_class_agreement"):
            out[f"approx_{key}_min"] = min(d[key] for d in devs)
        out["approx_max_abs_prob"] = max(d["max_abs_prob"] for d in devs)
    line = f"{name}: seconds/image " + ", ".join(f"{k} {v:.2f}" for k, v in med.items())
    line += f" | exact/naive {out['exact_vs_naive']:.2f}x, auto/better {out['auto_vs_better']:.2f}x ({auto_ran[0]})"
    if with_captum:
        line += " | vs Captum " + ", ".join(f"{k} {v:.2f}x" for k, v in out["speedup_vs_captum"].items())
    if approx_kw is not None:
        line += (
            f" | approx SSIM >= {out['approx_ssim_prob_min']:.4f}, top >= {out['approx_top_class_agreement_min']:.4f}"
        )
    print(line, flush=True)
    return out


CATEGORIES = {  # aten ops -> what they are, for "where the time goes"
    "convolutions": ("convolution", "conv2d", "mkldnn_convolution", "_convolution"),
    "linear layers": ("addmm", "mm", "linear", "matmul"),
    "copies and gathers": ("copy_", "cat", "stack", "index", "pad", "constant_pad_nd", "clone", "contiguous",
                           "slice", "as_strided", "empty", "zero_", "fill_", "_to_copy", "to"),
    "pooling": ("max_pool2d", "max_pool2d_with_indices", "avg_pool2d", "avg_pool3d", "adaptive_avg_pool2d"),
}  # fmt: skip


def where_the_time_goes(model, x, target, window, stride, layer, mode, kw) -> dict:
    """Self CPU time of one image's occlusion by kind of op (torch.profiler), in seconds."""
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU]) as prof:
        occlusion(model, x[None], target=target, window=window, stride=stride, fill="mean-image", layer=layer,
                  strategy=mode, **kw)  # fmt: skip
    out = dict.fromkeys([*CATEGORIES, "elementwise and other ops"], 0.0)
    for e in prof.key_averages():
        name = e.key.removeprefix("aten::")
        if not e.key.startswith("aten::"):
            continue
        kind = next((k for k, names in CATEGORIES.items() if name in names), "elementwise and other ops")
        out[kind] += e.self_cpu_time_total / 1e6
    total = sum(out.values())
    print(f"  {mode}: " + ", ".join(f"{k} {v:.2f}s ({v / total:.0%})" for k, v in out.items()), flush=True)
    return out


def scaled_fc8(model, images):
    with torch.no_grad():
        model.fc8.weight.mul_(2.0 / float(model(images).std()))
    return model


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", default="embedded,zfnet-224,alexnet,vgg11,resnet18")
    ap.add_argument("--images", type=int, default=0, help="images per model (0: the defaults above)")
    ap.add_argument("--tau", type=float, default=1.0, help="approx: Krypton's projective-field threshold")
    ap.add_argument("--drill", type=float, default=0.4, help="approx: checkerboard drill-down share (-1: none)")
    ap.add_argument("--precision", default="bfloat16", help="approx: the precision convs see the change in")
    ap.add_argument("--quick", action="store_true", help="Captum without the perturbations_per_eval sweep")
    ap.add_argument("--json")
    args = ap.parse_args()
    torch.manual_seed(0)
    sweep = (64,) if args.quick else (16, 64, 256)
    approx = {"tau": args.tau, "drill": None if args.drill < 0 else args.drill, "precision": args.precision}
    wanted = args.models.split(",")
    res = {}
    smooth = smooth_images(3, 224, 3)

    def pick(x, n):
        return x[: args.images or n]

    if "embedded" in wanted:
        from zfnet import data as zdata
        from zfnet import pretrained

        p = pretrained()
        test = zdata.open_dataset("fashion-mnist", "test", p.preprocess).head(3)
        x = pick(p.preprocess.eval_input(test.bases), 3)
        res["embedded"] = bench("embedded", p.model, x, 8, 2, "conv5", sweep, True, approx)
    if "zfnet-224" in wanted:
        zf = scaled_fc8(models.build("zfnet", seed=0, init="kaiming").eval(), smooth)
        x = pick(torch.cat([smooth[:2], photos()]), 5)
        res["zfnet-224"] = bench("zfnet-224", zf, x, 32, 8, "conv5", sweep, True, approx, profile=True)
    if "alexnet" in wanted:
        ax = scaled_fc8(models.build("alexnet", seed=0, init="kaiming").eval(), smooth)
        res["alexnet"] = bench("alexnet", ax, pick(smooth, 2), 32, 8, "conv5", sweep, False, approx)
    if "vgg11" in wanted:
        import torchvision

        vgg = torchvision.models.vgg11().eval()
        res["vgg11"] = bench("vgg11", vgg, pick(smooth, 1) / 128, 32, 16, "features.18", sweep, False, approx)
    if "resnet18" in wanted:
        import torchvision

        r18 = torchvision.models.resnet18().eval()
        res["resnet18"] = bench("resnet18", r18, pick(smooth, 2) / 128, 64, 16, "layer4", sweep, False, approx, True)
    return finish({"results": res}, args.json)


if __name__ == "__main__":
    sys.exit(main())
