"""Sec. 3 training: recipe, feature scale clipping, evaluation, exact resume after SIGKILL, torchrun."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import pytest
import torch
import torch.nn.functional as F
from conftest import REPO, run_cli, torchrun_errors

from zfnet import data as zdata
from zfnet import models
from zfnet.errors import UsageError
from zfnet.io import load_tensors, safetensors_metadata
from zfnet.pipelines.train import train as train_run
from zfnet.recipe import PAPER_SNAPSHOTS, Recipe, RunOptions, resolve, snapshot_epochs
from zfnet.train import clip_filters, evaluate, fit
from zfnet.weights import open_model

TINY = dict(
    model="zfnet-small", data="synthetic", val_split="val", epochs=2, batch_size=32, limit_train=128, limit_val=64
)


def _run(out) -> RunOptions:
    return RunOptions(out=str(out), workers=0, threads=1)


def test_recipe_defaults_are_the_papers():
    r = Recipe()
    assert (r.batch_size, r.lr, r.momentum, r.dropout, r.epochs, r.clip_radius, r.lr_factor) == (
        128,
        1e-2,
        0.9,
        0.5,
        70,
        0.1,
        0.1,
    )
    assert snapshot_epochs(r) == list(PAPER_SNAPSHOTS) + [70]
    assert snapshot_epochs(Recipe(epochs=30)) == [1, 2, 3, 4, 9, 13, 17, 27, 30]


def test_recipe_file_then_flags(tmp_path):
    f = tmp_path / "r.toml"
    f.write_text("epochs = 12\nlr = 0.05\nmodel_overrides = { fc_units = 2048 }\nsnapshots = [1, 3]\n")
    r = resolve(str(f), {"lr": "0.02", "clip_radius": "none", "flip": "false"})
    assert (r.epochs, r.lr, r.clip_radius, r.flip, r.snapshots) == (12, 0.02, None, False, (1, 3))
    assert r.model_overrides == {"fc_units": 2048}
    with pytest.raises(UsageError, match="unknown recipe field"):
        resolve(None, {"learning_rate": 1})
    with pytest.raises(UsageError, match="not a valid"):
        resolve(None, {"epochs": "many"})
    with pytest.raises(UsageError, match="momentum"):
        resolve(None, {"momentum": 1.5})


def test_feature_scale_clipping():
    conv = torch.nn.Conv2d(2, 3, 3)
    with torch.no_grad():
        conv.weight[0] = 1.0  # RMS 1 -> 0.1
        conv.weight[1] = 0.05  # RMS 0.05, under the radius: untouched
        conv.weight[2] = torch.randn(2, 3, 3) * 0.3
    before = conv.weight.clone()
    clip_filters(torch.nn.Sequential(conv), 0.1)
    rms = conv.weight.pow(2).mean(dim=(1, 2, 3)).sqrt()
    torch.testing.assert_close(rms[[0, 2]], torch.tensor([0.1, 0.1]))
    assert torch.equal(conv.weight[1], before[1])
    torch.testing.assert_close(
        conv.weight[2] / before[2], torch.full_like(before[2], 0.1 / float(before[2].pow(2).mean().sqrt()))
    )  # direction kept


def test_fit_writes_run_folder_and_evaluate(tmp_path):
    out = tmp_path / "run"
    result = train_run(Recipe(**TINY), _run(out), progress=False)  # fit + the curves (the CLI's path)
    for name in (
        "checkpoint.safetensors",
        "model.safetensors",
        "recipe.json",
        "metrics.jsonl",
        "metrics.csv",
        "curves.png",
        "metrics.json",
        "snapshots/epoch-001.safetensors",
        "snapshots/epoch-002.safetensors",
    ):
        assert (out / name).is_file(), name
    rows = [json.loads(l) for l in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in rows] == [1, 2] and rows[0]["images_per_s"] > 0
    assert set(result["val"]) == {"centre", "ten_crop"}
    saved = json.loads((out / "recipe.json").read_text())
    assert saved["epochs"] == 2 and saved["lr"] == 0.01 and "out" not in saved  # run options are not the recipe
    # the conv filters obey the clipping radius after training
    opened = open_model("zfnet-small", str(out / "model.safetensors"))
    model, pp = opened.model, opened.preprocess
    assert pp.fit == "pad" and pp.mean_image is not None  # the training data's preprocessing, stored
    for m in model.modules():
        if isinstance(m, torch.nn.Conv2d):
            assert float(m.weight.detach().pow(2).mean(dim=(1, 2, 3)).sqrt().max()) <= 0.1 + 1e-6
    # evaluate: our top-1 error equals a hand-made loop; 10-crop equals the average of the 10 crops
    val = zdata.open_dataset("synthetic", "val", pp).head(64)
    ours = evaluate(model, val, pp, batch_size=16)
    with torch.no_grad():
        logits = model(pp.eval_input(val.bases))
        err = float((logits.argmax(1) != val.labels).float().mean())
        ten = pp.ten_crop_input(val.bases).view(10, 64, 1, 28, 28)
        probs = torch.stack([F.softmax(model(c), 1) for c in ten]).mean(0)
    assert ours["top1_err"] == pytest.approx(err)
    assert evaluate(model, val, pp, ten_crop=True)["top1_err"] == pytest.approx(
        float((probs.argmax(1) != val.labels).float().mean())
    )
    # ensembles average the softmax of the members
    other = models.build("zfnet-small", num_classes=len(val.classes), seed=5).eval()
    with torch.no_grad():
        avg = (F.softmax(model(pp.eval_input(val.bases)), 1) + F.softmax(other(pp.eval_input(val.bases)), 1)) / 2
    assert evaluate([model, other], val, pp)["top1_err"] == pytest.approx(
        float((avg.argmax(1) != val.labels).float().mean())
    )
    # the CLI prints the same numbers as JSON
    r = run_cli(
        "evaluate",
        "--model",
        "zfnet-small",
        "--weights",
        str(out / "model.safetensors"),
        "--data",
        "synthetic",
        "--split",
        "val",
        "--limit",
        "64",
    )
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["centre"]["top1_err"] == pytest.approx(err)
    # an existing run is never overwritten
    with pytest.raises(UsageError, match="already holds a run"):
        fit(Recipe(**TINY), _run(out), progress=False)


def test_anneal_at_is_the_manual_schedule_and_resumes_only_forward(tmp_path):
    out = tmp_path / "run"
    fit(Recipe(anneal_at=(1,), **TINY), _run(out), progress=False)
    lrs = [json.loads(l)["lr"] for l in (out / "metrics.jsonl").read_text().splitlines()]
    assert lrs == pytest.approx([1e-2, 1e-3])
    with pytest.raises(UsageError, match="anneal_at holds epoch numbers"):
        resolve(flags={"anneal_at": "0,3"})
    longer = {**TINY, "epochs": 3}
    with pytest.raises(UsageError, match="anneal_at at epoch 1, already trained"):
        fit(Recipe(**longer), _run(out), resume=True, progress=False)
    # annealing after the epoch just finished is still a decision about the future: applied on resume, as a
    # fresh run with this recipe would have
    fit(Recipe(anneal_at=(1, 2), **longer), _run(out), resume=True, progress=False)
    lrs = [json.loads(l)["lr"] for l in (out / "metrics.jsonl").read_text().splitlines()]
    assert lrs == pytest.approx([1e-2, 1e-3, 1e-4])
    fresh = tmp_path / "fresh"
    fit(Recipe(anneal_at=(1, 2), **longer), _run(fresh), progress=False)
    a, b = load_tensors(out / "model.safetensors"), load_tensors(fresh / "model.safetensors")
    assert all(torch.equal(a[k], b[k]) for k in a if not k.startswith("preprocess"))


def _train_cmd(out, *extra):
    return [
        sys.executable,
        "-m",
        "zfnet",
        "train",
        "--model",
        "zfnet-small",
        "--data",
        "synthetic",
        "--val-split",
        "val",
        "--epochs",
        "3",
        "--batch-size",
        "16",
        "--limit-train",
        "192",
        "--limit-val",
        "32",
        "--workers",
        "0",
        "--threads",
        "1",
        "--out",
        str(out),
        "--no-progress",
        *extra,
    ]


def test_resume_after_sigkill_is_bitwise_identical(tmp_path):
    env = dict(os.environ, ZFNET_PROGRESS="0")
    straight = tmp_path / "straight"
    subprocess.run(_train_cmd(straight), check=True, env=env, cwd=REPO, capture_output=True, timeout=600)
    killed = tmp_path / "killed"
    # checkpoint mid-epoch as often as possible, kill in epoch 2 after some steps
    proc = subprocess.Popen(
        _train_cmd(killed, "--checkpoint-minutes", "0.0001"),
        env=env,
        cwd=REPO,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    ckpt = killed / "checkpoint.safetensors"
    deadline = time.time() + 300
    while time.time() < deadline:
        if ckpt.is_file():
            try:
                meta = safetensors_metadata(str(ckpt))
            except Exception:
                meta = {}
            if meta.get("epoch") == "1" and int(meta.get("step", 0)) >= 4:
                break
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    meta = safetensors_metadata(str(ckpt))
    assert meta["epoch"] == "1" and int(meta["step"]) >= 4, "killed mid-epoch 2"
    r = subprocess.run(_train_cmd(killed, "--resume"), env=env, cwd=REPO, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr
    assert "resuming" in r.stdout
    a, b = load_tensors(straight / "model.safetensors"), load_tensors(killed / "model.safetensors")
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k
    assert (straight / "metrics.jsonl").read_text().count("\n") == (killed / "metrics.jsonl").read_text().count("\n")
    # a resume with a changed recipe is refused, the run stays as it was
    r = subprocess.run(
        _train_cmd(killed, "--resume", "--lr", "0.5"), env=env, cwd=REPO, capture_output=True, text=True, timeout=600
    )
    assert r.returncode == 2 and "different recipe" in r.stderr and "Traceback" not in r.stderr


def test_torchrun_two_processes_match_one(tmp_path):
    """Two processes (each half of every batch, gradients all-reduced) train the same weights as one process.

    The tolerance comes from what can differ. Both runs start from the same seeded initialization and see the
    same batches; only the order of float32 sums differs (per-process batch reductions, the 2-way all-reduce,
    conv kernels summing 16 instead of 32 images). Each such sum of n terms is off by at most ~n*2^-24 of its
    absolute sum (n <= 32 * 28 * 28 here, so <= 1.5e-3), and a few ReLU / max-pool decisions may flip on those
    differences over 4 steps (another CPU's kernels sum in another order); the gap measured here is 1e-5 of how
    far the weights moved. A sharding error - a shard left out, gradients not averaged, a batch seen twice -
    changes the update itself, by tens of percent. So each tensor must agree to 1e-2 of its own update
    (w_final - w_init), and the test checks that a run on other data (half the images: 2 steps instead of 4)
    is caught by the same bound."""
    common = [
        "--model",
        "zfnet-small",
        "--data",
        "synthetic",
        "--val-split",
        "val",
        "--epochs",
        "2",
        "--batch-size",
        "32",
        "--limit-val",
        "32",
        "--workers",
        "0",
        "--threads",
        "1",
        "--dropout",
        "0",
        "--no-progress",
    ]
    env = dict(os.environ, ZFNET_PROGRESS="0", OMP_NUM_THREADS="1")

    one = subprocess.run(
        [sys.executable, "-m", "zfnet", "train", *common, "--limit-train", "64", "--out", str(tmp_path / "one")],
        env=env,
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert one.returncode == 0, one.stderr
    multi = subprocess.run(
        [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--nproc_per_node",
            "2",
            "--master_port",
            "29517",
            "-m",
            "zfnet",
            "train",
            *common,
            "--limit-train",
            "64",
            "--out",
            str(tmp_path / "two"),
        ],
        env=env,
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert multi.returncode == 0, torchrun_errors(multi.stderr)
    a, b = load_tensors(tmp_path / "one" / "model.safetensors"), load_tensors(tmp_path / "two" / "model.safetensors")
    classes = int(a["fc8.weight"].shape[0])
    torch.manual_seed(Recipe().seed)  # the run's initialization, as build_run makes it
    init = models.build("zfnet-small", num_classes=classes, init=Recipe().init, dropout=0.0).state_dict()
    moved = {k: float((a[k] - init[k]).abs().max()) for k in init if init[k].is_floating_point()}
    scale = {k: float(init[k].abs().max()) for k in moved}
    # the reconstruction is the run's start: 4 small SGD steps moved every weight tensor by far less than
    # its size (an unrelated initialization would be off by the weights' own magnitude)
    # (conv1 excepted: it sees raw pixels in [-128, 128], so its steps are large)
    assert all(moved[k] < 0.5 * scale[k] for k in moved if "weight" in k and not k.startswith("conv1.")), moved
    for k in moved:
        assert float((a[k] - b[k]).abs().max()) <= 1e-2 * moved[k] + 1e-12, (k, moved[k])
    # the bound has teeth: a single process that saw only the first 32 images of each epoch is far outside it
    other = subprocess.run(
        [sys.executable, "-m", "zfnet", "train", *common, "--limit-train", "32", "--out", str(tmp_path / "other")],
        env=env,
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert other.returncode == 0, other.stderr
    c = load_tensors(tmp_path / "other" / "model.safetensors")
    assert any(float((a[k] - c[k]).abs().max()) > 1e-2 * moved[k] + 1e-12 for k in moved)
    m1 = json.loads((tmp_path / "one" / "metrics.json").read_text())
    m2 = json.loads((tmp_path / "two" / "metrics.json").read_text())
    assert m2["processes"] == 2 and m1["val"]["centre"]["images"] == m2["val"]["centre"]["images"] == 32
