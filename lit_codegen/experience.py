"""A PPO iteration's experience: shaped scores, DAPO's dynamic sampling, advantages and the update's batch.

`PPOModule` calls these between the rollout and the update; they hold no model (the forward passes that give the
log-probs and values are `lit_codegen.update`'s).

    scores = shaped_scores(results, roll, reward_args, max_new_tokens)
    buffer = GroupBuffer(n=4, prompts_wanted=64)
    buffer.add(roll, results, problems)   # keeps the prompts whose 4 pass rates differ
    if buffer.full or rounds == cap: roll, results, problems = buffer.take(pad_id)
    # DynamicSampling does the above round by round, in step with the other data-parallel ranks
    advantages, returns = estimate_advantages(scores, values, kl, mask, algo, n, kl_coef, all_ranks_sum)
    exp, metrics = training_batch(roll, seq, attn, pos, mask, old_logprobs, ref_logprobs, values, advantages,
                                  returns, algo)
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

import torch
import torch.nn.functional as F

from lit_codegen import ppo
from lit_codegen.args import PPOArgs, RewardArgs
from lit_codegen.data.prompts import has_code_block
from lit_codegen.rollout import Rollout


def problem_rows(batch: dict, prompt_index: list[int]) -> list[dict]:
    """The dataset row of each response's prompt, as Python values; the token tensors are left out.

    The batch's per-prompt columns: `problem_id`, `difficulty`, `input_output`, `data_source`, ...
    """
    columns = {k: v.tolist() if torch.is_tensor(v) else v for k, v in batch.items()
               if not (torch.is_tensor(v) and v.dim() != 1)}
    return [{k: v[i] for k, v in columns.items()} for i in prompt_index]


def shaped_scores(results: list, roll: Rollout, reward: RewardArgs, max_new_tokens: int,
                  base: list[float] | None = None) -> torch.Tensor:
    """Terminal reward (N,) of each response: its pass rate (or `base`), plus the shaping terms switched on.

    `reward.no_code_penalty` where a response has no fenced python block; DAPO's soft overlong punishment
    (`ppo.overlong_penalty`, `reward.overlong_buffer_len` > 0) on the response length, EOS included.

    Args:
        results: N evaluator results (`.pass_rate`).
        base: N values replacing the pass rates (`reward.reward_fn`); None = the pass rates.
        roll: The rollout they score (texts, response_mask).
        reward: The reward settings.
        max_new_tokens: The generation limit the overlong window ends at.
    """
    scores = torch.tensor(base if base is not None else [res.pass_rate for res in results], dtype=torch.float32)
    if reward.no_code_penalty:
        no_code = torch.tensor([not has_code_block(t) for t in roll.texts])  # the chat template asks for one
        scores = scores + reward.no_code_penalty * no_code
    if reward.overlong_buffer_len:
        lengths = roll.response_mask.sum(-1).cpu()
        scores = scores + ppo.overlong_penalty(lengths, max_new_tokens, reward.overlong_buffer_len,
                                               reward.overlong_penalty_factor)
    return scores


def select_rows(roll: Rollout, rows: torch.Tensor) -> Rollout:
    """The rollout of the given rows (N' indices, whole prompt groups), prompts renumbered from 0 in order."""
    rows = rows.to(roll.prompt_index.device)
    kept_prompts = roll.prompt_index[rows]
    renumbered = torch.unique_consecutive(kept_prompts, return_inverse=True)[1]
    return dataclasses.replace(
        roll, prompt_ids=roll.prompt_ids[rows], prompt_mask=roll.prompt_mask[rows],
        response_ids=roll.response_ids[rows], response_mask=roll.response_mask[rows],
        texts=[roll.texts[i] for i in rows.tolist()], prompt_index=renumbered, truncated=roll.truncated[rows],
        logprobs=None if roll.logprobs is None else roll.logprobs[rows])


def concat_rollouts(rolls: list[Rollout], pad_id: int) -> Rollout:
    """One rollout of several (e.g. generation rounds): prompts re-padded on the left, responses on the right.

    Prompt indices continue from one rollout to the next, so the groups stay apart. `logprobs` is kept only if
    every rollout has it.

    Args:
        rolls: Rollouts, each (N_i, P_i) prompts and (N_i, R_i) responses.
        pad_id: Token id of the padding (masked out: never attended to).
    """
    if len(rolls) == 1:
        return rolls[0]
    p_width = max(r.prompt_ids.shape[1] for r in rolls)
    r_width = max(r.response_ids.shape[1] for r in rolls)

    def left(x, value):
        return F.pad(x, (p_width - x.shape[1], 0), value=value)

    def right(x, value):
        return F.pad(x, (0, r_width - x.shape[1]), value=value)

    offsets = torch.tensor([0] + [int(r.prompt_index.max()) + 1 for r in rolls[:-1]]).cumsum(0).tolist()
    has_logprobs = all(r.logprobs is not None for r in rolls)
    return Rollout(
        prompt_ids=torch.cat([left(r.prompt_ids, pad_id) for r in rolls]),
        prompt_mask=torch.cat([left(r.prompt_mask, 0) for r in rolls]),
        response_ids=torch.cat([right(r.response_ids, pad_id) for r in rolls]),
        response_mask=torch.cat([right(r.response_mask, 0) for r in rolls]),
        texts=[t for r in rolls for t in r.texts],
        prompt_index=torch.cat([r.prompt_index + off for r, off in zip(rolls, offsets)]),
        truncated=torch.cat([r.truncated for r in rolls]),
        logprobs=torch.cat([right(r.logprobs, 0.0) for r in rolls]) if has_logprobs else None,
    )


class GroupBuffer:
    """DAPO's dynamic sampling (Yu et al. 2025): prompt groups whose `n` pass rates differ, over several rounds.

    Rounds are added until `prompts_wanted` prompts are held.
    Each round's rows stay with their own results and problems (nothing is re-scored or re-ordered);
    `take` returns the first `prompts_wanted` kept groups in the order they were generated (the surplus of the last
    round is dropped, as in DAPO) and empties the buffer. When fewer were kept (the cap on rounds was reached), the
    batch is topped up with the dropped groups of the last round, so that every data-parallel rank trains on the same
    number of sequences (their collectives must match); under GRPO-style estimators those groups have zero advantage.
    The filter compares the pass rates (DAPO filters on accuracy), not the shaped scores. Counters of the rounds since
    the last `take` are in `stats()`.
    """

    def __init__(self, n: int, prompts_wanted: int) -> None:
        self.n, self.prompts_wanted = n, prompts_wanted
        self._parts: list[tuple[Rollout, list, list]] = []
        self._dropped_last: tuple[Rollout, list, list] | None = None  # the last round's dropped groups
        self.rounds = self.generated = self.dropped = 0

    @property
    def prompts(self) -> int:
        """Prompt groups held."""
        return sum(len(part[1]) for part in self._parts) // self.n

    @property
    def full(self) -> bool:
        """Whether `prompts_wanted` prompt groups are held."""
        return self.prompts >= self.prompts_wanted

    def add(self, roll: Rollout, results: list, problems: list) -> None:
        """Keep the groups of one round whose `n` pass rates are not all equal.

        Args:
            roll: The round's rollout (N rows, N = prompts x n, groups consecutive).
            results: Its N evaluator results.
            problems: N dataset rows of the responses' prompts (see `problem_rows`).
        """
        pass_rates = torch.tensor([r.pass_rate for r in results], dtype=torch.float64)
        keep = ppo.keep_groups(pass_rates, self.n)
        self.rounds += 1
        self.generated += len(results) // self.n
        self.dropped += int((~keep).sum()) // self.n
        self._dropped_last = None
        for part, rows in ((self._parts, torch.nonzero(keep)), (None, torch.nonzero(~keep))):
            rows = rows.squeeze(-1)
            if len(rows):
                chosen = (select_rows(roll, rows), [results[i] for i in rows.tolist()],
                          [problems[i] for i in rows.tolist()])
                if part is None:
                    self._dropped_last = chosen
                else:
                    part.append(chosen)

    def take(self, pad_id: int) -> tuple[Rollout, list, list] | None:
        """`prompts_wanted` groups: (rollout, results, problems); None if nothing was added.

        The first `prompts_wanted` kept groups, topped up from the last round's dropped groups when fewer were kept.
        The buffer and its counters start again.
        """
        parts, self._parts = self._parts, []
        if self.prompts_wanted > sum(len(p[1]) for p in parts) // self.n and self._dropped_last is not None:
            parts.append(self._dropped_last)  # the cap was reached: fill up with the last round's other groups
        self._dropped_last = None
        self.rounds = self.generated = self.dropped = 0
        if not parts:
            return None
        roll = concat_rollouts([p[0] for p in parts], pad_id)
        results = [r for p in parts for r in p[1]]
        problems = [d for p in parts for d in p[2]]
        rows = self.prompts_wanted * self.n
        if len(results) > rows:
            roll = select_rows(roll, torch.arange(rows))
            results, problems = results[:rows], problems[:rows]
        return roll, results, problems

    def stats(self) -> dict[str, float]:
        """Counters since the last `take`: generation rounds, prompts generated and dropped (all-equal groups)."""
        return {"rounds": float(self.rounds), "generated": float(self.generated), "dropped": float(self.dropped)}


def sequences(roll: Rollout) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Prompt + response ids, attention mask and position ids (N, P+R) that match generation's positions."""
    seq = torch.cat([roll.prompt_ids, roll.response_ids], dim=1)
    attn = torch.cat([roll.prompt_mask, roll.response_mask], dim=1).long()
    pos = (attn.cumsum(-1) - 1).clamp(min=0)
    return seq, attn, pos


def estimate_advantages(scores: torch.Tensor, values: torch.Tensor | None, kl: torch.Tensor | None,
                        mask: torch.Tensor, algo: PPOArgs, n: int, kl_coef: float,
                        all_ranks_sum: Callable[[torch.Tensor], torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """Advantages and returns (N, R) with the configured estimator (`algo.adv_estimator`).

    Args:
        scores: Terminal reward (N,) of each response (`shaped_scores`).
        values: Critic values (N, R), zero on padding; None without a critic.
        kl: Per-token KL penalty (N, R) to the reference, zero on padding; None without a reference.
        mask: Response mask (N, R), 1 = a response token trained on.
        algo: PPO settings (`adv_estimator`, `gamma`, `lam`, `whiten_advantages`, `grpo_norm_by_std`).
        n: Responses per prompt (groups are consecutive rows).
        kl_coef: The KL controller's current coefficient.
        all_ranks_sum: A tensor summed over the data-parallel ranks (whitening uses the moments of the whole batch);
            every rank must call it.
    """
    a = algo
    if a.adv_estimator in ("gae", "reinforce_plus_plus"):
        rewards = ppo.terminal_token_rewards(scores, mask, kl, kl_coef)
        if a.adv_estimator == "reinforce_plus_plus":  # whitened over the batch of all ranks, like GAE's
            return ppo.reinforce_plus_plus_advantages(rewards, mask, a.gamma, all_ranks_sum)
        advantages, returns = ppo.compute_gae(rewards, values, mask, a.gamma, a.lam)
        if a.whiten_advantages:  # over the whole batch of all ranks, as on one device
            moments = ppo.moments_from_sums(all_ranks_sum(ppo.masked_sums(advantages, mask)))
            advantages = ppo.masked_whiten(advantages, mask, moments=moments)
        return advantages * mask, returns
    if kl is not None:  # the group baselines compare whole-sequence rewards: score minus the summed KL penalty
        scores = scores - kl_coef * ppo.masked_sum(kl, mask, dim=-1)
    if a.adv_estimator == "grpo":
        advantages = ppo.grpo_advantages(scores, n, mask, norm_by_std=a.grpo_norm_by_std)
    elif a.adv_estimator == "rloo":
        advantages = ppo.rloo_advantages(scores, n, mask)
    else:
        advantages = ppo.reinforce_plus_plus_baseline_advantages(scores, n, mask, all_ranks_sum)
    return advantages, advantages


def training_batch(roll: Rollout, seq: torch.Tensor, attn: torch.Tensor, pos: torch.Tensor, mask: torch.Tensor,
                   old_logprobs: torch.Tensor, ref_logprobs: torch.Tensor | None, values: torch.Tensor | None,
                   advantages: torch.Tensor, returns: torch.Tensor,
                   algo: PPOArgs) -> tuple[dict, dict[str, float]]:
    """The update's inputs (`lit_codegen.update`) and the rollout-correction metrics.

    With `algo.filter_truncated` (DAPO's overlong filtering) truncated responses add no loss; when the sampler
    returned its log-probs (`roll.logprobs`), the mismatch to the trainer's is measured (`rollout_corr/*`) and with
    `algo.rollout_is` the importance weights `is_weights` (N, R) correct for it.

    Args:
        roll: The rollout (`truncated` (N,), `logprobs` (N, R) or None, `response_ids` (N, R)).
        seq: Prompt + response ids (N, P+R) (`sequences`).
        attn: Their attention mask (N, P+R).
        pos: Their position ids (N, P+R).
        mask: Response mask (N, R), 1 = a response token trained on.
        old_logprobs: The actor's log-probs (N, R) before the update.
        ref_logprobs: The reference policy's (N, R), or None.
        values: Critic values (N, R) or None.
        advantages: Advantages (N, R).
        returns: The critic's targets (N, R).
        algo: `filter_truncated`, `rollout_is`, `rollout_is_threshold`.

    Returns:
        The experience dict (keys as the arguments, plus `is_weights` when on) and the `rollout_corr/*` metrics.
    """
    exp = dict(seq=seq, attn=attn, pos=pos, mask=mask, old_logprobs=old_logprobs, ref_logprobs=ref_logprobs,
               values=values, advantages=advantages, returns=returns, response_ids=roll.response_ids)
    metrics: dict[str, float] = {}
    if algo.filter_truncated:  # DAPO's overlong filtering: truncated responses add no loss (they kept their baseline)
        exp["mask"] = mask * ~roll.truncated[:, None].to(mask.device)
    if roll.logprobs is not None:  # rollout correction: how far the sampler's distribution is from the trainer's
        sampler_logprobs = roll.logprobs.to(mask.device)
        metrics = {f"rollout_corr/{k}": float(v)
                   for k, v in ppo.rollout_mismatch_metrics(old_logprobs, sampler_logprobs, mask).items()}
        if algo.rollout_is is not None:
            exp["is_weights"] = ppo.rollout_is_weights(old_logprobs, sampler_logprobs, mask, algo.rollout_is,
                                                       algo.rollout_is_threshold)
    return exp, metrics


class DynamicSampling:
    """DAPO's dynamic sampling over prompt batches: a `GroupBuffer` filled round by round, one round per batch.

    A batch of groups is complete once every data-parallel rank holds as many prompts as the first round had, or
    after `max_rounds` rounds (0 = no cap). The time of the earlier rounds is added to the last round's, and the
    round counters of the batch taken are `metrics` (`train/num_gen_batches`, `train/num_generated_prompts`,
    `train/num_dropped_prompts`; empty until the first batch).
    """

    def __init__(self, n: int, max_rounds: int) -> None:
        self.buffer = GroupBuffer(n, 1)  # sized by each batch's first round
        self.max_rounds = max_rounds
        self.metrics: dict[str, float] = {}
        self._timing: dict[str, float] = {}  # the earlier rounds' phase times

    def collect(self, roll: Rollout, results: list, problems: list, timing: dict[str, float],
                all_ranks_sum: Callable[[torch.Tensor], torch.Tensor], pad_id: int) -> tuple | None:
        """Buffer this round's groups whose pass rates differ; None until the batch is complete.

        Args:
            roll: The round's rollout (N rows, groups of `n` consecutive).
            results: Its N evaluator results.
            problems: N dataset rows of the responses' prompts (`problem_rows`).
            timing: The round's phase times in seconds, with its `step` so far.
            all_ranks_sum: A tensor summed over the data-parallel ranks; every rank must call it (once per round).
            pad_id: Token id of the padding.

        Returns:
            None, or (rollout, results, problems, timing) of a batch of groups (topped up with dropped ones at the
            cap, see `GroupBuffer`); its timing adds up every round's, but the last round's `step`, which the caller
            measures to the end of the iteration.
        """
        buffer = self.buffer
        if buffer.rounds == 0:  # a new batch: as many prompts as the data module's batch
            buffer.prompts_wanted = int(roll.prompt_index.max()) + 1
        buffer.add(roll, results, problems)
        short = torch.tensor([float(not buffer.full)])
        rounds_left = self.max_rounds == 0 or buffer.rounds < self.max_rounds
        if all_ranks_sum(short).item() > 0 and rounds_left:
            self._timing = {k: self._timing.get(k, 0.0) + v for k, v in timing.items()}
            return None
        stats = buffer.stats()
        timing.pop("step")  # the last round's is measured to the end of the iteration
        timing = {k: timing.get(k, 0.0) + self._timing.get(k, 0.0) for k in timing | self._timing}
        self._timing = {}
        taken = buffer.take(pad_id)
        self.metrics = {"train/num_gen_batches": stats["rounds"], "train/num_generated_prompts": stats["generated"],
                        "train/num_dropped_prompts": stats["dropped"]}
        return *taken, timing
