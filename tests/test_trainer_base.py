"""Contract tests of TrainerBase on the tiny ToyTrainer (CPU, milliseconds per run)."""

import csv
import glob
import json
import math
import os

import pytest
import torch

from base.checkpoint.files import load_checkpoint
from base.hooks import HookBase
from base.loop import optim
from conftest import RecordingHook, ToyTrainer


def make(argv, hooks=()):
    trainer = ToyTrainer.from_argv(argv)
    trainer.build_hooks = lambda: list(hooks)
    return trainer


def test_hook_call_order(toy_argv):
    hook = RecordingHook()
    make(toy_argv + ["--epochs", "2", "--batch_size", "20"], [hook]).fit()
    step = ["before_step", "after_backward", "after_step"]
    epoch = ["before_epoch", *step, *step, "after_validation", "after_epoch"]
    assert hook.calls == ["before_train", *epoch, *epoch, "after_train"]


def test_hook_call_order_of_step_and_final_validations(toy_argv):
    hook = RecordingHook()
    # --val_every_steps: after the step's after_step; the epoch's own validation is that step's
    make(toy_argv + ["--epochs", "1", "--batch_size", "20", "--val_every_steps", "1"], [hook]).fit()
    step = ["before_step", "after_backward", "after_step"]
    assert hook.calls == ["before_train", "before_epoch", *step, "after_validation", *step, "after_validation",
                          "after_epoch", "after_train"]  # fmt: skip
    hook = RecordingHook()
    # --max_steps mid-epoch: the final validation comes after the unfinished epoch's after_epoch
    make(toy_argv + ["--epochs", "5", "--batch_size", "20", "--max_steps", "3"], [hook]).fit()
    epoch = ["before_epoch", *step, *step, "after_validation", "after_epoch"]
    assert hook.calls == ["before_train", *epoch, "before_epoch", *step, "after_epoch", "after_validation",
                          "after_train"]  # fmt: skip


def test_exception_runs_on_exception_then_after_train_and_saves(toy_argv):
    hook = RecordingHook()
    trainer = make(toy_argv + ["--batch_size", "10", "--fail_at_step", "3"], [hook])
    with pytest.raises(RuntimeError, match="boom"):
        trainer.fit()
    assert hook.calls[-2:] == ["on_exception", "after_train"]
    ckpt = load_checkpoint(trainer.checkpointer.path("exception"))
    assert ckpt["global_step"] == 2  # the last completed step
    assert ckpt["hooks"] == [{"type": "RecordingHook", "state": {"num_calls": len(hook.calls) - 1}}]
    for key, value in trainer.model.state_dict().items():
        assert torch.equal(ckpt["model"][key], value)


def test_keyboard_interrupt_writes_checkpoint_and_propagates(toy_argv):
    class Interrupt(HookBase):
        def after_step(self):
            if self.trainer.global_step == 3:
                raise KeyboardInterrupt

    trainer = make(toy_argv + ["--batch_size", "10"], [Interrupt()])
    with pytest.raises(KeyboardInterrupt):
        trainer.fit()
    assert load_checkpoint(trainer.checkpointer.path("exception"))["global_step"] == 3


def test_config_written_before_first_step(toy_argv):
    seen = {}

    class Peek(HookBase):
        def before_train(self):
            paths = glob.glob(os.path.join(self.trainer.run_dir, "config_Toy_*.json"))
            seen["config"] = json.load(open(paths[0]))

    make(toy_argv + ["--lr", "0.01"], [Peek()]).fit()
    doc = seen["config"]
    assert doc["config"]["lr"] == 0.01 and doc["provenance"]["lr"] == "command line"
    assert doc["provenance"]["epochs"] == "subclass default (ToyTrainer)"
    assert doc["provenance"]["num_workers"] == "base default (TrainerBase)"
    assert doc["meta"]["torch"] == torch.__version__


def test_run_dir_contents_and_metrics_rows(toy_argv):
    trainer = make(toy_argv + ["--epochs", "3", "--batch_size", "20"])
    trainer.fit()
    names = set(os.listdir(trainer.run_dir))
    stamp = trainer.timestamp
    assert {
        f"config_Toy_{stamp}.json",
        f"Toy_{stamp}_log.txt",
        "metrics.csv",
        "summary",
        "Toy_best_ckpt.pth",
        "Toy_last_ckpt.pth",
    } <= names
    assert trainer.run_dir == os.path.join(toy_argv[1], "Toy", stamp)
    rows = list(csv.DictReader(open(os.path.join(trainer.run_dir, "metrics.csv"))))
    assert [int(r["epoch"]) for r in rows] == [1, 2, 3]
    assert [int(r["step"]) for r in rows] == [2, 4, 6]
    assert os.listdir(os.path.join(trainer.run_dir, "summary"))
    log = open(os.path.join(trainer.run_dir, f"Toy_{stamp}_log.txt")).read()
    assert "parameters" in log and "val_loss" in log


def test_max_steps_stops_mid_epoch_and_validates(toy_argv):
    trainer = make(toy_argv + ["--epochs", "10", "--batch_size", "8", "--max_steps", "7"])
    trainer.fit()
    assert trainer.global_step == 7 and trainer.epoch == 1 and trainer.progress.batch_in_epoch == 2
    assert load_checkpoint(trainer.checkpointer.path("last"))["global_step"] == 7
    assert trainer.last_metrics["step"] == 7  # the final, mid-epoch step was validated


def test_scheduler_steps_per_optimizer_step(toy_argv):
    trainer = make(toy_argv + ["--epochs", "2", "--batch_size", "8", "--warmup_steps", "3"])
    trainer.fit()
    assert trainer.scheduler.last_epoch == trainer.global_step == 10
    assert trainer.optimizer.param_groups[0]["lr"] == pytest.approx(0.0, abs=1e-9)  # cosine to 0


class UpdateProbe(HookBase):
    """The weight before each step, its gradient after backward, and the weight after the update."""

    def __init__(self):
        self.before, self.grads, self.after = [], [], []

    def before_step(self):
        self.before.append(self.trainer.raw_model.weight.detach().clone())

    def after_backward(self):
        self.grads.append(self.trainer.raw_model.weight.grad.detach().clone())

    def after_step(self):
        self.after.append(self.trainer.raw_model.weight.detach().clone())


def test_the_kth_update_uses_the_schedules_lr_for_step_k(toy_argv):
    # Plain SGD (no momentum, no decay): update k is w - lr_k * g_k. The schedule of step k is
    # 0.1 x WarmupCosine(3, 6)(k): warmup 0.001, 0.334, 0.667, then cosine 1, 0.75, 0.25.
    probe = UpdateProbe()
    make(
        toy_argv + ["--max_steps", "6", "--warmup_steps", "3", "--optimizer", "sgd", "--momentum", "0", "--lr", "0.1"],
        [probe],
    ).fit()
    factors = [0.001, 0.001 + 0.999 / 3, 0.001 + 2 * 0.999 / 3, 1.0, 0.75, 0.25]
    assert len(probe.after) == len(factors)
    for k, factor in enumerate(factors):
        torch.testing.assert_close(probe.after[k], probe.before[k] - 0.1 * factor * probe.grads[k])


def test_a_warmup_longer_than_half_the_run_is_cut_to_half_with_a_warning(toy_argv):
    lrs = []

    class LR(HookBase):
        def before_step(self):
            lrs.append(self.trainer.optimizer.param_groups[0]["lr"])

    trainer = make(toy_argv + ["--max_steps", "20", "--warmup_steps", "100"], [LR()])
    trainer.fit()
    assert lrs.index(max(lrs)) == 10 and max(lrs) == pytest.approx(0.05)  # warmup 10, then 10 steps of cosine
    assert lrs[-1] == pytest.approx(0.05 * 0.5 * (1 + math.cos(math.pi * 9 / 10)))
    with open(os.path.join(trainer.run_dir, f"Toy_{trainer.timestamp}_log.txt")) as f:
        (line,) = [line for line in f.read().splitlines() if "--warmup_steps" in line]
    assert " WARNING --warmup_steps 100 is more than half of the run's 20 optimizer steps: warming up for 10" in line


def test_early_stopping_stops_after_patience(toy_argv):
    class Worsening(ToyTrainer):
        def validate(self, model, loader):
            return {"loss": float(self.epoch)}  # best at the first validation, then only worse

    trainer = Worsening.from_argv(toy_argv + ["--epochs", "50", "--early_stop_patience", "2"])
    trainer.fit()
    assert trainer.epoch == 3 and trainer.early_stopper.should_stop
    assert load_checkpoint(trainer.checkpointer.path("best"))["global_step"] == 5  # epoch 1 of 5 steps


def test_train_loss_of_a_validation_row_is_the_mean_since_the_previous_validation(toy_argv):
    class EpochLoss(ToyTrainer):
        def train_step(self, batch):
            out = super().train_step(batch)
            return {"loss": out["loss"] * 0 + (self.epoch + 1)}  # 1.0 per sample in epoch 0, 2.0 in epoch 1

    trainer = EpochLoss.from_argv(toy_argv + ["--epochs", "2"])
    trainer.fit()
    with open(os.path.join(trainer.run_dir, "metrics.csv")) as f:
        assert [float(r["train_loss"]) for r in csv.DictReader(f)] == [1.0, 2.0]  # not 1.5, a mean since the start


def test_early_stopper_counts_only_improvements_beyond_min_delta():
    from base.loop.state import EarlyStopper

    up = EarlyStopper("max", patience=2, min_delta=0.5)
    # 1.3 and 1.5 are within min_delta of the best 1.0 (a tie is no improvement); 1.6 is beyond it
    assert [up.update(v) for v in (1.0, 1.3, 1.5, 1.6)] == [True, False, False, True]
    assert up.best == 1.6 and up.bad_count == 0 and not up.should_stop
    down = EarlyStopper("min", patience=2, min_delta=0.5)
    assert [down.update(v) for v in (1.0, 0.7, 0.5, 0.4)] == [True, False, False, True]
    assert down.best == 0.4
    assert [down.update(v) for v in (0.4, 0.3)] == [False, False] and down.should_stop  # a tie counts as no gain


@pytest.mark.parametrize("groups", [1, 2])
@pytest.mark.parametrize("mode", ["norm", "value"])
def test_grad_clip_bounds_gradients(toy_argv, mode, groups):
    """Every parameter is clipped, in every param group (2: the bias in a no-decay group of its own)."""
    seen = []

    class GradProbe(HookBase):
        def after_step(self):
            grads = [p.grad for p in self.trainer.model.parameters()]
            if mode == "norm":
                seen.append(float(torch.linalg.vector_norm(torch.cat([g.flatten() for g in grads]))))
            else:
                seen.append(max(float(g.abs().max()) for g in grads))

    trainer = make(toy_argv + ["--grad_clip", "0.01", "--grad_clip_mode", mode], [GradProbe()])
    if groups == 2:
        trainer.build_optimizer = lambda: optim.build_optimizer(
            optim.decay_groups(trainer.model, {"bias"}), trainer.args
        )
    trainer.fit()
    assert len(trainer.optimizer.param_groups) == groups
    assert seen and max(seen) <= 0.01 + 1e-6
    assert min(seen) > 0.005  # clipped down to the bound, not zeroed (the raw gradients are far larger)


def test_nonfinite_loss_raises_naming_step_and_leaves_weights(toy_argv):
    class Poison(ToyTrainer):
        def train_step(self, batch):
            out = super().train_step(batch)
            if self.global_step == 2:
                out["loss"] = out["loss"] * float("nan")
            return out

    trainer = Poison.from_argv(toy_argv)
    seen = {}
    trainer.build_hooks = lambda: [
        type(
            "H",
            (HookBase,),
            {
                "after_step": lambda self: seen.update(
                    {k: v.clone() for k, v in self.trainer.model.state_dict().items()}
                )
            },
        )()
    ]
    with pytest.raises(FloatingPointError, match="step 3"):
        trainer.fit()
    for key, value in trainer.model.state_dict().items():
        assert torch.equal(value, seen[key])


@pytest.mark.parametrize("seed", [0, 7])
def test_same_seed_same_weights(toy_argv, seed):
    a = make(toy_argv + ["--seed", str(seed), "--deterministic", "true"])
    a.fit()
    b = make(toy_argv + ["--seed", str(seed), "--deterministic", "true"])
    b.fit()
    for key, value in a.model.state_dict().items():
        assert torch.equal(value, b.model.state_dict()[key])


def test_different_seeds_give_different_weights(toy_argv):
    a, b = (make(toy_argv + ["--seed", seed, "--proj_name", f"s{seed}"]) for seed in ("0", "1"))
    a.fit()
    b.fit()
    assert not torch.equal(a.model.weight, b.model.weight)


def test_step_and_epoch_validation_at_the_same_step_run_once(toy_argv):
    trainer = make(toy_argv + ["--epochs", "2", "--batch_size", "8", "--val_every_steps", "5"])
    trainer.fit()  # 5 steps per epoch: both cadences fall on steps 5 and 10
    rows = list(csv.DictReader(open(os.path.join(trainer.run_dir, "metrics.csv"))))
    assert [int(r["step"]) for r in rows] == [5, 10]


def test_a_task_without_model_type_names_its_files_after_its_model_and_resumes(tmp_path):
    """--model_type is no hidden requirement: without it, checkpoints take the model's class name."""
    from base.trainer import TrainerBase
    from conftest import ToyTrainer

    # ToyTrainer's steps on the base's flags alone (no --model_type)
    steps = ("build_datasets", "build_model", "build_loss", "train_step", "validate")
    Untyped = type(
        "Untyped",
        (TrainerBase,),
        {"DEFAULTS": {"epochs": 2, "batch_size": 8, "lr": 0.05}, **{name: ToyTrainer.__dict__[name] for name in steps}},
    )
    Untyped.train_step = lambda self, batch: {"loss": self.loss_fn(self.model(batch[0]).squeeze(1), batch[1])}
    trainer = Untyped.from_argv(["--output_dir", str(tmp_path), "--gpu_devices", "cpu", "--save_every_steps", "2"])
    trainer.fit()
    assert not hasattr(trainer.args, "model_type")
    names = sorted(os.listdir(trainer.run_dir))
    assert {"Linear_best_ckpt.pth", "Linear_last_ckpt.pth", "Linear_best.safetensors"} <= set(names), names
    assert any(n.startswith("Linear_step") for n in names), names
    resumed = Untyped.from_argv(["--resume", trainer.run_dir, "--epochs", "3", "--gpu_devices", "cpu"])
    resumed.fit()
    assert resumed.epoch == 3 and os.path.exists(resumed.checkpointer.path("last"))
