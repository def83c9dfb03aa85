"""SegOnCarvanaTrainer, its evaluator and predict_seg.py end to end on generated Carvana-layout files."""

import glob
import json
import os
import subprocess
import sys

import numpy as np
import pytest
import torch
from PIL import Image
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from base.checkpoint.files import load_checkpoint, save_checkpoint
from base.loop.input_stage import InputStage
from by_hand import dice_iou_by_hand
from data.images import read_image
from data.input_recipe import card_input
from data.transforms import IMAGENET_MEAN, IMAGENET_STD
from evaluators.seg_on_carvana_evaluator import SegOnCarvanaEvaluator
from evaluators.seg_predictor import SegPredictor
from test_bad_input import error_line, expect, run_main
from trainers.seg_on_carvana_trainer import SegOnCarvanaTrainer
from utils import configcmp

TINY = ["--epochs", "2", "--base_channels", "4", "--batch_size", "4", "--gpu_devices", "cpu", "--num_viz", "2"]
# Enough to predict real masks (test Dice ~0.5), so comparisons between predictions mean something.
TRAINED = [*TINY, "--epochs", "6", "--lr", "1e-2", "--warmup_steps", "0"]


def seg_data(tmp_path_factory, name="seg_data", cars=8, views=2, width=96, height=64):
    """Generated Carvana-layout files, made once per test session per name."""
    from data.make_synthetic_carvana import generate

    root = tmp_path_factory.getbasetemp() / name
    if not root.exists():
        generate(str(root), cars=cars, views=views, width=width, height=height, seed=5)
    return str(root)


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """One short UNet run: (trainer, its test metrics)."""
    data, out = seg_data(tmp_path_factory), tmp_path_factory.mktemp("seg_run")
    trainer = SegOnCarvanaTrainer.from_argv(["--data_dir", data, "--output_dir", str(out), *TRAINED])
    return trainer, trainer.fit()


def test_training_logs_dice_and_writes_the_run(trained):
    trainer, test_metrics = trained
    assert set(test_metrics) == {"loss", "dice", "iou", "dice_per_image", "iou_per_image"}
    assert test_metrics["dice"] > 0.3  # it learned something: later comparisons are not of blank masks
    assert {k: v for k, v in test_metrics.items() if k != "loss"} == pytest.approx(dice_iou_by_hand(trainer), rel=1e-12)
    header = open(os.path.join(trainer.run_dir, "metrics.csv")).readline()
    assert "val_dice" in header and "val_iou_per_image" in header
    assert load_checkpoint(trainer.checkpointer.path("best"))["trainer"] == "SegOnCarvanaTrainer"
    assert trainer.run_dir.split(os.sep)[-2] == "SegOnCarvana"
    events = EventAccumulator(os.path.join(trainer.run_dir, "summary")).Reload()
    assert "val/image_truth_prediction" in events.Tags()["images"]
    (image,) = events.Images("val/image_truth_prediction")[:1]
    assert image.width > 3 * 48 and image.height > 2 * 32  # 2 rows of 3 tiles of 32x48


def test_eval_reproduces_the_test_dice_and_writes_pictures(trained, tmp_path, capsys):
    trainer, test_metrics = trained
    viz = tmp_path / "viz"
    results = SegOnCarvanaEvaluator.from_argv(
        ["--model_path", trainer.checkpointer.path("best"), "--viz", "--viz_every", "1", "--save_path", str(viz)]
    ).run()
    for key in ("dice", "iou", "dice_per_image", "iou_per_image", "loss"):
        assert results[key] == pytest.approx(test_metrics[key], abs=1e-9), key
    assert results["num_samples"] == len(trainer.datasets["test"])
    out = capsys.readouterr().out
    assert "nearest-neighbour" in out and "original size" in out
    for image_path, _ in trainer.datasets["test"].samples:
        stem = viz / os.path.splitext(os.path.basename(image_path))[0]
        for suffix in ("_image.png", "_truth.png", "_pred.png", "_overlay.png"):
            assert Image.open(f"{stem}{suffix}").size == (96, 64) or suffix == "_overlay.png", suffix
        truth = np.array(Image.open(f"{stem}_truth.png"))
        assert truth.shape == (64, 96) and set(np.unique(truth)) <= {0, 255}  # original size, not 32x48
    saved = json.load(open(os.path.splitext(trainer.checkpointer.path("best"))[0] + "_eval_test.json"))
    assert saved["dice"] == results["dice"]


def test_viz_every_picks_every_nth_sample(trained, tmp_path):
    trainer, _ = trained
    SegOnCarvanaEvaluator.from_argv(
        ["--model_path", trainer.checkpointer.path("best"), "--viz", "--viz_every", "3", "--save_path", str(tmp_path)]
    ).run()
    n = len(trainer.datasets["test"])
    assert len(glob.glob(str(tmp_path / "*_overlay.png"))) == len(range(0, n, 3))


def test_safetensors_export_evaluates_like_the_checkpoint(trained):
    trainer, test_metrics = trained
    export = os.path.join(trainer.run_dir, "UNet_best.safetensors")
    results = SegOnCarvanaEvaluator.from_argv(["--model_path", export]).run()
    assert results["dice"] == pytest.approx(test_metrics["dice"], abs=1e-9)


def test_predict_seg_writes_the_masks_the_evaluator_scored(trained, tmp_path, capsys):
    trainer, _ = trained
    viz, out = tmp_path / "viz", tmp_path / "masks"
    SegOnCarvanaEvaluator.from_argv(
        ["--model_path", trainer.checkpointer.path("best"), "--viz", "--viz_every", "1", "--save_path", str(viz)]
    ).run()
    images = [path for path, _ in trainer.datasets["test"].samples[:2]]
    written = SegPredictor.from_argv(
        ["--model_path", trainer.checkpointer.path("best"), *images, "--out", str(out), "--gpu_devices", "cpu"]
    ).run()
    assert len(written) == 2
    for image_path, mask_path in zip(images, written):
        stem = os.path.splitext(os.path.basename(image_path))[0]
        assert mask_path == str(out / f"{stem}_mask.png")
        mask = np.array(Image.open(mask_path))
        assert mask.shape == (64, 96) and set(np.unique(mask)) == {0, 255}  # a real mask, not blank
        assert np.array_equal(mask, np.array(Image.open(viz / f"{stem}_pred.png")))
    assert "foreground" in capsys.readouterr().out


def test_the_seg_card_rebuilds_the_input_the_evaluator_gives_the_model(trained):
    """(c) The card holds the resize and the statistics; predict_seg.py's input for a file is the evaluator's."""
    trainer, _ = trained
    card = load_checkpoint(trainer.checkpointer.path("best"))["model_card"]
    recipe = card_input(card)
    assert card["input_shape"] == [3, 32, 48] and recipe["color"] == "RGB"  # 64x96 files at --img_scale 0.5
    assert recipe["transform"] == {
        "resize": "exact",
        "resize_to": [32, 48],
        "center_crop": None,
        "interpolation": "bilinear",
        "antialias": True,
        "backend": "torch",
    }
    assert recipe["mean"] == list(IMAGENET_MEAN) and recipe["std"] == list(IMAGENET_STD)  # RGB photos' default
    assert card["output"]["threshold"] == {"logit": 0.0, "probability": 0.5}
    stage = InputStage(torch.device("cpu"), recipe["mean"], recipe["std"])
    checked = 0
    for batch in trainer.loaders["test"]:
        evaluated = trainer.to_device(batch)["image"]  # what score_batch gives the model
        for path, expected in zip(batch["path"], evaluated):
            pixels = SegPredictor.input_for(read_image(path, recipe["color"]), recipe, trainer.args)
            assert torch.equal(stage.to_device(pixels[None])[0], expected), path
            checked += 1
    assert checked == len(trainer.datasets["test"])
    # A file of another size is resized to the run's input size, as evaluation resizes every image.
    bigger = read_image(trainer.datasets["test"].samples[0][0], "RGB").resize((120, 80))
    assert SegPredictor.input_for(bigger, recipe, trainer.args).shape == (3, 32, 48)


def test_a_seg_checkpoint_with_an_empty_card_predicts_as_before(trained, tmp_path):
    """Checkpoints written before the seg card held a recipe: each image at its own size times --img_scale,
    (x / 255 - 0.5) / 0.5, as predict_seg.py did then."""
    trainer, _ = trained
    state = load_checkpoint(trainer.checkpointer.path("best"))
    config = {k: v for k, v in json.loads(state["config"]).items() if k not in ("mean", "std")}
    save_checkpoint({**state, "model_card": {}, "config": json.dumps(config)}, str(tmp_path / "old_ckpt.pth"))
    path = str(tmp_path / "bigger.png")  # 80x120, not the training files' 64x96: the old resize differs
    Image.open(trainer.datasets["test"].samples[0][0]).convert("RGB").resize((120, 80)).save(path)
    (written,) = SegPredictor.from_argv(
        ["--model_path", str(tmp_path / "old_ckpt.pth"), path, "--out", str(tmp_path / "m"), "--gpu_devices", "cpu"]
    ).run()
    from torch.nn import functional as F
    from torchvision.transforms import v2

    pixels = torch.from_numpy(np.array(Image.open(path))).permute(2, 0, 1)
    x = v2.functional.resize(pixels, [40, 60], antialias=True).float() / 255
    model = trainer.build_model().eval()
    model.load_state_dict(state["model"])
    with torch.no_grad():
        logits = model(((x - 0.5) / 0.5)[None])
    expected = F.interpolate((logits > 0).float(), size=(80, 120), mode="nearest")[0, 0].mul(255).byte().numpy()
    assert 0 < expected.mean() < 255  # a real mask
    assert np.array_equal(np.array(Image.open(written)), expected)


def test_predict_seg_reports_a_bad_image_in_one_line(trained, tmp_path, capsys):
    trainer, _ = trained
    bad = tmp_path / "notes.jpg"
    bad.write_text("not an image")
    status, err = run_main(
        SegPredictor,
        ["--model_path", trainer.checkpointer.path("best"), str(bad), "--out", str(tmp_path / "m")],
        capsys,
    )
    assert status == 1 and str(bad) in error_line(status, err)


def test_configcmp_diffs_two_seg_runs(trained):
    trainer, _ = trained
    other = SegOnCarvanaTrainer.from_argv(
        [
            "--data_dir",
            trainer.args.data_dir,
            "--output_dir",
            trainer.args.output_dir,
            *TRAINED,
            "--max_steps",
            "1",
            "--loss",
            "dice",
        ]
    )
    other.fit()
    diff = configcmp.compare(configcmp.load(trainer.run_dir), configcmp.load(other.run_dir))
    assert set(diff["changed"]) == {"loss", "max_steps"}


@pytest.mark.parametrize(
    "argv",
    [
        ["--model_type", "UNetPlusPlus", "--deep_supervision"],
        ["--model_type", "UNet", "--upsample", "transpose", "--loss", "dice", "--amp"],
        ["--model_type", "lraspp_mobilenet_v3_large"],
    ],
    ids=["unetpp_deep_supervision", "unet_transpose_amp", "torchvision_lraspp"],
)
def test_other_models_train_and_evaluate(tmp_path_factory, tmp_path, argv):
    data = seg_data(tmp_path_factory)
    trainer = SegOnCarvanaTrainer.from_argv(
        ["--data_dir", data, "--output_dir", str(tmp_path), *TINY, "--max_steps", "3", *argv]
    )
    metrics = trainer.fit()
    assert trainer.global_step == 3
    assert {k: v for k, v in metrics.items() if k != "loss"} == pytest.approx(dice_iou_by_hand(trainer), rel=1e-12)
    results = SegOnCarvanaEvaluator.from_argv(["--model_path", trainer.checkpointer.path("best")]).run()
    assert results["dice"] == pytest.approx(metrics["dice"], abs=1e-6)


# ------------------------------------------------------------------ bad input, bad files
@pytest.mark.parametrize(
    "argv, names",
    [
        (["--image_size", "8", "40"], ["--image_size", ">= 16"]),
        (["--img_scale", "0"], ["--img_scale"]),
        (["--val_fraction", "0"], ["--val_fraction"]),
        (["--base_channels", "0"], ["--base_channels"]),
        (["--dice_smooth", "0"], ["--dice_smooth"]),
    ],
)
def test_bad_seg_flags_exit_2_naming_them(tmp_path_factory, tmp_path, capsys, argv, names):
    data = seg_data(tmp_path_factory)
    expect(SegOnCarvanaTrainer, ["--data_dir", data, "--output_dir", str(tmp_path), *argv], capsys, 2, *names)


def test_without_data_a_real_run_exits_1_naming_the_layout_and_the_synthetic_data(tmp_path):
    # As a new user runs it: the default --data_dir (Dataset/Carvana) does not exist.
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    result = subprocess.run(
        [sys.executable, os.path.join(root, "trainer_seg_on_carvana.py"), "--output_dir", "runs"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 1, result.stderr
    (line,) = result.stderr.strip().splitlines()
    assert line.startswith("trainer_seg_on_carvana.py: error: --data_dir Dataset/Carvana: no such folder;"), line
    for part in ("train/<id>_<view>.jpg", "train_masks/<id>_<view>_mask.gif", "python -m data.make_synthetic_carvana"):
        assert part in line
    assert not (tmp_path / "runs").exists()


@pytest.mark.parametrize(
    "folders, problem",
    [
        ([], "it has no train/ and no train_masks/"),
        (["images"], "it has no train/ and no train_masks/"),
        (["train"], "it has no train_masks/"),
    ],
)
def test_a_wrong_layout_exits_1_before_a_run_folder(tmp_path, capsys, folders, problem):
    data = tmp_path / "data"
    data.mkdir()
    for name in folders:
        (data / name).mkdir()
        (data / name / "a.jpg").write_bytes(b"")
    expect(
        SegOnCarvanaTrainer,
        ["--data_dir", str(data), "--output_dir", str(tmp_path / "runs"), "--gpu_devices", "cpu"],
        capsys,
        1,
        f"--data_dir {data}: {problem}",
        "make_synthetic_carvana",
    )
    assert not (tmp_path / "runs").exists()


def broken_mask_data(tmp_path_factory, tmp_path):
    """A copy of the generated data with one training mask cut to zero bytes; returns (root, mask)."""
    import shutil

    root = tmp_path / "data"
    shutil.copytree(seg_data(tmp_path_factory), root)
    args = SegOnCarvanaTrainer.from_argv(["--data_dir", str(root), "--output_dir", str(tmp_path)]).args
    from data.carvana import car_id, find_samples, split_by_car

    samples = find_samples(str(root))
    train_car = split_by_car(samples, args)["train"][0]
    mask = next(m for i, m in samples if car_id(i) == train_car)
    open(mask, "wb").close()
    return root, mask


@pytest.mark.parametrize("policy", ["raise", "skip"])
def test_unreadable_mask_follows_bad_images(tmp_path_factory, tmp_path, capsys, policy):
    root, mask = broken_mask_data(tmp_path_factory, tmp_path)
    argv = ["--data_dir", str(root), "--output_dir", str(tmp_path / "out"), *TINY, "--bad_images", policy]
    status, err = run_main(SegOnCarvanaTrainer, argv, capsys)
    (run,) = glob.glob(str(tmp_path / "out" / "SegOnCarvana" / "*"))
    if policy == "raise":
        assert status == 1 and mask in error_line(status, err)
        assert os.path.isfile(os.path.join(run, "UNet_exception_ckpt.pth"))
    else:
        assert status == 0, err
        assert set(open(os.path.join(run, "bad_images.txt")).read().split()) == {mask}
        assert os.path.isfile(os.path.join(run, "UNet_best_ckpt.pth"))


def test_early_stop_and_grad_clip_apply_to_the_seg_task(tmp_path_factory, tmp_path):
    class FlatDice(SegOnCarvanaTrainer):
        def validate(self, model, loader):
            return {**super().validate(model, loader), "dice": 0.5}  # never improves after the first validation

    trainer = FlatDice.from_argv(
        [
            "--data_dir",
            seg_data(tmp_path_factory),
            "--output_dir",
            str(tmp_path),
            *TINY,
            "--epochs",
            "20",
            "--early_stop_patience",
            "2",
            "--grad_clip",
            "0.01",
        ]
    )
    trainer.fit()
    assert trainer.epoch == 3 and trainer.early_stopper.should_stop
    assert load_checkpoint(trainer.checkpointer.path("best"))["global_step"] == 3  # the first validation


def test_eval_flags_are_checked_before_loading(trained, capsys):
    trainer, _ = trained
    expect(
        SegOnCarvanaEvaluator,
        ["--model_path", trainer.checkpointer.path("best"), "--viz_every", "0"],
        capsys,
        2,
        "--viz_every",
    )
    expect(SegOnCarvanaEvaluator, ["--model_path", "no/such.pth"], capsys, 1, "no/such.pth")


def test_the_grid_shows_the_pixels_whatever_the_statistics():
    """utils.plots un-normalises with the run's mean/std: model inputs and uint8 pixels draw the same grid."""
    from utils.plots import segmentation_grid

    pixels = torch.randint(0, 256, (2, 3, 8, 12), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    inputs = InputStage(torch.device("cpu"), IMAGENET_MEAN, IMAGENET_STD).to_device(pixels)
    masks = torch.rand(2, 1, 8, 12, generator=torch.Generator().manual_seed(1)) > 0.5
    from_pixels = segmentation_grid(pixels, masks, ~masks)
    assert torch.equal(segmentation_grid(inputs, masks, ~masks, IMAGENET_MEAN, IMAGENET_STD), from_pixels)
    assert torch.equal(from_pixels[:, 2:10, 2:14], pixels[0])  # the first tile is the image itself
