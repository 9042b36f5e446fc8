"""The fused LM head: same log-probs, entropies and gradients as logits -> `ppo` functions, without the logits."""

import pytest
import torch
from transformers import AutoModelForCausalLM

from lit_codegen import ppo
from lit_codegen.models import logprob_head
from lit_codegen.models.logprob_head import (
    LogprobHead,
    block_stats,
    install_logprob_head,
    linear_logprobs_entropy,
    response_logprobs,
)
from lit_codegen.models.tiny import build_tiny_model


def _reference(hidden, weight, labels, temperature):
    logits = (hidden @ weight.T).unsqueeze(0)
    return (ppo.logprobs_from_logits(logits, labels.unsqueeze(0), temperature)[0],
            ppo.entropy_from_logits(logits, temperature)[0])


@pytest.mark.parametrize("temperature", [1.0, 0.6])
@pytest.mark.parametrize("block_tokens", [1, 3, 100])
def test_values_and_gradients_match_the_logits_path(temperature, block_tokens):
    torch.manual_seed(0)
    hidden = torch.randn(7, 5, requires_grad=True)
    weight = torch.randn(11, 5, requires_grad=True)
    labels = torch.randint(0, 11, (7,))
    g_lp, g_ent = torch.randn(7), torch.randn(7)

    lp, ent = linear_logprobs_entropy(hidden, weight, labels, temperature, block_tokens=block_tokens)
    grads = torch.autograd.grad((lp * g_lp).sum() + (ent * g_ent).sum(), (hidden, weight))
    ref_lp, ref_ent = _reference(hidden, weight, labels, temperature)
    ref_grads = torch.autograd.grad((ref_lp * g_lp).sum() + (ref_ent * g_ent).sum(), (hidden, weight))

    torch.testing.assert_close(lp, ref_lp)
    torch.testing.assert_close(ent, ref_ent)
    for got, want in zip(grads, ref_grads):
        torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-4)  # float32 rounding; exact: gradcheck below


def test_known_answer_uniform_logits():
    hidden, weight = torch.zeros(2, 3), torch.randn(4, 3)  # all logits 0: uniform over 4 tokens
    lp, ent = linear_logprobs_entropy(hidden, weight, torch.tensor([0, 3]))
    torch.testing.assert_close(lp, torch.full((2,), -torch.log(torch.tensor(4.0)).item()))
    torch.testing.assert_close(ent, torch.full((2,), torch.log(torch.tensor(4.0)).item()))


def test_gradcheck_float64():
    torch.manual_seed(1)
    hidden = torch.randn(4, 3, dtype=torch.float64, requires_grad=True)
    weight = torch.randn(6, 3, dtype=torch.float64, requires_grad=True)
    labels = torch.tensor([0, 5, 2, 2])
    assert torch.autograd.gradcheck(
        lambda h, w: linear_logprobs_entropy(h, w, labels, 0.7, block_tokens=3), (hidden, weight))


def test_block_stats_stay_finite_and_exact_for_huge_logits():
    logits = torch.tensor([[3000.0, 2999.0, -5000.0, 0.0], [-1e4, -1e4, -1e4, -1e4]])  # exp() of these overflows
    logprobs, entropy, lse = block_stats(logits, torch.tensor([1, 2]), temperature=1.0)
    ref = logits.double()
    ref_lse = torch.logsumexp(ref, -1)
    ref_p = torch.softmax(ref, -1)
    close = dict(rtol=0, atol=2e-3)  # float32 keeps ~4 decimals next to 1e4: z - lse cannot do better
    torch.testing.assert_close(lse, ref_lse.float(), **close)
    torch.testing.assert_close(logprobs, (ref[[0, 1], [1, 2]] - ref_lse).float(), **close)
    torch.testing.assert_close(entropy, (-(ref_p * ref_p.clamp_min(1e-300).log()).sum(-1)).float(), **close)
    torch.testing.assert_close(entropy[1], torch.log(torch.tensor(4.0)), **close)  # uniform row
    assert torch.isfinite(torch.stack([logprobs, entropy, lse])).all()


def test_weight_gradient_accumulates_in_float32_and_falls_back_where_addmm_has_no_out_dtype(monkeypatch):
    torch.manual_seed(3)
    acc = torch.randn(5, 4)
    a, b = torch.randn(5, 3).bfloat16(), torch.randn(3, 4).bfloat16()
    want = acc + a.float() @ b.float()
    monkeypatch.setattr(logprob_head, "_FP32_OUT_ADDMM", {acc.device: True})  # claim the CUDA overload on CPU
    got = logprob_head._add_matmul(acc.clone(), a, b)  # CPU has no addmm(out_dtype=...): the product in bf16, added
    torch.testing.assert_close(got, want, rtol=1e-2, atol=1e-2)
    assert got.dtype == torch.float32
    assert logprob_head._FP32_OUT_ADDMM[acc.device] is False  # remembered: not tried again


def test_only_logprobs_used_gives_logprob_gradients():
    torch.manual_seed(2)
    hidden = torch.randn(5, 4, requires_grad=True)
    weight = torch.randn(9, 4)
    labels = torch.randint(0, 9, (5,))
    lp, _ = linear_logprobs_entropy(hidden, weight, labels)
    (grad,) = torch.autograd.grad(lp.sum(), hidden)
    ref_lp, _ = _reference(hidden, weight, labels, 1.0)
    (ref_grad,) = torch.autograd.grad(ref_lp.sum(), hidden)
    torch.testing.assert_close(grad, ref_grad)


def test_only_entropy_used_gives_entropy_gradients():
    torch.manual_seed(5)
    hidden = torch.randn(5, 4, requires_grad=True)
    weight = torch.randn(9, 4, requires_grad=True)
    labels = torch.randint(0, 9, (5,))
    _, ent = linear_logprobs_entropy(hidden, weight, labels, 0.8)
    grads = torch.autograd.grad(ent.sum(), (hidden, weight))
    _, ref_ent = _reference(hidden, weight, labels, 0.8)
    ref_grads = torch.autograd.grad(ref_ent.sum(), (hidden, weight))
    for got, want in zip(grads, ref_grads):
        torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-4)


def test_bad_input_is_rejected():
    with pytest.raises(ValueError, match="temperature"):
        linear_logprobs_entropy(torch.zeros(2, 3), torch.zeros(4, 3), torch.zeros(2, dtype=torch.long), 0.0)
    with pytest.raises(ValueError, match="labels"):
        linear_logprobs_entropy(torch.zeros(2, 3), torch.zeros(4, 3), torch.zeros(3, dtype=torch.long))


def test_a_biased_head_scores_through_its_logits():
    torch.manual_seed(4)
    head = LogprobHead(4, 7, bias=True)
    torch.nn.init.normal_(head.bias)
    hidden, labels = torch.randn(2, 4, 4), torch.randint(0, 7, (2, 3))  # R + 1 = 4 positions, R = 3 labels
    with head.armed(labels, 0.9):
        out = head(hidden)
    logits = torch.nn.functional.linear(hidden[:, :-1], head.weight, head.bias)
    torch.testing.assert_close(out[..., 0], ppo.logprobs_from_logits(logits, labels, 0.9))
    torch.testing.assert_close(out[..., 1], ppo.entropy_from_logits(logits, 0.9))
    assert head(hidden).shape == (2, 4, 7)  # unarmed again


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory):
    return build_tiny_model(tmp_path_factory.mktemp("tiny"), num_hidden_layers=2)


def test_installed_head_scores_responses_like_the_full_logits(tiny_dir):
    torch.manual_seed(3)
    model = AutoModelForCausalLM.from_pretrained(tiny_dir)
    embed = model.get_input_embeddings().weight
    head = install_logprob_head(model)
    assert isinstance(model.lm_head, LogprobHead)
    assert (model.lm_head.weight is embed) == model.config.tie_word_embeddings  # tying kept as it was
    assert install_logprob_head(model) is head  # idempotent
    seq = torch.randint(10, 200, (3, 9))
    attn = torch.ones_like(seq)
    attn[0, :2] = 0  # left padding in the prompt
    pos = (attn.cumsum(-1) - 1).clamp(min=0)
    prompt_len = 4

    lp, ent = response_logprobs(model, seq, attn, pos, prompt_len, temperature=0.8)
    logits = model(input_ids=seq, attention_mask=attn, position_ids=pos).logits[:, prompt_len - 1 : -1]
    assert logits.shape[-1] == embed.shape[0]  # unarmed again: ordinary logits
    torch.testing.assert_close(lp, ppo.logprobs_from_logits(logits, seq[:, prompt_len:], 0.8), rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(ent, ppo.entropy_from_logits(logits, 0.8), rtol=1e-5, atol=1e-5)

    lp.sum().backward()
    assert head.weight.grad is not None and head.weight.grad.abs().sum() > 0


def test_response_logprobs_needs_the_head(tiny_dir):
    model = AutoModelForCausalLM.from_pretrained(tiny_dir)
    seq = torch.ones(1, 4, dtype=torch.long)
    with pytest.raises(TypeError, match="install_logprob_head"):
        response_logprobs(model, seq, seq, seq, 2)
