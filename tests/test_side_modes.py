"""The side modes --lr_find and --preview_augment: what they write, what they leave as it was, what they refuse."""

import csv
import math
import os
import random
import subprocess
import sys

import numpy as np
import pytest
import torch
from PIL import Image
from torchvision.utils import make_grid

from base.loop.preview import COLUMNS, PADDING
from conftest import ToyTrainer
from trainers.vanilla_trainer import VanillaTrainer
from trainers.vit_trainer import ViTTrainer

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# Full-batch gradient descent on the toy's 40 points: its loss is a quadratic, known in closed form.
SWEEP = ["--optimizer", "sgd", "--momentum", "0", "--batch_size", "40", "--lr_find_range", "1e-4", "10"]
DIGITS = ["--gpu_devices", "cpu", "--train_val_sample_rate", "0.2", "--batch_size", "8", "--loggers", "csv"]


def rng_states():
    return torch.get_rng_state(), np.random.get_state(), random.getstate()


def assert_same_rng(before, after):
    assert torch.equal(before[0], after[0])
    assert before[1][0] == after[1][0] and np.array_equal(before[1][1], after[1][1]) and before[1][2:] == after[1][2:]
    assert before[2] == after[2]


def read_rows(path):
    return [{k: float(v) for k, v in row.items()} for row in csv.DictReader(open(path))]


def divergence_lr(trainer):
    """2 / L: gradient descent on the toy's mean squared error diverges above it (L: the Hessian's top eigenvalue)."""
    x, _ = trainer.datasets["train"].tensors
    design = torch.cat([x, torch.ones(len(x), 1)], 1).double()
    return 2 / float(torch.linalg.eigvalsh(2 * design.T @ design / len(x)).max())


# ----------------------------------------------------------------- --lr_find
def test_lr_find_writes_the_sweep_and_a_suggestion_below_divergence_and_leaves_everything(tmp_path, capsys):
    random.seed(3), np.random.seed(4), torch.manual_seed(5)  # states no run would set
    before = rng_states()
    runs, png = tmp_path / "runs", tmp_path / "plots" / "lr.png"
    argv = ["--output_dir", str(runs), "--gpu_devices", "cpu", *SWEEP, "--lr_find_steps", "60"]
    trainer = ToyTrainer.from_argv([*argv, "--lr_find", str(png)])
    found = trainer.fit()
    assert_same_rng(before, rng_states())
    assert not runs.exists() and sorted(os.listdir(png.parent)) == ["lr.csv", "lr.png"]  # no run folder
    assert png.stat().st_size > 0
    fresh = ToyTrainer.from_argv(argv)
    fresh.build()
    assert trainer.model is trainer.raw_model and trainer.global_step == 0  # the copy trained, not the model
    for key, value in fresh.raw_model.state_dict().items():
        assert torch.equal(trainer.raw_model.state_dict()[key], value), key
    rows = read_rows(tmp_path / "plots" / "lr.csv")
    lrs = [r["lr"] for r in rows]
    factor = (10 / 1e-4) ** (1 / 59)
    assert lrs[0] == 1e-4 and lrs == pytest.approx([1e-4 * factor**i for i in range(len(lrs))], rel=1e-12)
    assert [r["loss"] for r in rows] == found.losses and [r["smoothed_loss"] for r in rows] == found.smoothed
    line = capsys.readouterr().out.strip()
    assert line.count("\n") == 0 and f"suggested --lr {found.suggestion:.3g} (steepest descent" in line
    assert found.suggestion in lrs  # a point of the sweep
    diverges = divergence_lr(trainer)
    assert found.ended == "diverged" and lrs[-1] > diverges  # it went past 2/L and stopped there
    assert found.suggestion < diverges / 2  # well inside the range where the loss falls
    assert max(found.smoothed) > 4 * min(found.smoothed) and len(lrs) < 60


def test_a_fit_after_lr_find_on_the_same_trainer_trains_bit_identically(toy_argv, tmp_path):
    argv = [*toy_argv, "--epochs", "2", "--batch_size", "8"]
    trainer = ToyTrainer.from_argv([*argv, "--lr_find", str(tmp_path / "lr.png"), "--lr_find_steps", "7"])
    found = trainer.fit()
    assert len(found.lrs) == 7 and found.ended == "done"  # 5 batches an epoch: the sweep read two epochs
    trainer.args.lr_find = ""
    metrics = trainer.fit()
    plain = ToyTrainer.from_argv([*argv, "--proj_name", "Plain"])
    assert plain.fit() == metrics
    for key, value in plain.raw_model.state_dict().items():
        assert torch.equal(trainer.raw_model.state_dict()[key], value), key


# ----------------------------------------------------------------- --preview_augment
class Stop(Exception):
    pass


def capturing(cls, batches):
    """``cls`` whose ``train_step`` keeps the image batches it gets, and stops the run after ``batches``."""

    class Capture(cls):
        seen = []

        def train_step(self, batch):
            Capture.seen.append(batch[0].detach().clone())
            if len(Capture.seen) == batches:
                raise Stop
            return super().train_step(batch)

    return Capture


def grid_pixels(images):
    """The PNG's pixels of ``images`` (float in [0, 1]): make_grid, rounded as torchvision's save_image."""
    grid = make_grid(images, nrow=COLUMNS, padding=PADDING)
    return grid.mul(255).add_(0.5).clamp_(0, 255).permute(1, 2, 0).to(torch.uint8).numpy()


def preview_then_train(cls, argv, png, batches):
    """The preview, then a run of the same trainer object up to its ``batches``-th train_step: (preview, batches)."""
    trainer = capturing(cls, batches).from_argv([*argv, "--preview_augment", str(png)])
    shown = trainer.fit()
    trainer.args.preview_augment = ""
    with pytest.raises(Stop):
        trainer.fit()
    return trainer, shown, torch.cat(type(trainer).seen)


def test_preview_of_several_batches_is_what_the_loop_trains_on(tmp_path, capsys):
    png = tmp_path / "preview.png"
    argv = ["--output_dir", str(tmp_path / "runs"), *DIGITS, "--preview_samples", "20"]
    trainer, shown, trained = preview_then_train(VanillaTrainer, argv, png, 3)  # 20 samples: 3 batches of 8
    line = capsys.readouterr().out.strip().splitlines()[0]
    assert line.startswith(f"--preview_augment: wrote {png}: 20 training samples (1, 8, 8)")
    assert "un-normalised with --mean [0.5] --std [0.5]" in line and "Mixup" not in line
    assert shown.shape == (20, 1, 8, 8) and 0 <= shown.min() and shown.max() <= 1
    assert torch.equal(shown, (trained[:20] * 0.5 + 0.5).clamp(0, 1))
    image = Image.open(png)
    rows = math.ceil(20 / COLUMNS)
    assert image.size == (COLUMNS * (8 + PADDING) + PADDING, rows * (8 + PADDING) + PADDING) == (82, 32)
    pixels = np.asarray(image)
    assert np.array_equal(pixels, grid_pixels(shown))
    assert np.array_equal(pixels[..., 0], pixels[..., 1]) and np.array_equal(pixels[..., 0], pixels[..., 2])  # grey


def test_preview_with_mixup_is_the_mixed_batch_train_step_gets(tmp_path, capsys):
    png = tmp_path / "mixed.png"
    argv = ["--output_dir", str(tmp_path / "runs"), *DIGITS, "--patch_size", "4", "--warmup_steps", "0"]
    random.seed(3), torch.manual_seed(5)
    before = rng_states()
    trainer = ViTTrainer.from_argv(
        [*argv, "--mixup_alpha", "0.4", "--preview_samples", "8", "--preview_augment", str(png)]
    )
    shown = trainer.fit()
    assert_same_rng(before, rng_states())
    assert "Mixup/CutMix" in capsys.readouterr().out
    _, again, trained = preview_then_train(ViTTrainer, [*argv, "--mixup_alpha", "0.4", "--preview_samples", "8"],
                                           tmp_path / "again.png", 1)  # fmt: skip
    assert torch.equal(shown, again) and torch.equal(shown, (trained * 0.5 + 0.5).clamp(0, 1))
    assert np.array_equal(np.asarray(Image.open(png)), grid_pixels(shown))
    unmixed = ViTTrainer.from_argv([*argv, "--preview_samples", "8", "--preview_augment", str(tmp_path / "u.png")])
    assert not torch.equal(unmixed.fit(), shown)  # Mixup is in the preview


# ----------------------------------------------------------------- refusals
def refusal(argv, capsys, cls=ToyTrainer):
    with pytest.raises(SystemExit) as exit_info:
        cls.from_argv(argv)
    err = capsys.readouterr().err.strip()
    assert exit_info.value.code == 2 and err.count("\n") == 0
    return err


@pytest.mark.parametrize(
    "extra,flag,rule",
    [
        (["--lr_find", "lr.jpg"], "lr_find", "must name a .png file"),
        (["--preview_augment", "p.gif"], "preview_augment", "must name a .png file"),
        (["--lr_find", "FILE/lr.png"], "lr_find", "is not a folder"),
        (["--preview_augment", "FILE/p.png"], "preview_augment", "is not a folder"),
        (["--lr_find", "a.png", "--lr_find_range", "1", "1"], "lr_find_range", "must be MIN MAX with 0 < MIN < MAX"),
        (["--lr_find", "a.png", "--lr_find_range", "0", "1"], "lr_find_range", "must be MIN MAX with 0 < MIN < MAX"),
        (["--lr_find", "a.png", "--lr_find_steps", "1"], "lr_find_steps", "must be >= 2"),
        (["--preview_augment", "a.png", "--preview_samples", "0"], "preview_samples", "must be >= 1"),
        (["--lr_find", "a.png", "--plot_lr", "b.png"], "lr_find", "one side mode at a time: not with --plot_lr"),
        (["--lr_find", "a.png", "--preview_augment", "b.png"], "preview_augment", "one side mode at a time"),
        (["--lr_find", "a.png", "--gpu_devices", "cpu,cpu"], "lr_find", "runs in one process"),
    ],
)
def test_side_mode_flags_that_cannot_work_are_refused_in_one_line(toy_argv, tmp_path, capsys, extra, flag, rule):
    (tmp_path / "FILE").write_text("not a folder")
    extra = [str(tmp_path / e) if e.endswith(("png", "jpg", "gif")) else e for e in extra]
    err = refusal([*toy_argv, *extra], capsys)
    assert f"error: --{flag}=" in err and rule in err


def test_side_modes_refuse_torchrun_and_resume(toy_argv, tmp_path, capsys, monkeypatch):
    ToyTrainer.from_argv([*toy_argv, "--epochs", "1"]).fit()
    capsys.readouterr()  # (the run's log)
    png = str(tmp_path / "a.png")
    ToyTrainer.from_argv([*toy_argv, "--resume", "auto", "--lr_find_steps", "50", "--preview_samples", "4"])  # inert
    for flag in ("--lr_find", "--preview_augment"):
        assert "not with --resume" in refusal([*toy_argv, "--resume", "auto", flag, png], capsys)
        monkeypatch.setenv("WORLD_SIZE", "2")
        assert "runs in one process" in refusal([*toy_argv, flag, png], capsys)
        monkeypatch.delenv("WORLD_SIZE")


def test_the_entry_script_refuses_a_device_list_in_one_line_without_launching(tmp_path):
    argv = ["trainer_vanilla.py", "--preview_augment", str(tmp_path / "p.png"), "--gpu_devices", "cpu,cpu"]
    proc = subprocess.run([sys.executable, *argv], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2 and proc.stderr.count("\n") == 1, proc.stderr
    assert "--preview_augment=" in proc.stderr and "runs in one process" in proc.stderr
    assert "torch.distributed" not in proc.stderr and not os.listdir(tmp_path)
