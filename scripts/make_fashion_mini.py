"""Build zfnet/data/bundled/fashion-mnist-mini.npz, the compact Fashion-MNIST subset shipped in the package so
that `zfnet report` needs no download: the first 2,000 test images and the first 2,000 training images, with
their labels and original indices (the image ids stay those of the full set).

    python scripts/make_fashion_mini.py [IDX_DIR]     # default: Debian's /usr/share/datasets/fashion-mnist
"""

import os
import sys

import numpy as np

from zfnet.data.idx import read_idx
from zfnet.data.mnist import MINI_PATH, MINI_SIZE, find_fashion_mnist

files = find_fashion_mnist(sys.argv[1] if len(sys.argv) > 1 else None)
arrays = {}
for split, (xk, yk) in {"train": ("train_x", "train_y"), "test": ("test_x", "test_y")}.items():
    x, y = read_idx(files[xk])[:MINI_SIZE], read_idx(files[yk])[:MINI_SIZE]
    arrays[f"{split}_x"] = np.ascontiguousarray(x, dtype=np.uint8)
    arrays[f"{split}_y"] = np.ascontiguousarray(y, dtype=np.uint8)
    arrays[f"{split}_index"] = np.arange(MINI_SIZE, dtype=np.int32)
os.makedirs(os.path.dirname(MINI_PATH), exist_ok=True)
np.savez_compressed(MINI_PATH, **arrays)
print(MINI_PATH, os.path.getsize(MINI_PATH), "bytes")
