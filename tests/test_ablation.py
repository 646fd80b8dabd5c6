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
from conftest import REPO

from zfnet.cli import main
from zfnet.experiments.ablation import paper_row, variant_names
from zfnet.models import TABLE2_VARIANTS


def _cmd(out, *extra):
    return ["ablate", "--base", "zfnet-small", "--variants", "rm34,fc2048", "--data", "synthetic", "--val-split",
            "val", "--epochs", "2", "--batch-size", "16", "--limit-train", "96", "--limit-val", "32", "--workers", "0",
            "--threads", "1", "--out", str(out), "--no-progress", *extra]


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
    assert main(["ablate", "--base", "zfnet-small", "--variants", "rm99", "--data", "synthetic", "--out",
                 str(tmp_path / "x")]) == 2


def test_killed_ablation_resumes_to_the_same_table(tmp_path):
    env = dict(os.environ, ZFNET_PROGRESS="0")
    straight = tmp_path / "straight"
    args = [sys.executable, "-m", "zfnet"]
    subprocess.run(args + _cmd(straight), check=True, env=env, cwd=REPO, capture_output=True, timeout=600)
    killed = tmp_path / "killed"
    proc = subprocess.Popen(args + _cmd(killed, "--checkpoint-minutes", "0.0001"), env=env, cwd=REPO,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
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
