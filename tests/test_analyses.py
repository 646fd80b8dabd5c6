"""Correspondence (arXiv Sec. 4.3) and feature invariance: the sign-change measure against a slow reference
written here from the definition with the grey mask painted into the raw pixels, the random control's placement
and spread, the transformations against raw-pixel and pixel-by-pixel references, the commands' files, no hook
left."""

from __future__ import annotations

import itertools
import json
import math
import statistics

import pytest
import torch
import torch.nn.functional as F
from conftest import hook_count

import zfnet
from zfnet import data as zdata
from zfnet.cli import main
from zfnet.errors import UsageError
from zfnet.layers import features
from zfnet.methods.correspondence import correspondence, sign_change
from zfnet.methods.invariance import invariance, transform_images
from zfnet.pipelines.analyses import read_parts
from zfnet.pretrained import folder as pretrained_folder


def slow_delta(eps: list[list[float]]) -> tuple[float, float]:
    """The definition, entry by entry: mean and std over ordered pairs i != j of the fraction of entries whose
    signs (-1, 0, +1) differ."""

    def sgn(v):
        return (v > 0) - (v < 0)

    vals = []
    for i, j in itertools.permutations(range(len(eps)), 2):
        d = len(eps[i])
        vals.append(sum(sgn(a) != sgn(b) for a, b in zip(eps[i], eps[j])) / d)
    return statistics.mean(vals), statistics.stdev(vals)


def test_sign_change_hand_worked():
    eps = torch.tensor([[1.0, -1.0, 0.0], [1.0, 1.0, 0.0], [-1.0, -1.0, 0.0]])
    pairs = sign_change(eps)
    # (0,1): 1 of 3 differ; (0,2): 1 of 3; (1,2): 2 of 3 - each twice (ordered pairs)
    assert sorted(pairs.tolist()) == pytest.approx(sorted([1 / 3, 1 / 3, 1 / 3, 1 / 3, 2 / 3, 2 / 3]))
    assert float(pairs.mean()) == pytest.approx(4 / 9)
    assert slow_delta(eps.tolist())[0] == pytest.approx(4 / 9)


@pytest.fixture(scope="module")
def boots():
    p = zfnet.pretrained()
    spec = read_parts(f"{pretrained_folder()}/parts-ankle-boot.json")
    ds = zdata.open_dataset("fashion-mnist", "test", p.preprocess)
    idx = spec["images"][:4]
    bases = ds.bases[idx]
    x = p.preprocess.eval_input(bases)
    parts = {k: v[:4] for k, v in spec["parts"].items()}
    return p, x, parts, bases, spec["object"][:4]


def grey_masked(p, bases, i, box) -> torch.Tensor:
    """Image i with `box` (model-input pixels) painted with the training mean pixel in its uint8 base square,
    then preprocessed: the definition of the grey mask, independent of zfnet.pixels."""
    o, s = p.preprocess.center_offset, p.preprocess.input_size
    grey = round(float(p.preprocess.mean_image[:, o : o + s, o : o + s].double().mean()))
    b = bases[i : i + 1].clone()
    y0, x0, y1, x1 = box
    b[:, :, o + y0 : o + y1, o + x0 : o + x1] = grey
    return p.preprocess.eval_input(b)


def reference_eps(p, x, bases, layer, boxes):
    """e_i = features(image i) - features(image i with its box grey), one fresh forward per image."""
    eps = []
    for i, box in enumerate(boxes):
        with torch.no_grad():
            f0 = features(p.model.eval(), x[i : i + 1], [layer])[layer].flatten()
            f = features(p.model, grey_masked(p, bases, i, box), [layer])[layer].flatten()
        eps.append((f0 - f).tolist())
    return eps


def test_delta_equals_the_definition_on_the_real_model(boots):
    p, x, parts, bases, _ = boots
    res = correspondence(p, x, parts=parts, layers=("conv5", "fc7"), random_draws=3, seed=1)
    for layer in ("conv5", "fc7"):
        for name, boxes in parts.items():
            mean, std = slow_delta(reference_eps(p, x, bases, layer, boxes))
            assert res.delta[layer][name] == pytest.approx(mean, abs=1e-9)
            assert res.std[layer][name] == pytest.approx(std, abs=1e-9)
    assert res.fill == "grey" and res.fill_pixels == [73.0]


def test_random_parts_lie_on_each_object_and_spread_over_pairs(boots):
    """The control: each image its own box of the parts' size inside its object box, and Delta +- std the mean
    and spread over image pairs of each pair's mean over the draws (recomputed here from the definition)."""
    p, x, parts, bases, objects = boots
    res = correspondence(p, x, parts=parts, objects=objects, layers=("conv5",), random_draws=4, seed=3)
    assert len(res.random_boxes) == 4 and all(len(d) == 4 for d in res.random_boxes)
    for draw in res.random_boxes:
        for (y0, x0, y1, x1), (oy0, ox0, oy1, ox1) in zip(draw, objects):
            assert (y1 - y0, x1 - x0) == (6, 6)  # the parts' median size
            assert oy0 <= y0 and y1 <= oy1 and ox0 <= x0 and x1 <= ox1
    assert any(len({b for b in draw}) > 1 for draw in res.random_boxes)  # not one position for all images
    per_draw = []
    for draw in res.random_boxes:
        eps = reference_eps(p, x, bases, "conv5", draw)
        per_draw.append(
            {(i, j): statistics.mean(
                (a > 0) - (a < 0) != (b > 0) - (b < 0) for a, b in zip(eps[i], eps[j]))
             for i, j in itertools.permutations(range(4), 2)}
        )  # fmt: skip
    pair_means = [statistics.mean(d[k] for d in per_draw) for k in per_draw[0]]
    assert res.delta["conv5"]["random"] == pytest.approx(statistics.mean(pair_means), abs=1e-9)
    assert res.std["conv5"]["random"] == pytest.approx(statistics.stdev(pair_means), abs=1e-9)
    # without object boxes: the hull of the named parts, grown to the part size
    hull = correspondence(p, x, parts=parts, layers=("conv5",), random_draws=2, seed=3)
    assert hull.region_source == "parts"
    for i, (y0, x0, y1, x1) in enumerate(hull.regions):
        named = [parts[k][i] for k in parts]
        assert (y0, x0) == (min(b[0] for b in named), min(b[1] for b in named))
        assert (y1, x1) == (max(b[2] for b in named), max(b[3] for b in named))


def test_random_parts_on_the_object_mask_cover_half_object_pixels(boots):
    """Issue 35: with the object's pixels (a boot on black: the non-black pixels, as the pipeline derives them)
    every random box lies in the object box and is at least half object; the boxes alone are not (some are
    mostly background), which is what the mask is for."""
    from zfnet.pipelines.analyses import object_masks

    p, x, parts, bases, objects = boots
    masks = object_masks(p, x)
    assert masks is not None and masks.shape == (4, 28, 28)
    res = correspondence(p, x, parts=parts, objects=objects, object_masks=masks, layers=("conv5",), random_draws=8)
    assert res.region_source.startswith("object+mask (0 of 4")
    plain = correspondence(p, x, parts=parts, objects=objects, layers=("conv5",), random_draws=8)

    def share(box, i):
        y0, x0, y1, x1 = box
        return float(masks[i, y0:y1, x0:x1].float().mean())

    for draw in res.random_boxes:
        for i, (box, obj) in enumerate(zip(draw, objects)):
            assert share(box, i) >= 0.5
            assert obj[0] <= box[0] and box[2] <= obj[2] and obj[1] <= box[1] and box[3] <= obj[3]
    assert min(share(b, i) for d in plain.random_boxes for i, b in enumerate(d)) < 0.5


def slow_transform(img: torch.Tensor, transform: str, value: float, fill: float) -> torch.Tensor:
    """Scale / rotate one H x W pixel image about its centre from the definition, pixel by pixel: each output
    pixel centre (i + 0.5, j + 0.5) mapped back to the source by the inverse transform, bilinear between the
    four nearest source pixel centres, a neighbour outside the image counting as `fill`."""
    h, w = img.shape
    out = torch.empty(h, w, dtype=torch.float64)

    def at(r: int, c: int) -> float:
        return float(img[r, c]) if 0 <= r < h and 0 <= c < w else fill

    for i in range(h):
        for j in range(w):
            u, v = i + 0.5 - h / 2, j + 0.5 - w / 2  # from the centre, y down
            if transform == "scale":
                su, sv = u / value, v / value
            else:  # counter-clockwise on screen by `value` degrees: the source is the output rotated back
                a = math.radians(value)
                su, sv = math.cos(a) * u + math.sin(a) * v, -math.sin(a) * u + math.cos(a) * v
            r, c = su + h / 2 - 0.5, sv + w / 2 - 0.5
            r0, c0 = math.floor(r), math.floor(c)
            fr, fc = r - r0, c - c0
            out[i, j] = (
                at(r0, c0) * (1 - fr) * (1 - fc)
                + at(r0, c0 + 1) * (1 - fr) * fc
                + at(r0 + 1, c0) * fr * (1 - fc)
                + at(r0 + 1, c0 + 1) * fr * fc
            )
    return out


def test_transforms_act_on_pixels_against_references(boots):
    """translate: the raw uint8 pixels shifted, uncovered rows grey, then preprocessed - p(true) equal to the
    method's at every shift (the Done-when check); scale and rotate against `slow_transform` on the pixels."""
    p, x, _, bases, _ = boots
    pp, o = p.preprocess, p.preprocess.center_offset
    grey = round(float(pp.mean_image[:, o : o + 28, o : o + 28].double().mean()))
    shifts = [-5, -2, 0, 3, 7]
    res = invariance(p, x, labels=[9] * 4, transforms=["translate"], values={"translate": shifts}).curve("translate")
    for k, dy in enumerate(shifts):
        crop = bases[:, :, o : o + 28, o : o + 28].clone()
        moved = torch.full_like(crop, grey)
        if dy >= 0:
            moved[:, :, dy:] = crop[:, :, : 28 - dy]
        else:
            moved[:, :, :dy] = crop[:, :, -dy:]
        b = bases.clone()
        b[:, :, o : o + 28, o : o + 28] = moved
        with torch.no_grad():
            want = F.softmax(p.model(pp.eval_input(b)), 1)[:, 9]
        # the method takes the float input back to pixels: ~1e-5 px of rounding against these exact integers
        torch.testing.assert_close(res.prob[:, k], want, rtol=1e-4, atol=1e-5)
    assert float(res.distance["fc7"][:, shifts.index(0)].abs().max()) == 0.0
    pixels = pp.to_pixels(x[:1]).double()
    for t, v in (("scale", 1.5), ("scale", 0.6), ("rotate", 30.0), ("rotate", 90.0)):
        got = pp.to_pixels(transform_images(x[:1], t, v, preprocess=pp))[0, 0].double()
        want = slow_transform(pixels[0, 0], t, v, float(grey))
        torch.testing.assert_close(got, want, atol=1e-3, rtol=0)  # float32 grid_sample vs float64 loops


def test_no_hook_left_also_after_errors(boots):
    p, x, parts, _, _ = boots
    p.model.train()
    with pytest.raises(UsageError, match="not inside"):
        correspondence(p.model, x, parts={"bad": [(0, 0, 40, 4)] * 4})
    with pytest.raises(UsageError, match="does not exist"):
        invariance(p, x, labels=[99] * 4, transforms=["rotate"], values={"rotate": [10]})
    with pytest.raises(UsageError, match="mean image is not known"):
        invariance(p.model, x, labels=[9] * 4, transforms=["rotate"], values={"rotate": [10]})
    correspondence(p, x, parts=parts, random_draws=1)
    invariance(p, x, labels=[9] * 4, transforms=["scale"], values={"scale": [1.2]})
    assert hook_count(p.model) == 0 and p.model.training
    p.model.eval()


def test_commands_write_tables_and_figures(tmp_path, capsys):
    assert main(["correspondence", "--pretrained", "--random-draws", "2", "--out", str(tmp_path / "c")]) == 0
    out = json.loads((tmp_path / "c" / "correspondence.json").read_text())
    assert set(out["delta"]["conv5"]) == {"toe", "heel", "shaft opening", "random"} and len(out["images"]) == 12
    md = (tmp_path / "c" / "correspondence.md").read_text()
    assert "| toe |" in md and "0.067 ± 0.007" in md  # ours and the paper's
    assert (tmp_path / "c" / "correspondence.png").stat().st_size > 10_000
    assert (
        main(
            [
                "invariance",
                "--pretrained",
                "--data",
                "fashion-mnist",
                "--split",
                "test",
                "--index",
                "0",
                "--index",
                "2",
                "--transforms",
                "translate,rotate",
                "--out",
                str(tmp_path / "i"),
            ]
        )
        == 0
    )
    inv = json.loads((tmp_path / "i" / "invariance.json").read_text())
    assert [t["transform"] for t in inv["transforms"]] == ["translate", "rotate"]
    assert inv["transforms"][0]["values"] == [-8, -5, -2, -1, 0, 1, 2, 5, 8]  # the paper's +-60 px of 224, scaled
    assert (tmp_path / "i" / "invariance.png").is_file()
    capsys.readouterr()
    bad = tmp_path / "bad.json"
    bad.write_text(
        json.dumps(
            {
                "data": "fashion-mnist",
                "split": "test",
                "images": [0, 23],
                "parts": {"toe": [[0, 0, 6, 6], [20, 20, 40, 26]]},
            }
        )
    )
    assert main(["correspondence", "--pretrained", "--parts", str(bad), "--out", str(tmp_path / "x")]) == 2
    err = capsys.readouterr().err
    assert "not inside" in err and len(err.strip().splitlines()) == 1
