"""The parts of the trainer's state tree that span processes: training-loss sums and hook states.

The checkpoint is the merge of the trainer's parts' states (see :meth:`base.trainer.TrainerBase.state_dict`);
these functions make and read the entries that are more than one part's ``state_dict``.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

from base.runtime import distributed

if TYPE_CHECKING:  # (a type only: the checkpoint layer imports nothing of the loop's)
    from base.loop.train_stats import TrainingStats


def running_sums(stats: TrainingStats, rank: int, world_size: int, gather: bool = True) -> dict:
    """The training-loss sums since the last validation and the logging window's sums of every process.

    ``loss_sums``/``extra_sums``: one entry per rank, so a resume with as many processes carries each
    one's on, bit for bit; ``loss_sum``/``loss_count``: their totals. Under DDP with ``gather`` a
    collective. ``gather=False`` is no collective, for a checkpoint written while the others may be gone:
    it holds this process's sums alone, the others' entries ``None`` and the totals ``None``, so a resume
    knows they are lost (see :func:`load_running_sums`).
    """
    own, window = stats.sums()
    if world_size == 1:
        loss_sums, extra_sums = [own], [window]
    elif gather:
        loss_sums, extra_sums = distributed.all_gather_object(own), distributed.all_gather_object(window)
    else:
        loss_sums = [own if r == rank else None for r in range(world_size)]
        extra_sums = [window if r == rank else None for r in range(world_size)]
    whole = None not in loss_sums
    return {
        "loss_sum": sum(v for v, _ in loss_sums) if whole else None,
        "loss_count": sum(n for _, n in loss_sums) if whole else None,
        "loss_sums": loss_sums,
        "extra_sums": extra_sums,
    }


def load_running_sums(
    stats: TrainingStats, state: dict, rank: int, world_size: int, source: str, logger: logging.Logger
) -> None:
    """Give ``stats`` the sums of :func:`running_sums` saved in ``state``.

    With as many processes as the checkpoint, each takes its own; with another number, rank 0 carries
    the totals on and the others start from zero. A checkpoint written by one process of several holds
    no totals: every process starts from zero, so the first ``train_loss`` after the resume averages the
    steps after it alone, never one process's share of the earlier steps with them.
    """
    sums = state["loss_sums"]
    windows = state["extra_sums"] or [({}, 0)]
    stats.load_sums()  # from zero, unless this process takes sums below
    if sums and None in sums:
        if rank == 0:
            logger.warning(
                "%s was written by one process of %d after another had failed: it holds one "
                "process's training-loss sums only, which are dropped; the train_loss of the "
                "next validation averages the steps after %d alone",
                source,
                len(sums),
                state["global_step"],
            )
        return
    loss, window = (0.0, 0), ({}, 0)
    if sums and len(sums) == world_size:
        loss = sums[rank]
    elif rank == 0:
        loss = state["loss_sum"], state["loss_count"]
    if len(windows) == world_size:
        window = windows[rank]
    elif rank == 0:
        keys = {k for extra, _ in windows for k in extra}
        window = {k: sum(extra.get(k, 0.0) for extra, _ in windows) for k in keys}, sum(n for _, n in windows)
    stats.load_sums(tuple(loss), window)


def hook_states(hooks: list) -> list[dict]:
    """``[{"type": class name, "state": hook.state_dict()}]`` in the hooks' order."""
    return [{"type": type(h).__name__, "state": h.state_dict()} for h in hooks]


def load_hook_states(hooks: list, saved: list[dict], source: str, logger: logging.Logger) -> None:
    """Give each hook the first saved state of its class; hooks added or removed since are logged."""
    saved = list(saved)
    for hook in hooks:
        match = next((s for s in saved if s["type"] == type(hook).__name__), None)
        if match is None:
            logger.warning("%s: no saved state for hook %s", source, type(hook).__name__)
            continue
        saved.remove(match)
        hook.load_state_dict(match["state"])
    for entry in saved:
        logger.warning("%s: saved state of hook %s has no hook to go to", source, entry["type"])
