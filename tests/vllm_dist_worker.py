"""Worker for the 2-rank vLLM test in tests/test_rollout_vllm.py, launched by `torchrun --nproc_per_node 2` (CPU, gloo).

Trains the tiny PPO model for two iterations under FSDP2 (ModelParallelStrategy) with the vLLM rollout backend, so
every rollout after the first update pushes the actor's sharded weights into each rank's own engine. Then every rank
scores fixed prompts greedily before and after one more sync (as the next rollout would do), rank 0 saves the
actor's gathered weights as an HF folder, and each rank writes what it saw: which rank and local rank its engine's
worker took, its executor backend, and the greedy tokens and log-probs. The test compares them with a fresh engine
built from the saved folder: behaviour, not the engine's internal weight layout (which differs by CPU).

    torchrun --nproc_per_node 2 tests/vllm_dist_worker.py OUT [lora]

`lora`: the actor trains LoRA adapters (and the KL penalty uses the actor with adapters off as the reference); every
sync pushes only the adapted decoder layers, merged, into engines that kept the base weights (`changed_only`, as
`PPOModule.generate` syncs a LoRA actor), and the saved folder holds the merged weights.
"""

import json
import os
import shutil
import sys
from pathlib import Path

import lightning as L
import torch
from transformers import AutoModelForCausalLM

from lit_codegen.args import LoraArgs, OptimArgs, PPOArgs, RewardArgs, RolloutArgs
from lit_codegen.data.datamodule import AppsDataModule
from lit_codegen.data.toy import write_toy_parquet
from lit_codegen.models.loading import resolve_model_path
from lit_codegen.module import PPOModule
from lit_codegen.rollout import SamplingParams
from lit_codegen.rollout_vllm import iter_actor_params

PROMPTS = ["Read two integers a and b and print their sum.\n", "def add(a, b):\n", "Print the string reversed."]
GREEDY = SamplingParams(greedy=True, max_new_tokens=12)


def greedy(engine, batch) -> dict:
    """The engine's greedy response ids and their log-probs on `batch`, as lists."""
    roll, logprobs = engine.generate_with_logprobs(batch["input_ids"], batch["attention_mask"], GREEDY)
    return {"response_ids": roll.response_ids.tolist(), "logprobs": logprobs.tolist()}


def save_gathered_actor(module: PPOModule, out: Path, rank: int) -> None:
    """Gather the actor's FSDP2 shards (a collective: every rank iterates) and let rank 0 save them as an HF folder."""
    weights = {name: tensor.clone() for name, tensor in iter_actor_params(module.actor)}
    if rank != 0:
        return
    model = AutoModelForCausalLM.from_config(module.actor.config)
    model.load_state_dict(weights, strict=False)  # tied embeddings appear once
    model.save_pretrained(out)
    module.tokenizer.save_pretrained(out)
    shutil.copy(Path(resolve_model_path("tiny"), "generation_config.json"), out)


def main(out: Path, lora: bool = False) -> None:
    L.seed_everything(0)
    module = PPOModule(
        model="tiny",
        lora=LoraArgs(rank=4, alpha=8.0) if lora else LoraArgs(),
        algorithm=PPOArgs(mini_batch_size=4, micro_batch_size=2, kl_coef=0.05 if lora else 0.0),
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
    module.tokenizer.padding_side = "left"
    batch = module.tokenizer(PROMPTS, padding=True, return_tensors="pt")
    before = greedy(engine, batch)  # the weights of the last rollout, one update behind the actor
    # The next rollout pushes the last update's weights (a collective over both ranks' shards), as `generate` does.
    engine.wake_up(iter_actor_params(module.actor, changed_only=lora))
    after = greedy(engine, batch)
    save_gathered_actor(module, out / "actor", trainer.global_rank)
    placement = engine.llm.collective_rpc(lambda worker: (worker.rank, worker.local_rank))[0]
    config = engine.llm.llm_engine.vllm_config.parallel_config
    result = {
        "rank": trainer.global_rank, "global_step": trainer.global_step, "engine_rank": placement[0],
        "engine_local_rank": placement[1], "backend": config.distributed_executor_backend,
        "local_rank_env_kept": os.environ.get("LOCAL_RANK") == local_rank_before, "engine_dtype": str(engine.dtype),
        "prompt_ids": batch["input_ids"].tolist(), "prompt_mask": batch["attention_mask"].tolist(),
        "before_sync": before, "after_sync": after, "sleep_level": engine.sleep_level,
    }
    (out / f"rank{trainer.global_rank}.json").write_text(json.dumps(result))
    torch.distributed.barrier()  # rank 0's folder is complete before any rank exits


if __name__ == "__main__":
    main(Path(sys.argv[1]), lora=sys.argv[2:] == ["lora"])
