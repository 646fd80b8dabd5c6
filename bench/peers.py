"""The tools a user would pick instead of zfnet, side by side in one run on the same model and data, each doing
the same job as the zfnet call it is timed against, with the outputs compared:

  top-9 selection (Fig. 2)   zfnet.atlas                 vs  zennit-crp 0.6 FeatureVisualization.run
                                                             (activation maximization, max_target="max",
                                                             abs_norm=False; it also computes relevances on
                                                             the way: it has no activation-only pass)
  top-9 projections (Fig. 2) Deconvnet.project_targets   vs  zennit-crp get_max_reference(mode="activation",
                                                             rf=True) with zennit's DeconvNet composite, and
                                                             Captum's NeuronDeconvolution, one call per unit
  guided backprop of a class Deconvnet(rule="guided")    vs  pytorch-grad-cam GuidedBackpropReLUModel
  occlusion (Fig. 6)         zfnet.occlusion (auto,      vs  Captum Occlusion on the softmax
                             approx)

The model is ZFNet (Fig. 3, 224 px; He-initialised, seed 0: the cost does not depend on training), the data
smooth-noise images in the paper's [-128, 128] range. Prints seconds, the ratio of each peer to zfnet, and the
largest difference between the outputs. The peers are the `bench` extra: pip install -e '.[bench]'.

    python bench/peers.py --json bench/results/peers.json      # about 10 minutes on 2 cores
    python bench/peers.py --quick                              # a quick look
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time

import numpy as np
import torch
import torch.nn.functional as F
from _common import finish
from occlusion import smooth_images

from zfnet import models
from zfnet.methods.atlas import atlas
from zfnet.methods.deconvnet import Deconvnet, Target
from zfnet.methods.occlusion import deviation, occlusion

LAYERS = ["conv1", "conv2", "conv3", "conv4", "conv5"]
RELU = {l: f"relu{l[-1]}" for l in LAYERS}  # where each layer's rectified maps are (what zfnet reads as `l`)


class Images(torch.utils.data.Dataset):
    """The images as the (sample, label) dataset zennit-crp reads."""

    def __init__(self, x: torch.Tensor) -> None:
        self.x = x

    def __len__(self) -> int:
        return len(self.x)

    def __getitem__(self, i):
        return self.x[i], 0


def crp_visualization(model, images, path):
    from crp.attribution import CondAttribution
    from crp.concepts import ChannelConcept
    from crp.visualization import FeatureVisualization

    attribution = CondAttribution(model, no_param_grad=True)
    layer_map = {RELU[l]: ChannelConcept() for l in LAYERS}
    return FeatureVisualization(attribution, Images(images), layer_map, max_target="max", abs_norm=False, path=path)


def selection(model, images, path) -> tuple[dict, object]:
    """Top-9 per map over the images: zfnet's scan against zennit-crp's run, and whether they pick the same."""
    from crp.helper import load_maximization

    t0 = time.perf_counter()
    ours = atlas(model, images, layers=LAYERS, k=9, batch_size=32)
    ours_s = time.perf_counter() - t0
    fv = crp_visualization(model, images, path)
    t0 = time.perf_counter()
    fv.run(None, 0, len(images), batch_size=32, checkpoint=10**6)
    crp_s = time.perf_counter() - t0
    same = total = 0
    for l in LAYERS:
        d_sorted, values, _ = load_maximization(fv.ActMax.PATH, RELU[l])
        tk = ours.top[l]
        for c in range(tk.values.shape[1]):
            # a tie at the 9th value may pick either image: compare where the 9th and 10th differ
            if float(values[8, c]) == float(values[9, c]):
                continue
            total += 1
            same += set(tk.images[:, c].tolist()) == set(d_sorted[:9, c].tolist())
    out = {"zfnet_s": ours_s, "crp_s": crp_s, "ratio": crp_s / ours_s, "maps_compared": total, "maps_same": same}
    print(
        f"top-9 selection, {len(images)} images, conv1-conv5: zfnet {ours_s:.2f} s, zennit-crp run {crp_s:.2f} s "
        f"= {out['ratio']:.1f}x; the same 9 images for {same} of {total} maps",
        flush=True,
    )
    return out, (ours, fv)


def projections(model, images, found, maps_per_layer: int) -> dict:
    """The deconvnet projections of the top-9 of `maps_per_layer` maps per layer: zfnet against zennit-crp's
    references (DeconvNet composite, receptive-field neuron) and Captum's NeuronDeconvolution."""
    from captum.attr import NeuronDeconvolution
    from zennit.composites import DeconvNet

    ours_scan, fv = found
    width = {l: ours_scan.top[l].values.shape[1] for l in LAYERS}  # maps per layer
    picks = {l: list(range(0, width[l], max(1, width[l] // maps_per_layer)))[:maps_per_layer] for l in LAYERS}
    targets = [
        Target(int(tk.images[r, c]), l, c, int(tk.ys[r, c]), int(tk.xs[r, c]))
        for l in LAYERS
        for tk in [ours_scan.top[l]]
        for c in picks[l]
        for r in range(9)
    ]
    with Deconvnet(model, norm="gradient") as dn:
        dn.project_targets(images, targets[:9])  # geometry probes, once per model
        t0 = time.perf_counter()
        mine = dn.project_targets(images, targets)
        ours_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    theirs = []
    for l in LAYERS:
        refs = fv.get_max_reference(picks[l], RELU[l], mode="activation", r_range=(0, 9), composite=DeconvNet(),
                                    rf=True, plot_fn=None, batch_size=32)  # fmt: skip
        theirs += [refs[c][1][r] for c in picks[l] for r in range(9)]
    crp_s = time.perf_counter() - t0
    # zennit-crp's heatmap is the projection summed over colour channels, seeded with the activation (as ours)
    scale = max(float(h.abs().max()) for h in theirs)
    diff = max(float((m.sum(0) - h).abs().max()) for m, h in zip(mine, theirs))
    relu = dict(model.named_modules())
    sample = targets[:: max(1, len(targets) // 40)]
    t0 = time.perf_counter()
    cap = [
        NeuronDeconvolution(model, relu[RELU[t.layer]]).attribute(
            images[t.image : t.image + 1], neuron_selector=(t.channel, t.y, t.x)
        )[0]
        for t in sample
    ]
    captum_s = (time.perf_counter() - t0) * len(targets) / len(sample)
    with Deconvnet(model, norm="gradient") as dn:
        unit_free = dn.project_targets(images, sample)
    # Captum seeds with 1: scale each of ours by its activation to compare
    cdiff = max(
        float((m / m.abs().max() - c / c.abs().max()).abs().max()) for m, c in zip(unit_free, cap) if c.abs().max() > 0
    )
    out = {
        "projections": len(targets),
        "zfnet_s": ours_s,
        "crp_s": crp_s,
        "captum_s_est": captum_s,
        "crp_ratio": crp_s / ours_s,
        "captum_ratio": captum_s / ours_s,
        "max_abs_diff_vs_crp": diff,
        "crp_max_abs": scale,
        "max_diff_vs_captum_normalized": cdiff,
        "captum_sampled": len(sample),
    }
    print(
        f"top-9 projections ({len(targets)}): zfnet {ours_s:.2f} s, zennit-crp references {crp_s:.2f} s = "
        f"{out['crp_ratio']:.1f}x, Captum NeuronDeconvolution {captum_s:.1f} s (est. from {len(sample)}) = "
        f"{out['captum_ratio']:.1f}x; max |zfnet - crp| {diff:.2g} (crp max {scale:.2g}), "
        f"Captum (each scaled to its max) {cdiff:.2g}",
        flush=True,
    )
    return out


def guided(model, images) -> dict:
    """Guided backpropagation of each image's top class to the input: zfnet batched, grad-cam one by one."""
    from pytorch_grad_cam import GuidedBackpropReLUModel

    with torch.no_grad():
        classes = model(images).argmax(1).tolist()
    targets = [Target(i, "fc8", c) for i, c in enumerate(classes)]
    with Deconvnet(model, rule="guided", norm="gradient") as dn:
        dn.project_targets(images[:1], targets[:1], unit=True)
        t0 = time.perf_counter()
        mine = dn.project_targets(images, targets, unit=True)
        ours_s = time.perf_counter() - t0
    gb = GuidedBackpropReLUModel(model, device="cpu")
    t0 = time.perf_counter()
    theirs = [
        torch.from_numpy(np.ascontiguousarray(gb(images[i : i + 1].clone(), c).transpose(2, 0, 1)))
        for i, c in enumerate(classes)
    ]
    cam_s = time.perf_counter() - t0
    scale = max(float(t.abs().max()) for t in theirs)
    diff = max(float((m - t).abs().max()) for m, t in zip(mine, theirs))
    out = {"images": len(images), "zfnet_s": ours_s, "gradcam_s": cam_s, "ratio": cam_s / ours_s}
    out.update(max_abs_diff=diff, gradcam_max_abs=scale)
    print(
        f"guided backprop of the top class, {len(images)} images: zfnet {ours_s:.2f} s, pytorch-grad-cam {cam_s:.2f} s"
        f" = {out['ratio']:.1f}x; max |diff| {diff:.2g} (grad-cam max {scale:.2g})",
        flush=True,
    )
    return out


def occlusion_side_by_side(model, images, window: int, stride: int) -> dict:
    """Fig. 6's p(true) map: Captum's Occlusion (its best perturbations_per_eval of 16 / 64) against zfnet's auto
    and approx modes on the same images, window, stride and baseline (0 in model-input units)."""
    from captum.attr import Occlusion

    with torch.no_grad():
        targets = model(images).argmax(1).tolist()
    rows: dict[str, list[float]] = {"captum": [], "auto": [], "approx": []}
    ssims = []
    for mode in ("auto", "approx"):  # one untimed run each: first calls set up oneDNN's kernels (Captum: ppe sweep)
        occlusion(model, images[:1], target=targets[0], window=window, stride=stride, fill="mean-image",
                  layer="conv5", strategy=mode)  # fmt: skip
    for x, t in zip(images, targets):
        best = None
        for ppe in (16, 64):
            occ = Occlusion(lambda z: F.softmax(model(z), 1))
            t0 = time.perf_counter()
            with torch.no_grad():
                occ.attribute(x[None], sliding_window_shapes=(3, window, window), strides=(3, stride, stride),
                              baselines=0.0, target=t, perturbations_per_eval=ppe)  # fmt: skip
            s = time.perf_counter() - t0
            best = s if best is None else min(best, s)
        rows["captum"].append(best)
        res = {}
        for mode in ("auto", "approx"):
            res[mode] = occlusion(model, x[None], target=t, window=window, stride=stride, fill="mean-image",
                                  layer="conv5", strategy=mode)[0]  # fmt: skip
            rows[mode].append(res[mode].seconds)
        ssims.append(deviation(res["approx"], res["auto"])["ssim_prob"])
    med = {k: float(np.median(v)) for k, v in rows.items()}
    out = {"window": window, "stride": stride, "images": len(images), "seconds_per_image": med}
    out.update(auto_ratio=med["captum"] / med["auto"], approx_ratio=med["captum"] / med["approx"])
    out["approx_ssim_min"] = min(ssims)
    print(
        f"occlusion {window}/{stride}: Captum {med['captum']:.2f} s/image, zfnet auto {med['auto']:.2f} s "
        f"= {out['auto_ratio']:.1f}x, approx {med['approx']:.2f} s = {out['approx_ratio']:.1f}x "
        f"(p(true) SSIM as plotted >= {out['approx_ssim_min']:.3f})",
        flush=True,
    )
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--images", type=int, default=64, help="images the top-9 are drawn from")
    ap.add_argument("--maps", type=int, default=8, help="maps per layer whose top-9 are projected")
    ap.add_argument("--quick", action="store_true", help="16 images, 2 maps a layer, one occlusion image")
    ap.add_argument("--json")
    args = ap.parse_args()
    if args.quick:
        args.images, args.maps = 16, 2
    torch.manual_seed(0)
    model = models.build("zfnet", seed=0, init="kaiming").eval()
    images = smooth_images(args.images, 224, 3)
    with torch.no_grad():  # logits' std 2 on these images, so that p(true) maps are not flat (bench/occlusion.py)
        model.fc8.weight.mul_(2.0 / float(model(images[:16]).std()))
    res = {}
    with tempfile.TemporaryDirectory() as tmp:
        res["selection"], found = selection(model, images, tmp + "/crp")
        res["projections"] = projections(model, images, found, args.maps)
    res["guided_backprop"] = guided(model, images[:16])
    res["occlusion"] = occlusion_side_by_side(model, images[: 1 if args.quick else 2], 32, 8)
    import captum
    import crp
    import pytorch_grad_cam

    res["peers"] = {
        "captum": captum.__version__,
        "zennit-crp": getattr(crp, "__version__", "0.6"),
        "pytorch-grad-cam": getattr(pytorch_grad_cam, "__version__", "1.5"),
    }
    return finish({"results": res}, args.json)


if __name__ == "__main__":
    sys.exit(main())
