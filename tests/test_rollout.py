"""HF rollouts: shapes and prompt order, masks after EOS, EOS stop, truncation, greedy determinism, no config leaks."""

import pytest
import torch
from torch import nn

from lit_codegen.models.loading import load_causal_lm, load_tokenizer
from lit_codegen.models.tiny import build_tiny_model
from lit_codegen.rollout import HFRollout, SamplingParams, response_mask, stop_token_ids


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory):
    return str(build_tiny_model(tmp_path_factory.mktemp("tiny"), num_hidden_layers=2))


@pytest.fixture
def model(tiny_dir):
    return load_causal_lm(tiny_dir)


@pytest.fixture(scope="module")
def tokenizer(tiny_dir):
    return load_tokenizer(tiny_dir)


@pytest.fixture(scope="module")
def prompts(tokenizer):
    texts = ["print(", "def add(a, b):\n    return", "Read two integers on one line and print their sum."]
    return tokenizer(texts, padding=True, return_tensors="pt")


def _greedy_by_hand(model, ids: list[int], steps: int, stop_ids: list[int]) -> list[int]:
    """Reference greedy decoding: argmax of a full forward pass, one token at a time, no cache, no padding."""
    out = []
    with torch.no_grad():
        for _ in range(steps):
            token = model(torch.tensor([ids + out])).logits[0, -1].argmax().item()
            out.append(token)
            if token in stop_ids:
                break
    return out


def _bias_head(model, token_ids: list[int], bias: float) -> None:
    """Replace the LM head by one that adds `bias` to the logits of `token_ids`."""
    head = nn.Linear(model.config.hidden_size, model.config.vocab_size, bias=True)
    with torch.no_grad():
        head.weight.copy_(model.lm_head.weight)
        head.bias.zero_()
        head.bias[token_ids] = bias
    model.lm_head = head


def test_response_mask_known_answer():
    ids = torch.tensor([[5, 2, 0, 0], [5, 6, 7, 8], [2, 2, 9, 0], [0, 5, 3, 0]])  # stop ids 2 and 3, pad 0
    mask, truncated = response_mask(ids, [2, 3])
    assert mask.tolist() == [[1, 1, 0, 0], [1, 1, 1, 1], [1, 0, 0, 0], [1, 1, 1, 0]]
    assert truncated.tolist() == [False, True, False, False]


def test_stop_ids_include_chatml_end_and_model_eos(model, tokenizer):
    ids = stop_token_ids(tokenizer, model)
    assert tokenizer.convert_tokens_to_ids("<|im_end|>") in ids and tokenizer.eos_token_id in ids
    assert tokenizer.convert_tokens_to_ids("<|endoftext|>") in ids  # from the model's generation_config


def test_shapes_masks_and_consecutive_samples(model, tokenizer, prompts):
    torch.manual_seed(0)
    roll = HFRollout(model, tokenizer).generate(prompts["input_ids"], prompts["attention_mask"],
                                               SamplingParams(n=2, max_new_tokens=12))
    n_rows, r_len = roll.response_ids.shape
    assert n_rows == 6 and r_len <= 12
    assert roll.prompt_index.tolist() == [0, 0, 1, 1, 2, 2]
    assert torch.equal(roll.prompt_ids, prompts["input_ids"].repeat_interleave(2, 0))
    assert torch.equal(roll.prompt_mask, prompts["attention_mask"].repeat_interleave(2, 0))
    assert len(roll.texts) == 6 and roll.truncated.shape == (6,)
    stops = torch.tensor(stop_token_ids(tokenizer, model))
    for ids, mask, truncated in zip(roll.response_ids, roll.response_mask, roll.truncated):
        length = int(mask.sum())
        assert mask[:length].all() and not mask[length:].any()  # ones, then zeros
        assert (ids[length:] == tokenizer.pad_token_id).all()  # right-padded with the pad token
        if truncated:
            assert length == 12 and not torch.isin(ids, stops).any()
        else:
            assert torch.isin(ids[length - 1], stops) and not torch.isin(ids[: length - 1], stops).any()


def test_greedy_is_deterministic_and_matches_argmax_decoding(model, tokenizer, prompts):
    engine = HFRollout(model, tokenizer)
    params = SamplingParams(max_new_tokens=10, greedy=True)
    first = engine.generate(prompts["input_ids"], prompts["attention_mask"], params)
    second = engine.generate(prompts["input_ids"], prompts["attention_mask"], params)
    assert torch.equal(first.response_ids, second.response_ids) and first.texts == second.texts
    for i in range(3):
        ids = prompts["input_ids"][i][prompts["attention_mask"][i].bool()].tolist()
        expected = _greedy_by_hand(model, ids, 10, engine.stop_ids)
        assert first.response_ids[i][: len(expected)].tolist() == expected
        assert int(first.response_mask[i].sum()) == len(expected)
    assert first.texts[0] == tokenizer.decode(first.response_ids[0], skip_special_tokens=True)


def test_samples_of_a_prompt_are_consecutive(model, tokenizer, prompts):
    """At a near-zero temperature every sample equals its prompt's greedy answer, so the row order is visible."""
    engine = HFRollout(model, tokenizer)
    greedy = engine.generate(prompts["input_ids"], prompts["attention_mask"],
                             SamplingParams(max_new_tokens=8, greedy=True))
    assert len(set(greedy.texts)) == 3  # the three prompts have distinct answers
    sampled = engine.generate(prompts["input_ids"], prompts["attention_mask"],
                              SamplingParams(n=3, max_new_tokens=8, temperature=1e-4))
    assert sampled.texts == [t for t in greedy.texts for _ in range(3)]


def test_generation_stops_at_eos(model, tokenizer, prompts):
    _bias_head(model, [tokenizer.convert_tokens_to_ids("<|im_end|>")], 1e4)
    roll = HFRollout(model, tokenizer).generate(prompts["input_ids"], prompts["attention_mask"],
                                               SamplingParams(n=2, max_new_tokens=16))
    assert roll.response_ids.shape == (6, 1)  # every row stopped at its first token, so generation ended
    assert roll.response_mask.tolist() == [[1]] * 6  # the EOS itself is a trained-on response token
    assert not roll.truncated.any() and roll.texts == [""] * 6


def test_no_eos_means_truncated(model, tokenizer, prompts):
    engine = HFRollout(model, tokenizer)
    _bias_head(model, engine.stop_ids, -1e4)
    roll = engine.generate(prompts["input_ids"], prompts["attention_mask"], SamplingParams(max_new_tokens=7))
    assert roll.response_ids.shape == (3, 7) and roll.response_mask.all() and roll.truncated.all()


def test_model_generation_config_does_not_leak(model, tokenizer, prompts, tiny_dir):
    """A checkpoint's generation defaults (Qwen-Instruct style top_k/top_p/penalties) must not change our sampling."""
    clean = HFRollout(load_causal_lm(tiny_dir), tokenizer)
    polluted_model = load_causal_lm(tiny_dir)
    gc = polluted_model.generation_config
    gc.top_k, gc.top_p, gc.temperature, gc.repetition_penalty, gc.min_p, gc.do_sample = 2, 0.3, 0.1, 3.0, 0.5, True
    gc.no_repeat_ngram_size, gc.max_new_tokens = 1, 2
    polluted = HFRollout(polluted_model, tokenizer)
    params = SamplingParams(n=2, max_new_tokens=10)
    torch.manual_seed(1)
    a = clean.generate(prompts["input_ids"], prompts["attention_mask"], params)
    torch.manual_seed(1)
    b = polluted.generate(prompts["input_ids"], prompts["attention_mask"], params)
    assert torch.equal(a.response_ids, b.response_ids)
    assert polluted_model.generation_config.top_k == 2  # the model's own config is restored afterwards


def test_model_mode_is_restored(model, tokenizer, prompts):
    engine = HFRollout(model, tokenizer)
    for training in (True, False):
        model.train(training)
        engine.generate(prompts["input_ids"], prompts["attention_mask"], SamplingParams(max_new_tokens=2))
        assert model.training is training


def test_greedy_with_several_samples_is_rejected(model, tokenizer, prompts):
    with pytest.raises(ValueError, match="greedy decoding with n > 1"):
        HFRollout(model, tokenizer).generate(prompts["input_ids"], prompts["attention_mask"],
                                             SamplingParams(n=2, greedy=True))


def test_top_p_keeps_only_the_nucleus(model, tokenizer, prompts):
    input_ids, attention_mask = prompts["input_ids"], prompts["attention_mask"]
    engine = HFRollout(model, tokenizer)
    greedy = engine.generate(input_ids, attention_mask, SamplingParams(greedy=True, max_new_tokens=12))
    torch.manual_seed(0)
    nucleus = engine.generate(input_ids, attention_mask, SamplingParams(temperature=1.0, top_p=1e-6, max_new_tokens=12))
    assert torch.equal(nucleus.response_ids, greedy.response_ids)  # a tiny nucleus holds only the most likely token
    torch.manual_seed(0)
    full = engine.generate(input_ids, attention_mask, SamplingParams(temperature=1.0, top_p=1.0, max_new_tokens=12))
    assert not torch.equal(full.response_ids, greedy.response_ids)  # the whole distribution: other tokens too
