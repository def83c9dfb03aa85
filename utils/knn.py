"""Weighted k-nearest-neighbour accuracy of image features: how well a self-supervised encoder separates classes.

The classifier of Wu et al. (2018), "Unsupervised Feature Learning via Non-Parametric Instance
Discrimination", as DINO (Caron et al. 2021) uses it to monitor self-supervised training: cosine
similarity to a bank of labelled training features, the ``k`` most similar vote for their class with
weight ``exp(similarity / temperature)``.
"""

import torch
import torch.nn.functional as F


def knn_predict(features, bank, bank_labels, num_classes, k=20, temperature=0.07, chunk=1024):
    """Class predicted for each row of ``features``.

    Args:
        features: ``float (N, D)`` query features.
        bank: ``float (M, D)`` labelled reference features; ``bank_labels``: ``int64 (M,)`` in ``[0, num_classes)``.
        k: neighbours that vote (capped at ``M``); temperature: the softmax-like weighting's temperature.
        chunk: queries compared at once (memory ``chunk x M`` floats).

    Returns:
        ``int64 (N,)`` predicted labels.

    Raises:
        ValueError: an empty bank, or ``k < 1``.
    """
    if bank.shape[0] == 0 or k < 1:
        raise ValueError(f"k-NN needs a non-empty bank and k >= 1 (bank of {bank.shape[0]}, k={k})")
    bank = F.normalize(bank.float(), dim=1)
    k = min(k, bank.shape[0])
    out = []
    for start in range(0, features.shape[0], chunk):
        query = F.normalize(features[start : start + chunk].float(), dim=1)
        sims, idx = (query @ bank.T).topk(k, dim=1)
        votes = torch.zeros(query.shape[0], num_classes, device=query.device)
        votes.scatter_add_(1, bank_labels[idx], (sims / temperature).exp())
        out.append(votes.argmax(dim=1))
    return torch.cat(out)
