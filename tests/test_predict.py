"""predict.py: top-k classes of image files from a classifier checkpoint alone (Digits runs, CPU)."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest
import torch
from PIL import Image

from base.checkpoint.files import load_checkpoint, save_checkpoint
from base.cli import main
from data.images import image_file_to_input
from data.input_recipe import OLD_NORMALIZE, card_input
from evaluators.classifier_predictor import ClassifierPredictor
from trainers.vanilla_trainer import VanillaTrainer
from trainers.vit_trainer import ViTTrainer

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
NUM_IMAGES = 12


def _train(trainer_class, folder, *argv):
    trainer = trainer_class.from_argv(["--output_dir", str(folder), "--gpu_devices", "cpu", *argv])
    trainer.fit()
    return trainer


@pytest.fixture(scope="module")
def vanilla(tmp_path_factory):
    """A VanillaTrainer run on Digits, trained enough (4 epochs, ~160 steps) that its predictions are not uniform."""
    return _train(VanillaTrainer, tmp_path_factory.mktemp("vanilla"), "--epochs", "4", "--lr", "5e-3")


@pytest.fixture(scope="module")
def vit(tmp_path_factory):
    """A two-step ViTTrainer run (vit_ti_16, 4x4 patches) on Digits."""
    return _train(
        ViTTrainer,
        tmp_path_factory.mktemp("vit"),
        "--data_type",
        "Digits",
        "--patch_size",
        "4",
        "--max_steps",
        "2",
        "--warmup_steps",
        "1",
        "--train_val_sample_rate",
        "0.1",
        "--test_sample_rate",
        "0.1",
    )


@pytest.fixture(scope="module")
def digit_pngs(vanilla, tmp_path_factory):
    """``(paths, images uint8 (N, 1, 8, 8))``: real Digits test images as 8-bit PNGs, and as the dataset gives them.

    The dataset holds Digits' 0..16 scaled to 0..255 (uint8), which the PNGs store as they are.
    """
    folder = tmp_path_factory.mktemp("pngs")
    test = vanilla.datasets["test"]  # a Subset of the uint8 digits
    paths, images = [], []
    for j in range(NUM_IMAGES):
        raw = test.dataset.images[test.indices[j], 0].numpy()
        assert raw.dtype == np.uint8
        path = str(folder / f"digit{j}.png")
        Image.fromarray(raw, "L").save(path)
        paths.append(path)
        images.append(test[j][0])
    return paths, torch.stack(images)


def _model_probs(trainer, images):
    """Softmax of the best checkpoint's model on the dataset's uint8 ``images``, through the run's input stage."""
    model = trainer.model
    model.load_state_dict(load_checkpoint(trainer.checkpointer.path("best"))["model"])
    with torch.no_grad():
        return torch.softmax(model.eval()(trainer.to_device(images)).float(), dim=1)


def _predict(*argv):
    return ClassifierPredictor.from_argv([*argv, "--gpu_devices", "cpu"]).run()


@pytest.mark.parametrize(
    "run,fmt", [("vanilla", "pth"), ("vanilla", "safetensors"), ("vit", "pth"), ("vit", "safetensors")]
)
def test_png_predictions_match_the_model_on_the_dataset_image(run, fmt, digit_pngs, request, capsys):
    trainer = request.getfixturevalue(run)
    paths, images = digit_pngs
    before = sorted(os.listdir(trainer.run_dir))
    model_path = (
        trainer.checkpointer.path("best")
        if fmt == "pth"
        else os.path.join(trainer.run_dir, f"{trainer.args.model_type}_best.safetensors")
    )
    results = _predict("--model_path", model_path, *paths, "--topk", "50")  # capped at the 10 classes
    expected = _model_probs(trainer, images)
    assert [r["image"] for r in results] == paths
    for r, probs in zip(results, expected):
        top = r["top"]
        assert len(top) == 10 and [t["class"] for t in top] == [str(t["index"]) for t in top]
        assert sum(t["probability"] for t in top) == pytest.approx(1.0, abs=1e-5)
        assert [t["probability"] for t in top] == sorted((t["probability"] for t in top), reverse=True)
        assert top[0]["index"] == int(probs.argmax())
        # the PNG holds the dataset's uint8 pixels: the same input, the same probabilities
        got = torch.tensor([t["probability"] for t in sorted(top, key=lambda t: t["index"])])
        assert torch.allclose(got, probs, atol=1e-6, rtol=0), (r["image"], got, probs)
    out = capsys.readouterr().out.splitlines()
    assert len(out) == NUM_IMAGES and out[0].startswith(f"{paths[0]}: ")
    assert sorted(os.listdir(trainer.run_dir)) == before  # predicting writes nothing beside the checkpoint


def test_the_vanilla_model_predicts_the_digits_it_learned(vanilla, digit_pngs):
    """The run really learned, so the argmax comparison above is not between two near-uniform outputs."""
    paths, _ = digit_pngs
    results = _predict("--model_path", vanilla.checkpointer.path("best"), *paths)
    labels = [vanilla.datasets["test"][j][1] for j in range(NUM_IMAGES)]
    assert all(len(r["top"]) == 5 for r in results)  # --topk defaults to 5
    assert sum(r["top"][0]["index"] == label for r, label in zip(results, labels)) >= NUM_IMAGES - 3
    assert min(r["top"][0]["probability"] for r in results) > 0.3


def test_output_json_and_topk(vanilla, digit_pngs, tmp_path):
    paths, _ = digit_pngs
    out = tmp_path / "preds.json"
    results = _predict(
        "--model_path", vanilla.checkpointer.path("best"), paths[0], paths[1], "--topk", "3", "--output_json", str(out)
    )
    saved = json.loads(out.read_text())
    assert saved["predictions"] == results and saved["class_names"] == [str(d) for d in range(10)]
    assert [len(r["top"]) for r in results] == [3, 3]


def test_the_digits_card_records_the_input_recipe(vanilla):
    card = load_checkpoint(vanilla.checkpointer.path("best"))["model_card"]
    assert card["input_shape"] == [1, 8, 8] and card["class_names"] == [str(d) for d in range(10)]
    assert card["input"] == {
        "color": "L",
        "transform": {
            "resize": "square",
            "resize_to": 8,
            "center_crop": None,
            "interpolation": "bilinear",
            "antialias": True,
            "backend": "torch",
        },
        "scale": 255,
        "mean": [0.5],
        "std": [0.5],
        "layout": "NCHW",
        "dtype": "float32",
        "formula": "(pixels / scale - mean) / std, per channel",
    }
    assert "normalize" not in card


@pytest.fixture(scope="module")
def folder_run(tmp_path_factory):
    """A one-step Vanilla run on an ImageFolder of non-square RGB files of several sizes (--train_crop rrc,
    the ImageFolder default): its evaluation resizes the shorter side to 18 and centre-crops 16."""
    data = tmp_path_factory.mktemp("folder")
    rng = np.random.default_rng(0)
    for c, name in enumerate(("cat", "dog")):
        (data / name).mkdir()
        for j in range(8):
            height, width = 20 + 3 * j, 41 - 2 * j + c  # portrait and landscape, never square
            pixels = rng.integers(0, 256, (height, width, 3), dtype=np.uint8)
            pixels[:, : width // 2] //= 2  # some structure, so a crop in the wrong place changes values
            Image.fromarray(pixels, "RGB").save(data / name / f"{name}{j}.png")
    return _train(
        VanillaTrainer,
        tmp_path_factory.mktemp("folder_run"),
        "--data_type",
        "ImageFolder",
        "--data_dir",
        str(data),
        "--image_size",
        "16",
        "--max_steps",
        "1",
        "--batch_size",
        "4",
        "--val_fraction",
        "0.25",
        "--test_fraction",
        "0.25",
    )


def test_a_file_becomes_the_input_the_evaluation_split_gives_the_model(folder_run):
    """(a) predict.py's input for a file is the evaluator's: same uint8 pixels (the tensor resize and crop of the
    val/test pipeline) and the same normalisation, so the predicted probabilities are the evaluated ones."""
    trainer = folder_run
    assert trainer.args.train_crop == "rrc"
    card = load_checkpoint(trainer.checkpointer.path("best"))["model_card"]
    recipe = card_input(card)
    assert recipe["transform"] == {
        "resize": "shorter_side",
        "resize_to": 18,
        "center_crop": 16,
        "interpolation": "bilinear",
        "antialias": True,
        "backend": "torch",
    }
    assert recipe["mean"] == [0.485, 0.456, 0.406] and recipe["std"] == [0.229, 0.224, 0.225]
    test = trainer.datasets["test"]
    paths = [test.dataset.samples[i][0] for i in test.indices]
    pixels = torch.stack([test[j][0] for j in range(len(test))])  # what the evaluator's loader holds
    assert len(paths) >= 2 and pixels.shape[1:] == (3, 16, 16)
    for path, expected in zip(paths, pixels):
        got = image_file_to_input(path, recipe)
        assert got.dtype == torch.uint8 and torch.equal(got, expected), path
    results = _predict("--model_path", trainer.checkpointer.path("best"), *paths, "--topk", "2")
    with torch.no_grad():  # the evaluator's arithmetic: the loader's batch through the run's input stage
        model = trainer.model.eval()
        model.load_state_dict(load_checkpoint(trainer.checkpointer.path("best"))["model"])
        expected = torch.softmax(model(trainer.to_device(pixels)).float(), dim=1)
    for r, probs in zip(results, expected):
        got = torch.tensor([t["probability"] for t in sorted(r["top"], key=lambda t: t["index"])])
        assert torch.allclose(got, probs, atol=1e-6, rtol=0), (r["image"], got, probs)


def test_an_old_card_predicts_as_before(vanilla, tmp_path):
    """(b) A card of the "normalize" scheme (no recipe) means: resize the uint8 tensor to H x W, then 0.5 / 0.5."""
    best = load_checkpoint(vanilla.checkpointer.path("best"))
    card = best["model_card"]
    old = {
        **best,
        "model_card": {
            "trainer": card["trainer"],
            "class_names": card["class_names"],
            "input_shape": card["input_shape"],
            "normalize": OLD_NORMALIZE,
        },
    }
    save_checkpoint(old, str(tmp_path / "old_ckpt.pth"))
    path = str(tmp_path / "big.png")  # not 8x8: the old resize matters
    pixels = np.random.default_rng(1).integers(0, 256, (13, 11), dtype=np.uint8)
    Image.fromarray(pixels, "L").save(path)
    (result,) = _predict("--model_path", str(tmp_path / "old_ckpt.pth"), path, "--topk", "10")
    from torchvision.transforms import v2

    # predict.py of that time, written out: antialiased resize of the uint8 tensor, x / 255, (x - 0.5) / 0.5
    x = v2.functional.resize(torch.from_numpy(pixels)[None], [8, 8], antialias=True).float() / 255
    with torch.no_grad():
        model = vanilla.model.eval()
        model.load_state_dict(best["model"])
        probs = torch.softmax(model(((x - 0.5) / 0.5)[None]), dim=1)[0]
    got = torch.tensor([t["probability"] for t in sorted(result["top"], key=lambda t: t["index"])])
    assert torch.allclose(got, probs, atol=1e-6, rtol=0), (got, probs)


def test_bad_inputs_give_one_line_errors(vanilla, digit_pngs, tmp_path, capsys):
    paths, _ = digit_pngs
    best = vanilla.checkpointer.path("best")
    not_image = tmp_path / "notes.png"
    not_image.write_text("not an image")
    assert main(ClassifierPredictor, ["--model_path", best, paths[0], str(not_image)]) == 1
    assert f"cannot read image {not_image}" in capsys.readouterr().err
    assert main(ClassifierPredictor, ["--model_path", str(tmp_path / "missing.pth"), paths[0]]) == 1
    assert f"--model_path {tmp_path / 'missing.pth'}: no such file" in capsys.readouterr().err
    old = {k: v for k, v in load_checkpoint(best).items() if k != "model_card"}
    save_checkpoint(old, str(tmp_path / "old_ckpt.pth"))
    assert main(ClassifierPredictor, ["--model_path", str(tmp_path / "old_ckpt.pth"), paths[0]]) == 1
    assert "predates model cards" in capsys.readouterr().err
    card = load_checkpoint(best)["model_card"]
    for bad, said in (
        ({**card, "input": {**card["input"], "transform": {"resize": "pad"}}}, "resize 'pad'"),
        ({k: v for k, v in card.items() if k != "input"}, "no input recipe"),
        ({**{k: v for k, v in card.items() if k != "input"}, "normalize": "x / 127"}, "normalized as 'x / 127'"),
    ):
        save_checkpoint({**load_checkpoint(best), "model_card": bad}, str(tmp_path / "odd_ckpt.pth"))
        assert main(ClassifierPredictor, ["--model_path", str(tmp_path / "odd_ckpt.pth"), paths[0]]) == 1
        err = capsys.readouterr().err
        assert "its model card" in err and said in err and len(err.strip().splitlines()) == 1, err
    seg = {"trainer": "SegOnCarvanaTrainer", "trainer_class": "trainers.seg_on_carvana_trainer:SegOnCarvanaTrainer"}
    foreign = {**load_checkpoint(best), **seg}
    save_checkpoint(foreign, str(tmp_path / "seg_ckpt.pth"))
    assert main(ClassifierPredictor, ["--model_path", str(tmp_path / "seg_ckpt.pth"), paths[0]]) == 1
    assert "a SegOnCarvanaTrainer checkpoint" in capsys.readouterr().err
    assert main(ClassifierPredictor, ["--model_path", best, paths[0], "--topk", "0"]) == 2
    assert "--topk=0: must be > 0" in capsys.readouterr().err
    for key, value, status, said in (
        ("model_type", "NoSuchNet", 2, "model_type='NoSuchNet'"),
        ("batch_size", "lots", 2, "'batch_size'"),
    ):
        state = load_checkpoint(best)
        state["config"] = json.dumps({**json.loads(state["config"]), key: value})
        save_checkpoint(state, str(tmp_path / f"bad_{key}_ckpt.pth"))
        assert main(ClassifierPredictor, ["--model_path", str(tmp_path / f"bad_{key}_ckpt.pth"), paths[0]]) == status
        err = capsys.readouterr().err
        assert said in err and "Traceback" not in err and len(err.strip().splitlines()) == 1, err


def test_the_root_script(vanilla, digit_pngs):
    paths, _ = digit_pngs

    def predict_py(*argv):
        return subprocess.run(
            [sys.executable, "predict.py", *argv], cwd=ROOT, capture_output=True, text=True, timeout=120, check=False
        )

    proc = predict_py(
        "--model_path", vanilla.checkpointer.path("best"), paths[0], "--topk", "2", "--gpu_devices", "cpu"
    )
    assert proc.returncode == 0, proc.stderr
    (line,) = proc.stdout.splitlines()
    assert line.startswith(f"{paths[0]}: ") and line.count(", ") == 1
    proc = predict_py("--model_path", "no/such.pth", paths[0])
    assert proc.returncode == 1 and "--model_path no/such.pth: no such file" in proc.stderr
    assert "Traceback" not in proc.stderr


def test_a_zoo_model_this_version_lacks_is_one_line(vit, digit_pngs, tmp_path, capsys):
    paths, _ = digit_pngs
    state = load_checkpoint(vit.checkpointer.path("best"))
    state["config"] = json.dumps({**json.loads(state["config"]), "model_type": "vit_giant_99"})
    save_checkpoint(state, str(tmp_path / "future_ckpt.pth"))
    assert main(ClassifierPredictor, ["--model_path", str(tmp_path / "future_ckpt.pth"), paths[0]]) == 1
    err = capsys.readouterr().err
    assert "cannot rebuild its model" in err and "vit_giant_99" in err and len(err.strip().splitlines()) == 1, err
