"""The PPO update loop: micro-batched forward passes, then `ppo_epochs` x mini-batches of critic and actor steps.

`PPOModule` calls these with what they need spelled out: the settings, a model and its optimizer, and three
functions of the LightningModule: `micro_batches(rows, attn)` (the row groups, padded to the most on any rank),
`backward(loss)` (Lightning's `manual_backward`, for precision and strategy) and `step(optimizer, model)` (clip,
step through the strategy, zero the gradients; returns the grad norm). The losses are `lit_codegen.ppo`'s.

    logprobs = scoring_logprobs(actor, seq, attn, pos, p_len, temperature, layout(algo), micro_batches)
    metrics = update_actor(exp, p_len, actor, optimizer, algo, rollout, device,
                           micro_batches=micro_batches, backward=backward, step=step)

A mini-batch's loss is the sum of its micro-batches' losses, each aggregated with the mini-batch's denominator
(`normalizer`), so gradient accumulation gives the mini-batch's gradient whatever the micro-batching.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

import torch

from lit_codegen import batching, ppo
from lit_codegen.args import PPOArgs, RolloutArgs
from lit_codegen.models.critic import response_values
from lit_codegen.models.logprob_head import response_logprobs

MicroBatches = Callable[[torch.Tensor, torch.Tensor], list[tuple[torch.Tensor, bool]]]


def layout(algo: PPOArgs) -> str:
    """How micro-batches reach the models: packed rows, padding-trimmed (token budget) or as padded."""
    if algo.pack_sequences:
        return "packed"
    return "padded" if algo.max_tokens_per_micro_batch is None else "trimmed"


def micro_batches(rows: torch.Tensor, attn: torch.Tensor, algo: PPOArgs,
                  most_on_any_rank: Callable[[int], int]) -> list[tuple[torch.Tensor, bool]]:
    """(row indices, real) of each micro-batch of `rows`: `micro_batch_size` rows, or by token budget.

    With a token budget, ranks can group their rows into different numbers of micro-batches, but under data
    parallelism every forward/backward is a collective (FSDP's all-gathers and reduce-scatters, DDP's
    all-reduce): a rank with fewer appends micro-batches of its first row marked not real, whose outputs
    and losses count nothing.

    Args:
        rows: Row indices (n,) to split.
        attn: Attention mask (N, P+R) of all rows (the token budget counts its ones).
        algo: `micro_batch_size`, `max_tokens_per_micro_batch`, `pack_sequences`.
        most_on_any_rank: The largest of a count over the data-parallel ranks (a collective every rank must reach).
    """
    if algo.max_tokens_per_micro_batch is None:
        return [(idx, True) for idx in rows.split(algo.micro_batch_size)]
    lengths = attn[rows].sum(-1).tolist()
    groups = [(rows[g], True) for g in batching.token_budget_groups(lengths, algo.max_tokens_per_micro_batch,
                                                                    packed=algo.pack_sequences)]
    return groups + [(rows[:1], False)] * (most_on_any_rank(len(groups)) - len(groups))


def scoring_logprobs(model, seq, attn, pos, p_len: int, temperature: float, layout: str,
                     micro_batches: MicroBatches) -> torch.Tensor:
    """Log-probs (N, R) of the response tokens under `model`, in micro-batches, without gradients.

    Args:
        model: A causal LM with `install_logprob_head`'s head.
        seq: Prompt + response ids (N, P+R).
        attn: Their attention mask (N, P+R).
        pos: Their position ids (N, P+R).
        p_len: Prompt width P.
        temperature: The sampling temperature the logits are divided by.
        layout: `layout(algo)`.
        micro_batches: The module's `micro_batches(rows, attn)`.
    """
    out = []
    with torch.no_grad():
        for idx, real in micro_batches(torch.arange(seq.shape[0], device=seq.device), attn):
            logprobs, _ = response_logprobs(model, seq[idx], attn[idx], pos[idx], p_len, temperature, layout)
            out += [(idx, logprobs)] if real else []
    return in_row_order(out)


def scoring_values(critic, seq, attn, pos, p_len: int, layout: str, micro_batches: MicroBatches) -> torch.Tensor:
    """Critic values (N, R) of the states before each response token, in micro-batches, without gradients.

    Arguments as `scoring_logprobs`; `critic` is a `CriticModel`.
    """
    with torch.no_grad():
        micro = micro_batches(torch.arange(seq.shape[0], device=seq.device), attn)
        out = [(i, response_values(critic, seq[i], attn[i], pos[i], p_len, layout)) for i, _ in micro]
    return in_row_order([(i, v) for (i, real), (_, v) in zip(micro, out) if real]).float()


def update_critic(exp: dict, p_len: int, critic, optimizer: torch.optim.Optimizer, algo: PPOArgs,
                  rollout: RolloutArgs, device: torch.device, *, micro_batches: MicroBatches,
                  backward: Callable[[torch.Tensor], None],
                  step: Callable[[torch.optim.Optimizer, torch.nn.Module], float]) -> dict[str, float]:
    """`ppo_epochs` x mini-batches of clipped value-loss steps; returns metrics averaged over mini-batches.

    Args:
        exp: The iteration's experience (`lit_codegen.experience.training_batch`): `seq`, `attn`, `pos` (N, P+R);
            `mask`, `values`, `returns` (N, R).
        p_len: Prompt width P.
        critic: The `CriticModel` trained.
        optimizer: Its (unwrapped) optimizer.
        algo: PPO settings (`value_clip`, `loss_agg`, mini-batches).
        rollout: Generation settings (`max_new_tokens` for `seq-mean-token-sum-norm`).
        device: Where the mini-batch shuffles are drawn (the module's device: the RNG stream is that device's).
        micro_batches: The module's `micro_batches(rows, attn)`.
        backward: The LightningModule's `manual_backward`.
        step: Clips, steps the optimizer, zeroes the gradients; returns the grad norm.
    """
    stats = _Mean()
    for mb in minibatches(exp["seq"].shape[0], algo, device):
        optimizer.zero_grad(set_to_none=True)
        norm, tokens, logs = normalizer(exp["mask"][mb], algo, rollout), exp["mask"][mb].sum(), _Sum()
        for idx, real in micro_batches(mb, exp["attn"]):
            with torch.enable_grad():
                values = response_values(critic, exp["seq"][idx], exp["attn"][idx], exp["pos"][idx], p_len,
                                         layout(algo)).float()
            loss, clipfrac = ppo.value_loss(values, exp["values"][idx], exp["returns"][idx],
                                            exp["mask"][idx] * real, algo.value_clip, algo.loss_agg, norm)
            backward(loss)
            logs.add(**{"critic/vf_loss": loss, "critic/vf_clipfrac": clipfrac * share(exp["mask"][idx], tokens)})
        stats.add(**logs.sums, **{"critic/grad_norm": step(optimizer, critic)})
    return stats.result()


def update_actor(exp: dict, p_len: int, actor, optimizer: torch.optim.Optimizer, algo: PPOArgs,
                 rollout: RolloutArgs, device: torch.device, *, micro_batches: MicroBatches,
                 backward: Callable[[torch.Tensor], None],
                 step: Callable[[torch.optim.Optimizer, torch.nn.Module], float]) -> dict[str, float]:
    """`ppo_epochs` x mini-batches of clipped policy-loss steps (+ entropy bonus, + KL loss); averaged metrics.

    Args:
        exp: The iteration's experience (`lit_codegen.experience.training_batch`): `seq`, `attn`, `pos` (N, P+R);
            `mask`, `old_logprobs`, `advantages`, `ref_logprobs` (with a KL loss), `is_weights` (optional) (N, R).
        p_len: Prompt width P.
        actor: The causal LM trained.
        optimizer: Its (unwrapped) optimizer.
        algo: PPO settings (clipping, policy loss, entropy and KL-loss coefficients, `loss_agg`, mini-batches).
        rollout: Generation settings (`temperature`, `max_new_tokens`).
        device: Where the mini-batch shuffles are drawn.
        micro_batches: The module's `micro_batches(rows, attn)`.
        backward: The LightningModule's `manual_backward`.
        step: Clips, steps the optimizer, zeroes the gradients; returns the grad norm.
    """
    a, stats = algo, _Mean()
    for mb in minibatches(exp["seq"].shape[0], a, device):
        optimizer.zero_grad(set_to_none=True)
        norm, tokens, logs = normalizer(exp["mask"][mb], a, rollout), exp["mask"][mb].sum(), _Sum()
        for idx, real in micro_batches(mb, exp["attn"]):
            m = exp["mask"][idx] * real  # a padding micro-batch (see micro_batches) trains on no token
            weight = share(m, tokens)
            logprobs, entropy_tokens = response_logprobs(actor, exp["seq"][idx], exp["attn"][idx], exp["pos"][idx],
                                                         p_len, rollout.temperature, layout(a))
            is_weights = exp["is_weights"][idx] if "is_weights" in exp else None
            loss, pg = ppo.policy_loss(logprobs, exp["old_logprobs"][idx], exp["advantages"][idx], m,
                                       a.clip_ratio_low, a.clip_ratio_high, a.dual_clip, a.loss_agg, norm,
                                       a.policy_ratio, a.policy_loss, is_weights)
            logs.add(**{"actor/pg_loss": loss, "actor/pg_clipfrac": pg["clipfrac"] * weight,
                        "actor/ppo_kl": pg["approx_kl"] * weight})
            if a.dual_clip is not None:  # how often the dual clip bounds a negative advantage's loss
                logs.add(**{"actor/pg_clipfrac_lower": pg["clipfrac_lower"] * weight})
            entropy = ppo.aggregate_loss(entropy_tokens, m, a.loss_agg, norm)  # always logged
            if a.entropy_coef > 0:
                loss = loss - a.entropy_coef * entropy
            logs.add(**{"actor/entropy": entropy})
            if a.kl_loss_coef > 0:
                kl_tokens = ppo.kl_penalty(logprobs, exp["ref_logprobs"][idx], "k3")
                kl_loss = ppo.aggregate_loss(kl_tokens, m, a.loss_agg, norm)
                loss = loss + a.kl_loss_coef * kl_loss
                logs.add(**{"actor/kl_loss": kl_loss})
            backward(loss)
        stats.add(**logs.sums, **{"actor/grad_norm": step(optimizer, actor)})
    return stats.result()


def normalizer(mb_mask: torch.Tensor, algo: PPOArgs, rollout: RolloutArgs) -> float:
    """Loss denominator of a mini-batch (summed micro-batch losses = the mini-batch loss).

    Valid tokens for `token-mean`, non-empty sequences for the `seq-mean*` modes, times the constant
    `max_new_tokens` for Dr. GRPO's `seq-mean-token-sum-norm`.

    Args:
        mb_mask: Response mask (n, R) of the mini-batch, 1 = a response token trained on.
        algo: `loss_agg`.
        rollout: `max_new_tokens`.
    """
    if algo.loss_agg == "token-mean":
        return float(mb_mask.sum())
    sequences = float(mb_mask.bool().any(-1).sum())
    return sequences * rollout.max_new_tokens if algo.loss_agg.endswith("-norm") else sequences


def share(micro_mask: torch.Tensor, mb_tokens: torch.Tensor) -> torch.Tensor:
    """Weight of a micro-batch's token-mean metrics (clip fractions, ppo_kl) in the mini-batch's mean.

    Its share of the mini-batch's valid tokens, whatever the loss aggregation. A device scalar: no host sync.

    Args:
        micro_mask: Response mask (m, R) of the micro-batch.
        mb_tokens: Valid tokens of its mini-batch (a scalar tensor).
    """
    return micro_mask.sum() / mb_tokens.clamp(min=1)


def minibatches(n: int, algo: PPOArgs, device: torch.device) -> Iterator[torch.Tensor]:
    """Shuffled mini-batch indices (`mini_batch_size`,) for `ppo_epochs` passes over `n` sequences."""
    for _ in range(algo.ppo_epochs):
        perm = torch.randperm(n, device=device)
        yield from perm.split(algo.mini_batch_size)


def in_row_order(parts: list[tuple[torch.Tensor, torch.Tensor]]) -> torch.Tensor:
    """Concatenate (row indices, rows) of micro-batches that cover the rows 0..N-1 once, back in row order."""
    rows = torch.cat([idx for idx, _ in parts])
    return torch.cat([x for _, x in parts])[torch.argsort(rows)]


class _Sum:
    """Sums of scalar metrics over the micro-batches of one mini-batch, kept on the device (no sync per micro-batch)."""

    def __init__(self) -> None:
        self._sums: dict[str, torch.Tensor] = {}

    def add(self, **values: torch.Tensor) -> None:
        for k, v in values.items():
            self._sums[k] = self._sums.get(k, 0.0) + v.detach()

    @property
    def sums(self) -> dict[str, float]:
        return {k: float(v) for k, v in self._sums.items()}


class _Mean:
    """Running means of scalar metrics over the mini-batches of one iteration."""

    def __init__(self) -> None:
        self.sums: dict[str, float] = {}
        self.counts: dict[str, int] = {}

    def add(self, **values: float) -> None:
        for k, v in values.items():
            self.sums[k] = self.sums.get(k, 0.0) + v
            self.counts[k] = self.counts.get(k, 0) + 1

    def result(self) -> dict[str, float]:
        return {k: self.sums[k] / self.counts[k] for k in self.sums}
