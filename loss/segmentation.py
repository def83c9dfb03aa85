"""Segmentation losses on logits.

One class (``K = 1``, one logit channel): BCE, soft Dice on sigmoid probabilities, or their weighted sum.
``K >= 2`` classes (``K`` logit channels): softmax cross-entropy or the focal loss
(:class:`loss.imbalance.FocalLoss`), multi-class soft Dice (:func:`multiclass_soft_dice_loss`), or a
weighted sum of one of the first two and the Dice; pixels labelled ``ignore_index`` count in none.
"""

import torch
from torch import nn
from torch.nn import functional as F

from loss.imbalance import FocalLoss

BINARY_LOSSES = ("bce", "dice", "bce_dice")
MULTICLASS_LOSSES = ("ce", "dice", "ce_dice", "focal", "focal_dice")
LOSSES = ("bce", "dice", "bce_dice", "ce", "ce_dice", "focal", "focal_dice")


def soft_dice_loss(logits, target, smooth=1.0):
    """``1 - (2 sum(p t) + s) / (sum(p) + sum(t) + s)`` per image, averaged over the batch.

    ``p = sigmoid(logits)``; the sums run over each image's pixels (Milletari
    et al., "V-Net", 2016, without the squares in the denominator). The smooth
    term ``s`` keeps the ratio defined for an empty mask, where an empty
    prediction gives a loss of 0, and damps the gradient of tiny masks.

    Args:
        logits: float ``(N, 1, H, W)``.
        target: float ``(N, 1, H, W)`` in {0, 1}.
        smooth: ``s`` above, > 0.

    Returns:
        float32 scalar tensor.
    """
    probs = torch.sigmoid(logits.float()).flatten(1)
    target = target.float().flatten(1)
    inter = (probs * target).sum(1)
    return (1 - (2 * inter + smooth) / (probs.sum(1) + target.sum(1) + smooth)).mean()


def multiclass_soft_dice_loss(logits, target, ignore_index=255, smooth=1.0):
    """``1 - mean_k (2 sum(p_k t_k) + s) / (sum(p_k) + sum(t_k) + s)``: one minus the mean over classes of
    each class's soft Dice.

    ``p = softmax(logits)`` over the channels and ``t`` the one-hot target; the sums run over every
    pixel of the batch whose label is not ``ignore_index`` (those pixels count in neither sum). This is
    Milletari et al.'s soft Dice ("V-Net", 2016, without the squares) taken per class and averaged
    with equal class weights, the unweighted form of Sudre et al.'s generalised Dice ("Generalised Dice
    overlap as a deep learning loss function for highly unbalanced segmentations", 2017), which weighs
    class ``k`` by ``1 / (sum t_k)^2`` instead. The smooth term ``s`` makes a class absent from the
    batch's labels score 1 when it is not predicted either.

    Args:
        logits: float ``(N, K, H, W)``.
        target: int64 ``(N, H, W)``, values ``0..K-1`` or ``ignore_index``.
        ignore_index: the label left out.
        smooth: ``s`` above, > 0.

    Returns:
        float32 scalar tensor.
    """
    num_classes = logits.shape[1]
    probs = torch.softmax(logits.float(), dim=1)
    valid = (target != ignore_index).unsqueeze(1)  # (N, 1, H, W)
    one_hot = F.one_hot(torch.where(valid[:, 0], target, torch.zeros_like(target)), num_classes)
    one_hot = one_hot.permute(0, 3, 1, 2).float() * valid
    probs = probs * valid
    dims = (0, 2, 3)
    inter = (probs * one_hot).sum(dims)
    dice = (2 * inter + smooth) / (probs.sum(dims) + one_hot.sum(dims) + smooth)
    return 1 - dice.mean()


class SegmentationLoss(nn.Module):
    """``bce_weight * (BCE | CE | focal) + dice_weight * soft Dice`` (or one of them) on logits.

    One class (``num_classes=1``): BCE is ``F.binary_cross_entropy_with_logits`` averaged over
    pixels, the Dice :func:`soft_dice_loss`; ``kind`` one of :data:`BINARY_LOSSES`.
    ``K >= 2`` classes: CE is ``F.cross_entropy(logits, target, weight=class_weight,
    ignore_index=ignore_index)`` (the weighted mean over the pixels not ignored), focal is
    :class:`loss.imbalance.FocalLoss` with the same weights and ignore index, the Dice
    :func:`multiclass_soft_dice_loss` (unweighted); ``kind`` one of :data:`MULTICLASS_LOSSES`.
    A list of logits (deep supervision, one per UNet++ head) gets the mean of the loss of each.
    Computed in float32 whatever autocast chose.

    Args:
        kind: see above.
        bce_weight, dice_weight: weights of the two terms in ``"bce_dice"``, ``"ce_dice"``, ``"focal_dice"``.
        smooth: the soft Dice's smooth term.
        num_classes: ``K`` (1: the binary losses).
        ignore_index: label left out (``K >= 2``).
        class_weight: float ``(K,)`` weights of the CE / focal term, or ``None`` (``K >= 2``).
        focal_gamma: the focal loss's gamma (Lin et al. 2017).

    Raises:
        ValueError: a ``kind`` that is not one of ``num_classes``'s kinds.
    """

    def __init__(
        self,
        kind="bce_dice",
        bce_weight=1.0,
        dice_weight=1.0,
        smooth=1.0,
        num_classes=1,
        ignore_index=255,
        class_weight=None,
        focal_gamma=2.0,
    ):
        super().__init__()
        kinds = BINARY_LOSSES if num_classes == 1 else MULTICLASS_LOSSES
        if kind not in kinds:
            raise ValueError(f"loss must be one of {kinds} for {num_classes} class(es), got {kind!r}")
        self.kind, self.bce_weight, self.dice_weight, self.smooth = kind, bce_weight, dice_weight, smooth
        self.num_classes, self.ignore_index = num_classes, ignore_index
        if num_classes > 1:
            self.pixel_loss = FocalLoss(focal_gamma if kind.startswith("focal") else 0.0, class_weight, ignore_index)

    def forward(self, logits, target):
        """``logits``: float ``(N, K, H, W)`` or a list of them; ``target``: float ``(N, 1, H, W)`` in {0, 1}
        for ``K = 1``, int64 ``(N, H, W)`` class indices for ``K >= 2``."""
        if isinstance(logits, (list, tuple)):
            return torch.stack([self(one, target) for one in logits]).mean()
        if self.num_classes > 1:
            return self.multiclass(logits.float(), target)
        logits, target = logits.float(), target.float()
        loss = logits.new_zeros(())
        if self.kind in ("bce", "bce_dice"):
            weight = self.bce_weight if self.kind == "bce_dice" else 1.0
            loss = loss + weight * F.binary_cross_entropy_with_logits(logits, target)
        if self.kind in ("dice", "bce_dice"):
            weight = self.dice_weight if self.kind == "bce_dice" else 1.0
            loss = loss + weight * soft_dice_loss(logits, target, self.smooth)
        return loss

    def multiclass(self, logits, target):
        """The ``K >= 2`` loss of one logits tensor (see the class)."""
        loss = logits.new_zeros(())
        pixel_term, dice_term = self.kind != "dice", self.kind in ("dice", "ce_dice", "focal_dice")
        if pixel_term:
            weight = self.bce_weight if dice_term else 1.0
            if self.kind.startswith("focal"):
                loss = loss + weight * self.pixel_loss(logits, target)
            else:  # PyTorch's own kernel: the cross-entropy, weighted, ignore left out
                loss = loss + weight * F.cross_entropy(
                    logits, target, weight=self.pixel_loss.weight, ignore_index=self.ignore_index
                )
        if dice_term:
            weight = self.dice_weight if pixel_term else 1.0
            loss = loss + weight * multiclass_soft_dice_loss(logits, target, self.ignore_index, self.smooth)
        return loss
