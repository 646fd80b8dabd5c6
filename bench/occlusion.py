"""Occlusion sensitivity speed (Fig. 6): Captum's Occlusion against our naive, exact (incremental) and approximate
modes, in one run, on the same images, windows, strides and fill.

  ZFNet-224 (Fig. 3, He-initialised, seed 0: the cost does not depend on training; fc8 scaled so that the
      logits' std is 2 on the bench images, since a He-initialised net on [-128, 128] pixels puts p = 1.0 on one
      class everywhere and its p(true) maps would be flat), 32 px window, stride 8: 25 x 25 = 625 positions
  the embedded Fashion-MNIST model at the README's figure settings (8 px window, stride 2): 11 x 11 positions

Captum is run with the best `perturbations_per_eval` of a small sweep (timed on one image). Approx is Krypton's
projective-field threshold (--tau 0.5) with adaptive drill-down (--drill 0.5). Prints seconds per
image (the p(true) and activity maps; the deconvnet projection (c), which Captum does not make, is timed apart),
the ratios to Captum, and how far approx is from exact (SSIM of the p(true) and of the activity maps).

    python bench/occlusion.py                      # about 15 minutes on 2 cores
    python bench/occlusion.py --images 1 --quick   # a quick look
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


def bench(
    name: str, model, images: torch.Tensor, window: int, stride: int, tau: float, sweep, drill: float = 0.5
) -> dict:
    model.eval()
    with torch.no_grad():
        targets = model(images).argmax(1).tolist()
    # Captum: pick its best perturbations_per_eval on the first image, then time every image with it
    best = min(sweep, key=lambda p: captum_seconds(model, images[0], targets[0], window, stride, p))
    rows = {"captum": [], "naive": [], "exact": [], "approx": []}
    devs = []
    for x, t in zip(images, targets):
        rows["captum"].append(captum_seconds(model, x, t, window, stride, best))
        results = {}
        for mode in ("naive", "exact", "approx"):
            results[mode] = occlusion(
                model,
                x[None],
                target=t,
                window=window,
                stride=stride,
                fill="mean-image",  # 0 in model-input units, as Captum's baselines=0.0
                layer="conv5",
                mode=mode,
                tau=tau,
                drill=drill,
            )[0]
            rows[mode].append(results[mode].seconds)
        d = deviation(results["approx"], results["exact"])
        d["exact_vs_naive_max_abs_prob"] = float((results["exact"].prob - results["naive"].prob).abs().max())
        devs.append(d)
        print(
            f"  {name}: "
            + ", ".join(f"{k} {v[-1]:.2f}s" for k, v in rows.items())
            + f"; approx SSIM {d['ssim_prob']:.4f} (p), {d['ssim_activity']:.4f} (activity)",
            flush=True,
        )
    med = {k: statistics.median(v) for k, v in rows.items()}
    n_pos = results["exact"].prob.numel()
    out = {
        "model": name,
        "window": window,
        "stride": stride,
        "positions": n_pos,
        "tau": tau,
        "drill": drill,
        "captum_perturbations_per_eval": best,
        "seconds_per_image": med,
        "speedup_vs_captum": {k: med["captum"] / med[k] for k in ("naive", "exact", "approx")},
        "approx_ssim_min": min(d["ssim_prob"] for d in devs),
        "approx_ssim_activity_min": min(d["ssim_activity"] for d in devs),
        "approx_max_abs_prob": max(d["max_abs_prob"] for d in devs),
        "approx_top_class_agreement_min": min(d["top_class_agreement"] for d in devs),
        "exact_vs_naive_max_abs_prob": max(d["exact_vs_naive_max_abs_prob"] for d in devs),
        "images": len(images),
    }
    print(
        f"{name}: seconds/image "
        + ", ".join(f"{k} {v:.2f}" for k, v in med.items())
        + " | vs Captum "
        + ", ".join(f"{k} {v:.2f}x" for k, v in out["speedup_vs_captum"].items())
        + f" | approx SSIM >= {out['approx_ssim_min']:.4f} (p), {out['approx_ssim_activity_min']:.4f} (activity)",
        flush=True,
    )
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--images", type=int, default=3)
    ap.add_argument("--tau", type=float, default=0.5, help="approx: Krypton's projective-field threshold")
    ap.add_argument("--drill", type=float, default=0.5, help="approx: adaptive drill-down share")
    ap.add_argument("--taus", default="", help="also time approx at these comma-separated thresholds")
    ap.add_argument("--quick", action="store_true", help="skip the perturbations_per_eval sweep")
    ap.add_argument("--json")
    args = ap.parse_args()
    torch.manual_seed(0)
    sweep = (64,) if args.quick else (16, 64, 256)
    zf = models.build("zfnet", seed=0, init="kaiming").eval()
    images = smooth_images(args.images, 224, 3)
    with torch.no_grad():
        zf.fc8.weight.mul_(2.0 / float(zf(images).std()))
    res = {"zfnet-224": bench("zfnet-224", zf, images, 32, 8, args.tau, sweep, args.drill)}
    from zfnet import data as zdata
    from zfnet import pretrained

    p = pretrained()
    test = zdata.open_dataset("fashion-mnist", "test", p.preprocess).head(args.images)
    res["embedded"] = bench(
        "embedded (zfnet-small 28 px)", p.model, p.preprocess.eval_input(test.bases), 8, 2, args.tau, sweep, args.drill
    )
    return finish({"results": res}, args.json)


if __name__ == "__main__":
    sys.exit(main())
