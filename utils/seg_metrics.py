"""Dice and IoU of segmentations, summed over a whole split, not averaged over batches.

:class:`SegmentationMeter` scores binary masks (one class against the background);
:class:`ConfusionMeter` scores maps of ``K`` classes through their ``K x K`` confusion matrix.

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

    With ``class_means=True`` :meth:`compute` adds the figures a ``K``-class meter reports, over the two
    classes background and foreground (:func:`class_scores`): ``miou``, ``mdice`` (a class absent from
    both truth and prediction over the split is left out of the mean, unlike ``dice``/``iou`` above)
    and ``pixel_acc``, so a binary task can be monitored by the same name as a multi-class one.
    """

    def __init__(self, class_means=False):
        self.class_means, self.pixels = class_means, 0
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
        self.pixels += pred.numel()

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

        count, loss_sum, inter, pred, target, dice_sum, iou_sum, pixels = all_reduce_sum(
            [self.count, self.loss_sum, self.inter, self.pred, self.target, self.dice_sum, self.iou_sum, self.pixels]
        )
        if count == 0:
            raise ValueError("SegmentationMeter.compute() called before any update()")
        areas, union = pred + target, pred + target - inter
        metrics = {
            "loss": loss_sum / count,
            "dice": 2 * inter / areas if areas else 1.0,
            "iou": inter / union if union else 1.0,
            "dice_per_image": dice_sum / count,
            "iou_per_image": iou_sum / count,
        }
        if self.class_means:
            # the 2 x 2 confusion (rows truth, columns prediction) of background 0 and foreground 1
            background = pixels - union  # neither predicted nor true
            confusion = torch.tensor([[background, pred - inter], [target - inter, inter]], dtype=torch.float64)
            scores = class_scores(confusion)
            metrics.update(miou=scores["miou"], mdice=scores["mdice"], pixel_acc=scores["pixel_acc"])
        return metrics


def class_scores(confusion):
    """Per-class IoU and Dice, their means and the pixel accuracy of a ``K x K`` confusion matrix.

    ``confusion[t, p]`` counts the pixels of true class ``t`` predicted as ``p`` (rows truth, columns
    prediction). For class ``k``: ``TP = C[k, k]``, ``FP = sum_t C[t, k] - TP``, ``FN = sum_p C[k, p] - TP``;
    ``IoU = TP / (TP + FP + FN)``, ``Dice = 2 TP / (2 TP + FP + FN)``. A class absent from both truth and
    prediction over everything counted (``TP + FP + FN = 0``) has no score: NaN, left out of ``miou`` and
    ``mdice`` (mmsegmentation's convention; a class never seen neither helps nor hurts the mean).
    ``pixel_acc = trace(C) / sum(C)``.

    Args:
        confusion: integer or float ``(K, K)`` tensor.

    Returns:
        ``{"iou": float64 (K,), "dice": float64 (K,), "miou": float, "mdice": float, "pixel_acc": float}``
        (the means NaN when every class is absent).
    """
    confusion = torch.as_tensor(confusion).double()
    tp = confusion.diag()
    fp, fn = confusion.sum(0) - tp, confusion.sum(1) - tp
    seen = (tp + fp + fn) > 0
    nan = torch.full_like(tp, float("nan"))
    iou = torch.where(seen, tp / (tp + fp + fn).clamp(min=1e-300), nan)
    dice = torch.where(seen, 2 * tp / (2 * tp + fp + fn).clamp(min=1e-300), nan)
    total = float(confusion.sum())
    return {
        "iou": iou,
        "dice": dice,
        "miou": float(iou[seen].mean()) if bool(seen.any()) else float("nan"),
        "mdice": float(dice[seen].mean()) if bool(seen.any()) else float("nan"),
        "pixel_acc": float(tp.sum()) / total if total else float("nan"),
    }


class ConfusionMeter:
    """Accumulates the ``K x K`` confusion matrix of class maps over a whole split, plus a per-sample mean loss.

    Args:
        num_classes: ``K``.
        ignore_index: the truth label whose pixels are left out (counted nowhere).
        class_names: ``K`` names for the per-class keys of :meth:`compute` (default ``"0"``, ``"1"``, ...).

    Attributes:
        local_confusion: int64 ``(K, K)``, rows truth, columns prediction: this process's counts.
        confusion: the same after :meth:`compute`, summed over the DDP processes (the whole split's);
            before, this process's.
        count: images added (this process's).
    """

    def __init__(self, num_classes, ignore_index=255, class_names=None):
        self.num_classes, self.ignore_index = num_classes, ignore_index
        self.class_names = list(class_names) if class_names else [str(k) for k in range(num_classes)]
        if len(self.class_names) != num_classes:
            raise ValueError(f"{len(self.class_names)} class names for {num_classes} classes")
        self.local_confusion = torch.zeros(num_classes, num_classes, dtype=torch.int64)
        self.confusion = self.local_confusion
        self.count, self.loss_sum = 0, 0.0

    @torch.no_grad()
    def update(self, pred, target):
        """Add class maps.

        Args:
            pred: integer ``(N, ...)`` predicted classes in ``0..K-1``.
            target: integer ``(N, ...)`` of the same shape: ``0..K-1`` or ``ignore_index``.

        Raises:
            ValueError: shapes differ, or a label or prediction outside those values.
        """
        if pred.shape != target.shape:
            raise ValueError(f"prediction {tuple(pred.shape)} and mask {tuple(target.shape)} differ in shape")
        k, n = self.num_classes, pred.shape[0]
        pred, target = pred.long().flatten().cpu(), target.long().flatten().cpu()
        keep = target != self.ignore_index
        pred, target = pred[keep], target[keep]
        low = min(int(target.min()), int(pred.min())) if pred.numel() else 0
        high = max(int(target.max()), int(pred.max())) if pred.numel() else 0
        if low < 0 or high >= k:
            raise ValueError(f"labels and predictions must be in 0..{k - 1} (or the ignore index {self.ignore_index})")
        self.local_confusion += torch.bincount(target * k + pred, minlength=k * k).view(k, k)
        self.count += n

    def add_loss(self, loss, n):
        """Add a batch's *mean* loss (scalar), weighted by its ``n`` samples."""
        self.loss_sum += float(loss) * n

    def compute(self):
        """``{"loss", "miou", "mdice", "pixel_acc", "iou_<name>"..., "dice_<name>"...}`` as floats.

        See :func:`class_scores` for the conventions (a class absent from truth and prediction is NaN and
        left out of the means); ``loss`` is the mean per image. Under DDP the matrix, the loss sum and the
        count are summed over the processes first (a collective: every process calls it) and
        :attr:`confusion` becomes the whole split's.

        Raises:
            ValueError: nothing was added, on any process.
        """
        from base.runtime.distributed import all_reduce_sum

        k = self.num_classes
        totals = all_reduce_sum([self.count, self.loss_sum, *self.local_confusion.flatten().tolist()])
        count, loss_sum = totals[0], totals[1]
        if count == 0:
            raise ValueError("ConfusionMeter.compute() called before any update()")
        self.confusion = torch.tensor([round(v) for v in totals[2:]], dtype=torch.int64).view(k, k)
        scores = class_scores(self.confusion)
        metrics = {"loss": loss_sum / count, "miou": scores["miou"], "mdice": scores["mdice"]}
        metrics["pixel_acc"] = scores["pixel_acc"]
        for name, value in zip(self.class_names, scores["iou"].tolist()):
            metrics[f"iou_{name}"] = value
        for name, value in zip(self.class_names, scores["dice"].tolist()):
            metrics[f"dice_{name}"] = value
        return metrics
