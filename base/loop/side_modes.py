"""Side modes: what ``fit`` does instead of training when ``--plot_lr``, ``--lr_find`` or ``--preview_augment``
is given (:mod:`base.config.side_mode_flags`).

Each runs on the trainer's plan of the run (:meth:`base.trainer.TrainerBase.plan`: data, loaders, model,
input stage, optimizer and schedule built as ``setup`` builds them, with no run folder, no trackers and
the loop position untouched), writes its PNG (and ``.csv``), prints one line and returns. Every global
generator is as it was before (:func:`base.loop.state.rng_kept`), so a run started afterwards in the same
process trains as it would have without the side mode.
"""

from __future__ import annotations

from base.config.side_mode_flags import SIDE_MODES
from base.loop.lr_find import find_lr
from base.loop.lr_plot import plot_lr_schedule
from base.loop.preview import preview_augment
from base.loop.state import rng_kept


def side_mode(args) -> str | None:
    """The side-mode flag ``args`` gives (``"plot_lr"``, ``"lr_find"``, ``"preview_augment"``), or ``None``."""
    return next((flag for flag in SIDE_MODES if getattr(args, flag, "")), None)


def run_side_mode(trainer):
    """Run the side mode of ``trainer.args`` (:func:`side_mode`) on ``trainer.plan()``; returns what it returns:
    the ``(step, lr)`` rows of ``--plot_lr``, the :class:`base.loop.lr_find.LRFinding` of ``--lr_find``, the
    previewed images of ``--preview_augment`` (float ``(N, C, H, W)`` in [0, 1]).

    Raises:
        ConfigError: what the side mode cannot do with this run (one line, naming its flag).
    """
    a, mode = trainer.args, side_mode(trainer.args)
    with rng_kept(cuda=trainer.device.type == "cuda"):
        plan = trainer.plan()
        if mode == "plot_lr":
            return plot_lr_schedule(plan, a, type(trainer).__name__, a.plot_lr)
        if mode == "lr_find":
            return find_lr(trainer, a.lr_find)
        return preview_augment(trainer, a.preview_augment)
