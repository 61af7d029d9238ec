"""Token-budget batching: every text once, ascending length, padded size within the budget."""

from __future__ import annotations

import random

import pytest

from monitor.embedding.batching import token_budget_batches


@pytest.mark.parametrize("budget", [1, 7, 64, 512, 10_000])
def test_every_index_once_in_ascending_length_ties_in_input_order(budget: int) -> None:
    rng = random.Random(budget)
    lengths = [rng.choice([3, 3, 12, 40, 130, 512]) for _ in range(300)]
    batches = token_budget_batches(lengths, budget)
    flat = [i for batch in batches for i in batch]
    assert sorted(flat) == list(range(len(lengths)))
    assert flat == sorted(range(len(lengths)), key=lambda i: (lengths[i], i))
    for batch in batches:
        padded = len(batch) * max(lengths[i] for i in batch)
        assert padded <= budget or len(batch) == 1


def test_short_texts_share_a_pass_and_a_text_over_the_budget_goes_alone() -> None:
    lengths = [600, 4, 4, 4, 100, 100]
    assert token_budget_batches(lengths, 256) == [[1, 2, 3], [4, 5], [0]]
    assert token_budget_batches([], 256) == []


def test_the_budget_must_be_positive() -> None:
    with pytest.raises(ValueError, match="positive"):
        token_budget_batches([3], 0)
