"""Run lit_codegen's PPO math and verl's on the same random batches and print the largest difference of each pair.

verl is not a dependency of lit_codegen, so this runs in a separate environment that has verl (and torch):

    python -m venv /tmp/verl_venv && /tmp/verl_venv/bin/pip install verl==0.9.1 --no-deps
    /tmp/verl_venv/bin/pip install torch numpy packaging ray tensordict omegaconf transformers codetiming orjson
    /tmp/verl_venv/bin/python scripts/bench/verl_parity.py [--cases 200]

Compared: REINFORCE++ and REINFORCE++-baseline advantages, CISPO (loss, gradient, clip fraction), the PPO loss with
rollout importance weights and dual clip, the rollout-correction weights and mismatch metrics, and the value loss
with its clip fraction. Exit status 1 if any difference exceeds the tolerance (float64 inputs).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
from verl.trainer.config.algorithm import AlgoConfig  # noqa: E402
from verl.trainer.ppo import core_algos, rollout_corr_helper  # noqa: E402
from verl.workers.config.actor import ActorConfig  # noqa: E402

from lit_codegen import ppo  # noqa: E402

D = torch.float64


def random_batch(gen: torch.Generator, groups: int, n: int, width: int, min_len: int = 0):
    """Prefix masks of random lengths, log-probs near each other, scores, advantages."""
    rows = groups * n
    lengths = torch.randint(min_len, width + 1, (rows, 1), generator=gen)
    mask = (torch.arange(width) < lengths).to(D)
    old = -torch.rand(rows, width, generator=gen, dtype=D) * 3
    logprobs = old + 0.3 * torch.randn(rows, width, generator=gen, dtype=D)
    rollout = old + 0.2 * torch.randn(rows, width, generator=gen, dtype=D)
    scores = torch.randint(0, 3, (rows,), generator=gen).to(D) / 2  # ties make all-equal groups common
    advantages = torch.randn(rows, width, generator=gen, dtype=D)
    return mask, old, logprobs, rollout, scores, advantages


def max_diff(a, b) -> float:
    return (torch.as_tensor(a, dtype=D) - torch.as_tensor(b, dtype=D)).abs().max().item()


def one_case(gen: torch.Generator, worst: dict[str, float]) -> None:
    n = int(torch.randint(2, 5, (), generator=gen))
    groups, width = int(torch.randint(1, 5, (), generator=gen)), int(torch.randint(2, 9, (), generator=gen))
    mask, old, logprobs, rollout, scores, advantages = random_batch(gen, groups, n, width)
    mask[0] = 1.0  # at least two valid tokens (verl refuses to whiten fewer)
    gamma = float(torch.rand((), generator=gen))

    def record(name: str, value: float) -> None:
        worst[name] = max(worst.get(name, 0.0), value)

    def record_whitened(name: str, before: torch.Tensor, ours: torch.Tensor, theirs: torch.Tensor) -> None:
        # verl's masked means divide by count + 1e-8; whitening multiplies that 1e-9 error by up to 1e4
        # (rsqrt(var + 1e-8)) where the token variance is about 0: such batches are counted, not compared
        if ppo.masked_var(before, mask) < 1e-6:
            worst[f"{name}: batches of one value, skipped"] = worst.get(f"{name}: batches of one value, skipped", 0) + 1
        else:
            record(name, max_diff(ours, theirs))

    # REINFORCE++: verl takes the token rewards (score on the last token, KL penalty on each)
    kl = 0.1 * torch.randn(mask.shape, generator=gen, dtype=D)
    rewards = ppo.terminal_token_rewards(scores, mask, kl * mask, kl_coef=0.3)
    ours_adv, ours_ret = ppo.reinforce_plus_plus_advantages(rewards, mask, gamma)
    verl_adv, verl_ret = core_algos.compute_reinforce_plus_plus_outcome_advantage(rewards, mask,
                                                                                 config=AlgoConfig(gamma=gamma))
    record_whitened("reinforce_plus_plus advantages", ours_ret, ours_adv, verl_adv)
    record("reinforce_plus_plus returns", max_diff(ours_ret, verl_ret))

    # REINFORCE++-baseline: verl's score is the sum of the token rewards; groups given by an index array
    index = np.repeat(np.arange(groups), n).astype(str)
    verl_adv, _ = core_algos.compute_reinforce_plus_plus_baseline_outcome_advantage(rewards, mask, index)
    ours_adv = ppo.reinforce_plus_plus_baseline_advantages(rewards.sum(-1), n, mask)
    centered = ppo.grpo_advantages(rewards.sum(-1), n, mask, norm_by_std=False)
    record_whitened("reinforce_plus_plus_baseline advantages", centered, ours_adv, verl_adv)

    # CISPO and the PPO loss with rollout IS weights (verl always applies its dual clip, clip_ratio_c = 3)
    low, high = float(torch.rand((), generator=gen)) * 0.5, float(torch.rand((), generator=gen)) * 0.5
    config = ActorConfig(strategy="fsdp", clip_ratio_low=low, clip_ratio_high=high, ppo_micro_batch_size_per_gpu=1,
                         rollout_n=n)
    weights = torch.rand(mask.shape, generator=gen, dtype=D) * 2
    for mode, agg in (("token-mean", "token-mean"), ("seq-mean-token-mean", "seq-mean")):
        for loss_mode, verl_fn, dual in (("cispo", core_algos.compute_policy_loss_cispo, None),
                                         ("ppo", core_algos.compute_policy_loss_vanilla, 3.0)):
            lp_ours, lp_verl = logprobs.clone().requires_grad_(), logprobs.clone().requires_grad_()
            loss, metrics = ppo.policy_loss(lp_ours, old, advantages, mask, low, high, dual, agg,
                                            loss_mode=loss_mode, is_weights=weights)
            verl_loss, verl_metrics = verl_fn(old, lp_verl, advantages, mask, mode, config, rollout_is_weights=weights)
            loss.backward()
            verl_loss.backward()
            record(f"{loss_mode} loss ({agg})", max_diff(loss, verl_loss))
            record(f"{loss_mode} gradient ({agg})", max_diff(lp_ours.grad, lp_verl.grad))
            record(f"{loss_mode} clipfrac", abs(metrics["clipfrac"].item() - verl_metrics["actor/pg_clipfrac"]))
            record(f"{loss_mode} approx_kl", abs(metrics["approx_kl"].item() - verl_metrics["actor/ppo_kl"]))

    # rollout correction weights (a float threshold = TIS) and mismatch metrics (no empty response: verl averages
    # the perplexity ratio over every row)
    threshold = 1.0 + float(torch.rand((), generator=gen)) * 4
    for level in ("token", "sequence"):
        verl_w, _ = rollout_corr_helper.compute_rollout_correction_weights(old - rollout, mask, level, threshold)
        record(f"rollout_is_weights ({level})", max_diff(ppo.rollout_is_weights(old, rollout, mask, level, threshold),
                                                         verl_w))
    full = mask.clone()
    full[:, 0] = 1.0
    ours = ppo.rollout_mismatch_metrics(old, rollout, full)
    theirs = rollout_corr_helper.compute_offpolicy_metrics(old, rollout, full)
    for key in ("kl", "k3_kl", "ppl_ratio"):
        record(f"rollout_mismatch_metrics {key}", abs(ours[key].item() - theirs[key]))

    # value loss and its clip fraction
    values, returns = torch.randn(mask.shape, generator=gen, dtype=D), torch.randn(mask.shape, generator=gen, dtype=D)
    old_values = values + 0.3 * torch.randn(mask.shape, generator=gen, dtype=D)
    loss, clipfrac = ppo.value_loss(values, old_values, returns, mask, 0.2)
    verl_loss, verl_clipfrac = core_algos.compute_value_loss(values, returns, old_values, mask, 0.2)
    record("value_loss", max_diff(loss, verl_loss))
    record("value_loss clipfrac", max_diff(clipfrac, verl_clipfrac))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cases", type=int, default=200)
    parser.add_argument("--tolerance", type=float, default=1e-7,
                        help="verl's masked means add 1e-8 to the count: differences of about 1e-9 are expected")
    args = parser.parse_args()
    gen = torch.Generator().manual_seed(0)
    worst: dict[str, float] = {}
    for _ in range(args.cases):
        one_case(gen, worst)
    # the float32 value-clip case of the issue: the clip is inactive, so nothing may count as clipped
    f32 = dict(dtype=torch.float32)
    example = [torch.tensor([[x]], **f32) for x in (-0.05286094918847084, -0.12007129192352295, -0.09094037115573883)]
    _, clipfrac = ppo.value_loss(example[0], example[1], example[2], torch.ones(1, 1), 0.2)
    _, verl_clipfrac = core_algos.compute_value_loss(example[0], example[2], example[1], torch.ones(1, 1), 0.2)
    worst["value_loss clipfrac (issue's float32 case)"] = abs(clipfrac.item() - verl_clipfrac.item())
    width = max(len(k) for k in worst)
    for name, value in worst.items():
        print(f"{name:<{width}}  {value}" if "skipped" in name else f"{name:<{width}}  {value:.3e}")
    failed = [name for name, value in worst.items() if not value <= args.tolerance and "skipped" not in name]
    print(f"{args.cases} random cases: " + (f"FAILED {failed}" if failed else f"all within {args.tolerance:g}"))
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
