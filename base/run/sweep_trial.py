"""A sweep trial's side of a run: :class:`TrialReporter` reports each validation to the trial's Optuna study.

A sweep (``utils.sweep``) asks its study for a trial, writes a trial file (:mod:`base.config.trial_file`)
and launches the trainer with ``--sweep_trial FILE``: the run takes the trial's flag values, and the base
adds a :class:`TrialReporter` after the task's hooks. A run the study's pruner gives up ends after that
validation with status ``pruned`` (:meth:`base.trainer.TrainerBase.request_stop`); the sweep reads that in
its ``status.json``. Optuna is imported when the first validation is reported: runs without the flag never
need it.
"""

from __future__ import annotations

import os

from base.config.trial_file import read_trial_file
from base.errors import UserError, one_line
from base.hooks import HookBase
from base.runtime import distributed


def build_pruner(spec: dict):
    """The Optuna pruner a trial file's ``pruner`` names: ``MedianPruner(n_startup_trials, n_warmup_steps)`` for
    ``median``, ``NopPruner()`` (never prunes) for ``none``."""
    import optuna

    if spec["name"] == "median":
        return optuna.pruners.MedianPruner(
            n_startup_trials=spec["n_startup_trials"], n_warmup_steps=spec["n_warmup_steps"]
        )
    return optuna.pruners.NopPruner()


class TrialReporter(HookBase):
    """Reports the monitored validation metric to the trial's study; stops the run when its pruner says so.

    After each validation, when the trial file's ``report`` is true, rank 0 reports ``val_<monitor>`` to the
    trial (``optuna.trial.Trial(study, trial_id)`` of the study loaded with the file's pruner) at step
    ``trainer.epoch`` (completed epochs: 1 after the first), or ``trainer.global_step`` with
    ``--val_every_steps N``, then asks ``should_prune()``. Epochs, not optimizer steps, because trials of
    another ``--batch_size`` take another number of steps per epoch: the pruner compares trials at the same
    step, which must be the same point of training. A step reported already (a redone validation after a
    resume, the final mid-epoch validation of ``--max_steps``) is kept as first reported (Optuna ignores the
    second value).

    Under DDP rank 0 alone talks to the study and broadcasts its decision, so every process stops after the
    same validation (an error on rank 0 ends its process, and torchrun stops the others). A file whose
    ``report`` is false (e.g. a trial's second seed) reports nothing and is never pruned.

    Raises:
        ConfigError: from the constructor, the trial file cannot be used (see :func:`read_trial_file`).
        UserError: at a validation, the study, or the trial in it, cannot be opened or reported to (e.g. the
            trial is finished already, or the study's direction is not the monitored metric's); names the file.
    """

    def __init__(self, path: str):
        self.file = read_trial_file(path)
        self._trial = None  # optuna.trial.Trial, on rank 0 from the first report on

    def after_validation(self, row: dict[str, float]) -> None:
        if not self.file.report:
            return
        trainer = self.trainer
        reason = self._report(row) if trainer.rank == 0 else None
        if trainer.world_size > 1:  # every process must stop after the same validation
            reason = distributed.broadcast_object(reason)
        if reason:
            trainer.request_stop("pruned", reason)

    def _report(self, row):
        """Report this validation; returns why the pruner stops the trial (one line), or ``None``."""
        trainer, metric = self.trainer, f"val_{self.trainer.monitor}"
        by_step = bool(trainer.args.val_every_steps)
        step = trainer.global_step if by_step else trainer.epoch
        try:
            if self._trial is None:
                self._trial = self._open_trial()
            self._trial.report(row[metric], step)
            prune = self._trial.should_prune()
        except UserError:
            raise
        except Exception as exc:  # noqa: BLE001 - Optuna's and the storage's errors alike: one line
            raise UserError(
                f"--sweep_trial {self.file.path}: cannot report {metric} to trial {self.file.number} of study "
                f"{self.file.study_name!r} in {self.file.storage}: {type(exc).__name__}: {one_line(exc)}"
            ) from exc
        if not prune:
            return None
        where = f"step {step}" if by_step else f"epoch {step}"
        return f"pruned by the sweep's {self.file.pruner['name']} pruner at {where} ({metric} {row[metric]:.4g})"

    def _open_trial(self):
        """The trial of the file in its study, loaded with the file's pruner.

        Raises:
            UserError: the storage file is missing, the trial is not running, or the study's direction is not
                the monitored metric's.
        """
        import optuna

        f, where = self.file, f"--sweep_trial {self.file.path}"
        if not os.path.isfile(f.storage):  # (a JournalFileBackend would create it: an empty study)
            raise UserError(f"{where}: its study storage {f.storage} does not exist")
        storage = optuna.storages.JournalStorage(optuna.storages.journal.JournalFileBackend(f.storage))
        study = optuna.load_study(study_name=f.study_name, storage=storage, pruner=build_pruner(f.pruner))
        mode = self.trainer.monitor_mode
        wanted = optuna.study.StudyDirection.MINIMIZE if mode == "min" else optuna.study.StudyDirection.MAXIMIZE
        if study.directions != [wanted]:
            raise UserError(
                f"{where}: study {f.study_name!r} has directions {[d.name.lower() for d in study.directions]}, but "
                f"{type(self.trainer).__name__} reports val_{self.trainer.monitor}, which it wants at its {mode}"
            )
        state = storage.get_trial(f.trial_id).state
        if state != optuna.trial.TrialState.RUNNING:
            raise UserError(
                f"{where}: trial {f.number} of study {f.study_name!r} is {state.name.lower()} already; "
                "resume with a new trial file, or with --sweep_trial '' to train on outside the study"
            )
        return optuna.trial.Trial(study, f.trial_id)
