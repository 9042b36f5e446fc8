"""Rollout engines: sample responses for a batch of prompts, return token ids, masks and texts.

Every engine implements `RolloutEngine.generate(input_ids, attention_mask, params) -> Rollout`. `HFRollout` uses
transformers' `generate` (CPU and GPU); the vLLM engine plugs in behind the same interface.

    engine = HFRollout(model, tokenizer)
    roll = engine.generate(batch["input_ids"], batch["attention_mask"], SamplingParams(n=4, max_new_tokens=128))
    roll.response_ids, roll.response_mask, roll.texts

Mask convention (the one PPO trains on): `response_mask` is 1 for every generated token up to and including the
first end-of-sequence token, 0 after it. Response `i` belongs to prompt `prompt_index[i]`; the `n` samples of a prompt
are consecutive. Randomness comes from torch's global RNG (Lightning's `seed_everything` seeds it).
"""

from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass
from typing import Protocol

import torch
from transformers import GenerationConfig, PreTrainedModel, PreTrainedTokenizerBase


@dataclass
class SamplingParams:
    """How to sample responses."""

    temperature: float = 1.0
    """Softmax temperature (ignored when greedy)."""
    top_p: float = 1.0
    """Nucleus sampling threshold; 1.0 disables it. Top-k is always disabled."""
    max_new_tokens: int = 256
    """Maximum response length in tokens."""
    n: int = 1
    """Samples per prompt."""
    greedy: bool = False
    """Greedy decoding (validation); `temperature`/`top_p` are then ignored."""


@dataclass
class Rollout:
    """Responses to a batch of B prompts, N = B * n rows (the n samples of a prompt are consecutive)."""

    prompt_ids: torch.Tensor
    """(N, P) prompt token ids, left-padded."""
    prompt_mask: torch.Tensor
    """(N, P) 1 for real prompt tokens, 0 for padding."""
    response_ids: torch.Tensor
    """(N, R) generated token ids, right-padded with the pad token."""
    response_mask: torch.Tensor
    """(N, R) 1 for generated tokens up to and including the first EOS, 0 after."""
    texts: list[str]
    """N decoded responses, special tokens skipped."""
    prompt_index: torch.Tensor
    """(N,) index of each response's prompt in the batch."""
    truncated: torch.Tensor
    """(N,) bool: the response hit `max_new_tokens` without an EOS."""
    logprobs: torch.Tensor | None = None
    """(N, R) float32 log-probs of the sampled tokens under the distribution the engine sampled from (after
    temperature and top-p), 0 at padding; None where the engine does not report them (HF: it samples with the
    trainer's own weights)."""


class RolloutEngine(Protocol):
    """Anything that samples responses for left-padded prompts."""

    def generate(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, params: SamplingParams) -> Rollout:
        """Sample `params.n` responses per prompt from (B, P) left-padded `input_ids` / `attention_mask`."""
        ...


def stop_token_ids(tokenizer: PreTrainedTokenizerBase, model: PreTrainedModel | None = None) -> list[int]:
    """The ids that end a response: the tokenizer's EOS, ChatML's `<|im_end|>` and the model's generation EOS ids.

    Args:
        tokenizer: The policy's tokenizer.
        model: The policy (its `generation_config.eos_token_id` is added), or None.

    Returns:
        Sorted unique token ids.
    """
    ids = {tokenizer.eos_token_id}
    im_end = tokenizer.convert_tokens_to_ids("<|im_end|>")
    if isinstance(im_end, int) and im_end != tokenizer.unk_token_id:
        ids.add(im_end)
    model_eos = getattr(getattr(model, "generation_config", None), "eos_token_id", None)
    ids.update(model_eos if isinstance(model_eos, list) else [model_eos])
    return sorted(i for i in ids if i is not None)


def response_mask(response_ids: torch.Tensor, stop_ids: list[int]) -> tuple[torch.Tensor, torch.Tensor]:
    """Mask of the tokens up to and including the first stop token, and which rows never stopped.

    Args:
        response_ids: (N, R) generated ids.
        stop_ids: Token ids that end a response.

    Returns:
        `(mask, truncated)`: (N, R) long mask, (N,) bool "no stop token in the row".
    """
    is_stop = torch.isin(response_ids, torch.tensor(stop_ids, device=response_ids.device))
    # Number of stop tokens strictly before t: zero means t is at or before the first stop.
    stops_before = is_stop.long().cumsum(-1) - is_stop.long()
    return (stops_before == 0).long(), ~is_stop.any(-1)


class HFRollout:
    """Rollouts with transformers' `generate`.

    Args:
        model: The policy (a causal LM); put in eval mode during generation, its previous mode restored after.
        tokenizer: Its tokenizer (pad and EOS ids, decoding).
        synced_gpus: Passed to `generate`; set it under FSDP/ZeRO-3 so every rank keeps stepping until all are done.
    """

    def __init__(self, model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, synced_gpus: bool = False) -> None:
        self.model = model
        self.tokenizer = tokenizer
        self.synced_gpus = synced_gpus
        self.stop_ids = stop_token_ids(tokenizer, model)
        self.pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else self.stop_ids[0]

    def generation_config(self, params: SamplingParams) -> GenerationConfig:
        """A complete `GenerationConfig` for `params`: nothing is left for the model's own defaults to fill."""
        sampling = {} if params.greedy else {"temperature": params.temperature, "top_p": params.top_p, "top_k": 0}
        return GenerationConfig(
            do_sample=not params.greedy,
            **sampling,
            max_new_tokens=params.max_new_tokens,
            num_return_sequences=params.n,
            num_beams=1,
            eos_token_id=self.stop_ids,
            pad_token_id=self.pad_id,
            use_cache=True,
        )

    def generate(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, params: SamplingParams) -> Rollout:
        """Sample `params.n` responses for each of B left-padded prompts.

        Args:
            input_ids: (B, P) prompt ids, left-padded.
            attention_mask: (B, P) 1 for real prompt tokens.
            params: Sampling settings.

        Returns:
            A `Rollout` with N = B * n rows.
        """
        if params.greedy and params.n > 1:
            raise ValueError("greedy decoding with n > 1 gives n identical samples; use sampling or n = 1")
        was_training = self.model.training
        self.model.eval()
        try:
            with torch.no_grad(), _blank_generation_defaults(self.model):
                sequences = self.model.generate(
                    input_ids=input_ids,
                    attention_mask=attention_mask,
                    generation_config=self.generation_config(params),
                    synced_gpus=self.synced_gpus,
                )
        finally:
            self.model.train(was_training)
        n, p_len = params.n, input_ids.shape[1]
        response_ids = sequences[:, p_len:]
        mask, truncated = response_mask(response_ids, self.stop_ids)
        response_ids = response_ids.masked_fill(mask == 0, self.pad_id)
        return Rollout(
            prompt_ids=input_ids.repeat_interleave(n, dim=0),
            prompt_mask=attention_mask.repeat_interleave(n, dim=0),
            response_ids=response_ids,
            response_mask=mask,
            texts=self.tokenizer.batch_decode(response_ids, skip_special_tokens=True),
            prompt_index=torch.arange(input_ids.shape[0], device=input_ids.device).repeat_interleave(n),
            truncated=truncated,
        )


@contextmanager
def _blank_generation_defaults(model: PreTrainedModel):
    """Hide the model's `generation_config` during `generate`.

    transformers fills every field our config leaves unset from `model.generation_config` (a Qwen instruct checkpoint
    brings top_k=20, top_p=0.8, repetition_penalty=1.05...). With a blank one, only our config and the library's
    neutral defaults apply.
    """
    saved = model.generation_config
    model.generation_config = GenerationConfig()
    try:
        yield
    finally:
        model.generation_config = saved
