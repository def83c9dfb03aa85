"""Features of the base loop every trainer gets: accumulation, EMA, compile, channels-last,
persistent workers and --plot_lr."""

import csv
import os

import pytest
import torch
from torch.utils.data import Dataset

from base.checkpoint.files import load_checkpoint
from base.hooks import HookBase
from base.loop.ema import ModelEMA
from conftest import ToyTrainer


class Record(HookBase):
    """Records the model's weights after each step and the LR used by each step."""

    def __init__(self):
        self.weights, self.lrs = [], []

    def before_step(self):
        self.lrs.append(self.trainer.optimizer.param_groups[0]["lr"])

    def after_step(self):
        self.weights.append({k: v.clone() for k, v in self.trainer.model.state_dict().items()})


def fit(cls, argv, hooks=()):
    trainer = cls.from_argv(argv)
    trainer.build_hooks = lambda: list(hooks)
    trainer.fit()
    return trainer


# ----------------------------------------------------------------- gradient accumulation
def test_accumulating_4_batches_of_8_equals_one_batch_of_32(toy_argv):
    # SGD: unlike Adam, its update scales with the gradient, so a wrong loss weighting shows
    common = [
        *toy_argv,
        "--deterministic",
        "--max_steps",
        "4",
        "--warmup_steps",
        "2",
        "--optimizer",
        "sgd",
        "--lr",
        "0.01",
        "--grad_clip",
        "100",
    ]
    big = fit(ToyTrainer, [*common, "--batch_size", "32"])
    small = fit(ToyTrainer, [*common, "--batch_size", "8", "--accum_steps", "4"])
    # 40 samples: windows of 32 then 8 in both runs; 4 optimizer steps = 2 epochs
    assert big.global_step == small.global_step == 4 and big.epoch == small.epoch == 2
    for key, value in big.model.state_dict().items():
        torch.testing.assert_close(small.model.state_dict()[key], value, rtol=1e-5, atol=1e-6)
    assert small.optimizer.param_groups[0]["lr"] == pytest.approx(big.optimizer.param_groups[0]["lr"])
    for key in ("train_loss", "val_loss"):
        assert small.last_metrics[key] == pytest.approx(big.last_metrics[key], rel=1e-5)


def test_a_window_of_uneven_batches_weighs_every_sample_alike(toy_argv):
    # 40 samples in batches of 16: each epoch is one window of 16 + 16 + 8 samples, whose update must be
    # that of one batch of 40 (the mean over samples, not over batches). SGD without momentum: w - lr * g.
    common = [
        *toy_argv,
        "--deterministic",
        "--max_steps",
        "2",
        "--warmup_steps",
        "0",
        "--optimizer",
        "sgd",
        "--momentum",
        "0",
        "--lr",
        "0.05",
        "--lr_scheduler",
        "none",
    ]
    big = fit(ToyTrainer, [*common, "--batch_size", "40"])
    small = fit(ToyTrainer, [*common, "--batch_size", "16", "--accum_steps", "3"])
    assert big.global_step == small.global_step == 2 and big.epoch == small.epoch == 2
    for key, value in big.model.state_dict().items():
        torch.testing.assert_close(small.model.state_dict()[key], value, rtol=1e-6, atol=1e-7)
    assert small.last_metrics["train_loss"] == pytest.approx(big.last_metrics["train_loss"], rel=1e-6)


def test_accumulation_plans_optimizer_steps_not_batches(toy_argv):
    trainer = fit(ToyTrainer, [*toy_argv, "--epochs", "3", "--batch_size", "8", "--accum_steps", "2"])
    # 5 batches an epoch -> 3 optimizer steps (2 + 2 + 1 batches)
    assert trainer.steps_per_epoch == 3 and trainer.total_steps == 9 and trainer.global_step == 9
    assert trainer.progress.batch_in_epoch == 0 and trainer.epoch == 3


# ----------------------------------------------------------------- EMA
def test_model_ema_matches_a_hand_computation():
    model = torch.nn.Linear(3, 2)
    ema = ModelEMA(model, decay=0.5)
    expected = None
    for step in range(12):
        with torch.no_grad():
            model.weight.add_(step + 1.0)
        ema.update(model)
        w = model.weight.detach().clone()
        if step == 0:  # exactly the weights: later updates shrink a wrong start below assert_close's tolerance
            assert torch.equal(ema.module.weight, w) and torch.equal(ema.module.bias, model.bias)
        d = min(0.5, (1 + step) / (10 + step))  # warmup: 0.1, 0.18, ... until it reaches 0.5 at step 8
        expected = w if expected is None else d * expected + (1 - d) * w  # the first update copies
    torch.testing.assert_close(ema.module.weight, expected)
    assert ema.num_updates == 12
    restored = ModelEMA(torch.nn.Linear(3, 2), decay=0.5)
    restored.load_state_dict(ema.state_dict())
    torch.testing.assert_close(restored.module.weight, expected)
    assert restored.num_updates == 12 and restored.current_decay() == ema.current_decay()


def test_trainer_ema_follows_every_optimizer_step(toy_argv):
    record = Record()
    trainer = fit(ToyTrainer, [*toy_argv, "--ema_decay", "0.8", "--epochs", "2"], [record])
    expected = None
    for n, weights in enumerate(record.weights):
        w, d = weights["weight"], min(0.8, (1 + n) / (10 + n))
        expected = w if expected is None else d * expected + (1 - d) * w
    assert len(record.weights) == trainer.global_step == 10
    # test() reloads 'best'; the EMA in 'last' is the one after the final step
    last = load_checkpoint(trainer.checkpointer.path("last"))
    torch.testing.assert_close(last["ema"]["model"]["weight"], expected)
    assert last["ema"]["num_updates"] == 10


def _val_loss(weights, trainer):
    model = ToyTrainer.build_model(trainer)
    model.load_state_dict(weights)
    x, y = trainer.datasets["val"].tensors
    with torch.no_grad():
        return float(torch.nn.functional.mse_loss(model(x).squeeze(1), y))


@pytest.mark.parametrize("eval_ema", ["true", "false"])
def test_validation_best_and_export_use_the_ema_weights_with_eval_ema(toy_argv, eval_ema):
    trainer = fit(ToyTrainer, [*toy_argv, "--ema_decay", "0.9", "--eval_ema", eval_ema, "--lr", "0.2"])
    best = load_checkpoint(trainer.checkpointer.path("best"))
    scored = best["ema"]["model"] if eval_ema == "true" else best["model"]
    other = best["model"] if eval_ema == "true" else best["ema"]["model"]
    assert best["metrics"]["val_loss"] == pytest.approx(_val_loss(scored, trainer), rel=1e-5)
    assert best["metrics"]["val_loss"] != pytest.approx(_val_loss(other, trainer), rel=1e-3)
    from safetensors.torch import load_file

    exported = load_file(os.path.join(trainer.run_dir, "Toy_best.safetensors"))
    torch.testing.assert_close(exported["weight"], scored["weight"])


def test_resume_without_ema_state_is_refused(toy_argv, tmp_path):
    first = fit(ToyTrainer, [*toy_argv, "--max_steps", "3"])
    import json

    from base.checkpoint.resume import saved_config
    from base.errors import CheckpointError

    path = first.checkpointer.path("last")
    state = load_checkpoint(path)
    config = json.loads(state["config"])
    config["ema_decay"] = 0.9  # as if the run had EMA but the checkpoint lost it
    state["config"] = json.dumps(config)
    torch.save(state, tmp_path / "no_ema.pth")
    assert saved_config(str(tmp_path / "no_ema.pth"))["ema_decay"] == 0.9
    trainer = ToyTrainer.from_argv([*toy_argv, "--resume", str(tmp_path / "no_ema.pth"), "--max_steps", "5"])
    with pytest.raises(CheckpointError, match="no EMA weights"):
        trainer.fit()


# ----------------------------------------------------------------- compile, channels-last
def test_compile_keeps_the_checkpoint_keys(toy_argv):
    plain = fit(ToyTrainer, [*toy_argv, "--max_steps", "2", "--proj_name", "plain"])
    compiled = fit(ToyTrainer, [*toy_argv, "--max_steps", "2", "--proj_name", "compiled", "--compile"])
    keys = [sorted(load_checkpoint(t.checkpointer.path("last"))["model"]) for t in (plain, compiled)]
    assert keys[0] == keys[1] == ["bias", "weight"]
    assert compiled.model._compiled_call_impl is not None  # it really was compiled


class CheckLayout(HookBase):
    def __init__(self):
        self.layouts = []

    def before_step(self):
        trainer = self.trainer
        original = trainer.train_step

        def spy(batch):
            self.layouts.append(batch[0].is_contiguous(memory_format=torch.channels_last))
            trainer.train_step = original
            return original(batch)

        trainer.train_step = spy


class ConvToy(ToyTrainer):
    """ToyTrainer on 3-channel 4x4 'images' with a convolution (channels-last needs C > 1 to show)."""

    def build_datasets(self):
        x = torch.randn(56, 3, 4, 4, generator=torch.Generator().manual_seed(0))
        y = x.mean(dim=(1, 2, 3))
        sets = [torch.utils.data.TensorDataset(x[a:b], y[a:b]) for a, b in ((0, 40), (40, 48), (48, 56))]
        return dict(zip(("train", "val", "test"), sets))

    def build_model(self):
        return torch.nn.Sequential(torch.nn.Conv2d(3, 1, 4), torch.nn.Flatten(0))

    def train_step(self, batch):
        x, y = batch
        return {"loss": self.loss_fn(self.model(x), y)}

    def validate(self, model, loader):
        x, y = self.to_device(next(iter(loader)))
        return {"loss": float(self.loss_fn(model(x), y))}


def test_channels_last_reaches_weights_and_batches(toy_argv):
    hook = CheckLayout()
    trainer = fit(ConvToy, [*toy_argv, "--max_steps", "2", "--channels_last"], [hook])
    conv = trainer.model[0].weight
    assert conv.is_contiguous(memory_format=torch.channels_last) and not conv.is_contiguous()
    assert hook.layouts == [True, True]


# ----------------------------------------------------------------- persistent workers
class DrawPerAccess(Dataset):
    """Each access draws a fresh random number (a worker's RNG): augmentation in miniature."""

    def __len__(self):
        return 16

    def __getitem__(self, i):
        return torch.rand(4), torch.tensor(float(i))


class DrawTrainer(ToyTrainer):
    seen = None

    def build_datasets(self):
        sets = super().build_datasets()
        sets["train"] = DrawPerAccess()
        return sets

    def train_step(self, batch):
        x, index = batch
        for row, i in zip(x, index.tolist()):
            type(self).seen.setdefault((self.epoch, int(i)), row.clone())
        return super().train_step((x, index))


def test_persistent_workers_draw_each_epochs_augmentation_like_fresh_workers(toy_argv):
    runs = {}
    for persistent in ("true", "false"):
        DrawTrainer.seen = {}
        fit(
            DrawTrainer,
            [
                *toy_argv,
                "--num_workers",
                "1",
                "--persistent_workers",
                persistent,
                "--epochs",
                "2",
                "--proj_name",
                f"p{persistent}",
            ],
        )
        runs[persistent] = DrawTrainer.seen
    assert runs["true"].keys() == runs["false"].keys() and len(runs["true"]) == 32
    for key, value in runs["true"].items():
        assert torch.equal(value, runs["false"][key]), key
    assert not torch.equal(runs["true"][0, 3], runs["true"][1, 3])  # a new draw each epoch


# ----------------------------------------------------------------- --plot_lr
def read_csv(path):
    return [(int(r["step"]), float(r["lr"])) for r in csv.DictReader(open(path))]


def test_plot_lr_writes_the_schedule_and_trains_nothing(toy_argv, tmp_path):
    png = tmp_path / "plots" / "lr.png"  # a folder that does not exist yet
    rows = ToyTrainer.from_argv(
        [
            *toy_argv,
            "--epochs",
            "4",
            "--batch_size",
            "8",
            "--accum_steps",
            "2",
            "--warmup_steps",
            "3",
            "--lr",
            "0.1",
            "--plot_lr",
            str(png),
        ]
    ).fit()
    assert png.stat().st_size > 0 and not os.path.exists(tmp_path / "Toy")  # no run folder
    assert [s for s, _ in rows] == list(range(12))  # 4 epochs x ceil(5 batches / 2)
    assert read_csv(tmp_path / "plots" / "lr.csv") == rows
    lrs = [lr for _, lr in rows]
    assert lrs[3] == pytest.approx(0.1) == max(lrs)  # warmup ends at its peak
    assert lrs[0] < 0.001 and lrs[-1] < 0.01  # warmup starts low; cosine ends near 0


def test_plot_lr_after_a_resume_is_the_schedule_the_resumed_run_follows(toy_argv, tmp_path):
    fit(ToyTrainer, [*toy_argv, "--epochs", "2", "--warmup_steps", "4"])
    more = ["--resume", "auto", "--epochs", "5", "--lr", "0.02"]
    rows = ToyTrainer.from_argv([*toy_argv, *more, "--plot_lr", str(tmp_path / "lr.png")]).fit()
    record = Record()
    resumed = fit(ToyTrainer, [*toy_argv, *more], [record])
    assert rows[0][0] == 10 and len(rows) == resumed.global_step - 10 == 15
    assert [lr for _, lr in rows] == pytest.approx(record.lrs)


def test_plot_lr_shows_the_warmup_the_run_uses(toy_argv, tmp_path, monkeypatch, capsys):
    from utils.plots import plt

    titles = []
    close = plt.close
    monkeypatch.setattr(plt, "close", lambda fig: (titles.append(fig.axes[0].get_title()), close(fig)))
    rows = ToyTrainer.from_argv(
        [*toy_argv, "--max_steps", "20", "--warmup_steps", "100", "--plot_lr", str(tmp_path / "lr.png")]
    ).fit()
    assert max(rows, key=lambda r: r[1])[0] == 10  # the peak: the end of the warmup used
    (title,) = titles
    assert "warmup 10 (--warmup_steps 100 cut to half the run)" in title
    assert "--warmup_steps 100 is more than half of the run's 20 optimizer steps" in capsys.readouterr().out


def test_plot_lr_of_a_huge_run_draws_a_sample_of_its_steps(toy_argv, tmp_path, monkeypatch):
    # 10^9 epochs of 5 steps: stepping the schedule once per step would take hours and hold 10^10 rows.
    # Fail fast instead of hanging: count the schedule's evaluations and the lines drawn.
    from matplotlib.axes import Axes

    from base.loop.optim import WarmupCosine

    calls = {"schedule": 0, "axvline": 0}

    def counted(name, original):
        def call(*args, **kwargs):
            calls[name] += 1
            assert calls[name] <= 10_000, f"{name} called for every step"
            return original(*args, **kwargs)

        return call

    monkeypatch.setattr(WarmupCosine, "__call__", counted("schedule", WarmupCosine.__call__))
    monkeypatch.setattr(Axes, "axvline", counted("axvline", Axes.axvline))
    png = tmp_path / "lr.png"
    rows = ToyTrainer.from_argv(
        [*toy_argv, "--epochs", "1000000000", "--warmup_steps", "7", "--plot_lr", str(png)]
    ).fit()
    total = 5 * 10**9
    steps = [s for s, _ in rows]
    assert 1000 <= len(rows) <= 2002 and steps == sorted(set(steps))
    assert steps[0] == 0 and steps[-1] == total - 1 and 7 in steps  # start, warmup end, last step
    factor = WarmupCosine(7, total)
    assert [lr for _, lr in rows] == pytest.approx([0.05 * factor(s) for s in steps], rel=1e-12, abs=1e-18)
    assert read_csv(tmp_path / "lr.csv") == rows and png.stat().st_size > 0


class StepLRToy(ToyTrainer):
    def build_scheduler(self):
        return torch.optim.lr_scheduler.StepLR(self.optimizer, step_size=10, gamma=0.5)


def test_plot_lr_steps_through_a_schedule_without_a_closed_form_or_refuses_a_huge_one(toy_argv, tmp_path):
    from base.config.parse import ConfigError

    rows = StepLRToy.from_argv([*toy_argv, "--epochs", "8", "--plot_lr", str(tmp_path / "lr.png")]).fit()
    assert rows == [(s, pytest.approx(0.05 * 0.5 ** (s // 10))) for s in range(40)]
    with pytest.raises(ConfigError, match=r"--plot_lr: StepLR has to be stepped through 4999999999 steps"):
        StepLRToy.from_argv([*toy_argv, "--epochs", "1000000000", "--plot_lr", str(tmp_path / "lr.png")]).fit()


@pytest.mark.parametrize("eval_ema", [None, "false"])
def test_evaluator_scores_the_weights_the_run_validated_or_the_raw_ones(toy_argv, tmp_path, eval_ema):
    from evaluators.vanilla_evaluator import VanillaEvaluator
    from trainers.vanilla_trainer import VanillaTrainer

    trainer = fit(
        VanillaTrainer,
        [
            *toy_argv,
            "--max_steps",
            "6",
            "--val_every_steps",
            "6",
            "--ema_decay",
            "0.5",
            "--train_val_sample_rate",
            "0.2",
        ],
    )
    best = trainer.checkpointer.path("best")
    argv = ["--model_path", best, "--split", "val"] + (["--eval_ema", eval_ema] if eval_ema else [])
    results = VanillaEvaluator.from_argv(argv).run()
    validated = load_checkpoint(best)["metrics"]["val_loss"]
    if eval_ema is None:  # the EMA weights, which validation scored
        assert results["loss"] == pytest.approx(validated, rel=1e-5)
    else:
        assert results["loss"] != pytest.approx(validated, rel=1e-3)


# ----------------------------------------------------------------- a last batch of one
class BatchNormToy(ConvToy):
    """ConvToy whose 1x1 feature maps go through BatchNorm: a batch of one cannot train."""

    def build_datasets(self):
        sets = super().build_datasets()
        x, y = sets["train"].tensors
        sets["train"] = torch.utils.data.TensorDataset(x[:33], y[:33])  # 33 = 4 x 8 + 1
        return sets

    def build_model(self):
        return torch.nn.Sequential(
            torch.nn.Conv2d(3, 4, 4),
            torch.nn.BatchNorm2d(4),
            torch.nn.Flatten(1),
            torch.nn.Linear(4, 1),
            torch.nn.Flatten(0),
        )


def test_a_last_batch_of_one_sample_is_left_out_and_the_epoch_still_ends(toy_argv):
    sizes = []
    trainer = BatchNormToy.from_argv([*toy_argv, "--epochs", "3", "--batch_size", "8"])
    original = trainer.train_step
    trainer.train_step = lambda batch: (sizes.append(len(batch[0])), original(batch))[1]
    trainer.fit()  # BatchNorm would raise on a training batch of one
    assert sizes == [8, 8, 8, 8] * 3
    assert trainer.steps_per_epoch == 4 and trainer.total_steps == trainer.global_step == 12
    assert trainer.epoch == 3 and trainer.progress.samples_in_epoch == 0


def test_plot_lr_must_name_a_png(toy_argv, tmp_path):
    with pytest.raises(SystemExit) as exit_info:
        ToyTrainer.from_argv([*toy_argv, "--plot_lr", str(tmp_path / "lr.jpg")])
    assert exit_info.value.code == 2
