"""Dice/IoU against hand-computed values, and the segmentation losses."""

import pytest
import torch

from loss.segmentation import SegmentationLoss, soft_dice_loss
from utils.seg_metrics import SegmentationMeter


def masks(*rows):
    """Bool (N, 1, 4) masks from strings such as '1100'."""
    return torch.tensor([[[c == "1" for c in row]] for row in rows])


def test_dice_and_iou_match_hand_computed_values():
    # image 1: I=2, P=3, T=2 -> Dice 4/5, IoU 2/3.  image 2: I=0, P=1, T=1 -> 0 and 0.
    meter = SegmentationMeter()
    meter.update(masks("1110", "0001"), masks("1100", "1000"))
    out = meter.compute()
    assert out["dice"] == pytest.approx(2 * 2 / (4 + 3))  # sums over the split: I=2, P=4, T=3
    assert out["iou"] == pytest.approx(2 / 5)  # U = 4 + 3 - 2
    assert out["dice_per_image"] == pytest.approx((4 / 5 + 0) / 2)
    assert out["iou_per_image"] == pytest.approx((2 / 3 + 0) / 2)


def test_batches_accumulate_like_one_batch():
    preds, targets = masks("1110", "0001", "0110"), masks("1100", "1000", "0111")
    whole, parts = SegmentationMeter(), SegmentationMeter()
    whole.update(preds, targets)
    parts.update(preds[:1], targets[:1])
    parts.update(preds[1:], targets[1:])
    assert whole.compute() == pytest.approx(parts.compute())


def test_empty_prediction_on_empty_mask_counts_as_one():
    meter = SegmentationMeter()
    meter.update(masks("0000"), masks("0000"))
    assert meter.compute()["dice"] == meter.compute()["iou"] == 1.0
    meter.update(masks("1100"), masks("0011"))  # I=0, P=2, T=2
    out = meter.compute()
    assert out["dice_per_image"] == pytest.approx(0.5) and out["iou_per_image"] == pytest.approx(0.5)
    assert out["dice"] == 0.0 and out["iou"] == 0.0
    meter.update(masks("0000"), masks("0110"))  # missing the whole object scores 0, not 1
    assert meter.compute()["dice_per_image"] == pytest.approx(1 / 3)


def test_loss_is_a_per_sample_mean_and_errors_are_clear():
    meter = SegmentationMeter()
    with pytest.raises(ValueError, match="before any update"):
        meter.compute()
    with pytest.raises(ValueError, match="differ in shape"):
        meter.update(masks("1100"), masks("1100", "0000"))
    meter.update(masks("1", "1", "1"), masks("1", "1", "1"))
    meter.add_loss(1.0, 1)
    meter.add_loss(4.0, 2)
    assert meter.compute()["loss"] == pytest.approx(3.0)


def test_soft_dice_matches_hand_computed_value():
    logits = torch.tensor([0.0, 0.0, 100.0, -100.0]).view(1, 1, 1, 4)  # p = .5, .5, 1, 0
    target = torch.tensor([1.0, 0.0, 1.0, 0.0]).view(1, 1, 1, 4)
    # sum(p t) = 1.5, sum(p) = 2, sum(t) = 2; smooth 1 -> 1 - 4 / 5
    assert float(soft_dice_loss(logits, target, smooth=1.0)) == pytest.approx(0.2, abs=1e-6)
    empty = torch.zeros(1, 1, 1, 4)
    assert float(soft_dice_loss(torch.full_like(empty, -100.0), empty)) == pytest.approx(0.0, abs=1e-6)


def test_soft_dice_is_a_mean_over_images_not_one_ratio_over_the_batch():
    # image 1: all four pixels found (loss 0); image 2: its one foreground pixel missed, nothing predicted:
    # 1 - (0 + 1) / (0 + 1 + 1) = 0.5. Mean over images 0.25 (one ratio over the batch would be 1 - 9/10 = 0.1).
    logits = torch.tensor([[100.0] * 4, [-100.0] * 4]).view(2, 1, 1, 4)
    target = torch.tensor([[1.0] * 4, [1.0, 0.0, 0.0, 0.0]]).view(2, 1, 1, 4)
    assert float(soft_dice_loss(logits, target, smooth=1.0)) == pytest.approx(0.25, abs=1e-6)


def test_loss_kinds_weights_and_deep_supervision_average():
    torch.manual_seed(0)
    logits, target = torch.randn(2, 1, 8, 8), (torch.rand(2, 1, 8, 8) > 0.5).float()
    bce = float(SegmentationLoss("bce")(logits, target))
    dice = float(SegmentationLoss("dice")(logits, target))
    assert bce == pytest.approx(float(torch.nn.functional.binary_cross_entropy_with_logits(logits, target)))
    assert dice == pytest.approx(float(soft_dice_loss(logits, target)))
    mixed = SegmentationLoss("bce_dice", bce_weight=0.3, dice_weight=2.0)
    assert float(mixed(logits, target)) == pytest.approx(0.3 * bce + 2.0 * dice, rel=1e-6)
    other = torch.randn(2, 1, 8, 8)
    both = float(mixed([logits, other], target))
    assert both == pytest.approx((float(mixed(logits, target)) + float(mixed(other, target))) / 2, rel=1e-6)
    with pytest.raises(ValueError, match="loss must be one of"):
        SegmentationLoss("focal")


def test_loss_gradients_are_finite_even_for_extreme_logits():
    logits = torch.tensor([[-1e4, 1e4, 0.0, 30.0]]).view(1, 1, 1, 4).requires_grad_()
    target = torch.tensor([[1.0, 0.0, 1.0, 1.0]]).view(1, 1, 1, 4)
    loss = SegmentationLoss("bce_dice")(logits, target)
    loss.backward()
    assert torch.isfinite(loss) and torch.isfinite(logits.grad).all() and logits.grad.abs().sum() > 0
