"""Acceptance tests of the uint8 input pipeline: datasets hand out uint8 pixels, the device makes floats.

What is pinned here (CPU; the copy-ahead case on CUDA skips without a GPU):

* the uint8 path gives the float path's normalised values: image files, in-memory sets, Digits;
* the evaluation crop is "resize the shorter side to floor(image_size / crop_pct), centre-crop
  image_size", pixel for pixel, and a predictor's ``apply_described`` repeats it exactly;
* random-resized-crop boxes stay within ``--scale`` and ``--ratio`` (or are torchvision's fallback);
* ``InputStage.prefetch`` keeps batches and their order;
* Mixup / CutMix targets are class probabilities that sum to 1;
* ``train/data_time`` and ``train/step_time`` are logged, and the slow-data warning comes once;
* a sample's augmentation does not depend on ``--num_workers``.
"""

import csv
import math
import os
import time

import numpy as np
import pytest
import torch
from PIL import Image
from torch.utils.data import DataLoader, Dataset
from torchvision.transforms import v2

from base.loop.input_stage import InputStage
from conftest import ToyTrainer
from data import transforms
from data.classification import InMemoryImages, _load_digits, digits_arrays
from data.images import ImageFiles
from trainers.vanilla_trainer import VanillaTrainer
from trainers.vit_trainer import ViTTrainer

CPU = torch.device("cpu")
#: float32 rounding of (x / 255 - mean) / std for std >= 0.2: the uint8 path must be the float path up to this.
#: (One grey level, 1 / 255 / std, is the requirement; a wrong scale such as x / 256 stays within it.)
FLOAT32_ERROR = 1e-5


def by_hand(pixels, mean, std):
    """The float path, in float64: uint8 ``(N, C, H, W)`` -> ``(x / 255 - mean) / std`` per channel."""
    mean = torch.tensor(mean, dtype=torch.float64).view(1, -1, 1, 1)
    std = torch.tensor(std, dtype=torch.float64).view(1, -1, 1, 1)
    return (pixels.double() / 255 - mean) / std


def random_pixels(*shape, seed=0):
    """uint8 noise of ``shape``: every pixel differs from its neighbours, so a misplaced pixel shows."""
    return torch.randint(0, 256, shape, dtype=torch.uint8, generator=torch.Generator().manual_seed(seed))


# ----------------------------------------------------------------- 1. uint8 path == float path
@pytest.mark.parametrize("suffix", ["png", "jpg"])
@pytest.mark.parametrize(
    "mode, mean, std", [("RGB", transforms.IMAGENET_MEAN, transforms.IMAGENET_STD), ("L", [0.5], [0.5])]
)
def test_image_file_through_the_uint8_path_gives_the_float_paths_values(tmp_path, suffix, mode, mean, std):
    path = tmp_path / f"photo.{suffix}"
    Image.fromarray(random_pixels(30, 40, 3).numpy()).save(path)
    dataset = ImageFiles([(path, 0), (path, 1)], transforms.to_uint8(), mode)
    images, labels = next(iter(DataLoader(dataset, batch_size=2)))
    assert images.dtype == torch.uint8 and images.shape == (2, len(mean), 30, 40)

    out, moved_labels = InputStage(CPU, mean, std).to_device((images, labels))

    # The float path as it was: the decoded file's pixels (what Pillow shows) / 255, then the statistics.
    with Image.open(path) as image:
        decoded = torch.from_numpy(np.array(image.convert(mode))).reshape(30, 40, -1).permute(2, 0, 1)
    expected = by_hand(decoded.unsqueeze(0).expand(2, -1, -1, -1), mean, std)
    assert out.dtype == torch.float32 and out.shape == expected.shape
    assert (out.double() - expected).abs().max() <= FLOAT32_ERROR
    assert torch.equal(moved_labels, torch.tensor([0, 1]))


@pytest.mark.parametrize("channels_last", [False, True])
def test_in_memory_batch_through_the_uint8_path_gives_the_float_paths_values(channels_last):
    pixels = random_pixels(10, 3, 8, 8)
    dataset = InMemoryImages(pixels, torch.arange(10) % 3)
    batch = next(iter(DataLoader(dataset, batch_size=10)))  # __getitems__: one indexing op
    mean, std = [0.4, 0.5, 0.6], [0.2, 0.25, 0.3]

    images, labels = InputStage(CPU, mean, std, channels_last=channels_last).to_device(batch)

    assert (images.double() - by_hand(pixels, mean, std)).abs().max() <= FLOAT32_ERROR
    assert images.is_contiguous(memory_format=torch.channels_last) == channels_last
    assert torch.equal(labels, torch.arange(10) % 3)


def test_digits_are_stored_within_half_a_grey_level_of_x_over_16():
    raw, labels = digits_arrays()  # 0..16
    stored = _load_digits()
    assert stored.images.dtype == torch.uint8 and stored.images.shape == (1797, 1, 8, 8)
    assert torch.equal(stored.labels, torch.from_numpy(labels))

    new = InputStage(CPU, [0.5], [0.5]).normalise(stored.images)
    old = (torch.from_numpy(raw).double().unsqueeze(1) / 16 - 0.5) / 0.5
    # Half a grey level of [0, 1] pixels is 0.5 / 255; after / std (0.5) it is 1 / 255.
    assert (new.double() - old).abs().max() <= 1 / 255 + FLOAT32_ERROR
    assert (new[old == 1] - 1).abs().max() <= FLOAT32_ERROR  # 16 -> 255 -> 1
    assert torch.equal(new[old == -1], -torch.ones_like(new[old == -1]))  # 0 -> 0 -> -1


# ----------------------------------------------------------------- 2. the evaluation crop
@pytest.mark.parametrize("width, height", [(500, 375), (375, 500)])
@pytest.mark.parametrize("image_size, crop_pct", [(224, 0.875), (33, 0.9)])
def test_eval_transform_resizes_the_shorter_side_then_crops_the_centre(width, height, image_size, crop_pct):
    pixels = random_pixels(3, height, width)
    side = math.floor(image_size / crop_pct)  # 224 / 0.875 = 256; 33 / 0.9 = 36.7 -> 36
    long_side = int(side * max(width, height) / min(width, height))  # torchvision truncates the long side
    size = [side, long_side] if height <= width else [long_side, side]
    resized = v2.functional.resize(pixels, size, antialias=True)  # bilinear, antialiased
    # torchvision's center_crop anchor is int(round((H - s) / 2.0)): Python's round, halves to even
    # (500x375 at 224: (341 - 224) / 2 = 58.5 -> 58; at 33: (48 - 33) / 2 = 7.5 -> 8, (36 - 33) / 2 = 1.5 -> 2).
    top, left = round((size[0] - image_size) / 2), round((size[1] - image_size) / 2)
    expected = resized[:, top : top + image_size, left : left + image_size]

    pipeline = transforms.eval_transform("rrc", image_size, crop_pct)
    assert torch.equal(pipeline(pixels), expected)
    # A decoded file (a PIL image, as ImageFiles hands it in) gives the same pixels.
    assert torch.equal(pipeline(Image.fromarray(pixels.permute(1, 2, 0).numpy())), expected)


@pytest.mark.parametrize(
    "crop, width, height", [("rrc", 500, 375), ("rrc", 40, 30), ("squash", 40, 30), ("squash", 16, 16)]
)
def test_described_eval_transform_gives_the_eval_transforms_pixels(crop, width, height):
    # What a predictor runs from the model card, on the file's uint8 tensor.
    pixels = random_pixels(3, height, width)
    image_size, crop_pct = 16, 0.875
    described = transforms.describe_eval(crop, image_size, crop_pct)
    pipeline = transforms.eval_transform(crop, image_size, crop_pct)

    predicted = transforms.apply_described(pixels, described)

    assert predicted.shape == (3, image_size, image_size) and predicted.dtype == torch.uint8
    assert torch.equal(predicted, pipeline(pixels))
    assert torch.equal(predicted, pipeline(Image.fromarray(pixels.permute(1, 2, 0).numpy())))


# ----------------------------------------------------------------- 3. random-resized-crop boxes
def fallback_box(height, width, ratio):
    """torchvision's box when 10 draws do not fit: the centred crop of the image at the nearest allowed ratio."""
    if width / height < ratio[0]:
        h, w = int(round(width / ratio[0])), width
    elif width / height > ratio[1]:
        h, w = height, int(round(height * ratio[1]))
    else:
        h, w = height, width
    return {"top": (height - h) // 2, "left": (width - w) // 2, "height": h, "width": w}


def drawn(box, area, scale, ratio):
    """Whether ``box`` can be a draw: ``w = round(sqrt(A * r))``, ``h = round(sqrt(A / r))`` with ``A / area``
    in ``scale`` and ``r`` in ``ratio``. Rounding puts ``sqrt(A r)`` in ``[w - 1/2, w + 1/2]`` and ``sqrt(A / r)``
    in ``[h - 1/2, h + 1/2]``, so ``A`` (their product) and ``r`` (their quotient) lie in the intervals below."""
    h, w = box["height"], box["width"]
    return (
        (w + 0.5) * (h + 0.5) >= scale[0] * area
        and (w - 0.5) * (h - 0.5) <= scale[1] * area
        and (w + 0.5) / (h - 0.5) >= ratio[0]
        and (w - 0.5) / (h + 0.5) <= ratio[1]
    )


# 40x30 with ratios 1/5..5: most draws fit, about 4 % of boxes fall back to the whole image (area share 1,
# above --scale's 0.8). 90x20 and 20x90 with ratios 1/2..2: no draw fits, every box is the fallback (the
# centred crop at the ratio's limit, area share 0.44, below --scale's 0.5).
@pytest.mark.parametrize(
    "width, height, ratio, draws, fallbacks",
    [(40, 30, (0.2, 5.0), True, True), (90, 20, (0.5, 2.0), False, True), (20, 90, (0.5, 2.0), False, True)],
)
def test_random_resized_crop_boxes_stay_within_scale_and_ratio(width, height, ratio, draws, fallbacks):
    scale = (0.5, 0.8)
    pipeline = transforms.train_transform("rrc", 16, scale, ratio)
    crop = next(t for t in pipeline.transforms if isinstance(t, v2.RandomResizedCrop))
    image = random_pixels(3, height, width)
    fallback = fallback_box(height, width, ratio)
    assert not drawn(fallback, height * width, scale, ratio)  # else the two kinds of box could not be told apart
    torch.manual_seed(0)
    kinds = set()
    for _ in range(2000):
        box = crop.make_params([image])
        if box == fallback:
            kinds.add("fallback")
            continue
        kinds.add("draw")
        assert drawn(box, height * width, scale, ratio), box
        assert 0 <= box["top"] <= height - box["height"] and 0 <= box["left"] <= width - box["width"], box
    assert kinds == {kind for kind, seen in (("draw", draws), ("fallback", fallbacks)) if seen}
    assert pipeline(image).shape == (3, 16, 16) and pipeline(image).dtype == torch.uint8


# ----------------------------------------------------------------- 4. copy-ahead
def batches_of_every_kind():
    """A tuple batch, an unreadable batch (None), a dict batch and a bare tensor; pinned where CUDA can pin."""
    pin = torch.cuda.is_available()

    def uint8(*shape, seed=0):
        pixels = random_pixels(*shape, seed=seed)
        return pixels.pin_memory() if pin else pixels

    return [
        (uint8(4, 3, 8, 8), torch.arange(4)),
        None,
        {"image": uint8(2, 3, 8, 8, seed=1), "mask": uint8(2, 8, 8)},
        (uint8(4, 3, 8, 8, seed=2), torch.arange(4, 8)),
        uint8(3, 3, 8, 8, seed=3),
    ]


def test_prefetch_on_the_cpu_passes_the_batches_through():
    batches = batches_of_every_kind()
    out = list(InputStage(CPU, [0.5], [0.5]).prefetch(iter(batches)))
    assert len(out) == len(batches) and all(a is b for a, b in zip(out, batches))


def assert_same_batch(a, b):
    if torch.is_tensor(a):
        assert torch.is_tensor(b) and a.device == b.device and a.dtype == b.dtype and torch.equal(a, b)
    elif isinstance(a, dict):
        assert a.keys() == b.keys()
        for key in a:
            assert_same_batch(a[key], b[key])
    elif isinstance(a, (tuple, list)):
        assert type(a) is type(b) and len(a) == len(b)
        for x, y in zip(a, b):
            assert_same_batch(x, y)
    else:
        assert a is None and b is None


@pytest.mark.skipif(not torch.cuda.is_available(), reason="copy-ahead runs on CUDA only")
def test_prefetch_on_cuda_gives_to_devices_values_in_order_one_batch_ahead():
    stage = InputStage(torch.device("cuda"), transforms.IMAGENET_MEAN, transforms.IMAGENET_STD)
    batches, pulled = batches_of_every_kind(), []

    def source():
        for i, batch in enumerate(batches):
            pulled.append(i)
            yield batch

    out = []
    for i, batch in enumerate(stage.prefetch(source())):
        assert pulled[-1] == min(i + 1, len(batches) - 1)  # the next batch is on its way while this one computes
        out.append(batch)
    assert len(out) == len(batches)
    for got, batch in zip(out, batches):
        assert_same_batch(got, None if batch is None else stage.to_device(batch))
    assert out[0][0].dtype == torch.float32 and out[0][0].is_cuda


# ----------------------------------------------------------------- 5. Mixup / CutMix on the device
@pytest.mark.parametrize("flag", ["--mixup_alpha", "--cutmix_alpha"])
def test_mixed_targets_are_class_probabilities_that_sum_to_one(tmp_path, flag):
    trainer = ViTTrainer.from_argv(
        [
            "--output_dir",
            str(tmp_path),
            "--gpu_devices",
            "cpu",
            "--data_type",
            "Digits",
            "--patch_size",
            "4",
            "--batch_size",
            "32",
            flag,
            "1.0",
        ]
    )
    trainer.build()
    images, labels = next(iter(trainer.loaders["train"]))
    plain, _ = trainer.to_device((images, labels))  # the unmixed model input
    torch.manual_seed(0)

    mixed, targets = trainer.inputs.train_input((images, labels))

    assert mixed.shape == plain.shape == (32, 1, 8, 8) and mixed.dtype == torch.float32
    assert targets.shape == (32, 10) and targets.dtype == torch.float32
    assert torch.allclose(targets.sum(1), torch.ones(32), atol=1e-6) and targets.min() >= 0
    # torchvision pairs image i with image i - 1, one weight lam for the batch: targets lam / 1 - lam.
    partner = plain.roll(1, 0)
    i = next(i for i in range(32) if labels[i] != labels[i - 1])  # a row whose two classes differ
    lam = float(targets[i, labels[i]])
    expected = lam * torch.nn.functional.one_hot(labels, 10) + (1 - lam) * torch.nn.functional.one_hot(
        labels.roll(1, 0), 10
    )
    assert torch.allclose(targets, expected.float(), atol=1e-6) and 0 < lam < 1
    if flag == "--mixup_alpha":
        assert torch.allclose(mixed, lam * plain + (1 - lam) * partner, atol=1e-5)
    else:  # every pixel is its own image's or the partner's; the partner's box covers 1 - lam of the image
        own, other = mixed == plain, (mixed == partner) & (mixed != plain)
        assert bool((own | other).all())
        assert other.flatten(1).sum(1).max() <= round((1 - lam) * 64)


# ----------------------------------------------------------------- 6. data time
def scalar_rows(trainer, name):
    with open(os.path.join(trainer.run_dir, "scalars.csv")) as f:
        return {int(step): float(value) for step, row_name, value in list(csv.reader(f))[1:] if row_name == name}


def test_data_time_and_step_time_are_logged_each_window(tmp_path):
    trainer = VanillaTrainer.from_argv(
        [
            "--output_dir",
            str(tmp_path),
            "--gpu_devices",
            "cpu",
            "--max_steps",
            "6",
            "--log_every_steps",
            "2",
            "--batch_size",
            "32",
            "--num_workers",
            "0",
        ]
    )
    trainer.fit()
    data, step = scalar_rows(trainer, "train/data_time"), scalar_rows(trainer, "train/step_time")
    assert sorted(data) == sorted(step) == sorted(scalar_rows(trainer, "train/loss")) == [2, 4, 6]
    for n in data:
        assert 0 <= data[n] <= step[n], (n, data[n], step[n])


class SlowPoints(Dataset):
    """Wraps a dataset; every item takes 10 ms to read, far longer than the toy's step (80 ms a batch: above the
    50 ms a window must wait before the log warns)."""

    def __init__(self, dataset):
        self.dataset = dataset

    def __len__(self):
        return len(self.dataset)

    def __getitem__(self, index):
        time.sleep(0.01)
        return self.dataset[index]


class SlowDataToyTrainer(ToyTrainer):
    def build_datasets(self):
        sets = super().build_datasets()
        return {**sets, "train": SlowPoints(sets["train"])}


def test_slow_data_is_warned_about_once(tmp_path):
    trainer = SlowDataToyTrainer.from_argv(
        ["--output_dir", str(tmp_path), "--gpu_devices", "cpu", "--log_every_steps", "1", "--num_workers", "0"]
    )
    trainer.fit()  # 10 logging windows, each mostly spent reading 8 slow items
    data, step = scalar_rows(trainer, "train/data_time"), scalar_rows(trainer, "train/step_time")
    # (A window that starts the clock, after a validation, counts no wait: its wait came before the clock.)
    assert len(data) == 10 and all(0 <= data[n] <= step[n] for n in data)
    assert max(data[n] / step[n] for n in data) > 0.5
    with open(os.path.join(trainer.run_dir, f"Toy_{trainer.timestamp}_log.txt")) as f:
        log = f.read()
    assert log.count("the loop waited for data") == 1
    assert "try --num_workers auto (or N > 0)" in log


@pytest.mark.parametrize(
    "num_workers, device, hint",
    [
        ("auto", "cpu", "try --num_workers N (auto chose 0 on the CPU)"),
        (0, "cuda", "try --num_workers auto (or N > 0)"),
        (3, "cpu", "try more than --num_workers 3,"),
        ("auto", "cuda", "try more than --num_workers {auto} (auto chose {auto}),"),
    ],
)
def test_slow_data_note_names_the_workers_the_run_has(num_workers, device, hint):
    from types import SimpleNamespace

    from base.config.trainer_flags import resolve_workers
    from base.loop.validation import data_wait_note

    # resolve_workers reads only the device's type: no GPU needed to ask what auto picks on CUDA.
    auto = resolve_workers("auto", torch.device("cuda"))
    note = data_wait_note(0.42, SimpleNamespace(num_workers=num_workers, data_on_device=False), torch.device(device))
    assert note.startswith("the loop waited for data 42% of the last logging window")
    assert hint.format(auto=auto) in note


# ----------------------------------------------------------------- 7. augmentation and workers
def test_augmentation_is_the_same_with_0_and_2_workers(tmp_path):
    # --train_crop rrc draws a random crop per sample; each sample is seeded from (seed, epoch, index)
    # in the main process as in a worker, so the crops, hence the weights, do not depend on --num_workers.
    def train(workers):
        trainer = VanillaTrainer.from_argv(
            [
                "--output_dir",
                str(tmp_path / str(workers)),
                "--gpu_devices",
                "cpu",
                "--deterministic",
                "--epochs",
                "1",
                "--train_val_sample_rate",
                "0.3",
                "--batch_size",
                "32",
                "--train_crop",
                "rrc",
                "--scale",
                "0.3",
                "1",
                "--num_workers",
                str(workers),
            ]
        )
        trainer.fit()
        return trainer.model.state_dict()

    without, with_workers = train(0), train(2)
    for key, value in without.items():
        assert torch.equal(value, with_workers[key]), key
