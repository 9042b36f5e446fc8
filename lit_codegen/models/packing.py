"""Padding-free layouts of a micro-batch: prompt + response rows trimmed to their longest row, or packed into one row.

Rows arrive as in `PPOModule`: prompts left-padded to P columns, responses right-padded to R, position ids counting
each row's real tokens from 0. Two layouts drop the padding before the forward pass:

- `trim`: drop the columns that are padding in every row (the left of the shortest prompt's padding, the right of
  the longest response). Exact: padding keys are masked, so no real token sees a difference.
- `pack`: concatenate the real tokens of all rows into one row of length sum(lengths), position ids restarting at 0
  at each row. With no attention mask, transformers (5.x, `masking_utils.find_packed_sequence_indices`) reads the
  restarts as packed sequences and builds attention that does not cross rows: a block-diagonal causal mask for SDPA
  and eager attention, `cu_seq_lens` for flash-attention's varlen kernel. No FLOP is spent on padding.

The response scores (log-probs, entropies, values) of either layout come back as (B, R) in the padded layout, zero
at padding, so the PPO math downstream does not change.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor


@dataclass
class Packed:
    """One micro-batch packed into one row.

    Attributes:
        input_ids: (1, L) the real tokens of every row, row after row.
        position_ids: (1, L) positions restarting at 0 at each row.
        index: (N,) packed position of the token before each real response token (the one that predicts it).
        response_mask: (B, R) bool, the real response tokens; `index` lists them in row-major order.
    """

    input_ids: Tensor
    position_ids: Tensor
    index: Tensor
    response_mask: Tensor

    def unpack(self, scores: Tensor) -> Tensor:
        """(N,) scores of the real response tokens -> (B, R) in the padded layout, zero at padding."""
        out = scores.new_zeros(self.response_mask.shape)
        out[self.response_mask] = scores  # an index_put: differentiable with respect to `scores`
        return out


def pack(seq: Tensor, attn: Tensor, pos: Tensor, prompt_len: int) -> Packed:
    """Pack the real tokens of prompt + response rows into one row.

    Args:
        seq: (B, P + R) prompt + response ids (prompts left-padded, responses right-padded).
        attn: (B, P + R) 1 for real tokens.
        pos: (B, P + R) position ids, 0 at each row's first real token.
        prompt_len: P. Every prompt has at least one real token (its last column).

    Returns:
        The packed micro-batch.
    """
    real = attn.bool()
    flat = real.flatten().cumsum(0).view_as(attn) - 1  # packed position of each real token
    response_mask = real[:, prompt_len:]
    index = flat[:, prompt_len - 1 : -1][response_mask]
    return Packed(seq[real].unsqueeze(0), pos[real].unsqueeze(0), index, response_mask)


def trim(seq: Tensor, attn: Tensor, pos: Tensor, prompt_len: int) -> tuple[Tensor, Tensor, Tensor, int]:
    """Drop the columns that are padding in every row; at least one response column stays.

    Args:
        seq: (B, P + R) prompt + response ids (prompts left-padded, responses right-padded).
        attn: (B, P + R) 1 for real tokens.
        pos: (B, P + R) position ids.
        prompt_len: P.

    Returns:
        (seq, attn, pos) (B, P' + R') and P'; the response columns are the first R' of the original R.
    """
    used = attn.bool().any(0)
    start = int(used[:prompt_len].int().argmax())  # the first prompt column any row uses
    response_len = max(1, int(attn[:, prompt_len:].sum(-1).max()))  # right-padded: the longest response
    cols = slice(start, prompt_len + response_len)
    return seq[:, cols], attn[:, cols], pos[:, cols], prompt_len - start


def pad_responses(scores: Tensor, response_len: int) -> Tensor:
    """(B, R') scores of trimmed responses -> (B, R) with zeros on the right."""
    return torch.nn.functional.pad(scores, (0, response_len - scores.shape[1]))
