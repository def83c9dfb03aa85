"""Reading checkpoints written by older versions of the template: the one place that knows their keys.

:func:`upgrade` gives a checkpoint of any version the keys of today's state tree, each missing one
with the value the older code ran with, so the parts' ``load_state_dict`` read today's keys only.
"""

from __future__ import annotations

#: Keys a checkpoint may lack, with what the code that wrote it did (a constant, or a function of the state).
MISSING = {
    "samples_in_epoch": None,  # position counted in batches: see upgrade()
    "lr_scale": 1.0,  # before --nonfinite rollback scaled the learning rate
    "validating": False,  # before checkpoints taken inside a validation
    "world_size": 1,  # before DDP
    "ema": None,  # before --ema_decay
    "loss_sums": None,  # per-process training-loss sums: the totals alone were saved
    "extra_sums": None,  # train_step's extra terms of the logging window: a fresh window
    "metrics_rows": None,  # rows of metrics.csv: cut back by step instead
    "loggers": {},  # what each --loggers tracker held: cut back by step instead
    "stop_request": None,  # before request_stop: no run was stopped on request
}


def upgrade(state: dict, batch_size: int) -> dict:
    """A copy of ``state`` with every key of :data:`MISSING` present.

    ``samples_in_epoch`` of a checkpoint that counted batches only is ``batch_in_epoch * batch_size``
    (one process, ``batch_size`` the run's ``--batch_size``).
    """
    state = dict(state)
    for key, value in MISSING.items():
        if key not in state:
            state[key] = value
    if state["samples_in_epoch"] is None:
        state["samples_in_epoch"] = state["batch_in_epoch"] * batch_size
    if state["loggers"] is None:
        state["loggers"] = {}
    return state
