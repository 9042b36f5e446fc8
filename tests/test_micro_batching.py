"""Token-budget micro-batches and packed rows in `PPOModule`: the same gradients as fixed-size micro-batches."""


import lightning as L
import pytest
import torch
from test_module import _shorten_responses, _StubEvaluator, make, trainer

from helpers import run_two_ranks

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
