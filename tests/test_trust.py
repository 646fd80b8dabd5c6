"""Issue 35, items 3-7: model outputs, inputs, the user's code, the Python API's checks and --out through a
dangling link - each bad case one line (UsageError in Python, exit 2 from the CLI) or a correct run."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest
import torch
import torchvision
from torch import nn

import zfnet
from zfnet import calling
from zfnet.cli import main
from zfnet.errors import UsageError
from zfnet.outputs import check_name
from zfnet.weights import open_model, read_classes, with_input

EMBEDDED = os.path.join(os.path.dirname(zfnet.__file__), "pretrained", "fashion_mnist", "model.safetensors")


class Net(nn.Module):
    """A tiny conv net whose forward returns what `kind` says: logits, (logits, aux), {"logits": ..., "aux": ...}."""

    def __init__(self, kind: str = "tensor", nan: bool = False) -> None:
        super().__init__()
        self.kind, self.nan = kind, nan
        self.conv = nn.Conv2d(3, 4, 3, padding=1)
        self.fc = nn.Linear(4, 5)

    def forward(self, x):
        logits = self.fc(torch.relu(self.conv(x)).mean((2, 3)))
        if self.nan:
            logits = logits * float("nan")
        aux = logits.flip(1)
        return {"tensor": logits, "tuple": (logits, aux), "dict": {"logits": logits, "aux": aux}}[self.kind]


def _x(n=1):
    torch.manual_seed(0)
    return torch.randn(n, 3, 12, 12)


def test_tuple_and_mapping_outputs_read_as_logits():
    """(logits, aux) gives its first element and {"logits": ...} its key; output= picks another; the occlusion
    maps equal those of the same net returning a tensor."""
    torch.manual_seed(0)
    ref = Net("tensor").eval()
    kw = dict(window=4, stride=4, fill="mean-image", layer="conv")
    want = zfnet.occlusion(ref, _x(), **kw)[0]
    for kind in ("tuple", "dict"):
        net = Net(kind).eval()
        net.load_state_dict(ref.state_dict())
        got = zfnet.occlusion(net, _x(), **kw)[0]
        assert torch.equal(got.prob, want.prob) and got.base_class == want.base_class
        aux = zfnet.occlusion(net, _x(), output=1 if kind == "tuple" else "aux", **kw)[0]
        assert aux.base_class == 4 - want.base_class  # aux is the logits reversed
        assert not hasattr(net, "_zfnet_reads_logits")  # the hook went with the call
    with pytest.raises(UsageError, match="without 'scores'"):
        calling.pick({"logits": torch.zeros(1, 2)}, "scores")
    with pytest.raises(UsageError, match="pass --output 0..1"):
        calling.pick((torch.zeros(1), torch.zeros(1)), 5)
    with pytest.raises(UsageError, match="returned a str"):
        calling.pick("logits")


def test_non_finite_logits_stop_with_the_sample_named():
    with pytest.raises(UsageError, match=r"NaN or inf \(sample 0 of a batch of 1\)"):
        zfnet.occlusion(Net(nan=True).eval(), _x(), window=4, stride=4, layer="conv")


def test_parameter_free_float64_and_meta_models():
    free = nn.Sequential(nn.AvgPool2d(3), nn.Flatten(), nn.Unflatten(1, (3, 16)), nn.Flatten())
    assert zfnet.atlas(free, _x(2), layers=["0"], k=1).top["0"].values.shape == (1, 3)
    double = Net().double()
    scan = zfnet.atlas(double, _x(2), layers=["conv"], k=1)  # float32 input cast to the model's type
    with torch.no_grad():
        ref = torch.relu(double.conv(_x(2).double())).flatten(2).amax(2).amax(0)
    assert torch.equal(scan.top["conv"].values[0], ref.float())
    with torch.device("meta"):
        meta = Net()
    with pytest.raises(UsageError, match="meta device"):
        zfnet.atlas(meta, _x(), layers=["conv"])


@pytest.mark.parametrize(
    "images, match",
    [
        (np.zeros((1, 3, 12, 12), np.float32), "numpy array; pass torch.from_numpy"),
        (torch.zeros(3, 12, 12), r"add a batch dimension with images\[None\]"),
        (torch.zeros(0, 3, 12, 12), "a batch of 0"),
        (torch.zeros(1, 3, 12, 12, dtype=torch.uint8), "are torch.uint8"),
        (torch.zeros(1, 1, 12, 12), "1 channels; the model's first conv takes 3"),
        (torch.full((1, 3, 12, 12), float("nan")), "NaN or inf"),
        ([[0.0]], "images is a list"),
    ],
)
def test_the_api_checks_its_images(images, match):
    with pytest.raises(UsageError, match=match):
        zfnet.project(Net(), images, layer="conv", channel=0)


def test_the_api_resolves_its_device_like_the_cli():
    if torch.cuda.is_available():
        pytest.skip("a GPU is present: cuda is a valid device here")
    with pytest.raises(UsageError, match="CUDA is not available; pass --device cpu"):
        zfnet.pretrained(device="cuda")


def test_input_size_keeps_the_mean_image():
    """The stored size gives the stored preprocessing bit for bit; another size carries the mean image over by
    the images' own rule (zero padding for the digits' "pad" fit) instead of dropping it."""
    stored = open_model("zfnet-small", EMBEDDED).preprocess
    same = open_model("zfnet-small", EMBEDDED, input_size=stored.input_size).preprocess
    assert same == stored or (same.to_dict() == stored.to_dict() and torch.equal(same.mean_image, stored.mean_image))
    bigger = with_input(stored, 32)
    assert bigger.mean_image is not None and bigger.mean_image.shape[-1] == bigger.base_size
    b, old = bigger.base_size, stored.base_size
    if stored.fit == "pad":
        o = (b - old) // 2
        assert torch.equal(bigger.mean_image[:, o : o + old, o : o + old], stored.mean_image)
        assert float(bigger.mean_image.sum()) == pytest.approx(float(stored.mean_image.sum()), rel=1e-6)


@pytest.mark.parametrize("value", ["0.5,nan", "0.5,inf", "nan,0.5", "0.5,0"])
def test_normalize_values_are_finite_with_a_positive_std(value):
    pp = open_model("zfnet-small", EMBEDDED).preprocess
    with pytest.raises(UsageError, match="--normalize"):
        with_input(pp, None, value)


def test_an_input_size_past_the_memory_is_refused_naming_one_that_fits():
    net = torchvision.models.resnet18()
    with pytest.raises(UsageError, match=r"--input-size 100000: one forward would need about .* pass --input-size \d+"):
        calling.check_input_size(net, 3, 100000)
    calling.check_input_size(net, 3, 224)  # fits


def test_classes_are_checked_against_the_outputs_of_any_head(tmp_path):
    """SqueezeNet ends in a conv, not a Linear: one forward counts its 1000 outputs."""
    with pytest.raises(UsageError, match="3 class names for a model with 1000 outputs"):
        open_model("torchvision:squeezenet1_1", classes=["a", "b", "c"])


def test_class_files_in_the_formats_people_have(tmp_path):
    def write(name, data: bytes):
        p = tmp_path / name
        p.write_bytes(data)
        return str(p)

    assert read_classes(write("bom.txt", "\ufeffcat\r\ndog\r\n\r\n".encode())) == ["cat", "dog"]
    index = {"1": ["n02", "goldfish"], "0": ["n01", "tench"]}
    assert read_classes(write("imagenet_class_index.json", json.dumps(index).encode())) == ["tench", "goldfish"]
    assert read_classes(write("pairs.json", b'[["n01", "tench"], ["n02", "goldfish"]]')) == ["tench", "goldfish"]
    with pytest.raises(UsageError, match="line 2 is blank"):
        read_classes(write("blank.txt", b"cat\n\ndog\n"))
    with pytest.raises(UsageError, match="'cat' at entry 3 repeats entry 1"):
        read_classes(write("dup.txt", b"cat\ndog\ncat\n"))


def test_no_writing_through_a_dangling_link_at_any_depth(tmp_path):
    link = tmp_path / "link"
    link.symlink_to(tmp_path / "nowhere")
    for out in (str(link), str(link / "sub"), str(link / "sub" / "deeper")):
        with pytest.raises(UsageError, match="symbolic link to .*nowhere.*which does not exist"):
            check_name(out)
    assert not (tmp_path / "nowhere").exists()


USER = """
import sys
import torch
from torch import nn


class Net(nn.Module):
    def __init__(self, num_classes=5):
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3, padding=1)
        self.fc = nn.Linear(4, num_classes)

    def forward(self, x):
        return self.fc(torch.relu(self.conv(x)).mean((2, 3)))


class Exits(Net):
    def forward(self, x):
        sys.exit(0)


class Raises(Net):
    def forward(self, x):
        return {}["missing"]


def good(num_classes=5):
    return Net(num_classes)


def builder_raises(num_classes=5):
    raise ValueError("no such checkpoint")


def builder_exits(num_classes=5):
    sys.exit(0)


def builder_type_error(num_classes=5):
    return len(5)


def forward_exits(num_classes=5):
    return Exits(num_classes)


def forward_raises(num_classes=5):
    return Raises(num_classes)


def pair(num_classes=5):
    class Pair(Net):
        def forward(self, x):
            return super().forward(x), None
    return Pair(num_classes)
"""


@pytest.fixture
def user_module(user_code):
    return user_code("trust_user", USER)


@pytest.mark.parametrize(
    "callable_, match",
    [
        ("builder_raises", r"builder raised ValueError: no such checkpoint at \w+\.py:\d+ in builder_raises"),
        ("builder_exits", r"its builder raised SystemExit\(0\) \(it called sys.exit\)"),
        ("builder_type_error", r"its builder raised TypeError: .* at trust_user_\d+\.py:\d+ in builder_type_error"),
        ("forward_exits", r"the model's forward raised SystemExit\(0\) .* in forward"),
        ("forward_raises", r"the model's forward raised KeyError: 'missing' at trust_user_\d+\.py:\d+ in forward"),
    ],
)
def test_the_users_code_fails_in_one_line_with_exit_2(user_module, callable_, match, capsys):
    code = main(["layers", "--model", f"{user_module}:{callable_}"])
    err = capsys.readouterr().err.strip()
    assert code == 2, err
    assert len(err.splitlines()) == 1 and err.startswith("zfnet layers: error: --model"), err
    import re

    assert re.search(match, err), err


def test_a_user_model_returning_a_pair_runs_from_the_cli(user_module, capsys):
    assert main(["layers", "--model", f"{user_module}:pair", "--output", "0"]) == 0
    assert "conv" in capsys.readouterr().out
    assert main(["layers", "--model", f"{user_module}:pair", "--output", "1"]) == 2  # None is no logits
    assert "is a NoneType, not a tensor of logits" in capsys.readouterr().err


def test_evaluate_refuses_nan_outputs_naming_the_image():
    from zfnet.data.base import InputSet
    from zfnet.train import evaluate

    ds = InputSet(_x(3), labels=[0, 1, 2])
    with pytest.raises(UsageError, match=r"NaN or inf for image inputs/batch/00000"):
        evaluate(Net(nan=True).eval(), ds, ds.preprocess)


def test_a_users_builder_without_weights_is_not_called_random(user_module, capsys):
    """Issue 40, item 7: a module:callable may load its own weights; without --weights it is 'as its builder
    made it', and the report's model table says so too. zfnet's and torchvision's builders start random."""
    from zfnet.render.page import _model_facts

    assert main(["layers", "--model", f"{user_module}:good"]) == 0
    err = capsys.readouterr().err
    assert f"no --weights: {user_module}:good as its builder made it" in err and "random" not in err
    arch = {"params": 1, "input_shape": [3, 8, 8]}
    for name, seed, said in [
        (f"{user_module}:good", 3, "as its builder made it (torch seeded with 3 first; no weights file given)"),
        ("torchvision:resnet18", 0, "at its random initialization (seed 0)"),
        ("zfnet-small", 5, "at its random initialization (seed 5)"),
    ]:
        opened = open_model(name, seed=seed)
        assert opened.info()["initialization"] == said
        facts = dict(_model_facts({"architecture": arch, "name": name, "initialization": opened.initial}))
        assert facts["weights"] == said
