"""Contract tests for data/classification.py on tiny generated files (CPU, offline)."""

import argparse
import gzip
import os
import re
import struct

import numpy as np
import pytest
import torch
import torchvision
from PIL import Image
from torch.utils.data import DataLoader

from base.config.parse import ConfigError
from base.config.study_flags import add_study_arguments
from base.errors import DataError
from data.classification import (
    IDX_FILES,
    add_data_arguments,
    build_classification_datasets,
    check_data_config,
    digits_arrays,
)


def make_args(argv=()):
    """Parse ``argv`` with the data flags plus ``--seed`` (as a trainer would)."""
    parser = argparse.ArgumentParser()
    add_data_arguments(parser)
    parser.add_argument("--seed", type=int, default=0)
    add_study_arguments(parser)  # --folds/--fold
    parser.add_argument("--mean", type=float, nargs="+", default=None)  # the trainer's input statistics
    parser.add_argument("--std", type=float, nargs="+", default=None)
    return parser.parse_args(list(argv))


def write_idx(path, array):
    """Write a uint8 array in the big-endian IDX format (magic 0x08 type, then ndim)."""
    array = np.ascontiguousarray(array, dtype=np.uint8)
    header = struct.pack(">I", 0x0800 | array.ndim) + struct.pack(f">{array.ndim}I", *array.shape)
    with open(path, "wb") as f:
        f.write(header + array.tobytes())


def write_mnist(folder, n_train=40, n_test=20):
    """Write the four raw files; image ``i`` is filled with ``i`` and labelled ``i % 10``.

    Returns the labels written, ``(train_labels, test_labels)``.
    """
    os.makedirs(folder, exist_ok=True)
    labels = {}
    for prefix, n in (("train", n_train), ("t10k", n_test)):
        images = np.arange(n, dtype=np.uint8)[:, None, None] * np.ones((1, 28, 28), np.uint8)
        labels[prefix] = np.arange(n) % 10
        write_idx(os.path.join(folder, f"{prefix}-images-idx3-ubyte"), images)
        write_idx(os.path.join(folder, f"{prefix}-labels-idx1-ubyte"), labels[prefix])
    return labels["train"], labels["t10k"]


def check_items(subset, labels):
    """Each item's pixel value names its source index; its label must match ``labels``."""
    for k, original in enumerate(subset.indices):
        image, label = subset[k]
        assert image.dtype == torch.uint8 and image.shape == (1, 28, 28)
        assert type(label) is int and label == labels[original]
        assert torch.equal(image, torch.full_like(image, original))  # the file's bytes, as they are


@pytest.mark.parametrize("data_type, flat", [("FashionMNIST", False), ("MNIST", True)])
def test_mnist_layouts_load_real_idx_files(tmp_path, data_type, flat):
    folder = tmp_path if flat else tmp_path / data_type / "raw"
    train_labels, test_labels = write_mnist(folder)
    args = make_args(["--data_type", data_type, "--data_dir", str(tmp_path), "--val_fraction", "0.25"])
    check_data_config(args)
    data = build_classification_datasets(args)
    assert (len(data.train), len(data.val), len(data.test)) == (30, 10, 20)
    assert data.input_shape == (1, 28, 28) and data.num_classes == 10
    assert data.class_names == getattr(torchvision.datasets, data_type).classes
    assert not set(data.train.indices) & set(data.val.indices)
    check_items(data.train, train_labels)
    check_items(data.val, train_labels)
    check_items(data.test, test_labels)
    images, labels = next(iter(DataLoader(data.train, batch_size=8)))
    assert images.shape == (8, 1, 28, 28) and labels.dtype == torch.int64


def test_mnist_sample_rates_shrink_and_are_seeded(tmp_path):
    write_mnist(tmp_path)
    argv = [
        "--data_type",
        "MNIST",
        "--data_dir",
        str(tmp_path),
        "--val_fraction",
        "0.25",
        "--train_val_sample_rate",
        "0.5",
        "--test_sample_rate",
        "0.25",
    ]
    first = build_classification_datasets(make_args(argv))
    again = build_classification_datasets(make_args(argv))
    assert (len(first.train), len(first.val), len(first.test)) == (15, 5, 5)
    assert first.train.indices == again.train.indices and first.test.indices == again.test.indices
    other = build_classification_datasets(make_args(argv + ["--seed", "1"]))
    assert other.train.indices != first.train.indices and other.test.indices != first.test.indices


def test_missing_mnist_files_name_folder_and_files(tmp_path):
    args = make_args(["--data_type", "FashionMNIST", "--data_dir", str(tmp_path)])
    check_data_config(args)  # the folder exists; its files are checked when loading
    with pytest.raises(DataError) as info:
        build_classification_datasets(args)
    message = str(info.value)
    assert str(tmp_path / "FashionMNIST" / "raw") in message
    assert "train-images-idx3-ubyte" in message and "--download" in message


def test_gzipped_mnist_files_get_a_gunzip_hint(tmp_path):
    write_mnist(tmp_path)
    path = tmp_path / IDX_FILES[0]
    path.with_name(path.name + ".gz").write_bytes(gzip.compress(path.read_bytes()))
    path.unlink()
    with pytest.raises(DataError, match="gunzip"):
        build_classification_datasets(make_args(["--data_type", "MNIST", "--data_dir", str(tmp_path)]))


def test_corrupt_idx_file_is_a_data_error(tmp_path):
    write_mnist(tmp_path)
    (tmp_path / "train-images-idx3-ubyte").write_bytes(b"not an idx file at all")
    with pytest.raises(DataError, match="cannot read MNIST"):
        build_classification_datasets(make_args(["--data_type", "MNIST", "--data_dir", str(tmp_path)]))


def digits_indices(seed, *extra):
    data = build_classification_datasets(make_args(["--seed", str(seed), *extra]))
    return data, [sorted(s.indices) for s in (data.train, data.val, data.test)]


def test_digits_splits_cover_everything_once_and_follow_the_seed():
    data, splits = digits_indices(0)
    assert sum(map(len, splits)) == 1797
    assert len(set().union(*map(set, splits))) == 1797  # no overlap, nothing lost
    assert len(data.test) == round(0.2 * 1797)
    assert digits_indices(0)[1] == splits
    assert digits_indices(1)[1] != splits
    image, label = data.train[0]
    assert image.shape == (1, 8, 8) and image.dtype == torch.uint8 and type(label) is int
    assert data.input_shape == (1, 8, 8) and data.num_classes == 10
    pixels = torch.from_numpy(digits_arrays()[0][data.train.indices[0]]).float()[None]  # 0..16
    assert torch.equal(image, torch.round(pixels * 255 / 16).to(torch.uint8))  # 0 -> 0, 8 -> 128, 16 -> 255


def test_digits_sample_rates_shrink_the_splits():
    _, full = digits_indices(0)
    _, small = digits_indices(0, "--train_val_sample_rate", "0.1", "--test_sample_rate", "0.5")
    assert len(small[0]) + len(small[1]) == round(0.1 * (len(full[0]) + len(full[1])))
    assert len(small[2]) == round(0.5 * len(full[2]))
    assert small[2] == sorted(set(small[2]) & set(full[2]))  # test is a subset of the full test


def write_png(path, size=(10, 12), value=0):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    Image.fromarray(np.full((*size, 3), value, np.uint8)).save(path)


def test_image_folder_loads_resized_rgb(tmp_path):
    for cls in ("cat", "dog"):
        for i in range(3):
            write_png(str(tmp_path / cls / f"{i}.png"), size=(10 + i, 12), value=200 if cls == "dog" else 0)
    args = make_args(
        [
            "--data_type",
            "ImageFolder",
            "--data_dir",
            str(tmp_path),
            "--image_size",
            "16",
            "--val_fraction",
            "0.5",
            "--test_fraction",
            "0",
        ]
    )
    check_data_config(args)
    data = build_classification_datasets(args)
    assert data.class_names == ["cat", "dog"] and data.input_shape == (3, 16, 16)
    assert len(data.train) == 3 and len(data.val) == 3 and len(data.test) == 0
    for image, label in [*data.train, *data.val]:  # flat images: every crop and resize keeps the value
        assert image.shape == (3, 16, 16) and image.dtype == torch.uint8
        assert torch.equal(image, torch.full_like(image, 0 if label == 0 else 200))


def test_image_folder_test_split_keeps_train_class_indices(tmp_path):
    for cls in ("a", "b", "c"):
        write_png(str(tmp_path / "train" / cls / "0.png"))
        write_png(str(tmp_path / "train" / cls / "1.png"))
    write_png(str(tmp_path / "test" / "c" / "0.png"))  # "a" and "b" absent from test
    data = build_classification_datasets(
        make_args(["--data_type", "ImageFolder", "--data_dir", str(tmp_path), "--val_fraction", "0.5"])
    )
    assert [label for _, label in data.test] == [2]
    assert len(data.train) + len(data.val) == 6 and len(data.val) == 3


def two_classes(root, per_class=3):
    for cls in ("a", "b"):
        for i in range(per_class):
            write_png(str(root / cls / f"{i}.png"), value=i)


def image_folder_args(root, *extra):
    return make_args(["--data_type", "ImageFolder", "--data_dir", str(root), "--image_size", "8", *extra])


@pytest.mark.parametrize("outside", [False, True, "self"])
def test_image_folder_refuses_a_symlink_loop_naming_the_link(tmp_path, outside):
    data = tmp_path / "data"
    two_classes(data)
    if outside == "self":  # a link to itself: not even a folder
        link = data / "b" / "3.png"
        os.symlink("3.png", link)
    elif outside:  # a/ext -> other/, other/back -> data/a: the loop closes through a folder beside the data
        (tmp_path / "other").mkdir()
        os.symlink(data / "a", tmp_path / "other" / "back")
        os.symlink(tmp_path / "other", data / "a" / "ext")
        link = data / "a" / "ext" / "back"
    else:  # a/up/a/up/...: the whole folder again and again, read ~40 times over into every split
        link = data / "a" / "up"
        os.symlink("..", link)
    with pytest.raises(DataError, match=re.escape(f"{link}: a symbolic link loop")):
        build_classification_datasets(image_folder_args(data))


def test_image_folder_counts_each_file_once_whatever_links_lead_to_it(tmp_path):
    two_classes(tmp_path)
    os.symlink("0.png", tmp_path / "a" / "copy.png")
    (tmp_path / "a" / "sub").mkdir()
    os.symlink("../1.png", tmp_path / "a" / "sub" / "again.png")
    os.symlink("sub", tmp_path / "a" / "more")  # a folder reached by two paths (not a loop)
    data = build_classification_datasets(image_folder_args(tmp_path, "--val_fraction", "0.5"))
    pool = data.train.dataset
    assert sorted(os.path.relpath(p, tmp_path) for p, _ in pool.samples) == [
        "a/0.png",
        "a/1.png",
        "a/2.png",
        "b/0.png",
        "b/1.png",
        "b/2.png",
    ]
    assert len(data.train) + len(data.val) + len(data.test) == 6


@pytest.mark.parametrize(
    "link, target",
    [
        ("train/b/9.png", "../a/0.png"),  # one file, two labels
        ("test/b/9.png", "../../train/b/1.png"),  # one file trained on and tested on: a leak
    ],
)
def test_image_folder_refuses_one_file_in_two_classes_or_splits(tmp_path, link, target):
    two_classes(tmp_path / "train")
    write_png(str(tmp_path / "test" / "a" / "0.png"), value=9)
    os.makedirs(os.path.dirname(tmp_path / link), exist_ok=True)
    os.symlink(target, tmp_path / link)
    first = os.path.normpath(os.path.join(os.path.dirname(tmp_path / link), target))
    with pytest.raises(DataError, match=re.escape(f"{tmp_path / link} and {first} are one file")):
        build_classification_datasets(image_folder_args(tmp_path))


def write_broken(path, kind):
    if kind == "zero-byte":
        open(path, "wb").close()
    elif kind == "text":
        with open(path, "w") as f:
            f.write("this is not an image")
    else:
        noise = np.random.default_rng(0).integers(0, 255, (32, 32, 3), dtype=np.uint8)
        Image.fromarray(noise).save(path, format="JPEG")
        with open(path, "rb") as f:
            head = f.read()
        with open(path, "wb") as f:
            f.write(head[: len(head) // 2])


@pytest.mark.parametrize("num_workers", [0, 2])
@pytest.mark.parametrize("kind, name", [("zero-byte", "empty.png"), ("text", "notes.png"), ("truncated", "cut.jpg")])
def test_broken_image_names_its_path(tmp_path, kind, name, num_workers):
    for cls in ("a", "b"):
        write_png(str(tmp_path / cls / "ok.png"))
    broken = tmp_path / "b" / name
    write_broken(str(broken), kind)
    data = build_classification_datasets(
        make_args(
            ["--data_type", "ImageFolder", "--data_dir", str(tmp_path), "--val_fraction", "0.5", "--test_fraction", "0"]
        )
    )
    # The whole pool (train and val), so the broken file is read whichever split it lands in.
    iterator = iter(DataLoader(data.train.dataset, batch_size=3, num_workers=num_workers))
    try:
        with pytest.raises(DataError, match=re.escape(f"cannot read image {broken}")):
            list(iterator)
    finally:
        # torch's re-raise leaves the iterator in a reference cycle; when the garbage
        # collector finalizes it, each worker join waits out a 5 s timeout.
        if num_workers:
            iterator._shutdown_workers()


def test_image_folder_without_images_names_the_folder(tmp_path):
    (tmp_path / "a").mkdir()
    (tmp_path / "a" / "readme.txt").write_text("no images here")
    with pytest.raises(DataError, match=re.escape(f"no images found in {tmp_path}")):
        build_classification_datasets(make_args(["--data_type", "ImageFolder", "--data_dir", str(tmp_path)]))


def test_defaults():
    args = make_args()
    assert (args.data_type, args.data_dir, args.download, args.image_size) == ("Digits", None, False, 32)
    assert (args.val_fraction, args.test_fraction) == (0.1, 0.2)
    assert (args.train_val_sample_rate, args.test_sample_rate) == (1.0, 1.0)
    check_data_config(args)


@pytest.mark.parametrize(
    "argv, expected",
    [
        (["--train_val_sample_rate", "0"], "--train_val_sample_rate=0.0"),
        (["--test_sample_rate", "1.5"], "--test_sample_rate=1.5"),
        (["--val_fraction", "-0.1"], "--val_fraction=-0.1"),
        (["--test_fraction", "1"], "--test_fraction=1.0"),
        (["--val_fraction", "0.5", "--test_fraction", "0.5"], "--val_fraction=0.5"),
        (["--image_size", "0"], "--image_size=0"),
    ],
)
def test_validation_names_the_flag(argv, expected):
    with pytest.raises(ConfigError) as info:
        check_data_config(make_args(argv))
    assert expected in str(info.value)


@pytest.mark.parametrize(
    "argv, expected",
    [
        (["--data_type", "FashionMNIST"], "--data_type FashionMNIST needs --data_dir"),
        (["--data_type", "ImageFolder", "--data_dir", "/no/such/dir"], "--data_dir /no/such/dir: no such folder"),
        (["--data_type", "MNIST", "--data_dir", "/no/such/dir"], "--download true"),
    ],
)
def test_a_missing_data_folder_is_a_data_error_naming_it(argv, expected):
    with pytest.raises(DataError) as info:  # bad data, exit status 1, as a missing Carvana folder
        check_data_config(make_args(argv))
    assert expected in str(info.value)


def test_validation_rejects_an_empty_image_folder(tmp_path):
    with pytest.raises(DataError, match="empty"):
        check_data_config(make_args(["--data_type", "ImageFolder", "--data_dir", str(tmp_path)]))
    check_data_config(make_args(["--data_type", "MNIST", "--data_dir", str(tmp_path / "new"), "--download"]))


def test_digits_read_from_the_bundled_file_equal_scikit_learns_load_digits():
    import numpy as np
    from sklearn.datasets import load_digits

    from data.classification import digits_arrays

    images, labels = digits_arrays()
    reference = load_digits()
    assert images.shape == (1797, 8, 8) and images.dtype == np.uint8
    assert np.array_equal(images, reference.images) and np.array_equal(labels, reference.target)


def test_the_training_order_changes_each_epoch_and_is_fixed_by_seed_and_epoch():
    from base.loop.state import ResumableSampler

    def order(seed, epoch):
        sampler = ResumableSampler(50, seed=seed)
        sampler.set_epoch(epoch)
        return list(sampler)

    orders = [order(3, epoch) for epoch in range(4)]
    assert all(sorted(o) == list(range(50)) for o in orders)  # each epoch sees every sample once
    assert len({tuple(o) for o in orders}) == 4  # a new order each epoch: not a fixed shuffle
    assert order(3, 2) == orders[2]  # a resumed run rebuilds an epoch's order exactly
    assert order(4, 0) != orders[0]  # and the seed chooses it
    sampler = ResumableSampler(50, seed=3, with_epoch=True)
    sampler.set_epoch(1, start=10)  # mid-epoch: the rest of the same order
    assert list(sampler) == [(1, i) for i in orders[1][10:]]


def test_a_trainer_sees_a_new_order_each_epoch(toy_argv):
    from conftest import ToyTrainer

    class Recording(ToyTrainer):
        def train_step(self, batch):
            self.seen.setdefault(self.epoch, []).extend(batch[0][:, 0].tolist())  # first feature: a sample's id
            return super().train_step(batch)

    trainer = Recording.from_argv([*toy_argv, "--epochs", "2", "--val_every_epochs", "2"])
    trainer.seen = {}
    trainer.fit()
    first, second = trainer.seen[0], trainer.seen[1]
    assert sorted(first) == sorted(second) and len(first) == 40  # every sample once per epoch
    assert first != second


@pytest.mark.parametrize("data_type, in_chans, channels", [("ELPV", 3, 1), ("Digits", 3, 1), ("ImageFolder", 1, 3)])
def test_in_chans_other_than_the_datas_is_refused_before_a_run_folder(tmp_path, capsys, data_type, in_chans, channels):
    from test_bad_input import expect
    from trainers.vit_trainer import ViTTrainer

    two_classes(tmp_path / "images")
    argv = [
        "--output_dir",
        str(tmp_path / "runs"),
        "--gpu_devices",
        "cpu",
        "--data_type",
        data_type,
        "--data_dir",
        str(tmp_path / "images"),
        "--image_size",
        "16",
        "--patch_size",
        "8",
        "--epochs",
        "1",
        "--in_chans",
        str(in_chans),
    ]
    expect(ViTTrainer, argv, capsys, 2, f"--in_chans={in_chans}", f"--data_type {data_type}", f"{channels} channel")
    assert not os.path.exists(tmp_path / "runs")


def test_the_channel_table_matches_the_data(tmp_path):
    from data.classification import data_channels

    write_mnist(str(tmp_path / "mnist"))
    two_classes(tmp_path / "images")
    for data_type, data_dir in (("Digits", None), ("MNIST", tmp_path / "mnist"), ("ImageFolder", tmp_path / "images")):
        args = make_args(["--data_type", data_type, *(["--data_dir", str(data_dir)] if data_dir else [])])
        assert build_classification_datasets(args).input_shape[0] == data_channels(data_type)


def test_in_chans_is_checked_against_a_tasks_own_data_too():
    from trainers.vit_trainer import ViTTrainer

    args = argparse.Namespace(model_type="vit_ti_16", in_chans=3, patch_size=8, drop_path=0.0, dropout=0.0)
    with pytest.raises(ConfigError, match=re.escape("--in_chans=3: the data gives images of 1 channel")):
        ViTTrainer.model_for(args, (1, 16, 16), 2)  # e.g. a subclass's build_datasets, not --data_type's
    assert ViTTrainer.model_for(argparse.Namespace(**{**vars(args), "in_chans": 0}), (1, 16, 16), 2)


def test_a_folder_too_small_for_a_test_image_is_one_line_naming_it(tmp_path, capsys):
    from test_bad_input import expect
    from trainers.vanilla_trainer import VanillaTrainer

    two_classes(tmp_path / "images", per_class=1)  # --test_fraction 0.2 of 2 images rounds to none
    argv = [
        "--output_dir",
        str(tmp_path / "runs"),
        "--gpu_devices",
        "cpu",
        "--data_type",
        "ImageFolder",
        "--data_dir",
        str(tmp_path / "images"),
        "--image_size",
        "8",
        "--epochs",
        "1",
    ]
    expect(VanillaTrainer, argv, capsys, 1, f"--data_dir {tmp_path / 'images'}", "no test image", "at least 3 images")


def test_no_test_split_trains_and_skips_the_test(tmp_path):
    from trainers.vanilla_trainer import VanillaTrainer

    trainer = VanillaTrainer.from_argv(
        [
            "--output_dir",
            str(tmp_path),
            "--gpu_devices",
            "cpu",
            "--max_steps",
            "2",
            "--train_val_sample_rate",
            "0.1",
            "--test_fraction",
            "0",
        ]
    )
    assert trainer.fit() == {}
    assert not os.path.exists(os.path.join(trainer.run_dir, "test_metrics.json"))
