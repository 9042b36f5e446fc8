"""Export of a sharded (FSDP2 / ModelParallelStrategy) checkpoint directory to an HF model directory."""

import torch
from torch.distributed.fsdp import FSDPModule
from transformers import AutoModelForCausalLM

from helpers import one_process_group, tiny_sharded_ppo
from lit_codegen.export import export_checkpoint
from lit_codegen.models.critic import CriticModel


def test_sharded_checkpoint_exports_the_trained_actor_and_critic(tmp_path, monkeypatch):
    with one_process_group(monkeypatch):
        module, data, trainer = tiny_sharded_ppo()
        trainer.fit(module, datamodule=data)
        trainer.save_checkpoint(tmp_path / "ckpt")
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
    def run(max_steps, ckpt_path=None):
        with one_process_group(monkeypatch):
            module, data, trainer = tiny_sharded_ppo(max_steps, kl_coef=0.05)
            trainer.fit(module, datamodule=data, ckpt_path=ckpt_path)
            if ckpt_path is None:
                trainer.save_checkpoint(tmp_path / "ckpt")
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
