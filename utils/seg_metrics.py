"""Dice and IoU of binary masks, summed over a whole split, not averaged over batches.

Our own ~40 lines rather than ``torchmetrics.segmentation``: its ``DiceScore``
and ``MeanIoU`` changed their empty-mask and averaging rules across the 1.x
releases (``zero_division`` arrived in 1.6.2, ``aggregation_level`` later),
and the two conventions reported here are pinned by tests on hand-computed
values.
"""

import torch


class SegmentationMeter:
    """Accumulates intersections and areas of binary masks, plus a per-sample mean loss.

    Two views of the same predictions:

    * ``dice`` / ``iou``: over the whole split, ``2 sum(I) / (sum(P) + sum(T))``
      and ``sum(I) / sum(U)`` (the Carvana leaderboard's Dice is per image, so
      both are given);
    * ``dice_per_image`` / ``iou_per_image``: the mean over images of each
      image's score.

    An empty prediction on an empty mask scores 1 (nothing to find, nothing
    found), for a single image and for a split with no foreground at all.
    """

    def __init__(self):
        self.count, self.loss_sum = 0, 0.0
        self.inter = self.pred = self.target = 0
        self.dice_sum = self.iou_sum = 0.0

    @torch.no_grad()
    def update(self, pred, target):
        """Add masks.

        Args:
            pred: bool ``(N, ...)``, the thresholded prediction.
            target: bool or {0, 1} integer ``(N, ...)`` of the same shape.

        Raises:
            ValueError: shapes differ.
        """
        if pred.shape != target.shape:
            raise ValueError(f"prediction {tuple(pred.shape)} and mask {tuple(target.shape)} differ in shape")
        pred, target = pred.bool().flatten(1), target.bool().flatten(1)
        inter = (pred & target).sum(1).double()
        p, t = pred.sum(1).double(), target.sum(1).double()
        union = p + t - inter
        dice = torch.where(p + t > 0, 2 * inter / (p + t).clamp(min=1), torch.ones_like(p))
        iou = torch.where(union > 0, inter / union.clamp(min=1), torch.ones_like(p))
        self.inter += int(inter.sum())
        self.pred += int(p.sum())
        self.target += int(t.sum())
        self.dice_sum += float(dice.sum())
        self.iou_sum += float(iou.sum())
        self.count += pred.shape[0]

    def add_loss(self, loss, n):
        """Add a batch's *mean* loss (scalar), weighted by its ``n`` samples."""
        self.loss_sum += float(loss) * n

    def compute(self):
        """``{"loss", "dice", "iou", "dice_per_image", "iou_per_image"}`` as floats in [0, 1] (loss: mean per sample).

        Under DDP (a process group running) the sums are taken over all
        processes first, so every process gets the metrics of the whole split:
        a collective, called by every process.

        Raises:
            ValueError: nothing was added, on any process.
        """
        from base.runtime.distributed import all_reduce_sum

        count, loss_sum, inter, pred, target, dice_sum, iou_sum = all_reduce_sum(
            [self.count, self.loss_sum, self.inter, self.pred, self.target, self.dice_sum, self.iou_sum]
        )
        if count == 0:
            raise ValueError("SegmentationMeter.compute() called before any update()")
        areas, union = pred + target, pred + target - inter
        return {
            "loss": loss_sum / count,
            "dice": 2 * inter / areas if areas else 1.0,
            "iou": inter / union if union else 1.0,
            "dice_per_image": dice_sum / count,
            "iou_per_image": iou_sum / count,
        }
