"""Each part the trainer owns, alone: its one job and its state_dict round trip (no trainer built)."""

import logging
import os
import time

import pytest
import torch

from base.checkpoint import older
from base.checkpoint.checkpointer import Checkpointer
from base.checkpoint.files import load_checkpoint
from base.errors import CheckpointError
from base.loop.ema import ModelEMA
from base.loop.nonfinite import NonFiniteGuard
from base.loop.progress import LoopProgress
from base.loop.step import OptimizerStep
from base.run.run_folder import RunFolder
from base.run.tracking import RunTracking

LOG = logging.getLogger("parts-test")


# ----------------------------------------------------------------- LoopProgress
def test_progress_advances_by_the_samples_of_all_processes_and_ends_the_epoch_at_its_order():
    p = LoopProgress()
    p.advance(2, batch_size=8, world_size=2, epoch_size=100, order_end=100)
    assert (p.batch_in_epoch, p.samples_in_epoch) == (2, 32)
    p.advance(3, batch_size=8, world_size=2, epoch_size=100, order_end=100)
    assert p.samples_in_epoch == 80
    # the order of this process ends at 90 (a tail it does not take): the rest waits for the next epoch
    p.advance(1, batch_size=8, world_size=1, epoch_size=100, order_end=88)
    assert p.samples_in_epoch == 100
    p.next_epoch()
    assert (p.epoch, p.batch_in_epoch, p.samples_in_epoch) == (1, 0, 0)


def test_progress_plans_what_is_left_of_the_run():
    p = LoopProgress()
    p.global_step, p.samples_in_epoch = 3, 48  # 3 batches of 16 done of an epoch of 100
    # rest of epoch: 52 samples -> 4 batches -> 2 steps of 2; then 2 whole epochs of 7 batches -> 4 steps each
    assert p.planned_total_steps(3, 0, 100, 16, 2, 1) == 3 + 2 + 2 * 4
    assert p.planned_total_steps(3, 50, 100, 16, 2, 1) == 50  # --max_steps decides alone
    p.epoch = 3
    assert p.planned_total_steps(3, 0, 100, 16, 2, 1) == 3  # finished
    assert p.length_reached(3, 0) and not p.length_reached(3, 4)


def test_progress_state_round_trip():
    p = LoopProgress()
    p.epoch, p.global_step, p.batch_in_epoch, p.samples_in_epoch, p.validated_at = 2, 17, 5, 40, 14
    q = LoopProgress()
    q.load_state_dict(p.state_dict())
    assert (
        q.state_dict()
        == p.state_dict()
        == {
            "epoch": 2,
            "global_step": 17,
            "batch_in_epoch": 5,
            "samples_in_epoch": 40,
            "validated_at": 14,
            "stop_request": None,
        }
    )
    assert not q.validated_now
    q.validated_at = 17
    assert q.validated_now


def test_progress_keeps_a_stop_request_and_refuses_an_unknown_status():
    p = LoopProgress()
    assert not p.done(3, 0, early_stop=False)
    with pytest.raises(ValueError, match="'finished' is not one of"):
        p.request_stop("finished", "why")
    p.request_stop("pruned", "pruned by the sweep's median pruner at epoch 1 (val_loss 2)")
    assert p.done(3, 0, early_stop=False)
    q = LoopProgress()
    q.load_state_dict(p.state_dict())
    assert q.stop_request == {
        "status": "pruned",
        "reason": "pruned by the sweep's median pruner at epoch 1 (val_loss 2)",
    }
    assert "was stopped at epoch 0, step 0 (pruned: pruned by" in q.end_note("runs/x")


# ----------------------------------------------------------------- older checkpoints
def test_older_checkpoints_get_the_keys_the_parts_read_with_what_the_old_code_did():
    state = {"epoch": 1, "global_step": 9, "batch_in_epoch": 3, "loggers": None}
    up = older.upgrade(state, batch_size=8)
    assert up["samples_in_epoch"] == 24 and up["lr_scale"] == 1.0 and up["validating"] is False
    assert up["world_size"] == 1 and up["ema"] is None and up["loggers"] == {} and up["metrics_rows"] is None
    assert up["stop_request"] is None  # before request_stop: no run was stopped on request
    assert "samples_in_epoch" not in state  # a copy: the loaded dict is left as it was
    assert older.upgrade({**state, "samples_in_epoch": 5}, 8)["samples_in_epoch"] == 5  # never recomputed


# ----------------------------------------------------------------- NonFiniteGuard
def test_guard_raises_skips_and_stops_past_the_limit():
    nan = torch.tensor(float("nan"))
    with pytest.raises(FloatingPointError, match="non-finite loss nan at step 3"):
        NonFiniteGuard("raise", 5, 0.5).on_loss(nan, "step 3")
    guard = NonFiniteGuard("skip", 2, 0.5)
    assert guard.on_loss(nan, "step 1") == "skip" and guard.on_loss(nan, "step 2") == "skip"
    with pytest.raises(FloatingPointError, match="--max_skipped_steps=2"):
        guard.on_loss(nan, "step 3")
    assert guard.skipped_steps == 3


def test_guard_rollback_keeps_the_runs_count_and_compounds_the_factor():
    guard = NonFiniteGuard("rollback", 9, 0.5)
    guard.skipped_steps, guard.lr_scale = 2, 0.5
    older_state = {"skipped_steps": 1, "lr_scale": 0.5}  # the checkpoint rolled back to
    factor = guard.roll_back(lambda: guard.load_state_dict(older_state))
    assert guard.skipped_steps == 2 and guard.lr_scale == 0.25 and factor == 0.5
    first = {"skipped_steps": 0, "lr_scale": 1.0}  # a checkpoint from before any rollback
    factor = guard.roll_back(lambda: guard.load_state_dict(first))
    assert guard.lr_scale == 0.125 and factor == 0.125  # its LR carries scale 1: all of it applies
    restored = NonFiniteGuard("rollback", 9, 0.5)
    restored.load_state_dict(guard.state_dict())
    assert restored.state_dict() == {"skipped_steps": 2, "lr_scale": 0.125}


def test_guard_on_the_device_records_the_first_bad_step_and_blocks_every_later_update():
    model = torch.nn.Linear(2, 1)
    opt = torch.optim.AdamW(model.parameters(), fused=True)
    guard = NonFiniteGuard("raise", 0, 0.5)
    guard.arm(opt, world_size=1, fp16_scaler=False)
    assert guard.on_device
    guard.mark(torch.tensor(False), opt, 1)
    assert not guard.pending() and float(opt.found_inf) == 0
    guard.check(1)
    guard.mark(torch.tensor(True), opt, 2)
    guard.mark(torch.tensor(False), opt, 3)  # sticky: still blocked, still step 2
    assert guard.pending() and float(opt.found_inf) == 1
    with pytest.raises(FloatingPointError, match="non-finite loss at step 2 \\(noticed at step 3"):
        guard.check(3)
    for args in ((2, False), (1, True)):  # DDP, or an fp16 scaler: decided on the host
        guard.arm(opt, *args)
        assert not guard.on_device
    guard = NonFiniteGuard("skip", 0, 0.5)
    guard.arm(opt, 1, False)
    assert not guard.on_device


# ----------------------------------------------------------------- OptimizerStep
def _step_part(ema=True, clip=0.0, mode="norm"):
    torch.manual_seed(0)
    model = torch.nn.Linear(3, 1)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    sched = torch.optim.lr_scheduler.StepLR(opt, step_size=1, gamma=0.5)
    scaler = torch.amp.GradScaler("cpu", enabled=False)
    part = OptimizerStep(opt, sched, scaler, ModelEMA(model, 0.9) if ema else None, clip, mode)
    return model, part


def test_optimizer_step_weights_each_batch_by_its_share_of_the_window():
    model, part = _step_part(ema=False)
    x = torch.randn(6, 3)
    batches = [(x[:2], 2), (x[2:], 4)]
    summed = part.accumulate(batches, lambda b: {"loss": model(b).sum() / len(b)}, model, 1, on_device=False)
    got = model.weight.grad.clone()
    model.zero_grad()
    (model(x).sum() / 6).backward()  # one batch of 6
    torch.testing.assert_close(got, model.weight.grad)
    assert summed.samples == 6 and summed.nonfinite_loss is None
    torch.testing.assert_close(summed.loss_sum, model(x).sum().detach())


def test_optimizer_step_returns_a_non_finite_loss_before_any_backward():
    model, part = _step_part(ema=False)
    calls = []

    def forward(b):
        calls.append(1)
        return {"loss": torch.tensor(float("inf"), requires_grad=True)}

    summed = part.accumulate([(torch.zeros(1, 3), 1), (torch.zeros(1, 3), 1)], forward, model, 1, False)
    assert torch.isinf(summed.nonfinite_loss) and len(calls) == 1 and model.weight.grad is None


def test_optimizer_step_clips_and_reports_the_norm_before_clipping():
    model, part = _step_part(ema=False, clip=0.1)
    model.weight.grad = torch.full_like(model.weight, 3.0)
    model.bias.grad = torch.full_like(model.bias, 4.0)
    norm = part.clip(norm_wanted=True)
    assert float(norm) == pytest.approx((3 * 9 + 16) ** 0.5)
    assert float(torch.cat([model.weight.grad.flatten(), model.bias.grad]).norm()) == pytest.approx(0.1, rel=1e-4)
    _, part = _step_part(ema=False)
    assert part.clip(norm_wanted=False) is None  # nothing asked: no unscale, no norm


def test_optimizer_step_applies_update_ema_and_schedule_together_then_counts():
    model, part = _step_part()
    before = model.weight.detach().clone()
    model.weight.grad = torch.ones_like(model.weight)
    model.bias.grad = torch.ones_like(model.bias)
    seen = []
    part.apply(model, then=lambda: seen.append((part.updating, part.ema.num_updates, part.lr)))
    assert seen == [(True, 1, 0.05)]  # counted inside the update: weights, EMA and schedule moved already
    assert not part.updating and torch.equal(model.weight.detach(), before - 0.1)


def test_optimizer_step_state_round_trip_and_a_missing_ema_is_refused():
    model, part = _step_part()
    model.weight.grad = torch.ones_like(model.weight)
    model.bias.grad = torch.ones_like(model.bias)
    part.apply(model)
    state = part.state_dict()
    _, other = _step_part()
    other.load_state_dict(state)
    assert other.lr == part.lr and other.scheduler.state_dict() == part.scheduler.state_dict()
    assert other.ema.num_updates == 1
    for k, v in part.ema.module.state_dict().items():
        assert torch.equal(v, other.ema.module.state_dict()[k])
    with pytest.raises(CheckpointError, match="ckpt X: it holds no EMA weights"):
        other.load_state_dict({**state, "ema": None}, "ckpt X")


def test_optimizer_step_scales_the_current_and_the_scheduled_lr():
    _, part = _step_part(ema=False)
    part.scale_lr(0.5)
    assert part.lr == 0.05 and part.scheduler.base_lrs == [0.05]


# ----------------------------------------------------------------- Checkpointer
def test_checkpointer_names_writes_and_copies_best_to_last_at_the_same_position(tmp_path):
    flushed = []
    ck = Checkpointer(str(tmp_path), "Net", 0, 2, LOG, before_write=flushed.append)
    assert ck.path("best") == os.path.join(tmp_path, "Net_best_ckpt.pth")
    made = []
    ck.save("best", lambda: made.append(1) or {"model": {}, "x": torch.ones(2)}, position=(1, 10))
    ck.save("last", lambda: made.append(1) or {"model": {}, "x": torch.zeros(2)}, position=(1, 10))
    assert made == [1]  # last was a byte copy: the state was not made twice
    assert torch.equal(load_checkpoint(ck.path("last"))["x"], torch.ones(2)) and flushed == [False]
    ck.save("last", {"model": {}, "x": torch.zeros(2)}, position=(1, 11))  # another position: written anew
    assert torch.equal(load_checkpoint(ck.path("last"))["x"], torch.zeros(2))


def test_checkpointer_rotates_step_checkpoints_and_drops_superseded_ones(tmp_path):
    ck = Checkpointer(str(tmp_path), "Net", 0, 2, LOG)
    ck.save("exception", {"model": {}, "x": 1})
    time.sleep(0.01)
    ck.save("best", {"model": {}, "x": 2})
    assert os.path.isfile(ck.path("exception"))  # best is no state to resume from
    for step in (1, 2, 3):
        ck.rotate(ck.save(f"step{step}", {"model": {}, "step": step}))
    assert sorted(os.listdir(tmp_path)) == ["Net_best_ckpt.pth", "Net_step2_ckpt.pth", "Net_step3_ckpt.pth"]
    with open(ck.path("step4"), "wb") as f:
        f.write(b"not a checkpoint")
    with pytest.raises(CheckpointError, match="every older step checkpoint is kept"):
        ck.rotate(ck.path("step4"))
    assert os.path.isfile(ck.path("step2")) and os.path.isfile(ck.path("step3"))


# ----------------------------------------------------------------- RunFolder, RunTracking
def test_run_folder_creates_locks_writes_its_config_and_releases(tmp_path):
    folder = RunFolder(str(tmp_path), "Proj", 0, None)
    try:
        assert os.path.dirname(folder.path) == os.path.join(tmp_path, "Proj")
        assert os.path.basename(folder.path) == folder.timestamp
        with pytest.raises(Exception, match="in use"):
            RunFolder(str(tmp_path), "Proj", 0, folder.path)  # a second launch of the same run
        import argparse

        folder.write_config(argparse.Namespace(lr=0.1), {"lr": "command line"}, {"trainer": "T"})
        assert os.path.isfile(folder.config_path) and folder.config_path.startswith(folder.path)
    finally:
        folder.close()
    RunFolder(str(tmp_path), "Proj", 0, folder.path).close()  # released: it reopens


def test_tracking_cuts_metrics_csv_back_to_a_checkpoint_and_saves_its_row_count(tmp_path):
    tracking = RunTracking()
    tracking.open_rows(str(tmp_path / "metrics.csv"))
    for step in (5, 10, 15):
        tracking.write_row({"epoch": step // 5, "step": step, "val_loss": 1.0 / step})
    assert tracking.state_dict() == {"metrics_rows": 3, "loggers": {}}
    tracking.keep_rows_of_checkpoint(2, {}, validated_at=10, kept_step=12)
    rows = (tmp_path / "metrics.csv").read_text().splitlines()
    assert len(rows) == 3 and rows[-1].startswith("2,10,")  # header + steps 5 and 10
    assert tracking.state_dict()["metrics_rows"] == 2
    tracking.close()
