"""Issue 35, item 2: token-shaped layers read as maps - a ViT's (N, 1 + g*g, C) blocks as C maps of g x g (the
class token dropped and said), a Swin stage's (N, H, W, C) as C maps of H x W - through the atlas, occlusion and
the default layers; projections through GELU or attention refuse the deconvnet rule in one line. Random weights,
small inputs (the models' own size is a construction argument)."""

from __future__ import annotations

import math

import pytest
import torch
import torchvision

import zfnet
from zfnet.cli import main
from zfnet.errors import UsageError
from zfnet.layers import sites, stage_layers


def _vit():
    torch.manual_seed(0)
    return torchvision.models.vit_b_16(image_size=32).eval()


def _by_hand_tokens(model, x, block):
    """The block's output computed by running the encoder's parts in the test, as grids: N x C x 2 x 2."""
    with torch.no_grad():
        t = model._process_input(x)
        t = torch.cat([model.class_token.expand(x.shape[0], -1, -1), t], 1)
        t = t + model.encoder.pos_embedding
        for k, layer in enumerate(model.encoder.layers):
            t = layer(t)
            if k == block:
                break
    patches = t[:, 1:, :]  # the class token dropped
    return patches.transpose(1, 2).reshape(x.shape[0], -1, 2, 2)


def test_vit_blocks_are_read_as_maps_and_the_atlas_top_values_are_their_maxima():
    model = _vit()
    x = torch.randn(4, 3, 32, 32)
    layers = stage_layers(model, (3, 32, 32))
    assert layers == [f"encoder.layers.encoder_layer_{k}" for k in (0, 4, 7, 11)]  # evenly spaced, the last kept
    scan = zfnet.atlas(model, x, layers=["encoder.layers.encoder_layer_4"], k=1)
    ref = _by_hand_tokens(model, x, 4)
    assert scan.shapes["encoder.layers.encoder_layer_4"] == (768, 2, 2)
    assert torch.equal(scan.top["encoder.layers.encoder_layer_4"].values[0], ref.flatten(2).amax(2).amax(0))
    read = scan.to_json()["feature_maps"]["encoder.layers.encoder_layer_4"]
    assert "1 leading token(s) dropped" in read["layout"] and read["rectified"] is False and "gelu" in read["not_relu"]


def test_swin_stages_are_channels_last_maps():
    torch.manual_seed(0)
    model = torchvision.models.swin_t().eval()
    x = torch.randn(2, 3, 64, 64)
    assert stage_layers(model, (3, 64, 64))[:3] == ["features.1", "features.3", "features.5"]
    scan = zfnet.atlas(model, x, layers=["features.3"], k=1)
    with torch.no_grad():
        ref = model.features[:4](x).permute(0, 3, 1, 2)  # N x H x W x C -> C maps
    assert scan.shapes["features.3"] == (192, 8, 8)
    torch.testing.assert_close(scan.top["features.3"].values[0], ref.flatten(2).amax(2).amax(0), rtol=0, atol=0)
    assert "channels-last" in scan.to_json()["feature_maps"]["features.3"]["layout"]


def test_occlusion_and_projection_on_a_vit_say_what_ran():
    model = _vit()
    x = torch.randn(1, 3, 32, 32)
    r = zfnet.occlusion(model, x, window=8, stride=8, strategy="exact")[0]
    assert r.layer == "encoder.layers.encoder_layer_11"  # the default: the top layer
    assert r.strategy == "naive" and "tokens" in r.fallback  # said, not silently changed
    assert r.activity.shape == (4, 4) and torch.isfinite(r.activity).all()
    assert "gradient" in r.to_json()["projection_rule_note"]  # panel (c): the rule does not apply, said
    refusal = r"defined for ReLU networks .* reached through multi_head_attention_forward, gelu: pass rule='backprop'"
    with pytest.raises(UsageError, match=refusal):
        zfnet.project(model, x, layer="encoder.layers.encoder_layer_11", channel=0)
    p = zfnet.project(model, x, layer="encoder.layers.encoder_layer_11", channel=0, rule="backprop")
    assert p.images.shape == x.shape and float(p.images.abs().sum()) > 0


def test_timm_vit_tokens_and_its_own_input_size():
    timm = pytest.importorskip("timm")
    model = timm.create_model("vit_tiny_patch16_224", pretrained=False, img_size=32).eval()
    assert zfnet.models.model_input_shape(model) == (3, 32, 32)
    s = sites(model, ["blocks.3"], torch.zeros(1, 3, 32, 32))["blocks.3"]
    assert s.layout == "tokens" and s.prefix == model.num_prefix_tokens == 1


def test_a_fixed_size_model_at_another_size_is_one_line(capsys):
    assert main(["layers", "--model", "torchvision:vit_b_16", "--input-size", "64"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "does not run on 3x64x64 input" in err and "--input-size 224" in err, err


def test_a_token_patch_is_the_whole_image_with_the_tokens_region_kept():
    from zfnet.methods.atlas import token_region

    image = torch.arange(2 * 8 * 8, dtype=torch.float32).view(2, 8, 8) + 1
    out = token_region(image, grid=4, y=1, x=2)  # token (1, 2) of a 4 x 4 grid: rows 2..3, cols 4..5
    assert torch.equal(out[:, 2:4, 4:6], image[:, 2:4, 4:6])
    outside = torch.ones(8, 8, dtype=torch.bool)
    outside[2:4, 4:6] = False
    assert torch.equal(out[:, outside], image[:, outside] * 0.25)


def test_other_activations_refuse_the_deconvnet_rule_too():
    """MobileNet-V3's hard-swish and sigmoid gates: the deconvnet rule is not defined there either (footnote 1);
    a ResNet, all ReLU, keeps it."""
    torch.manual_seed(0)
    mobile = torchvision.models.mobilenet_v3_small().eval()
    x = torch.randn(1, 3, 64, 64)
    with pytest.raises(UsageError, match=r"reached through hardswish"):
        zfnet.project(mobile, x, layer="features.2", channel=0)
    assert zfnet.project(mobile, x, layer="features.2", channel=0, rule="backprop").images.shape == x.shape
    resnet = torchvision.models.resnet18().eval()
    assert sites(resnet, ["layer4"], x)["layer4"].not_relu == ()
    assert zfnet.project(resnet, x, layer="layer2", channel=0).rule == "deconvnet"


def test_vit_b16_blocks_are_indexed_and_visualized(tmp_path):
    """ViT-B/16 (its 12 blocks, at 32 px, random weights) through the activation index and feature visualization:
    the index's maxima of a block equal the maxima of its token grids computed by hand (float32); visualize runs
    on a block's tokens in either arithmetic and says which; the layout probe keeps channels-last inputs."""
    pytest.importorskip("pyarrow")
    pytest.importorskip("duckdb")
    from conftest import noise_photos

    from zfnet import data as zdata
    from zfnet.pipelines.index import IndexSettings, build_index, open_index
    from zfnet.settings import Run

    model = _vit()
    opened = zfnet.opened_module(model, zfnet.weights.default_preprocess(model))
    assert opened.preprocess.input_size == 32
    noise_photos(tmp_path / "photos", 6, size=32)
    ds = zdata.open_dataset(f"folder:{tmp_path / 'photos'}", "all", opened.preprocess)
    block = "encoder.layers.encoder_layer_4"
    build_index(opened, ds, str(tmp_path / "idx"), IndexSettings(layers=(block,), dtype="float32"), Run(batch_size=4))
    images, got = open_index(str(tmp_path / "idx")).values(block)
    assert images.tolist() == list(range(6))
    x = opened.preprocess.eval_input(torch.stack([ds.base(i) for i in range(6)]))  # by hand, in batches of 4
    want = torch.cat([_by_hand_tokens(model, x[i : i + 4], 4).flatten(2).amax(2) for i in (0, 4)])
    assert torch.equal(torch.from_numpy(got.copy()), want)
    for precision in ("bfloat16", "float32"):
        v = zfnet.visualize(opened, layer=block, units=(0, 7), steps=2, precision=precision)
        assert v.images.shape == (2, 3, 32, 32) and v.arithmetic.startswith(precision)
        assert v.arithmetic.endswith("channels-last") and all(map(math.isfinite, v.values))


def test_a_timm_vit_block_is_visualized():
    """Feature visualization on a timm model's tokens (issue 37: timm too): its own preprocessing and input size,
    a block read as maps, one image per unit with a finite float32 value."""
    timm = pytest.importorskip("timm")
    torch.manual_seed(0)
    model = timm.create_model("vit_tiny_patch16_224", pretrained=False, img_size=32).eval()
    opened = zfnet.opened_module(model, zfnet.weights.default_preprocess(model))
    v = zfnet.visualize(opened, layer="blocks.3", units=(1, 2), steps=3)
    assert v.images.shape == (2, 3, 32, 32) and all(map(math.isfinite, v.values))
    assert v.arithmetic.endswith("channels-last")
