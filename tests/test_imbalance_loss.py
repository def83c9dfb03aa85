"""Class-imbalance losses and weights (loss.imbalance, loss.classification) against hand values and PyTorch."""

import argparse

import pytest
import torch
from torch.nn import functional as F

from base.config.parse import ConfigError
from loss.classification import build_classification_loss
from loss.imbalance import (
    FocalLoss,
    SigmoidFocalLoss,
    class_weights_arg,
    inverse_frequency_weights,
    positive_weights,
    resolve_class_weights,
)


def test_inverse_frequency_weights_by_hand():
    # 10 samples: 6, 3, 1 and an absent class; n / (K * n_c) over the 3 present classes
    weights = inverse_frequency_weights([6, 3, 1, 0])
    assert weights.tolist() == pytest.approx([10 / 18, 10 / 9, 10 / 3, 0.0])
    assert (weights[:3] * torch.tensor([6.0, 3, 1])).tolist() == pytest.approx([10 / 3] * 3)  # balanced
    with pytest.raises(ValueError, match="every class count is 0"):
        inverse_frequency_weights([0, 0])


def test_positive_weights_are_negatives_over_positives():
    assert positive_weights([1, 5, 0, 8], 8).tolist() == pytest.approx([7.0, 0.6, 1.0, 1.0])


def test_class_weights_flag_values():
    assert class_weights_arg("AUTO") == "auto" and class_weights_arg("none") == "none"
    assert class_weights_arg("1,0.5,2") == [1.0, 0.5, 2.0]
    for bad in ("a,b", "1,-1", "0,0", "1,nan"):
        with pytest.raises(argparse.ArgumentTypeError):
            class_weights_arg(bad)
    assert resolve_class_weights("none", 3, auto=lambda: 1 / 0) is None  # auto not computed
    assert resolve_class_weights("auto", 2, auto=lambda: [2.0, 1.0]).tolist() == [2.0, 1.0]
    with pytest.raises(ConfigError, match="--class_weights"):
        resolve_class_weights([1.0, 2.0], 3, auto=None)


def test_focal_at_gamma_zero_is_cross_entropy_with_weights_and_ignore_index():
    gen = torch.Generator().manual_seed(0)
    logits = torch.randn(4, 3, 5, 6, generator=gen)
    target = torch.randint(0, 3, (4, 5, 6), generator=gen)
    target[0, :2] = 255
    weight = torch.tensor([0.5, 2.0, 1.0])
    focal = FocalLoss(0.0, weight, ignore_index=255)(logits, target)
    assert float(focal) == pytest.approx(float(F.cross_entropy(logits, target, weight, ignore_index=255)), rel=1e-6)
    plain = build_classification_loss(kind="focal", gamma=0.0)(logits[:, :, 0, 0], target[:, 3, 3])
    assert float(plain) == pytest.approx(float(F.cross_entropy(logits[:, :, 0, 0], target[:, 3, 3])), rel=1e-6)
    soft = torch.softmax(torch.randn(4, 3, generator=gen), 1)  # Mixup targets
    expected = F.cross_entropy(logits[:, :, 0, 0], soft, weight)
    assert float(FocalLoss(0.0, weight)(logits[:, :, 0, 0], soft)) == pytest.approx(float(expected), rel=1e-6)


def test_focal_down_weights_easy_examples_by_hand():
    logits = torch.tensor([[2.0, 0.0], [0.0, 0.5]])
    target = torch.tensor([0, 0])
    p = torch.softmax(logits, 1)[:, 0]
    expected = (-((1 - p) ** 2) * p.log()).mean()
    assert float(FocalLoss(2.0)(logits, target)) == pytest.approx(float(expected), rel=1e-6)


def test_sigmoid_focal_at_gamma_zero_is_bce_with_pos_weight():
    gen = torch.Generator().manual_seed(1)
    logits, target = torch.randn(6, 4, generator=gen), (torch.rand(6, 4, generator=gen) > 0.5).float()
    pos_weight = torch.tensor([1.0, 3.0, 0.5, 2.0])
    expected = F.binary_cross_entropy_with_logits(logits, target, pos_weight=pos_weight)
    assert float(SigmoidFocalLoss(0.0, pos_weight)(logits, target)) == pytest.approx(float(expected), rel=1e-6)
    ce = build_classification_loss(kind="ce", weight=pos_weight, multilabel=True)
    assert float(ce(logits, target)) == pytest.approx(float(expected), rel=1e-6)
    assert float(SigmoidFocalLoss(2.0)(logits, target)) < float(F.binary_cross_entropy_with_logits(logits, target))


def test_label_smoothing_with_focal_or_multilabel_is_refused():
    with pytest.raises(ValueError, match="label smoothing"):
        build_classification_loss(0.1, kind="focal")
    with pytest.raises(ValueError, match="loss must be"):
        build_classification_loss(kind="bce")
