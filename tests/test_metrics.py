"""ClassificationMeter against hand-computed values (what a wrong average or a transposed matrix would break)."""

import pytest
import torch

from utils.metrics import ClassificationMeter


def logits_ranking(*orders, k=6):
    """One row per order: the listed classes get the highest logits, in that order."""
    rows = torch.zeros(len(orders), k)
    for row, order in zip(rows, orders):
        for rank, cls in enumerate(order):
            row[cls] = 10.0 - rank
    return rows


def test_meter_averages_per_sample_over_unequal_batches():
    meter = ClassificationMeter(6, topk=(1, 5))
    # batch 1 (3 samples): label 0 predicted 2 (0 is 2nd), label 1 predicted 1, label 3 predicted 5 (3 is 6th)
    meter.update(logits_ranking([2, 0], [1], [5, 4, 2, 1, 0, 3]), torch.tensor([0, 1, 3]), loss=torch.tensor(1.0))
    # batch 2 (1 sample): label 4 predicted 4
    meter.update(logits_ranking([4]), torch.tensor([4]), loss=torch.tensor(5.0))
    out = meter.compute()
    assert out["loss"] == pytest.approx((1.0 * 3 + 5.0 * 1) / 4)  # 2.0 per sample, not 3.0 per batch
    assert out["top1"] == pytest.approx(100 * 2 / 4)
    assert out["top5"] == pytest.approx(100 * 3 / 4)  # label 3 was ranked 6th
    assert meter.confusion[0, 2] == 1 and meter.confusion[2, 0] == 0  # rows: label, columns: prediction
    assert meter.confusion[3, 5] == 1 and int(meter.confusion.sum()) == 4
    assert torch.equal(meter.confusion.diagonal(), torch.tensor([0, 1, 0, 0, 1, 0]))


def test_top5_is_dropped_when_there_are_five_classes_or_fewer():
    meter = ClassificationMeter(5)
    meter.update(logits_ranking([1], k=5), torch.tensor([1]))
    assert set(meter.compute()) == {"loss", "top1", "balanced_acc"}


def test_compute_before_update_raises():
    with pytest.raises(ValueError, match="before any update"):
        ClassificationMeter(3).compute()
