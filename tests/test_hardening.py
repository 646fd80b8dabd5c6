"""Hardening (issue 15): a table of bad inputs across the CLI and the API (one line naming the problem and the
fix, exit code 2, no traceback, nothing half-written left), the image kinds that must work, a full disk while
checkpointing, untrusted weights (a malicious pickle runs nothing), hostile names in every page, folder locks."""

from __future__ import annotations

import errno
import json
import os
import pickle
import subprocess
import sys

import numpy as np
import pytest
import torch
from conftest import REPO, needs_chromium
from PIL import Image
from test_defects import _png_claiming, assert_one_line_error, cli

import zfnet
from zfnet import models
from zfnet.data import for_model
from zfnet.errors import UsageError
from zfnet.weights import WeightsFile, save_weights


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    """Every bad (and every odd but valid) input file the table points at."""
    d = tmp_path_factory.mktemp("bad")
    rng = np.random.default_rng(0)
    grey = rng.integers(0, 256, (28, 28), dtype=np.uint8)
    Image.fromarray(grey).save(d / "grey.png")
    good = (d / "grey.png").read_bytes()
    (d / "truncated.png").write_bytes(good[: len(good) // 3])
    (d / "zero.png").write_bytes(b"")
    (d / "text.png").write_text("not an image\n")
    (d / "notes.txt").write_text("hello\n")
    _png_claiming(d / "huge.png", 12000, 9000)  # 108 MP claimed in the header
    Image.fromarray(rng.integers(0, 256, (28, 28, 4), dtype=np.uint8), "RGBA").save(d / "rgba.png")
    Image.fromarray(grey.astype(np.uint16) * 257).save(d / "grey16.png")
    Image.fromarray(grey).convert("P").save(d / "palette.png")
    Image.fromarray(rng.integers(0, 256, (28, 28, 3), dtype=np.uint8)).convert("CMYK").save(d / "cmyk.jpg")
    Image.fromarray(rng.integers(0, 256, (3, 3), dtype=np.uint8)).save(d / "tiny.png")  # < every receptive field
    Image.fromarray(rng.integers(0, 256, (1500, 2000, 3), dtype=np.uint8)).save(d / "large.jpg")
    # weights: another architecture, truncated, NaN, Inf
    other = models.build("zfnet-small-64")
    save_weights(
        other, str(d / "other.safetensors"), for_model(64, 3, "resize", 1.0).with_mean(torch.full((3, 73, 73), 100.0))
    )
    small = models.build("zfnet-small")
    pp = zfnet.pretrained().preprocess
    save_weights(small, str(d / "small.safetensors"), pp)
    blob = (d / "small.safetensors").read_bytes()
    (d / "cut.safetensors").write_bytes(blob[: len(blob) // 2])
    for name, value in (("nan", float("nan")), ("inf", float("inf"))):
        bad = models.build("zfnet-small")
        with torch.no_grad():
            bad.fc6.bias[3] = value
        save_weights(bad, str(d / f"{name}.safetensors"), pp)
    os.makedirs(d / "empty")
    os.makedirs(d / "nothing-but-text" / "a")
    (d / "nothing-but-text" / "a" / "x.png").write_text("no")
    (d / "parts-outside.json").write_text(
        json.dumps(
            {
                "data": "fashion-mnist-mini",
                "split": "test",
                "images": [0, 1],
                "parts": {"toe": [[20, 20, 40, 40], [0, 0, 4, 4]]},
            }
        )
    )
    (d / "parts-broken.json").write_text("{not json")
    os.makedirs(d / "flat")  # a folder of photos: no classes
    Image.fromarray(grey).save(d / "flat" / "one.png")
    os.makedirs(d / "other-atlas")  # an atlas manifest of another model
    (d / "other-atlas" / "manifest.json").write_text(
        json.dumps({"model": {"name": "zfnet", "weights_sha256": "x"}, "layers": {"conv1": {"maps": []}}})
    )
    (d / "parts-list.json").write_text(json.dumps({"images": [0], "parts": [[0, 0, 4, 4]]}))
    (d / "recipe-bad.json").write_text(json.dumps({"lr": -1}))
    (d / "afile").write_text("x")
    np.save(d / "mean-wrong.npy", np.zeros((3, 5, 5), np.float32))
    return d


def _cases(d) -> list[tuple[str, list[str], tuple[str, ...]]]:
    """(what is wrong, argv, words the one line must contain). `OUT` stands for a fresh output path."""
    proj = ["project", "--pretrained", "--layer", "conv3", "--channel", "0", "--out", "OUT.png"]
    img = str(d / "grey.png")
    occ = ["occlusion", "--pretrained", "--image", img, "--label", "9", "--out", "OUT"]
    inv = ["invariance", "--pretrained", "--image", img, "--label", "9", "--out", "OUT"]
    mini = ["--data", "fashion-mnist-mini"]
    small = ["--model", "zfnet-small"]
    return [
        ("missing image", [*proj, "--image", str(d / "missing.png")], ("missing.png", "does not exist")),
        ("truncated image", [*proj, "--image", str(d / "truncated.png")], ("truncated.png",)),
        ("zero-byte image", [*proj, "--image", str(d / "zero.png")], ("zero.png",)),
        ("text file named .png", [*proj, "--image", str(d / "text.png")], ("text.png",)),
        ("non-image file", [*occ[:3], str(d / "notes.txt"), *occ[4:]], ("notes.txt",)),
        ("image over 100 megapixels", [*proj, "--image", str(d / "huge.png")], ("downscale it",)),
        (
            "unknown model",
            [
                "project",
                "--model",
                "zfnet-nope",
                "--image",
                img,
                "--layer",
                "conv1",
                "--channel",
                "0",
                "--out",
                "OUT.png",
            ],
            ("zfnet-nope",),
        ),
        ("unknown torchvision model", ["atlas", "--model", "torchvision:nope", *mini, "--out", "OUT"], ("nope",)),
        ("unknown layer", [*proj[:3], "conv9", *proj[4:], "--image", img], ("no layer 'conv9'",)),
        ("unknown layer in the report", ["report", "--layers", "conv1,fc99", "--out", "OUT"], ("fc99",)),
        ("unknown deconvnet mode", [*proj, "--image", img, "--mode", "sideways"], ("sideways",)),
        ("unknown transform", [*inv, "--transforms", "translate,spin"], ("spin",)),
        ("unknown dataset", ["atlas", "--pretrained", "--data", "imagenot", "--out", "OUT"], ("imagenot",)),
        ("unknown split", ["atlas", "--pretrained", *mini, "--split", "dev", "--out", "OUT"], ("no split 'dev'",)),
        ("unknown report stage", ["report", "--only", "atlas,colour", "--out", "OUT"], ("colour",)),
        ("unknown device", [*proj, "--image", img, "--device", "tpu"], ("device",)),
        ("channel out of range", [*proj[:5], "9999", *proj[6:], "--image", img], ("9999",)),
        ("position out of range", [*proj, "--image", img, "--position", "50,50"], ("outside conv3",)),
        ("position not Y,X", [*proj, "--image", img, "--position", "5"], ("Y,X",)),
        ("occluder larger than the image", [*occ, "--window", "40"], ("40",)),
        ("occluder stride 0", [*occ, "--stride", "0"], ("occlusion setting stride=0: must be an integer >= 1",)),
        ("occluder window 0 in the report", ["report", "--window", "0", "--out", "OUT"], ("window=0", ">= 1")),
        (
            "weights of another architecture",
            ["atlas", *small, "--weights", str(d / "other.safetensors"), *mini, "--out", "OUT"],
            ("other.safetensors",),
        ),
        (
            "truncated weights",
            ["report", *small, "--weights", str(d / "cut.safetensors"), *mini, "--out", "OUT"],
            ("cut.safetensors", "damaged"),
        ),
        (
            "NaN weights",
            ["occlusion", *small, "--weights", str(d / "nan.safetensors"), "--image", img, "--out", "OUT"],
            ("NaN or Inf", "fc6.bias"),
        ),
        (
            "Inf weights",
            [
                "invariance",
                *small,
                "--weights",
                str(d / "inf.safetensors"),
                "--image",
                img,
                "--label",
                "1",
                "--out",
                "OUT",
            ],
            ("NaN or Inf",),
        ),
        (
            "weights file missing",
            ["atlas", *small, "--weights", str(d / "nope.safetensors"), *mini, "--out", "OUT"],
            ("does not exist",),
        ),
        (
            "--weights without --model",
            ["report", "--weights", str(d / "small.safetensors"), "--out", "OUT"],
            ("--model",),
        ),
        (
            "empty dataset folder",
            ["atlas", "--pretrained", "--data", f"folder:{d / 'empty'}", "--out", "OUT"],
            ("empty",),
        ),
        (
            "folder where no file is an image",
            ["atlas", "--pretrained", "--data", f"folder:{d / 'nothing-but-text'}", "--split", "all", "--out", "OUT"],
            ("could be read",),
        ),
        (
            "dataset path that is a file",
            ["atlas", "--pretrained", "--data", str(d / "afile"), "--out", "OUT"],
            ("is a file",),
        ),
        (
            "parts boxes outside the image",
            ["correspondence", "--pretrained", "--parts", str(d / "parts-outside.json"), "--out", "OUT"],
            ("not inside the 28x28",),
        ),
        (
            "parts file not JSON",
            ["correspondence", "--pretrained", "--parts", str(d / "parts-broken.json"), "--out", "OUT"],
            ("parts-broken.json",),
        ),
        ("output folder under a file", ["report", "--out", str(d / "afile" / "rep")], ("not a writable folder",)),
        (
            "output folder that is a file",
            ["occlusion", "--pretrained", "--image", img, "--out", str(d / "afile")],
            ("is a file",),
        ),
        ("index outside the split", ["occlusion", "--pretrained", *mini, "--index", "5000", "--out", "OUT"], ("5000",)),
        ("index without data", ["occlusion", "--pretrained", "--index", "3", "--out", "OUT"], ("--data",)),
        (
            "label that is no class",
            ["occlusion", "--pretrained", "--image", img, "--label", "Zebra", "--out", "OUT"],
            ("Zebra",),
        ),
        (
            "mean image of the wrong shape",
            [
                "atlas",
                *small,
                "--weights",
                str(d / "small.safetensors"),
                "--mean",
                str(d / "mean-wrong.npy"),
                *mini,
                "--out",
                "OUT",
            ],
            ("mean-wrong.npy",),
        ),
        (
            "exclusion list missing",
            ["atlas", "--pretrained", *mini, "--exclude", str(d / "nope.txt"), "--out", "OUT"],
            ("nope.txt",),
        ),
        (
            "exclusion list that is an image",
            ["atlas", "--pretrained", *mini, "--exclude", img, "--out", "OUT"],
            ("exclusion list", "grey.png", "not UTF-8"),
        ),
        (
            "class names file that is an image",
            ["occlusion", *small, "--image", img, "--classes", img, "--out", "OUT"],
            ("--classes", "not UTF-8"),
        ),
        (
            "parts file of the wrong shape",
            ["correspondence", "--pretrained", "--parts", str(d / "parts-list.json"), "--out", "OUT"],
            ("parts-list.json", "'parts'"),
        ),
        (
            "parts file that is an image",
            ["correspondence", "--pretrained", "--parts", img, "--out", "OUT"],
            ("parts file", "not UTF-8"),
        ),
        ("bad recipe value", ["train", "--recipe", str(d / "recipe-bad.json"), *small, *mini, "--out", "OUT"], ("lr",)),
        ("zero epochs", ["train", *small, *mini, "--epochs", "0", "--out", "OUT"], ("epochs",)),
        ("infinite learning rate", ["train", *small, *mini, "--lr", "inf", "--out", "OUT"], ("lr is inf",)),
        (
            "projection onto its own image",
            ["project", "--pretrained", "--image", img, "--layer", "conv3", "--channel", "0", "--out", img],
            ("is --image", "itself", "overwritten"),
        ),
        (
            "per-class of zero",
            ["transfer", "--pretrained", "--data", "mnist5k", "--per-class", "0", "--out", "OUT"],
            ("--per-class",),
        ),
        (
            "not-a-number fill",
            ["occlusion", "--pretrained", "--image", img, "--fill", "nan", "--out", "OUT"],
            ("occlusion setting fill=nan",),
        ),
        ("negative workers", ["report", "--workers", "-2", "--out", "OUT"], ("workers=-2", ">= 0")),
        ("k of zero", ["atlas", "--pretrained", *mini, "--k", "0", "--out", "OUT"], ("atlas setting k=0",)),
        ("--include not a folder", ["report", "--include", str(d / "afile"), "--out", "OUT"], ("--include",)),
        ("--snapshots not a folder", ["report", "--snapshots", str(d / "nope"), "--out", "OUT"], ("--snapshots",)),
        ("report of a model without data", ["report", *small, "--out", "OUT"], ("--data",)),
        (
            "transfer layer unknown",
            ["transfer", "--pretrained", "--data", "mnist5k", "--layer", "fc99", "--out", "OUT"],
            ("fc99",),
        ),
        ("port out of range", ["serve", str(d), "--port", "70000"], ("TCP port",)),
        (
            "per-class references of unlabelled data",
            ["atlas", "--pretrained", "--data", str(d / "flat"), "--per-class", "2", "--out", "OUT"],
            ("--per-class needs labelled data",),
        ),
        (
            "per-class negative",
            ["atlas", "--pretrained", *mini, "--per-class", "-1", "--out", "OUT"],
            ("atlas setting per_class=-1",),
        ),
        ("explore port out of range", ["explore", "--port", "70000"], ("TCP port",)),
        ("explore atlas that is no atlas", ["explore", "--atlas", str(d / "empty")], ("manifest.json",)),
        ("explore atlas of another model", ["explore", "--atlas", str(d / "other-atlas")], ("made with 'zfnet'",)),
    ]


CASES = _cases(__import__("pathlib").Path("/DIR"))


@pytest.mark.parametrize("what", [c[0] for c in CASES])
def test_bad_input_is_one_line(what, files, tmp_path, capsys):
    _, argv, words = next(c for c in _cases(files) if c[0] == what)
    out = tmp_path / "out"
    argv = [a.replace("OUT", str(out)) for a in argv]
    code, stdout, err = cli(capsys, *argv)
    assert_one_line_error(code, err, *words)
    # nothing half-written looks complete: the output is absent, or an empty folder
    assert not os.path.exists(str(out) + ".png")
    assert not out.exists() or not [f for f in os.listdir(out) if not f.startswith(".")], os.listdir(out)


def test_each_bad_input_case_has_its_own_name():
    """A case is looked up by its name: a second case of the same name would never run (each case itself is
    checked by test_bad_input_is_one_line, not counted)."""
    names = [c[0] for c in CASES]
    assert len(set(names)) == len(names), sorted(n for n in names if names.count(n) > 1)


@pytest.mark.parametrize(
    "name", ["grey.png", "rgba.png", "grey16.png", "palette.png", "cmyk.jpg", "tiny.png", "large.jpg"]
)
def test_odd_images_work(name, files, tmp_path, capsys):
    """Grey, RGBA, 16-bit, palette and CMYK images, one smaller than any receptive field and a large photo are
    converted as documented (README: Images) and analysed."""
    code, _, err = cli(
        capsys,
        "project",
        "--pretrained",
        "--image",
        str(files / name),
        "--layer",
        "conv2",
        "--channel",
        "3",
        "--out",
        str(tmp_path / "p.png"),
    )
    assert code == 0, err
    assert Image.open(tmp_path / "p.png").size[0] > 0


def test_api_errors_are_one_line():
    p = zfnet.pretrained()
    x = p.preprocess([Image.new("L", (28, 28), 128)])
    calls = {
        "occlusion window": lambda: zfnet.occlusion(p, x[:1], window=29),
        "occlusion stride": lambda: zfnet.occlusion(p, x[:1], window=8, stride=0),
        "occlusion layer": lambda: zfnet.occlusion(p, x[:1], window=8, layer="conv8"),
        "occlusion fill": lambda: zfnet.occlusion(p, x[:1], window=8, fill=300),
        "occlusion grey unknown": lambda: zfnet.occlusion(p.model, x[:1], window=8),
        "invariance transform": lambda: zfnet.invariance(p, x, labels=[0], transforms=["spin"]),
        "correspondence box": lambda: zfnet.correspondence(p, x, parts={"toe": [(0, 0, 40, 40)]}),
        "project channel": lambda: zfnet.project(p.model, x, layer="conv1", channel=480),
        "receptive field layer": lambda: zfnet.receptive_field(p.model, x, layer="conv7"),
        "build model": lambda: zfnet.models.build("zfnet-huge"),
        "open model": lambda: zfnet.open_model("zfnet-small", "/nonexistent/w.safetensors"),
    }
    for what, call in calls.items():
        with pytest.raises(UsageError) as e:
            call()
        assert "\n" not in str(e.value) and len(str(e.value)) > 15, what


def test_full_disk_while_checkpointing_keeps_the_previous_checkpoint(tmp_path, capsys, monkeypatch):
    """Epoch 1's checkpoint is written; writing epoch 2's fails as on a full disk: one line, exit 2, and the
    checkpoint on disk is still epoch 1's, from which --resume continues."""
    import safetensors.torch as st

    from zfnet.checkpoints import load_checkpoint

    out = tmp_path / "run"
    args = [
        "train",
        "--model",
        "zfnet-small",
        "--data",
        "synthetic:64",
        "--epochs",
        "2",
        "--batch-size",
        "16",
        "--workers",
        "0",
        "--no-progress",
        "--out",
        str(out),
    ]
    real = st.save_file
    seen = {"n": 0}

    def full_disk(tensors, path, metadata=None):
        if ".checkpoint.safetensors" in os.path.basename(path):
            seen["n"] += 1
            if seen["n"] == 2:
                with open(path, "wb") as f:
                    f.write(b"\0" * 1000)  # part of the file made it to disk
                raise OSError(errno.ENOSPC, "No space left on device")
        return real(tensors, path, metadata=metadata)

    monkeypatch.setattr(st, "save_file", full_disk)
    code, _, err = cli(capsys, *args)
    assert_one_line_error(code, err, "disk full", "checkpoint.safetensors", "intact")
    _, meta = load_checkpoint(str(out / "checkpoint.safetensors"))
    assert json.loads(meta["state"])["epoch"] == 1 if "state" in meta else meta.get("epoch") == "1", meta
    assert not [f for f in os.listdir(out) if f.endswith(".tmp")]
    monkeypatch.setattr(st, "save_file", real)
    code, _, err = cli(capsys, *args, "--resume")
    assert code == 0, err
    assert (out / "model.safetensors").is_file()


# --- untrusted files ------------------------------------------------------------------------------------------


class _Evil:
    def __init__(self, marker: str) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_malicious_pickle_runs_nothing(tmp_path, capsys):
    marker = tmp_path / "pwned"
    evil = tmp_path / "weights.pt"
    with open(evil, "wb") as f:
        pickle.dump({"conv1.weight": _Evil(str(marker))}, f)
    img = tmp_path / "x.png"
    Image.new("L", (28, 28)).save(img)
    for argv in (
        [
            "project",
            "--model",
            "zfnet-small",
            "--weights",
            str(evil),
            "--image",
            str(img),
            "--layer",
            "conv1",
            "--channel",
            "0",
            "--out",
            str(tmp_path / "p.png"),
        ],
        [
            "report",
            "--model",
            "zfnet-small",
            "--weights",
            str(evil),
            "--data",
            "fashion-mnist-mini",
            "--out",
            str(tmp_path / "rep"),
        ],
        ["evaluate", "--model", "zfnet-small", "--weights", str(evil), "--data", "fashion-mnist-mini"],
    ):
        code, _, err = cli(capsys, *argv)
        assert_one_line_error(code, err, "weights.pt", "cannot read weights")
    with pytest.raises(UsageError):
        WeightsFile.read(evil)
    assert not marker.exists()
    # the same file unpickled the unsafe way does run code: the test's payload is real
    subprocess.run(
        [sys.executable, "-c", f"import pickle; pickle.load(open({str(evil)!r}, 'rb'))"],
        check=False,
        capture_output=True,
    )
    assert marker.exists()


HOSTILE = ["<script>window.__pwned=1</script>", "a\"b'c", "..", "x&amp;<b>"]


@pytest.fixture(scope="module")
def hostile_report(tmp_path_factory):
    """A report of a folder dataset whose class and file names, part names and an included result's names are
    hostile; the included result also names files outside its folder."""
    root = tmp_path_factory.mktemp("hostile")
    data = root / "data"
    for k, cls in enumerate(["<script>window.__pwned=1<", "cls \"quoted\" 'q'", "..dots..", "a&b"]):
        for split in ("train", "val"):
            os.makedirs(data / split / cls)
            for i in range(3):
                Image.new("RGB", (36, 36), (60 * k, 40 * i, 90)).save(data / split / cls / f'<b>{i}".png')
    net = models.build("zfnet-small-rgb", num_classes=4)
    from zfnet.weights import default_preprocess

    pp = default_preprocess(net)
    weights = root / "w.safetensors"
    save_weights(net, str(weights), pp.with_mean(torch.full((3, pp.base_size, pp.base_size), 90.0)))
    parts = root / "parts.json"
    parts.write_text(
        json.dumps(
            {
                "images": [0, 1],
                "parts": {HOSTILE[0]: [[0, 0, 8, 8], [2, 2, 9, 9]], HOSTILE[1]: [[4, 4, 12, 12], [4, 4, 12, 12]]},
            }
        )
    )
    inc = root / "inc" / "res"
    os.makedirs(inc)
    Image.new("RGB", (8, 8)).save(root / "inc" / "secret.png")  # beside the result folder, not in it
    (inc / "results.json").write_text(
        json.dumps(
            {"experiment": HOSTILE[0] + " table", "table": "table.md", "plot": "../secret.png", "figure": "/etc/passwd"}
        )
    )
    (inc / "table.md").write_text(f"### {HOSTILE[0]}\n\n| a | {HOSTILE[1]} |\n|---|---|\n| {HOSTILE[3]} | 1 |\n")
    out = root / "rep"
    code = subprocess.run(
        [
            sys.executable,
            "-m",
            "zfnet",
            "report",
            "--model",
            "zfnet-small-rgb",
            "--weights",
            str(weights),
            "--data",
            f"folder:{data}",
            "--parts",
            str(parts),
            "--include",
            str(root / "inc"),
            "--examples",
            "2",
            "--layers",
            "conv1,conv2",
            "--out",
            str(out),
        ],
        capture_output=True,
        text=True,
        env=dict(os.environ, ZFNET_PROGRESS="0"),
        cwd=REPO,
    )
    assert code.returncode == 0, code.stderr
    return out


def test_hostile_names_are_escaped_in_every_page(hostile_report):
    pages = list(hostile_report.rglob("*.html"))
    assert len(pages) >= 2
    for page in pages:
        text = page.read_text(encoding="utf-8")
        assert "<script>window.__pwned" not in text and '"quoted"' not in text, page
    # the atlas viewer's data is a JS file (never inline HTML): names are JSON strings there, escaped on display
    data = (hostile_report / "atlas" / "atlas-data.js").read_text()
    assert (
        "<script>window.__pwned=1<" in json.loads(data[data.index("=") + 1 :].strip().rstrip(";"))["dataset"]["classes"]
    )
    html = (hostile_report / "index.html").read_text()
    assert "&lt;script&gt;window.__pwned=1" in html  # shown, as text


def test_manifest_names_never_leave_the_output_folder(hostile_report):
    inc = json.loads((hostile_report / "included" / "included.json").read_text())
    assert inc["results"][0]["figures"] == [] and inc["results"][0]["table"] == "00/table.md"
    for path in hostile_report.rglob("*"):
        assert os.path.realpath(path).startswith(os.path.realpath(hostile_report))
    assert not (hostile_report / "secret.png").exists() and not (hostile_report / "included" / "secret.png").exists()


@needs_chromium
def test_hostile_report_runs_no_script(hostile_report, browser):
    browser.get_log("browser")
    for page in (hostile_report / "index.html", hostile_report / "atlas" / "index.html"):
        browser.get(page.as_uri())
        assert browser.execute_script("return window.__pwned === undefined")
        assert [m for m in browser.get_log("browser") if m["level"] == "SEVERE"] == []


# --- folder locks ---------------------------------------------------------------------------------------------


def test_second_run_into_the_same_folder_is_refused(tmp_path):
    from zfnet.io import folder_lock

    out = tmp_path / "rep"
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import sys, time; from zfnet.io import folder_lock\n"
            f"with folder_lock({str(out)!r}):\n    print('held', flush=True); time.sleep(60)",
        ],
        stdout=subprocess.PIPE,
        text=True,
        env=dict(os.environ),
        cwd=REPO,
    )
    try:
        assert holder.stdout.readline().strip() == "held"
        r = subprocess.run(
            [sys.executable, "-m", "zfnet", "report", "--out", str(out)],
            capture_output=True,
            text=True,
            env=dict(os.environ, ZFNET_PROGRESS="0"),
            cwd=REPO,
        )
        assert_one_line_error(r.returncode, r.stderr, f"pid {holder.pid}", "is writing", "another --out")
        with pytest.raises(UsageError):
            with folder_lock(out):
                pass
        # the same folder reached by another spelling is the same lock
        with pytest.raises(UsageError):
            with folder_lock(str(tmp_path / "x" / ".." / "rep")):
                pass
    finally:
        holder.kill()  # SIGKILL: no cleanup runs in the holder
        holder.wait()
    with folder_lock(out):  # a killed holder leaves nothing stuck
        pass
    with folder_lock(out), pytest.raises(UsageError):
        with folder_lock(out):
            pass


# --- hooks and models -----------------------------------------------------------------------------------------


def _analyses():
    """Every analysis that runs the model, as f(model, x, labels, dataset)."""
    from zfnet.experiments.transfer import extract
    from zfnet.methods.architecture import architecture
    from zfnet.methods.atlas import scan, top_projections
    from zfnet.methods.deconvnet import Deconvnet, Target

    def atlas(m, x, y, ds):
        res = scan(m, ds, layers=["conv2", "conv5"], k=2, batch_size=8, workers=0, progress=False)
        with Deconvnet(m) as dn:
            top_projections(
                dn, ds, ds.preprocess, res.top["conv5"], "conv5", [0, 1], zfnet.receptive_field(m, x, layer="conv5")
            )

    def deconv_many(m, x, y, ds):
        with Deconvnet(m, rule="guided") as dn:
            dn.project_targets(x, dn.targets(x, "conv4", [3, 1, 0]) + [Target(0, "conv2", 1, 2, 2)])

    return {
        "deconvnet": lambda m, x, y, ds: zfnet.project(m, x, layer="conv3", channel=5),
        "deconvnet targets": deconv_many,
        "unit projection": lambda m, x, y, ds: zfnet.project(m, x[:1], layer="conv5", channel=2, unit=True),
        "atlas": atlas,
        "occlusion exact": lambda m, x, y, ds: zfnet.occlusion(
            m, x[:1], target=y[0], window=8, stride=4, preprocess=ds.preprocess
        ),
        "occlusion approx": lambda m, x, y, ds: zfnet.occlusion(
            m, x[:1], target=y[0], window=8, stride=4, strategy="approx", preprocess=ds.preprocess
        ),
        "occlusion naive": lambda m, x, y, ds: zfnet.occlusion(
            m, x[:1], target=y[0], window=8, stride=4, strategy="naive", preprocess=ds.preprocess
        ),
        "correspondence": lambda m, x, y, ds: zfnet.correspondence(
            m, x, parts={"toe": [(20, 0, 28, 8)] * len(x)}, random_draws=2, preprocess=ds.preprocess
        ),
        "invariance": lambda m, x, y, ds: zfnet.invariance(
            m,
            x,
            labels=y,
            transforms=["rotate"],
            values={"rotate": [0, 30]},
            layers=("conv1", "fc7"),
            preprocess=ds.preprocess,
        ),
        "layer probe / transfer features": lambda m, x, y, ds: extract(
            m, ds, layers=["conv1", "conv5", "fc7"], progress=False
        ),
        "receptive field": lambda m, x, y, ds: zfnet.receptive_field(m, x, layer="conv4"),
        "architecture (Fig. 3)": lambda m, x, y, ds: architecture(m, x),
    }


@pytest.mark.parametrize("raised", [False, True], ids=["returns", "raises"])
@pytest.mark.parametrize("training", [False, True], ids=["eval", "train"])
def test_analyses_leave_the_model_as_they_found_it(training, raised):
    """No hook, no torch-function mode, no gradient left on the model; its outputs, weights and train/eval mode
    unchanged - also when the analysis raised halfway (a failing layer deep in the forward)."""
    from conftest import hook_count

    from zfnet import data as zdata

    p = zfnet.pretrained()
    model = p.model.train(training)
    ds = zdata.open_dataset("fashion-mnist-mini", "test", p.preprocess).head(16)
    x = torch.stack([p.preprocess.eval_input(ds.base(i)[None])[0] for i in range(3)])
    y = [int(ds.labels[i]) for i in range(3)]
    state = {k: v.clone() for k, v in model.state_dict().items()}
    modes = [m.training for m in model.modules()]
    with torch.no_grad():
        before = model.eval()(x)
    model.train(training)
    calls = {"n": 0}

    def fail(module, inputs, output):
        calls["n"] += 1
        raise RuntimeError("injected failure")

    for what, analysis in _analyses().items():
        handle = model.conv3.register_forward_hook(fail) if raised else None
        try:
            if raised:
                with pytest.raises(RuntimeError, match="injected failure"):
                    analysis(model, x, y, ds)
            else:
                analysis(model, x, y, ds)
        finally:
            if handle is not None:
                handle.remove()
        assert hook_count(model) == 0, what
        assert torch._C._len_torch_function_stack() == 0, what
        assert [m.training for m in model.modules()] == modes, what
        assert all(p_.grad is None and p_.requires_grad for p_ in model.parameters()), what
        assert all(torch.equal(v, state[k]) for k, v in model.state_dict().items()), what
    if raised:
        assert calls["n"] >= 8  # every analysis but the two that never run a forward reached the failing layer
    with torch.no_grad():
        assert torch.equal(model.eval()(x), before)
