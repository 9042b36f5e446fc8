"""Padding-free layouts of a micro-batch: prompt + response rows trimmed to their longest row, or packed into one row.

Rows arrive as in `PPOModule`: prompts left-padded to P columns, responses right-padded to R, position ids counting
each row's real tokens from 0. Two layouts drop the padding before the forward pass:

- `trim`: drop the columns that are padding in every row (the left of the shortest prompt's padding, the right of
  the longest response). Exact: padding keys are masked, so no real token sees a difference.
- `pack`: concatenate the real tokens of all rows into one row of length sum(lengths), position ids restarting at 0
  at each row. The forward runs under `varlen_attention(model)`: attention takes each row's span from
  `cu_seq_lens` (verl's `use_remove_padding` with flash-attention's varlen kernel) instead of a mask, so no FLOP
  and no (L, L) mask is spent on padding or on other rows: on CUDA torch's flash varlen kernel
  (`torch.nn.attention.varlen.varlen_attn`), elsewhere causal SDPA row by row. The choice is made by the
  arguments each attention call gets, not by a switch, so gradient checkpointing's recomputation in the backward
  pass (outside the `with`) takes the same path.

The response scores (log-probs, entropies, values) of either layout come back as (B, R) in the padded layout, zero
at padding, so the PPO math downstream does not change.
"""

from __future__ import annotations

import inspect
from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from transformers import AttentionInterface
from transformers.integrations.sdpa_attention import sdpa_attention_forward
from transformers.masking_utils import AttentionMaskInterface, sdpa_mask

try:  # torch >= 2.9 on CUDA: flash-attention's varlen kernel
    from torch.nn.attention.varlen import varlen_attn
except ImportError:  # pragma: no cover - older torch: the row-by-row path
    varlen_attn = None

VARLEN = "lit_codegen_varlen"
"""The attention implementation `varlen_attention` gives a model (registered with transformers): packed rows through
`varlen_attention_forward`, every other forward exactly transformers' SDPA (its mask, its attention function)."""

_PACKED_FORWARD: ContextVar[bool] = ContextVar("packed_forward", default=False)


@dataclass
class Packed:
    """One micro-batch packed into one row.

    Attributes:
        input_ids: (1, L) the real tokens of every row, row after row.
        position_ids: (1, L) positions restarting at 0 at each row.
        index: (N,) packed position of the token before each real response token (the one that predicts it).
        response_mask: (B, R) bool, the real response tokens; `index` lists them in row-major order.
        cu_seq_lens: (B + 1,) int32 start of each row in the packed row, then L.
        max_length: the longest row's length.
    """

    input_ids: Tensor
    position_ids: Tensor
    index: Tensor
    response_mask: Tensor
    cu_seq_lens: Tensor
    max_length: int

    @property
    def attention_kwargs(self) -> dict:
        """The keyword arguments the model's forward passes down to `varlen_attention_forward`."""
        return {"cu_seq_lens_q": self.cu_seq_lens, "cu_seq_lens_k": self.cu_seq_lens,
                "max_length_q": self.max_length, "max_length_k": self.max_length}

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
    lengths = real.sum(-1)
    cu_seq_lens = F.pad(lengths.cumsum(0), (1, 0)).to(torch.int32)
    return Packed(seq[real].unsqueeze(0), pos[real].unsqueeze(0), index, response_mask, cu_seq_lens,
                  int(lengths.max()))


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


def _flash_varlen_options() -> dict | None:
    """How this torch's `varlen_attn` is asked for causal attention with grouped KV heads (None: not usable)."""
    if varlen_attn is None:
        return None
    params = inspect.signature(varlen_attn).parameters
    if "window_size" in params:
        options = {"window_size": (-1, 0)}  # torch >= 2.10: (left, right) = (all, none) is causal
    elif "is_causal" in params:
        options = {"is_causal": True}
    else:  # pragma: no cover - an API we do not know
        return None
    if "enable_gqa" in params:
        options["enable_gqa"] = True  # also right for Hq = Hkv (one group)
    return options


FLASH_VARLEN = _flash_varlen_options()
"""The keyword arguments of causal `varlen_attn` in this torch (None: the row-by-row path runs on CUDA too)."""


def varlen_attention_forward(module: nn.Module, query: Tensor, key: Tensor, value: Tensor,
                             attention_mask: Tensor | None, dropout: float = 0.0, scaling: float | None = None,
                             sliding_window: int | None = None, cu_seq_lens_q: Tensor | None = None,
                             max_length_q: int | None = None, **kwargs) -> tuple[Tensor, None]:
    """Causal attention of packed rows, each row attending only to its own earlier tokens; SDPA without them.

    transformers' attention-function interface (`AttentionInterface`) for `VARLEN`. With `cu_seq_lens_q` (the
    model's forward got a packed row and `Packed.attention_kwargs`) the rows' spans replace a mask; without it the
    call is transformers' `sdpa_attention_forward` as it is (padded rows, generation).

    Args:
        module: The attention layer.
        query: (1, Hq, L, D) queries of the packed row.
        key: (1, Hkv, L, D), Hq a multiple of Hkv.
        value: (1, Hkv, L, D).
        attention_mask: None for packed rows (their spans come from `cu_seq_lens_q`).
        dropout: 0 for packed rows.
        scaling: Softmax scale (default 1 / sqrt(D)).
        sliding_window: None for packed rows.
        cu_seq_lens_q: (N + 1,) int32 row starts in the packed row, then L; None: not packed.
        max_length_q: The longest row's length.
        **kwargs: The rest of what the layer passes (for packed rows `cu_seq_lens_k` equals `cu_seq_lens_q`).

    Returns:
        ((1, L, Hq, D) attention output, None).
    """
    if cu_seq_lens_q is None:
        return sdpa_attention_forward(module, query, key, value, attention_mask, dropout=dropout, scaling=scaling,
                                      sliding_window=sliding_window, **kwargs)
    if attention_mask is not None or query.shape[0] != 1 or max_length_q is None:
        raise ValueError(f"attention {VARLEN!r} takes one packed row and no attention mask")
    if dropout or sliding_window is not None:
        raise NotImplementedError(f"attention {VARLEN!r} has no dropout and no sliding window")
    groups = query.shape[1] // key.shape[1]
    if query.is_cuda and FLASH_VARLEN is not None and query.dtype in (torch.float16, torch.bfloat16):
        q, k, v = (t[0].transpose(0, 1).contiguous() for t in (query, key, value))  # (L, H, D)
        if groups > 1 and "enable_gqa" not in FLASH_VARLEN:
            k, v = k.repeat_interleave(groups, dim=1), v.repeat_interleave(groups, dim=1)
        out = varlen_attn(q, k, v, cu_seq_lens_q, cu_seq_lens_q, max_length_q, max_length_q, scale=scaling,
                          **FLASH_VARLEN)
        return out.unsqueeze(0), None
    lengths = cu_seq_lens_q.diff().tolist()
    rows = zip(query.split(lengths, dim=2), key.split(lengths, dim=2), value.split(lengths, dim=2))
    out = torch.cat([F.scaled_dot_product_attention(q, k, v, is_causal=True, scale=scaling, enable_gqa=groups > 1)
                     for q, k, v in rows], dim=2)  # (1, Hq, L, D)
    return out.transpose(1, 2).contiguous(), None


def varlen_mask(*args, **kwargs) -> Tensor | None:
    """Transformers' mask function for `VARLEN`: none in a packed forward (inside `varlen_attention`), else SDPA's."""
    return None if _PACKED_FORWARD.get() else sdpa_mask(*args, **kwargs)


AttentionInterface.register(VARLEN, varlen_attention_forward)
AttentionMaskInterface.register(VARLEN, varlen_mask)


@contextmanager
def varlen_attention(model: nn.Module) -> Iterator[None]:
    """Packed forwards of `model` inside: pass `Packed.attention_kwargs` and no attention mask.

    Gives the model the `VARLEN` attention implementation (and leaves it: outside packed forwards it is SDPA) and
    tells its mask function to build no mask while inside.
    """
    model.config._attn_implementation = VARLEN
    token = _PACKED_FORWARD.set(True)
    try:
        yield
    finally:
        _PACKED_FORWARD.reset(token)
