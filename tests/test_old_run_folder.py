"""A run folder written by an earlier version of the code still evaluates and resumes.

``tests/fixtures/vanilla_run`` was written by ``trainer_vanilla.py --epochs 2 --train_val_sample_rate 0.3
--test_sample_rate 0.3 --output_dir fxruns --proj_name Fixture --loggers csv --gpu_devices cpu`` (Digits,
the MLP), once the uint8 input pipeline was in and before the trainer was restructured. Whatever moves
inside ``base/``, such a folder must keep its meaning: its best checkpoint scores the test figures it
recorded, and ``--resume`` continues it to a longer run from its own state.
"""

import csv
import glob
import json
import os
import shutil

import pytest

from evaluators.vanilla_evaluator import VanillaEvaluator
from trainers.vanilla_trainer import VanillaTrainer

FIXTURE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "fixtures", "vanilla_run")


@pytest.fixture
def run(tmp_path):
    """A copy of the fixture's run folder (a test must never write into the committed one)."""
    shutil.copytree(FIXTURE, tmp_path / "runs")
    (folder,) = glob.glob(str(tmp_path / "runs" / "Fixture" / "*"))
    return folder


def rows(folder):
    with open(os.path.join(folder, "metrics.csv"), newline="") as f:
        return list(csv.DictReader(f))


def test_the_old_best_checkpoint_scores_the_test_figures_it_recorded(run):
    with open(os.path.join(run, "test_metrics.json")) as f:
        recorded = json.load(f)
    results = VanillaEvaluator.from_argv(
        ["--model_path", os.path.join(run, "Vanilla_best_ckpt.pth"), "--gpu_devices", "cpu"]
    ).run()
    assert results["num_samples"] == 108
    for metric in ("loss", "top1", "top5"):
        assert results[metric] == pytest.approx(recorded[metric], rel=1e-6, abs=1e-9), metric


def test_the_old_run_resumes_to_a_longer_run_from_its_own_state(run):
    before = rows(run)
    trainer = VanillaTrainer.from_argv(["--resume", run, "--epochs", "3", "--gpu_devices", "cpu"])
    assert trainer.args.mean == [0.5] and trainer.args.train_crop == "squash"  # as the run was trained
    trainer.fit()
    assert trainer.run_dir == run and (trainer.epoch, trainer.global_step) == (3, 21)
    after = rows(run)
    assert after[:2] == before and [r["step"] for r in after] == ["7", "14", "21"]  # its rows kept, one added
    with open(os.path.join(run, "status.json")) as f:
        status = json.load(f)
    assert (status["status"], status["resumes"], status["global_step"]) == ("finished", 1, 21)


def test_a_run_saved_before_the_input_flags_resumes_and_evaluates_as_it_was_trained(tmp_path):
    """A checkpoint whose config lacks --mean/--std/--train_crop (written before they existed) means 0.5/0.5 and
    squashed images, not today's defaults for its data (ImageNet's statistics and random-resized crops for an
    ImageFolder): reading it with the new defaults would silently change the data a resumed run trains on."""
    import numpy as np
    from PIL import Image

    from base.checkpoint.files import load_checkpoint, save_checkpoint

    data = tmp_path / "data"
    rng = np.random.default_rng(0)
    for name in ("cat", "dog"):
        (data / name).mkdir(parents=True)
        for j in range(6):
            Image.fromarray(rng.integers(0, 256, (12 + j, 15, 3), dtype=np.uint8), "RGB").save(data / name / f"{j}.png")
    trainer = VanillaTrainer.from_argv(
        [
            "--output_dir",
            str(tmp_path / "runs"),
            "--data_type",
            "ImageFolder",
            "--data_dir",
            str(data),
            "--image_size",
            "8",
            "--max_steps",
            "2",
            "--batch_size",
            "4",
            "--gpu_devices",
            "cpu",
            "--loggers",
            "csv",
        ]
    )
    trainer.fit()
    assert trainer.args.mean == [0.485, 0.456, 0.406] and trainer.args.train_crop == "rrc"  # today's defaults
    for tag in ("best", "last"):  # as an older version wrote them: no such flags in the saved config
        path = trainer.checkpointer.path(tag)
        state = load_checkpoint(path)
        config = {k: v for k, v in json.loads(state["config"]).items() if k not in ("mean", "std", "train_crop")}
        state.pop("checksum", None)  # (load_checkpoint checked it; save_checkpoint writes a new one)
        save_checkpoint({**state, "config": json.dumps(config)}, path)
    resumed = VanillaTrainer.from_argv(["--resume", trainer.run_dir, "--max_steps", "3", "--gpu_devices", "cpu"])
    assert (resumed.args.mean, resumed.args.std, resumed.args.train_crop) == ([0.5], [0.5], "squash")
    evaluator = VanillaEvaluator.from_argv(["--model_path", trainer.checkpointer.path("best"), "--gpu_devices", "cpu"])
    task_args = evaluator.resolve_task_config(json.loads(load_checkpoint(trainer.checkpointer.path("best"))["config"]))
    assert (task_args.mean, task_args.std, task_args.train_crop) == ([0.5], [0.5], "squash")
