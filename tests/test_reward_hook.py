"""The reward hook (`reward.reward_fn`): loading, errors that name the hook and the sample, and its wiring."""

from types import SimpleNamespace

import lightning as L
import pytest
import torch
from test_module import _StubEvaluator, make, trainer

from lit_codegen.reward.hooks import format_bonus, hook_rewards, load_reward_fn, verdict_fractions


def test_load_reward_fn_by_path_and_one_clear_error():
    assert load_reward_fn("lit_codegen.reward.hooks:format_bonus") is format_bonus
    assert load_reward_fn("lit_codegen.reward.hooks.format_bonus") is format_bonus
    for path, words in [("no_such_module:f", "cannot be loaded"), ("lit_codegen.reward.hooks:nope", "cannot be loaded"),
                        ("lit_codegen.reward.hooks:VERDICTS", "not a function"), ("nodots", "expected")]:
        with pytest.raises(ValueError, match=words) as err:
            load_reward_fn(path)
        assert path in str(err.value)


def test_hook_errors_name_the_hook_the_sample_and_its_problem():
    problems = [{"problem_id": 7}, {"problem_id": 9}]
    results = [SimpleNamespace(pass_rate=1.0, outcomes=["passed"])] * 2
    assert hook_rewards(format_bonus, "fb", problems, ["```python\nx\n```", "x"], ["x", "x"], results) == [1.1, 1.0]
    with pytest.raises(RuntimeError, match=r"reward hook h on sample 0 \(problem_id 7\) raised ZeroDivisionError"):
        hook_rewards(lambda **kw: 1 / 0, "h", problems, ["a", "b"], ["a", "b"], results)
    for bad in ("high", float("nan"), None, True):
        with pytest.raises(RuntimeError, match=r"sample 1 \(problem_id 9\) returned"):
            hook_rewards(lambda problem, **kw: 0.5 if problem["problem_id"] == 7 else bad, "h", problems, ["a", "b"],
                         ["a", "b"], results)


def test_verdict_fractions_of_all_tests():
    results = [SimpleNamespace(outcomes=["passed", "timeout"]), SimpleNamespace(outcomes=["passed", "passed"])]
    out = verdict_fractions(results, "train")
    assert out["train/verdict/passed"] == 0.75 and out["train/verdict/timeout"] == 0.25
    assert sum(out.values()) == 1.0 and len(out) == 7


def _train(reward_fn=None):
    L.seed_everything(0)
    module, data = make(reward_kw={"reward_fn": reward_fn})
    module._evaluator = _StubEvaluator([1.0, 0.0, 0.5, 0.25, 0.0, 1.0, 0.75, 0.0])
    trainer(1).fit(module, datamodule=data)
    return module


def test_a_hook_set_in_the_settings_changes_the_training_reward_and_the_pass_rate_hook_changes_nothing():
    plain, same = _train(), _train("reward_hooks_for_tests:the_pass_rate")
    by_id = _train("reward_hooks_for_tests:by_problem")
    assert len(set(plain.last_scores.tolist())) > 2  # the stub's pass rates
    assert torch.equal(plain.last_scores, same.last_scores)
    for (name, p), q in zip(plain.named_parameters(), same.parameters()):
        assert torch.equal(p, q), f"{name}: the identity hook trained differently"
    ids = torch.tensor([p["problem_id"] for p in by_id.last_rollout["problems"]])
    assert torch.equal(by_id.last_scores, (ids % 2 == 0).float())
    assert by_id.last_scores.max() == 1 and not torch.equal(by_id.last_scores, plain.last_scores)


@pytest.mark.parametrize("hook, words", [("reward_hooks_for_tests:broken", "raised ZeroDivisionError"),
                                         ("reward_hooks_for_tests:not_a_number", "returned 'high'")])
def test_a_failing_hook_stops_training_with_its_name(hook, words):
    with pytest.raises(RuntimeError, match=f"reward hook {hook} on sample 0 .*{words}"):
        _train(hook)


def test_a_missing_hook_is_refused_before_anything_is_built():
    with pytest.raises(ValueError, match="reward_fn 'reward_hooks_for_tests:nope' cannot be loaded"):
        make(reward_kw={"reward_fn": "reward_hooks_for_tests:nope"})
