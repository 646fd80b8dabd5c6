"""Issue 34: each method declares its settings once (`zfnet.METHODS[name].settings`), and the Python API, the CLI
and the explorer are derived from it: the same defaults, the same one line for a bad value everywhere.

The explorer's half of the "same line" check is in tests/test_explore.py (it needs the running server)."""

from __future__ import annotations

import argparse
import dataclasses
import inspect
import json
import math

import pytest
import torch

import zfnet
from zfnet import models
from zfnet.cli import build_parser, main
from zfnet.cli.settings import PREFIX, settings_from_args, shown
from zfnet.settings import Settings

# the command that offers each method's settings as flags (architecture, receptive_field and paint - the explorer's
# and Python's - have none)
COMMAND = {
    "atlas": "atlas",
    "correspondence": "correspondence",
    "evidence": "evidence",
    "evolution": "evolution",
    "filters": "filters",
    "invariance": "invariance",
    "occlusion": "occlusion",
    "project": "project",
    "visualize": "visualize",
}
# one value of each method's settings other than the default (for the JSON round trip) ...
OTHER = {
    "atlas": {"layers": ("conv1", "conv2"), "k": 4},
    "correspondence": {"fill": (10.0, 20.0, 30.0), "random_draws": 0, "seed": 3},
    "evidence": {"layers": ("conv3",), "units": 2, "rules": ("guided",), "window": 4},
    "evolution": {"maps": 2, "rule": "guided", "layers": ("conv5",)},
    "faithfulness": {"steps": 8, "fill": "mean-image", "random_orders": 0},
    "filters": {"dominant": 3.5, "dead": 0.0},
    "invariance": {"transforms": ("rotate",), "fill": "mean-image"},
    "occlusion": {"window": 4, "fill": 128.0, "strategy": "approx", "drill": None, "compare_exact": True},
    "project": {"rule": "backprop", "unit": True},
    "architecture": {},
    "receptive_field": {},
    "visualize": {"layer": "conv3", "units": (1, 2), "steps": 8, "objective": "neuron", "position": (2, 3)},
    "paint": {"target": 3, "layer": "conv2", "map": 1, "blur": 2.0, "strategy": "whole"},
}
# ... and one bad value of each, with the flags its command needs besides
BAD = {
    "atlas": ({"k": 0}, ["--data", "fashion-mnist-mini"]),
    "correspondence": ({"random_draws": -1}, []),
    "evidence": ({"rules": ("guided", "nope")}, ["--pretrained"]),
    "evolution": ({"maps": 0}, ["--data", "fashion-mnist-mini", "--pretrained"]),
    "filters": ({"dead": 2.0}, []),
    "invariance": ({"transforms": ("shear",)}, []),
    "occlusion": ({"window": 0}, ["--pretrained"]),
    "project": ({"rule": "nope"}, ["--image", "x.png", "--layer", "conv1", "--channel", "0"]),
    "visualize": ({"steps": 0}, ["--pretrained"]),
}


def _subparser(command: str) -> argparse.ArgumentParser:
    sub = next(a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction))
    return sub.choices[command]


@pytest.mark.parametrize("name", sorted(zfnet.METHODS))
def test_every_method_declares_one_frozen_settings_class(name):
    record = zfnet.METHODS[name]
    cls = record.settings
    assert issubclass(cls, Settings) and dataclasses.is_dataclass(cls) and cls.__dataclass_params__.frozen
    s = cls()
    with pytest.raises(dataclasses.FrozenInstanceError):
        setattr(s, next((f.name for f in dataclasses.fields(cls)), "anything"), 1)
    for value in (s, cls(**OTHER[name])):  # JSON round trip, through text
        assert cls.from_json(json.loads(json.dumps(value.to_json()))) == value
        assert value.fingerprint() == cls.from_json(value.to_json()).fingerprint()
    if OTHER[name]:
        assert cls(**OTHER[name]).fingerprint() != s.fingerprint()
    # the method takes the settings as one value or as keywords, and declares no default of its own
    params = inspect.signature(record.function).parameters
    assert "settings" in params and params["settings"].default is None
    fields = {f.name for f in dataclasses.fields(cls)}
    assert not fields & set(params), f"{name} repeats settings fields as its own keywords: {fields & set(params)}"
    if fields:
        assert any(p.kind is p.VAR_KEYWORD for p in params.values())
    for f in cls.fields():  # every field is documented, with a range the help states
        assert f.help and f.rule(), (name, f.name)


@pytest.mark.parametrize("name", sorted(COMMAND))
def test_the_cli_offers_every_setting_with_the_class_default(name):
    cls, command = zfnet.METHODS[name].settings, COMMAND[name]
    parser = _subparser(command)
    by_dest = {a.dest: a for a in parser._actions}
    text = " ".join(parser.format_help().split())
    for f in cls.fields():
        action = by_dest[PREFIX + f.name]
        assert f.flag in action.option_strings and action.default is None  # left out: the class's default
        assert f"(default: {shown(f.default)})" in action.help, (command, f.name, action.help)
        assert f.flag in text
    # and what the flags give back, given nothing, is the class's defaults
    args = parser.parse_args(["--out", "o", *BAD[name][1]])
    assert settings_from_args(args, cls) == cls()


def _result_settings(name: str, result):
    if name == "occlusion":
        return result[0].settings
    return result.settings


def test_a_result_carries_the_settings_it_was_made_with():
    torch.manual_seed(0)
    model = models.build("zfnet-small").eval()
    x = torch.randn(2, 1, 28, 28) * 50
    p = zfnet.weights.default_preprocess(model).with_mean(torch.full((1, 32, 32), 60.0))
    opened = zfnet.opened_module(model, p)
    calls = {
        "atlas": lambda **kw: zfnet.atlas(model, x, **kw),
        "correspondence": lambda **kw: zfnet.correspondence(
            opened, x, parts={"corner": [(0, 0, 4, 4)] * 2}, **{"layers": ("conv5",), **kw}
        ),
        "evidence": lambda **kw: zfnet.evidence(opened, x, **{"units": 1, "others": 1, **kw}),
        "filters": lambda **kw: zfnet.filters(model, x, **kw),
        "invariance": lambda **kw: zfnet.invariance(opened, x, values={"rotate": [0, 90]}, **kw),
        "occlusion": lambda **kw: zfnet.occlusion(opened, x[:1], **{"window": 14, "stride": 14, **kw}),
        "project": lambda **kw: zfnet.project(model, x, layer="conv2", channel=1, **kw),
    }
    changes = {
        "atlas": {"layers": ("conv1",), "k": 2},
        "correspondence": {"random_draws": 1, "seed": 2},
        "evidence": {"layers": ("conv2",), "rules": ("backprop",)},
        "filters": {"dominant": 1.5},
        "invariance": {"transforms": ("rotate",), "layers": ("conv1", "conv2")},
        "occlusion": {"strategy": "naive", "layer": "conv2"},
        "project": {"rule": "guided"},
    }
    for name, call in calls.items():
        cls = zfnet.METHODS[name].settings
        as_keywords = _result_settings(name, call(**changes[name]))
        as_value = _result_settings(name, call(settings=cls.build(None, **changes[name])))
        assert isinstance(as_keywords, cls) and as_keywords == as_value, name
        for k, v in changes[name].items():
            assert getattr(as_keywords, k) == v, (name, k)


@pytest.mark.parametrize("name", sorted(BAD))
def test_a_bad_setting_is_one_line_from_the_class_the_method_and_the_cli(name, tmp_path, capsys, monkeypatch):
    cls = zfnet.METHODS[name].settings
    bad, needs = BAD[name]
    with pytest.raises(zfnet.UsageError) as from_class:
        cls(**bad)
    line = str(from_class.value)
    (field,) = bad
    assert line.startswith(f"{name} setting {field}=") and "\n" not in line
    # the method itself, called with the bad keyword, raises the same line before any work
    model = models.build("zfnet-small").eval()
    with pytest.raises(zfnet.UsageError) as from_method:
        args = {"project": {"layer": "conv1", "channel": 0}, "correspondence": {"parts": {}}}.get(name, {})
        if name == "evolution":
            args = {"snapshots": []}
        zfnet.METHODS[name].function(model, torch.zeros(2, 1, 28, 28), **args, **bad)
    assert str(from_method.value) == line
    # the CLI: exit 2, the same line, nothing written
    monkeypatch.chdir(tmp_path)
    value = bad[field]
    text = ",".join(value) if isinstance(value, tuple) else str(value)
    flag = cls.field(field).flag
    out = tmp_path / "out"
    code = main([COMMAND[name], *needs, f"{flag}={text}", "--out", str(out)])
    err = capsys.readouterr().err
    assert code == 2 and err == f"zfnet {COMMAND[name]}: error: {line}\n"
    assert not out.exists()


def test_values_are_checked_by_type_and_range():
    S = zfnet.OcclusionSettings
    for bad in (
        {"window": 2.5},
        {"window": True},
        {"window": "8"},
        {"tau": 0.0},
        {"tau": math.inf},
        {"drill": -0.1},
        {"fill": "black"},
        {"fill": (1.0, 300.0)},
        {"compare_exact": 1},
        {"precision": "float16"},
        {"layer": ""},
    ):
        with pytest.raises(zfnet.UsageError, match=f"occlusion setting {next(iter(bad))}="):
            S(**bad)
    assert S(window=8.0).window == 8 and isinstance(S(tau=1).tau, float)  # canonical forms
    assert S(fill=[1, 2, 3]).fill == (1, 2, 3) and S(drill=None).drill is None
    with pytest.raises(zfnet.UsageError, match=r"occlusion has no setting 'mode' \(now strategy=\)"):
        zfnet.occlusion(models.build("zfnet-small").eval(), torch.zeros(1, 1, 28, 28), mode="naive")
    # the fitted window of the report and the explorer: 2/7 of the input, a value given is never replaced
    assert (S.for_input(28).window, S.for_input(28).stride) == (8, 2)
    assert S.for_input(224).window == 64 and S.for_input(28, window=4).stride == 1
    with pytest.raises(zfnet.UsageError, match="window=0"):
        S.for_input(28, window=0)


@pytest.mark.parametrize("field,value", [("window", 0), ("examples", 0), ("seed", -1)])
def test_the_reports_settings_are_one_class_for_the_cli_and_python(field, value, tmp_path, capsys):
    """`zfnet report`'s flags are derived from `ReportConfig` (issue 34): a bad value is the same one line from
    the class, from `zfnet.report(...)` (before the model is opened) and from the CLI (exit 2, nothing written),
    and every field but the run-only ones is a flag with the class's default."""
    from zfnet.pipelines.report import ReportConfig

    with pytest.raises(zfnet.UsageError) as from_class:
        ReportConfig(**{field: value})
    line = str(from_class.value)
    assert line.startswith(f"report setting {field}={value}") and "\n" not in line
    with pytest.raises(zfnet.UsageError) as from_api:
        zfnet.report(out=str(tmp_path / "api"), **{field: value})
    assert str(from_api.value) == line and not (tmp_path / "api").exists()
    out = tmp_path / "cli"
    assert main(["report", f"--{field}={value}", "--out", str(out)]) == 2
    assert capsys.readouterr().err == f"zfnet report: error: {line}\n" and not out.exists()
    parser = _subparser("report")
    defaults = settings_from_args(parser.parse_args([]), ReportConfig)
    for f in ReportConfig.fields():
        if f.name not in ("out", "embedded", "include", "device"):
            assert getattr(defaults, f.name) == f.default and f.flag in parser.format_help()


def test_the_reports_seed_seeds_an_unweighted_model(monkeypatch, tmp_path, capsys):
    """`zfnet report --seed N` (a flag derived from `ReportConfig`) is also the seed an unweighted model is built
    with, as before the flags were derived."""
    seen: dict = {}

    def opened(args, device, **overrides):
        seen.update(overrides)
        raise zfnet.UsageError("stopped after the seed was handed over")

    monkeypatch.setattr("zfnet.cli.args.open_from_args", opened)
    out = tmp_path / "r"
    assert (
        main(["report", "--model", "zfnet-small", "--data", "fashion-mnist-mini", "--seed", "3", "--out", str(out)])
        == 2
    )
    assert seen["seed"] == 3 and "stopped after the seed" in capsys.readouterr().err
