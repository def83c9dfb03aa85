"""CIFAR-10 from tiny files in the official pickle format, read through torchvision by the real loader."""

import os
import pickle

import numpy as np
import pytest

from base.errors import DataError
from data.cifar import FOLDER, load_cifar10
from trainers.mae_trainer import MAETrainer

NAMES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]


def write_cifar10(root, per_batch=6, seed=0):
    """``root/cifar-10-batches-py`` with 5 training batches and a test batch of ``per_batch`` images each.

    Each image is 3072 bytes: the red plane, then green, then blue, each 32 rows of 32 (the official
    layout); labels are a list of ints; keys are str, as the official files (pickled by Python 2)
    read in Python 3. Returns the arrays written, by file name.
    """
    folder = os.path.join(root, FOLDER)
    os.makedirs(folder)
    rng, written = np.random.default_rng(seed), {}
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        data = rng.integers(0, 256, size=(per_batch, 3072), dtype=np.uint8)
        labels = [int(x) for x in rng.integers(0, 10, size=per_batch)]
        with open(os.path.join(folder, name), "wb") as f:
            pickle.dump({"batch_label": name, "data": data, "labels": labels}, f, protocol=2)
        written[name] = (data, labels)
    with open(os.path.join(folder, "batches.meta"), "wb") as f:
        pickle.dump({"label_names": NAMES, "num_vis": 3072}, f, protocol=2)
    return written


def test_channels_rows_and_labels_come_out_where_the_file_put_them(tmp_path):
    written = write_cifar10(tmp_path)
    images, labels, names = load_cifar10(str(tmp_path), train=True, download=False)
    assert images.shape == (30, 3, 32, 32) and names == NAMES
    data, first_labels = written["data_batch_1"]
    assert labels[:6].tolist() == first_labels
    # byte 1024 + 32 * 5 + 7 of image 2: green plane, row 5, column 7
    assert int(images[2, 1, 5, 7]) == int(data[2, 1024 + 32 * 5 + 7])
    assert int(images[3, 2, 31, 0]) == int(data[3, 2048 + 32 * 31])
    test_images, test_labels, _ = load_cifar10(str(tmp_path), train=False, download=False)
    assert test_images.shape == (6, 3, 32, 32) and test_labels.tolist() == written["test_batch"][1]


def test_missing_and_foreign_files_are_one_line_data_errors(tmp_path):
    with pytest.raises(DataError, match=f"CIFAR-10 files not found in .*{FOLDER}: missing data_batch_1"):
        load_cifar10(str(tmp_path), train=True, download=False)
    write_cifar10(tmp_path)
    with open(os.path.join(tmp_path, FOLDER, "data_batch_3"), "wb") as f:
        f.write(b"not a pickle")
    with pytest.raises(DataError, match="cannot read CIFAR-10 files"):
        load_cifar10(str(tmp_path), train=True, download=False)


def test_mae_pretrains_on_cifar10_files(tmp_path):
    write_cifar10(tmp_path / "data", per_batch=8)
    trainer = MAETrainer.from_argv(
        [
            "--output_dir",
            str(tmp_path),
            "--data_type",
            "CIFAR10",
            "--data_dir",
            str(tmp_path / "data"),
            "--patch_size",
            "16",
            "--batch_size",
            "16",
            "--epochs",
            "1",
            "--knn_k",
            "3",
            "--gpu_devices",
            "cpu",
        ]
    )
    metrics = trainer.fit()
    assert trainer.data.input_shape == (3, 32, 32) and trainer.raw_model.num_patches == 4
    assert set(metrics) == {"loss", "knn_top1"} and len(trainer.datasets["test"]) == 8
