"""Bad input found after a new run's folder exists, and an evaluation of a split the run does not have.

A run folder is made before the data and model are built (the log records the build), so an error
there must leave a folder that says what happened: the error line in the run log, ``crashed`` with
that line in ``status.json`` and in ``python -m utils.runs``, and the line once on stderr.
"""

import glob
import json
import os
import pathlib

import pytest

from base.cli import main
from conftest import ToyTrainer
from evaluators.vanilla_evaluator import VanillaEvaluator
from test_bad_input import error_line, expect, run_main
from test_data import two_classes
from trainers.vanilla_trainer import VanillaTrainer
from utils import runs

DIGITS = ["--gpu_devices", "cpu", "--batch_size", "16", "--train_val_sample_rate", "0.05", "--max_steps", "1"]


def test_an_error_while_a_new_run_is_built_is_in_its_log_status_and_runs_table(tmp_path, capsys):
    two_classes(tmp_path / "images", per_class=1)  # --test_fraction 0.2 of 2 images: no test image
    out = tmp_path / "runs"
    argv = [
        "--output_dir",
        str(out),
        "--gpu_devices",
        "cpu",
        "--data_type",
        "ImageFolder",
        "--data_dir",
        str(tmp_path / "images"),
        "--image_size",
        "8",
    ]
    status, err = run_main(VanillaTrainer, argv, capsys)
    assert status == 1
    message = error_line(status, err).split(": error: ", 1)[1]
    assert "no test image" in message and err.count(message) == 1  # the log's copy is not printed again
    (folder,) = glob.glob(str(out / "Vanilla" / "*"))  # made before the data was read; kept

    (log,) = glob.glob(os.path.join(folder, "*_log.txt"))
    logged = [x for x in pathlib.Path(log).read_text().splitlines() if message in x]
    assert len(logged) == 1 and logged[0].endswith(f" ERROR crashed: DataError: {message}"), logged
    status = json.loads(pathlib.Path(folder, "status.json").read_text())
    assert status["status"] == "crashed" and status["error"] == f"DataError: {message}"
    assert status["trainer"] == "VanillaTrainer" and status["global_step"] == 0

    assert runs.main([folder]) == 0
    table = capsys.readouterr().out.splitlines()
    assert table[0].split()[-2:] == ["status", "error"]
    assert table[1].endswith(f"crashed  DataError: {message}"), table


def test_a_crash_while_training_puts_its_error_line_in_the_log(tmp_path):
    trainer = ToyTrainer.from_argv(["--output_dir", str(tmp_path), "--gpu_devices", "cpu", "--fail_at_step", "2"])
    with pytest.raises(RuntimeError, match="boom"):
        trainer.fit()
    log = pathlib.Path(trainer.run_dir, f"Toy_{trainer.timestamp}_log.txt").read_text().splitlines()
    assert [x for x in log if "boom" in x] == [log[-1]] and log[-1].endswith(" ERROR crashed: RuntimeError: boom")


def test_eval_of_the_test_split_of_a_run_without_one_is_one_line(tmp_path, capsys):
    trainer = VanillaTrainer.from_argv(["--output_dir", str(tmp_path), *DIGITS, "--test_fraction", "0"])
    trainer.fit()
    best = trainer.checkpointer.path("best")
    expect(
        VanillaEvaluator,
        ["--model_path", best, "--split", "test"],
        capsys,
        1,
        "--split test",
        "no test split",
        "--test_fraction 0",
        "--split val",
    )
    assert not glob.glob(os.path.join(trainer.run_dir, "*_eval_test.json"))
    assert main(VanillaEvaluator, ["--model_path", best, "--split", "val"]) == 0  # the run's val split still works
