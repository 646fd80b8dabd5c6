"""Issue 38: paint to occlude. A sequence of strokes on the embedded model, ZFNet-224 (He init), a torchvision
ResNet-18 and a user's module with functional ReLUs and a residual addition: after each stroke `p`, the top
classes and the chosen map's activity equal a whole forward of the painted image (1e-4), computed by replaying
only the stroke's rectangle; the blur against scipy's Gaussian filter; a vision transformer runs whole forwards
and says so; a mask of the wrong size is one line."""

from __future__ import annotations

import importlib

import pytest
import torch
import torch.nn.functional as F
from test_evidence import USER

import zfnet
from zfnet import models
from zfnet.layers import features
from zfnet.methods.paint import Painter, PaintSettings


def strokes(h: int, w: int) -> list[torch.Tensor]:
    """Masks as a brush makes them: a disc, a second disc beside it (the union), an erased part, a cleared mask."""
    yy, xx = torch.meshgrid(torch.arange(h), torch.arange(w), indexing="ij")

    def disc(cy, cx, r):
        return (yy - cy) ** 2 + (xx - cx) ** 2 <= r * r

    a = disc(h // 3, w // 3, max(2, h // 8))
    b = a | disc(h // 3, w // 2, max(2, h // 8))
    c = b & ~disc(h // 3, w // 3, max(1, h // 16))
    return [a, b, c, torch.zeros(h, w, dtype=torch.bool), a]


def whole(model, pp, x, mask, layer, cover):
    painted = torch.where(mask[None, None], cover, x)
    with torch.no_grad():
        probs = F.softmax(model(painted).double(), 1)[0]
        maps = features(model, painted, [layer])[layer][0]
    return probs, maps


def check(model, pp, x, layer, **given):
    painter = Painter(model, pp, x, PaintSettings(layer=layer, strategy="incremental", **given))
    assert painter.replay is not None, painter.why_whole
    probs0, _ = whole(model, pp, x, torch.zeros(x.shape[-2:], dtype=torch.bool), layer, painter.cover)
    assert painter.target == int(probs0.argmax())
    last = torch.zeros(x.shape[-2:], dtype=torch.bool)
    for mask in strokes(*x.shape[-2:]):
        r = painter.apply(mask)
        probs, maps = whole(model, pp, x, mask, layer, painter.cover)
        assert r.strategy == "exact incremental"
        assert r.p == pytest.approx(float(probs[r.target]), abs=1e-4)
        for t in r.top:
            assert t["p"] == pytest.approx(float(probs[t["class"]]), abs=1e-4)
        assert [t["class"] for t in r.top] == probs.topk(len(r.top)).indices.tolist() or _near_tie(probs, r.top)
        scale = float(maps.abs().max()) + 1e-12
        assert (r.maps - maps[r.activity["map"]]).abs().max() <= 1e-4 * scale
        assert r.activity["value"] == pytest.approx(float(maps[r.activity["map"]].max()), abs=1e-4 * scale)
        changed = (mask != last).nonzero()
        if len(changed):  # only the rectangle around the pixels the stroke changed was replayed
            t, l = changed.min(0).values.tolist()
            b, rr = (changed.max(0).values + 1).tolist()
            assert r.changed == [t, l, b - t, rr - l]
        last = mask
    return painter


def _near_tie(probs, top) -> bool:
    ranked = [t["p"] for t in top]
    return all(abs(a - b) < 1e-4 for a, b in zip(ranked, sorted(ranked, reverse=True)))


def test_paint_equals_a_whole_forward_on_the_embedded_model_and_zfnet_224():
    p = zfnet.pretrained()
    ds = zfnet.data.open_dataset("fashion-mnist-mini", "test", p.preprocess)
    x = p.preprocess.eval_input(ds.bases[3:4])
    check(p.model.eval(), p.preprocess, x, "conv5")
    check(p.model.eval(), p.preprocess, x, "conv3", blur=1.5, top=3)
    torch.manual_seed(0)
    zf = models.build("zfnet").eval()
    pp = zfnet.weights.default_preprocess(zf)
    x = torch.randn(1, 3, 224, 224)
    check(zf, pp, x, "conv5")


def test_paint_equals_a_whole_forward_on_resnet18_and_a_users_residual_module(user_code):
    from torchvision.models import resnet18

    torch.manual_seed(0)
    net = resnet18().eval()
    pp = zfnet.weights.default_preprocess(net)
    check(net, pp, torch.randn(1, 3, 96, 96), "layer3")
    name = user_code("paintuser", USER)
    torch.manual_seed(0)
    user = importlib.import_module(name).Res().eval()
    painter = check(user, zfnet.weights.default_preprocess(user), torch.randn(1, 3, 32, 32), "b")
    assert painter.why_whole == ""


def test_the_blur_is_a_gaussian_filter_and_the_grey_is_the_fill():
    from scipy.ndimage import gaussian_filter

    p = zfnet.pretrained()  # a model with a per-pixel mean image: the blur is of the pixels, not of the input
    net, pp = p.model.eval(), p.preprocess
    x = pp.eval_input(zfnet.data.open_dataset("fashion-mnist-mini", "test", pp).bases[4:5])
    painter = Painter(net, pp, x, PaintSettings(blur=1.7, strategy="whole"))
    pixels = pp.to_pixels(x)[0, 0].double().numpy()
    r = int(3 * 1.7 + 0.5)  # both truncate the kernel at this radius; torchvision mirrors the edges
    blurred = gaussian_filter(pixels, sigma=1.7, mode="mirror", truncate=r / 1.7)
    want = pp.from_pixels(torch.from_numpy(blurred)[None, None])
    scale = float(x.abs().max())  # float32 pixels (0-255) through two affine maps: ~1e-6 of the input's range
    assert (painter.cover - want.float()).abs().max() < 1e-5 * scale
    assert (painter.cover - x).abs().max() > 0.1 * scale  # and it is not the image itself
    net = models.build("zfnet-small").eval()
    grey = Painter(net, pp, x, PaintSettings(strategy="whole"))
    fill = zfnet.pixels.resolve_fill(net, "grey", pp, x, "test")[0]
    assert torch.equal(grey.cover[0], fill.to(x))


def test_a_transformer_paints_with_whole_forwards_and_says_so_and_bad_masks_are_one_line():
    from torchvision.models.vision_transformer import VisionTransformer

    torch.manual_seed(0)
    vit = VisionTransformer(image_size=32, patch_size=8, num_layers=2, num_heads=2, hidden_dim=16, mlp_dim=32).eval()
    pp = zfnet.weights.default_preprocess(vit)
    x = torch.randn(1, 3, 32, 32)
    mask = torch.zeros(32, 32, dtype=torch.bool)
    mask[4:12, 4:20] = True
    r = zfnet.paint(zfnet.opened_module(vit, pp), x, mask=mask, layer="encoder.layers.encoder_layer_1")
    probs, _ = whole(vit, pp, x, mask, "encoder.layers.encoder_layer_1", Painter(vit, pp, x, PaintSettings(
        layer="encoder.layers.encoder_layer_1", strategy="whole")).cover)  # fmt: skip
    assert r.strategy == "whole forwards" and "tokens" in r.why_whole
    assert r.p == pytest.approx(float(probs[r.target]), abs=1e-5)
    net = models.build("zfnet-small").eval()
    with pytest.raises(zfnet.UsageError, match=r"^the mask is 27x28, the image 28x28; paint a mask"):
        zfnet.paint(net, torch.randn(1, 1, 28, 28), mask=torch.zeros(27, 28), preprocess=pp_of(net))
    with pytest.raises(zfnet.UsageError, match="cannot be painted incrementally"):
        zfnet.paint(zfnet.opened_module(vit, pp), x, mask=mask, layer="encoder.layers.encoder_layer_1",
                    strategy="incremental")  # fmt: skip


def pp_of(net):
    return zfnet.weights.default_preprocess(net)


def test_auto_turns_to_whole_forwards_when_a_replay_is_slower_and_stays_exact():
    """auto replays the first stroke and, when that took longer than a whole forward (forced here by a whole
    forward priced at 0 s), paints on with whole forwards, saying why; every answer equals a whole forward."""
    p = zfnet.pretrained()
    x = p.preprocess.eval_input(zfnet.data.open_dataset("fashion-mnist-mini", "test", p.preprocess).bases[8:9])
    painter = Painter(p.model.eval(), p.preprocess, x, PaintSettings(layer="conv4"))
    assert painter.replay is not None
    painter.whole_seconds = 0.0
    masks = strokes(28, 28)
    first = painter.apply(masks[0])
    assert first.strategy == "exact incremental" and painter.replay is None
    second = painter.apply(masks[1])
    assert second.strategy == "whole forwards" and second.why_whole.startswith("whole forwards are faster here")
    probs, _ = whole(p.model, p.preprocess, x, masks[1], "conv4", painter.cover)
    assert second.p == pytest.approx(float(probs[second.target]), abs=1e-5)
