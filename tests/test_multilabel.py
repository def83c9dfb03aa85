"""Multi-label classification: --data_type ImageCSV, MultiLabelMeter (exact under DDP), a real run, its
evaluation and predict.py (120 generated 16x16 PNGs, three colour-patch labels; CPU)."""

import json
import os

import numpy as np
import pytest
import torch
import torch.multiprocessing as mp
from sklearn.metrics import average_precision_score, f1_score
from torch.utils.data import DataLoader

from base.checkpoint.files import load_checkpoint
from base.errors import DataError
from data.classification import build_classification_datasets
from data.image_csv import load_image_csv
from evaluators.classifier_predictor import ClassifierPredictor
from evaluators.vanilla_evaluator import VanillaEvaluator
from multilabel_data import LABELS, hand_scores, make_multilabel_csv, meter_worker
from trainers.classification import validate_classifier
from trainers.mae_trainer import MAETrainer
from trainers.vanilla_trainer import VanillaTrainer
from trainers.vit_trainer import ViTTrainer
from utils.multilabel_metrics import MultiLabelMeter


@pytest.fixture(scope="session")
def csv_data(tmp_path_factory):
    """``(data_dir, targets int (120, 3))``."""
    return make_multilabel_csv(tmp_path_factory.getbasetemp() / "multilabel_csv")


def _args(data_dir, *argv, cls=VanillaTrainer):
    flags = ["--data_type", "ImageCSV", "--data_dir", str(data_dir), "--image_size", "16", "--gpu_devices", "cpu"]
    return cls.from_argv([*flags, *argv]).args


# ----------------------------------------------------------------- reading


def test_image_csv_gives_float_targets_of_its_rows_paths_and_label_names(csv_data):
    root, targets = csv_data
    data = build_classification_datasets(_args(root))
    assert data.multilabel and data.class_names == list(LABELS) and data.num_classes == 3
    assert data.input_shape == (3, 16, 16)
    by_path = {str(root / "img" / f"{i:03d}.png"): t for i, t in enumerate(targets)}
    seen = []
    for split in (data.train, data.val, data.test):
        for i in split.indices:
            path, target = split.dataset.samples[i]
            seen.append(path)
            assert target.dtype == torch.float32 and target.tolist() == by_path[path].tolist()
        image, target = split[0]
        assert image.dtype == torch.uint8 and image.shape == (3, 16, 16) and target.shape == (3,)
    assert sorted(seen) == sorted(by_path)  # every row in exactly one split
    assert len(data.test) == 24 and len(data.val) == 10
    train_paths = [data.train.dataset.samples[i][0] for i in data.train.indices]
    expected = torch.tensor(np.array([by_path[p] for p in train_paths]), dtype=torch.float32)
    assert data.train_labels.dtype == torch.float32 and torch.equal(data.train_labels, expected)
    images, batch = next(iter(DataLoader(data.val, batch_size=4)))
    assert batch.shape == (4, 3) and batch.dtype == torch.float32 and images.shape == (4, 3, 16, 16)


def test_folds_partition_the_pool_and_spread_each_label(csv_data):
    root, _ = csv_data
    vals = [build_classification_datasets(_args(root, "--folds", "3", "--fold", str(f))).val for f in range(3)]
    held = [i for v in vals for i in v.indices]
    assert len(held) == len(set(held)) == 96  # the 120 less the 24 test images, each validated once
    for v in vals:
        positives = torch.stack([v.dataset.samples[i][1] for i in v.indices]).sum(0)
        assert (positives > 0).all()


def _write(folder, text, files=("a.png", "b.png")):
    folder.mkdir()
    from PIL import Image

    for name in files:
        Image.new("RGB", (4, 4)).save(folder / name)
    if text is not None:
        (folder / "labels.csv").write_text(text)
    return folder


@pytest.mark.parametrize(
    "name,text,message",
    [
        ("missing", None, r"labels\.csv: no such file"),
        ("no_labels", "filename\na.png\n", r"labels\.csv, line 1: the header has no label column"),
        ("bad_value", "filename,x,y\na.png,1,0\nb.png,0,2\n", r"labels\.csv, line 3: y is '2'; expected 0 or 1"),
        ("no_file", "filename,x\na.png,1\nc.png,0\n", r"labels\.csv, line 3: 'c\.png' does not exist"),
        ("twice", "filename,x,x\na.png,1,0\n", r"labels\.csv, line 1: the label 'x' is named twice"),
    ],
)
def test_bad_csv_is_one_line_naming_the_file_and_line(tmp_path, name, text, message):
    folder = _write(tmp_path / name, text)
    with pytest.raises(DataError, match=message) as info:
        load_image_csv(str(folder), None)
    assert "\n" not in str(info.value) and str(folder / "labels.csv") in str(info.value)


def test_a_missing_csv_is_refused_before_a_run_starts(tmp_path):
    folder = _write(tmp_path / "d", None)
    with pytest.raises(DataError, match=r"labels\.csv: no such file"):
        _args(folder, "--output_dir", str(tmp_path / "out"))
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize(
    "cls,argv,flag",
    [
        (VanillaTrainer, ["--label_smoothing", "0.1"], "label_smoothing"),
        (ViTTrainer, ["--label_smoothing", "0.1"], "label_smoothing"),
        (ViTTrainer, ["--mixup_alpha", "0.2"], "mixup_alpha"),
        (ViTTrainer, ["--cutmix_alpha", "1"], "cutmix_alpha"),
        (MAETrainer, [], "data_type"),
        (VanillaTrainer, ["--threshold", "1"], "threshold"),
    ],
)
def test_what_multilabel_data_cannot_train_with_is_refused(csv_data, capsys, cls, argv, flag):
    with pytest.raises(SystemExit) as info:
        _args(csv_data[0], *argv, cls=cls)
    err = capsys.readouterr().err.strip().splitlines()
    assert info.value.code == 2 and f"--{flag}" in err[-1]


def test_vit_label_smoothing_defaults_to_zero_for_multilabel_data_and_says_why(csv_data):
    trainer = ViTTrainer.from_argv(["--data_type", "ImageCSV", "--data_dir", str(csv_data[0]), "--image_size", "16"])
    assert trainer.args.label_smoothing == 0 and "multi-label" in trainer.provenance["label_smoothing"]
    assert (trainer.monitor, trainer.monitor_mode) == ("map", "max")
    assert ViTTrainer.from_argv(["--data_type", "Digits"]).args.label_smoothing == 0.1  # others keep the recipe's


# ----------------------------------------------------------------- the meter


def test_meter_map_is_sklearns_over_the_labels_with_positives_and_f1_is_by_hand():
    logits, targets = hand_scores()
    meter = MultiLabelMeter(4, threshold=0.4)
    meter.update(logits[:6], targets[:6], torch.tensor(0.25))
    meter.update(logits[6:], targets[6:], torch.tensor(0.5))
    got = meter.compute()
    probs, y = torch.sigmoid(logits).double().numpy(), targets.numpy().astype(int)
    assert y[:, 3].sum() == 0 and y[:, :3].sum(0).min() > 0
    assert got["map"] == average_precision_score(y[:, :3], probs[:, :3], average="macro")
    for k in range(3):
        assert got["ap"][k] == pytest.approx(average_precision_score(y[:, k], probs[:, k]), abs=1e-12)
    assert np.isnan(got["ap"][3]) and got["positives"] == y.sum(0).tolist()
    predicted = probs >= 0.4
    for k in range(4):  # F1 = 2 TP / (2 TP + FP + FN), 0 when there is neither a positive nor a prediction
        tp = int((predicted[:, k] & (y[:, k] == 1)).sum())
        wrong = int((predicted[:, k] != (y[:, k] == 1)).sum())
        assert got["f1"][k] == pytest.approx(2 * tp / (2 * tp + wrong) if tp + wrong else 0.0)
    assert got["mean_f1"] == pytest.approx(np.mean(got["f1"]))
    assert got["micro_f1"] == pytest.approx(f1_score(y, predicted.astype(int), average="micro"))
    assert got["loss"] == pytest.approx((0.25 * 6 + 0.5 * 5) / 11) and got["count"] == 11


def test_meter_under_two_processes_with_uneven_shares_is_exactly_the_one_process_result(tmp_path):
    shares = [[0, 2, 3, 5, 7, 8, 10], [1, 4, 6, 9]]  # 7 rows on rank 0, 4 on rank 1
    mp.spawn(meter_worker, args=(2, str(tmp_path / "init"), str(tmp_path / "out"), shares), nprocs=2)
    results = [torch.load(tmp_path / f"out.{r}") for r in (0, 1)]
    logits, targets = hand_scores()
    meter = MultiLabelMeter(4, threshold=0.4)
    meter.update(logits, targets)
    whole = meter.compute()
    for got in results:
        assert got["map"] == whole["map"] and got["count"] == 11
        assert got["f1"] == whole["f1"] and got["micro_f1"] == whole["micro_f1"]
        assert got["ap"][:3] == whole["ap"][:3] and np.isnan(got["ap"][3])
        assert got["loss"] == pytest.approx((0.5 * 7 + 1.5 * 4) / 11)


# ----------------------------------------------------------------- a real run


RUN_FLAGS = [
    *("--model_type", "SmallCNN", "--epochs", "6", "--batch_size", "16", "--lr", "0.01", "--train_crop", "squash"),
    *("--val_fraction", "0.2", "--test_fraction", "0.25"),
]


@pytest.fixture(scope="module")
def run(csv_data, tmp_path_factory):
    out = tmp_path_factory.mktemp("run")
    argv = ["--data_type", "ImageCSV", "--data_dir", str(csv_data[0]), "--image_size", "16", "--gpu_devices", "cpu"]
    trainer = VanillaTrainer.from_argv([*argv, *RUN_FLAGS, "--output_dir", str(out)])
    trainer.fit()
    untrained = VanillaTrainer.from_argv([*argv, *RUN_FLAGS])  # the same seed: the run's initial weights
    untrained.build()
    trainer.untrained_map = validate_classifier(untrained, untrained.raw_model.eval(), untrained.loaders["test"])["map"]
    return trainer


def test_a_short_run_beats_an_untrained_model_and_the_evaluator_reproduces_it(run, capsys):
    own = json.load(open(os.path.join(run.run_dir, "test_metrics.json")))
    assert run.monitor == "map" and set(own) >= {"map", "micro_f1", "mean_f1", "loss"}
    assert own["map"] >= run.untrained_map + 0.15 and own["map"] > 0.9, (own, run.untrained_map)
    results = VanillaEvaluator.from_argv(["--model_path", run.checkpointer.path("best")]).run()
    assert results["map"] == pytest.approx(own["map"], abs=1e-12)
    assert results["multilabel"] and list(results["per_label"]) == list(LABELS) and "confusion_matrix" not in results
    assert results["threshold"] == 0.5 and results["num_samples"] == 30
    out = capsys.readouterr().out
    assert f"mAP {own['map']:.4f}" in out and all(name in out for name in LABELS)
    written = json.load(open(run.checkpointer.path("best").replace(".pth", "_eval_test.json")))
    assert written["per_label"]["red"]["ap"] == results["per_label"]["red"]["ap"]


def test_predict_lists_the_labels_at_or_above_the_threshold(run, capsys):
    card = load_checkpoint(run.checkpointer.path("best"))["model_card"]
    assert card["multilabel"] and card["class_names"] == list(LABELS) and card["threshold"] == 0.5
    test = run.data.test
    paths = [test.dataset.samples[i][0] for i in test.indices[:6]]
    images = torch.stack([test[j][0] for j in range(6)])
    model = run.raw_model
    model.load_state_dict(load_checkpoint(run.checkpointer.path("best"))["model"])
    with torch.no_grad():
        probs = torch.sigmoid(model.eval()(run.to_device(images)))
    model_path = run.checkpointer.path("best")
    results = ClassifierPredictor.from_argv(["--model_path", model_path, *paths, "--gpu_devices", "cpu"]).run()
    lines = capsys.readouterr().out.splitlines()
    for r, p, line in zip(results, probs, lines):
        above = [k for k in p.argsort(descending=True).tolist() if p[k] >= 0.5]
        assert r["threshold"] == 0.5 and [t["index"] for t in r["top"]] == above
        assert [t["probability"] for t in r["top"]] == pytest.approx([float(p[k]) for k in above], abs=1e-6)
        shown = ", ".join(f"{LABELS[k]} {float(p[k]):.4f}" for k in above)
        assert line == f"{r['image']}: {shown or 'no label above the threshold'}"
    # a threshold above the first image's every probability: nothing to show for it
    high = min(0.999, float(probs[0].max()) + 1e-4)
    ClassifierPredictor.from_argv(["--model_path", model_path, paths[0], "--threshold", str(high)]).run()
    assert capsys.readouterr().out.strip() == f"{paths[0]}: no label above the threshold"


def test_tta_of_a_multilabel_model_averages_each_labels_sigmoid(run, capsys):
    """--tta hflip in predict.py and eval_vanilla.py: the mean of the two views' sigmoid probabilities per label
    (a softmax over the labels would give a different, wrong number), said in the output."""
    model_path = run.checkpointer.path("best")
    test = run.data.test
    paths = [test.dataset.samples[i][0] for i in test.indices[:4]]
    images = run.to_device(torch.stack([test[j][0] for j in range(4)]))
    model = run.raw_model
    model.load_state_dict(load_checkpoint(model_path)["model"])
    with torch.no_grad():
        mean = (torch.sigmoid(model.eval()(images)) + torch.sigmoid(model(images.flip(-1)))) / 2
    argv = ["--model_path", model_path, *paths, "--gpu_devices", "cpu", "--tta", "hflip", "--threshold", "0.01"]
    results = ClassifierPredictor.from_argv(argv).run()
    for r, p in zip(results, mean):
        assert [t["probability"] for t in r["top"]] == pytest.approx(sorted(p.tolist(), reverse=True), abs=1e-5)
    evaluated = VanillaEvaluator.from_argv(["--model_path", model_path, "--tta", "hflip"]).run()
    assert "sigmoid" in evaluated["tta_description"] and "sigmoid" in capsys.readouterr().out


def test_the_elpv_cells_written_as_an_image_csv_folder_read_back_with_their_annotations(tmp_path):
    """data.make_elpv_csv: real cells and their two labels (defective, poly), read by the ImageCSV loader."""
    from torchvision.transforms import v2

    from data.elpv import _resized
    from data.make_elpv_csv import write_elpv_csv

    write_elpv_csv(str(tmp_path), size=32, limit=40)
    pool, names = load_image_csv(str(tmp_path), v2.PILToTensor())
    assert names == ["defective", "poly"] and len(pool) == 40
    pixels, probs, types = _resized(32)
    expected = torch.tensor([[float(p >= 0.5), float(str(t) == "poly")] for p, t in zip(probs[:40], types[:40])])
    assert torch.equal(pool.targets(), expected) and 0 < expected[:, 0].sum() < 40
    image, target = pool[7]
    assert torch.equal(target, expected[7]) and torch.equal(image[0], pixels[7, 0])
