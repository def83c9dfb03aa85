"""The checkpoint files of one run: names, atomic saves, verification, rotation, copies and the export.

One part the trainer owns (``trainer.checkpointer``). It knows files, not training: the trainer
hands it the state to write (the merge of its parts' states, :meth:`base.trainer.TrainerBase.state_dict`).

Files: ``<run_dir>/<prefix>_<tag>_ckpt.pth``. ``<prefix>`` is the task's
:meth:`~base.trainer.TrainerBase.checkpoint_prefix` (``--model_type``, else the model's class name, as a
file name part: ``timm/resnet18`` -> ``timm-resnet18``). Tags: ``best`` (best validation), ``last``
(latest validation or end of training), ``step<N>`` (every ``--save_every_steps``; the newest
``--keep_last_k`` kept), ``preempt`` (SIGTERM/SIGINT), ``exception`` (an exception escaped; ``last`` and
``best`` are left untouched; under DDP written by rank 0 alone).
"""

from __future__ import annotations

import glob
import json
import logging
import os
import re
from collections.abc import Callable

import torch

from base.checkpoint.files import copy_checkpoint, save_checkpoint, verify_checkpoint
from base.errors import CheckpointError
from base.runtime import distributed
from base.runtime.atomic_files import write_or_fail


class Checkpointer:
    """Writes and removes a run's checkpoint files (rank 0 writes; every process calls).

    Args:
        run_dir: the run folder.
        prefix: ``<prefix>`` of the file names.
        rank: this process among the data-parallel ones (0: the one that writes).
        keep_last_k: step checkpoints kept.
        logger: the run's log.
        resumed: the checkpoint this launch resumed from, or ``None``: a ``preempt`` one is removed once a
            newer checkpoint is on disk.
        before_write: called on rank 0 before each write with ``failing`` (bool): flushes what was logged up
            to this step, so a resume from the file keeps those rows and redoes the rest.
    """

    def __init__(
        self,
        run_dir: str,
        prefix: str,
        rank: int,
        keep_last_k: int,
        logger: logging.Logger,
        resumed: str | None = None,
        before_write: Callable[[bool], None] = lambda failing: None,
    ):
        self.run_dir, self.prefix, self.rank, self.keep_last_k = run_dir, prefix, rank, keep_last_k
        self.logger, self.resumed, self.before_write = logger, resumed, before_write
        self.best_at = None  # the loop position `best` was last saved at (then `last` may be a byte copy of it)

    def path(self, tag: str) -> str:
        """``<run_dir>/<prefix>_<tag>_ckpt.pth``."""
        return os.path.join(self.run_dir, f"{self.prefix}_{tag}_ckpt.pth")

    def save(self, tag: str, state: dict | Callable[[], dict], position=None, sync: bool = True) -> str:
        """Atomically write ``state`` (a dict, or a function making it: a collective under DDP) as ``tag``.

        ``position`` (any comparable value: where the loop is) lets ``last`` be a byte copy of ``best``
        saved at the same position rather than a second serialization; ``None`` never copies. A copy, not
        a link: a damaged ``best`` must leave ``last`` intact. Under DDP rank 0 writes and, with ``sync``,
        the others wait until the file is there (``sync=False``: no collective). Returns the path.

        Raises:
            CheckpointError: the file could not be written (names it).
        """
        path = self.path(tag)
        if tag == "last" and position is not None and position == self.best_at and os.path.isfile(self.path("best")):
            copy_checkpoint(self.path("best"), path)
            self._remove_superseded(tag, path)
            return path
        if tag == "best":
            self.best_at = position
        state = state() if callable(state) else state
        if self.rank != 0:
            if sync:
                distributed.barrier()
            return path
        self.before_write(tag == "exception")
        save_checkpoint(state, path)
        if sync:
            distributed.barrier()
        self._remove_superseded(tag, path)
        return path

    def _remove_superseded(self, tag: str, path: str) -> None:
        """Delete the resumed ``preempt`` checkpoint and this run's ``exception`` one once ``path`` holds newer work.

        For the exception checkpoint only a tag a resume continues from counts (``last``, ``step<N>``,
        ``preempt``), not ``best``: a run killed between ``best`` and ``last`` must still find its steps.
        """
        newer = os.path.getmtime(path)
        resumed = self.resumed
        if (
            tag != "preempt"
            and resumed
            and os.path.abspath(resumed) == self.path("preempt")
            and os.path.isfile(resumed)
            and os.path.getmtime(resumed) < newer
        ):
            os.remove(resumed)
            self.logger.info("removed %s: %s holds newer work", resumed, os.path.basename(path))
        stale = self.path("exception")
        if tag not in ("exception", "best") and os.path.isfile(stale) and os.path.getmtime(stale) < newer:
            os.remove(stale)
            self.logger.info("removed %s: %s holds newer work", stale, os.path.basename(path))

    def rotate(self, path: str) -> None:
        """After ``step<N>`` was written at ``path``: delete step checkpoints beyond the newest ``keep_last_k``,
        but only once the new file reads back and matches its checksum (a collective under DDP).

        Raises:
            CheckpointError: the new file does not verify (every older step checkpoint is kept).
        """
        reason = verify_checkpoint(path) if self.rank == 0 else None
        if distributed.any_rank(reason is not None):
            reason = reason or f"{path} did not verify on rank 0"
            self.logger.warning("%s; every older step checkpoint is kept", reason)
            raise CheckpointError(f"{reason}; every older step checkpoint is kept")
        if self.rank != 0:
            return
        pattern = re.compile(re.escape(self.prefix) + r"_step(\d+)_ckpt\.pth$")
        steps = sorted(
            (int(m.group(1)), p)
            for p in glob.glob(os.path.join(self.run_dir, "*_ckpt.pth"))
            if (m := pattern.search(os.path.basename(p)))
        )
        for _, old in steps[: -self.keep_last_k]:
            os.remove(old)

    def export(self, weights: dict[str, torch.Tensor], sidecar: dict) -> None:
        """Write ``weights`` as ``<prefix>_best.safetensors`` and ``sidecar`` as ``<prefix>_best.json`` (rank 0).

        safetensors refuses tensors that share storage (tied weights) or are not contiguous: those alone
        are copied. Evaluators accept this export as well as a checkpoint.
        """
        if self.rank != 0:
            return
        from safetensors.torch import save as safetensors_bytes

        tensors, storages = {}, set()
        for key, value in weights.items():
            value = value.detach().cpu()  # no copy on the CPU
            if value.untyped_storage().data_ptr() in storages or not value.is_contiguous():
                value = value.clone(memory_format=torch.contiguous_format)
            storages.add(value.untyped_storage().data_ptr())
            tensors[key] = value
        stem = os.path.join(self.run_dir, f"{self.prefix}_best")
        write_or_fail(stem + ".safetensors", lambda f: f.write(safetensors_bytes(tensors)), "export")
        text = json.dumps(sidecar, indent=2, default=str).encode()
        write_or_fail(stem + ".json", lambda f: f.write(text), "export")
