"""Sharded (FSDP2) checkpoints are swapped in whole: a save that dies half-way leaves the previous checkpoint intact."""

import socket

import lightning as L
import pytest
import torch
from lightning.pytorch.strategies import model_parallel

from lit_codegen.args import OptimArgs, PPOArgs, RewardArgs, RolloutArgs
from lit_codegen.data.datamodule import AppsDataModule
from lit_codegen.module import PPOModule
from lit_codegen.parallel import AtomicModelParallelStrategy


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _snapshot(path):
    """Every file under `path` (relative name -> bytes)."""
    return {str(f.relative_to(path)): f.read_bytes() for f in sorted(path.rglob("*")) if f.is_file()}


class Killed(Exception):
    """Stands in for a job killed in the middle of writing its shards."""


def _dies_half_way(converted_state, path):
    (path / "__0_0.distcp").write_bytes(b"half of a shard")  # what a killed writer leaves behind
    raise Killed


@pytest.fixture
def trained(tmp_path, monkeypatch):
    """A 1-iteration PPO run under the strategy (one process, gloo) with its checkpoint saved to tmp_path/last.ckpt."""
    monkeypatch.setenv("MASTER_ADDR", "127.0.0.1")  # Lightning's 1-process group; keep it out of other tests
    monkeypatch.setenv("MASTER_PORT", str(_free_port()))
    L.seed_everything(0)
    module = PPOModule(model="tiny", algorithm=PPOArgs(mini_batch_size=4, micro_batch_size=4),
                       rollout=RolloutArgs(n=1, max_new_tokens=8), reward=RewardArgs(workers=1, max_tests=2),
                       optim=OptimArgs(actor_lr=1e-2, critic_lr=1e-2))
    data = AppsDataModule(template_type="base", train_batch_size=4, val_batch_size=8)
    data.connect(module.tokenizer)
    trainer = L.Trainer(accelerator="cpu", devices=1, max_steps=1, logger=False, enable_checkpointing=False,
                        enable_progress_bar=False, enable_model_summary=False, limit_val_batches=0,
                        strategy=AtomicModelParallelStrategy(data_parallel_size=1, tensor_parallel_size=1))
    try:
        trainer.fit(module, datamodule=data)
        trainer.save_checkpoint(tmp_path / "last.ckpt")
        yield trainer, tmp_path / "last.ckpt"
    finally:
        if torch.distributed.is_initialized():
            torch.distributed.destroy_process_group()


def test_a_save_killed_half_way_leaves_the_previous_checkpoint_as_it_was(trained, monkeypatch):
    trainer, ckpt = trained
    before = _snapshot(ckpt)
    assert "__0_0.distcp" in before and ".metadata" in before  # a real sharded checkpoint

    monkeypatch.setattr(model_parallel, "_distributed_checkpoint_save", _dies_half_way)
    with pytest.raises(Killed):
        trainer.save_checkpoint(ckpt)
    assert _snapshot(ckpt) == before  # untouched: the half-written shards went to last.ckpt.partial
    assert (ckpt.parent / "last.ckpt.partial").is_dir()

    monkeypatch.undo()
    trainer.save_checkpoint(ckpt)  # the next save clears the leftover and swaps a complete checkpoint in
    assert sorted(p.name for p in ckpt.parent.iterdir()) == ["last.ckpt"]
    after = _snapshot(ckpt)
    assert after.keys() == before.keys() and after["__0_0.distcp"] != b"half of a shard"
    assert torch.load(ckpt / "meta.pt", weights_only=False)["global_step"] == 1


def test_a_save_killed_between_its_two_renames_is_put_back_before_the_next_one(trained, monkeypatch):
    trainer, ckpt = trained
    before = _snapshot(ckpt)
    ckpt.rename(ckpt.parent / "last.ckpt.old")  # the moment between "old out of the way" and "new one in"

    monkeypatch.setattr(model_parallel, "_distributed_checkpoint_save", _dies_half_way)
    with pytest.raises(Killed):
        trainer.save_checkpoint(ckpt)
    assert _snapshot(ckpt) == before  # the complete checkpoint is back under its name
    assert not (ckpt.parent / "last.ckpt.old").exists()
