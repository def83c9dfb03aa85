"""Start a model from saved weights: read a state dict, adapt what has a standard adaptation, load, report.

One mechanism for every source of weights: :func:`read_state_dict` reads a file (this project's
checkpoint, a torchvision or Hugging Face state-dict file, timm's ``.safetensors`` or ``train.py``
checkpoint) and :func:`load_state` puts any state dict into a model. ``load_state`` adapts, with timm's own helpers:

- the stem (the model's first convolution) saved for other input channels: timm's
  ``adapt_input_conv`` (an RGB stem summed to one channel; one channel repeated to ``C`` and scaled
  by ``1 / C``);
- an absolute position embedding saved for another grid of patches (a ViT trained at another image
  size or patch count): timm's ``resample_abs_pos_embed`` (bicubic, antialiased), the class/prefix
  tokens kept as they are.

Every other tensor loads only with its name and shape; each shape mismatch is logged with both shapes.
It refuses (``CheckpointError``, one line) when fewer than half of the model's tensors would load:
such a file belongs to another model, and training "from it" would silently train from scratch.
Everything is logged with ``logging.getLogger(__name__)``, which reaches a trainer's run log.
"""

import argparse
import contextlib
import logging
import math
import os
import zipfile
from typing import NamedTuple

import torch
from torch import nn

from base.checkpoint.files import load_checkpoint
from base.errors import CheckpointError

__all__ = ["LoadReport", "load_pretrained", "load_state", "read_state_dict"]

log = logging.getLogger(__name__)

# torchvision's VisionTransformer names it pos_embedding, timm's pos_embed: shape (1, prefix + H * W, dim)
_POS_EMBED_LEAVES = ("pos_embedding", "pos_embed")


class LoadReport(NamedTuple):
    """What :func:`load_state` did; keys are the model's (prefixes stripped).

    Attributes:
        loaded: number of the model's state-dict tensors now holding the file's values (adapted ones included).
        total: number of tensors in the model's state dict (parameters and persistent buffers).
        missing: sorted keys of the model left as they were (shape mismatches included).
        unexpected: sorted keys of the file that the model does not have.
        mismatched: ``{key: (shape in the file, shape in the model)}`` of the tensors not loaded for their shape.
        adapted: ``{key: what was done}`` of the tensors loaded after an adaptation.
    """

    loaded: int
    total: int
    missing: list
    unexpected: list
    mismatched: dict
    adapted: dict


def _strip_prefix(key):
    # DataParallel/DDP save "module.", torch.compile "_orig_mod."; a compiled DDP model has both.
    while key.startswith(("module.", "_orig_mod.")):
        key = key.split(".", 1)[1]
    return key


def read_state_dict(path, flag="--pretrained_path"):
    """The ``{name: tensor}`` state dict in ``path``, read without running pickled code.

    ``path`` is one of:

    - this project's checkpoint (its ``"model"`` entry, checksum checked), or another file whose
      ``"model"`` entry is the state dict (DeiT's, MAE's releases);
    - a plain state dict written by ``torch.save``: torchvision's ``<name>-<hash>.pth``, a Hugging Face
      ``pytorch_model.bin`` (zip or the older pickle format), read with ``torch.load(weights_only=True)``;
    - a ``.safetensors`` file (timm's ``model.safetensors``), recognised by its content too;
    - a timm ``train.py`` checkpoint: its ``"state_dict"`` entry (the ``argparse.Namespace`` of its
      ``"args"`` is allowed to load; it holds the run's flags, no code).

    Raises:
        CheckpointError: the file is missing, unreadable, corrupted or holds no state dict (one line
            naming ``flag`` and the file).
    """
    path, where = str(path), f"{flag} {path}"
    if not os.path.isfile(path):
        raise CheckpointError(f"{where}: no such file")
    try:
        if path.endswith(".safetensors") or _is_safetensors(path):  # recent torch.load reads these; this, any torch
            from safetensors.torch import load_file

            return load_file(path, device="cpu")
        allow = getattr(torch.serialization, "safe_globals", lambda _: contextlib.nullcontext())
        with allow([argparse.Namespace]):  # mmap needs the zip format (torch >= 1.6); older pickles are read whole
            state = torch.load(path, map_location="cpu", weights_only=True, mmap=zipfile.is_zipfile(path))
    except Exception as exc:  # noqa: BLE001 - any failure to parse means "not a file we read"
        detail = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise CheckpointError(f"{where}: not a readable state dict ({type(exc).__name__}: {detail[:200]})") from None
    if isinstance(state, dict) and "model" in state:  # this project's checkpoint: read it again, checked
        return load_checkpoint(path, flag=flag)["model"]
    if isinstance(state, dict) and isinstance(state.get("state_dict"), dict):  # a timm train.py checkpoint
        state = state["state_dict"]
    if not isinstance(state, dict) or not all(torch.is_tensor(v) for v in state.values()):
        raise CheckpointError(
            f"{where}: not a state dict (expected a dict of tensors, or a checkpoint with a 'model' or "
            f"'state_dict' entry)"
        )
    return state


def _is_safetensors(path):
    """Whether ``path`` starts as a safetensors file does: an 8-byte little-endian header length, then ``{``
    (Hugging Face cache blobs have no extension)."""
    with open(path, "rb") as f:
        head = f.read(9)
    return len(head) == 9 and head[8:9] == b"{" and 0 < int.from_bytes(head[:8], "little") < os.path.getsize(path)


def _stem_keys(model):
    """The weight key(s) of the model's first convolution: timm's ``pretrained_cfg["first_conv"]``,
    else the first ``nn.Conv2d`` in module order (torchvision's ``conv1``, ``conv_proj``, ``features.0.0``)."""
    first = (getattr(model, "pretrained_cfg", None) or {}).get("first_conv")
    if first:
        return {f"{name}.weight" for name in ([first] if isinstance(first, str) else first)}
    name = next((name for name, m in model.named_modules() if isinstance(m, nn.Conv2d)), None)
    return set() if name is None else {f"{name}.weight"}


def _prefix_tokens(model):
    """Tokens before the patches in the position embedding: timm's ``num_prefix_tokens`` (0 with
    ``no_embed_class``), 1 for torchvision's ViT (its ``class_token``), else 0."""
    if hasattr(model, "num_prefix_tokens"):
        return 0 if getattr(model, "no_embed_class", False) else int(model.num_prefix_tokens)
    return 1 if isinstance(getattr(model, "class_token", None), torch.Tensor) else 0


def _square(tokens):
    side = math.isqrt(tokens) if tokens > 0 else 0
    return (side, side) if side > 0 and side * side == tokens else None


def _adapt_stem(saved, wanted):
    # here, not at import: importing timm costs seconds, and only an adaptation needs it
    from timm.models import adapt_input_conv

    try:
        new = adapt_input_conv(wanted[1], saved, base_chans=saved.shape[1])
    except NotImplementedError:
        return None, ""
    how = (
        "summed to 1 channel"
        if wanted[1] == 1
        else f"repeated to {wanted[1]} channels, scaled by {saved.shape[1]}/{wanted[1]}"
    )
    return new, f"stem for {saved.shape[1]} input channels {how} (timm adapt_input_conv)"


def _adapt_pos_embed(model, saved, wanted):
    from timm.layers import resample_abs_pos_embed  # here, not at import: timm takes seconds to import

    prefix = _prefix_tokens(model)
    grid = getattr(getattr(model, "patch_embed", None), "grid_size", None)
    new_grid = tuple(grid) if grid else _square(wanted[1] - prefix)
    old_grid = _square(saved.shape[1] - prefix)
    if new_grid is None or old_grid is None or math.prod(new_grid) + prefix != wanted[1]:
        return None, ""
    new = resample_abs_pos_embed(saved, new_size=list(new_grid), old_size=list(old_grid), num_prefix_tokens=prefix)
    return new, (
        f"position embedding resampled from {old_grid[0]}x{old_grid[1]} to {new_grid[0]}x{new_grid[1]} "
        f"patches, {prefix} prefix token(s) kept (timm resample_abs_pos_embed, bicubic)"
    )


def _adapt(model, stems, key, saved, wanted):
    """``(tensor of shape wanted, what was done)`` for a standard adaptation of ``key``, else ``(None, "")``."""
    have = tuple(saved.shape)
    if key in stems and len(have) == len(wanted) == 4 and have[:1] + have[2:] == wanted[:1] + wanted[2:]:
        return _adapt_stem(saved, wanted)  # only the input channels differ
    if (
        key.rsplit(".", 1)[-1] in _POS_EMBED_LEAVES
        and len(have) == len(wanted) == 3
        and have[0] == wanted[0] == 1
        and have[2] == wanted[2]
    ):  # only the number of tokens differs
        return _adapt_pos_embed(model, saved, wanted)
    return None, ""


def load_state(model, state, source):
    """Load ``state`` (``{name: tensor}`` from any source) into ``model``; adapt the stem and position embedding.

    Leading ``module.`` / ``_orig_mod.`` prefixes are stripped. A tensor loads when its name is the
    model's and its shape fits, directly or after an adaptation (see the module docstring); the
    others stay as the model has them. Logs (``logging.getLogger(__name__)``, INFO) one line per
    adaptation and per shape mismatch (both shapes), the missing and unexpected keys, and a summary.

    Args:
        model: the ``nn.Module`` to load into (not a DDP wrapper).
        state: the weights; tensors of any dtype (cast to the model's on load), on any device.
        source: what the weights are, for messages (e.g. ``"--pretrained_path w.pth"``).

    Returns:
        a :class:`LoadReport`.

    Raises:
        CheckpointError: fewer than half of the model's tensors would load (one line naming
            ``source``); the model is left as it was.
    """
    state = {_strip_prefix(k): v for k, v in state.items()}
    current, stems = model.state_dict(), _stem_keys(model)
    fit, mismatched, adapted = {}, {}, {}
    for key, value in state.items():
        if key not in current:
            continue
        wanted = tuple(current[key].shape)
        if tuple(value.shape) == wanted:
            fit[key] = value
            continue
        new, how = _adapt(model, stems, key, value, wanted)
        if new is not None and tuple(new.shape) == wanted:
            fit[key], adapted[key] = new, f"{how}: {tuple(value.shape)} -> {wanted}"
        else:
            mismatched[key] = (tuple(value.shape), wanted)
    unexpected = sorted(k for k in state if k not in current)
    if 2 * len(fit) < len(current):
        raise CheckpointError(
            f"{source}: only {len(fit)} of the {len(current)} tensors of this {type(model).__name__} are in the "
            f"file with a shape that fits ({len(mismatched)} of another shape, {len(unexpected)} of the file's "
            f"{len(state)} not the model's): weights of another model? Nothing was loaded"
        )
    missing = sorted(model.load_state_dict(fit, strict=False).missing_keys)
    for key, how in adapted.items():
        log.info("%s: %s: %s", source, key, how)
    for key, (saved, wanted) in mismatched.items():
        log.info("%s: %s not loaded: shape %s in the file, %s in the model", source, key, saved, wanted)
    for what, keys in (("missing (left as initialised)", missing), ("unexpected (ignored)", unexpected)):
        if keys:
            log.info("%s: %d keys %s: %s", source, len(keys), what, ", ".join(keys))
    log.info(
        "%s: loaded %d of the model's %d tensors (%d adapted, %d of another shape, %d missing, %d unexpected)",
        source,
        len(fit),
        len(current),
        len(adapted),
        len(mismatched),
        len(missing),
        len(unexpected),
    )
    return LoadReport(len(fit), len(current), missing, unexpected, mismatched, adapted)


def load_pretrained(model, path, flag="--pretrained_path"):
    """Load the weights in the file ``path`` into ``model``: :func:`read_state_dict` then :func:`load_state`.

    Returns:
        a :class:`LoadReport`.

    Raises:
        CheckpointError: the file is missing, unreadable, not a state dict, or fits fewer than half of
            the model's tensors (one line naming ``flag`` and the file).
    """
    return load_state(model, read_state_dict(path, flag), f"{flag} {path}")
