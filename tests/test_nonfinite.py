"""--nonfinite raise|skip|rollback: no weight is ever updated from a NaN loss; a rollback's redone steps are
logged once."""

import collections
import csv
import json
import os

import pytest
import torch
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

import base.checkpoint.trainer_state
from base.hooks import HookBase
from conftest import ToyTrainer


class Poisoned(ToyTrainer):
    """Returns a NaN loss for the batches listed in ``poison`` as (epoch, batch index)."""

    poison = set()
    once = False

    def train_step(self, batch):
        out = super().train_step(batch)
        where = (self.epoch, self.progress.batch_in_epoch)
        if where in self.poison:
            if self.once:
                self.poison = self.poison - {where}
            out["loss"] = out["loss"] * float("nan")
        return out


class WeightLog(HookBase):
    """Weights after every batch, and the loss the step saw."""

    def __init__(self):
        self.after = []

    def after_step(self):
        self.after.append({k: v.clone() for k, v in self.trainer.model.state_dict().items()})


def run(tmp_path, poison, *argv, once=False, base=Poisoned):
    cls = type("P", (base,), {"poison": set(poison), "once": once})
    trainer = cls.from_argv(["--output_dir", str(tmp_path), "--gpu_devices", "cpu", *argv])
    log = WeightLog()
    trainer.build_hooks = lambda: [log]
    return trainer, log


def all_finite(weights):
    return all(torch.isfinite(v).all() for v in weights.values())


def test_raise_names_the_step_and_leaves_weights(tmp_path):
    """Fused optimizer (the default): no host sync per step; the update of the bad step and of every step
    after it is skipped on the device, and the run stops at the next check (here the validation after step 5)."""
    trainer, log = run(tmp_path, {(0, 2)})
    with pytest.raises(FloatingPointError, match=r"non-finite loss at step 3 \(noticed at step 5"):
        trainer.fit()
    assert trainer.guard.on_device and len(log.after) == 5
    for weights in log.after[2:] + [trainer.model.state_dict()]:  # as after step 2, the last good one
        for key, value in weights.items():
            assert torch.equal(value, log.after[1][key])
    assert not list(tmp_path.glob("Toy/*/*_ckpt.pth"))  # the counted-but-not-applied steps are never saved


class NotFused(Poisoned):
    def build_optimizer(self):
        return torch.optim.SGD(self.model.parameters(), lr=self.args.lr)


def test_raise_with_an_optimizer_that_cannot_skip_on_the_device_checks_each_step(tmp_path):
    trainer, log = run(tmp_path, {(0, 2)}, base=NotFused)
    with pytest.raises(FloatingPointError, match=r"non-finite loss nan at step 3 \(epoch 1, batch 3\)"):
        trainer.fit()
    assert not trainer.guard.on_device and trainer.global_step == 2
    for key, value in trainer.model.state_dict().items():
        assert torch.equal(value, log.after[-1][key])


def test_skip_drops_the_batch_and_counts_it(tmp_path):
    trainer, log = run(tmp_path, {(0, 2)}, "--nonfinite", "skip")
    trainer.fit()
    assert trainer.guard.skipped_steps == 1 and trainer.global_step == 9  # 10 batches, one dropped
    assert all(all_finite(w) for w in log.after)
    for key in log.after[1]:
        assert torch.equal(log.after[1][key], log.after[2][key])  # the poisoned batch changed nothing
    assert not torch.equal(log.after[2]["weight"], log.after[3]["weight"])  # the next one did


def test_skip_stops_past_max_skipped_steps(tmp_path):
    trainer, log = run(tmp_path, {(0, i) for i in range(1, 5)}, "--nonfinite", "skip", "--max_skipped_steps", "3")
    with pytest.raises(FloatingPointError, match="--max_skipped_steps=3"):
        trainer.fit()
    assert trainer.guard.skipped_steps == 4 and all(all_finite(w) for w in log.after)


def test_the_skipped_steps_of_a_resumed_run_count_against_max_skipped_steps(tmp_path):
    first, _ = run(tmp_path, {(0, 1), (0, 2)}, "--nonfinite", "skip", "--max_skipped_steps", "3", "--max_steps", "3")
    first.fit()
    assert first.guard.skipped_steps == 2 and first.global_step == 3
    resumed, _ = run(tmp_path, {(1, 0), (1, 1)}, "--resume", first.checkpointer.path("last"), "--max_steps", "8")
    with pytest.raises(FloatingPointError, match="--max_skipped_steps=3"):  # 2 before the resume + 2 after
        resumed.fit()
    assert resumed.guard.skipped_steps == 4


def test_rollback_reloads_last_checkpoint_and_lowers_lr(tmp_path):
    trainer, log = run(
        tmp_path, {(0, 3)}, "--nonfinite", "rollback", "--save_every_steps", "2", "--lr_scheduler", "none", once=True
    )
    trainer.fit()
    assert trainer.guard.skipped_steps == 1
    assert trainer.optimizer.param_groups[0]["lr"] == pytest.approx(0.05 * 0.5)
    assert trainer.global_step == 10  # batches 2 and 3 were replayed after rolling back to step 2
    assert all(all_finite(w) for w in log.after)
    for key in log.after[1]:  # the rollback step restored step 2's weights exactly
        assert torch.equal(log.after[1][key], log.after[3][key])
    assert len(log.after) == 12


def test_a_second_rollback_to_a_checkpoint_saved_after_the_first_scales_the_lr_once_more(tmp_path):
    """The checkpoint written after the first rollback carries its LR x0.5 and says so (``lr_scale``)."""
    trainer, log = run(
        tmp_path,
        {(0, 3), (1, 3)},
        "--nonfinite",
        "rollback",
        "--save_every_steps",
        "2",
        "--lr_scheduler",
        "none",
        once=True,
    )
    trainer.fit()
    assert trainer.guard.skipped_steps == 2 and trainer.guard.lr_scale == 0.25
    assert trainer.optimizer.param_groups[0]["lr"] == pytest.approx(0.05 * 0.25)  # not x0.125


def test_rollback_without_a_checkpoint_says_so(tmp_path):
    trainer, _ = run(tmp_path, {(0, 1)}, "--nonfinite", "rollback")
    with pytest.raises(FloatingPointError, match="no checkpoint of this run to roll back to yet"):
        trainer.fit()


def test_entry_point_reports_a_nan_loss_in_one_line(tmp_path, capsys):
    from base.cli import main

    cls = type("P", (Poisoned,), {"poison": {(0, 1)}})
    assert main(cls, ["--output_dir", str(tmp_path), "--gpu_devices", "cpu"]) == 1
    err = capsys.readouterr().err
    assert "error: non-finite loss at step 2 (noticed at step 5" in err and "Traceback" not in err
    assert "no exception checkpoint: the steps counted since the non-finite loss were not applied" in err
    assert not list(tmp_path.glob("Toy/*/Toy_exception_ckpt.pth"))
    cls = type("P", (NotFused,), {"poison": {(0, 1)}})  # checked per step: the exception checkpoint is step 1
    assert main(cls, ["--output_dir", str(tmp_path), "--gpu_devices", "cpu"]) == 1
    assert "error: non-finite loss nan at step 2 (epoch 1, batch 2)" in capsys.readouterr().err
    (path,) = tmp_path.glob("Toy/*/Toy_exception_ckpt.pth")
    assert torch.load(path, weights_only=True)["global_step"] == 1


def test_rollback_before_the_first_step_checkpoint_says_when_it_comes(tmp_path):
    trainer, _ = run(tmp_path, {(0, 1)}, "--nonfinite", "rollback", "--save_every_steps", "4")
    with pytest.raises(FloatingPointError, match="the first step checkpoint comes at step 4"):
        trainer.fit()


def test_no_checkpoint_holds_a_step_counted_after_a_nonfinite_loss(tmp_path):
    """With an update skipped on the device, a step checkpoint is where the bad step is noticed."""
    trainer, _ = run(tmp_path, {(0, 2)}, "--save_every_steps", "1")
    with pytest.raises(FloatingPointError, match=r"non-finite loss at step 3 \(noticed at step 3"):
        trainer.fit()
    assert sorted(p.name for p in tmp_path.glob("Toy/*/*_ckpt.pth")) == ["Toy_step1_ckpt.pth", "Toy_step2_ckpt.pth"]


# ------------------------------------------------------------------ rows after a rollback
ROWS = ["--nonfinite", "rollback", "--log_every_steps", "1", "--lr_scheduler", "none", "--loggers", "csv,tensorboard"]


def rows_of(run_dir):
    """metrics.csv's steps, scalars.csv's ``{(step, name): [value, ...]}`` and TensorBoard's likewise."""
    with open(os.path.join(run_dir, "metrics.csv"), newline="") as f:
        validations = [int(r["step"]) for r in csv.DictReader(f)]
    scalars, board = collections.defaultdict(list), collections.defaultdict(list)
    with open(os.path.join(run_dir, "scalars.csv"), newline="") as f:
        for r in csv.DictReader(f):
            scalars[int(r["step"]), r["name"]].append(float(r["value"]))
    events = EventAccumulator(os.path.join(run_dir, "summary")).Reload()  # applies purge_step as TensorBoard does
    for tag in events.Tags()["scalars"]:
        for point in events.Scalars(tag):
            board[point.step, tag].append(point.value)
    return validations, scalars, board


def test_rollback_drops_the_rows_logged_after_its_checkpoint_and_logs_the_redone_steps_once(tmp_path):
    """Step 3's rows are logged after step 2's checkpoint; the NaN at step 4 rolls back to it and step 3 is
    redone at half the LR: each point is in metrics.csv, scalars.csv and TensorBoard once, the redone one."""
    trainer, _ = run(tmp_path, {(0, 3)}, *ROWS, "--save_every_steps", "2", "--val_every_steps", "2", once=True)
    trainer.fit()
    validations, scalars, board = rows_of(trainer.run_dir)
    assert validations == [2, 4, 5, 6, 8, 10]
    for points in (scalars, board):
        assert {key: values for key, values in points.items() if len(values) > 1} == {}
        lrs = {step: values[0] for (step, name), values in points.items() if name == "train/lr"}
        assert lrs == pytest.approx({1: 0.05, 2: 0.05, **{step: 0.025 for step in range(3, 11)}})
    assert {k for k in scalars if k[0] == 3} == {
        (3, f"train/{n}") for n in ("loss", "lr", "grad_norm", "images_per_sec", "step_time", "data_time")
    }


def test_rollback_logs_the_redone_steps_to_mlflow_after_the_rolled_back_ones(tmp_path, monkeypatch):
    """MLflow keeps every point it was given: at step 3 its history holds the rolled-back LR, then the
    redone one the run went on from; the steps after it hold the redone one alone."""
    pytest.importorskip("mlflow")
    from mlflow.tracking import MlflowClient

    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    argv = [*ROWS[:-1], "csv,mlflow", "--save_every_steps", "2", "--val_every_steps", "2"]
    trainer, _ = run(tmp_path, {(0, 3)}, *argv, once=True)
    trainer.fit()
    with open(os.path.join(trainer.run_dir, "mlflow_run.json")) as f:
        run_id = json.load(f)["run_id"]
    client = MlflowClient(tracking_uri=(tmp_path / "mlruns").resolve().as_uri())
    lrs = collections.defaultdict(list)
    for point in sorted(client.get_metric_history(run_id, "train/lr"), key=lambda p: p.timestamp):
        lrs[point.step].append(point.value)
    assert lrs[3] == pytest.approx([0.05, 0.025]) and lrs[4] == pytest.approx([0.025])


def test_rollback_to_a_checkpoint_saved_before_its_steps_validation_logs_that_validation_once(tmp_path, monkeypatch):
    """Whichever checkpoint the rollback loads: here step 5's, saved before the validation that ends epoch 1
    (`last`, saved after it, may carry the same file time). The validation is done again after the
    rollback, and its row and points are in the row files once. TensorBoard purges whole steps: it keeps
    step 5's first validation points (step 5's training points must stay), so those show twice there."""
    monkeypatch.setattr(
        base.checkpoint.trainer_state,
        "newest_checkpoint",
        lambda run_dir, tags: os.path.join(run_dir, "Toy_step5_ckpt.pth"),
    )
    trainer, _ = run(tmp_path, {(1, 1)}, *ROWS, "--save_every_steps", "5", once=True)
    trainer.fit()
    validations, scalars, board = rows_of(trainer.run_dir)
    assert trainer.guard.skipped_steps == 1 and validations == [5, 10]
    twice = {(5, name) for name in ("val/loss", "val/seconds", "train/loss_since_val")}
    for points, repeated in ((scalars, set()), (board, twice)):
        assert {key for key, values in points.items() if len(values) > 1} == repeated
        assert points[5, "train/lr"] == pytest.approx([0.05]) and points[6, "train/lr"] == pytest.approx([0.025])
