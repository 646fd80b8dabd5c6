"""Model zoo: Fig. 3 sizes at every named layer, Table 2 variants, registry behaviour, weights files."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from conftest import run_cli
from safetensors.torch import save_file
from torch import nn

from zfnet import models
from zfnet.errors import UsageError
from zfnet.models.convnet import TABLE2_VARIANTS
from zfnet.weights import WeightsFile, open_model

FIG3 = {  # Fig. 3, layer by layer
    "conv1": (96, 110, 110),
    "pool1": (96, 55, 55),
    "norm1": (96, 55, 55),
    "conv2": (256, 26, 26),
    "pool2": (256, 13, 13),
    "norm2": (256, 13, 13),
    "conv3": (384, 13, 13),
    "conv4": (384, 13, 13),
    "conv5": (256, 13, 13),
    "pool5": (256, 6, 6),
    "flatten": (9216,),
    "fc6": (4096,),
    "fc7": (4096,),
    "fc8": (1000,),
}


def test_zfnet_is_fig3():
    net = models.build("zfnet")
    named = dict(net.named_modules())
    for name in ("conv1", "conv2", "conv3", "conv4", "conv5", "fc6", "fc7", "fc8"):
        assert name in named
    assert (named["conv1"].kernel_size, named["conv1"].stride) == ((7, 7), (2, 2))
    assert (named["conv2"].kernel_size, named["conv2"].stride) == ((5, 5), (2, 2))
    assert named["drop6"].p == named["drop7"].p == 0.5
    shapes = {}
    hooks = [
        m.register_forward_hook(lambda m, i, o, n=n: shapes.__setitem__(n, tuple(o.shape[1:])) or None)
        for n, m in net.named_children()
    ]
    with torch.no_grad():
        net.eval()(torch.zeros(1, 3, 224, 224))
    for h in hooks:
        h.remove()
    for name, shape in FIG3.items():
        assert shapes[name] == shape, name
    assert net.layer_shapes()["pool5"] == (256, 6, 6)


def test_parameter_count_by_hand():
    conv = [(3, 96, 7), (96, 256, 5), (256, 384, 3), (384, 384, 3), (384, 256, 3)]
    expected = sum(i * o * k * k + o for i, o, k in conv)
    expected += 9216 * 4096 + 4096 + 4096 * 4096 + 4096 + 4096 * 1000 + 1000
    assert sum(p.numel() for p in models.build("zfnet").parameters()) == expected


def test_alexnet_dense_baseline_sizes():
    shapes = models.build("alexnet").layer_shapes()
    assert shapes["conv1"] == (96, 55, 55) and shapes["pool1"] == (96, 27, 27)
    assert shapes["conv2"] == (256, 27, 27) and shapes["pool5"] == (256, 6, 6)
    net = models.build("alexnet")
    assert net.conv1.kernel_size == (11, 11) and net.conv1.stride == (4, 4)
    assert net.conv3.in_channels == 256 and net.conv3.groups == 1  # dense layers 3-5


@pytest.mark.parametrize("base", ["zfnet", "alexnet"])
@pytest.mark.parametrize("variant", list(TABLE2_VARIANTS))
def test_table2_variants_build_and_run(base, variant):
    net = models.build(f"{base}-{variant}", num_classes=7, init="torch").eval()
    named = dict(net.named_modules())
    if "rm" in variant:
        for digit in variant[2:]:
            layer = {"3": "conv3", "4": "conv4", "6": "fc6", "7": "fc7"}[digit]
            assert layer not in named
    if "fc2048" in variant:
        assert named["fc6"].out_features == 2048 and named["fc7"].out_features == 2048
    if "fc8192" in variant:
        assert named["fc6"].out_features == 8192
    if "wide345" in variant:
        assert [named[f"conv{i}"].out_channels for i in (3, 4, 5)] == [512, 1024, 512]
    with torch.no_grad():
        assert net(torch.zeros(1, 3, 224, 224)).shape == (1, 7)


def test_overrides_and_small_family():
    net = models.build("zfnet", conv_channels=(96, 256, 512, 1024, 512), fc_units=8192, num_classes=5, init="torch")
    assert net.conv4.out_channels == 1024 and net.fc7.out_features == 8192 and net.fc8.out_features == 5
    for name, (c, s) in {"zfnet-small": (1, 28), "zfnet-small-rgb": (3, 32), "zfnet-small-64": (3, 64)}.items():
        small = models.build(name).eval()
        assert {"conv1", "conv5", "fc6", "fc7", "fc8"} <= set(dict(small.named_modules()))
        assert small(torch.zeros(2, c, s, s)).shape == (2, 10)
    grey64 = models.build("zfnet-small", input_size=48).eval()
    assert grey64(torch.zeros(1, 1, 48, 48)).shape == (1, 10)
    assert not hasattr(models.build("zfnet-small", norm=False), "norm1")


def test_alexnet_is_krizhevskys_grouped_net():
    """60,965,224 parameters, counted by hand from Krizhevsky et al.'s table: conv1 96*3*11*11+96; conv2 (two
    towers) 256*48*5*5+256; conv3 384*256*9+384; conv4 384*192*9+384; conv5 256*192*9+256; fc6 9216*4096+4096;
    fc7 4096*4096+4096; fc8 4096*1000+1000. The dense variant connects every map of the layer below."""
    hand = (
        96 * 3 * 121 + 96 + 256 * 48 * 25 + 256 + 384 * 256 * 9 + 384 + 384 * 192 * 9 + 384 + 256 * 192 * 9 + 256
        + 9216 * 4096 + 4096 + 4096 * 4096 + 4096 + 4096 * 1000 + 1000
    )  # fmt: skip
    assert hand == 60_965_224
    assert sum(p.numel() for p in models.build("alexnet", init="torch").parameters()) == hand
    dense = models.build("alexnet-dense", init="torch")
    assert all(getattr(dense, f"conv{i}").groups == 1 for i in range(1, 6))
    assert models.build("alexnet-rm34", init="torch").conv5.groups == 2  # Table 2's Krizhevsky rows are grouped


def test_paper_init_statistics():
    net = models.build("zfnet", init="paper")
    w = net.conv3.weight
    assert abs(float(w.detach().std()) - 1e-2) < 5e-4 and abs(float(w.detach().mean())) < 1e-3
    assert all(float(m.bias.abs().max()) == 0 for m in (net.conv1, net.fc6, net.fc8))


def test_registry_errors():
    with pytest.raises(UsageError, match="unknown model 'nope'.*zfnet-small"):
        models.build("nope")
    with pytest.raises(UsageError, match="bad override"):
        models.build("zfnet", wings=3)
    with pytest.raises(UsageError, match="cannot remove"):
        models.build("zfnet", remove=("conv1",))
    with pytest.raises(ValueError, match="duplicate"):
        models.register("zfnet")(lambda **kw: None)
    with pytest.raises(UsageError, match="takes 1x28x28"):
        models.build("zfnet-small")(torch.zeros(1, 1, 32, 32))
    with pytest.raises(UsageError, match="takes N x 3"):
        models.build("zfnet-small-rgb")(torch.zeros(1, 1, 32, 32))


def test_weights_round_trip_and_mismatch(tmp_path):
    a = models.build("zfnet-small", seed=1)
    path = tmp_path / "w.safetensors"
    save_file({k: v.contiguous() for k, v in a.state_dict().items()}, str(path), metadata={"model": "zfnet-small"})
    b = open_model("zfnet-small", str(path), mean="none").model
    assert all(torch.equal(a.state_dict()[k], b.state_dict()[k]) for k in a.state_dict())
    with pytest.raises(UsageError, match="do not fit model 'zfnet-small-rgb'.*made for model 'zfnet-small'"):
        open_model("zfnet-small-rgb", str(path), mean="none")
    with pytest.raises(UsageError, match="does not exist"):
        open_model("zfnet-small", str(tmp_path / "missing.safetensors"))
    bad = tmp_path / "bad.pt"
    torch.save({"evil": object()}, str(bad))  # not loadable with weights_only=True
    with pytest.raises(UsageError, match="cannot read weights"):
        WeightsFile.read(str(bad))


def test_torchvision_models_and_local_weights(tmp_path):
    ref = models.build("torchvision:alexnet", num_classes=10)
    path = tmp_path / "alex.pth"
    torch.save(ref.state_dict(), str(path))
    net = open_model("torchvision:alexnet", str(path)).model
    assert net.classifier[6].out_features == 10  # class count read from the file
    assert torch.equal(net.features[0].weight, ref.features[0].weight)
    with pytest.raises(UsageError, match="unknown torchvision model"):
        models.build("torchvision:nonet")


def test_models_cli_table():
    r = run_cli("models")
    assert r.returncode == 0
    row = next(l for l in r.stdout.splitlines() if l.startswith("zfnet "))
    assert "3x224x224" in row and "62,357,608" in row and "conv1 96x110x110" in row and "pool5 256x6x6" in row
    assert "alexnet-rm3467" in r.stdout and "zfnet-small" in r.stdout
    bad = run_cli("models", "--name", "nope")
    assert bad.returncode == 2 and bad.stderr.count("\n") == 1 and "Traceback" not in bad.stderr


def test_contrast_normalization_is_torchs_formula():
    """The Fig. 3 family's contrast normalization (shifted channel sums, `layers.local_response_norm`) equals
    torch's `nn.LocalResponseNorm` in float64 to rounding (odd and even sizes, either memory layout), and in
    float32 within 16 ulps of the float64 value (n squares summed, a power, a division: a few ulps each)."""
    from zfnet.models.convnet import LocalResponseNorm

    g = torch.Generator().manual_seed(0)
    x = torch.rand(3, 11, 6, 5, generator=g, dtype=torch.float64) * 4
    for size, alpha, beta, k in [(5, 1e-4, 0.75, 2.0), (4, 0.1, 0.5, 1.0), (3, 1.0, 0.75, 1.0), (1, 0.5, 1.0, 1.0)]:
        ours, theirs = LocalResponseNorm(size, alpha, beta, k), torch.nn.LocalResponseNorm(size, alpha, beta, k)
        want = theirs(x)
        for given in (x, x.to(memory_format=torch.channels_last)):
            torch.testing.assert_close(ours(given), want, rtol=1e-13, atol=0)
        torch.testing.assert_close(ours(x.float()).double(), want, rtol=16 * 2**-24, atol=0)
    assert isinstance(models.build("zfnet-small").norm1, LocalResponseNorm)


def test_contrast_normalization_gradient_is_torchs():
    """Its written-out gradient (`layers._ContrastNorm`, the window transposed) equals autograd through torch's
    `F.local_response_norm` in float64 to rounding (odd and even sizes, either layout, a random upstream gradient),
    and its second derivative passes gradgradcheck: the backward recomputes its denominators from x."""
    from zfnet.layers import local_response_norm

    g = torch.Generator().manual_seed(2)
    for size, alpha, beta, k in [(5, 1e-4, 0.75, 2.0), (4, 0.3, 0.5, 1.0), (6, 0.7, 0.6, 0.5), (1, 0.5, 1.0, 1.0)]:
        x = torch.rand(2, 9, 4, 3, generator=g, dtype=torch.float64) * 4 - 2
        up = torch.randn(2, 9, 4, 3, generator=g, dtype=torch.float64)
        (want,) = torch.autograd.grad((F.local_response_norm(x.requires_grad_(), size, alpha, beta, k) * up).sum(), x)
        for given in (x.detach(), x.detach().to(memory_format=torch.channels_last)):
            given.requires_grad_()
            (got,) = torch.autograd.grad((local_response_norm(given, size, alpha, beta, k) * up).sum(), given)
            torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-15)
        small = x.detach()[:1, :, :2, :2].clone().requires_grad_()
        args = (size, alpha, beta, k)
        assert torch.autograd.gradgradcheck(lambda t, a=args: local_response_norm(t, *a), (small,))


def test_max_pooling_equals_torchs_exactly():
    """The Fig. 3 family's max pooling (taken in channels-last) is torch's bit for bit: a maximum has no rounding."""
    from zfnet.models.convnet import MaxPool2d

    g = torch.Generator().manual_seed(1)
    x = torch.randn(2, 7, 13, 12, generator=g)
    for kernel, stride, ceil in [(3, 2, True), (3, 2, False), (2, 2, False), (3, 1, True)]:
        assert torch.equal(
            MaxPool2d(kernel, stride, ceil_mode=ceil)(x), nn.MaxPool2d(kernel, stride, ceil_mode=ceil)(x)
        )
    assert isinstance(models.build("zfnet-small").pool1, MaxPool2d)


@pytest.mark.parametrize(
    "name", ["zfnet", "alexnet", "zfnet-small", "zfnet-small-rgb", "alexnet-rm34", "zfnet-small-64"]
)
def test_conv_output_size_arithmetic_equals_a_forward(name):
    """pool5's size from the layers' arithmetic (`conv_output_shape`) is what a forward on the meta device gives,
    at the table's input size and at other sizes (ceil-mode pooling's last-window rule included)."""
    from zfnet.models.convnet import conv_output_shape

    net = models.build(name, init="torch")
    for size in (net.arch.input_size, net.arch.input_size + 3, net.arch.input_size + 17):
        arch = net.arch.with_(input_size=size)
        with torch.device("meta"):
            body = nn.Sequential(
                *[m for n, m in net.named_children() if n.startswith(("conv", "relu", "pool", "norm"))]
            )
            want = body(torch.zeros(1, arch.in_channels, size, size)).shape[1:]
        assert conv_output_shape(arch) == tuple(want), (name, size)
