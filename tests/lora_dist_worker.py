"""Worker for tests/test_lora.py, launched by `torchrun --nproc_per_node 2` (CPU, gloo): LoRA under FSDP2.

Two PPO iterations of the tiny model with LoRA on actor and critic, bf16 base weights, fp32 adapters, bf16-mixed,
gradient checkpointing and a KL penalty (the reference = the sharded actor with its adapters off), sharded over two
ranks by `AtomicModelParallelStrategy`; then a sharded checkpoint. Every rank writes the gathered weights' checksums
before and after training and the names of the merged weights the vLLM sync would push, for the test to compare.
"""

import json
import sys
from pathlib import Path

import lightning as L
import torch

from lit_codegen.args import LoraArgs, OptimArgs, PPOArgs, RewardArgs, RolloutArgs
from lit_codegen.data.datamodule import AppsDataModule
from lit_codegen.module import PPOModule
from lit_codegen.parallel import AtomicModelParallelStrategy
from lit_codegen.rollout_vllm import iter_actor_params


def checksums(model: torch.nn.Module) -> dict[str, float]:
    """Sum of every gathered parameter in float64 (a collective under FSDP2)."""
    out = {}
    for name, p in model.named_parameters():
        tensor = p.detach().full_tensor() if hasattr(p, "full_tensor") else p.detach()
        out[name] = float(tensor.double().sum())
    return out


class Snapshot(L.Callback):
    """The sharded models' checksums right before the first iteration (after configure_model and sharding)."""

    def __init__(self):
        self.before = None

    def on_train_start(self, trainer, pl_module):
        self.before = {role: checksums(getattr(pl_module, role)) for role in ("actor", "critic")}


def main(out: Path) -> None:
    L.seed_everything(0)
    module = PPOModule(model="tiny", dtype="bfloat16", gradient_checkpointing=True,
                       lora=LoraArgs(rank=4, alpha=8.0, critic=True),
                       algorithm=PPOArgs(mini_batch_size=4, micro_batch_size=2, kl_coef=0.05),
                       rollout=RolloutArgs(n=1, max_new_tokens=8), reward=RewardArgs(workers=1, max_tests=2),
                       optim=OptimArgs(actor_lr=1e-2, critic_lr=1e-2))
    data = AppsDataModule(template_type="base", train_batch_size=4, val_batch_size=8)
    data.connect(module.tokenizer)
    snapshot = Snapshot()
    trainer = L.Trainer(accelerator="cpu", devices=2, max_steps=2, precision="bf16-mixed", logger=False,
                        enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
                        limit_val_batches=0, callbacks=[snapshot],
                        strategy=AtomicModelParallelStrategy(data_parallel_size=2, tensor_parallel_size=1))
    trainer.fit(module, datamodule=data)
    after = {role: checksums(getattr(module, role)) for role in ("actor", "critic")}
    synced = {name: float(t.double().sum()) for name, t in iter_actor_params(module.actor, torch.bfloat16, True)}
    trainer.save_checkpoint(out / "lora.ckpt")
    result = {"before": snapshot.before, "after": after, "synced": synced, "global_step": trainer.global_step,
              "trainable": {role: sorted(n for n, p in getattr(module, role).named_parameters() if p.requires_grad)
                            for role in ("actor", "critic")},
              "sharded": all(type(p).__name__ == "DTensor" for p in module.actor.parameters())}
    (out / f"rank{trainer.global_rank}.json").write_text(json.dumps(result))


if __name__ == "__main__":
    torch.set_num_threads(1)
    main(Path(sys.argv[1]))
