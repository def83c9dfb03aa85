"""A ``--model_type timm/<name>`` run end to end: train, checkpoint, resume, evaluate, predict, export.

The name holds a slash; every file named after it must still land in the run
folder under one safe name (:func:`base.run.file_names.file_name_part`), and every
tool that finds a checkpoint by name must find it. timm's ``test_resnet`` (a
tiny ResNet, random init, nothing downloaded) on Digits, on the CPU.
"""

import glob
import json
import os
import subprocess
import sys

import pytest
import torch
from PIL import Image

from base.checkpoint.files import load_checkpoint
from base.cli import main
from base.run.file_names import file_name_part
from evaluators.classifier_predictor import ClassifierPredictor
from evaluators.vit_evaluator import ViTEvaluator
from trainers.vit_trainer import ViTTrainer
from utils import export

MODEL = "timm/test_resnet"
PART = "timm-test_resnet"
QUICK = [
    "--model_type",
    MODEL,
    "--data_type",
    "Digits",
    "--train_val_sample_rate",
    "0.1",
    "--test_sample_rate",
    "0.1",
    "--batch_size",
    "8",
    "--warmup_steps",
    "1",
    "--gpu_devices",
    "cpu",
    "--save_every_steps",
    "1",
    "--keep_last_k",
    "1",
]


@pytest.mark.parametrize(
    "value,part",
    [
        ("timm/resnet18", "timm-resnet18"),
        ("vit_ti_16", "vit_ti_16"),
        ("resnet18.a1_in1k", "resnet18.a1_in1k"),
        ("..", "--"),
        (".hidden", "-hidden"),
        ('a\\b:c*d?e"f<g>h|i j\nk', "a-b-c-d-e-f-g-h-i-j-k"),
        ("é", "-"),
    ],
)
def test_file_name_part(value, part):
    assert file_name_part(value) == part


def test_a_long_value_is_cut_and_keeps_a_distinct_end():
    a, b = file_name_part("x" * 300 + "a"), file_name_part("x" * 300 + "b")
    assert len(a) == len(b) == 120 and a != b and a.startswith("x" * 111 + "-")


def test_an_empty_value_is_refused():
    with pytest.raises(ValueError, match="empty"):
        file_name_part("")


def _run(tmp_path, capsys, *argv):
    status = main(ViTTrainer, ["--output_dir", str(tmp_path), *argv])
    err = capsys.readouterr().err
    assert status == 0, err


ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_a_timm_model_trains_resumes_evaluates_predicts_and_exports(tmp_path, capsys):
    # The first launch is the entry script in a process of its own, as a user runs it: the save that
    # used to fail ("the run folder ... is gone") is its first checkpoint.
    launch = subprocess.run(
        [
            sys.executable,
            os.path.join(ROOT, "trainer_vit.py"),
            "--output_dir",
            str(tmp_path),
            *QUICK,
            "--max_steps",
            "2",
        ],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        check=False,
    )
    assert launch.returncode == 0, launch.stderr[-2000:]
    (run_dir,) = glob.glob(str(tmp_path / "ViT" / "*"))
    files = set(os.listdir(run_dir))
    assert {
        f"{PART}_best_ckpt.pth",
        f"{PART}_last_ckpt.pth",
        f"{PART}_step2_ckpt.pth",
        f"{PART}_best.safetensors",
        f"{PART}_best.json",
    } <= files
    assert f"{PART}_step1_ckpt.pth" not in files  # --keep_last_k 1 found the older step checkpoint by its name
    assert not os.path.exists(os.path.join(run_dir, "timm"))

    _run(tmp_path, capsys, "--resume", run_dir, "--max_steps", "3")
    last = os.path.join(run_dir, f"{PART}_last_ckpt.pth")
    state = load_checkpoint(last)
    assert state["global_step"] == 3 and json.loads(state["config"])["model_type"] == MODEL
    steps = sorted(f for f in os.listdir(run_dir) if "_step" in f)
    assert steps == [f"{PART}_step3_ckpt.pth"]

    best = os.path.join(run_dir, f"{PART}_best_ckpt.pth")
    evaluator = ViTEvaluator.from_argv(["--model_path", best, "--gpu_devices", "cpu"])
    results = evaluator.run()
    with open(os.path.join(run_dir, f"{PART}_best_ckpt_eval_test.json")) as f:
        assert json.load(f)["top1"] == results["top1"]

    # predict.py on one test image, written as the 8-bit PNG an outside user would bring
    image, _ = evaluator.task.datasets["test"][0]  # uint8 (1, 8, 8)
    png = str(tmp_path / "digit.png")
    Image.fromarray(image[0].numpy(), "L").save(png)
    out = str(tmp_path / "preds.json")
    assert (
        main(
            ClassifierPredictor,
            ["--model_path", best, png, "--topk", "1", "--output_json", out, "--gpu_devices", "cpu"],
        )
        == 0
    )
    with open(out) as f:
        (prediction,) = json.load(f)["predictions"]
    with torch.no_grad():
        expected = int(evaluator.task.model(evaluator.task.to_device(image[None])).argmax(1))
    assert prediction["top"][0]["index"] == expected

    assert export.main(["--model_path", best, "--format", "torchscript", "--gpu_devices", "cpu"]) == 0
    assert os.path.getsize(os.path.join(run_dir, f"{PART}_best_ckpt.torchscript.pt")) > 0
    capsys.readouterr()
