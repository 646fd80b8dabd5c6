"""`zfnet transfer` and `zfnet layerprobe` as library calls: open the model and the target data, extract the
fixed layers' features once, run the folds (zfnet.experiments.transfer), and write OUT/results.json, OUT/table.md
(laid out as the paper's table, its numbers beside ours) and the plots."""

from __future__ import annotations

import os
import time
from dataclasses import dataclass

import numpy as np
import torch

from .. import data as zdata
from ..errors import UsageError, needs
from ..experiments import transfer as tx
from ..io import atomic_write_text
from ..layers import resolve_layer
from ..methods.atlas import fingerprint, tensor_hash
from ..provenance import write_result
from ..render.transfer import fig7, probe_markdown, probe_plot, transfer_markdown
from ..runtime import Dist, PeakMemory, teardown
from ..weights import Opened


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


@dataclass(frozen=True)
class TransferOptions:
    """Sec. 5.2's protocol: fixed layers + a new softmax, against the same net trained from scratch."""

    protocol: str = "folds"  # caltech101 | caltech256 | pascal2012 | folds (experiments.transfer.PROTOCOLS)
    per_class: tuple[int, ...] | None = None  # training images per class (None: the protocol's)
    folds: int = 5
    layer: str = "fc7"  # the fixed layer the softmax reads
    scratch_epochs: int = 30
    no_scratch: bool = False
    test_per_class: int | None = None  # None: the protocol's


def check_protocol(protocol: str, probe: bool = False) -> None:
    if probe and (protocol not in tx.PROTOCOLS or protocol == "pascal2012"):
        raise UsageError(f"--protocol for layerprobe: one of caltech101, caltech256, folds (not {protocol!r})")
    if protocol not in tx.PROTOCOLS:
        raise UsageError(f"unknown --protocol {protocol!r}; choose one of {', '.join(tx.PROTOCOLS)}")


def check_labels(ds: zdata.ImageSet) -> None:
    """A classifier needs single labels of at least two classes, present in the images."""
    name = ds.spec or ds.name
    if ds.labels.dim() != 1:
        raise UsageError(f"{name} is multi-label; use --protocol pascal2012")
    present = len(set(ds.labels.tolist()))
    if len(ds.classes) < 2 or present < 2:
        raise UsageError(
            f"{name} has {present} class{'es' if present != 1 else ''} of images; a classifier needs two or more "
            "(a folder of images: one subfolder per class)"
        )


def run_transfer(
    opened: Opened,
    dataset: zdata.ImageSet,
    out: str,
    *,
    options: TransferOptions = TransferOptions(),
    device: torch.device | str = "cpu",
    progress: bool = True,
) -> dict:
    """Tables 3-4 and Fig. 7 for `opened` on `dataset` (opened with `opened.preprocess`); see `run_pascal` for
    Table 5."""
    needs("sklearn", "zfnet transfer's classifiers")  # before any feature is extracted
    o = options
    check_protocol(o.protocol)
    if o.protocol == "pascal2012":
        raise UsageError("--protocol pascal2012 runs on the train and val splits: use run_pascal")
    started = time.perf_counter()
    default_n, default_test = tx.PROTOCOLS[o.protocol]
    per_class = list(o.per_class or default_n)
    test_n = o.test_per_class or default_test
    ds = dataset
    check_labels(ds)
    resolve_layer(opened.model, o.layer)
    feats, pos = tx.extract(opened.model, ds, layers=[o.layer], device=device, progress=progress)
    ds.check_readable()
    labels = ds.labels[pos].numpy()
    scores = tx.probe(feats, labels, per_class, test_n, o.folds, ["softmax"])
    if not o.no_scratch:
        key = fingerprint(
            {
                "model": opened.name,
                "data": ds.spec,
                "split": ds.split,
                "images": len(ds),
                "kept": int(len(pos)),
                "epochs": o.scratch_epochs,
                "test": test_n,
                "exclude": ds.exclude,
            }
        )
        s = tx.scratch(
            opened.name,
            ds,
            labels=labels,
            positions=pos.numpy(),
            per_class=per_class,
            test_per_class=test_n,
            folds=o.folds,
            epochs=o.scratch_epochs,
            device=device,
            state=os.path.join(out, ".scratch"),
            key=key,
        )
        scores.scores.update(s.scores)
    summary = scores.summary()
    os.makedirs(out, exist_ok=True)
    title = (
        f"{opened.name} -> {ds.spec} ({ds.split}, {len(ds.classes)} classes), {o.protocol} protocol: "
        f"{o.folds} folds, up to {test_n} test images per class"
    )
    atomic_write_text(os.path.join(out, "table.md"), transfer_markdown(summary, per_class, o.layer, title, o.protocol))
    fig7(summary, per_class, o.layer, os.path.join(out, "fig7.png"), title)
    result = {
        "experiment": "transfer (Sec. 5.2, Tables 3-4, Fig. 7)",
        "protocol": o.protocol,
        "per_class": per_class,
        "test_per_class": test_n,
        "folds": o.folds,
        "layer": o.layer,
        "scratch_epochs": None if o.no_scratch else o.scratch_epochs,
        "classifier": "multinomial logistic regression (softmax), L2 C=1, standardized",
        "data": {
            "spec": ds.spec,
            "split": ds.split,
            "images": len(ds),
            "classes": ds.classes,
            "skipped": ds.skipped_report(),
        },
        "summary": summary,
        "table": "table.md",
        "plot": "fig7.png",
    }
    return write_result(os.path.join(out, "results.json"), result, started=started, device=device, model=opened.info())


def run_pascal(
    opened: Opened,
    train: zdata.ImageSet,
    val: zdata.ImageSet,
    out: str,
    *,
    layer: str = "fc7",
    device: torch.device | str = "cpu",
    progress: bool = True,
) -> dict:
    """Table 5: a softmax on `layer`'s features of PASCAL VOC 2012's train split, average precision on val."""
    started = time.perf_counter()
    if train.labels.dim() != 2:
        raise UsageError(f"--protocol pascal2012 needs a label matrix (voc2012:DIR); {train.spec} is single-label")
    ft, pt = tx.extract(opened.model, train, layers=[layer], device=device, progress=progress)
    fv, pv = tx.extract(opened.model, val, layers=[layer], device=device, progress=progress)
    feats = torch.cat([ft[layer], fv[layer]])
    labels = np.concatenate([train.labels[pt].numpy(), val.labels[pv].numpy()])
    ap = tx.pascal(feats, labels, np.arange(len(pt)), np.arange(len(pt), len(pt) + len(pv)), train.classes)
    os.makedirs(out, exist_ok=True)
    lines = ["### Table 5 (PASCAL 2012): average precision %, softmax on " + layer, "", "| class | AP % |", "|---|---|"]
    lines += [f"| {c} | {100 * v:.1f} |" for c, v in ap.items()]
    atomic_write_text(
        os.path.join(out, "table.md"), "\n".join(lines) + "\n\nThe paper's mean: 79.0 (ours), 74.3 [A], 82.2 [B].\n"
    )
    result = {
        "experiment": "transfer, PASCAL 2012 (Sec. 5.2, Table 5)",
        "ap": ap,
        "ap_definition": "PASCAL VOC 2010-2012 devkit (VOCap.m): area under the interpolated precision envelope",
        "data": {
            s.split: {"spec": s.spec, "images": len(s), "exclude": s.exclude, "skipped": s.skipped_report()}
            for s in (train, val)
        },
        "layer": layer,
        "train_images": len(pt),
        "test_images": len(pv),
        "table": "table.md",
    }
    return write_result(os.path.join(out, "results.json"), result, started=started, device=device, model=opened.info())


@dataclass(frozen=True)
class ProbeOptions:
    """Sec. 5.3's per-layer probes."""

    protocol: str = "folds"
    per_class: int | None = None  # None: the protocol's largest
    folds: int = 5
    layers: tuple[str, ...] | None = None  # None: layers 1-7 (`paper_layers`)
    test_per_class: int | None = None
    store_dtype: str = "float32"  # the feature store's (float16 halves the disk, rounds the features)
    batch_size: int = 64  # images per extraction batch (what memory holds while extracting)


def _store_key(opened: Opened, ds: zdata.ImageSet, layers: list[str], dtype: str) -> str:
    """What the feature store's contents depend on: the model and its weights, the images, the layers, the
    preprocessing (mean image included) and the stored type."""
    pp = ds.preprocess
    ident = {"model": opened.name, "weights": opened.weights_sha256, "data": ds.spec, "split": ds.split}
    return fingerprint(
        {**ident, "images": len(ds), "exclude": ds.exclude, "layers": layers, "pp": pp.to_dict(),
         "mean": tensor_hash(pp.mean_image), "dtype": dtype}
    )  # fmt: skip


def run_layerprobe(
    opened: Opened,
    dataset: zdata.ImageSet,
    out: str,
    *,
    options: ProbeOptions = ProbeOptions(),
    device: torch.device | str = "cpu",
    progress: bool = True,
    dist: Dist | None = None,
) -> dict | None:
    """Table 6: a linear SVM and a softmax on each layer's fixed features, streamed through a feature store in
    OUT/.features (resumable; under torchrun every process extracts its share, rank 0 classifies and writes;
    other ranks return None)."""
    needs("sklearn", "zfnet layerprobe's classifiers")  # before any feature is extracted
    import resource

    o = options
    check_protocol(o.protocol, probe=True)
    if o.store_dtype not in ("float32", "float16"):
        raise UsageError(f"store dtype {o.store_dtype!r}: pass float32 or float16")
    started = time.perf_counter()
    default_n, default_test = tx.PROTOCOLS[o.protocol]
    n = o.per_class or default_n[-1]
    test_n = o.test_per_class or default_test
    ds = dataset
    check_labels(ds)
    dist = dist or Dist(device=torch.device(device))
    layers = list(o.layers or paper_layers(opened.model))
    for layer in layers:
        resolve_layer(opened.model, layer)
    key = _store_key(opened, ds, layers, o.store_dtype)
    with PeakMemory() as extracting:
        store = tx.extract_to_store(
            opened.model,
            ds,
            os.path.join(out, ".features"),
            layers=layers,
            key=key,
            batch_size=o.batch_size,
            dtype=o.store_dtype,
            dist=dist,
            progress=progress,
        )
    teardown(dist)  # the extraction was the last collective: the others need not wait while rank 0 classifies
    if not dist.main:
        return None
    ds.check_readable()
    pos = store.positions()
    labels = ds.labels[torch.as_tensor(pos)].numpy()
    feats = {l: store.array(l) for l in layers}
    with PeakMemory() as classifying:
        summary = tx.probe(feats, labels, [n], test_n, o.folds, ["svm", "softmax"], layers, rows=pos).summary()
    os.makedirs(out, exist_ok=True)
    title = f"{opened.name} -> {ds.spec} ({ds.split}): per-layer probes, {n}/class, {o.folds} folds"
    atomic_write_text(os.path.join(out, "table.md"), probe_markdown(summary, layers, n, title))
    probe_plot(summary, layers, n, os.path.join(out, "layers.png"), title)
    result = {
        "experiment": "per-layer probes (Sec. 5.3, Table 6)",
        "layers": layers,
        "per_class": n,
        "test_per_class": test_n,
        "folds": o.folds,
        "features": {l: int(feats[l].shape[1]) for l in layers},
        "depth": {l: tx.layer_depth(l) for l in layers},
        "feature_store": {
            "folder": ".features",
            "dtype": o.store_dtype,
            "bytes": int(sum(feats[l].nbytes for l in layers)),
            "images": int(len(pos)),
        },
        # anonymous memory (RssAnon), not the memory map's cached file pages
        "peak_memory_mb": {"extracting": extracting.peak_mb, "classifying": classifying.peak_mb},
        "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "classifiers": {
            "svm": "LinearSVC C=1 on standardized features",
            "softmax": "multinomial logistic regression, L2 C=1, standardized",
        },
        "data": {"spec": ds.spec, "split": ds.split, "images": len(ds), "classes": ds.classes},
        "summary": summary,
        "table": "table.md",
        "plot": "layers.png",
    }
    return write_result(os.path.join(out, "results.json"), result, started=started, device=device, model=opened.info())
