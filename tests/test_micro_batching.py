"""Token-budget micro-batches and packed rows in `PPOModule`: the same gradients as fixed-size micro-batches."""


import lightning as L
import pytest
import torch
from test_module import _record_update_metrics, _shorten_responses, _StubEvaluator, make, trainer

from helpers import run_two_ranks
from lit_codegen import update
from lit_codegen.args import PPOArgs

LENGTHS = torch.tensor([12, 1, 7, 3, 12, 0, 5, 9])  # ragged responses, one empty


def _gradients(loss_agg, extra_micro_batches=0, **algo):
    """Every parameter's gradient at each optimizer step (critic, then actor) of one iteration, and the micro-batch
    sizes of the update passes."""
    L.seed_everything(0)
    module, data = make(mini=8, micro=2, lr=1e-3, loss_agg=loss_agg, kl_loss_coef=0.1, entropy_coef=0.01, **algo)
    module._evaluator = _StubEvaluator([1.0, 0.0, 0.5, 0.25, 0.0, 1.0, 0.75, 0.0])
    _shorten_responses(module, LENGTHS)
    grads, sizes, step, micro_batches = [], [], module._step, module._micro_batches

    def record(optimizer, model):
        grads.append({n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None})
        return step(optimizer, model)

    def counted(rows, attn):  # as if another rank had `extra_micro_batches` more
        module._most_on_any_rank = lambda count: count + extra_micro_batches
        out = micro_batches(rows, attn)
        sizes.append([len(idx) if real else 0 for idx, real in out])
        return out

    module._step, module._micro_batches = record, counted
    trainer(1).fit(module, datamodule=data)
    return grads, sizes


@pytest.mark.parametrize("loss_agg", ["token-mean", "seq-mean", "seq-mean-token-sum", "seq-mean-token-sum-norm"])
def test_token_budget_and_packing_give_the_fixed_micro_batch_gradients(loss_agg):
    fixed, fixed_sizes = _gradients(loss_agg)
    assert all(s == [2, 2, 2, 2] for s in fixed_sizes)
    budget, packed = dict(max_tokens_per_micro_batch=160), dict(pack_sequences=True)
    # each layout once (token-mean), all loss aggregations with the fastest one: budget + packing
    for algo in ([budget, packed, budget | packed] if loss_agg == "token-mean" else [budget | packed]):
        grads, sizes = _gradients(loss_agg, **algo)
        if "max_tokens_per_micro_batch" in algo:  # the budget regroups the rows
            assert all(sum(s) == 8 and s != [2, 2, 2, 2] for s in sizes), sizes
        assert len(grads) == len(fixed) == 2
        for got, want in zip(grads, fixed):
            assert got.keys() == want.keys() and len(want) > 0
            for name, grad in want.items():
                assert grad.abs().sum() > 0, name
                torch.testing.assert_close(got[name], grad, rtol=1e-4, atol=1e-6,
                                           msg=lambda m, n=name, a=algo: f"{a} {n}: {m}")


def test_padding_micro_batches_for_other_ranks_change_no_gradient():
    """A rank with fewer token-budget micro-batches than another runs extra ones (collectives) that count nothing."""
    budget = dict(max_tokens_per_micro_batch=160, pack_sequences=True)
    want, want_sizes = _gradients("seq-mean-token-sum", **budget)
    got, sizes = _gradients("seq-mean-token-sum", extra_micro_batches=2, **budget)
    assert [s[-2:] for s in sizes] == [[0, 0]] * len(sizes) and [s[:-2] for s in sizes] == want_sizes
    for g, w in zip(got, want):
        for name, grad in w.items():
            torch.testing.assert_close(g[name], grad, rtol=1e-5, atol=1e-7)


def test_ranks_with_fewer_micro_batches_pad_to_the_most_under_fsdp(tmp_path):
    """2 processes, FSDP2: rank 0 has 1 token-budget micro-batch per pass, rank 1 has 4; rank 0 runs 3 padding ones
    (without them the ranks' collectives would not pair up and the run would hang)."""
    ranks = run_two_ranks("micro_batch_dist_worker.py", tmp_path, str(tmp_path), timeout=600)
    # old log-probs, values, critic update, actor update (no reference: kl_coef 0)
    assert ranks[0]["counts"] == [[1, 4]] * 4 and ranks[1]["counts"] == [[4, 4]] * 4
    assert ranks[0]["actor_sum"] == pytest.approx(ranks[1]["actor_sum"], rel=1e-9)


def test_layout_is_the_configured_one():
    assert update.layout(PPOArgs()) == "padded"
    assert update.layout(PPOArgs(max_tokens_per_micro_batch=160)) == "trimmed"
    assert update.layout(PPOArgs(pack_sequences=True)) == "packed"
    assert update.layout(PPOArgs(max_tokens_per_micro_batch=160, pack_sequences=True)) == "packed"


def test_micro_batches_known_groups_and_padding_for_other_ranks():
    """Four rows of 4 tokens (of 6 columns), rows 4..7 of the batch: fixed-size chunks, or by a 12-token budget three
    padded rows (3 x 4) then one, or packed into the fewest micro-batches, filled longest first into the lightest; a
    rank with fewer micro-batches than another appends its first row, marked not real."""
    rows = torch.arange(4, 8)
    attn = torch.zeros(8, 6, dtype=torch.long)
    attn[:, 2:] = 1

    def groups(most_on_any_rank=lambda count: count, **algo):
        out = update.micro_batches(rows, attn, PPOArgs(micro_batch_size=3, **algo), most_on_any_rank)
        return [(idx.tolist(), real) for idx, real in out]

    assert groups() == [([4, 5, 6], True), ([7], True)]
    assert groups(max_tokens_per_micro_batch=12) == [([4, 5, 6], True), ([7], True)]
    assert groups(max_tokens_per_micro_batch=12, pack_sequences=True) == [([4, 6], True), ([5, 7], True)]
    assert groups(lambda count: count + 2, max_tokens_per_micro_batch=12) == \
        [([4, 5, 6], True), ([7], True), ([4], False), ([4], False)]


def test_every_forward_pass_gets_the_configured_layout(monkeypatch):
    """The scoring passes (old log-probs, reference, values) and both updates run their models in the layout the
    settings choose (a padded pass would give the same numbers with the memory the layout saves)."""
    layouts = []
    for name in ("response_logprobs", "response_values"):
        forward = getattr(update, name)
        monkeypatch.setattr(update, name, lambda *args, forward=forward, name=name, **kwargs:
                            layouts.append((name, torch.is_grad_enabled(), args[-1])) or forward(*args, **kwargs))
    L.seed_everything(0)
    module, data = make(mini=8, micro=2, max_tokens_per_micro_batch=160, pack_sequences=True)
    module._evaluator = _StubEvaluator([1.0, 0.0, 0.5, 0.25, 0.0, 1.0, 0.75, 0.0])
    trainer(1).fit(module, datamodule=data)
    assert {(name, grad) for name, grad, _ in layouts} == {(n, g) for n in ("response_logprobs", "response_values")
                                                            for g in (False, True)}
    assert {layout for _, _, layout in layouts} == {"packed"}


def test_share_is_the_micro_batch_fraction_of_the_mini_batch_tokens():
    mask = torch.tensor([[1.0, 1.0, 0.0], [1.0, 0.0, 0.0]])
    assert update.share(mask, torch.tensor(6.0)) == 0.5
    assert update.share(mask[1:], torch.tensor(1.0)) == 1.0  # a mini-batch of one token: all of it
    assert update.share(mask * 0, torch.tensor(0.0)) == 0.0  # no token at all: no weight, no division by zero


def test_iteration_metrics_are_the_mean_over_mini_batches():
    """With lr 0 nothing moves, so each of 2 epochs' mini-batch (the whole batch) has the first epoch's metrics, and
    their mean is a 1-epoch run's (not their sum, nor the last one over the count)."""
    logged = {}
    for epochs in (1, 2):
        L.seed_everything(0)
        module, data = make(kl_coef=0.0, lr=0.0, ppo_epochs=epochs, mini=8, micro=4, whiten_advantages=False)
        module._evaluator = _StubEvaluator([1.0, 0.0, 0.5, 0.25, 0.0, 1.0, 0.75, 0.0])
        logged[epochs] = _record_update_metrics(module)
        trainer(1).fit(module, datamodule=data)
    assert logged[2].keys() == logged[1].keys() and {"actor/entropy", "critic/vf_loss"} <= logged[1].keys()
    for key, value in logged[1].items():
        assert abs(value) > 1e-6 or "clipfrac" in key or key == "actor/ppo_kl", key
        assert logged[2][key] == pytest.approx(value, rel=1e-4, abs=1e-7), key
