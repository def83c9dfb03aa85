"""CUDA-only checks; skipped where no GPU is visible (CI has none)."""

import pytest
import torch

from base.hooks import HookBase
from conftest import ToyTrainer

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")


def test_fp16_scaler_skip_is_respected_and_not_counted_as_nonfinite(tmp_path):
    class InfGrad(HookBase):
        """Makes one step's gradients infinite: the GradScaler must skip that update itself."""

        def after_backward(self):
            if self.trainer.global_step == 2:
                self.before = {k: v.clone() for k, v in self.trainer.model.state_dict().items()}
                for p in self.trainer.model.parameters():
                    p.grad.fill_(float("inf"))

    hook = InfGrad()
    trainer = ToyTrainer.from_argv(
        [
            "--output_dir",
            str(tmp_path),
            "--gpu_devices",
            "0",
            "--amp",
            "--amp_dtype",
            "float16",
            "--nonfinite",
            "raise",
            "--max_steps",
            "3",
        ]
    )
    trainer.build_hooks = lambda: [hook]
    scale_before = None

    class Watch(HookBase):
        def before_step(self):
            nonlocal scale_before
            if self.trainer.global_step == 2:
                scale_before = self.trainer.step.scaler.get_scale()

        def after_step(self):
            if self.trainer.global_step == 3:
                for key, value in self.trainer.model.state_dict().items():
                    assert torch.equal(value, hook.before[key]), key  # the inf step changed nothing

    trainer.build_hooks = lambda: [hook, Watch()]
    trainer.fit()
    assert trainer.guard.skipped_steps == 0 and trainer.step.scaler.get_scale() < scale_before


def test_peak_gpu_memory_is_logged_with_the_other_train_scalars(tmp_path):
    import csv
    import os

    trainer = ToyTrainer.from_argv(
        ["--output_dir", str(tmp_path), "--gpu_devices", "0", "--max_steps", "6", "--log_every_steps", "2"]
    )
    trainer.fit()
    rows = list(csv.reader(open(os.path.join(trainer.run_dir, "scalars.csv"))))
    peaks = {int(s): float(v) for s, name, v in rows if name == "train/peak_gpu_memory_mib"}
    assert sorted(peaks) == [2, 4, 6]
    total = torch.cuda.get_device_properties(0).total_memory / 2**20
    assert all(0 < v < total for v in peaks.values())
