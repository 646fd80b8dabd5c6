"""A deterministic synthetic image dataset for fast tests: each class is a shape (bars, square, disk, ...)
drawn at a random place, size and contrast on a noisy background. Image i of a split depends only on
(seed, split, i), so every run and every process sees the same pixels."""

from __future__ import annotations

import zlib

import numpy as np

from ..errors import UsageError
from .base import TensorImageSet
from .preprocess import Preprocess

SHAPES = ["hbars", "vbars", "square", "disk", "diagonal", "checker", "cross", "ring"]
SPLIT_SIZES = {"train": 512, "val": 128, "test": 128}


def _draw(shape: str, size: int, rng: np.random.Generator) -> np.ndarray:
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32)
    r = rng.uniform(0.2, 0.4) * size
    cy, cx = rng.uniform(r, size - r, size=2)
    inside = (np.abs(yy - cy) <= r) & (np.abs(xx - cx) <= r)
    period = max(2.0, size / rng.uniform(4, 7))
    if shape == "hbars":
        m = inside & ((yy // (period / 2)) % 2 == 0)
    elif shape == "vbars":
        m = inside & ((xx // (period / 2)) % 2 == 0)
    elif shape == "square":
        m = inside
    elif shape == "disk":
        m = (yy - cy) ** 2 + (xx - cx) ** 2 <= r**2
    elif shape == "diagonal":
        m = inside & (((yy + xx) // (period / 2)) % 2 == 0)
    elif shape == "checker":
        m = inside & (((yy // (period / 2)) + (xx // (period / 2))) % 2 == 0)
    elif shape == "cross":
        w = max(1.0, r / 3)
        m = inside & ((np.abs(yy - cy) <= w) | (np.abs(xx - cx) <= w))
    else:  # ring
        d = np.sqrt((yy - cy) ** 2 + (xx - cx) ** 2)
        m = (d <= r) & (d >= r * 0.6)
    return m.astype(np.float32)


def synthetic(split: str, preprocess: Preprocess, path: str | None = None, seed: int = 0) -> TensorImageSet:
    """Splits train (512), val (128), test (128); `path` may give 'N' or 'N,classes' (e.g. synthetic:256,4)."""
    if split not in SPLIT_SIZES and split != "all":
        raise UsageError(f"synthetic has no split {split!r}; use train, val or test")
    n, k = SPLIT_SIZES.get(split, 768), len(SHAPES)
    if path:
        try:
            parts = [int(p) for p in path.split(",")]
        except ValueError:
            raise UsageError(f"bad synthetic spec {path!r}; use synthetic:N or synthetic:N,CLASSES") from None
        n = parts[0]
        if len(parts) > 1:
            k = parts[1]
        if not (1 <= k <= len(SHAPES)) or n < 1:
            raise UsageError(f"synthetic needs N >= 1 images and 1..{len(SHAPES)} classes")
    size, c = preprocess.input_size, preprocess.channels
    images = np.zeros((n, c, size, size), dtype=np.uint8)
    labels = np.zeros(n, dtype=np.int64)
    salt = zlib.crc32(split.encode())
    for i in range(n):
        rng = np.random.default_rng([seed, salt, i])
        label = int(rng.integers(k))
        mask = _draw(SHAPES[label], size, rng)
        fg = rng.uniform(150, 255, size=(c, 1, 1))
        bg = rng.uniform(0, 90, size=(c, 1, 1))
        img = bg + (fg - bg) * mask[None] + rng.normal(0, 12, size=(c, size, size))
        images[i] = np.clip(img, 0, 255).astype(np.uint8)
        labels[i] = label
    return TensorImageSet("synthetic", split, images, labels, SHAPES[:k], preprocess)
