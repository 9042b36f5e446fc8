"""Reward shaping, DAPO's dynamic sampling buffer and rollout batches (lit_codegen.experience), and their wiring."""

from types import SimpleNamespace

import lightning as L
import pytest
import torch
from test_module import _record_experience, _record_update_metrics, make, trainer

from lit_codegen.args import RewardArgs
from lit_codegen.experience import GroupBuffer, concat_rollouts, select_rows, sequences, shaped_scores
from lit_codegen.rollout import Rollout


def rollout(prompt_lengths, response_lengths, n, width_p=None, width_r=None, first_id=1):
    """A rollout of len(prompt_lengths) prompts x n, ids counting up from `first_id` (pad 0) so rows are traceable."""
    width_p = width_p or max(prompt_lengths)
    width_r = width_r or max(response_lengths)
    rows = len(prompt_lengths) * n
    prompt_mask = torch.tensor([[0] * (width_p - p) + [1] * p for p in prompt_lengths]).repeat_interleave(n, 0)
    response_mask = torch.tensor([[1] * r + [0] * (width_r - r) for r in response_lengths])
    ids = torch.arange(first_id, first_id + rows)[:, None]
    return Rollout(prompt_ids=ids * prompt_mask, prompt_mask=prompt_mask,
                   response_ids=(ids + 100) * response_mask, response_mask=response_mask,
                   texts=[f"t{first_id + i}" for i in range(rows)],
                   prompt_index=torch.arange(len(prompt_lengths)).repeat_interleave(n),
                   truncated=torch.tensor([r == width_r for r in response_lengths]),
                   logprobs=-0.5 * response_mask.float())


def test_concat_rollouts_repads_prompts_left_responses_right_and_keeps_groups_apart():
    a = rollout([2, 3], [1, 4, 2, 2], n=2)
    b = rollout([5], [6, 3], n=2, first_id=10)
    roll = concat_rollouts([a, b], pad_id=0)
    assert roll.prompt_ids.tolist() == [[0, 0, 0, 1, 1], [0, 0, 0, 2, 2], [0, 0, 3, 3, 3], [0, 0, 4, 4, 4],
                                        [10] * 5, [11] * 5]
    assert roll.prompt_mask.sum(-1).tolist() == [2, 2, 3, 3, 5, 5]
    assert roll.response_mask.sum(-1).tolist() == [1, 4, 2, 2, 6, 3] and roll.response_ids.shape == (6, 6)
    assert roll.response_ids[0].tolist() == [101, 0, 0, 0, 0, 0]
    assert roll.prompt_index.tolist() == [0, 0, 1, 1, 2, 2]  # b's prompt 0 is the batch's prompt 2
    assert roll.texts == ["t1", "t2", "t3", "t4", "t10", "t11"]
    assert roll.truncated.tolist() == [False, True, False, False, True, False]
    assert roll.logprobs.tolist()[0] == [-0.5, 0, 0, 0, 0, 0]


def test_select_rows_renumbers_the_kept_prompts():
    roll = select_rows(rollout([2, 3, 4], [1, 2, 3, 4, 5, 6], n=2), torch.tensor([2, 3, 4, 5]))
    assert roll.prompt_index.tolist() == [0, 0, 1, 1] and roll.texts == ["t3", "t4", "t5", "t6"]
    assert roll.response_mask.sum(-1).tolist() == [3, 4, 5, 6]


def results(*pass_rates):
    return [SimpleNamespace(pass_rate=p) for p in pass_rates]


def test_group_buffer_keeps_differing_groups_in_order_until_full_and_drops_the_surplus():
    buffer = GroupBuffer(n=2, prompts_wanted=3)
    # round 1: prompt 0 all-fail, prompt 1 mixed, prompt 2 all-pass -> keeps prompt 1
    buffer.add(rollout([1, 1, 1], [1] * 6, n=2), results(0, 0, 1, 0, 1, 1), ["a"] * 6)
    assert buffer.prompts == 1 and not buffer.full
    # round 2: both prompts mixed -> 3 held
    buffer.add(rollout([1, 1], [1] * 4, n=2, first_id=20), results(0.5, 0, 0.2, 0.3), ["b"] * 4)
    assert buffer.full and buffer.stats() == {"rounds": 2.0, "generated": 5.0, "dropped": 2.0}
    roll, res, problems = buffer.take(pad_id=0)
    assert roll.texts == ["t3", "t4", "t20", "t21", "t22", "t23"]  # each round's rows with their own results
    assert [r.pass_rate for r in res] == [1, 0, 0.5, 0, 0.2, 0.3] and problems == ["a"] * 2 + ["b"] * 4
    assert roll.prompt_index.tolist() == [0, 0, 1, 1, 2, 2]
    assert buffer.prompts == 0 and buffer.stats()["rounds"] == 0  # emptied
    # surplus: 2 wanted, 3 kept -> the first 2 in generation order
    buffer.prompts_wanted = 2
    buffer.add(rollout([1, 1, 1], [1] * 6, n=2), results(0, 1, 0, 1, 0, 1), ["c"] * 6)
    assert buffer.take(pad_id=0)[0].texts == ["t1", "t2", "t3", "t4"]
    assert buffer.take(pad_id=0) is None  # nothing added
    # short (the cap on rounds was reached): topped up with the last round's dropped groups, in order
    buffer.prompts_wanted = 3
    buffer.add(rollout([1, 1], [1] * 4, n=2), results(0, 1, 1, 1), ["e"] * 4)  # keeps prompt 0
    buffer.add(rollout([1, 1], [1] * 4, n=2, first_id=30), results(0, 0, 1, 1), ["f"] * 4)
    roll, res, problems = buffer.take(pad_id=0)
    assert roll.texts == ["t1", "t2", "t30", "t31", "t32", "t33"] and problems == ["e"] * 2 + ["f"] * 4


def test_overlong_penalty_in_the_shaped_scores():
    """DAPO's soft punishment with max 12 tokens and a window of 4: lengths 8, 10, 12 lose 0, 0.5, 1 (x factor)."""
    roll = SimpleNamespace(texts=["x"] * 3, response_mask=torch.tensor([[1] * 8 + [0] * 4, [1] * 10 + [0] * 2,
                                                                         [1] * 12]))
    reward = RewardArgs(overlong_buffer_len=4, overlong_penalty_factor=0.5)
    scores = shaped_scores(results(1.0, 1.0, 0.25), roll, reward, max_new_tokens=12)
    torch.testing.assert_close(scores, torch.tensor([1.0, 0.75, -0.25]))
    assert shaped_scores(results(1.0), SimpleNamespace(texts=["x"], response_mask=torch.ones(1, 12)),
                         RewardArgs(), 12).tolist() == [1.0]  # off by default


class _RoundEvaluator:
    """Scores each call's programs with the next list of pass rates (one list per generation round)."""

    def __init__(self, rounds):
        self.rounds = list(rounds)

    def evaluate_async(self, programs, tests, max_tests=None):
        from concurrent.futures import Future

        future = Future()
        future.set_result([SimpleNamespace(pass_rate=r, outcomes=[]) for r in self.rounds.pop(0)])
        return future

    def close(self):
        pass


def test_dynamic_sampling_refills_the_batch_from_the_next_prompt_batches():
    """Batches of 4 prompts x 2: round 1 keeps 1 prompt, round 2 keeps 2, round 3 keeps 3 -> the iteration trains on
    4 prompts (1 + 2 + the first of round 3) with the pass rates they were scored with, after 3 data batches."""
    L.seed_everything(0)
    module, data = make(adv_estimator="grpo", n=2, kl_coef=0.0, filter_groups=True, mini=8, micro=8)
    module._evaluator = evaluator = _RoundEvaluator([
        [0, 0, 1, 0, 1, 1, 0.5, 0.5],  # prompt 1 differs
        [0.2, 0.1, 0, 0, 1, 0, 0, 0],  # prompts 0 and 2
        [1, 0, 0, 1, 0.3, 0.6, 1, 1],  # prompts 0, 1, 2: only 0 is needed
    ])
    seen, logged = _record_experience(module), {}
    log_dict = module.log_dict
    module.log_dict = lambda metrics, **kw: logged.update(metrics) or log_dict(metrics, **kw)
    _record_update_metrics(module)
    t = trainer(1)
    t.fit(module, datamodule=data)
    assert module.ppo_iteration == 1 and t.global_step == 1 and not evaluator.rounds
    exp = seen[0]
    assert exp["seq"].shape[0] == 8
    # GRPO advantages of the kept groups, in generation order: 1 vs 0, 0.2 vs 0.1, 1 vs 0, 1 vs 0
    signs = (exp["advantages"] * exp["mask"]).sum(-1).sign().tolist()
    assert signs == [1, -1, 1, -1, 1, -1, 1, -1]
    assert logged["train/num_gen_batches"] == 3 and logged["train/num_generated_prompts"] == 12
    assert logged["train/num_dropped_prompts"] == 6
    assert logged["critic/pass_rate/mean"] == pytest.approx((1 + 0 + 0.2 + 0.1 + 1 + 0 + 1 + 0) / 8)


def test_dynamic_sampling_adds_up_the_time_of_every_round(monkeypatch):
    """Three iterations of 3, 2 and 1 generation rounds, on a clock that only moves (1 s) while a round generates:
    the logged timing_s/gen (and timing_s/step) of an iteration is the sum of its rounds' times."""
    import lit_codegen.module

    clock = [0.0]
    monkeypatch.setattr(lit_codegen.module, "time", SimpleNamespace(perf_counter=lambda: clock[0]))
    L.seed_everything(0)
    module, data = make(adv_estimator="grpo", n=2, kl_coef=0.0, filter_groups=True, mini=8, micro=8)
    module._evaluator = _RoundEvaluator([[0, 0, 1, 0, 1, 1, 1, 1], [0, 1, 0, 1, 1, 1, 1, 1], [0, 1] * 4,
                                         [0, 1, 0, 1, 0, 0, 0, 0], [0, 1, 0, 1, 0, 0, 0, 0], [0, 1] * 4])
    generate, logged = module.generate, []

    def one_second_generation(batch, params):
        clock[0] += 1.0
        return generate(batch, params)

    module.generate = one_second_generation
    log_dict = module.log_dict
    module.log_dict = lambda metrics, **kw: logged.append(dict(metrics)) or log_dict(metrics, **kw)
    trainer(3).fit(module, datamodule=data)
    iterations = [m for m in logged if "timing_s/gen" in m]
    assert [(m["train/num_gen_batches"], m["timing_s/gen"], m["timing_s/step"]) for m in iterations] == [
        (3, 3.0, 3.0), (2, 2.0, 2.0), (1, 1.0, 1.0)]


@pytest.mark.parametrize("cap", [1, 2])
def test_dynamic_sampling_stops_at_the_cap_and_fills_the_batch_with_dropped_groups(cap):
    """At the cap the iteration trains on a full batch (every rank the same number of sequences): the kept group
    first, then the last round's dropped ones, which have zero GRPO advantage."""
    L.seed_everything(0)
    module, data = make(adv_estimator="grpo", n=2, kl_coef=0.0, filter_groups=True, max_num_gen_batches=cap, mini=8,
                        micro=8)
    module._evaluator = evaluator = _RoundEvaluator([[0, 1] + [0] * 6, [1] * 8])  # 1 prompt kept of 8 generated
    seen = _record_experience(module)
    trainer(1).fit(module, datamodule=data)
    exp = seen[0]
    assert module.ppo_iteration == 1 and exp["seq"].shape[0] == 8 and len(evaluator.rounds) == 2 - cap
    per_row = (exp["advantages"] * exp["mask"]).sum(-1)
    assert per_row[0] < 0 < per_row[1] and (per_row[2:] == 0).all()


def test_truncated_responses_add_no_loss_with_filter_truncated():
    L.seed_everything(0)
    module, data = make(adv_estimator="grpo", n=2, kl_coef=0.0, filter_truncated=True)
    seen = []
    update = module._update_actor
    module._update_actor = lambda exp, p_len: seen.append(exp) or update(exp, p_len)
    trainer(1).fit(module, datamodule=data)
    exp = seen[0]
    truncated = exp["mask"].sum(-1) == 0
    assert truncated.any()  # the untrained tiny model rarely stops within 12 tokens
    lengths = (exp["response_ids"] != module.tokenizer.pad_token_id).sum(-1)
    assert (lengths[truncated] == 12).all()


def test_rollout_correction_weights_and_mismatch_metrics():
    """With the sampler's log-probs on the rollout (vLLM reports them), each token's loss is weighted by
    min(exp(old - sampler), cap) and the mismatch is logged."""
    import dataclasses

    L.seed_everything(0)
    module, data = make(adv_estimator="grpo", n=2, kl_coef=0.0, mini=8, micro=4)
    module.algo.rollout_is, module.algo.rollout_is_threshold = "token", 1.5
    generate = module.generate

    def with_sampler_logprobs(batch, params):  # certain of every token it drew (log p = 0), or on odd rows: -20
        roll = generate(batch, params)
        odd_rows = (torch.arange(len(roll.response_mask)) % 2)[:, None]
        return dataclasses.replace(roll, logprobs=roll.response_mask * -20.0 * odd_rows)

    module.generate = with_sampler_logprobs
    module._evaluator = _RoundEvaluator([[1.0, 0.0, 0.5, 0.25, 0.0, 1.0, 0.75, 0.0]])
    seen, logged = _record_experience(module), {}
    updates = _record_update_metrics(module)
    log_dict = module.log_dict
    module.log_dict = lambda metrics, **kw: logged.update(metrics) or log_dict(metrics, **kw)
    trainer(1).fit(module, datamodule=data)
    exp = seen[0]
    mask = exp["mask"]
    sampler = -20.0 * (torch.arange(len(mask)) % 2)[:, None] * mask
    expected = torch.clamp(torch.exp(exp["old_logprobs"] - sampler), max=1.5) * mask
    assert (expected[1::2] == 1.5 * mask[1::2]).all() and (expected[::2] < 1).all()  # capped, and not
    torch.testing.assert_close(exp["is_weights"] * mask, expected)
    # the first (on-policy, ratio 1) mini-batch's token-mean loss is -A weighted by them
    weighted = -(exp["advantages"] * expected).sum() / mask.sum()
    assert updates["actor/pg_loss"] == pytest.approx(float(weighted), rel=1e-4)
    diff = (exp["old_logprobs"] - sampler)[mask.bool()].abs().mean()
    assert logged["rollout_corr/logprob_abs_diff"] == pytest.approx(float(diff), rel=1e-4)


def test_sequences_positions_count_each_row_from_its_first_token():
    """Left-padded prompts, right-padded responses: positions start at 0 on a row's first real token, as generation
    numbered them (padding repeats a neighbour's position; it is masked)."""
    roll = Rollout(prompt_ids=torch.tensor([[0, 5, 6], [7, 8, 9]]), prompt_mask=torch.tensor([[0, 1, 1], [1, 1, 1]]),
                   response_ids=torch.tensor([[3, 4], [2, 0]]), response_mask=torch.tensor([[1, 1], [1, 0]]),
                   texts=["", ""], prompt_index=torch.tensor([0, 1]), truncated=torch.tensor([False, False]))
    seq, attn, pos = sequences(roll)
    assert seq.tolist() == [[0, 5, 6, 3, 4], [7, 8, 9, 2, 0]]
    assert attn.tolist() == [[0, 1, 1, 1, 1], [1, 1, 1, 1, 0]] and attn.dtype == torch.long
    assert pos.tolist() == [[0, 0, 1, 2, 3], [0, 1, 2, 3, 3]]
