"""Contract tests for data/make_synthetic_carvana.py: Carvana's file layout, binary GIF masks, determinism, CLI."""

import os
import re
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from data.make_synthetic_carvana import generate, main

CARS, VIEWS, WIDTH, HEIGHT = 4, 3, 96, 64
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope="module")
def pairs(tmp_path_factory):
    """4 cars x 3 views at 96x64, seed 0; the returned ``(image, mask)`` list."""
    return generate(str(tmp_path_factory.mktemp("carvana")), CARS, VIEWS, WIDTH, HEIGHT, seed=0)


def read_bytes(path):
    """The content of the file at ``path``."""
    with open(path, "rb") as f:
        return f.read()


def test_file_names_and_folders_follow_the_kaggle_layout(pairs):
    assert len(pairs) == CARS * VIEWS and pairs == sorted(pairs)
    out = os.path.dirname(os.path.dirname(pairs[0][0]))
    assert sorted(os.listdir(os.path.join(out, "train"))) == sorted(os.path.basename(i) for i, _ in pairs)
    assert sorted(os.listdir(os.path.join(out, "train_masks"))) == sorted(os.path.basename(m) for _, m in pairs)
    views_by_car = {}
    for image, mask in pairs:
        match = re.fullmatch(r"([0-9a-f]{12})_(\d\d)\.jpg", os.path.basename(image))
        assert match, image
        assert os.path.basename(os.path.dirname(image)) == "train"
        assert mask == os.path.join(out, "train_masks", f"{match[1]}_{match[2]}_mask.gif")
        views_by_car.setdefault(match[1], []).append(match[2])
    assert len(views_by_car) == CARS
    assert all(sorted(v) == ["01", "02", "03"] for v in views_by_car.values())


def test_each_image_is_rgb_with_a_same_size_binary_palette_mask(pairs):
    for image_path, mask_path in pairs:
        with Image.open(image_path) as image, Image.open(mask_path) as mask:
            assert image.format == "JPEG" and image.mode == "RGB" and image.size == (WIDTH, HEIGHT)
            assert mask.format == "GIF" and mask.mode == "P" and mask.size == image.size
            indices = np.array(mask)
            assert set(np.unique(indices).tolist()) == {0, 1}
            assert np.array_equal(np.array(mask.convert("L")), 255 * indices)  # palette: 0 black, 1 white


def test_the_car_covers_a_sensible_share_and_turns_between_views(pairs):
    masks = [np.array(Image.open(m)) for _, m in pairs]
    shares = [m.mean() for m in masks]
    assert 0.10 <= min(shares) and max(shares) <= 0.60, shares
    for car in range(CARS):  # views 01..03 are 120 degrees apart: seen end-on the car is much narrower
        lengths = [np.ptp(np.nonzero(m.any(axis=0))[0]) + 1 for m in masks[car * VIEWS : (car + 1) * VIEWS]]
        assert max(lengths) / min(lengths) > 1.2, lengths


def test_every_image_has_its_own_background(pairs):
    images = [np.asarray(Image.open(i), dtype=np.float32) for i, _ in pairs]
    masks = [np.array(Image.open(m), dtype=bool) for _, m in pairs]
    for k in range(1, len(pairs)):
        outside = ~(masks[k] | masks[k - 1])
        assert np.abs(images[k] - images[k - 1])[outside].mean() > 10


def test_same_seed_gives_identical_bytes_and_another_seed_differs(pairs, tmp_path):
    again = generate(str(tmp_path / "again"), CARS, VIEWS, WIDTH, HEIGHT, seed=0)
    assert [os.path.basename(i) for i, _ in again] == [os.path.basename(i) for i, _ in pairs]
    for (i1, m1), (i2, m2) in zip(pairs, again):
        assert read_bytes(i1) == read_bytes(i2) and read_bytes(m1) == read_bytes(m2)
    other = generate(str(tmp_path / "other"), CARS, VIEWS, WIDTH, HEIGHT, seed=1)
    assert not {os.path.basename(i) for i, _ in other} & {os.path.basename(i) for i, _ in pairs}
    assert read_bytes(other[0][1]) != read_bytes(pairs[0][1])  # content differs, not only the names


@pytest.mark.parametrize(
    "kwargs, name",
    [
        ({"cars": 0}, "cars"),
        ({"views": 0}, "views"),
        ({"views": 17}, "views"),
        ({"width": 15}, "width"),
        ({"height": 8}, "height"),
    ],
)
def test_generate_rejects_bad_sizes_naming_the_argument(tmp_path, kwargs, name):
    with pytest.raises(ValueError, match=f"^{name} must be"):
        generate(str(tmp_path), **kwargs)
    assert not os.listdir(tmp_path)  # nothing written before the check


def test_cli_writes_the_files_and_exits_0(tmp_path):
    out = tmp_path / "cli"
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "data.make_synthetic_carvana",
            "--out",
            str(out),
            "--cars",
            "2",
            "--views",
            "2",
            "--width",
            "48",
            "--height",
            "32",
            "--seed",
            "3",
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    assert "wrote 4 " in done.stdout and str(out / "train") in done.stdout
    assert len(os.listdir(out / "train")) == 4 and len(os.listdir(out / "train_masks")) == 4
    in_process = generate(str(tmp_path / "lib"), 2, 2, 48, 32, seed=3)  # same bytes from another process
    for image, mask in in_process:
        assert read_bytes(image) == read_bytes(out / "train" / os.path.basename(image))
        assert read_bytes(mask) == read_bytes(out / "train_masks" / os.path.basename(mask))


@pytest.mark.parametrize(
    "argv, flag",
    [
        (["--cars", "0"], "--cars"),
        (["--cars", "2", "--views", "17"], "--views"),
        (["--cars", "2", "--width", "wide"], "--width"),
    ],
)
def test_cli_bad_value_exits_2_naming_the_flag(tmp_path, capsys, argv, flag):
    with pytest.raises(SystemExit) as exc:
        main(["--out", str(tmp_path / "bad")] + argv)
    assert exc.value.code == 2
    assert flag in capsys.readouterr().err
    assert not (tmp_path / "bad").exists()
