"""No host synchronisation inside a training step that does not log.

On a GPU, reading a tensor's value on the host (``.item()``, ``bool(t)``,
``float(t)``, ``.tolist()``, ``.cpu()``, ``.numpy()``) waits for every queued
kernel: one per step caps throughput. These calls are counted on CPU between
``before_step`` and ``after_step`` (the task's ``train_step``, backward,
clipping, the optimizer, EMA, schedule and data position) of every step.
"""

import pytest
import torch

from base.hooks import HookBase
from conftest import ToyTrainer

SYNCS = ("item", "__bool__", "__float__", "__int__", "tolist", "cpu", "numpy")


class CountSyncs(HookBase):
    """Patches the host-reading methods of ``torch.Tensor`` during each step and records who called them."""

    def __init__(self, monkeypatch):
        self.monkeypatch, self.calls = monkeypatch, []

    def before_step(self):
        for name in SYNCS:
            original = getattr(torch.Tensor, name)

            def counted(tensor, *args, _name=name, _original=original, **kwargs):
                self.calls.append((self.trainer.global_step + 1, _name))
                return _original(tensor, *args, **kwargs)

            self.monkeypatch.setattr(torch.Tensor, name, counted)

    def after_step(self):
        self.monkeypatch.undo()


CONFIGS = {
    "default": [],
    "accumulation_clip_ema": ["--accum_steps", "2", "--grad_clip", "1.0", "--ema_decay", "0.9"],
    "amp_bf16_sgd": ["--amp", "--optimizer", "sgd", "--grad_clip", "0.5", "--grad_clip_mode", "value"],
    "adam_warmup": ["--optimizer", "adam", "--warmup_steps", "3"],
}


def fit_counting(tmp_path, monkeypatch, argv, cls=ToyTrainer):
    trainer = cls.from_argv(
        ["--output_dir", str(tmp_path), "--gpu_devices", "cpu", "--epochs", "3", "--log_every_steps", "1000", *argv]
    )
    counter = CountSyncs(monkeypatch)
    trainer.build_hooks = lambda: [counter]
    trainer.fit()
    return trainer, counter


@pytest.mark.parametrize("config", sorted(CONFIGS))
def test_training_steps_do_not_sync(tmp_path, monkeypatch, config):
    trainer, counter = fit_counting(tmp_path, monkeypatch, CONFIGS[config])
    assert trainer.global_step >= 8
    assert counter.calls == []


class StepChecksOnHost(ToyTrainer):
    def build_optimizer(self):  # not fused: a non-finite loss can only be caught on the host
        return torch.optim.SGD(self.model.parameters(), lr=self.args.lr)


def test_the_counter_sees_a_per_step_check(tmp_path, monkeypatch):
    """Without a fused optimizer the non-finite check reads the loss on the host every step: counted."""
    trainer, counter = fit_counting(tmp_path, monkeypatch, [], cls=StepChecksOnHost)
    assert [step for step, _ in counter.calls] == list(range(1, trainer.global_step + 1))
    assert {name for _, name in counter.calls} == {"__bool__"}
