"""A run inside a sweep: the ``--sweep_trial`` file's flag values, the ``after_validation`` hook point,
``request_stop`` (status ``pruned``), and ``TrialReporter`` against a real Optuna journal study."""

import csv
import glob
import json
import os
import subprocess
import sys

import pytest

from base.checkpoint.files import load_checkpoint
from base.errors import UserError
from base.hooks import HookBase
from base.run.external_trackers import MLFLOW_STATUS
from base.run.status import STATES, read_status
from base.run.sweep_trial import TrialReporter
from conftest import RecordingHook, ToyTrainer
from utils import runs

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def write_trial(path, params=None, **fields):
    """A trial file at ``path`` as utils.sweep writes one; ``fields`` replace its entries."""
    doc = {
        "trial": 3,
        "trial_id": 3,
        "params": {"lr": 0.02} if params is None else params,
        "storage": os.path.join(os.path.dirname(str(path)), "study.journal"),
        "study_name": "sweep",
        "pruner": {"name": "none"},
        "report": False,
        **fields,
    }
    with open(path, "w") as f:
        json.dump(doc, f)
    return str(path)


def make(argv, hooks=()):
    trainer = ToyTrainer.from_argv(argv)
    trainer.build_hooks = lambda: list(hooks)
    return trainer


def rows_of(run_dir):
    return list(csv.DictReader(open(os.path.join(run_dir, "metrics.csv"))))


# ----------------------------------------------------------------- the trial file's layer
def test_trial_params_sit_above_the_config_file_and_below_the_command_line(tmp_path, toy_argv):
    config = tmp_path / "c.json"
    config.write_text(json.dumps({"lr": 0.01, "epochs": 4, "batch_size": 4, "sweep_trial": "elsewhere.json"}))
    trial = write_trial(tmp_path / "trial.json", {"lr": 0.02, "batch_size": 8, "seed": 5})
    argv = toy_argv + ["--config", str(config), "--sweep_trial", trial, "--seed", "7"]
    trainer = ToyTrainer.from_argv(argv)
    a, origin = trainer.args, trainer.provenance
    assert (a.lr, origin["lr"]) == (0.02, "sweep trial 3")  # the trial beats the config file
    assert (a.batch_size, origin["batch_size"]) == (8, "sweep trial 3")
    assert (a.seed, origin["seed"]) == (7, "command line")  # the command line beats the trial
    assert (a.epochs, origin["epochs"]) == (4, f"config file ({config})")
    assert (a.sweep_trial, origin["sweep_trial"]) == (trial, "command line")
    # a --config file never makes a run a trial (a trial's saved config used again is a new run)
    alone = ToyTrainer.from_argv(toy_argv + ["--config", str(config)])
    assert alone.args.sweep_trial == "" and alone.args.lr == 0.01


@pytest.mark.parametrize(
    "content, message",
    [
        (None, "no such file"),
        ("{not json", "not a JSON trial file"),
        ("[1, 2]", "expected a JSON object, got a list"),
        ({"params": [["lr", 0.1]]}, "'params' must be an object"),
        ({"params": {"no_such_flag": 1}}, "unknown key 'no_such_flag'"),
        ({"params": {"batch_size": "many"}}, "bad value for 'batch_size'"),
        ({"params": {"resume": "auto"}}, "a trial cannot set --resume"),
        ({"trial": True}, "'trial' must be an integer"),
        ({"storage": None}, "'storage' must be text"),
        ({"report": "yes"}, "'report' must be true or false"),
        ({"pruner": {"name": "hyperband"}}, "pruner name 'hyperband' is not one of"),
        ({"pruner": {"name": "median", "n_warmup_steps": -1}}, "n_warmup_steps must be an integer >= 0"),
        ({"pruner": {"name": "none", "n_startup_trials": 3}}, "the none pruner takes no n_startup_trials"),
    ],
)
def test_a_bad_trial_file_is_one_line_naming_the_flag_and_file(tmp_path, toy_argv, capsys, content, message):
    path = tmp_path / "trial.json"
    if isinstance(content, str):
        path.write_text(content)
    elif isinstance(content, dict):
        params = content.pop("params", None)
        write_trial(path, params, **content)
    with pytest.raises(SystemExit) as exit_info:
        ToyTrainer.from_argv(toy_argv + ["--sweep_trial", str(path)])
    err = capsys.readouterr().err
    assert exit_info.value.code == 2
    assert len(err.strip().splitlines()) == 1
    assert f"error: --sweep_trial {path}: " in err and message in err


def test_a_resumed_trial_takes_a_new_trial_file_whose_params_count_as_resume_changes(tmp_path, toy_argv):
    first = write_trial(tmp_path / "a.json", {"lr": 0.05})
    trainer = make(toy_argv + ["--epochs", "1", "--sweep_trial", first])
    trainer.fit()
    second = write_trial(tmp_path / "b.json", {"lr": 0.02}, trial=4)
    resumed = ToyTrainer.from_argv(toy_argv + ["--resume", trainer.run_dir, "--epochs", "2", "--sweep_trial", second])
    assert resumed.resume_changes["lr"] == (0.05, 0.02) and resumed.provenance["lr"] == "sweep trial 4"
    assert resumed.resume_changes["sweep_trial"] == (first, second)
    # the run's saved trial file is read again on a plain resume: its params are no change
    again = ToyTrainer.from_argv(toy_argv + ["--resume", trainer.run_dir, "--epochs", "2"])
    assert again.args.lr == 0.05 and "lr" not in again.resume_changes and again.provenance["lr"] == "sweep trial 3"
    other = write_trial(tmp_path / "c.json", {"model_type": "Other"})
    with pytest.raises(UserError, match="--model_type 'Other': cannot change on --resume"):
        ToyTrainer.from_argv(toy_argv + ["--resume", trainer.run_dir, "--sweep_trial", other])


# ----------------------------------------------------------------- after_validation
class RowHook(HookBase):
    def __init__(self):
        self.rows = []

    def after_validation(self, row):
        self.rows.append((row, self.trainer.global_step, os.path.isfile(self.trainer.checkpointer.path("best"))))


def test_after_validation_gets_each_validations_row_once(toy_argv):
    hook = RowHook()
    trainer = make(toy_argv + ["--epochs", "3", "--batch_size", "20"], [hook])
    trainer.fit()
    written = rows_of(trainer.run_dir)
    assert [(r["epoch"], r["step"]) for r, _, _ in hook.rows] == [(1, 2), (2, 4), (3, 6)]
    assert [(int(w["epoch"]), int(w["step"])) for w in written] == [(1, 2), (2, 4), (3, 6)]
    for (row, step, best_saved), line in zip(hook.rows, written):
        assert set(row) == {"epoch", "step", "train_loss", "lr", "val_loss", "val_seconds"}
        assert row["step"] == step and best_saved  # called once the row is written and best saved
        assert row["val_loss"] == pytest.approx(float(line["val_loss"]))
    assert hook.rows[-1][0] == trainer.last_metrics


def test_an_error_in_after_validation_redoes_that_validation_on_resume(toy_argv):
    class FailOnce(HookBase):
        def after_validation(self, row):
            if row["epoch"] == 1:
                raise RuntimeError("hook failed")

    trainer = make(toy_argv + ["--epochs", "2", "--batch_size", "20"], [FailOnce()])
    with pytest.raises(RuntimeError, match="hook failed"):
        trainer.fit()
    hook = RecordingHook()
    resumed = make(toy_argv + ["--resume", trainer.run_dir], [hook])
    resumed.fit()
    assert hook.calls[:3] == ["before_train", "after_validation", "before_epoch"]
    assert [int(r["epoch"]) for r in rows_of(trainer.run_dir)] == [1, 2]  # the row once


# ----------------------------------------------------------------- request_stop
class StopAt(HookBase):
    def __init__(self, step):
        self.step = step

    def after_validation(self, row):
        if row["step"] == self.step:
            self.trainer.request_stop("pruned", f"test stop at step {self.step}")


@pytest.mark.parametrize("extra, stop_step", [([], 4), (["--val_every_steps", "3"], 3)])
def test_request_stop_ends_the_run_pruned_after_that_validation_and_a_resume_trains_no_further(
    toy_argv, capsys, extra, stop_step
):
    trainer = make(toy_argv + ["--epochs", "5", "--batch_size", "20", *extra], [StopAt(stop_step)])
    assert trainer.fit() == {}
    assert trainer.global_step == stop_step and trainer.last_metrics["step"] == stop_step
    run = trainer.run_dir
    status = read_status(run)
    assert status["status"] == "pruned" and status["stop_reason"] == f"test stop at step {stop_step}"
    assert "test" not in status and not os.path.exists(os.path.join(run, "test_metrics.json"))
    last = load_checkpoint(trainer.checkpointer.path("last"))
    assert last["global_step"] == stop_step
    assert last["stop_request"] == {"status": "pruned", "reason": f"test stop at step {stop_step}"}
    rows = len(rows_of(run))
    resumed = make(toy_argv + ["--resume", run])
    assert resumed.fit() == {}
    assert resumed.global_step == stop_step and len(rows_of(run)) == rows
    again = read_status(run)
    assert again["status"] == "pruned" and again["resumes"] == 1 and again["stop_reason"] == status["stop_reason"]
    log = "".join(open(p).read() for p in glob.glob(os.path.join(run, "*_log.txt")))
    assert f"was stopped at epoch {resumed.epoch}, step {stop_step} (pruned: test stop" in log
    capsys.readouterr()
    assert runs.main([str(os.path.dirname(os.path.dirname(run))), "--csv"]) == 0
    table = list(csv.DictReader(capsys.readouterr().out.splitlines()))
    assert [r["status"] for r in table] == ["pruned, resumed 1x"]


def test_runs_table_status_of_a_pruned_run_and_every_tracker_knows_the_state():
    assert runs.status_text({"status": "pruned"}) == "pruned"
    assert runs.status_text({"status": "pruned", "resumes": 2}) == "pruned, resumed 2x"
    assert "pruned" in STATES and set(MLFLOW_STATUS) == set(STATES) - {"running"}  # every way a launch ends


# ----------------------------------------------------------------- TrialReporter and a real study
def make_study(tmp_path, direction="minimize", good=-1.0):
    """A journal study with MedianPruner(1, 0), one trial completed by hand with ``good`` at steps 1..3, and a
    second trial asked: returns ``(storage path, that trial's number, its trial id)``."""
    import optuna

    path = str(tmp_path / "study.journal")
    storage = optuna.storages.JournalStorage(optuna.storages.journal.JournalFileBackend(path))
    pruner = optuna.pruners.MedianPruner(n_startup_trials=1, n_warmup_steps=0)
    study = optuna.create_study(study_name="sweep", storage=storage, direction=direction, pruner=pruner)
    first = study.ask()
    for step in (1, 2, 3):
        first.report(good, step)
    study.tell(first, good)
    second = study.ask()
    trial_id = storage.get_trial_id_from_study_id_trial_number(storage.get_study_id_from_name("sweep"), second.number)
    return path, second.number, trial_id


def study_trials(path):
    import optuna

    storage = optuna.storages.JournalStorage(optuna.storages.journal.JournalFileBackend(path))
    return optuna.load_study(study_name="sweep", storage=storage).trials


MEDIAN = {"name": "median", "n_startup_trials": 1, "n_warmup_steps": 0}


def test_a_trial_worse_than_the_median_is_pruned_after_its_first_epoch(tmp_path, toy_argv):
    storage, number, trial_id = make_study(tmp_path)  # the done trial's val_loss: -1 (unbeatable)
    trial = write_trial(
        tmp_path / "trial.json", {"lr": 0.05}, trial=number, trial_id=trial_id, storage=storage, pruner=MEDIAN,
        report=True,
    )  # fmt: skip
    trainer = ToyTrainer.from_argv(toy_argv + ["--epochs", "3", "--batch_size", "20", "--sweep_trial", trial])
    assert trainer.fit() == {}
    assert isinstance(trainer.hooks[-1], TrialReporter) and trainer.provenance["lr"] == f"sweep trial {number}"
    value = trainer.last_metrics["val_loss"]
    status = read_status(trainer.run_dir)
    assert status["status"] == "pruned" and trainer.epoch == 1
    assert status["stop_reason"] == f"pruned by the sweep's median pruner at epoch 1 (val_loss {value:.4g})"
    assert not os.path.exists(os.path.join(trainer.run_dir, "test_metrics.json"))
    reported = study_trials(storage)[number]
    assert reported.intermediate_values == {1: pytest.approx(value)}
    assert reported.state.name == "RUNNING"  # the sweep, not the run, tells the study how the trial ended


def test_a_trial_that_is_not_pruned_reports_every_validation_by_step_and_finishes(tmp_path, toy_argv):
    storage, number, trial_id = make_study(tmp_path)
    trial = write_trial(
        tmp_path / "trial.json", {}, trial=number, trial_id=trial_id, storage=storage, pruner={"name": "none"},
        report=True,
    )  # fmt: skip
    argv = toy_argv + ["--epochs", "2", "--batch_size", "20", "--val_every_steps", "1", "--sweep_trial", trial]
    trainer = ToyTrainer.from_argv(argv)
    assert "loss" in trainer.fit()
    assert read_status(trainer.run_dir)["status"] == "finished"
    values = study_trials(storage)[number].intermediate_values
    assert values == {int(r["step"]): pytest.approx(float(r["val_loss"])) for r in rows_of(trainer.run_dir)}
    assert sorted(values) == [1, 2, 3, 4]  # --val_every_steps: by optimizer step


def test_a_trial_file_that_does_not_report_leaves_the_study_alone(tmp_path, toy_argv):
    storage, number, trial_id = make_study(tmp_path)
    trial = write_trial(tmp_path / "trial.json", {}, trial=number, trial_id=trial_id, storage=storage, pruner=MEDIAN)
    trainer = ToyTrainer.from_argv(toy_argv + ["--epochs", "2", "--batch_size", "20", "--sweep_trial", trial])
    trainer.fit()
    assert read_status(trainer.run_dir)["status"] == "finished"
    assert study_trials(storage)[number].intermediate_values == {}


@pytest.mark.parametrize(
    "direction, fields, message",
    [
        ("maximize", {}, "study 'sweep' has directions ['maximize'], but ToyTrainer reports val_loss"),
        ("minimize", {"storage": "gone.journal"}, "its study storage gone.journal does not exist"),
        ("minimize", {"trial_id": 0, "trial": 0}, "trial 0 of study 'sweep' is complete already"),
    ],
)
def test_a_study_the_run_cannot_report_to_stops_it_with_one_line(tmp_path, toy_argv, direction, fields, message):
    storage, number, trial_id = make_study(tmp_path, direction)
    doc = {"trial": number, "trial_id": trial_id, "storage": storage, "pruner": MEDIAN, "report": True, **fields}
    trial = write_trial(tmp_path / "trial.json", {}, **doc)
    trainer = ToyTrainer.from_argv(toy_argv + ["--epochs", "1", "--batch_size", "20", "--sweep_trial", trial])
    with pytest.raises(UserError) as error:
        trainer.fit()
    assert str(error.value).startswith(f"--sweep_trial {trial}: ") and message in str(error.value)
    assert read_status(trainer.run_dir)["status"] == "crashed"


def test_a_ddp_trial_is_pruned_on_every_process_after_the_same_validation(tmp_path):
    storage, number, trial_id = make_study(tmp_path, "maximize", good=101.0)  # top1 of 101%: unbeatable
    trial = write_trial(
        tmp_path / "trial.json", {"lr": 0.05}, trial=number, trial_id=trial_id, storage=storage, pruner=MEDIAN,
        report=True,
    )  # fmt: skip
    out = tmp_path / "out"
    argv = ["--output_dir", str(out), "--gpu_devices", "cpu", "--batch_size", "3", "--sweep_trial", trial]
    done = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
         os.path.join(ROOT, "tests", "dist_toy.py"), *argv],
        cwd=ROOT, capture_output=True, text=True, timeout=180, env={**os.environ, "OMP_NUM_THREADS": "1"},
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    (run,) = [os.path.join(out, "DistToy", d) for d in os.listdir(os.path.join(out, "DistToy"))]
    status = read_status(run)
    assert status["status"] == "pruned" and status["epoch"] == 1
    assert status["stop_reason"].startswith("pruned by the sweep's median pruner at epoch 1 (val_top1 ")
    assert list(study_trials(storage)[number].intermediate_values) == [1]
    assert not os.path.exists(os.path.join(run, "test_metrics.json"))
