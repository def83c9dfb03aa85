"""Class imbalance: ``--class_weights``, inverse-frequency weights and the focal loss.

Shared by the classification and segmentation tasks:

* ``--class_weights none|auto|w1,w2,...``: ``auto`` is the inverse frequency of each class on the
  training split (:func:`inverse_frequency_weights`), counted in samples (classification) or pixels
  (segmentation); a list gives one weight per class. Multi-label data takes them as BCE's
  ``pos_weight`` per label instead, ``auto`` being ``negatives / positives`` (:func:`positive_weights`).
* ``--loss focal`` with ``--focal_gamma``: Lin et al., "Focal Loss for Dense Object Detection"
  (ICCV 2017): ``-(1 - p_t)^gamma log p_t``, the cross-entropy at ``gamma = 0`` (:class:`FocalLoss`,
  :class:`SigmoidFocalLoss`).
"""

from __future__ import annotations

import argparse
import math

import torch
from torch import nn
from torch.nn import functional as F

from base.config.checks import check


def class_weights_arg(text: str):
    """argparse type of ``--class_weights``: ``"none"``, ``"auto"`` or a list of floats from ``"w1,w2,..."``.

    Raises:
        argparse.ArgumentTypeError: a value that is not a finite number >= 0, or all weights 0.
    """
    word = text.strip().lower()
    if word in ("none", "auto"):
        return word
    try:
        weights = [float(part) for part in text.split(",")]
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r}: expected none, auto or comma-separated numbers") from None
    if not all(math.isfinite(w) and w >= 0 for w in weights) or not any(weights):
        raise argparse.ArgumentTypeError(f"{text!r}: weights must be finite numbers >= 0, not all 0")
    return weights


def add_imbalance_arguments(group) -> None:
    """Add ``--class_weights`` and ``--focal_gamma`` to an argparse group (a task adds ``--loss`` itself)."""
    group.add_argument(
        "--class_weights",
        type=class_weights_arg,
        default="none",
        help="per-class loss weights: none, auto (inverse frequency on the training split) or w1,w2,...",
    )
    group.add_argument(
        "--focal_gamma",
        type=float,
        default=2.0,
        help="focusing parameter of --loss focal (Lin et al. 2017; 0 gives the cross-entropy)",
    )


def check_imbalance_config(args, num_classes: int | None = None) -> None:
    """Refuse ``--focal_gamma < 0`` and a ``--class_weights`` list of the wrong length (when ``num_classes`` is known).

    Raises:
        ConfigError: naming the flag.
    """
    check(args.focal_gamma >= 0, "focal_gamma", args.focal_gamma, "must be >= 0")
    weights = args.class_weights
    if num_classes is not None and isinstance(weights, list):
        check(len(weights) == num_classes, "class_weights", weights, f"needs one weight per class ({num_classes})")


def inverse_frequency_weights(counts) -> torch.Tensor:
    """Weight of each class: ``n / (K * n_c)`` over the ``K`` classes present; 0 for a class never seen.

    scikit-learn's ``compute_class_weight("balanced")`` rule (King and Zeng, 2001): a class of average
    frequency weighs 1 and the weighted counts of all present classes are equal. An absent class never is
    a target, so its weight changes nothing; 0 keeps the others' values the same as without it.

    Args:
        counts: int or float ``(K,)``, samples (or pixels) of each class in the training split.

    Returns:
        float32 ``(K,)``.

    Raises:
        ValueError: every count is 0.
    """
    counts = torch.as_tensor(counts, dtype=torch.float64)
    present = counts > 0
    if not bool(present.any()):
        raise ValueError("inverse_frequency_weights: every class count is 0")
    weights = torch.zeros_like(counts)
    weights[present] = counts.sum() / (int(present.sum()) * counts[present])
    return weights.float()


def positive_weights(positives, total: int) -> torch.Tensor:
    """BCE ``pos_weight`` per label: ``negatives / positives`` (PyTorch's ``BCEWithLogitsLoss`` recipe); 1 for
    a label that is never (or always) positive.

    Args:
        positives: int ``(K,)``, training samples where each label is 1.
        total: training samples.

    Returns:
        float32 ``(K,)``.
    """
    positives = torch.as_tensor(positives, dtype=torch.float64)
    negatives = total - positives
    usable = (positives > 0) & (negatives > 0)
    return torch.where(usable, negatives / positives.clamp(min=1), torch.ones_like(positives)).float()


def resolve_class_weights(choice, num_classes: int, auto) -> torch.Tensor | None:
    """The weights ``--class_weights`` asks for: ``None`` (none), ``auto()``'s (auto) or the list, float32 ``(K,)``.

    Args:
        choice: the parsed flag (:func:`class_weights_arg`).
        num_classes: ``K``.
        auto: a callable computing the automatic weights (called only for ``"auto"``).

    Raises:
        ConfigError: a list whose length is not ``num_classes``.
    """
    if choice == "none":
        return None
    if choice == "auto":
        return torch.as_tensor(auto(), dtype=torch.float32)
    check(len(choice) == num_classes, "class_weights", choice, f"needs one weight per class ({num_classes})")
    return torch.tensor(choice, dtype=torch.float32)


class FocalLoss(nn.Module):
    """Softmax focal loss, ``-w_t (1 - p_t)^gamma log p_t`` (Lin et al. 2017), reduced as ``F.cross_entropy`` is.

    With ``gamma = 0`` it equals ``F.cross_entropy(logits, target, weight, ignore_index=...)``: for class
    indices the weighted mean over the non-ignored elements (``sum w_t l / sum w_t``), for class
    probabilities (Mixup / CutMix targets) ``-sum_k w_k y_k (1 - p_k)^gamma log p_k`` averaged over samples.
    Computed in float32.

    Args:
        gamma: focusing parameter, >= 0 (2 in the paper).
        weight: float ``(K,)`` class weights or ``None``.
        ignore_index: target value left out (class-index targets only).

    Shapes:
        ``logits`` float ``(N, K)`` or ``(N, K, d1, ...)``; ``target`` int64 ``(N,)`` / ``(N, d1, ...)``, or
        float class probabilities of the logits' shape. Returns a float32 scalar.
    """

    def __init__(self, gamma: float = 2.0, weight: torch.Tensor | None = None, ignore_index: int = -100):
        super().__init__()
        self.gamma, self.ignore_index = float(gamma), ignore_index
        self.register_buffer("weight", None if weight is None else torch.as_tensor(weight, dtype=torch.float32))

    def _modulation(self, probs):
        # (1 - p)^0 is 1; a clamp keeps the gradient of (1 - p)^gamma finite at p = 1 for gamma < 1
        return torch.ones_like(probs) if self.gamma == 0 else (1 - probs).clamp(min=1e-6).pow(self.gamma)

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        log_probs = F.log_softmax(logits.float(), dim=1)
        shape = [1, -1] + [1] * (logits.dim() - 2)
        if target.is_floating_point():  # class probabilities
            terms = target.float() * self._modulation(log_probs.exp()) * log_probs
            if self.weight is not None:
                terms = terms * self.weight.view(shape)
            return -terms.sum(1).mean()
        valid = target != self.ignore_index
        safe = torch.where(valid, target, torch.zeros_like(target))
        log_pt = log_probs.gather(1, safe.unsqueeze(1)).squeeze(1)
        losses = -self._modulation(log_pt.exp()) * log_pt
        weights = valid.float() if self.weight is None else self.weight[safe] * valid
        return (losses * weights).sum() / weights.sum()


class SigmoidFocalLoss(nn.Module):
    """Per-label focal loss for multi-label logits (torchvision's ``sigmoid_focal_loss``, Lin et al. 2017, no
    alpha), with BCE's ``pos_weight`` on the positive terms; the mean over all labels and samples.

    At ``gamma = 0`` it equals ``F.binary_cross_entropy_with_logits(logits, target, pos_weight=pos_weight)``.

    Shapes:
        ``logits`` float ``(N, K)``, ``target`` float ``(N, K)`` in [0, 1]; returns a float32 scalar.
    """

    def __init__(self, gamma: float = 2.0, pos_weight: torch.Tensor | None = None):
        super().__init__()
        self.gamma = float(gamma)
        self.register_buffer("pos_weight", None if pos_weight is None else torch.as_tensor(pos_weight).float())

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        from torchvision.ops import sigmoid_focal_loss

        target = target.float()
        losses = sigmoid_focal_loss(logits.float(), target, alpha=-1, gamma=self.gamma, reduction="none")
        if self.pos_weight is not None:
            losses = losses * (1 + (self.pos_weight - 1) * target)
        return losses.mean()
