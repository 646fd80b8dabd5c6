"""Atlas scan speed against the plain forward pass of the same model over the same data, same run
(issue goal: scan >= 0.9x plain forward), and the whole-atlas wall time of the shipped laptop model on the
Fashion-MNIST test set (scan, 3,168 projections + patches, figures, filters, page; with Fig. 4 evolution
over the 55,000 training images at 8 snapshot epochs).

    python bench/atlas.py
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time

import torch
from _common import finish

from zfnet import data as zdata
from zfnet.methods.atlas import default_layers, scan
from zfnet.pipelines.atlas import AtlasConfig, build_atlas
from zfnet.pretrained import open_embedded, pretrained, snapshots


def plain_forward(model, dataset, pp, batch):
    t0 = time.perf_counter()
    with torch.no_grad():
        for bases, _, _ in zdata.batches(dataset, zdata.chunked(range(len(dataset)), batch)):
            model(pp.eval_input(bases))
    return len(dataset) / (time.perf_counter() - t0)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--batch", type=int, default=128)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--skip-whole", action="store_true", help="only the scan comparison")
    ap.add_argument("--json")
    args = ap.parse_args()
    p = pretrained()
    model, pp = p.model.eval(), p.preprocess
    test = zdata.open_dataset("fashion-mnist", "test", pp)
    layers = default_layers(model)
    plain, ours = [], []
    for _ in range(args.repeats):
        plain.append(plain_forward(model, test, pp, args.batch))
        res = scan(model, test, layers=layers, k=9, batch_size=args.batch, workers=0, progress=False)
        ours.append(res.images / res.seconds)
    result = {
        "images": len(test),
        "layers": layers,
        "plain_forward_img_per_s": statistics.median(plain),
        "scan_img_per_s": statistics.median(ours),
    }
    result["ratio"] = result["scan_img_per_s"] / result["plain_forward_img_per_s"]
    print(
        f"scan {result['scan_img_per_s']:.0f} img/s vs plain forward {result['plain_forward_img_per_s']:.0f} img/s"
        f" = {result['ratio']:.2f}x"
    )
    if not args.skip_whole:
        for evo in (None, "pretrained"):
            with tempfile.TemporaryDirectory() as out:
                t0 = time.perf_counter()  # what `zfnet atlas` does: open the model and data, then the atlas
                opened = open_embedded()
                data = zdata.open_dataset("fashion-mnist", None, opened.preprocess)
                train = zdata.open_dataset("fashion-mnist", "train", opened.preprocess) if evo else None
                build_atlas(
                    opened,
                    data,
                    AtlasConfig(out=out, evolution=evo, workers=0),
                    snapshots=snapshots() if evo else None,
                    train=train,
                    progress=False,
                )
                key = "whole_atlas_seconds" + ("_with_evolution" if evo else "")
                result[key] = time.perf_counter() - t0
                print(f"{key}: {result[key]:.1f} s", flush=True)
    return finish(result, args.json)


if __name__ == "__main__":
    sys.exit(main())
