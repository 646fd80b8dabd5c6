"""The images an analysis command runs on: image files (with optional labels) and dataset images by index."""

from __future__ import annotations

import os
import re
from collections.abc import Sequence
from dataclasses import dataclass

import torch

from .. import data as zdata
from ..data.base import open_image
from ..errors import UsageError


@dataclass
class Inputs:
    names: list[str]
    x: torch.Tensor  # N x C x S x S model input
    labels: list[int | None]
    classes: list[str] | None


def label_index(value: str | None, classes: list[str] | None) -> int | None:
    """A class index from an index or a class name (None stays None)."""
    if value is None:
        return None
    if re.fullmatch(r"\d+", str(value)):
        return int(value)
    if classes and value in classes:
        return classes.index(value)
    raise UsageError(
        f"label {value!r} is neither a class index nor a class name" + (f" ({', '.join(classes)})" if classes else "")
    )


def check_files(images: list[str]) -> list:
    """Open every image file (refusing unreadable ones) before any model is loaded."""
    return [open_image(p) for p in images]


def load_inputs(
    pp: zdata.Preprocess,
    opened_images: Sequence = (),
    *,
    files: Sequence[str] = (),
    labels: Sequence[str] = (),
    dataset: zdata.ImageSet | None = None,
    indices: Sequence[int] = (),
    classes: list[str] | None = None,
) -> Inputs:
    """Files (already opened, see `check_files`) and images of `dataset` by index -> model input, names,
    labels. `dataset` is opened by the caller with `pp` (its images are fed through `pp`)."""
    if not files and not indices:
        raise UsageError("pass --image FILE (repeatable) or --data SPEC with --index N (repeatable)")
    if labels and len(labels) != len(files):
        raise UsageError(f"{len(labels)} --label for {len(files)} --image; give one label per image, or none")
    if indices and dataset is None:
        raise UsageError("--index needs --data (the dataset the indices point into)")
    names = [os.path.basename(p) for p in files]
    xs = [pp(img)[0] for img in opened_images]
    labs = [label_index(labels[i] if labels else None, classes) for i in range(len(files))]
    if indices and dataset is not None:
        classes = classes or dataset.classes
        for i in indices:
            if not 0 <= i < len(dataset):
                raise UsageError(
                    f"--index {i} is outside {dataset.spec or dataset.name} split {dataset.split!r} "
                    f"(0..{len(dataset) - 1})"
                )
            names.append(dataset.image_id(i))
            xs.append(pp.eval_input(dataset.base(i)[None])[0])
            labs.append(int(dataset.labels[i]))
    return Inputs(names, torch.stack(xs), labs, classes)


def dataset_inputs(dataset: zdata.ImageSet, indices: list[int], classes: list[str] | None = None) -> Inputs:
    """Images of an opened dataset by index, fed through the dataset's own preprocessing."""
    return load_inputs(dataset.preprocess, dataset=dataset, indices=indices, classes=classes)
