"""Table 2 as a command: every row trained with one recipe in its own resumable run folder, the table laid out
as the paper's; a killed ablation, rerun, ends with the same table as an uninterrupted one; finished rows are
never retrained; another recipe into the same folder is refused."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import pytest
import torch
from conftest import REPO

from zfnet import models
from zfnet.cli import main
from zfnet.experiments.ablation import paper_row, variant_names
from zfnet.models import TABLE2_VARIANTS


def _cmd(out, *extra):
    return [
        "ablate",
        "--base",
        "zfnet-small",
        "--variants",
        "rm34,fc2048",
        "--data",
        "synthetic",
        "--val-split",
        "val",
        "--epochs",
        "2",
        "--batch-size",
        "16",
        "--limit-train",
        "96",
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


def _table(out) -> list[tuple]:
    rows = json.loads((out / "results.json").read_text())["rows"]
    return [(r["variant"], r["status"], r["train_top1_err"], r["val_top1_err"], r["val_top5_err"]) for r in rows]


def test_variants_and_paper_rows():
    assert variant_names("all") == list(TABLE2_VARIANTS)
    assert variant_names("rm34,base") == ["rm34"]
    assert paper_row("alexnet", "rm3467") == ((71.1, 71.3, 50.1), "alexnet")
    assert paper_row("zfnet", "wide345") == ((18.8, 37.5, 16.0), "zfnet")
    assert paper_row("zfnet-small", "rm34")[1] == "alexnet"  # rows that remove layers exist in Krizhevsky's half


def test_ablate_runs_resumes_and_refuses_another_recipe(tmp_path, capsys):
    out = tmp_path / "abl"
    assert main(_cmd(out)) == 0
    capsys.readouterr()
    table = _table(out)
    assert [r[0] for r in table] == ["base", "rm34", "fc2048"] and all(r[1] == "done" for r in table)
    md = (out / "table.md").read_text()
    assert "Removed layers 3,4" in md and "41.8" in md and "45.4" in md  # the paper's row beside ours
    assert (out / "errors.png").is_file() and (out / "base" / "curves.png").is_file()
    # a rerun trains nothing: finished rows are never retrained
    stamp = (out / "rm34" / "model.safetensors").stat().st_mtime_ns
    assert main(_cmd(out)) == 0
    assert (out / "rm34" / "model.safetensors").stat().st_mtime_ns == stamp and _table(out) == table
    # another recipe into the same folder would mix rows: refused in one line
    assert main(_cmd(out)[:-3] + ["--lr", "0.05", "--out", str(out), "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert "another recipe" in err and "lr" in err and len(err.strip().splitlines()) == 1
    assert (
        main(
            [
                "ablate",
                "--base",
                "zfnet-small",
                "--variants",
                "rm99",
                "--data",
                "synthetic",
                "--out",
                str(tmp_path / "x"),
            ]
        )
        == 2
    )


def test_killed_ablation_resumes_to_the_same_table(tmp_path):
    env = dict(os.environ, ZFNET_PROGRESS="0")
    straight = tmp_path / "straight"
    args = [sys.executable, "-m", "zfnet"]
    subprocess.run(args + _cmd(straight), check=True, env=env, cwd=REPO, capture_output=True, timeout=600)
    killed = tmp_path / "killed"
    proc = subprocess.Popen(
        args + _cmd(killed, "--checkpoint-minutes", "0.0001"),
        env=env,
        cwd=REPO,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    ckpt = killed / "rm34" / "checkpoint.safetensors"  # the base is done, the first variant is under way
    deadline = time.time() + 300
    while time.time() < deadline and not ckpt.is_file():
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert (killed / "base" / "metrics.json").is_file() and not (killed / "fc2048").exists()
    subprocess.run(args + _cmd(killed), check=True, env=env, cwd=REPO, capture_output=True, timeout=600)
    assert _table(killed) == _table(straight)


@pytest.mark.parametrize("flag", ["--table-only"])
def test_table_only_collects_whatever_finished(tmp_path, capsys, flag):
    out = tmp_path / "abl"
    assert main(_cmd(out, flag)) == 0
    capsys.readouterr()
    assert {r[1] for r in _table(out)} == {"missing"}
    assert "missing" in (out / "table.md").read_text()


def test_high_frequency_share_hand_worked():
    from zfnet.experiments.archselect import high_frequency_share

    yy, xx = torch.meshgrid(
        torch.arange(16.0, dtype=torch.float64), torch.arange(16.0, dtype=torch.float64), indexing="ij"
    )
    checker = ((yy + xx) % 2 * 2 - 1)[None, None]  # all power at (0.5, 0.5) cycles/px
    slow = torch.cos(2 * torch.pi * xx / 8)[None, None]  # 0.125 cycles/px
    both = checker + slow  # Parseval: the checker carries 256 of the 256 + 128 units of power
    shares = high_frequency_share(torch.cat([checker, slow, both]))
    assert shares.tolist() == pytest.approx([1.0, 0.0, 2 / 3], abs=1e-9)
    # a stride-4 grid's harmonic sits exactly on a 0.25 cutoff: it counts half, not all-or-nothing by rounding
    grid4 = torch.cos(2 * torch.pi * xx / 4)[None, None]  # 0.25 cycles/px
    assert float(high_frequency_share(grid4, 0.25)[0]) == pytest.approx(0.5, abs=1e-9)
    assert float(high_frequency_share(grid4, 0.125)[0]) == pytest.approx(1.0, abs=1e-9)


def test_archselect_end_to_end(tmp_path, capsys):
    from zfnet.experiments.archselect import configs, cutoff

    # Sec. 4.1: layers 1 and 2 - Krizhevsky 11x11/4 then conv2 stride 1, ZFNet 7x7/2 then conv2 stride 2
    assert configs("zfnet")["krizhevsky-like-noclip"] == ((11, 4, 4), 1, False)  # padding 4: one size from conv2
    assert configs("zfnet")["zfnet-like"] == ((7, 2, 1), 2, True)
    assert configs("zfnet-small")["krizhevsky-like"] == ((7, 2, 3), 1, True)
    assert configs("zfnet-small")["zfnet-like"] == ((5, 1, 2), 2, True)
    assert cutoff("zfnet") == 0.125 and cutoff("zfnet-small") == 0.25
    k, z = (models.build("zfnet", first_layer=f, second_stride=s2, init="torch") for f, s2, _ in
            (configs("zfnet")["krizhevsky-like"], configs("zfnet")["zfnet-like"]))  # fmt: skip
    assert (k.conv1.stride, k.conv2.stride, z.conv1.stride, z.conv2.stride) == ((4, 4), (1, 1), (2, 2), (2, 2))
    out = tmp_path / "arch"
    assert (
        main(
            [
                "archselect",
                "--data",
                "synthetic",
                "--val-split",
                "val",
                "--epochs",
                "1",
                "--batch-size",
                "32",
                "--limit-train",
                "64",
                "--limit-val",
                "32",
                "--workers",
                "0",
                "--out",
                str(out),
                "--no-progress",
            ]
        )
        == 0
    )
    capsys.readouterr()
    res = json.loads((out / "results.json").read_text())
    assert [r["name"] for r in res["runs"]] == [
        "krizhevsky-like",
        "krizhevsky-like-noclip",
        "zfnet-like",
        "zfnet-like-noclip",
    ]
    # the runs trained what they say: conv1's shape, and clipping bounds the filters' RMS only where it was on
    from zfnet.weights import open_model

    for r in res["runs"]:
        k, s = r["first_layer"]["kernel"], r["first_layer"]["stride"]
        opened = open_model(
            "zfnet-small",
            str(out / r["name"] / "model.safetensors"),
            overrides={"first_layer": (k, s, r["first_layer"]["padding"]), "second_stride": r["second_stride"]},
        )
        assert opened.model.conv1.kernel_size == (k, k) and opened.model.conv1.stride == (s, s)
        assert opened.model.conv2.stride == (r["second_stride"],) * 2
        if r["clipping"]:
            assert r["filters"]["rms_max"] <= 0.1 + 1e-6
        assert 0 <= r["layer2_high_frequency_mean"] <= 1 and len(r["layer2_high_frequency_per_map"]) == 96
    assert (out / "fig5.png").is_file() and "| krizhevsky-like | 7x7 stride 2 | 1 | on |" in (
        out / "table.md"
    ).read_text()


@pytest.mark.parametrize("base", ["zfnet", "alexnet", "zfnet-small"])
def test_archselect_variants_reach_one_resolution_after_every_layer_from_layer_2(base):
    """Sec. 4.1 compares where the stride sits, not the resolution: both variants' maps have one size from conv2
    on (ZFNet's base at 224 px: 26 after conv2, 13 after conv3-5; the small family at 28 px: 7 and 3)."""
    from zfnet import models
    from zfnet.experiments.archselect import recipes
    from zfnet.layers import output_shapes
    from zfnet.recipe import Recipe

    sizes = {}
    for name, r in recipes(Recipe(model=base)).items():
        over = {k: tuple(v) if isinstance(v, list) else v for k, v in r.model_overrides.items()}
        with torch.device("meta"):  # shapes only
            m = models.build(base, num_classes=10, init="torch", **over)
        m = m.to_empty(device="cpu").eval()
        names = ["conv2", "pool2", "conv3", "conv4", "conv5"]
        sizes[name] = {n: s[-1] for n, s in output_shapes(m, names, m.input_shape).items()}
    assert len({tuple(s.items()) for s in sizes.values()}) == 1, sizes
    if base == "zfnet":
        assert sizes["zfnet-like"] == {"conv2": 26, "pool2": 13, "conv3": 13, "conv4": 13, "conv5": 13}
    if base == "zfnet-small":
        assert sizes["zfnet-like"]["conv2"] == 7 and sizes["zfnet-like"]["conv5"] == 3
