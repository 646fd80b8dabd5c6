"""One source of truth for preprocessing: the weights file carries what the model was trained with, every entry
point (API, project, atlas, evaluate) feeds the same image to the model the same way, and weights without a
mean image take one from --mean."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest
import torch
from conftest import run_cli
from PIL import Image
from safetensors.torch import save_file

import zfnet
from zfnet import data as zdata
from zfnet import models
from zfnet.data.idx import read_idx
from zfnet.data.mnist import find_fashion_mnist
from zfnet.errors import UsageError
from zfnet.layers import features
from zfnet.weights import WeightsFile, open_model


def _raw_test(n: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """The real Fashion-MNIST test images as stored (N x 28 x 28 uint8) and their labels."""
    files = find_fashion_mnist()
    x, y = read_idx(files["test_x"]), read_idx(files["test_y"])
    return torch.from_numpy(np.array(x[:n])), torch.from_numpy(np.array(y[:n]).astype(np.int64))


@pytest.fixture(scope="module")
def embedded():
    return zfnet.pretrained()


def test_stored_preprocessing_is_what_the_model_was_trained_with(embedded):
    pp = embedded.preprocess
    assert (pp.fit, pp.input_size, pp.base_size, pp.channels, pp.scale) == ("pad", 28, 32, 1, 1.0)
    assert WeightsFile.read(embedded.weights_path).preprocess().to_dict() == pp.to_dict()
    # the snapshots carry the same record (Fig. 4 feeds each with its own mean image)
    for _, path in embedded.snapshots:
        assert WeightsFile.read(path).preprocess().fit == "pad"


def test_callable_accepts_every_image_form(embedded):
    raw, _ = _raw_test(3)
    pp = embedded.preprocess
    want = pp.eval_input(pp.base_batch(raw))
    assert want.shape == (3, 1, 28, 28)
    one = raw[0]
    forms = [
        Image.fromarray(one.numpy()),
        one.numpy(),
        one.numpy()[:, :, None],
        one,
        one[None],
        [Image.fromarray(one.numpy())],
    ]
    for f in forms:
        torch.testing.assert_close(pp(f), want[:1], rtol=0, atol=0)
    torch.testing.assert_close(pp(raw), want, rtol=0, atol=0)  # N x H x W
    torch.testing.assert_close(pp(raw[:, None]), want, rtol=0, atol=0)  # N x C x H x W
    torch.testing.assert_close(pp([Image.fromarray(r.numpy()) for r in raw]), want, rtol=0, atol=0)
    # a padded 28 px image is the image itself, minus the mean: never resized
    assert torch.equal(pp.bases(one)[0, 0, 2:30, 2:30], one)


def test_embedded_model_accuracy_through_preprocess_subset(embedded):
    raw, labels = _raw_test(2000)
    with torch.no_grad():
        acc = float((embedded.model(embedded.preprocess(raw)).argmax(1) == labels).float().mean())
    assert acc >= 0.91, acc  # 92.45% on these 2,000 (the resize bug gave ~85%)


@pytest.mark.slow
def test_embedded_model_reaches_92_percent_through_preprocess(embedded):
    raw, labels = _raw_test()
    with torch.no_grad():
        pred = torch.cat([embedded.model(embedded.preprocess(c)).argmax(1) for c in raw.split(1000)])
    assert len(labels) == 10000 and float((pred == labels).float().mean()) >= 0.92


def test_every_entry_point_feeds_the_same_input(embedded, tmp_path):
    """The same 28 px PNG through the API, `project`, `atlas` and `evaluate` gives the same model input: the
    same conv5 activation, the same atlas maximum, the same loss."""
    raw, labels = _raw_test(1)
    label = int(labels[0])
    folder = tmp_path / "images"
    for c in range(10):  # class folders 0..9, so that `evaluate` sees the model's 10 classes
        os.makedirs(folder / str(c))
    png = folder / str(label) / "item.png"
    Image.fromarray(raw[0].numpy()).save(png)
    x = embedded.preprocess(Image.open(png))
    # the dataset path (what train/evaluate/atlas read for Fashion-MNIST) gives the same input
    ds = zdata.open_dataset("fashion-mnist", "test", embedded.preprocess).head(1)
    torch.testing.assert_close(embedded.preprocess.eval_input(ds.bases), x, rtol=0, atol=0)
    with torch.no_grad():
        conv5 = features(embedded.model, x, ["conv5"])["conv5"][0]
        logp = torch.log_softmax(embedded.model(x), 1)[0, label]
    channel = int(conv5.flatten(1).max(1).values.argmax())
    strongest = float(conv5[channel].max())

    r = run_cli(
        "project",
        "--pretrained",
        "--image",
        str(png),
        "--layer",
        "conv5",
        "--channel",
        str(channel),
        "--out",
        str(tmp_path / "p.png"),
    )
    assert r.returncode == 0 and r.stderr == "", r.stderr  # no Python warnings at the user either
    assert json.loads(r.stdout)["activation"] == pytest.approx(strongest, rel=1e-5)

    r = run_cli(
        "atlas",
        "--pretrained",
        "--data",
        f"folder:{folder}",
        "--split",
        "all",
        "--layers",
        "conv5",
        "--k",
        "1",
        "--workers",
        "0",
        "--out",
        str(tmp_path / "atlas"),
    )
    assert r.returncode == 0, r.stderr
    manifest = json.loads((tmp_path / "atlas" / "manifest.json").read_text())
    assert manifest["layers"]["conv5"]["maps"][channel][0]["value"] == pytest.approx(strongest, rel=1e-5)

    r = run_cli(
        "evaluate",
        "--pretrained",
        "--data",
        f"folder:{folder}",
        "--split",
        "all",
        "--workers",
        "0",
        "--out",
        str(tmp_path / "eval.json"),
    )
    assert r.returncode == 0, r.stderr
    assert json.loads((tmp_path / "eval.json").read_text())["centre"]["loss"] == pytest.approx(-float(logp), rel=1e-4)


def test_sixteen_bit_image_gives_the_eight_bit_input(embedded, tmp_path):
    raw, _ = _raw_test(1)
    eight = raw[0].numpy()
    Image.fromarray(eight).save(tmp_path / "eight.png")
    Image.fromarray(eight.astype(np.uint16) * 257).save(tmp_path / "sixteen.png")
    assert Image.open(tmp_path / "sixteen.png").mode.startswith("I")
    a = embedded.preprocess(Image.open(tmp_path / "eight.png"))
    b = embedded.preprocess(Image.open(tmp_path / "sixteen.png"))
    torch.testing.assert_close(a, b, rtol=0, atol=0)
    # float images in [0, 1] and 16-bit arrays too
    torch.testing.assert_close(embedded.preprocess(eight.astype(np.float32) / 255), a, rtol=0, atol=0)
    torch.testing.assert_close(embedded.preprocess(eight.astype(np.uint16) * 257), a, rtol=0, atol=0)
    outs = [
        json.loads(
            run_cli(
                "project",
                "--pretrained",
                "--image",
                str(tmp_path / f"{n}.png"),
                "--layer",
                "conv3",
                "--channel",
                "5",
                "--out",
                str(tmp_path / f"{n}-p.png"),
            ).stdout
        )["activation"]
        for n in ("eight", "sixteen")
    ]
    assert outs[0] == outs[1]


def test_a_phones_sideways_photo_is_read_upright(tmp_path):
    """EXIF orientation 6 (the camera held upright, the sensor's rows stored sideways): the file holds a 40 x 20
    image whose top is on its right; every reader gets the 20 x 40 picture as it is meant to be seen - the same
    pixels as the upright PNG - and a damaged tag is ignored."""
    from zfnet.data.base import open_image

    upright = np.zeros((40, 20), dtype=np.uint8)
    upright[:10] = 255  # a bright top
    Image.fromarray(upright).save(tmp_path / "upright.png")
    stored = np.rot90(upright, 1)  # as the sensor wrote it: rotated a quarter turn counter-clockwise
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90 degrees clockwise to display"
    Image.fromarray(np.ascontiguousarray(stored)).save(tmp_path / "phone.png", exif=exif)
    assert Image.open(tmp_path / "phone.png").size == (40, 20)
    got = open_image(str(tmp_path / "phone.png"))
    assert got.size == (20, 40)
    assert np.array_equal(np.array(got), upright)
    exif[0x0112] = 99  # not an orientation
    Image.fromarray(np.ascontiguousarray(stored)).save(tmp_path / "odd.png", exif=exif)
    assert open_image(str(tmp_path / "odd.png")).size == (40, 20)


def _plain_weights(tmp_path) -> str:
    """zfnet-small-64 weights with no mean image and no preprocessing record (as if ported)."""
    net = models.build("zfnet-small-64", seed=3)
    path = str(tmp_path / "plain.safetensors")
    save_file({k: v.contiguous() for k, v in net.state_dict().items()}, path)
    return path


def _photo_folder(tmp_path, n=6) -> str:
    rng = np.random.default_rng(0)
    root = tmp_path / "photos"
    for c in ("cats", "dogs"):
        os.makedirs(root / "train" / c)
        os.makedirs(root / "val" / c)
        for i in range(n):
            for split in ("train", "val"):
                arr = rng.integers(0, 256, (80, 96, 3), dtype=np.uint8)
                Image.fromarray(arr).save(root / split / c / f"{i}.png")
    return str(root)


def test_weights_without_a_mean_take_one_from_mean(tmp_path):
    weights, data = _plain_weights(tmp_path), _photo_folder(tmp_path)
    base = [
        "atlas",
        "--model",
        "zfnet-small-64",
        "--weights",
        weights,
        "--data",
        f"folder:{data}",
        "--split",
        "val",
        "--layers",
        "conv1,conv2",
        "--k",
        "2",
        "--workers",
        "0",
        "--panel-maps",
        "2",
    ]
    r = run_cli(*base, "--out", str(tmp_path / "refused"))
    assert r.returncode == 2 and "carries no mean image" in r.stderr and "--mean data" in r.stderr
    assert len(r.stderr.strip().splitlines()) == 1 and not (tmp_path / "refused").exists()
    r = run_cli(*base, "--mean", "data", "--out", str(tmp_path / "a"))
    assert r.returncode == 0, r.stderr
    assert (tmp_path / "a" / "index.html").is_file()
    # --mean data is the training split's per-pixel mean, as `zfnet train` computes it
    opened = open_model("zfnet-small-64", weights, mean="data", data=f"folder:{data}")
    train = zdata.open_dataset(f"folder:{data}", "train", opened.preprocess)
    want = torch.stack([train.base(i).double() for i in range(len(train))]).mean(0).float()
    torch.testing.assert_close(opened.preprocess.mean_image, want)
    # a file, and none
    np.save(tmp_path / "mean.npy", np.full((73, 73, 3), 100, np.float32))  # H x W x C, base square 64 * 256/224
    assert open_model("zfnet-small-64", weights, mean=str(tmp_path / "mean.npy")).preprocess.mean_image.shape == (
        3,
        73,
        73,
    )
    assert open_model("zfnet-small-64", weights, mean="none").preprocess.mean_image is None
    with pytest.raises(UsageError, match="does not fit"):
        np.save(tmp_path / "bad.npy", np.zeros((3, 10, 10), np.float32))
        open_model("zfnet-small-64", weights, mean=str(tmp_path / "bad.npy"))
    with pytest.raises(UsageError, match="needs --data"):
        open_model("zfnet-small-64", weights, mean="data")


def test_pretrained_refuses_extra_model_flags(tmp_path):
    Image.fromarray(np.zeros((28, 28), np.uint8)).save(tmp_path / "x.png")
    for extra in (["--model", "zfnet"], ["--weights", "w.safetensors"]):
        r = run_cli(
            "project",
            "--pretrained",
            *extra,
            "--image",
            str(tmp_path / "x.png"),
            "--layer",
            "conv1",
            "--channel",
            "0",
            "--out",
            str(tmp_path / "o.png"),
        )
        assert r.returncode == 2 and "--pretrained" in r.stderr and "Traceback" not in r.stderr, r.stderr
