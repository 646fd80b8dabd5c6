"""Turn a `zfnet train` run of the laptop recipe into the embedded model (zfnet/pretrained/fashion_mnist/).

    zfnet train --recipe zfnet/pretrained/fashion_mnist/recipe.json --out runs/fashion-mnist
    python scripts/package_pretrained.py runs/fashion-mnist

Copies the final weights (with their mean image), the run's resolved recipe, per-epoch metrics and curves,
evaluates on the 10,000-image test set (centre crop and 10 crops), and keeps the snapshots' conv layers only
(all that Fig. 4 needs; the fc layers would make each snapshot 3x larger).
"""

from __future__ import annotations

import json
import os
import shutil
import sys

from zfnet import data as zdata
from zfnet.checkpoints import find_snapshots
from zfnet.io import atomic_save_tensors, atomic_write_json, load_tensors, safetensors_metadata
from zfnet.provenance import Timer, environment
from zfnet.train import evaluate
from zfnet.weights import open_model

DEST = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "zfnet", "pretrained", "fashion_mnist")


def main(run: str) -> int:
    weights = os.path.join(run, "model.safetensors")
    opened = open_model("zfnet-small", weights)  # with the preprocessing the run stored (fit, mean image)
    model, pp = opened.model, opened.preprocess
    test = zdata.open_dataset("fashion-mnist", "test", pp)
    with Timer() as t:
        centre = evaluate(model, test, pp, progress=True)
        ten = evaluate(model, test, pp, ten_crop=True, progress=True)
    with open(os.path.join(run, "metrics.json")) as f:
        run_metrics = json.load(f)
    os.makedirs(os.path.join(DEST, "snapshots"), exist_ok=True)
    shutil.copyfile(weights, os.path.join(DEST, "model.safetensors"))
    for name in ("curves.png", "metrics.csv", "metrics.jsonl"):
        shutil.copyfile(os.path.join(run, name), os.path.join(DEST, name))
    shutil.copyfile(os.path.join(run, "recipe.json"), os.path.join(DEST, "run-recipe.json"))
    for old in os.listdir(os.path.join(DEST, "snapshots")):
        os.remove(os.path.join(DEST, "snapshots", old))
    final_epoch = run_metrics["epochs"]
    for epoch, path in find_snapshots(run):
        if epoch == final_epoch:
            continue  # model.safetensors is the last epoch
        tensors = load_tensors(path)
        keep = {k: v for k, v in tensors.items() if k.startswith("conv") or k.startswith("preprocess/")}
        atomic_save_tensors(keep, os.path.join(DEST, "snapshots", os.path.basename(path)), safetensors_metadata(path))
    atomic_write_json(
        os.path.join(DEST, "metrics.json"),
        {
            "test": {
                "images": len(test),
                "centre": centre,
                "ten_crop": ten,
                "top1_accuracy": 1 - centre["top1_err"],
                "seconds": t.seconds,
            },
            "val": run_metrics["val"],
            "train_top1_err": run_metrics["train_top1_err"],
            "train_wall_seconds": run_metrics["train_wall_seconds"],
            "epochs": final_epoch,
            "recipe": run_metrics["recipe"],
            "training_environment": run_metrics["environment"],
            "packaging_environment": environment(),
        },
    )
    print(json.dumps({"test_top1_accuracy": 1 - centre["top1_err"], "ten_crop_accuracy": 1 - ten["top1_err"]}))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1]))
