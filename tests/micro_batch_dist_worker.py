"""Worker for tests/test_micro_batching.py, launched by `torchrun --nproc_per_node 2` (CPU, gloo, FSDP2).

Rank 0 groups its rows into one token-budget micro-batch, rank 1 into one per row; every forward/backward of a
sharded model is a collective, so rank 0 must run padding micro-batches for the iteration to finish. Writes each
rank's micro-batch counts (real, total) and the actor's parameter sum.
"""

import json
import sys
from pathlib import Path

import lightning as L
import torch
from lightning.pytorch.strategies import ModelParallelStrategy

from lit_codegen import batching
from lit_codegen.args import OptimArgs, PPOArgs, RewardArgs, RolloutArgs
from lit_codegen.data.datamodule import AppsDataModule
from lit_codegen.module import PPOModule


def main(out: Path) -> None:
    L.seed_everything(0)
    module = PPOModule(model="tiny", algorithm=PPOArgs(mini_batch_size=4, micro_batch_size=4, kl_coef=0.0,
                                                       max_tokens_per_micro_batch=1, pack_sequences=True),
                       rollout=RolloutArgs(n=1, max_new_tokens=8), reward=RewardArgs(workers=1, max_tests=2),
                       optim=OptimArgs(actor_lr=1e-2, critic_lr=1e-2))
    data = AppsDataModule(template_type="base", train_batch_size=4, val_batch_size=8)
    data.connect(module.tokenizer)
    trainer = L.Trainer(accelerator="cpu", devices=2, max_steps=1, logger=False, enable_checkpointing=False,
                        enable_progress_bar=False, enable_model_summary=False, limit_val_batches=0,
                        strategy=ModelParallelStrategy(data_parallel_size=2, tensor_parallel_size=1))
    rank = trainer.global_rank
    if rank == 0:  # all rows in one micro-batch, whatever the budget
        batching.token_budget_groups = lambda lengths, max_tokens, packed: [list(range(len(lengths)))]
    counts, micro_batches = [], module._micro_batches

    def counted(rows, attn):
        groups = micro_batches(rows, attn)
        counts.append([sum(real for _, real in groups), len(groups)])
        return groups

    module._micro_batches = counted
    trainer.fit(module, datamodule=data)
    actor_sum = sum(float(p.full_tensor().double().sum()) for p in module.actor.parameters())
    (out / f"rank{rank}.json").write_text(json.dumps({"counts": counts, "actor_sum": actor_sum}))


if __name__ == "__main__":
    torch.set_num_threads(1)
    main(Path(sys.argv[1]))
