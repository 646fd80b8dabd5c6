"""The embedded Fashion-MNIST model: loads with its class names and preprocessing, reaches >= 92% top-1 on
the 10,000-image test set through `zfnet evaluate`, and ships the snapshots Fig. 4 needs."""
from __future__ import annotations

import json

import torch
from conftest import run_cli

import zfnet
from zfnet import data as zdata


def test_pretrained_bundle():
    p = zfnet.pretrained()
    assert p.name == "zfnet-small" and p.classes[0] == "T-shirt/top" and len(p.classes) == 10
    assert not p.model.training and p.preprocess.mean_image.shape == (1, 32, 32)
    assert p.recipe["model"] == "zfnet-small" and p.recipe["data"] == "fashion-mnist"
    epochs = [e for e, _ in p.snapshots]
    assert epochs == sorted(epochs) and epochs[0] == 1 and len(epochs) >= 7
    # the recipe's snapshot epochs, the last being the shipped model itself
    assert epochs == p.recipe["snapshots"] and p.snapshots[-1] == (p.metrics["epochs"], p.weights_path)
    assert p.metrics["test"]["top1_accuracy"] >= 0.92


def test_evaluate_prints_at_least_92_percent():
    r = run_cli("evaluate", "--pretrained", "--data", "fashion-mnist", "--split", "test")
    assert r.returncode == 0, r.stderr
    result = json.loads(r.stdout)
    assert result["images"] == 10000
    assert result["top1_accuracy"] >= 0.92, result["centre"]


def test_pretrained_deconvnet_projection():
    p = zfnet.pretrained()
    test = zdata.open_dataset("fashion-mnist", "test", p.preprocess).head(4)
    x = p.preprocess.eval_input(test.bases)
    with zfnet.Deconvnet(p.model) as dn:
        rec = dn.project(x, "conv5", 3)
    assert rec.shape == x.shape and float(rec.abs().sum()) > 0
    with torch.no_grad():
        pred = p.model(x).argmax(1)
    assert (pred == test.labels).float().mean() >= 0.5
