"""The tiny Qwen2 model: tokenizer ids survive a reload, chat template, lm_head saved by name, deterministic build."""

import json

import pytest
import torch
from safetensors import safe_open
from tokenizers import Tokenizer
from transformers import AutoModelForCausalLM, AutoTokenizer

from lit_codegen.data.prompts import chat_messages, format_answer
from lit_codegen.models.tiny import IM_END, IM_START, TOY_PROBLEMS, build_tiny_model, main

TEXTS = [
    "n = int(input())\nprint(n * 2)\n",
    "def add(a, b):\n    return a + b\n\n\nclass Solution:\n\tpass",
    "It's   spaced  out!!  don't 2024 x's\r\n\n",
    "ünïcödé café 日本語 — “quotes” \u00a0nbsp",
    "```python\nprint(sum(map(int, input().split())))\n```",
]


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory):
    return build_tiny_model(tmp_path_factory.mktemp("tiny"))


def test_tokenizer_ids_survive_reload_through_auto_tokenizer(tiny_dir):
    raw = Tokenizer.from_file(str(tiny_dir / "tokenizer.json"))
    tokenizer = AutoTokenizer.from_pretrained(tiny_dir)
    assert type(tokenizer).__name__ == "Qwen2Tokenizer"  # the class that swaps in Qwen's pre-tokenizer
    for text in TEXTS:
        ids = tokenizer(text)["input_ids"]
        assert ids == raw.encode(text).ids
        assert tokenizer.decode(ids) == text


def test_special_tokens_padding_and_chat_template(tiny_dir):
    tokenizer = AutoTokenizer.from_pretrained(tiny_dir)
    assert tokenizer.padding_side == "left"
    assert tokenizer.eos_token == IM_END and tokenizer.pad_token == "<|endoftext|>"
    assert tokenizer.eos_token_id != tokenizer.pad_token_id
    messages = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Add two numbers."}]
    text = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    assert text == (f"{IM_START}system\nBe brief.{IM_END}\n{IM_START}user\nAdd two numbers.{IM_END}\n"
                    f"{IM_START}assistant\n")
    assert not tokenizer.apply_chat_template(messages, tokenize=False).endswith(f"{IM_START}assistant\n")
    ids = tokenizer(text)["input_ids"]
    assert ids.count(tokenizer.convert_tokens_to_ids(IM_START)) == 3  # each special token is one id
    batch = tokenizer(["a", "a longer prompt"], padding=True, return_tensors="pt")
    assert batch["attention_mask"][0, 0] == 0 and batch["attention_mask"][0, -1] == 1  # left padding


def test_lm_head_is_saved_by_name_and_reloads_identically(tiny_dir):
    with safe_open(tiny_dir / "model.safetensors", "pt") as f:
        keys = set(f.keys())
    assert {"lm_head.weight", "model.embed_tokens.weight"} <= keys
    config = json.loads((tiny_dir / "config.json").read_text())
    assert config["model_type"] == "qwen2" and config["architectures"] == ["Qwen2ForCausalLM"]
    assert config["tie_word_embeddings"] is False
    model = AutoModelForCausalLM.from_pretrained(tiny_dir)
    assert config["vocab_size"] == len(AutoTokenizer.from_pretrained(tiny_dir))
    with safe_open(tiny_dir / "model.safetensors", "pt") as f:
        assert torch.equal(model.lm_head.weight, f.get_tensor("lm_head.weight"))
    assert not torch.equal(model.lm_head.weight, model.model.embed_tokens.weight)


def test_build_is_deterministic(tiny_dir, tmp_path):
    other = build_tiny_model(tmp_path / "again")
    assert (other / "tokenizer.json").read_text() == (tiny_dir / "tokenizer.json").read_text()
    a = AutoModelForCausalLM.from_pretrained(tiny_dir).state_dict()
    b = AutoModelForCausalLM.from_pretrained(other).state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)


@pytest.mark.skipif(not TOY_PROBLEMS.exists(), reason="bundled toy problems missing")
def test_toy_problems_tokenize_compactly(tiny_dir):
    """The BPE saw the toy problems, so their answers are a few tokens, not a byte per character."""
    tokenizer = AutoTokenizer.from_pretrained(tiny_dir)
    records = [json.loads(line) for line in TOY_PROBLEMS.read_text().splitlines()]
    answers = [format_answer(p, "chat") for r in records for p in json.loads(r["solutions"])]
    n_tokens = [len(tokenizer(a)["input_ids"]) for a in answers]
    n_chars = [len(a) for a in answers]
    assert sum(n_tokens) / sum(n_chars) < 0.4
    messages = chat_messages(records[0]["question"])
    assert len(tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)) / len(
        tokenizer.apply_chat_template(messages, add_generation_prompt=True)["input_ids"]) > 2.5


def test_command_line(tmp_path, capsys):
    main(["--out", str(tmp_path / "cli"), "--num_hidden_layers", "2", "--hidden_size", "64"])
    assert "parameters) written to" in capsys.readouterr().out
    config = json.loads((tmp_path / "cli" / "config.json").read_text())
    assert config["num_hidden_layers"] == 2 and config["hidden_size"] == 64
