"""YAML ``--config`` files read exactly like JSON ones, and ``--print_config`` writes one that reads back."""

import json
import os
import subprocess
import sys

import pytest
import yaml

from base.cli import main
from base.config.parse import parse_config
from conftest import ToyTrainer
from trainers.vanilla_trainer import VanillaTrainer

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


class Child(ToyTrainer):
    DEFAULTS = {"batch_size": 4}

    @classmethod
    def add_arguments(cls, parser):
        parser.add_argument("--sizes", type=int, nargs=2, default=None)
        parser.add_argument("--tag", default="plain")


def parse(argv, cls=Child):
    return parse_config(cls, ["--gpu_devices", "cpu", *argv])


def write(tmp_path, name, text):
    path = tmp_path / name
    path.write_text(text)
    return str(path)


def without_file(args, provenance, path):
    """``(values, provenance)`` with the config file's name and the launch-only ``config`` flag taken out."""
    values = {k: v for k, v in vars(args).items() if k != "config"}
    return values, {k: v.replace(path, "FILE") for k, v in provenance.items() if k != "config"}


# ------------------------------------------------------------------ reading YAML like JSON
FLAGS = {
    "batch_size": 16,
    "lr": 0.001,
    "deterministic": True,
    "optimizer": "sgd",
    "proj_name": "Exp",
    "sizes": [3, 4],
    "tag": "0.5",
    "grad_clip": 1.0,
}
# The same flags as a person writes them in YAML: 1e-3 (a string to YAML 1.1), on, an unquoted name.
FLAGS_YAML = (
    "batch_size: 16\nlr: 1e-3\ndeterministic: on\noptimizer: sgd\nproj_name: Exp\nsizes: [3, 4]\n"
    "tag: '0.5'\ngrad_clip: 1\n"
)


@pytest.mark.parametrize("layout", ["flat", "saved run"])
def test_yaml_and_json_with_the_same_content_resolve_the_same(tmp_path, layout):
    doc = (
        FLAGS
        if layout == "flat"
        else {"config": FLAGS, "provenance": {"lr": "command line"}, "meta": {"trainer": "Child", "git_dirty": False}}
    )
    text = (
        FLAGS_YAML
        if layout == "flat"
        else (
            "config:\n"
            + "".join(f"  {line}\n" for line in FLAGS_YAML.splitlines())
            + "provenance: {lr: command line}\nmeta:\n  trainer: Child\n  git_dirty: false\n"
        )
    )
    json_path = write(tmp_path, "c.json", json.dumps(doc))
    yaml_path = write(tmp_path, "c.yml", text)
    from_json = without_file(*parse(["--config", json_path, "--epochs", "3"]), json_path)
    from_yaml = without_file(*parse(["--config", yaml_path, "--epochs", "3"]), yaml_path)
    assert from_yaml == from_json
    values, origin = from_yaml
    assert {k: values[k] for k in FLAGS} == FLAGS and origin["lr"] == "config file (FILE)"
    assert origin["epochs"] == "command line" and origin["num_workers"] == "base default (TrainerBase)"


@pytest.mark.parametrize(
    "flag, text",
    [
        ("lr", "1e-3"),
        ("lr", "1_0.5"),
        ("deterministic", "on"),
        ("deterministic", "no"),
        ("proj_name", "yes"),
        ("proj_name", "2024-01-01"),
        ("proj_name", "0x1F"),
        ("seed", "010"),
        ("gpu_devices", "0"),
        ("tag", "1:30"),
    ],
)
def test_a_yaml_value_means_what_the_same_text_means_on_the_command_line(tmp_path, flag, text):
    path = write(tmp_path, "c.yaml", f"{flag}: {text}\n")
    from_file = getattr(parse_config(Child, ["--config", path], check=False)[0], flag)
    from_line = getattr(parse_config(Child, [f"--{flag}", text], check=False)[0], flag)
    assert from_file == from_line and type(from_file) is type(from_line)


def test_yaml_null_and_block_lists(tmp_path):
    path = write(tmp_path, "c.yaml", "gpu_devices: ~\nsizes:\n  - 5\n  - '6'\nlr: .inf\n")
    args, _ = parse_config(Child, ["--config", path], check=False)
    assert args.gpu_devices is None and args.sizes == [5, 6] and args.lr == float("inf")


def test_a_key_after_a_yaml_merge_overrides_it_and_is_no_duplicate(tmp_path):
    path = write(tmp_path, "c.yaml", "<<: {lr: 0.1, batch_size: 8}\nlr: 0.2\n")
    args, _ = parse(["--config", path])
    assert args.lr == 0.2 and args.batch_size == 8


BAD = [  # (YAML text, message); each names the file, exits 2, one line
    ("batch_size: 8\nno_such_key: 1\n", "unknown key 'no_such_key'"),
    ("on: 1\n", "unknown key 'on'"),
    ("optimizer: lbfgs\n", "optimizer='lbfgs' is not one of"),
    ("batch_size: 8.5\n", "bad value for 'batch_size': invalid literal for int()"),
    ("batch_size: [8]\n", "bad value for 'batch_size': expected an integer, got ['8']"),
    ("lr: fast\n", "bad value for 'lr'"),
    ("lr: 2024-01-01\n", "bad value for 'lr'"),
    ("epochs:\n", "bad value for 'epochs': expected a value, got None"),
    ("deterministic: maybe\n", "expected a boolean"),
    ("proj_name: !!timestamp 2024-01-01\n", "bad value for 'proj_name': a YAML date"),
    (
        "{lr: 0.1\n",
        "not valid YAML (while parsing a flow mapping, expected ',' or '}', but got '<stream end>' "
        "at line 2, column 1)",
    ),
    (
        "lr: 0.1\n---\nlr: 0.2\n",
        "not valid YAML (expected a single document in the stream, but found another document at line 2, column 1)",
    ),
    ("lr: 0.1\nbatch_size: 8\nlr: 0.2\n", "key 'lr' is given twice (lines 1 and 3)"),
    ("config: {lr: 0.1}\nmeta: {trainer: A, trainer: B}\n", "key 'trainer' is given twice (lines 2 and 2)"),
    ("- 1\n- 2\n", "expected a YAML mapping of flag values, got a list"),
    ("just text\n", "expected a YAML mapping of flag values, got a str"),
    ("# nothing\n", "the file is empty"),
    ("config: [1]\nmeta: {}\n", "its 'config' entry is a list"),
    ("config: {lr: 0.1}\nmeta: 5\n", "its 'meta' entry is a str"),
    (
        "config: {lr: 0.1, patch_size: 8}\nmeta: {trainer: ViTTrainer}\n",
        "(written by ViTTrainer; Child trains Child): unknown key 'patch_size'",
    ),
]


@pytest.mark.parametrize("text, message", BAD)
def test_bad_yaml_file_exits_2_with_one_line_naming_file_and_problem(tmp_path, capsys, text, message):
    path = write(tmp_path, "c.yaml", text)
    with pytest.raises(SystemExit) as exit_info:
        parse(["--config", path])
    assert exit_info.value.code == 2
    (line,) = capsys.readouterr().err.splitlines()
    assert f"--config {path}" in line and message in line


@pytest.mark.parametrize(
    "flags", [{"no_such_key": 1}, {"optimizer": "lbfgs"}, {"epochs": None}, {"lr": "fast"}, {"deterministic": "maybe"}]
)
def test_bad_values_give_the_same_error_in_json_and_yaml(tmp_path, capsys, flags):
    lines = []
    for name, text in (("c.json", json.dumps(flags)), ("c.yaml", yaml.safe_dump(flags))):
        path = write(tmp_path, name, text)
        with pytest.raises(SystemExit) as exit_info:
            main(Child, ["--gpu_devices", "cpu", "--config", path])
        assert exit_info.value.code == 2
        lines.append(capsys.readouterr().err.replace(path, "FILE"))
    assert lines[0] == lines[1] and len(lines[0].splitlines()) == 1 and "--config FILE: " in lines[0]


def test_a_file_cannot_turn_on_print_config(tmp_path, capsys):
    path = write(tmp_path, "c.yaml", "print_config: true\nlr: 0.5\n")
    args, provenance = parse(["--config", path])  # launch-only: ignored, no exit
    assert args.lr == 0.5 and "print_config" not in vars(args) and "print_config" not in provenance
    assert capsys.readouterr().out == ""


# ------------------------------------------------------------------ --print_config
def printed(cls, argv, capsys):
    """What ``cls.from_argv(argv + --print_config)`` prints; it must exit 0."""
    with pytest.raises(SystemExit) as exit_info:
        cls.from_argv([*argv, "--print_config"])
    assert exit_info.value.code == 0
    return capsys.readouterr().out


@pytest.mark.parametrize("cls", [ToyTrainer, VanillaTrainer])
def test_printed_config_reads_back_as_the_same_config(tmp_path, capsys, cls):
    argv = [
        "--gpu_devices",
        "cpu",
        "--output_dir",
        str(tmp_path / "runs"),
        "--lr",
        "1e-5",
        "--proj_name",
        "0123",
        "--deterministic",
        "--grad_clip",
        "2",
        "--debug",
        "yes",
    ]
    args, provenance = parse_config(cls, argv)
    out = printed(cls, argv, capsys)
    body = [line for line in out.splitlines() if not line.startswith("#")]
    assert len(body) == len(vars(args))
    assert yaml.safe_load(out) == vars(args)  # any YAML reader gets the values and their types
    for line in body:
        flag = line.split(":", 1)[0]
        assert line.endswith(f"  # {provenance[flag]}")
    assert "lr: 1.0e-05  # command line" in body and "proj_name: '0123'  # command line" in body
    path = write(tmp_path, "printed.yaml", out)
    again, again_provenance = parse_config(cls, ["--config", path])
    assert {**vars(again), "config": None, "debug": True} == {**vars(args), "config": None}
    assert again_provenance["lr"] == f"config file ({path})"
    assert not (tmp_path / "runs").exists()  # nothing created


def test_print_config_after_resume_prints_the_resumed_config(tmp_path, capsys, toy_argv):
    ToyTrainer.from_argv([*toy_argv, "--epochs", "1", "--lr", "0.02"]).fit()
    capsys.readouterr()
    runs = sorted(os.listdir(tmp_path / "Toy"))
    out = printed(ToyTrainer, [*toy_argv, "--resume", "auto", "--epochs", "3"], capsys)
    assert sorted(os.listdir(tmp_path / "Toy")) == runs and "lr: 0.02  # resumed run (" in out
    assert "epochs: 3  # command line" in out and "resume: auto  # command line" in out


def test_print_config_through_main_creates_nothing(tmp_path, capsys):
    out_dir = tmp_path / "deep" / "runs"
    with pytest.raises(SystemExit) as exit_info:
        main(ToyTrainer, ["--gpu_devices", "cpu", "--output_dir", str(out_dir), "--print_config"])
    assert exit_info.value.code == 0 and not (tmp_path / "deep").exists()
    assert "proj_name: Toy  # subclass default (ToyTrainer)" in capsys.readouterr().out


def test_print_config_is_in_help_beside_config(capsys):
    with pytest.raises(SystemExit):
        parse_config(ToyTrainer, ["--help"])
    flags = [line.split()[0] for line in capsys.readouterr().out.splitlines() if line.startswith("  --")]
    assert flags.index("--print_config") == flags.index("--config") + 1


def test_trainer_script_prints_its_config(tmp_path):
    done = subprocess.run(
        [
            sys.executable,
            "trainer_vanilla.py",
            "--print_config",
            "--gpu_devices",
            "cpu",
            "--output_dir",
            str(tmp_path / "runs"),
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
    )
    assert done.returncode == 0 and done.stderr == ""
    assert "lr: 0.002  # subclass default (VanillaTrainer)\n" in done.stdout
    assert f"output_dir: {tmp_path / 'runs'}  # command line\n" in done.stdout and not (tmp_path / "runs").exists()


def test_pyyaml_is_imported_only_for_a_yaml_file(tmp_path, monkeypatch):
    monkeypatch.delitem(sys.modules, "yaml")  # put back after the test
    parse(["--config", write(tmp_path, "c.json", '{"lr": 0.5}')])
    assert "yaml" not in sys.modules
    parse(["--config", write(tmp_path, "c.yaml", "lr: 0.5")])
    assert "yaml" in sys.modules
