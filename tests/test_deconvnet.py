"""The deconvnet (Sec. 2.1) against independent references: a slow implementation written from the paper
(explicit switches, unpooling by summing, rectify, transposed filters by flipping, contrast normalization
skipped), a hand-worked example, Captum's NeuronDeconvolution, and the whole-image projection (fast path)."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from conftest import hook_count
from torch import nn

from zfnet import models
from zfnet.errors import UsageError
from zfnet.methods.deconvnet import Deconvnet, Target, project

# --- slow reference, straight from Sec. 2.1 --------------------------------------------------------------


def _transposed_filter(signal: torch.Tensor, conv: nn.Conv2d, in_hw: tuple[int, int]) -> torch.Tensor:
    """'filter with transposed versions of the same filters ... flipping each filter vertically and
    horizontally': dilate by the stride, pad fully, correlate with flipped, in/out-swapped filters, no bias.
    A grouped conv (Krizhevsky's two towers) is transposed group by group: each group's output maps go back
    through that group's filters to that group's input maps."""
    g = conv.groups
    if g > 1:
        per_out, per_in = conv.out_channels // g, conv.in_channels // g
        parts = []
        for i in range(g):
            one = nn.Conv2d(per_in, per_out, conv.kernel_size, conv.stride, conv.padding, bias=False)
            one.weight.data = conv.weight[i * per_out : (i + 1) * per_out]
            parts.append(_transposed_filter(signal[:, i * per_out : (i + 1) * per_out], one, in_hw))
        return torch.cat(parts, 1)
    s, p, k = conv.stride[0], conv.padding[0], conv.kernel_size[0]
    n, c, h, w = signal.shape
    z = signal.new_zeros(n, c, (h - 1) * s + 1, (w - 1) * s + 1)
    z[:, :, ::s, ::s] = signal
    z = F.pad(z, (k - 1, k - 1, k - 1, k - 1))
    full = F.conv2d(z, conv.weight.flip(-1, -2).transpose(0, 1))  # covers the padded input
    full = F.pad(full, (0, in_hw[1] + 2 * p - full.shape[-1], 0, in_hw[0] + 2 * p - full.shape[-2]))
    return full[:, :, p : p + in_hw[0], p : p + in_hw[1]]


def _unpool_sum(signal: torch.Tensor, switches: torch.Tensor, in_hw: tuple[int, int]) -> torch.Tensor:
    """Place each value at its recorded maximum; where windows share a maximum, the values add up."""
    n, c = signal.shape[:2]
    out = signal.new_zeros(n, c, in_hw[0] * in_hw[1])
    out.scatter_add_(2, switches.flatten(2), signal.flatten(2))
    return out.view(n, c, *in_hw)


def reference_projection(
    model: nn.Sequential,
    x: torch.Tensor,
    layer: str,
    channel: int,
    y: int,
    xx: int,
    mode: str = "deconvnet",
    unit: bool = False,
) -> torch.Tensor:
    """Slow deconvnet for a flat Sequential of conv/relu/pool/LRN layers (the Fig. 3 family), seeded with the
    activation (or, `unit`, with 1)."""
    with torch.no_grad():
        return _reference(model, x, layer, channel, y, xx, mode, unit)


def _reference(model, x, layer, channel, y, xx, mode, unit=False):
    names = [n for n, _ in model.named_children()]
    stop = names.index(layer) + (1 if isinstance(model[names.index(layer) + 1], nn.ReLU) else 0)
    record, h = [], x
    for name in names[: stop + 1]:
        m = getattr(model, name)
        if isinstance(m, nn.MaxPool2d):
            out, switches = F.max_pool2d(
                h, m.kernel_size, m.stride, m.padding, ceil_mode=m.ceil_mode, return_indices=True
            )
            record.append((m, h.shape[-2:], switches, out))
        else:
            out = m(h)
            record.append((m, h.shape[-2:], None, out))
        h = out
    signal = torch.zeros_like(h)
    signal[0, channel, y, xx] = 1.0 if unit else h[0, channel, y, xx]  # keep this activation, zero all others
    for m, in_hw, switches, out in reversed(record):
        if isinstance(m, nn.ReLU):
            if mode in ("deconvnet", "guided"):
                signal = signal.clamp_min(0)
            if mode in ("backprop", "guided"):
                signal = signal * (out > 0)
        elif isinstance(m, nn.MaxPool2d):
            signal = _unpool_sum(signal, switches, tuple(in_hw))
        elif isinstance(m, nn.Conv2d):
            signal = _transposed_filter(signal, m, tuple(in_hw))
        elif isinstance(m, nn.LocalResponseNorm):
            pass  # "we do not use any contrast normalization operations when in this reconstruction path"
        else:
            raise AssertionError(type(m))
    return signal[0]


@pytest.mark.parametrize("mode", ["deconvnet", "backprop", "guided"])
def test_matches_slow_reference_on_zfnet_with_contrast_norm(mode):
    torch.manual_seed(1)
    model = models.build("zfnet", num_classes=10, init="kaiming").eval()
    x = torch.randn(1, 3, 224, 224)
    with Deconvnet(model, rule=mode) as dn:
        for layer, c in (("conv1", 3), ("conv2", 17), ("conv3", 5), ("conv5", 100)):
            acts = dn.activations(x, layer)[0, c]
            y, xx = divmod(int(acts.argmax()), acts.shape[-1])
            ours = dn.project(x, layer, c, position=(y, xx))[0]
            ref = reference_projection(model, x, layer, c, y, xx, mode)
            assert ref.abs().max() > 0
            torch.testing.assert_close(ours, ref, rtol=1e-4, atol=1e-5 * float(ref.abs().max()))


def test_matches_slow_reference_on_krizhevskys_grouped_alexnet():
    """Table 2's replication baseline has groups=2 in conv2, conv4 and conv5: the backward rule on autograd
    projects through them as the group-by-group transposed filters of the reference."""
    torch.manual_seed(3)
    model = models.build("alexnet", num_classes=10, init="kaiming").eval()
    assert [model.conv2.groups, model.conv3.groups, model.conv4.groups, model.conv5.groups] == [2, 1, 2, 2]
    x = torch.randn(1, 3, 224, 224)
    with Deconvnet(model) as dn:
        for layer, c in (("conv2", 200), ("conv4", 7), ("conv5", 30)):
            acts = dn.activations(x, layer)[0, c]
            y, xx = divmod(int(acts.argmax()), acts.shape[-1])
            ours = dn.project(x, layer, c, position=(y, xx))[0]
            ref = reference_projection(model, x, layer, c, y, xx)
            assert ref.abs().max() > 0
            torch.testing.assert_close(ours, ref, rtol=1e-4, atol=1e-5 * float(ref.abs().max()))


def test_overlapping_pools_sum_rather_than_overwrite():
    """ZFNet's 3x3/2 pools overlap: max_unpool2d (which overwrites) would lose mass that the deconvnet keeps."""
    torch.manual_seed(2)
    model = models.build("zfnet-small", init="kaiming").eval()
    x = torch.randn(1, 1, 28, 28)
    h = model.relu1(model.conv1(x))
    pooled, switches = F.max_pool2d(h, 3, 2, ceil_mode=True, return_indices=True)
    ones = torch.ones_like(pooled)
    summed = _unpool_sum(ones, switches, h.shape[-2:])
    overwritten = F.max_unpool2d(ones, switches, 3, 2, output_size=h.shape[-2:])
    assert summed.sum() == ones.sum() and overwritten.sum() < summed.sum()  # shared maxima exist
    with Deconvnet(model) as dn:
        c = 0
        ours = dn.project(x, "pool1", c)[0]
        acts = dn.activations(x, "pool1")[0, c]
        y, xx = divmod(int(acts.argmax()), acts.shape[-1])
        torch.testing.assert_close(ours, reference_projection(model, x, "pool1", c, y, xx), rtol=1e-5, atol=1e-7)


# --- hand-worked examples ----------------------------------------------------------------------------


def _two_layer(w1, w2):
    m = nn.Sequential()
    m.add_module("conv1", nn.Conv2d(1, 2, 1, bias=False))
    m.add_module("relu1", nn.ReLU())
    m.add_module("conv2", nn.Conv2d(2, 1, 1, bias=False))
    m.add_module("relu2", nn.ReLU())
    with torch.no_grad():
        m.conv1.weight.copy_(torch.tensor(w1, dtype=torch.float32).view(2, 1, 1, 1))
        m.conv2.weight.copy_(torch.tensor(w2, dtype=torch.float32).view(1, 2, 1, 1))
    return m


def test_hand_worked_rectification_modes():
    x = torch.tensor([[[[1.0, -2.0]]]])
    # conv1 = (x, -x) -> relu -> ([1,0], [0,2]); conv2 = 2*a + 3*b = [2, 6]; project unit 1 (value 6):
    # down: conv2^T gives (12, 18) at position 1; the deconvnet rectifies the signal (both stay), backprop masks
    # with the forward ReLU (channel 0 was off at position 1); conv1^T: 1*12 - 1*18 = -6, backprop: -18.
    m = _two_layer([1.0, -1.0], [2.0, 3.0])
    expect = {"deconvnet": [0.0, -6.0], "backprop": [0.0, -18.0], "guided": [0.0, -18.0]}
    for mode, want in expect.items():
        got = project(m, x, layer="conv2", channel=0, position=(0, 1), rule=mode).images
        assert got.flatten().tolist() == want, mode
    # conv1 = (x, 2x) -> ([1,0], [2,0]); conv2 = 3a - b = [1, 0]; unit 0 (value 1): conv2^T = (3, -1);
    # deconvnet: relu -> (3, 0) -> 3; backprop: mask (1, 1) -> 3 - 2 = 1; guided: relu and mask -> 3.
    m = _two_layer([1.0, 2.0], [3.0, -1.0])
    for mode, want in {"deconvnet": [3.0, 0.0], "backprop": [1.0, 0.0], "guided": [3.0, 0.0]}.items():
        assert project(m, x, layer="conv2", channel=0, position=(0, 0), rule=mode).images.flatten().tolist() == want, (
            mode
        )


def test_hand_worked_conv_pool_projection():
    """One 2x2 filter, ReLU, overlapping 2x2/1 max-pool, on a 3x3 image, worked out by hand."""
    m = nn.Sequential()
    m.add_module("conv1", nn.Conv2d(1, 1, 2, bias=True))
    m.add_module("relu1", nn.ReLU())
    m.add_module("pool1", nn.MaxPool2d(2, 1))
    with torch.no_grad():
        m.conv1.weight.copy_(torch.tensor([[1.0, -1.0], [2.0, 0.0]]).view(1, 1, 2, 2))
        m.conv1.bias.fill_(5.0)  # biases never enter the way down
    x = torch.tensor([[0.0, 1.0, 2.0], [3.0, 4.0, 5.0], [6.0, 7.0, 8.0]]).view(1, 1, 3, 3)
    # conv: out[i,j] = x[i,j] - x[i,j+1] + 2 x[i+1,j] + 5 -> [[10, 12], [16, 18]]; relu keeps them;
    # pool (2x2 stride 1 on a 2x2 map) -> one unit = 18, switch at (1, 1).
    # down: unpool puts 18 at (1,1); relu keeps it; transposed filter places 18 * w at x[1:3, 1:3].
    got = project(m, x, layer="pool1", channel=0, position=(0, 0)).images[0, 0]
    want = torch.zeros(3, 3)
    want[1:3, 1:3] = 18 * torch.tensor([[1.0, -1.0], [2.0, 0.0]])
    assert torch.equal(got, want)
    # unit seed: the same divided by the value
    assert torch.equal(project(m, x, layer="pool1", channel=0, position=(0, 0), unit=True).images[0, 0], want / 18)


# --- Captum, where the semantics coincide (no contrast normalization) --------------------------------------


def _captum_deconv(model, module, x, neuron):
    from captum.attr import NeuronDeconvolution

    return NeuronDeconvolution(model, module).attribute(x, neuron_selector=neuron)


@pytest.mark.parametrize("name", ["zfnet-small", "torchvision:alexnet", "torchvision:resnet18"])
def test_matches_captum_neuron_deconvolution(name):
    torch.manual_seed(3)
    if name == "zfnet-small":
        model = models.build(name, norm=False).eval()
        x = torch.randn(2, 1, 28, 28)
        cases = [("conv2", model.relu2), ("conv5", model.relu5)]
    elif name == "torchvision:alexnet":  # in-place ReLUs
        model = models.build(name).eval()
        x = torch.randn(1, 3, 224, 224)
        cases = [("features.3", model.features[4]), ("features.10", model.features[11])]
    else:  # one ReLU module reused in every block, residual additions, BatchNorm
        model = models.build(name).eval()
        x = torch.randn(1, 3, 96, 96)
        cases = [("layer2.1", model.layer2[1]), ("layer3", model.layer3)]
    before = model(x).detach()
    for layer, module in cases:
        with Deconvnet(model, norm="gradient") as dn:
            acts = dn.activations(x, layer)
            c = int(acts[0].flatten(1).amax(1).argmax())
            y, xx = divmod(int(acts[0, c].argmax()), acts.shape[-1])
            ours = dn.project_targets(x, [Target(0, layer, c, y, xx)], unit=True)[0]
            value = float(acts[0, c, y, xx])
            ours_value = dn.project_targets(x, [Target(0, layer, c, y, xx)])[0]
        theirs = _captum_deconv(model, module, x[:1], (c, y, xx))[0]
        assert theirs.abs().max() > 0
        torch.testing.assert_close(ours, theirs, rtol=1e-4, atol=1e-6 * float(theirs.abs().max()))
        torch.testing.assert_close(ours_value, theirs * value, rtol=1e-4, atol=1e-6 * float(ours_value.abs().max()))
    assert torch.equal(model(x), before)


# --- the fast path: receptive-field crops equal whole-image projections ------------------------------------


def _corner_and_interior_targets(layer, h, w, channels, images):
    spots = [(0, 0), (0, w - 1), (h - 1, 0), (h - 1, w - 1), (h // 2, w // 2), (1, w // 3), (h - 2, 1)]
    return [Target(i, layer, c, y, x) for i in range(images) for c in channels for y, x in spots]


@pytest.mark.parametrize(
    "name,shape,layers",
    [
        ("zfnet", (3, 224, 224), ["conv1", "conv2", "pool2", "conv4", "conv5"]),
        ("alexnet", (3, 224, 224), ["conv2", "conv5"]),
        ("zfnet-small", (1, 28, 28), ["conv1", "conv2", "conv3", "conv5"]),
        ("torchvision:vgg11", (3, 64, 64), ["features.3", "features.13"]),
        ("torchvision:resnet18", (3, 96, 96), ["layer1.0", "layer2", "layer3.1.conv1"]),
    ],
)
def test_cropped_projection_equals_whole_image(name, shape, layers):
    torch.manual_seed(4)
    model = models.build(name, init="kaiming") if not name.startswith("torchvision") else models.build(name)
    x = torch.randn(2, *shape)
    for layer in layers:
        with Deconvnet(model) as dn:
            h, w = dn.activations(x, layer).shape[-2:]
            targets = _corner_and_interior_targets(layer, h, w, (0, 5), 2)
            fast = dn.project_targets(x, targets, unit=True)
        with Deconvnet(model, fast=False) as dn:
            whole = dn.project_targets(x, targets, unit=True)
        assert (whole.flatten(1).abs().amax(1) > 0).float().mean() > 0.5, "targets should mostly project"
        torch.testing.assert_close(fast, whole, rtol=1e-5, atol=1e-6 * float(whole.abs().max()))


def test_field_output_is_the_receptive_field_box():
    from zfnet.receptive_field import receptive_field

    torch.manual_seed(5)
    model = models.build("zfnet-small")
    x = torch.randn(1, 1, 28, 28)
    rf = receptive_field(model, x, layer="conv3")
    targets = [Target(0, "conv3", 2, 0, 0), Target(0, "conv3", 2, 3, 4), Target(0, "conv3", 2, 6, 6)]
    with Deconvnet(model) as dn:
        full = dn.project_targets(x, targets, unit=True)
        boxes = dn.project_targets(x, targets, unit=True, output="field")
    for t, f, b in zip(targets, full, boxes):
        assert b.shape[-2:] == rf.size
        torch.testing.assert_close(b, rf.crop(f[None], t.y, t.x)[0])
        top, left, bottom, right = rf.clipped_box(t.y, t.x)
        outside = f.clone()
        outside[:, top:bottom, left:right] = 0
        assert outside.abs().max() == 0  # nothing outside the field


# --- the model is left exactly as found ---------------------------------------------------------------


def test_no_hook_left_and_modes_restored_even_after_errors():
    model = models.build("torchvision:resnet18")
    model.train()
    model.layer2.eval()  # a mixed state that must come back as it was
    states = {n: m.training for n, m in model.named_modules()}
    x = torch.randn(2, 3, 64, 64)
    model.eval()
    before = model(x).detach()
    model.train()
    model.layer2.eval()
    with Deconvnet(model, rule="guided") as dn:
        dn.project(x, "layer3", 4)
        assert not model.training
    assert hook_count(model) == 0
    assert {n: m.training for n, m in model.named_modules()} == states
    with pytest.raises(UsageError), Deconvnet(model) as dn:
        dn.project(x, "layer3", 10_000)  # no such channel
    with pytest.raises(RuntimeError, match="boom"), Deconvnet(model) as dn:
        dn.project(x, "layer1", 0)
        raise RuntimeError("boom")
    assert hook_count(model) == 0
    assert {n: m.training for n, m in model.named_modules()} == states
    model.eval()
    assert torch.equal(model(x), before)
    assert all(p.grad is None for p in model.parameters())


def test_strongest_position_and_fc_targets():
    torch.manual_seed(6)
    model = models.build("zfnet-small")
    x = torch.randn(3, 1, 28, 28)
    with Deconvnet(model) as dn:
        acts = dn.activations(x, "conv4")
        rec = dn.project(x, "conv4", [1, 2, 3])
        for i, c in enumerate([1, 2, 3]):
            y, xx = divmod(int(acts[i, c].argmax()), acts.shape[-1])
            one = dn.project(x[i : i + 1], "conv4", c, position=(y, xx))[0]
            torch.testing.assert_close(rec[i], one)
        fc = dn.project(x, "fc6", 7)
        assert fc.shape == x.shape
        with pytest.raises(UsageError):
            dn.project(x, "conv4", 0, position=(40, 0))


def test_needs_with_block_and_valid_mode():
    model = models.build("zfnet-small")
    with pytest.raises(UsageError):
        Deconvnet(model, rule="nope")
    with pytest.raises(RuntimeError):
        Deconvnet(model).project(torch.zeros(1, 1, 28, 28), "conv1", 0)
