"""Binary segmentation losses on logits: BCE, soft Dice, or a weighted sum of both."""

import torch
from torch import nn
from torch.nn import functional as F

LOSSES = ("bce", "dice", "bce_dice")


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


class SegmentationLoss(nn.Module):
    """``bce_weight * BCE + dice_weight * soft Dice`` (or one of them) on logits.

    BCE is ``F.binary_cross_entropy_with_logits`` averaged over pixels. A
    list of logits (deep supervision, one per UNet++ head) gets the mean of
    the loss of each. Computed in float32 whatever autocast chose.

    Args:
        kind: ``"bce"``, ``"dice"`` or ``"bce_dice"``.
        bce_weight, dice_weight: weights of the two terms in ``"bce_dice"``.
        smooth: the soft Dice's smooth term (see :func:`soft_dice_loss`).

    Raises:
        ValueError: unknown ``kind``.
    """

    def __init__(self, kind="bce_dice", bce_weight=1.0, dice_weight=1.0, smooth=1.0):
        super().__init__()
        if kind not in LOSSES:
            raise ValueError(f"loss must be one of {LOSSES}, got {kind!r}")
        self.kind, self.bce_weight, self.dice_weight, self.smooth = kind, bce_weight, dice_weight, smooth

    def forward(self, logits, target):
        """``logits``: float ``(N, 1, H, W)`` or a list of them; ``target``: float ``(N, 1, H, W)``."""
        if isinstance(logits, (list, tuple)):
            return torch.stack([self(one, target) for one in logits]).mean()
        logits, target = logits.float(), target.float()
        loss = logits.new_zeros(())
        if self.kind in ("bce", "bce_dice"):
            weight = self.bce_weight if self.kind == "bce_dice" else 1.0
            loss = loss + weight * F.binary_cross_entropy_with_logits(logits, target)
        if self.kind in ("dice", "bce_dice"):
            weight = self.dice_weight if self.kind == "bce_dice" else 1.0
            loss = loss + weight * soft_dice_loss(logits, target, self.smooth)
        return loss
