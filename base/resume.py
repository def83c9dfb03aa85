"""Find what ``--resume`` points at: a run folder and the checkpoint to continue from."""
import glob
import json
import os

from base.checkpoint import load_checkpoint
from base.errors import UserError

# Checkpoints a run can continue from; `best` is a copy of an older state, never the newest work.
RESUMABLE = ("last", "step*", "preempt", "exception")


def newest_checkpoint(run_dir):
    """The most recently written resumable checkpoint in ``run_dir``, or ``None``."""
    paths = {p for tag in RESUMABLE for p in glob.glob(os.path.join(run_dir, f"*_{tag}_ckpt.pth"))}
    return max(paths, key=os.path.getmtime) if paths else None


def locate(spec, output_dir, proj_name):
    """Resolve ``--resume`` to ``(run_dir, checkpoint_path)``.

    Args:
        spec: ``"auto"`` (newest run of ``proj_name`` under ``output_dir`` that
            has a checkpoint), a run folder, or a checkpoint file.

    Raises:
        UserError: nothing to resume; the message names what was looked for.
    """
    if spec == "auto":
        parent = os.path.join(output_dir, proj_name)
        runs = sorted((d for d in glob.glob(os.path.join(parent, "*")) if newest_checkpoint(d)),
                      key=os.path.getmtime)
        if not runs:
            raise UserError(f"--resume auto: no run with a checkpoint under {parent}")
        spec = runs[-1]
    if os.path.isdir(spec):
        ckpt = newest_checkpoint(spec)
        if ckpt is None:
            raise UserError(f"--resume {spec}: no *_last/step/preempt/exception_ckpt.pth in this folder")
        return os.path.abspath(spec), ckpt
    if os.path.isfile(spec):
        return os.path.dirname(os.path.abspath(spec)), spec
    raise UserError(f"--resume {spec}: no such run folder or checkpoint")


def saved_config(ckpt_path):
    """The flag values saved in a checkpoint (dict).

    Raises:
        CheckpointError / UserError: unreadable checkpoint or config.
    """
    state = load_checkpoint(ckpt_path, flag="--resume")
    try:
        return json.loads(state["config"])
    except (KeyError, TypeError, json.JSONDecodeError):
        raise UserError(f"--resume {ckpt_path}: the checkpoint holds no readable config") from None
