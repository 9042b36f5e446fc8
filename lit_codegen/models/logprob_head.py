"""Response log-probs and entropy straight from the last hidden states: the LM head fused with the softmax.

PPO needs two numbers per response token, log p(token) and the entropy, not the `(B, R, V)` logits. With a vocabulary
of 152k (Qwen2.5) the logits of one micro-batch of 64 x 256 response tokens are 5 GB in bf16 and their fp32
softmax temporaries several times that; reading and writing them costs more time than the LM-head matmul itself.
`linear_logprobs_entropy` projects blocks of tokens, reduces each block to (log-prob, entropy, log-sum-exp) and keeps
none of the logits: the backward pass projects each block again and turns it straight into gradients of the hidden
states and of the head's weight (one extra LM-head matmul, no `(N, V)` tensor alive between the passes). The
same idea as verl's `use_fused_kernels` and Liger's fused linear cross-entropy, written in plain torch; the
per-block math can be handed to `torch.compile`, which fuses it into one pass over each block.

`LogprobHead` carries this inside the HF model: it replaces `model.lm_head` (same weight, so tying, `generate`,
`save_pretrained` and weight syncs see an ordinary `nn.Linear`) and, only while `response_logprobs` arms it, returns
`(B, R, 2)` = (log-prob, entropy) instead of logits. Calling through the model's own forward keeps FSDP's hooks
(all-gather, reduce-scatter) in charge of the weight.
"""

from __future__ import annotations

from collections.abc import Callable
from contextlib import contextmanager
from typing import Literal

import torch
from torch import Tensor, nn

from lit_codegen import ppo
from lit_codegen.models.packing import pack, pad_responses, trim, varlen_attention

Layout = Literal["padded", "trimmed", "packed"]

# Elements (tokens x vocabulary) of one projected block: 2**28 = 1766 tokens of Qwen2.5's 152k vocabulary, 512 MB
# as bf16 logits. Big enough for an efficient matmul, small enough to leave memory for larger micro-batches.
BLOCK_ELEMENTS = 2**28


def block_stats(logits: Tensor, labels: Tensor, temperature: float) -> tuple[Tensor, Tensor, Tensor]:
    """Log-prob of each label, entropy and log-sum-exp of one block of logits (all float32).

    Args:
        logits: (n, V) raw logits (any float dtype).
        labels: (n,) token ids.
        temperature: The sampler's temperature; the distribution is softmax(logits / temperature).

    Returns:
        (logprobs (n,), entropy (n,), logsumexp (n,)), all float32 (float64 for float64 logits).
    """
    z = logits.to(_float(logits.dtype)) / temperature
    peak = z.amax(dim=-1, keepdim=True)
    weights = torch.exp(z - peak)  # both sums below in one pass over the block: softmax = weights / total
    total = weights.sum(-1)
    lse = peak.squeeze(-1) + torch.log(total)
    entropy = lse - (weights * z).sum(-1) / total  # H = lse - E_p[z]
    logprobs = z.gather(-1, labels.unsqueeze(-1)).squeeze(-1) - lse
    return logprobs, entropy, lse


def block_grad(logits: Tensor, labels: Tensor, lse: Tensor, entropy: Tensor, grad_logprobs: Tensor | None,
               grad_entropy: Tensor | None, temperature: float) -> Tensor:
    """Gradient of a loss with respect to one block of logits, given its gradients wrt log-probs and entropies.

    With z = logits / T and p = softmax(z): d logp[y] / dz = onehot(y) - p and d H / dz = -p (z - E_p[z]), where
    E_p[z] = lse - H. So dL/dlogits = (g_lp (onehot - p) - g_H p (z - E_p[z])) / T.

    Args:
        logits: (n, V) the block's raw logits (recomputed).
        labels: (n,) token ids.
        lse: (n,) log-sum-exp from `block_stats` in the forward pass.
        entropy: (n,) entropy from `block_stats` in the forward pass.
        grad_logprobs: (n,) upstream gradient of the log-probs, same dtype as `lse`; None when they are unused.
        grad_entropy: (n,) upstream gradient of the entropies; None when unused (its term is skipped: with no entropy
            bonus the entropy costs nothing in the backward pass).
        temperature: As in `block_stats`.

    Returns:
        (n, V) gradient in the dtype of `logits`.
    """
    z = logits.to(_float(logits.dtype)) / temperature
    probs = torch.exp(z - lse.unsqueeze(-1))
    grad_z = torch.zeros_like(z)
    if grad_entropy is not None:
        grad_z = grad_z - probs * grad_entropy.unsqueeze(-1) * (z - (lse - entropy).unsqueeze(-1))
    if grad_logprobs is not None:
        # the one-hot as a comparison, not a scatter: all elementwise, so compiled it is one pass writing the result
        onehot = labels.unsqueeze(-1) == torch.arange(z.shape[-1], device=z.device)
        grad_z = grad_z + (onehot.to(z.dtype) - probs) * grad_logprobs.unsqueeze(-1)
    return (grad_z / temperature).to(logits.dtype)


def _float(dtype: torch.dtype) -> torch.dtype:
    """float32, or float64 for float64 inputs (exact gradient checks)."""
    return torch.promote_types(dtype, torch.float32)


_KERNELS: dict[bool, tuple[Callable, Callable]] = {False: (block_stats, block_grad)}


def _kernels(compiled: bool) -> tuple[Callable, Callable]:
    """`block_stats` and `block_grad`, eager or compiled once per process (dynamic block length)."""
    if compiled not in _KERNELS:
        _KERNELS[compiled] = (torch.compile(block_stats, dynamic=True), torch.compile(block_grad, dynamic=True))
    return _KERNELS[compiled]


class _LinearLogprobEntropy(torch.autograd.Function):
    """(hidden (N, H), weight (V, H), labels (N,)) -> (logprobs (N,), entropy (N,)), block by block."""

    @staticmethod
    def forward(ctx, hidden: Tensor, weight: Tensor, labels: Tensor, temperature: float, block_tokens: int,
                compiled: bool) -> tuple[Tensor, Tensor]:
        dtype = _compute_dtype(hidden, weight)
        w = weight.to(dtype)
        stats, _ = _kernels(compiled)
        out_dtype = _float(dtype)
        logprobs, entropy, lse = (hidden.new_empty(hidden.shape[0], dtype=out_dtype) for _ in range(3))
        for start in range(0, hidden.shape[0], block_tokens):
            rows = slice(start, start + block_tokens)
            logits = hidden[rows].to(dtype) @ w.T
            logprobs[rows], entropy[rows], lse[rows] = stats(logits, labels[rows], temperature)
        ctx.save_for_backward(hidden, weight, labels, lse, entropy)
        ctx.temperature, ctx.block_tokens, ctx.dtype, ctx.compiled = temperature, block_tokens, dtype, compiled
        ctx.set_materialize_grads(False)  # an unused output's gradient arrives as None, not as zeros to multiply
        return logprobs, entropy

    @staticmethod
    def backward(ctx, grad_logprobs: Tensor | None, grad_entropy: Tensor | None):
        hidden, weight, labels, lse, entropy = ctx.saved_tensors
        if grad_logprobs is None and grad_entropy is None:
            return None, None, None, None, None, None
        grad_logprobs = None if grad_logprobs is None else grad_logprobs.to(lse.dtype)
        grad_entropy = None if grad_entropy is None else grad_entropy.to(lse.dtype)
        w = weight.to(ctx.dtype)
        _, grad_fn = _kernels(ctx.compiled)
        grad_hidden = torch.empty_like(hidden) if ctx.needs_input_grad[0] else None
        grad_weight = torch.zeros(weight.shape, dtype=lse.dtype, device=weight.device) \
            if ctx.needs_input_grad[1] else None
        for start in range(0, hidden.shape[0], ctx.block_tokens):
            rows = slice(start, start + ctx.block_tokens)
            h = hidden[rows].to(ctx.dtype)
            grad_logits = grad_fn(h @ w.T, labels[rows], lse[rows], entropy[rows], _rows(grad_logprobs, rows),
                                  _rows(grad_entropy, rows), ctx.temperature)
            if grad_hidden is not None:
                grad_hidden[rows] = (grad_logits @ w).to(hidden.dtype)
            if grad_weight is not None:
                grad_weight = _add_matmul(grad_weight, grad_logits.T, h)
        grad_weight = grad_weight.to(weight.dtype) if grad_weight is not None else None
        return grad_hidden, grad_weight, None, None, None, None


_FP32_OUT_ADDMM: dict[torch.device, bool] = {}  # False once a device's addmm refused out_dtype=float32


def _add_matmul(acc: Tensor, a: Tensor, b: Tensor) -> Tensor:
    """Add `a @ b` into `acc` in place and return it: `acc` (M, N), `a` (M, K) and `b` (K, N) in its dtype or narrower.

    One GEMM that adds into `acc` (no (M, N) product alive beside it): `addmm_` for one dtype, and on CUDA for a
    float32 `acc` with bf16/fp16 inputs `addmm(..., out_dtype=float32)`, so no block's product is rounded to bfloat16
    first. Elsewhere (CPU, or a torch without that overload) the product is taken in `a`'s dtype and added.
    """
    if a.dtype == acc.dtype:
        return acc.addmm_(a, b)
    if acc.dtype == torch.float32 and _FP32_OUT_ADDMM.get(acc.device, acc.is_cuda):
        try:
            return torch.addmm(acc, a, b, out_dtype=torch.float32, out=acc)
        except torch.OutOfMemoryError:
            raise
        except (RuntimeError, TypeError):  # no such overload here: remember, then take the general path
            _FP32_OUT_ADDMM[acc.device] = False
    return acc.add_(a @ b)


def _rows(tensor: Tensor | None, rows: slice) -> Tensor | None:
    return None if tensor is None else tensor[rows]


def _compute_dtype(hidden: Tensor, weight: Tensor) -> torch.dtype:
    """The matmul dtype: autocast's when it is on (bf16-mixed), else the wider of the two inputs."""
    if torch.is_autocast_enabled(hidden.device.type):
        return torch.get_autocast_dtype(hidden.device.type)
    return torch.promote_types(hidden.dtype, weight.dtype)


def linear_logprobs_entropy(hidden: Tensor, weight: Tensor, labels: Tensor, temperature: float = 1.0,
                            block_tokens: int | None = None, compiled: bool = False) -> tuple[Tensor, Tensor]:
    """Log-probs of `labels` and entropies under softmax(hidden @ weight.T / temperature), without the logits.

    Equal to `ppo.logprobs_from_logits` and `ppo.entropy_from_logits` of `hidden @ weight.T`; both outputs are
    differentiable with respect to `hidden` and `weight`.

    Args:
        hidden: (N, H) last hidden states (after the final norm) at the positions that predict `labels`.
        weight: (V, H) LM-head weight.
        labels: (N,) token ids.
        temperature: Sampling temperature (> 0).
        block_tokens: Tokens projected at once; default keeps a block at `BLOCK_ELEMENTS` logits.
        compiled: Run the per-block math through `torch.compile` (one fused pass per block on GPU).

    Returns:
        (logprobs (N,), entropy (N,)), float32 (float64 for float64 inputs).
    """
    if not temperature > 0:
        raise ValueError(f"temperature must be > 0, got {temperature}.")
    if hidden.dim() != 2 or labels.shape != hidden.shape[:1]:
        raise ValueError(f"hidden (N, H) and labels (N,) expected, got {tuple(hidden.shape)} and "
                         f"{tuple(labels.shape)}")
    block = block_tokens or max(1, BLOCK_ELEMENTS // weight.shape[0])
    return _LinearLogprobEntropy.apply(hidden, weight, labels, temperature, block, compiled)


class LogprobHead(nn.Linear):
    """`nn.Linear` LM head that, while armed, returns (log-prob, entropy) of given labels instead of logits.

    Unarmed it is exactly the `nn.Linear` it replaced (generation, `save_pretrained`, weight syncs). Armed by
    `response_logprobs`, its input is the hidden states of the R + 1 positions from the last prompt token on
    (`logits_to_keep = R + 1`); it drops the last one and returns (B, R, 2). A head with a bias (rare in causal LMs)
    computes its logits and then the blockwise `ppo` functions instead of the fused path.
    """

    compiled = False

    def __init__(self, in_features: int, out_features: int, bias: bool = False, **kwargs) -> None:
        super().__init__(in_features, out_features, bias=bias, **kwargs)
        self._target: tuple[Tensor, float, bool] | None = None

    def forward(self, hidden: Tensor) -> Tensor:
        """Logits (B, T, V) unarmed; (B, R, 2) log-probs and entropies of the armed labels (B, R) when armed."""
        if self._target is None:
            return super().forward(hidden)
        labels, temperature, shifted = self._target
        if shifted:  # the R + 1 kept positions end with the last token, which predicts nothing
            hidden = hidden[:, :-1]
        if self.bias is not None:  # no fused path for a biased head: its logits, then the blockwise functions
            logits = super().forward(hidden)
            return torch.stack([ppo.logprobs_from_logits(logits, labels, temperature),
                                ppo.entropy_from_logits(logits, temperature)], dim=-1)
        batch, length = labels.shape
        logprobs, entropy = linear_logprobs_entropy(hidden.reshape(batch * length, -1), self.weight,
                                                    labels.reshape(-1), temperature, compiled=self.compiled)
        # stacked from (B, R) views, so the output is not a view itself (FSDP hooks the model's outputs)
        return torch.stack([logprobs.view(batch, length), entropy.view(batch, length)], dim=-1)

    @contextmanager
    def armed(self, labels: Tensor, temperature: float, shifted: bool = True):
        """Within the block, forward passes score `labels` (B, R) at `temperature`.

        `shifted`: the head gets R + 1 positions and drops the last; False: exactly the R predicting positions.
        """
        self._target = (labels, temperature, shifted)
        try:
            yield
        finally:
            self._target = None


def install_logprob_head(model: nn.Module, compiled: bool = False) -> LogprobHead:
    """Replace `model`'s output embedding (its LM head) by a `LogprobHead` sharing the same weight (in place).

    Call before sharding the model. Idempotent.

    Args:
        model: An HF causal LM.
        compiled: Run the head's per-block math through `torch.compile`.

    Returns:
        The installed head.
    """
    old = model.get_output_embeddings()
    if isinstance(old, LogprobHead):
        old.compiled = compiled
        return old
    if not isinstance(old, nn.Linear):
        raise ValueError(f"{type(model).__name__}'s LM head is a {type(old).__name__}, not an nn.Linear")
    head = LogprobHead(old.in_features, old.out_features, bias=old.bias is not None, device="meta")
    head.weight = old.weight  # the same Parameter: tied embeddings stay tied
    if old.bias is not None:
        head.bias = old.bias
    head.compiled = compiled
    model.set_output_embeddings(head)
    return head


def response_logprobs(model: nn.Module, seq: Tensor, attn: Tensor, pos: Tensor, prompt_len: int,
                      temperature: float = 1.0, layout: Layout = "padded") -> tuple[Tensor, Tensor]:
    """Log-probs and entropies (B, R) of the response tokens `seq[:, prompt_len:]` under `model`.

    Runs the model's own forward (so FSDP hooks, checkpointing and compiled layers apply) with its `LogprobHead`
    armed; the prompt positions are never projected.

    Args:
        model: An HF causal LM with `install_logprob_head` applied.
        seq: (B, P + R) prompt + response ids.
        attn: (B, P + R) attention mask.
        pos: (B, P + R) position ids.
        prompt_len: P.
        temperature: The sampler's temperature.
        layout: `padded` as given; `trimmed` without the columns that are padding in every row; `packed` as one
            row without padding (`lit_codegen.models.packing`). The last two are zero at padding.

    Returns:
        (logprobs (B, R), entropy (B, R)), float32, differentiable when grad is enabled.
    """
    head = model.get_output_embeddings()
    if not isinstance(head, LogprobHead):
        raise TypeError("response_logprobs needs install_logprob_head(model) first")
    if layout == "packed":
        packed = pack(seq, attn, pos, prompt_len)
        labels = seq[:, prompt_len:][packed.response_mask].unsqueeze(0)
        with head.armed(labels, temperature, shifted=False), varlen_attention(model):
            out = model(input_ids=packed.input_ids, position_ids=packed.position_ids, use_cache=False,
                        logits_to_keep=packed.index, **packed.attention_kwargs).logits[0]  # (N, 2)
        return packed.unpack(out[:, 0]), packed.unpack(out[:, 1])
    if layout == "trimmed":
        logprobs, entropy = response_logprobs(model, *trim(seq, attn, pos, prompt_len), temperature)
        return pad_responses(logprobs, seq.shape[1] - prompt_len), pad_responses(entropy, seq.shape[1] - prompt_len)
    labels = seq[:, prompt_len:]
    with head.armed(labels, temperature):
        out = model(input_ids=seq, attention_mask=attn, position_ids=pos, use_cache=False,
                    logits_to_keep=labels.shape[1] + 1).logits
    return out[..., 0], out[..., 1]
