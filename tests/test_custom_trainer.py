"""A user's own task subclass: its checkpoints record ``"module:Class"``, and the evaluators, predict.py,
predict_seg.py and utils.export rebuild the task with that class; outside the project only with ``--trust_module``.

One tiny run of ``tests/fixtures/custom_tasks.py``'s ``MyTrainer`` (a VanillaTrainer with its own model,
which VanillaTrainer could not load), imported from a copy of that file outside the repository.
Other checkpoints are that run's best one with the recorded class rewritten. A checkpoint of before
the ``"trainer_class"`` key evaluates as it did: tests/test_old_run_folder.py.
"""

import json
import os
import shutil
import subprocess
import sys
import types

import pytest
import torch
from PIL import Image

from base.checkpoint import trainer_class
from base.checkpoint.files import load_checkpoint, save_checkpoint
from base.cli import main
from base.errors import CheckpointError
from evaluators.classifier_predictor import ClassifierPredictor
from evaluators.seg_predictor import SegPredictor
from evaluators.vanilla_evaluator import VanillaEvaluator
from trainers.vanilla_trainer import VanillaTrainer
from utils import export

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
OUTSIDE = "custom_tasks_outside"  # the module name of the copy outside the repository
INSIDE = "tests.fixtures.custom_tasks"


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """``(trainer, module folder outside the repository)``: one epoch of ``MyTrainer`` on a fifth of Digits."""
    folder = tmp_path_factory.mktemp("outside")
    assert not os.path.abspath(folder).startswith(ROOT + os.sep)
    shutil.copy(os.path.join(ROOT, "tests", "fixtures", "custom_tasks.py"), folder / f"{OUTSIDE}.py")
    sys.path.insert(0, str(folder))
    try:
        module = __import__(OUTSIDE)
        trainer = module.MyTrainer.from_argv(
            ["--output_dir", str(folder / "runs"), "--gpu_devices", "cpu", "--data_type", "Digits", "--epochs", "1",
             "--train_val_sample_rate", "0.2", "--batch_size", "16", "--lr", "1e-2"]
        )  # fmt: skip
        trainer.fit()
        yield trainer, str(folder)
    finally:
        sys.path.remove(str(folder))
        sys.modules.pop(OUTSIDE, None)


def _best(trainer):
    return trainer.checkpointer.path("best")


def _rewritten(trainer, tmp_path, ref, **changes):
    """A copy of the run's best checkpoint recording ``ref`` (``None``: no ``trainer_class``, as older files)."""
    state = load_checkpoint(_best(trainer))
    state.pop("trainer_class")
    if ref is not None:
        state["trainer_class"] = ref
    state.update(changes)
    path = str(tmp_path / "Vanilla_best_ckpt.pth")
    save_checkpoint(state, path)
    return path


def _evaluate(capsys, path, *flags):
    """``(status, stdout, stderr)`` of eval_vanilla.py on ``path`` (test split), in this process."""
    status = main(VanillaEvaluator, ["--model_path", path, "--gpu_devices", "cpu", *flags])
    out, err = capsys.readouterr()
    return status, out, err


def test_checkpoints_and_the_export_record_module_and_class(run):
    trainer, _ = run
    ref = f"{OUTSIDE}:MyTrainer"
    state = load_checkpoint(_best(trainer))
    assert state["trainer_class"] == ref and state["trainer"] == "MyTrainer"  # the name kept for older readers
    with open(os.path.join(trainer.run_dir, "Vanilla_best.json"), encoding="utf-8") as f:
        assert json.load(f)["trainer_class"] == ref
    assert trainer_class.trainer_ref(VanillaTrainer) == "trainers.vanilla_trainer:VanillaTrainer"


@pytest.mark.parametrize(
    "spec,file,expected",
    [
        ("pkg.train", "/elsewhere/pkg/train.py", "pkg.train"),  # python -m pkg.train
        (None, os.path.join(ROOT, "my_project", "train.py"), "my_project.train"),  # inside the project
        (None, "/elsewhere/pkg/train.py", "train"),  # outside: the stem its own folder imports
    ],
)
def test_a_class_of_a_script_run_as_main_records_the_module_that_imports_it(spec, file, expected, monkeypatch):
    main_module = types.ModuleType("__main__")
    main_module.__file__ = file
    main_module.__spec__ = types.SimpleNamespace(name=spec) if spec else None
    monkeypatch.setitem(sys.modules, "__main__", main_module)
    task = type("ScriptTrainer", (VanillaTrainer,), {"__module__": "__main__"})
    assert trainer_class.trainer_ref(task) == f"{expected}:ScriptTrainer"


def test_eval_refuses_a_module_outside_the_project_in_one_line_and_writes_nothing(run):
    trainer, folder = run
    best = _best(trainer)
    before = sorted(os.listdir(trainer.run_dir))
    proc = subprocess.run(
        [sys.executable, "eval_vanilla.py", "--model_path", best, "--gpu_devices", "cpu"],
        cwd=ROOT,
        env={**os.environ, "PYTHONPATH": folder},
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert proc.returncode == 1, proc.stderr
    assert proc.stderr.strip() == (
        f"eval_vanilla.py: error: --model_path {best}: its trainer {OUTSIDE}:MyTrainer comes from "
        f"{os.path.realpath(os.path.join(folder, OUTSIDE + '.py'))}, outside this project; pass --trust_module "
        f"to import it (importing runs its code)"
    )
    assert sorted(os.listdir(trainer.run_dir)) == before


def test_eval_with_trust_module_rebuilds_the_subclass_and_scores_the_runs_test_top1(run, capsys):
    trainer, _ = run
    status, out, err = _evaluate(capsys, _best(trainer))  # in this process too: refused
    assert status == 1 and "--trust_module" in err and len(err.strip().splitlines()) == 1
    evaluator = VanillaEvaluator.from_argv(["--model_path", _best(trainer), "--gpu_devices", "cpu", "--trust_module"])
    results = evaluator.run()
    assert type(evaluator.task).__name__ == "MyTrainer" and type(evaluator.task.model).__name__ == "TinyConv"
    with open(os.path.join(trainer.run_dir, "test_metrics.json"), encoding="utf-8") as f:
        recorded = json.load(f)
    assert recorded["checkpoint"] == os.path.basename(_best(trainer))
    assert results["top1"] == pytest.approx(recorded["top1"]) and results["num_samples"] == len(
        trainer.datasets["test"]
    )


def test_a_subclass_inside_the_project_loads_without_the_flag(run, tmp_path, capsys):
    trainer, _ = run
    path = _rewritten(trainer, tmp_path, f"{INSIDE}:MyTrainer")
    evaluator = VanillaEvaluator.from_argv(["--model_path", path, "--gpu_devices", "cpu"])
    results = evaluator.run()
    assert type(evaluator.task).__module__ == INSIDE
    with open(os.path.join(trainer.run_dir, "test_metrics.json"), encoding="utf-8") as f:
        assert results["top1"] == pytest.approx(json.load(f)["top1"])


@pytest.mark.parametrize(
    "ref,message",
    [
        (f"{INSIDE}:TinyConv", f"its trainer {INSIDE}:TinyConv is not a TrainerBase subclass"),
        (
            "no_such_module_here:MyTrainer",
            "its trainer no_such_module_here:MyTrainer comes from module "
            "no_such_module_here, which is not importable here",
        ),  # fmt: skip
        (f"{INSIDE}:NoSuchTrainer", f"its trainer {INSIDE}:NoSuchTrainer: module {INSIDE} ("),
        (
            "trainers.seg_on_carvana_trainer:SegOnCarvanaTrainer",
            "a SegOnCarvanaTrainer checkpoint; eval_vanilla.py "
            "evaluates VanillaTrainer checkpoints (use eval_seg_on_carvana.py)",
        ),  # fmt: skip
        (None, "a MyTrainer checkpoint; eval_vanilla.py evaluates VanillaTrainer checkpoints"),  # as before the key
    ],
)
def test_recorded_classes_that_cannot_be_used_are_refused_in_one_line(run, tmp_path, capsys, ref, message):
    trainer, _ = run
    changes = {"eval_script": "eval_seg_on_carvana.py"} if ref and "seg" in ref else {}
    path = _rewritten(trainer, tmp_path, ref, **changes)
    status, out, err = _evaluate(capsys, path, "--trust_module")
    assert status == 1 and f"--model_path {path}: {message}" in err, err
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err
    assert not os.path.exists(str(tmp_path / "Vanilla_best_ckpt_eval_test.json"))


def test_predict_with_trust_module_gives_the_custom_models_probabilities(run, tmp_path, capsys):
    trainer, _ = run
    test = trainer.datasets["test"]
    paths, images = [], []
    for j in range(6):
        path = str(tmp_path / f"digit{j}.png")
        Image.fromarray(test.dataset.images[test.indices[j], 0].numpy(), "L").save(path)
        paths.append(path)
        images.append(test[j][0])
    argv = ["--model_path", _best(trainer), *paths, "--topk", "10", "--gpu_devices", "cpu"]
    with pytest.raises(CheckpointError, match="--trust_module"):
        ClassifierPredictor.from_argv(argv).run()
    results = ClassifierPredictor.from_argv([*argv, "--trust_module"]).run()
    model = trainer.model
    model.load_state_dict(load_checkpoint(_best(trainer))["model"])
    with torch.no_grad():
        expected = torch.softmax(model.eval()(trainer.to_device(torch.stack(images))), dim=1)
    for r, probs in zip(results, expected):
        got = {t["index"]: t["probability"] for t in r["top"]}
        assert [got[i] for i in range(10)] == pytest.approx(probs.tolist(), abs=1e-5)


def test_predict_refuses_a_task_that_overrides_build_model_alone(run, tmp_path):
    trainer, _ = run
    path = _rewritten(trainer, tmp_path, f"{INSIDE}:BuildModelOnly")
    with pytest.raises(CheckpointError, match="overrides build_model but not model_for"):
        ClassifierPredictor.from_argv(["--model_path", path, "x.png", "--gpu_devices", "cpu"]).run()


def test_predict_seg_rebuilds_a_segmentation_subclass(tmp_path):
    predictor = SegPredictor.from_argv(["--model_path", "x.pth", "x.png", "--out", str(tmp_path)])
    extras = {"trainer": "MySegTrainer", "trainer_class": f"{INSIDE}:MySegTrainer", "weights": "model"}
    assert predictor.trainer_for(extras).__qualname__ == "MySegTrainer"
    with pytest.raises(CheckpointError, match="predict_seg.py evaluates SegTrainer checkpoints"):
        predictor.trainer_for({**extras, "trainer_class": f"{INSIDE}:MyTrainer", "trainer": "MyTrainer"})


@pytest.mark.parametrize("source", ["safetensors", "pth"])
def test_export_with_trust_module_matches_the_custom_model(run, capsys, source):
    """TorchScript, the cheapest format: which class rebuilds the model does not depend on the format
    (tests/test_export.py checks every format on a built-in run)."""
    trainer, _ = run
    path = os.path.join(trainer.run_dir, "Vanilla_best.safetensors") if source == "safetensors" else _best(trainer)
    fmt = "torchscript"
    argv = ["--model_path", path, "--format", fmt, "--gpu_devices", "cpu"]
    assert export.main(argv) == 1
    assert "pass --trust_module to import it" in capsys.readouterr().err
    assert export.main([*argv, "--trust_module"]) == 0, capsys.readouterr().err
    output = os.path.splitext(path)[0] + export.SUFFIXES[fmt]
    model = trainer.model
    model.load_state_dict(load_checkpoint(_best(trainer))["model"])
    images = trainer.inputs.to_device(torch.stack([trainer.datasets["val"][i][0] for i in range(4)]))
    with torch.no_grad():
        expected = model.eval()(images)
        got = export.load_export(fmt, output, torch.device("cpu"))(images)[0]
    assert got.shape == expected.shape and float((got - expected).abs().max()) <= 1e-4
