"""Every bad input ends in one error line that names the culprit, never a traceback.

Status 2: a bad flag or config value (one ``error:`` line that points to
``--help``). Status 1: bad input found while running (a missing data folder,
a missing or foreign checkpoint, nothing to resume). All in-process through ``base.cli.main``, as the entry
scripts call it.
"""

import os
import pathlib
import re

import pytest
import torch

from base.cli import main
from base.errors import CheckpointError
from base.run.folder import RunDirError, create_run_dir
from evaluators.vanilla_evaluator import VanillaEvaluator
from trainers.vanilla_trainer import VanillaTrainer

QUICK = ["--epochs", "1", "--train_val_sample_rate", "0.2", "--gpu_devices", "cpu"]
# A line the run's logger writes to stderr: "12:34:56 INFO run folder: ...".
LOG_LINE = re.compile(r"^\d\d:\d\d:\d\d (INFO|WARNING|ERROR) ")


def run_main(cls, argv, capsys):
    """``(exit status, stderr)`` of ``main(cls, argv)``; argparse's own exit counts as a return."""
    try:
        status = main(cls, argv)
    except SystemExit as exc:
        status = exc.code
    return status, capsys.readouterr().err


def error_line(status, err):
    """The single ``error:`` line of ``err``, after checking that nothing else is an error.

    Status 2 is that line alone, ending with a pointer to ``--help``; status 1 may
    follow the run's log lines.
    """
    assert "Traceback" not in err
    lines = err.rstrip("\n").splitlines()
    assert lines, "nothing on stderr"
    last, before = lines[-1], lines[:-1]
    assert ": error: " in last
    if status == 2:
        assert not before and last.endswith("--help)"), lines
    else:
        assert all(LOG_LINE.match(line) for line in before), before
    return last


def expect(cls, argv, capsys, status, *names):
    """Run ``main``; check the status and that the error line contains every string in ``names``."""
    got, err = run_main(cls, argv, capsys)
    assert got == status, err
    line = error_line(status, err)
    for name in names:
        assert name in line, (name, line)
    return line


def train(tmp_path):
    """A tiny real Digits run; returns its trainer (run folder, checkpoint paths)."""
    trainer = VanillaTrainer.from_argv(QUICK + ["--output_dir", str(tmp_path)])
    trainer.fit()
    return trainer


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    return train(tmp_path_factory.mktemp("trained"))


# ------------------------------------------------------------------ flags and config (status 2)
@pytest.mark.parametrize(
    "argv, names",
    [
        (["--no_such_flag", "1"], ["unrecognized arguments", "--no_such_flag"]),
        (["--model_type", "ResNet9000"], ["--model_type", "'ResNet9000'", "'SmallCNN'", "'Vanilla'"]),
        (["--data_type", "CIFAR"], ["--data_type", "'CIFAR'", "'Digits'", "'ImageFolder'", "'MNIST'"]),
        (["--batch_size", "0"], ["--batch_size=0"]),
        (["--batch_size", "-4"], ["--batch_size=-4"]),
        (["--lr", "0"], ["--lr=0.0"]),
        (["--lr", "-0.1"], ["--lr=-0.1"]),
        (["--epochs", "0"], ["--epochs=0"]),
        (["--epochs", "-1"], ["--epochs=-1"]),
        (["--train_val_sample_rate", "0"], ["--train_val_sample_rate=0.0", "(0, 1]"]),
        (["--train_val_sample_rate", "1.5"], ["--train_val_sample_rate=1.5", "(0, 1]"]),
        (["--test_sample_rate", "0"], ["--test_sample_rate=0.0", "(0, 1]"]),
        (["--test_sample_rate", "1.5"], ["--test_sample_rate=1.5", "(0, 1]"]),
        # A run folder is <output_dir>/<proj_name>/<timestamp>: the name must stay one folder below --output_dir.
        (["--proj_name", ".."], ["--proj_name='..'"]),
        (["--proj_name", "."], ["--proj_name='.'"]),
        (["--proj_name", "a/b"], ["--proj_name='a/b'", "path separator"]),
        (["--proj_name", "two\nlines"], ["--proj_name='two\\nlines'", "control character"]),
        (["--proj_name", ""], ["--proj_name=''"]),
        # the input pipeline's flags
        (["--mean", "0.5", "0.4", "--std", "0.5"], ["--std=[0.5]", "as many values as --mean [0.5, 0.4]"]),
        (["--std", "0"], ["--std=[0.0]", "> 0"]),
        (["--mean", "0.4", "0.5", "0.6", "--std", "0.2", "0.2", "0.2"], ["--mean=", "1 channel"]),
        (["--train_crop", "zoom"], ["--train_crop", "'zoom'", "'rrc'", "'squash'"]),
        (["--scale", "0.5", "0.1"], ["--scale=[0.5, 0.1]", "LOW <= HIGH"]),
        (["--crop_pct", "1.5"], ["--crop_pct=1.5", "(0, 1]"]),
        (["--num_workers", "many"], ["--num_workers", "'auto' or a whole number"]),
    ],
)
def test_bad_flag_value_exits_2_naming_it(tmp_path, capsys, argv, names):
    expect(VanillaTrainer, ["--output_dir", str(tmp_path), "--gpu_devices", "cpu", *argv], capsys, 2, *names)
    assert not os.path.exists(tmp_path / "Vanilla")  # refused before any run folder


def test_output_dir_under_a_file_exits_2(tmp_path, capsys):
    # Tests run as root, where permissions stop nothing; a regular file in the path does.
    (tmp_path / "afile").write_text("not a folder")
    target = tmp_path / "afile" / "runs"
    line = expect(
        VanillaTrainer, ["--output_dir", str(target), "--gpu_devices", "cpu"], capsys, 2, "--output_dir", str(target)
    )
    assert "not a folder" in line


@pytest.mark.skipif(torch.cuda.device_count() > 3, reason="GPU 3 exists here")
def test_missing_gpu_exits_2(tmp_path, capsys):
    expect(
        VanillaTrainer,
        ["--output_dir", str(tmp_path), "--gpu_devices", "3"],
        capsys,
        2,
        "--gpu_devices='3'",
        "no such GPU",
    )


@pytest.mark.parametrize(
    "text, names",
    [
        ("{not json", ["not valid JSON"]),
        ('{"batch_size": 8, "no_such_key": 1}', ["unknown key 'no_such_key'"]),
        ('{"lr": 0.1, "batch_size": 8, "lr": 0.2}', ["key 'lr' is given twice"]),
        ('{"config": {"lr": 0.1, "lr": 0.2}, "meta": {}}', ["key 'lr' is given twice"]),
    ],
)
def test_bad_config_file_exits_2(tmp_path, capsys, text, names):
    path = tmp_path / "c.json"
    path.write_text(text)
    expect(
        VanillaTrainer,
        ["--output_dir", str(tmp_path), "--gpu_devices", "cpu", "--config", str(path)],
        capsys,
        2,
        "--config",
        str(path),
        *names,
    )


@pytest.mark.parametrize("name", ["..", os.path.join("..", "x"), os.path.join("a", "..", "..", "b")])
def test_a_run_folder_outside_output_dir_is_refused(tmp_path, name):
    # The last line of defence behind --proj_name's check: nothing is created outside --output_dir.
    out = tmp_path / "runs"
    with pytest.raises(RunDirError, match="outside --output_dir"):
        create_run_dir(str(out), name)
    assert sorted(p.name for p in tmp_path.iterdir()) == []


# ------------------------------------------------------------------ a missing data folder (status 1, as for Carvana)
@pytest.mark.parametrize(
    "argv, names",
    [
        (["--data_type", "ImageFolder"], ["--data_type ImageFolder needs --data_dir"]),
        (["--data_type", "FashionMNIST"], ["--data_type FashionMNIST needs --data_dir", "--download true"]),
        (
            ["--data_type", "ImageFolder", "--data_dir", "/no/such/folder"],
            ["--data_dir /no/such/folder: no such folder"],
        ),
        (
            ["--data_type", "MNIST", "--data_dir", "/no/such/folder"],
            ["--data_dir /no/such/folder: no such folder", "--download true"],
        ),
        (["--data_type", "CIFAR10", "--data_dir", "/no/such/folder"], ["--data_dir /no/such/folder: no such folder"]),
    ],
)
def test_a_missing_data_folder_exits_1_naming_it(tmp_path, capsys, argv, names):
    expect(VanillaTrainer, ["--output_dir", str(tmp_path), "--gpu_devices", "cpu", *argv], capsys, 1, *names)
    assert not os.path.exists(tmp_path / "Vanilla")  # refused before any run folder


def test_an_empty_or_file_data_dir_exits_1(tmp_path, capsys):
    empty = tmp_path / "images"
    empty.mkdir()
    argv = ["--output_dir", str(tmp_path), "--gpu_devices", "cpu", "--data_type", "ImageFolder", "--data_dir"]
    expect(VanillaTrainer, [*argv, str(empty)], capsys, 1, f"--data_dir {empty}: the folder is empty")
    (tmp_path / "afile").write_text("x")
    expect(
        VanillaTrainer, [*argv, str(tmp_path / "afile")], capsys, 1, f"--data_dir {tmp_path / 'afile'}: not a folder"
    )
    assert not os.path.exists(tmp_path / "Vanilla")


# ------------------------------------------------------------------ resume (status 1)
def saved_files(run_dir):
    """``{name: (mtime_ns, bytes)}`` of a run's checkpoints and best-model export."""
    return {
        p.name: (p.stat().st_mtime_ns, p.read_bytes())
        for p in pathlib.Path(run_dir).iterdir()
        if p.suffix in (".pth", ".safetensors") or p.name == "Vanilla_best.json"
    }


def test_resume_of_a_missing_path_exits_1(tmp_path, capsys):
    missing = tmp_path / "no_such_run"
    expect(
        VanillaTrainer,
        ["--output_dir", str(tmp_path), "--gpu_devices", "cpu", "--resume", str(missing)],
        capsys,
        1,
        "--resume",
        str(missing),
    )


def test_resume_auto_without_runs_names_the_folder_looked_in(tmp_path, capsys):
    expect(
        VanillaTrainer,
        ["--output_dir", str(tmp_path), "--gpu_devices", "cpu", "--resume", "auto"],
        capsys,
        1,
        "--resume auto",
        str(tmp_path / "Vanilla"),
    )


def test_resume_with_another_model_type_fails_and_keeps_the_checkpoints(trained, capsys):
    before = saved_files(trained.run_dir)
    assert {"Vanilla_best_ckpt.pth", "Vanilla_last_ckpt.pth", "Vanilla_best.safetensors"} <= set(before)
    expect(
        VanillaTrainer,
        ["--resume", trained.checkpointer.path("last"), "--model_type", "SmallCNN"],
        capsys,
        1,
        trained.checkpointer.path("last"),
        "'Vanilla'",
        "'SmallCNN'",
    )
    after = saved_files(trained.run_dir)
    assert after == before  # nothing saved is lost, and no SmallCNN_* checkpoint appears


def test_resume_from_a_checkpoint_whose_config_is_not_an_object_exits_1(trained, tmp_path, capsys):
    from base.checkpoint.files import load_checkpoint, save_checkpoint

    state = load_checkpoint(trained.checkpointer.path("last"))
    state["config"] = "[1, 2]"
    path = str(tmp_path / "Vanilla_last_ckpt.pth")
    save_checkpoint(state, path)
    expect(VanillaTrainer, ["--resume", path], capsys, 1, f"--resume {path}", "'config' is a JSON list")


# ------------------------------------------------------------------ eval --model_path (status 1)
def test_eval_of_a_missing_checkpoint_exits_1(tmp_path, capsys):
    missing = str(tmp_path / "no_such.pth")
    line = expect(VanillaEvaluator, ["--model_path", missing], capsys, 1, "--model_path", missing)
    assert "no such file" in line


def test_eval_of_a_truncated_checkpoint_exits_1(trained, tmp_path, capsys):
    data = pathlib.Path(trained.checkpointer.path("best")).read_bytes()
    cut = tmp_path / "cut.pth"
    cut.write_bytes(data[: len(data) // 2])
    line = expect(VanillaEvaluator, ["--model_path", str(cut)], capsys, 1, "--model_path", str(cut))
    assert "truncated" in line


# The weights-only unpickler fails differently on each text: IndexError ("t" is pickle's
# TUPLE opcode, popping a missing mark), KeyError ("h" reads an unset memo slot), UnpicklingError.
# The line says what the file is, not the unpickler's failure.
@pytest.mark.parametrize("text", ["these are my notes, not a checkpoint\n", "hello world\n", '{"a": 1}\n'])
def test_eval_of_a_text_file_exits_1(tmp_path, capsys, text):
    path = tmp_path / "x.pth"
    path.write_text(text)
    line = expect(VanillaEvaluator, ["--model_path", str(path)], capsys, 1, "--model_path", str(path))
    assert line.endswith(
        f"{path}: not a checkpoint of this project: a text file (it starts with "
        f"{text.strip()[:40]!r}), not a file written by torch.save (a zip archive)"
    ), line


def test_resume_and_export_of_a_text_file_say_what_it_is_not(tmp_path, capsys):
    from utils import export

    path = tmp_path / "notes.pth"
    path.write_text("hello world\n")
    expect(
        VanillaTrainer,
        ["--resume", str(path)],
        capsys,
        1,
        f"--resume {path}: not a checkpoint of this project: a text file",
        "not a file written by torch.save",
    )
    assert export.main(["--model_path", str(path), "--format", "onnx"]) == 1
    err = capsys.readouterr().err.strip()
    assert err == (
        f"python -m utils.export: error: --model_path {path}: not a checkpoint of this project: a text "
        f"file (it starts with 'hello world'), not a file written by torch.save (a zip archive)"
    )


def test_resume_of_a_weights_export_says_it_holds_no_training_state(trained, capsys):
    path = os.path.join(trained.run_dir, "Vanilla_best.safetensors")
    expect(
        VanillaTrainer,
        ["--resume", path],
        capsys,
        1,
        f"--resume {path}: not a checkpoint of this project: a "
        "safetensors file (weights alone, without the training state)",
    )


def test_a_binary_file_of_another_kind_is_named_by_its_first_bytes(tmp_path, capsys):
    path = tmp_path / "image.pth"
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + bytes(range(256)))
    expect(
        VanillaEvaluator,
        ["--model_path", str(path)],
        capsys,
        1,
        f"--model_path {path}: not a checkpoint of "
        "this project: a binary file of another kind (it starts with b'\\x89PNG\\r\\n\\x1a\\n')",
    )


def test_eval_of_a_dict_without_model_exits_1(tmp_path, capsys):
    path = tmp_path / "weights.pth"
    torch.save({"state_dict": {"w": torch.zeros(3)}}, path)
    line = expect(VanillaEvaluator, ["--model_path", str(path)], capsys, 1, "--model_path", str(path))
    assert "'model'" in line


def test_debug_raises_with_traceback(tmp_path):
    missing = str(tmp_path / "no_such.pth")
    with pytest.raises(CheckpointError, match=re.escape(missing)) as info:
        main(VanillaEvaluator, ["--model_path", missing, "--debug"])
    assert info.traceback  # a real exception with its frames, not a printed line
