"""PPOModule end to end on the tiny model: parameters move, the reference stays frozen, steps count PPO iterations."""

import importlib.util

import lightning as L
import pytest
import torch
from torch._dynamo.utils import counters

from lit_codegen.args import OptimArgs, PPOArgs, RewardArgs, RolloutArgs
from lit_codegen.data.datamodule import AppsDataModule
from lit_codegen.experience import estimate_advantages, sequences
from lit_codegen.module import PPOModule


def make(adv_estimator="gae", n=2, kl_coef=0.05, lr=1e-2, ppo_epochs=1, mini=8, micro=4, batch=4, model_kw=None,
         optim_kw=None, reward_kw=None, rollout_kw=None, **algo):
    module = PPOModule(
        model="tiny",
        **(model_kw or {}),
        algorithm=PPOArgs(adv_estimator=adv_estimator, ppo_epochs=ppo_epochs, mini_batch_size=mini,
                          micro_batch_size=micro, kl_coef=kl_coef, **algo),
        rollout=RolloutArgs(n=n, max_new_tokens=12, **(rollout_kw or {})),
        reward=RewardArgs(workers=1, max_tests=2, **(reward_kw or {})),
        optim=OptimArgs(actor_lr=lr, critic_lr=lr, max_grad_norm=1e9, **(optim_kw or {})),
    )
    data = AppsDataModule(template_type="base", train_batch_size=batch, val_batch_size=8)
    data.connect(module.tokenizer)
    return module, data


def trainer(max_steps, **kw):
    return L.Trainer(accelerator="cpu", max_steps=max_steps, logger=False, enable_checkpointing=False,
                     enable_progress_bar=False, enable_model_summary=False, limit_val_batches=0, **kw)


def test_one_iteration_changes_every_trainable_param_and_not_the_reference():
    L.seed_everything(0)
    module, data = make()
    module.configure_model()
    before = {n: p.detach().clone() for n, p in module.named_parameters()}
    trainer(1).fit(module, datamodule=data)
    changed = {n: not torch.equal(before[n], p.detach()) for n, p in module.named_parameters()}
    for name, did_change in changed.items():
        if name.startswith("ref."):
            assert not did_change, f"reference policy parameter {name} changed"
        else:
            assert did_change, f"trainable parameter {name} did not change"
    assert any(n.startswith("critic.") for n in changed) and any(n.startswith("ref.") for n in changed)
    assert not any(p.requires_grad for p in module.ref.parameters())


@pytest.mark.timeout(120)  # seconds each; if the step count stops advancing, max_steps is never reached
@pytest.mark.parametrize("ppo_epochs,mini,micro", [(1, 8, 8), (2, 4, 2)])
def test_max_steps_counts_ppo_iterations_not_optimizer_steps(ppo_epochs, mini, micro):
    L.seed_everything(0)
    module, data = make(ppo_epochs=ppo_epochs, mini=mini, micro=micro)
    calls = []
    module.training_step = _counting(module.training_step, calls)
    t = trainer(3)
    t.fit(module, datamodule=data)
    assert len(calls) == 3  # 3 prompt batches = 3 PPO iterations, whatever the optimizer steps per iteration
    assert module.ppo_iteration == 3 and t.global_step == 3


CRITIC_FREE = {  # test name: (adv_estimator, other settings)
    "grpo": ("grpo", {}), "rloo": ("rloo", {}),
    "dr-grpo": ("grpo", {"grpo_norm_by_std": False, "loss_agg": "seq-mean-token-sum-norm"}),
    "cispo": ("grpo", {"policy_loss": "cispo"}),
    "reinforce_plus_plus": ("reinforce_plus_plus", {}),
    "reinforce_plus_plus_baseline": ("reinforce_plus_plus_baseline", {}),
}


@pytest.mark.parametrize("estimator", list(CRITIC_FREE))
def test_critic_free_estimators_train_without_a_critic(estimator):
    L.seed_everything(0)
    adv_estimator, settings = CRITIC_FREE[estimator]
    module, data = make(adv_estimator=adv_estimator, n=2, kl_coef=0.0, kl_loss_coef=0.1, ppo_epochs=2, **settings)
    module.configure_model()
    # the untrained model's programs would all score 0: no signal; REINFORCE++ (no baseline) and its baseline variant
    # whiten to the same values when every group has the same mean, so its groups differ there
    pass_rates = [1.0, 0.0, 1.0, 1.0, 0.0, 0.0, 0.5, 0.0] if estimator.startswith("reinforce") else [1.0, 0.0] * 4
    module._evaluator = _StubEvaluator(pass_rates)
    before = {n: p.detach().clone() for n, p in module.actor.named_parameters()}
    seen, update = [], module._update_actor

    def recording_update(exp, p_len):
        seen.append((exp, update(exp, p_len)))
        return seen[-1][1]

    module._update_actor = recording_update
    t = trainer(1)
    t.fit(module, datamodule=data)
    assert module.critic is None and module.ref is not None
    assert module.ppo_iteration == 1
    assert all(not torch.equal(before[n], p) for n, p in module.actor.named_parameters())  # the actor trained
    (exp, metrics), = seen
    # every prompt's two samples scored 1 and 0: leave-one-out 1 - 0, (1 - 0.5) / unbiased std 0.5 ** 0.5, or (Dr.
    # GRPO) only centred; REINFORCE++ whitens over all response tokens of the batch the returns 1, 0 (no baseline)
    # or the group-centred 0.5, -0.5 (responses differ in length, so the token mean is not 0)
    mask = exp["mask"].bool()
    if estimator.startswith("reinforce_plus_plus"):
        raw = torch.tensor(pass_rates)
        raw = raw - (raw.view(-1, 2).mean(-1).repeat_interleave(2) if estimator.endswith("baseline") else 0.0)
        tokens = raw[:, None].expand_as(mask)[mask]
        expected = torch.where(mask, (raw[:, None] - tokens.mean()) / tokens.std(), 0.0)
    else:
        a = {"rloo": 1.0, "grpo": 0.5 / (0.5**0.5 + 1e-6), "cispo": 0.5 / (0.5**0.5 + 1e-6), "dr-grpo": 0.5}[estimator]
        expected = torch.tensor([a, -a] * 4)[:, None] * exp["mask"]
    torch.testing.assert_close(exp["advantages"], expected, rtol=1e-4, atol=1e-5)
    # the KL loss (k3 to the reference) is 0 in epoch 1, where the actor is the reference, and positive in epoch 2
    assert metrics["actor/kl_loss"] > 1e-6
    assert float(t.callback_metrics["actor/kl_loss"]) == pytest.approx(metrics["actor/kl_loss"])


def test_compiled_layers_and_head_train_like_eager():
    """`compile=True` (inductor, here on CPU) with gradient checkpointing: same rollouts, same losses as eager."""
    metrics = {}
    for compiled in (False, True):
        L.seed_everything(0)
        module, data = make(lr=1e-3, model_kw={"compile": compiled, "gradient_checkpointing": compiled})
        graphs_before = counters["stats"]["unique_graphs"]
        t = trainer(2)
        t.fit(module, datamodule=data)
        assert (counters["stats"]["unique_graphs"] > graphs_before) == compiled  # dynamo really traced the layers
        metrics[compiled] = {k: float(t.callback_metrics[k]) for k in
                             ("critic/score/mean", "actor/pg_loss", "critic/vf_loss", "actor/entropy", "actor/ppo_kl")}
    assert metrics[True]["critic/score/mean"] == metrics[False]["critic/score/mean"]  # generation stays eager
    for key, eager in metrics[False].items():
        assert metrics[True][key] == pytest.approx(eager, rel=1e-3, abs=1e-5), key


def test_learning_rate_schedules_advance_only_when_their_model_trains():
    L.seed_everything(0)
    module, data = make(critic_warmup=1, optim_kw={"warmup_steps": 4})
    trainer(2).fit(module, datamodule=data)
    actor_schedule, critic_schedule = module.lr_schedulers()
    assert critic_schedule.last_epoch == 2 and actor_schedule.last_epoch == 1  # the actor sat out iteration 1
    assert module._raw_optimizers()[0].param_groups[0]["lr"] == pytest.approx(1e-2 * 2 / 4)  # 2nd warmup step next


def test_logged_learning_rate_and_kl_coefficient_are_the_ones_the_iteration_used():
    """Both step after the update; logging them afterwards showed the next iteration's values."""
    L.seed_everything(0)
    module, data = make(kl_target=0.01, kl_horizon=10, optim_kw={"warmup_steps": 2})
    logged, log_iteration = [], module._log_iteration
    module._log_iteration = lambda metrics, *rest: logged.append(dict(metrics)) or log_iteration(metrics, *rest)
    trainer(2).fit(module, datamodule=data)
    assert [m["actor/lr"] for m in logged] == pytest.approx([1e-2 * 0.5, 1e-2])  # warmup: half, then full
    assert [m["critic/lr"] for m in logged] == pytest.approx([1e-2 * 0.5, 1e-2])
    assert logged[0]["actor/kl_coef"] == 0.05 and logged[1]["actor/kl_coef"] != 0.05  # the start value, then adapted


def test_critic_free_estimators_ignore_the_critic_warmup():
    """Switching the demo config (critic_warmup 2) to GRPO must not leave the first iterations training nothing."""
    L.seed_everything(0)
    module, data = make(adv_estimator="grpo", n=2, critic_warmup=2)
    trainer(1).fit(module, datamodule=data)
    assert module.lr_schedulers().last_epoch == 1  # the actor's (only) schedule stepped: it trained in iteration 1


def test_bad_settings_name_the_flag():
    with pytest.raises(ValueError, match="rollout.n"):
        PPOModule(algorithm=PPOArgs(adv_estimator="grpo"), rollout=RolloutArgs(n=1))


def _counting(fn, calls):
    def wrapped(*args, **kwargs):
        calls.append(1)
        return fn(*args, **kwargs)

    return wrapped


def test_checkpoint_of_another_model_class_is_rejected_by_name():
    module = PPOModule(model="tiny")
    with pytest.raises(ValueError, match="not written by PPOModule"):
        module.on_load_checkpoint({"state_dict": {"model.lm_head.weight": torch.zeros(1)}})  # e.g. an SFTModule's


@pytest.mark.parametrize("estimator", ["grpo", "rloo"])
def test_group_estimators_subtract_the_kl_penalty_from_the_score(estimator):
    module, _ = make(adv_estimator=estimator, n=2, kl_coef=0.5)
    scores, mask = torch.tensor([1.0, 0.0, 0.5, 0.5]), torch.ones(4, 2)
    kl = torch.tensor([[0.0, 0.0], [0.0, 0.0], [1.0, 1.0], [0.0, 0.0]])  # the third response drifted: -0.5 * 2
    without_kl, _ = estimate_advantages(scores, None, None, mask, module.algo, 2, module.kl_ctl.value, None)
    with_kl, _ = estimate_advantages(scores, None, kl, mask, module.algo, 2, module.kl_ctl.value, None)
    assert torch.equal(with_kl[:2], without_kl[:2])  # first group: no KL, same advantages
    assert torch.equal(without_kl[2:], torch.zeros(2, 2))  # second group: equal scores
    # ... until the penalty (0.5 x summed KL 2 = 1) makes the drifted sample the worse one: scores -0.5 and 0.5
    expected = 1.0 if estimator == "rloo" else 0.5 / 0.5**0.5  # leave-one-out difference; over the unbiased std
    torch.testing.assert_close(with_kl[2:], torch.tensor([[-expected] * 2, [expected] * 2]))


@pytest.mark.parametrize("algorithm, rollout, message", [
    ({"adv_estimator": "rloo"}, {"n": 1}, "needs --model.rollout.n >= 2"),
    ({"micro_batch_size": 32}, {}, "micro_batch_size must be <= "),
    ({"mini_batch_size": 0}, {}, "mini_batch_size must be at least 1"),
    ({}, {"temperature": 0.0}, "temperature must be > 0"),
    ({}, {"val_n": 4}, "val_greedy false"),
    # ranges the math needs: each used to fail deep inside a run, or to do nothing
    ({"dual_clip": 0.5}, {}, r"dual_clip must be > 1 \(verl's clip_ratio_c\)"),
    ({"kl_target": 0.0, "kl_coef": 0.1}, {}, "kl_target must be > 0"),
    ({"kl_horizon": 0}, {}, "kl_horizon must be >= 1"),
    ({"kl_target": 6.0}, {}, "needs --model.algorithm.kl_coef > 0"),
    ({"gamma": 1.5}, {}, r"gamma must be in \[0, 1\]"),
    ({"clip_ratio_low": float("nan")}, {}, "clip_ratio_low must be in"),
    ({}, {"top_p": 0.0}, r"top_p must be in \(0, 1\]"),
])
def test_settings_that_cannot_work_are_rejected_with_the_flag_named(algorithm, rollout, message):
    from lit_codegen.args import check_ppo_args

    with pytest.raises(ValueError, match=message):
        check_ppo_args(PPOArgs(**algorithm), RolloutArgs(**rollout))
    check_ppo_args(PPOArgs(), RolloutArgs(), RewardArgs())  # the defaults work


@pytest.mark.skipif(importlib.util.find_spec("vllm") is not None, reason="checks the error users see without vLLM")
def test_the_vllm_backend_without_vllm_is_refused_before_anything_is_built():
    from lit_codegen.args import check_ppo_args

    with pytest.raises(ValueError, match=r"backend vllm needs vLLM .* or use --model.rollout.backend hf"):
        check_ppo_args(PPOArgs(), RolloutArgs(backend="vllm"))


@pytest.mark.parametrize("reward, message", [
    ({"timeout": float("nan")}, "--model.reward.timeout must be a positive number of seconds"),
    ({"workers": 0}, "--model.reward.workers must be a whole number >= 1"),
    ({"memory_mb": -5}, "--model.reward.memory_mb must be"),
    ({"max_tests": 0}, "--model.reward.max_tests must be a whole number >= 1"),
])
def test_reward_settings_are_checked_before_the_evaluator_starts(reward, message):
    from lit_codegen.args import check_ppo_args

    with pytest.raises(ValueError, match=message):
        check_ppo_args(PPOArgs(), RolloutArgs(), RewardArgs(**reward))


class _StubEvaluator:
    """Scores the programs of a rollout with fixed pass rates, in order (no sandbox)."""

    def __init__(self, pass_rates):
        self.pass_rates = pass_rates

    def evaluate_async(self, programs, tests, max_tests=None):
        from concurrent.futures import Future
        from types import SimpleNamespace

        future = Future()
        future.set_result([SimpleNamespace(pass_rate=r, outcomes=[]) for r in self.pass_rates[: len(programs)]])
        return future

    def close(self):
        pass


def _fixed_rollout(module, data):
    """Two sampled responses to the first training prompt, and their summed log-probs under the current actor."""
    from lit_codegen.models.logprob_head import response_logprobs
    from lit_codegen.rollout import HFRollout

    data.setup("fit")
    batch = next(iter(data.train_dataloader()))
    roll = HFRollout(module.actor, module.tokenizer).generate(batch["input_ids"], batch["attention_mask"],
                                                              module.train_sampling())
    assert roll.texts[0] != roll.texts[1]

    def summed_logprobs():
        seq, attn, pos = sequences(roll)
        with torch.no_grad():
            logprobs, _ = response_logprobs(module.actor, seq, attn, pos, roll.prompt_ids.shape[1])
        return (logprobs * roll.response_mask).sum(-1)

    return roll, summed_logprobs


def test_one_update_makes_the_rewarded_response_likelier_and_the_other_less_likely():
    L.seed_everything(0)
    module, data = make(adv_estimator="grpo", n=2, kl_coef=0.0, lr=1e-3, mini=2, micro=2, batch=1)
    module.configure_model()
    roll, summed_logprobs = _fixed_rollout(module, data)
    before = summed_logprobs()
    module.generate = lambda batch, params: roll  # the same two responses, scored 1 and 0
    module._evaluator = _StubEvaluator([1.0, 0.0])
    trainer(1).fit(module, datamodule=data)
    after = summed_logprobs()
    assert after[0] > before[0] and after[1] < before[1], (before, after)


def test_micro_batches_accumulate_to_the_mini_batch_gradient():
    grads = {}
    for micro in (8, 2):
        L.seed_everything(0)
        module, data = make(mini=8, micro=micro, lr=1e-3)
        grads[micro], step = [], module._step

        def record(optimizer, model, step=step, out=grads[micro]):  # the gradients each optimizer step applies
            out.append({n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None})
            return step(optimizer, model)

        module._step = record
        trainer(1).fit(module, datamodule=data)
    assert len(grads[8]) == len(grads[2]) == 2  # critic, then actor: one mini-batch each
    for whole, accumulated in zip(grads[8], grads[2]):
        assert whole.keys() == accumulated.keys()
        for name, grad in whole.items():
            torch.testing.assert_close(accumulated[name], grad, rtol=1e-4, atol=1e-7)


def test_each_optimizer_step_applies_only_its_own_mini_batch_gradient():
    """With lr 0 the parameters stay put, so both epochs' mini-batch (the whole batch, reshuffled) has the same
    gradient; a gradient left over from the previous optimizer step would double the second one."""
    L.seed_everything(0)
    module, data = make(kl_coef=0.0, lr=0.0, ppo_epochs=2, mini=8, micro=4)
    module._evaluator = _StubEvaluator([1.0, 0.0] * 4)
    grads, step = [], module._step

    def record(optimizer, model):  # the gradients each optimizer step applies
        grads.append({n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None})
        return step(optimizer, model)

    module._step = record
    trainer(1).fit(module, datamodule=data)
    assert len(grads) == 4  # critic epoch 1, 2, then actor epoch 1, 2
    for first, second in ((grads[0], grads[1]), (grads[2], grads[3])):
        assert first and first.keys() == second.keys()
        for name, grad in first.items():
            assert grad.abs().sum() > 0, name
            torch.testing.assert_close(second[name], grad, rtol=1e-4, atol=1e-7, msg=lambda m, n=name: f"{n}: {m}")


def test_gae_returns_are_the_scores_and_advantages_the_whitened_score_minus_value():
    """gamma = lam = 1 and no KL: every response token's return is its sequence's score (the critic's target), and
    its advantage is score - value, whitened to zero mean and unit variance over the batch's response tokens."""
    L.seed_everything(0)
    module, data = make(kl_coef=0.0, n=2)
    scores = [1.0, 0.0, 0.5, 0.25, 0.0, 1.0, 0.75, 0.0]
    module._evaluator = _StubEvaluator(scores)
    _shorten_responses(module, torch.tensor([3, 12, 5, 9, 12, 2, 7, 11]))  # padding in most rows
    seen = []
    for name in ("_update_critic", "_update_actor"):
        update = getattr(module, name)
        setattr(module, name, lambda exp, p_len, update=update: seen.append(exp) or update(exp, p_len))
    trainer(1).fit(module, datamodule=data)
    assert len(seen) == 2 and seen[0] is seen[1]
    exp = seen[0]
    mask = exp["mask"].bool()
    assert mask.sum(-1).tolist() == [3, 12, 5, 9, 12, 2, 7, 11]
    returns = torch.tensor(scores)[:, None] * exp["mask"]
    torch.testing.assert_close(exp["returns"], returns, msg=lambda m: f"returns are not the scores: {m}")
    raw = (returns - exp["values"])[mask]
    assert raw.mean().abs() > 0.1  # whitening has something to do
    torch.testing.assert_close(exp["advantages"][mask], (raw - raw.mean()) / raw.std(), rtol=1e-4, atol=1e-5,
                               msg=lambda m: f"advantages are not the whitened score - value: {m}")
    assert torch.equal(exp["advantages"][~mask], torch.zeros(int((~mask).sum())))


def _shorten_responses(module, lengths):
    """Make `module.generate` cut response i after `lengths[i]` tokens (mask only), so rows differ in length."""
    import dataclasses

    generate = module.generate

    def shortened(batch, params):
        roll = generate(batch, params)
        keep = torch.arange(roll.response_mask.shape[1]) < lengths[: len(roll.response_mask), None]
        return dataclasses.replace(roll, response_mask=roll.response_mask * keep)

    module.generate = shortened


def test_vllm_engine_gets_the_actor_weights_after_an_update_or_a_weight_discarding_sleep():
    class FakeEngine:
        weights_stale = False
        dtype = torch.bfloat16  # the engine's dtype: the actor's float32 weights are gathered in it

        def __init__(self):
            self.woken_with = []

        def wake_up(self, named_params):
            self.woken_with.append(None if named_params is None else dict(named_params))
            self.weights_stale = False

        def generate(self, input_ids, attention_mask, params):
            return "rollout"

        def sleep(self):
            pass

    def actor_weights():  # what the engine should hold: every actor parameter once, in the engine's dtype
        return {n: p.detach().to(torch.bfloat16) for n, p in module.actor.named_parameters()}

    module, data = make()
    module.configure_model()
    module.rollout_args.backend = "vllm"
    module._engine = engine = FakeEngine()
    batch = {"input_ids": torch.zeros(1, 2, dtype=torch.long), "attention_mask": torch.ones(1, 2)}
    module.generate(batch, module.train_sampling())  # first rollout: the engine starts from the path, sync anyway
    module.generate(batch, module.train_sampling())  # nothing changed: no sync
    engine.weights_stale = True  # a level-2 sleep discarded the engine's weights
    module.generate(batch, module.train_sampling())
    initial = actor_weights()
    with torch.no_grad():
        for p in module.actor.parameters():
            p.add_(1.0)
    module._vllm_stale = True  # the actor was updated
    module.generate(batch, module.train_sampling())
    assert [w is not None for w in engine.woken_with] == [True, False, True, True]
    for woken, expected in zip([engine.woken_with[i] for i in (0, 2, 3)], [initial, initial, actor_weights()]):
        assert woken.keys() == expected.keys()
        for name, tensor in expected.items():
            assert woken[name].dtype == torch.bfloat16 and torch.equal(woken[name], tensor), name


def test_a_no_code_penalty_needs_the_chat_template():
    from lit_codegen.args import check_reward_template

    with pytest.raises(ValueError, match="no_code_penalty needs the chat template"):
        check_reward_template(RewardArgs(no_code_penalty=-0.1), "base")
    check_reward_template(RewardArgs(no_code_penalty=-0.1), "chat")
    check_reward_template(RewardArgs(), "base")


def test_cosine_schedule_and_no_code_penalty_known_values():
    from types import SimpleNamespace

    from lit_codegen.module import _lr_lambda

    factor = _lr_lambda(OptimArgs(warmup_steps=2, schedule="cosine", total_steps=12))
    assert [round(factor(s), 6) for s in (0, 1, 2, 7, 12, 20)] == [0.5, 1.0, 1.0, 0.55, 0.1, 0.1]
    assert _lr_lambda(OptimArgs(warmup_steps=0))(50) == 1.0  # constant
    from lit_codegen.experience import shaped_scores

    texts = ["```python\nx = 1\n```", "x = 1", "```text\nno code\n```", "```\nx = 1\n```"]
    roll = SimpleNamespace(texts=texts, response_mask=torch.ones(4, 3))
    scores = shaped_scores([SimpleNamespace(pass_rate=0.5)] * 4, roll, RewardArgs(no_code_penalty=-0.1), 12)
    torch.testing.assert_close(scores, torch.tensor([0.5, 0.4, 0.4, 0.5]))  # a text block is no code block


ITERATION_METRICS = {"critic/vf_loss", "critic/vf_clipfrac", "critic/grad_norm", "actor/pg_loss", "actor/pg_clipfrac",
                     "actor/ppo_kl", "actor/pg_clipfrac_lower", "actor/entropy", "actor/kl_loss", "actor/grad_norm"}


@pytest.mark.parametrize("loss_agg", ["token-mean", "seq-mean", "seq-mean-token-sum-norm"])
def test_token_mean_metrics_do_not_depend_on_the_micro_batch_size(loss_agg):
    """Clip fractions and ppo_kl are means over tokens: micro-batching must not reweight them (it did under seq-mean,
    where micro-batches were weighted by their sequence count); the entropy and KL loss are the mini-batch's."""
    lengths = torch.tensor([3, 12, 5, 9, 12, 2, 7, 11])  # responses of different lengths in every micro-batch
    logged = {}
    for micro in (8, 2):
        L.seed_everything(0)
        # a small value clip and a dual clip just above 1 so that both act in the second epoch
        module, data = make(mini=8, micro=micro, lr=3e-3, ppo_epochs=2, loss_agg=loss_agg, dual_clip=1.05,
                            value_clip=0.01, kl_loss_coef=0.1)
        module._evaluator = _StubEvaluator([1.0, 0.0, 0.5, 0.25, 0.0, 1.0, 0.75, 0.0])  # values far from returns
        _shorten_responses(module, lengths)
        logged[micro] = _record_update_metrics(module)
        trainer(1).fit(module, datamodule=data)
    assert logged[8].keys() == logged[2].keys() == ITERATION_METRICS
    for key in ("actor/pg_clipfrac", "actor/pg_clipfrac_lower", "critic/vf_clipfrac"):  # the second epoch clipped
        assert 0 < logged[8][key] < 1, key
    assert logged[8]["actor/ppo_kl"] != 0
    # float32 summation order alone moves the second epoch's ppo_kl by about 1e-4 (relative); weighting micro-batches
    # by their sequence count instead of their tokens moves these metrics by 0.8-8%
    for key in ITERATION_METRICS - {"critic/grad_norm", "actor/grad_norm"}:
        assert logged[2][key] == pytest.approx(logged[8][key], rel=1e-3, abs=1e-7), key


def _record_update_metrics(module):
    """Make the module's two updates write their returned metrics into the returned dict as well."""
    logged = {}

    def recording(update):
        return lambda exp, p_len: logged.update(update(exp, p_len)) or logged

    module._update_actor, module._update_critic = recording(module._update_actor), recording(module._update_critic)
    return logged


def _record_experience(module):
    """Make the module's updates append the experience they receive to the returned list."""
    seen = []
    for name in ("_update_critic", "_update_actor"):
        update = getattr(module, name)
        setattr(module, name, lambda exp, p_len, update=update: seen.append(exp) or update(exp, p_len))
    return seen


def _perturb_actor(module, scale=0.02):
    """Move the actor away from the reference policy, so that the KL between them is not 0."""
    module.configure_model()
    with torch.no_grad():
        for p in module.actor.parameters():
            p.add_(scale * torch.randn_like(p))


def test_gae_wiring_known_answer_with_discount_lambda_and_kl_penalty():
    """gamma 0.5, lam 0.5 and a KL penalty, no whitening: the advantages and returns the updates receive are those of
    the GAE recursion written out here by hand, with token rewards -kl_coef * (old - ref log-prob) and the score on
    the last token."""
    L.seed_everything(0)
    module, data = make(kl_coef=0.3, gamma=0.5, lam=0.5, whiten_advantages=False)
    scores = [1.0, 0.0, 0.5, 0.25, 0.0, 1.0, 0.75, 0.0]
    module._evaluator = _StubEvaluator(scores)
    _shorten_responses(module, torch.tensor([3, 12, 5, 9, 12, 2, 7, 11]))
    _perturb_actor(module)
    seen = _record_experience(module)
    trainer(1).fit(module, datamodule=data)
    exp = seen[0]
    kl = (exp["old_logprobs"] - exp["ref_logprobs"]).double()
    assert kl[exp["mask"].bool()].abs().mean() > 1e-3  # the penalty has something to do
    expected_adv, expected_ret = torch.zeros_like(kl), torch.zeros_like(kl)
    for i, score in enumerate(scores):
        length, values, next_value, next_adv = int(exp["mask"][i].sum()), exp["values"][i].double(), 0.0, 0.0
        for t in reversed(range(length)):
            reward = -0.3 * kl[i, t] + (score if t == length - 1 else 0.0)
            delta = reward + 0.5 * next_value - values[t]
            next_adv = delta + 0.5 * 0.5 * next_adv
            expected_adv[i, t], expected_ret[i, t], next_value = next_adv, next_adv + values[t], values[t]
    torch.testing.assert_close(exp["advantages"].double(), expected_adv, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(exp["returns"].double(), expected_ret, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("estimator", ["gae", "reinforce_plus_plus", "reinforce_plus_plus_baseline"])
def test_advantages_are_whitened_with_the_moments_of_all_ranks(estimator):
    """Under data parallelism each rank whitens with the moments of the whole batch: another rank's advantages
    (here: the sums of [2.0, 4.0, 9.0] injected through the all-rank sum) shift the mean and scale used on this one.
    Before whitening: score - value (GAE), the score on every token (REINFORCE++), score - group mean (-baseline)."""
    L.seed_everything(0)
    scores = torch.tensor([1.0, 0.0, 0.5, 0.25, 0.0, 1.0, 0.75, 0.0])
    module, data = make(estimator, kl_coef=0.0)
    module._evaluator = _StubEvaluator(scores.tolist())
    other = torch.tensor([2.0 + 4.0 + 9.0, 4.0 + 16.0 + 81.0, 3.0], dtype=torch.float64)  # [sum, sum of squares, n]
    module._all_ranks_sum = lambda tensor: tensor + other if tensor.shape == (3,) else tensor
    seen = _record_experience(module)
    trainer(1).fit(module, datamodule=data)
    exp = seen[0]
    mask = exp["mask"].bool()
    if estimator == "gae":
        per_token = exp["returns"] - exp["values"]
    else:
        per_seq = scores - (scores.view(-1, 2).mean(-1).repeat_interleave(2) if estimator.endswith("baseline") else 0)
        per_token = per_seq[:, None].expand_as(mask)
    raw = per_token[mask].double()
    everything = torch.cat([raw, torch.tensor([2.0, 4.0, 9.0], dtype=torch.float64)])
    expected = (raw - everything.mean()) / everything.std()
    torch.testing.assert_close(exp["advantages"][mask].double(), expected, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("loss_agg", ["token-mean", "seq-mean", "seq-mean-token-sum", "seq-mean-token-sum-norm"])
def test_the_first_update_is_on_policy_and_its_loss_is_the_aggregated_advantage(loss_agg):
    """Left-padded prompts and temperature 0.7: the first mini-batch's log-probs are the rollout's old log-probs
    (ratio 1: ppo_kl 0, nothing clipped), so its policy loss is -A aggregated as `loss_agg` says (denominators:
    tokens, sequences, sequences, sequences x max_new_tokens)."""
    L.seed_everything(0)
    module, data = make(kl_coef=0.0, mini=8, micro=4, loss_agg=loss_agg, whiten_advantages=False,
                        rollout_kw={"temperature": 0.7})
    module._evaluator = _StubEvaluator([1.0, 0.0, 0.5, 0.25, 0.0, 1.0, 0.75, 0.0])
    _shorten_responses(module, torch.tensor([3, 12, 5, 9, 12, 2, 7, 11]))
    seen, logged = _record_experience(module), _record_update_metrics(module)
    trainer(1).fit(module, datamodule=data)
    exp = seen[0]
    assert (exp["attn"][:, 0] == 0).any() and (exp["attn"][:, 0] == 1).any()  # prompts of different lengths
    assert abs(logged["actor/ppo_kl"]) < 1e-5 and logged["actor/pg_clipfrac"] == 0
    adv, mask = exp["advantages"].double(), exp["mask"].double()
    token_sums = (adv * mask).sum(-1)
    expected = {"token-mean": token_sums.sum() / mask.sum(), "seq-mean": (token_sums / mask.sum(-1)).mean(),
                "seq-mean-token-sum": token_sums.mean(), "seq-mean-token-sum-norm": token_sums.mean() / 12}[loss_agg]
    assert logged["actor/pg_loss"] == pytest.approx(-float(expected), rel=1e-4)


@pytest.mark.parametrize("setting", ["entropy_coef", "kl_loss_coef"])
def test_entropy_bonus_raises_the_entropy_and_kl_loss_pulls_towards_the_reference(setting):
    """Both responses of each prompt score the same (GRPO advantages 0): one update moves the actor only through
    the entropy bonus (the entropy on the rollout rises) or the KL loss (the KL to the reference falls)."""
    from lit_codegen.models.logprob_head import response_logprobs

    L.seed_everything(0)
    module, data = make(adv_estimator="grpo", n=2, kl_coef=0.0, lr=1e-4, mini=8, micro=8, **{setting: 0.5})
    module._evaluator = _StubEvaluator([1.0] * 8)
    _perturb_actor(module)
    roll, _ = _fixed_rollout(module, data)
    module.generate = lambda batch, params: roll
    seq, attn, pos = sequences(roll)
    mask = roll.response_mask.float()

    def measure():
        with torch.no_grad():
            logprobs, entropy = response_logprobs(module.actor, seq, attn, pos, roll.prompt_ids.shape[1])
            if setting == "entropy_coef":
                return (entropy * mask).sum()
            ref_logprobs, _ = response_logprobs(module.ref, seq, attn, pos, roll.prompt_ids.shape[1])
        return ((torch.exp(ref_logprobs - logprobs) - (ref_logprobs - logprobs) - 1) * mask).sum()  # k3

    before = measure()
    trainer(1).fit(module, datamodule=data)
    after = measure()
    assert after > before if setting == "entropy_coef" else after < before, (before, after)


def test_no_gradient_is_held_after_an_iteration():
    """Gradients are freed after every optimizer step: they must not hold memory during the next rollout."""
    L.seed_everything(0)
    module, data = make()
    trainer(1).fit(module, datamodule=data)
    held = [n for n, p in module.named_parameters() if p.grad is not None]
    assert not held, held[:3]


def test_gspo_equals_ppo_on_policy_and_clips_whole_responses_after():
    """GSPO's token form has PPO's gradient at ratio 1 (the first epoch); in the second epoch its clip acts on each
    response's length-normalised ratio, not on tokens, so the gradients part (clip ranges of the GSPO paper)."""
    grads = {}
    for level in ("token", "sequence"):
        L.seed_everything(0)
        module, data = make(adv_estimator="grpo", kl_coef=0.0, lr=1e-3, ppo_epochs=2, mini=8, micro=8,
                            policy_ratio=level, clip_ratio_low=3e-4, clip_ratio_high=4e-4, loss_agg="seq-mean")
        module._evaluator = _StubEvaluator([1.0, 0.0, 0.5, 0.25, 0.0, 1.0, 0.75, 0.0])
        grads[level], step = [], module._step

        def record(optimizer, model, step=step, out=grads[level]):
            out.append({n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None})
            return step(optimizer, model)

        module._step = record
        trainer(1).fit(module, datamodule=data)
    (token_1, token_2), (seq_1, seq_2) = grads["token"], grads["sequence"]
    for name, grad in token_1.items():
        torch.testing.assert_close(seq_1[name], grad, rtol=1e-4, atol=1e-7)
    assert max((seq_2[n] - g).abs().max() / g.abs().max().clamp(min=1e-12) for n, g in token_2.items()) > 0.01
