"""Test-time augmentation (TTA): average a model's probabilities over flipped copies of its input.

``TTA(model, mode, activation, spatial)`` wraps any model; its forward returns
logits of the same shape and meaning as the model's, so a task's loss, argmax
and threshold code reads them unchanged::

    model = TTA(task.model, "hflip", "softmax", spatial=False)
    logits = model(images)  # float32 (N, K): log of the mean softmax probability of 2 views

Views (``--tta``): ``none`` the image alone (the wrapper returns the model's
output as it is); ``hflip`` the image and its horizontal flip (2 views);
``flips`` identity, horizontal, vertical, both (4 views).

What is averaged are the PROBABILITIES of the views, not their logits: "the
soft-max class posteriors of the original and flipped images are averaged"
(Simonyan & Zisserman 2015, VGG, section 3.2), as mmpretrain's ``AverageClsScoreTTA``
does (the mean of its heads' softmax ``pred_score``); ttach's ``ClassificationTTAWrapper``
and ``SegmentationTTAWrapper`` (``merge_mode="mean"``) average whatever the model
returns, i.e. probabilities when the model ends in its activation. The mean is turned back into
logits whose activation equals it: ``softmax``: ``log(mean p)`` (its softmax is
the mean again, since the mean sums to 1 over dim 1); ``sigmoid``:
``logit(mean p)``, the mean clamped to [eps, 1 - eps] (float32 eps) so no logit
is infinite. A threshold at 0.5 (logit 0) or an argmax is unchanged by the clamp.
"""

from __future__ import annotations

import argparse

import torch
from torch import nn

from base.errors import ConfigError

#: ``--tta`` mode -> the flips of its views, each a tuple of dims of an (N, C, H, W) image to flip.
VIEWS = {"none": ((),), "hflip": ((), (-1,)), "flips": ((), (-1,), (-2,), (-2, -1))}
_VIEW_NAMES = {(): "identity", (-1,): "horizontal flip", (-2,): "vertical flip", (-2, -1): "both flips"}
ACTIVATIONS = ("softmax", "sigmoid")


def describe_tta(mode: str, activation: str = "softmax") -> str:
    """One line for the output, e.g. ``"TTA hflip: mean of the softmax probabilities of 2 views
    (identity, horizontal flip)"``; ``"TTA none: the model's output as it is"``."""
    if mode == "none":
        return "TTA none: the model's output as it is"
    views = VIEWS[mode]
    names = ", ".join(_VIEW_NAMES[v] for v in views)
    return f"TTA {mode}: mean of the {activation} probabilities of {len(views)} views ({names})"


def add_tta_argument(parser) -> None:
    """Add ``--tta none|hflip|flips`` (default ``none``) to ``parser`` (an ``ArgumentParser`` or a group)."""
    parser.add_argument(
        "--tta",
        choices=list(VIEWS),
        default="none",
        help="test-time augmentation: the mean of the probabilities of the image and its horizontal flip "
        "(hflip, 2 views) or of its four flips (flips, 4 views); none: the image alone",
    )


def refuse_tta_argument(parser, prog: str, why: str) -> None:
    """Add a hidden ``--tta`` to ``parser`` that refuses every mode but ``none``, in one line (for a script
    that cannot use it).

    Raises (while parsing):
        ConfigError: ``"--tta=hflip: eval_mae.py <why>"``.
    """

    class Refuse(argparse.Action):
        def __call__(self, parser, namespace, values, option_string=None):
            if values != "none":
                raise ConfigError(f"--tta={values!r}: {prog} {why}")

    parser.add_argument("--tta", action=Refuse, help=argparse.SUPPRESS)


class TTA(nn.Module):
    """``model`` applied to the flipped views of its input, probabilities averaged, returned as logits.

    Args:
        model: maps float ``(N, C, H, W)`` images to logits ``(N, K)`` (``spatial=False``) or
            ``(N, K, H, W)`` (``spatial=True``, e.g. segmentation; ``K`` may be 1 for binary masks).
        mode: ``"none"``, ``"hflip"`` or ``"flips"`` (see :data:`VIEWS`).
        activation: ``"softmax"`` (over dim 1: one class among K) or ``"sigmoid"`` (each of K on its
            own: binary or multi-label).
        spatial: the output has the image's layout; each view's output is flipped back before averaging.

    ``forward(x)`` runs the model once per view (peak memory as without TTA) and returns float32
    logits of the model's output shape whose ``activation`` is the mean of the views' probabilities
    (module docstring); with ``mode="none"`` the model's output itself (its dtype).

    Raises:
        ValueError: an unknown ``mode`` or ``activation``, naming it.
    """

    def __init__(self, model: nn.Module, mode: str, activation: str = "softmax", spatial: bool = False):
        super().__init__()
        if mode not in VIEWS:
            raise ValueError(f"--tta {mode!r}: expected one of {', '.join(VIEWS)}")
        if activation not in ACTIVATIONS:
            raise ValueError(f"TTA activation {activation!r}: expected one of {', '.join(ACTIVATIONS)}")
        self.model, self.mode, self.activation, self.spatial = model, mode, activation, spatial
        self.train(model.training)  # a wrapper of an eval-mode model reads as one

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.mode == "none":
            return self.model(x)
        total = None
        for dims in VIEWS[self.mode]:
            out = self.model(x.flip(dims) if dims else x).float()
            if self.spatial and dims:
                out = out.flip(dims)  # back to the image's layout: pixel (i, j) of every view is the same pixel
            probs = out.softmax(1) if self.activation == "softmax" else out.sigmoid()
            total = probs if total is None else total + probs
        mean = total / len(VIEWS[self.mode])
        if self.activation == "softmax":
            return mean.clamp_min(torch.finfo(mean.dtype).tiny).log()
        return torch.logit(mean, eps=torch.finfo(mean.dtype).eps)
