"""One process, many fits (notebooks, sweeps): nothing piles up, global switches come back,
and what a task reports (extra loss terms, its own log lines and scalars) reaches the run."""

import csv
import logging
import os
import threading

import pytest
import torch

from conftest import ToyTrainer

task_log = logging.getLogger("my_task")  # a task module's own logger


def open_things():
    loggers = [n for n in logging.Logger.manager.loggerDict if n.startswith("trainer.")]
    root = logging.getLogger()
    return {
        "fds": len(os.listdir("/proc/self/fd")),
        "threads": threading.active_count(),
        "loggers": len(loggers),
        "root_handlers": len(root.handlers),
        "root_level": root.level,
        "deterministic": torch.are_deterministic_algorithms_enabled(),
    }


class FailsInSetup(ToyTrainer):
    def build_datasets(self):
        raise RuntimeError("no data")


class FailsInValidation(ToyTrainer):
    def validate(self, model, loader):
        raise RuntimeError("validation broke")


@pytest.mark.skipif(not os.path.isdir("/proc/self/fd"), reason="counts open files through /proc")
def test_fifty_failing_and_fifty_passing_fits_release_everything(tmp_path):
    argv = ["--output_dir", str(tmp_path), "--gpu_devices", "cpu", "--max_steps", "2", "--deterministic"]
    ToyTrainer.from_argv(argv).fit()  # first fit: one-time imports and their threads
    torch.use_deterministic_algorithms(False)
    before = open_things()
    failing = [(ToyTrainer, ["--fail_at_step", "2"]), (FailsInSetup, []), (FailsInValidation, [])]
    for i in range(50):
        cls, extra = failing[i % len(failing)]
        with pytest.raises(RuntimeError):
            cls.from_argv([*argv, *extra]).fit()
    for _ in range(50):
        ToyTrainer.from_argv(argv).fit()
    assert open_things() == before


class ReportingToy(ToyTrainer):
    """Returns an extra term (the step number) and logs through its own module logger."""

    def train_step(self, batch):
        out = super().train_step(batch)
        task_log.info("task says hello at step %d", self.global_step + 1)
        return {**out, "step_term": torch.tensor(float(self.global_step + 1))}


def test_extra_terms_are_averaged_per_logging_window_and_task_logs_reach_the_run_log(toy_argv):
    trainer = ReportingToy.from_argv([*toy_argv, "--max_steps", "4", "--log_every_steps", "2"])
    trainer.fit()
    with open(os.path.join(trainer.run_dir, "scalars.csv")) as f:
        terms = [(int(step), float(value)) for step, name, value in csv.reader(f) if name == "train/step_term"]
    assert terms == [(2, 1.5), (4, 3.5)]  # the mean of steps (1, 2), then of (3, 4): the window resets
    log = open(os.path.join(trainer.run_dir, f"Toy_{trainer.timestamp}_log.txt")).read()
    assert "task says hello at step 3" in log
    task_log.info("after the fit")  # the run's log is closed: nothing more lands there
    assert "after the fit" not in open(os.path.join(trainer.run_dir, f"Toy_{trainer.timestamp}_log.txt")).read()
