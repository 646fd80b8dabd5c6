"""Overlap search speed: `zfnet.experiments.dedupe.match` (blocked matrix products + running top-k per B image)
against the machine's own matrix-product throughput for the same shapes, measured in the same run.

Workload: Fashion-MNIST's 55,000 training images (A) against its 10,000 test images (B), 16 x 16 descriptors
(256 numbers), blocks of 4,096 A images = 550 M comparisons. Descriptors are computed once beforehand (decoding
is not what is measured). Prints comparisons/s for both and the ratio (goal >= 0.7).

    python bench/dedupe.py [--repeats 3] [--device cuda]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time

import torch
from _common import finish

from zfnet import data as zdata
from zfnet.experiments.dedupe import dataset_descriptors, match


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--block", type=int, default=4096)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--json")
    args = ap.parse_args()
    dev = torch.device(args.device)
    pp = zdata.Preprocess(32, 32, 3, "resize", 255.0)
    a = zdata.open_dataset("fashion-mnist", "train", pp)
    b = zdata.open_dataset("fashion-mnist", "test", pp)
    da, ia = dataset_descriptors(a, 16, device=dev, progress=False)
    db, ib = dataset_descriptors(b, 16, device=dev, progress=False)
    blocks = [(da[s : s + args.block], ia[s : s + args.block]) for s in range(0, len(da), args.block)]
    ours, bare = [], []
    for r in range(args.repeats):
        m = match(iter(blocks), db, ib, k=5)
        ours.append(m.comparisons / m.compare_seconds)
        t0 = time.perf_counter()
        for blk, _ in blocks:
            db @ blk.t()
        if dev.type == "cuda":
            torch.cuda.synchronize()
        bare.append(m.comparisons / (time.perf_counter() - t0))
        print(
            f"run {r + 1}: match {ours[-1] / 1e6:.1f} M comparisons/s, bare matmul {bare[-1] / 1e6:.1f} M/s", flush=True
        )
    o, b_ = statistics.median(ours), statistics.median(bare)
    print(f"dedupe / matmul = {o / 1e6:.1f} / {b_ / 1e6:.1f} M comparisons/s = {o / b_:.2f}x")
    return finish(
        {
            "a_images": len(da),
            "b_images": len(db),
            "comparisons": m.comparisons,
            "block": args.block,
            "device": str(dev),
            "match_comparisons_per_s": o,
            "matmul_comparisons_per_s": b_,
            "ratio": o / b_,
        },
        args.json,
    )


if __name__ == "__main__":
    sys.exit(main())
