"""Worker for the 2-rank vLLM test in tests/test_rollout_vllm.py, launched by `torchrun --nproc_per_node 2` (CPU, gloo).

Trains the tiny PPO model for two iterations under FSDP2 (ModelParallelStrategy) with the vLLM rollout backend, so
every rollout after the first update pushes the actor's sharded weights into each rank's own engine. Then it writes,
from every rank: which rank and local rank the engine's worker took, its executor backend, and the largest difference
between the engine's weights and the actor's gathered weights (after one more sync, as the next rollout would do).
"""

import json
import os
import sys
from pathlib import Path

import lightning as L
import torch

from lit_codegen.args import OptimArgs, PPOArgs, RewardArgs, RolloutArgs
from lit_codegen.data.datamodule import AppsDataModule
from lit_codegen.data.toy import write_toy_parquet
from lit_codegen.module import PPOModule
from lit_codegen.rollout_vllm import iter_actor_params

# vLLM fuses these HF projections into one parameter, stacked in this order.
FUSED = {"qkv_proj": ("q_proj", "k_proj", "v_proj"), "gate_up_proj": ("gate_proj", "up_proj")}


def engine_weight_error(engine, actor_weights: dict[str, torch.Tensor]) -> tuple[float, int]:
    """Largest |engine - actor| over the engine's weights (fused ones rebuilt from the HF parts), and how many."""
    engine_weights = engine.llm.collective_rpc(
        lambda worker: {k: v.detach().clone() for k, v in worker.model_runner.get_model().state_dict().items()}
    )[0]
    error, compared = 0.0, 0
    for name, value in engine_weights.items():
        fused = next((f for f in FUSED if f".{f}." in name), None)
        if fused is not None:
            expected = torch.cat([actor_weights[name.replace(fused, part)] for part in FUSED[fused]])
        elif name in actor_weights:
            expected = actor_weights[name]
        else:  # rotary caches and other buffers that are not weights
            continue
        value = value[: expected.shape[0]]  # vLLM pads the vocabulary rows of the embedding to a multiple of 64
        error = max(error, float((value.float() - expected.to(value.dtype).float()).abs().max()))
        compared += 1
    return error, compared


def main(out: Path) -> None:
    L.seed_everything(0)
    module = PPOModule(
        model="tiny",
        algorithm=PPOArgs(mini_batch_size=4, micro_batch_size=2, kl_coef=0.0),
        rollout=RolloutArgs(backend="vllm", n=1, max_new_tokens=8),
        reward=RewardArgs(workers=1, max_tests=2),
        optim=OptimArgs(actor_lr=1e-2, critic_lr=1e-3),  # large steps: the synced weights must visibly move
    )
    data_dir = out / f"data_rank{os.environ['RANK']}"  # one copy per rank: no race
    write_toy_parquet(data_dir, "base")
    data = AppsDataModule(data_dir=str(data_dir), template_type="base", train_batch_size=4, val_batch_size=4)
    data.connect(module.tokenizer)
    from lightning.pytorch.strategies import ModelParallelStrategy

    trainer = L.Trainer(accelerator="cpu", devices=2, max_steps=2, logger=False, limit_val_batches=0,
                        strategy=ModelParallelStrategy(data_parallel_size=2, tensor_parallel_size=1),
                        enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False)
    local_rank_before = os.environ.get("LOCAL_RANK")
    trainer.fit(module, datamodule=data)
    engine = module.engine
    initial, _ = engine_weight_error(engine, {k: v.float() for k, v in iter_actor_params(module.actor)})
    # The next rollout pushes the last update's weights (a collective over both ranks' shards), as `generate` does.
    engine.wake_up(iter_actor_params(module.actor))
    synced, compared = engine_weight_error(engine, {k: v.float() for k, v in iter_actor_params(module.actor)})
    placement = engine.llm.collective_rpc(lambda worker: (worker.rank, worker.local_rank))[0]
    config = engine.llm.llm_engine.vllm_config.parallel_config
    result = {
        "rank": trainer.global_rank, "global_step": trainer.global_step, "engine_rank": placement[0],
        "engine_local_rank": placement[1], "backend": config.distributed_executor_backend,
        "local_rank_env_kept": os.environ.get("LOCAL_RANK") == local_rank_before,
        "error_before_sync": initial, "error_after_sync": synced, "weights_compared": compared,
    }
    (out / f"rank{trainer.global_rank}.json").write_text(json.dumps(result))


if __name__ == "__main__":
    main(Path(sys.argv[1]))
