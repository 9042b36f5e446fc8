"""FSDP2 for actor, critic and reference, per-layer `torch.compile`, and whole-or-nothing sharded checkpoints.

`shard_model` applies `fully_shard`, `compile_decoder_layers` compiles the decoder layers, and
`AtomicModelParallelStrategy` is Lightning's `ModelParallelStrategy` with sharded checkpoints that are never
half-written. `PPOModule.configure_model` shards under that strategy, which hands the module a device mesh:

    trainer:
      strategy:
        class_path: lit_codegen.parallel.AtomicModelParallelStrategy
        init_args: {data_parallel_size: 4, tensor_parallel_size: 1}

Each decoder layer is its own FSDP unit (parameters all-gathered layer by layer), then the root module; on one rank
the root alone (nothing to shard). With `precision: bf16-mixed` the layers compute in bfloat16 while fp32 master
weights and fp32 gradient reduction stay; the critic's value head is a unit of its own that computes in float32.
"""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch
from lightning.pytorch.strategies import ModelParallelStrategy
from torch import nn


def decoder_layers(model: nn.Module) -> list[nn.Module]:
    """The transformer blocks of an HF model (the classes it lists in `_no_split_modules`), in order."""
    names = set(getattr(model, "_no_split_modules", None) or [])
    if not names and hasattr(model, "backbone"):  # CriticModel wraps an HF backbone
        names = set(getattr(model.backbone, "_no_split_modules", None) or [])
    layers = [m for m in model.modules() if type(m).__name__ in names]
    if not layers:
        raise ValueError(f"cannot find decoder layers to shard in {type(model).__name__}")
    return layers


def compile_decoder_layers(model: nn.Module) -> nn.Module:
    """`torch.compile` each decoder layer in place (fused norms, rotary, activations); returns `model`.

    All layers share one compiled graph per mode (training / no-grad, with / without a padding mask): they run the
    same code on parameters of the same shapes. Call before `shard_model`; FSDP's hooks stay outside the graphs.
    Shapes turn dynamic after the first change of sequence length, so varying lengths do not recompile each time.
    """
    # Graphs per layer code: up to 3 modes (training, no-grad, frozen reference) x padding mask or not x static then
    # dynamic shapes = 12; at dynamo's default limit of 8 the rest would silently run eager.
    config = torch._dynamo.config
    name = "recompile_limit" if hasattr(config, "recompile_limit") else "cache_size_limit"
    setattr(config, name, max(getattr(config, name), 32))
    for layer in decoder_layers(model):
        layer.compile()
    return model


def parallel_sizes(data_parallel_size, tensor_parallel_size, devices: int, num_nodes: int) -> tuple[int, int]:
    """ModelParallelStrategy's (data, tensor) parallel sizes, with "auto" resolved as Lightning does it.

    "auto" is the number of nodes for data parallel and the devices per node for tensor parallel. Raises ValueError
    unless the product is devices x nodes, which the strategy needs (else every rank fails when it starts).
    """
    dp = num_nodes if data_parallel_size == "auto" else data_parallel_size
    tp = devices if tensor_parallel_size == "auto" else tensor_parallel_size
    if not (isinstance(dp, int) and isinstance(tp, int) and dp * tp == devices * num_nodes):
        suggestion = devices * num_nodes // tp if isinstance(tp, int) and tp > 0 else devices * num_nodes
        raise ValueError(
            f"trainer.strategy.init_args.data_parallel_size {dp!r} x tensor_parallel_size {tp!r} must equal "
            f"trainer.devices {devices} x trainer.num_nodes {num_nodes}; set them together "
            f"(e.g. data_parallel_size {max(suggestion, 1)})"
        )
    return dp, tp


def shard_model(model: nn.Module, mesh, mixed_precision: bool = False, cpu_offload: bool = False) -> nn.Module:
    """Apply `fully_shard` to every decoder layer and then to the whole model (in place; on one rank, the model only).

    On one rank without CPU offload there is nothing to split or free, so the whole model is a single unit that
    stays gathered between the forward and backward passes: one bf16 cast of all parameters per pass and no hooks
    between the layers, instead of per-layer gathers (measured: the host, not the GPU, bounds a 0.5 B model's
    compiled update on one H100, with FSDP2's per-layer hooks and copies a large part of it).

    Args:
        model: An HF causal LM or `CriticModel`.
        mesh: The 1-D data-parallel device mesh to shard over.
        mixed_precision: Compute in bfloat16, keep fp32 master weights and reduce gradients in fp32.
        cpu_offload: Keep sharded parameters, gradients and optimizer state in CPU memory.
    """
    from torch.distributed.fsdp import CPUOffloadPolicy, MixedPrecisionPolicy, fully_shard

    split = mesh.size() > 1 or cpu_offload  # per-layer units free each layer's full parameters after use
    kwargs = {"mesh": mesh, "reshard_after_forward": split}
    if mixed_precision:
        kwargs["mp_policy"] = MixedPrecisionPolicy(param_dtype=torch.bfloat16, reduce_dtype=torch.float32)
    if cpu_offload:
        kwargs["offload_policy"] = CPUOffloadPolicy()
    units = [*decoder_layers(model), model] if split else [model]
    head = getattr(model, "value_head", None)  # CriticModel: its own unit, so that bf16-mixed leaves it in float32
    if mixed_precision and head is not None:
        units.insert(-1, head)
    for unit in units:
        policy = kwargs.get("mp_policy")
        if unit is head:
            policy = MixedPrecisionPolicy(param_dtype=torch.float32, reduce_dtype=torch.float32)
        fully_shard(unit, **{**kwargs, "mp_policy": policy} if policy else kwargs)
        unit.reshard_after_forward_default = kwargs["reshard_after_forward"]  # restored by `gathered`
    return model


def is_sharded(model: nn.Module) -> bool:
    """True if `model` was wrapped by `fully_shard`."""
    from torch.distributed.fsdp import FSDPModule

    return isinstance(model, FSDPModule)


@contextmanager
def gathered(model: nn.Module) -> Iterator[nn.Module]:
    """Keep a sharded model's parameters gathered for many forward passes (generation), then reshard.

    Without it, every decoding step would all-gather and free each layer again. No-op for unsharded models.
    """
    if not is_sharded(model):
        yield model
        return
    units = [m for m in model.modules() if is_sharded(m)]
    for unit in units:
        unit.set_reshard_after_forward(False, recurse=False)
        unit.unshard()
    try:
        yield model
    finally:
        for unit in units:
            unit.set_reshard_after_forward(getattr(unit, "reshard_after_forward_default", True), recurse=False)
            unit.reshard()


class AtomicModelParallelStrategy(ModelParallelStrategy):
    """Lightning's `ModelParallelStrategy` whose sharded checkpoints replace the previous one only once complete.

    Lightning writes a sharded checkpoint (a `torch.distributed.checkpoint` directory) in place, so a job killed while
    saving (preemption, a time limit) leaves a `last.ckpt/` that mixes two iterations and cannot resume. Here every
    rank writes into `NAME.partial/`; once all ranks are done, rank 0 moves the old checkpoint to `NAME.old`, renames
    the new one to `NAME` and deletes the old one. A kill before that leaves the previous checkpoint as it was (the
    next save clears the `.partial` leftover); a kill between the two renames leaves it at `NAME.old`, which the next
    save (or a rename by hand) puts back first. Same arguments as `ModelParallelStrategy`; single-file checkpoints
    (`save_distributed_checkpoint=False`) are its own, already written to a temporary file and renamed.
    """

    def save_checkpoint(self, checkpoint: dict[str, Any], filepath, storage_options: Any | None = None) -> None:
        """Write the sharded checkpoint to `filepath` + `.partial` on every rank, then swap it in on rank 0."""
        if not self._save_distributed_checkpoint:
            return super().save_checkpoint(checkpoint, filepath, storage_options)
        path = Path(self.broadcast(str(filepath)))
        staging, previous = path.with_name(path.name + ".partial"), path.with_name(path.name + ".old")
        if self.global_rank == 0:
            if previous.exists() and not path.exists():  # killed between the two renames of an earlier save
                previous.rename(path)
            _remove(staging)
            _remove(previous)
        self.barrier("atomic_checkpoint_start")
        super().save_checkpoint(checkpoint, staging, storage_options)
        self.barrier("atomic_checkpoint_written")
        if self.global_rank == 0:
            if path.exists():
                path.rename(previous)
            staging.rename(path)
            _remove(previous)
        self.barrier("atomic_checkpoint_swapped")


def _remove(path: Path) -> None:
    """Delete a file or directory tree if it exists."""
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)
    elif path.exists() or path.is_symlink():
        path.unlink()
