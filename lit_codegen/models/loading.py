"""Resolve a model name (`tiny`, a hub id or a local directory) and load its tokenizer and causal LM.

    path = resolve_model_path("tiny")                      # builds the tiny model once, then reuses the cache
    tokenizer = load_tokenizer(path)                       # left padding, pad token set
    model = load_causal_lm(path, dtype="bfloat16", gradient_checkpointing=True)

`Qwen/Qwen2.5-3B-Instruct` or `/path/to/checkpoint` pass through `resolve_model_path` unchanged and load with
`from_pretrained` as usual. The cache root is `$LIT_CODEGEN_CACHE` (default `~/.cache/lit_codegen`).
"""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, PreTrainedModel, PreTrainedTokenizerBase

TINY_ALIAS = "tiny"
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


VALUE_HEAD_FILE = "value_head.safetensors"
"""The critic's value head, next to its backbone (`CriticModel.save_pretrained`)."""
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "vocab.json", "tokenizer.model")
"""Any one of these makes a folder a tokenizer folder (fast, slow BPE or SentencePiece)."""


def cache_dir() -> Path:
    """The cache root: `$LIT_CODEGEN_CACHE`, else `~/.cache/lit_codegen`."""
    return Path(os.environ.get("LIT_CODEGEN_CACHE") or Path.home() / ".cache" / "lit_codegen")


def resolve_model_path(name_or_path: str) -> str:
    """Turn a model name into something `from_pretrained` loads.

    Args:
        name_or_path: `tiny` (the built-in tiny Qwen2, built on first use into the cache), a hub id or a local
            directory.

    Returns:
        The tiny model's cache directory for `tiny`; anything else unchanged.
    """
    if name_or_path != TINY_ALIAS:  # `~` too: YAML values never pass through a shell, and the hub takes no `~`
        return str(Path(name_or_path).expanduser()) if name_or_path.startswith("~") else name_or_path
    from lit_codegen.models import tiny

    target = cache_dir() / f"tiny-{tiny.build_signature()}"
    if not (target / "config.json").exists():
        # Build in a private temp dir and rename it into place: concurrent processes never see a half-written model,
        # and a loser of the race just discards its copy.
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}-", dir=target.parent))
        try:
            tiny.build_tiny_model(tmp)
            os.rename(tmp, target)
        except OSError:
            if not (target / "config.json").exists():
                raise
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    return str(target)


def dtype_of(dtype: str) -> torch.dtype:
    """`"bfloat16"` -> `torch.bfloat16`, with a clear error for an unknown name."""
    if dtype not in DTYPES:
        raise ValueError(f"dtype must be one of {sorted(DTYPES)}, got {dtype!r}")
    return DTYPES[dtype]


def check_model_dir(name_or_path: str) -> None:
    """Raise one clear error when `name_or_path` looks like a local path but is not an HF model directory."""
    path = Path(name_or_path).expanduser()
    looks_local = path.exists() or name_or_path.startswith((".", "/", "~")) or name_or_path.count("/") > 1
    if looks_local and not (path / "config.json").is_file():
        raise FileNotFoundError(
            f"model {name_or_path!r} is not an HF model directory (no config.json there); pass `tiny`, a hub id "
            "such as Qwen/Qwen2.5-3B-Instruct, or a directory with the model and tokenizer files (as "
            "`python -m lit_codegen.export` or model.save_pretrained + tokenizer.save_pretrained write it)"
        )


def _from_hub_or_dir(load, path: str):
    """`load(path)`, with a missing local folder that looks like a hub id (`out/sft`) named as such on failure."""
    try:
        return load(path)
    except OSError as err:
        if Path(path).exists():
            raise
        raise FileNotFoundError(f"model {path!r} is neither a local folder nor a model the hub serves "
                                f"({str(err).splitlines()[0]})") from None


def load_tokenizer(name_or_path: str) -> PreTrainedTokenizerBase:
    """Load the tokenizer with left padding (for generation) and a pad token (falls back to EOS).

    Args:
        name_or_path: Anything `resolve_model_path` accepts.

    Returns:
        The tokenizer.
    """
    path = resolve_model_path(name_or_path)
    check_model_dir(path)
    if Path(path).is_dir() and not any((Path(path) / name).is_file() for name in TOKENIZER_FILES):
        # transformers would build an empty tokenizer that encodes every prompt to []
        raise FileNotFoundError(f"model folder {path!r} has no tokenizer files ({', '.join(TOKENIZER_FILES)}); "
                                "save the tokenizer there too (tokenizer.save_pretrained)")
    tokenizer = _from_hub_or_dir(lambda p: AutoTokenizer.from_pretrained(p, padding_side="left"), path)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def load_causal_lm(name_or_path: str, dtype: str = "float32", gradient_checkpointing: bool = False) -> PreTrainedModel:
    """Load a causal LM (`AutoModelForCausalLM`) in training mode.

    Args:
        name_or_path: Anything `resolve_model_path` accepts.
        dtype: Parameter dtype: `float32`, `bfloat16` or `float16`.
        gradient_checkpointing: Recompute activations in the backward pass (saves memory, costs ~30% time).

    Returns:
        The model, on CPU, in `train()` mode.
    """
    path = resolve_model_path(name_or_path)
    check_model_dir(path)
    if (Path(path) / VALUE_HEAD_FILE).is_file():  # its lm_head would start random
        raise ValueError(f"{path!r} is a critic (it has value_head.safetensors), not a causal LM; an export's actor "
                         "is the folder above its critic/")
    model = _from_hub_or_dir(lambda p: AutoModelForCausalLM.from_pretrained(p, dtype=dtype_of(dtype)), path)
    if gradient_checkpointing:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        model.config.use_cache = False
    return model.train()
