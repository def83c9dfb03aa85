"""``--data_on_device``: training batches gathered from tensors on the device, augmented there with kornia.

CPU runs (the "device" is the CPU: the code path is the same). Resume parity of a
``--data_on_device`` run with random crops, flips and Mixup is a case of tests/test_resume.py.
"""

import os

import pytest
import torch
from torch.utils.data import DataLoader, Subset, TensorDataset

from base.errors import UserError
from base.loop.device_data import DeviceBatches, stored_tensors
from base.loop.state import ResumableSampler, seed_position
from data.augment import Augmented
from data.classification import InMemoryImages
from evaluators.vanilla_evaluator import VanillaEvaluator
from test_bad_input import expect
from trainers.vanilla_trainer import VanillaTrainer
from trainers.vit_trainer import ViTTrainer

CPU = ["--gpu_devices", "cpu", "--deterministic"]


def images(n=23):
    pixels = torch.arange(n * 2 * 3 * 3, dtype=torch.int64).remainder(256).to(torch.uint8).view(n, 2, 3, 3)
    return InMemoryImages(pixels, torch.arange(n) % 5)


# ------------------------------------------------------------------ the loader
@pytest.mark.parametrize(
    "start, rank, world_size", [(0, 0, 1), (7, 0, 1), (0, 1, 2), (5, 0, 3), (5, 2, 3), (23, 0, 1), (21, 1, 2)]
)
def test_batches_are_those_of_the_dataloader(start, rank, world_size):
    """Same sampler, same batches: order, mid-epoch start, DDP share, the left-out tail (23 = 4 * 5 + 3), and
    none at all where the epoch has nothing left (a resume from its last step)."""
    data = Subset(images(), [i for i in range(23) if i != 4] + [4])  # a Subset, not in index order
    sampler = ResumableSampler(len(data), seed=3, batch_size=4, rank=rank, world_size=world_size)
    device = DeviceBatches(data, sampler, 4, torch.device("cpu"))
    loader = DataLoader(data, batch_size=4, sampler=sampler)
    for epoch in (0, 1):
        sampler.set_epoch(epoch, start)
        expected = list(loader)
        got = list(device)
        assert len(device) == len(loader) == len(expected) == len(got)
        assert (len(got) > 0) == (start < 21)  # 21, 22 are a tail of 2 over 2 processes: left out
        for (x, y), (gx, gy) in zip(expected, got):
            assert gx.dtype == torch.uint8 and gy.dtype == torch.int64
            assert torch.equal(x, gx) and torch.equal(y, gy)
    assert device.generator is None and device.dataset is data and device.batch_size == 4


def test_stored_tensors_map_nested_subsets_and_take_tensor_datasets():
    data = images()
    inner = Subset(data, [10, 3, 7, 1])
    x, y = stored_tensors(Subset(inner, [2, 0]))
    assert torch.equal(x, data.images[[7, 10]]) and torch.equal(y, data.labels[[7, 10]])
    a, b = torch.randn(6, 2), torch.arange(6)
    assert [t.tolist() for t in stored_tensors(Subset(TensorDataset(a, b), [5, 1]))] == [a[[5, 1]].tolist(), [5, 1]]


def test_a_dataset_without_tensors_is_refused_naming_the_flag():
    with pytest.raises(UserError, match="--data_on_device: the training split \\(Augmented\\) is not held in memory"):
        stored_tensors(Subset(Augmented(images(), lambda x: x), [0, 1]))


# ------------------------------------------------------------------ the trainers
def fit(cls, out, *argv):
    trainer = cls.from_argv(["--output_dir", str(out), *CPU, *argv])
    return trainer, trainer.fit()


def test_without_random_ops_a_device_run_is_the_loader_run(tmp_path):
    """Digits squashed (no random op): the same batches in the same order, so the very same weights."""
    argv = ["--max_steps", "12", "--train_val_sample_rate", "0.3", "--batch_size", "32", "--num_workers", "0"]
    loader_run, _ = fit(VanillaTrainer, tmp_path / "a", *argv)
    device_run, metrics = fit(VanillaTrainer, tmp_path / "b", *argv, "--data_on_device")
    assert isinstance(device_run.loaders["train"], DeviceBatches) and device_run.inputs.augment is None
    assert not isinstance(loader_run.loaders["train"], DeviceBatches)
    for key, value in loader_run.model.state_dict().items():
        assert torch.equal(value, device_run.model.state_dict()[key]), key
    evaluator = VanillaEvaluator.from_argv(["--model_path", device_run.checkpointer.path("best")])
    assert evaluator.run()["top1"] == pytest.approx(metrics["top1"])  # the evaluator uploads nothing
    assert not evaluator.task.args.data_on_device and isinstance(evaluator.task.loaders["train"], DataLoader)


def test_random_crops_on_the_device_train_as_well_as_in_the_loader(tmp_path):
    """Digits, --train_crop rrc: the worker path (torchvision) and the device path (kornia) draw other crops, so
    their weights differ, but both must learn the task. MLP, 3 epochs of 1,294 images: the loader path reaches
    ~87% test top-1 here and the device path ~84% (random guessing: 10%); 75% on each side and a gap of at most
    8 points (of 359 test images, ~29) catch a device path that feeds the model wrong pairs or wrong crops
    (labels shuffled against images, a crop far off --scale), which costs tens of points."""
    argv = [
        "--epochs",
        "3",
        "--batch_size",
        "32",
        "--train_crop",
        "rrc",
        "--scale",
        "0.5",
        "1",
        "--num_workers",
        "0",
        "--loggers",
        "csv",
    ]
    loader_run, loader_metrics = fit(VanillaTrainer, tmp_path / "a", *argv)
    device_run, device_metrics = fit(VanillaTrainer, tmp_path / "b", *argv, "--data_on_device")
    assert isinstance(loader_run.datasets["train"], Augmented)  # the worker path crops ...
    train = device_run.datasets["train"]  # ... the device path reads the stored images and crops with kornia
    assert isinstance(train, Subset) and isinstance(train.dataset, InMemoryImages)
    assert [type(op).__name__ for op in device_run.inputs.augment] == ["RandomResizedCrop"]
    assert loader_metrics["top1"] >= 75 and device_metrics["top1"] >= 75, (loader_metrics, device_metrics)
    assert abs(loader_metrics["top1"] - device_metrics["top1"]) <= 8, (loader_metrics, device_metrics)


def test_device_augmentation_is_per_sample_and_seeded_by_position(tmp_path):
    """ViT's flags on the device: each image its own crop and flips, the same ones again from the same position."""
    trainer = ViTTrainer.from_argv(
        [
            "--output_dir",
            str(tmp_path),
            *CPU,
            "--data_type",
            "Digits",
            "--patch_size",
            "4",
            "--train_crop",
            "rrc",
            "--hflip",
            "0.5",
            "--vflip",
            "0.5",
            "--data_on_device",
        ]
    )
    trainer.build()
    augment = trainer.inputs.augment
    assert [type(op).__name__ for op in augment] == ["RandomResizedCrop", "RandomHorizontalFlip", "RandomVerticalFlip"]
    x = next(iter(trainer.loaders["train"]))[0][:1].float().expand(64, -1, -1, -1) / 255  # one image, 64 times
    seed_position(0, 0, 1, 64)
    first = augment(x)
    seed_position(0, 0, 1, 64)
    assert torch.equal(augment(x), first)
    assert first.shape == x.shape and 0 <= first.min() and first.max() <= 1
    assert len({tuple(image.flatten().tolist()) for image in first}) > 32  # per sample, not one draw per batch
    seed_position(0, 0, 1, 128)
    assert not torch.equal(augment(x), first)


# ------------------------------------------------------------------ refusals (before any run folder)
@pytest.mark.parametrize(
    "cls, argv, names",
    [
        (VanillaTrainer, ["--data_type", "ImageFolder", "--data_dir", "."], ["--data_on_device", "ImageFolder"]),
        (ViTTrainer, ["--data_type", "ImageFolder", "--data_dir", "."], ["--data_on_device", "ImageFolder"]),
        (ViTTrainer, ["--data_type", "Digits", "--randaugment", "2", "9"], ["--randaugment", "--data_on_device"]),
    ],
)
def test_what_cannot_run_on_the_device_is_refused_in_one_line(tmp_path, capsys, cls, argv, names):
    expect(cls, ["--output_dir", str(tmp_path), "--gpu_devices", "cpu", "--data_on_device", *argv], capsys, 2, *names)
    assert os.listdir(tmp_path) == []
