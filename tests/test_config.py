"""Layered configuration: base default < subclass default < config file < command line."""
import json

import pytest

from base.config import parse_config
from conftest import ToyTrainer


class Child(ToyTrainer):
    DEFAULTS = {"batch_size": 4}

    @classmethod
    def add_arguments(cls, parser):
        parser.add_argument("--child_only", type=int, default=1)


def parse(argv, cls=Child):
    return parse_config(cls, ["--gpu_devices", "cpu", *argv])


def test_subclass_default_beats_base_default():
    args, origin = parse([])
    assert args.batch_size == 4 and origin["batch_size"] == "subclass default (Child)"
    assert args.epochs == 2 and origin["epochs"] == "subclass default (ToyTrainer)"
    assert args.num_workers == 0 and origin["num_workers"] == "base default (TrainerBase)"
    assert args.child_only == 1 and origin["child_only"] == "subclass default (Child)"


def test_config_file_beats_defaults_and_command_line_beats_all(tmp_path):
    path = tmp_path / "c.json"
    path.write_text(json.dumps({"config": {"batch_size": 16, "lr": 0.5, "epochs": 9}}))
    args, origin = parse(["--config", str(path), "--lr", "0.25"])
    assert args.batch_size == 16 and origin["batch_size"] == f"config file ({path})"
    assert args.epochs == 9
    assert args.lr == 0.25 and origin["lr"] == "command line"


def test_flat_config_values_are_typed(tmp_path):
    path = tmp_path / "c.json"
    path.write_text(json.dumps({"deterministic": "false", "lr": "0.125"}))
    args, _ = parse(["--config", str(path)])
    assert args.deterministic is False and args.lr == 0.125


@pytest.mark.parametrize("text,message", [
    ('{"batch_size": 8, "no_such_key": 1}', "unknown key 'no_such_key'"),
    ("{not json", "not valid JSON"),
    ('{"optimizer": "lbfgs"}', "optimizer='lbfgs' is not one of"),
])
def test_bad_config_file_exits_2_naming_the_problem(tmp_path, capsys, text, message):
    path = tmp_path / "c.json"
    path.write_text(text)
    with pytest.raises(SystemExit) as exit_info:
        parse(["--config", str(path)])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert message in err and str(path) in err


def test_unknown_flag_exits_2_with_one_line_and_a_pointer_to_help(capsys):
    with pytest.raises(SystemExit) as exit_info:
        parse(["--no_such_flag", "1"])
    assert exit_info.value.code == 2
    lines = capsys.readouterr().err.splitlines()
    assert len(lines) == 1 and "--no_such_flag" in lines[0] and lines[0].endswith("--help)")


@pytest.mark.parametrize("text,value", [("False", False), ("false", False), ("0", False),
                                        ("True", True), ("yes", True)])
def test_booleans_parse(text, value):
    args, _ = parse(["--deterministic", text])
    assert args.deterministic is value


@pytest.mark.parametrize("argv,message", [
    (["--batch_size", "0"], "--batch_size=0: must be > 0"),
    (["--lr", "-1"], "--lr=-1.0: must be > 0"),
    (["--epochs", "0"], "--epochs=0: must be > 0"),
    (["--gpu_devices", "7"], "--gpu_devices='7': no such GPU"),
    (["--deterministic", "maybe"], "expected a boolean"),
])
def test_validation_names_flag_and_value(capsys, argv, message):
    with pytest.raises(SystemExit) as exit_info:
        parse_config(Child, argv)
    assert exit_info.value.code == 2
    assert message in capsys.readouterr().err


def test_abbreviated_flags_are_rejected(capsys):
    with pytest.raises(SystemExit):
        parse(["--batch", "3"])
