"""The command line: every subcommand has --help with an example; user errors are one line, exit code 2."""

from __future__ import annotations

import json

import pytest
from conftest import run_cli
from PIL import Image

from zfnet.cli.registry import COMMANDS as REGISTERED

COMMANDS = REGISTERED.names()  # every registered command, not a list kept by hand


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


def test_every_help_example_parses():
    """Each example a command's help shows is a command line its parser takes (flags that exist, values of the
    right form): an example that names a renamed or removed flag fails here. The examples' files and weights are
    the user's, so they are parsed, not run."""
    import shlex

    from zfnet.cli import build_parser

    parser = build_parser()
    for name in COMMANDS:
        lines = [l.split("  #")[0].strip() for l in REGISTERED.get(name).example.splitlines()]
        assert lines, name
        commands = []
        for line in lines:
            words = shlex.split(line)
            start = words.index("zfnet") + 1 if "zfnet" in words else words.index("-m") + 2  # torchrun ... -m zfnet
            commands.append(parser.parse_args(words[start:]).command)
        assert commands[0] == name, (name, lines)  # it may go on with the next step (dedupe, then train)


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
