"""Defects found by trying the landed commands as a new user would (issue 9): each case failed on the earlier
main and is a one-line error with exit code 2, or now works, here."""

from __future__ import annotations

import json
import os
import struct
import zlib

import numpy as np
import pytest
import torch
from conftest import run_cli
from PIL import Image

from zfnet import models
from zfnet.cli import main
from zfnet.weights import save_weights


def cli(capsys, *args: str) -> tuple[int, str, str]:
    """`zfnet ARGS` in this process (fast): exit code, stdout, stderr (argparse's errors exit 2 too)."""
    try:
        code = main([*args])
    except SystemExit as e:
        code = e.code
    out, err = capsys.readouterr()
    return code, out, err


def assert_one_line_error(code: int, err: str, *words: str) -> None:
    assert code == 2, err
    lines = [l for l in err.splitlines() if l.strip()]
    assert len(lines) == 1 and "Traceback" not in err, err
    for w in words:
        assert w in err, (w, err)


def _folder(tmp_path, n=8, size=40, broken=()) -> str:
    """Class folders of colour images; `broken` names files to write damaged."""
    rng = np.random.default_rng(1)
    root = tmp_path / "imgs"
    for c in ("a", "b"):
        os.makedirs(root / c, exist_ok=True)
        for i in range(n // 2):
            Image.fromarray(rng.integers(0, 256, (size, size + 6, 3), dtype=np.uint8)).save(root / c / f"{i}.png")
    for name in broken:
        good = (root / "a" / "0.png").read_bytes()
        (root / "a" / name).write_bytes(good[: len(good) // 3])  # a truncated PNG
    return str(root)


def _atlas(data, out, *extra):
    return [
        "atlas",
        "--model",
        "zfnet-small-64",
        "--data",
        f"folder:{data}",
        "--split",
        "all",
        "--layers",
        "conv1,conv2",
        "--k",
        "2",
        "--panel-maps",
        "2",
        "--workers",
        "0",
        "--out",
        str(out),
        *extra,
    ]


# 1. a folder atlas reruns and resumes --------------------------------------------------------------------


def test_folder_atlas_reruns(tmp_path, capsys):
    data = _folder(tmp_path)
    assert cli(capsys, *_atlas(data, tmp_path / "A"))[0] == 0
    first = json.loads((tmp_path / "A" / "manifest.json").read_text())
    code, _, err = cli(capsys, *_atlas(data, tmp_path / "A"))  # the scan state says 'all done'
    assert code == 0, err
    assert json.loads((tmp_path / "A" / "manifest.json").read_text())["layers"] == first["layers"]


def test_interrupted_folder_atlas_resumes(tmp_path, capsys):
    from zfnet import data as zdata
    from zfnet.methods.atlas import scan
    from zfnet.pipelines.atlas import ScanFile
    from zfnet.weights import open_model

    data = _folder(tmp_path)
    opened = open_model("zfnet-small-64")
    ds = zdata.open_dataset(f"folder:{data}", "all", opened.preprocess)
    state = str(tmp_path / "state.safetensors")
    full = scan(
        opened.model, ds, preprocess=opened.preprocess, layers=["conv2"], k=2, batch_size=3, workers=0, progress=False
    )
    # a scan killed after its first saved batch, then rerun: continues from there and ends the same
    scan(
        opened.model,
        ds.head(3),
        preprocess=opened.preprocess,
        layers=["conv2"],
        k=2,
        batch_size=3,
        workers=0,
        progress=False,
        store=ScanFile(state, "k"),
    )
    resumed = scan(
        opened.model,
        ds,
        preprocess=opened.preprocess,
        layers=["conv2"],
        k=2,
        batch_size=3,
        workers=0,
        progress=False,
        store=ScanFile(state, "k"),
    )
    assert torch.equal(resumed.top["conv2"].images, full.top["conv2"].images)
    assert torch.equal(resumed.top["conv2"].values, full.top["conv2"].values)


# 2. corrupt files are skipped, counted and named ----------------------------------------------------------


@pytest.mark.parametrize("workers", ["0", "2"])
def test_corrupt_files_are_skipped_and_listed(tmp_path, workers):
    data = _folder(tmp_path, broken=("broken.png",))
    (tmp_path / "imgs" / "a" / "._0.png").write_bytes(b"\x00\x05\x16\x07 AppleDouble")  # macOS metadata
    r = run_cli(
        "atlas",
        "--model",
        "zfnet-small-64",
        "--data",
        f"folder:{data}",
        "--split",
        "all",
        "--layers",
        "conv1",
        "--k",
        "2",
        "--panel-maps",
        "1",
        "--workers",
        workers,
        "--out",
        str(tmp_path / "A"),
    )
    assert r.returncode == 0, r.stderr
    assert "Traceback" not in r.stderr and "skipped 1 unreadable image" in r.stderr
    manifest = json.loads((tmp_path / "A" / "manifest.json").read_text())
    assert [s["id"] for s in manifest["skipped"]] == [os.path.join("a", "broken.png")]
    assert manifest["dataset"]["images"] == 9 and json.loads(r.stdout)["skipped"] == 1
    # evaluate and train go on too, and say what they skipped
    r = run_cli(
        "evaluate",
        "--model",
        "zfnet-small-64",
        "--weights",
        _weights(tmp_path, classes=2),
        "--data",
        f"folder:{data}",
        "--split",
        "all",
        "--workers",
        workers,
    )
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout)
    assert out["centre"]["images"] == 8 and out["skipped"][0]["id"].endswith("broken.png")
    r = run_cli(
        "train",
        "--model",
        "zfnet-small-64",
        "--data",
        f"folder:{data}",
        "--train-split",
        "all",
        "--val-split",
        "all",
        "--epochs",
        "1",
        "--batch-size",
        "4",
        "--workers",
        workers,
        "--out",
        str(tmp_path / "run"),
    )
    assert r.returncode == 0, r.stderr
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert len(metrics["skipped"]["train"]) == 1 and metrics["val"]["centre"]["images"] == 8


def test_every_file_broken_is_an_error(tmp_path, capsys):
    root = tmp_path / "bad"
    os.makedirs(root / "x")
    for i in range(3):
        (root / "x" / f"{i}.png").write_bytes(b"not a png")
    code, _, err = cli(capsys, *_atlas(str(root), tmp_path / "A"))
    assert_one_line_error(code, err, "none of the 3 images", "could be read")


# 3. a rerun with other settings never mixes results ------------------------------------------------------

RESULT_CHANGING = [
    ("--rule", "guided"),
    ("--k", "3"),
    ("--layers", "conv1"),
    ("--limit", "5"),
    ("--panel-maps", "1"),
    ("--seed", "1"),
    ("--evolution-maps", "2"),
    ("--mean", "none"),
    ("--weights", "W"),
    ("--model", "zfnet-small-rgb"),
    ("--data", "D"),
    ("--evolution-limit", "3"),
]
RUN_ONLY = [("--batch-size", "3"), ("--workers", "0"), ("--device", "cpu"), ("--no-progress", None)]


def test_rerun_with_changed_settings_is_refused(tmp_path, capsys):
    data = _folder(tmp_path)
    out = tmp_path / "A"
    base = {
        "--model": "zfnet-small-64",
        "--data": f"folder:{data}",
        "--split": "all",
        "--layers": "conv1,conv2",
        "--k": "2",
        "--panel-maps": "2",
        "--workers": "0",
        "--out": str(out),
    }
    code, _, err = cli(capsys, "atlas", *[x for kv in base.items() for x in kv])
    assert code == 0, err
    sprite = (out / "maps" / "conv1" / "0000.png").read_bytes()
    other_data = _folder(tmp_path / "other")
    values = {"--weights": _weights(tmp_path), "--data": f"folder:{other_data}"}
    for flag, value in RESULT_CHANGING:
        args = dict(base)
        args[flag] = values.get(flag, value)
        code, _, err = cli(capsys, "atlas", *[x for kv in args.items() for x in kv])
        assert_one_line_error(code, err, "already holds an atlas", flag.lstrip("-").replace("-", "_"))
    for flag, value in RUN_ONLY:
        args = ["atlas"] + [x for kv in base.items() for x in kv] + [flag] + ([value] if value else [])
        code, _, err = cli(capsys, *args)
        assert code == 0, (flag, err)
    assert (out / "maps" / "conv1" / "0000.png").read_bytes() == sprite  # earlier results intact


# 4. damaged weights --------------------------------------------------------------------------------------


def _weights(tmp_path, classes=10, nan=False) -> str:
    net = models.build("zfnet-small-64", num_classes=classes, seed=2)
    if nan:
        with torch.no_grad():
            net.conv3.weight[0, 0, 0, 0] = float("nan")
    path = str(tmp_path / f"w{classes}{'-nan' if nan else ''}.safetensors")
    from zfnet.data import for_model

    save_weights(net, path, for_model(64, 3, "resize", 1.0).with_mean(torch.full((3, 73, 73), 100.0)))
    return path


def test_damaged_weights_are_one_line_errors(tmp_path, capsys):
    img = tmp_path / "x.png"
    Image.fromarray(np.zeros((64, 64, 3), np.uint8)).save(img)
    good = _weights(tmp_path)
    blob = open(good, "rb").read()
    cases = {"truncated": blob[: len(blob) // 2], "empty": b"", "random": os.urandom(4096)}
    for name, data in cases.items():
        path = tmp_path / f"{name}.safetensors"
        path.write_bytes(data)
        for args in (
            [
                "project",
                "--model",
                "zfnet-small-64",
                "--weights",
                str(path),
                "--image",
                str(img),
                "--layer",
                "conv1",
                "--channel",
                "0",
                "--out",
                str(tmp_path / "p.png"),
            ],
            ["evaluate", "--model", "zfnet-small-64", "--weights", str(path), "--data", "synthetic"],
            [
                "filters",
                "--model",
                "zfnet-small-64",
                "--weights",
                good,
                "--compare-model",
                "zfnet-small-64",
                "--compare-weights",
                str(path),
                "--out",
                str(tmp_path / "f"),
            ],
        ):
            code, _, err = cli(capsys, *args)
            assert_one_line_error(code, err, str(path))
    code, out, err = cli(
        capsys,
        "project",
        "--model",
        "zfnet-small-64",
        "--weights",
        _weights(tmp_path, nan=True),
        "--image",
        str(img),
        "--layer",
        "conv3",
        "--channel",
        "0",
        "--out",
        str(tmp_path / "p.png"),
    )
    assert_one_line_error(code, err, "NaN or Inf", "conv3.weight")
    assert out == ""


# 6. out-of-range input -----------------------------------------------------------------------------------


def _png_claiming(path, width: int, height: int) -> None:
    """A tiny PNG whose header claims width x height (what a decompression bomb looks like to the reader)."""
    Image.fromarray(np.zeros((2, 2), np.uint8)).save(path)
    raw = bytearray(open(path, "rb").read())
    ihdr = raw[12:29]  # chunk type + 13 data bytes
    ihdr[4:12] = struct.pack(">II", width, height)
    raw[12:29] = ihdr
    raw[29:33] = struct.pack(">I", zlib.crc32(bytes(ihdr)) & 0xFFFFFFFF)
    open(path, "wb").write(bytes(raw))


def test_out_of_range_input_is_refused_in_one_line(tmp_path, capsys):
    img = tmp_path / "x.png"
    Image.fromarray(np.zeros((28, 28), np.uint8)).save(img)
    (tmp_path / "afile").write_text("x")
    bomb = tmp_path / "bomb.png"
    _png_claiming(bomb, 20000, 20000)
    project = ["project", "--pretrained", "--image", str(img), "--layer", "conv3", "--channel", "0"]
    cases = [
        ([*project, "--position", "99,99", "--out", str(tmp_path / "p.png")], "outside conv3"),
        ([*project, "--out", str(tmp_path)], "is a folder"),
        ([*project, "--out", str(tmp_path / "p.txt")], "must end in"),
        ([*project, "--out", str(tmp_path / "afile" / "p.png")], "not a writable folder"),
        ([*project, "--device", "banana", "--out", str(tmp_path / "p.png")], "unknown device"),
        (
            [
                "project",
                "--pretrained",
                "--image",
                str(bomb),
                "--layer",
                "conv3",
                "--channel",
                "0",
                "--out",
                str(tmp_path / "p.png"),
            ],
            "downscale it",
        ),
        (["evaluate", "--pretrained", "--data", "synthetic:20,3", "--split", "test"], "predicts 10 classes"),
        (["serve", str(tmp_path), "--port", "99999"], "not a TCP port"),
    ]
    for what in ("atlas", "evaluate"):
        for flag, value in (("--limit", "0"), ("--limit", "-3"), ("--batch-size", "0"), ("--workers", "-1")):
            extra = ["--out", str(tmp_path / "never")] if what == "atlas" else []
            cases.append(([what, "--pretrained", "--data", "synthetic", flag, value, *extra], "must be"))
    cases.append((["atlas", "--pretrained", "--data", "synthetic", "--out", str(tmp_path / "afile")], "is a file"))
    cases.append(
        (
            ["atlas", "--pretrained", "--data", "synthetic", "--layers", "conv9", "--out", str(tmp_path / "never")],
            "no layer 'conv9'",
        )
    )
    for args, words in cases:
        code, _, err = cli(capsys, *args)
        assert_one_line_error(code, err, words)
    assert not (tmp_path / "never").exists()  # a refused atlas leaves no folder behind
