"""On-disk layouts: ImageNet-style class folders, plain image folders, Caltech-101 and Caltech-256.

ImageNet (Sec. 3, 5.1): `ROOT/train/<wnid>/*.JPEG` and `ROOT/val/<wnid>/*.JPEG` (the validation images moved
into class folders, as torchvision and most tooling expect).
Caltech-101: `ROOT/101_ObjectCategories/<class>/image_0001.jpg` (102 folders with BACKGROUND_Google).
Caltech-256: `ROOT/256_ObjectCategories/001.ak47/001_0001.jpg` ... `257.clutter/`.
The transfer protocols (15/30 per class, 5 folds, Sec. 5.2) are built on the 'all' split these readers give.
"""

from __future__ import annotations

import os

from ..errors import UsageError
from .base import FileImageSet, class_folders, list_images
from .preprocess import Preprocess


def _split_dir(root: str, split: str, name: str) -> str:
    candidates = {"val": ("val", "validation"), "test": ("test",), "train": ("train",)}.get(split, (split,))
    for c in candidates:
        d = os.path.join(root, c)
        if os.path.isdir(d):
            return d
    have = [d for d in ("train", "val", "test") if os.path.isdir(os.path.join(root, d))]
    raise UsageError(
        f"{name} folder {root!r} has no {split!r} split"
        + (f" (it has: {', '.join(have)})" if have else " (expected ROOT/train/<class>/..., ROOT/val/<class>/...)")
        + "; pass --split with one of those"
    )


def imagefolder(split: str, preprocess: Preprocess, path: str | None = None, name: str = "folder") -> FileImageSet:
    """Class folders: ROOT/{train,val,test}/<class>/, or for split 'all' ROOT/all/<class>/ or ROOT/<class>/."""
    if not path or not os.path.isdir(path):
        raise UsageError(
            f"dataset folder {path!r} does not exist; pass --data with the folder that holds the class folders"
        )
    has_splits = any(os.path.isdir(os.path.join(path, d)) for d in ("train", "val", "test"))
    if split == "all" and os.path.isdir(os.path.join(path, "all")):
        folder = os.path.join(path, "all")  # ROOT/all/<class>/...
    elif has_splits:
        if split == "all":
            raise UsageError(f"{path!r} is split into train/val/test folders; pass --split train, val or test")
        folder = _split_dir(path, split, name)
    elif split == "all":
        folder = path
    else:
        raise UsageError(f"{path!r} has no train/val/test split folders; pass --split all")
    files, labels, classes = class_folders(folder)
    if not classes:  # a flat folder of images: unlabelled (fine for the atlas, which needs no labels)
        files = list_images(folder)
        labels, classes = [0] * len(files), ["(unlabelled)"]
    return FileImageSet(name, split, folder, files, labels, classes, preprocess)


def imagenet(split: str, preprocess: Preprocess, path: str | None = None) -> FileImageSet:
    if split == "all":
        raise UsageError("imagenet has train and val splits; pass --split train or --split val")
    return imagefolder(split, preprocess, path, name="imagenet")


def _caltech(
    split: str, preprocess: Preprocess, path: str | None, sub: str, name: str, skip: tuple[str, ...] = ()
) -> FileImageSet:
    if not path or not os.path.isdir(path):
        raise UsageError(f"{name} folder {path!r} does not exist; pass --data {name}:ROOT (the folder holding {sub})")
    root = os.path.join(path, sub) if os.path.isdir(os.path.join(path, sub)) else path
    if split != "all":
        raise UsageError(
            f"{name} has no fixed {split!r} split (the paper samples N images per class per fold); use --split all"
        )
    files, labels, folders = class_folders(root, skip=skip)
    if not folders:
        raise UsageError(f"no class folders under {root!r}; expected {sub}/<class>/<image>.jpg")
    # Caltech-256 folders are '001.ak47': the class name is the part after the number
    classes = [f.split(".", 1)[1] if f[:3].isdigit() and "." in f else f for f in folders]
    return FileImageSet(name, split, root, files, labels, classes, preprocess)


def caltech101(split: str, preprocess: Preprocess, path: str | None = None) -> FileImageSet:
    """All Caltech-101 folders, BACKGROUND_Google included (102 classes, as in Fei-Fei et al.'s protocol)."""
    return _caltech(split, preprocess, path, "101_ObjectCategories", "caltech101")


def caltech256(split: str, preprocess: Preprocess, path: str | None = None) -> FileImageSet:
    """All 257 Caltech-256 folders (256 categories + clutter)."""
    return _caltech(split, preprocess, path, "256_ObjectCategories", "caltech256")
