"""Shared fixtures: a tiny regression trainer that exercises TrainerBase in milliseconds."""

import os
import signal
import sys

import pytest
import torch
from torch.utils.data import TensorDataset

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

# A non-interactive shell starts a background job (`make test &`, `nohup ... &`) with SIGINT ignored, and an
# ignored signal stays ignored in every process started from it: the tests that press Ctrl-C (SIGINT to a
# process group) would find it lost. Give the suite's processes the default a terminal gives them.
if signal.getsignal(signal.SIGINT) is signal.SIG_IGN:
    signal.signal(signal.SIGINT, signal.default_int_handler)

from base.hooks import HookBase  # noqa: E402
from base.trainer import TrainerBase  # noqa: E402

HOOK_NAMES = (
    "before_train",
    "before_epoch",
    "before_step",
    "after_backward",
    "after_step",
    "after_validation",
    "after_epoch",
    "after_train",
)


class ToyTrainer(TrainerBase):
    """Linear regression on 40 fixed random points; 'model_type' is 'Toy'."""

    DEFAULTS = {"proj_name": "Toy", "epochs": 2, "batch_size": 8, "lr": 0.05}
    RESUME_CHANGEABLE = TrainerBase.RESUME_CHANGEABLE | {"fail_at_step"}

    @classmethod
    def add_arguments(cls, parser):
        parser.add_argument("--model_type", default="Toy")
        parser.add_argument("--fail_at_step", type=int, default=0, help="raise in train_step at this step")

    def build_datasets(self):
        gen = torch.Generator().manual_seed(0)
        x = torch.randn(56, 4, generator=gen)
        y = x @ torch.tensor([1.0, -2.0, 0.5, 3.0]) + 0.1
        return {
            "train": TensorDataset(x[:40], y[:40]),
            "val": TensorDataset(x[40:48], y[40:48]),
            "test": TensorDataset(x[48:], y[48:]),
        }

    def build_model(self):
        return torch.nn.Linear(4, 1)

    def build_loss(self):
        return torch.nn.MSELoss()

    def train_step(self, batch):
        if self.args.fail_at_step and self.global_step + 1 == self.args.fail_at_step:
            raise RuntimeError("boom")
        x, y = batch
        return {"loss": self.loss_fn(self.model(x).squeeze(1), y)}

    def validate(self, model, loader):
        total, n = 0.0, 0
        for x, y in loader:
            x, y = self.to_device((x, y))
            total += float(
                self.loss_fn(
                    model(x).squeeze(1),
                    y,
                )
            ) * len(y)
            n += len(y)
        return {"loss": total / n}


class RecordingHook(HookBase):
    """Appends each hook call's name to ``calls``; counts calls as checkpointed state."""

    def __init__(self):
        self.calls = []

    def __getattribute__(self, name):
        if name in HOOK_NAMES or name == "on_exception":
            calls = object.__getattribute__(self, "calls")
            return lambda *a: calls.append(name)
        return object.__getattribute__(self, name)

    def state_dict(self):
        return {"num_calls": len(self.calls)}


@pytest.fixture
def toy_argv(tmp_path):
    """Base flags for a ToyTrainer run writing under ``tmp_path``."""
    return ["--output_dir", str(tmp_path), "--gpu_devices", "cpu"]
