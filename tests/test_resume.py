"""Restart parity: training N steps straight equals stopping after k steps and resuming.

CPU, ``--deterministic``; weights, optimizer state and every logged loss must
match exactly, for stops mid-epoch and at an epoch boundary, with 0 and 2
DataLoader workers, for every trainer in the project (plus a toy task whose
workers draw random augmentation).
"""

import csv
import json
import os

import numpy as np
import pytest
import torch
from PIL import Image
from torch.utils.data import Dataset

from base.checkpoint.files import load_checkpoint, save_checkpoint
from base.checkpoint.resume import locate
from base.config.checks import check_dir_exists
from base.hooks import HookBase
from conftest import ToyTrainer
from test_readme_example import load_example
from trainers.mae_trainer import MAETrainer
from trainers.seg_on_carvana_trainer import SegOnCarvanaTrainer
from trainers.seg_trainer import SegTrainer
from trainers.vanilla_trainer import VanillaTrainer
from trainers.vit_trainer import ViTTrainer


class NoisyPoints(Dataset):
    """40 fixed points; each access adds fresh noise from the global torch and NumPy RNGs
    (a worker's, with workers)."""

    def __init__(self, x, y):
        self.x, self.y = x, y

    def __len__(self):
        return len(self.x)

    def __getitem__(self, i):
        noise = 0.1 * torch.randn(4) + torch.from_numpy(0.1 * np.random.randn(4)).float()
        return self.x[i] + noise, self.y[i]


class AugmentedToyTrainer(ToyTrainer):
    """ToyTrainer with dropout and random augmentation, so every RNG stream matters."""

    def build_datasets(self):
        sets = super().build_datasets()
        sets["train"] = NoisyPoints(*sets["train"].tensors)
        return sets

    def build_model(self):
        return torch.nn.Sequential(torch.nn.Linear(4, 16), torch.nn.Dropout(0.3), torch.nn.Linear(16, 1))

    def train_step(self, batch):
        # An extra term, averaged over each logging window: a resume inside a window must carry its sums.
        x, y = batch
        error = self.model(x).squeeze(1) - y
        return {"loss": self.loss_fn(error, torch.zeros_like(error)), "abs_error": error.detach().abs().mean()}

    def validate(self, model, loader):
        # Scored worse each epoch, so the early stopper's best and counter decide the best checkpoint.
        return {"loss": super().validate(model, loader)["loss"] * (1 + self.epoch)}


class StepCounter(HookBase):
    """A hook with state: steps and epochs seen, which a checkpoint must carry."""

    def __init__(self):
        self.steps, self.epochs = 0, 0

    def after_step(self):
        self.steps += 1

    def after_epoch(self):
        self.epochs += 1

    def state_dict(self):
        return {"steps": self.steps, "epochs": self.epochs}

    def load_state_dict(self, state):
        self.steps, self.epochs = state["steps"], state["epochs"]


class StopAfter(HookBase):
    """Raises after step ``k`` completes, like a crash between two steps."""

    def __init__(self, k):
        self.k = k

    def after_step(self):
        if self.trainer.global_step == self.k:
            raise RuntimeError(f"stop after step {self.k}")


def denoise_trainer(tmp_path_factory):
    return load_example(tmp_path_factory.mktemp("example")).DenoiseTrainer


def seg_trainer(tmp_path_factory):
    """SegOnCarvanaTrainer reading generated Carvana-layout files (random joint augmentation on)."""
    from test_seg_trainer import seg_data

    data = seg_data(tmp_path_factory)
    return type("SegOnSyntheticCarvana", (SegOnCarvanaTrainer,), {"DEFAULTS": {"data_dir": data}})


def seg_multiclass_trainer(tmp_path_factory):
    """SegTrainer on a generated 3-class SegFolder (random joint augmentation on, --class_weights auto)."""
    from test_seg_multiclass import shapes_data

    data = shapes_data(tmp_path_factory)
    return type("SegOnSyntheticShapes", (SegTrainer,), {"DEFAULTS": {"data_dir": data}})


def jpeg_folder_trainer(tmp_path_factory):
    """ViTTrainer on a generated ImageFolder: 3 classes of 10 JPEGs of four non-square sizes (decoded, cropped
    and augmented per sample, in the workers with --num_workers 2)."""
    root = tmp_path_factory.getbasetemp() / "jpeg_folder"
    if not root.exists():
        pixels = np.random.default_rng(0)
        for c in range(3):
            (root / f"class{c}").mkdir(parents=True)
            for i in range(10):
                width, height = ((40, 30), (30, 40), (52, 28), (24, 36))[i % 4]
                image = pixels.integers(0, 256, (height, width, 3), dtype=np.uint8)
                Image.fromarray(image).save(root / f"class{c}" / f"{i}.jpg", quality=90)
    return type("ViTOnJpegFolder", (ViTTrainer,), {"DEFAULTS": {"data_dir": str(root)}})


def multilabel_trainer(tmp_path_factory):
    """VanillaTrainer on generated ImageCSV data (tests/multilabel_data.py): multi-hot targets, BCE, mAP picks best."""
    from multilabel_data import make_multilabel_csv

    root, _ = make_multilabel_csv(tmp_path_factory.getbasetemp() / "multilabel_csv")
    return type("VanillaOnCSV", (VanillaTrainer,), {"DEFAULTS": {"data_dir": str(root)}})


# trainer factory, flags, (stop mid-epoch, stop at an epoch boundary, a later stop)
CASES = {
    "toy": (
        lambda f: AugmentedToyTrainer,
        ["--epochs", "2", "--early_stop_patience", "9", "--log_every_steps", "4"],
        (3, 5, 8),
    ),
    # 5 batches an epoch in windows of 2, 2, 1: stops inside and at the end of an epoch
    "toy_accum_ema": (
        lambda f: AugmentedToyTrainer,
        ["--epochs", "3", "--accum_steps", "2", "--ema_decay", "0.7"],
        (2, 3, 7),
    ),
    "vanilla": (
        lambda f: VanillaTrainer,
        ["--epochs", "2", "--train_val_sample_rate", "0.3", "--early_stop_patience", "9"],
        (3, 7, 10),
    ),
    # fold 1 of 3 validates, the other two train: 5 steps an epoch
    "vanilla_folds": (
        lambda f: VanillaTrainer,
        ["--epochs", "2", "--train_val_sample_rate", "0.3", "--folds", "3", "--fold", "1"],
        (2, 5, 8),
    ),
    # drawn with replacement by inverse class frequency, weighted focal loss, random crops seeded per draw:
    # 9 steps an epoch
    "vanilla_weighted": (
        lambda f: VanillaTrainer,
        [
            "--epochs",
            "2",
            "--train_val_sample_rate",
            "0.2",
            "--batch_size",
            "32",
            "--sampler",
            "weighted",
            "--class_weights",
            "auto",
            "--loss",
            "focal",
            "--train_crop",
            "rrc",
            "--early_stop_patience",
            "9",
        ],
        (4, 9, 13),
    ),
    # the same draw gathered on the device (crops by kornia)
    "vanilla_weighted_device": (
        lambda f: VanillaTrainer,
        [
            "--epochs",
            "2",
            "--train_val_sample_rate",
            "0.2",
            "--batch_size",
            "32",
            "--sampler",
            "weighted",
            "--class_weights",
            "auto",
            "--loss",
            "focal",
            "--data_on_device",
            "--train_crop",
            "rrc",
            "--early_stop_patience",
            "9",
        ],
        (4, 9, 13),
    ),
    "denoise": (denoise_trainer, ["--epochs", "2", "--batch_size", "256"], (2, 6, 9)),
    "vit": (
        lambda f: ViTTrainer,
        [
            "--epochs",
            "2",
            "--image_size",
            "16",
            "--patch_size",
            "8",
            "--batch_size",
            "32",
            "--train_val_sample_rate",
            "0.1",
            "--test_sample_rate",
            "0.1",
            "--mixup_alpha",
            "0.2",
            "--cutmix_alpha",
            "1.0",
            "--randaugment",
            "2",
            "9",
            "--early_stop_patience",
            "9",
            "--ema_decay",
            "0.9",
        ],
        (2, 6, 8),
    ),
    # 22 training images in batches of 8: 3 steps an epoch; random-resized crop, RandAugment and flips on uint8
    "jpeg_folder": (
        jpeg_folder_trainer,
        [
            "--epochs",
            "2",
            "--data_type",
            "ImageFolder",
            "--image_size",
            "16",
            "--model_type",
            "timm/test_resnet",
            "--batch_size",
            "8",
            "--train_crop",
            "rrc",
            "--randaugment",
            "2",
            "9",
            "--hflip",
            "0.5",
            "--early_stop_patience",
            "9",
        ],
        (2, 3, 5),
    ),
    # 43 training images (random-resized crops) in batches of 16: 3 steps an epoch
    "multilabel": (
        multilabel_trainer,
        [
            *("--epochs", "2", "--data_type", "ImageCSV", "--image_size", "16", "--model_type", "SmallCNN"),
            *("--batch_size", "16", "--train_val_sample_rate", "0.5", "--early_stop_patience", "9"),
        ],
        (2, 3, 5),
    ),
    "seg": (seg_trainer, ["--epochs", "2", "--batch_size", "4", "--base_channels", "4"], (2, 3, 5)),
    # 26 training images of 32x48 in batches of 8: 4 steps an epoch, drawn by pixel-frequency weights
    "seg_multiclass": (
        seg_multiclass_trainer,
        [
            "--epochs",
            "2",
            "--num_classes",
            "3",
            "--class_weights",
            "auto",
            "--sampler",
            "weighted",
            "--loss",
            "focal_dice",
            "--batch_size",
            "8",
            "--base_channels",
            "4",
            "--img_scale",
            "1",
        ],
        (2, 4, 6),
    ),
    # random masks per step, the k-NN monitor picking best, EMA: 5 steps an epoch
    "mae": (
        lambda f: MAETrainer,
        [
            "--epochs",
            "2",
            "--data_type",
            "Digits",
            "--patch_size",
            "4",
            "--batch_size",
            "96",
            "--train_val_sample_rate",
            "0.3",
            "--knn_k",
            "5",
            "--ema_decay",
            "0.9",
            "--early_stop_patience",
            "9",
        ],
        (2, 5, 8),
    ),
    # --freeze_epochs 1: only the head learns in epoch 1 (5 steps), then everything; stops inside the frozen
    # epoch, at its end and after it
    "vit_freeze": (
        lambda f: ViTTrainer,
        [
            "--epochs",
            "2",
            "--data_type",
            "Digits",
            "--model_type",
            "timm/test_resnet",
            "--batch_size",
            "96",
            "--train_val_sample_rate",
            "0.3",
            "--test_sample_rate",
            "0.1",
            "--freeze_epochs",
            "1",
            "--weight_decay",
            "0.05",
            "--early_stop_patience",
            "9",
        ],
        (2, 5, 8),
    ),
    # batches gathered on the device, random crops and flips drawn there per sample (kornia), then Mixup
    "vit_device": (
        lambda f: ViTTrainer,
        [
            "--epochs",
            "2",
            "--data_type",
            "Digits",
            "--patch_size",
            "4",
            "--batch_size",
            "96",
            "--train_val_sample_rate",
            "0.3",
            "--data_on_device",
            "--train_crop",
            "rrc",
            "--hflip",
            "0.5",
            "--vflip",
            "0.5",
            "--mixup_alpha",
            "0.2",
            "--early_stop_patience",
            "9",
        ],
        (2, 5, 8),
    ),
}


def train(cls, out, argv, hooks=()):
    trainer = cls.from_argv(["--output_dir", str(out), "--gpu_devices", "cpu", "--deterministic", *argv])
    own = trainer.build_hooks  # the task's own hooks (--freeze_epochs), then the test's
    trainer.build_hooks = lambda: [*own(), StepCounter(), *hooks]
    trainer.fit()
    trainer.end_rng = (torch.get_rng_state(), np.random.get_state()[1].copy())
    return trainer


#: Scalars that measure the machine, not the training: they differ between any two runs.
TIMING_SCALARS = (
    "train/images_per_sec",
    "train/step_time",
    "train/data_time",
    "val/seconds",
    "train/peak_gpu_memory_mib",
)


def logged(trainer):
    """metrics.csv's rows and scalars.csv's (step, name, value) rows, timings left out."""
    rows = list(csv.DictReader(open(os.path.join(trainer.run_dir, "metrics.csv"))))
    scalars = list(csv.reader(open(os.path.join(trainer.run_dir, "scalars.csv"))))
    assert scalars[0] == ["step", "name", "value"] and len(scalars) > 1
    return (
        [{k: v for k, v in r.items() if k != "val_seconds"} for r in rows],
        [r for r in scalars[1:] if r[1] not in TIMING_SCALARS],
    )


def assert_same_state(a, b):
    for key, value in a.model.state_dict().items():
        assert torch.equal(value, b.model.state_dict()[key]), key
    sa, sb = a.optimizer.state_dict(), b.optimizer.state_dict()
    assert sa["param_groups"] == sb["param_groups"]
    for pid, state in sa["state"].items():
        for name, value in state.items():
            assert torch.equal(value, sb["state"][pid][name]), (pid, name)
    assert a.scheduler.state_dict() == b.scheduler.state_dict()
    assert (a.step.ema is None) == (b.step.ema is None)
    if a.step.ema is not None:
        assert a.step.ema.num_updates == b.step.ema.num_updates
        for key, value in a.step.ema.module.state_dict().items():
            assert torch.equal(value, b.step.ema.module.state_dict()[key]), f"ema {key}"
    assert (a.epoch, a.global_step, a.progress.batch_in_epoch) == (b.epoch, b.global_step, b.progress.batch_in_epoch)
    assert a.progress.samples_in_epoch == b.progress.samples_in_epoch
    assert a.early_stopper.state_dict() == b.early_stopper.state_dict()
    assert [h.state_dict() for h in a.hooks] == [h.state_dict() for h in b.hooks]
    if hasattr(a, "end_rng") and hasattr(b, "end_rng"):  # the RNG streams ended in the same place
        assert torch.equal(a.end_rng[0], b.end_rng[0]) and np.array_equal(a.end_rng[1], b.end_rng[1])
    best_a, best_b = (load_checkpoint(t.checkpointer.path("best")) for t in (a, b))
    assert best_a["global_step"] == best_b["global_step"]
    assert {k: v for k, v in best_a["metrics"].items() if k != "val_seconds"} == {
        k: v for k, v in best_b["metrics"].items() if k != "val_seconds"
    }


@pytest.fixture(scope="module")
def straight_runs(tmp_path_factory):
    cache = {}

    def get(case, workers):
        if (case, workers) not in cache:
            make, argv, _ = CASES[case]
            cache[case, workers] = train(
                make(tmp_path_factory), tmp_path_factory.mktemp("straight"), [*argv, "--num_workers", str(workers)]
            )
        return cache[case, workers]

    return get


# MAE reads its data exactly as ViTTrainer does (the workers' seeding is covered there, and each worker
# case costs seconds of the suite): its own random state, the masks, is checked at all three stops.
# The JPEG folder runs with workers only: test_input_pipeline checks that 0 and 2 workers draw the same crops.
# --data_on_device reads no data through workers. --freeze_epochs reads its data as "vit" does.
# --folds changes which samples train, not how they are read ("vanilla" covers the workers).
# ImageCSV files are decoded and cropped as the JPEG folder's (covered with workers there).
# The weighted draw's samples are seeded by their position in workers ("vanilla_weighted": 2 workers).
# SegFolder files are read and jointly augmented by Carvana's dataset ("seg" covers the workers).
# "vit" and "seg" run with workers only: their reading without workers is the path of the in-memory cases
# ("toy", "vanilla", "mae") and of "seg_multiclass"; the workers' seeding is what is theirs to check.
ONE_WORKER_COUNT = {
    "vit": 2,
    "seg": 2,
    "mae": 0,
    "jpeg_folder": 2,
    "vit_device": 0,
    "vit_freeze": 0,
    "vanilla_folds": 0,
    "multilabel": 0,
    "vanilla_weighted": 2,
    "vanilla_weighted_device": 0,
    "seg_multiclass": 0,
}
RUNS = [
    pytest.param(case, stop, workers, id=f"{case}-{name}-{workers}")
    for case in sorted(CASES)
    for stop, name in enumerate(["mid_epoch", "epoch_boundary", "later"])
    for workers in (0, 2)
    if ONE_WORKER_COUNT.get(case, workers) == workers
]


@pytest.mark.parametrize("case, stop, workers", RUNS)
def test_stop_and_resume_equals_straight(tmp_path, tmp_path_factory, straight_runs, case, stop, workers):
    make, argv, stops = CASES[case]
    cls, k = make(tmp_path_factory), stops[stop]
    argv = [*argv, "--num_workers", str(workers)]
    with pytest.raises(RuntimeError, match=f"stop after step {k}"):
        train(cls, tmp_path, argv, [StopAfter(k)])
    resumed = train(cls, tmp_path, ["--resume", "auto"])
    straight = straight_runs(case, workers)
    assert resumed.args.num_workers == workers  # the saved config came back
    assert_same_state(straight, resumed)
    assert logged(straight) == logged(resumed)


def test_resume_continues_in_the_same_run_folder_and_log(tmp_path):
    with pytest.raises(RuntimeError):
        first = ToyTrainer.from_argv(["--output_dir", str(tmp_path), "--gpu_devices", "cpu", "--fail_at_step", "4"])
        first.fit()
    resumed = ToyTrainer.from_argv(
        ["--output_dir", str(tmp_path), "--gpu_devices", "cpu", "--resume", first.run_dir, "--fail_at_step", "0"]
    )
    resumed.fit()
    assert resumed.run_dir == first.run_dir and os.listdir(os.path.dirname(first.run_dir)) == [first.timestamp]
    log = open(os.path.join(first.run_dir, f"Toy_{first.timestamp}_log.txt")).read()
    assert log.count("run folder:") == 2 and "resumed from" in log and "step 3" in log
    assert resumed.provenance["lr"].startswith("resumed run") and resumed.provenance["fail_at_step"] == "command line"


def test_each_resume_is_listed_in_the_config_file(tmp_path):
    argv = ["--output_dir", str(tmp_path), "--gpu_devices", "cpu"]
    first = ToyTrainer.from_argv([*argv, "--epochs", "1"])
    first.fit()
    for epochs in ("2", "3"):
        ToyTrainer.from_argv([*argv, "--resume", first.run_dir, "--epochs", epochs]).fit()
    with open(os.path.join(first.run_dir, f"config_Toy_{first.timestamp}.json")) as f:
        doc = json.load(f)
    resumes = doc["meta"]["resumes"]
    assert [r["changed"] for r in resumes] == [{"epochs": [1, 2]}, {"epochs": [2, 3]}]
    assert all(r["checkpoint"].endswith("Toy_last_ckpt.pth") and r["time"] for r in resumes)
    assert doc["config"]["epochs"] == 3 and doc["meta"]["trainer"] == "ToyTrainer"


def test_step_checkpoints_keep_last_k(tmp_path):
    trainer = train(ToyTrainer, tmp_path, ["--save_every_steps", "1", "--keep_last_k", "2"])
    steps = sorted(p for p in os.listdir(trainer.run_dir) if "_step" in p)
    assert steps == ["Toy_step10_ckpt.pth", "Toy_step9_ckpt.pth"]


def test_rows_logged_after_the_checkpoint_are_redone_not_duplicated(tmp_path, tmp_path_factory, straight_runs):
    # As if killed after writing a validation row but before its checkpoint landed.
    with pytest.raises(RuntimeError):
        train(
            AugmentedToyTrainer,
            tmp_path,
            ["--epochs", "2", "--num_workers", "0", "--log_every_steps", "4"],
            [StopAfter(6)],
        )
    path = os.path.join(tmp_path, "Toy", os.listdir(os.path.join(tmp_path, "Toy"))[0], "metrics.csv")
    with open(path, "a") as f:
        f.write("2,10,0.5,0.01,0.7,0.1\n")  # a row from the future, step 10 > 6
    resumed = train(AugmentedToyTrainer, tmp_path, ["--resume", "auto"])
    assert resumed.run_dir == os.path.dirname(path)
    assert logged(straight_runs("toy", 0)) == logged(resumed)


def test_resume_validates_the_saved_config_not_the_defaults(tmp_path):
    """A default that is invalid on its own (like a --data_dir this machine lacks) must not
    stop ``--resume`` of a run that set it."""

    class NeedsFolder(ToyTrainer):
        @classmethod
        def add_arguments(cls, parser):
            parser.add_argument("--data_dir", default=str(tmp_path / "missing"))

        @classmethod
        def check_config(cls, args):
            super().check_config(args)
            check_dir_exists("data_dir", args.data_dir)

    data = tmp_path / "data"
    data.mkdir()
    (data / "x.txt").write_text("x")
    argv = ["--output_dir", str(tmp_path), "--gpu_devices", "cpu", "--max_steps", "3"]
    first = NeedsFolder.from_argv([*argv, "--data_dir", str(data)])
    first.fit()
    resumed = NeedsFolder.from_argv(["--output_dir", str(tmp_path), "--resume", "auto", "--max_steps", "5"])
    assert resumed.args.data_dir == str(data)
    resumed.fit()
    assert resumed.global_step == 5
    with pytest.raises(SystemExit):  # without --resume the same default is still refused
        NeedsFolder.from_argv(argv)


def test_resume_takes_a_whole_checkpoint_over_a_one_process_exception_checkpoint_of_the_same_step(tmp_path):
    """Under DDP a process left alone writes the exception checkpoint with its own training-loss sums only
    (see ``TrainerBase.state_dict``). A step checkpoint of the same step holds every process's: ``--resume``
    takes that one. A one-process exception checkpoint of a later step is newer work, and is taken."""
    trainer = ToyTrainer.from_argv(
        ["--output_dir", str(tmp_path), "--gpu_devices", "cpu", "--save_every_steps", "2", "--fail_at_step", "3"]
    )
    with pytest.raises(RuntimeError, match="boom"):
        trainer.fit()
    exception, step2 = trainer.checkpointer.path("exception"), trainer.checkpointer.path("step2")
    state = load_checkpoint(exception)
    assert state["global_step"] == 2 and os.path.getmtime(exception) > os.path.getmtime(step2)
    alone = {
        **state,
        "world_size": 2,
        "loss_sum": None,
        "loss_count": None,  # as rank 0 of 2 writes it alone
        "loss_sums": [state["loss_sums"][0], None],
        "extra_sums": [state["extra_sums"][0], None],
    }
    save_checkpoint(alone, exception)
    why = (
        f"--resume auto picked {trainer.run_dir}, the newest run of Toy; continuing from Toy_step2_ckpt.pth "
        "(step 2, like Toy_exception_ckpt.pth, with every process's loss sums)"
    )
    assert locate("auto", str(tmp_path), "Toy")[1:] == (step2, why)
    save_checkpoint({**alone, "global_step": 3}, exception)
    assert locate(trainer.run_dir, str(tmp_path), "Toy")[1] == exception
    save_checkpoint(state, exception)  # every process's sums (here: one process's of one)
    assert locate(trainer.run_dir, str(tmp_path), "Toy")[1] == exception
