"""The images an analysis command runs on: image files (with optional labels) and dataset images by index."""
from __future__ import annotations

import re
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
    raise UsageError(f"label {value!r} is neither a class index nor a class name"
                     + (f" ({', '.join(classes)})" if classes else ""))


def check_files(images: list[str]) -> list:
    """Open every image file (refusing unreadable ones) before any model is loaded."""
    return [open_image(p) for p in images]


def load_inputs(pp: zdata.Preprocess, opened_images: list, files: list[str], labels: list[str],
                data: str | None, split: str | None, indices: list[int], classes: list[str] | None) -> Inputs:
    """Files (already opened, see `check_files`) and dataset images by index -> model input, names, labels."""
    import os

    if not files and not indices:
        raise UsageError("pass --image FILE (repeatable) or --data SPEC with --index N (repeatable)")
    if labels and len(labels) != len(files):
        raise UsageError(f"{len(labels)} --label for {len(files)} --image; give one label per image, or none")
    if indices and not data:
        raise UsageError("--index needs --data (the dataset the indices point into)")
    names = [os.path.basename(p) for p in files]
    xs = [pp(img)[0] for img in opened_images]
    labs = [label_index(labels[i] if labels else None, classes) for i in range(len(files))]
    if indices:
        ds = zdata.open_dataset(data, split, pp)
        classes = classes or ds.classes
        for i in indices:
            if not 0 <= i < len(ds):
                raise UsageError(f"--index {i} is outside {data} split {ds.split!r} (0..{len(ds) - 1})")
            names.append(ds.image_id(i))
            xs.append(pp.eval_input(ds.base(i)[None])[0])
            labs.append(int(ds.labels[i]))
    return Inputs(names, torch.stack(xs), labs, classes)
