"""Multi-label classification metrics over a whole split: mAP, per-label AP and F1, micro and mean F1.

Average precision needs every sample's score, not sums: :class:`MultiLabelMeter` keeps them all and, under
DDP, gathers every process's before computing, so two processes give exactly the one-process numbers.
"""

import math

import numpy as np
import torch


class MultiLabelMeter:
    """Holds every sample's sigmoid probabilities and 0/1 targets; :meth:`compute` scores them.

    Args:
        num_labels: ``K``.
        threshold: a label is predicted when its probability is ``>= threshold`` (for the F1 scores).
    """

    def __init__(self, num_labels, threshold=0.5):
        self.num_labels, self.threshold = num_labels, threshold
        self.scores, self.targets = [], []  # CPU float32 (n, K) per batch
        self.count, self.loss_sum = 0, 0.0

    @torch.no_grad()
    def update(self, logits, targets, loss=None):
        """Add a batch.

        Args:
            logits: float ``(N, K)``; their sigmoids are kept.
            targets: ``(N, K)`` 0/1 (any dtype).
            loss: the batch's *mean* loss (a scalar), weighted here by ``N``.
        """
        self.scores.append(torch.sigmoid(logits.float()).cpu())
        self.targets.append(targets.float().cpu())
        if loss is not None:
            self.loss_sum += float(loss) * len(targets)
        self.count += len(targets)

    def compute(self):
        """The metrics of every sample added, on every process (under DDP a collective: call it on all).

        Returns:
            ``{"loss", "map", "micro_f1", "mean_f1", "ap": [K], "f1": [K], "positives": [K], "count"}``:

            * ``map``: scikit-learn's ``average_precision_score(average="macro")`` over the labels with at
              least one positive sample only (a label without positives has no defined AP: it is left out of
              the mean and reported as NaN in ``ap``); NaN when no label has a positive.
            * ``ap``: each label's average precision (NaN: no positive).
            * ``f1``: each label's F1 of ``probability >= threshold`` (``f1_score(average=None,
              zero_division=0)``: 0 where a label has neither positives nor predictions).
            * ``micro_f1``: F1 of all (sample, label) decisions pooled; ``mean_f1``: the unweighted mean of
              ``f1`` over all ``K`` labels (``average="macro"``).
            * ``loss``: the mean of the batches' losses weighted by their sizes; ``positives``: each label's
              count of positive samples; ``count``: samples.

            All scores in [0, 1] (not percent).

        Raises:
            ValueError: nothing was added, on any process.
        """
        from base.runtime.distributed import all_reduce_sum, gather_rows

        empty = torch.zeros(0, self.num_labels)
        scores = torch.cat(self.scores) if self.scores else empty
        targets = torch.cat(self.targets) if self.targets else empty
        scores, targets = gather_rows(scores, targets)
        count, loss_sum = all_reduce_sum([self.count, self.loss_sum])
        if count == 0:
            raise ValueError("MultiLabelMeter.compute() called before any update()")
        scores, targets = scores.double().numpy(), targets.numpy().astype(np.int64)
        return {"loss": loss_sum / count, **multilabel_scores(scores, targets, self.threshold), "count": int(count)}


def multilabel_scores(scores, targets, threshold=0.5):
    """mAP, per-label AP and F1, micro and mean F1 of ``scores`` against ``targets`` (:meth:`MultiLabelMeter.compute`).

    Args:
        scores: float ``(n, K)`` probabilities (NumPy).
        targets: int ``(n, K)`` 0/1 (NumPy).
        threshold: a label is predicted at ``score >= threshold``.

    Returns:
        ``{"map", "micro_f1", "mean_f1", "ap", "f1", "positives"}`` (floats, lists of ``K``).
    """
    from sklearn.metrics import average_precision_score, f1_score  # here: importing scikit-learn costs a second

    positives = targets.sum(0)
    has = positives > 0
    ap = [math.nan] * targets.shape[1]
    if has.any():
        per_label = average_precision_score(targets[:, has], scores[:, has], average=None)
        for k, value in zip(np.flatnonzero(has), np.atleast_1d(per_label)):
            ap[int(k)] = float(value)
    predicted = (scores >= threshold).astype(np.int64)
    f1 = f1_score(targets, predicted, average=None, zero_division=0)
    return {
        "map": float(average_precision_score(targets[:, has], scores[:, has], average="macro"))
        if has.any()
        else math.nan,
        "micro_f1": float(f1_score(targets, predicted, average="micro", zero_division=0)),
        "mean_f1": float(np.mean(f1)),
        "ap": ap,
        "f1": [float(v) for v in f1],
        "positives": [int(v) for v in positives],
    }
