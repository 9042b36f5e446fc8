"""Padding-free layouts: trimmed and packed rows give the padded path's log-probs, entropies, values and gradients."""

import pytest
import torch
from transformers import AutoModelForCausalLM

from lit_codegen.models.critic import CriticModel, response_values
from lit_codegen.models.logprob_head import install_logprob_head, response_logprobs
from lit_codegen.models.packing import VARLEN, pack, trim, varlen_attention_forward
from lit_codegen.models.tiny import build_tiny_model

P, R = 6, 7
PROMPT_LENS, RESPONSE_LENS = [6, 2, 4, 1], [7, 3, 0, 5]  # full rows, short rows, an empty response


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory):
    return build_tiny_model(tmp_path_factory.mktemp("tiny"), num_hidden_layers=2)


def _rows():
    """Left-padded prompts, right-padded responses, positions from 0 at each row's first token (`sequences`)."""
    torch.manual_seed(0)
    seq = torch.randint(3, 600, (len(PROMPT_LENS), P + R))
    cols = torch.arange(P + R)
    attn = ((cols >= P - torch.tensor(PROMPT_LENS)[:, None]) & (cols < P + torch.tensor(RESPONSE_LENS)[:, None]))
    attn = attn.long()
    seq = seq * attn  # padding id 0, as a rollout pads
    pos = (attn.cumsum(-1) - 1).clamp(min=0)
    return seq, attn, pos


def test_pack_keeps_real_tokens_with_positions_restarting_per_row():
    seq, attn, pos = _rows()
    packed = pack(seq, attn, pos, P)
    lengths = [p + r for p, r in zip(PROMPT_LENS, RESPONSE_LENS)]
    assert packed.input_ids.shape == (1, sum(lengths))
    assert packed.position_ids[0].tolist() == [i for n in lengths for i in range(n)]
    assert packed.input_ids[0].tolist() == seq[attn.bool()].tolist()
    # each response token is predicted by the packed token just before it
    starts = torch.tensor([0, *lengths]).cumsum(0)
    want = [int(starts[b]) + PROMPT_LENS[b] - 1 + j for b in range(4) for j in range(RESPONSE_LENS[b])]
    assert packed.index.tolist() == want
    assert packed.cu_seq_lens.tolist() == starts.tolist() and packed.max_length == max(lengths)


def masked_attention(query, key, value, lengths):
    """Reference: softmax attention over an explicit block-diagonal causal mask, float64. (1, H, L, D) in and out."""
    groups = query.shape[1] // key.shape[1]
    key, value = key.repeat_interleave(groups, 1).double(), value.repeat_interleave(groups, 1).double()
    row = torch.repeat_interleave(torch.arange(len(lengths)), torch.tensor(lengths))
    cols = torch.arange(row.numel())
    allowed = (row[:, None] == row[None, :]) & (cols[:, None] >= cols[None, :])
    scores = (query.double() @ key.transpose(-1, -2)) / query.shape[-1] ** 0.5
    return scores.masked_fill(~allowed, float("-inf")).softmax(-1) @ value


def test_varlen_attention_keeps_each_row_causal_and_to_itself():
    lengths = [5, 1, 9, 3]
    torch.manual_seed(0)
    query = torch.randn(1, 4, sum(lengths), 8, requires_grad=True)  # 4 query heads sharing 2 key/value heads
    key, value = torch.randn(1, 2, sum(lengths), 8), torch.randn(1, 2, sum(lengths), 8)
    cu = torch.tensor([0, *lengths]).cumsum(0).int()
    out, _ = varlen_attention_forward(None, query, key, value, None, cu_seq_lens_q=cu, max_length_q=max(lengths))
    want = masked_attention(query, key, value, lengths)
    assert out.shape == (1, sum(lengths), 4, 8)
    torch.testing.assert_close(out.transpose(1, 2).double(), want, rtol=1e-5, atol=1e-6)
    grad = torch.randn(want.shape, dtype=torch.float64)
    (got_grad,) = torch.autograd.grad((out.transpose(1, 2) * grad).sum(), query)
    (want_grad,) = torch.autograd.grad((want * grad).sum(), query)
    torch.testing.assert_close(got_grad, want_grad, rtol=1e-4, atol=1e-6)


def test_varlen_attention_is_sdpa_for_padded_rows_afterwards(tiny_dir):
    """A model that ran packed rows keeps `VARLEN`, which is SDPA (mask and all) for every other forward."""
    model = AutoModelForCausalLM.from_pretrained(tiny_dir)
    install_logprob_head(model)
    seq, attn, pos = _rows()
    prompts, prompt_mask = seq[:, :P], attn[:, :P]  # left-padded, as the HF rollout generates from them
    generate = dict(attention_mask=prompt_mask, max_new_tokens=5, do_sample=False, pad_token_id=0)
    with torch.no_grad():
        before = response_logprobs(model, seq, attn, pos, P), model.generate(prompts, **generate)
        response_logprobs(model, seq, attn, pos, P, layout="packed")
        assert model.config._attn_implementation == VARLEN
        after = response_logprobs(model, seq, attn, pos, P), model.generate(prompts, **generate)
    torch.testing.assert_close(after, before, rtol=0, atol=0)


def test_gradient_checkpointing_recomputes_packed_rows_the_same_way(tiny_dir):
    """The backward pass recomputes checkpointed layers outside `varlen_attention`: same path, same gradients."""
    seq, attn, pos = _rows()
    grads = {}
    for checkpointing in (False, True):
        model = AutoModelForCausalLM.from_pretrained(tiny_dir)
        install_logprob_head(model)
        if checkpointing:
            model.gradient_checkpointing_enable()
        model.train()
        logprobs, _ = response_logprobs(model, seq, attn, pos, P, layout="packed")
        logprobs.sum().backward()
        grads[checkpointing] = {n: p.grad for n, p in model.named_parameters()}
    for name, grad in grads[False].items():
        torch.testing.assert_close(grads[True][name], grad, msg=lambda m, n=name: f"{n}: {m}")


def test_trim_drops_only_columns_that_are_padding_in_every_row():
    seq, attn, pos = _rows()
    attn[:, 0] = 0  # no prompt uses the first column ...
    seq2, attn2, pos2, p_len = trim(seq[1:], attn[1:], pos[1:], P)  # ... nor, without row 0, the first two
    assert p_len == 4 and seq2.shape[1] == 4 + 5  # longest remaining prompt 4, longest response 5
    assert attn2.sum() == attn[1:].sum()


@pytest.mark.parametrize("layout", ["trimmed", "packed"])
def test_logprobs_entropy_and_gradients_equal_the_padded_path(tiny_dir, layout):
    model = AutoModelForCausalLM.from_pretrained(tiny_dir)
    install_logprob_head(model)
    seq, attn, pos = _rows()
    mask = attn[:, P:].float()
    weights = torch.randn(mask.shape)
    results = {}
    for name in ("padded", layout):
        model.zero_grad()
        logprobs, entropy = response_logprobs(model, seq, attn, pos, P, temperature=0.7, layout=name)
        ((logprobs * weights + 0.1 * entropy) * mask).sum().backward()
        results[name] = (logprobs * mask, entropy * mask, {n: p.grad.clone() for n, p in model.named_parameters()})
    (lp, ent, grads), (lp2, ent2, grads2) = results["padded"], results[layout]
    torch.testing.assert_close(lp2, lp, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(ent2, ent, rtol=1e-5, atol=1e-5)
    assert grads.keys() == grads2.keys() and all(g.abs().sum() > 0 for g in grads.values())
    for name, grad in grads.items():
        torch.testing.assert_close(grads2[name], grad, rtol=1e-4, atol=1e-6, msg=lambda m, n=name: f"{n}: {m}")


@pytest.mark.parametrize("layout", ["trimmed", "packed"])
def test_values_and_gradients_equal_the_padded_path(tiny_dir, layout):
    critic = CriticModel.from_pretrained(str(tiny_dir))
    seq, attn, pos = _rows()
    mask = attn[:, P:].float()
    weights = torch.randn(mask.shape)
    results = {}
    for name in ("padded", layout):
        critic.zero_grad()
        values = response_values(critic, seq, attn, pos, P, layout=name)
        (values * weights * mask).sum().backward()
        results[name] = (values * mask, {n: p.grad.clone() for n, p in critic.named_parameters()})
    (values, grads), (values2, grads2) = results["padded"], results[layout]
    assert values.abs().sum() > 0
    torch.testing.assert_close(values2, values, rtol=1e-5, atol=1e-6)
    assert grads.keys() == grads2.keys()
    for name, grad in grads.items():
        torch.testing.assert_close(grads2[name], grad, rtol=1e-4, atol=1e-6, msg=lambda m, n=name: f"{n}: {m}")


def test_packed_rows_do_not_attend_across_rows(tiny_dir):
    """Changing one row's tokens leaves every other row's log-probs unchanged (no attention between rows)."""
    model = AutoModelForCausalLM.from_pretrained(tiny_dir)
    install_logprob_head(model)
    seq, attn, pos = _rows()
    with torch.no_grad():
        before, _ = response_logprobs(model, seq, attn, pos, P, layout="packed")
        seq[0, P:] = (seq[0, P:] + 1) % 600
        after, _ = response_logprobs(model, seq, attn, pos, P, layout="packed")
    assert not torch.equal(after[0], before[0])
    torch.testing.assert_close(after[1:], before[1:], rtol=0, atol=0)
