"""The reward side of a PPO iteration's experience: shaped scores and DAPO's dynamic sampling.

`PPOModule` calls these between the rollout and the forward passes; they hold no model.

    scores = shaped_scores(results, roll, reward_args, max_new_tokens)
    buffer = GroupBuffer(n=4, prompts_wanted=64)
    buffer.add(roll, results, problems)   # keeps the prompts whose 4 pass rates differ
    if buffer.full or rounds == cap: roll, results, problems = buffer.take(pad_id)
"""

from __future__ import annotations

import dataclasses

import torch
import torch.nn.functional as F

from lit_codegen import ppo
from lit_codegen.args import RewardArgs
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
