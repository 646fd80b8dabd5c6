"""Receptive fields from the model's modules, checked by brute force: change one input pixel and see which
activations move."""

from __future__ import annotations

import pytest
import torch

from zfnet import models
from zfnet.layers import features
from zfnet.receptive_field import crop_plan, layer_field


def brute_force_fields(model, layer, shape, spots):
    """For each unit (y, x) of `spots`: the input pixels whose change moves it (any channel), as a (top, left,
    bottom, right) box. Float64 and a linear stand-in for ReLUs (so nothing is masked) make every dependency
    visible. One probe image per input pixel, each forwarded once for all the spots."""
    model = model.double().eval()
    for m in model.modules():
        if isinstance(m, torch.nn.ReLU):
            m.forward = lambda t: t  # instance attribute: only this test's copy is changed
    base = torch.randn(1, *shape, dtype=torch.float64)
    h, w = shape[1:]
    ys, xs = torch.tensor([y for y, _ in spots]), torch.tensor([x for _, x in spots])
    with torch.no_grad():
        ref = features(model, base, [layer])[layer][0][:, ys, xs]  # C x S
        moved = []
        for start in range(0, h * w, 256):  # the probe images, in batches
            pix = torch.arange(start, min(start + 256, h * w))
            probe = base.repeat(len(pix), 1, 1, 1)
            probe[torch.arange(len(pix)), :, pix // w, pix % w] += 1.0
            out = features(model, probe, [layer])[layer][:, :, ys, xs]  # P x C x S
            moved.append((out - ref).abs().amax(1) > 1e-9)
        hits = torch.cat(moved).view(h, w, len(spots))
    boxes = {}
    for k, spot in enumerate(spots):
        rows, cols = hits[..., k].any(1).nonzero(), hits[..., k].any(0).nonzero()
        boxes[spot] = (int(rows.min()), int(cols.min()), int(rows.max()) + 1, int(cols.max()) + 1)
    return boxes


@pytest.mark.parametrize(
    "layer,spots",
    [
        ("conv1", [(0, 0), (13, 27)]),
        ("conv2", [(0, 0), (7, 13), (13, 13)]),
        ("conv3", [(0, 6), (3, 3)]),
        ("conv5", [(0, 0), (3, 4), (6, 6)]),
    ],
)
def test_small_model_fields_match_brute_force(layer, spots):
    model = models.build("zfnet-small", seed=0)
    rf = layer_field(model, layer)
    found = brute_force_fields(models.build("zfnet-small", seed=0), layer, (1, 28, 28), spots)
    for y, x in spots:
        assert found[(y, x)] == rf.clipped_box(y, x), (layer, y, x)


def test_zfnet_fields_are_the_papers_and_match_brute_force():
    model = models.build("zfnet", init="torch")
    sizes = {l: layer_field(model, l).size[0] for l in ("conv1", "conv2", "conv3", "conv4", "conv5")}
    assert sizes == {"conv1": 7, "conv2": 27, "conv3": 75, "conv4": 107, "conv5": 139}
    # conv2 maps 6x6; narrow maps (the geometry is the same) keep the 4,489 probes cheap
    small = models.build("zfnet", init="torch", input_size=67, remove=("fc6", "fc7"), conv_channels=(8, 16, 16, 16, 16))
    rf = layer_field(small, "conv2", (3, 67, 67))
    spots = [(0, 0), (3, 4), (5, 5)]
    found = brute_force_fields(small, "conv2", (3, 67, 67), spots)
    for y, x in spots:
        assert found[(y, x)] == rf.clipped_box(y, x)


def test_grouped_alexnet_fields_are_krizhevskys_and_match_brute_force():
    """11x11/4 conv1, 3x3/2 pools, 5x5 conv2 (groups 2), 3x3 conv3-5: fields 11, 51, 99, 131, 163 px
    (11 + 2*4 = 19 after pool1; + 4*8 = 51; pool2 -> 67 at jump 16; + 2*16 per 3x3 conv)."""
    model = models.build("alexnet", init="torch")
    sizes = {l: layer_field(model, l).size[0] for l in ("conv1", "conv2", "conv3", "conv4", "conv5")}
    assert sizes == {"conv1": 11, "conv2": 51, "conv3": 99, "conv4": 131, "conv5": 163}
    # narrow maps (the geometry and the groups are the same) keep the 9,801 probes cheap
    small = models.build(
        "alexnet", init="torch", input_size=99, remove=("fc6", "fc7"), conv_channels=(8, 16, 16, 16, 16)
    )
    assert small.conv2.groups == 2
    rf = layer_field(small, "conv2", (3, 99, 99))
    spots = [(0, 0), (2, 3)]
    found = brute_force_fields(small, "conv2", (3, 99, 99), spots)
    for y, x in spots:
        assert found[(y, x)] == rf.clipped_box(y, x)


def test_resnet_field_with_residual_branches():
    model = models.build("torchvision:resnet18")
    rf = layer_field(model, "layer1.0", (3, 40, 40))
    spots = [(0, 0), (5, 5), (9, 2)]
    found = brute_force_fields(models.build("torchvision:resnet18"), "layer1.0", (3, 40, 40), spots)
    for y, x in spots:
        assert found[(y, x)] == rf.clipped_box(y, x)
    assert layer_field(model, "layer4").size == (435, 435)  # the textbook value
    assert layer_field(model, "avgpool").is_global


def test_crop_with_zero_padding_and_plan():
    model = models.build("zfnet-small")
    # by hand: conv1 (5x5, pad 2) starts at -2; pool1 keeps it; conv2 (3x3, pad 1 unit of 2 px) at -2 - 2 = -4;
    # size 5 + 2*1 (pool) + 2*2 (conv2) = 11, jump 2
    rf = layer_field(model, "conv2")
    assert (rf.rows.size, rf.rows.jump, rf.rows.start) == (11, 2, -4)
    img = torch.arange(28 * 28, dtype=torch.float32).view(1, 1, 28, 28)
    patch = rf.crop(img, 0, 0)[0, 0]
    assert patch.shape == (11, 11)
    assert torch.equal(patch[:4], torch.zeros(4, 11)) and torch.equal(patch[:, :4], torch.zeros(11, 4))
    assert torch.equal(patch[4:, 4:], img[0, 0, :7, :7])
    assert torch.equal(rf.crop(img, 13, 13)[0, 0, :6, :6], img[0, 0, 22:, 22:])  # bottom-right corner
    (top, left, bottom, right), (yy, xx) = crop_plan(rf, 7, 7)  # field rows 10..20
    assert (top, left, bottom, right) == (10, 10, 21, 21) and (yy, xx) == (2, 2)
    (top, left, bottom, right), (yy, xx) = crop_plan(rf, 1, 13)  # field rows -2..8, cols 22..32
    assert (top, left, bottom, right) == (0, 22, 9, 28) and (yy, xx) == (1, 2)
