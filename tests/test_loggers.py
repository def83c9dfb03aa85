"""--loggers: W&B (offline) and MLflow (file store) read back through their own files and API,
TensorBoard's config and HParams, a missing package, a tracker failing mid-run."""

import csv
import glob
import json
import os
import struct
import subprocess
import sys
import time

import pytest
import torch
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from base.config.parse import ConfigError
from base.hooks import HookBase
from base.run.external_trackers import MLflowTracker
from base.run.trackers import parse_tracker_names
from conftest import ToyTrainer

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# 40 samples in batches of 8: 5 steps an epoch, validations at steps 5 and 10
ARGV = ["--epochs", "2", "--log_every_steps", "2", "--gpu_devices", "cpu"]


def fit(tmp_path, *extra):
    trainer = ToyTrainer.from_argv(["--output_dir", str(tmp_path), *ARGV, *extra])
    trainer.fit()
    return trainer


def wandb_records(path):
    """The protobuf records of a W&B transaction log (``run-<id>.wandb``): a ':W&B' header, then
    LevelDB-log blocks of 32 KiB holding records split into FULL/FIRST/MIDDLE/LAST pieces."""
    from wandb.proto import wandb_internal_pb2

    data = open(path, "rb").read()
    assert data[:4] == b":W&B"
    pos, block, pieces = 7, 32768, b""
    while pos + 7 <= len(data):
        left = block - pos % block
        _, length, kind = struct.unpack("<IHB", data[pos : pos + 7])
        if left < 7 or (length == 0 and kind == 0):  # block padding
            pos += left if left < 7 else 7
            continue
        pieces += data[pos + 7 : pos + 7 + length]
        pos += 7 + length
        if kind in (1, 4):  # FULL or LAST
            record = wandb_internal_pb2.Record()
            record.ParseFromString(pieces)
            pieces = b""
            yield record


def _key(item):
    """An item's key: W&B stores a key with '/' in it as a one-part ``nested_key``."""
    return item.key or ".".join(item.nested_key)


def read_wandb(run_dir):
    """``{"ids", "names", "projects", "config", "history": {step: {key: value}}, "summary"}`` of every
    offline W&B run written under ``run_dir`` (one per launch)."""
    out = {"ids": [], "names": [], "projects": [], "config": {}, "history": {}, "summary": {}, "exits": 0}
    # In launch order: two launches in one second get folders '<time>-<id>' and '<time>-<id>-1'.
    paths = glob.glob(os.path.join(run_dir, "wandb", "offline-run-*", "run-*.wandb"))
    for path in sorted(paths, key=os.path.getmtime):
        for record in wandb_records(path):
            kind = record.WhichOneof("record_type")
            if kind == "run":
                out["ids"].append(record.run.run_id)
                out["names"].append(record.run.display_name)
                out["projects"].append(record.run.project)
            elif kind == "config":
                out["config"].update({_key(i): json.loads(i.value_json) for i in record.config.update})
            elif kind == "history":
                items = {_key(i): json.loads(i.value_json) for i in record.history.item}
                out["history"].setdefault(record.history.step.num, {}).update(items)
            elif kind == "summary":
                out["summary"].update({_key(i): json.loads(i.value_json) for i in record.summary.update})
            elif kind == "exit":
                out["exits"] += 1
    return out


def read_finished_wandb(run_dir, launches, timeout=30):
    """:func:`read_wandb` once ``launches`` runs have their exit record: W&B's service process may
    still be writing a run's log for a moment after ``finish()`` returned in the training process."""
    deadline = time.monotonic() + timeout
    while True:
        got = read_wandb(run_dir)
        if got["exits"] >= launches or time.monotonic() > deadline:
            return got
        time.sleep(0.2)


def steps_of(history, key):
    return sorted(step for step, items in history.items() if key in items)


@pytest.fixture
def tracker_env(tmp_path, monkeypatch):
    """No credentials, no tracker settings from this machine; W&B's own folders under tmp_path."""
    for name in ("WANDB_MODE", "WANDB_API_KEY", "MLFLOW_TRACKING_URI", "MLFLOW_ALLOW_FILE_STORE"):
        monkeypatch.delenv(name, raising=False)
    home = tmp_path / "home"
    home.mkdir()
    monkeypatch.setenv("HOME", str(home))  # no ~/.netrc
    for name in ("WANDB_CONFIG_DIR", "WANDB_CACHE_DIR", "WANDB_DATA_DIR"):
        monkeypatch.setenv(name, str(home / name.lower()))
    return tmp_path / "out"


def test_wandb_offline_without_credentials_then_a_resume_continues_the_same_run(tracker_env, monkeypatch):
    pytest.importorskip("wandb")
    first = fit(tracker_env, "--loggers", "wandb", "--lr", "0.04")
    assert json.load(open(os.path.join(first.run_dir, "wandb_run.json")))["mode"] == "offline"
    got = read_finished_wandb(first.run_dir, 1)
    assert got["names"] == [first.timestamp] and got["projects"] == ["Toy"]
    assert got["config"]["lr"] == 0.04 and got["config"]["provenance"]["lr"] == "command line"
    assert got["config"]["epochs"] == 2 and got["config"]["trainer"] == "ToyTrainer"
    assert steps_of(got["history"], "train/loss") == [2, 4, 6, 8, 10]
    assert steps_of(got["history"], "train/loss_since_val") == [5, 10]
    assert steps_of(got["history"], "train/grad_norm") == [2, 4, 6, 8, 10]
    assert steps_of(got["history"], "val/loss") == [5, 10]
    rows = list(csv.DictReader(open(os.path.join(first.run_dir, "metrics.csv"))))
    assert got["history"][10]["val/loss"] == pytest.approx(float(rows[-1]["val_loss"]), rel=1e-12)
    test = json.load(open(os.path.join(first.run_dir, "test_metrics.json")))
    assert got["summary"]["test/loss"] == pytest.approx(test["loss"], rel=1e-12)

    monkeypatch.setenv("WANDB_MODE", "offline")
    resumed = ToyTrainer.from_argv(["--resume", first.run_dir, "--epochs", "3"])
    resumed.fit()
    got = read_finished_wandb(first.run_dir, 2)
    found = sorted(os.listdir(os.path.join(first.run_dir, "wandb")))
    assert len(got["ids"]) == 2 and len(set(got["ids"])) == 1, found  # two launches, one W&B run
    assert steps_of(got["history"], "val/loss") == [5, 10, 15]
    assert got["config"]["epochs"] == 3, os.listdir(os.path.join(first.run_dir, "wandb"))


def test_mlflow_file_store_gets_params_metrics_artifacts_and_a_resume_continues_the_run(tracker_env):
    pytest.importorskip("mlflow")
    from mlflow.tracking import MlflowClient

    first = fit(tracker_env, "--loggers", "mlflow,csv")
    client = MlflowClient(tracking_uri=(tracker_env / "mlruns").resolve().as_uri())
    run_id = json.load(open(os.path.join(first.run_dir, "mlflow_run.json")))["run_id"]
    run = client.get_run(run_id)
    assert run.info.run_name == first.timestamp and run.info.status == "FINISHED"
    assert client.get_experiment(run.info.experiment_id).name == "Toy"
    assert run.data.params["lr"] == "0.05" and run.data.params["loggers"] == "mlflow,csv"
    assert run.data.tags["provenance.lr"] == "subclass default (ToyTrainer)"
    assert run.data.tags["provenance.loggers"] == "command line"
    history = {m.step: m.value for m in client.get_metric_history(run_id, "train/grad_norm")}
    scalars = [r for r in csv.reader(open(os.path.join(first.run_dir, "scalars.csv"))) if r[1] == "train/grad_norm"]
    assert history == {int(s): float(v) for s, _, v in scalars} and sorted(history) == [2, 4, 6, 8, 10]
    assert [m.step for m in client.get_metric_history(run_id, "val/loss")] == [5, 10]
    test = json.load(open(os.path.join(first.run_dir, "test_metrics.json")))
    assert run.data.metrics["test/loss"] == pytest.approx(test["loss"], rel=1e-12)
    artifacts = {a.path for a in client.list_artifacts(run_id)}
    assert {f"config_Toy_{first.timestamp}.json", "Toy_best.safetensors", "Toy_best.json"} <= artifacts
    local = client.download_artifacts(run_id, "Toy_best.safetensors", str(tracker_env / "download"))
    assert open(local, "rb").read() == open(os.path.join(first.run_dir, "Toy_best.safetensors"), "rb").read()

    ToyTrainer.from_argv(["--resume", first.run_dir, "--epochs", "3"]).fit()
    assert json.load(open(os.path.join(first.run_dir, "mlflow_run.json")))["run_id"] == run_id
    run = client.get_run(run_id)
    assert run.info.status == "FINISHED" and run.data.tags["resumes"] == "1"
    assert run.data.tags["resume1.epochs"] == "3" and run.data.params["epochs"] == "2"  # a param keeps its first value
    assert [m.step for m in client.get_metric_history(run_id, "val/loss")] == [5, 10, 15]
    assert len(client.search_runs([run.info.experiment_id])) == 1


def test_a_missing_tracker_package_is_one_line_before_training(tmp_path):
    hide = tmp_path / "hide"
    hide.mkdir()
    (hide / "sitecustomize.py").write_text("import sys\nsys.modules['wandb'] = None  # as if not installed\n")
    out = tmp_path / "out"
    proc = subprocess.run(
        [
            sys.executable,
            "trainer_vanilla.py",
            "--output_dir",
            str(out),
            "--loggers",
            "tensorboard,wandb",
            "--gpu_devices",
            "cpu",
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        env={**os.environ, "PYTHONPATH": str(hide)},
        timeout=120,
    )
    assert proc.returncode == 2
    (line,) = proc.stderr.strip().splitlines()
    assert line.startswith(
        "trainer_vanilla.py: error: --loggers='tensorboard,wandb': the wandb logger needs the "
        "wandb package: pip install wandb"
    )
    assert not out.exists()  # nothing started


def test_a_script_exits_only_once_wandb_has_written_the_whole_run(tracker_env):
    pytest.importorskip("wandb")
    proc = subprocess.run(
        [
            sys.executable,
            "trainer_vanilla.py",
            "--output_dir",
            str(tracker_env),
            "--epochs",
            "1",
            "--loggers",
            "wandb",
            "--gpu_devices",
            "cpu",
            "--train_val_sample_rate",
            "0.2",
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "WANDB_MODE": "offline"},
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    (run_dir,) = glob.glob(str(tracker_env / "Vanilla" / "*"))
    got = read_wandb(run_dir)  # at once: no waiting for a service that may outlive the script
    test = json.load(open(os.path.join(run_dir, "test_metrics.json")))
    assert got["exits"] == 1 and got["summary"]["test/top1"] == pytest.approx(test["top1"], rel=1e-12)


@pytest.mark.parametrize("value, message", [("tensorbord", "unknown logger 'tensorbord'"), ("csv,csv", "named twice")])
def test_bad_logger_names_are_refused(value, message):
    with pytest.raises(ConfigError, match=message):
        parse_tracker_names(value)


def test_a_tracker_failing_mid_run_is_one_warning_and_training_goes_on(tracker_env, monkeypatch):
    pytest.importorskip("mlflow")
    calls = []

    def flaky(self, scalars, step):
        calls.append(step)
        if len(calls) > 1:
            raise ConnectionError("tracking server unreachable")

    monkeypatch.setattr(MLflowTracker, "log_scalars", flaky)
    trainer = fit(tracker_env, "--loggers", "csv,mlflow")
    assert calls == [2, 4]  # switched off at its first error
    names = os.listdir(trainer.run_dir)
    assert {"Toy_best_ckpt.pth", "Toy_last_ckpt.pth", "test_metrics.json"} <= set(names)
    assert (
        trainer.global_step == 10
        and json.load(open(os.path.join(trainer.run_dir, "status.json")))["status"] == "finished"
    )
    log = open(glob.glob(os.path.join(trainer.run_dir, "*_log.txt"))[0]).read()
    warnings = [line for line in log.splitlines() if "logger failed" in line]
    assert len(warnings) == 1 and "mlflow" in warnings[0] and "tracking server unreachable" in warnings[0]
    scalars = [r for r in csv.reader(open(os.path.join(trainer.run_dir, "scalars.csv"))) if r[1] == "train/lr"]
    assert [int(r[0]) for r in scalars] == [2, 4, 5, 6, 8, 10]  # the other logger got everything
    from mlflow.tracking import MlflowClient

    run_id = json.load(open(os.path.join(trainer.run_dir, "mlflow_run.json")))["run_id"]
    client = MlflowClient(tracking_uri=(tracker_env / "mlruns").resolve().as_uri())
    assert client.get_run(run_id).info.status == "FAILED"  # its run says it did not see the end


def test_tensorboard_gets_the_config_and_an_hparams_record(tmp_path):
    trainer = fit(tmp_path, "--lr", "0.03")
    events = EventAccumulator(os.path.join(trainer.run_dir, "summary")).Reload()
    text = events.Tensors("config/text_summary")[0].tensor_proto.string_val[0].decode()
    assert "| lr | 0.03 | command line |" in text
    from tensorboard.plugins.hparams import plugin_data_pb2

    content = events.PluginTagToContent("hparams")["_hparams_/session_start_info"]
    info = plugin_data_pb2.HParamsPluginData.FromString(content).session_start_info
    assert info.hparams["lr"].number_value == 0.03 and info.hparams["model_type"].string_value == "Toy"
    test = json.load(open(os.path.join(trainer.run_dir, "test_metrics.json")))
    assert events.Scalars("hparam/test/loss")[0].value == pytest.approx(test["loss"], rel=1e-6)


class GradNormProbe(HookBase):
    """The global gradient norm before clipping, at each step (computed independently)."""

    def __init__(self):
        self.norms = {}

    def after_backward(self):
        grads = [p.grad.flatten() for p in self.trainer.model.parameters() if p.grad is not None]
        self.norms[self.trainer.global_step + 1] = float(torch.cat(grads).norm())


def test_grad_norm_is_the_norm_before_clipping_and_images_per_sec_is_logged(tmp_path):
    probe = GradNormProbe()
    trainer = ToyTrainer.from_argv(["--output_dir", str(tmp_path), *ARGV, "--grad_clip", "0.01"])
    trainer.build_hooks = lambda: [probe]
    trainer.fit()
    rows = list(csv.reader(open(os.path.join(trainer.run_dir, "scalars.csv"))))
    norms = {int(s): float(v) for s, name, v in rows if name == "train/grad_norm"}
    assert sorted(norms) == [2, 4, 6, 8, 10]
    assert all(norms[s] == pytest.approx(probe.norms[s], rel=1e-5) and norms[s] > 0.01 for s in norms)
    speeds = [float(v) for s, name, v in rows if name == "train/images_per_sec"]
    assert len(speeds) == 5 and all(v > 0 for v in speeds)


def test_resuming_an_earlier_checkpoint_logs_the_redone_steps_once(tmp_path):
    def scalars(run_dir):
        rows = list(csv.reader(open(os.path.join(run_dir, "scalars.csv"))))
        return [
            r for r in rows if r[1] not in ("train/images_per_sec", "train/step_time", "train/data_time", "val/seconds")
        ]

    first = fit(tmp_path, "--save_every_steps", "2", "--log_every_steps", "1", "--deterministic")
    before = scalars(first.run_dir)
    assert [int(r[0]) for r in before[1:] if r[1] == "train/loss"] == list(range(1, 11))
    again = ToyTrainer.from_argv(["--resume", os.path.join(first.run_dir, "Toy_step6_ckpt.pth")])
    again.fit()
    assert again.global_step == 10 and scalars(first.run_dir) == before  # steps 7-10 once, as first logged


def test_exit_fast_lets_wandb_finish_writing_before_the_process_ends(monkeypatch):
    import types

    from base import cli

    calls = []

    class Exited(Exception):
        pass

    def fake_exit(status):
        calls.append(("exit", status))
        raise Exited

    monkeypatch.setitem(sys.modules, "wandb", types.SimpleNamespace(teardown=lambda: calls.append(("teardown",))))
    monkeypatch.setattr(os, "_exit", fake_exit)
    with pytest.raises(Exited):
        cli.exit_fast(3)
    assert calls == [("teardown",), ("exit", 3)]  # os._exit skips atexit: W&B's own teardown would not run
