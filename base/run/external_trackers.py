"""Experiment trackers outside the run folder: Weights & Biases and MLflow (see :mod:`base.run.trackers`).

Both are best-effort: an error switches the tracker off for the rest of the
launch with one warning, and training goes on. Each keeps its run id in the
run folder, so ``--resume`` continues the same tracker run; an id file that
cannot be read is one warning naming it, and a new tracker run.
"""

import json
import logging
import netrc
import os
import pathlib
import time
import uuid

from base.run.trackers import Tracker
from base.runtime.atomic_files import atomic_write

#: MLflow's status for each way a launch ends.
MLFLOW_STATUS = {"finished": "FINISHED", "preempted": "KILLED", "crashed": "FAILED", "pruned": "KILLED"}


def _saved_run(path, tracker):
    """The tracker run kept in ``path`` (a dict with a ``run_id``), or ``{}`` for a new one.

    No file: ``{}`` (the first launch). A file that cannot be read, is not a JSON
    object or has no ``run_id`` (e.g. emptied by a full disk): one warning naming
    it, then ``{}``, so the resume goes on in a new ``tracker`` run rather than stopping.
    """
    if not os.path.lexists(path):
        return {}
    try:
        with open(path, encoding="utf-8") as f:
            doc = json.load(f)
        if not (isinstance(doc, dict) and isinstance(doc.get("run_id"), str) and doc["run_id"]):
            raise ValueError("no run_id in it")
        return doc
    except (OSError, ValueError) as exc:
        why = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc).splitlines()[0]
        logging.getLogger(__name__).warning("cannot read %s (%s): a new %s run is started", path, why, tracker)
        return {}


def _write_json(path, doc):
    atomic_write(path, lambda f: f.write(json.dumps(doc, indent=2).encode("utf-8")))


def wandb_has_credentials():
    """Whether W&B can log in without asking: ``WANDB_API_KEY`` or an ``api.wandb.ai`` entry in ``~/.netrc``."""
    if os.environ.get("WANDB_API_KEY"):
        return True
    try:
        return netrc.netrc().authenticators("api.wandb.ai") is not None
    except (OSError, netrc.NetrcParseError):
        return False


class WandbTracker(Tracker):
    """A W&B run: project ``--proj_name``, name the run's timestamp, files under ``<run>/wandb``.

    ``WANDB_MODE`` is obeyed; without it and without credentials the run is
    logged offline (upload it later with ``wandb sync <run>/wandb/offline-run-*``).
    The W&B run id is kept in ``<run>/wandb_run.json``; a resumed launch
    continues that W&B run (``resume="allow"``); W&B itself ignores the steps a
    resume redoes below the run's last one (offline, each launch is a log of
    its own: W&B cannot resume offline runs). The config holds the flags and
    their ``provenance``; the final metrics go to the run's summary.
    """

    name = "wandb"
    best_effort = True

    def __init__(self):
        self.run = None

    def start(self, run):
        import wandb

        id_file = os.path.join(run.run_dir, "wandb_run.json")
        run_id = _saved_run(id_file, "W&B").get("run_id") or uuid.uuid4().hex[:8]  # W&B ids: [a-z0-9], 8 by default
        mode = os.environ.get("WANDB_MODE") or (None if wandb_has_credentials() else "offline")
        self.run = wandb.init(
            project=run.proj_name,
            name=run.timestamp,
            id=run_id,
            resume="allow",
            dir=run.run_dir,
            mode=mode,
            reinit="create_new",
            job_type="train",
            settings=wandb.Settings(console="off", save_code=False, silent=True),
        )
        # After init, with allow_val_change: a resume may have changed flags (e.g. --epochs).
        self.run.config.update(
            {**run.config, "provenance": run.provenance, "trainer": run.trainer}, allow_val_change=True
        )
        _write_json(id_file, {"run_id": run_id, "project": run.proj_name, "mode": self.run.settings.mode})

    def log_scalars(self, scalars, step):
        self.run.log(dict(scalars), step=step)

    def finish(self, status, final, step):
        if final:
            self.run.summary.update(final)
        if status == "preempted":
            self.run.mark_preempting()
        self.run.finish(exit_code=0 if status in ("finished", "pruned") else 1)  # (pruned: stopped as asked)
        self.run = None

    def close(self):
        if self.run is not None:  # finish was never reached (a failed start or setup)
            self.run.finish(exit_code=1)
            self.run = None


class MLflowTracker(Tracker):
    """An MLflow run in experiment ``--proj_name``, named by the run's timestamp.

    Tracking server: ``MLFLOW_TRACKING_URI`` if set, else a file store in
    ``<output_dir>/mlruns`` (MLflow 3 keeps file stores behind
    ``MLFLOW_ALLOW_FILE_STORE``, which is set for that store only). Params are
    the resolved flags, tags ``provenance.<flag>`` where each came from;
    metrics carry their step. Artifacts: the config JSON (at start and end)
    and, once training finished, the best checkpoint's safetensors export and
    its JSON sidecar. The run id is kept in ``<run>/mlflow_run.json``; a resumed
    launch continues that run (params are not logged again: MLflow keeps a
    param's first value, so changed flags go to tags ``resume<N>.<flag>``).
    """

    name = "mlflow"
    best_effort = True
    BATCH = 100  # MLflow's limit of params (and tags) per log_batch call

    def __init__(self):
        self.client, self.run_id = None, None
        self.logged = {}  # step -> keys already in the run at that step, for steps not passed yet

    def start(self, run):
        from mlflow.entities import Param, RunTag
        from mlflow.tracking import MlflowClient

        uri = os.environ.get("MLFLOW_TRACKING_URI")
        if not uri:
            uri = pathlib.Path(run.output_dir, "mlruns").resolve().as_uri()
            os.environ.setdefault("MLFLOW_ALLOW_FILE_STORE", "true")
        self.run, self.client = run, MlflowClient(tracking_uri=uri)
        self.id_file = os.path.join(run.run_dir, "mlflow_run.json")
        saved = _saved_run(self.id_file, "MLflow")
        if saved and saved.get("tracking_uri") != uri:
            logging.getLogger(__name__).warning(
                "%s names a run tracked at %s, not at %s: a new MLflow run is started",
                self.id_file,
                saved.get("tracking_uri"),
                uri,
            )
        if saved.get("run_id") and saved.get("tracking_uri") == uri:
            self.run_id = saved["run_id"]
            self.client.update_run(self.run_id, status="RUNNING")
            data = self.client.get_run(self.run_id).data
            for key in data.metrics:  # the points this launch may redo: at its start step and after
                for point in self.client.get_metric_history(self.run_id, key):
                    if point.step >= run.step:
                        self.logged.setdefault(point.step, set()).add(key)
            resumes = int(data.tags.get("resumes", "0")) + 1
            changed = [
                RunTag(f"resume{resumes}.{k}", str(v)[:5000])
                for k, v in sorted(run.config.items())
                if data.params.get(k, str(v)[:6000]) != str(v)[:6000]
            ]
            self._batched(tags=[RunTag("resumes", str(resumes)), *changed])
        else:
            experiment = self.client.get_experiment_by_name(run.proj_name)
            experiment_id = (
                experiment.experiment_id if experiment is not None else self.client.create_experiment(run.proj_name)
            )
            self.run_id = self.client.create_run(
                experiment_id, run_name=run.timestamp, tags={"trainer": run.trainer, "run_dir": run.run_dir}
            ).info.run_id
            _write_json(self.id_file, {"run_id": self.run_id, "tracking_uri": uri})
            self._batched(
                params=[Param(k, str(v)[:6000]) for k, v in sorted(run.config.items())],
                tags=[RunTag(f"provenance.{k}", str(v)[:5000]) for k, v in sorted(run.provenance.items())],
            )
        self.client.log_artifact(self.run_id, run.config_path)

    def _batched(self, params=(), tags=()):
        params, tags = list(params), list(tags)
        for i in range(0, max(len(params), len(tags)), self.BATCH):
            self.client.log_batch(self.run_id, params=params[i : i + self.BATCH], tags=tags[i : i + self.BATCH])

    def log_scalars(self, scalars, step):
        from mlflow.entities import Metric

        for passed in [s for s in self.logged if s < step]:  # steps only go forward: forget the ones behind
            del self.logged[passed]
        logged = self.logged.setdefault(step, set())
        now = int(time.time() * 1000)
        metrics = [Metric(k, float(v), now, step) for k, v in scalars.items() if k not in logged]
        if metrics:
            self.client.log_batch(self.run_id, metrics=metrics)
            logged.update(m.key for m in metrics)

    def rewind(self, states, step):
        """A ``--nonfinite rollback`` to ``step``: the steps after it are redone at another LR, so their
        points are logged again. MLflow cannot delete points: at those steps its history holds the
        rolled-back value and, after it in time, the redone one the run went on from."""
        for later in [s for s in self.logged if s > step]:
            del self.logged[later]

    def finish(self, status, final, step):
        if final:
            self.log_scalars(final, step)
        self.client.log_artifact(self.run_id, self.run.config_path)
        if status == "finished":
            for path in sorted(os.listdir(self.run.run_dir)):
                if path.endswith(("_best.safetensors", "_best.json")):
                    self.client.log_artifact(self.run_id, os.path.join(self.run.run_dir, path))
        self.client.set_terminated(self.run_id, MLFLOW_STATUS[status])
        self.run_id = None

    def close(self):
        if self.run_id is not None:  # finish was never reached
            try:
                self.client.set_terminated(self.run_id, "FAILED")
            finally:
                self.run_id = None
