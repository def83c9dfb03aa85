"""predict.py: top-k classes of image files from a classifier checkpoint alone (Digits runs, CPU)."""
import json
import os
import subprocess
import sys

import numpy as np
import pytest
import torch
from PIL import Image

from base.checkpoint import load_checkpoint, save_checkpoint
from base.cli import main
from data.images import ImageFiles, image_file_to_input
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
    return _train(ViTTrainer, tmp_path_factory.mktemp("vit"), "--data_type", "Digits", "--patch_size", "4",
                  "--max_steps", "2", "--warmup_steps", "1", "--train_val_sample_rate", "0.1",
                  "--test_sample_rate", "0.1")


@pytest.fixture(scope="module")
def digit_pngs(vanilla, tmp_path_factory):
    """``(paths, images float32 (N, 1, 8, 8))``: real Digits test images as 8-bit PNGs, and as the dataset gives them.

    Digits' values 0..16 are written as ``round(v * 255 / 16)``: the same [0, 1]
    brightness a 0..255 image file has, up to 8-bit rounding.
    """
    folder = tmp_path_factory.mktemp("pngs")
    test = vanilla.datasets["test"]  # a Subset of the 0..16 uint8 digits
    paths, images = [], []
    for j in range(NUM_IMAGES):
        raw = test.dataset.images[test.indices[j], 0].numpy().astype(np.float64)
        path = str(folder / f"digit{j}.png")
        Image.fromarray(np.rint(raw * 255 / 16).astype(np.uint8), "L").save(path)
        paths.append(path)
        images.append(test[j][0])
    return paths, torch.stack(images)


def _model_probs(trainer, images):
    """Softmax of the best checkpoint's model on ``images`` taken through the dataset."""
    model = trainer.model
    model.load_state_dict(load_checkpoint(trainer.checkpoint_path("best"))["model"])
    with torch.no_grad():
        return torch.softmax(model.eval()(images).float(), dim=1)


def _predict(*argv):
    return ClassifierPredictor.from_argv([*argv, "--gpu_devices", "cpu"]).run()


@pytest.mark.parametrize("run,fmt", [("vanilla", "pth"), ("vanilla", "safetensors"), ("vit", "pth"),
                                     ("vit", "safetensors")])
def test_png_predictions_match_the_model_on_the_dataset_image(run, fmt, digit_pngs, request, capsys):
    trainer = request.getfixturevalue(run)
    paths, images = digit_pngs
    before = sorted(os.listdir(trainer.run_dir))
    model_path = (trainer.checkpoint_path("best") if fmt == "pth"
                  else os.path.join(trainer.run_dir, f"{trainer.args.model_type}_best.safetensors"))
    results = _predict("--model_path", model_path, *paths, "--topk", "50")  # capped at the 10 classes
    expected = _model_probs(trainer, images)
    assert [r["image"] for r in results] == paths
    for r, probs in zip(results, expected):
        top = r["top"]
        assert len(top) == 10 and [t["class"] for t in top] == [str(t["index"]) for t in top]
        assert sum(t["probability"] for t in top) == pytest.approx(1.0, abs=1e-5)
        assert [t["probability"] for t in top] == sorted((t["probability"] for t in top), reverse=True)
        assert top[0]["index"] == int(probs.argmax())
        # 8-bit rounding of the PNG moves pixels by < 0.004 of the [-1, 1] range: far below this
        got = torch.tensor([t["probability"] for t in sorted(top, key=lambda t: t["index"])])
        assert torch.allclose(got, probs, atol=5e-3), (r["image"], got, probs)
    out = capsys.readouterr().out.splitlines()
    assert len(out) == NUM_IMAGES and out[0].startswith(f"{paths[0]}: ")
    assert sorted(os.listdir(trainer.run_dir)) == before  # predicting writes nothing beside the checkpoint


def test_the_vanilla_model_predicts_the_digits_it_learned(vanilla, digit_pngs):
    """The run really learned, so the argmax comparison above is not between two near-uniform outputs."""
    paths, _ = digit_pngs
    results = _predict("--model_path", vanilla.checkpoint_path("best"), *paths)
    labels = [vanilla.datasets["test"][j][1] for j in range(NUM_IMAGES)]
    assert all(len(r["top"]) == 5 for r in results)  # --topk defaults to 5
    assert sum(r["top"][0]["index"] == label for r, label in zip(results, labels)) >= NUM_IMAGES - 3
    assert min(r["top"][0]["probability"] for r in results) > 0.3


def test_output_json_and_topk(vanilla, digit_pngs, tmp_path):
    paths, _ = digit_pngs
    out = tmp_path / "preds.json"
    results = _predict("--model_path", vanilla.checkpoint_path("best"), paths[0], paths[1], "--topk", "3",
                       "--output_json", str(out))
    saved = json.loads(out.read_text())
    assert saved["predictions"] == results and saved["class_names"] == [str(d) for d in range(10)]
    assert [len(r["top"]) for r in results] == [3, 3]


def test_file_preprocessing_equals_the_image_folder_dataset(tmp_path):
    """An RGB file of another size and shape goes through the same resize and scaling as ImageFiles'."""
    path = str(tmp_path / "photo.png")
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 256, (37, 53, 3), dtype=np.uint8), "RGB").save(path)
    expected, _ = ImageFiles([(path, 0)], 16)[0]
    got = image_file_to_input(path, (3, 16, 16))
    assert got.shape == (3, 16, 16) and got.dtype == torch.float32
    assert torch.allclose(got, expected, atol=1e-6)
    gray = image_file_to_input(path, (1, 8, 8))  # an RGB file for a grayscale model: converted to "L"
    assert gray.shape == (1, 8, 8)
    # Luma (ITU-R 601, PIL's "L") of the RGB input, up to the rounding of "L" to 8 bits before resizing
    luma = (torch.tensor([0.299, 0.587, 0.114])[:, None, None] * expected).sum(0, keepdim=True)
    torch.testing.assert_close(image_file_to_input(path, (1, 16, 16)), luma, rtol=0, atol=4 / 255)


def test_bad_inputs_give_one_line_errors(vanilla, digit_pngs, tmp_path, capsys):
    paths, _ = digit_pngs
    best = vanilla.checkpoint_path("best")
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
    foreign = {**load_checkpoint(best), "trainer": "SegOnCarvanaTrainer"}
    save_checkpoint(foreign, str(tmp_path / "seg_ckpt.pth"))
    assert main(ClassifierPredictor, ["--model_path", str(tmp_path / "seg_ckpt.pth"), paths[0]]) == 1
    assert "a SegOnCarvanaTrainer checkpoint" in capsys.readouterr().err
    assert main(ClassifierPredictor, ["--model_path", best, paths[0], "--topk", "0"]) == 2
    assert "--topk=0: must be > 0" in capsys.readouterr().err
    for key, value, status, said in (("model_type", "NoSuchNet", 2, "model_type='NoSuchNet'"),
                                     ("batch_size", "lots", 2, "'batch_size'")):
        state = load_checkpoint(best)
        state["config"] = json.dumps({**json.loads(state["config"]), key: value})
        save_checkpoint(state, str(tmp_path / f"bad_{key}_ckpt.pth"))
        assert main(ClassifierPredictor, ["--model_path", str(tmp_path / f"bad_{key}_ckpt.pth"), paths[0]]) == status
        err = capsys.readouterr().err
        assert said in err and "Traceback" not in err and len(err.strip().splitlines()) == 1, err


def test_the_root_script(vanilla, digit_pngs):
    paths, _ = digit_pngs

    def predict_py(*argv):
        return subprocess.run([sys.executable, "predict.py", *argv], cwd=ROOT, capture_output=True, text=True,
                              timeout=120, check=False)

    proc = predict_py("--model_path", vanilla.checkpoint_path("best"), paths[0], "--topk", "2", "--gpu_devices", "cpu")
    assert proc.returncode == 0, proc.stderr
    line, = proc.stdout.splitlines()
    assert line.startswith(f"{paths[0]}: ") and line.count(", ") == 1
    proc = predict_py("--model_path", "no/such.pth", paths[0])
    assert proc.returncode == 1 and "--model_path no/such.pth: no such file" in proc.stderr
    assert "Traceback" not in proc.stderr


def test_a_zoo_model_this_version_lacks_is_one_line(vit, digit_pngs, tmp_path, capsys):
    paths, _ = digit_pngs
    state = load_checkpoint(vit.checkpoint_path("best"))
    state["config"] = json.dumps({**json.loads(state["config"]), "model_type": "vit_giant_99"})
    save_checkpoint(state, str(tmp_path / "future_ckpt.pth"))
    assert main(ClassifierPredictor, ["--model_path", str(tmp_path / "future_ckpt.pth"), paths[0]]) == 1
    err = capsys.readouterr().err
    assert "cannot rebuild its model" in err and "vit_giant_99" in err and len(err.strip().splitlines()) == 1, err
