"""The fixed hook vocabulary of :class:`base.trainer.TrainerBase`.

Call order for one ``fit`` (``[..]*`` repeats)::

    before_train
    [ before_epoch
      [ before_step  after_backward  after_step ]*
      after_epoch ]*
    on_exception(exc)     # only when an exception escapes training
    after_train           # always, from ``finally``

``after_backward`` runs once gradients exist and before they are clipped and
applied, so a hook can inspect or change them. A step skipped for a
non-finite loss still gets ``before_step`` and ``after_step``. Hooks run in
the order of the list returned by ``build_hooks``; there are no priorities.
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
