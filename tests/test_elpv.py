"""ELPV: the real solar-cell images of the elpv-dataset package, labelled and split as in the paper."""

import collections
import os

import pytest
import torch

from by_hand import top1_by_hand
from data.classification import build_classification_datasets
from data.elpv import _raw, elpv_labels, load_elpv, stratified_test_split
from evaluators.vanilla_evaluator import VanillaEvaluator
from evaluators.vit_evaluator import ViTEvaluator
from test_data import make_args
from trainers.vanilla_trainer import VanillaTrainer
from trainers.vit_trainer import ViTTrainer
from utils.metrics import accuracy_by_group


@pytest.fixture(scope="module")
def subsampled():
    """ELPV splits at 16x16 with subsampled train/val and test, so Subset indices are not 0..n-1."""
    return build_classification_datasets(
        make_args(
            [
                "--data_type",
                "ELPV",
                "--image_size",
                "16",
                "--elpv_task",
                "binary",
                "--train_val_sample_rate",
                "0.5",
                "--test_sample_rate",
                "0.5",
                "--seed",
                "3",
            ]
        )
    )


def test_labels_match_the_papers_class_counts():
    _, probs, types = _raw()
    assert len(probs) == 2624 and collections.Counter(types.tolist()) == {"poly": 1550, "mono": 1074}
    four = collections.Counter(elpv_labels(probs, "4class").tolist())
    assert four == {0: 1508, 1: 295, 2: 106, 3: 715}  # majority baseline 1508 / 2624 = 57.5%
    binary = collections.Counter(elpv_labels(probs, "binary").tolist())
    assert binary == {0: 1803, 1: 821}  # 1/3 counts as functional, 2/3 as defective: 68.7% functional


def test_test_split_is_a_quarter_of_every_stratum_and_follows_the_seed():
    _, probs, types = _raw()
    pool, test = stratified_test_split(probs, types, seed=0)
    assert sorted(pool + test) == list(range(2624)) and not set(pool) & set(test)
    assert len(test) == 656  # the paper's 25%: 1,968 train and 656 test cells
    strata = collections.Counter((round(float(probs[i]) * 3), str(types[i])) for i in range(2624))
    in_test = collections.Counter((round(float(probs[i]) * 3), str(types[i])) for i in test)
    for stratum, n in strata.items():
        assert abs(in_test[stratum] - 0.25 * n) < 1, stratum
    assert stratified_test_split(probs, types, seed=0) == (pool, test)
    assert stratified_test_split(probs, types, seed=1)[1] != test


def test_images_are_resized_real_cells():
    pool_x, _, pool_types, test_x, test_y, test_types, names = load_elpv("binary", 24, seed=0)
    assert pool_x.shape == (1968, 1, 24, 24) and pool_x.dtype == torch.uint8
    assert test_x.shape[0] == len(test_y) == len(test_types) == 656 and names == ["functional", "defective"]
    assert float(pool_x.float().std()) > 10  # real images, not blank
    assert set(pool_types) == {"mono", "poly"}


def test_elpv_builds_classification_splits_and_trains(tmp_path):
    data = build_classification_datasets(
        make_args(["--data_type", "ELPV", "--image_size", "16", "--elpv_task", "binary", "--val_fraction", "0.1"])
    )
    assert data.input_shape == (1, 16, 16) and data.num_classes == 2
    assert len(data.test) == 656 and len(data.train) + len(data.val) == 1968
    _, probs, types = _raw()
    _, test = stratified_test_split(probs, types, seed=0)
    assert collections.Counter(data.groups["test"]) == collections.Counter(str(types[i]) for i in test)
    image, label = data.train[0]
    assert image.shape == (1, 16, 16) and label in (0, 1)
    assert torch.equal(image, data.train.dataset.images[data.train.indices[0]])  # the stored uint8 cell
    trainer = VanillaTrainer.from_argv(
        [
            "--data_type",
            "ELPV",
            "--model_type",
            "SmallCNN",
            "--image_size",
            "16",
            "--max_steps",
            "4",
            "--output_dir",
            str(tmp_path),
            "--gpu_devices",
            "cpu",
        ]
    )
    metrics = trainer.fit()
    assert metrics["top1"] == pytest.approx(top1_by_hand(trainer), abs=1e-9) and trainer.global_step == 4
    results = VanillaEvaluator.from_argv(["--model_path", trainer.checkpointer.path("best")]).run()
    per_group, groups = results["per_group_top1"], collections.Counter(trainer.data.groups["test"])
    assert set(per_group) == {"mono", "poly"} and sum(groups.values()) == results["num_samples"]
    # The groups partition the split: their accuracies, weighted by size, give the overall top-1.
    assert sum(per_group[g] * n for g, n in groups.items()) / results["num_samples"] == pytest.approx(results["top1"])


def test_groups_are_each_samples_cell_type_in_split_order(subsampled):
    _, probs, types = _raw()
    pool, test = stratified_test_split(probs, types, seed=3)
    for split, raw_index in (("train", pool), ("val", pool), ("test", test)):
        dataset, groups = getattr(subsampled, split), subsampled.groups[split]
        assert dataset.indices != list(range(len(dataset)))  # subsampled: a forgotten index mapping shows
        # (label, type) of each sample: label from the dataset item, type from groups, both from the raw data.
        got = [(dataset[j][1], groups[j]) for j in range(len(dataset))]
        raw = [raw_index[i] for i in dataset.indices]
        expected = list(zip(elpv_labels(probs[raw], "binary").tolist(), (str(types[i]) for i in raw)))
        assert got == expected, split
    assert set(subsampled.groups["test"]) == {"mono", "poly"}


def test_no_groups_without_group_data():
    assert build_classification_datasets(make_args(["--data_type", "Digits"])).groups == {}


def test_accuracy_by_group_by_hand():
    preds, labels = [0, 1, 1, 0, 2, 3], [0, 1, 0, 0, 1, 3]
    groups = ["mono", "poly", "poly", "mono", "poly", "mono"]
    # mono: samples 0, 3, 5, all right; poly: samples 1, 2, 4, only 1 right
    assert accuracy_by_group(preds, labels, groups) == {"mono": 100.0, "poly": pytest.approx(100 / 3)}
    assert accuracy_by_group(torch.tensor([1]), torch.tensor([0]), ["poly"]) == {"poly": 0.0}
    with pytest.raises(ValueError, match="2 predictions, 2 labels, 1 groups"):
        accuracy_by_group([0, 1], [0, 1], ["mono"])


def test_vit_evaluator_reports_accuracy_per_cell_type_on_val(tmp_path, capsys):
    trainer = ViTTrainer.from_argv(
        [
            "--output_dir",
            str(tmp_path),
            "--image_size",
            "16",
            "--patch_size",
            "8",
            "--train_val_sample_rate",
            "0.1",
            "--test_sample_rate",
            "0.1",
            "--max_steps",
            "2",
            "--warmup_steps",
            "1",
            "--elpv_task",
            "binary",
            "--gpu_devices",
            "cpu",
        ]
    )
    trainer.fit()
    evaluator = ViTEvaluator.from_argv(["--model_path", trainer.checkpointer.path("best"), "--split", "val"])
    results = evaluator.run()
    loader = evaluator.task.loaders["val"]
    assert list(loader.sampler) == list(range(len(loader.dataset)))  # unshuffled: predictions in groups' order
    groups = evaluator.task.data.groups["val"]
    assert len(groups) == results["num_samples"] == len(trainer.datasets["val"])
    per_group = results["per_group_top1"]
    expected = sum(per_group[g] * n for g, n in collections.Counter(groups).items()) / len(groups)
    assert expected == pytest.approx(results["top1"]) and set(results["per_class_top1"]) == {"functional", "defective"}
    assert "per-group top-1 (%): mono" in capsys.readouterr().out


def test_resized_cells_are_cached_and_a_broken_cache_is_rebuilt(tmp_path, monkeypatch):
    import numpy as np

    from data import elpv

    monkeypatch.setenv("VISION_TRAINER_CACHE", str(tmp_path))
    first = elpv.load_elpv("binary", 12, 3)
    path = elpv.cache_path(12)
    assert os.path.dirname(path) == str(tmp_path) and os.path.isfile(path)
    again = elpv.load_elpv("binary", 12, 3)
    assert all(torch.equal(a, b) if torch.is_tensor(a) else a == b for a, b in zip(first, again))
    for broken in (b"not an npz", None):
        if broken is None:  # readable, but of another size: ignored too
            np.savez(path, pixels=np.zeros((3, 1, 5, 5), np.uint8), probs=np.zeros(3), types=np.array(["mono"] * 3))
        else:
            open(path, "wb").write(broken)
        rebuilt = elpv.load_elpv("binary", 12, 3)
        assert torch.equal(rebuilt[0], first[0]) and torch.equal(rebuilt[3], first[3])
        with np.load(path) as cached:
            assert cached["pixels"].shape == (2624, 1, 12, 12)  # written again, whole
    assert elpv.cache_path(elpv.CACHE_MAX_SIDE + 1) is None
