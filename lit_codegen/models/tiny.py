"""A tiny random-init Qwen2 causal LM with a locally trained BPE tokenizer, saved as an ordinary HF model directory.

It stands in for `Qwen/Qwen2.5-3B-Instruct` in tests and in the CPU demo: same architecture (`Qwen2ForCausalLM`),
same ChatML special tokens and chat template, same tokenizer pipeline (Qwen's split regex + byte-level BPE), so every
code path that takes a model name or path runs unchanged on it. Nothing is downloaded.

    python -m lit_codegen.models.tiny --out /tmp/tiny            # ~1M parameters, 710 tokens, a few seconds
    python -m lit_codegen.models.tiny --out /tmp/tiny --num_hidden_layers 4 --hidden_size 256

Two traps this module avoids (both have tests):

- transformers 5.x loads a `model_type=qwen2` directory with `Qwen2Tokenizer`, which rebuilds the pre-tokenizer with
  Qwen's split regex. A BPE trained behind plain ByteLevel would then give different ids after reload, so the BPE is
  trained behind exactly Qwen's pipeline (NFC, split regex, ByteLevel without regex).
- Engines that load weights by name (vLLM) expect `lm_head.weight` in the checkpoint. The tiny model does not tie its
  input and output embeddings, so `lm_head.weight` is an ordinary saved tensor.

The BPE is trained deterministically on `CORPUS` (short Python programs and English) plus the bundled toy problems
(`lit_codegen/data/toy_problems.jsonl`, questions and solutions) and the prompt templates, so the code-like tokens of
the demo problems are merged and prompts stay short.
"""

from __future__ import annotations

import argparse
import hashlib
import json
from pathlib import Path

import torch
from tokenizers import Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers, trainers
from transformers import GenerationConfig, PreTrainedTokenizerFast, Qwen2Config, Qwen2ForCausalLM

# Bump when the build changes in a way the cache key below does not see.
TINY_VERSION = 1

ENDOFTEXT, IM_START, IM_END = "<|endoftext|>", "<|im_start|>", "<|im_end|>"
SPECIAL_TOKENS = [ENDOFTEXT, IM_START, IM_END]

# Qwen2's pre-tokenizer split (transformers `models/qwen2/tokenization_qwen2.py: PRETOKENIZE_REGEX`).
QWEN_PATTERN = (
    r"""(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+"""
    r"""|\s+(?!\S)|\s+"""
)

# Qwen2.5-Instruct's ChatML template without tool calls and without Qwen's default system message (shorter prompts).
CHAT_TEMPLATE = (
    "{%- for message in messages %}"
    "{{- '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + '\\n' }}"
    "{%- endfor %}"
    "{%- if add_generation_prompt %}{{- '<|im_start|>assistant\\n' }}{%- endif %}"
)

TOY_PROBLEMS = Path(__file__).resolve().parents[1] / "data" / "toy_problems.jsonl"

CORPUS = '''
n = int(input())
print(n)
a, b = map(int, input().split())
print(a + b)
print(a * b)
print(a - b)
nums = list(map(int, input().split()))
print(sum(nums))
print(max(nums))
print(min(nums))
print(len(nums))
s = input().strip()
print(s[::-1])
print(s.upper())
print(s.lower())
print(len(s))
words = input().split()
print(" ".join(reversed(words)))
print(len(words))
for i in range(n):
    print(i)
total = 0
for x in nums:
    total += x
print(total)
count = 0
for c in s:
    if c in "aeiou":
        count += 1
print(count)
if n % 2 == 0:
    print("even")
else:
    print("odd")
if a > b:
    print(a)
elif a < b:
    print(b)
else:
    print(0)
result = []
for line in range(n):
    result.append(input())
print("\\n".join(result))
while n > 0:
    n -= 1
import sys
data = sys.stdin.read().split()
lines = sys.stdin.read().splitlines()
print(sorted(nums))
print(" ".join(map(str, sorted(nums))))
print(" ".join(str(x) for x in nums))
print(sum(1 for x in nums if x > 0))
print(s == s[::-1])
print("YES" if s == s[::-1] else "NO")
print("Yes")
print("No")

def add(a, b):
    return a + b

def solve(n):
    return n * 2

def is_even(n):
    return n % 2 == 0

def reverse_string(s):
    return s[::-1]

def count_vowels(s):
    return sum(1 for c in s if c in "aeiou")

def square(x):
    return x * x

def max_of_list(nums):
    return max(nums)

def sum_list(nums):
    total = 0
    for x in nums:
        total += x
    return total

def factorial(n):
    result = 1
    for i in range(1, n + 1):
        result *= i
    return result

def main():
    n = int(input())
    print(solve(n))

if __name__ == "__main__":
    main()

class Solution:
    def solve(self, nums):
        return sorted(nums)

Read an integer n from standard input and print it.
Read two integers a and b and print their sum.
Given a list of numbers, return the largest one.
Given a string, print the string reversed.
Write a function that returns the square of a number.
Count the number of vowels in the given string.
The first line contains an integer n. The second line contains n integers.
Print a single integer: the answer.
Return True if the number is even and False otherwise.
Input
Output
Example
Examples
Note
-----Input-----
-----Output-----
-----Examples-----
'''


def training_texts() -> list[str]:
    """The BPE's training texts: `CORPUS`, plus each toy problem's chat prompt and fenced answers (if present)."""
    from lit_codegen.data import prompts

    texts = [CORPUS, prompts.base_prompt("Q", fn_name=None), prompts.base_prompt("Q", fn_name="f")]
    if TOY_PROBLEMS.exists():
        for line in TOY_PROBLEMS.read_text(encoding="utf-8").splitlines():
            if not line.strip():
                continue
            record = json.loads(line)
            fn_name = json.loads(record["input_output"]).get("fn_name")
            messages = prompts.chat_messages(record["question"], record.get("starter_code") or "", fn_name)
            texts.append("".join(f"{IM_START}{m['role']}\n{m['content']}{IM_END}\n" for m in messages))
            for key in ("solutions", "wrong_solutions"):  # JSON lists of programs
                texts.extend(prompts.format_answer(p, "chat") for p in json.loads(record.get(key) or "[]"))
    return texts


def train_tokenizer(vocab_size: int = 1024) -> Tokenizer:
    """Train a byte-level BPE behind Qwen2's pre-tokenizer pipeline on `training_texts()` (deterministic).

    Args:
        vocab_size: Total vocabulary size including the 256 byte tokens and the special tokens.

    Returns:
        A `tokenizers.Tokenizer` whose ids survive a reload through `Qwen2Tokenizer`.
    """
    tokenizer = Tokenizer(models.BPE(unk_token=None, fuse_unk=False, byte_fallback=False))
    tokenizer.normalizer = normalizers.NFC()
    tokenizer.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(QWEN_PATTERN), behavior="isolated", invert=False),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
    ])
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        min_frequency=2,
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tokenizer.train_from_iterator(training_texts(), trainer=trainer)
    return tokenizer


def build_tiny_model(
    out_dir: str | Path,
    *,
    vocab_size: int = 1024,
    hidden_size: int = 128,
    intermediate_size: int = 512,
    num_hidden_layers: int = 4,
    num_attention_heads: int = 4,
    num_key_value_heads: int = 2,
    max_position_embeddings: int = 1024,
    seed: int = 0,
) -> Path:
    """Build the tiny Qwen2 model and its tokenizer and save them as an HF model directory.

    Args:
        out_dir: Directory to write (created; existing files are overwritten).
        vocab_size: Upper bound of the BPE vocabulary; the trainer stops when the corpus has no more merges (710
            tokens on the bundled corpus), and the embedding matrix has exactly the tokenizer's size.
        hidden_size: Model width.
        intermediate_size: MLP width.
        num_hidden_layers: Transformer blocks.
        num_attention_heads: Query heads.
        num_key_value_heads: Key/value heads (grouped-query attention, as in Qwen2.5).
        max_position_embeddings: Longest sequence (prompt + response) in tokens.
        seed: Seed of the random initialisation.

    Returns:
        `out_dir` as a `Path`; `AutoModelForCausalLM.from_pretrained` and `AutoTokenizer.from_pretrained` load it.
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=train_tokenizer(vocab_size),
        eos_token=IM_END,
        pad_token=ENDOFTEXT,
        unk_token=None,
        bos_token=None,
        padding_side="left",
        chat_template=CHAT_TEMPLATE,
        model_max_length=max_position_embeddings,
    )
    ids = {token: tokenizer.convert_tokens_to_ids(token) for token in SPECIAL_TOKENS}
    config = Qwen2Config(
        vocab_size=len(tokenizer),
        hidden_size=hidden_size,
        intermediate_size=intermediate_size,
        num_hidden_layers=num_hidden_layers,
        num_attention_heads=num_attention_heads,
        num_key_value_heads=num_key_value_heads,
        max_position_embeddings=max_position_embeddings,
        tie_word_embeddings=False,  # lm_head.weight is saved, so loaders that match weights by name find it
        bos_token_id=ids[ENDOFTEXT],
        eos_token_id=ids[IM_END],
        pad_token_id=ids[ENDOFTEXT],
    )
    torch.manual_seed(seed)
    model = Qwen2ForCausalLM(config)
    model.generation_config = GenerationConfig(
        bos_token_id=ids[ENDOFTEXT], eos_token_id=[ids[IM_END], ids[ENDOFTEXT]], pad_token_id=ids[ENDOFTEXT]
    )
    model.save_pretrained(out_dir)
    tokenizer.save_pretrained(out_dir)
    return out_dir


def build_signature(**kwargs: object) -> str:
    """A short hash of everything the tiny build depends on (version, arguments, training texts), for cache keys."""
    digest = hashlib.sha256(json.dumps([TINY_VERSION, sorted(kwargs.items())]).encode())
    for text in training_texts():
        digest.update(text.encode())
    return digest.hexdigest()[:12]


def main(argv: list[str] | None = None) -> None:
    """`python -m lit_codegen.models.tiny --out DIR [...]`."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", required=True, help="Directory to write the model and tokenizer to.")
    parser.add_argument("--vocab_size", type=int, default=1024, help="BPE vocabulary bound (710 used)")
    parser.add_argument("--hidden_size", type=int, default=128, help="Model width.")
    parser.add_argument("--intermediate_size", type=int, default=512, help="MLP width.")
    parser.add_argument("--num_hidden_layers", type=int, default=4, help="Transformer blocks.")
    parser.add_argument("--num_attention_heads", type=int, default=4, help="Query heads.")
    parser.add_argument("--num_key_value_heads", type=int, default=2, help="Key/value heads.")
    parser.add_argument("--max_position_embeddings", type=int, default=1024, help="Longest sequence in tokens.")
    parser.add_argument("--seed", type=int, default=0, help="Seed of the random initialisation.")
    args = vars(parser.parse_args(argv))
    out = build_tiny_model(args.pop("out"), **args)
    n_params = sum(p.numel() for p in Qwen2ForCausalLM.from_pretrained(out).parameters())
    print(f"tiny Qwen2 model ({n_params / 1e6:.2f}M parameters) written to {out}")


if __name__ == "__main__":
    main()
