"""Known-answer and parity tests of `lit_codegen.ppo`: every expected number below is computed by hand.

Run: `pytest tests/test_ppo_math.py`.
"""

import math
import re

import pytest
import torch

from lit_codegen import ppo

D = torch.float64
LN2 = math.log(2.0)


def t(values, dtype=D):
    return torch.tensor(values, dtype=dtype)


def close(actual, expected, atol=1e-9):
    torch.testing.assert_close(actual, torch.as_tensor(expected, dtype=actual.dtype), atol=atol, rtol=0)


# Shared 3x3 example: row 0 partly padded, row 1 one token, row 2 all padding.
X = t([[1.0, 2.0, 3.0], [4.0, 5.0, 6.0], [7.0, 8.0, 9.0]])
MASK = t([[1, 1, 0], [1, 0, 0], [0, 0, 0]])


# ----------------------------------------------------------------------------------------------------------------
# Masked reductions
# ----------------------------------------------------------------------------------------------------------------


def test_masked_sum():
    close(ppo.masked_sum(X, MASK), 7.0)
    close(ppo.masked_sum(X, MASK, dim=-1), [3.0, 4.0, 0.0])
    close(ppo.masked_sum(X, MASK, dim=0), [5.0, 2.0, 0.0])


def test_masked_sum_keeps_an_integer_dtype():
    counts = X.long()
    assert ppo.masked_sum(counts, MASK).dtype == torch.int64
    assert ppo.masked_sum(counts, MASK).item() == 7
    assert ppo.masked_sum(counts, MASK, dim=-1).tolist() == [3, 4, 0]


def test_masked_mean_all_masked_row_is_zero():
    close(ppo.masked_mean(X, MASK), 7.0 / 3.0)
    close(ppo.masked_mean(X, MASK, dim=-1), [1.5, 4.0, 0.0])
    close(ppo.masked_mean(X, torch.zeros_like(MASK)), 0.0)


def test_masked_reductions_ignore_inf_and_nan_in_padding():
    garbage = X.clone()
    garbage[0, 2], garbage[1, 1], garbage[2, 0] = float("nan"), float("inf"), -float("inf")
    close(ppo.masked_mean(garbage, MASK), 7.0 / 3.0)
    close(ppo.masked_var(garbage, MASK), 7.0 / 3.0)
    assert torch.isfinite(ppo.masked_whiten(garbage, MASK)).all()


def test_masked_var():
    # valid values 1, 2, 4: mean 7/3, squared deviations 16/9 + 1/9 + 25/9 = 14/3
    close(ppo.masked_var(X, MASK, unbiased=True), 7.0 / 3.0)
    close(ppo.masked_var(X, MASK, unbiased=False), 14.0 / 9.0)
    close(ppo.masked_var(X, torch.zeros_like(MASK)), 0.0)  # nothing valid: 0, not NaN
    single = t([[1, 0, 0], [0, 0, 0], [0, 0, 0]])
    close(ppo.masked_var(X, single), 0.0)  # one value, unbiased: 0, not NaN


def test_masked_var_and_moments_of_one_and_two_entries():
    two, one = t([[1.0, 0.0, 7.0]]), t([[0.0, 0.0, 4.0]])
    mask_two, mask_one = t([[1, 0, 1]]), t([[0, 0, 1]])
    # values 1 and 7: mean 4, squared deviations 9 + 9 = 18, unbiased / 1, biased / 2
    close(ppo.masked_var(two, mask_two), 18.0)
    close(ppo.masked_var(two, mask_two, unbiased=False), 9.0)
    close(torch.stack(ppo.moments_from_sums(ppo.masked_sums(two, mask_two))), [4.0, 18.0])
    close(torch.stack(ppo.moments_from_sums(ppo.masked_sums(one, mask_one))), [4.0, 0.0])  # one value: var 0


def test_masked_whiten():
    std = math.sqrt(7.0 / 3.0)
    expected = t([[-4 / 3, -1 / 3, 0.0], [5 / 3, 0.0, 0.0], [0.0, 0.0, 0.0]]) / std
    close(ppo.masked_whiten(X, MASK, eps=0.0), expected)
    shifted_back = expected + MASK * 7.0 / 3.0
    close(ppo.masked_whiten(X, MASK, shift_mean=False, eps=0.0), shifted_back)
    whitened = ppo.masked_whiten(X, MASK)
    close(ppo.masked_mean(whitened, MASK), 0.0, atol=1e-7)
    close(ppo.masked_var(whitened, MASK), 1.0, atol=1e-7)


def test_masked_sums_give_the_moments_of_the_whole_batch_from_its_parts():
    close(ppo.masked_sums(X, MASK), [7.0, 21.0, 3.0])  # valid values 1, 2, 4
    mean, var = ppo.moments_from_sums(ppo.masked_sums(X, MASK))
    close(mean, 7.0 / 3.0)
    close(var, 7.0 / 3.0)
    # two "ranks" holding rows 0 and 1-2: their summed sums give the moments of the whole batch
    parts = ppo.masked_sums(X[:1], MASK[:1]) + ppo.masked_sums(X[1:], MASK[1:])
    close(torch.stack(ppo.moments_from_sums(parts)), [7.0 / 3.0, 7.0 / 3.0])
    close(ppo.masked_whiten(X[1:], MASK[1:], eps=0.0, moments=ppo.moments_from_sums(parts)),
          [[(4.0 - 7.0 / 3.0) / math.sqrt(7.0 / 3.0), 0.0, 0.0], [0.0, 0.0, 0.0]])
    close(torch.stack(ppo.moments_from_sums(ppo.masked_sums(X, torch.zeros_like(MASK)))), [0.0, 0.0])


def test_masked_whiten_with_float_moments_keeps_float64_precision():
    x, mask = t([[0.3, 0.5, 99.0]]), t([[1, 1, 0]])
    # (0.3 - 0.1) / 0.2 and (0.5 - 0.1) / 0.2, without a float32 round trip of 0.1 and 0.04 (an error of ~1e-8)
    close(ppo.masked_whiten(x, mask, eps=0.0, moments=(0.1, 0.04)), [[1.0, 2.0, 0.0]], atol=1e-12)


def test_masked_whiten_degenerate_masks():
    close(ppo.masked_whiten(X, torch.zeros_like(MASK)), torch.zeros(3, 3))
    single = t([[0, 0, 0], [0, 1, 0], [0, 0, 0]])
    close(ppo.masked_whiten(X, single), torch.zeros(3, 3))


def test_aggregate_loss_modes():
    loss_mat = X
    mask = t([[1, 1, 1], [1, 0, 0], [0, 0, 0]])
    close(ppo.aggregate_loss(loss_mat, mask, "token-mean"), (1 + 2 + 3 + 4) / 4)
    close(ppo.aggregate_loss(loss_mat, mask, "seq-mean"), (2.0 + 4.0) / 2)  # the empty row is not counted
    close(ppo.aggregate_loss(loss_mat, mask, "token-mean", normalizer=8), 10 / 8)
    close(ppo.aggregate_loss(loss_mat, mask, "seq-mean", normalizer=4), 6 / 4)
    for mode in ("token-mean", "seq-mean"):
        close(ppo.aggregate_loss(loss_mat, torch.zeros_like(mask), mode), 0.0)
    with pytest.raises(ValueError, match="loss aggregation"):
        ppo.aggregate_loss(loss_mat, mask, "sum")


def test_aggregate_loss_defaults_to_token_mean_and_keeps_the_loss_dtype():
    mask = t([[1, 1, 1], [1, 0, 0], [0, 0, 0]])
    close(ppo.aggregate_loss(X, mask), (1 + 2 + 3 + 4) / 4)
    loss = ppo.aggregate_loss(X.to(torch.bfloat16), mask, "token-mean", normalizer=8.0)
    assert loss.dtype == torch.bfloat16  # a float normalizer does not promote a bf16 loss to float32
    assert loss.item() == 10 / 8


def test_aggregate_loss_normalizer_makes_micro_batches_add_up():
    torch.manual_seed(0)
    loss_mat = torch.randn(6, 5, dtype=D)
    mask = (torch.arange(5) < t([5, 3, 0, 1, 4, 2]).unsqueeze(-1)).to(D)
    for mode, count in (("token-mean", mask.sum()), ("seq-mean", (mask.sum(-1) > 0).sum())):
        whole = ppo.aggregate_loss(loss_mat, mask, mode)
        parts = sum(
            ppo.aggregate_loss(loss_mat[i : i + 2], mask[i : i + 2], mode, normalizer=float(count)) for i in (0, 2, 4)
        )
        close(parts, whole)


# ----------------------------------------------------------------------------------------------------------------
# Log-probs and entropy
# ----------------------------------------------------------------------------------------------------------------


def test_logprobs_from_logits_known_answer():
    logits = t([[[0.0, 0.0, LN2], [0.0, 0.0, LN2]], [[0.0, 0.0, 0.0], [5.0, 5.0, 5.0]]])
    labels = torch.tensor([[2, 0], [1, 2]])
    # logsumexp(0, 0, ln 2) = ln 4
    expected = [[-LN2, -2 * LN2], [-math.log(3), -math.log(3)]]
    close(ppo.logprobs_from_logits(logits, labels), expected, atol=1e-6)


@pytest.mark.parametrize("chunk_tokens", [1, 3, 7, 10_000])
def test_logprobs_from_logits_matches_log_softmax_and_its_gradient(chunk_tokens):
    torch.manual_seed(0)
    logits = torch.randn(3, 7, 11, requires_grad=True)
    labels = torch.randint(0, 11, (3, 7))
    ours = ppo.logprobs_from_logits(logits, labels, chunk_tokens=chunk_tokens)
    (grad_ours,) = torch.autograd.grad(ours.sum(), logits)
    reference = torch.log_softmax(logits, dim=-1).gather(-1, labels.unsqueeze(-1)).squeeze(-1)
    (grad_reference,) = torch.autograd.grad(reference.sum(), logits)
    torch.testing.assert_close(ours, reference)
    torch.testing.assert_close(grad_ours, grad_reference)


def test_logprobs_from_logits_upcasts_bf16_and_takes_non_contiguous_views():
    torch.manual_seed(0)
    logits = torch.randn(2, 6, 9).to(torch.bfloat16)[:, :-1]  # a shifted view, as a caller would pass
    labels = torch.randint(0, 9, (2, 5))
    ours = ppo.logprobs_from_logits(logits, labels, chunk_tokens=4)
    assert ours.dtype == torch.float32
    reference = torch.log_softmax(logits.float(), dim=-1).gather(-1, labels.unsqueeze(-1)).squeeze(-1)
    torch.testing.assert_close(ours, reference)


def test_logprobs_and_entropy_apply_the_temperature():
    torch.manual_seed(0)
    logits, labels = torch.randn(2, 4, 7), torch.randint(0, 7, (2, 4))
    scaled = logits / 0.7
    expected = torch.log_softmax(scaled, dim=-1).gather(-1, labels.unsqueeze(-1)).squeeze(-1)
    torch.testing.assert_close(ppo.logprobs_from_logits(logits, labels, temperature=0.7, chunk_tokens=3), expected)
    expected_entropy = torch.distributions.Categorical(logits=scaled).entropy()
    torch.testing.assert_close(ppo.entropy_from_logits(logits, temperature=0.7, chunk_tokens=3), expected_entropy)
    with pytest.raises(ValueError, match="temperature must be > 0"):
        ppo.logprobs_from_logits(logits, labels, temperature=0.0)


def test_logprobs_from_logits_rejects_mismatched_labels():
    with pytest.raises(ValueError, match="must agree on"):
        ppo.logprobs_from_logits(torch.zeros(2, 3, 5), torch.zeros(2, 4, dtype=torch.long))


def test_entropy_from_logits_known_answer():
    # -1e4 is finite but an effectively zero probability
    logits = t([[[0.0, 0.0, 0.0, 0.0], [0.0, 0.0, LN2, -1e4]], [[0.0, -1e4, -1e4, -1e4], [1.0, 1.0, 1.0, 1.0]]])
    # uniform over 4: ln 4; p = (1/4, 1/4, 1/2): 1/2 ln 4 + 1/2 ln 2 = 1.5 ln 2; one-hot: 0
    expected = [[2 * LN2, 1.5 * LN2], [0.0, 2 * LN2]]
    close(ppo.entropy_from_logits(logits, chunk_tokens=1), expected, atol=1e-6)


def test_entropy_from_logits_matches_categorical():
    torch.manual_seed(0)
    logits = torch.randn(3, 5, 13) * 3
    expected = torch.distributions.Categorical(logits=logits).entropy()
    torch.testing.assert_close(ppo.entropy_from_logits(logits, chunk_tokens=4), expected)


# ----------------------------------------------------------------------------------------------------------------
# Rewards and advantages
# ----------------------------------------------------------------------------------------------------------------

PREFIX_MASK = t([[1, 1, 1], [1, 1, 0], [0, 0, 0]])
SCORES = t([1.0, 0.5, 0.7])


def test_terminal_token_rewards_score_on_last_token():
    expected = [[0.0, 0.0, 1.0], [0.0, 0.5, 0.0], [0.0, 0.0, 0.0]]  # empty row: score dropped
    close(ppo.terminal_token_rewards(SCORES, PREFIX_MASK), expected)


def test_terminal_token_rewards_with_kl_penalty():
    kl = t([[0.1, 0.2, 0.3], [0.4, 0.5, float("nan")], [1.0, 1.0, 1.0]])
    expected = [[-0.05, -0.1, 1.0 - 0.15], [-0.2, 0.5 - 0.25, 0.0], [0.0, 0.0, 0.0]]
    close(ppo.terminal_token_rewards(SCORES, PREFIX_MASK, kl_penalty=kl, kl_coef=0.5), expected)


def test_terminal_token_rewards_rejects_bad_input():
    with pytest.raises(ValueError, match="prefix mask"):
        ppo.terminal_token_rewards(SCORES, t([[1, 0, 1], [1, 1, 0], [0, 0, 0]]))
    with pytest.raises(ValueError, match="scores must be"):
        ppo.terminal_token_rewards(t([1.0, 2.0]), PREFIX_MASK)


def test_terminal_token_rewards_rejects_bad_input_with_its_message():
    with pytest.raises(ValueError, match=re.escape("response_mask must be (B, T), got shape (3,).")):
        ppo.terminal_token_rewards(SCORES, t([1, 1, 0]))
    prefix_message = "response_mask must be a prefix mask per row (ones, then zeros); found a 1 after a 0."
    with pytest.raises(ValueError, match="^" + re.escape(prefix_message) + "$"):
        ppo.terminal_token_rewards(SCORES, t([[1, 0, 1], [1, 1, 0], [0, 0, 0]]))
    with pytest.raises(ValueError, match=re.escape("scores must be (B,) = (3,), got (2,).")):
        ppo.terminal_token_rewards(t([1.0, 2.0]), PREFIX_MASK)
    with pytest.raises(ValueError, match="Shape mismatch"):  # (3,) would broadcast against (3, 3)
        ppo.terminal_token_rewards(SCORES, PREFIX_MASK, kl_penalty=t([0.1, 0.2, 0.3]), kl_coef=0.5)


def test_terminal_token_rewards_kl_needs_both_penalty_and_coefficient():
    kl = t([[0.1, 0.2, 0.3], [0.4, 0.5, 0.6], [1.0, 1.0, 1.0]])
    plain = [[0.0, 0.0, 1.0], [0.0, 0.5, 0.0], [0.0, 0.0, 0.0]]
    close(ppo.terminal_token_rewards(SCORES, PREFIX_MASK, kl_penalty=kl), plain)  # kl_coef defaults to 0
    close(ppo.terminal_token_rewards(SCORES, PREFIX_MASK, kl_coef=0.5), plain)  # no penalty given
    close(ppo.terminal_token_rewards(SCORES, PREFIX_MASK, kl_penalty=kl, kl_coef=1.0),
          [[-0.1, -0.2, 1.0 - 0.3], [-0.4, 0.5 - 0.5, 0.0], [0.0, 0.0, 0.0]])


def test_terminal_token_rewards_one_token_row_and_the_dtype_of_the_scores():
    mask = t([[1, 0, 0], [1, 1, 1]])
    rewards = ppo.terminal_token_rewards(t([0.1, 0.3]), mask)
    assert rewards.dtype == torch.float64
    close(rewards, [[0.1, 0.0, 0.0], [0.0, 0.0, 0.3]], atol=1e-15)  # a one-token row gets its score too
    # float32 scores, float64 penalty: the rewards are float32, like the scores
    rewards = ppo.terminal_token_rewards(t([0.1, 0.3], torch.float32), mask, kl_penalty=torch.ones(2, 3, dtype=D),
                                         kl_coef=0.5)
    assert rewards.dtype == torch.float32
    close(rewards, [[-0.4, 0.0, 0.0], [-0.5, -0.5, -0.2]], atol=1e-7)


VALUES = t([[0.2, 0.4, 0.6], [0.1, 0.3, 9.0], [5.0, 5.0, 5.0]])  # 9 and 5 sit on padding and must not matter


def test_gae_gamma_lambda_one_is_score_minus_value():
    rewards = ppo.terminal_token_rewards(SCORES, PREFIX_MASK)
    advantages, returns = ppo.compute_gae(rewards, VALUES, PREFIX_MASK, gamma=1.0, lam=1.0)
    close(advantages, [[0.8, 0.6, 0.4], [0.4, 0.2, 0.0], [0.0, 0.0, 0.0]])
    close(returns, [[1.0, 1.0, 1.0], [0.5, 0.5, 0.0], [0.0, 0.0, 0.0]])


def test_gae_gamma_lambda_one_with_kl_penalty_sums_future_rewards():
    kl = t([[0.1, 0.2, 0.3], [0.4, 0.5, 0.6], [1.0, 1.0, 1.0]])
    rewards = ppo.terminal_token_rewards(SCORES, PREFIX_MASK, kl_penalty=kl, kl_coef=0.5)
    # rewards: row 0 (-0.05, -0.1, 0.85), row 1 (-0.2, 0.25); returns = reward-to-go
    advantages, returns = ppo.compute_gae(rewards, VALUES, PREFIX_MASK, gamma=1.0, lam=1.0)
    close(returns, [[0.7, 0.75, 0.85], [0.05, 0.25, 0.0], [0.0, 0.0, 0.0]])
    close(advantages, [[0.5, 0.35, 0.25], [-0.05, -0.05, 0.0], [0.0, 0.0, 0.0]])


def test_gae_discounted_and_td_cases():
    rewards = ppo.terminal_token_rewards(SCORES, PREFIX_MASK)
    # gamma = 0.5, lam = 1: A_t = 0.5^(L-1-t) * score - V_t -> row 0: 0.25 - 0.2, 0.5 - 0.4, 1 - 0.6
    advantages, returns = ppo.compute_gae(rewards, VALUES, PREFIX_MASK, gamma=0.5, lam=1.0)
    close(advantages, [[0.05, 0.1, 0.4], [0.15, 0.2, 0.0], [0.0, 0.0, 0.0]])
    close(returns, [[0.25, 0.5, 1.0], [0.25, 0.5, 0.0], [0.0, 0.0, 0.0]])
    # gamma = 1, lam = 0: A_t = r_t + V_{t+1} - V_t (one-step TD error), V after the last token = 0
    advantages, returns = ppo.compute_gae(rewards, VALUES, PREFIX_MASK, gamma=1.0, lam=0.0)
    close(advantages, [[0.2, 0.2, 0.4], [0.2, 0.2, 0.0], [0.0, 0.0, 0.0]])
    close(returns, [[0.4, 0.6, 1.0], [0.3, 0.5, 0.0], [0.0, 0.0, 0.0]])


def test_gae_rejects_bad_input():
    with pytest.raises(ValueError, match="prefix mask"):
        ppo.compute_gae(VALUES, VALUES, t([[0, 1, 1], [1, 1, 0], [0, 0, 0]]))
    with pytest.raises(ValueError, match="Shape mismatch"):
        ppo.compute_gae(VALUES[:2], VALUES, PREFIX_MASK)


def naive_gae(rewards, values, lengths, gamma, lam):
    """GAE re-typed as a plain python loop over each row's valid tokens (cleanrl's formula)."""
    batch, seq_len = len(rewards), len(rewards[0])
    advantages = [[0.0] * seq_len for _ in range(batch)]
    returns = [[0.0] * seq_len for _ in range(batch)]
    for b in range(batch):
        last_gae = 0.0
        for step in reversed(range(lengths[b])):
            next_value = values[b][step + 1] if step + 1 < lengths[b] else 0.0
            delta = rewards[b][step] + gamma * next_value - values[b][step]
            last_gae = delta + gamma * lam * last_gae
            advantages[b][step] = last_gae
            returns[b][step] = last_gae + values[b][step]
    return t(advantages), t(returns)


@pytest.mark.parametrize("gamma,lam", [(1.0, 1.0), (0.99, 0.95), (0.9, 0.0), (0.5, 0.7)])
@pytest.mark.parametrize("lengths", [[6, 6, 6, 6], [6, 3, 0, 1], [0, 0, 0, 0], [2, 5, 4, 6]])
def test_gae_matches_naive_loop(gamma, lam, lengths):
    torch.manual_seed(len(lengths) + sum(lengths))
    rewards, values = torch.randn(4, 6, dtype=D), torch.randn(4, 6, dtype=D)
    mask = (torch.arange(6) < torch.tensor(lengths).unsqueeze(-1)).to(D)
    advantages, returns = ppo.compute_gae(rewards, values, mask, gamma=gamma, lam=lam)
    ref_advantages, ref_returns = naive_gae(rewards.tolist(), values.tolist(), lengths, gamma, lam)
    close(advantages, ref_advantages, atol=1e-12)
    close(returns, ref_returns, atol=1e-12)


def test_grpo_advantages_known_answer():
    scores = t([1.0, 0.0, 0.5, 0.5, 0.3, 0.9])
    mask = t([[1, 1, 0], [1, 0, 0], [1, 1, 1], [0, 0, 0], [1, 1, 1], [1, 1, 0]])
    inv_sqrt2 = 1 / math.sqrt(2)  # (s - mean) / unbiased std for any two different scores: +-1/sqrt(2)
    expected = t([inv_sqrt2, -inv_sqrt2, 0.0, 0.0, -inv_sqrt2, inv_sqrt2]).unsqueeze(-1) * mask
    close(ppo.grpo_advantages(scores, 2, mask, eps=1e-12), expected, atol=1e-9)
    centered = t([0.5, -0.5, 0.0, 0.0, -0.3, 0.3]).unsqueeze(-1) * mask
    close(ppo.grpo_advantages(scores, 2, mask, norm_by_std=False), centered)


def test_grpo_advantages_group_of_three():
    # scores 1, 0, 0: mean 1/3, unbiased std sqrt((4/9 + 1/9 + 1/9) / 2) = 1/sqrt(3)
    advantages = ppo.grpo_advantages(t([1.0, 0.0, 0.0]), 3, torch.ones(3, 2, dtype=D), eps=0.0)
    close(advantages[:, 0], [2 / math.sqrt(3), -1 / math.sqrt(3), -1 / math.sqrt(3)])


def test_rloo_advantages_known_answer():
    # n = 3, groups (1, 0, 0) and (0.2, 0.6, 0.1): baselines 0, 1/2, 1/2 and 0.35, 0.15, 0.4
    mask = t([[1, 1], [1, 0], [0, 0], [1, 1], [1, 1], [1, 0]])
    expected = t([1.0, -0.5, -0.5, -0.15, 0.45, -0.3]).unsqueeze(-1) * mask
    close(ppo.rloo_advantages(t([1.0, 0.0, 0.0, 0.2, 0.6, 0.1]), 3, mask), expected)
    # n = 2: s_i - s_j
    close(ppo.rloo_advantages(t([0.2, 0.6]), 2, torch.ones(2, 2, dtype=D)), [[-0.4, -0.4], [0.4, 0.4]])


def test_group_advantages_take_the_dtype_of_the_scores():
    advantages = ppo.rloo_advantages(t([0.25, 0.75], torch.float32), 2, torch.ones(2, 2, dtype=D))
    assert advantages.dtype == torch.float32
    close(advantages, [[-0.5, -0.5], [0.5, 0.5]])


@pytest.mark.parametrize("estimator", [ppo.grpo_advantages, ppo.rloo_advantages,
                                       ppo.reinforce_plus_plus_baseline_advantages])
def test_group_estimators_reject_bad_groups(estimator):
    with pytest.raises(ValueError, match="at least 2 samples"):
        estimator(t([1.0, 0.0]), 1, torch.ones(2, 3))
    with pytest.raises(ValueError, match="not a multiple"):
        estimator(t([1.0, 0.0, 1.0]), 2, torch.ones(3, 3))
    with pytest.raises(ValueError, match=re.escape("scores must be (N,), got shape (2, 1).")):
        estimator(t([[1.0], [0.0]]), 2, torch.ones(2, 3))
    with pytest.raises(ValueError, match=re.escape("response_mask (3, 2) does not match 2 scores.")):
        estimator(t([1.0, 0.0]), 2, torch.ones(3, 2))


def test_discounted_returns_known_answer_and_padding():
    rewards = t([[1.0, 2.0, 3.0], [4.0, 5.0, float("nan")], [float("inf"), 0.0, 0.0]])
    mask = t([[1, 1, 1], [1, 1, 0], [0, 0, 0]])
    # gamma 0.5: row 0: G2 = 3, G1 = 2 + 1.5, G0 = 1 + 1.75; row 1: G1 = 5, G0 = 4 + 2.5; padding ignored, 0
    close(ppo.discounted_returns(rewards, mask, 0.5), [[2.75, 3.5, 3.0], [6.5, 5.0, 0.0], [0.0, 0.0, 0.0]])
    close(ppo.discounted_returns(rewards, mask), [[6.0, 5.0, 3.0], [9.0, 5.0, 0.0], [0.0, 0.0, 0.0]])
    # the returns of GAE with zero values and lam = 1
    finite = torch.where(mask.bool(), rewards, 0.0)
    close(ppo.discounted_returns(finite, mask, 0.9), ppo.compute_gae(finite, torch.zeros_like(finite), mask, 0.9)[1])
    with pytest.raises(ValueError, match="prefix mask"):
        ppo.discounted_returns(finite, t([[0, 1, 1], [1, 1, 0], [0, 0, 0]]))


def test_reinforce_plus_plus_known_answer():
    """Scores 1 and 0 on the last token, no KL: the returns of the 3 valid tokens are whitened over the batch."""
    mask = t([[1, 1, 0], [1, 0, 0]])
    rewards = ppo.terminal_token_rewards(t([1.0, 0.0]), mask)
    # gamma 1: returns 1, 1 | 0: mean 2/3, unbiased var ((1/3)^2 * 2 + (2/3)^2) / 2 = 1/3
    advantages, returns = ppo.reinforce_plus_plus_advantages(rewards, mask)
    close(returns, [[1.0, 1.0, 0.0], [0.0, 0.0, 0.0]])
    s3 = math.sqrt(3.0)
    close(advantages, [[1 / s3, 1 / s3, 0.0], [-2 / s3, 0.0, 0.0]], atol=1e-7)
    # gamma 0.5: returns 0.5, 1 | 0: mean 0.5, var (0 + 0.25 + 0.25) / 2 = 0.25 -> 0, 1 | -1
    advantages, returns = ppo.reinforce_plus_plus_advantages(rewards, mask, gamma=0.5)
    close(returns, [[0.5, 1.0, 0.0], [0.0, 0.0, 0.0]])
    close(advantages, [[0.0, 1.0, 0.0], [-1.0, 0.0, 0.0]], atol=1e-7)


def test_reinforce_plus_plus_takes_the_kl_penalty_of_every_later_token():
    """Hu 2025: r_t = -beta * KL_t, plus the score on the last token; each token's return sums its own and later."""
    mask = t([[1, 1, 1], [1, 1, 0]])
    kl = t([[0.1, 0.2, 0.3], [0.4, 0.5, 9.0]])
    rewards = ppo.terminal_token_rewards(t([1.0, 0.5]), mask, kl, kl_coef=0.5)
    _, returns = ppo.reinforce_plus_plus_advantages(rewards, mask)
    close(returns, [[1 - 0.3, 1 - 0.25, 1 - 0.15], [0.5 - 0.45, 0.5 - 0.25, 0.0]])


def test_reinforce_plus_plus_baseline_known_answer():
    """Baseline per group (the mean of the prompt's samples), normalisation per batch (all valid tokens)."""
    mask = t([[1, 1], [1, 0], [1, 1], [0, 0]])
    # groups (1, 0) and (0.5, 0.5): centred 0.5, -0.5, 0, 0 -> token values 0.5, 0.5, -0.5, 0, 0
    # mean 0.1, unbiased var (0.16 + 0.16 + 0.36 + 0.01 + 0.01) / 4 = 0.175
    advantages = ppo.reinforce_plus_plus_baseline_advantages(t([1.0, 0.0, 0.5, 0.5]), 2, mask)
    std = math.sqrt(0.175)
    close(advantages, [[0.4 / std, 0.4 / std], [-0.6 / std, 0.0], [-0.1 / std, -0.1 / std], [0.0, 0.0]], atol=1e-7)
    # not GRPO: the same groups with a 10x larger spread in the other half of the batch change these advantages
    other = ppo.reinforce_plus_plus_baseline_advantages(t([1.0, 0.0, 5.0, -5.0]), 2, mask)
    assert not torch.allclose(other[:2], advantages[:2])


def test_reinforce_plus_plus_baseline_all_equal_groups_give_zero():
    advantages = ppo.reinforce_plus_plus_baseline_advantages(t([1.0, 1.0, 0.0, 0.0]), 2, torch.ones(4, 3, dtype=D))
    close(advantages, torch.zeros(4, 3))
    assert advantages.dtype == D


def test_reinforce_plus_plus_whitens_with_the_moments_of_all_ranks():
    """all_reduce_sum adds the sums of the other ranks: the result equals whitening the concatenated batch."""
    torch.manual_seed(0)
    scores, mask = torch.rand(8, dtype=D), (torch.arange(4) < torch.randint(1, 5, (8, 1))).to(D)
    whole = ppo.reinforce_plus_plus_baseline_advantages(scores, 2, mask)
    halves = [slice(0, 4), slice(4, 8)]
    sums = [ppo.masked_sums(ppo.grpo_advantages(scores[h], 2, mask[h], norm_by_std=False), mask[h]) for h in halves]
    for h in halves:
        part = ppo.reinforce_plus_plus_baseline_advantages(scores[h], 2, mask[h], all_reduce_sum=lambda _: sum(sums))
        close(part, whole[h], atol=1e-12)
    rewards = ppo.terminal_token_rewards(scores, mask)
    whole, _ = ppo.reinforce_plus_plus_advantages(rewards, mask, 0.9)
    sums = [ppo.masked_sums(ppo.discounted_returns(rewards[h], mask[h], 0.9), mask[h]) for h in halves]
    for h in halves:
        part, _ = ppo.reinforce_plus_plus_advantages(rewards[h], mask[h], 0.9, all_reduce_sum=lambda _: sum(sums))
        close(part, whole[h], atol=1e-12)


def test_reinforce_plus_plus_match_verl_formulas_retyped():
    """verl's compute_reinforce_plus_plus(_baseline)_outcome_advantage re-typed as loops (dict of group means,
    running return, verl's masked_whiten: unbiased variance, rsqrt(var + 1e-8))."""
    torch.manual_seed(1)
    n, rows, width = 3, 6, 5
    mask = (torch.arange(width) < torch.randint(0, width + 1, (rows, 1))).to(D)
    mask[0] = 1.0
    scores, kl = torch.rand(rows, dtype=D), 0.1 * torch.randn(rows, width, dtype=D)
    rewards = ppo.terminal_token_rewards(scores, mask, kl, kl_coef=0.2)

    def verl_whiten(x):
        mean = (x * mask).sum() / mask.sum()
        var = (((x - mean) ** 2) * mask).sum() / mask.sum() * mask.sum() / (mask.sum() - 1)
        return (x - mean) * torch.rsqrt(var + 1e-8) * mask

    returns, running = torch.zeros_like(rewards), torch.zeros(rows, dtype=D)
    for step in reversed(range(width)):
        new = rewards[:, step] + 0.95 * running
        returns[:, step] = new * mask[:, step]
        running = new * mask[:, step] + running * (1 - mask[:, step])
    advantages, ours_returns = ppo.reinforce_plus_plus_advantages(rewards, mask, 0.95)
    close(ours_returns, returns, atol=1e-12)
    close(advantages, verl_whiten(returns), atol=1e-10)

    seq_scores = rewards.sum(-1)  # verl's score: the summed token rewards, KL penalty included
    group_mean = {g: seq_scores[g * n:(g + 1) * n].mean() for g in range(rows // n)}
    centered = torch.stack([seq_scores[i] - group_mean[i // n] for i in range(rows)])
    expected = verl_whiten(centered.unsqueeze(-1).tile(1, width) * mask)
    close(ppo.reinforce_plus_plus_baseline_advantages(seq_scores, n, mask), expected, atol=1e-10)


def test_overlong_penalty_known_answer_dapo_eq_13():
    """L_max 20, L_cache 4: 0 up to 16, then (16 - L) / 4 * factor down to -factor at 20 (and beyond)."""
    lengths = torch.tensor([0, 16, 17, 18, 19, 20, 25])
    close(ppo.overlong_penalty(lengths, 20, 4).double(), [0.0, 0.0, -0.25, -0.5, -0.75, -1.0, -1.0])
    close(ppo.overlong_penalty(lengths, 20, 4, 0.5).double(), [0.0, 0.0, -0.125, -0.25, -0.375, -0.5, -0.5])
    assert ppo.overlong_penalty(lengths, 20, 4).dtype == torch.float32
    assert ppo.overlong_penalty(lengths.to(D), 20, 4).dtype == D
    # verl's DAPO reward manager, re-typed, for every length up to the limit
    for length in range(21):
        verl = min(-(length - (20 - 4)) / 4 * 0.7, 0)
        assert ppo.overlong_penalty(torch.tensor([length]), 20, 4, 0.7).item() == pytest.approx(verl, abs=1e-7)


def test_overlong_penalty_edge_cases():
    lengths = torch.tensor([3, 8])
    close(ppo.overlong_penalty(lengths, 8, 0), [0.0, 0.0])  # 0 = off
    close(ppo.overlong_penalty(lengths, 8, 8).double(), [-3 / 8, -1.0])  # the window is the whole range
    close(ppo.overlong_penalty(torch.tensor([], dtype=torch.long), 8, 2), torch.zeros(0))
    for buffer_len in (-1, 9):
        with pytest.raises(ValueError, match=re.escape("buffer_len must be in [0, max_new_tokens=8]")):
            ppo.overlong_penalty(lengths, 8, buffer_len)
    with pytest.raises(ValueError, match="response_lengths must be"):
        ppo.overlong_penalty(lengths.view(1, 2), 8, 2)


def test_keep_groups_known_answer():
    scores = t([1.0, 1.0, 0.0, 1.0, 0.0, 0.0, 0.0, 0.0])
    assert ppo.keep_groups(scores, 2).tolist() == [False, False, True, True, False, False, False, False]
    assert ppo.keep_groups(scores, 4).tolist() == [True] * 4 + [False] * 4
    assert ppo.keep_groups(t([0.0, 0.0, 0.0, 0.0]), 2).tolist() == [False] * 4  # all-equal everywhere: none kept
    assert ppo.keep_groups(t([0.3, float("nan"), 0.3, 0.3]), 2).tolist() == [True, True, False, False]  # as verl
    assert ppo.keep_groups(t([1.0, 1.0, 0.0]), 1).tolist() == [True] * 3  # single-sample groups stay (verl)


def test_keep_groups_rejects_bad_groups():
    with pytest.raises(ValueError, match="not a multiple of n=2"):
        ppo.keep_groups(t([1.0, 0.0, 1.0]), 2)
    with pytest.raises(ValueError, match="n=0"):
        ppo.keep_groups(t([1.0, 0.0]), 0)
    with pytest.raises(ValueError, match=re.escape("scores must be (N,), got shape (2, 1).")):
        ppo.keep_groups(t([[1.0], [0.0]]), 2)


# ----------------------------------------------------------------------------------------------------------------
# Losses
# ----------------------------------------------------------------------------------------------------------------

RATIOS = t([[1.5, 0.5, 1.0], [1.1, 0.7, 2.0]])
ADVANTAGES = t([[1.0, -1.0, 2.0], [-1.0, 1.0, 5.0]])
LOSS_MASK = t([[1, 1, 1], [1, 1, 0]])


def test_policy_loss_known_answer_and_gradient():
    logprobs = RATIOS.log().requires_grad_()
    loss, metrics = ppo.policy_loss(logprobs, torch.zeros_like(logprobs), ADVANTAGES, LOSS_MASK)
    # token losses: max(-A r, -A clip(r)): -1.2 (clipped), 0.8 (clipped), -2, 1.1, -0.7; padding ignored
    close(loss, (-1.2 + 0.8 - 2.0 + 1.1 - 0.7) / 5)
    close(metrics["clipfrac"], 2 / 5)
    close(metrics["approx_kl"], -(math.log(1.5) + math.log(0.5) + math.log(1.1) + math.log(0.7)) / 5)
    close(metrics["clipfrac_lower"], 0.0)
    loss.backward()
    # d/dlogprob of -A r = -A r on unclipped tokens, 0 on clipped ones and padding; /5 for the token mean
    close(logprobs.grad, [[0.0, 0.0, -2.0 / 5], [1.1 / 5, -0.7 / 5, 0.0]])


def test_policy_loss_seq_mean_and_asymmetric_clip():
    logprobs = RATIOS.log()
    loss, _ = ppo.policy_loss(logprobs, torch.zeros_like(logprobs), ADVANTAGES, LOSS_MASK, loss_agg="seq-mean")
    close(loss, ((-1.2 + 0.8 - 2.0) / 3 + (1.1 - 0.7) / 2) / 2)
    # clip-higher: ratio 1.5 is inside [0.8, 1.6] now, ratio 0.5 clips at 0.8
    loss, metrics = ppo.policy_loss(
        logprobs, torch.zeros_like(logprobs), ADVANTAGES, LOSS_MASK, clip_ratio_low=0.2, clip_ratio_high=0.6
    )
    close(loss, (-1.5 + 0.8 - 2.0 + 1.1 - 0.7) / 5)
    close(metrics["clipfrac"], 1 / 5)


def test_policy_loss_clips_each_side_with_its_own_ratio():
    """A tight lower and a loose upper bound: swapping clip_ratio_low and clip_ratio_high changes both tokens."""
    logprobs = t([[1.3, 0.85]]).log().requires_grad_()
    old, advantages, mask = torch.zeros(1, 2, dtype=D), t([[1.0, -1.0]]), torch.ones(1, 2, dtype=D)
    loss, metrics = ppo.policy_loss(logprobs, old, advantages, mask, clip_ratio_low=0.1, clip_ratio_high=0.5)
    # ratio 1.3 is inside [0.9, 1.5]: -1.3; ratio 0.85 with A < 0 clips at 0.9: max(0.85, 0.9) = 0.9
    # (swapped, [0.5, 1.1]: -1.1 and 0.85, loss -0.125)
    close(loss, (-1.3 + 0.9) / 2)
    close(metrics["clipfrac"], 1 / 2)
    loss.backward()
    close(logprobs.grad, [[-1.3 / 2, 0.0]])  # d(-A * ratio) / d logprob = -A * ratio; the clipped token gets none


def test_policy_loss_dual_clip():
    logprobs = t([[5.0, 2.0, 5.0]]).log().requires_grad_()
    old, advantages, mask = torch.zeros(1, 3, dtype=D), t([[-1.0, -1.0, 1.0]]), torch.ones(1, 3, dtype=D)
    # without dual clip: max(5, 1.2) = 5, max(2, 1.2) = 2, max(-5, -1.2) = -1.2
    loss, metrics = ppo.policy_loss(logprobs, old, advantages, mask)
    close(loss, (5.0 + 2.0 - 1.2) / 3)
    # dual clip c = 3 caps the first token at -A * c = 3; 2 < 3 stays; positive advantages are untouched
    loss, metrics = ppo.policy_loss(logprobs, old, advantages, mask, dual_clip=3.0)
    close(loss, (3.0 + 2.0 - 1.2) / 3)
    close(metrics["clipfrac_lower"], 1 / 3)
    close(metrics["clipfrac"], 1 / 3)
    loss.backward()
    close(logprobs.grad, [[0.0, 2.0 / 3, 0.0]])
    with pytest.raises(ValueError, match="dual_clip must be > 1"):
        ppo.policy_loss(logprobs, old, advantages, mask, dual_clip=1.0)


def test_policy_loss_dual_clip_just_above_one_and_at_the_bound():
    logprobs = t([[5.0, 2.0, 5.0]]).log()
    old, advantages, mask = torch.zeros(1, 3, dtype=D), t([[-1.0, -1.0, 1.0]]), torch.ones(1, 3, dtype=D)
    # c = 1.5 is valid (> 1): both negative-advantage tokens are capped at 1.5
    loss, metrics = ppo.policy_loss(logprobs, old, advantages, mask, dual_clip=1.5)
    close(loss, (1.5 + 1.5 - 1.2) / 3)
    close(metrics["clipfrac_lower"], 2 / 3)
    # a token exactly at the bound (ratio 2 = c) is not counted, as verl's torch.gt; the loss is 2 either way
    loss, metrics = ppo.policy_loss(t([[2.0]]).log(), torch.zeros(1, 1, dtype=D), t([[-1.0]]), torch.ones(1, 1),
                                    dual_clip=2.0)
    close(loss, 2.0)
    close(metrics["clipfrac_lower"], 0.0)


def test_policy_loss_normalizer_replaces_the_token_count():
    logprobs = RATIOS.log()
    loss, _ = ppo.policy_loss(logprobs, torch.zeros_like(logprobs), ADVANTAGES, LOSS_MASK, normalizer=10.0)
    close(loss, (-1.2 + 0.8 - 2.0 + 1.1 - 0.7) / 10)


def test_policy_loss_all_masked_is_zero_without_nan():
    logprobs = RATIOS.log().requires_grad_()
    loss, metrics = ppo.policy_loss(logprobs, torch.zeros_like(logprobs), ADVANTAGES, torch.zeros_like(LOSS_MASK))
    loss.backward()
    close(loss, 0.0)
    assert all(torch.isfinite(v) for v in metrics.values())
    close(logprobs.grad, torch.zeros(2, 3))


def test_loss_gradients_stay_finite_with_inf_and_nan_in_padding():
    mask = t([[1, 1, 0], [1, 0, 0]])
    pad = ~mask.bool()
    garbage = torch.where(pad, t([[0, 0, float("inf")], [0, float("nan"), -float("inf")]]), 0.0)
    logprobs = t([[-1.0, -2.0, -3.0], [-0.5, -1.0, -1.0]]).requires_grad_()
    ppo.policy_loss(logprobs, logprobs.detach() + 0.1 + garbage, t([[1.0, -1.0, 0], [2.0, 0, 0]]) + garbage, mask,
                    dual_clip=3.0)[0].backward()
    assert torch.isfinite(logprobs.grad).all() and (logprobs.grad[pad] == 0).all()
    values = t([[0.5, 0.2, 0.1], [0.3, 0.0, 0.0]]).requires_grad_()
    for clip in (None, 0.2):
        values.grad = None
        ppo.value_loss(values, values.detach() + garbage, t([[1.0, 1.0, 0], [0.0, 0, 0]]) + garbage, mask,
                       clip)[0].backward()
        assert torch.isfinite(values.grad).all() and (values.grad[pad] == 0).all()


def test_seq_mean_token_sum_modes_known_answer_and_published_formulas():
    """seq-mean-token-sum: mean over sequences of token sums (verl); seq-mean-token-sum-norm: Dr. GRPO's
    sum_i sum_t l_it / (N * L), L a constant (verl's mode of that name is N times this)."""
    loss_mat = t([[1.0, 2.0, 3.0], [4.0, 5.0, 6.0]])
    mask = t([[1.0, 1.0, 1.0], [1.0, 1.0, 0.0]])
    close(ppo.aggregate_loss(loss_mat, mask, "seq-mean-token-sum"), ((1 + 2 + 3) + (4 + 5)) / 2)
    close(ppo.aggregate_loss(loss_mat, mask, "seq-mean-token-sum-norm"), ((1 + 2 + 3) + (4 + 5)) / (2 * 3))
    close(ppo.aggregate_loss(loss_mat, mask, "seq-mean-token-sum-norm", normalizer=2 * 8), 15 / 16)  # L = 8
    # the formulas as published, re-typed as loops
    horizon = 8
    rows = zip(loss_mat.tolist(), mask.tolist())
    dr_grpo = sum(sum(x for x, m in zip(row, mrow) if m) / horizon for row, mrow in rows) / 2
    close(ppo.aggregate_loss(loss_mat, mask, "seq-mean-token-sum-norm", normalizer=2 * horizon), dr_grpo)
    verl_token_sum = torch.mean(torch.sum(loss_mat * mask, dim=-1))  # verl's agg_loss("seq-mean-token-sum")
    close(ppo.aggregate_loss(loss_mat, mask, "seq-mean-token-sum"), verl_token_sum)
    verl_norm = torch.sum(torch.sum(loss_mat * mask, dim=-1)) / mask.shape[-1]  # verl's, without the mean over N
    close(ppo.aggregate_loss(loss_mat, mask, "seq-mean-token-sum-norm") * 2, verl_norm)
    # an empty sequence neither adds nor counts; all masked gives 0
    padded_mask = torch.cat([mask, torch.zeros(1, 3, dtype=D)])
    padded_loss = torch.cat([loss_mat, t([[9.0, 9.0, 9.0]])])
    close(ppo.aggregate_loss(padded_loss, padded_mask, "seq-mean-token-sum"), 15 / 2)
    close(ppo.aggregate_loss(loss_mat, torch.zeros_like(mask), "seq-mean-token-sum-norm"), 0.0)
    with pytest.raises(ValueError, match="seq-mean-token-sum-norm"):
        ppo.aggregate_loss(loss_mat, mask, "token-sum")


def test_policy_loss_micro_batches_sum_to_the_mini_batch_loss_in_every_mode():
    """With the mini-batch's normalizer, the micro-batch losses add up to the mini-batch's loss (gradient
    accumulation) in every aggregation mode."""
    torch.manual_seed(0)
    logprobs, old = -torch.rand(4, 5, dtype=D), -torch.rand(4, 5, dtype=D)
    advantages = torch.randn(4, 5, dtype=D)
    mask = t([[1, 1, 1, 0, 0], [1, 1, 1, 1, 1], [1, 0, 0, 0, 0], [1, 1, 0, 0, 0]])
    for mode, norm in [("token-mean", 11.0), ("seq-mean", 4.0), ("seq-mean-token-sum", 4.0),
                       ("seq-mean-token-sum-norm", 4.0 * 5)]:
        whole, _ = ppo.policy_loss(logprobs, old, advantages, mask, loss_agg=mode)
        parts = sum(ppo.policy_loss(logprobs[i], old[i], advantages[i], mask[i], loss_agg=mode, normalizer=norm)[0]
                    for i in (slice(0, 2), slice(2, 4)))
        close(parts, whole)


def test_gspo_sequence_ratio_known_answer_and_gradient():
    """GSPO (Zheng et al. 2025): s_i = exp(mean_t log-ratio) clipped per response; the gradient of token t is
    -A_i * s_i * d logprob_t / |y_i| under seq-mean (the paper's (1/G) sum_i s_i A_i (1/|y_i|) sum_t grad log pi)."""
    old = t([[-1.0, -2.0, -1.5], [-0.5, -0.7, 0.0]])
    logprobs = (old + t([[0.02, -0.01, 0.05], [0.3, 0.1, 0.0]])).requires_grad_(True)
    mask = t([[1.0, 1.0, 1.0], [1.0, 1.0, 0.0]])
    adv = t([[1.0, 1.0, 1.0], [-2.0, -2.0, -2.0]])
    s1, s2 = math.exp((0.02 - 0.01 + 0.05) / 3), math.exp((0.3 + 0.1) / 2)  # 1.0202 and 1.2214
    loss, metrics = ppo.policy_loss(logprobs, old, adv, mask, 0.2, 0.2, loss_agg="seq-mean", ratio_level="sequence")
    # response 1: A > 0, s1 inside the clip -> -A * s1; response 2: A < 0, s2 > 1.2 -> max(-A s2, -A 1.2) = 2 * s2
    close(loss, (-1.0 * s1 + 2.0 * s2) / 2)
    close(metrics["clipfrac"], 0.0)  # clipped would be smaller than unclipped for response 2: not active
    loss.backward()
    expected = t([[-s1 / 3] * 3, [2.0 * s2 / 2, 2.0 * s2 / 2, 0.0]]) / 2
    close(logprobs.grad, expected)
    # a ratio past the clip on the paying side is clipped as a whole response
    _, metrics = ppo.policy_loss(logprobs.detach(), old, -adv, mask, 0.2, 0.2, loss_agg="seq-mean",
                                 ratio_level="sequence")
    close(metrics["clipfrac"], 2 / 5)  # response 2 (2 tokens) of 5 valid tokens
    with pytest.raises(ValueError, match="ratio_level"):
        ppo.policy_loss(logprobs, old, adv, mask, ratio_level="seq")


def test_cispo_known_answer_and_gradient():
    """CISPO: loss -sg(clip(r)) * A * logprob; every valid token keeps the gradient -w * A (token-mean: / 5)."""
    logprobs = RATIOS.log().requires_grad_()
    old = torch.zeros_like(logprobs)
    loss, metrics = ppo.policy_loss(logprobs, old, ADVANTAGES, LOSS_MASK, loss_mode="cispo")
    # weights clip(1.5, 0.5, 1.0 | 1.1, 0.7) into [0.8, 1.2] = 1.2, 0.8, 1.0 | 1.1, 0.8; padding (ratio 2) ignored
    expected = (-1.2 * math.log(1.5) + 0.8 * math.log(0.5) - 0.0 + 1.1 * math.log(1.1) - 0.8 * math.log(0.7)) / 5
    close(loss, expected)
    close(metrics["clipfrac"], 3 / 5)  # 1.5, 0.5 and 0.7 were clipped
    close(metrics["clipfrac_lower"], 0.0)
    close(metrics["approx_kl"], -(math.log(1.5) + math.log(0.5) + math.log(1.1) + math.log(0.7)) / 5)
    loss.backward()
    close(logprobs.grad, t([[-1.2, 0.8, -2.0], [1.1, -0.8, 0.0]]) / 5)  # PPO would give the clipped tokens 0
    # MiniMax-M1's choice, no lower bound (clip_ratio_low 1): only 1.5 is clipped
    logprobs.grad = None
    loss, metrics = ppo.policy_loss(logprobs, old, ADVANTAGES, LOSS_MASK, 1.0, 0.2, loss_mode="cispo")
    loss.backward()
    close(logprobs.grad, t([[-1.2, 0.5, -2.0], [1.1, -0.7, 0.0]]) / 5)
    close(metrics["clipfrac"], 1 / 5)


def test_cispo_on_policy_gradient_equals_ppo_and_bad_combinations_are_refused():
    torch.manual_seed(0)
    logprobs = (-torch.rand(3, 4, dtype=D)).requires_grad_()
    advantages, mask = torch.randn(3, 4, dtype=D), t([[1, 1, 1, 1], [1, 1, 0, 0], [0, 0, 0, 0]])
    grads = []
    for mode in ("ppo", "cispo"):
        logprobs.grad = None
        loss, _ = ppo.policy_loss(logprobs, logprobs.detach(), advantages, mask, loss_agg="seq-mean", loss_mode=mode)
        loss.backward()
        grads.append(logprobs.grad.clone())
    close(grads[1], grads[0], atol=1e-12)  # ratio 1: d(-A r) = -A d logprob
    for kwargs in ({"ratio_level": "sequence"}, {"dual_clip": 3.0}):
        with pytest.raises(ValueError, match="cispo"):
            ppo.policy_loss(logprobs, logprobs.detach(), advantages, mask, loss_mode="cispo", **kwargs)
    with pytest.raises(ValueError, match="loss_mode"):
        ppo.policy_loss(logprobs, logprobs.detach(), advantages, mask, loss_mode="clip")


def test_policy_loss_is_weights_multiply_the_token_losses_and_carry_no_gradient():
    logprobs = RATIOS.log().requires_grad_()
    weights = t([[2.0, 0.5, 1.0], [1.0, 3.0, float("nan")]]).requires_grad_()  # nan at padding is ignored
    loss, metrics = ppo.policy_loss(logprobs, torch.zeros_like(logprobs), ADVANTAGES, LOSS_MASK, is_weights=weights)
    # the token losses of the PPO known answer (-1.2, 0.8, -2 | 1.1, -0.7) times the weights
    close(loss, (-1.2 * 2 + 0.8 * 0.5 - 2.0 + 1.1 - 0.7 * 3) / 5)
    close(metrics["clipfrac"], 2 / 5)  # the metrics do not change
    loss.backward()
    close(logprobs.grad, [[0.0, 0.0, -2.0 / 5], [1.1 / 5, -2.1 / 5, 0.0]])
    assert weights.grad is None
    loss, _ = ppo.policy_loss(logprobs, torch.zeros_like(logprobs), ADVANTAGES, LOSS_MASK, is_weights=weights,
                              loss_mode="cispo")
    close(loss, (-1.2 * 2 * math.log(1.5) + 0.8 * 0.5 * math.log(0.5) + 1.1 * math.log(1.1)
                 - 0.8 * 3 * math.log(0.7)) / 5)
    with pytest.raises(ValueError, match="Shape mismatch"):
        ppo.policy_loss(logprobs, torch.zeros_like(logprobs), ADVANTAGES, LOSS_MASK, is_weights=weights[:, :2])


def test_cispo_and_is_weights_gradients_stay_finite_with_inf_and_nan_in_padding():
    mask = t([[1, 1, 0], [1, 0, 0]])
    pad = ~mask.bool()
    garbage = torch.where(pad, t([[0, 0, float("inf")], [0, float("nan"), -float("inf")]]), 0.0)
    logprobs = (t([[-1.0, -2.0, -3.0], [-0.5, -1.0, -1.0]]) + garbage).requires_grad_()
    ppo.policy_loss(logprobs, logprobs.detach() + 0.1 + garbage, t([[1.0, -1.0, 0], [2.0, 0, 0]]) + garbage, mask,
                    loss_mode="cispo", is_weights=torch.ones(2, 3, dtype=D) + garbage)[0].backward()
    assert torch.isfinite(logprobs.grad).all() and (logprobs.grad[pad] == 0).all()


def test_value_clip_fraction_counts_no_token_the_clip_leaves_alone():
    """verl parity: V_old + clamp(V - V_old) rounds one ulp away from V here and used to count as clipped."""
    values = torch.tensor([[-0.05286094918847084]], requires_grad=True)
    old_values, returns = torch.tensor([[-0.12007129192352295]]), torch.tensor([[-0.09094037115573883]])
    loss, clipfrac = ppo.value_loss(values, old_values, returns, torch.ones(1, 1), clip_range=0.2)
    assert clipfrac.item() == 0.0
    assert loss.item() == pytest.approx(0.5 * (-0.05286094918847084 + 0.09094037115573883) ** 2, rel=1e-6)
    loss.backward()
    assert values.grad.item() == pytest.approx(-0.05286094918847084 + 0.09094037115573883, rel=1e-6)


def test_approx_kl_uses_the_clamped_log_ratio_like_verl_ppo_kl():
    logprobs, old_logprobs = torch.tensor([[-1.0, -50.0]]), torch.tensor([[-1.5, -2.0]])
    _, metrics = ppo.policy_loss(logprobs, old_logprobs, torch.ones(1, 2), torch.ones(1, 2))
    assert metrics["approx_kl"].item() == pytest.approx((-0.5 + 20.0) / 2)  # -(0.5) and -(-20), not -(-48)
    # and from above: log-ratio +30 is clamped to 20; with A < 0 the loss is -A * e^20
    loss, metrics = ppo.policy_loss(t([[-1.0]]), t([[-31.0]]), t([[-1.0]]), torch.ones(1, 1))
    close(metrics["approx_kl"], -20.0)
    close(loss, math.exp(20.0), atol=1e-3)


def test_value_loss_known_answer():
    values = t([[0.1, 0.5, -0.5], [1.0, 0.2, 7.0]])
    old_values = torch.zeros(2, 3, dtype=D)
    returns = t([[0.0, 1.0, 0.0], [0.3, 0.0, 0.0]])
    # clipped values 0.1, 0.2, -0.2, 0.2, 0.2; max(unclipped^2, clipped^2) = 0.01, 0.64, 0.25, 0.49, 0.04
    loss, clipfrac = ppo.value_loss(values, old_values, returns, LOSS_MASK, clip_range=0.2)
    close(loss, 0.5 * (0.01 + 0.64 + 0.25 + 0.49 + 0.04) / 5)
    close(clipfrac, 1 / 5)
    loss, _ = ppo.value_loss(values, old_values, returns, LOSS_MASK, clip_range=0.2, loss_agg="seq-mean")
    close(loss, 0.5 * ((0.01 + 0.64 + 0.25) / 3 + (0.49 + 0.04) / 2) / 2)
    loss, clipfrac = ppo.value_loss(values, old_values, returns, LOSS_MASK, clip_range=None)
    close(loss, 0.5 * (0.01 + 0.25 + 0.25 + 0.49 + 0.04) / 5)
    close(clipfrac, 0.0)
    loss, _ = ppo.value_loss(values, old_values, returns, torch.zeros_like(LOSS_MASK))
    close(loss, 0.0)


def test_value_loss_default_clip_and_normalizer():
    values = t([[0.1, 0.5, -0.5], [1.0, 0.2, 7.0]])
    old_values, returns = torch.zeros(2, 3, dtype=D), t([[0.0, 1.0, 0.0], [0.3, 0.0, 0.0]])
    loss, clipfrac = ppo.value_loss(values, old_values, returns, LOSS_MASK)  # clip_range defaults to 0.2
    close(loss, 0.5 * (0.01 + 0.64 + 0.25 + 0.49 + 0.04) / 5)
    close(clipfrac, 1 / 5)
    loss, _ = ppo.value_loss(values, old_values, returns, LOSS_MASK, normalizer=10.0)
    close(loss, 0.5 * (0.01 + 0.64 + 0.25 + 0.49 + 0.04) / 10)
    loss, _ = ppo.value_loss(values, old_values, returns, LOSS_MASK, clip_range=None, normalizer=10.0)
    close(loss, 0.5 * (0.01 + 0.25 + 0.25 + 0.49 + 0.04) / 10)


def naive_losses(logprobs, old_logprobs, advantages, values, old_values, returns, lengths, clip, dual_clip, vclip):
    """Token-mean policy and value losses re-typed as a loop over python floats."""
    pg_total, vf_total, count = 0.0, 0.0, 0
    for b, length in enumerate(lengths):
        for step in range(length):
            ratio = math.exp(logprobs[b][step] - old_logprobs[b][step])
            adv = advantages[b][step]
            pg = max(-adv * ratio, -adv * min(max(ratio, 1 - clip), 1 + clip))
            if dual_clip is not None and adv < 0:
                pg = min(pg, -adv * dual_clip)
            v, v_old, ret = values[b][step], old_values[b][step], returns[b][step]
            v_clipped = v_old + min(max(v - v_old, -vclip), vclip)
            vf = 0.5 * max((v - ret) ** 2, (v_clipped - ret) ** 2)
            pg_total, vf_total, count = pg_total + pg, vf_total + vf, count + 1
    return pg_total / max(count, 1), vf_total / max(count, 1)


@pytest.mark.parametrize("dual_clip", [None, 3.0])
@pytest.mark.parametrize("lengths", [[5, 5, 5], [5, 2, 0], [1, 4, 3]])
def test_losses_match_naive_loop(dual_clip, lengths):
    torch.manual_seed(sum(lengths))
    logprobs, old_logprobs = -torch.rand(3, 5, dtype=D) * 2, -torch.rand(3, 5, dtype=D) * 2
    advantages, returns = torch.randn(3, 5, dtype=D), torch.randn(3, 5, dtype=D)
    values, old_values = torch.randn(3, 5, dtype=D), torch.randn(3, 5, dtype=D)
    mask = (torch.arange(5) < torch.tensor(lengths).unsqueeze(-1)).to(D)
    pg, _ = ppo.policy_loss(logprobs, old_logprobs, advantages, mask, 0.2, 0.2, dual_clip=dual_clip)
    vf, _ = ppo.value_loss(values, old_values, returns, mask, clip_range=0.3)
    lists = [x.tolist() for x in (logprobs, old_logprobs, advantages, values, old_values, returns)]
    ref_pg, ref_vf = naive_losses(*lists, lengths, 0.2, dual_clip, 0.3)
    close(pg, ref_pg, atol=1e-12)
    close(vf, ref_vf, atol=1e-12)


def test_losses_reject_mismatched_shapes():
    with pytest.raises(ValueError, match="Shape mismatch"):
        ppo.policy_loss(RATIOS, RATIOS, ADVANTAGES[:1], LOSS_MASK)
    with pytest.raises(ValueError, match="Shape mismatch"):
        ppo.value_loss(RATIOS, RATIOS, RATIOS, LOSS_MASK[:, :2])
    row = RATIOS[:1]  # (1, 3) broadcasts against (2, 3): only the shape check can catch it
    for i in range(4):
        args = [RATIOS, RATIOS, ADVANTAGES, LOSS_MASK]
        args[i] = args[i][:1]
        with pytest.raises(ValueError, match="Shape mismatch"):
            ppo.policy_loss(*args)
        args = [RATIOS, RATIOS, RATIOS, LOSS_MASK]
        args[i] = row if i < 3 else LOSS_MASK[:1]
        with pytest.raises(ValueError, match="Shape mismatch"):
            ppo.value_loss(*args)


def test_results_stay_on_the_device_of_the_inputs_whatever_the_default_device():
    """Constants are made on the inputs' device: with "meta" as the default device (standing in for
    `torch.set_default_device("cuda")` with CPU inputs), a constant made on the default device would not mix."""
    logprobs, old, mask, kl = RATIOS.log(), torch.zeros(2, 3, dtype=D), LOSS_MASK, torch.ones(3, 3, dtype=D)
    whiten_x, whiten_mask = t([[0.3, 0.5]]), torch.ones(1, 2)
    with torch.device("meta"):  # every input is made before, on the CPU
        results = [
            (ppo.masked_sum(X, MASK), 7.0),
            (ppo.masked_whiten(whiten_x, whiten_mask, eps=0.0, moments=(0.1, 0.04)), [[1.0, 2.0]]),
            (ppo.masked_whiten(X, MASK, eps=0.0)[2], [0.0, 0.0, 0.0]),
            (ppo.terminal_token_rewards(SCORES, PREFIX_MASK)[1], [0.0, 0.5, 0.0]),
            (ppo.terminal_token_rewards(SCORES, PREFIX_MASK, kl, 0.5)[1], [-0.5, 0.0, 0.0]),
            (ppo.policy_loss(logprobs, old, ADVANTAGES, mask)[0], (-1.2 + 0.8 - 2.0 + 1.1 - 0.7) / 5),
            (ppo.value_loss(old, old, old, mask, None)[0], 0.0),
            (ppo.value_loss(old, old, old, mask, 0.2)[0], 0.0),
        ]
    for actual, expected in results:
        assert actual.device.type == "cpu"
        close(actual, expected)


# ----------------------------------------------------------------------------------------------------------------
# KL, explained variance, controllers
# ----------------------------------------------------------------------------------------------------------------


def test_kl_penalty_estimators_known_answer():
    logprobs, ref_logprobs = t([[0.5, 0.25]]).log(), t([[0.25, 0.5]]).log()
    # logr = ref - logprobs = (-ln 2, ln 2)
    close(ppo.kl_penalty(logprobs, ref_logprobs, "k1"), [[LN2, -LN2]])
    close(ppo.kl_penalty(logprobs, ref_logprobs, "k2"), [[0.5 * LN2**2, 0.5 * LN2**2]])
    close(ppo.kl_penalty(logprobs, ref_logprobs, "k3"), [[0.5 + LN2 - 1, 2 - LN2 - 1]])
    close(ppo.kl_penalty(logprobs, ref_logprobs, "abs"), [[LN2, LN2]])
    with pytest.raises(ValueError, match="Unknown KL estimator"):
        ppo.kl_penalty(logprobs, ref_logprobs, "k4")


def test_kl_penalty_k3_is_clamped_and_finite():
    k3 = ppo.kl_penalty(t([[0.0, -30.0, -1000.0]]), t([[-30.0, 0.0, 0.0]]), "k3")
    close(k3, [[10.0, 10.0, 10.0]])  # exp(30) - 31 and exp(-30) + 29 both exceed the clamp at 10


def test_kl_estimators_are_unbiased_for_sampled_tokens():
    torch.manual_seed(0)
    policy, reference = t([0.5, 0.2, 0.2, 0.1]), t([0.25, 0.25, 0.25, 0.25])
    true_kl = float((policy * (policy / reference).log()).sum())
    tokens = torch.multinomial(policy, 200_000, replacement=True)
    logprobs, ref_logprobs = policy.log()[tokens], reference.log()[tokens]
    for kind in ("k1", "k3"):
        estimate = float(ppo.kl_penalty(logprobs, ref_logprobs, kind).mean())
        assert abs(estimate - true_kl) < 0.01, (kind, estimate, true_kl)
    assert bool((ppo.kl_penalty(logprobs, ref_logprobs, "k3") >= 0).all())


def test_explained_variance_known_answer():
    returns = t([[1.0, 2.0, 3.0], [4.0, 0.0, 0.0]])
    mask = t([[1, 1, 1], [1, 0, 0]])
    close(ppo.explained_variance(returns, returns, mask), 1.0)
    close(ppo.explained_variance(torch.full_like(returns, 2.5), returns, mask), 0.0)
    # residuals (0, 0, 0, -1): unbiased variance 0.25; Var(returns) = 5/3
    values = t([[1.0, 2.0, 3.0], [5.0, 99.0, -99.0]])
    close(ppo.explained_variance(values, returns, mask), 1 - 0.25 / (5 / 3))


def test_explained_variance_constant_returns_never_nan():
    returns, mask = torch.ones(2, 3, dtype=D), t([[1, 1, 0], [1, 0, 0]])
    close(ppo.explained_variance(returns.clone(), returns, mask), 1.0)
    close(ppo.explained_variance(returns * 0.5, returns, mask), 0.0)


def test_explained_variance_of_returns_equal_up_to_round_off_is_not_huge():
    """All scores 0 (the start of an APPS run): returns = advantages + values equal only up to float32 round-off."""
    torch.manual_seed(0)
    values, mask = torch.rand(112, 40), torch.ones(112, 40)
    returns = (values + 0.3) - values - 0.3  # 0 in exact arithmetic; float32 leaves ~1e-8 here and there
    assert 0 < float(ppo.masked_var(returns, mask)) < 1e-12  # round-off, not signal
    assert float(ppo.explained_variance(values, returns, mask)) == 0.0  # was -3.8e13


def test_fixed_kl_controller():
    controller = ppo.FixedKLController(0.05)
    controller.update(current_kl=100.0, n_steps=64)
    assert controller.value == 0.05
    restored = ppo.FixedKLController(0.0)
    restored.load_state_dict(controller.state_dict())
    assert restored.value == 0.05


def test_adaptive_kl_controller_known_answer_and_exact_resume():
    controller = ppo.AdaptiveKLController(init_kl_coef=0.1, target=6.0, horizon=10_000)
    controller.update(current_kl=12.0, n_steps=100)  # error clipped to +0.2: x (1 + 0.2 * 100 / 10000)
    assert controller.value == pytest.approx(0.1 * 1.002, abs=1e-15)
    controller.update(current_kl=3.0, n_steps=100)  # error clipped to -0.2
    assert controller.value == pytest.approx(0.1 * 1.002 * 0.998, abs=1e-15)
    controller.update(current_kl=6.6, n_steps=100)  # error +0.1, inside the clip
    assert controller.value == pytest.approx(0.1 * 1.002 * 0.998 * 1.001, abs=1e-15)

    resumed = ppo.AdaptiveKLController(init_kl_coef=0.1, target=6.0, horizon=10_000)
    resumed.load_state_dict(controller.state_dict())
    for kl in (1.0, 8.0, 5.5):
        controller.update(kl, 32)
        resumed.update(kl, 32)
        assert resumed.value == controller.value
    with pytest.raises(ValueError, match="target > 0"):
        ppo.AdaptiveKLController(0.1, target=0.0, horizon=10)


def test_adaptive_kl_controller_small_target_and_horizon():
    controller = ppo.AdaptiveKLController(init_kl_coef=0.1, target=0.5, horizon=1)  # both valid (> 0)
    controller.update(current_kl=0.55, n_steps=1)  # error +0.1: x (1 + 0.1 * 1 / 1)
    assert controller.value == pytest.approx(0.11, abs=1e-15)
    with pytest.raises(ValueError, match="horizon > 0"):
        ppo.AdaptiveKLController(0.1, target=0.5, horizon=0)


# ----------------------------------------------------------------------------------------------------------------
# Rollout correction
# ----------------------------------------------------------------------------------------------------------------

# old - rollout log-prob: ln 1.5, ln 3 | ln 0.5, 0; padding holds garbage
OLD_LP = t([[math.log(1.5) - 1.0, math.log(3.0) - 2.0, float("nan")], [math.log(0.5) - 0.5, -1.0, 0.0]])
ROLLOUT_LP = t([[-1.0, -2.0, 0.0], [-0.5, -1.0, float("inf")]])
RC_MASK = t([[1, 1, 0], [1, 1, 0]])


def test_rollout_is_weights_known_answer():
    close(ppo.rollout_is_weights(OLD_LP, ROLLOUT_LP, RC_MASK), [[1.5, 2.0, 0.0], [0.5, 1.0, 0.0]])  # 3 capped at 2
    close(ppo.rollout_is_weights(OLD_LP, ROLLOUT_LP, RC_MASK, threshold=5.0), [[1.5, 3.0, 0.0], [0.5, 1.0, 0.0]])
    # sequence: the product of the token ratios, 4.5 (capped at 2) and 0.5, on every valid token
    close(ppo.rollout_is_weights(OLD_LP, ROLLOUT_LP, RC_MASK, "sequence"), [[2.0, 2.0, 0.0], [0.5, 0.5, 0.0]])
    close(ppo.rollout_is_weights(OLD_LP, ROLLOUT_LP, RC_MASK, "sequence", 10.0), [[4.5, 4.5, 0.0], [0.5, 0.5, 0.0]])


def test_rollout_is_weights_edge_cases():
    # no gradient, finite for huge log-ratios (clamped at +-20 like verl), an all-masked row is all 0
    old = t([[100.0, -100.0], [0.0, 0.0]]).requires_grad_()
    mask = t([[1, 1], [0, 0]])
    weights = ppo.rollout_is_weights(old, torch.zeros(2, 2, dtype=D), mask, threshold=1e12)
    assert not weights.requires_grad
    close(weights, [[math.exp(20.0), math.exp(-20.0)], [0.0, 0.0]], atol=1e-3)
    seq = ppo.rollout_is_weights(old, torch.zeros(2, 2, dtype=D), mask, "sequence", 1e12)
    close(seq, [[1.0, 1.0], [0.0, 0.0]])  # the log-ratios cancel over the response
    with pytest.raises(ValueError, match="level must be"):
        ppo.rollout_is_weights(OLD_LP, ROLLOUT_LP, RC_MASK, "seq")
    with pytest.raises(ValueError, match="threshold must be > 0"):
        ppo.rollout_is_weights(OLD_LP, ROLLOUT_LP, RC_MASK, threshold=0.0)
    with pytest.raises(ValueError, match="Shape mismatch"):
        ppo.rollout_is_weights(OLD_LP, ROLLOUT_LP[:, :2], RC_MASK)


def test_rollout_mismatch_metrics_known_answer():
    metrics = ppo.rollout_mismatch_metrics(OLD_LP, ROLLOUT_LP, RC_MASK)
    d = [math.log(1.5), math.log(3.0), math.log(0.5), 0.0]
    close(metrics["logprob_abs_diff"], sum(abs(x) for x in d) / 4)
    close(metrics["kl"], -sum(d) / 4)
    close(metrics["k3_kl"], sum(math.exp(x) - x - 1 for x in d) / 4)
    # ppl_old / ppl_rollout per response: exp(-mean d) = 1 / sqrt(4.5) and 1 / sqrt(0.5), then their mean
    close(metrics["ppl_ratio"], (4.5**-0.5 + 0.5**-0.5) / 2)
    assert not any(v.requires_grad for v in metrics.values())
    # the same log-probs: no mismatch; an all-masked batch gives zeros, never NaN
    same = ppo.rollout_mismatch_metrics(ROLLOUT_LP, ROLLOUT_LP, RC_MASK)
    close(torch.stack([same[k] for k in ("logprob_abs_diff", "kl", "k3_kl", "ppl_ratio")]), [0.0, 0.0, 0.0, 1.0])
    empty = ppo.rollout_mismatch_metrics(OLD_LP, ROLLOUT_LP, torch.zeros_like(RC_MASK))
    close(torch.stack(list(empty.values())), torch.zeros(4))
    # an empty response does not count in ppl_ratio
    padded = ppo.rollout_mismatch_metrics(torch.cat([OLD_LP, t([[9.0] * 3])]), torch.cat([ROLLOUT_LP, t([[0.0] * 3])]),
                                          torch.cat([RC_MASK, t([[0] * 3])]))
    close(padded["ppl_ratio"], metrics["ppl_ratio"])


def test_kl_penalty_defaults_to_k1_checks_shapes_and_clamps_the_log_ratio():
    logprobs, ref = torch.tensor([[-1.0, -2.0, -30.0]]), torch.tensor([[-1.5, -1.0, 0.0]])
    assert torch.equal(ppo.kl_penalty(logprobs, ref), logprobs - ref)  # k1 by default
    with pytest.raises(ValueError, match=r"^Shape mismatch: logprobs=\(1, 3\), ref_logprobs=\(1, 2\)\.$"):
        ppo.kl_penalty(logprobs, ref[:, :2], "k3")
    # k3 far from the reference: the value is capped at 10, and the log-ratio's clamp at 20 keeps the gradient of a
    # ratio beyond float32's exp range finite (0) instead of 0 * inf = nan
    far = torch.tensor([[-100.0, 0.0]], requires_grad=True)
    k3 = ppo.kl_penalty(far, torch.tensor([[0.0, -100.0]]), "k3")
    assert k3.tolist() == [[10.0, 10.0]]
    k3.sum().backward()
    assert torch.isfinite(far.grad).all()


@pytest.mark.parametrize("shape", [(0, 4), (3, 0), (1, 4), (2, 1)])
def test_logprobs_and_entropy_of_empty_and_one_row_or_one_token_batches(shape):
    """Empty batches give empty (B, T) results; one row or one token is computed like any other."""
    torch.manual_seed(0)
    logits, labels = torch.randn(*shape, 7), torch.randint(0, 7, shape)
    expected = torch.log_softmax(logits, -1).gather(-1, labels.unsqueeze(-1)).squeeze(-1)
    probs = torch.softmax(logits, -1)
    entropy = -(probs * torch.log_softmax(logits, -1)).sum(-1)
    for chunk in (1, 3, 1024):
        got = ppo.logprobs_from_logits(logits, labels, chunk_tokens=chunk)
        assert got.shape == shape
        torch.testing.assert_close(got, expected)
        torch.testing.assert_close(ppo.entropy_from_logits(logits, chunk_tokens=chunk), entropy)
    with pytest.raises(ValueError, match=r"^chunk_tokens must be >= 1, got 0\.$"):
        ppo.logprobs_from_logits(logits, labels, chunk_tokens=0)


def test_whitening_over_batch_goes_through_the_all_rank_sum():
    """One rank (the sum is the identity) gives the same advantages as no sum at all; the hook sees the sums."""
    mask = torch.tensor([[1.0, 1.0, 0.0], [1.0, 0.0, 0.0]])
    rewards = torch.tensor([[0.0, 1.0, 0.0], [0.5, 0.0, 0.0]])
    seen = []
    one_rank, _ = ppo.reinforce_plus_plus_advantages(rewards, mask, all_reduce_sum=lambda t: seen.append(t) or t)
    alone, _ = ppo.reinforce_plus_plus_advantages(rewards, mask)
    torch.testing.assert_close(one_rank, alone)
    assert len(seen) == 1 and seen[0].tolist() == [2.5, 2.25, 3.0]  # returns 1, 1, 0.5: sum, sum of squares, n


def test_cispo_refuses_sequence_ratios_and_dual_clip_with_one_message():
    x = torch.zeros(1, 2)
    for kwargs in ({"ratio_level": "sequence"}, {"dual_clip": 3.0}):
        with pytest.raises(ValueError, match=r"^loss_mode 'cispo' clips token weights: it takes ratio_level 'token' "
                                             r"and no dual_clip\.$"):
            ppo.policy_loss(x, x, x, torch.ones(1, 2), loss_mode="cispo", **kwargs)
