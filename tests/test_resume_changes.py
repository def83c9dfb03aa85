"""Resume in the cases that used to go silently wrong: changed flags, extended schedules,
another batch size, a Ctrl-C inside the update, an interrupted validation, repeated rollbacks,
and ``--resume auto`` with runs it should not pick quietly."""

import csv
import json
import os
import signal

import pytest
import torch
from torch.utils.data import TensorDataset

from base.checkpoint.files import load_checkpoint
from base.hooks import HookBase
from base.loop import optim
from conftest import ToyTrainer
from test_bad_input import expect
from test_resume import StopAfter


class LRLog(HookBase):
    """The learning rate used by every optimizer step, by global step."""

    def __init__(self):
        self.lrs = {}

    def before_step(self):
        self.lrs[self.trainer.global_step + 1] = self.trainer.optimizer.param_groups[0]["lr"]


def run(cls, tmp_path, argv, hooks=()):
    trainer = cls.from_argv(["--output_dir", str(tmp_path), "--gpu_devices", "cpu", *argv])
    trainer.build_hooks = lambda: list(hooks)
    trainer.fit()
    return trainer


def rows(trainer):
    with open(os.path.join(trainer.run_dir, "metrics.csv")) as f:
        return [{k: v for k, v in r.items() if k != "val_seconds"} for r in csv.DictReader(f)]


@pytest.mark.parametrize("extend", [["--epochs", "4"], ["--max_steps", "17"]])
def test_extending_a_finished_run_continues_the_schedule_down_to_its_new_end(tmp_path, extend):
    first, second = LRLog(), LRLog()
    run(ToyTrainer, tmp_path, ["--epochs", "2", "--warmup_steps", "3"], [first])  # 10 steps
    resumed = run(ToyTrainer, tmp_path, ["--resume", "auto", *extend], [second])
    end = resumed.global_step
    assert end == (20 if extend[0] == "--epochs" else 17) and sorted(second.lrs) == list(range(11, end + 1))
    peak = 0.05
    assert max(second.lrs.values()) <= peak * (1 + 1e-9)  # never climbs past the warmup's peak
    lrs = [second.lrs[s] for s in range(11, end + 1)]
    assert all(b <= a for a, b in zip(lrs, lrs[1:]))  # no second warmup: only down from here
    assert resumed.optimizer.param_groups[0]["lr"] == pytest.approx(0.0, abs=1e-12)  # ends exactly at the end
    log = open(os.path.join(resumed.run_dir, f"Toy_{resumed.timestamp}_log.txt")).read()
    assert f"rebuilt for {end} steps in all (was 10)" in log
    config = json.load(open(os.path.join(resumed.run_dir, f"config_Toy_{resumed.timestamp}.json")))
    expected = {"epochs": [2, 4]} if extend[0] == "--epochs" else {"max_steps": [0, 17]}
    assert config["meta"]["resumes"][-1]["changed"] == expected


def test_lr_and_weight_decay_given_on_resume_take_effect(tmp_path):
    trainer = ToyTrainer.from_argv(["--output_dir", str(tmp_path), "--gpu_devices", "cpu", "--max_steps", "10"])
    trainer.build_hooks = lambda: [StopAfter(4)]
    with pytest.raises(RuntimeError):
        trainer.fit()
    log = LRLog()
    resumed = run(ToyTrainer, tmp_path, ["--resume", "auto", "--lr", "0.001", "--weight_decay", "0.3"], [log])
    group = resumed.optimizer.param_groups[0]
    assert resumed.scheduler.base_lrs == [pytest.approx(0.001)] and group["weight_decay"] == 0.3
    factor = resumed.scheduler.lr_lambdas[0]
    assert log.lrs[5] == pytest.approx(0.001 * factor(4))  # the very next step uses the new LR
    assert resumed.provenance["lr"] == "command line"


def test_an_lr_given_on_resume_takes_effect_without_a_scheduler(tmp_path):
    trainer = ToyTrainer.from_argv(
        ["--output_dir", str(tmp_path), "--gpu_devices", "cpu", "--max_steps", "10", "--lr_scheduler", "none"]
    )
    trainer.build_hooks = lambda: [StopAfter(4)]
    with pytest.raises(RuntimeError):
        trainer.fit()
    log = LRLog()
    run(ToyTrainer, tmp_path, ["--resume", "auto", "--lr", "0.001"], [log])
    assert sorted(log.lrs) == list(range(5, 11)) and set(log.lrs.values()) == {0.001}


class NoDecayBias(ToyTrainer):
    """ToyTrainer whose bias is in a param group without weight decay."""

    def build_optimizer(self):
        return optim.build_optimizer(optim.decay_groups(self.raw_model, {"bias"}), self.args)


@pytest.mark.parametrize("before", ["0", "0.05"])
def test_a_weight_decay_given_on_resume_leaves_the_no_decay_group_at_0(tmp_path, before):
    run(NoDecayBias, tmp_path, ["--max_steps", "4", "--weight_decay", before])
    resumed = run(NoDecayBias, tmp_path, ["--resume", "auto", "--max_steps", "8", "--weight_decay", "0.3"])
    assert resumed.global_step == 8
    assert [len(g["params"]) for g in resumed.optimizer.param_groups] == [1, 1]  # weight; bias
    assert [g["weight_decay"] for g in resumed.optimizer.param_groups] == [0.3, 0.0]


def test_a_flag_that_cannot_change_on_resume_is_refused_naming_it(tmp_path, capsys):
    run(ToyTrainer, tmp_path, ["--max_steps", "3"])
    expect(
        ToyTrainer,
        ["--output_dir", str(tmp_path), "--resume", "auto", "--model_type", "Other"],
        capsys,
        1,
        "--model_type",
        "'Other'",
        "'Toy'",
        "cannot change on --resume",
    )
    expect(ToyTrainer, ["--output_dir", str(tmp_path), "--resume", "auto", "--seed", "3"], capsys, 1, "--seed")


class Indexed(ToyTrainer):
    """ToyTrainer whose batches carry their sample indices, logged per epoch in ``seen``."""

    seen = []

    def build_datasets(self):
        sets = super().build_datasets()
        x, y = sets["train"].tensors
        sets["train"] = TensorDataset(x, y, torch.arange(len(x)))
        return sets

    def train_step(self, batch):
        x, y, index = batch
        Indexed.seen += [(self.epoch, int(i)) for i in index]
        return super().train_step((x, y))


def test_resume_with_another_batch_size_sees_every_sample_of_the_epoch_once(tmp_path):
    Indexed.seen = []
    first = Indexed.from_argv(
        ["--output_dir", str(tmp_path), "--gpu_devices", "cpu", "--batch_size", "8", "--epochs", "2"]
    )
    first.build_hooks = lambda: [StopAfter(3)]  # 24 of the 40 samples of epoch 0
    with pytest.raises(RuntimeError):
        first.fit()
    resumed = run(Indexed, tmp_path, ["--resume", "auto", "--batch_size", "32"])
    for epoch in (0, 1):
        assert sorted(i for e, i in Indexed.seen if e == epoch) == list(range(40)), epoch
    assert resumed.global_step == 3 + 1 + 2  # 16 left in epoch 0: one batch; epoch 1: two
    assert resumed.optimizer.param_groups[0]["lr"] == pytest.approx(0.0, abs=1e-12)


@pytest.mark.filterwarnings("ignore:Seems like `optimizer.step\\(\\)` has been overridden")
def test_second_ctrl_c_inside_the_update_saves_a_whole_step(tmp_path):
    """The first Ctrl-C asks for a stop at the step boundary; a second one lands right after the
    weights changed and before the step was counted."""
    weights = {}

    class Record(HookBase):
        def before_step(self):
            if self.trainer.global_step == 2:
                os.kill(os.getpid(), signal.SIGINT)  # first Ctrl-C: sets the preemption flag

        def after_step(self):
            weights[self.trainer.global_step] = {k: v.clone() for k, v in self.trainer.model.state_dict().items()}

    trainer = ToyTrainer.from_argv(["--output_dir", str(tmp_path), "--gpu_devices", "cpu"])
    trainer.build_hooks = lambda: [Record()]
    trainer.setup_then = trainer.setup

    def setup():
        trainer.setup_then()
        step = trainer.optimizer.step

        def step_then_interrupt(*args, **kwargs):
            out = step(*args, **kwargs)
            if trainer.global_step == 2:
                os.kill(os.getpid(), signal.SIGINT)  # second Ctrl-C: weights already moved
            return out

        trainer.optimizer.step = step_then_interrupt

    trainer.setup = setup
    with pytest.raises(KeyboardInterrupt):
        trainer.fit()
    weights.setdefault(trainer.global_step, trainer.model.state_dict())  # what the process ended with
    ckpt = load_checkpoint(trainer.checkpointer.path("exception"))
    step = ckpt["global_step"]
    for key, value in ckpt["model"].items():
        assert torch.equal(value, weights[step][key]), (step, key)  # weights and counter agree
    assert (ckpt["batch_in_epoch"], ckpt["samples_in_epoch"]) == (step, 8 * step)


class FailingValidation(ToyTrainer):
    """Raises inside the validation number ``fail_at`` (1-based), once per process."""

    fail_at, calls = 0, 0

    def validate(self, model, loader):
        FailingValidation.calls += 1
        if FailingValidation.calls == self.fail_at:
            raise RuntimeError("validation failed")
        return super().validate(model, loader)


@pytest.mark.parametrize("fail_at", [1, 2, 3], ids=["first", "middle", "final"])
def test_an_interrupted_validation_is_redone_exactly_once(tmp_path, fail_at):
    argv = ["--epochs", "3", "--early_stop_patience", "5"]
    FailingValidation.calls, FailingValidation.fail_at = 0, 0
    straight = run(FailingValidation, tmp_path / "straight", argv)
    FailingValidation.calls, FailingValidation.fail_at = 0, fail_at
    with pytest.raises(RuntimeError, match="validation failed"):
        run(FailingValidation, tmp_path / "broken", argv)
    FailingValidation.fail_at = 0
    resumed = run(FailingValidation, tmp_path / "broken", ["--resume", "auto"])
    assert rows(resumed) == rows(straight)
    assert resumed.early_stopper.state_dict() == straight.early_stopper.state_dict()
    timeless = [
        {k: v for k, v in load_checkpoint(t.checkpointer.path("best"))["metrics"].items() if k != "val_seconds"}
        for t in (resumed, straight)
    ]
    assert timeless[0] == timeless[1]
    assert load_checkpoint(resumed.checkpointer.path("last"))["global_step"] == 15
    assert not os.path.exists(resumed.checkpointer.path("exception"))  # superseded by newer work


class AlwaysNaN(ToyTrainer):
    """A NaN loss at every step after the first five."""

    def train_step(self, batch):
        out = super().train_step(batch)
        if self.global_step >= 5:
            out["loss"] = out["loss"] * float("nan")
        return out


def test_rollbacks_compound_the_lr_factor_and_skip_the_exception_checkpoint(tmp_path):
    factors = []

    class Watch(HookBase):
        def after_step(self):
            if self.trainer.guard.lr_scale not in factors:
                factors.append(self.trainer.guard.lr_scale)

    trainer = AlwaysNaN.from_argv(
        [
            "--output_dir",
            str(tmp_path),
            "--gpu_devices",
            "cpu",
            "--nonfinite",
            "rollback",
            "--save_every_steps",
            "5",
            "--max_skipped_steps",
            "3",
        ]
    )
    trainer.build_hooks = lambda: [Watch()]
    with pytest.raises(FloatingPointError, match="--max_skipped_steps=3"):
        trainer.fit()
    assert factors == [1.0, 0.5, 0.25, 0.125]
    # After that failure the exception checkpoint is the newest file; a rollback must still use step 5.
    assert os.path.getmtime(trainer.checkpointer.path("exception")) >= os.path.getmtime(
        trainer.checkpointer.path("step5")
    )
    resumed = AlwaysNaN.from_argv(
        ["--output_dir", str(tmp_path), "--resume", trainer.checkpointer.path("step5"), "--max_skipped_steps", "5"]
    )
    with pytest.raises(FloatingPointError, match="--max_skipped_steps=5"):
        resumed.fit()
    log = open(os.path.join(trainer.run_dir, f"Toy_{trainer.timestamp}_log.txt")).read()
    assert "rolled back to" in log and "_exception_ckpt.pth (step" not in log


def test_resume_auto_never_passes_over_a_newer_run_quietly(tmp_path, capsys):
    finished = run(ToyTrainer, tmp_path, ["--max_steps", "3"])
    newer = os.path.join(tmp_path, "Toy", "9999-12-31_23-59-59")  # died before its first checkpoint
    os.makedirs(newer)
    os.utime(newer)
    expect(
        ToyTrainer,
        ["--output_dir", str(tmp_path), "--resume", "auto"],
        capsys,
        1,
        newer,
        "no checkpoint",
        finished.run_dir,
    )
    os.rmdir(newer)
    again = run(ToyTrainer, tmp_path, ["--resume", "auto"])
    assert again.global_step == 3
    log = open(os.path.join(finished.run_dir, f"Toy_{finished.timestamp}_log.txt")).read()
    assert "is complete" in log and "--max_steps" in log
    assert "picked" in log and finished.run_dir in log


def test_a_checkpoint_of_another_shape_is_refused_naming_both_shapes(tmp_path, capsys):
    class Wider(ToyTrainer):
        def build_model(self):
            return torch.nn.Linear(4, 2)

    first = run(ToyTrainer, tmp_path, ["--max_steps", "3"])
    line = expect(
        Wider,
        ["--output_dir", str(tmp_path), "--gpu_devices", "cpu", "--resume", first.run_dir, "--max_steps", "6"],
        capsys,
        1,
        "(1, 4)",
        "(2, 4)",
    )
    assert "shape" in line
