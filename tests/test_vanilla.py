"""VanillaTrainer and its evaluator end to end on real data (scikit-learn's Digits)."""

import json
import os
import subprocess
import sys

import pytest
import torch

from base.checkpoint.files import load_checkpoint
from by_hand import top1_by_hand
from evaluators.vanilla_evaluator import VanillaEvaluator
from trainers.vanilla_trainer import VanillaTrainer
from utils import configcmp

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
QUICK = ["--epochs", "1", "--train_val_sample_rate", "0.3", "--gpu_devices", "cpu"]


def train(tmp_path, *argv):
    trainer = VanillaTrainer.from_argv(["--output_dir", str(tmp_path), *argv])
    return trainer, trainer.fit()


def test_quickstart_defaults_reach_95_percent_and_eval_reproduces(tmp_path, capsys):
    trainer, test_metrics = train(tmp_path, "--gpu_devices", "cpu")  # the README's `make train`
    assert test_metrics["top1"] >= 95.0
    best = trainer.checkpointer.path("best")
    assert os.path.basename(best) == "Vanilla_best_ckpt.pth"
    evaluator = VanillaEvaluator.from_argv(["--model_path", best])
    results = evaluator.run()
    assert results["top1"] == pytest.approx(test_metrics["top1"])
    assert results["num_samples"] == len(trainer.datasets["test"])
    assert sum(map(sum, results["confusion_matrix"])) == results["num_samples"]
    assert os.path.getsize(results["confusion_png"]) > 1000
    saved = json.load(open(evaluator.output_path(".json")))
    assert saved["top1"] == results["top1"] and len(saved["examples"]) == 10
    assert "confusion matrix" in capsys.readouterr().out


def test_cnn_and_mlp_log_parameter_count(tmp_path):
    for model_type in ("Vanilla", "SmallCNN"):
        trainer, metrics = train(tmp_path, *QUICK, "--model_type", model_type)
        log = open(os.path.join(trainer.run_dir, f"Vanilla_{trainer.timestamp}_log.txt")).read()
        assert f"model {model_type}:" in log and "parameters" in log
        assert metrics["top1"] == pytest.approx(top1_by_hand(trainer), abs=1e-9)


def test_eval_flag_overrides_saved_config(tmp_path):
    trainer, _ = train(tmp_path, *QUICK)
    evaluator = VanillaEvaluator.from_argv(
        ["--model_path", trainer.checkpointer.path("best"), "--test_sample_rate", "0.5", "--split", "test"]
    )
    results = evaluator.run()
    assert evaluator.task.args.test_sample_rate == 0.5
    assert results["num_samples"] == pytest.approx(len(trainer.datasets["test"]) / 2, abs=1)


def test_eval_help_lists_its_own_flags_before_the_trainer_flags_it_overrides():
    text = VanillaEvaluator.from_argv(["--model_path", "x.pth"]).parser.format_help()
    sections = text.split("\n\n")  # usage, description, then one block per group
    titles = [s.splitlines()[0] for s in sections[2:]]
    assert titles[:2] == ["options:", "evaluation:"] and len(titles) > 3, titles
    assert all(t.startswith("trainer flags (override the checkpoint's)") for t in titles[2:]), titles
    assert sections[0].startswith("usage: eval_vanilla.py [-h] --model_path MODEL_PATH [--split {test,val}]")
    options, evaluation = sections[2], sections[3]
    assert len(options.splitlines()) == 2 and "-h, --help" in options  # the trainer's loose flags moved out
    assert "--model_path" in evaluation and "*_ckpt.pth" in evaluation and ".safetensors" in evaluation
    assert "--batch_size" in "".join(sections[4:]) and "--batch_size" not in evaluation


def test_evaluate_runs_under_inference_mode(tmp_path):
    trainer, _ = train(tmp_path, *QUICK, "--max_steps", "2")

    class Probe(VanillaEvaluator):
        def evaluate(self):
            return {**super().evaluate(), "inference_mode": torch.is_inference_mode_enabled()}

    assert Probe.from_argv(["--model_path", trainer.checkpointer.path("best")]).run()["inference_mode"] is True


def test_configcmp_shows_exactly_the_changed_lr(tmp_path, capsys):
    a, _ = train(tmp_path, *QUICK, "--lr", "0.001")
    b, _ = train(tmp_path, *QUICK, "--lr", "0.01")
    diff = configcmp.compare(configcmp.load(a.run_dir), configcmp.load(b.run_dir))
    assert set(diff["changed"]) == {"lr"} and not diff["only_a"] and not diff["only_b"]
    assert diff["origins"]["lr"] == ("command line", "command line")
    assert set(diff["meta"]) == {"timestamp"}
    assert configcmp.main([a.run_dir, b.run_dir]) == 0
    out = capsys.readouterr().out
    assert "changed: lr: 0.001 (command line) -> 0.01 (command line)" in out
    assert "1 config key(s) differ" in out


def test_configcmp_key_on_one_side_only_is_reported(tmp_path, capsys):
    (tmp_path / "a.json").write_text(json.dumps({"lr": 1, "extra": True}))
    (tmp_path / "b.json").write_text(json.dumps({"lr": 1}))
    assert configcmp.main([str(tmp_path / "a.json"), str(tmp_path / "b.json")]) == 0
    assert "only in A: extra = True" in capsys.readouterr().out
    assert configcmp.main([str(tmp_path / "a.json"), str(tmp_path / "missing.json")]) == 2


def test_configcmp_keys_and_run_facts_on_either_side_only(tmp_path, capsys):
    # An older run (without a flag and without the git_dirty fact) against a newer one.
    old = {
        "config": {"lr": 1, "gone": True},
        "provenance": {"lr": "command line", "gone": "command line"},
        "meta": {"git_commit": "abc"},
    }
    new = {
        "config": {"lr": 1, "added": 3},
        "provenance": {"lr": "command line", "added": "subclass default (X)"},
        "meta": {"git_commit": "abc", "git_dirty": True},
    }
    (tmp_path / "a.json").write_text(json.dumps(old))
    (tmp_path / "b.json").write_text(json.dumps(new))
    diff = configcmp.compare(configcmp.load(str(tmp_path / "a.json")), configcmp.load(str(tmp_path / "b.json")))
    assert diff["only_a"] == {"gone": True} and diff["only_b"] == {"added": 3} and not diff["changed"]
    assert diff["meta"] == {"git_dirty": (configcmp.ABSENT, True)}
    assert configcmp.main([str(tmp_path / "a.json"), str(tmp_path / "b.json")]) == 0
    out = capsys.readouterr().out.splitlines()
    assert "  only in A: gone = True (command line)" in out
    assert "  only in B: added = 3 (subclass default (X))" in out
    assert "  run fact: git_dirty: (absent) -> True" in out and out[-1] == "2 config key(s) differ"
    (tmp_path / "c.json").write_text(json.dumps(dict(old, meta={"git_commit": "abc", "git_dirty": None})))
    no_git = configcmp.compare(configcmp.load(str(tmp_path / "a.json")), configcmp.load(str(tmp_path / "c.json")))
    assert no_git["meta"] == {"git_dirty": (configcmp.ABSENT, None)}  # recorded as unknown is not "not recorded"
    assert configcmp.main([str(tmp_path / "b.json"), str(tmp_path / "a.json")]) == 0  # and the other way round
    out = capsys.readouterr().out.splitlines()
    assert "  only in A: added = 3 (subclass default (X))" in out and "  only in B: gone = True (command line)" in out


def test_saved_config_starts_an_identical_run(tmp_path):
    a, _ = train(tmp_path, *QUICK, "--lr", "0.003", "--model_type", "SmallCNN")
    config = os.path.join(a.run_dir, f"config_Vanilla_{a.timestamp}.json")
    b, _ = train(tmp_path, "--config", config, "--max_steps", "2")
    assert b.args.lr == 0.003 and b.args.model_type == "SmallCNN" and b.args.max_steps == 2
    assert b.provenance["lr"] == f"config file ({config})"
    assert load_checkpoint(b.checkpointer.path("last"))["global_step"] == 2


ENTRY_ERRORS = [
    (["trainer_vanilla.py", "--batch_size", "0"], 2, "--batch_size=0: must be > 0"),
    (["trainer_vanilla.py", "--train_val_sample_rate", "1.5"], 2, "--train_val_sample_rate=1.5"),
    (["trainer_vanilla.py", "--data_type", "FashionMNIST"], 1, "--data_dir"),  # a missing data folder
    (["trainer_vanilla.py", "--model_type", "ResNet9000"], 2, "invalid choice: 'ResNet9000'"),
    (["eval_vanilla.py", "--model_path", "no/such.pth"], 1, "--model_path no/such.pth: no such file"),
]


@pytest.fixture(scope="module")
def entry_errors():
    """Each case of :data:`ENTRY_ERRORS` as a finished process, all started at once (each mostly imports torch)."""
    started = [
        subprocess.Popen([sys.executable, *argv], cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        for argv, _, _ in ENTRY_ERRORS
    ]
    return [(proc.communicate(timeout=120)[1], proc.returncode) for proc in started]


@pytest.mark.parametrize("case", range(len(ENTRY_ERRORS)), ids=[" ".join(c[0]) for c in ENTRY_ERRORS])
def test_entry_scripts_give_one_line_errors(entry_errors, case):
    _, status, message = ENTRY_ERRORS[case]
    stderr, returncode = entry_errors[case]
    assert returncode == status
    assert message in stderr and "Traceback" not in stderr


def test_fashionmnist_run_from_raw_idx_files(tmp_path):
    from test_data import write_mnist

    data_dir = tmp_path / "data"
    write_mnist(data_dir / "FashionMNIST" / "raw", n_train=60, n_test=20)
    trainer, metrics = train(
        tmp_path / "runs",
        "--data_type",
        "FashionMNIST",
        "--data_dir",
        str(data_dir),
        "--model_type",
        "SmallCNN",
        "--epochs",
        "2",
        "--batch_size",
        "16",
        "--gpu_devices",
        "cpu",
    )
    assert trainer.data.input_shape == (1, 28, 28) and trainer.data.class_names[0] == "T-shirt/top"
    assert len(trainer.datasets["test"]) == 20 and metrics["top1"] == pytest.approx(top1_by_hand(trainer), abs=1e-9)
    evaluator = VanillaEvaluator.from_argv(["--model_path", trainer.checkpointer.path("best")])
    assert evaluator.run()["top1"] == pytest.approx(metrics["top1"])


def test_eval_works_after_the_run_folder_moved(tmp_path):
    trainer, metrics = train(tmp_path / "cluster", *QUICK)
    moved = tmp_path / "laptop" / "run"
    os.makedirs(moved.parent)
    os.rename(trainer.run_dir, moved)
    os.rename(tmp_path / "cluster", tmp_path / "gone")
    (tmp_path / "cluster").write_text("")  # the saved --output_dir cannot be created here
    results = VanillaEvaluator.from_argv(["--model_path", str(moved / "Vanilla_best_ckpt.pth")]).run()
    assert results["top1"] == pytest.approx(metrics["top1"])


def test_eval_of_nan_weights_warns(tmp_path, capsys):
    from base.checkpoint.files import save_checkpoint

    trainer = VanillaTrainer.from_argv(
        ["--max_steps", "2", "--train_val_sample_rate", "0.2", "--gpu_devices", "cpu", "--output_dir", str(tmp_path)]
    )
    trainer.fit()
    state = load_checkpoint(trainer.checkpointer.path("best"))
    first = next(k for k, v in state["model"].items() if v.is_floating_point())
    state["model"][first] = torch.full_like(state["model"][first], float("nan"))
    path = str(tmp_path / "nan_ckpt.pth")
    save_checkpoint(state, path)
    capsys.readouterr()
    results = VanillaEvaluator.from_argv(["--model_path", path]).run()
    assert "non-finite weight values" in capsys.readouterr().err
    assert results["nonfinite_weights"] == state["model"][first].numel()
