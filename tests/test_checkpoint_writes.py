"""What an improving validation writes: `best` once, `last` as a byte copy of it, the export without copies."""

import os
import pathlib

import pytest
import torch
from safetensors.torch import load_file

from base.checkpoint.files import load_checkpoint
from base.hooks import HookBase
from conftest import ToyTrainer
from test_bad_input import error_line, run_main
from test_checkpoint_integrity import flip_weight_byte


class Improving(ToyTrainer):
    """Validation loss falls every epoch, so every validation writes `best`."""

    def validate(self, model, loader):
        return {"loss": 1.0 / (1 + self.global_step)}


class EpochCounter(HookBase):
    def __init__(self):
        self.epochs = 0

    def after_epoch(self):
        self.epochs += 1

    def state_dict(self):
        return {"epochs": self.epochs}


def fit(cls, tmp_path, hooks=(), *argv):
    trainer = cls.from_argv(["--output_dir", str(tmp_path), "--gpu_devices", "cpu", "--epochs", "2", *argv])
    trainer.build_hooks = lambda: list(hooks)
    trainer.fit()
    return trainer


def test_last_after_an_improvement_is_a_copy_of_best_and_resumes(tmp_path):
    trainer = fit(Improving, tmp_path)
    best, last = trainer.checkpointer.path("best"), trainer.checkpointer.path("last")
    assert not os.path.samefile(best, last)  # two files: damage to one leaves the other
    assert pathlib.Path(best).read_bytes() == pathlib.Path(last).read_bytes()  # one serialization, copied
    state = load_checkpoint(last)
    assert state["global_step"] == trainer.global_step == 10 and state["validated_at"] == 10
    resumed = Improving.from_argv(
        ["--output_dir", str(tmp_path), "--resume", trainer.run_dir, "--epochs", "3", "--gpu_devices", "cpu"]
    )
    resumed.fit()
    assert resumed.global_step == 15
    assert load_checkpoint(best)["global_step"] == load_checkpoint(last)["global_step"] == 15


class ImprovesUntilStep10(ToyTrainer):
    """Validation loss falls up to step 10, then stays worse: a resume past step 10 writes no new `best`."""

    def validate(self, model, loader):
        return {"loss": 1.0 / (1 + self.global_step) if self.global_step <= 10 else 1.0}


def test_a_damaged_best_leaves_last_loadable_and_the_resume_names_resume(tmp_path, capsys):
    trainer = fit(ImprovesUntilStep10, tmp_path)
    best, last = trainer.checkpointer.path("best"), trainer.checkpointer.path("last")
    flip_weight_byte(best)
    assert load_checkpoint(last)["global_step"] == 10  # the other copy is intact
    status, err = run_main(
        ImprovesUntilStep10,
        ["--output_dir", str(tmp_path), "--resume", trainer.run_dir, "--epochs", "3", "--gpu_devices", "cpu"],
        capsys,
    )
    assert load_checkpoint(last)["global_step"] == 15  # the resume trained on from `last`
    # ... and its test on the best weights cannot run: one line naming the flag the user gave
    assert status == 1
    line = error_line(status, err)
    assert f"--resume {trainer.run_dir}: its best checkpoint {best}: checksum mismatch" in line, line
    assert "--model_path" not in err


def test_with_hooks_last_is_written_after_them(tmp_path):
    counter = EpochCounter()
    trainer = fit(Improving, tmp_path, [counter])
    best, last = trainer.checkpointer.path("best"), trainer.checkpointer.path("last")
    assert not os.path.samefile(best, last)
    # best was saved inside the validation, last after after_epoch counted the epoch
    assert load_checkpoint(best)["hooks"][0]["state"] == {"epochs": 1}
    assert load_checkpoint(last)["hooks"][0]["state"] == {"epochs": 2}


def test_not_improving_writes_last_alone(tmp_path):
    trainer = fit(ToyTrainer, tmp_path, (), "--epochs", "1")
    first_best = os.stat(trainer.checkpointer.path("best")).st_ino
    resumed = ToyTrainer.from_argv(
        [
            "--output_dir",
            str(tmp_path),
            "--resume",
            trainer.run_dir,
            "--epochs",
            "2",
            "--gpu_devices",
            "cpu",
            "--lr",
            "1e-6",
        ]
    )
    resumed.validate = lambda model, loader: {"loss": 1e9}  # worse: no new best
    resumed.fit()
    assert os.stat(resumed.checkpointer.path("best")).st_ino == first_best
    assert load_checkpoint(resumed.checkpointer.path("last"))["global_step"] == 10


class Tied(ToyTrainer):
    def build_model(self):
        model = torch.nn.Sequential(torch.nn.Linear(4, 4), torch.nn.Linear(4, 1))
        model.register_buffer("alias", model[0].weight.data)  # shares the weight's storage
        model.register_buffer("strided", torch.arange(8.0)[::2])  # not contiguous
        return model


def test_export_copies_only_shared_or_strided_tensors(tmp_path):
    trainer = fit(Tied, tmp_path)
    exported = load_file(os.path.join(trainer.run_dir, "Toy_best.safetensors"))
    for key, value in trainer.model.state_dict().items():
        assert torch.equal(exported[key], value), key
    assert exported["strided"].tolist() == [0.0, 2.0, 4.0, 6.0]


@pytest.mark.parametrize("tag", ["best", "last"])
def test_both_names_verify(tmp_path, tag):
    from base.checkpoint.files import verify_checkpoint

    trainer = fit(Improving, tmp_path)
    assert verify_checkpoint(trainer.checkpointer.path(tag)) is None
