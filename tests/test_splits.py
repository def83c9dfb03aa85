"""data.splits: the split helpers a task uses instead of writing its own."""

import collections

import pytest

from data.splits import random_split_indices, stratified_split_indices


def test_random_split_covers_every_index_once_with_the_asked_sizes():
    rest, val, test = random_split_indices(103, (0.1, 0.2), seed=3)
    assert (len(val), len(test), len(rest)) == (10, 21, 72)
    assert sorted(rest + val + test) == list(range(103))
    assert val == sorted(val)
    assert random_split_indices(103, (0.1, 0.2), seed=3) == [rest, val, test]
    assert random_split_indices(103, (0.1, 0.2), seed=4) != [rest, val, test]


def test_stratified_split_keeps_each_class_share():
    labels = [0] * 60 + [1] * 30 + [2] * 10
    rest, held = stratified_split_indices(labels, 0.2, seed=0)
    assert sorted(rest + held) == list(range(100)) and len(held) == 20
    assert collections.Counter(labels[i] for i in held) == {0: 12, 1: 6, 2: 2}
    assert stratified_split_indices(labels, 0.2, seed=0) == (rest, held)
    assert stratified_split_indices(labels, 0.2, seed=1) != (rest, held)


def test_stratified_split_gives_the_shortfall_to_the_largest_remainders():
    labels = ["a"] * 5 + ["b"] * 7 + ["c"] * 9  # 0.25 * (5, 7, 9) = 1.25, 1.75, 2.25 -> 1, 2, 2 = round(5.25)
    _, held = stratified_split_indices(labels, 0.25, seed=0)
    assert collections.Counter(labels[i] for i in held) == {"a": 1, "b": 2, "c": 2}


@pytest.mark.parametrize("bad", [(-0.1,), (0.6, 0.5)])
def test_random_split_refuses_impossible_shares(bad):
    with pytest.raises(ValueError, match="fractions"):
        random_split_indices(10, bad, seed=0)
