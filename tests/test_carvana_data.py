"""The Carvana layout read through the real loading code: pairing, split by car, joint transforms, errors."""

import argparse
import os

import numpy as np
import pytest
import torch
from PIL import Image

from base.errors import BadImageError, DataError
from data.carvana import (
    CarvanaDataset,
    build_carvana_datasets,
    car_id,
    collate_segmentation,
    find_samples,
    split_by_car,
)
from data.make_synthetic_carvana import generate


def make_args(data_dir, **overrides):
    values = dict(
        data_dir=str(data_dir),
        img_scale=0.5,
        image_size=None,
        augment=True,
        val_fraction=0.2,
        test_fraction=0.2,
        train_val_sample_rate=1.0,
        test_sample_rate=1.0,
        seed=0,
        folds=0,
        fold=0,
    )
    values.update(overrides)
    return argparse.Namespace(**values)


@pytest.fixture(scope="module")
def carvana(tmp_path_factory):
    """10 synthetic cars x 3 views, 64x48 pixels, in the Kaggle layout."""
    root = tmp_path_factory.mktemp("carvana")
    generate(str(root), cars=10, views=3, width=64, height=48, seed=3)
    return root


def write_pair(root, name, image, mask, mask_suffix="_mask.gif"):
    """Write ``train/<name>.jpg`` and ``train_masks/<name><mask_suffix>`` from uint8 arrays."""
    os.makedirs(root / "train", exist_ok=True)
    os.makedirs(root / "train_masks", exist_ok=True)
    Image.fromarray(image).save(root / "train" / f"{name}.jpg", quality=95)
    Image.fromarray(mask).save(root / "train_masks" / f"{name}{mask_suffix}")
    return str(root / "train" / f"{name}.jpg"), str(root / "train_masks" / f"{name}{mask_suffix}")


def test_every_image_is_paired_with_its_own_mask(carvana):
    samples = find_samples(str(carvana))
    assert len(samples) == 30
    for image, mask in samples:
        stem = os.path.splitext(os.path.basename(image))[0]
        assert os.path.basename(mask) == f"{stem}_mask.gif"
        assert os.path.dirname(mask) == os.path.join(str(carvana), "train_masks")
    assert len({car_id(image) for image, _ in samples}) == 10


def test_split_is_by_car_covers_every_car_once_and_follows_the_seed(carvana):
    samples = find_samples(str(carvana))
    cars = split_by_car(samples, make_args(carvana))
    assert [len(cars[k]) for k in ("train", "val", "test")] == [6, 2, 2]
    assert sorted(cars["train"] + cars["val"] + cars["test"]) == sorted({car_id(i) for i, _ in samples})
    assert split_by_car(samples, make_args(carvana)) == cars
    assert split_by_car(samples, make_args(carvana, seed=1)) != cars
    data = build_carvana_datasets(make_args(carvana))
    for split in ("train", "val", "test"):
        views = {car_id(i) for i, _ in getattr(data, split).samples}
        assert views == set(cars[split])  # all 3 views of each car in this split, none elsewhere
        assert len(getattr(data, split)) == 3 * len(cars[split])


def test_sample_rates_keep_a_subset_of_cars_and_leave_test_alone(carvana):
    samples = find_samples(str(carvana))
    full, small = (
        split_by_car(samples, make_args(carvana)),
        split_by_car(samples, make_args(carvana, train_val_sample_rate=0.5, test_sample_rate=0.5)),
    )
    assert set(small["train"] + small["val"]) < set(full["train"] + full["val"])
    assert len(small["train"] + small["val"]) == 4 and len(small["test"]) == 1
    assert set(small["test"]) <= set(full["test"])
    assert split_by_car(samples, make_args(carvana, train_val_sample_rate=0.5))["test"] == full["test"]


def test_items_have_the_documented_shapes_and_values(carvana):
    data = build_carvana_datasets(make_args(carvana))
    assert data.input_size == (24, 32)  # 48x64 at --img_scale 0.5
    item = data.train[0]
    assert set(item) == {"image", "mask"}
    assert item["image"].shape == (3, 24, 32) and item["image"].dtype == torch.uint8
    assert item["mask"].shape == (1, 24, 32) and set(item["mask"].unique().tolist()) == {0.0, 1.0}
    item = data.test[0]
    assert item["full_mask"].shape == (48, 64) and item["full_mask"].dtype == torch.uint8
    assert item["path"] == data.test.samples[0][0]
    mask = np.array(Image.open(data.test.samples[0][1]))  # palette indices 0/1
    assert torch.equal(item["full_mask"], torch.from_numpy(mask.astype(np.uint8)))
    # At the file's own size (no resize) the image is the file's pixels (the device normalises them)
    whole = build_carvana_datasets(make_args(carvana, img_scale=1.0)).test[0]
    pixels = torch.from_numpy(np.array(Image.open(whole["path"]).convert("RGB"))).permute(2, 0, 1)
    assert torch.equal(whole["image"], pixels)
    sized = build_carvana_datasets(make_args(carvana, image_size=[20, 36]))
    assert sized.train[0]["image"].shape == (3, 20, 36) and sized.val[0]["mask"].shape == (1, 20, 36)


def test_joint_augmentation_moves_mask_and_image_together(tmp_path):
    # Left half red with mask 1, right half blue with mask 0: whatever crop/flip is drawn,
    # the mask must stay 1 exactly where the image is red.
    image = np.zeros((64, 96, 3), np.uint8)
    image[:, :48, 0], image[:, 48:, 2] = 255, 255
    mask = np.zeros((64, 96), np.uint8)
    mask[:, :48] = 255
    pair = write_pair(tmp_path, "aaaa_01", image, mask, "_mask.png")
    dataset = CarvanaDataset([pair], (32, 48), train=True, augment=True)
    torch.manual_seed(0)
    flips = set()
    for _ in range(20):
        item = dataset[0]
        red = item["image"][0] > item["image"][2]
        agree = (red == (item["mask"][0] > 0.5)).float().mean()
        assert agree > 0.97, float(agree)
        assert set(item["mask"].unique().tolist()) <= {0.0, 1.0}  # nearest-neighbour: still binary
        flips.add(bool(item["mask"][0, :, 0].mean() > 0.5))
    assert flips == {True, False}  # the flip really happened in some draws and not in others


def test_collate_keeps_full_masks_of_different_sizes_as_a_list():
    items = [
        {
            "image": torch.zeros(3, 4, 4),
            "mask": torch.zeros(1, 4, 4),
            "path": f"{i}.jpg",
            "full_mask": torch.zeros(5 + i, 7, dtype=torch.uint8),
        }
        for i in range(2)
    ]
    batch = collate_segmentation(items)
    assert batch["image"].shape == (2, 3, 4, 4) and batch["path"] == ["0.jpg", "1.jpg"]
    assert [tuple(m.shape) for m in batch["full_mask"]] == [(5, 7), (6, 7)]


# ------------------------------------------------------------------ errors that name the files
def test_missing_mask_names_the_image_and_the_expected_mask(tmp_path):
    image, mask = write_pair(tmp_path, "abc_01", np.zeros((32, 32, 3), np.uint8), np.zeros((32, 32), np.uint8))
    os.remove(mask)
    with pytest.raises(DataError) as info:
        find_samples(str(tmp_path))
    assert image in str(info.value) and mask in str(info.value)


def test_size_mismatch_names_both_files(tmp_path):
    pair = write_pair(tmp_path, "abc_01", np.zeros((32, 40, 3), np.uint8), np.zeros((32, 32), np.uint8))
    with pytest.raises(DataError) as info:
        CarvanaDataset([pair], (16, 16))[0]
    assert pair[0] in str(info.value) and pair[1] in str(info.value)


@pytest.mark.parametrize("values", [(0, 128), (0, 1, 255), (3,)])
def test_mask_values_other_than_0_1_or_0_255_name_both_files(tmp_path, values):
    mask = np.zeros((32, 32), np.uint8)
    for i, value in enumerate(values):
        mask[i * 8 : (i + 1) * 8] = value
    pair = write_pair(tmp_path, "abc_01", np.zeros((32, 32, 3), np.uint8), mask, "_mask.png")
    with pytest.raises(DataError, match="expected only 0/1 or 0/255") as info:
        CarvanaDataset([pair], (16, 16))[0]
    assert pair[0] in str(info.value) and pair[1] in str(info.value)


@pytest.mark.parametrize("peak", [1, 255])
def test_masks_of_0_1_and_0_255_read_the_same(tmp_path, peak):
    mask = np.zeros((32, 32), np.uint8)
    mask[4:20, 8:24] = peak
    pair = write_pair(tmp_path, "abc_01", np.zeros((32, 32, 3), np.uint8), mask, "_mask.png")
    full = CarvanaDataset([pair], (16, 16))[0]["full_mask"]
    assert int(full.sum()) == 16 * 16 and int(full.max()) == 1


def test_unreadable_mask_is_a_bad_image_naming_the_mask(tmp_path):
    pair = write_pair(tmp_path, "abc_01", np.zeros((32, 32, 3), np.uint8), np.zeros((32, 32), np.uint8))
    open(pair[1], "wb").close()  # zero bytes
    with pytest.raises(BadImageError) as info:
        CarvanaDataset([pair], (16, 16))[0]
    assert info.value.path == pair[1]


@pytest.mark.parametrize(
    "layout, expected", [((), "train"), (("train",), "train_masks"), (("train", "train_masks"), "no images")]
)
def test_wrong_layout_says_which_folder_it_expected(tmp_path, layout, expected):
    for folder in layout:
        os.makedirs(tmp_path / folder)
    (tmp_path / "readme.txt").write_text("not the data")
    with pytest.raises(DataError) as info:
        find_samples(str(tmp_path))
    message = str(info.value)
    assert expected in message and str(tmp_path) in message


def test_too_few_cars_to_split_says_so(tmp_path):
    for car in ("aa", "bb"):
        write_pair(tmp_path, f"{car}_01", np.zeros((32, 32, 3), np.uint8), np.zeros((32, 32), np.uint8))
    with pytest.raises(DataError, match="2 cars are too few"):
        build_carvana_datasets(make_args(tmp_path))


def test_too_small_a_scale_names_the_flag(carvana):
    with pytest.raises(DataError, match="--img_scale 0.1"):
        build_carvana_datasets(make_args(carvana, img_scale=0.1))


def test_a_16_bit_mask_of_0_and_1_is_read_as_labels_not_scaled_to_black(tmp_path):
    import numpy as np
    from PIL import Image

    from data.carvana import CarvanaDataset

    (tmp_path / "train").mkdir()
    (tmp_path / "train_masks").mkdir()
    Image.fromarray(np.full((16, 16, 3), 100, np.uint8)).save(tmp_path / "train" / "car_01.jpg")
    mask = np.zeros((16, 16), np.uint16)
    mask[4:12, 4:12] = 1
    Image.fromarray(mask).save(tmp_path / "train_masks" / "car_01_mask.png")  # mode I;16
    assert Image.open(tmp_path / "train_masks" / "car_01_mask.png").mode.startswith("I;16")
    dataset = CarvanaDataset(
        [(str(tmp_path / "train" / "car_01.jpg"), str(tmp_path / "train_masks" / "car_01_mask.png"))], size=(16, 16)
    )
    assert int(dataset[0]["mask"].sum()) == 64
