"""Worker for tests/test_distributed.py, launched by `torchrun --nproc_per_node 2` (CPU, gloo).

Trains the tiny PPO model for one epoch of the toy problems with the strategy named on the command line and writes,
from every rank, the prompts it trained on, the rewards it logged, its adaptive KL coefficient and the moments of its
whitened advantages, so the test can check the sharding and the cross-rank aggregation. With FSDP2 it also saves a
sharded checkpoint (twice) through `AtomicModelParallelStrategy`.
"""

import json
import os
import sys
from pathlib import Path

import lightning as L
import pyarrow.parquet as pq
import torch

import lit_codegen.module as module_lib
from lit_codegen import ppo
from lit_codegen.args import OptimArgs, PPOArgs, RewardArgs, RolloutArgs
from lit_codegen.callbacks import PassRateValidation
from lit_codegen.data.datamodule import AppsDataModule
from lit_codegen.data.toy import write_toy_parquet
from lit_codegen.module import PPOModule


class Record(L.Callback):
    """Keep the problem ids of every training batch and the logged reward of every iteration."""

    def __init__(self):
        self.problem_ids, self.rewards, self.local_scores, self.val = [], [], [], {}

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        if not self.val:  # PassRateValidation ran before training: its values are in callback_metrics
            self.val = {k: float(v) for k, v in trainer.callback_metrics.items() if k.startswith("val/")}
        self.problem_ids += list(batch["problem_id"])
        self.rewards.append(float(trainer.callback_metrics["critic/score/mean"]))
        self.local_scores.append(pl_module.last_scores.tolist())


def main(strategy_name: str, out: Path) -> None:
    L.seed_everything(0)
    module = PPOModule(
        model="tiny",
        algorithm=PPOArgs(mini_batch_size=4, micro_batch_size=2, kl_coef=0.05, kl_target=0.01, kl_horizon=100),
        rollout=RolloutArgs(n=1, max_new_tokens=8),
        reward=RewardArgs(workers=1, max_tests=2),
        optim=OptimArgs(actor_lr=1e-3, critic_lr=1e-3),
    )
    data_dir = out / f"data_rank{os.environ.get('RANK', '0')}"  # one copy per rank: no race
    write_toy_parquet(data_dir, "base")
    test = pq.read_table(data_dir / "test.parquet")
    pq.write_table(test.slice(0, test.num_rows - 1), data_dir / "test.parquet")  # 27: an odd count over 2 ranks
    data = AppsDataModule(data_dir=str(data_dir), template_type="base", train_batch_size=4,
                          val_batch_size=12)  # validation: 3 batches over 2 ranks
    data.connect(module.tokenizer)
    if strategy_name == "fsdp":
        from lit_codegen.parallel import AtomicModelParallelStrategy

        strategy = AtomicModelParallelStrategy(data_parallel_size=2, tensor_parallel_size=1)
    else:
        strategy = "ddp_find_unused_parameters_true"
    record = Record()
    advantage_sums = []  # per iteration: [sum, sum of squares, count] of this rank's whitened advantages
    compute_advantages = module_lib.estimate_advantages

    def capture_advantages(*args):
        advantages, returns = compute_advantages(*args)
        advantage_sums.append(ppo.masked_sums(advantages, args[3]).tolist())
        return advantages, returns

    module_lib.estimate_advantages = capture_advantages  # this worker process's PPOModule calls it by that name
    validation = PassRateValidation(every_n_iterations=0, before_training=True, at_end=False)
    trainer = L.Trainer(accelerator="cpu", devices=2, strategy=strategy, max_epochs=1, logger=False,
                        enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
                        limit_val_batches=0, callbacks=[validation, record])
    trainer.fit(module, datamodule=data)
    trainer.limit_val_batches = 1.0  # Lightning's validation loop (`lit-codegen validate`) after training
    validated = {k: float(v) for k, v in trainer.validate(module, datamodule=data, verbose=False)[0].items()}
    actor_sum = sum(float(p.full_tensor().double().sum()) if hasattr(p, "full_tensor") else float(p.double().sum())
                    for p in module.actor.parameters())
    fsdp_units = sum(_is_fsdp_unit(m) for m in module.actor.modules())
    if strategy_name == "fsdp":  # twice: the second save replaces the first, both ranks' shards swapped in together
        for _ in range(2):
            trainer.save_checkpoint(out / "last.ckpt")
    result = {"rank": trainer.global_rank, "fsdp_units": fsdp_units, "problem_ids": record.problem_ids,
              "rewards": record.rewards, "local_scores": record.local_scores, "iterations": module.ppo_iteration,
              "global_step": trainer.global_step, "actor_sum": actor_sum, "val": record.val,
              "kl_coef": module.kl_ctl.value, "advantage_sums": advantage_sums, "validated": validated}
    (out / f"rank{trainer.global_rank}.json").write_text(json.dumps(result))


def _is_fsdp_unit(module: torch.nn.Module) -> bool:
    from torch.distributed.fsdp import FSDPModule

    return isinstance(module, FSDPModule)


if __name__ == "__main__":
    torch.set_num_threads(1)
    main(sys.argv[1], Path(sys.argv[2]))
