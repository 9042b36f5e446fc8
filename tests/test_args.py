"""`check_ppo_args` on the settings of issue 19 (REINFORCE++, CISPO, rollout correction, DAPO shaping).

Run: `pytest tests/test_args.py`.
"""

import pytest

from lit_codegen.args import PPOArgs, RewardArgs, RolloutArgs, check_ppo_args


@pytest.mark.parametrize("algorithm, rollout, reward, message", [
    ({"adv_estimator": "reinforce_plus_plus_baseline"}, {"n": 1}, {},
     "adv_estimator reinforce_plus_plus_baseline needs --model.rollout.n >= 2"),
    ({"policy_loss": "cispo", "policy_ratio": "sequence"}, {}, {}, "policy_loss cispo .*policy_ratio token"),
    ({"policy_loss": "cispo", "dual_clip": 3.0}, {}, {}, "policy_loss cispo .*dual_clip null"),
    ({"clip_ratio_low": 1.0}, {}, {}, r"clip_ratio_low must be in \[0, 1\) \(or 1 = no lower bound"),
    ({"policy_loss": "cispo", "clip_ratio_low": 1.5}, {}, {}, "clip_ratio_low must be in"),
    ({"rollout_is": "token"}, {"backend": "hf"}, {}, "rollout_is needs the sampler's log-probs, which only "
     "--model.rollout.backend vllm returns"),
    ({"rollout_is_threshold": 0.0}, {}, {}, "rollout_is_threshold must be > 0"),
    ({"rollout_is_threshold": float("nan")}, {}, {}, "rollout_is_threshold must be > 0"),
    ({"filter_groups": True}, {"n": 1}, {}, "filter_groups compares the samples of each prompt: it needs "
     "--model.rollout.n >= 2"),
    ({}, {"max_new_tokens": 64}, {"overlong_buffer_len": 65},
     r"overlong_buffer_len must be in \[0, --model.rollout.max_new_tokens 64\], got 65"),
    ({}, {}, {"overlong_buffer_len": -1}, "overlong_buffer_len must be in"),
    ({}, {}, {"overlong_penalty_factor": -0.5}, "overlong_penalty_factor must be >= 0, got -0.5"),
    ({}, {}, {"overlong_penalty_factor": float("nan")}, "overlong_penalty_factor must be >= 0"),
])
def test_impossible_combinations_are_rejected_with_the_flag_named(algorithm, rollout, reward, message):
    with pytest.raises(ValueError, match=message):
        check_ppo_args(PPOArgs(**algorithm), RolloutArgs(**rollout), RewardArgs(**reward))


@pytest.mark.parametrize("algorithm, rollout, reward", [
    ({"adv_estimator": "reinforce_plus_plus"}, {"n": 1}, {}),  # no group: a batch-whitened return
    ({"adv_estimator": "reinforce_plus_plus_baseline"}, {"n": 2}, {}),
    ({"policy_loss": "cispo", "clip_ratio_low": 1.0, "clip_ratio_high": 0.28}, {}, {}),  # no lower bound
    ({"filter_groups": True, "filter_truncated": True, "adv_estimator": "grpo"}, {"n": 2, "max_new_tokens": 64},
     {"overlong_buffer_len": 64, "overlong_penalty_factor": 0.5}),  # DAPO's three at once; the window may be all
])
def test_working_combinations_pass(algorithm, rollout, reward):
    check_ppo_args(PPOArgs(**algorithm), RolloutArgs(**rollout), RewardArgs(**reward))
