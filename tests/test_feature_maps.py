"""Issue 35, item 1: one traced definition of a layer's feature maps (Sec. 2.1: the rectified outputs the
deconvnet starts from), on a module with a functional ReLU, an `nn.ReLU` attribute called in `forward` (twice)
and `F.relu(conv(x) + skip)`, and on ResNet-18. References are the maps computed by hand in float64."""

from __future__ import annotations

import torch
import torch.nn.functional as F
import torchvision
from torch import nn

import zfnet
from zfnet.layers import features, sites


class Functional(nn.Module):
    """c1: F.relu; c2: an nn.ReLU attribute (called twice); c3: F.relu(c3(x) + skip) inside the forward, with
    more ops after it; c4: no rectifier (a raw map)."""

    def __init__(self) -> None:
        super().__init__()
        self.c1, self.c2 = nn.Conv2d(3, 6, 3, padding=1), nn.Conv2d(6, 6, 3, padding=1)
        self.c3, self.c4 = nn.Conv2d(6, 6, 3, padding=1), nn.Conv2d(6, 5, 3)
        self.act = nn.ReLU()
        self.fc = nn.Linear(5, 4)

    def forward(self, x):
        a = F.relu(self.c1(x))
        b = self.act(self.c2(a))
        c = F.relu(self.c3(b) + a)
        d = self.c4(F.max_pool2d(self.act(c * 1.0), 2))
        return self.fc(d.mean((2, 3)))

    def by_hand(self, x) -> dict[str, torch.Tensor]:
        a = F.relu(self.c1(x))
        b = F.relu(self.c2(a))
        c = F.relu(self.c3(b) + a)
        return {"c1": a, "c2": b, "c3": c, "c4": self.c4(F.max_pool2d(c, 2))}


def _model_and_images():
    torch.manual_seed(0)
    return Functional().double().eval(), torch.randn(5, 3, 12, 12, dtype=torch.float64)


def test_each_named_layer_reads_the_rectifier_that_follows_it():
    model, x = _model_and_images()
    found = sites(model, ["c1", "c2", "c3", "c4"], x)
    assert {n: s.reads for n, s in found.items()} == {
        "c1": "c1 -> relu",
        "c2": "c2 -> act",
        "c3": "c3 -> add -> relu",
        "c4": "c4",
    }
    assert [found[n].rectified for n in ("c1", "c2", "c3", "c4")] == [True, True, True, False]
    maps = features(model, x, ["c1", "c2", "c3", "c4"])
    with torch.no_grad():
        ref = model.by_hand(x)
    for name in ref:
        assert torch.equal(maps[name], ref[name]), name
    assert float(maps["c3"].detach().min()) == 0.0 and float(ref["c4"].min()) < 0  # the raw map keeps its negatives


def test_atlas_values_and_projection_seeds_equal_the_rectified_maps():
    """The atlas's top-1 of every map is the maximum over images and positions of the hand-computed map; a
    projection's activation is the hand map at the unit, and with the gradient rule and a unit seed the
    projection is the gradient of that hand-computed unit (the skip path included)."""
    model, x = _model_and_images()
    with torch.no_grad():
        ref = model.by_hand(x)
    scan = zfnet.atlas(model, x, layers=["c1", "c2", "c3", "c4"], k=2)
    assert scan.to_json()["feature_maps"]["c3"] == {"reads": "c3 -> add -> relu", "rectified": True}
    assert scan.to_json()["feature_maps"]["c4"]["rectified"] is False
    for name, r in ref.items():
        top = r.flatten(2).amax(2).amax(0)  # per channel, over images and positions
        assert torch.equal(scan.top[name].values[0], top.float())  # the table keeps float32: one rounding
    for layer in ("c1", "c2", "c3"):
        p = zfnet.project(model, x[:2], layer=layer, channel=1, rule="backprop", unit=True)
        for i, (y, xx) in enumerate(p.positions):
            assert float(p.activations[i]) == float(ref[layer][i, 1, y, xx].float()) > 0  # kept in float32
            xi = x[i : i + 1].clone().requires_grad_(True)
            (g,) = torch.autograd.grad(model.by_hand(xi)[layer][0, 1, y, xx], xi)
            torch.testing.assert_close(p.images[i].double(), g[0], rtol=1e-10, atol=1e-12)
        assert p.to_json()["feature_maps"][layer]["rectified"]


def test_occlusion_reads_a_functional_rectifier_the_same_way_incrementally_and_whole():
    """Panel (b) sums the rectified c3 map: the exact engine (which finds the rectifier among its recorded torch
    functions) and whole forwards agree, and both equal the hand-computed total."""
    model, x = _model_and_images()
    kw = dict(window=4, stride=4, fill="mean-image", layer="c3")
    exact = zfnet.occlusion(model, x[:1], strategy="exact", **kw)[0]
    naive = zfnet.occlusion(model, x[:1], strategy="naive", **kw)[0]
    assert exact.strategy == "exact" and not exact.fallback
    torch.testing.assert_close(exact.activity, naive.activity, rtol=1e-9, atol=1e-9)
    with torch.no_grad():
        ref = model.by_hand(x[:1])["c3"]
    assert exact.base_activity == float(ref[0, exact.channel].sum())
    occluded = x[:1].clone()
    occluded[..., :4, :4] = 0.0  # mean-image fill of a batch with no stored mean: zeros in model input
    with torch.no_grad():
        first = float(model.by_hand(occluded)["c3"][0, exact.channel].sum())
    # the grid is kept in float32: one rounding of a float64 total (and float64 batch-order noise far below it)
    torch.testing.assert_close(float(naive.activity[0, 0]), first, rtol=2**-23, atol=0)
    assert exact.to_json()["feature_maps"] == {"c3": {"reads": "c3 -> add -> relu", "rectified": True}}


def test_resnet18_convs_are_read_after_batch_norm_and_their_relu():
    """conv1 -> bn1 -> relu (the stem's ReLU); a block's second conv -> bn2 -> + identity -> the block's shared
    ReLU on its second call; a block's output is already rectified."""
    torch.manual_seed(0)
    model = torchvision.models.resnet18(num_classes=10).double().eval()
    x = torch.randn(2, 3, 64, 64, dtype=torch.float64)
    found = sites(model, ["conv1", "layer1.0.conv1", "layer1.0.conv2", "layer2", "avgpool"], x)
    assert found["conv1"].reads == "conv1 -> bn1 -> relu"
    assert found["layer1.0.conv1"].reads == "layer1.0.conv1 -> bn1 -> relu"
    assert found["layer1.0.conv2"].reads == "layer1.0.conv2 -> bn2 -> add -> relu"
    assert found["layer2"].reads == "layer2" and found["layer2"].rectified
    assert not found["avgpool"].rectified
    maps = features(model, x, ["conv1", "layer1.0.conv1", "layer1.0.conv2"])
    with torch.no_grad():
        stem = F.relu(model.bn1(model.conv1(x)))
        b = model.layer1[0]
        inner = F.relu(b.bn1(b.conv1(model.maxpool(stem))))
        out = F.relu(b.bn2(b.conv2(inner)) + model.maxpool(stem))
    assert torch.equal(maps["conv1"], stem)
    assert torch.equal(maps["layer1.0.conv1"], inner)
    assert torch.equal(maps["layer1.0.conv2"], out)


def test_relu_modules_swapped_for_one_shared_module_are_traced_again():
    """pytorch-grad-cam's guided backprop swaps a model's ReLU modules and puts back one shared `nn.ReLU` for
    all of them, so the second ReLU's name disappears from `named_modules`: the maps are then read from the
    shared module's second call, not from a stale site."""
    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(), nn.Conv2d(4, 4, 3, padding=1), nn.ReLU(), nn.Flatten(),
        nn.Linear(4 * 8 * 8, 3),
    ).double().eval()  # fmt: skip
    x = torch.randn(2, 3, 8, 8, dtype=torch.float64)
    assert sites(model, ["2"], x)["2"].module == "3"
    shared = nn.ReLU()
    model[1], model[3] = shared, shared
    assert "3" not in dict(model.named_modules())
    with torch.no_grad():
        ref = F.relu(model[2](F.relu(model[0](x))))
        assert torch.equal(features(model, x, ["2"])["2"], ref)
    assert sites(model, ["2"], x)["2"].call == 1  # the shared module's second call
    r = zfnet.occlusion(model, x[:1], window=4, stride=4, layer="2", strategy="exact")[0]
    assert r.strategy == "exact" and not r.fallback
