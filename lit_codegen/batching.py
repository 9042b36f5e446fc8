"""Token-budget micro-batches: which rows of a mini-batch share a forward/backward pass.

Pure functions over row lengths (prompt + response tokens); no tensors of the model, no distributed calls. A fixed
number of rows per micro-batch pads every micro-batch to its longest row and, with ragged code rollouts, spends most
of its FLOPs on padding. Grouping by a token budget instead (verl's `use_dynamic_bsz` / `ppo_max_token_len_per_gpu`)
puts rows of similar length together (padded layout) or balances the summed lengths (packed layout), so micro-batches
have similar costs and each one fills the budget. The loss normaliser is the mini-batch's, so the grouping changes the
gradient only by float round-off.
"""

from __future__ import annotations

import heapq
import math


def padded_cost(lengths: list[int]) -> int:
    """Tokens a padded micro-batch of rows with these lengths computes: rows x the longest row."""
    return len(lengths) * max(lengths, default=0)


def token_budget_groups(lengths: list[int], max_tokens: int, packed: bool) -> list[list[int]]:
    """Split rows into micro-batches of at most `max_tokens` tokens each.

    Padded layout (`packed=False`): rows sorted longest first are taken in order while rows x longest row fits the
    budget, so each micro-batch holds rows of similar length and little padding. Packed layout: the fewest
    micro-batches whose summed lengths can fit, filled longest row first into the lightest micro-batch (LPT), with
    one more micro-batch whenever one overflows. A row longer than the budget gets a micro-batch of its own.

    Args:
        lengths: Tokens of each row (prompt + response, no padding).
        max_tokens: The budget (> 0).
        packed: Count summed lengths (rows packed into one sequence) instead of rows x longest row.

    Returns:
        Row indices of each micro-batch (every row exactly once; none empty), heaviest micro-batch first.
    """
    if max_tokens < 1:
        raise ValueError(f"max_tokens must be >= 1, got {max_tokens}")
    order = sorted(range(len(lengths)), key=lambda i: (-lengths[i], i))
    if not packed:
        groups: list[list[int]] = []
        for i in order:
            if groups and padded_cost([lengths[j] for j in groups[-1]] + [lengths[i]]) <= max_tokens:
                groups[-1].append(i)
            else:
                groups.append([i])
        return groups
    k = max(1, math.ceil(sum(lengths) / max_tokens))
    while True:
        groups = _lpt(order, lengths, k)
        over = any(len(g) > 1 and sum(lengths[i] for i in g) > max_tokens for g in groups)
        if not over or k >= len(lengths):
            return sorted((g for g in groups if g), key=lambda g: -sum(lengths[i] for i in g))
        k += 1


def _lpt(order: list[int], lengths: list[int], k: int) -> list[list[int]]:
    """Longest-processing-time-first: each row (longest first) into the currently lightest of `k` groups."""
    heap = [(0, g) for g in range(k)]  # (load, group)
    groups: list[list[int]] = [[] for _ in range(k)]
    for i in order:
        load, g = heapq.heappop(heap)
        groups[g].append(i)
        heapq.heappush(heap, (load + lengths[i], g))
    return groups

