"""The command line: every subcommand has --help with an example; user errors are one line, exit code 2."""

from __future__ import annotations

import json

import pytest
from conftest import run_cli
from PIL import Image

COMMANDS = ["models", "layers", "train", "evaluate", "project", "atlas", "filters", "evolution", "serve"]


def test_help_lists_every_command_with_an_example(capsys):
    r = run_cli("--help")  # the installed entry point, in its own process
    assert r.returncode == 0
    for c in COMMANDS:
        assert c in r.stdout
    from zfnet.cli import main

    for c in COMMANDS:  # each command's help, in this process (the parser is the same one)
        with pytest.raises(SystemExit) as e:
            main([c, "--help"])
        out = capsys.readouterr().out
        assert e.value.code == 0 and "example:" in out and "zfnet " + c in out, c


@pytest.mark.parametrize(
    "args,needle",
    [
        (["train", "--model", "nope", "--data", "synthetic", "--out", "{tmp}/r"], "unknown model 'nope'"),
        (["train", "--model", "zfnet-small", "--data", "imagenet:{tmp}/missing", "--out", "{tmp}/r"], "does not exist"),
        (
            [
                "train",
                "--model",
                "zfnet-small",
                "--data",
                "synthetic",
                "--out",
                "{tmp}/r",
                "--model-overrides",
                '{"input_size": 6}',
            ],
            "too small",
        ),
        (["train", "--model", "zfnet-small", "--data", "synthetic", "--out", "{tmp}/r", "--epochs", "0"], "epochs"),
        (["atlas", "--model", "zfnet-small", "--data", "{tmp}/missing", "--out", "{tmp}/a"], "neither a known name"),
        (
            [
                "project",
                "--model",
                "zfnet-small",
                "--image",
                "{tmp}/none.png",
                "--layer",
                "conv1",
                "--channel",
                "0",
                "--out",
                "{tmp}/p.png",
            ],
            "does not exist",
        ),
        (["evaluate", "--model", "zfnet-small"], "required: --data"),
        (["serve", "{tmp}"], "holds no page"),
        (
            ["filters", "--model", "zfnet-small-rgb", "--weights", "{tmp}/w.safetensors", "--out", "{tmp}/f"],
            "does not exist",
        ),
    ],
)
def test_errors_are_one_line(tmp_path, args, needle):
    r = run_cli(*[a.replace("{tmp}", str(tmp_path)) for a in args])
    assert r.returncode == 2, r.stderr
    assert needle in r.stderr
    assert r.stderr.strip().count("\n") == 0 and "Traceback" not in r.stderr


def test_project_writes_patch_and_projection(tmp_path):
    img = tmp_path / "in.png"
    Image.new("L", (40, 30), 90).save(img)
    out = tmp_path / "p.png"
    r = run_cli(
        "project",
        "--model",
        "zfnet-small",
        "--image",
        str(img),
        "--layer",
        "conv3",
        "--channel",
        "2",
        "--position",
        "3,3",
        "--mode",
        "guided",
        "--out",
        str(out),
    )
    assert r.returncode == 0, r.stderr
    info = json.loads(r.stdout)
    assert info["position"] == [3, 3] and info["settings"]["rule"] == "guided" and len(info["field_box"]) == 4
    assert Image.open(out).width > 2 * 23  # two tiles of the 23 px conv3 field, enlarged
    bad = run_cli(
        "project",
        "--model",
        "zfnet-small",
        "--image",
        str(img),
        "--layer",
        "conv3",
        "--channel",
        "999",
        "--out",
        str(out),
    )
    assert bad.returncode == 2 and "does not exist in conv3" in bad.stderr


def test_layers_table():
    r = run_cli("layers", "--model", "zfnet", "--json")
    rows = {row["layer"]: row for row in json.loads(r.stdout)}
    assert rows["conv5"]["field"] == 139 and rows["conv5"]["jump"] == 16 and rows["fc6"]["field"] is None
