"""Token-budget grouping of rows into micro-batches (pure functions)."""

import random

import pytest

from lit_codegen.batching import padded_cost, token_budget_groups


def test_known_answer_padded_groups_take_similar_lengths_together():
    lengths = [10, 90, 20, 80, 15, 85]
    # longest first: 90, 85, 80 (3 x 90 = 270 <= 300); then 20, 15, 10 (3 x 20 = 60)
    assert token_budget_groups(lengths, 300, packed=False) == [[1, 5, 3], [2, 4, 0]]


def test_known_answer_packed_groups_balance_summed_lengths():
    lengths = [10, 90, 20, 80, 15, 85]  # 300 tokens, budget 150: 2 groups of 150 would fit, LPT finds 140 / 160 ...
    groups = token_budget_groups(lengths, 150, packed=True)
    loads = [sum(lengths[i] for i in g) for g in groups]
    assert max(loads) <= 150 and len(groups) == 3  # ... which overflows, so 3 groups: 90+10, 85+15, 80+20
    assert sorted(loads) == [100, 100, 100]


def test_a_row_longer_than_the_budget_gets_a_micro_batch_of_its_own():
    for packed in (False, True):
        groups = token_budget_groups([500, 10, 10], 100, packed=packed)
        assert [0] in groups and sorted(i for g in groups for i in g) == [0, 1, 2]


@pytest.mark.parametrize("packed", [False, True])
def test_random_lengths_every_row_once_within_budget_and_balanced(packed):
    rng = random.Random(0)
    for _ in range(200):
        lengths = [rng.randint(1, 300) for _ in range(rng.randint(1, 40))]
        budget = rng.randint(50, 2000)
        groups = token_budget_groups(lengths, budget, packed=packed)
        assert sorted(i for g in groups for i in g) == list(range(len(lengths)))
        assert all(g for g in groups)
        cost = (lambda g: sum(lengths[i] for i in g)) if packed else (lambda g: padded_cost([lengths[i] for i in g]))
        assert all(cost(g) <= budget or len(g) == 1 for g in groups)
        if packed and len(groups) > 1:  # LPT: no group is heavier than the lightest by more than its longest row
            loads = [cost(g) for g in groups]
            assert max(loads) - min(loads) <= max(lengths)


def test_packing_needs_no_more_micro_batches_than_padding():
    rng = random.Random(1)
    for _ in range(100):
        lengths = [rng.randint(1, 300) for _ in range(32)]
        assert len(token_budget_groups(lengths, 1024, packed=True)) <= len(token_budget_groups(lengths, 1024, False))


def test_a_budget_below_one_token_is_refused():
    with pytest.raises(ValueError, match="max_tokens"):
        token_budget_groups([1], 0, packed=True)
