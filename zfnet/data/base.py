"""Image collections: labelled images that yield uint8 base squares (see `Preprocess`)."""
from __future__ import annotations

import os

import numpy as np
import torch
from PIL import Image

from ..errors import UsageError
from .preprocess import Preprocess

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".ppm", ".pgm", ".tif", ".tiff", ".webp", ".gif")


class ImageSet(torch.utils.data.Dataset):
    """A split of a dataset. `ds[i]` -> (C x B x B uint8 base square, label); `labels` holds every label
    (int64 class index, or a float multi-hot vector for multi-label data such as PASCAL VOC)."""

    name: str
    split: str
    classes: list[str]
    labels: torch.Tensor
    preprocess: Preprocess

    def image_id(self, i: int) -> str:
        raise NotImplementedError

    def in_memory(self) -> torch.Tensor | None:
        """All base squares as one N x C x B x B uint8 tensor, when the set lives in memory (else None)."""
        return None

    def head(self, n: int | None) -> ImageSet:
        """The first `n` images as a set of the same kind (quick runs, tests); None or n >= len: self."""
        if n is None or n >= len(self):
            return self
        import copy

        sub = copy.copy(self)
        sub.labels = self.labels[:n]
        for attr in ("bases", "files", "_ids"):
            if getattr(self, attr, None) is not None:
                setattr(sub, attr, getattr(self, attr)[:n])
        return sub

    def describe(self) -> dict:
        return {"name": self.name, "split": self.split, "images": len(self), "classes": len(self.classes)}


class TensorImageSet(ImageSet):
    """Images held in memory as an N x H x W (or N x C x H x W) uint8 array (MNIST-style data, synthetic)."""

    def __init__(self, name: str, split: str, images: np.ndarray, labels: np.ndarray, classes: list[str],
                 preprocess: Preprocess, ids: list[str] | None = None) -> None:
        self.name, self.split, self.classes, self.preprocess = name, split, list(classes), preprocess
        self.bases = preprocess.base_batch(images)
        self.labels = torch.as_tensor(np.asarray(labels), dtype=torch.long)
        self._ids = ids

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i: int):
        return self.bases[i], int(self.labels[i])

    def image_id(self, i: int) -> str:
        return self._ids[i] if self._ids is not None else f"{self.name}/{self.split}/{i:05d}"

    def in_memory(self) -> torch.Tensor:
        return self.bases


class FileImageSet(ImageSet):
    """Images read from files on demand (class folders, Caltech, PASCAL VOC)."""

    def __init__(self, name: str, split: str, root: str, files: list[str], labels, classes: list[str],
                 preprocess: Preprocess) -> None:
        if not files:
            raise UsageError(f"no images found for {name} split {split!r} under {root!r}; check the folder layout "
                             "(see the README's data section)")
        self.name, self.split, self.root, self.files = name, split, root, files
        self.classes, self.preprocess = list(classes), preprocess
        self.labels = labels if isinstance(labels, torch.Tensor) else torch.as_tensor(labels, dtype=torch.long)

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, i: int):
        path = os.path.join(self.root, self.files[i])
        try:
            with Image.open(path) as img:
                base = self.preprocess.base(img)
        except OSError as e:
            raise UsageError(f"cannot read image {path!r} ({e}); remove or replace the file") from None
        label = self.labels[i]
        return base, (int(label) if label.dim() == 0 else label)

    def image_id(self, i: int) -> str:
        return self.files[i]


def list_images(folder: str) -> list[str]:
    """Image file names in `folder` (not recursive), sorted."""
    return sorted(f for f in os.listdir(folder)
                  if f.lower().endswith(IMAGE_EXTENSIONS) and os.path.isfile(os.path.join(folder, f)))


def class_folders(root: str, skip: tuple[str, ...] = ()) -> tuple[list[str], list[int], list[str]]:
    """ImageNet-style `root/<class>/<image>`: (relative files, labels, class names), classes sorted."""
    classes = sorted(d for d in os.listdir(root) if os.path.isdir(os.path.join(root, d)) and d not in skip)
    files, labels = [], []
    for k, c in enumerate(classes):
        for f in list_images(os.path.join(root, c)):
            files.append(os.path.join(c, f))
            labels.append(k)
    return files, labels, classes
