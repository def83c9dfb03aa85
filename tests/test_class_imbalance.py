"""Class imbalance: the training split's labels and class weights, --sampler weighted, focal loss, balanced accuracy.

The weighted sampler's resume parity is a case of tests/test_resume.py (``vanilla_weighted``,
``vanilla_weighted_device``).
"""

import warnings

import numpy as np
import pytest
import torch
from PIL import Image

from base.config.parse import parse_config
from base.errors import ConfigError
from base.loop.state import ResumableSampler, SeededSamples, check_sample_weights, trained_samples
from conftest import ToyTrainer
from data.classification import ClassificationData
from test_bad_input import error_line, run_main
from trainers.classification import class_weights, classification_sample_weights
from trainers.vanilla_trainer import VanillaTrainer
from trainers.vit_trainer import ViTTrainer
from utils.metrics import ClassificationMeter

DIGITS = ["--gpu_devices", "cpu", "--train_val_sample_rate", "0.2", "--batch_size", "32"]


def vanilla(tmp_path, *argv):
    """A VanillaTrainer on a fifth of Digits (259 training images), nothing built."""
    return VanillaTrainer.from_argv(["--output_dir", str(tmp_path), *DIGITS, *argv])


@pytest.fixture(scope="module")
def folder_20_6_2(tmp_path_factory):
    """An ImageFolder of 3 classes holding 20, 6 and 2 random 8x8 images."""
    root = tmp_path_factory.mktemp("imbalanced")
    gen = np.random.default_rng(0)
    for name, n in (("a", 20), ("b", 6), ("c", 2)):
        (root / name).mkdir()
        for i in range(n):
            Image.fromarray(gen.integers(0, 256, (8, 8, 3), dtype=np.uint8)).save(root / name / f"{i}.png")
    return root


def labels_read_from(dataset):
    """int64 labels of every item of ``dataset``, read through its items (decoding each image)."""
    return torch.tensor([int(dataset[i][1]) for i in range(len(dataset))])


def hand_inverse_frequency(labels, k):
    counts = np.bincount(labels.numpy(), minlength=k)
    present = counts > 0
    return np.where(present, len(labels) / (present.sum() * np.maximum(counts, 1)), 0.0)


# ------------------------------------------------------------------ labels and weights of a real split
def test_auto_class_weights_and_sample_weights_are_a_hand_count_of_the_training_split(tmp_path, caplog):
    trainer = vanilla(tmp_path, "--class_weights", "auto")
    trainer.build_datasets()
    labels = labels_read_from(trainer.data.train)  # what training reads, not the stored labels
    assert torch.equal(trainer.data.train_labels, labels) and len(labels) == 259
    expected = hand_inverse_frequency(labels, 10)
    with caplog.at_level("INFO"):
        weights = class_weights(trainer)
    assert weights.tolist() == pytest.approx(expected.tolist(), rel=1e-6)
    assert caplog.text.count("class weights (auto, inverse frequency on 259 training samples): ") == 1
    per_sample = classification_sample_weights(trainer.data)
    assert per_sample.dtype == torch.float64
    assert per_sample.tolist() == pytest.approx(expected[labels.numpy()].tolist(), rel=1e-6)


@pytest.mark.parametrize("folds", [0, 2])
def test_image_folder_train_labels_with_and_without_folds(tmp_path, folder_20_6_2, folds):
    argv = ["--data_type", "ImageFolder", "--data_dir", str(folder_20_6_2), "--image_size", "8"]
    argv += ["--test_fraction", "0", "--val_fraction", "0.25", "--folds", str(folds)]
    trainer = VanillaTrainer.from_argv(["--output_dir", str(tmp_path), "--gpu_devices", "cpu", *argv])
    trainer.build_datasets()
    labels = labels_read_from(trainer.data.train)
    assert torch.equal(trainer.data.train_labels, labels) and len(labels) in (14, 21)
    expected = hand_inverse_frequency(labels, 3)
    assert classification_sample_weights(trainer.data).tolist() == pytest.approx(expected[labels].tolist())


def test_multilabel_weights_take_the_rarest_positive_label():
    # 4 samples, 2 labels: positives per label 3 and 1, one sample without a positive label ("none": 1)
    labels = torch.tensor([[1.0, 0.0], [1.0, 1.0], [1.0, 0.0], [0.0, 0.0]])
    data = ClassificationData(None, None, None, 2, (1, 8, 8), ["x", "y"], multilabel=True, train_labels=labels)
    per_group = [5 / (3 * 3), 5 / (3 * 1), 5 / (3 * 1)]  # n_positives / (K+1 groups * count)
    expected = [per_group[0], per_group[1], per_group[0], per_group[2]]
    assert classification_sample_weights(data).tolist() == pytest.approx(expected)
    task = type("Task", (), {"data": data, "args": type("A", (), {"class_weights": "auto"})()})()
    assert class_weights(task).tolist() == pytest.approx([1 / 3, 3.0])  # negatives / positives


# ------------------------------------------------------------------ the weighted sampler
def class_shares(sampler, labels, epochs):
    drawn = []
    for epoch in range(epochs):
        sampler.set_epoch(epoch)
        drawn += list(sampler)
    return np.bincount(labels[drawn], minlength=3) / len(drawn)


def test_weighted_draws_approach_balanced_classes_where_random_order_does_not():
    labels = np.array([0] * 90 + [1] * 9 + [2] * 1)
    weights = torch.from_numpy(hand_inverse_frequency(torch.from_numpy(labels), 3)[labels])
    weighted = class_shares(ResumableSampler(100, seed=3, weights=weights), labels, 60)
    plain = class_shares(ResumableSampler(100, seed=3), labels, 60)
    # 6,000 draws: each share's standard deviation is about 0.006; 0.03 is five of them
    assert np.abs(weighted - 1 / 3).max() < 0.03, weighted
    assert np.abs(plain - 1 / 3).max() > 0.5, plain  # the check would catch an unweighted order


def test_the_draw_depends_only_on_seed_and_epoch():
    weights = torch.rand(50, dtype=torch.float64, generator=torch.Generator().manual_seed(0))

    def order(seed, epoch):
        sampler = ResumableSampler(50, seed=seed, weights=weights)
        sampler.set_epoch(epoch)
        return list(sampler)

    assert order(7, 2) == order(7, 2)
    assert order(7, 2) != order(7, 3) and order(7, 2) != order(8, 2)
    assert len(set(order(7, 2))) < 50  # with replacement


@pytest.mark.parametrize("start", [0, 5, 12])
def test_ranks_take_strided_shares_of_one_global_draw_from_the_start(start):
    weights = torch.linspace(0.1, 2.0, 29, dtype=torch.float64)
    whole = ResumableSampler(29, seed=1, weights=weights, with_epoch=True)
    whole.set_epoch(4)
    everything = list(whole)
    assert [p for _, _, p in everything] == list(range(29)) and {e for e, _, _ in everything} == {4}
    end = start + trained_samples(29 - start, 4, 2)
    for rank in (0, 1):
        share = ResumableSampler(29, seed=1, weights=weights, batch_size=4, rank=rank, world_size=2)
        share.set_epoch(4, start)
        assert list(share) == [i for _, i, _ in everything][start + rank : end : 2]
        assert len(share) == len(range(start + rank, end, 2))


@pytest.mark.parametrize(
    "weights, words",
    [
        (torch.ones(9), r"shape \(9,\), not \(10,\)"),
        (torch.tensor([1.0] * 9 + [-1.0]), "negative"),
        (torch.zeros(10), "only zero"),
        (torch.tensor([1.0] * 9 + [float("nan")]), "not finite"),
    ],
)
def test_weights_that_cannot_be_drawn_from_are_refused_in_one_line(weights, words):
    with pytest.raises(ConfigError, match=words) as info:
        check_sample_weights(weights, 10)
    assert str(info.value).startswith("--sampler weighted: ") and "\n" not in str(info.value)


# ------------------------------------------------------------------ refusals
def checked(cls, argv):
    args, _ = parse_config(cls, argv, check=False)
    cls.check_config(args)
    return args


def test_weighted_sampler_on_a_task_without_sample_weights_is_refused(tmp_path):
    with pytest.raises(ConfigError, match="--sampler='weighted': ToyTrainer gives no per-sample weights"):
        checked(ToyTrainer, ["--gpu_devices", "cpu", "--output_dir", str(tmp_path), "--sampler", "weighted"])


def test_focal_loss_with_label_smoothing_is_refused_and_vit_drops_its_default(tmp_path, capsys):
    argv = ["--gpu_devices", "cpu", "--output_dir", str(tmp_path), "--loss", "focal"]
    with pytest.raises(ConfigError, match="label_smoothing=0.1: not with --loss focal"):
        checked(VanillaTrainer, [*argv, "--label_smoothing", "0.1"])
    args, provenance = parse_config(ViTTrainer, [*argv, "--data_type", "Digits"])
    assert args.label_smoothing == 0.0 and provenance["label_smoothing"] == "--loss focal takes no label smoothing"
    status, err = run_main(VanillaTrainer, [*argv, "--label_smoothing", "0.1"], capsys)
    assert status == 2 and "--label_smoothing=0.1: not with --loss focal" in error_line(status, err)


def test_a_class_weight_list_of_the_wrong_length_is_refused(tmp_path):
    trainer = vanilla(tmp_path, "--class_weights", "1,2,3")
    trainer.build_datasets()
    with pytest.raises(ConfigError, match=r"--class_weights=\[1.0, 2.0, 3.0\]: needs one weight per class \(10\)"):
        class_weights(trainer)


# ------------------------------------------------------------------ losses and metrics
def test_focal_at_gamma_0_equals_weighted_cross_entropy_on_a_real_batch(tmp_path):
    focal = vanilla(tmp_path, "--loss", "focal", "--focal_gamma", "0", "--class_weights", "auto")
    ce = vanilla(tmp_path, "--class_weights", "auto")
    focal.build(), ce.build()
    images, labels = focal.to_device(next(iter(focal.loaders["train"])))
    with torch.no_grad():
        logits = focal.model(images)
    assert type(focal.loss_fn).__name__ == "FocalLoss" and type(ce.loss_fn).__name__ == "CrossEntropyLoss"
    assert float(focal.loss_fn(logits, labels)) == pytest.approx(float(ce.loss_fn(logits, labels)), rel=1e-6)
    assert float(ce.loss_fn(logits, labels)) != pytest.approx(float(torch.nn.functional.cross_entropy(logits, labels)))


def test_balanced_accuracy_is_sklearns_with_a_class_absent_from_the_labels():
    from sklearn.metrics import balanced_accuracy_score

    # 4 classes; class 3 is predicted twice but is never a label
    labels = torch.tensor([0, 0, 0, 0, 0, 0, 1, 1, 1, 2])
    preds = torch.tensor([0, 0, 0, 0, 1, 3, 1, 3, 1, 0])
    meter = ClassificationMeter(4)
    meter.update(torch.nn.functional.one_hot(preds[:6], 4).float(), labels[:6])
    meter.update(torch.nn.functional.one_hot(preds[6:], 4).float(), labels[6:])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # sklearn warns about the predicted class 3
        expected = 100 * balanced_accuracy_score(labels.numpy(), preds.numpy())
    metrics = meter.compute()
    assert metrics["balanced_acc"] == pytest.approx(expected) == pytest.approx(100 * (4 / 6 + 2 / 3 + 0) / 3)
    assert metrics["top1"] == pytest.approx(60.0)


def test_a_weighted_focal_run_validates_with_balanced_accuracy(tmp_path):
    trainer = vanilla(
        tmp_path, "--sampler", "weighted", "--class_weights", "auto", "--loss", "focal", "--max_steps", "3"
    )
    trainer.fit()
    row = trainer.last_metrics
    model, preds, labels = trainer.eval_model().eval(), [], []
    with torch.no_grad():
        for images, target in trainer.loaders["val"]:
            preds.append(model(trainer.to_device(images)).argmax(1))
            labels.append(target)
    from sklearn.metrics import balanced_accuracy_score

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        expected = 100 * balanced_accuracy_score(torch.cat(labels).numpy(), torch.cat(preds).numpy())
    assert row["step"] == 3 and row["val_balanced_acc"] == pytest.approx(expected)


def test_two_draws_of_one_sample_in_an_epoch_are_augmented_apart():
    class Noise(torch.utils.data.Dataset):
        def __len__(self):
            return 4

        def __getitem__(self, index):
            return torch.rand(3)  # stands for a random augmentation

    samples = SeededSamples(Noise(), seed=5)
    assert torch.equal(samples[0, 2, 1], samples[0, 2, 1]) and not torch.equal(samples[0, 2, 1], samples[0, 2, 3])
    assert torch.equal(samples[0, 2], samples[0, 2]) and not torch.equal(samples[0, 2], samples[1, 2])
