"""The activation index (issue 39), in one run on the embedded model over Fashion-MNIST's 60,000 training images
(zfnet's "trainval" split: its training and validation images):

  build   `build_index` (float16, conv1..conv5, the default 8,192-image shards) against a plain forward over the same
          images in the same batches (decoding and preprocessing included in both): images per second in 3 rounds,
          each timed plain, index, index, plain (ABBA: a drift of the machine's speed during a round falls on both
          alike); each round's ratio, and their median (goal >= 0.85x)
  query   `open_index(...).top("conv5", unit, 9)` over those images: the first call, then the median of 20 more
          (each another unit) - warm (goal <= 100 ms); and the index's size on disk

    python bench/index.py --json bench/results/round4/index-issue39.json
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time

import torch
from _common import finish

from zfnet import data as zdata
from zfnet.pipelines.index import IndexSettings, build_index, open_index
from zfnet.pretrained import open_embedded
from zfnet.settings import Run

BATCH = 256
ROUNDS = 3
ORDER = ("plain", "index", "index", "plain")


def plain(opened, ds) -> float:
    """Images per second of a plain forward over the dataset, same batches."""
    t0 = time.perf_counter()
    with torch.no_grad():
        for bases, _, _ in zdata.batches(ds, zdata.chunked(range(len(ds)), BATCH)):
            opened.model(opened.preprocess.eval_input(bases))
    return len(ds) / (time.perf_counter() - t0)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--json")
    args = ap.parse_args()
    opened = open_embedded()
    opened.model.eval()
    ds = zdata.open_dataset("fashion-mnist", "trainval", opened.preprocess)
    plain(opened, ds.head(2048))  # warm-up: kernels, caches
    out = {"images": len(ds)}
    with tempfile.TemporaryDirectory() as tmp:
        build_index(opened, ds.head(2048), os.path.join(tmp, "warm"), IndexSettings(), Run(batch_size=BATCH))  # pyarrow
        rounds = []
        for r in range(ROUNDS):
            seconds = {"plain": 0.0, "index": 0.0}
            for k, what in enumerate(ORDER):
                t0 = time.perf_counter()
                if what == "plain":
                    plain(opened, ds)
                else:
                    build_index(opened, ds, os.path.join(tmp, f"idx{r}-{k}"), IndexSettings(), Run(batch_size=BATCH))
                seconds[what] += time.perf_counter() - t0
            rate = {w: 2 * len(ds) / t for w, t in seconds.items()}
            rounds.append({"plain_img_s": rate["plain"], "index_img_s": rate["index"],
                           "ratio": rate["index"] / rate["plain"]})  # fmt: skip
            print(f"round {r + 1}: plain forward {rate['plain']:.0f} img/s, index {rate['index']:.0f} img/s: "
                  f"{rate['index'] / rate['plain']:.3f}x", flush=True)  # fmt: skip
        ratio = statistics.median(r["ratio"] for r in rounds)
        os.rename(os.path.join(tmp, f"idx{ROUNDS - 1}-2"), os.path.join(tmp, "idx"))
        out["build"] = {"ratio": ratio, "rounds": rounds, "order": list(ORDER)}
        print(f"build: the median round's ratio {ratio:.3f}x (goal >= 0.85)")
        size = sum(os.path.getsize(os.path.join(r, f)) for r, _, fs in os.walk(os.path.join(tmp, "idx")) for f in fs)
        idx = open_index(os.path.join(tmp, "idx"))
        units = sum(idx.shapes[layer][0] for layer in idx.layers)
        t0 = time.perf_counter()
        idx.top("conv5", 0, 9)
        first = 1000 * (time.perf_counter() - t0)
        warm = []
        for unit in range(1, 21):
            t0 = time.perf_counter()
            idx.top("conv5", unit, 9)
            warm.append(1000 * (time.perf_counter() - t0))
        out["query"] = {"first_ms": first, "warm_median_ms": statistics.median(warm), "warm_max_ms": max(warm)}
        out["size"] = {"bytes": size, "units": units, "bytes_per_image_unit": size / (len(ds) * units)}
        print(f"query --top: first {first:.1f} ms, warm median {statistics.median(warm):.1f} ms (goal <= 100 ms); "
              f"index {size / 1e6:.1f} MB on disk, {size / (len(ds) * units):.2f} bytes per image and unit "
              "(4 before compression)")  # fmt: skip
    out["cpu"] = os.cpu_count()
    return finish(out, args.json)


if __name__ == "__main__":
    sys.exit(main())
