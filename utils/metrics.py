"""Classification metrics accumulated over a whole dataset, not averaged over batches."""

import torch


class ClassificationMeter:
    """Sums loss, top-k hits and a confusion matrix across batches; reports top-k and balanced accuracy.

    Args:
        num_classes: ``K``.
        topk: the k's to report; a k larger than ``K`` is dropped
            (top-5 only when there are more than 5 classes).
    """

    def __init__(self, num_classes, topk=(1, 5)):
        self.num_classes = num_classes
        self.topk = tuple(k for k in topk if k == 1 or k < num_classes)
        self.count, self.loss_sum = 0, 0.0
        self.hits = {k: 0 for k in self.topk}
        self.confusion = torch.zeros(num_classes, num_classes, dtype=torch.int64)

    @torch.no_grad()
    def update(self, logits, labels, loss=None):
        """Add a batch.

        Args:
            logits: float ``(N, K)``.
            labels: int64 ``(N,)``.
            loss: the batch's *mean* loss (a scalar), weighted here by ``N``.
        """
        n = labels.shape[0]
        top = logits.topk(max(self.topk), dim=1).indices
        correct = top.eq(labels[:, None])
        for k in self.topk:
            self.hits[k] += int(correct[:, :k].any(dim=1).sum())
        if loss is not None:
            self.loss_sum += float(loss) * n
        self.count += n
        pairs = labels.cpu() * self.num_classes + top[:, 0].cpu()
        self.confusion += torch.bincount(pairs, minlength=self.num_classes**2).view_as(self.confusion)

    def compute(self):
        """``{"loss": mean per sample, "top1": %, "top5": %, "balanced_acc": %}`` (accuracies in percent, 0-100).

        ``balanced_acc`` is the mean of the recalls (hits / samples) of the classes present in the labels, from
        the confusion matrix: scikit-learn's ``balanced_accuracy_score`` (Brodersen et al., "The balanced accuracy
        and its posterior distribution", ICPR 2010); a class never a label is left out, so it equals top-1 when
        every present class has as many samples.

        Under DDP (a process group running) the counts are summed over all
        processes first, so every process gets the metrics of the whole split:
        a collective, called by every process. (:attr:`confusion` stays this process's.)

        Raises:
            ValueError: nothing was added, on any process.
        """
        from base.runtime.distributed import all_reduce_sum

        n_top = len(self.topk)
        diagonal, support = self.confusion.diagonal().tolist(), self.confusion.sum(1).tolist()
        count, loss_sum, *sums = all_reduce_sum(
            [self.count, self.loss_sum, *(self.hits[k] for k in self.topk), *diagonal, *support]
        )
        if count == 0:
            raise ValueError("ClassificationMeter.compute() called before any update()")
        hits, diagonal, support = sums[:n_top], sums[n_top : n_top + self.num_classes], sums[n_top + self.num_classes :]
        out = {"loss": loss_sum / count}
        out.update({f"top{k}": 100.0 * h / count for k, h in zip(self.topk, hits)})
        recalls = [d / n for d, n in zip(diagonal, support) if n > 0]
        out["balanced_acc"] = 100.0 * sum(recalls) / len(recalls)
        return out


def accuracy_by_group(preds, labels, groups):
    """Top-1 accuracy (%, 0-100) of the samples of each group.

    Args:
        preds: predicted class per sample, int ``(N,)`` (tensor or sequence).
        labels: true class per sample, int ``(N,)``.
        groups: group name per sample, ``N`` hashable values (e.g. ``"mono"``/``"poly"``).

    Returns:
        ``{group: accuracy}`` for every group present, keys sorted.

    Raises:
        ValueError: the three lengths differ.
    """
    preds, labels, groups = list(map(int, preds)), list(map(int, labels)), list(groups)
    if not len(preds) == len(labels) == len(groups):
        raise ValueError(f"accuracy_by_group: {len(preds)} predictions, {len(labels)} labels, {len(groups)} groups")
    hits, counts = {}, {}
    for pred, label, group in zip(preds, labels, groups):
        counts[group] = counts.get(group, 0) + 1
        hits[group] = hits.get(group, 0) + (pred == label)
    return {g: 100.0 * hits[g] / counts[g] for g in sorted(counts)}
