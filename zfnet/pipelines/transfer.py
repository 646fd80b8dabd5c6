"""`zfnet transfer` and `zfnet layerprobe` as library calls: open the model and the target data, extract the
fixed layers' features once, run the folds (zfnet.experiments.transfer), and write OUT/results.json, OUT/table.md
(laid out as the paper's table, its numbers beside ours) and the plots."""
from __future__ import annotations

import os
import time

import numpy as np

from .. import data as zdata
from ..checkpoints import open_model
from ..errors import UsageError
from ..experiments import transfer as tx
from ..io import atomic_write_json, atomic_write_text
from ..layers import resolve_layer
from ..provenance import environment, file_sha256
from ..report.transfer import fig7, probe_markdown, probe_plot, transfer_markdown
from ..runtime import resolve_device


def _open(model, weights, pretrained, mean, data, split, device, exclude):
    dev = resolve_device(device)
    opened = open_model(model, weights, pretrained, dev, mean=mean, data=data, split=split)
    ds = zdata.open_dataset(data, split, opened.preprocess, exclude)
    return dev, opened, ds


def _info(opened) -> dict:
    return {"name": opened.name, "weights": opened.weights,
            "weights_sha256": file_sha256(opened.weights) if opened.weights else None}


def paper_layers(model) -> list[str]:
    """Layers 1 ... 7: conv1-conv5, fc6, fc7 where the model has them."""
    names = []
    for n in ("conv1", "conv2", "conv3", "conv4", "conv5", "fc6", "fc7"):
        try:
            resolve_layer(model, n)
            names.append(n)
        except UsageError:
            pass
    return names


def run_transfer(out: str, data: str, protocol: str = "folds", per_class: list[int] | None = None, folds: int = 5,
                 model: str | None = None, weights: str | None = None, pretrained: bool = False,
                 mean: str | None = None, split: str | None = None, layer: str = "fc7", scratch_epochs: int = 30,
                 no_scratch: bool = False, test_per_class: int | None = None, exclude: str | None = None,
                 device: str = "auto", progress: bool = True) -> dict:
    if protocol not in tx.PROTOCOLS:
        raise UsageError(f"unknown --protocol {protocol!r}; choose one of {', '.join(tx.PROTOCOLS)}")
    started = time.perf_counter()
    default_n, default_test = tx.PROTOCOLS[protocol]
    per_class = list(per_class or default_n)
    test_n = test_per_class or default_test
    if protocol == "pascal2012":
        return _run_pascal(out, data, model, weights, pretrained, mean, layer, device, progress, started)
    dev, opened, ds = _open(model, weights, pretrained, mean, data, split, device, exclude)
    if ds.labels.dim() != 1:
        raise UsageError(f"{data} is multi-label; use --protocol pascal2012")
    resolve_layer(opened.model, layer)
    feats, pos = tx.extract(opened.model, ds, opened.preprocess, [layer], device=dev, progress=progress)
    ds.check_readable()
    labels = ds.labels[pos].numpy()
    scores = tx.probe(feats, labels, per_class, test_n, folds, ["softmax"])
    if not no_scratch:
        from ..methods.atlas import fingerprint

        key = fingerprint({"model": opened.name, "data": data, "split": ds.split, "images": len(ds),
                           "kept": int(len(pos)), "epochs": scratch_epochs, "test": test_n, "exclude": exclude})
        s = tx.scratch(opened.name, len(ds.classes), ds, opened.preprocess, labels, pos.numpy(), per_class, test_n,
                       folds, scratch_epochs, device=dev, state=os.path.join(out, ".scratch"), key=key)
        scores.scores.update(s.scores)
    summary = scores.summary()
    os.makedirs(out, exist_ok=True)
    title = (f"{opened.name} -> {data} ({ds.split}, {len(ds.classes)} classes), {protocol} protocol: "
             f"{folds} folds, up to {test_n} test images per class")
    atomic_write_text(os.path.join(out, "table.md"), transfer_markdown(summary, per_class, layer, title, protocol))
    fig7(summary, per_class, layer, os.path.join(out, "fig7.png"), title)
    result = {"experiment": "transfer (Sec. 5.2, Tables 3-4, Fig. 7)", "protocol": protocol, "per_class": per_class,
              "test_per_class": test_n, "folds": folds, "layer": layer, "scratch_epochs": None if no_scratch else
              scratch_epochs, "classifier": "multinomial logistic regression (softmax), L2 C=1, standardized",
              "data": {"spec": data, "split": ds.split, "images": len(ds), "classes": ds.classes,
                       "skipped": ds.skipped_report()},
              "model": _info(opened), "summary": summary, "table": "table.md", "plot": "fig7.png",
              "wall_seconds": time.perf_counter() - started, "environment": environment(dev)}
    atomic_write_json(os.path.join(out, "results.json"), result)
    return result


def _run_pascal(out, data, model, weights, pretrained, mean, layer, device, progress, started) -> dict:
    dev = resolve_device(device)
    opened = open_model(model, weights, pretrained, dev, mean=mean, data=data, split="train")
    train = zdata.open_dataset(data, "train", opened.preprocess)
    val = zdata.open_dataset(data, "val", opened.preprocess)
    if train.labels.dim() != 2:
        raise UsageError(f"--protocol pascal2012 needs a label matrix (voc2012:DIR); {data} is single-label")
    ft, pt = tx.extract(opened.model, train, opened.preprocess, [layer], device=dev, progress=progress)
    fv, pv = tx.extract(opened.model, val, opened.preprocess, [layer], device=dev, progress=progress)
    import torch

    feats = torch.cat([ft[layer], fv[layer]])
    labels = np.concatenate([train.labels[pt].numpy(), val.labels[pv].numpy()])
    ap = tx.pascal(feats, labels, np.arange(len(pt)), np.arange(len(pt), len(pt) + len(pv)), train.classes)
    os.makedirs(out, exist_ok=True)
    lines = ["### Table 5 (PASCAL 2012): average precision %, softmax on " + layer, "", "| class | AP % |", "|---|---|"]
    lines += [f"| {c} | {100 * v:.1f} |" for c, v in ap.items()]
    atomic_write_text(os.path.join(out, "table.md"), "\n".join(lines) + "\n\nThe paper's mean: 79.0 (ours), "
                      "74.3 [A], 82.2 [B].\n")
    result = {"experiment": "transfer, PASCAL 2012 (Sec. 5.2, Table 5)", "ap": ap, "layer": layer,
              "model": _info(opened), "train_images": len(pt), "test_images": len(pv), "table": "table.md",
              "wall_seconds": time.perf_counter() - started, "environment": environment(dev)}
    atomic_write_json(os.path.join(out, "results.json"), result)
    return result


def run_layerprobe(out: str, data: str, protocol: str = "folds", per_class: int | None = None, folds: int = 5,
                   model: str | None = None, weights: str | None = None, pretrained: bool = False,
                   mean: str | None = None, split: str | None = None, layers: list[str] | None = None,
                   test_per_class: int | None = None, exclude: str | None = None, device: str = "auto",
                   progress: bool = True) -> dict:
    if protocol not in tx.PROTOCOLS or protocol == "pascal2012":
        raise UsageError(f"--protocol for layerprobe: one of caltech101, caltech256, folds (not {protocol!r})")
    started = time.perf_counter()
    default_n, default_test = tx.PROTOCOLS[protocol]
    n = per_class or default_n[-1]
    test_n = test_per_class or default_test
    dev, opened, ds = _open(model, weights, pretrained, mean, data, split, device, exclude)
    layers = layers or paper_layers(opened.model)
    feats, pos = tx.extract(opened.model, ds, opened.preprocess, layers, device=dev, progress=progress)
    ds.check_readable()
    labels = ds.labels[pos].numpy()
    summary = tx.probe(feats, labels, [n], test_n, folds, ["svm", "softmax"], layers).summary()
    os.makedirs(out, exist_ok=True)
    title = f"{opened.name} -> {data} ({ds.split}): per-layer probes, {n}/class, {folds} folds"
    atomic_write_text(os.path.join(out, "table.md"), probe_markdown(summary, layers, n, title))
    probe_plot(summary, layers, n, os.path.join(out, "layers.png"), title)
    result = {"experiment": "per-layer probes (Sec. 5.3, Table 6)", "layers": layers, "per_class": n,
              "test_per_class": test_n, "folds": folds,
              "features": {l: int(feats[l].shape[1]) for l in layers},
              "classifiers": {"svm": "LinearSVC C=1 on standardized features",
                              "softmax": "multinomial logistic regression, L2 C=1, standardized"},
              "data": {"spec": data, "split": ds.split, "images": len(ds), "classes": ds.classes},
              "model": _info(opened), "summary": summary, "table": "table.md", "plot": "layers.png",
              "wall_seconds": time.perf_counter() - started, "environment": environment(dev)}
    atomic_write_json(os.path.join(out, "results.json"), result)
    return result
