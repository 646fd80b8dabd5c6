"""Interrupted runs (issue 15): a real `zfnet` subprocess killed with SIGKILL in the middle of `atlas`,
`transfer` and `report` (`train`: tests/test_train.py, mid-epoch, bitwise; `ablate`: tests/test_ablation.py),
then rerun: it continues and ends with the same result as an uninterrupted run. While it runs, every result file
seen on disk is complete (atomic renames), and a second run into the same folder is refused."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import pytest
from conftest import REPO
from PIL import Image

from zfnet.io import load_tensors
from zfnet.outputs import sibling


def partial(out):
    """Where a staged command writes until it is complete (`zfnet.outputs.staged`)."""
    return type(out)(sibling(str(out), "partial"))


ENV = dict(os.environ, ZFNET_PROGRESS="0", OMP_NUM_THREADS="1")


def _complete(out, seen: set) -> None:
    """Every JSON and PNG under `out` that is visible under its final name parses / decodes. `seen` holds the
    (path, inode, size, mtime) already checked: a file is replaced by a rename, so a new version is a new inode,
    and the watcher does not take the CPU from the run it watches by decoding the same files again."""
    for root, _, names in os.walk(out):
        for n in names:
            path = os.path.join(root, n)
            try:
                st = os.stat(path)
                version = (path, st.st_ino, st.st_size, st.st_mtime_ns)
                if version in seen:
                    continue
                seen.add(version)
                if n.endswith(".json"):
                    with open(path) as f:
                        json.load(f)
                elif n.endswith(".png"):
                    with Image.open(path) as im:
                        im.verify()
                elif n.endswith(".safetensors"):
                    load_tensors(path)
            except FileNotFoundError:
                continue  # replaced or removed between listing and reading
            except Exception as e:  # noqa: BLE001
                raise AssertionError(f"half-written file seen: {path} ({e})") from None


def kill_when(argv: list[str], ready, out, timeout: float = 300, meanwhile=None) -> None:
    """Start `zfnet ARGV`, watch `out` until `ready()` is true, stop the process and call `meanwhile(pid)` (if
    given), SIGKILL the process."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "zfnet", *argv],
        env=ENV,
        cwd=REPO,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    t0 = time.monotonic()
    seen: set = set()
    try:
        while not ready():
            if proc.poll() is not None:
                raise AssertionError(f"finished before the kill point: {proc.stderr.read()[-2000:]}")
            if time.monotonic() - t0 > timeout:
                raise AssertionError("kill point not reached")
            if os.path.isdir(out):
                _complete(out, seen)
            time.sleep(0.05)
        if meanwhile is not None:  # the run is frozen (SIGSTOP) while it holds its folder: no race with it
            proc.send_signal(signal.SIGSTOP)
            meanwhile(proc.pid)
        proc.send_signal(signal.SIGKILL)
    finally:
        proc.kill()
        proc.wait()
    assert proc.returncode == -signal.SIGKILL


def run(argv: list[str]) -> None:
    r = subprocess.run(
        [sys.executable, "-m", "zfnet", *argv], env=ENV, cwd=REPO, capture_output=True, text=True, timeout=900
    )
    assert r.returncode == 0, r.stderr[-3000:]


def test_killed_atlas_resumes_to_the_same_atlas(tmp_path):
    def args(out):
        return [
            "atlas",
            "--pretrained",
            "--data",
            "fashion-mnist-mini",
            "--limit",
            "800",
            "--layers",
            "conv1,conv3,conv5",
            "--workers",
            "0",
            "--out",
            str(out),
        ]

    straight, killed = tmp_path / "straight", tmp_path / "killed"
    run(args(straight))
    work = partial(killed)  # the run writes here; the folder appears under its name when complete
    maps = work / "maps" / "conv3"
    kill_when(args(killed), lambda: maps.is_dir() and len(os.listdir(maps)) >= 20, work)
    assert not killed.exists() and not (work / "index.html").exists()
    m = json.loads((work / "manifest.json").read_text())
    assert m["complete"] is False  # what is on disk says it is unfinished
    run(args(killed))
    a = json.loads((straight / "manifest.json").read_text())
    b = json.loads((killed / "manifest.json").read_text())
    assert b["complete"] and a["layers"] == b["layers"] and a["panel_maps"] == b["panel_maps"]
    for layer in a["layer_order"]:
        for f in sorted(os.listdir(straight / "maps" / layer)):
            assert (straight / "maps" / layer / f).read_bytes() == (killed / "maps" / layer / f).read_bytes(), f
    assert (straight / "figures" / "conv5.png").read_bytes() == (killed / "figures" / "conv5.png").read_bytes()
    assert (straight / "filters.json").read_text() == (killed / "filters.json").read_text()


def test_killed_transfer_resumes_to_the_same_table(tmp_path):
    def args(out):
        return [
            "transfer",
            "--model",
            "zfnet-small",
            "--data",
            "synthetic:120,4",
            "--split",
            "test",
            "--per-class",
            "4,6",
            "--folds",
            "3",
            "--test-per-class",
            "6",
            "--scratch-epochs",
            "2",
            "--no-progress",
            "--out",
            str(out),
        ]

    straight, killed = tmp_path / "straight", tmp_path / "killed"
    run(args(straight))
    state = partial(killed) / ".scratch"
    kill_when(args(killed), lambda: state.is_dir() and len(os.listdir(state)) >= 2, partial(killed))
    done = len(os.listdir(state))
    assert not (partial(killed) / "results.json").exists() and not killed.exists() and done < 6
    run(args(killed))
    a = json.loads((straight / "results.json").read_text())
    b = json.loads((killed / "results.json").read_text())
    assert a["summary"] == b["summary"]
    assert (straight / "table.md").read_text() == (killed / "table.md").read_text()


@pytest.mark.parametrize("stage", ["evolution"])
def test_killed_report_resumes_to_the_same_report(tmp_path, stage):
    small = ["--limit", "160", "--evolution-limit", "160", "--examples", "2", "--atlas-maps", "8", "--no-evidence"]
    straight, killed = tmp_path / "straight", tmp_path / "killed"
    run(["report", *small, "--out", str(straight)])

    def in_stage():
        p = partial(killed) / "report.json"
        return p.is_file() and "atlas" in json.loads(p.read_text())["stages"] and (partial(killed) / stage).is_dir()

    def second_run(pid):  # a second run into the same folder at once is refused, naming the first
        r = subprocess.run(
            [sys.executable, "-m", "zfnet", "report", *small, "--out", str(killed)],
            env=ENV,
            cwd=REPO,
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert r.returncode == 2 and f"another zfnet run (pid {pid}) is writing" in r.stderr, r.stderr

    kill_when(["report", *small, "--out", str(killed)], in_stage, partial(killed), meanwhile=second_run)
    assert not killed.exists() and not (partial(killed) / "index.html").exists()
    run(["report", *small, "--out", str(killed)])  # the killed run's lock is gone with it
    a = json.loads((straight / "report.json").read_text())
    b = json.loads((killed / "report.json").read_text())
    assert {n: e["status"] for n, e in a["stages"].items()} == {n: e["status"] for n, e in b["stages"].items()}
    assert (b["stages"]["evidence"]["status"], b["stages"]["evidence"]["reason"]) == (
        "skipped",
        "turned off (--no-evidence)",
    )
    assert {n: e.get("key") for n, e in a["stages"].items()} == {n: e.get("key") for n, e in b["stages"].items()}
    for rel in ("evolution/evolution.json", "atlas/manifest.json"):
        x, y = json.loads((straight / rel).read_text()), json.loads((killed / rel).read_text())
        for k in ("wall_seconds", "scan_seconds", "provenance", "settings", "model"):
            x.pop(k, None)
            y.pop(k, None)
        assert x == y, rel
    for rel in ("evolution/evolution/conv3.png", "occlusion/occlusion-0.png", "atlas/figures/conv2.png"):
        assert (straight / rel).read_bytes() == (killed / rel).read_bytes(), rel
