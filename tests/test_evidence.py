"""Issue 36: the evidence beside a unit's pictures, against independent references - scikit-image's SSIM and
Sobel, scipy's Spearman, a slow cascade (explicit re-initialization and the Sec. 2.1 reference projection written
in tests/test_deconvnet.py), a naive occlusion loop (one whole forward per position) - and end to end on the
embedded model, a torchvision ResNet-18 and a user's module with functional ReLUs."""

from __future__ import annotations

import copy
import importlib
import json

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from conftest import noise_photos
from scipy.stats import spearmanr
from skimage.filters import sobel as sk_sobel
from skimage.metrics import structural_similarity
from test_deconvnet import reference_projection
from torch import nn

import zfnet
from zfnet import data as zdata
from zfnet.cli import main
from zfnet.layers import features
from zfnet.methods.evidence import UnitAt, cascade_layers, ranks, similarities, similarity, sobel, spearman, ssim
from zfnet.pixels import fill_input

# --- the measures against scikit-image and scipy ---------------------------------------------------------------


@pytest.mark.parametrize("shape", [(32, 32), (9, 11), (5, 5), (3, 7)])
def test_ssim_equals_scikit_image(shape):
    """SSIM of two maps in [0, 1] equals scikit-image's (data_range 1, its default uniform 7x7 window; a smaller
    map the largest odd window that fits, as `win_size` must)."""
    g = torch.Generator().manual_seed(sum(shape))
    a = torch.rand(*shape, generator=g, dtype=torch.float64)
    b = (a + 0.3 * torch.rand(*shape, generator=g, dtype=torch.float64)).clamp(0, 1)
    win = min(7, *shape)
    win -= 1 - win % 2
    want = structural_similarity(a.numpy(), b.numpy(), data_range=1.0, win_size=win)
    assert ssim(a, b) == pytest.approx(want, abs=1e-12)
    assert ssim(a[:2], b[:2]) is None  # below 3 px there is no window


def test_spearman_and_ranks_equal_scipy_with_ties():
    g = torch.Generator().manual_seed(3)
    a = torch.randint(0, 5, (40,), generator=g).double()  # many ties
    b = a + torch.randint(0, 3, (40,), generator=g).double()
    assert spearman(a, b) == pytest.approx(spearmanr(a.numpy(), b.numpy()).statistic, abs=1e-12)
    from scipy.stats import rankdata

    assert np.array_equal(ranks(a).numpy(), rankdata(a.numpy()))
    assert spearman(a, torch.ones(40, dtype=torch.float64)) is None  # a constant map has no ranking


def test_the_edge_map_is_scikit_images_sobel_up_to_scale():
    g = torch.Generator().manual_seed(5)
    image = torch.rand(3, 20, 17, generator=g, dtype=torch.float64) * 255
    ours = sobel(image)[0]
    theirs = torch.from_numpy(sk_sobel(image.sum(0).numpy()))
    assert torch.allclose(ours / ours.max(), theirs / theirs.max(), rtol=0, atol=1e-12)


# --- the cascade against a slow re-implementation ----------------------------------------------------------------


def _similar(a, b, box):
    """Adebayo et al.'s measures by scikit-image and scipy, on the field box."""
    t, l, bo, r = box
    ea, eb = a[:, t:bo, l:r].abs().sum(0).double(), b[:, t:bo, l:r].abs().sum(0).double()
    ea, eb = ea / ea.max(), eb / eb.max() if eb.max() > 0 else eb
    win = min(7, *ea.shape)
    win -= 1 - win % 2
    return {
        "ssim": structural_similarity(ea.numpy(), eb.numpy(), data_range=1.0, win_size=win),
        "spearman_abs": spearmanr(ea.flatten().numpy(), eb.flatten().numpy()).statistic,
        "spearman": spearmanr(
            a[:, t:bo, l:r].sum(0).flatten().numpy(), b[:, t:bo, l:r].sum(0).flatten().numpy()
        ).statistic,
    }


def test_batched_similarities_equal_scikit_image_and_scipy_pair_by_pair():
    """`similarities` groups pairs by crop shape and computes each group at once: each pair's three measures equal
    scikit-image's SSIM and scipy's Spearman on that pair alone (ties included: the maps are rounded)."""
    g = torch.Generator().manual_seed(11)
    pairs, boxes = [], []
    for k in range(9):
        a = (torch.randn(3, 20, 20, generator=g) * 4).round() / 4
        b = a + (torch.randn(3, 20, 20, generator=g) * 2).round() / 4
        pairs.append((a, b))
        boxes.append([(0, 0, 20, 20), (2, 3, 15, 11), (5, 5, 9, 12)][k % 3])
    got = similarities([a for a, _ in pairs], [b for _, b in pairs], boxes)
    for (a, b), box, mine in zip(pairs, boxes, got):
        want = _similar(a, b, box)
        assert mine == pytest.approx(want, abs=1e-12)
        assert similarity(a, b, box) == pytest.approx(mine, abs=1e-15)


@pytest.mark.parametrize("rule", ["deconvnet", "guided", "backprop"])
def test_the_cascade_equals_a_slow_reimplementation(rule):
    """Re-initialize conv3, then conv2, then conv1 of zfnet-small, each with its own `reset_parameters` under the
    same seeds, and project the unit again after each step with the slow reference: each step's similarity to
    the trained projection equals the method's, and so does the randomized model's specificity (its baseline).
    Tolerance: the two projections agree to float32 rounding (1e-5 of their maximum, as tests/test_deconvnet.py
    finds); SSIM moves by less than 1e-4 under that, and a rank correlation over 200+ pixels by at most a few swaps
    of near-equal values (1e-3)."""
    p = zfnet.pretrained()
    model = p.model
    before = {k: v.clone() for k, v in model.state_dict().items()}
    x = p.preprocess.eval_input(zdata.open_dataset("fashion-mnist-mini", "test", p.preprocess).bases[:4])
    layer, c = "conv3", 5
    ev = zfnet.evidence(p, x, layers=(layer,), channels={layer: [c]}, rules=(rule,), others=2)
    u = ev.units[0]
    y, xx = u.position
    assert cascade_layers(model, layer, tuple(x.shape[1:])) == ["conv3", "conv2", "conv1"]
    xi = x[u.image : u.image + 1]
    trained = reference_projection(model, xi, layer, c, y, xx, rule, unit=True)
    box = zfnet.receptive_field(model, xi, layer=layer).clipped_box(y, xx)
    slow = copy.deepcopy(model)
    for k, (name, step) in enumerate(zip(["conv3", "conv2", "conv1"], u.cascade[rule])):
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(ev.settings.seed + 1000 + k)
            getattr(slow, name).reset_parameters()
        again = reference_projection(slow, xi, layer, c, y, xx, rule, unit=True)
        want = _similar(trained, again, box)
        assert step["randomized"] == name
        assert step["ssim"] == pytest.approx(want["ssim"], abs=1e-4), (name, step, want)
        for m in ("spearman_abs", "spearman"):  # undefined (scipy: nan) where the randomized unit is silent
            if np.isnan(want[m]):
                assert step[m] is None, (name, m, step)
            else:
                assert step[m] == pytest.approx(want[m], abs=1e-3), (name, m, step, want)
    scale = float(again.abs().max())
    torch.testing.assert_close(u.randomized[rule], again, rtol=1e-4, atol=1e-5 * scale)
    # the baseline: the same specificity on the fully randomized model, against the other units' slow projections
    base = u.randomized_specificity[rule]
    assert base["others"] == u.specificity[rule]["others"]
    want = [
        _similar(again, reference_projection(slow, xi, layer, k, y, xx, rule, unit=True), box)["ssim"]
        for k in base["others"]
    ]
    assert base["other_units"]["ssim"] == pytest.approx(sum(want) / len(want), abs=1e-4)
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())  # the model is left as it was


# --- the causal map against a naive loop -------------------------------------------------------------------------


def _naive_drops(run, x, fill, unit, window, ys, xs):
    """The unit's value on the image minus its value with the square at each (y, x): one whole forward each."""
    base = run(x, unit)
    out = torch.zeros(len(ys), len(xs), dtype=torch.float64)
    for i, yy in enumerate(ys):
        for j, x0 in enumerate(xs):
            occluded = x.clone()
            occluded[0, :, yy : yy + window, x0 : x0 + window] = fill[:, yy : yy + window, x0 : x0 + window]
            out[i, j] = base - run(occluded, unit)
    return base, out


@pytest.mark.parametrize("engine", ["field", "incremental", "whole", "auto"])
def test_the_causal_map_equals_a_naive_loop(engine):
    """The drop of the unit's activation with the grey square at each position inside its field equals one whole
    forward per position (the Sequential run child by child), whichever way the occluded copies run, to float32
    rounding of the unit (1e-5 of it)."""
    p = zfnet.pretrained()
    model = p.model
    x = p.preprocess.eval_input(zdata.open_dataset("fashion-mnist-mini", "test", p.preprocess).bases[7:8])
    layer, c = "conv3", 11
    with torch.no_grad():
        act = features(model, x, [layer])[layer][0, c]
    y, xx = divmod(int(act.argmax()), act.shape[-1])
    rf = zfnet.receptive_field(model, x, layer=layer)
    fill = fill_input("grey", p.preprocess, x)
    ev = zfnet.evidence(p, x, at=[UnitAt(layer, c, 0, (y, xx))], window=4, stride=2, engine=engine,
                        rules=("backprop",), others=1)  # fmt: skip
    u = ev.units[0]
    ys, xs = u.causal_grid
    top, left, bottom, right = rf.clipped_box(y, xx)
    assert u.causal_window == 4 and ys[0] == max(0, top - 3) and xs[0] == max(0, left - 3)
    assert ys[-1] + 1 > min(bottom - 1, 28 - 4) - 2 and xs[-1] + 1 > min(right - 1, 28 - 4) - 2
    assert ev.causal_strategy[layer].startswith({"auto": "field"}.get(engine, engine))

    def run(img, unit):
        h = img
        with torch.no_grad():
            for name, m in model.named_children():
                h = m(h)
                if name == "relu3":
                    return float(h[0, unit[0], unit[1], unit[2]])

    base, want = _naive_drops(run, x, fill, (c, y, xx), 4, ys, xs)
    torch.testing.assert_close(u.causal, want, rtol=0, atol=1e-5 * abs(base))
    assert float(u.causal.abs().max()) > 0  # the square inside the field changes the unit


@pytest.mark.parametrize("engine", ["field", "incremental"])
def test_causal_maps_on_a_user_module_with_a_residual_addition(engine, user_code):
    """The same against a naive loop on a module with functional ReLUs and a residual addition (written below):
    the receptive-field cut and the incremental engine both follow the addition."""
    torch.manual_seed(0)
    model = importlib.import_module(user_code("evres", USER)).Res().eval()
    x = torch.rand(2, 3, 32, 32)
    layer = "b"
    with torch.no_grad():
        act = features(model, x, [layer])[layer]
    at = [UnitAt(layer, c, i, divmod(int(act[i, c].argmax()), act.shape[-1])) for i, c in ((0, 1), (1, 5), (1, 2))]
    ev = zfnet.evidence(model, x, at=at, window=3, stride=1, engine=engine, fill="mean-image", rules=("backprop",),
                        others=1)  # fmt: skip
    assert ev.causal_strategy[layer].startswith(engine)
    fill = torch.zeros(3, 32, 32)

    def run(img, unit):
        with torch.no_grad():
            h = F.relu(model.a(img))
            h = F.relu(model.b(h) + h)  # the site of b: the ReLU after the residual addition
        return float(h[0, unit[0], unit[1], unit[2]])

    for u in ev.units:
        base, want = _naive_drops(run, x[u.image : u.image + 1], fill, (u.channel, *u.position), 3, *u.causal_grid)
        assert u.activation == pytest.approx(base, rel=1e-6)
        torch.testing.assert_close(u.causal, want, rtol=0, atol=1e-5 * abs(base))


def test_the_cascades_last_step_alone_equals_the_whole_cascades_last():
    """`curve=False` re-initializes every layer up to the unit with the same draws as the whole cascade, and
    projects once: its one step equals the whole cascade's last, bit for bit."""
    p = zfnet.pretrained()
    x = p.preprocess.eval_input(zdata.open_dataset("fashion-mnist-mini", "test", p.preprocess).bases[:8])
    ch = {"conv2": [3, 9], "conv4": [1]}
    full = zfnet.evidence(p, x, layers=("conv2", "conv4"), channels=ch, rules=("guided",), others=2)
    last = zfnet.evidence(p, x, layers=("conv2", "conv4"), channels=ch, rules=("guided",), others=2, curve=False)
    for a, b in zip(full.units, last.units):
        assert len(b.cascade["guided"]) == 1 and len(a.cascade["guided"]) == {"conv2": 2, "conv4": 4}[a.layer]
        assert {k: v for k, v in a.cascade["guided"][-1].items() if k != "randomized"} == {
            k: v for k, v in b.cascade["guided"][0].items() if k != "randomized"
        }
        assert b.cascade["guided"][0]["randomized"] == ", ".join(s["randomized"] for s in a.cascade["guided"])
        assert a.specificity == b.specificity and torch.equal(a.causal, b.causal)


def test_bad_units_are_one_line_each():
    p = zfnet.pretrained()
    x = p.preprocess.eval_input(zdata.open_dataset("fashion-mnist-mini", "test", p.preprocess).bases[:2])
    for at, words in (([UnitAt("conv3", 500, 0)], "channel 500 does not exist in conv3"),
                      ([UnitAt("conv3", 1, 2)], "image 2 is not in the batch of 2"),
                      ([UnitAt("conv3", 1, 0, (9, 0))], "position (9, 0) is outside conv3's 7x7 maps"),
                      ([UnitAt("fc6", 1, 0, (0, 0))], "outside fc6's no maps")):  # fmt: skip
        with pytest.raises(zfnet.UsageError, match=words.replace("(", r"\(").replace(")", r"\)")) as e:
            zfnet.evidence(p, x, at=at)
        assert "\n" not in str(e.value)


# --- end to end ------------------------------------------------------------------------------------------------

USER = '''
import torch
import torch.nn.functional as F
from torch import nn


class Res(nn.Module):
    """Functional ReLUs and a residual addition, 32 px RGB."""

    def __init__(self, num_classes=3):
        super().__init__()
        self.a = nn.Conv2d(3, 8, 3, padding=1)
        self.b = nn.Conv2d(8, 8, 3, padding=1)
        self.c = nn.Conv2d(8, 12, 3, stride=2, padding=1)
        self.fc = nn.Linear(12, num_classes)

    def forward(self, x):
        h = F.relu(self.a(x))
        h = F.relu(self.b(h) + h)
        return self.fc(F.relu(self.c(h)).mean((2, 3)))
'''


def test_the_command_writes_scores_and_figures_on_the_embedded_model(tmp_path, capsys):
    out = tmp_path / "ev"
    assert main(["evidence", "--pretrained", "--layers", "conv1,conv3,conv5", "--units", "2", "--others", "3",
                 "--limit", "12", "--out", str(out)]) == 0  # fmt: skip
    res = json.loads((out / "evidence.json").read_text())
    assert [u["layer"] for u in res["units"]] == ["conv1", "conv1", "conv3", "conv3", "conv5", "conv5"]
    for u in res["units"]:
        assert set(u["cascade"]) == {"deconvnet", "guided", "backprop"} and u["causal"] is not None
        assert [s["randomized"] for s in u["cascade"]["guided"]][-1] == "conv1"
    assert set(res["summary"]) == {"conv1", "conv3", "conv5"} and res["fill_source"]
    for name in res["figures"].values():
        assert (out / name).is_file()
    faithful = res["faithfulness"]
    assert set(faithful) == {"occlusion", "deconvnet", "guided", "backprop"}
    for curves in faithful.values():
        assert len(curves["images"]) == 4 and len(curves["images"][0]["deletion"]) == 17
        assert set(curves["median_auc"]) == {"deletion", "insertion", "random_deletion", "random_insertion"}


def test_the_command_runs_on_resnet18_and_a_users_module(tmp_path, user_code):
    photos = tmp_path / "photos"
    noise_photos(photos, 4)
    common = ["--data", str(photos), "--limit", "4", "--units", "1", "--others", "2", "--rules", "guided,backprop"]
    out = tmp_path / "r18"
    assert main(["evidence", "--model", "torchvision:resnet18", "--input-size", "64", "--layers", "layer1,layer3",
                 *common, "--out", str(out)]) == 0  # fmt: skip
    res = json.loads((out / "evidence.json").read_text())
    assert [u["layer"] for u in res["units"]] == ["layer1", "layer3"]
    assert set(res["causal_strategy"]) == {"layer1", "layer3"} and all(u["causal"] for u in res["units"])
    name = user_code("evidence_user", USER)
    out = tmp_path / "user"
    assert main(["evidence", "--model", f"{name}:Res", "--input-size", "32", "--normalize", "none", *common,
                 "--out", str(out)]) == 0  # fmt: skip
    res = json.loads((out / "evidence.json").read_text())
    assert {u["layer"] for u in res["units"]} == {"b", "c"}  # the stage layers: after b's add and ReLU, c
    assert res["feature_maps"]["b"]["reads"] == "b -> add -> relu"


# --- deletion and insertion --------------------------------------------------------------------------------------


def _images(n: int):
    p = zfnet.pretrained()
    return p, p.preprocess.eval_input(zdata.open_dataset("fashion-mnist-mini", "test", p.preprocess).bases[:n])


def test_deletion_equals_quantus_pixel_flipping():
    """Deletion with a constant fill (0 in model-input units, `fill="mean-image"`) in 16 steps of 49 pixels is
    Quantus 0.6's `PixelFlipping(features_in_step=49, perturb_baseline=0.0)` on the same model, images, maps and
    classes (softmax on): the same p after every step, to float32 rounding of a batch-size-dependent forward."""
    import quantus

    p, x = _images(3)
    maps = torch.rand(3, 28, 28, generator=torch.Generator().manual_seed(0))  # no ties: one order for both
    res = zfnet.faithfulness(p, x, maps=maps, fill="mean-image", steps=16, random_orders=0)
    targets = np.array([im.target for im in res.images])
    metric = quantus.PixelFlipping(features_in_step=49, perturb_baseline=0.0, normalise=False, disable_warnings=True)
    theirs = metric(model=p.model, x_batch=x.numpy(), y_batch=targets, a_batch=maps[:, None].numpy(), device="cpu",
                    softmax=True, channel_first=True)  # fmt: skip
    for ours, q in zip(res.images, theirs):
        assert ours.deletion[0] > 0 and len(q) == 16
        np.testing.assert_allclose(ours.deletion[1:], q, rtol=0, atol=1e-5)


def test_insertion_and_the_random_baseline_equal_a_naive_loop():
    """Insertion (the grey image with the map's pixels put back) and the random orders' mean, against one forward
    per step written here; the areas by the trapezoid rule over the fraction of pixels."""
    p, x = _images(2)
    maps = torch.rand(2, 28, 28, generator=torch.Generator().manual_seed(1))
    res = zfnet.faithfulness(p, x, maps=maps, steps=4, random_orders=2, seed=5)
    grey = fill_input("grey", p.preprocess, x)
    g = torch.Generator().manual_seed(5)

    def prob(img, t):
        with torch.no_grad():
            return float(torch.softmax(p.model(img[None]), 1)[0, t])

    for i, curves in enumerate(res.images):
        orders = [torch.argsort(-maps[i].flatten(), stable=True)]
        orders += [torch.randperm(784, generator=g) for _ in range(2)]
        want = []
        for order in orders:
            ins, dele = [], []
            for k in range(5):
                mask = torch.zeros(784, dtype=torch.bool)
                mask[order[: round(k * 784 / 4)]] = True
                mask = mask.view(1, 28, 28)
                ins.append(prob(torch.where(mask, x[i], grey), curves.target))
                dele.append(prob(torch.where(mask, grey, x[i]), curves.target))
            want.append((dele, ins))
        np.testing.assert_allclose(curves.deletion, want[0][0], atol=1e-5)
        np.testing.assert_allclose(curves.insertion, want[0][1], atol=1e-5)
        np.testing.assert_allclose(curves.random_deletion, np.mean([w[0] for w in want[1:]], 0), atol=1e-5)
        np.testing.assert_allclose(curves.random_insertion, np.mean([w[1] for w in want[1:]], 0), atol=1e-5)
        auc = curves.to_json()["auc"]
        assert auc["insertion"] == pytest.approx(np.trapezoid(curves.insertion, [0, 0.25, 0.5, 0.75, 1.0]), abs=1e-12)


def test_a_rule_that_ran_as_the_gradient_says_so():
    """Through a SiLU the deconvnet and guided rules do not apply (footnote 1): the evidence projects with the
    gradient there and its JSON says so, per rule and layer; backprop needs no word."""
    net = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.SiLU(), nn.Conv2d(4, 4, 3, padding=1), nn.ReLU()).eval()
    x = torch.rand(2, 3, 12, 12)
    ev = zfnet.evidence(net, x, layers=("2",), units=1, others=1, fill="mean-image")
    said = ev.to_json()["rule_substituted"]
    assert set(said) == {"deconvnet", "guided"} and "projected with the gradient" in said["guided"]["2"]


def test_evidence_on_a_small_vision_transformer():
    """Token-shaped layers (torchvision's VisionTransformer, small): the units are tokens of the patch grid, their
    causal maps run as whole forwards (past the first attention layer each token sees the whole image: said), the
    deconvnet and guided rules are the gradient there (said), and the cascade names the class token's step."""
    from torchvision.models.vision_transformer import VisionTransformer

    from zfnet.pipelines.evidence import reading

    torch.manual_seed(0)
    vit = VisionTransformer(image_size=32, patch_size=8, num_layers=2, num_heads=2, hidden_dim=16, mlp_dim=32).eval()
    x = torch.randn(3, 3, 32, 32)
    ev = zfnet.evidence(vit, x, layers=("encoder.layers.encoder_layer_1",), units=2, others=2, fill="mean-image")
    layer = "encoder.layers.encoder_layer_1"
    assert "not local" in ev.causal_strategy[layer] and ev.causal_strategy[layer].startswith("whole")
    assert set(ev.substituted) == {"deconvnet", "guided"} and "gelu" in ev.substituted["guided"][layer]
    for u in ev.units:
        assert u.position is not None and 0 <= u.position[0] < 4 and u.causal is not None
        steps = [s["randomized"] for s in u.cascade["backprop"]]
        # the unit's block's last linear layer first; the class token (the model's own) and the position embedding
        # (the encoder's) too, though their modules' forwards have not ended when the unit is read
        assert steps[0] == layer + ".mlp.3" and steps[-1] == "(the model's own parameters)" and "encoder" in steps
        assert u.cascade["guided"] == u.cascade["backprop"]  # the same gradient, the same draws
    said = reading(ev.summary())
    assert said[0].startswith("With every layer up to the unit re-initialized, the pictures keep a median SSIM")
