"""Export of a sharded (FSDP2 / ModelParallelStrategy) checkpoint directory to an HF model directory."""

import socket

import lightning as L
import torch
from lightning.pytorch.strategies import ModelParallelStrategy
from torch.distributed.fsdp import FSDPModule
from transformers import AutoModelForCausalLM

from lit_codegen.args import OptimArgs, PPOArgs, RewardArgs, RolloutArgs
from lit_codegen.data.datamodule import AppsDataModule
from lit_codegen.export import export_checkpoint
from lit_codegen.models.critic import CriticModel
from lit_codegen.module import PPOModule


def test_sharded_checkpoint_exports_the_trained_actor_and_critic(tmp_path, monkeypatch):
    # Lightning exports MASTER_ADDR/PORT for its 1-process group; keep them out of later tests' subprocesses.
    monkeypatch.setenv("MASTER_ADDR", "127.0.0.1")
    monkeypatch.setenv("MASTER_PORT", str(_free_port()))
    L.seed_everything(0)
    module = PPOModule(model="tiny", algorithm=PPOArgs(mini_batch_size=4, micro_batch_size=4),
                       rollout=RolloutArgs(n=1, max_new_tokens=8), reward=RewardArgs(workers=1, max_tests=2),
                       optim=OptimArgs(actor_lr=1e-2, critic_lr=1e-2))
    data = AppsDataModule(template_type="base", train_batch_size=4, val_batch_size=8)
    data.connect(module.tokenizer)
    trainer = L.Trainer(accelerator="cpu", devices=1, max_steps=1, logger=False, enable_checkpointing=False,
                        enable_progress_bar=False, enable_model_summary=False, limit_val_batches=0,
                        strategy=ModelParallelStrategy(data_parallel_size=1, tensor_parallel_size=1))
    try:
        trainer.fit(module, datamodule=data)
        trainer.save_checkpoint(tmp_path / "ckpt")
    finally:
        if torch.distributed.is_initialized():
            torch.distributed.destroy_process_group()
    # one rank: the whole model is one FSDP unit (nothing to shard layer by layer)
    assert [type(m).__name__ for m in module.actor.modules() if isinstance(m, FSDPModule)] == ["FSDPQwen2ForCausalLM"]
    assert (tmp_path / "ckpt").is_dir()  # sharded: a torch.distributed.checkpoint directory
    full = lambda sd: {k: (v.full_tensor() if hasattr(v, "full_tensor") else v) for k, v in sd.items()}  # noqa: E731
    actor, critic = full(module.actor.state_dict()), full(module.critic.state_dict())

    out = export_checkpoint(tmp_path / "ckpt", tmp_path / "hf", critic=True)
    for name, value in AutoModelForCausalLM.from_pretrained(out).state_dict().items():
        assert torch.equal(value, actor[name]), name
    for name, value in CriticModel.from_pretrained(str(out / "critic")).state_dict().items():
        assert torch.equal(value, critic[name]), name


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_export_of_a_missing_critic_fails_before_writing_anything(tmp_path):
    from lit_codegen.export import main as export_main
    from lit_codegen.models.loading import resolve_model_path

    ckpt = tmp_path / "grpo.ckpt"
    torch.save({"ppo_state": {"model_path": str(resolve_model_path("tiny"))}, "hyper_parameters": {},
                "state_dict": {"actor.lm_head.weight": torch.zeros(1)}}, ckpt)
    assert export_main(["--ckpt_path", str(ckpt), "--out", str(tmp_path / "out"), "--critic"]) == 2
    assert not (tmp_path / "out").exists()


def test_sharded_checkpoint_with_a_reference_policy_resumes(tmp_path, monkeypatch):
    """ModelParallelStrategy loads every key of the module, the frozen reference's included, when it resumes."""
    monkeypatch.setenv("MASTER_ADDR", "127.0.0.1")

    def run(max_steps, ckpt_path=None):
        monkeypatch.setenv("MASTER_PORT", str(_free_port()))
        L.seed_everything(0)
        module = PPOModule(model="tiny", algorithm=PPOArgs(mini_batch_size=4, micro_batch_size=4, kl_coef=0.05),
                           rollout=RolloutArgs(n=1, max_new_tokens=8), reward=RewardArgs(workers=1, max_tests=2),
                           optim=OptimArgs(actor_lr=1e-2, critic_lr=1e-2))
        data = AppsDataModule(template_type="base", train_batch_size=4, val_batch_size=8)
        data.connect(module.tokenizer)
        trainer = L.Trainer(accelerator="cpu", devices=1, max_steps=max_steps, logger=False,
                            enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
                            limit_val_batches=0, strategy=ModelParallelStrategy(data_parallel_size=1,
                                                                                tensor_parallel_size=1))
        try:
            trainer.fit(module, datamodule=data, ckpt_path=ckpt_path)
            if ckpt_path is None:
                trainer.save_checkpoint(tmp_path / "ckpt")
        finally:
            if torch.distributed.is_initialized():
                torch.distributed.destroy_process_group()
        return module

    first = run(1)
    ref_before = {k: v.full_tensor().clone() for k, v in first.ref.state_dict().items()}
    resumed = run(2, ckpt_path=tmp_path / "ckpt")
    assert resumed.ppo_iteration == 2
    for name, value in resumed.ref.state_dict().items():  # still the starting weights
        assert torch.equal(value.full_tensor(), ref_before[name]), name


def _hand_made_checkpoint(path, model_path: str, configured: str | None = "tiny"):
    """A single-file PPO checkpoint of the tiny actor with every weight moved, as the module writes it."""
    from lit_codegen.models.loading import load_causal_lm

    actor = {f"actor.{k}": v + 0.5 for k, v in load_causal_lm("tiny").state_dict().items()}
    hp = {"model": configured, "dtype": "float32"} if configured else {}
    torch.save({"ppo_state": {"model_path": model_path}, "hyper_parameters": hp, "state_dict": actor}, path)
    return actor


def test_export_rebuilds_from_the_configured_model_when_the_runs_base_folder_is_gone(tmp_path):
    """The warm start's cache folder may be cleaned, or the checkpoint moved to another machine."""
    actor = _hand_made_checkpoint(tmp_path / "c.ckpt", str(tmp_path / "cache" / "warm-start-gone"))
    out = export_checkpoint(tmp_path / "c.ckpt", tmp_path / "hf")
    for name, value in AutoModelForCausalLM.from_pretrained(out).state_dict().items():
        assert torch.equal(value, actor[f"actor.{name}"]), name


def test_export_errors_are_one_line_and_write_nothing(tmp_path, capsys):
    from lit_codegen.export import main as export_main

    _hand_made_checkpoint(tmp_path / "c.ckpt", str(tmp_path / "gone"), configured=None)
    (tmp_path / "checkpoints").mkdir()
    (tmp_path / "file").write_text("")
    capsys.readouterr()  # the load report of building the checkpoint
    cases = [
        (["--ckpt_path", str(tmp_path / "checkpoints")], "not a sharded checkpoint (no .metadata in it)"),
        (["--ckpt_path", str(tmp_path / "c.ckpt"), "--out", str(tmp_path / "file")], "is a file; give a folder"),
        (["--ckpt_path", str(tmp_path / "c.ckpt")], "not an HF model directory"),  # no configured model to fall to
    ]
    for args, message in cases:
        argv = args if "--out" in args else [*args, "--out", str(tmp_path / "out")]
        assert export_main(argv) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and message in err[0], err
        assert not (tmp_path / "out").exists()
