"""A tiny classifier trainer run as a script under torchrun (or as spawned ranks) by tests/test_distributed.py.

    torchrun --standalone --nproc_per_node 2 tests/dist_toy.py --gpu_devices cpu --output_dir /tmp/x

No BatchNorm and no dropout, so a DDP run and a one-process run on the same
global batch must reach the same weights. 47 training samples (with 2
processes, 3 a batch and 2 accumulation steps, the last window has 6 samples on
rank 0 and 5 on rank 1); validation and test splits of 13 (odd, and not a
multiple of the evaluation batch).
"""

import os
import sys
import time

import torch
from torch.utils.data import TensorDataset

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from base.cli import exit_fast, main  # noqa: E402
from base.hooks import HookBase  # noqa: E402
from base.runtime.distributed import all_reduce_sum  # noqa: E402
from base.trainer import TrainerBase  # noqa: E402
from utils.metrics import ClassificationMeter  # noqa: E402


class Sleep(HookBase):
    """Slows each step down, so a test can signal a run in the middle."""

    def __init__(self, seconds):
        self.seconds = seconds

    def after_step(self):
        time.sleep(self.seconds)


class DistToyTrainer(TrainerBase):
    PROG = "dist_toy.py"
    DEFAULTS = {
        "proj_name": "DistToy",
        "epochs": 3,
        "batch_size": 4,
        "eval_batch_size": 4,
        "lr": 0.05,
        "log_every_steps": 1,
    }
    monitor, monitor_mode = "top1", "max"
    RESUME_CHANGEABLE = TrainerBase.RESUME_CHANGEABLE | {"step_sleep", "count_allreduce", "nan_at_step", "die_at_step"}

    @classmethod
    def add_arguments(cls, parser):
        parser.add_argument("--model_type", default="DistToy")
        parser.add_argument("--step_sleep", type=float, default=0.0, help="seconds to sleep after each step")
        parser.add_argument("--count_allreduce", default="", help="write the number of gradient all-reduces here")
        parser.add_argument(
            "--noise",
            type=float,
            default=0.0,
            help="add Gaussian noise of this std to inputs from the global RNG (each process its own)",
        )
        parser.add_argument("--nan_at_step", type=int, default=0, help="rank 1's loss is NaN at this step (once)")
        parser.add_argument(
            "--die_at_step",
            type=int,
            default=0,
            help="rank 1 exits at once (status 3) in this step's train_step, leaving rank 0 alone",
        )

    def build_datasets(self):
        gen = torch.Generator().manual_seed(0)
        x = torch.randn(73, 4, generator=gen)
        y = (x @ torch.tensor([1.0, -2.0, 0.5, 3.0]) > 0).long() + (x[:, 0] > 1).long()
        return {
            "train": TensorDataset(x[:47], y[:47]),
            "val": TensorDataset(x[47:60], y[47:60]),
            "test": TensorDataset(x[60:], y[60:]),
        }

    def build_model(self):
        return torch.nn.Sequential(torch.nn.Linear(4, 16), torch.nn.ReLU(), torch.nn.Linear(16, 3))

    def build_loss(self):
        return torch.nn.CrossEntropyLoss()

    def build_hooks(self):
        return [Sleep(self.args.step_sleep)] if self.args.step_sleep else []

    def setup(self):
        super().setup()
        if self.args.count_allreduce and self.world_size > 1:
            from torch.distributed.algorithms.ddp_comm_hooks.default_hooks import allreduce_hook

            self.allreduces = 0

            def counting_hook(state, bucket):  # DDP's own all-reduce, counted
                self.allreduces += 1
                return allreduce_hook(None, bucket)

            self.model.register_comm_hook(None, counting_hook)

    def release(self):
        if getattr(self, "allreduces", None) is not None:
            with open(f"{self.args.count_allreduce}.rank{self.rank}", "w") as f:
                f.write(f"{self.allreduces} {self.global_step}")
        super().release()

    def train_step(self, batch):
        x, y = batch
        if self.rank == 1 and self.global_step + 1 == self.args.die_at_step:
            os._exit(3)
        if self.args.noise:  # like random augmentation in the main process: the RNG state must survive a resume
            x = x + self.args.noise * torch.randn_like(x)
        loss = self.loss_fn(self.model(x), y)
        if self.rank == 1 and self.global_step + 1 == self.args.nan_at_step and not self.guard.skipped_steps:
            loss = loss * float("nan")
        return {"loss": loss}

    def validate(self, model, loader):
        meter = ClassificationMeter(3, topk=(1,))
        for x, y in loader:
            x, y = self.to_device((x, y))
            logits = model(x)
            meter.update(logits, y, self.loss_fn(logits, y))
        # the samples scored by all processes together: the split's size when none is padded or repeated
        return {**meter.compute(), "samples": all_reduce_sum([meter.count])[0]}


if __name__ == "__main__":
    exit_fast(main(DistToyTrainer))
