"""Issue 20: any CNN a user brings - their own module (module:callable or Python), torchvision and timm models,
torchvision weights by enum name, unlabelled photos - through the report, with class names and the layers of
each resolution stage."""

from __future__ import annotations

import json
import os
import shutil

import pytest
import torch
import torchvision
from conftest import needs_chromium, run_cli
from torch import nn

from zfnet.errors import UsageError
from zfnet.layers import features, stage_layers
from zfnet.pipelines.report import label_classes
from zfnet.weights import open_model

USER_MODULE = '''
import torch
import torch.nn.functional as F
from torch import nn


class Block(nn.Module):
    """A residual block: in-place ReLU module, functional ReLU, an addition."""

    def __init__(self, c):
        super().__init__()
        self.a, self.b, self.relu = nn.Conv2d(c, c, 3, padding=1), nn.Conv2d(c, c, 3, padding=1), nn.ReLU(inplace=True)

    def forward(self, x):
        return self.relu(self.b(F.relu(self.a(x))) + x)


class Net(nn.Module):
    def __init__(self, num_classes=5):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU())
        self.left, self.right = nn.Conv2d(8, 4, 3, stride=2, padding=1), nn.Conv2d(8, 4, 1, stride=2)
        self.stage2, self.down3, self.stage3 = Block(8), nn.Conv2d(8, 16, 3, stride=2, padding=1), Block(16)
        self.down4, self.stage4 = nn.Conv2d(16, 16, 3, stride=2, padding=1), Block(16)
        self.fc = nn.Linear(16, num_classes)

    def forward(self, x):
        x = self.stem(x)
        x = torch.cat([self.left(x), self.right(x)], 1)  # a concatenation
        x = self.stage4(F.relu(self.down4(self.stage3(F.relu(self.down3(self.stage2(x)))))))
        return self.fc(x.mean((2, 3)))


def build(num_classes=5):
    torch.manual_seed(0)
    return Net(num_classes)
'''

CLASSES = ["cat", "coffee", "rocket", "person", "other"]


@pytest.fixture(scope="module")
def photos(tmp_path_factory):
    """scikit-image's sample photos (shipped inside the package) as a flat folder: natural, unlabelled."""
    import skimage.data

    src = os.path.dirname(skimage.data.__file__)
    out = tmp_path_factory.mktemp("photos")
    for name in ("astronaut.png", "coffee.png", "chelsea.png", "rocket.jpg", "horse.png", "camera.png"):
        shutil.copy(os.path.join(src, name), out / name)
    return out


def test_stage_layers_are_each_resolution_stages_last_rectified_output():
    torch.manual_seed(0)
    assert stage_layers(torchvision.models.resnet18(), (3, 64, 64)) == ["conv1", "layer1", "layer2", "layer3", "layer4"]
    vgg = torchvision.models.vgg11()
    # independently: the conv right before each max-pool (skipping its ReLU), in the features Sequential
    kids = list(vgg.features.children())
    before_pool = [
        f"features.{i}"
        for i, m in enumerate(kids)
        if isinstance(m, nn.Conv2d) and isinstance(kids[i + 2] if i + 2 < len(kids) else None, nn.MaxPool2d)
    ]
    assert stage_layers(vgg, (3, 64, 64)) == before_pool
    for name in ("densenet121", "mobilenet_v3_small"):
        model = torchvision.models.get_model(name)
        layers = stage_layers(model, (3, 64, 64))
        maps = features(model.eval(), torch.zeros(1, 3, 64, 64), layers)
        sizes = [tuple(maps[l].shape[-2:]) for l in layers]
        assert 4 <= len(set(sizes)) == len(sizes) <= 5, (name, layers, sizes)
        assert sizes == sorted(sizes, reverse=True), (name, sizes)


def test_a_field_covering_the_whole_image_from_every_unit_is_global():
    """DenseNet's deep layers at 64 px: geometric fields of 1000+ px; the atlas would cut tiles that size."""
    from zfnet.receptive_field import layer_field

    net = torchvision.models.densenet121()
    assert layer_field(net, "features.transition3.relu", (3, 64, 64)).is_global
    assert layer_field(net, "features.denseblock4.denselayer16.relu2", (3, 64, 64)).box(0, 0) == (0, 0, 64, 64)
    small = layer_field(net, "features.transition1.relu", (3, 64, 64))
    assert not small.is_global and small.size == (59, 59)


def test_data_labels_name_the_models_classes_or_the_target_is_predicted():
    assert label_classes(["b", "a"], ["a", "b", "c"], 3) == [1, 0]  # by name
    assert label_classes(["n01", "n02"], ["tench", "goldfish"], 2) == [0, 1]  # synset folders, in class order
    assert label_classes(["all"], ["a", "b"], 2) is None  # one folder: unlabelled
    assert label_classes(["x", "y"], ["a", "b", "c"], 3) is None  # other classes


def test_torchvision_weights_by_enum_name_from_torch_hubs_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    enum = torchvision.models.ResNet18_Weights.IMAGENET1K_V1
    cached = tmp_path / "torch" / "hub" / "checkpoints" / os.path.basename(enum.url)
    with pytest.raises(UsageError, match="not in torch hub's cache: put .* at " + str(cached)):
        open_model("torchvision:resnet18", "IMAGENET1K_V1")
    cached.parent.mkdir(parents=True)
    torch.manual_seed(1)
    net = torchvision.models.resnet18()
    torch.save(net.state_dict(), cached)
    for tag in ("IMAGENET1K_V1", "DEFAULT", "ResNet18_Weights.IMAGENET1K_V1"):
        opened = open_model("torchvision:resnet18", tag)
        assert opened.weights == str(cached) and opened.weights_enum == str(enum)
        assert opened.classes == list(enum.meta["categories"]) and opened.classes[0] == "tench"
        pp = opened.preprocess
        assert (pp.input_size, pp.base_size, pp.channel_mean, pp.channel_std) == (
            224,
            256,
            tuple(enum.transforms().mean),
            tuple(enum.transforms().std),
        )
        assert torch.equal(opened.model.fc.weight, net.fc.weight)
    with pytest.raises(UsageError, match="has no weights 'IMAGENET9K_V9'"):
        open_model("torchvision:resnet18", "IMAGENET9K_V9")


def test_module_callable_errors_are_one_line(tmp_path):
    for spec, msg in (
        ("nosuchmodule_zf:build", "cannot import 'nosuchmodule_zf'"),
        ("os:nosuch", "has no 'nosuch'"),
        ("os:sep", "is not callable"),
    ):
        r = run_cli("layers", "--model", spec)
        assert r.returncode == 2 and msg in r.stderr and len(r.stderr.strip().splitlines()) == 1, r.stderr


def _page_ok(browser, page):
    browser.get_log("browser")
    browser.get(page.as_uri())
    errors = [m for m in browser.get_log("browser") if m["level"] == "SEVERE"]
    assert errors == [], errors


def _check_report(out, top_expected=None, min_resolutions=4):
    state = json.loads((out / "report.json").read_text())
    assert all(e["status"] in ("done", "skipped") for e in state["stages"].values()), state["stages"]
    manifest = json.loads((out / "atlas" / "manifest.json").read_text())
    layers = manifest["layer_order"]
    sizes = {tuple(manifest["layers"][l]["shape"][-2:]) for l in layers}
    assert len(sizes) >= min_resolutions, (layers, sizes)
    occ = json.loads((out / "occlusion" / "occlusion.json").read_text())
    assert occ["settings"]["layer"] == (top_expected or layers[-1])
    classes = occ["classes"]
    assert classes and all(isinstance(c, str) for c in classes)
    for r in occ["images"]:
        assert r["target_source"] == "predicted" and r["computation"]
    page = (out / "index.html").read_text()
    assert f"Top-9 atlas, {layers[0]} to {layers[-1]}" in page
    assert classes[occ["images"][0]["base_class"]] in page  # the class is named, not numbered
    return occ


@needs_chromium
def test_report_on_a_users_module_through_module_callable_and_python(photos, tmp_path, browser):
    (tmp_path / "mynets.py").write_text(USER_MODULE)
    (tmp_path / "classes.txt").write_text("\n".join(CLASSES) + "\n")
    import importlib
    import sys

    sys.path.insert(0, str(tmp_path))
    try:
        mynets = importlib.import_module("mynets")
        torch.save(mynets.build().state_dict(), tmp_path / "my.pth")
        common = ["--input-size", "48", "--atlas-maps", "4", "--examples", "2", "--data", str(photos)]
        env = {"PYTHONPATH": str(tmp_path)}
        r = run_cli(
            "report", "--model", "mynets:build", "--weights", str(tmp_path / "my.pth"), "--classes",
            str(tmp_path / "classes.txt"), *common, "--out", str(tmp_path / "cli"), env=env, timeout=600,
        )  # fmt: skip
        assert r.returncode == 0, r.stderr[-2000:]
        occ = _check_report(tmp_path / "cli")
        assert occ["classes"] == CLASSES
        assert occ["model"]["preprocess"]["input_size"] == 48  # the flags are stored with the results
        manifest = json.loads((tmp_path / "cli" / "atlas" / "manifest.json").read_text())
        assert manifest["layer_order"] == ["stem", "stage2", "stage3", "stage4"]
        _page_ok(browser, tmp_path / "cli" / "index.html")

        import zfnet
        from zfnet.data import Preprocess

        net = mynets.build()
        zfnet.report(
            net, str(photos), out=str(tmp_path / "py"), preprocess=Preprocess.torchvision(48, 55), classes=CLASSES,
            atlas_maps=4, examples=2, progress=False,
        )  # fmt: skip
        occ_py = _check_report(tmp_path / "py")
        assert [r["base_class"] for r in occ_py["images"]] == [r["base_class"] for r in occ["images"]]
        _page_ok(browser, tmp_path / "py" / "index.html")
    finally:
        sys.path.remove(str(tmp_path))


MODELS = [
    "torchvision:resnet18",
    pytest.param("torchvision:vgg11", marks=pytest.mark.slow),
    pytest.param("torchvision:densenet121", marks=pytest.mark.slow),
    pytest.param("torchvision:mobilenet_v3_small", marks=pytest.mark.slow),
    pytest.param("timm:resnet18", marks=pytest.mark.slow),  # the fast timm test below covers what differs
]


def test_timm_models_take_their_preprocessing_and_class_names_from_timm():
    import timm

    opened = open_model("timm:resnet18")
    cfg = timm.create_model("resnet18").pretrained_cfg
    pp = opened.preprocess
    assert (pp.input_size, pp.base_size) == (cfg["input_size"][-1], round(cfg["input_size"][-1] / cfg["crop_pct"]))
    assert (pp.channel_mean, pp.channel_std) == (tuple(cfg["mean"]), tuple(cfg["std"]))
    assert opened.classes is not None and len(opened.classes) == 1000 and opened.classes[0] == "tench"


@needs_chromium
@pytest.mark.parametrize("name", MODELS)
def test_report_on_torchvision_and_timm_models_over_photos(name, photos, tmp_path, browser):
    """Random seeded weights saved by the test as a torch state dict; ImageNet-1k class names from the
    architecture's family; the photos' one folder is no class, so every target is the predicted class."""
    from zfnet import models

    torch.manual_seed(0)
    torch.save(models.build(name).state_dict(), tmp_path / "w.pth")
    r = run_cli(
        "report", "--model", name, "--weights", str(tmp_path / "w.pth"), "--input-size", "64", "--atlas-maps", "2",
        "--examples", "2", "--no-evidence", "--data", str(photos), "--out", str(tmp_path / "rep"),
        timeout=600,
    )  # fmt: skip
    assert r.returncode == 0, r.stderr[-2000:]
    occ = _check_report(tmp_path / "rep")
    assert len(occ["classes"]) == 1000 and occ["classes"][0] == "tench"
    model = json.loads((tmp_path / "rep" / "model" / "model.json").read_text())
    assert model["targets"] == "predicted" and "no class labels" in model["unmeasured"]
    _page_ok(browser, tmp_path / "rep" / "index.html")
