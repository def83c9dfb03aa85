"""Each point once in every logger: after kill -9 and a resume, after the test, after resuming a finished run.

MLflow is read from its file store (``<store>/<experiment>/<run>/metrics/<key>``, one line
``timestamp value step`` per point, a key's '/' a subfolder), TensorBoard through its own
reader (which drops what a resumed writer's ``purge_step`` hides), ``scalars.csv`` as rows.
"""

import collections
import csv
import glob
import json
import os
import shutil
import signal
import subprocess
import sys
import textwrap

import pytest
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from base.hooks import HookBase
from conftest import ToyTrainer
from test_bad_input import error_line, run_main
from test_loggers import tracker_env  # noqa: F401 - a fixture, used by `out`

pytest.importorskip("mlflow")

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# 40 samples in batches of 8: 5 steps an epoch; train/* at even steps, validations (and `last`) at 5 and 10
ARGV = [
    "--epochs",
    "2",
    "--log_every_steps",
    "2",
    "--gpu_devices",
    "cpu",
    "--deterministic",
    "--loggers",
    "tensorboard,csv,mlflow",
]


@pytest.fixture
def out(tracker_env):  # noqa: F811 - the fixture imported above
    """The output folder; MLflow's file store is ``<out>/mlruns``, W&B offline (see ``tracker_env``)."""
    return tracker_env


def mlflow_points(out):
    """``{key: [(step, value), ...]}`` in file order, of the one MLflow run in ``<out>/mlruns``."""
    (metrics,) = glob.glob(str(out / "mlruns" / "*" / "*" / "metrics"))
    points = {}
    for folder, _, files in os.walk(metrics):
        for name in files:
            key = os.path.relpath(os.path.join(folder, name), metrics).replace(os.sep, "/")
            lines = open(os.path.join(folder, name)).read().split()
            points[key] = [(int(lines[i + 2]), float(lines[i + 1])) for i in range(0, len(lines), 3)]
    return points


def tensorboard_points(run_dir):
    events = EventAccumulator(os.path.join(run_dir, "summary")).Reload()
    return {tag: [(e.step, e.value) for e in events.Scalars(tag)] for tag in events.Tags()["scalars"]}


def csv_points(run_dir):
    points = collections.defaultdict(list)
    for step, name, value in list(csv.reader(open(os.path.join(run_dir, "scalars.csv"))))[1:]:
        points[name].append((int(step), float(value)))
    return dict(points)


def all_points(out, run_dir):
    return {"mlflow": mlflow_points(out), "tensorboard": tensorboard_points(run_dir), "csv": csv_points(run_dir)}


def assert_each_point_once(points, train_steps, test_step):
    for logger, keys in points.items():
        assert [s for s, _ in keys["train/loss"]] == train_steps, logger
        assert [s for s, _ in keys["val/loss"]] == [5, 10], logger
        assert [s for s, _ in keys["test/loss"]] == [test_step], logger
        for key, got in keys.items():
            steps = [s for s, _ in got]
            assert len(steps) == len(set(steps)), (logger, key, steps)


KILLED = textwrap.dedent("""
    import os, signal, sys
    sys.path[:0] = [{root!r}, os.path.join({root!r}, "tests")]
    from base.hooks import HookBase
    from conftest import ToyTrainer

    class KillAfterLogging(HookBase):
        # after_step runs once the step's train/* are logged: the last checkpoint is step 5's
        def after_step(self):
            if self.trainer.global_step == 8:
                self.trainer.tracking.trackers.flush()  # as if the writers' own timers had flushed them
                os.kill(os.getpid(), signal.SIGKILL)

    trainer = ToyTrainer.from_argv(sys.argv[1:])
    trainer.build_hooks = lambda: [KillAfterLogging()]
    trainer.fit()
""")


def test_kill_9_after_a_logged_window_then_resume_logs_each_point_once(out):
    proc = subprocess.run(
        [sys.executable, "-c", KILLED.format(root=ROOT), "--output_dir", str(out), *ARGV],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == -signal.SIGKILL, proc.stderr[-3000:]
    (run_dir,) = glob.glob(str(out / "Toy" / "*"))
    killed = mlflow_points(out)
    assert [s for s, _ in killed["train/loss"]] == [2, 4, 6, 8]  # steps 6 and 8 logged after the checkpoint
    assert [s for s, _ in tensorboard_points(run_dir)["train/loss"]] == [2, 4, 6, 8]

    resumed = ToyTrainer.from_argv(["--resume", run_dir])
    resumed.fit()
    assert resumed.global_step == 10
    points = all_points(out, run_dir)
    assert_each_point_once(points, [2, 4, 6, 8, 10], 10)
    # The resume is exact: the points it did not log again hold the values it computed (TensorBoard: float32).
    assert points["mlflow"]["train/loss"] == points["csv"]["train/loss"]
    assert dict(points["tensorboard"]["train/loss"]) == pytest.approx(dict(points["csv"]["train/loss"]), rel=1e-6)


class FailsInValidation(ToyTrainer):
    """Raises once inside the validation at step 10, after that step's train/* were logged."""

    failed = False

    def validate(self, model, loader):
        if self.global_step == 10 and not FailsInValidation.failed:
            FailsInValidation.failed = True
            raise RuntimeError("boom in validation")
        return super().validate(model, loader)


def test_a_validation_redone_on_resume_keeps_the_training_points_of_its_step(out):
    first = FailsInValidation.from_argv(["--output_dir", str(out), *ARGV])
    with pytest.raises(RuntimeError, match="boom in validation"):
        first.fit()
    resumed = FailsInValidation.from_argv(["--resume", first.run_dir])
    resumed.fit()
    assert resumed.resume_from[1].endswith("Toy_exception_ckpt.pth")  # taken inside the validation
    points = all_points(out, first.run_dir)
    del points["csv"]  # (its rows follow the row rules of metrics.csv)
    assert_each_point_once(points, [2, 4, 6, 8, 10], 10)


class MLflowStatusProbe(HookBase):
    """The MLflow run's status as training starts."""

    def __init__(self, client, run_id):
        self.client, self.run_id, self.seen = client, run_id, []

    def before_train(self):
        self.seen.append(self.client.get_run(self.run_id).info.status)


def test_the_test_is_logged_once_and_resuming_the_finished_run_logs_nothing(out):
    from mlflow.tracking import MlflowClient

    first = ToyTrainer.from_argv(["--output_dir", str(out), *ARGV])
    first.fit()
    before = all_points(out, first.run_dir)
    assert_each_point_once(before, [2, 4, 6, 8, 10], 10)
    test = json.load(open(os.path.join(first.run_dir, "test_metrics.json")))
    assert before["mlflow"]["test/loss"] == [(10, pytest.approx(test["loss"], rel=1e-12))]
    assert before["mlflow"]["best/val_loss"] == [(10, first.early_stopper.best)]

    client = MlflowClient(tracking_uri=(out / "mlruns").resolve().as_uri())
    run_id = json.load(open(os.path.join(first.run_dir, "mlflow_run.json")))["run_id"]
    probe = MLflowStatusProbe(client, run_id)
    again = ToyTrainer.from_argv(["--resume", first.run_dir])
    again.build_hooks = lambda: [probe]
    assert again.fit() == {"loss": test["loss"]}
    assert probe.seen == ["RUNNING"]  # the resumed launch reopened the MLflow run ...
    assert client.get_run(run_id).info.status == "FINISHED"  # ... and closed it again
    assert all_points(out, first.run_dir) == before  # nothing appended anywhere
    log = open(glob.glob(os.path.join(first.run_dir, "*_log.txt"))[0]).read()
    assert "nothing left to train" in log and "already logged at step 10" in log


def test_a_corrupt_tracker_id_file_is_one_warning_and_a_new_tracker_run(out, monkeypatch):
    pytest.importorskip("wandb")
    monkeypatch.setenv("WANDB_MODE", "offline")
    first = ToyTrainer.from_argv(["--output_dir", str(out), *ARGV[:-1], "csv"])
    first.fit()
    for name in ("wandb_run.json", "mlflow_run.json"):
        open(os.path.join(first.run_dir, name), "w").close()  # empty, as a full disk can leave it
    resumed = ToyTrainer.from_argv(["--resume", first.run_dir, "--epochs", "3", "--loggers", "csv,wandb,mlflow"])
    resumed.fit()
    log = open(glob.glob(os.path.join(first.run_dir, "*_log.txt"))[0]).read().splitlines()
    for name, tracker in (("wandb_run.json", "W&B"), ("mlflow_run.json", "MLflow")):
        path = os.path.join(first.run_dir, name)
        (line,) = [line for line in log if path in line]
        assert " WARNING " in line and f"a new {tracker} run is started" in line
        assert json.load(open(path))["run_id"]  # the new run's id, for the next resume

    # A run kept at another tracking server is not continued here either, and that is said too.
    path, other = os.path.join(first.run_dir, "mlflow_run.json"), (out / "other_store").resolve().as_uri()
    monkeypatch.setenv("MLFLOW_TRACKING_URI", other)
    monkeypatch.setenv("MLFLOW_ALLOW_FILE_STORE", "true")  # MLflow 3 opens a file store only with it
    ToyTrainer.from_argv(["--resume", first.run_dir, "--epochs", "4", "--loggers", "csv,mlflow"]).fit()
    log = open(glob.glob(os.path.join(first.run_dir, "*_log.txt"))[0]).read().splitlines()
    (line,) = [line for line in log if path in line and "tracked at" in line]
    assert line.endswith(f"not at {other}: a new MLflow run is started")
    assert json.load(open(path))["tracking_uri"] == other


def test_a_csv_or_tensorboard_write_error_stops_the_run_with_one_line(out, capsys):
    first = ToyTrainer.from_argv(["--output_dir", str(out), *ARGV[:-1], "tensorboard,csv"])
    first.fit()
    scalars, summary = os.path.join(first.run_dir, "scalars.csv"), os.path.join(first.run_dir, "summary")
    os.remove(scalars)
    os.mkdir(scalars)  # the file cannot be read back on resume, nor opened for appending
    # mlflow comes after csv: it never starts, so nothing of it is finished or warned about either
    status, err = run_main(
        ToyTrainer, ["--resume", first.run_dir, "--epochs", "3", "--loggers", "tensorboard,csv,mlflow"], capsys
    )
    assert status == 1 and error_line(status, err).endswith(f"cannot read {scalars}: Is a directory")
    assert "WARNING" not in err
    os.rmdir(scalars)
    shutil.rmtree(summary)
    open(summary, "w").close()  # TensorBoard's folder is a file
    status, err = run_main(ToyTrainer, ["--resume", first.run_dir, "--epochs", "3"], capsys)
    assert status == 1 and error_line(status, err).endswith(
        f"cannot create TensorBoard events in {summary}: File exists"
    )
    assert json.load(open(os.path.join(first.run_dir, "status.json")))["global_step"] == 10  # no step trained


class WriteFault(HookBase):
    """Makes a logger's writes fail as a full disk or a moved folder would, at ``when``.

    ``csv``: its file becomes ``/dev/full`` (every write flushed there fails with ENOSPC);
    ``tensorboard``: its folder is renamed away under the open writer.
    """

    def __init__(self, logger, when):
        self.logger, self.when = logger, when

    def _break(self):
        (target,) = [lg for lg in self.trainer.tracking.trackers.loggers if lg.name == self.logger]
        if self.logger == "csv":
            target.file = open("/dev/full", "a", newline="", encoding="utf-8")  # the logger closes it
            target.writer = csv.writer(target.file, lineterminator="\n")
        else:
            os.rename(target.folder, target.folder + ".moved")

    def after_step(self):
        if self.when == "step 3" and self.trainer.global_step == 3:
            self._break()

    def after_train(self):
        if self.when == "after training":
            self._break()
            self.trainer.log_scalar("train/summary", 1.0)


class FaultyToy(ToyTrainer):
    fault = None

    def build_hooks(self):
        return [FaultyToy.fault]


@pytest.mark.skipif(not os.path.exists("/dev/full"), reason="needs /dev/full")
@pytest.mark.parametrize(
    "logger, when, message",
    [
        ("csv", "step 3", "cannot write {run}/scalars.csv: No space left on device"),
        ("csv", "after training", "cannot write {run}/scalars.csv: No space left on device"),
        ("tensorboard", "step 3", "cannot write TensorBoard events {run}/summary/events: "),
    ],
)
def test_a_csv_or_tensorboard_write_error_mid_run_stops_it_naming_the_file(out, capsys, logger, when, message):
    FaultyToy.fault = WriteFault(logger, when)
    status, err = run_main(FaultyToy, ["--output_dir", str(out), *ARGV[:-1], "tensorboard,csv"], capsys)
    (run_dir,) = glob.glob(str(out / "Toy" / "*"))
    assert status == 1 and err.splitlines()[-1].startswith(f"FaultyToy: error: {message.format(run=run_dir)}")
    done = json.load(open(os.path.join(run_dir, "status.json")))
    assert done["status"] == "crashed" and done["global_step"] == (5 if when == "step 3" else 10)
    assert "test (best checkpoint" not in err  # stopped there, not later at the test
