"""Issue 40: defaults that fit the user's model - the top layer, a real grey, the input as it is, true receptive
fields, jobs that end - checked on torchvision models, a ViT and a user's module written here (functional ReLUs, a
residual addition, a classifier that runs at 32 px only)."""

from __future__ import annotations

import json
import os
import time

import numpy as np
import pytest
import torch
from PIL import Image

from zfnet import models
from zfnet.cli import main
from zfnet.errors import UsageError
from zfnet.layers import resolve_layer
from zfnet.receptive_field import layer_field
from zfnet.weights import open_model

USER = '''
import torch
import torch.nn.functional as F
from torch import nn


class Small(nn.Module):
    """32 px RGB: functional ReLUs, a residual addition, and a classifier that takes 32 px input only."""

    def __init__(self, num_classes=10):
        super().__init__()
        self.c1 = nn.Conv2d(3, 8, 3, padding=1)
        self.c2 = nn.Conv2d(8, 8, 3, padding=1)
        self.c3 = nn.Conv2d(8, 16, 3, stride=2, padding=1)
        self.fc = nn.Linear(16 * 16 * 16, num_classes)

    def forward(self, x):
        a = F.relu(self.c1(x))
        b = F.relu(self.c2(a) + a)
        return self.fc(F.relu(self.c3(b)).flatten(1))


def build(num_classes=10):
    return Small(num_classes)


class Fails(Small):
    """Runs one image at a time; a batch of several (occlusion's) raises."""

    def forward(self, x):
        if x.shape[0] > 1:
            raise RuntimeError("this model takes one image at a time")
        return super().forward(x)


def fails(num_classes=10):
    return Fails(num_classes)


class Grey(nn.Module):
    """28 px grey, for the bundled Fashion-MNIST images."""

    def __init__(self, num_classes=10):
        super().__init__()
        self.c1 = nn.Conv2d(1, 4, 3, padding=1)
        self.fc = nn.Linear(4 * 28 * 28, num_classes)

    def forward(self, x):
        if x.shape[0] > 1:
            raise RuntimeError("this model takes one image at a time")
        return self.fc(F.relu(self.c1(x)).flatten(1))


def grey_fails(num_classes=10):
    return Grey(num_classes)


class Slow(Grey):
    """Takes 1.5 s for any batch of several images."""

    def forward(self, x):
        if x.shape[0] > 1:
            import time

            time.sleep(1.5)
            x = x[:1].expand_as(x)
        return self.fc(F.relu(self.c1(x)).flatten(1))


def slow(num_classes=10):
    return Slow(num_classes)
'''


@pytest.fixture
def user(user_code):
    return user_code("defaults_user", USER)


def _photo(path, size: int, colour=None, seed: int = 0) -> str:
    g = np.random.default_rng(seed)
    arr = np.full((size, size, 3), colour, np.uint8) if colour is not None else g.integers(0, 256, (size, size, 3))
    Image.fromarray(arr.astype(np.uint8)).save(path)
    return str(path)


# --- 1. one default layer: the model's top stage layer -------------------------------------------------------------

# written by hand from each model's definition: the last resolution stage's output (a ViT: its last block)
TOP = {
    "torchvision:mobilenet_v3_small": ("features", 64),
    "torchvision:regnet_y_400mf": ("trunk_output", 64),
    "torchvision:convnext_tiny": ("features", 64),
    "torchvision:vit_b_16": ("encoder.layers.encoder_layer_11", None),
}


@pytest.mark.parametrize("name", sorted(TOP))
def test_occlusion_reads_the_top_stage_layer(name, tmp_path, capsys):
    """`zfnet occlusion` without --layer reads the model's top stage layer (not the fifth Conv2d), and titles its
    JSON with the layer it read."""
    want, size = TOP[name]
    image = _photo(tmp_path / "photo.png", 80)
    side = size or 224
    extra = ["--input-size", str(size)] if size else []
    out = tmp_path / "occ"
    code = main(["occlusion", "--model", name, *extra, "--image", image, "--window", str(side // 2), "--stride",
                 str(side // 2), "--strategy", "naive", "--no-progress", "--out", str(out)])  # fmt: skip
    assert code == 0, capsys.readouterr().err
    result = json.loads((out / "occlusion.json").read_text())
    assert [r["layer"] for r in result["images"]] == [want]
    assert result["images"][0]["settings"]["layer"] == want


def test_project_correspondence_and_invariance_default_to_the_top_layer(user):
    """The same rule for `project` without a layer and the arXiv analyses' layers (layer 5 and 7 on Fig. 3's
    family, the stage layers standing for them elsewhere); a missing layer names the default stage layers."""
    import zfnet

    model = models.build(f"{user}:build").eval()
    x = torch.rand(2, 3, 32, 32)
    assert zfnet.project(model, x, channel=3).layer == "c3"  # c3's ReLU: the 16 x 16 stage's output
    opened = open_model(f"{user}:build", input_size=32, normalize="none")
    parts = {"corner": [(0, 0, 8, 8), (0, 0, 8, 8)]}
    assert zfnet.correspondence(opened, x, parts=parts).layers == ["c3"]
    assert zfnet.invariance(opened, x, labels=[0, 1], transforms=("rotate",)).layers == ["c2", "c3"]
    paper = zfnet.pretrained()
    xs = paper.preprocess.eval_input(torch.zeros(2, 1, 32, 32, dtype=torch.uint8))
    assert zfnet.correspondence(paper, xs, parts={"p": [(0, 0, 4, 4)] * 2}).layers == ["conv5", "fc7"]
    with pytest.raises(UsageError) as e:
        resolve_layer(models.build("torchvision:resnet18"), "layer9")
    assert str(e.value) == (
        "model has no layer 'layer9'; its default layers are conv1, layer1, layer2, layer3, layer4 "
        "(every layer: zfnet layers --model ...)"
    )


# --- 2. a grey that is the data's -------------------------------------------------------------------------------


def test_the_grey_is_mid_grey_or_the_datas_never_black(user, tmp_path, capsys):
    """--normalize 0,0.0039 (raw 0-255 pixels, mean 0): without data the grey is 128 and said; with --data it is
    the data's mean pixel (uniform images of known colours: their mean), and the result says where it came from."""
    folder = tmp_path / "photos"
    folder.mkdir()
    for k, colour in enumerate([(10, 20, 30), (50, 60, 70), (30, 40, 50)]):
        _photo(folder / f"p{k}.png", 40, colour)
    image = str(folder / "p0.png")
    common = ["occlusion", "--model", f"{user}:build", "--input-size", "32", "--normalize", "0,0.0039",
              "--image", image, "--window", "16", "--stride", "16", "--no-progress"]  # fmt: skip
    assert main([*common, "--out", str(tmp_path / "a")]) == 0
    first = json.loads((tmp_path / "a" / "occlusion.json").read_text())["images"][0]
    assert first["fill_pixels"] == [128.0, 128.0, 128.0]
    assert first["fill_source"] == "mid-grey 128: the normalisation's mean is 0 and no data was given"
    assert main([*common, "--data", str(folder), "--out", str(tmp_path / "b")]) == 0
    second = json.loads((tmp_path / "b" / "occlusion.json").read_text())["images"][0]
    assert second["fill_pixels"] == [30.0, 40.0, 50.0]
    assert second["fill_source"] == "the mean pixel of the data given (--data)"
    assert "grey (occluder, masks, uncovered pixels): 30/40/50, the data's mean pixel" in capsys.readouterr().err


# --- 3. the input as it is ---------------------------------------------------------------------------------------


def test_an_image_of_the_input_size_reaches_the_model_unchanged(user, tmp_path):
    """A user's model takes a 32 px image as it is (no 37 px upscale and crop); `--fit none` too, and refuses
    another size in one line; `--fit paper` is Sec. 3's 256/224 resize and crop, which changes the pixels."""
    image = Image.open(_photo(tmp_path / "p.png", 32, seed=3))
    own = torch.from_numpy(np.asarray(image).copy()).permute(2, 0, 1)  # the image's own pixels, uint8
    for fit in (None, "resize", "none"):
        pp = open_model(f"{user}:build", input_size=32, normalize="none", fit=fit).preprocess
        assert torch.equal(pp.bases(image)[0], own), fit  # no resampling, no crop
        fed = pp(image)[0]  # the model input: those pixels in [0, 1] (x / 255 up to one rounding)
        assert torch.equal(fed, pp.normalize(own[None])[0]) and torch.allclose(fed, own / 255, rtol=2**-23, atol=0)
    paper = open_model(f"{user}:build", input_size=32, normalize="none", fit="paper").preprocess
    assert paper.base_size == 37 and not torch.equal(paper.center(paper.bases(image))[0], own)
    strict = open_model(f"{user}:build", input_size=32, normalize="none", fit="none").preprocess
    with pytest.raises(UsageError, match=r"an image of 40x40 px with --fit none .* takes 32x32; pass --fit resize"):
        strict(Image.open(_photo(tmp_path / "q.png", 40)))


def test_layers_reads_the_model_at_its_input_size(user, capsys):
    """`zfnet layers --input-size 32` on a model that runs only at 32 px lists its layers at 32 px."""
    assert main(["layers", "--model", f"{user}:build", "--input-size", "32", "--json"]) == 0
    rows = {r["layer"]: r for r in json.loads(capsys.readouterr().out)}
    assert rows["c3"]["output"] == [16, 16, 16] and rows["c3"]["field"] == 7


# --- 5. receptive fields -----------------------------------------------------------------------------------------


def _probed_box(model, layer: str, size: int, y: int, x: int) -> tuple[int, int, int, int]:
    """The input pixels a unit depends on, found by brute force: the nonzero support of the gradient of unit
    (channel 0, y, x) of `layer` with respect to the input, float64, random weights (generic: nonzero wherever
    the field reaches). Half-open (top, left, bottom, right)."""
    from zfnet.layers import capture

    net = model.double().eval()
    inp = torch.rand(1, 3, size, size, dtype=torch.float64, requires_grad=True)
    with capture(net, [layer], inp) as found:
        try:
            net(inp)
        except Exception:  # noqa: BLE001 - StopForward once the layer is read
            pass
    grad = torch.autograd.grad(found[layer][0, 0, y, x], inp)[0][0].abs().sum(0)
    rows, cols = grad.nonzero(as_tuple=True)
    return int(rows.min()), int(cols.min()), int(rows.max()) + 1, int(cols.max()) + 1


@pytest.mark.parametrize(
    "name,layer,size",
    [
        ("torchvision:convnext_tiny", "features.0", 96),  # stem, then LayerNorm2d (channels-last permutes)
        ("torchvision:convnext_tiny", "features.1", 96),  # 3 blocks: 7x7 depthwise, permute, LayerNorm, Linear, GELU
        ("torchvision:convnext_tiny", "features.2", 96),  # LayerNorm2d then the 2x2 stride-2 downsampling
        ("torchvision:mobilenet_v3_small", "features.0", 64),
        ("torchvision:mobilenet_v3_small", "features.1.block.0", 64),
    ],
)
def test_receptive_fields_equal_a_brute_force_probe(name, layer, size):
    """Per-position ops over channels (LayerNorm2d, channels-last LayerNorm and Linear, GELU, layer scale, 1x1
    convolutions) leave the field as it is: the computed box equals the gradient's support."""
    torch.manual_seed(0)
    model = models.build(name).eval()
    rf = layer_field(model, layer, (3, size, size))
    assert not rf.is_global
    c = {"features.0": size // 8, "features.1": size // 8, "features.2": size // 16}.get(layer, size // 8)
    assert _probed_box(model, layer, size, c, c) == rf.clipped_box(c, c)


def test_a_squeeze_excitation_gate_makes_the_field_whole_and_says_so(capsys):
    """MobileNet-V3's first squeeze-excitation pools the whole map: every later unit sees the whole image (the
    probe agrees), and `zfnet layers` names the op."""
    torch.manual_seed(0)
    model = models.build("torchvision:mobilenet_v3_small").eval()
    assert layer_field(model, "features.1", (3, 64, 64)).is_global
    assert _probed_box(model, "features.1", 64, 0, 0) == (0, 0, 64, 64)
    assert main(["layers", "--model", "torchvision:mobilenet_v3_small", "--input-size", "64"]) == 0
    line = next(line for line in capsys.readouterr().out.splitlines() if line.startswith("features.1.block.1.avgpool"))
    assert line.endswith("all     -  (whole image: adaptive_avg_pool2d)")


# --- 6. jobs always end -------------------------------------------------------------------------------------------


def test_an_explorer_job_whose_model_raises_ends_with_its_error(user, tmp_path):
    """An occlusion job on a model that raises (here: on any batch of more than one image) ends with that error
    in one line at the next poll, and the server keeps serving."""
    error = _job_error(user, tmp_path, "grey_fails")
    assert "\n" not in error and "this model takes one image at a time" in error, error


def test_an_explorer_job_past_its_time_limit_ends_with_one_line(user, tmp_path):
    """`zfnet explore --job-limit 1`: a job whose first chunk takes 1.5 s ends with the limit's line there (the
    explorer's jobs run in chunks of 4 positions at 28 px, issue 38)."""
    error = _job_error(user, tmp_path, "slow", "--job-limit", "1")
    assert error.startswith("the occlusion job ran past the explorer's limit of 1 s (4 of 36 positions)"), error


def _job_error(user: str, tmp_path, builder: str, *flags: str) -> str:
    """Start `zfnet explore` on the user's `builder`, run one occlusion job, poll it until it ends (a deadline
    fails the test), check the server still answers, stop it; the job's error."""
    from servers import ServerProcess
    from test_explore import get_json, post

    env = {"PYTHONPATH": os.pathsep.join([str(tmp_path), os.environ.get("PYTHONPATH", "")])}
    model = ["--model", f"{user}:{builder}", "--input-size", "28", "--normalize", "none"]
    args = ["explore", *model, "--data", "fashion-mnist-mini", *flags]
    with ServerProcess(*args, env=env) as proc:
        url = proc.url()
        status, job = post(url + "api/occlusion/d0?window=8&stride=4&strategy=naive")
        assert status == 200, job
        deadline = time.monotonic() + 120
        while True:
            _, state = get_json(url + f"api/occlusion-job/{job['job']}")
            if state["error"] is not None or state["result"] is not None:
                break
            assert time.monotonic() < deadline, f"the job did not end: {state}"
            time.sleep(0.1)
        assert state["result"] is None
        status, pred = get_json(url + "api/predict/d0")
        assert status == 200 and len(pred["top"]) > 0
        assert proc.stop() == 0
    return state["error"]
