"""Deconvnet speed on the full ZFNet-224 atlas workload (9 projections for every map of conv1-conv5 = 12,384).

Three ways, same run, same targets:
  zfnet     Deconvnet.project_targets: receptive-field crops, batched by layer (the whole workload is timed)
  whole     the same rules on whole 224x224 images, batched (a sample per layer is timed, then scaled)
  captum    captum.attr.NeuronDeconvolution called per neuron (a sample per layer is timed, then scaled)
Outputs are compared on the sampled targets (zfnet vs captum, unit seed; contrast normalization takes its
gradient in both, since Captum cannot skip it). Prints projections/s and the ratios; --json writes them.

    python bench/deconv.py                   # full workload (about 10 minutes on 2 cores)
    python bench/deconv.py --maps 8          # 8 maps per layer, for a quick look
"""

from __future__ import annotations

import argparse
import platform
import sys
import time

import torch
from _common import finish

from zfnet import models
from zfnet.methods.deconvnet import Deconvnet, Target

LAYERS = ["conv1", "conv2", "conv3", "conv4", "conv5"]


def smooth_images(n: int, seed: int = 0) -> torch.Tensor:
    """Natural-ish test images: low-pass noise at several scales, in the paper's [-128, 128] range."""
    g = torch.Generator().manual_seed(seed)
    x = torch.zeros(n, 3, 224, 224)
    for scale in (4, 16, 56, 224):
        noise = torch.randn(n, 3, scale, scale, generator=g)
        x += torch.nn.functional.interpolate(noise, size=224, mode="bilinear", align_corners=False)
    return (x / x.abs().amax() * 128).contiguous()


def workload(model, images, maps_per_layer):
    """For each map, the 9 images where it is strongest and each one's strongest position (the atlas)."""
    targets = []
    with Deconvnet(model) as dn:
        for layer in LAYERS:
            acts = dn.activations(images, layer)  # N x C x H x W
            n, c, h, w = acts.shape
            flat = acts.flatten(2)
            best, where = flat.max(2)  # N x C
            top = best.topk(9, dim=0).indices  # 9 x C
            for ch in range(min(c, maps_per_layer or c)):
                for i in top[:, ch].tolist():
                    y, x = divmod(int(where[i, ch]), w)
                    targets.append(Target(i, layer, ch, y, x))
    return targets


def time_ours(model, images, targets, chunk=1024):
    with Deconvnet(model, norm="gradient") as dn:
        t0 = time.perf_counter()
        for s in range(0, len(targets), chunk):
            dn.project_targets(images, targets[s : s + chunk], unit=True)
        return time.perf_counter() - t0


def sample(targets, per_layer):
    out = []
    for layer in LAYERS:
        mine = [t for t in targets if t.layer == layer]
        step = max(1, len(mine) // per_layer)
        out += mine[::step][:per_layer]
    return out


def time_captum(model, images, targets):
    from captum.attr import NeuronDeconvolution

    feature = {name: dict(model.named_modules())[f"relu{name[-1]}"] for name in LAYERS}
    times, outs = {}, []
    for t in targets:
        t0 = time.perf_counter()
        a = NeuronDeconvolution(model, feature[t.layer]).attribute(
            images[t.image : t.image + 1], neuron_selector=(t.channel, t.y, t.x)
        )
        times.setdefault(t.layer, []).append(time.perf_counter() - t0)
        outs.append(a[0].detach())
    return times, outs


def time_whole(model, images, targets, batch=16):
    times = {}
    with Deconvnet(model, norm="gradient", fast=False, max_batch_pixels=batch * 224 * 224) as dn:
        for layer in LAYERS:
            mine = [t for t in targets if t.layer == layer]
            t0 = time.perf_counter()
            dn.project_targets(images, mine, unit=True)
            times[layer] = (time.perf_counter() - t0) / len(mine)
    return times


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--maps", type=int, default=0, help="maps per layer (0: all, the full workload)")
    ap.add_argument("--images", type=int, default=32, help="image pool the top-9 are drawn from")
    ap.add_argument("--sample", type=int, default=16, help="targets per layer timed for captum and whole")
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--json", help="write the figures here")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    model = models.build("zfnet", init="kaiming").eval()
    images = smooth_images(args.images)
    targets = workload(model, images, args.maps)
    counts = {l: sum(t.layer == l for t in targets) for l in LAYERS}
    print(f"workload: {len(targets)} projections {counts}, {torch.get_num_threads()} threads", flush=True)

    ours_s = time_ours(model, images, targets)
    picked = sample(targets, args.sample)
    cap_times, cap_outs = time_captum(model, images, picked)
    whole_times = time_whole(model, images, picked)
    with Deconvnet(model, norm="gradient") as dn:
        mine = dn.project_targets(images, picked, unit=True)
    scale = max(float(o.abs().max()) for o in cap_outs)
    max_diff = max(float((m - c).abs().max()) for m, c in zip(mine, cap_outs))
    captum_s = sum(counts[l] * sum(v) / len(v) for l, v in cap_times.items())
    whole_s = sum(counts[l] * whole_times[l] for l in LAYERS)
    result = {
        "projections": len(targets),
        "per_layer": counts,
        "zfnet_seconds": ours_s,
        "zfnet_proj_per_s": len(targets) / ours_s,
        "captum_seconds_est": captum_s,
        "captum_proj_per_s": len(targets) / captum_s,
        "whole_seconds_est": whole_s,
        "whole_proj_per_s": len(targets) / whole_s,
        "speedup_vs_captum": captum_s / ours_s,
        "speedup_vs_whole": whole_s / ours_s,
        "captum_per_layer_ms": {l: 1e3 * sum(v) / len(v) for l, v in cap_times.items()},
        "whole_per_layer_ms": {l: 1e3 * v for l, v in whole_times.items()},
        "max_abs_diff_vs_captum": max_diff,
        "captum_max_abs": scale,
        "sampled": len(picked),
        "cpu": platform.processor() or platform.machine(),
    }
    print(f"zfnet   {result['zfnet_proj_per_s']:8.1f} projections/s  ({ours_s:.1f} s, measured on all)")
    print(f"whole   {result['whole_proj_per_s']:8.1f} projections/s  ({whole_s:.1f} s, from {len(picked)} sampled)")
    print(f"captum  {result['captum_proj_per_s']:8.1f} projections/s  ({captum_s:.1f} s, from {len(picked)} sampled)")
    print(f"speed-up: {result['speedup_vs_captum']:.1f}x vs Captum, {result['speedup_vs_whole']:.1f}x vs whole-image")
    print(f"outputs: max |zfnet - captum| = {max_diff:.3g} (captum max |.| = {scale:.3g})")
    return finish(result, args.json)


if __name__ == "__main__":
    sys.exit(main())
