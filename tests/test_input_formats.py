"""Issue 9, data side: inputs that used to train on silent nonsense are now read right or refused.

Every test writes tiny files under ``tmp_path`` and reads them through the real loading code:
16-bit, 32-bit, float, alpha, palette, CMYK and EXIF-rotated images read as the same picture as
their 8-bit equivalent; hidden files and folders are not classes or images; a one-class folder,
an image size the model cannot take and ``--val_fraction 0`` are refused; an unreadable file is
listed once in ``bad_images.txt`` however many epochs meet it.
"""

import argparse
import os
import re

import numpy as np
import pytest
import torch
from PIL import Image
from torch.utils.data import DataLoader

from base.config.parse import ConfigError
from base.config.study_flags import add_study_arguments
from base.errors import BadImageError, DataError
from base.loop.bad_data import BadSampleFilter, collate_good_samples
from data.classification import add_data_arguments, build_classification_datasets, check_data_config
from data.images import ImageFiles, image_file_to_input, read_image
from data.input_recipe import OLD_NORMALIZE, card_input
from data.transforms import eval_transform
from model.classifiers import MIN_IMAGE_SIZE as CLASSIFIER_MIN, build_classifier
from model.zoo import MIN_IMAGE_SIZE as ZOO_MIN, build_zoo_model
from test_bad_input import run_main  # pytest puts tests/ on sys.path
from trainers.vanilla_trainer import VanillaTrainer
from trainers.vit_trainer import ViTTrainer

H, W = 10, 16  # not square, so a rotation shows in the shape


def make_args(argv=()):
    """Parse ``argv`` with the data flags plus ``--seed``, as a trainer would."""
    parser = argparse.ArgumentParser()
    add_data_arguments(parser)
    parser.add_argument("--seed", type=int, default=0)
    add_study_arguments(parser)  # --folds/--fold
    return parser.parse_args(list(argv))


def gray():
    """uint8 (H, W): a diagonal ramp over most of 0..255 (a blank or clipped read cannot match it)."""
    return (np.add.outer(np.arange(H) * 9, np.arange(W) * 10) + 5).astype(np.uint8)


def colour():
    """uint8 (H, W, 3): smooth ramps per channel, so JPEG keeps them within a few levels."""
    y, x = np.mgrid[0:H, 0:W]
    return np.stack([40 + 12 * x, 30 + 18 * y, 200 - 8 * x - 5 * y], -1).astype(np.uint8)


def sixteen_bit():
    """uint16 (H, W) that scales back to :func:`gray`: ``v`` in the high byte, 128 in the low one.

    ``(256 v + 128) * 255 / 65535`` rounds to ``v``, while a reader that keeps the low byte
    gets 128 everywhere and one that clips gets 255.
    """
    return gray().astype(np.uint16) * 256 + 128


def write_16bit(path):
    Image.fromarray(sixteen_bit()).save(path)
    return "I;16", Image.fromarray(gray())


def write_32bit_int(path):
    Image.fromarray(sixteen_bit().astype(np.int32)).save(path)  # TIFF keeps mode "I"
    return "I", Image.fromarray(gray())


def write_float(path):
    Image.fromarray(gray().astype(np.float32) / 255).save(path)
    return "F", Image.fromarray(gray())


def write_gray_alpha(path):
    alpha = np.where(np.arange(W) < W // 2, 0, 255).astype(np.uint8) * np.ones((H, 1), np.uint8)
    Image.fromarray(np.stack([gray(), alpha], -1)).save(path)  # (H, W, 2) uint8: mode "LA"
    return "LA", Image.fromarray(gray())


def write_palette_transparent(path):
    palette = np.array([[0, 0, 0], [250, 20, 20], [20, 250, 20], [20, 20, 250]], np.uint8)
    index = (np.add.outer(np.arange(H), np.arange(W)) % 4).astype(np.uint8)
    image = Image.frombytes("P", (W, H), index.tobytes())
    image.putpalette(palette.flatten().tolist())
    image.save(path, transparency=0)  # index 0 transparent: its stored colour (black) is what we keep
    return "P", Image.fromarray(palette[index])


def write_cmyk_jpeg(path):
    rgb = Image.fromarray(colour())
    rgb.convert("CMYK").save(path, "JPEG", quality=95, subsampling=0)
    return "CMYK", rgb


def write_exif_rotated_jpeg(path):
    upright = Image.fromarray(colour())
    exif = Image.Exif()
    exif[0x0112] = 6  # Orientation 6: "rotate 90 degrees clockwise to display"
    upright.transpose(Image.Transpose.ROTATE_90).save(path, "JPEG", quality=95, subsampling=0, exif=exif)
    return "RGB", upright


# name -> (file name, writer, max |difference| in 0..255 levels against the 8-bit equivalent)
FORMATS = {
    "16-bit PNG": ("gray16.png", write_16bit, 1),
    "32-bit int TIFF": ("gray32.tif", write_32bit_int, 1),
    "float TIFF": ("float.tif", write_float, 1),
    "gray+alpha PNG": ("la.png", write_gray_alpha, 1),
    "palette PNG with transparency": ("palette.png", write_palette_transparent, 1),
    "CMYK JPEG": ("cmyk.jpg", write_cmyk_jpeg, 12),  # JPEG's own loss, in another colour space
    "EXIF-rotated JPEG": ("rotated.jpg", write_exif_rotated_jpeg, 12),
}


@pytest.fixture(params=sorted(FORMATS))
def image_pair(request, tmp_path):
    """``(path of the odd file, path of its 8-bit equivalent as a lossless PNG, tolerance)``."""
    name, writer, tolerance = FORMATS[request.param]
    path = str(tmp_path / name)
    mode, equivalent = writer(path)
    with Image.open(path) as written:  # the file really is in the mode under test
        assert written.mode == mode, f"{request.param}: wrote {written.mode}"
    reference = str(tmp_path / "reference.png")
    equivalent.save(reference)
    return path, reference, tolerance


def levels(x):
    """uint8 pixels as 0..255 levels (float64)."""
    assert x.dtype == torch.uint8
    return x.double()


def squash(side):
    """ImageFiles' evaluation pipeline that resizes to ``side`` x ``side``."""
    return eval_transform("squash", side)


def assert_same_picture(got, expected, tolerance):
    """Same shape, within ``tolerance`` levels, and not blank: the reference spans many levels."""
    got, expected = np.asarray(got, np.float64), np.asarray(expected, np.float64)
    assert got.shape == expected.shape
    assert np.abs(got - expected).max() <= tolerance + 1e-6
    assert got.std() > 20


@pytest.mark.parametrize("mode", ["RGB", "L"])
def test_read_image_gives_the_8bit_picture(image_pair, mode):
    path, reference, tolerance = image_pair
    assert_same_picture(read_image(path, mode), read_image(reference, mode), tolerance)


def test_image_folder_dataset_gives_the_8bit_picture(image_pair):
    path, reference, tolerance = image_pair
    got, _ = ImageFiles([(path, 0)], squash(8))[0]
    expected, _ = ImageFiles([(reference, 0)], squash(8))[0]
    assert_same_picture(levels(got), levels(expected), tolerance)


@pytest.mark.parametrize("channels", [1, 3])
def test_predict_input_gives_the_8bit_picture(image_pair, channels):
    path, reference, tolerance = image_pair
    recipe = card_input({"input_shape": [channels, H, W], "normalize": OLD_NORMALIZE})
    assert_same_picture(
        levels(image_file_to_input(path, recipe)), levels(image_file_to_input(reference, recipe)), tolerance
    )


@pytest.mark.parametrize(
    "pixels, found",
    [
        (np.full((4, 4), 200.0, np.float32), "200"),  # a float image in 0..255, not [0, 1]
        (np.full((4, 4), -3, np.int32), "-3"),
        (np.full((4, 4), 70000, np.int32), "70000"),
    ],
)
def test_32bit_pixels_of_unknown_scale_are_refused_naming_the_file(tmp_path, pixels, found):
    path = str(tmp_path / "odd.tif")
    Image.fromarray(pixels).save(path)
    with pytest.raises(BadImageError, match=re.escape(path) + ".*" + found):
        read_image(path)


def test_16bit_masks_read_with_labels_keep_their_values(tmp_path):
    path = str(tmp_path / "mask.png")
    mask = (np.arange(W) >= W // 2).astype(np.uint16) * np.ones((H, 1), np.uint16)  # 0/1, stored as 16-bit
    Image.fromarray(mask).save(path)
    np.testing.assert_array_equal(np.asarray(read_image(path, "L", labels=True)), mask)
    Image.fromarray(mask * 300).save(path)  # 0/300 is no 8-bit label
    with pytest.raises(BadImageError, match=re.escape(path) + ".*0..300"):
        read_image(path, "L", labels=True)


def write_png(path, value=0):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    Image.fromarray(np.full((6, 6, 3), value, np.uint8)).save(path)


def image_folder_args(root, *extra):
    return make_args(
        ["--data_type", "ImageFolder", "--data_dir", str(root), "--image_size", "8", "--test_fraction", "0", *extra]
    )


def test_a_one_class_image_folder_is_refused_naming_the_folder(tmp_path):
    write_png(str(tmp_path / "cat" / "0.png"))
    write_png(str(tmp_path / "cat" / "1.png"))
    write_png(str(tmp_path / ".ipynb_checkpoints" / "0.png"))  # hidden: not a second class
    with pytest.raises(DataError, match=re.escape(f"{tmp_path} has 1 class folder ['cat']") + ".*at least two"):
        build_classification_datasets(image_folder_args(tmp_path))


def test_hidden_files_and_folders_are_neither_classes_nor_images(tmp_path):
    for cls in ("cat", "dog"):
        for i in range(2):
            write_png(str(tmp_path / cls / f"{i}.png"))
    write_png(str(tmp_path / ".ipynb_checkpoints" / "0.png"))  # a hidden class folder
    write_png(str(tmp_path / "cat" / ".ipynb_checkpoints" / "0-checkpoint.png"))  # a hidden folder in a class
    (tmp_path / "cat" / "._0.png").write_bytes(b"\x00\x05\x16\x07 AppleDouble, not a PNG")  # macOS copy
    (tmp_path / "dog" / ".DS_Store").write_bytes(b"\x00\x00\x00\x01Bud1")
    data = build_classification_datasets(image_folder_args(tmp_path, "--val_fraction", "0.5"))
    assert data.class_names == ["cat", "dog"]
    pool = data.train.dataset
    assert sorted(os.path.relpath(p, tmp_path) for p, _ in pool.samples) == [
        os.path.join(c, f"{i}.png") for c in ("cat", "dog") for i in range(2)
    ]
    assert len([pool[i] for i in range(len(pool))]) == 4  # every listed file reads


def test_hidden_folders_in_test_are_not_extra_classes(tmp_path):
    for split in ("train", "test"):
        for cls in ("a", "b"):
            write_png(str(tmp_path / split / cls / "0.png"))
            write_png(str(tmp_path / split / cls / "1.png"))
    write_png(str(tmp_path / "test" / ".ipynb_checkpoints" / "0.png"))
    write_png(str(tmp_path / "test" / "a" / ".hidden" / "0.png"))
    data = build_classification_datasets(image_folder_args(tmp_path, "--val_fraction", "0.5"))
    assert sorted(label for _, label in data.test) == [0, 0, 1, 1]


def test_val_fraction_0_is_refused_with_the_reason():
    with pytest.raises(ConfigError) as info:
        check_data_config(make_args(["--val_fraction", "0"]))
    assert str(info.value) == (
        "--val_fraction=0.0: must be > 0: validation picks the best checkpoint and drives early stopping"
    )


def test_a_small_val_fraction_still_validates_on_one_sample(tmp_path):
    for cls in ("a", "b"):
        for i in range(2):
            write_png(str(tmp_path / cls / f"{i}.png"))
    data = build_classification_datasets(image_folder_args(tmp_path, "--val_fraction", "0.1"))  # 0.4 rounds to 0
    assert (len(data.train), len(data.val)) == (3, 1)


@pytest.mark.parametrize(
    "cls, argv, names",
    [
        (VanillaTrainer, ["--val_fraction", "0"], ["--val_fraction=0.0", "must be > 0"]),
        (VanillaTrainer, ["--model_type", "SmallCNN", "--image_size", "1"], ["--image_size=1", "at least 2x2"]),
        (ViTTrainer, ["--image_size", "12", "--patch_size", "8"], ["--image_size=12", "multiple of --patch_size=8"]),
        (ViTTrainer, ["--image_size", "4", "--patch_size", "8"], ["--image_size=4", "(at least 8)"]),
        (ViTTrainer, ["--data_type", "Digits", "--patch_size", "16"], ["--data_type='Digits'", "got 8x8"]),
        (ViTTrainer, ["--model_type", "swin_t", "--image_size", "2"], ["--image_size=2", "at least 4x4"]),
    ],
    ids=["val_fraction_0", "SmallCNN_1", "vit_12_patch_8", "vit_4_patch_8", "vit_Digits_patch_16", "swin_t_2"],
)
def test_sizes_the_model_cannot_take_are_refused_at_parse_time(tmp_path, capsys, cls, argv, names):
    write_png(str(tmp_path / "data" / "a" / "0.png"))
    data = [] if "--data_type" in argv else ["--data_type", "ImageFolder", "--data_dir", str(tmp_path / "data")]
    status, err = run_main(cls, ["--output_dir", str(tmp_path / "out"), "--gpu_devices", "cpu", *data, *argv], capsys)
    assert status == 2 and "Traceback" not in err
    assert all(name in err for name in names), err
    assert not os.path.exists(tmp_path / "out")  # refused before any run folder


def train_step(model, side):
    """One training forward/backward on a batch of two images (the loop never trains on a batch of one)."""
    model.train()
    model(torch.randn(2, 3, side, side)).sum().backward()


@pytest.mark.parametrize("name", sorted(CLASSIFIER_MIN) + sorted(ZOO_MIN))
def test_each_minimum_image_size_is_the_smallest_that_trains(name):
    minimum = CLASSIFIER_MIN.get(name) or ZOO_MIN[name]

    def build(side):
        torch.manual_seed(0)
        if name in CLASSIFIER_MIN:
            return build_classifier(name, (3, side, side), 2)
        return build_zoo_model(name, 2, image_size=max(side, 4))  # swin_t refuses < 4 itself

    train_step(build(minimum), minimum)
    if minimum > 1:
        with pytest.raises((ValueError, RuntimeError)):
            train_step(build(minimum - 1), minimum - 1)


def test_an_unreadable_file_is_listed_once_however_many_epochs_meet_it(tmp_path):
    good, broken = str(tmp_path / "good.png"), str(tmp_path / "broken.png")
    write_png(good)
    (tmp_path / "broken.png").write_bytes(b"not a png")
    log = tmp_path / "bad_images.txt"
    dataset = BadSampleFilter(ImageFiles([(good, 0), (broken, 1)], squash(8)), str(log))
    for workers in (0, 2, 2):  # three epochs; workers are new processes each time
        loader = DataLoader(dataset, batch_size=2, num_workers=workers, collate_fn=collate_good_samples)
        assert [len(labels) for _, labels in loader] == [1]
    assert log.read_text().splitlines() == [broken]
