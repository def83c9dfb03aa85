"""Layered configuration: base default < subclass default < config file < command line."""

import json
import subprocess

import pytest

from base.config.parse import parse_config
from base.run.folder import PROJECT_DIR, git_commit, git_dirty, write_config
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
    assert args.num_workers == "auto" and origin["num_workers"] == "base default (TrainerBase)"
    assert args.child_only == 1 and origin["child_only"] == "subclass default (Child)"


def test_config_file_beats_defaults_and_command_line_beats_all(tmp_path):
    path = tmp_path / "c.json"
    path.write_text(json.dumps({"config": {"batch_size": 16, "lr": 0.5, "epochs": 9}}))
    args, origin = parse(["--config", str(path), "--lr", "0.25"])
    assert args.batch_size == 16 and origin["batch_size"] == f"config file ({path})"
    assert args.epochs == 9
    assert args.lr == 0.25 and origin["lr"] == "command line"


class Derived(Child):
    """--lr and --batch_size follow --child_only when nothing else sets them."""

    @classmethod
    def derived_defaults(cls, args):
        why = f"follows --child_only {args.child_only}"
        return {**super().derived_defaults(args), "lr": (0.01 * args.child_only, why), "batch_size": (3, why)}


def test_a_derived_default_beats_class_defaults_and_loses_to_a_file_and_the_command_line(tmp_path):
    args, origin = parse(["--child_only", "2"], Derived)
    assert (args.lr, origin["lr"]) == (0.02, "follows --child_only 2")
    assert (args.batch_size, origin["batch_size"]) == (3, "follows --child_only 2")
    path = tmp_path / "c.json"
    path.write_text(json.dumps({"config": {"batch_size": 16}}))
    args, origin = parse(["--config", str(path), "--lr", "0.25"], Derived)
    assert (args.batch_size, origin["batch_size"]) == (16, f"config file ({path})")
    assert (args.lr, origin["lr"]) == (0.25, "command line")
    args, origin = parse_config(Derived, ["--gpu_devices", "cpu"], base_values={"lr": 0.5}, base_label="resumed run")
    assert (args.lr, origin["lr"]) == (0.5, "resumed run") and origin["batch_size"] == "follows --child_only 1"


def test_flat_config_values_are_typed(tmp_path):
    path = tmp_path / "c.json"
    path.write_text(json.dumps({"deterministic": "false", "lr": "0.125"}))
    args, _ = parse(["--config", str(path)])
    assert args.deterministic is False and args.lr == 0.125


@pytest.mark.parametrize(
    "text,message",
    [
        ('{"batch_size": 8, "no_such_key": 1}', "unknown key 'no_such_key'"),
        ("{not json", "not valid JSON"),
        ('{"optimizer": "lbfgs"}', "optimizer='lbfgs' is not one of"),
        ('{"batch_size": [8]}', "bad value for 'batch_size': expected an integer, got [8]"),
        ('{"batch_size": true}', "bad value for 'batch_size': expected an integer, got True"),
        ('{"batch_size": 8.5}', "bad value for 'batch_size': expected an integer, got 8.5"),
        ('{"lr": {"value": 1}}', "bad value for 'lr': expected a number"),
        ('{"lr": "fast"}', "bad value for 'lr'"),
        ("[1, 2]", "expected a JSON object of flag values, got a list"),
        ('{"config": [1], "meta": {}}', "its 'config' entry is a list"),
        ('{"config": {"lr": 0.1}, "meta": 5}', "its 'meta' entry is a int"),
        ('{"config": {"lr": 0.1}, "meta": {"trainer": ["X"]}}', "its 'meta.trainer' is ['X']"),
    ],
)
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


@pytest.mark.parametrize(
    "text,value", [("False", False), ("false", False), ("0", False), ("True", True), ("yes", True)]
)
def test_booleans_parse(text, value):
    args, _ = parse(["--deterministic", text])
    assert args.deterministic is value


@pytest.mark.parametrize(
    "argv,message",
    [
        (["--batch_size", "0"], "--batch_size=0: must be > 0"),
        (["--lr", "-1"], "--lr=-1.0: must be > 0"),
        (["--epochs", "0"], "--epochs=0: must be > 0"),
        (["--gpu_devices", "7"], "--gpu_devices='7': no such GPU"),
        (["--deterministic", "maybe"], "expected a boolean"),
    ],
)
def test_validation_names_flag_and_value(capsys, argv, message):
    with pytest.raises(SystemExit) as exit_info:
        parse_config(Child, argv)
    assert exit_info.value.code == 2
    assert message in capsys.readouterr().err


def test_abbreviated_flags_are_rejected(capsys):
    with pytest.raises(SystemExit):
        parse(["--batch", "3"])


def test_config_numbers_are_typed(tmp_path):
    path = tmp_path / "c.json"
    path.write_text(json.dumps({"lr": 1, "batch_size": 16.0}))
    args, _ = parse(["--config", str(path)])
    assert args.lr == 1.0 and isinstance(args.lr, float) and args.batch_size == 16 and isinstance(args.batch_size, int)


@pytest.mark.parametrize("writer, note", [("ViTTrainer", True), ("Child", False)])
def test_unknown_key_of_another_trainers_config_names_that_trainer(tmp_path, capsys, writer, note):
    path = tmp_path / "c.json"
    path.write_text(json.dumps({"config": {"lr": 0.1, "patch_size": 8}, "meta": {"trainer": writer}}))
    with pytest.raises(SystemExit) as exit_info:
        parse(["--config", str(path)])
    assert exit_info.value.code == 2
    (line,) = capsys.readouterr().err.splitlines()
    assert str(path) in line and "unknown key 'patch_size'" in line
    assert ("written by ViTTrainer; Child trains Child" in line) is note


def test_config_folder_exits_2(tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_info:
        parse(["--config", str(tmp_path)])
    assert exit_info.value.code == 2
    assert f"--config {tmp_path}: is a folder" in capsys.readouterr().err


# ------------------------------------------------------------------ git facts in the config file
def git(folder, *args):
    subprocess.run(
        ["git", "-c", "user.name=t", "-c", "user.email=t@t", *args], cwd=folder, check=True, capture_output=True
    )


def test_git_dirty_follows_uncommitted_changes(tmp_path):
    git(tmp_path, "init", "-q")
    (tmp_path / "a.py").write_text("x = 1\n")
    git(tmp_path, "add", "a.py")
    git(tmp_path, "commit", "-q", "-m", "one")
    assert len(git_commit(tmp_path)) == 40 and git_dirty(tmp_path) is False
    (tmp_path / "a.py").write_text("x = 2\n")  # modified, not committed
    assert git_dirty(tmp_path) is True
    git(tmp_path, "commit", "-q", "-am", "two")
    (tmp_path / "b.py").write_text("")  # untracked code changes the run too
    assert git_dirty(tmp_path) is True
    plain = tmp_path.parent / f"{tmp_path.name}_plain"
    plain.mkdir()
    assert git_commit(plain) is None and git_dirty(plain) is None  # not a checkout


def test_without_git_commit_and_dirty_are_null(tmp_path, monkeypatch):
    monkeypatch.setenv("PATH", str(tmp_path))  # no git executable on it
    path = tmp_path / "config.json"
    write_config(str(path), ToyTrainer.from_argv(["--gpu_devices", "cpu"]).args, {})
    meta = json.loads(path.read_text())["meta"]
    assert meta["git_commit"] is None and meta["git_dirty"] is None


def test_config_records_whether_the_checkout_was_dirty(tmp_path):
    path = tmp_path / "config.json"
    write_config(str(path), ToyTrainer.from_argv(["--gpu_devices", "cpu"]).args, {})
    status = subprocess.run(["git", "status", "--porcelain"], cwd=PROJECT_DIR, capture_output=True, text=True)
    expected = bool(status.stdout.strip()) if status.returncode == 0 else None
    meta = json.loads(path.read_text())["meta"]
    assert meta["git_dirty"] is expected and "git_commit" in meta
