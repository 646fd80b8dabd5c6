"""Data readers on fixtures the tests build in each official layout, and Sec. 3 preprocessing."""

from __future__ import annotations

import gzip
import os

import numpy as np
import pytest
import torch
from conftest import run_cli
from PIL import Image

from zfnet import data as zdata
from zfnet.data import mnist as zmnist
from zfnet.data.idx import read_idx
from zfnet.data.preprocess import Preprocess, for_model
from zfnet.errors import UsageError


def write_idx(path, arr: np.ndarray) -> None:
    header = bytes([0, 0, 0x08, arr.ndim]) + b"".join(int(d).to_bytes(4, "big") for d in arr.shape)
    payload = header + arr.astype(np.uint8).tobytes()
    with gzip.open(path, "wb") if str(path).endswith(".gz") else open(path, "wb") as f:
        f.write(payload)


def make_fashion(folder, n_train=5010, n_test=16):
    os.makedirs(folder, exist_ok=True)
    rng = np.random.default_rng(0)
    write_idx(folder / "train-images-idx3-ubyte.gz", rng.integers(0, 256, (n_train, 28, 28)))
    write_idx(folder / "train-labels-idx1-ubyte.gz", np.arange(n_train) % 10)
    write_idx(folder / "t10k-images-idx3-ubyte", rng.integers(0, 256, (n_test, 28, 28)))
    write_idx(folder / "t10k-labels-idx1-ubyte", np.arange(n_test) % 10)


def test_idx_reader(tmp_path):
    arr = np.arange(2 * 3 * 4).reshape(2, 3, 4) % 256
    write_idx(tmp_path / "a.idx", arr)
    write_idx(tmp_path / "a.idx.gz", arr)
    assert np.array_equal(read_idx(tmp_path / "a.idx"), arr)
    assert np.array_equal(read_idx(tmp_path / "a.idx.gz"), arr)


def test_fashion_mnist_explicit_path_and_splits(tmp_path):
    make_fashion(tmp_path / "fm")
    pp = for_model(28, 1)
    train = zdata.open_dataset(f"fashion-mnist:{tmp_path / 'fm'}", "train", pp)
    val = zdata.open_dataset(f"fashion-mnist:{tmp_path / 'fm'}", "val", pp)
    test = zdata.open_dataset(str(tmp_path / "fm"), "test", pp)  # a folder of IDX files is recognised
    assert (len(train), len(val), len(test)) == (10, 5000, 16)
    assert train.bases.shape == (10, 1, 32, 32)  # zero-padded to the 32 px base square
    raw = read_idx(tmp_path / "fm" / "train-images-idx3-ubyte.gz")
    assert torch.equal(train.bases[3, 0, 2:30, 2:30], torch.from_numpy(raw[3]))
    assert torch.equal(pp.center(train.bases)[3, 0], torch.from_numpy(raw[3]))  # centre crop = the image
    assert val.image_id(0) == "fashion-mnist/train/00010"
    assert train.classes[9] == "Ankle boot"


def test_fashion_mnist_not_found_names_all_three(tmp_path, monkeypatch):
    monkeypatch.setattr(zmnist, "DEBIAN_FASHION", str(tmp_path / "nowhere"))
    monkeypatch.setenv("ZFNET_OFFLINE", "1")
    with pytest.raises(UsageError) as e:
        zdata.open_dataset("fashion-mnist", "train", for_model(28, 1))
    msg = str(e.value)
    assert "apt-get install dataset-fashion-mnist" in msg and "download" in msg and "fashion-mnist:DIR" in msg
    with pytest.raises(UsageError, match="none under"):
        zdata.open_dataset(f"fashion-mnist:{tmp_path}", "train", for_model(28, 1))


def test_mnist5k_real_digits():
    pp = for_model(28, 1)
    sets = {s: zdata.open_dataset("mnist5k", s, pp) for s in ("train", "val", "test")}
    assert {s: len(d) for s, d in sets.items()} == {"train": 4000, "val": 500, "test": 500}
    assert torch.equal(sets["test"].labels.bincount(), torch.full((10,), 50))
    digit = pp.center(sets["train"].bases).float()
    assert 20 < float(digit.mean()) < 50 and float(digit.max()) == 255  # ink on black, like MNIST


def test_synthetic_is_deterministic_and_learnable_labels():
    pp = for_model(28, 1)
    a = zdata.open_dataset("synthetic", "train", pp)
    b = zdata.open_dataset("synthetic", "train", pp)
    assert torch.equal(a.bases, b.bases) and torch.equal(a.labels, b.labels)
    assert not torch.equal(a.bases[:8], zdata.open_dataset("synthetic", "test", pp).bases[:8])
    assert len(set(a.labels.tolist())) == 8
    assert len(zdata.open_dataset("synthetic:40,3", "train", pp)) == 40


def _jpeg(path, size, colour):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    Image.new("RGB", size, colour).save(path)


def test_imagenet_folders_resize_crop_and_mean_in_the_user_cache(tmp_path, monkeypatch):
    root = tmp_path / "imagenet"
    for split in ("train", "val"):
        for k, wnid in enumerate(("n01440764", "n01443537")):
            for i in range(3):
                _jpeg(str(root / split / wnid / f"{wnid}_{i}.JPEG"), (300 + 40 * i, 200 + 10 * k), (50 * k, 100, 200))
    pp = for_model(224, 3)
    train = zdata.open_dataset(f"imagenet:{root}", "train", pp)
    assert len(train) == 6 and train.classes == ["n01440764", "n01443537"]
    base, label, _ = train[4]
    assert base.shape == (3, 256, 256) and label == 1
    cache = tmp_path / "cache"
    monkeypatch.setenv("ZFNET_CACHE", str(cache))
    before = sorted(p for p in root.rglob("*"))
    mean = zdata.mean_image(train, progress=False)
    assert mean.shape == (3, 256, 256)
    assert sorted(p for p in root.rglob("*")) == before, "nothing is written inside the dataset"
    cached = list((cache / "means").iterdir())
    assert len(cached) == 1
    # the cache is keyed by the dataset's identity: the same set reads it back, another split computes its own
    assert torch.equal(zdata.mean_image(train, progress=False), mean)
    zdata.mean_image(zdata.open_dataset(f"imagenet:{root}", "val", pp), progress=False)
    assert len(list((cache / "means").iterdir())) == 2
    # a damaged cache entry is recomputed, not trusted
    cached[0].write_bytes(b"not a safetensors file")
    assert torch.equal(zdata.mean_image(train, progress=False), mean)
    direct = torch.stack([train[i][0].double() for i in range(len(train))]).mean(0)
    torch.testing.assert_close(mean.double(), direct, atol=1e-4, rtol=0)
    # and it is the colours drawn (within JPEG's rounding)
    torch.testing.assert_close(mean[:, 100, 100], torch.tensor([25.0, 100.0, 200.0]), atol=3.0, rtol=0)
    with pytest.raises(UsageError, match="train/val/test"):
        zdata.open_dataset(f"folder:{root}", "all", pp)


def test_resize_smallest_side_then_centre_crop():
    pp = Preprocess(224, 256, 3)
    img = Image.fromarray(np.random.default_rng(0).integers(0, 256, (300, 512, 3), dtype=np.uint8))
    want = img.resize((437, 256), Image.BILINEAR).crop(((437 - 256) // 2, 0, (437 - 256) // 2 + 256, 256))
    got = pp.base(img)
    assert torch.equal(got, torch.from_numpy(np.asarray(want)).permute(2, 0, 1))


def test_crops_flips_and_ten_crop():
    pp = Preprocess(4, 6, 1, scale=255.0, mean_image=torch.full((1, 6, 6), 10.0))
    base = torch.arange(2 * 36, dtype=torch.uint8).view(2, 1, 6, 6)
    x = base.float() - 10
    crops = pp.crop(x, torch.tensor([[0, 1], [2, 2]]), torch.tensor([False, True]))
    assert torch.equal(crops[0], x[0, :, 0:4, 1:5]) and torch.equal(crops[1], x[1, :, 2:6, 2:6].flip(-1))
    ten = pp.ten_crop_input(base).view(10, 2, 1, 4, 4)
    corners = [x[:, :, 0:4, 0:4], x[:, :, 0:4, 2:6], x[:, :, 2:6, 0:4], x[:, :, 2:6, 2:6], x[:, :, 1:5, 1:5]]
    for i, c in enumerate(corners):
        assert torch.equal(ten[i], c) and torch.equal(ten[5 + i], c.flip(-1))
    assert torch.equal(pp.display(pp.eval_input(base)), pp.center(base).float())


def test_caltech_layouts(tmp_path):
    for name in ("accordion", "BACKGROUND_Google"):
        for i in range(2):
            _jpeg(str(tmp_path / "c101" / "101_ObjectCategories" / name / f"image_{i + 1:04d}.jpg"), (64, 48), "red")
    for folder in ("001.ak47", "257.clutter"):
        _jpeg(str(tmp_path / "c256" / "256_ObjectCategories" / folder / f"{folder[:3]}_0001.jpg"), (50, 80), "blue")
    pp = for_model(224, 3)
    c101 = zdata.open_dataset(str(tmp_path / "c101"), "all", pp)
    assert c101.name == "caltech101" and c101.classes == ["BACKGROUND_Google", "accordion"] and len(c101) == 4
    c256 = zdata.open_dataset(f"caltech256:{tmp_path / 'c256'}", "all", pp)
    assert c256.classes == ["ak47", "clutter"] and c256[1][0].shape == (3, 256, 256)
    with pytest.raises(UsageError, match="per class"):
        zdata.open_dataset(f"caltech101:{tmp_path / 'c101'}", "train", pp)


def test_voc2012_layout(tmp_path):
    root = tmp_path / "VOCdevkit" / "VOC2012"
    ids = ["2008_000001", "2008_000002"]
    for i in ids:
        _jpeg(str(root / "JPEGImages" / f"{i}.jpg"), (120, 90), "green")
    main = root / "ImageSets" / "Main"
    os.makedirs(main)
    (main / "train.txt").write_text("\n".join(ids) + "\n")
    from zfnet.data.voc import VOC_CLASSES

    for c in VOC_CLASSES:
        rows = {
            "2008_000001": 1 if c == "dog" else -1,
            "2008_000002": 0 if c == "dog" else (1 if c == "person" else -1),
        }
        (main / f"{c}_train.txt").write_text("".join(f"{i} {rows[i]:2d}\n" for i in ids))
    voc = zdata.open_dataset(str(tmp_path), "train", for_model(224, 3))
    assert voc.name == "voc2012" and len(voc) == 2
    dog, person = VOC_CLASSES.index("dog"), VOC_CLASSES.index("person")
    assert voc.labels[0, dog] == 1 and voc.labels[1, dog] == 0 and voc.labels[1, person] == 1
    assert int((voc.labels == 1).sum()) == 2
    # without per-class files, the XML annotations give the same matrix
    for c in VOC_CLASSES:
        os.remove(main / f"{c}_train.txt")
    os.makedirs(root / "Annotations")
    (root / "Annotations" / "2008_000001.xml").write_text(
        "<annotation><object><name>dog</name><difficult>0</difficult></object></annotation>"
    )
    (root / "Annotations" / "2008_000002.xml").write_text(
        "<annotation><object><name>dog</name><difficult>1</difficult></object>"
        "<object><name>person</name><difficult>0</difficult></object></annotation>"
    )
    assert torch.equal(zdata.open_dataset(f"voc2012:{tmp_path}", "train", for_model(224, 3)).labels, voc.labels)


def test_bad_dataset_specs_are_one_line_errors(tmp_path):
    with pytest.raises(UsageError, match="neither a known name"):
        zdata.open_dataset(str(tmp_path / "missing"), "train", for_model(28, 1))
    r = run_cli("evaluate", "--model", "zfnet-small", "--weights", "x.safetensors", "--data", str(tmp_path / "nope"))
    assert r.returncode == 2 and r.stderr.count("\n") == 1 and "Traceback" not in r.stderr
