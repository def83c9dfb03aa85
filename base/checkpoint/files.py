"""Atomic checkpoint writes and safe checkpoint reads.

Writes go through :func:`base.runtime.atomic_files.write_or_fail`: a temporary
file in the destination folder, flushed, ``fsync``-ed and moved over the final
name, so a crash leaves either the old file or the new one, never half a
file. Reads go through :func:`load_checkpoint` only, which uses
``torch.load(weights_only=True)`` and never falls back to unpickling code.

Each checkpoint holds a SHA-256 of its own content under the reserved key
``"checksum"`` (see :func:`content_checksum`), so a flipped bit in a weight is
caught on load instead of training or evaluating on silently wrong numbers.
"""

import codecs
import hashlib
import os
import pickle
import re
import shutil
import stat
import warnings
from collections.abc import Mapping

import torch

from base.errors import CheckpointError
from base.runtime.atomic_files import write_or_fail

#: The key under which :func:`save_checkpoint` stores :func:`content_checksum`.
CHECKSUM_KEY = "checksum"


def content_checksum(state):
    """``"sha256:<64 hex digits>"`` over everything in ``state`` except ``state["checksum"]``.

    Covers each tensor's dtype, shape and raw bytes (not its device or
    strides) and a typed text of every other value; dict keys are walked in
    sorted order, so the digest is the same before saving and after loading.
    A CUDA tensor is copied to the host once; CPU tensors are not copied.
    """
    digest = hashlib.sha256()
    _feed(digest, {k: v for k, v in state.items() if k != CHECKSUM_KEY})
    return f"sha256:{digest.hexdigest()}"


def _feed(digest, value):
    if torch.is_tensor(value):
        t = value.detach()
        t = t.to_dense() if t.layout != torch.strided else t
        digest.update(f"T{t.dtype}{tuple(t.shape)}:".encode())
        # reshape(-1): a 0-d tensor cannot be viewed as bytes; uint8: bfloat16 has no NumPy type
        digest.update(memoryview(t.cpu().contiguous().reshape(-1).view(torch.uint8).numpy()))
    elif isinstance(value, dict):  # OrderedDict too: what is saved as one may load as the other
        # Keys may mix types (the optimizer's state uses ints): order by type, then text.
        items = sorted(value.items(), key=lambda kv: (type(kv[0]).__name__, repr(kv[0])))
        digest.update(f"D{len(items)}:".encode())
        for key, item in items:
            _feed(digest, key)
            _feed(digest, item)
    elif isinstance(value, (list, tuple)):  # torch.Size too
        digest.update(f"L{len(value)}:".encode())
        for item in value:
            _feed(digest, item)
    elif isinstance(value, (set, frozenset)):
        _feed(digest, sorted(value, key=repr))
    else:  # str, int, float (repr round-trips, NaN included), bool, None, torch.dtype/device
        text = f"{type(value).__name__}:{value!r}"
        digest.update(f"S{len(text)}:{text}".encode("utf-8", "backslashreplace"))


def save_checkpoint(state, path):
    """Atomically save ``state`` (tensors and plain Python types only) to ``path``.

    The file also holds :func:`content_checksum` of ``state`` under
    ``"checksum"``; ``state`` itself is not modified.

    Raises:
        CheckpointError: the file could not be written (disk full, no
            permission, ...); one line naming ``path`` and the OS reason. A
            previous file at ``path`` is left intact and no temporary file stays.
    """
    stamped = {**state, CHECKSUM_KEY: content_checksum(state)}
    write_or_fail(path, lambda f: torch.save(stamped, f), what="checkpoint")


def copy_checkpoint(source, path):
    """Write a byte copy of the checkpoint file ``source`` as ``path``, atomically and synced.

    A second, independent file (not a hard link): a byte later damaged in one
    of them leaves the other loadable. Copying the bytes costs a read and a
    write of the file, less than serializing the state again. ``path`` is the
    old file or the complete copy, as with :func:`save_checkpoint`.

    Raises:
        CheckpointError: as :func:`base.runtime.atomic_files.write_or_fail` (also when ``source`` cannot be read).
    """

    def copy(f):
        with open(source, "rb") as src:
            shutil.copyfileobj(src, f, _COPY_CHUNK)

    write_or_fail(path, copy, what="checkpoint")


# Bytes per read/write of copy_checkpoint: large enough that a copy of a large checkpoint takes few system calls.
_COPY_CHUNK = 16 << 20


def verify_checkpoint(path):
    """``None`` when ``path`` loads as a checkpoint and matches its checksum, else why not.

    The file is memory-mapped and read on the CPU, so checking a large
    checkpoint costs a read of the file, not a second copy of it in memory.

    Returns:
        ``None``, or the one-line reason (it names ``path``), e.g. a
        checksum mismatch, a truncated or missing file.
    """
    try:
        load_checkpoint(path, flag="", mmap=True)
    except CheckpointError as exc:
        return str(exc)
    return None


def _not_a_checkpoint_file(path):
    """Why ``path`` cannot be a checkpoint file (a str), or ``None`` when it may be one."""
    try:
        info = os.stat(path)
    except FileNotFoundError:
        return "no such file"
    except OSError as exc:
        return f"cannot be read ({exc.strerror})"
    if stat.S_ISDIR(info.st_mode):
        return "is a folder; expected a checkpoint file (*.pth)"
    if not stat.S_ISREG(info.st_mode):
        return "is not a regular file (a device, pipe or socket); expected a checkpoint file (*.pth)"
    if info.st_size == 0:
        return "is empty (0 bytes): the save that wrote it did not finish"
    return None


def load_checkpoint(path, map_location="cpu", flag="", mmap=False):
    """Load a checkpoint written by :func:`save_checkpoint`, refusing pickled code.

    Args:
        path: file to read.
        map_location: passed to ``torch.load`` (default: CPU).
        flag: what named ``path``, put before it in an error message (e.g. ``"--model_path"``;
            "" for nothing: the file of a run, named by no flag).
        mmap: memory-map the file instead of reading it into memory (``torch.load(mmap=True)``).

    Returns:
        the checkpoint dict, without its ``"checksum"`` entry. A checkpoint
        written before checksums existed (no entry) is accepted unchecked.

    Raises:
        CheckpointError: the file is missing, truncated or not a checkpoint,
            holds objects other than tensors and plain Python types, or its
            content does not match its checksum (the file is corrupted).
    """
    where = f"{flag} {path}" if flag else str(path)
    problem = _not_a_checkpoint_file(path)
    if problem:
        raise CheckpointError(f"{where}: {problem}")
    try:
        with warnings.catch_warnings():  # torch warns about pickle protocols of foreign files: we say more below
            warnings.simplefilter("ignore", UserWarning)
            state = torch.load(path, map_location=map_location, weights_only=True, mmap=mmap)
    except Exception as exc:  # noqa: BLE001 - any failure to parse means "not a checkpoint we read"
        text = str(exc)
        refused = isinstance(exc, pickle.UnpicklingError) and "weights only load failed" in text.lower()
        # The safe unpickler met a global it will not import: the file asks to run code.
        found = re.search(r"GLOBAL\s+(\S+)|Unsupported global:?\s*(?:GLOBAL\s+)?(\S+)", text) if refused else None
        kind = None if found else _foreign_kind(path)
        if kind:  # torch's own message would be the unpickler's ("KeyError: 101"): say what the file is
            raise CheckpointError(
                f"{where}: not a checkpoint of this project: {kind}, not a file written by torch.save (a zip archive)"
            ) from None
        if refused:  # name the global, and leave out torch's hint to load the file unsafely
            name = next((g for g in found.groups() if g), "") if found else ""
            raise CheckpointError(
                f"{where}: refused: it holds code or objects other than tensors and "
                f"plain types{f' ({name})' if name else ''}, which would run when "
                f"loaded; this project never writes such files"
            ) from None
        detail = text.strip().splitlines()[0] if text.strip() else "the file ends too early"
        raise CheckpointError(
            f"{where}: not a readable checkpoint (truncated or foreign file: {type(exc).__name__}: {detail[:200]})"
        ) from None
    if not isinstance(state, dict) or "model" not in state:
        kind = _foreign_kind(path)  # recent torch reads safetensors files too: say that that is what it is
        raise CheckpointError(
            f"{where}: not a checkpoint of this project: {kind}"
            if kind
            else f"{where}: not a checkpoint of this project (no 'model' entry)"
        )
    stored = state.pop(CHECKSUM_KEY, None)
    if stored is not None and stored != content_checksum(state):
        raise CheckpointError(
            f"{where}: checksum mismatch, the file is corrupted "
            f"(its content differs from what was saved; use an older checkpoint)"
        )
    return state


def _foreign_kind(path):
    """What the file at ``path`` is when it cannot be a torch file, as a phrase, else ``None``.

    ``torch.save`` writes a zip archive (``PK\\x03\\x04``); files of torch before 1.6 and plain
    pickles start with pickle's PROTO opcode (``\\x80``). Those give ``None``: their reading
    failed for another reason (cut short, damaged). A safetensors file starts with the 8-byte
    length of its JSON header, then ``{``.
    """
    try:
        with open(path, "rb") as f:
            head = f.read(4096)
    except OSError:
        return None
    if head.startswith((b"PK\x03\x04", b"\x80")):
        return None
    if len(head) > 8 and head[8:9] == b"{" and int.from_bytes(head[:8], "little") < os.path.getsize(path):
        return "a safetensors file (weights alone, without the training state)"
    try:  # a cut multi-byte character at the end of `head` is still text
        text = codecs.getincrementaldecoder("utf-8")().decode(head, final=False)
    except UnicodeDecodeError:
        return f"a binary file of another kind (it starts with {head[:8]!r})"
    if "\x00" in text:
        return f"a binary file of another kind (it starts with {head[:8]!r})"
    first = (text.strip().splitlines() or [""])[0]
    return f"a text file (it starts with {first[:40]!r})"


def load_model_state(model, state, source):
    """Load ``state`` into ``model`` after checking every key and shape.

    Raises:
        CheckpointError: ``state`` is not a state dict (a list, a tensor, a
            dict holding non-tensors), or keys or shapes differ; the message
            names ``source``, the first differing parameter and both shapes.
    """
    # A foreign or hand-edited file can hold anything under "model"; say so rather than fail on .keys().
    if not isinstance(state, Mapping):
        raise CheckpointError(
            f"{source}: its 'model' entry is a {type(state).__name__}, not a state dict (parameter name -> tensor)"
        )
    current = model.state_dict()
    missing = sorted(current.keys() - state.keys(), key=str)
    unexpected = sorted(state.keys() - current.keys(), key=str)  # a foreign file may mix key types
    if missing or unexpected:
        raise CheckpointError(
            f"{source}: the checkpoint holds a different model ({len(missing)} parameters missing, "
            f"e.g. {missing[:1]}; {len(unexpected)} unexpected, e.g. {unexpected[:1]})"
        )
    for key, value in current.items():
        if torch.is_tensor(value) and not torch.is_tensor(state[key]):
            raise CheckpointError(
                f"{source}: its 'model' entry holds a {type(state[key]).__name__} under "
                f"{key!r}, not a tensor: not a state dict"
            )
        if tuple(state[key].shape) != tuple(value.shape):
            raise CheckpointError(
                f"{source}: shape mismatch for {key}: checkpoint "
                f"{tuple(state[key].shape)}, this model {tuple(value.shape)}"
            )
    model.load_state_dict(state)
