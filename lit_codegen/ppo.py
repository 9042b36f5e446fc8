"""PPO math as pure tensor-in/tensor-out functions: masks, log-probs, advantages, losses, KL terms, KL controllers.

Nothing here knows about models, configs or distributed training; the LightningModule calls these functions.

Mask convention (the only one in lit_codegen): ``response_mask`` has shape ``(B, T)`` over the response tokens,
``1`` = a response token that is trained on, ``0`` = padding. It is a prefix mask per row (ones, then zeros): the
last ``1`` of a row is the last response token (EOS included when the model emitted one). There are no offset
variants; callers slice their tensors so that position ``t`` of every ``(B, T)`` tensor is response token ``t``.
Values at padding positions never leak into a result: the masked reductions select rather than multiply, so
padding may even hold ``inf``/``nan``.

Shapes: ``B`` sequences, ``T`` response tokens, ``V`` vocabulary size, ``N = B * n`` samples when a prompt is
sampled ``n`` times (its samples are consecutive rows).

Sources, cited again next to each formula:
    - GAE: Schulman et al. 2016, "High-Dimensional Continuous Control Using Generalized Advantage Estimation".
    - PPO clipped objective: Schulman et al. 2017, "Proximal Policy Optimization Algorithms".
    - Dual-clip PPO: Ye et al. 2020, "Mastering Complex Control in MOBA Games with Deep Reinforcement Learning".
    - CISPO: MiniMax 2025, "MiniMax-M1: Scaling Test-Time Compute Efficiently with Lightning Attention"
      (arXiv 2506.13585), section 3.1.
    - Value clipping: the PPO2 implementation in OpenAI baselines (Dhariwal et al. 2017), discussed in
      Engstrom et al. 2020, "Implementation Matters in Deep RL".
    - KL estimators k1/k2/k3: Schulman 2020, "Approximating KL Divergence", http://joschu.net/blog/kl-approx.html.
    - Adaptive KL controller: Ziegler et al. 2019, "Fine-Tuning Language Models from Human Preferences".
    - Truncated importance sampling for the rollout/training mismatch: Yao et al. 2025, "Your Efficient RL Framework
      Secretly Brings You Off-Policy RL Training", https://fengyao.notion.site/off-policy-rl.
    - Overlong reward shaping and dynamic sampling: Yu et al. 2025, "DAPO: An Open-Source LLM Reinforcement
      Learning System at Scale" (arXiv 2503.14476).
    - GRPO: Shao et al. 2024, "DeepSeekMath: Pushing the Limits of Mathematical Reasoning in Open Language Models".
    - RLOO: Ahmadian et al. 2024, "Back to Basics: Revisiting REINFORCE Style Optimization for Learning from
      Human Feedback in LLMs".
    - REINFORCE++: Hu 2025, "REINFORCE++: A Simple and Efficient Approach for Aligning Large Language Models"
      (arXiv 2501.03262).
"""

from __future__ import annotations

from functools import partial
from typing import Callable, Literal

import torch
from torch import Tensor

LossAgg = Literal["token-mean", "seq-mean", "seq-mean-token-sum", "seq-mean-token-sum-norm"]
KLKind = Literal["k1", "k2", "k3", "abs"]

# exp() of a log-ratio beyond this overflows float16 and makes float32 gradients useless; see `kl_penalty`.
_MAX_LOG_RATIO = 20.0


# --------------------------------------------------------------------------------------------------------------------
# Masked reductions
# --------------------------------------------------------------------------------------------------------------------


def masked_sum(x: Tensor, mask: Tensor, dim: int | None = None) -> Tensor:
    """Sum of ``x`` over the positions where ``mask`` is 1.

    Args:
        x: Values, e.g. ``(B, T)``.
        mask: Same shape as ``x``; 1 = include, 0 = ignore (bool, int or float).
        dim: Dimension to reduce; ``None`` reduces everything to a scalar.

    Returns:
        The masked sum: a scalar for ``dim=None``, otherwise ``x`` with ``dim`` removed. Empty selections sum to 0.
    """
    selected = torch.where(mask.bool(), x, torch.zeros((), dtype=x.dtype, device=x.device))
    return selected.sum() if dim is None else selected.sum(dim)


def masked_mean(x: Tensor, mask: Tensor, dim: int | None = None) -> Tensor:
    """Mean of ``x`` over the positions where ``mask`` is 1.

    Args:
        x: Values, e.g. ``(B, T)``.
        mask: Same shape as ``x``; 1 = include, 0 = ignore.
        dim: Dimension to reduce; ``None`` averages over all selected entries.

    Returns:
        The masked mean. An all-masked tensor (or an all-masked row when ``dim`` is given) gives 0, not NaN.
    """
    count = mask.bool().sum() if dim is None else mask.bool().sum(dim)
    return masked_sum(x, mask, dim) / count.clamp(min=1).to(x.dtype)


def masked_var(x: Tensor, mask: Tensor, unbiased: bool = True) -> Tensor:
    """Variance of all selected entries of ``x`` (one scalar over the whole tensor).

    Args:
        x: Values, e.g. ``(B, T)``.
        mask: Same shape as ``x``; 1 = include, 0 = ignore.
        unbiased: Divide by ``n - 1`` (Bessel's correction) instead of ``n``.

    Returns:
        A scalar. With no selected entry, or a single one and ``unbiased=True``, the variance is 0 (not NaN).
    """
    mean = masked_mean(x, mask)
    sum_sq = masked_sum((x - mean) ** 2, mask)
    n = mask.bool().sum().to(x.dtype)
    denominator = n - 1 if unbiased else n
    return sum_sq / denominator.clamp(min=1)


def masked_whiten(
    x: Tensor, mask: Tensor, shift_mean: bool = True, eps: float = 1e-8, moments: tuple[Tensor, Tensor] | None = None
) -> Tensor:
    """Normalise the selected entries of ``x`` to zero mean and unit (unbiased) variance.

    Used for advantages; statistics are taken over all valid tokens of the batch, or given as ``moments`` (e.g. those
    of the whole batch across data-parallel ranks, see `moments_from_sums`).

    Args:
        x: Values, e.g. advantages ``(B, T)``.
        mask: Same shape as ``x``; 1 = include, 0 = ignore.
        shift_mean: If False, the mean is added back (only the scale changes).
        eps: Added to the variance before the square root.
        moments: ``(mean, var)`` scalars to use instead of those of the selected entries of ``x``.

    Returns:
        Same shape as ``x``; padding positions are 0. With fewer than two selected entries the variance is 0, so
        the result is ``(x - mean) / sqrt(eps)``, i.e. 0 for a single entry (plus the mean if ``shift_mean=False``).
    """
    if moments is None:
        mean, var = masked_mean(x, mask), masked_var(x, mask)
    else:
        mean, var = (torch.as_tensor(m, dtype=x.dtype, device=x.device) for m in moments)
    whitened = (x - mean) * torch.rsqrt(var + eps)
    if not shift_mean:
        whitened = whitened + mean
    return torch.where(mask.bool(), whitened, torch.zeros((), dtype=whitened.dtype, device=whitened.device))


def masked_sums(x: Tensor, mask: Tensor) -> Tensor:
    """``(3,)`` float64 tensor ``[sum, sum of squares, count]`` of the selected entries: summable across ranks.

    Args:
        x: Values, e.g. advantages ``(B, T)``.
        mask: Same shape as ``x``; 1 = include, 0 = ignore.
    """
    x = x.double()
    return torch.stack([masked_sum(x, mask), masked_sum(x * x, mask), mask.bool().sum().double()])


def moments_from_sums(sums: Tensor) -> tuple[Tensor, Tensor]:
    """``(mean, unbiased var)`` from the ``[sum, sum of squares, count]`` of `masked_sums` (0 when undefined).

    Args:
        sums: ``(3,)`` tensor, possibly summed over several batches.
    """
    total, total_sq, n = sums.unbind()
    mean = total / n.clamp(min=1)
    var = ((total_sq - n * mean * mean) / (n - 1).clamp(min=1)).clamp(min=0)
    return mean, var


def aggregate_loss(
    loss_mat: Tensor, response_mask: Tensor, mode: LossAgg = "token-mean", normalizer: float | None = None
) -> Tensor:
    """Reduce a per-token loss to a scalar (verl's ``agg_loss`` modes, for sequences with a valid token).

    - ``token-mean``: every valid token of the batch weighs the same (long responses count more; DAPO's choice).
    - ``seq-mean``: the mean over sequences of each sequence's token mean (GRPO as published; verl's
      ``seq-mean-token-mean``).
    - ``seq-mean-token-sum``: the mean over sequences of each sequence's token sum.
    - ``seq-mean-token-sum-norm``: Dr. GRPO (Liu et al. 2025): the token sums divided by one constant ``L`` instead of
      each response's own length, then the mean over sequences, ``sum_i sum_t l_it / (N * L)``. ``L`` is the
      response width ``T`` unless ``normalizer`` gives ``N * L`` (the trainer passes ``L = max_new_tokens``, constant
      through training as the paper asks). verl's mode of the same name divides by ``L`` only, without the mean over
      the ``N`` sequences: its loss is ``N`` times this one (a scale that the learning rate absorbs).

    Args:
        loss_mat: Per-token loss ``(B, T)``.
        response_mask: ``(B, T)``, 1 = response token, 0 = padding.
        mode: One of the four modes above.
        normalizer: Denominator to use instead of this batch's count (valid tokens for ``token-mean``, non-empty
            sequences for the ``seq-mean*`` modes, non-empty sequences x ``T`` for ``seq-mean-token-sum-norm``). Pass
            the mini-batch-wide count when accumulating gradients over micro-batches, so that the summed micro-batch
            losses equal the mini-batch's loss.

    Returns:
        Scalar loss; 0 when every position is masked.
    """
    non_empty = response_mask.bool().any(dim=-1)  # (B,)
    if mode == "token-mean":
        total = masked_sum(loss_mat, response_mask)
        count = response_mask.bool().sum()
    elif mode == "seq-mean":
        total = masked_sum(masked_mean(loss_mat, response_mask, dim=-1), non_empty)
        count = non_empty.sum()
    elif mode == "seq-mean-token-sum":
        total, count = masked_sum(loss_mat, response_mask), non_empty.sum()
    elif mode == "seq-mean-token-sum-norm":
        total, count = masked_sum(loss_mat, response_mask), non_empty.sum() * loss_mat.shape[-1]
    else:
        raise ValueError(f"Unknown loss aggregation {mode!r}; expected one of {LossAgg.__args__}.")
    if normalizer is not None:
        count = torch.tensor(normalizer)
    return total / count.clamp(min=1).to(device=total.device, dtype=total.dtype)


# --------------------------------------------------------------------------------------------------------------------
# Log-probabilities and entropy from logits
# --------------------------------------------------------------------------------------------------------------------


def _map_token_chunks(fn: Callable[..., Tensor], logits: Tensor, *others: Tensor, chunk_tokens: int) -> Tensor:
    """Apply ``fn(logits_block (b, t, V), *other_blocks (b, t)) -> (b, t)`` over blocks of about ``chunk_tokens``.

    Blocks are views of ``logits`` (no copy of the full tensor), so the temporaries of ``fn`` (exp, softmax,
    float32 upcast) only ever have the size of one block.
    """
    if chunk_tokens < 1:
        raise ValueError(f"chunk_tokens must be >= 1, got {chunk_tokens}.")
    batch, seq_len = logits.shape[:2]
    if batch == 0 or seq_len == 0:
        return torch.zeros((batch, seq_len), dtype=torch.float32, device=logits.device)
    rows_per_block = max(1, chunk_tokens // max(seq_len, 1))
    steps_per_block = min(seq_len, chunk_tokens)
    rows = []
    for b0 in range(0, batch, rows_per_block):
        row_pieces = []
        for t0 in range(0, seq_len, steps_per_block):
            block = (slice(b0, b0 + rows_per_block), slice(t0, t0 + steps_per_block))
            row_pieces.append(fn(logits[block], *(o[block] for o in others)))
        rows.append(torch.cat(row_pieces, dim=1))
    return torch.cat(rows, dim=0)


def _label_logprobs(logits: Tensor, labels: Tensor, temperature: float) -> Tensor:
    logits = logits.float() / temperature
    label_logits = logits.gather(-1, labels.unsqueeze(-1)).squeeze(-1)
    return label_logits - torch.logsumexp(logits, dim=-1)


def _entropy(logits: Tensor, temperature: float) -> Tensor:
    logits = logits.float() / temperature
    return torch.logsumexp(logits, dim=-1) - (torch.softmax(logits, dim=-1) * logits).sum(-1)


def logprobs_from_logits(logits: Tensor, labels: Tensor, temperature: float = 1.0, chunk_tokens: int = 1024) -> Tensor:
    """Log-probability of each label token: ``z[label] - logsumexp(z)`` with ``z = logits / temperature``.

    Equal to ``log_softmax(logits / temperature).gather(-1, labels)`` but never materialises a ``(B, T, V)``
    copy: the work runs over blocks of about ``chunk_tokens`` tokens, each upcast to float32 and divided by the
    temperature on its own. Pass the raw (bf16, sliced) logits; do not call ``.float()`` on the whole tensor first.

    Args:
        logits: ``(B, T, V)``, the logits that predict ``labels`` (already shifted by the caller; a view is fine).
        labels: ``(B, T)`` token ids (any value at padding positions that is a valid index, e.g. the pad id).
        temperature: Sampling temperature of the rollout, so that the log-probs are those of the sampler.
        chunk_tokens: Tokens per block; peak extra memory is about ``chunk_tokens * V`` floats.

    Returns:
        ``(B, T)`` float32 log-probabilities, differentiable with respect to ``logits``.
    """
    if logits.shape[:-1] != labels.shape:
        raise ValueError(f"logits {tuple(logits.shape)} and labels {tuple(labels.shape)} must agree on (B, T).")
    _check_temperature(temperature)
    return _map_token_chunks(
        partial(_label_logprobs, temperature=temperature), logits, labels, chunk_tokens=chunk_tokens
    )


def entropy_from_logits(logits: Tensor, temperature: float = 1.0, chunk_tokens: int = 1024) -> Tensor:
    """Entropy at every position: ``logsumexp(z) - sum(softmax(z) * z)`` with ``z = logits / temperature``.

    Args:
        logits: ``(B, T, V)``, finite values (a view is fine, as in `logprobs_from_logits`).
        temperature: Sampling temperature, so that the entropy is that of the sampler.
        chunk_tokens: Tokens per block, as in `logprobs_from_logits`.

    Returns:
        ``(B, T)`` float32 entropies in nats.
    """
    _check_temperature(temperature)
    return _map_token_chunks(partial(_entropy, temperature=temperature), logits, chunk_tokens=chunk_tokens)


def _check_temperature(temperature: float) -> None:
    if not temperature > 0:
        raise ValueError(f"temperature must be > 0, got {temperature}.")


# --------------------------------------------------------------------------------------------------------------------
# Rewards and advantages
# --------------------------------------------------------------------------------------------------------------------


def _check_prefix_mask(response_mask: Tensor) -> None:
    if response_mask.dim() != 2:
        raise ValueError(f"response_mask must be (B, T), got shape {tuple(response_mask.shape)}.")
    valid = response_mask.bool()
    if bool((valid[:, 1:] & ~valid[:, :-1]).any()):
        raise ValueError("response_mask must be a prefix mask per row (ones, then zeros); found a 1 after a 0.")


def _zero_padding(x: Tensor, response_mask: Tensor) -> Tensor:
    """``x`` with every padding position set to 0 (whatever it held, inf and nan included)."""
    return torch.where(response_mask.bool(), x, torch.zeros((), dtype=x.dtype, device=x.device))


def _check_same_shape(**tensors: Tensor) -> None:
    shapes = {name: tuple(t.shape) for name, t in tensors.items()}
    if len(set(shapes.values())) > 1:
        raise ValueError(f"Shape mismatch: {', '.join(f'{k}={v}' for k, v in shapes.items())}.")


def terminal_token_rewards(
    scores: Tensor, response_mask: Tensor, kl_penalty: Tensor | None = None, kl_coef: float = 0.0
) -> Tensor:
    """Per-token rewards: the sequence score on the last response token, minus ``kl_coef * kl`` on every token.

    This is the reward shaping of Ziegler et al. 2019 (score at the end, per-token KL penalty to the reference).

    Args:
        scores: ``(B,)`` sequence rewards (e.g. the fraction of tests passed).
        response_mask: ``(B, T)`` prefix mask, 1 = response token, 0 = padding.
        kl_penalty: Optional ``(B, T)`` per-token KL estimate (see `kl_penalty`).
        kl_coef: Coefficient of the KL penalty.

    Returns:
        ``(B, T)`` token rewards, 0 at padding. A row without any response token gets all zeros (its score is
        dropped: there is no token to put it on).
    """
    _check_prefix_mask(response_mask)
    if scores.shape != response_mask.shape[:1]:
        raise ValueError(f"scores must be (B,) = {tuple(response_mask.shape[:1])}, got {tuple(scores.shape)}.")
    valid = response_mask.bool()
    rewards = torch.zeros(response_mask.shape, dtype=scores.dtype, device=scores.device)
    if kl_penalty is not None and kl_coef != 0.0:
        _check_same_shape(kl_penalty=kl_penalty, response_mask=response_mask)
        rewards = torch.where(valid, -kl_coef * kl_penalty.to(scores.dtype), rewards)
    lengths = valid.sum(-1)  # (B,)
    rows = torch.nonzero(lengths > 0).squeeze(-1)
    rewards[rows, lengths[rows] - 1] += scores[rows]
    return rewards


@torch.no_grad()
def compute_gae(
    token_rewards: Tensor, values: Tensor, response_mask: Tensor, gamma: float = 1.0, lam: float = 1.0
) -> tuple[Tensor, Tensor]:
    """Generalized Advantage Estimation over the response tokens (Schulman et al. 2016).

    ``delta_t = r_t + gamma * V_{t+1} - V_t`` and ``A_t = delta_t + gamma * lam * A_{t+1}``, run backwards over
    the valid tokens of each row. After the last response token the episode has ended: ``V_{T_i} = 0`` and
    ``A_{T_i} = 0`` (no bootstrap). ``returns = advantages + values`` (the lambda-return, the critic's target).
    Advantages are not whitened here; call `masked_whiten` if wanted. Runs without gradient.

    Args:
        token_rewards: ``(B, T)`` per-token rewards (see `terminal_token_rewards`).
        values: ``(B, T)`` critic values ``V_t`` of the state before each response token.
        response_mask: ``(B, T)`` prefix mask, 1 = response token, 0 = padding.
        gamma: Discount factor.
        lam: GAE lambda (1 = Monte-Carlo return minus value, 0 = one-step TD error).

    Returns:
        ``(advantages, returns)``, both ``(B, T)`` with 0 at padding. With ``gamma = lam = 1``:
        ``A_t = sum_{k >= t} r_k - V_t``.
    """
    _check_prefix_mask(response_mask)
    _check_same_shape(token_rewards=token_rewards, values=values, response_mask=response_mask)
    valid = response_mask.bool()
    mask = valid.to(values.dtype)
    zero = torch.zeros((), dtype=values.dtype, device=values.device)
    values = torch.where(valid, values.detach(), zero)  # 0 at padding, even where padding held inf/nan
    rewards = torch.where(valid, token_rewards.detach().to(values.dtype), zero)
    seq_len = values.shape[1]
    advantages = torch.zeros_like(values)
    next_advantage = torch.zeros_like(values[:, 0])
    for t in reversed(range(seq_len)):
        # With a prefix mask, position t + 1 is padding exactly when t is the last response token: next value 0.
        next_value = values[:, t + 1] if t + 1 < seq_len else torch.zeros_like(next_advantage)
        delta = rewards[:, t] + gamma * next_value - values[:, t]
        next_advantage = (delta + gamma * lam * next_advantage) * mask[:, t]
        advantages[:, t] = next_advantage
    returns = (advantages + values) * mask
    return advantages, returns


def _check_groups(scores: Tensor, n: int, name: str) -> None:
    if scores.dim() != 1:
        raise ValueError(f"scores must be (N,), got shape {tuple(scores.shape)}.")
    if n < 2:
        raise ValueError(f"{name} needs at least 2 samples per prompt (rollout n >= 2), got n={n}.")
    if scores.shape[0] % n != 0:
        raise ValueError(f"{name}: the number of samples {scores.shape[0]} is not a multiple of n={n}.")


def _broadcast_to_tokens(seq_advantages: Tensor, response_mask: Tensor) -> Tensor:
    if response_mask.shape[:1] != seq_advantages.shape:
        raise ValueError(f"response_mask {tuple(response_mask.shape)} does not match {seq_advantages.shape[0]} scores.")
    return seq_advantages.unsqueeze(-1) * response_mask.to(seq_advantages.dtype)


@torch.no_grad()
def grpo_advantages(
    scores: Tensor, n: int, response_mask: Tensor, eps: float = 1e-6, norm_by_std: bool = True
) -> Tensor:
    """Group-relative advantages (GRPO, Shao et al. 2024): ``(s_i - mean(group)) / (std(group) + eps)``.

    Every prompt has ``n`` consecutive samples; the group statistics use the unbiased standard deviation.
    The sequence advantage is given to every valid token.

    Args:
        scores: ``(N,)`` sequence rewards, ``N = B * n``, samples of one prompt consecutive.
        n: Samples per prompt (>= 2).
        response_mask: ``(N, T)``, 1 = response token, 0 = padding.
        eps: Added to the standard deviation; a group with identical scores gets advantage 0.
        norm_by_std: Divide by the group standard deviation (False = Dr. GRPO style, mean-centering only).

    Returns:
        ``(N, T)`` advantages, 0 at padding.
    """
    _check_groups(scores, n, "grpo")
    groups = scores.view(-1, n)  # (B, n)
    centered = groups - groups.mean(dim=-1, keepdim=True)
    if norm_by_std:
        centered = centered / (groups.std(dim=-1, keepdim=True) + eps)
    return _broadcast_to_tokens(centered.reshape(-1), response_mask)


@torch.no_grad()
def rloo_advantages(scores: Tensor, n: int, response_mask: Tensor) -> Tensor:
    """REINFORCE leave-one-out advantages (RLOO, Ahmadian et al. 2024): ``s_i - mean_{j != i} s_j``.

    Args:
        scores: ``(N,)`` sequence rewards, ``N = B * n``, samples of one prompt consecutive.
        n: Samples per prompt (>= 2).
        response_mask: ``(N, T)``, 1 = response token, 0 = padding.

    Returns:
        ``(N, T)`` advantages (the sequence advantage on every valid token), 0 at padding.
    """
    _check_groups(scores, n, "rloo")
    groups = scores.view(-1, n)  # (B, n)
    baseline = (groups.sum(dim=-1, keepdim=True) - groups) / (n - 1)
    return _broadcast_to_tokens((groups - baseline).reshape(-1), response_mask)


@torch.no_grad()
def discounted_returns(token_rewards: Tensor, response_mask: Tensor, gamma: float = 1.0) -> Tensor:
    """Reward-to-go of every response token, ``G_t = r_t + gamma * G_{t+1}``, with ``G = 0`` after the last one.

    The same as the returns of `compute_gae` with all values 0 and ``lam = 1``. Runs without gradient.

    Args:
        token_rewards: ``(B, T)`` per-token rewards (see `terminal_token_rewards`).
        response_mask: ``(B, T)`` prefix mask, 1 = response token, 0 = padding.
        gamma: Discount factor.

    Returns:
        ``(B, T)`` returns, 0 at padding. With ``gamma = 1`` every token gets the sum of its own and later rewards.
    """
    _check_prefix_mask(response_mask)
    _check_same_shape(token_rewards=token_rewards, response_mask=response_mask)
    rewards = _zero_padding(token_rewards.detach(), response_mask)
    returns = torch.zeros_like(rewards)
    running = torch.zeros_like(rewards[:, 0])  # (B,); stays 0 over the padding after each response
    for t in reversed(range(rewards.shape[1])):
        running = rewards[:, t] + gamma * running
        returns[:, t] = running
    return returns


def _whiten_over_batch(x: Tensor, response_mask: Tensor, all_reduce_sum: Callable[[Tensor], Tensor] | None) -> Tensor:
    """`masked_whiten` with the moments of every valid token of the batch (of all ranks, given ``all_reduce_sum``)."""
    sums = masked_sums(x, response_mask)
    if all_reduce_sum is not None:
        sums = all_reduce_sum(sums)
    return masked_whiten(x, response_mask, moments=moments_from_sums(sums))


@torch.no_grad()
def reinforce_plus_plus_advantages(
    token_rewards: Tensor,
    response_mask: Tensor,
    gamma: float = 1.0,
    all_reduce_sum: Callable[[Tensor], Tensor] | None = None,
) -> tuple[Tensor, Tensor]:
    """REINFORCE++ (Hu 2025): token returns of the KL-penalised reward, whitened over the batch; no critic.

    ``A_t = (G_t - mean(G)) / std(G)`` with ``G_t`` the `discounted_returns` of ``token_rewards`` (the score on the
    last token minus ``kl_coef * kl`` on every token, from `terminal_token_rewards`). There is no baseline per
    prompt: the mean and the unbiased standard deviation are those of all valid tokens of the batch (a long response
    weighs more), as verl's ``compute_reinforce_plus_plus_outcome_advantage``. Runs without gradient.

    Args:
        token_rewards: ``(N, T)`` per-token rewards.
        response_mask: ``(N, T)`` prefix mask, 1 = response token, 0 = padding.
        gamma: Discount factor of the returns (verl's ``algorithm.gamma``).
        all_reduce_sum: Sums a tensor over the data-parallel ranks (every rank must call it), so that the
            whitening uses the moments of the whole batch; ``None`` = this batch only.

    Returns:
        ``(advantages, returns)``, both ``(N, T)`` with 0 at padding.
    """
    returns = discounted_returns(token_rewards, response_mask, gamma)
    return _whiten_over_batch(returns, response_mask, all_reduce_sum), returns


@torch.no_grad()
def reinforce_plus_plus_baseline_advantages(
    scores: Tensor, n: int, response_mask: Tensor, all_reduce_sum: Callable[[Tensor], Tensor] | None = None
) -> Tensor:
    """REINFORCE++-baseline (Hu 2025): the score minus its group's mean, then whitened over the batch.

    Baseline per group: ``s_i - mean(s of the prompt's n samples)`` (its own score included), given to every valid
    token. Normalisation per batch: mean and unbiased standard deviation of all valid tokens of the batch (of all
    ranks with ``all_reduce_sum``), not per group as in GRPO. As verl's
    ``compute_reinforce_plus_plus_baseline_outcome_advantage``, whose score is the sum of the token rewards: pass
    the score minus the summed KL penalty to use one. (verl gives a prompt with a single sample the baseline 0; here
    ``n >= 2``.) Runs without gradient.

    Args:
        scores: ``(N,)`` sequence rewards, ``N = B * n``, samples of one prompt consecutive.
        n: Samples per prompt (>= 2).
        response_mask: ``(N, T)``, 1 = response token, 0 = padding.
        all_reduce_sum: Sums a tensor over the data-parallel ranks, as in `reinforce_plus_plus_advantages`.

    Returns:
        ``(N, T)`` advantages, 0 at padding (and everywhere when every group has equal scores).
    """
    _check_groups(scores, n, "reinforce_plus_plus_baseline")
    groups = scores.view(-1, n)  # (B, n)
    centered = _broadcast_to_tokens((groups - groups.mean(dim=-1, keepdim=True)).reshape(-1), response_mask)
    return _whiten_over_batch(centered, response_mask, all_reduce_sum)


# --------------------------------------------------------------------------------------------------------------------
# DAPO: overlong reward shaping and the group filter of dynamic sampling
# --------------------------------------------------------------------------------------------------------------------


def overlong_penalty(
    response_lengths: Tensor, max_new_tokens: int, buffer_len: int, penalty_factor: float = 1.0
) -> Tensor:
    """DAPO's soft overlong punishment (Yu et al. 2025, eq. 13), to add to the score of each response.

    With ``L_max = max_new_tokens`` and ``L_cache = buffer_len``: 0 while ``L <= L_max - L_cache``, then falling
    linearly, ``((L_max - L_cache) - L) / L_cache * penalty_factor``, to ``-penalty_factor`` at ``L_max`` (and beyond,
    the paper's third case). verl's DAPO reward manager computes the same
    ``min(-(L - (L_max - L_cache)) / L_cache * penalty_factor, 0)`` for its lengths, which never exceed ``L_max``.

    Args:
        response_lengths: ``(N,)`` response lengths in tokens, EOS included (``response_mask.sum(-1)``).
        max_new_tokens: ``L_max``, the generation limit.
        buffer_len: ``L_cache``, the length of the penalty window before the limit (0 = no penalty).
        penalty_factor: The penalty at the limit (DAPO: 1, the scale of its +-1 accuracy reward).

    Returns:
        ``(N,)`` penalties in ``[-penalty_factor, 0]``: float32, or the dtype of floating ``response_lengths``.
    """
    if response_lengths.dim() != 1:
        raise ValueError(f"response_lengths must be (N,), got shape {tuple(response_lengths.shape)}.")
    if not 0 <= buffer_len <= max_new_tokens:
        raise ValueError(f"buffer_len must be in [0, max_new_tokens={max_new_tokens}], got {buffer_len}.")
    lengths = response_lengths if response_lengths.is_floating_point() else response_lengths.float()
    if buffer_len == 0:
        return torch.zeros_like(lengths)
    return ((max_new_tokens - buffer_len - lengths) / buffer_len).clamp(-1.0, 0.0) * penalty_factor


def keep_groups(scores: Tensor, n: int) -> Tensor:
    """Dynamic sampling's filter (DAPO, Yu et al. 2025): keep the prompts whose ``n`` samples differ in score.

    A group with equal scores (all solved or all failed) has zero group-relative advantage and only dilutes the
    batch. Scores are compared exactly, as verl's ``std == 0`` test; a group holding a NaN is kept. DAPO filters on
    the accuracy, so pass the scores before length or KL shaping. With ``n = 1`` every sample is kept (verl keeps
    single-sample groups).

    Args:
        scores: ``(N,)`` sequence scores, ``N = B * n``, samples of one prompt consecutive.
        n: Samples per prompt (>= 1).

    Returns:
        ``(N,)`` bool, True for every sample of a kept group.
    """
    if scores.dim() != 1:
        raise ValueError(f"scores must be (N,), got shape {tuple(scores.shape)}.")
    if n < 1 or scores.shape[0] % n != 0:
        raise ValueError(f"keep_groups: the number of samples {scores.shape[0]} is not a multiple of n={n} >= 1.")
    groups = scores.view(-1, n)  # (B, n)
    differs = (groups != groups[:, :1]).any(dim=-1) | (n == 1)  # (B,)
    return differs.repeat_interleave(n)


# --------------------------------------------------------------------------------------------------------------------
# Losses
# --------------------------------------------------------------------------------------------------------------------


def policy_loss(
    logprobs: Tensor,
    old_logprobs: Tensor,
    advantages: Tensor,
    response_mask: Tensor,
    clip_ratio_low: float = 0.2,
    clip_ratio_high: float = 0.2,
    dual_clip: float | None = None,
    loss_agg: LossAgg = "token-mean",
    normalizer: float | None = None,
    ratio_level: Literal["token", "sequence"] = "token",
    loss_mode: Literal["ppo", "cispo"] = "ppo",
    is_weights: Tensor | None = None,
) -> tuple[Tensor, dict[str, Tensor]]:
    """Clipped surrogate policy loss of PPO (Schulman et al. 2017), with optional dual clip (Ye et al. 2020), or CISPO.

    Per token, with ``ratio = exp(logprobs - old_logprobs)``:
    ``loss = max(-A * ratio, -A * clip(ratio, 1 - clip_ratio_low, 1 + clip_ratio_high))``.
    Dual clip bounds the loss of a negative advantage when the ratio explodes: for ``A < 0``,
    ``loss = min(loss, -A * dual_clip)``.

    ``ratio_level="sequence"`` is GSPO (Zheng et al. 2025, its token form): every token of response ``i`` uses the
    length-normalised sequence ratio ``s_i = exp(mean_t(logprobs - old_logprobs))`` as its value, with the gradient
    of its own log-prob (``s_i * exp(logprob_t - sg(logprob_t))``), so the whole response is clipped together. Use it
    with GSPO's much smaller clip ranges (3e-4 / 4e-4 in the paper) and ``loss_agg="seq-mean"``. With one PPO epoch
    and one mini-batch the update is on-policy: every ratio is 1 and neither the clip range nor this choice changes
    anything.

    ``loss_mode="cispo"`` (MiniMax-M1, 2025) clips the importance-sampling weight instead of the update:
    ``loss = -sg(clip(ratio, 1 - clip_ratio_low, 1 + clip_ratio_high)) * A * logprobs``, so every token keeps the
    gradient ``-w * A * d logprob`` (PPO drops the gradient of clipped tokens; at ratio 1 the two are equal). The
    loss value is a surrogate in log-prob units, not comparable with PPO's. MiniMax-M1 sets no lower bound
    (``clip_ratio_low = 1``: the ratio is never below 0); verl's ``cispo`` uses the PPO clip settings as given.
    Token ratios only, no dual clip.

    ``is_weights`` (e.g. `rollout_is_weights`) multiply the per-token loss after clipping, as verl multiplies its
    ``pg_losses`` by ``rollout_is_weights``; they are treated as constants.

    Args:
        logprobs: ``(B, T)`` log-probs of the response tokens under the current policy (with gradient).
        old_logprobs: ``(B, T)`` log-probs under the policy that sampled the rollout.
        advantages: ``(B, T)`` advantages.
        response_mask: ``(B, T)``, 1 = response token, 0 = padding.
        clip_ratio_low: The ratio is clipped below at ``1 - clip_ratio_low``.
        clip_ratio_high: The ratio is clipped above at ``1 + clip_ratio_high`` (higher = "clip-higher").
        dual_clip: Dual-clip constant ``c > 1``; ``None`` disables it.
        loss_agg: A mode of `aggregate_loss`.
        normalizer: Denominator override for micro-batch accumulation, see `aggregate_loss`.
        ratio_level: ``"token"`` (PPO) or ``"sequence"`` (GSPO), see above.
        loss_mode: ``"ppo"`` or ``"cispo"``, see above.
        is_weights: Optional ``(B, T)`` per-token weights (detached; any value at padding).

    Returns:
        ``(loss, metrics)``: scalar loss and detached scalar metrics, token-means over valid tokens:
        ``clipfrac`` (fraction of tokens where the clipped term is active; for CISPO where the weight is clipped,
        as verl's ``ratio != clipped_ratio``), ``approx_kl`` (verl's ``ppo_kl``: the
        k1 estimate ``mean(old_logprobs - logprobs)`` of KL(old || current), with the log-ratio clamped to
        ``[-20, 20]`` as for the ratio) and ``clipfrac_lower`` (fraction where the dual clip is active; 0 without
        dual clip).
    """
    _check_same_shape(logprobs=logprobs, old_logprobs=old_logprobs, advantages=advantages, response_mask=response_mask)
    if dual_clip is not None and dual_clip <= 1.0:
        raise ValueError(f"dual_clip must be > 1 (Ye et al. 2020), got {dual_clip}.")
    if loss_mode not in ("ppo", "cispo"):
        raise ValueError(f"loss_mode must be 'ppo' or 'cispo', got {loss_mode!r}.")
    if loss_mode == "cispo" and (ratio_level != "token" or dual_clip is not None):
        raise ValueError("loss_mode 'cispo' clips token weights: it takes ratio_level 'token' and no dual_clip.")
    # zeroed at padding: a non-finite value there would make the gradient NaN through the masked branches (0 * inf)
    old_logprobs, advantages = _zero_padding(old_logprobs, response_mask), _zero_padding(advantages, response_mask)
    # Clamped (as verl does) before exp, so a stale token cannot overflow (the clip makes such tokens gradient-free
    # anyway), and before approx_kl, which is verl's ppo_kl of the same clamped log-ratio.
    logratio = (logprobs - old_logprobs).clamp(-_MAX_LOG_RATIO, _MAX_LOG_RATIO)
    if ratio_level == "sequence":  # GSPO: each token carries its response's mean log-ratio, with its own gradient
        seq_logratio = masked_mean(logratio, response_mask, dim=-1).detach().unsqueeze(-1)  # (B, 1)
        ratio = torch.exp((logprobs - logprobs.detach() + seq_logratio).clamp(max=_MAX_LOG_RATIO))
    elif ratio_level == "token":
        ratio = torch.exp(logratio)
    else:
        raise ValueError(f"ratio_level must be 'token' or 'sequence', got {ratio_level!r}.")
    if loss_mode == "cispo":
        weights = ratio.detach().clamp(1.0 - clip_ratio_low, 1.0 + clip_ratio_high)
        clipfrac = masked_mean((weights != ratio.detach()).to(logprobs.dtype), response_mask)
        # zeroed at padding, where a non-finite log-prob would give a NaN weight and so a NaN gradient
        loss_mat = -_zero_padding(weights, response_mask) * advantages * logprobs
    else:
        unclipped = -advantages * ratio
        clipped = -advantages * ratio.clamp(1.0 - clip_ratio_low, 1.0 + clip_ratio_high)
        loss_mat = torch.maximum(unclipped, clipped)
        clipfrac = masked_mean((clipped > unclipped).to(logprobs.dtype), response_mask)
    clipfrac_lower = torch.zeros_like(clipfrac)
    if dual_clip is not None:
        lower_bound = -advantages * dual_clip
        dual_active = (advantages < 0) & (loss_mat > lower_bound)
        loss_mat = torch.where(dual_active, lower_bound, loss_mat)
        clipfrac_lower = masked_mean(dual_active.to(logprobs.dtype), response_mask)
    if is_weights is not None:
        _check_same_shape(is_weights=is_weights, response_mask=response_mask)
        loss_mat = loss_mat * _zero_padding(is_weights.detach(), response_mask).to(loss_mat.dtype)
    loss = aggregate_loss(loss_mat, response_mask, loss_agg, normalizer)
    metrics = {
        "clipfrac": clipfrac.detach(),
        "approx_kl": masked_mean(-logratio, response_mask).detach(),
        "clipfrac_lower": clipfrac_lower.detach(),
    }
    return loss, metrics


def value_loss(
    values: Tensor,
    old_values: Tensor,
    returns: Tensor,
    response_mask: Tensor,
    clip_range: float | None = 0.2,
    loss_agg: LossAgg = "token-mean",
    normalizer: float | None = None,
) -> tuple[Tensor, Tensor]:
    """Clipped value loss: ``0.5 * max((V - R)^2, (V_clip - R)^2)``, ``V_clip = V_old + clip(V - V_old, +-eps)``.

    Value clipping as in the PPO2 implementation of OpenAI baselines (see Engstrom et al. 2020).

    Args:
        values: ``(B, T)`` current critic values (with gradient).
        old_values: ``(B, T)`` critic values at rollout time.
        returns: ``(B, T)`` targets (see `compute_gae`).
        response_mask: ``(B, T)``, 1 = response token, 0 = padding.
        clip_range: ``eps`` above; ``None`` = plain ``0.5 * (V - R)^2``.
        loss_agg: A mode of `aggregate_loss`.
        normalizer: Denominator override for micro-batch accumulation, see `aggregate_loss`.

    Returns:
        ``(loss, clipfrac)``: scalar loss and the detached fraction of valid tokens where the clipped term is larger.
    """
    _check_same_shape(values=values, old_values=old_values, returns=returns, response_mask=response_mask)
    old_values, returns = _zero_padding(old_values, response_mask), _zero_padding(returns, response_mask)
    unclipped = (values - returns) ** 2
    if clip_range is None:
        return 0.5 * aggregate_loss(unclipped, response_mask, loss_agg, normalizer), values.new_zeros(())
    # V clamped into [V_old - eps, V_old + eps] (verl's clip_by_value): exactly V where the clip is inactive, so the
    # clip fraction counts no token whose V_old + (V - V_old) merely rounds away from V.
    values_clipped = torch.clamp(values, old_values - clip_range, old_values + clip_range)
    clipped = (values_clipped - returns) ** 2
    loss = 0.5 * aggregate_loss(torch.maximum(unclipped, clipped), response_mask, loss_agg, normalizer)
    clipfrac = masked_mean((clipped > unclipped).to(values.dtype), response_mask)
    return loss, clipfrac.detach()


def kl_penalty(logprobs: Tensor, ref_logprobs: Tensor, kind: KLKind = "k1") -> Tensor:
    """Per-token estimate of KL(policy || reference) from tokens sampled by the policy (Schulman 2020).

    With ``logr = ref_logprobs - logprobs`` (log of ``p_ref / p_policy``):
    ``k1 = -logr`` (unbiased, high variance, can be negative), ``k2 = 0.5 * logr^2`` (biased, low variance),
    ``k3 = exp(logr) - logr - 1`` (unbiased, low variance, always >= 0), ``abs = |logr|``.
    For stability, ``k3`` clamps ``logr`` to ``[-20, 20]`` before ``exp`` and its result to at most 10,
    so a token the reference finds very unlikely cannot blow up the loss or its gradient.

    Args:
        logprobs: ``(B, T)`` log-probs of the sampled tokens under the policy.
        ref_logprobs: ``(B, T)`` log-probs of the same tokens under the reference policy.
        kind: ``"k1"``, ``"k2"``, ``"k3"`` or ``"abs"``.

    Returns:
        ``(B, T)`` per-token KL estimates (padding positions are not masked; mask them when reducing).
    """
    _check_same_shape(logprobs=logprobs, ref_logprobs=ref_logprobs)
    logr = ref_logprobs - logprobs
    if kind == "k1":
        return -logr
    if kind == "k2":
        return 0.5 * logr**2
    if kind == "k3":
        logr = logr.clamp(-_MAX_LOG_RATIO, _MAX_LOG_RATIO)
        return (torch.exp(logr) - logr - 1.0).clamp(max=10.0)
    if kind == "abs":
        return logr.abs()
    raise ValueError(f"Unknown KL estimator {kind!r}; expected one of 'k1', 'k2', 'k3', 'abs'.")


@torch.no_grad()
def explained_variance(values: Tensor, returns: Tensor, response_mask: Tensor) -> Tensor:
    """Fraction of the variance of the returns that the critic explains: ``1 - Var(R - V) / Var(R)``.

    1 = perfect critic, 0 = no better than a constant, negative = worse than a constant.

    Args:
        values: ``(B, T)`` critic values.
        returns: ``(B, T)`` value targets.
        response_mask: ``(B, T)``, 1 = response token, 0 = padding.

    Returns:
        A scalar. When the returns have zero variance (up to float round-off, or fewer than two valid tokens) it is 1
        if the values match the returns exactly and 0 otherwise, as scikit-learn's ``explained_variance_score``
        (never NaN).
    """
    _check_same_shape(values=values, returns=returns, response_mask=response_mask)
    var_returns = masked_var(returns, response_mask)
    var_residual = masked_var(returns - values, response_mask)
    # Zero up to round-off counts as zero: returns = advantages + values is rarely bit-exact, and dividing by a
    # variance of 1e-15 (all rewards 0, the start of an APPS run) would give -1e13.
    noise = (16 * torch.finfo(returns.dtype).eps) ** 2 * (1 + masked_mean(returns.square(), response_mask))
    if var_returns > noise:
        return 1.0 - var_residual / var_returns
    exact = bool((masked_sum((returns - values).abs(), response_mask) == 0).item())
    return torch.tensor(1.0 if exact else 0.0, dtype=returns.dtype)


# --------------------------------------------------------------------------------------------------------------------
# Rollout correction: the sampler's log-probs differ from the trainer's (vLLM kernels, bf16, stale weights)
# --------------------------------------------------------------------------------------------------------------------


@torch.no_grad()
def rollout_is_weights(
    old_logprobs: Tensor,
    rollout_logprobs: Tensor,
    response_mask: Tensor,
    level: Literal["token", "sequence"] = "token",
    threshold: float = 2.0,
) -> Tensor:
    """Truncated importance-sampling weights ``pi_old / pi_rollout`` (TIS, Yao et al. 2025), capped at ``threshold``.

    ``token``: ``min(exp(old_t - rollout_t), threshold)`` per token (biased, low variance). ``sequence``:
    ``min(exp(sum_t (old_t - rollout_t)), threshold)``, the product of the token ratios, on every token of the
    response (unbiased before the cap, high variance). Log-ratios are clamped to ``[-20, 20]`` before ``exp``, as
    verl's ``compute_rollout_correction_weights`` (``rollout_is_threshold`` as a float, no batch normalisation).
    Pass the result as ``is_weights`` to `policy_loss`. Runs without gradient.

    Args:
        old_logprobs: ``(B, T)`` log-probs of the response tokens under the trainer's policy at rollout time.
        rollout_logprobs: ``(B, T)`` log-probs of the same tokens reported by the sampler (e.g. vLLM).
        response_mask: ``(B, T)``, 1 = response token, 0 = padding.
        level: ``"token"`` or ``"sequence"``.
        threshold: Upper cap of the weights (> 0); verl's default is 2.0.

    Returns:
        ``(B, T)`` detached weights, 0 at padding.
    """
    _check_same_shape(old_logprobs=old_logprobs, rollout_logprobs=rollout_logprobs, response_mask=response_mask)
    if not threshold > 0:
        raise ValueError(f"threshold must be > 0, got {threshold}.")
    logratio = _zero_padding(old_logprobs - rollout_logprobs, response_mask)
    if level == "sequence":
        logratio = masked_sum(logratio, response_mask, dim=-1).unsqueeze(-1).expand_as(logratio)  # (B, T)
    elif level != "token":
        raise ValueError(f"level must be 'token' or 'sequence', got {level!r}.")
    weights = torch.exp(logratio.clamp(-_MAX_LOG_RATIO, _MAX_LOG_RATIO)).clamp(max=threshold)
    return _zero_padding(weights, response_mask)


@torch.no_grad()
def rollout_mismatch_metrics(
    old_logprobs: Tensor, rollout_logprobs: Tensor, response_mask: Tensor
) -> dict[str, Tensor]:
    """How far the sampler's log-probs are from the trainer's, over the valid tokens (verl's names where it has one).

    With ``d = old_logprobs - rollout_logprobs`` (log of ``pi_old / pi_rollout``) at tokens sampled by the rollout:

    - ``logprob_abs_diff``: token mean of ``|d|``.
    - ``kl``: token mean of ``-d``, the k1 estimate of KL(rollout || old).
    - ``k3_kl``: token mean of ``exp(d) - d - 1`` (``d`` clamped to ``[-20, 20]``), the k3 estimate of the same KL.
    - ``ppl_ratio``: mean over non-empty responses of ``exp(mean_t(rollout) - mean_t(old))``, the trainer's
      perplexity over the sampler's.

    Args:
        old_logprobs: ``(B, T)`` log-probs under the trainer's policy.
        rollout_logprobs: ``(B, T)`` log-probs reported by the sampler.
        response_mask: ``(B, T)``, 1 = response token, 0 = padding.

    Returns:
        Detached scalar tensors by name; each is 0 when every position is masked.
    """
    _check_same_shape(old_logprobs=old_logprobs, rollout_logprobs=rollout_logprobs, response_mask=response_mask)
    d = _zero_padding(old_logprobs - rollout_logprobs, response_mask)
    clamped = d.clamp(-_MAX_LOG_RATIO, _MAX_LOG_RATIO)
    log_ppl_diff = -masked_mean(d, response_mask, dim=-1)  # (B,) log(ppl_old / ppl_rollout)
    return {
        "logprob_abs_diff": masked_mean(d.abs(), response_mask),
        "kl": masked_mean(-d, response_mask),
        "k3_kl": masked_mean(torch.exp(clamped) - clamped - 1.0, response_mask),
        "ppl_ratio": masked_mean(torch.exp(log_ppl_diff), response_mask.bool().any(dim=-1)),
    }


# --------------------------------------------------------------------------------------------------------------------
# KL coefficient controllers
# --------------------------------------------------------------------------------------------------------------------


class FixedKLController:
    """A constant KL coefficient (same interface as `AdaptiveKLController`)."""

    def __init__(self, kl_coef: float) -> None:
        self.value = float(kl_coef)

    def update(self, current_kl: float, n_steps: int) -> None:
        """Do nothing: the coefficient is fixed."""

    def state_dict(self) -> dict[str, float]:
        """Return the state to checkpoint."""
        return {"value": self.value}

    def load_state_dict(self, state: dict[str, float]) -> None:
        """Restore the state saved by `state_dict`."""
        self.value = float(state["value"])


class AdaptiveKLController:
    """Adaptive KL coefficient of Ziegler et al. 2019 (section 2.2).

    ``e = clip(KL / target - 1, -0.2, 0.2)`` and ``beta <- beta * (1 + e * n_steps / horizon)``: the coefficient
    grows while the measured KL is above the target and shrinks while it is below.
    """

    def __init__(self, init_kl_coef: float, target: float, horizon: int) -> None:
        if target <= 0 or horizon <= 0:
            raise ValueError(f"Adaptive KL needs target > 0 and horizon > 0, got target={target}, horizon={horizon}.")
        self.value = float(init_kl_coef)
        self.target = float(target)
        self.horizon = int(horizon)

    def update(self, current_kl: float, n_steps: int) -> None:
        """Adapt the coefficient to the KL measured over the last ``n_steps`` samples."""
        proportional_error = min(max(float(current_kl) / self.target - 1.0, -0.2), 0.2)
        self.value *= 1.0 + proportional_error * n_steps / self.horizon

    def state_dict(self) -> dict[str, float]:
        """Return the state to checkpoint (the current coefficient)."""
        return {"value": self.value}

    def load_state_dict(self, state: dict[str, float]) -> None:
        """Restore the state saved by `state_dict`."""
        self.value = float(state["value"])
