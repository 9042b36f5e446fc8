"""`check_ppo_args` on the settings of issue 19 (REINFORCE++, CISPO, rollout correction, DAPO shaping).

Run: `pytest tests/test_args.py`.
"""

import pytest

from lit_codegen.args import PPOArgs, RewardArgs, RolloutArgs, check_ppo_args


@pytest.mark.parametrize("algorithm, rollout, reward, message", [
    ({"adv_estimator": "reinforce_plus_plus_baseline"}, {"n": 1}, {},
     "adv_estimator reinforce_plus_plus_baseline needs --model.rollout.n >= 2"),
])
def test_impossible_combinations_are_rejected_with_the_flag_named(algorithm, rollout, reward, message):
    with pytest.raises(ValueError, match=message):
        check_ppo_args(PPOArgs(**algorithm), RolloutArgs(**rollout), RewardArgs(**reward))


@pytest.mark.parametrize("algorithm, rollout, reward", [
    ({"adv_estimator": "reinforce_plus_plus"}, {"n": 1}, {}),  # no group: a batch-whitened return
    ({"adv_estimator": "reinforce_plus_plus_baseline"}, {"n": 2}, {}),
])
def test_working_combinations_pass(algorithm, rollout, reward):
    check_ppo_args(PPOArgs(**algorithm), RolloutArgs(**rollout), RewardArgs(**reward))
