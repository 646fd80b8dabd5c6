"""Issue 36's evidence, timed against what it must not outweigh, in one run:

atlas       the report's atlas (the embedded model, the Fashion-MNIST test split, conv1..conv5, every map), built
            without and with --evidence (every projected map scored on its top-1 image: the cascade's last step,
            4 other units, the causal map), fresh folders, alternating, best of --repeats. Issue goal: atlas +
            evidence <= 2.0x the atlas alone.
causal      causal maps (`methods.evidence.causal_maps`) on ZFNet-224 (Fig. 3, He-initialised, seed 0: the cost
            does not depend on training) for --units units each of conv3 and conv5 per scikit-image photo (window
            a quarter of the field, step half of it, the mean-image fill: 0): zfnet's (each occluded copy cut to
            the unit's receptive field; and on the incremental engine) against the naive loop - one whole forward
            per position, batch 1. Issue goal: >= 3x naive.

  python bench/evidence.py --json bench/results/round4/evidence-issue36.json
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from dataclasses import replace

import torch
from _common import finish
from occlusion import photos

from zfnet import data as zdata
from zfnet import models
from zfnet.layers import features
from zfnet.methods.evidence import EvidenceSettings, UnitAt, UnitEvidence, causal_maps
from zfnet.pipelines.atlas import AtlasConfig, AtlasSiteSettings, build_atlas
from zfnet.pixels import resolve_fill
from zfnet.pretrained import open_embedded
from zfnet.receptive_field import layer_field


def atlas_seconds(with_evidence: bool) -> float:
    with tempfile.TemporaryDirectory() as out:
        t0 = time.perf_counter()  # what `zfnet atlas` does: open the model and data, then the atlas
        opened = open_embedded()
        data = zdata.open_dataset("fashion-mnist", None, opened.preprocess)
        build_atlas(opened, data, AtlasConfig(out=out, settings=AtlasSiteSettings(evidence=with_evidence), workers=0),
                    progress=False)  # fmt: skip
        return time.perf_counter() - t0


def naive_causal(model, x, layer, unit: UnitAt, window: int, ys, xs, fill) -> torch.Tensor:
    """One whole forward (batch 1, to the logits) per occluder position; the unit read by a hook."""
    grabbed = {}
    module = dict(model.named_modules())[layer]
    handle = module.register_forward_hook(lambda m, i, o: grabbed.__setitem__("v", o))
    y0, x0 = unit.position
    out = torch.zeros(len(ys), len(xs), dtype=torch.float64)
    try:
        with torch.no_grad():
            model(x[unit.image : unit.image + 1])
            base = float(torch.relu(grabbed["v"][0, unit.channel, y0, x0]))
            for i, y in enumerate(ys):
                for j, xx in enumerate(xs):
                    occluded = x[unit.image : unit.image + 1].clone()
                    occluded[0, :, y : y + window, xx : xx + window] = fill
                    model(occluded)
                    out[i, j] = base - float(torch.relu(grabbed["v"][0, unit.channel, y0, x0]))
    finally:
        handle.remove()
    return out


def _unit(u: UnitAt, act: torch.Tensor) -> UnitEvidence:
    y, x = u.position
    return UnitEvidence(u.layer, u.channel, u.image, u.position, float(act[u.image, u.channel, y, x]), {}, {})


def causal_bench(units_per_layer: int) -> dict:
    model = models.build("zfnet", seed=0, init="kaiming").eval()
    x = photos(224)
    res: dict = {}
    for layer in ("conv3", "conv5"):
        with torch.no_grad():
            act = features(model, x, [layer])[layer]
        at = []
        for image in range(x.shape[0]):
            peaks = act[image].flatten(1).amax(1)
            for c in peaks.argsort(descending=True)[:units_per_layer].tolist():
                where = int(act[image, c].argmax())
                at.append(UnitAt(layer, c, image, divmod(where, act.shape[-1])))
        rf = layer_field(model, layer, tuple(x.shape[1:]))
        s = EvidenceSettings(rules=("backprop",), others=1, curve=False, fill="mean-image")
        fill = resolve_fill(model, s.fill, None, x, "the bench")[0]
        row: dict = {"units": len(at)}
        for engine in ("field", "incremental", "auto"):
            units = [_unit(u, act) for u in at]
            causal_maps(model, x, layer, units[:1], rf, fill, replace(s, engine=engine))  # warm-up
            units = [_unit(u, act) for u in at]
            t0 = time.perf_counter()
            strategy = causal_maps(model, x, layer, units, rf, fill, replace(s, engine=engine))
            row[engine] = {"seconds": time.perf_counter() - t0, "strategy": strategy}
        row["positions"] = sum(u.causal.numel() for u in units)
        t0 = time.perf_counter()
        naive = []
        for u, e in zip(at, units):
            ys, xs = e.causal_grid
            naive.append(naive_causal(model, x, layer, u, e.causal_window, ys, xs, 0.0))
        row["naive_seconds"] = time.perf_counter() - t0
        row["max_difference"] = max(float((e.causal - n).abs().max()) / abs(e.activation) for e, n in zip(units, naive))
        for engine in ("field", "incremental", "auto"):
            row[engine]["speedup"] = row["naive_seconds"] / row[engine]["seconds"]
        print(f"{layer}: {row['units']} units, {row['positions']} positions: naive {row['naive_seconds']:.2f} s, field "
              f"{row['field']['seconds']:.2f} s ({row['field']['speedup']:.1f}x), incremental "
              f"{row['incremental']['seconds']:.2f} s ({row['incremental']['speedup']:.1f}x), auto "
              f"{row['auto']['seconds']:.2f} s ({row['auto']['speedup']:.1f}x: {row['auto']['strategy']}), "
              f"max |difference| / activation "
              f"{row['max_difference']:.2e}", flush=True)  # fmt: skip
        res[layer] = row
    return res


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--units", type=int, default=2, help="units per photo and layer for the causal maps")
    ap.add_argument("--skip-atlas", action="store_true")
    ap.add_argument("--json")
    args = ap.parse_args()
    result: dict = {}
    if not args.skip_atlas:
        alone, both = [], []
        for _ in range(args.repeats):
            alone.append(atlas_seconds(False))
            both.append(atlas_seconds(True))
            print(f"atlas {alone[-1]:.1f} s, atlas + evidence {both[-1]:.1f} s", flush=True)
        result["atlas"] = {"seconds": min(alone), "with_evidence_seconds": min(both), "runs": [alone, both],
                           "ratio": min(both) / min(alone)}  # fmt: skip
        print(f"atlas + evidence / atlas = {result['atlas']['ratio']:.2f}x (goal <= 2.0)")
    result["causal"] = causal_bench(args.units)
    return finish(result, args.json)


if __name__ == "__main__":
    sys.exit(main())
