"""The house rules of the public API: one method convention, one version, the report opens its weights once."""

from __future__ import annotations

import importlib.metadata
import inspect
import json
import os
import shutil
import subprocess
import sys

import pytest
import torch
import torch.nn.functional as F
from conftest import REPO
from torch import nn

import zfnet
from zfnet import models
from zfnet.data import InputSet
from zfnet.pretrained import folder as pretrained_folder


class UserNet(nn.Module):
    """A CNN as a user writes it: functional and in-place ReLUs, a residual addition, a concatenation."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 8, 3, padding=1)
        self.conv2 = nn.Conv2d(8, 8, 3, padding=1)
        self.conv3 = nn.Conv2d(16, 12, 3, stride=2, padding=1)
        self.fc = nn.Linear(12, 5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        a = F.relu(self.conv1(x))
        b = self.conv2(a).relu_() + a  # in-place ReLU, residual addition
        c = F.relu(self.conv3(torch.cat([a, b], 1)))  # concatenation
        return self.fc(F.adaptive_avg_pool2d(c, 1).flatten(1))


def _calls(model: nn.Module, x: torch.Tensor, layer: str, snaps):
    """One call of every public method, as the README's API section writes it; the methods that work in pixels
    (occlusion, correspondence, invariance) get the model with its preprocessing, as an opened model."""
    pp = zfnet.weights.default_preprocess(model)
    if pp.mean_image is None and pp.channel_mean is None:  # a fresh paper model: give it a mean image
        pp = pp.with_mean(torch.full((pp.channels, pp.base_size, pp.base_size), 60.0))
    opened = zfnet.opened_module(model, pp)
    return {
        "architecture": lambda: zfnet.architecture(model, x),
        "atlas": lambda: zfnet.atlas(model, x, layers=[layer], k=2),
        "correspondence": lambda: zfnet.correspondence(
            opened, x, parts={"corner": [(0, 0, 4, 4)] * len(x)}, layers=[layer], random_draws=2
        ),
        "evidence": lambda: zfnet.evidence(opened, x, layers=[layer], units=1, others=2, window=4),
        "evolution": lambda: zfnet.evolution(model, x, snapshots=snaps, layers=[layer], maps=2),
        "faithfulness": lambda: zfnet.faithfulness(opened, x, maps=x.abs().sum(1), steps=4, random_orders=1),
        "filters": lambda: zfnet.filters(model, x),
        "invariance": lambda: zfnet.invariance(
            opened,
            x,
            labels=[0] * len(x),
            transforms=["translate", "rotate"],
            values={"translate": [0, 2], "rotate": [0, 90]},
            layers=[layer],
        ),
        "occlusion": lambda: zfnet.occlusion(opened, x, window=4, stride=4, layer=layer, strategy="naive"),
        "project": lambda: zfnet.project(model, x, layer=layer, channel=1),
        "receptive_field": lambda: zfnet.receptive_field(model, x, layer=layer),
        "visualize": lambda: zfnet.visualize(opened, layer=layer, units=(0, 1), steps=4),
        "paint": lambda: zfnet.paint(opened, x[:1], mask=torch.ones(x.shape[-2:]).triu() > 0, layer=layer),
    }


@pytest.mark.parametrize("which", ["zfnet-small", "user"])
def test_every_public_method_takes_a_batch_and_returns_a_json_dict(which, tmp_path):
    torch.manual_seed(0)
    if which == "user":
        model, x, layer = UserNet().eval(), torch.randn(3, 3, 16, 16), "conv3"
    else:
        model, x, layer = models.build("zfnet-small").eval(), torch.randn(3, 1, 28, 28) * 50, "conv2"
    path = str(tmp_path / "epoch-001.safetensors")
    zfnet.weights.save_weights(model, path, None)
    calls = _calls(model, x, layer, [(1, path)])
    assert sorted(calls) == sorted(zfnet.METHODS)  # every public method is exercised
    for name, call in calls.items():
        fn = getattr(zfnet, name)
        params = list(inspect.signature(fn).parameters.values())
        assert [p.name for p in params[:2]] == ["model", "images"], name
        assert all(p.kind is p.KEYWORD_ONLY for p in params[2:] if p.kind is not p.VAR_KEYWORD), name
        result = call()
        body = result.to_json()
        assert isinstance(body, dict) and body, name
        json.dumps(body)  # JSON-ready: no tensors, no NaN tokens needed
        import matplotlib.pyplot as plt
        from matplotlib.figure import Figure

        fig = zfnet.show(result, x)  # the report's figure for it, for a notebook
        assert isinstance(fig, Figure) and fig.axes, name
        fig.canvas.draw()
        plt.close(fig)
    # occlusion on a batch: one result per image, in order
    occ = calls["occlusion"]()
    with torch.no_grad():  # each image on its own, as occlusion runs it (no batch-size rounding on near ties)
        predicted = [int(model(x[i : i + 1]).argmax()) for i in range(len(x))]
    assert len(occ) == len(x) and [r.target for r in occ] == predicted


def test_a_method_refuses_a_single_unbatched_image():
    model = models.build("zfnet-small").eval()
    for call in (
        lambda: zfnet.project(model, torch.zeros(1, 28, 28), layer="conv1", channel=0),
        lambda: zfnet.occlusion(model, torch.zeros(1, 28, 28)),
        lambda: zfnet.receptive_field(model, torch.zeros(1, 28, 28), layer="conv1"),
    ):
        with pytest.raises(zfnet.UsageError, match="batch N x C x H x W"):
            call()


def test_atlas_on_a_batch_equals_atlas_on_its_dataset():
    torch.manual_seed(1)
    model = models.build("zfnet-small").eval()
    x = torch.randn(10, 1, 28, 28) * 40
    a = zfnet.atlas(model, x, layers=["conv3"], k=3)
    b = zfnet.atlas(model, InputSet(x), layers=["conv3"], k=3)  # same batches: the same arithmetic
    assert torch.equal(a.top["conv3"].images, b.top["conv3"].images)
    torch.testing.assert_close(a.top["conv3"].values, b.top["conv3"].values)


def test_one_version():
    assert importlib.metadata.version("zfnet") == zfnet.__version__


@pytest.mark.skipif(shutil.which("strace") is None, reason="strace not installed (scripts/setup.sh test installs it)")
def test_default_report_opens_the_embedded_weights_at_most_twice(tmp_path):
    """Counted at the OS level (strace sees safetensors' own reads, which a Python audit hook does not): the
    model is opened once; the whole default report reads the weights file for the model and for Fig. 4's last
    snapshot (the model itself)."""
    weights = os.path.join(pretrained_folder(), "model.safetensors")
    log = tmp_path / "trace.txt"
    env = dict(os.environ, ZFNET_PROGRESS="0")
    # --seccomp-bpf: only the traced calls stop the process, so strace does not slow the run down
    trace = ["strace", "-f", "--seccomp-bpf", "-qq", "-e", "trace=open,openat,openat2", "-o", str(log)]
    report = ["report", "--out", str(tmp_path / "rep"), "--limit", "120", "--evolution-limit", "60", "--examples", "1",
              "--atlas-maps", "8"]  # fmt: skip
    r = subprocess.run(
        [*trace, sys.executable, "-m", "zfnet", *report], env=env, cwd=REPO, capture_output=True, text=True, timeout=600
    )
    assert r.returncode == 0, r.stderr[-2000:]
    real = os.path.realpath(weights)
    opens = [
        line for line in log.read_text().splitlines() if (weights in line or real in line) and "ENOENT" not in line
    ]
    assert 1 <= len(opens) <= 2, opens
    state = json.loads((tmp_path / "rep" / "report.json").read_text())
    assert all(e["status"] in ("done", "skipped") for e in state["stages"].values())


def test_report_from_python_on_a_users_module_and_a_folder(tmp_path):
    """`zfnet.report(module, folder)`: any nn.Module, its preprocessing given, a flat folder of photos; the module
    is left as it was (still in training mode)."""
    import numpy as np
    from PIL import Image

    from zfnet.data import Preprocess

    photos = tmp_path / "photos"
    photos.mkdir()
    rng = np.random.default_rng(0)
    for i in range(8):
        Image.fromarray(rng.integers(0, 255, (40, 48, 3), dtype=np.uint8)).save(photos / f"p{i}.png")
    torch.manual_seed(0)
    net = UserNet().train()
    before = {k: v.clone() for k, v in net.state_dict().items()}
    state = zfnet.report(
        net,
        str(photos),
        out=str(tmp_path / "rep"),
        preprocess=Preprocess.torchvision(16, 18),
        examples=2,
        progress=False,
    )
    status = {k: v["status"] for k, v in state["stages"].items()}
    assert status == {
        "model": "done",
        "atlas": "done",
        "evolution": "skipped",
        "occlusion": "done",
        "evidence": "done",
        "correspondence": "skipped",
        "invariance": "done",
        "included": "skipped",
    }, state["stages"]
    assert (tmp_path / "rep" / "index.html").is_file()
    assert (tmp_path / "rep" / "evidence" / "evidence.json").is_file()
    assert net.training and all(torch.equal(before[k], v) for k, v in net.state_dict().items())


def test_the_experiments_extra_is_optional(tmp_path, monkeypatch, capsys):
    """Issue 34: scikit-learn and mlxtend are the `experiments` extra, not dependencies; a command that needs one
    without it is one line naming the extra, before any feature is extracted."""
    import importlib.util

    import tomllib

    with open(os.path.join(REPO, "pyproject.toml"), "rb") as f:
        project = tomllib.load(f)["project"]
    deps = " ".join(project["dependencies"])
    assert "scikit-learn" not in deps and "mlxtend" not in deps
    assert any(d.startswith("scikit-learn") for d in project["optional-dependencies"]["experiments"])
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "sklearn" else real(name, *a))
    from zfnet.cli import main

    out = tmp_path / "probe"
    code = main(["layerprobe", "--pretrained", "--data", "fashion-mnist-mini", "--out", str(out), "--no-progress"])
    err = capsys.readouterr().err
    assert code == 2 and err == (
        "zfnet layerprobe: error: zfnet layerprobe's classifiers needs scikit-learn: "
        "pip install 'zfnet[experiments]' (or pip install scikit-learn)\n"
    )
    assert not os.path.isdir(out / ".features")  # refused before any feature was extracted


def test_report_from_python_raises_listing_failed_stages_after_writing_the_others(tmp_path, monkeypatch):
    """Issue 35: `zfnet.report()` fails as `zfnet report` does (exit 2) when a stage failed - after writing the
    stages that succeeded."""
    from dataclasses import replace

    from zfnet.pipelines import report as rep

    def broken(ctx):
        raise RuntimeError("injected failure")

    monkeypatch.setitem(rep.STAGES._items, "occlusion", replace(rep.STAGES["occlusion"], run=broken))
    with pytest.raises(zfnet.UsageError, match=r"1 report stage\(s\) failed \(occlusion: RuntimeError: injected"):
        zfnet.report(None, out=str(tmp_path / "rep"), only=("model", "occlusion"), progress=False)
    state = json.loads((tmp_path / "rep" / "report.json").read_text())
    assert state["stages"]["model"]["status"] == "done" and state["stages"]["occlusion"]["status"] == "failed"


def test_the_explorer_names_outputs_by_the_data_only_when_they_are_the_models():
    """Issue 35: a folder's class names are the model's outputs' names only when the counts agree (the report's
    rule); otherwise outputs keep their indices."""
    from zfnet.data.base import InputSet
    from zfnet.pipelines.explore import Explorer
    from zfnet.weights import opened_module

    net = UserNet().eval()  # 5 outputs
    opened = opened_module(net)
    three = InputSet(torch.zeros(2, 3, 16, 16), classes=["a", "b", "c"])
    five = InputSet(torch.zeros(2, 3, 16, 16), classes=["v", "w", "x", "y", "z"])
    assert Explorer(opened, three).classes is None
    assert Explorer(opened, five).classes == ["v", "w", "x", "y", "z"]
