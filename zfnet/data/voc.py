"""PASCAL VOC 2012 classification (Sec. 5.2, Table 5) in its official layout:
`VOCdevkit/VOC2012/{JPEGImages,Annotations,ImageSets/Main}`; split lists `ImageSets/Main/{train,val,trainval}.txt`
and per-class ground truth `ImageSets/Main/<class>_<split>.txt` ('<id> 1' present, '0' difficult only,
'-1' absent)."""

from __future__ import annotations

import os
import xml.etree.ElementTree as ET

import torch

from ..errors import UsageError
from .base import FileImageSet
from .preprocess import Preprocess

VOC_CLASSES = [
    "aeroplane",
    "bicycle",
    "bird",
    "boat",
    "bottle",
    "bus",
    "car",
    "cat",
    "chair",
    "cow",
    "diningtable",
    "dog",
    "horse",
    "motorbike",
    "person",
    "pottedplant",
    "sheep",
    "sofa",
    "train",
    "tvmonitor",
]


def find_voc_root(path: str) -> str:
    for cand in (path, os.path.join(path, "VOC2012"), os.path.join(path, "VOCdevkit", "VOC2012")):
        if os.path.isdir(os.path.join(cand, "JPEGImages")) and os.path.isdir(os.path.join(cand, "ImageSets", "Main")):
            return cand
    raise UsageError(
        f"no PASCAL VOC 2012 layout under {path!r}; expected VOCdevkit/VOC2012/JPEGImages and "
        "ImageSets/Main (pass --data voc2012:ROOT)"
    )


def _labels_from_xml(root: str, image_id: str) -> list[int]:
    row = [-1] * len(VOC_CLASSES)
    tree = ET.parse(os.path.join(root, "Annotations", image_id + ".xml"))
    for obj in tree.findall("object"):
        k = VOC_CLASSES.index((obj.findtext("name") or "").strip())
        difficult = obj.findtext("difficult", "0").strip() == "1"
        row[k] = max(row[k], 0 if difficult else 1)
    return row


def voc2012(split: str, preprocess: Preprocess, path: str | None = None) -> FileImageSet:
    """Images of a VOC split with a 20-column label matrix: 1 present, 0 difficult only, -1 absent."""
    if not path or not os.path.isdir(path):
        raise UsageError(f"VOC folder {path!r} does not exist; pass --data voc2012:ROOT")
    root = find_voc_root(path)
    main = os.path.join(root, "ImageSets", "Main")
    list_file = os.path.join(main, f"{split}.txt")
    if not os.path.isfile(list_file):
        raise UsageError(f"VOC has no split {split!r} at {list_file}; use train, val or trainval")
    with open(list_file) as f:
        ids = [line.split()[0] for line in f if line.strip()]
    index = {i: n for n, i in enumerate(ids)}
    labels = torch.full((len(ids), len(VOC_CLASSES)), -1, dtype=torch.long)
    per_class = [os.path.join(main, f"{c}_{split}.txt") for c in VOC_CLASSES]
    if all(os.path.isfile(p) for p in per_class):
        for k, p in enumerate(per_class):
            with open(p) as f:
                for line in f:
                    parts = line.split()
                    if len(parts) == 2 and parts[0] in index:
                        labels[index[parts[0]], k] = int(parts[1])
    else:
        for n, i in enumerate(ids):
            labels[n] = torch.tensor(_labels_from_xml(root, i))
    files = [os.path.join("JPEGImages", i + ".jpg") for i in ids]
    return FileImageSet("voc2012", split, root, files, labels, VOC_CLASSES, preprocess)
