"""Sharded (FSDP2) checkpoints are swapped in whole: a save that dies half-way leaves the previous checkpoint intact."""

import pytest
import torch
from lightning.pytorch.strategies import model_parallel

from helpers import one_process_group, tiny_sharded_ppo
from lit_codegen.parallel import AtomicModelParallelStrategy


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
    with one_process_group(monkeypatch):
        module, data, trainer = tiny_sharded_ppo(strategy_class=AtomicModelParallelStrategy)
        trainer.fit(module, datamodule=data)
        trainer.save_checkpoint(tmp_path / "last.ckpt")
        yield trainer, tmp_path / "last.ckpt"


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
