"""The fixed hook vocabulary of :class:`base.trainer.TrainerBase`.

Call order for one ``fit`` (``[..]*`` repeats)::

    before_train
    [ after_validation(row) ]      # a resumed run redoing the validation its checkpoint was taken in
    [ before_epoch
      [ before_step  after_backward  after_step  [ after_validation(row) ] ]*   # --val_every_steps
      [ after_validation(row) ]    # the epoch's validation (--val_every_epochs)
      after_epoch ]*
    [ after_validation(row) ]      # the final validation, when the last step had none
    on_exception(exc)     # only when an exception escapes training
    after_train           # always, from ``finally``

``after_backward`` runs once gradients exist and before they are clipped and
applied, so a hook can inspect or change them. A step skipped for a
non-finite loss still gets ``before_step`` and ``after_step``.
``after_validation(row)`` runs inside each validation round, once its row is
written (metrics.csv, the trackers, status.json) and ``best`` saved, and before
the ``last`` checkpoint of that validation: what a hook does there (a
``trainer.request_stop``) is in it. Hooks run in the order of the list returned
by ``build_hooks``, then those the base adds (a sweep trial's
:class:`base.run.sweep_trial.TrialReporter`); there are no priorities.
"""

from __future__ import annotations

from typing import Any


class HookBase:
    """A hook does nothing by default; override the points you need.

    ``self.trainer`` is set when the trainer registers the hook. A hook with
    state returns it from :meth:`state_dict` (tensors and plain Python types)
    and it is saved in, and restored from, every checkpoint.
    """

    trainer: Any = None  # the TrainerBase that registered the hook

    def before_train(self) -> None:
        pass

    def before_epoch(self) -> None:
        pass

    def before_step(self) -> None:
        pass

    def after_backward(self) -> None:
        pass

    def after_step(self) -> None:
        pass

    def after_validation(self, row: dict[str, float]) -> None:
        """Called with the validation's row: ``epoch``, ``step``, ``train_loss``, ``lr``, ``val_<metric>`` for
        each metric of ``validate``, ``val_seconds`` (all but ``val_seconds`` the same on every process).

        It runs inside the validation: a resume from the exception checkpoint of an error here does the
        validation, and this call, again."""

    def after_epoch(self) -> None:
        pass

    def after_train(self) -> None:
        pass

    def on_exception(self, exc: BaseException) -> None:
        """Called with the exception before the trainer re-raises it."""

    def state_dict(self) -> dict[str, Any]:
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        pass
