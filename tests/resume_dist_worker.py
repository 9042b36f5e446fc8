"""Worker for the 2-rank exact-resume test in tests/test_distributed.py, launched by `torchrun --nproc_per_node 2`.

Each rank is seeded differently (so the ranks' random streams differ, as they do whenever ranks consume randomness
unequally) and samples its rollouts at temperature 1. Three fits in one process group: 2 PPO iterations straight;
1 iteration with a checkpoint; a resume from that checkpoint for the second. Every rank writes the response ids it
sampled in each iteration of each run.
"""

import json
import os
import sys
from pathlib import Path

import lightning as L
import torch
from lightning.pytorch.callbacks import ModelCheckpoint

from lit_codegen.args import PPOArgs, RewardArgs, RolloutArgs
from lit_codegen.data.datamodule import AppsDataModule
from lit_codegen.data.toy import write_toy_parquet
from lit_codegen.module import PPOModule


def fit(data_dir: Path, root: Path, max_steps: int, ckpt_path: str | None = None) -> list[list[list[int]]]:
    """Run PPO for `max_steps` iterations (from `ckpt_path` if given); the responses this rank sampled per iteration."""
    L.seed_everything(100 + int(os.environ["RANK"]))
    module = PPOModule(model="tiny", algorithm=PPOArgs(mini_batch_size=4, micro_batch_size=4),
                       rollout=RolloutArgs(n=2, temperature=1.0, max_new_tokens=8),
                       reward=RewardArgs(workers=1, max_tests=2))
    data = AppsDataModule(data_dir=str(data_dir), template_type="base", train_batch_size=2)
    data.connect(module.tokenizer)
    sampled = []
    generate = module.generate

    def recording_generate(batch, params):
        roll = generate(batch, params)
        sampled.append(roll.response_ids.tolist())
        return roll

    module.generate = recording_generate
    trainer = L.Trainer(accelerator="cpu", devices=2, strategy="ddp_find_unused_parameters_true", max_steps=max_steps,
                        logger=False, limit_val_batches=0, enable_progress_bar=False, enable_model_summary=False,
                        default_root_dir=root,
                        callbacks=[ModelCheckpoint(dirpath=root, save_last=True, every_n_train_steps=1)])
    trainer.fit(module, datamodule=data, ckpt_path=ckpt_path)
    return sampled


def main(out: Path) -> None:
    rank = os.environ["RANK"]
    data_dir = out / f"data_rank{rank}"  # one copy per rank: no race
    write_toy_parquet(data_dir, "base")
    straight = fit(data_dir, out / "straight", max_steps=2)
    first = fit(data_dir, out / "halves", max_steps=1)
    resumed = fit(data_dir, out / "halves", max_steps=2, ckpt_path=str(out / "halves" / "last.ckpt"))
    result = {"straight": straight, "first": first, "resumed": resumed}
    (out / f"rank{rank}.json").write_text(json.dumps(result))


if __name__ == "__main__":
    torch.set_num_threads(1)
    main(Path(sys.argv[1]))
