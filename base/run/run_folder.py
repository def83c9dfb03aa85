"""The run folder one launch works in: created or reopened, locked, with its log and config file.

One part the trainer owns (``trainer.folder``). Rank 0 creates (or, on ``--resume``, reopens) the
folder, locks it against a second launch and writes the log there; every process agrees on the folder
(rank 0's timestamp is broadcast). Processes other than rank 0 log warnings to stderr only, and with
``--debug`` everything to ``rank<k>_log.txt`` in the folder.
"""

from __future__ import annotations

import logging
import os

import torch

from base.run import folder as run_files
from base.run.file_names import file_name_part
from base.run.lock import RunLock
from base.runtime import distributed
from base.runtime.params import count_parameters, format_count


class RunFolder:
    """``<output_dir>/<proj_name>/<timestamp>/`` of a launch: path, lock, log, config file.

    Args:
        output_dir, proj_name: where new runs go (``--output_dir``, ``--proj_name``).
        rank: this process among the data-parallel ones.
        resumed_dir: the folder of the run ``--resume`` continues, or ``None`` (a new run).
        debug: other ranks than 0 log everything to their own file.
    """

    def __init__(self, output_dir: str, proj_name: str, rank: int, resumed_dir: str | None, debug: bool = False):
        self.proj_name, self.rank, self.resumed = proj_name, rank, resumed_dir is not None
        path = resumed_dir
        if path is None and rank == 0:
            path = run_files.create_run_dir(output_dir, proj_name)[0]
        self.path = distributed.broadcast_object(path)  # rank 0's timestamp, for every process
        self.timestamp = os.path.basename(self.path)
        self.lock = None
        if rank == 0:
            self.lock = RunLock(self.path).acquire()  # before anything in the folder is written
            log_file = os.path.join(self.path, f"{file_name_part(proj_name)}_{self.timestamp}_log.txt")
            self.logger = run_files.setup_logger(f"trainer.{id(self)}", log_file)
        else:
            own = os.path.join(self.path, f"rank{rank}_log.txt") if debug else None
            self.logger = run_files.setup_logger(f"trainer.{id(self)}", own, logging.INFO if debug else logging.WARNING)
        self.config_path = os.path.join(self.path, f"config_{file_name_part(proj_name)}_{self.timestamp}.json")

    def file(self, name: str) -> str:
        """``<run folder>/<name>``."""
        return os.path.join(self.path, name)

    def write_config(self, args, provenance: dict, extra: dict) -> None:
        """Write a new run's resolved config with provenance (rank 0; see :func:`base.run.folder.write_config`)."""
        if self.rank == 0 and not self.resumed:
            run_files.write_config(self.config_path, args, provenance, {"timestamp": self.timestamp, **extra})

    def record_resume(self, args, provenance: dict, checkpoint: str, changes: dict) -> None:
        """Add this launch's resume (checkpoint, changed flags) to the config file (rank 0)."""
        if self.rank == 0:
            run_files.record_resume(self.config_path, args, provenance, checkpoint, changes)

    def remove_stale_temp_files(self) -> list[str]:
        """Remove temporary files a killed save left (rank 0); returns their paths."""
        return run_files.remove_stale_temp_files(self.path) if self.rank == 0 else []

    def close(self) -> None:
        """Close the log and release the lock; safe to call once, whatever state the launch stopped in."""
        run_files.close_logger(self.logger)
        if self.lock is not None:
            self.lock.release()
            self.lock = None


def describe_run(logger, folder, args, model, datasets, steps_per_epoch, total_steps, device, world_size):
    """Log what a launch trains: its folder, the DDP layout, the model's size, the data and the length;
    and any temporary file a killed save left, removed."""
    logger.info("run folder: %s", folder.path)
    if world_size > 1:
        logger.info(
            "DDP over %d processes (%s): global batch %d = %d per process x %d processes x %d accumulation steps",
            world_size,
            torch.distributed.get_backend(),
            args.batch_size * world_size * args.accum_steps,
            args.batch_size,
            world_size,
            args.accum_steps,
        )
    logger.info(
        "model %s: %s parameters (%s trainable)",
        type(model).__name__,
        format_count(count_parameters(model)),
        format_count(count_parameters(model, trainable_only=True)),
    )
    logger.info(
        "data: %s; %d steps per epoch, %d steps in all, device %s",
        {k: len(v) for k, v in datasets.items()},
        steps_per_epoch,
        total_steps,
        device,
    )
    for path in folder.remove_stale_temp_files():
        logger.info("removed %s, left by a save that was killed", path)
