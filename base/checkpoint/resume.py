"""Find what ``--resume`` points at: a run folder and the checkpoint to continue from."""

import glob
import json
import os

from base.checkpoint.files import load_checkpoint, verify_checkpoint
from base.config.parse import LAUNCH_ONLY
from base.errors import UserError

# Checkpoints a run can continue from; `best` is a copy of an older state, never the newest work.
RESUMABLE = ("last", "step*", "preempt", "exception")


def newest_checkpoint(run_dir, tags=RESUMABLE):
    """The most recently written checkpoint in ``run_dir`` with one of ``tags`` (globs), or ``None``."""
    paths = {p for tag in tags for p in glob.glob(os.path.join(run_dir, f"*_{tag}_ckpt.pth"))}
    return max(paths, key=os.path.getmtime) if paths else None


def newest_verified_checkpoint(run_dir, tags=RESUMABLE):
    """The newest checkpoint like :func:`newest_checkpoint` that also loads and matches its checksum.

    Each candidate, newest first, is read in full (memory-mapped) by
    :func:`base.checkpoint.files.verify_checkpoint` until one passes.

    Returns:
        ``(path, skipped)``: ``path`` is ``None`` when no checkpoint passes;
        ``skipped`` lists ``(path, one-line reason)`` for each newer checkpoint
        passed over (corrupted, truncated, ...), newest first.
    """
    paths = {p for tag in tags for p in glob.glob(os.path.join(run_dir, f"*_{tag}_ckpt.pth"))}
    skipped = []
    for path in sorted(paths, key=os.path.getmtime, reverse=True):
        reason = verify_checkpoint(path)
        if reason is None:
            return path, skipped
        skipped.append((path, reason))
    return None, skipped


def _same_state_with_every_process_sums(run_dir, ckpt):
    """``(path, note)``: ``ckpt``, or an older checkpoint of the same position that it should give way to.

    Under DDP a process left alone after another failed writes the
    ``exception`` checkpoint with its own training-loss sums only (the
    others' are ``None``; see ``TrainerBase.state_dict``). A ``last``,
    ``step`` or ``preempt`` checkpoint at the same position (epoch, step,
    sample) is the same state with every process's sums: that one is taken,
    and ``note`` says why. Anything else is returned as it is, with no note.
    """
    if not ckpt.endswith("_exception_ckpt.pth"):
        return ckpt, ""

    def position(state):
        return state["epoch"], state["global_step"], state.get("samples_in_epoch")

    state = load_checkpoint(ckpt, flag="--resume", mmap=True)
    if None not in (state.get("loss_sums") or ()):
        return ckpt, ""
    whole, _ = newest_verified_checkpoint(run_dir, tags=tuple(t for t in RESUMABLE if t != "exception"))
    if whole is None or position(load_checkpoint(whole, flag="--resume", mmap=True)) != position(state):
        return ckpt, ""
    return whole, (f" (step {state['global_step']}, like {os.path.basename(ckpt)}, with every process's loss sums)")


def locate(spec, output_dir, proj_name):
    """Resolve ``--resume`` to ``(run_dir, checkpoint_path, why)``.

    Args:
        spec: ``"auto"`` (the newest run of ``proj_name`` under ``output_dir``,
            by its timestamped name), a run folder, or a checkpoint file.

    In a folder the newest resumable checkpoint that verifies is taken; newer
    ones that fail their checksum are passed over and named in ``why``, a
    sentence for the log saying which checkpoint was picked and why. An
    ``exception`` checkpoint with one process's loss sums gives way to a
    checkpoint of the same position with every process's.

    Raises:
        UserError: nothing to resume; the newest run of ``auto`` has no
            checkpoint (it is never passed over quietly: the message names it
            and the newest run that has one); no checkpoint of the folder verifies.
    """
    why = f"--resume {spec}"
    if spec == "auto":
        parent = os.path.join(output_dir, proj_name)
        runs = sorted(d for d in glob.glob(os.path.join(parent, "*")) if os.path.isdir(d))
        if not runs:
            raise UserError(f"--resume auto: no run under {parent}")
        spec = runs[-1]
        if newest_checkpoint(spec) is None:
            older = [d for d in runs[:-1] if newest_checkpoint(d)]
            hint = f"; to continue an older run name it: --resume {older[-1]}" if older else ""
            raise UserError(
                f"--resume auto: the newest run {spec} has no checkpoint (it stopped before its first save){hint}"
            )
        why = f"--resume auto picked {os.path.abspath(spec)}, the newest run of {proj_name}"
    if os.path.isdir(spec):
        ckpt, skipped = newest_verified_checkpoint(spec)
        for path, reason in skipped:
            why += f"; passed over {os.path.basename(path)} ({reason})"
        if ckpt is None:
            detail = f" ({skipped[0][1]})" if skipped else ""
            raise UserError(f"--resume {spec}: no usable *_last/step/preempt/exception_ckpt.pth in this folder{detail}")
        ckpt, note = _same_state_with_every_process_sums(spec, ckpt)
        return os.path.abspath(spec), ckpt, why + f"; continuing from {os.path.basename(ckpt)}{note}"
    if os.path.isfile(spec):
        return os.path.dirname(os.path.abspath(spec)), spec, why
    raise UserError(f"--resume {spec}: no such run folder or checkpoint")


def saved_config(ckpt_path):
    """The flag values saved in a checkpoint (dict).

    Raises:
        CheckpointError / UserError: unreadable checkpoint; its config is missing,
            not JSON or not a JSON object (the message names the file).
    """
    state = load_checkpoint(ckpt_path, flag="--resume")
    try:
        config = json.loads(state["config"])
    except (KeyError, TypeError, json.JSONDecodeError):
        raise UserError(f"--resume {ckpt_path}: the checkpoint holds no readable config") from None
    if not isinstance(config, dict):
        raise UserError(
            f"--resume {ckpt_path}: its saved 'config' is a JSON {type(config).__name__}, "
            f"expected an object of flag values"
        )
    return config


def changed_flags(saved, args, provenance, changeable, ckpt):
    """Flags given beside ``--resume`` (command line, ``--config`` or a ``--sweep_trial`` file) whose value differs
    from the run's.

    Args:
        saved: the run's saved flag values; ``args``/``provenance``: the merged config and its origins;
        changeable: flags allowed to change; ``ckpt``: the checkpoint, for the message.

    Returns:
        ``{flag: (run's value, new value)}``.

    Raises:
        UserError: a flag outside ``changeable`` changes; the message names it and both values.
    """
    changes, given = {}, ("command line", "config file", "sweep trial")  # (not the run's saved values)
    for flag, origin in provenance.items():
        if flag in LAUNCH_ONLY or flag not in saved or not origin.startswith(given):
            continue
        old, new = saved[flag], getattr(args, flag)
        if old == new or (isinstance(new, tuple) and list(new) == old):
            continue
        if flag not in changeable:
            raise UserError(
                f"--{flag} {new!r}: cannot change on --resume {ckpt} (the run has {old!r}); "
                f"start a new run to change it"
            )
        changes[flag] = (old, new)
    return changes
