"""Classification losses."""

from torch import nn


def build_classification_loss(label_smoothing=0.0):
    """Cross-entropy on ``logits: float (N, K)`` and ``labels: int64 (N,)``, mean over the batch.

    ``label_smoothing`` follows Szegedy et al., "Rethinking the Inception
    Architecture" (2016), as implemented by ``torch.nn.CrossEntropyLoss``.
    """
    return nn.CrossEntropyLoss(label_smoothing=label_smoothing)
