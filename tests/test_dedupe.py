"""Overlap removal (Sec. 5.2 footnote): planted duplicates (resized, re-encoded, lightly cropped) are all found
and nothing else passes the threshold; the streaming top-k equals a brute-force search; every data reader honours
the exclusion list."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from zfnet import data as zdata
from zfnet.cli import main
from zfnet.experiments.dedupe import descriptors, match


def _photo(rng, h=96, w=120) -> np.ndarray:
    """A natural-ish image: smooth noise at several scales, RGB uint8."""
    x = torch.zeros(1, 3, h, w)
    for s in (3, 8, 24):
        x += F.interpolate(
            torch.from_numpy(rng.standard_normal((1, 3, s, s)).astype(np.float32)),
            size=(h, w),
            mode="bilinear",
            align_corners=False,
        )
    x = (x - x.min()) / (x.max() - x.min()) * 255
    return x[0].permute(1, 2, 0).round().byte().numpy()


@pytest.fixture(scope="module")
def planted(tmp_path_factory):
    rng = np.random.default_rng(0)
    root = tmp_path_factory.mktemp("dd")
    a, b = root / "a", root / "b"
    os.makedirs(a)
    os.makedirs(b)
    photos = [_photo(rng) for _ in range(40)]
    for i, p in enumerate(photos):
        Image.fromarray(p).save(a / f"a{i:02d}.png")
    planted = {}
    for j, i in enumerate(range(0, 30, 3)):  # 10 planted copies of A images, three kinds of change
        img = Image.fromarray(photos[i])
        if j % 3 == 0:
            img = img.resize((90, 72), Image.BILINEAR)  # resized
        elif j % 3 == 1:
            img.save(b / "tmp.jpg", quality=70)  # re-encoded
            img = Image.open(b / "tmp.jpg").convert("RGB")
            os.remove(b / "tmp.jpg")
        else:
            img = img.crop((4, 3, 116, 93))  # lightly cropped (about 3% a side)
        name = f"copy{j:02d}.png"
        img.save(b / name)
        planted[name] = f"a{i:02d}.png"
    for j in range(10):  # and 10 images that are in no way in A
        Image.fromarray(_photo(rng)).save(b / f"new{j:02d}.png")
    return str(a), str(b), planted


def test_planted_duplicates_are_found_and_nothing_else(planted, tmp_path, capsys):
    a, b, want = planted
    assert (
        main(
            [
                "dedupe",
                f"folder:{a}",
                f"folder:{b}",
                "--split-a",
                "all",
                "--split-b",
                "all",
                "--workers",
                "0",
                "--block",
                "7",
                "--out",
                str(tmp_path / "dd"),
            ]
        )
        == 0
    )
    capsys.readouterr()
    res = json.loads((tmp_path / "dd" / "dedupe.json").read_text())
    found = {p["b_id"]: p["a_id"] for p in res["pairs"]}
    assert found == want
    excluded = [l for l in (tmp_path / "dd" / "exclude.txt").read_text().splitlines() if not l.startswith("#")]
    assert sorted(excluded) == sorted(want.values())
    assert (tmp_path / "dd" / "pairs.png").is_file() and (tmp_path / "dd" / "scores.png").is_file()
    # every reader honours the exclusion list
    pp = zdata.for_model(64, 3)
    ds = zdata.open_dataset(f"folder:{a}", "all", pp, exclude=str(tmp_path / "dd" / "exclude.txt"))
    assert len(ds) == 30 and not set(ds.image_id(i) for i in range(len(ds))) & set(want.values())


def test_streaming_topk_equals_brute_force():
    g = torch.Generator().manual_seed(0)
    da = F.normalize(torch.randn(103, 16, generator=g), dim=1)
    db = F.normalize(torch.randn(37, 16, generator=g), dim=1)
    ia = torch.arange(103) + 1000
    m = match(((da[s : s + 10], ia[s : s + 10]) for s in range(0, 103, 10)), db, torch.arange(37), k=3)
    full = db @ da.t()
    top = full.topk(3, dim=1)
    torch.testing.assert_close(m.scores, top.values.t())
    assert torch.equal(m.a_index, (top.indices + 1000).t()) and m.comparisons == 103 * 37


def test_ties_go_to_the_lower_a_index_within_and_across_blocks():
    """Exact duplicates in A score the same against B: the documented rule keeps the lower A index first,
    whether the copies share a block or not (torch.topk's own tie order is unspecified)."""
    base = torch.eye(20)  # one-hot descriptors: every score is exactly 1 or 0, whatever the summation order
    da = base.clone()
    for dup, orig in ((13, 2), (5, 2), (17, 9), (10, 9), (11, 9)):  # copies later in A, in other blocks and in one
        da[dup] = base[orig]
    db = base[[2, 9]]
    for block in (4, 7, 20):
        m = match(((da[s : s + block], torch.arange(20)[s : s + block]) for s in range(0, 20, block)), db,
                  torch.arange(2), k=3)  # fmt: skip
        assert m.a_index[:, 0].tolist() == [2, 5, 13][:3] and m.a_index[:, 1].tolist() == [9, 10, 11]
        assert bool((m.scores > 1 - 1e-6).all())


def test_descriptor_is_normalized_correlation():
    g = torch.Generator().manual_seed(1)
    x = torch.randint(0, 256, (2, 1, 32, 32), generator=g, dtype=torch.uint8)
    d = descriptors(x, 16)
    small = F.adaptive_avg_pool2d(x.float(), 16).flatten(1)
    small = small - small.mean(1, keepdim=True)
    want = float((small[0] * small[1]).sum() / (small[0].norm() * small[1].norm()))
    assert float(d[0] @ d[1]) == pytest.approx(want, abs=1e-6)
    brighter = (x[:1].float() * 0.5 + 60).byte()  # brightness and contrast do not matter
    assert float(descriptors(brighter, 16)[0] @ d[0]) > 0.999
    assert float(descriptors(torch.full((1, 1, 32, 32), 7, dtype=torch.uint8), 16).abs().max()) == 0  # flat


def test_exclude_on_the_commands(tmp_path, capsys):
    ex = tmp_path / "ex.txt"
    ex.write_text("# two test images out\nfashion-mnist/test/00000\nfashion-mnist/test/00001\n")
    assert (
        main(
            [
                "evaluate",
                "--pretrained",
                "--data",
                "fashion-mnist",
                "--split",
                "test",
                "--limit",
                "10",
                "--exclude",
                str(ex),
                "--workers",
                "0",
            ]
        )
        == 0
    )
    assert json.loads(capsys.readouterr().out)["images"] == 10  # the first 10 after the two left out
    pp = zdata.for_model(28, 1)
    ds = zdata.open_dataset("fashion-mnist", "test", pp, exclude=str(ex))
    assert len(ds) == 9998 and ds.image_id(0) == "fashion-mnist/test/00002"
    assert torch.equal(ds.bases[0], zdata.open_dataset("fashion-mnist", "test", pp).bases[2])
    assert main(["evaluate", "--pretrained", "--data", "fashion-mnist", "--exclude", str(tmp_path / "no.txt")]) == 2
