"""--folds K --fold I: the K validation folds partition the train+val pool, by class or by car; test is untouched."""

import collections

import pytest

from base.config.parse import parse_config
from data.carvana import build_carvana_datasets, car_id, find_samples, split_by_car
from data.classification import build_classification_datasets
from data.make_synthetic_carvana import generate
from data.splits import kfold_groups, kfold_indices
from tests.test_carvana_data import make_args as carvana_args
from trainers.vanilla_trainer import VanillaTrainer

ROOT = __import__("os").path.dirname(__import__("os").path.dirname(__file__))


def digits_splits(*flags):
    args, _ = parse_config(VanillaTrainer, ["--data_type", "Digits", "--seed", "3", *flags])
    data = build_classification_datasets(args)
    return data.train.indices, data.val.indices, data.test.indices, data.train.dataset.labels


def test_the_validation_folds_partition_the_pool_and_test_is_untouched():
    k = 5
    _, _, plain_test, _ = digits_splits()
    folds = [digits_splits("--folds", str(k), "--fold", str(i)) for i in range(k)]
    pool = sorted(folds[0][0] + folds[0][1])
    assert len(pool) + len(plain_test) == 1797 and not set(pool) & set(plain_test)
    vals = [f[1] for f in folds]
    assert sorted(i for v in vals for i in v) == pool  # every pool sample validated exactly once
    for train, val, test, _ in folds:
        assert test == plain_test  # the test split is the one without --folds
        assert sorted(train + val) == pool and not set(train) & set(val)
    assert sorted(len(v) for v in vals)[-1] - sorted(len(v) for v in vals)[0] <= 1


def test_each_fold_keeps_every_class_share_and_follows_the_seed():
    k = 4
    train, val, _, labels = digits_splits("--folds", str(k), "--fold", "2")
    pool = collections.Counter(labels[i].item() for i in train + val)
    held = collections.Counter(labels[i].item() for i in val)
    for label, n in pool.items():
        assert abs(held[label] - n / k) < 1, (label, held[label], n)  # stratified: within one sample of n/K
    assert digits_splits("--folds", str(k), "--fold", "2")[1] == val  # deterministic
    other, _ = parse_config(VanillaTrainer, ["--data_type", "Digits", "--seed", "4", "--folds", "4", "--fold", "2"])
    assert build_classification_datasets(other).val.indices != val


def test_kfold_indices_is_scikit_learns_stratified_split():
    labels = [0] * 9 + [1] * 6 + [2] * 3
    parts = [kfold_indices(labels, 3, i, seed=0)[1] for i in range(3)]
    assert sorted(i for p in parts for i in p) == list(range(18))
    for part in parts:
        assert collections.Counter(labels[i] for i in part) == {0: 3, 1: 2, 2: 1}
    with pytest.raises(ValueError):
        kfold_indices([0, 1], 3, 0, seed=0)  # fewer samples than folds


def test_kfold_groups_deals_each_group_to_one_fold():
    cars = ["c5", "c1", "c9", "c2", "c7"]
    parts = [kfold_groups(cars, 2, i) for i in range(2)]
    assert parts[0] == (["c1", "c2"], ["c5", "c9", "c7"]) and parts[1] == (["c5", "c9", "c7"], ["c1", "c2"])


@pytest.fixture(scope="module")
def carvana(tmp_path_factory):
    root = tmp_path_factory.mktemp("carvana_folds")
    generate(str(root), cars=11, views=2, width=64, height=48, seed=5)
    return root


def test_carvana_folds_hold_whole_cars_and_leave_the_test_cars(carvana):
    samples = find_samples(str(carvana))
    plain = split_by_car(samples, carvana_args(carvana))
    folds = [split_by_car(samples, carvana_args(carvana, folds=3, fold=i)) for i in range(3)]
    pool = sorted(plain["train"] + plain["val"])
    assert sorted(c for f in folds for c in f["val"]) == pool
    for f in folds:
        assert f["test"] == plain["test"] and sorted(f["train"] + f["val"]) == pool
    data = build_carvana_datasets(carvana_args(carvana, folds=3, fold=1))
    val_cars = {car_id(image) for image, _ in data.val.samples}
    train_cars = {car_id(image) for image, _ in data.train.samples}
    assert val_cars == set(folds[1]["val"]) and not val_cars & train_cars  # all views of a car on one side
    assert len(data.val) == 2 * len(val_cars)


@pytest.mark.parametrize(
    "flags, message",
    [
        (["--folds", "1"], "--folds=1: must be 0 (off) or at least 2"),
        (["--folds", "5", "--fold", "5"], "--fold=5: must be in 0..4 (--folds 5)"),
        (["--fold", "2"], "--fold=2: needs --folds K"),
    ],
)
def test_bad_fold_flags_are_one_line(flags, message, capsys):
    with pytest.raises(SystemExit) as exit_:
        VanillaTrainer.from_argv(flags)  # the entry script's parse: nothing is made before it passes
    err = capsys.readouterr().err
    assert exit_.value.code == 2 and message in err and len(err.strip().splitlines()) == 1, err


def test_the_evaluator_rebuilds_the_folds_validation_split_from_the_checkpoint_alone(tmp_path):
    from evaluators.vanilla_evaluator import VanillaEvaluator

    trainer = VanillaTrainer.from_argv(["--data_type", "Digits", "--epochs", "1", "--train_val_sample_rate", "0.3",
                                        "--folds", "4", "--fold", "3", "--output_dir", str(tmp_path),
                                        "--gpu_devices", "cpu"])  # fmt: skip
    trainer.fit()
    assert (trainer.args.folds, trainer.args.fold) == (4, 3)
    results = VanillaEvaluator.from_argv(["--model_path", trainer.checkpointer.path("best"), "--split", "val"]).run()
    assert results["top1"] == pytest.approx(trainer.early_stopper.best)  # the same fold, scored the same
