"""`CriticModel`: the value function of PPO, a causal-LM backbone with a scalar value head.

    critic = CriticModel.from_pretrained("path/to/actor")          # backbone from the actor, fresh value head
    values = critic(input_ids, attention_mask)                      # (B, T) float32: V(state up to token t)
    critic.save_pretrained("out/critic")                            # backbone + value_head.safetensors
    critic = CriticModel.from_pretrained("out/critic")             # both restored

The backbone is `AutoModel` (the transformer without its LM head) of any causal-LM checkpoint; the head is
`nn.Linear(hidden, 1)` kept in float32 whatever the backbone's dtype, so values and the value loss stay precise.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Literal

import torch
from safetensors.torch import load_file, save_file
from torch import nn
from transformers import AutoModel

from lit_codegen.models.loading import VALUE_HEAD_FILE, check_model_dir, dtype_of, resolve_model_path
from lit_codegen.models.packing import pack, pad_responses, trim, varlen_attention


class CriticModel(nn.Module):
    """A transformer backbone with a linear value head on every position.

    Args:
        backbone: A base model (e.g. `Qwen2Model`) whose output has `last_hidden_state` (B, T, H).
    """

    def __init__(self, backbone: nn.Module) -> None:
        super().__init__()
        self.backbone = backbone
        self.config = backbone.config
        self.value_head = nn.Linear(self.config.hidden_size, 1, dtype=torch.float32)
        # Small random weights (the backbone gets gradients from the first step), zero bias: values start near 0.
        nn.init.normal_(self.value_head.weight, std=getattr(self.config, "initializer_range", 0.02))
        nn.init.zeros_(self.value_head.bias)

    def forward(
        self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None, position_ids: torch.Tensor | None = None,
        **attention_kwargs,
    ) -> torch.Tensor:
        """Value of every prefix.

        Args:
            input_ids: (B, T) token ids.
            attention_mask: (B, T) 1 for real tokens, 0 for padding; None for packed rows.
            position_ids: (B, T) positions, or None to let the backbone derive them.
            attention_kwargs: `Packed.attention_kwargs` for packed rows (under `varlen_attention`).

        Returns:
            (B, T) float32 values; entry t is the value of the state after reading tokens 0..t.
        """
        hidden = self.backbone(
            input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids, use_cache=False,
            **attention_kwargs,
        ).last_hidden_state  # (B, T, H)
        # In the head's dtype, float32 (under FSDP2 its own unit keeps it so: `shard_model`), whatever bf16-mixed
        # autocast would make of it; called as a module so that FSDP2's hooks gather its parameters.
        with torch.autocast(hidden.device.type, enabled=False):
            values = self.value_head(hidden.to(self.value_head.weight.dtype))
        return values.float().squeeze(-1).clone()  # not a view: FSDP2 hooks its outputs

    @classmethod
    def from_pretrained(
        cls, name_or_path: str, dtype: str = "float32", gradient_checkpointing: bool = False
    ) -> CriticModel:
        """Load the backbone from a causal-LM or critic checkpoint; the value head too if the directory has one.

        Args:
            name_or_path: An actor checkpoint (the head starts fresh), a directory written by `save_pretrained`
                (the head is restored), `tiny` or a hub id.
            dtype: Backbone dtype: `float32`, `bfloat16` or `float16` (the head stays float32).
            gradient_checkpointing: Recompute the backbone's activations in the backward pass.

        Returns:
            The critic in `train()` mode.
        """
        path = resolve_model_path(name_or_path)
        check_model_dir(path)
        critic = cls(_load_backbone(path, dtype_of(dtype)))
        head_file = Path(path) / VALUE_HEAD_FILE
        if head_file.is_file():
            critic.value_head.load_state_dict(load_file(head_file))
        if gradient_checkpointing:
            critic.backbone.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        return critic.train()

    def save_pretrained(self, out_dir: str | Path) -> Path:
        """Write the backbone (`save_pretrained`) and the head (`value_head.safetensors`) to `out_dir`.

        Args:
            out_dir: Directory to write; `CriticModel.from_pretrained(out_dir)` restores the critic.

        Returns:
            `out_dir` as a `Path`.
        """
        out_dir = Path(out_dir)
        self.backbone.save_pretrained(out_dir)
        save_file({k: v.detach().cpu().contiguous() for k, v in self.value_head.state_dict().items()},
                  out_dir / VALUE_HEAD_FILE)
        return out_dir


def response_values(critic: CriticModel, seq: torch.Tensor, attn: torch.Tensor, pos: torch.Tensor, prompt_len: int,
                    layout: Literal["padded", "trimmed", "packed"] = "padded") -> torch.Tensor:
    """Values (B, R) of the states before each response token of `seq[:, prompt_len:]`.

    Args:
        critic: The critic.
        seq: (B, P + R) prompt + response ids (prompts left-padded, responses right-padded).
        attn: (B, P + R) attention mask.
        pos: (B, P + R) position ids.
        prompt_len: P.
        layout: As in `lit_codegen.models.logprob_head.response_logprobs`; `trimmed` and `packed` give zero values
            at padding.

    Returns:
        (B, R) float32 values, differentiable when grad is enabled.
    """
    if layout == "packed":
        packed = pack(seq, attn, pos, prompt_len)
        with varlen_attention(critic):
            values = critic(packed.input_ids, None, packed.position_ids, **packed.attention_kwargs)
        return packed.unpack(values[0, packed.index])
    if layout == "trimmed":
        values = response_values(critic, *trim(seq, attn, pos, prompt_len))
        return pad_responses(values, seq.shape[1] - prompt_len)
    return critic(seq, attn, pos)[:, prompt_len - 1 : -1]


def _load_backbone(path: str, dtype: torch.dtype) -> nn.Module:
    """`AutoModel.from_pretrained` that accepts an LM head in the checkpoint and nothing else out of place.

    transformers prints a load report for the (expected) unused `lm_head.weight` of a causal-LM checkpoint; it is
    silenced here and the loading info checked instead, so a real mismatch still fails loudly.
    """
    report_logger = logging.getLogger("transformers.modeling_utils")
    report_filter = _DropLoadReport()
    report_logger.addFilter(report_filter)
    try:
        backbone, info = AutoModel.from_pretrained(path, dtype=dtype, output_loading_info=True)
    finally:
        report_logger.removeFilter(report_filter)
    unexpected = [k for k in info["unexpected_keys"] if not k.startswith("lm_head.")]
    if info["missing_keys"] or unexpected or info["mismatched_keys"]:
        raise ValueError(
            f"critic backbone from {path!r} did not load cleanly: missing {sorted(info['missing_keys'])[:5]}, "
            f"unexpected {sorted(unexpected)[:5]}, mismatched {sorted(info['mismatched_keys'])[:5]}"
        )
    return backbone


class _DropLoadReport(logging.Filter):
    """Drops transformers' state-dict load report (we check the loading info ourselves)."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "LOAD REPORT" not in str(record.msg)
