"""ELPV: the real solar-cell images of the elpv-dataset package, labelled and split as in the paper."""
import collections

import pytest
import torch
from test_data import make_args

from data.classification import build_classification_datasets
from data.elpv import _raw, elpv_labels, load_elpv, stratified_test_split
from trainers.vanilla_trainer import VanillaTrainer


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
    pool_x, pool_y, pool_types, test_x, test_y, test_types, names = load_elpv("binary", 24, seed=0)
    assert pool_x.shape == (1968, 1, 24, 24) and pool_x.dtype == torch.uint8
    assert test_x.shape[0] == len(test_y) == len(test_types) == 656 and names == ["functional", "defective"]
    assert float(pool_x.float().std()) > 10  # real images, not blank
    assert set(pool_types) == {"mono", "poly"}


def test_elpv_builds_classification_splits_and_trains(tmp_path):
    data = build_classification_datasets(make_args(["--data_type", "ELPV", "--image_size", "16",
                                                    "--elpv_task", "binary", "--val_fraction", "0.1"]))
    assert data.input_shape == (1, 16, 16) and data.num_classes == 2
    assert len(data.test) == 656 and len(data.train) + len(data.val) == 1968
    image, label = data.train[0]
    assert image.shape == (1, 16, 16) and -1 <= float(image.min()) < float(image.max()) <= 1 and label in (0, 1)
    trainer = VanillaTrainer.from_argv(["--data_type", "ELPV", "--model_type", "SmallCNN", "--image_size", "16",
                                        "--max_steps", "4", "--output_dir", str(tmp_path), "--gpu_devices", "cpu"])
    metrics = trainer.fit()
    assert 0 <= metrics["top1"] <= 100 and trainer.global_step == 4
