"""Training throughput: `zfnet.train.fit` against a bare 20-line PyTorch loop, same model, data, batch size,
in the same run (issue goal: fit >= 0.95x the bare loop; the data pipeline must not be the bottleneck).

fit does everything the recipe asks (random crops + flips from the base squares, mean subtraction, SGD with
momentum and weight decay, feature scale clipping, running error) and its images/s counts the training steps
of the epoch. The bare loop gets pre-normalised centre crops and only runs forward, loss, backward, step.
Runs alternate (bare, fit, bare, fit, ...) and the median of each is reported.

    python bench/train_throughput.py                  # zfnet-small on Fashion-MNIST, 12,800 images per run
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time

import torch
import torch.nn.functional as F
from _common import finish

from zfnet import data as zdata
from zfnet import models
from zfnet.recipe import Recipe, RunOptions
from zfnet.train import fit
from zfnet.weights import default_preprocess


def bare_loop(model, x, y, batch):
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9, weight_decay=5e-4)
    model.train()
    t0 = time.perf_counter()
    for s in range(0, len(x), batch):
        xb, yb = x[s : s + batch], y[s : s + batch]
        loss = F.cross_entropy(model(xb), yb)
        opt.zero_grad()
        loss.backward()
        opt.step()
    return len(x) / (time.perf_counter() - t0)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="zfnet-small")
    ap.add_argument("--data", default="fashion-mnist")
    ap.add_argument("--images", type=int, default=12800)
    ap.add_argument("--batch", type=int, default=128)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--json")
    args = ap.parse_args()
    torch.manual_seed(0)
    model = models.build(args.model)
    train = zdata.open_dataset(args.data, "train", default_preprocess(model)).head(args.images)
    pp = train.preprocess.with_mean(zdata.mean_image(train, progress=False))
    x = pp.eval_input(train.in_memory())
    y = train.labels
    bare, ours = [], []
    for r in range(args.repeats):
        bare.append(bare_loop(models.build(args.model, seed=r), x, y, args.batch))
        with tempfile.TemporaryDirectory() as out:
            fit(
                Recipe(
                    model=args.model,
                    data=args.data,
                    epochs=1,
                    batch_size=args.batch,
                    limit_train=args.images,
                    limit_val=256,
                    snapshots=(),
                    seed=r,
                ),
                RunOptions(out=out, workers=0),
                progress=False,
            )
            with open(f"{out}/metrics.jsonl") as f:
                ours.append(json.loads(f.readline())["images_per_s"])
        print(f"run {r + 1}: bare {bare[-1]:.0f} img/s, fit {ours[-1]:.0f} img/s", flush=True)
    b, o = statistics.median(bare), statistics.median(ours)
    result = {
        "model": args.model,
        "data": args.data,
        "images": args.images,
        "batch": args.batch,
        "bare_img_per_s": b,
        "fit_img_per_s": o,
        "ratio": o / b,
    }
    print(f"fit / bare loop = {o:.0f} / {b:.0f} img/s = {o / b:.3f}x")
    return finish(result, args.json)


if __name__ == "__main__":
    sys.exit(main())
