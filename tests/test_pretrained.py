"""The embedded Fashion-MNIST model: loads with its class names and preprocessing, reaches >= 92% top-1 on
the 10,000-image test set through `zfnet evaluate` (slow; the fast tests below and in test_preprocessing.py
check the same path on subsets), and ships the snapshots Fig. 4 needs."""

from __future__ import annotations

import json

import pytest
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


@pytest.mark.slow
def test_evaluate_prints_at_least_92_percent():
    r = run_cli("evaluate", "--pretrained", "--data", "fashion-mnist", "--split", "test")
    assert r.returncode == 0, r.stderr
    result = json.loads(r.stdout)
    assert result["images"] == 10000
    assert result["top1_accuracy"] >= 0.92, result["centre"]


def test_evaluate_on_a_subset_matches_a_plain_loop():
    """The fast twin of the 92% test: `zfnet evaluate` on 1,000 real test images equals a plain forward loop
    over the same images, and is in the model's accuracy range."""
    p = zfnet.pretrained()
    test = zdata.open_dataset("fashion-mnist", "test", p.preprocess).head(1000)
    with torch.no_grad():
        acc = float((p.model(p.preprocess.eval_input(test.bases)).argmax(1) == test.labels).float().mean())
    r = run_cli("evaluate", "--pretrained", "--data", "fashion-mnist", "--split", "test", "--limit", "1000")
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["top1_accuracy"] == pytest.approx(acc, abs=1e-6)  # float32 mean vs counts
    assert acc >= 0.9, acc


def test_pretrained_deconvnet_projection():
    """On real images the fast (receptive-field window) projection equals the whole-image one, and it lies
    inside the unit's receptive field."""
    p = zfnet.pretrained()
    test = zdata.open_dataset("fashion-mnist", "test", p.preprocess).head(4)
    x = p.preprocess.eval_input(test.bases)
    with zfnet.Deconvnet(p.model) as dn:
        rec = dn.project(x, "conv5", 3)
        targets = dn.targets(x, "conv5", [3] * 4)
    with zfnet.Deconvnet(p.model, fast=False) as dn:
        whole = dn.project(x, "conv5", 3)
    assert rec.shape == x.shape and float(rec.abs().max()) > 0
    torch.testing.assert_close(rec, whole, rtol=1e-5, atol=1e-6 * float(whole.abs().max()))
    rf = zfnet.receptive_field(p.model, x, layer="conv5")
    for i, t in enumerate(targets):
        top, left, bottom, right = rf.box(t.y, t.x)
        outside = rec[i].clone()
        outside[:, max(top, 0) : bottom, max(left, 0) : right] = 0
        assert float(outside.abs().max()) == 0
