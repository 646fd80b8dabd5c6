"""Correspondence (arXiv Sec. 4.3) and feature invariance: the sign-change measure against a slow reference
written here from the definition, hand-worked values, identity checks, the commands' files, no hook left."""

from __future__ import annotations

import itertools
import json
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
    x = p.preprocess.eval_input(ds.bases[idx])
    parts = {k: v[:4] for k, v in spec["parts"].items()}
    return p, x, parts


def test_delta_equals_the_definition_on_the_real_model(boots):
    p, x, parts = boots
    res = correspondence(p.model, x, parts=parts, layers=("conv5", "fc7"), random_draws=3, seed=1)
    for layer in ("conv5", "fc7"):
        with torch.no_grad():
            base = [features(p.model.eval(), x[i : i + 1], [layer])[layer].flatten().tolist() for i in range(4)]
        for name, boxes in parts.items():
            eps = []
            for i, (y0, x0, y1, x1) in enumerate(boxes):  # a fresh forward per masked image
                m = x[i : i + 1].clone()
                m[:, :, y0:y1, x0:x1] = 0.0
                with torch.no_grad():
                    f = features(p.model, m, [layer])[layer].flatten().tolist()
                eps.append([a - b for a, b in zip(base[i], f)])
            mean, std = slow_delta(eps)
            assert res.delta[layer][name] == pytest.approx(mean, abs=1e-9)
            assert res.std[layer][name] == pytest.approx(std, abs=1e-9)
    assert len(res.random_boxes) == 3 and "random" in res.delta["conv5"]
    sizes = {(b[2] - b[0], b[3] - b[1]) for b in res.random_boxes}
    assert sizes == {(6, 6)}  # the parts' median size


def test_invariance_identity_and_transforms(boots):
    p, x, _ = boots
    labels = [9, 9, 9, 9]
    for t, ident in (("translate", 0), ("scale", 1.0), ("rotate", 0)):
        res = invariance(
            p.model, x, labels=labels, transforms=[t], values={t: [ident, ident]}, layers=("conv1", "fc7")
        ).curve(t)
        assert float(res.distance["conv1"].abs().max()) == 0 and float(res.distance["fc7"].abs().max()) == 0
        with torch.no_grad():
            plain = F.softmax(p.model(x), 1)[:, 9]
        torch.testing.assert_close(res.prob[:, 0], plain)
    # exact transformations where they are exact: 90 degrees is rot90, a translation is a shift with fill
    torch.testing.assert_close(transform_images(x, "rotate", 90), torch.rot90(x, 1, (-2, -1)), atol=1e-4, rtol=0)
    shifted = transform_images(x, "translate", 3, fill=-1.0)
    assert torch.equal(shifted[:, :, 3:], x[:, :, :-3]) and bool((shifted[:, :, :3] == -1.0).all())
    res = invariance(
        p.model, x, labels=labels, transforms=["rotate"], values={"rotate": [0, 90]}, layers=("conv1", "fc7")
    ).curves[0]
    with torch.no_grad():
        f = features(p.model, torch.rot90(x, 1, (-2, -1)), ["fc7"])["fc7"].flatten(1)
        f0 = features(p.model, x, ["fc7"])["fc7"].flatten(1)
    torch.testing.assert_close(res.distance["fc7"][:, 1], (f - f0).norm(dim=1), rtol=1e-3, atol=1e-3)


def test_no_hook_left_also_after_errors(boots):
    p, x, parts = boots
    p.model.train()
    with pytest.raises(UsageError, match="not inside"):
        correspondence(p.model, x, parts={"bad": [(0, 0, 40, 4)] * 4})
    with pytest.raises(UsageError, match="does not exist"):
        invariance(p.model, x, labels=[99] * 4, transforms=["rotate"], values={"rotate": [10]})
    correspondence(p.model, x, parts=parts, random_draws=1)
    invariance(p.model, x, labels=[9] * 4, transforms=["scale"], values={"scale": [1.2]})
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
