"""Classification losses: cross-entropy, or the focal loss, with optional class weights (see :mod:`loss.imbalance`)."""

import torch
from torch import nn

from loss.imbalance import FocalLoss, SigmoidFocalLoss

LOSSES = ("ce", "focal")


def build_classification_loss(
    label_smoothing: float = 0.0,
    kind: str = "ce",
    weight: torch.Tensor | None = None,
    gamma: float = 2.0,
    multilabel: bool = False,
) -> nn.Module:
    """The training loss of a classifier on ``logits: float (N, K)``.

    Args:
        label_smoothing: Szegedy et al., "Rethinking the Inception Architecture" (2016), as in
            ``torch.nn.CrossEntropyLoss`` (single-label ``"ce"`` only).
        kind: ``"ce"`` (cross-entropy; per-label binary cross-entropy with logits for multi-label data) or
            ``"focal"`` (:class:`loss.imbalance.FocalLoss` / :class:`loss.imbalance.SigmoidFocalLoss`).
        weight: float ``(K,)`` class weights (multi-label: ``pos_weight``) or ``None``.
        gamma: the focal loss's focusing parameter.
        multilabel: targets are float ``(N, K)`` in {0, 1} instead of int64 ``(N,)``.

    Raises:
        ValueError: unknown ``kind``, or label smoothing with a loss that does not take it.
    """
    if kind not in LOSSES:
        raise ValueError(f"loss must be 'ce' or 'focal', got {kind!r}")
    if label_smoothing and (kind == "focal" or multilabel):
        raise ValueError("label smoothing applies to the single-label cross-entropy only")
    if multilabel:
        return nn.BCEWithLogitsLoss(pos_weight=weight) if kind == "ce" else SigmoidFocalLoss(gamma, weight)
    if kind == "focal":
        return FocalLoss(gamma, weight)
    return nn.CrossEntropyLoss(weight=weight, label_smoothing=label_smoothing)
