"""Feature generalization (Sec. 5.2, Tables 3-5, Fig. 7) and per-layer probes (Sec. 5.3, Table 6).

Transfer: keep layers 1-7 of a trained model fixed and train a new softmax on the target's training images;
the features (layer 7's rectified output) are extracted once per image and reused by every fold and
classifier. "From scratch" (the paper's non-pretrained rows): the same architecture with every layer reset to
random and trained, softmax included, on the same training images (Sec. 3's SGD recipe, `scratch_epochs`).

Protocols (Sec. 5.2): for each of `folds` folds (seeded by the fold number), every class's images are shuffled;
the first `per_class` train, and up to `test_per_class` of the rest test (Caltech-101: 15 or 30 train, up to
50 test; Caltech-256: 15/30/45/60 train, up to 25 test). The score is the mean of the per-class accuracies,
reported as mean +- std over the folds. PASCAL 2012 (Table 5): a 20-way softmax on the label matrix (targets:
each image's positive classes, equally weighted) trained on `train` and tested on `val`; per-class average
precision as the VOC 2012 devkit defines it (`voc_ap`), 'difficult only' (0) entries left out of that class's AP,
and their mean.

Per-layer probes (Table 6): a linear SVM (scikit-learn `LinearSVC`) and a softmax on the features of each of
layers 1 ... 7 (rectified outputs, flattened), all layers from one forward per image, same protocol.
The softmax is scikit-learn's multinomial `LogisticRegression` (L2, C = 1) on standardized features. Layer 1's
maps alone are ~4.6 MB per image at ZFNet-224, so the probes' features go to a `FeatureStore` on disk (one
memory-mapped N x D array per layer, written as extraction goes, resumable, shardable under torchrun): memory
holds one batch while extracting and one fold's training (then test) rows of one layer while classifying,
whatever the dataset's size.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, cast

import numpy as np
import torch
from torch import nn

from .. import data as zdata
from .. import models
from ..errors import UsageError
from ..io import atomic_write_json
from ..layers import features
from ..readback import Finite, read_json, read_json_or_none
from ..recipe import Recipe
from ..runtime import Dist, eval_mode, model_device
from ..train import epoch_plan, predict, train_one_epoch

PROTOCOLS = {  # name -> (default training images per class, test images per class)
    "caltech101": ((15, 30), 50),
    "caltech256": ((15, 30, 45, 60), 25),
    "folds": ((15, 30), 50),
    "pascal2012": ((), 0),
}


def extract(
    model: nn.Module,
    ds: zdata.ImageSet,
    *,
    layers: list[str],
    batch_size: int = 256,
    workers: int = 0,
    device: torch.device | str = "cpu",
    progress: bool = True,
) -> tuple[dict, torch.Tensor]:
    """Every layer's features for every readable image of `ds` (fed through its own preprocessing), from one
    forward per image: ({layer: N x D}, indices)."""
    pp = ds.preprocess
    out: dict[str, list[torch.Tensor]] = {l: [] for l in layers}
    kept = []
    with torch.no_grad(), eval_mode(model):
        for bases, _, idx in zdata.batches(
            ds, zdata.chunked(range(len(ds)), batch_size), workers=workers, progress=progress, desc="features"
        ):
            f = features(model, pp.eval_input(bases.to(device)), layers)
            for l in layers:
                out[l].append(f[l].flatten(1).cpu())
            kept.append(idx)
    return {l: torch.cat(v) for l, v in out.items()}, torch.cat(kept)


def layer_depth(layer: str) -> int | None:
    """The paper's layer number of a Fig. 3-family layer name (conv1-conv5 -> 1-5, fc6, fc7 -> 6, 7), so that
    Table 6's rows line up by depth whatever layers are asked for (an -rm34 model's conv5 is still row 5);
    None for any other name (no paper figure beside it)."""
    m = re.fullmatch(r"(conv|fc)(\d)", layer)
    return int(m.group(2)) if m else None


STORE_SCHEMA = {"key": str, "layers": [str], "dims": [int], "images": int, "chunk": int, "dtype": str}


class FeatureStore:
    """Per-layer features of every image of a dataset in `folder`: `<k>.npy` (N x D_k, float32 or float16,
    opened memory-mapped), `kept.npy` (1 where image i was read) and `chunks.npy` (1 where chunk c is written
    and flushed), with `store.json` naming the layers, shapes and the key of what was extracted (model,
    weights, data, preprocessing). A run that stops keeps every finished chunk; the next run with the same key
    extracts only the rest (another key starts over). Under torchrun, rank r extracts chunks r, r + W, ...
    into the same files (disjoint rows)."""

    def __init__(self, folder: str):
        self.folder = folder
        self.meta = read_json(
            os.path.join(folder, "store.json"),
            STORE_SCHEMA,
            fix=f"delete {folder} and rerun: the features are extracted again",
        )

    @property
    def layers(self) -> list[str]:
        return list(self.meta["layers"])

    def array(self, layer: str, mode: str = "r") -> np.memmap:
        k = self.layers.index(layer)
        return self._open(f"{k}.npy", mode)

    def flags(self, name: str, mode: str = "r") -> np.memmap:
        return self._open(f"{name}.npy", mode)

    def _open(self, name: str, mode: str) -> np.memmap:
        return cast(np.memmap, np.load(os.path.join(self.folder, name), mmap_mode=mode))  # type: ignore[arg-type]

    def positions(self) -> np.ndarray:
        """The dataset indices whose features are stored (the readable images), ascending."""
        return np.nonzero(np.asarray(self.flags("kept")))[0]

    @classmethod
    def create(cls, folder: str, key: str, layers: list[str], dims: list[int], n: int, chunk: int, dtype: str):
        """Open the store for `key` in `folder`, creating (or, for another key, recreating) its files."""
        meta = {"key": key, "layers": layers, "dims": dims, "images": n, "chunk": chunk, "dtype": dtype}
        path = os.path.join(folder, "store.json")
        if read_json_or_none(path, STORE_SCHEMA) == meta:
            return cls(folder)
        os.makedirs(folder, exist_ok=True)
        for name in os.listdir(folder):
            if name.endswith(".npy") or name == "store.json":
                os.remove(os.path.join(folder, name))
        for k, d in enumerate(dims):
            np.lib.format.open_memmap(os.path.join(folder, f"{k}.npy"), "w+", np.dtype(dtype), (n, d)).flush()
        n_chunks = -(-n // chunk)
        for name, size in (("kept", n), ("chunks", n_chunks)):
            np.lib.format.open_memmap(os.path.join(folder, f"{name}.npy"), "w+", np.uint8, (size,)).flush()
        atomic_write_json(path, meta)
        return cls(folder)


def extract_to_store(
    model: nn.Module,
    ds: zdata.ImageSet,
    folder: str,
    *,
    layers: list[str],
    key: str,
    batch_size: int = 64,
    dtype: str = "float32",
    workers: int = 0,
    dist: Dist | None = None,
    progress: bool = True,
) -> FeatureStore:
    """`extract` into a `FeatureStore` (see there): rows written as each batch is done, nothing held."""
    from ..runtime import barrier

    dist = dist or Dist(device=model_device(model))
    pp = ds.preprocess
    with torch.no_grad(), eval_mode(model):
        probe_x = torch.zeros(1, pp.channels, pp.input_size, pp.input_size, device=dist.device)
        dims = [int(v.flatten(1).shape[1]) for v in features(model, probe_x, layers).values()]
    if dist.main:
        store = FeatureStore.create(folder, key, layers, dims, len(ds), batch_size, dtype)
    barrier(dist)
    store = FeatureStore(folder)
    chunk_done = store.flags("chunks", "r+")
    kept = store.flags("kept", "r+")
    arrays = [store.array(l, "r+") for l in layers]
    todo = [c for c in range(dist.rank, len(chunk_done), dist.world) if not chunk_done[c]]
    chunks = [torch.arange(c * batch_size, min(len(ds), (c + 1) * batch_size)) for c in todo]
    with torch.no_grad(), eval_mode(model):
        pending = set(todo)
        for bases, _, idx in zdata.batches(
            ds, chunks, workers=workers, progress=progress and dist.main, desc="features"
        ):
            f = features(model, pp.eval_input(bases.to(dist.device)), layers)
            rows = idx.numpy()
            for a, l in zip(arrays, layers):
                a[rows] = f[l].flatten(1).cpu().numpy().astype(a.dtype, copy=False)
            kept[rows] = 1
            c = int(rows[0]) // batch_size
            for a in arrays:
                a.flush()
            kept.flush()
            chunk_done[c] = 1  # only after its rows are on disk
            chunk_done.flush()
            pending.discard(c)
        for c in pending:  # chunks with no readable image: nothing to write, but done
            chunk_done[c] = 1
        chunk_done.flush()
    barrier(dist)
    return FeatureStore(folder)


def folds_split(labels: np.ndarray, per_class: int, test_per_class: int, fold: int) -> tuple[np.ndarray, np.ndarray]:
    """(train positions, test positions) of one fold: per class, `per_class` train and up to `test_per_class`
    test of the rest, shuffled with the fold as seed."""
    rng = np.random.default_rng(fold)
    tr, te = [], []
    for c in np.unique(labels):
        where = rng.permutation(np.nonzero(labels == c)[0])
        if len(where) <= per_class:
            raise UsageError(
                f"class {int(c)} has {len(where)} images; {per_class} per class for training leaves "
                "none to test - lower --per-class"
            )
        tr.append(where[:per_class])
        te.append(where[per_class : per_class + test_per_class])
    return np.concatenate(tr), np.concatenate(te)


def mean_class_accuracy(pred: np.ndarray, labels: np.ndarray) -> float:
    return float(np.mean([np.mean(pred[labels == c] == c) for c in np.unique(labels)]))


def softmax_classifier(x_train: np.ndarray, y_train: np.ndarray, seed: int = 0):
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    return make_pipeline(StandardScaler(), LogisticRegression(C=1.0, max_iter=2000, random_state=seed)).fit(
        x_train, y_train
    )


def svm_classifier(x_train: np.ndarray, y_train: np.ndarray, seed: int = 0):
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler
    from sklearn.svm import LinearSVC

    return make_pipeline(StandardScaler(), LinearSVC(C=1.0, max_iter=5000, random_state=seed)).fit(x_train, y_train)


CLASSIFIERS = {"softmax": softmax_classifier, "svm": svm_classifier}


@dataclass
class FoldScores:
    """Mean per-class accuracy for every fold, per (classifier or source, layer, training images per class)."""

    scores: dict[str, list[float]] = field(default_factory=dict)  # "softmax/fc7/15" -> per-fold accuracy

    def add(self, key: str, value: float) -> None:
        self.scores.setdefault(key, []).append(value)

    def summary(self) -> dict[str, dict[str, Any]]:
        return {
            k: {"mean": float(np.mean(v)), "std": float(np.std(v, ddof=1)) if len(v) > 1 else 0.0, "folds": v}
            for k, v in self.scores.items()
        }


def probe(
    feats: Mapping[str, torch.Tensor | np.ndarray],
    labels: np.ndarray,
    per_class: list[int],
    test_per_class: int,
    folds: int,
    classifiers: list[str],
    layers: list[str] | None = None,
    rows: np.ndarray | None = None,
) -> FoldScores:
    """Train each classifier on each layer's fixed features for every fold and training-set size. `feats`:
    layer -> N x D tensor or array (a `FeatureStore`'s memory maps: only the fold's rows are read, one layer at
    a time); `rows`: where label i's features are (default: row i)."""
    out = FoldScores()
    for n in per_class:
        for f in range(folds):
            tr, te = folds_split(labels, n, test_per_class, f)
            r_tr, r_te = (tr, te) if rows is None else (rows[tr], rows[te])
            for layer in layers or list(feats):
                f_l = feats[layer]
                x = f_l.numpy() if isinstance(f_l, torch.Tensor) else f_l
                x_tr = np.asarray(x[r_tr], dtype=np.float32)
                fitted = {name: CLASSIFIERS[name](x_tr, labels[tr], f) for name in classifiers}
                del x_tr
                x_te = np.asarray(x[r_te], dtype=np.float32)
                for name, clf in fitted.items():
                    out.add(f"{name}/{layer}/{n}", mean_class_accuracy(clf.predict(x_te), labels[te]))
                del x_te, fitted
    return out


def scratch(
    model_name: str,
    ds: zdata.ImageSet,
    *,
    labels: np.ndarray,
    positions: np.ndarray,
    per_class: list[int],
    test_per_class: int,
    folds: int,
    epochs: int = 30,
    lr: float = 1e-2,
    batch_size: int = 32,
    device: str | torch.device = "cpu",
    seed: int = 0,
    state: str | None = None,
    key: str = "",
) -> FoldScores:
    """The paper's non-pretrained rows: the architecture at random, trained on each fold's training images.
    With `state` (a folder), each finished fold's accuracy is kept there under `key`, and a rerun (after a kill)
    trains only the folds not yet finished - each fold is seeded on its own, so the result is the same."""

    pp, num_classes = ds.preprocess, len(ds.classes)
    out = FoldScores()
    recipe = Recipe(model=model_name, epochs=epochs, lr=lr, batch_size=batch_size, seed=seed)
    dist = Dist(device=torch.device(device))
    for n in per_class:
        for f in range(folds):
            done = os.path.join(state, f"scratch-{n}-{f}.json") if state else None
            kept = read_json_or_none(done, {"key": str, "accuracy": Finite}) if done else None
            if kept is not None:
                if kept["key"] == key:
                    out.add(f"scratch/{n}", kept["accuracy"])
                    continue
            tr, te = folds_split(labels, n, test_per_class, f)
            torch.manual_seed(seed * 1000 + f)
            net = models.build(model_name, num_classes=num_classes).to(device)
            opt = torch.optim.SGD(net.parameters(), lr=lr, momentum=recipe.momentum, weight_decay=recipe.weight_decay)
            train_set = ds.subset(positions[tr])
            for e in range(epochs):
                plan = epoch_plan(len(train_set), e + 1, recipe, pp)
                train_one_epoch(net, opt, train_set, pp, plan, recipe, dist, e + 1, progress=False)
            test_set = ds.subset(positions[te])
            held = test_set.in_memory()
            bases = held if held is not None else torch.stack([test_set.base(i) for i in range(len(test_set))])
            probs = predict([net.eval()], bases, pp, False, dist.device)
            acc = mean_class_accuracy(probs.argmax(1).cpu().numpy(), labels[te])
            if done:
                atomic_write_json(done, {"key": key, "accuracy": acc, "n": n, "fold": f})
            out.add(f"scratch/{n}", acc)
    return out


def pascal(
    feats: torch.Tensor, label_matrix: np.ndarray, train_pos: np.ndarray, test_pos: np.ndarray, classes: list[str]
) -> dict[str, float]:
    """Table 5: a softmax over the 20 classes on the label matrix (1 present, 0 difficult only, -1 absent);
    per-class average precision (`voc_ap`) on the test images, 'difficult only' entries left out of that
    class's AP."""
    x = feats.numpy()
    y = label_matrix
    targets = (y[train_pos] > 0).astype(np.float64)
    keep = targets.sum(1) > 0
    net = nn.Linear(x.shape[1], len(classes)).double()
    opt = torch.optim.LBFGS(net.parameters(), max_iter=500, line_search_fn="strong_wolfe")
    mu, sd = x[train_pos].mean(0), x[train_pos].std(0) + 1e-6
    xt = torch.from_numpy((x[train_pos][keep] - mu) / sd).double()
    tt = torch.from_numpy(targets[keep] / targets[keep].sum(1, keepdims=True))

    def closure():
        opt.zero_grad()
        loss = -(tt * torch.log_softmax(net(xt), 1)).sum(1).mean() + 1e-4 * net.weight.pow(2).sum()
        loss.backward()
        return loss

    opt.step(closure)
    with torch.no_grad():
        scores = torch.softmax(net(torch.from_numpy((x[test_pos] - mu) / sd).double()), 1).numpy()
    return class_aps(scores, y[test_pos], classes)


def class_aps(scores: np.ndarray, labels: np.ndarray, classes: list[str]) -> dict[str, float]:
    """Per-class `voc_ap` of the test images' scores (N x K) against the label matrix (1 / 0 / -1), each
    class's 'difficult only' (0) images left out of its AP, and the mean over the classes with a positive."""
    ap = {}
    for k, c in enumerate(classes):
        yk = labels[:, k]
        use = yk != 0
        if (yk[use] > 0).any():
            ap[c] = voc_ap(scores[use, k], yk[use] > 0)
    ap["mean"] = float(np.mean(list(ap.values()))) if ap else float("nan")
    return ap


def voc_ap(scores: np.ndarray, positive: np.ndarray) -> float:
    """Average precision as the PASCAL VOC 2010-2012 devkit computes it (VOCap.m): rank by score (stable on
    ties), precision made monotone from the right (the envelope), summed over the recall steps - the area
    under the interpolated curve, not VOC 2007's 11-point mean, and not scikit-learn's step sum without the
    envelope."""
    order = np.argsort(-np.asarray(scores, dtype=np.float64), kind="stable")
    tp = np.asarray(positive, dtype=bool)[order]
    hits = np.cumsum(tp)
    rec = hits / max(1, int(tp.sum()))
    prec = hits / np.arange(1, len(tp) + 1)
    mrec = np.concatenate([[0.0], rec, [1.0]])
    mpre = np.concatenate([[0.0], prec, [0.0]])
    mpre = np.maximum.accumulate(mpre[::-1])[::-1]
    steps = np.nonzero(mrec[1:] != mrec[:-1])[0] + 1
    return float(np.sum((mrec[steps] - mrec[steps - 1]) * mpre[steps]))
