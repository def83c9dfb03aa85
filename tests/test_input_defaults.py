"""The input pipeline's defaults that keep a GPU fed: --num_workers auto, cuDNN autotuning, the warning for a
CUDA run that decodes files in the main process, and batched fetch of in-memory images."""

import logging
import os
from unittest import mock

import numpy as np
import pytest
import torch
from PIL import Image

from base.config.trainer_flags import resolve_workers
from data.classification import InMemoryImages
from trainers.vanilla_trainer import VanillaTrainer


@pytest.mark.parametrize("cpus, local, expected", [(16, 1, 12), (16, 2, 7), (8, 1, 7), (2, 1, 1), (4, 8, 1)])
def test_auto_workers_share_the_cpus_among_this_nodes_processes(cpus, local, expected):
    with mock.patch.object(os, "sched_getaffinity", return_value=set(range(cpus))):
        assert resolve_workers("auto", torch.device("cuda"), local) == expected
        assert resolve_workers("auto", torch.device("cpu"), local) == 0  # the model needs the cores
        assert resolve_workers(3, torch.device("cuda"), local) == 3  # a number is taken as given


def test_cudnn_autotuning_is_on_unless_deterministic_and_put_back_after_fit(tmp_path):
    seen = {}

    class Probe(VanillaTrainer):
        def build_loss(self):
            seen[self.args.deterministic] = torch.backends.cudnn.benchmark
            return super().build_loss()

    before = torch.backends.cudnn.benchmark
    for deterministic in ("false", "true"):
        Probe.from_argv(
            [
                "--output_dir",
                str(tmp_path),
                "--max_steps",
                "1",
                "--gpu_devices",
                "cpu",
                "--train_val_sample_rate",
                "0.1",
                "--deterministic",
                deterministic,
            ]
        ).fit()
        assert torch.backends.cudnn.benchmark == before
    assert seen == {False: True, True: False}


def test_a_cuda_run_that_decodes_files_in_the_main_process_is_warned(tmp_path, caplog):
    for name in ("a", "b"):
        (tmp_path / name).mkdir()
        for j in range(3):
            Image.fromarray(np.zeros((9, 11, 3), np.uint8)).save(tmp_path / name / f"{j}.png")
    trainer = VanillaTrainer.from_argv(
        [
            "--output_dir",
            str(tmp_path / "runs"),
            "--data_type",
            "ImageFolder",
            "--data_dir",
            str(tmp_path),
            "--image_size",
            "8",
            "--gpu_devices",
            "cpu",
            "--num_workers",
            "0",
        ]
    )
    trainer.datasets = trainer.build_datasets()
    trainer.logger = logging.getLogger("input-defaults-test")
    with caplog.at_level(logging.WARNING, logger="input-defaults-test"):
        trainer.build_dataloader(trainer.datasets["train"], "train")  # on the CPU: nothing to say
        assert not caplog.records
        trainer.device = torch.device("cuda")  # (the loader is only built, never read: no GPU needed)
        trainer.build_dataloader(trainer.datasets["train"], "train")
    (record,) = caplog.records
    assert "decodes image files in the main process (--num_workers 0)" in record.getMessage()
    assert "--num_workers auto" in record.getMessage()
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="input-defaults-test"):  # in-memory data decode nothing
        trainer.build_dataloader(InMemoryImages(torch.zeros(4, 1, 8, 8, dtype=torch.uint8), torch.zeros(4)), "train")
    assert not caplog.records


def test_in_memory_images_fetch_a_batch_in_one_indexing_op_with_the_items_values():
    images = torch.randint(0, 256, (10, 1, 4, 4), dtype=torch.uint8)
    data = InMemoryImages(images, torch.arange(10))
    batch = data.__getitems__([7, 2, 2])
    assert [label for _, label in batch] == [7, 2, 2]
    for (image, label), single in zip(batch, (data[7], data[2], data[2])):
        assert image.dtype == torch.uint8 and torch.equal(image, single[0]) and label == single[1]
    with mock.patch.object(InMemoryImages, "__getitem__", side_effect=AssertionError("read one at a time")):
        loader = torch.utils.data.DataLoader(data, batch_size=4)
        first, labels = next(iter(loader))
    assert torch.equal(first, images[:4]) and labels.tolist() == [0, 1, 2, 3]
