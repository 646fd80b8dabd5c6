"""Occlusion sensitivity (Sec. 4.2, Fig. 6): positions, a hand-worked case, the grey square pasted into the raw
pixels and preprocessed (a reference written here) on the embedded model and a torchvision ResNet, incremental
inference equal to whole forwards at every position with a per-pixel fill on the paper's models and
torchvision ones, Captum's Occlusion where the definitions coincide, SSIM against scikit-image, the command's
files, and no hook left behind."""

from __future__ import annotations

import json

import pytest
import torch
import torch.nn.functional as F
from conftest import hook_count
from torch import nn

import zfnet
from zfnet import data as zdata
from zfnet import models
from zfnet.cli import main
from zfnet.errors import UsageError
from zfnet.methods.occlusion import OcclusionResult, deviation, occlusion, positions, ssim
from zfnet.weights import default_preprocess, with_input


def test_positions_cover_the_edges():
    assert positions(28, 8, 3) == [0, 3, 6, 9, 12, 15, 18, 20]  # 3 does not divide 20: the flush 20 is added
    assert positions(224, 32, 8) == list(range(0, 193, 8)) and len(positions(224, 32, 8)) == 25
    assert positions(10, 10, 4) == [0]
    with pytest.raises(UsageError):
        positions(10, 11, 1)


def test_hand_worked_activity():
    """All-ones 3x3 filter (zero padding 1) on a 6x6 image of ones: the map's total is sum_ij n_i n_j with
    n = (2, 3, 3, 3, 3, 2), i.e. 16^2 = 256; a 2x2 square of zeros in a corner removes 4 + 6 + 6 + 9 = 25."""
    conv = nn.Conv2d(1, 1, 3, padding=1, bias=False)
    nn.init.ones_(conv.weight)
    model = nn.Sequential(conv, nn.ReLU(), nn.Flatten(), nn.Linear(36, 3))
    x = torch.ones(1, 6, 6)
    for mode in ("exact", "naive"):
        r = occlusion(model, x[None], window=2, stride=2, layer="conv1", strategy=mode, fill="mean-image")[0]
        assert r.base_activity == 256.0
        assert float(r.activity[0, 0]) == pytest.approx(231.0) and float(r.activity[2, 2]) == pytest.approx(231.0)
        assert float(r.activity[1, 1]) == pytest.approx(256.0 - 9 * 4)  # the centre: each pixel in 9 windows


def grey_square_reference(model, pp, bases, label, window, stride):
    """p(label) per occluder position, from the definition: a uniform square of the training mean pixel (over
    the centre crop, rounded to a whole 8-bit value) pasted into each uint8 base square inside that crop, then
    preprocessed with `pp` and run through the whole model."""
    o = pp.center_offset
    crop = pp.mean_image[:, o : o + pp.input_size, o : o + pp.input_size] if pp.mean_image is not None else None
    grey = torch.tensor([round(float(v)) for v in crop.double().mean((1, 2))]) if crop is not None \
        else torch.tensor([round(v * 255) for v in pp.channel_mean])  # fmt: skip
    ys = xs = positions(pp.input_size, window, stride)
    out = torch.zeros(len(ys), len(xs))
    for i, y in enumerate(ys):
        for j, x in enumerate(xs):
            b = bases.clone()
            b[:, :, o + y : o + y + window, o + x : o + x + window] = grey.to(torch.uint8).view(-1, 1, 1)
            with torch.no_grad():
                out[i, j] = F.softmax(model(pp.eval_input(b)), 1)[0, label]
    return out, grey


def test_grey_square_pasted_in_pixels_on_the_embedded_model():
    """The Done-when check of the grey square: the map equals the reference at every position, the square's
    pixels are the training mean pixel, and it is not the mean image (the old fill) - which moves the result."""
    p = zfnet.pretrained()
    ds = zdata.open_dataset("fashion-mnist-mini", "test", p.preprocess)
    k = next(i for i in range(len(ds)) if int(ds.labels[i]) == 9)  # an ankle boot
    bases, label = ds.bases[k : k + 1], int(ds.labels[k])
    want, grey = grey_square_reference(p.model, p.preprocess, bases, label, 8, 2)
    x = p.preprocess.eval_input(bases)
    for mode in ("exact", "naive"):
        r = occlusion(p, x, target=label, window=8, stride=2, strategy=mode)[0]
        # exact recomputes regions in float32 where the reference runs whole forwards: rounding only
        torch.testing.assert_close(r.prob, want, rtol=1e-4, atol=1e-5)
        assert r.fill == "grey" and r.fill_pixels == grey.float().tolist()
    assert grey.tolist() == [73]  # Fashion-MNIST's mean pixel (72.9); the 32 px padding does not dilute it
    old = occlusion(p.model, x, target=label, window=8, stride=2, fill="mean-image")[0]
    assert float((old.prob - want).abs().max()) > 0.05  # the mean image is another occluder
    with pytest.raises(UsageError, match="mean image is not known"):
        occlusion(p.model, x, target=label, window=8, stride=2)  # a bare paper model: its grey is unknown


def test_grey_square_on_a_torchvision_resnet_photo():
    """ResNet-18 (residual additions: incremental inference through them) on a real photo at 64 px: the grey is
    ImageNet's mean pixel (124, 116, 104) and the map equals the pasted-pixels reference."""
    from skimage import data as skdata

    model = models.build("torchvision:resnet18").eval()
    pp = with_input(default_preprocess(model), 64)
    bases = pp.bases([skdata.astronaut()])
    want, grey = grey_square_reference(model, pp, bases, 0, 16, 12)
    assert grey.tolist() == [124, 116, 104]
    r = occlusion(model, pp.eval_input(bases), target=0, window=16, stride=12, preprocess=pp, strategy="exact")[0]
    assert r.strategy == "exact" and not r.fallback
    torch.testing.assert_close(r.prob, want, rtol=1e-4, atol=1e-6)


CASES = [  # (model, input size, window, stride)
    ("zfnet-small", 28, 8, 3),
    ("zfnet-small", 28, 5, 2),
    ("zfnet-small", 28, 28, 1),
    ("zfnet-small-64", 64, 16, 5),
    ("zfnet-small-rgb", 32, 7, 4),
    ("zfnet", 224, 32, 48),
    ("alexnet", 224, 40, 61),
    ("torchvision:vgg11", 64, 16, 8),
    ("torchvision:vgg11", 224, 32, 96),  # the adaptive pool meets a 7 x 7 map: the identity
    ("torchvision:alexnet", 96, 24, 24),
]


@pytest.mark.parametrize("name,size,window,stride", CASES)
def test_exact_equals_naive_at_every_position(name, size, window, stride):
    torch.manual_seed(0)
    model = models.build(name).eval() if name.startswith("torchvision") else models.build(name, seed=0).eval()
    channels = models.model_input_shape(model)[0]
    x = torch.randn(channels, size, size) * (1.0 if "small" in name or "torchvision" in name else 60.0)
    # a per-pixel mean image: the grey square's fill differs at every pixel in model-input units
    pp = zdata.Preprocess(size, size, channels, "pad", 255.0 if "small" not in name else 1.0)
    pp = pp.with_mean(torch.rand(channels, size, size) * 200)
    fill = "grey" if window != 5 else 90.0
    exact = occlusion(model, x[None], window=window, stride=stride, fill=fill, preprocess=pp, strategy="exact")[0]
    naive = occlusion(model, x[None], window=window, stride=stride, fill=fill, preprocess=pp, strategy="naive")[0]
    assert exact.strategy == "exact" and naive.strategy == "naive"
    assert exact.channel == naive.channel and exact.target == naive.target
    scale = float(naive.activity.abs().max())
    torch.testing.assert_close(exact.activity, naive.activity, rtol=1e-5, atol=1e-5 * scale)
    torch.testing.assert_close(exact.prob, naive.prob, rtol=1e-5, atol=1e-6)
    assert torch.equal(exact.top_class, naive.top_class)
    # the unoccluded image's own forward gives the base values
    with torch.no_grad():
        p = F.softmax(model(x[None]), 1)[0]
    assert exact.base_prob == pytest.approx(float(p[exact.target]), rel=1e-5)


def test_approx_is_exact_without_a_threshold_and_reports_its_deviation():
    model = models.build("alexnet", seed=0).eval()
    x = torch.randn(3, 224, 224) * 60
    exact = occlusion(model, x[None], window=32, stride=64, strategy="exact", fill="mean-image")[0]
    kw = dict(window=32, stride=64, strategy="approx", fill="mean-image", precision="float32")  # no approximation left
    full = occlusion(model, x[None], tau=1.0, drill=None, **kw)[0]
    torch.testing.assert_close(full.prob, exact.prob, rtol=1e-5, atol=1e-6)
    drilled = occlusion(model, x[None], tau=1.0, drill=1.0, **kw)[0]  # every position
    torch.testing.assert_close(drilled.prob, exact.prob, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(drilled.activity, exact.activity, rtol=1e-5, atol=1e-3)
    capped = occlusion(
        model, x[None], window=32, stride=64, strategy="approx", tau=0.3, compare_exact=True, fill="mean-image"
    )[0]
    d = capped.deviation
    assert set(d) == {
        "max_abs_prob", "max_rel_prob", "max_rel_activity", "ssim_prob", "ssim_activity", "top_class_agreement"
    }  # fmt: skip
    assert d["max_abs_prob"] == pytest.approx(float((capped.prob - exact.prob).abs().max()))


def test_ssim_equals_scikit_image():
    """Our SSIM against scikit-image's defaults (uniform 7 x 7 window over the positions where it fits, sample
    covariances, K1 0.01, K2 0.03), at the data range of the map's own span as Fig. 6 plots it."""
    from skimage.metrics import structural_similarity

    g = torch.Generator().manual_seed(0)
    for shape in ((9, 9), (25, 13)):
        a = torch.rand(shape, generator=g, dtype=torch.float64) * 0.2 + 0.5
        b = (a + 0.03 * torch.rand(shape, generator=g, dtype=torch.float64)).clamp(0, 1)
        span = float(a.max() - a.min())
        theirs = structural_similarity(a.numpy(), b.numpy(), win_size=7, data_range=span)
        assert ssim(a, b, data_range=span) == pytest.approx(theirs, abs=1e-12)
        # on a scale that flatters: the same maps at data range 1 look more alike than they are plotted
        assert ssim(a, b, data_range=1.0) > ssim(a, b, data_range=span)


def test_deviation_measures_the_maps_as_plotted():
    """A p(target) map in a narrow band (0.50-0.52) and a copy with noise of a quarter of that band: SSIM at the
    map's own range, not at 1.0 (which would call any two maps in a 0.02 band alike)."""
    from skimage.metrics import structural_similarity

    g = torch.Generator().manual_seed(1)
    exact_p = 0.5 + 0.02 * torch.rand(12, 12, generator=g)
    approx_p = exact_p + 0.005 * torch.randn(12, 12, generator=g)

    def result(p):
        return OcclusionResult(
            torch.arange(12), torch.arange(12), p * 10, p, torch.zeros(12, 12, dtype=torch.long), p,
            torch.zeros(1, 4, 4), "conv5", 0, None, 0, 0.5, 1.0, 0, 4, 1, "grey", "exact",
        )  # fmt: skip

    d = deviation(result(approx_p), result(exact_p))
    span = float(exact_p.max() - exact_p.min())
    want = structural_similarity(approx_p.double().numpy(), exact_p.double().numpy(), win_size=7, data_range=span)
    assert d["ssim_prob"] == pytest.approx(want, abs=1e-9)
    assert d["ssim_prob"] < 0.9 < ssim(approx_p, exact_p, data_range=1.0)
    assert d["max_rel_prob"] == pytest.approx(float((approx_p - exact_p).abs().max()) / span)


def test_p_true_equals_captums_occlusion():
    """With non-overlapping windows (stride = window) Captum's Occlusion attributes to each pixel
    p(x) - p(x with its window occluded): our p(true) map read back from it."""
    from captum.attr import Occlusion

    model = models.build("zfnet-small", seed=0).eval()
    x = torch.randn(1, 1, 28, 28)
    ours = occlusion(model, x[:1], target=3, window=7, stride=7, fill="mean-image", strategy="exact")[0]
    attr = Occlusion(lambda t: F.softmax(model(t), 1)).attribute(
        x, sliding_window_shapes=(1, 7, 7), strides=(1, 7, 7), baselines=0.0, target=3, perturbations_per_eval=16
    )
    from_captum = ours.base_prob - attr[0, 0, ::7, ::7]
    torch.testing.assert_close(ours.prob, from_captum, rtol=1e-4, atol=1e-6)


def test_no_hook_left_and_model_unchanged_also_after_an_error():
    model = models.build("zfnet-small", seed=0)
    model.train()
    x = torch.randn(1, 28, 28)
    with torch.no_grad():
        before = model.eval()(x[None])
    model.train()
    occlusion(model, x[None], window=8, stride=4, fill="mean-image")
    with pytest.raises(UsageError):
        occlusion(model, x[None], window=8, stride=4, target=99, fill="mean-image")
    with pytest.raises(UsageError):
        occlusion(model, x[None], window=8, stride=4, layer="fc6", fill="mean-image")
    assert hook_count(model) == 0 and model.training and all(m.training for m in model.modules())
    with torch.no_grad():
        assert torch.equal(model.eval()(x[None]), before)


def test_command_writes_figure_and_json(tmp_path, capsys):
    code = main(
        [
            "occlusion",
            "--pretrained",
            "--data",
            "fashion-mnist",
            "--split",
            "test",
            "--index",
            "0",
            "--index",
            "2",
            "--window",
            "8",
            "--stride",
            "4",
            "--out",
            str(tmp_path / "occ"),
        ]
    )
    out, err = capsys.readouterr()
    assert code == 0, err
    result = json.loads((tmp_path / "occ" / "occlusion.json").read_text())
    assert [r["label_name"] for r in result["images"]] == ["Ankle boot", "Trouser"]
    first = result["images"][0]
    assert len(first["prob"]) == len(first["ys"]) == 6  # 0, 4, ..., 20
    assert (
        first["settings"]["strategy"] == "auto"
        and first["strategy"] in ("exact", "naive")
        and first["estimated_speedup"] > 0
    )
    from PIL import Image

    img = Image.open(tmp_path / "occ" / first["figure"])
    assert img.width > 4 * img.height  # five panels side by side
    assert json.loads(out)["figures"] == ["occlusion-0.png", "occlusion-1.png"]
    code = main(
        [
            "occlusion",
            "--pretrained",
            "--data",
            "fashion-mnist",
            "--index",
            "0",
            "--window",
            "40",
            "--out",
            str(tmp_path / "bad"),
        ]
    )
    assert code == 2 and "does not fit" in capsys.readouterr().err


def test_approx_takes_the_change_in_low_precision_and_keeps_what_did_not_change():
    """bfloat16 approx computes each conv and linear layer as its kept float32 output plus the layer applied to
    the change alone. An occluder that changes nothing (the image is the fill everywhere) gives the unoccluded
    probabilities bit for bit at every position, which bfloat16 applied to the activations themselves would
    not; on a real image the maps keep their structure (SSIM as plotted) and the top class everywhere."""
    model = models.build("zfnet-small", seed=0).eval()
    zero = torch.zeros(1, 1, 28, 28)
    r = occlusion(model, zero, window=8, stride=4, fill="mean-image", layer="conv5", strategy="approx", tau=1.0,
                  drill=None, precision="bfloat16")[0]  # fmt: skip
    assert r.settings.precision == "bfloat16" and "bfloat16" in r.describe()
    assert torch.equal(r.prob, torch.full_like(r.prob, r.base_prob))
    assert torch.equal(r.activity, torch.full_like(r.activity, r.base_activity))
    x = torch.randn(1, 1, 28, 28, generator=torch.Generator().manual_seed(3))
    kw = dict(window=8, stride=2, fill="mean-image", layer="conv5")
    exact = occlusion(model, x, strategy="exact", **kw)[0]
    low = occlusion(model, x, strategy="approx", tau=1.0, drill=None, precision="bfloat16", **kw)[0]
    d = deviation(low, exact)
    assert d["ssim_prob"] > 0.95 and d["top_class_agreement"] == 1.0
    with pytest.raises(UsageError, match="precision"):
        occlusion(model, x, strategy="approx", precision="float8", **kw)
