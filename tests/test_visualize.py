"""Issue 37: feature visualization by optimization, against direct computations - the image of a known spectrum,
the colour matrix's square, the transforms at rest, the Gram-matrix diversity - bit-for-bit reproducibility, the
optimized image against the best dataset image on the embedded model, and the command on a torchvision ResNet-18,
a user's module with functional ReLUs and a residual addition, and a small vision transformer's tokens."""

from __future__ import annotations

import importlib
import json
import math

import numpy as np
import pytest
import torch
from conftest import noise_photos
from test_evidence import USER  # the user module with functional ReLUs and a residual addition

import zfnet
from zfnet.cli import main
from zfnet.methods.visualize import (
    SIGMA,
    FourierImage,
    color_matrix,
    gram_dissimilarity,
    parse_units,
    random_transforms,
    spectrum_scale,
)


def test_the_spectrum_scale_is_one_over_frequency_to_the_decay():
    size, decay = 12, 1.3
    got = spectrum_scale(size, decay).double()
    for ky in range(size):
        for kx in range(size // 2 + 1):
            fy = (ky if ky <= (size - 1) // 2 else ky - size) / size  # numpy's fftfreq
            f = math.hypot(fy, kx / size)
            assert float(got[ky, kx]) == pytest.approx(1 / max(f, 1 / size) ** decay, rel=1e-6)


def test_an_image_made_from_a_known_spectrum_is_its_cosine():
    """One frequency (ky, kx) of amplitude a in the parameter gives, by the inverse real FFT (orthonormal), the
    image 2 a s(k) / S cos(2 pi (ky y + kx x) / S) / SIGMA - written out here, not by an FFT."""
    size, ky, kx, a = 16, 3, 2, 0.7
    spec = torch.zeros(1, 1, size, size // 2 + 1, 2)
    spec[0, 0, ky, kx, 0] = a
    img = FourierImage(spec, spectrum_scale(size, 1.0), size).linear()[0, 0].double()
    s = float(spectrum_scale(size, 1.0)[ky, kx])
    yy, xx = np.meshgrid(np.arange(size), np.arange(size), indexing="ij")
    want = 2 * a * s / size * np.cos(2 * np.pi * (ky * yy + kx * xx) / size) / SIGMA
    assert np.allclose(img.numpy(), want, atol=1e-6)


def test_the_colour_matrix_squared_is_the_colour_covariance():
    """M M^T equals the pixels' colour covariance (numpy's) over the largest column norm of U sqrt(S) squared -
    the normalization Lucid uses, so M's largest column has norm 1; one channel: the identity."""
    g = torch.Generator().manual_seed(0)
    base = torch.rand(64, 1, 8, 8, generator=g)
    pixels = torch.cat(
        [base, 0.7 * base + 0.3 * torch.rand(64, 1, 8, 8, generator=g), torch.rand(64, 1, 8, 8, generator=g)], 1
    )
    m, why = color_matrix(pixels)
    cov = np.cov(pixels.transpose(0, 1).reshape(3, -1).double().numpy())
    square = (m.double() @ m.double().T).numpy()
    k = cov[0, 0] / square[0, 0]
    assert np.allclose(square * k, cov, rtol=1e-4, atol=1e-7) and "covariance" in why
    assert float(m.norm(dim=0).max()) == pytest.approx(1.0, abs=1e-6)
    assert torch.equal(color_matrix(pixels[:, :1])[0], torch.eye(1))


def test_transforms_at_rest_are_the_identity_and_padding_is_cut_away():
    g = torch.Generator().manual_seed(1)
    x = torch.rand(2, 3, 20, 20, generator=g)
    for pad in (0, 5):
        out = random_transforms(x, pad, 0, 0.0, 0.0, torch.Generator().manual_seed(2))
        assert torch.allclose(out, x, atol=1e-5)


def test_gram_diversity_is_minus_the_cosine_of_the_gram_matrices():
    a = torch.rand(1, 4, 3, 3)
    same = torch.cat([a, a, 2 * a])  # equal Gram matrices up to scale: cosine 1
    assert torch.allclose(gram_dissimilarity(same, [[0, 1, 2]]), torch.full((3,), -1.0), atol=1e-6)
    x = torch.zeros(2, 2, 1, 1)
    x[0, 0], x[1, 1] = 1.0, 1.0  # orthogonal Gram matrices: cosine 0
    assert torch.allclose(gram_dissimilarity(x, [[0, 1]]), torch.zeros(2), atol=1e-7)


def test_units_parse_and_bad_units_are_one_line():
    assert parse_units("0-3,7,2") == (0, 1, 2, 3, 7)
    p = zfnet.pretrained()
    for kw, words in (({"units": (500,)}, "unit 500 does not exist in conv5 (96 maps"),
                      ({"layer": "fc6", "objective": "neuron"}, "has no positions"),
                      ({"layer": "conv5", "objective": "neuron", "position": (9, 0)}, "position must")):  # fmt: skip
        with pytest.raises(zfnet.UsageError, match=words.replace("(", r"\(")) as e:
            zfnet.visualize(p, steps=1, **kw)
        assert "\n" not in str(e.value)


def test_same_seed_same_image_bit_for_bit():
    p = zfnet.pretrained()
    a = zfnet.visualize(p, layer="conv3", units=(4, 9), steps=12, diversity=0.5, per_unit=2, tv=0.01, l2=0.01)
    b = zfnet.visualize(p, layer="conv3", units=(4, 9), steps=12, diversity=0.5, per_unit=2, tv=0.01, l2=0.01)
    c = zfnet.visualize(p, layer="conv3", units=(4, 9), steps=12, diversity=0.5, per_unit=2, tv=0.01, l2=0.01, seed=1)
    assert torch.equal(a.images, b.images) and a.values == b.values
    assert not torch.equal(a.images, c.images)
    assert a.units == [4, 4, 9, 9] and not torch.equal(a.images[0], a.images[1])  # diversity: two different images


def test_the_arithmetic_is_said_and_every_value_is_measured_in_float32():
    """The steps run in bfloat16 autocast where asked (auto: where the processor multiplies it natively) and on
    channels-last inputs where the model takes them; the JSON says which. Whatever the steps' arithmetic, each
    value is the float32 channel mean of the returned image's maps through `features`, bit for bit. A model that
    views its maps as contiguous keeps its layout and still runs."""
    from torch import nn

    from zfnet.layers import features
    from zfnet.runtime import fast_bfloat16

    p = zfnet.pretrained()
    runs = {k: zfnet.visualize(p, layer="conv4", units=(1, 3), steps=6, precision=k) for k in ("bfloat16", "float32")}
    assert runs["bfloat16"].arithmetic.startswith("bfloat16 autocast")
    assert runs["float32"].arithmetic.startswith("float32")
    assert all(r.arithmetic.endswith("channels-last") for r in runs.values())
    assert runs["bfloat16"].to_json()["arithmetic"] == runs["bfloat16"].arithmetic
    for r in runs.values():
        with torch.no_grad():
            maps = features(p.model, p.preprocess.from_pixels(r.images), ["conv4"])["conv4"]
        assert r.values == maps.mean((2, 3))[[0, 1], [1, 3]].tolist()
    assert not torch.equal(runs["bfloat16"].images, runs["float32"].images)
    auto = zfnet.visualize(p, layer="conv4", units=(1,), steps=2)
    assert auto.arithmetic.startswith("bfloat16") == fast_bfloat16(torch.device("cpu"))
    # the weights: channels-last during the steps, given back as they were; left alone where a callback lets
    # other work use the model between steps (the explorer)
    w = p.model.conv2.weight
    before, seen = w.data_ptr(), []
    zfnet.visualize(p, layer="conv4", units=(1,), steps=2, callback=lambda *_: seen.append(w.is_contiguous()))
    assert seen == [True, True] and w.data_ptr() == before
    with pytest.MonkeyPatch.context() as mp:  # a step's forward sees channels-last weights without a callback
        import zfnet.methods.visualize as vis

        real = vis.features
        mp.setattr(vis, "features", lambda *a: seen.append(w.is_contiguous()) or real(*a))
        zfnet.visualize(p, layer="conv4", units=(1,), steps=1)
    assert False in seen[2:] and w.data_ptr() == before and w.is_contiguous()

    class Viewing(nn.Module):  # views its map as contiguous before the layer: a channels-last input cannot go through
        def __init__(self) -> None:
            super().__init__()
            self.conv, self.fc = nn.Conv2d(3, 4, 3), nn.Linear(4 * 222 * 222, 5)

        def forward(self, x):
            h = torch.relu(self.conv(x))
            return self.fc(h.view(h.shape[0], -1))

    torch.manual_seed(0)
    net = Viewing().eval()
    v = zfnet.visualize(zfnet.opened_module(net, zfnet.weights.default_preprocess(net)), layer="fc", steps=2)
    assert "channels-last" not in v.arithmetic and len(v.values) == 5


def test_accentuation_starts_at_the_image_and_stays_near_it():
    """Feature accentuation: the parameter made from a real image gives that image back; optimized with a strong
    distance penalty, the image moves little while the unit rises above its value on the start."""
    p = zfnet.pretrained()
    from zfnet import data as zdata

    ds = zdata.open_dataset("fashion-mnist-mini", "test", p.preprocess)
    x = p.preprocess.eval_input(ds.bases[:2])
    start = (p.preprocess.display(x) / 255.0).clamp(0.01, 0.99)
    back = FourierImage.of(start, torch.eye(1), 1.0).pixels(torch.eye(1))
    assert torch.allclose(back, start, atol=1e-4)
    v = zfnet.visualize(p, p.preprocess.from_pixels(start * 255.0), layer="conv5", units=(5, 7), steps=30,
                        accentuate=5.0)  # fmt: skip
    assert v.start_values is not None and all(a > b for a, b in zip(v.values, v.start_values))
    moved = (v.images / 255.0 - start).abs().mean()
    assert float(moved) < 0.2


def test_the_command_on_the_embedded_model_beats_the_best_dataset_image(tmp_path):
    out = tmp_path / "vis"
    assert main(["visualize", "--pretrained", "--layer", "conv5", "--units", "0-7", "--steps", "96", "--limit",
                 "500", "--out", str(out)]) == 0  # fmt: skip
    res = json.loads((out / "visualize.json").read_text())
    assert [u["unit"] for u in res["units"]] == list(range(8)) and (out / "grid.png").is_file()
    for u in res["units"]:
        assert (out / u["files"][0]).is_file() and u["best_dataset_value"] > 0
    assert res["beats_dataset"] >= 7 and res["color_decorrelation"] == "identity: one channel"
    # resumable: a rerun with the same settings redoes nothing
    before = (out / res["units"][0]["files"][0]).stat().st_mtime_ns
    assert main(["visualize", "--pretrained", "--layer", "conv5", "--units", "0-7", "--steps", "96", "--limit",
                 "500", "--out", str(out)]) == 0  # fmt: skip
    assert (out / res["units"][0]["files"][0]).stat().st_mtime_ns == before


def test_other_models_resnet18_a_user_module_and_vit_tokens(tmp_path, user_code):

    photos = tmp_path / "photos"
    noise_photos(photos, 6)
    out = tmp_path / "r18"
    assert main(["visualize", "--model", "torchvision:resnet18", "--input-size", "64", "--data", str(photos),
                 "--layer", "layer2", "--units", "0-3", "--steps", "6", "--out", str(out)]) == 0  # fmt: skip
    res = json.loads((out / "visualize.json").read_text())
    assert len(res["units"]) == 4 and "covariance of 6 images" in res["color_decorrelation"]
    name = user_code("visuser", USER)
    out = tmp_path / "user"
    assert main(["visualize", "--model", f"{name}:Res", "--input-size", "32", "--normalize", "none", "--layer", "b",
                 "--units", "1,2", "--objective", "neuron", "--steps", "6", "--out", str(out)]) == 0  # fmt: skip
    assert len(json.loads((out / "visualize.json").read_text())["units"]) == 2
    torch.manual_seed(0)
    user = importlib.import_module(name).Res().eval()
    pp = zfnet.weights.default_preprocess(user)
    logit = zfnet.visualize(zfnet.opened_module(user, pp), objective="logit", units=(2,), steps=4)
    assert logit.layer == "fc" and len(logit.values) == 1
    from torchvision.models.vision_transformer import VisionTransformer

    vit = VisionTransformer(image_size=32, patch_size=8, num_layers=2, num_heads=2, hidden_dim=16, mlp_dim=32).eval()
    v = zfnet.visualize(zfnet.opened_module(vit, zfnet.weights.default_preprocess(vit)),
                        layer="encoder.layers.encoder_layer_1", units=(0, 5), steps=4, objective="neuron")  # fmt: skip
    assert len(v.values) == 2 and v.images.shape == (2, 3, 32, 32)


def test_the_panel_gets_a_column_of_optimized_images_and_the_report_draws_it(tmp_path):
    """Fig. 2's panel with `optimized`: a third column per map, as tall as the patches, showing the image; without
    it the panel is as before. `zfnet report --visualize` draws it for the report's atlas."""
    from zfnet.render.figures import layer_panel

    g = torch.Generator().manual_seed(0)
    blocks = [(c, torch.rand(9, 1, 8, 8, generator=g), torch.rand(9, 1, 8, 8, generator=g) * 255) for c in (2, 5)]
    plain = np.asarray(layer_panel(blocks, scale=1))
    grey = {2: torch.full((1, 20, 20), 200.0), 5: torch.full((1, 20, 20), 60.0)}
    both = np.asarray(layer_panel(blocks, scale=1, optimized=grey))
    # each cell: 28 px projections, 4 px, 28 px patches, then 4 px and the 28 px optimized image (1 px border)
    assert both.shape[1] - plain.shape[1] == 4 * 32 and both.shape[0] == plain.shape[0]
    assert np.array_equal(both[28:56, 10:70], plain[28:56, 10:70])  # the first map's projections and patches
    for cell, value in ((0, 200), (1, 60)):
        x = 10 + cell * (92 + 10) + 64  # gap, cell pitch (28 + 4 + 28 + 4 + 28, then the gap), the third part
        inner = both[28 + 3 : 28 + 25, x + 3 : x + 25]
        assert (inner == value).all(), (cell, np.unique(inner))
    out = tmp_path / "rep"
    assert main(["report", "--only", "model,atlas", "--layers", "conv5", "--limit", "60", "--atlas-maps", "1",
                 "--visualize", "--no-evidence", "--out", str(out)]) == 0  # fmt: skip
    m = json.loads((out / "atlas" / "manifest.json").read_text())
    panel = m["panel_maps"]["conv5"]
    assert sorted(int(c) for c in m["visualized"]["conv5"]["maps"]) == panel
    assert "visualize" in json.loads((out / "report.json").read_text())["settings"]
