"""Deterministic dataset splits for tasks: random, and stratified by label (or any key).

Both depend only on their inputs and ``seed`` (a ``torch.Generator`` seeded
with it; the global RNG is untouched), so a run, its resume and its evaluator
see the same split. Indices come back sorted: files are then read in folder
order, which is kinder to disks.
"""

import torch


def random_split_indices(n, fractions, seed):
    """Split ``range(n)`` at random into parts of the given shares, plus the rest.

    Args:
        n: number of samples.
        fractions: shares in [0, 1] of the parts to hold out, e.g. ``(0.1, 0.2)``
            for validation and test; each part has ``round(f * n)`` samples.
        seed: int.

    Returns:
        ``[rest, part_1, part_2, ...]``: sorted lists of indices that together
        cover ``range(n)`` once.

    Raises:
        ValueError: a share is outside [0, 1] or the shares sum to more than 1.
    """
    if any(not 0 <= f <= 1 for f in fractions) or sum(fractions) > 1:
        raise ValueError(f"split fractions {tuple(fractions)} must be in [0, 1] and sum to at most 1")
    order = torch.randperm(n, generator=torch.Generator().manual_seed(seed)).tolist()
    parts, start = [], 0
    for f in fractions:
        size = min(round(f * n), n - start)
        parts.append(sorted(order[start : start + size]))
        start += size
    return [sorted(order[start:]), *parts]


def stratified_split_indices(keys, fraction, seed):
    """Hold out ``fraction`` of every stratum (samples sharing a key), so both sides keep the mix.

    Each stratum's quota is ``fraction * size`` rounded down; the shortfall
    to ``round(fraction * len(keys))`` goes to the strata with the largest
    remainders, so the held-out part has exactly that many samples. Strata are
    taken in sorted key order and each is permuted by one generator seeded
    with ``seed``.

    Args:
        keys: one hashable, sortable key per sample: a label, or a tuple such
            as ``(label, group)`` to stratify by both.
        fraction: share in [0, 1] to hold out.
        seed: int.

    Returns:
        ``(rest, held_out)``: sorted lists of indices.

    Raises:
        ValueError: ``fraction`` is outside [0, 1].
    """
    if not 0 <= fraction <= 1:
        raise ValueError(f"stratified split fraction {fraction} must be in [0, 1]")
    keys = list(keys)
    strata = {}
    for i, key in enumerate(keys):
        strata.setdefault(key, []).append(i)
    strata = dict(sorted(strata.items()))
    quota = {k: int(fraction * len(v)) for k, v in strata.items()}
    short = round(fraction * len(keys)) - sum(quota.values())
    for k in sorted(strata, key=lambda k: -(fraction * len(strata[k]) % 1))[:short]:
        quota[k] += 1
    gen, rest, held = torch.Generator().manual_seed(seed), [], []
    for k, members in strata.items():
        order = [members[j] for j in torch.randperm(len(members), generator=gen).tolist()]
        held += order[: quota[k]]
        rest += order[quota[k] :]
    return sorted(rest), sorted(held)


def kfold_indices(labels, folds, fold, seed):
    """Fold ``fold`` of a stratified ``folds``-fold split of ``range(len(labels))``.

    scikit-learn's ``StratifiedKFold(folds, shuffle=True, random_state=seed)``: every class is spread
    over the folds in proportion (each fold's share of a class differs by at most one sample), the
    ``folds`` validation parts partition the samples, and the split depends only on ``labels`` and
    ``seed``.

    Args:
        labels: one int class label per sample.
        folds: K >= 2. fold: the part held out, in ``0..K-1``.
        seed: int.

    Returns:
        ``(rest, held_out)``: sorted lists of indices.

    Raises:
        ValueError: fewer samples than folds, or no class with at least ``folds`` samples
            (scikit-learn's message).
    """
    import warnings

    import numpy as np
    from sklearn.model_selection import StratifiedKFold

    labels = np.asarray(labels)
    splitter = StratifiedKFold(n_splits=folds, shuffle=True, random_state=seed)
    with warnings.catch_warnings():  # a class rarer than K is spread as far as it goes: not worth a warning
        warnings.filterwarnings("ignore", "The least populated class", UserWarning)
        rest, held = list(splitter.split(np.zeros(len(labels)), labels))[fold]
    return sorted(rest.tolist()), sorted(held.tolist())


def multilabel_strata(targets):
    """One stratum per sample of multi-label data, for :func:`kfold_indices`: its rarest positive label.

    A cheap stand-in for iterative stratification (Sechidis et al. 2011, which also starts from the rarest
    label): every label's positives are spread over the folds at least through the samples for which it is the
    rarest, and a rare label is never left to chance. Labels are ranked by their positives in ``targets`` (ties:
    the lower index first); a sample without any positive is stratum ``-1``.

    Args:
        targets: float or int ``(n, K)`` 0/1.

    Returns:
        list of ``n`` ints in ``-1..K-1``.
    """
    targets = torch.as_tensor(targets) > 0
    counts = targets.sum(0)
    rank = torch.empty_like(counts)
    rank[torch.argsort(counts, stable=True)] = torch.arange(len(counts))  # 0: the rarest label
    ranked = torch.where(targets, rank, len(counts))  # a negative label ranks after every positive one
    rarest = torch.argsort(rank)[ranked.min(1).values.clamp(max=len(counts) - 1)]
    return torch.where(targets.any(1), rarest, -1).tolist()


def kfold_groups(groups, folds, fold):
    """Fold ``fold`` of ``groups`` (already in a seeded random order) dealt out in turn to ``folds`` folds.

    Every group lands in exactly one fold and fold sizes differ by at most one group.

    Returns:
        ``(rest, held_out)``: lists of groups, in the given order.
    """
    return [g for i, g in enumerate(groups) if i % folds != fold], list(groups[fold::folds])
