"""Atomic checkpoint writes and safe checkpoint reads.

Writes follow timm's ``CheckpointSaver`` idea: serialize to a temporary file in
the destination folder, flush and ``fsync`` it, then ``os.replace`` it over the
final name, so a crash leaves either the old file or the new one, never half a
file. Reads go through :func:`load_checkpoint` only, which uses
``torch.load(weights_only=True)`` and never falls back to unpickling code.
"""
import os
import pickle

import torch

from base.errors import CheckpointError


def _fsync_dir(folder):
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:  # some filesystems do not allow opening a folder
        return
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def atomic_write(path, write_fn):
    """Call ``write_fn(file_object)`` on a temporary file, then move it to ``path``.

    Raises:
        whatever ``write_fn`` raises; the temporary file is removed and any
        previous ``path`` is left untouched.
    """
    folder = os.path.dirname(os.path.abspath(path))
    tmp = os.path.join(folder, f".{os.path.basename(path)}.tmp{os.getpid()}")
    try:
        with open(tmp, "wb") as f:
            write_fn(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise
    _fsync_dir(folder)


def save_checkpoint(state, path):
    """Atomically save ``state`` (tensors and plain Python types only) to ``path``."""
    atomic_write(path, lambda f: torch.save(state, f))


def load_checkpoint(path, map_location="cpu", flag="--model_path"):
    """Load a checkpoint written by :func:`save_checkpoint`, refusing pickled code.

    Args:
        path: file to read.
        map_location: passed to ``torch.load`` (default: CPU).
        flag: the flag that named ``path``, for the error message.

    Returns:
        the checkpoint dict.

    Raises:
        CheckpointError: the file is missing, truncated or not a checkpoint,
            or holds objects other than tensors and plain Python types.
    """
    if not os.path.isfile(path):
        raise CheckpointError(f"{flag} {path}: no such file")
    try:
        state = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as exc:  # noqa: BLE001 - any failure to parse means "not a checkpoint we read"
        text = str(exc)
        # The weights-only unpickler names the global it refused: that file asked to run code.
        refused = isinstance(exc, pickle.UnpicklingError) and "Unsupported global" in text
        detail = next((line.strip() for line in text.splitlines() if "Unsupported global" in line),
                      text.strip().splitlines()[0] if text.strip() else type(exc).__name__)
        if refused:
            raise CheckpointError(f"{flag} {path}: refused, it holds objects other than "
                                  f"tensors and plain types ({detail[:200]})") from None
        raise CheckpointError(f"{flag} {path}: not a readable checkpoint "
                              f"(truncated or foreign file: {type(exc).__name__}: {detail[:200]})") from None
    if not isinstance(state, dict) or "model" not in state:
        raise CheckpointError(f"{flag} {path}: not a checkpoint of this project (no 'model' entry)")
    return state


def load_model_state(model, state, source):
    """Load ``state`` into ``model`` after checking every key and shape.

    Raises:
        CheckpointError: keys or shapes differ; the message names ``source``,
            the first differing parameter and both shapes.
    """
    current = model.state_dict()
    missing = sorted(current.keys() - state.keys())
    unexpected = sorted(state.keys() - current.keys())
    if missing or unexpected:
        raise CheckpointError(
            f"{source}: the checkpoint holds a different model ({len(missing)} parameters missing, "
            f"e.g. {missing[:1]}; {len(unexpected)} unexpected, e.g. {unexpected[:1]})")
    for key, value in current.items():
        if tuple(state[key].shape) != tuple(value.shape):
            raise CheckpointError(f"{source}: shape mismatch for {key}: checkpoint "
                                  f"{tuple(state[key].shape)}, this model {tuple(value.shape)}")
    model.load_state_dict(state)
