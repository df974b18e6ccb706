"""Tests for the command line's options: given options are used whatever their value (``--config``,
``--resume``), every option's help shows its default, choices come from the registries."""

from __future__ import annotations

import argparse
import dataclasses
import json
import re

import pytest

from covidxr import cli
from covidxr.cli import commands, options
from covidxr.config import TrainConfig, check_config

FIELDS = [f.name for f in dataclasses.fields(TrainConfig)]
#: Fields whose default (None) cannot be spelled on the command line: (config.json's value, the value given).
NONE_DEFAULTS = {"data_dir": ("/a", "/b"), "fine_tune_learning_rate": (0.05, 0.01), "folds": (5, 3),
                 "split_file": ("a.csv", "b.csv"), "cache_dir": ("/c1", "/c2"), "workers": (2, 3),
                 "mixed_precision": ("mixed_float16", "float32"), "feature_layer": ("block4_conv3", "none")}


def _subparsers(parser):
    return next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))


def _command(name):
    return _subparsers(cli.build_parser()).choices[name]


def _action(parser, dest):
    found = [a for a in parser._actions if a.dest == dest]
    return found[0] if found else None


def _spell(action, value) -> list[str]:
    """The command-line arguments that give ``value`` to ``action``."""
    flag = action.option_strings[0]
    if isinstance(action, argparse.BooleanOptionalAction):
        return [flag if value else "--no-" + flag[2:]]
    text = {True: "on", False: "off"}.get(value, value) if isinstance(value, bool) else value
    return [flag, str(text)]


def _other(action, value):
    """A value of the option other than ``value``."""
    if isinstance(value, bool):
        return not value
    if action.dest == "jit_compile":
        return True
    if action.dest == "verbose":
        return 2
    if action.choices is not None:
        return next(c for c in action.choices if c != value)
    if isinstance(value, (int, float)):
        return value * 2 + 1
    return f"{value}-other"


def _cases():
    train = _command("train")
    for name in FIELDS:
        action = _action(train, name)
        if name == "run_name":
            yield pytest.param(name, None, None, None, id=name)
            continue
        default = getattr(TrainConfig(), name)
        if default is None:
            in_config, given = NONE_DEFAULTS[name]
        else:
            in_config, given = _other(action, default), default  # the default itself, given, must win
        yield pytest.param(name, action, in_config, given, id=name)


@pytest.mark.parametrize(("name", "action", "in_config", "given"), list(_cases()))
def test_every_option_given_wins_over_the_config(name, action, in_config, given, tmp_path, capsys):
    path = tmp_path / "config.json"
    if name == "run_name":  # no option: a repeated run gets a new name
        assert _action(_command("train"), name) is None
        path.write_text(json.dumps({**TrainConfig().to_dict(), "run_name": "old"}))
        args = cli.build_parser().parse_args(["train", "--config", str(path)])
        assert commands.train_config(args).run_name is None
        return
    assert action is not None, f"TrainConfig.{name} has no train option"
    path.write_text(json.dumps({**TrainConfig().to_dict(), name: in_config}))
    args = cli.build_parser().parse_args(["train", "--config", str(path), *_spell(action, given)])
    config = commands.train_config(args)
    expected = action.type(given) if action.type and isinstance(given, str) and name != "views" else given
    assert getattr(config, name) == expected
    untouched = dataclasses.replace(config, **{name: in_config})  # every other option from the file
    assert untouched == dataclasses.replace(TrainConfig.from_json(path), run_name=None)
    if name != "verbose":  # any other option with --resume is refused, whatever its value
        assert cli.main(["train", "--resume", str(tmp_path), *_spell(action, given)]) == 2
        err = capsys.readouterr().err
        assert re.search(rf"Expected no other options with --resume.*Received: {re.escape(action.option_strings[0])}$",
                         err.strip())


def test_the_options_left_out_keep_the_config_and_defaults(tmp_path):
    path = tmp_path / "config.json"
    path.write_text(json.dumps({**TrainConfig().to_dict(), "epochs": 5, "weights": "none", "augment": False,
                                "strategy": "oversample"}))
    args = cli.build_parser().parse_args(["train", "--config", str(path), "--epochs", "10", "--weights", "imagenet",
                                          "--augment", "--strategy", "class-weight"])
    assert commands.train_config(args) == TrainConfig()  # the measurement of the issue: all four given ones win
    args = cli.build_parser().parse_args(["train", "--epochs", "3"])
    assert commands.train_config(args) == TrainConfig(epochs=3)
    assert options.config_values(cli.build_parser().parse_args(["grid", "--out", "g"]), leave_out={"folds"}) == {}


def test_resume_accepts_verbose_and_refuses_a_config(tmp_path, capsys):
    assert cli.main(["train", "--resume", str(tmp_path / "none"), "--verbose", "2"]) == 2
    assert "Expected a run folder to resume" in capsys.readouterr().err
    assert cli.main(["train", "--resume", str(tmp_path), "--config", str(tmp_path)]) == 2
    assert re.search(r"Expected no other options with --resume.*Received: --config$", capsys.readouterr().err.strip())


def _all_parsers(parser, name="covidxr"):
    yield name, parser
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for sub_name, sub in action.choices.items():
                yield from _all_parsers(sub, f"{name} {sub_name}")


def test_every_option_has_a_help_line_with_its_default():
    missing = []
    for name, parser in _all_parsers(cli.build_parser()):
        formatter = parser._get_formatter()
        for action in parser._actions:
            if not action.option_strings or action.dest in ("help", "version"):
                continue
            text = formatter._get_help_string(action) if action.help else ""
            needs_default = not action.required and action.dest != "debug"
            if not text or needs_default and "default" not in text:
                missing.append(f"{name} {action.option_strings[0]}: {text!r}")
    assert not missing, missing
    assert "(default: 10)" in _command("train").format_help()


@pytest.mark.parametrize("command", ["train", "grid"])
def test_help_defaults_are_the_config_defaults(command):
    parser = _command(command)
    fields = {f.name: f.default for f in dataclasses.fields(TrainConfig)}
    own = {"folds"} if command == "grid" else set()  # the grid's own --folds (an axis, not one run's option)
    shown = {a.dest for a in parser._actions if a.dest in fields and a.dest not in own}
    assert shown, "no TrainConfig option"
    for dest in shown:
        action = _action(parser, dest)
        assert action.default is argparse.SUPPRESS, dest  # in the namespace only when given
        assert options.CONFIG_DEFAULTS[dest] == fields[dest], dest
        assert f"default: {options.shown_default(fields[dest])}" in action.help or "(default:" in action.help, dest


def test_choices_come_from_the_registries():
    from covidxr.data import TASKS
    from covidxr.models import BACKBONES
    from covidxr.sampling import STRATEGIES

    train = _command("train")
    assert list(_action(train, "backbone").choices) == list(BACKBONES)
    assert list(_action(train, "strategy").choices) == list(STRATEGIES)
    assert sorted(_action(train, "task").choices) == sorted(TASKS)
    assert list(_action(train, "pooling").choices) == ["avg", "max"]
    assert _action(_command("grid"), "pooling") is not None
    with pytest.raises(SystemExit):
        cli.build_parser().parse_args(["train", "--backbone", "resnet18"])
    args = cli.build_parser().parse_args(["train", "--pooling", "max", "--verbose", "0"])
    assert commands.train_config(args).pooling == "max" and commands.train_config(args).verbose == 0


def test_bad_choice_lists_the_registry(capsys):
    with pytest.raises(SystemExit):
        cli.main(["train", "--strategy", "smote"])
    assert "invalid choice: 'smote' (choose from 'none', 'class-weight', 'oversample', 'undersample')" in \
        capsys.readouterr().err


def test_feature_layer_is_checked_against_the_backbone(collection, tmp_path, capsys):
    assert cli.main(["train", "--data-dir", str(collection), "--backbone", "vgg16", "--weights", "none",
                     "--feature-layer", "conv4_block6_out", "--runs-dir", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert re.search(r"^covidxr train: error: Unknown feature_layer for backbone 'vgg16'.*'block4_conv3'.*"
                     r"Received: feature_layer='conv4_block6_out'$", err.strip())
    assert not list(tmp_path.iterdir())


def test_verbose_values():
    from covidxr.config import resolve_verbose

    class Stream:
        def __init__(self, tty):
            self.tty = tty

        def isatty(self):
            return self.tty

    assert resolve_verbose("auto", stream=Stream(True)) == 1
    assert resolve_verbose("auto", stream=Stream(False)) == 0  # redirected: the run's own line per epoch
    assert [resolve_verbose(v) for v in (0, 1, 2)] == [0, 1, 2]
    with pytest.raises(ValueError, match=r"Expected one of \['auto', 0, 1, 2\]\. Received: verbose=3"):
        resolve_verbose(3)
    with pytest.raises(ValueError, match=r"Expected one of \['auto', 0, 1, 2\]\. Received: verbose=True"):
        check_config(TrainConfig(verbose=True))
    with pytest.raises(SystemExit):
        cli.build_parser().parse_args(["train", "--verbose", "3"])
