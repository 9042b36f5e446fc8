"""LoRA adapters on the actor (and optionally the critic's backbone), and the reference policy they make free.

    actor = load_causal_lm(path, dtype="bfloat16")
    add_lora(actor, LoraArgs(rank=32))                    # in place: adapters trainable, every base weight frozen
    ref = AdaptersOff(actor)                              # the frozen reference: the same model, adapters off
    response_logprobs(ref, seq, attn, pos, p_len)         # = the base model's log-probs, bit for bit
    for name, tensor in iter_merged_params(actor, changed_only=True): ...   # W + (alpha / r) B A, HF names

`add_lora` injects peft's LoRA layers into the model itself (`peft.inject_adapter_in_model`): it stays the HF model
it was (same class, `generate`, `get_output_embeddings`, decoder layers for FSDP2 and `torch.compile`), with each
targeted `nn.Linear` replaced by a `peft` LoRA layer that holds it as `base_layer`. Adapters are kept in float32 when
the base is 16-bit (as `peft.get_peft_model` does by default): AdamW needs full-precision master weights, and the
frozen base has none. `lora_B` starts at zero, so the actor starts as the base model exactly.

The reference policy costs no memory: `AdaptersOff` runs the actor's forward with the adapters switched off (peft's
per-layer switch, `BaseTunerLayer.enable_adapters`, which is what `PeftModel.disable_adapter()` flips), and the base
weights never change because they are frozen. Merged weights for a rollout engine or an export are the base weight
plus peft's delta, `W + (B @ A) * alpha / r`, added as `LoraLayer.merge` adds it (in the wider dtype, rounded once to
W's dtype), so an engine synced from `iter_merged_params` holds what a fresh engine built from `peft`'s
`merge_and_unload()` export holds.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch
from torch import nn

ADAPTER = "default"  # peft's adapter name; one adapter per model


def lora_config(args):
    """The `peft.LoraConfig` of a `lit_codegen.args.LoraArgs` (or its parsed namespace)."""
    from peft import LoraConfig

    return LoraConfig(r=args.rank, lora_alpha=args.alpha, lora_dropout=args.dropout,
                      target_modules=list(args.target_modules), bias="none")


def add_lora(model: nn.Module, args) -> nn.Module:
    """Inject LoRA adapters into `model` in place and freeze everything else in it; returns `model`.

    Call after loading (and enabling gradient checkpointing), before `install_logprob_head`, `torch.compile` and
    sharding. The LM head and the embeddings never get adapters.

    Args:
        model: An HF causal LM, or a critic's backbone (`AutoModel`).
        args: A `LoraArgs` with `rank > 0`.

    Returns:
        `model`, whose only trainable parameters are the adapters' `lora_A` / `lora_B` weights.

    Raises:
        ValueError: none of `args.target_modules` names a linear layer of the model.
    """
    from peft import inject_adapter_in_model

    try:
        inject_adapter_in_model(lora_config(args), model, adapter_name=ADAPTER)
    except ValueError as err:  # peft: "Target modules {...} not found in the base model"
        raise ValueError(f"--model.lora.target_modules {list(args.target_modules)}: {err}") from None
    for name, param in model.named_parameters():
        if is_adapter_param(name):
            if param.dtype in (torch.float16, torch.bfloat16):  # float32 master weights for the optimizer
                param.data = param.data.float()
        else:
            param.requires_grad_(False)
    return model


def is_adapter_param(name: str) -> bool:
    """True for the name of a LoRA weight (`...q_proj.lora_A.default.weight`)."""
    return ".lora_A." in name or ".lora_B." in name


def has_lora(model: nn.Module | None) -> bool:
    """True if `model` holds LoRA layers (`add_lora`)."""
    return model is not None and any(_is_lora_layer(m) for m in model.modules())


def _is_lora_layer(module: nn.Module) -> bool:
    from peft.tuners.lora import LoraLayer

    return isinstance(module, LoraLayer)


@contextmanager
def adapters_disabled(model: nn.Module) -> Iterator[nn.Module]:
    """Run `model` as its base model inside the block: every LoRA layer returns its base layer's output.

    peft's own switch (`BaseTunerLayer.enable_adapters`, what `PeftModel.disable_adapter()` does), so it works on the
    injected model, sharded or compiled. It also clears the adapters' `requires_grad` inside the block (peft's
    doing) and sets it again on exit.
    """
    layers = [m for m in model.modules() if _is_lora_layer(m)]
    for layer in layers:
        layer.enable_adapters(False)
    try:
        yield model
    finally:
        for layer in layers:
            layer.enable_adapters(True)


class AdaptersOff:
    """The frozen reference policy of a LoRA actor: the actor itself, called with its adapters switched off.

    Stands where `PPOModule.ref` holds a separate frozen model otherwise: `response_logprobs(AdaptersOff(actor), ...)`
    returns the base model's log-probs. A plain object, not an `nn.Module`, so the actor's weights are neither
    registered nor checkpointed twice.
    """

    def __init__(self, model: nn.Module) -> None:
        self.model = model

    @property
    def config(self):
        """The actor's config (packed rows set its attention implementation: `varlen_attention`)."""
        return self.model.config

    def get_output_embeddings(self) -> nn.Module:
        """The actor's LM head (`response_logprobs` arms it)."""
        return self.model.get_output_embeddings()

    def __call__(self, *args, **kwargs):
        """The actor's forward with every adapter off."""
        with adapters_disabled(self.model):
            return self.model(*args, **kwargs)


def frozen_state_keys(model: nn.Module, prefix: str = "") -> set[str]:
    """State-dict keys of `model` (with `prefix`) that no optimizer changes: frozen parameters and buffers.

    With LoRA these are the base weights, which a resume rebuilds from the base model instead of the checkpoint.
    """
    trainable = {name for name, p in model.named_parameters(remove_duplicate=False) if p.requires_grad}
    return {prefix + key for key in model.state_dict() if key not in trainable}


def iter_merged_params(model: nn.Module, dtype: torch.dtype | None = None,
                       changed_only: bool = False) -> Iterator[tuple[str, torch.Tensor]]:
    """Yield a LoRA model's parameters under the base model's HF names, each LoRA layer's adapter merged in.

    One tensor at a time (under FSDP2 each is all-gathered just before it is yielded: a collective, so every rank
    must iterate the whole generator). The adapters themselves are not yielded.

    Args:
        model: A model after `add_lora` (possibly sharded, compiled or checkpoint-wrapped).
        dtype: Cast every tensor to this dtype after merging (e.g. a rollout engine's); None keeps the base dtype.
        changed_only: Yield only the decoder layers that hold an adapter (all their parameters, so that a rollout
            engine that fuses q/k/v or gate/up gets whole layers); the embeddings, the final norm and an untied LM
            head, which LoRA never changes, are left out.

    Yields:
        `(name, tensor)`, e.g. `("model.layers.0.self_attn.q_proj.weight", W + (B @ A) * alpha / r)`, detached.
    """
    from lit_codegen.rollout_vllm import WRAPPER_PREFIXES

    lora_layers = {name: m for name, m in model.named_modules() if _is_lora_layer(m)}
    changed_blocks = {_block_of(name) for name in lora_layers}
    for name, param in model.named_parameters():
        if is_adapter_param(name):
            continue
        owner, _, leaf = name.rpartition(".")
        if changed_only and _block_of(owner) not in changed_blocks:
            continue
        tensor = _full(param)
        layer_name = owner[: -len(".base_layer")] if owner.endswith(".base_layer") else None
        if layer_name in lora_layers and leaf == "weight":
            tensor = _merged(tensor, lora_layers[layer_name])
        if dtype is not None:
            tensor = tensor.to(dtype)
        for prefix in WRAPPER_PREFIXES:
            name = name.replace(prefix, "")
        yield name.replace(".base_layer.", "."), tensor


def _block_of(name: str) -> str | None:
    """`model.layers.3` for any name inside decoder layer 3; None outside the decoder layers."""
    parts = name.split(".")
    for i, part in enumerate(parts[:-1]):
        if part == "layers" and parts[i + 1].isdigit():
            return ".".join(parts[: i + 2])
    return None


def _full(param: torch.Tensor) -> torch.Tensor:
    """The whole (all-gathered) tensor of a parameter, detached."""
    from torch.distributed.tensor import DTensor

    tensor = param.detach()
    return tensor.full_tensor() if isinstance(tensor, DTensor) else tensor


def _merged(weight: torch.Tensor, layer: nn.Module) -> torch.Tensor:
    """`weight + delta` as `peft`'s `LoraLayer.merge` computes it (`get_delta_weight`, added in the wider dtype)."""
    a, b = _full(layer.lora_A[ADAPTER].weight), _full(layer.lora_B[ADAPTER].weight)
    if a.device.type == "cpu" and a.dtype in (torch.float16, torch.bfloat16):  # get_delta_weight's CPU rule
        delta = ((b.float() @ a.float()) * layer.scaling[ADAPTER]).to(a.dtype)
    else:
        delta = (b @ a) * layer.scaling[ADAPTER]
    if getattr(layer, "fan_in_fan_out", False):
        delta = delta.T
    return (weight.to(torch.promote_types(weight.dtype, delta.dtype)) + delta).to(weight.dtype)
