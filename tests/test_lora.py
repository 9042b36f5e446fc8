"""LoRA (`--model.lora.rank > 0`): only adapters and the value head train, the reference is the base with adapters off.

Behaviour on the tiny model, CPU: after PPO iterations every adapter and the value head moved while every base weight
(actor and critic backbone) is bit-identical to the starting one and the reference's log-probs are those of a freshly
loaded base model; the checkpoint holds adapters and optimizer states (no base weights) and a resume continues
exactly; export writes merged weights (peft's `merge_and_unload`) or the adapters; the vLLM weight sync yields the
merged weights of the adapted layers only; two FSDP2 ranks (tests/lora_dist_worker.py) and compiled layers do the
same; the 1 x 80 GB recipe's memory plan and a CPU iteration of it. Real vLLM engines with LoRA: the `vllm`-marked
tests in tests/test_rollout_vllm.py (scripts/ci_vllm.sh).
"""

from pathlib import Path

import lightning as L
import pytest
import torch
import yaml
from transformers import AutoModelForCausalLM

from helpers import one_process_group, run_two_ranks
from lit_codegen.args import LoraArgs, OptimArgs, PPOArgs, RewardArgs, RolloutArgs, check_lora_args
from lit_codegen.data.datamodule import AppsDataModule
from lit_codegen.export import export_checkpoint
from lit_codegen.models.loading import load_causal_lm
from lit_codegen.models.logprob_head import install_logprob_head, response_logprobs
from lit_codegen.models.lora import AdaptersOff, add_lora, is_adapter_param, lora_config
from lit_codegen.module import PPOModule
from lit_codegen.rollout_vllm import iter_actor_params

pytest.importorskip("peft")

LORA = LoraArgs(rank=4, alpha=8.0, critic=True)


def lora_ppo(max_steps: int, strategy="auto", **module_kwargs):
    """The tiny PPO module with LoRA on actor and critic, a KL penalty (so the reference is used) and checkpointing."""
    L.seed_everything(0)
    module = PPOModule(model="tiny", gradient_checkpointing=True, lora=LORA,
                       algorithm=PPOArgs(mini_batch_size=4, micro_batch_size=2, kl_coef=0.05, kl_loss_coef=0.1),
                       rollout=RolloutArgs(n=1, max_new_tokens=8), reward=RewardArgs(workers=1, max_tests=2),
                       optim=OptimArgs(actor_lr=1e-2, critic_lr=1e-2), **module_kwargs)
    data = AppsDataModule(template_type="base", train_batch_size=4, val_batch_size=8)
    data.connect(module.tokenizer)
    trainer = L.Trainer(accelerator="cpu", devices=1, max_steps=max_steps, logger=False, enable_checkpointing=False,
                        enable_progress_bar=False, enable_model_summary=False, limit_val_batches=0,
                        strategy=strategy)
    return module, data, trainer


def snapshot(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def sequences(n: int = 3, length: int = 20, prompt: int = 8):
    g = torch.Generator().manual_seed(1)
    seq = torch.randint(0, 200, (n, length), generator=g)
    attn = torch.ones_like(seq)
    attn[0, :3] = 0  # a left-padded row
    return seq, attn, (attn.cumsum(-1) - 1).clamp(min=0), prompt


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """Two PPO iterations with LoRA (the second moves lora_A too: its first gradient is 0, as lora_B starts at 0)."""
    module, data, trainer = lora_ppo(max_steps=2)
    module.configure_model()  # built here to snapshot the starting weights; fit keeps them
    before = {"actor": snapshot(module.actor), "critic": snapshot(module.critic)}
    trainer.fit(module, datamodule=data)
    ckpt = tmp_path_factory.mktemp("lora") / "lora.ckpt"
    trainer.save_checkpoint(ckpt)
    return module, before, ckpt


def test_only_adapters_and_value_head_train_base_and_reference_stay_bit_identical(trained):
    module, before, _ = trained
    assert isinstance(module.ref, AdaptersOff) and module.ref.model is module.actor  # no second copy of the weights
    for role in ("actor", "critic"):
        after = snapshot(getattr(module, role))
        trainable = {n for n, p in getattr(module, role).named_parameters() if p.requires_grad}
        assert trainable == {n for n in after if is_adapter_param(n) or n.startswith("value_head.")}
        for name, value in after.items():
            if name in trainable:
                assert not torch.equal(value, before[role][name]), f"{role}.{name} did not train"
            else:
                assert torch.equal(value, before[role][name]), f"{role}.{name} (frozen) changed"
    optimizers = [opt.optimizer for opt in module.optimizers()]
    assert [sum(p.numel() for g in opt.param_groups for p in g["params"]) for opt in optimizers] == [
        sum(p.numel() for p in m.parameters() if p.requires_grad) for m in (module.actor, module.critic)
    ]
    # the reference = the untouched base model, bit for bit; the trained actor differs from it
    base = load_causal_lm("tiny")
    install_logprob_head(base)
    seq, attn, pos, p_len = sequences()
    with torch.no_grad():
        ref, _ = response_logprobs(module.ref, seq, attn, pos, p_len)
        expected, _ = response_logprobs(base, seq, attn, pos, p_len)
        actor, _ = response_logprobs(module.actor, seq, attn, pos, p_len)
    assert torch.equal(ref, expected)
    assert (actor - ref).abs().max() > 1e-3
    assert all(p.requires_grad for n, p in module.actor.named_parameters() if is_adapter_param(n))  # switched back on


def test_checkpoint_holds_adapters_and_optimizer_states_and_resumes_exactly(trained, tmp_path):
    module, _, ckpt_path = trained
    ckpt = torch.load(ckpt_path, map_location="cpu", weights_only=False)
    keys = set(ckpt["state_dict"])
    assert keys == {f"actor.{n}" for n, p in module.actor.named_parameters() if p.requires_grad} | {
        f"critic.{n}" for n, p in module.critic.named_parameters() if p.requires_grad}
    assert [len(o["state"]) for o in ckpt["optimizer_states"]] == [len(o.optimizer.param_groups[0]["params"])
                                                                   for o in module.optimizers()]
    # 2 iterations straight (the fixture) == 1 iteration, checkpoint, resume for 1 more
    first, data, trainer = lora_ppo(max_steps=1)
    trainer.fit(first, datamodule=data)
    trainer.save_checkpoint(tmp_path / "one.ckpt")
    resumed, data, trainer = lora_ppo(max_steps=2)
    trainer.fit(resumed, datamodule=data, ckpt_path=tmp_path / "one.ckpt")
    assert resumed.ppo_iteration == 2
    for role in ("actor", "critic"):
        straight = getattr(module, role).state_dict()
        for name, value in getattr(resumed, role).state_dict().items():
            torch.testing.assert_close(value, straight[name], rtol=1e-5, atol=1e-7, msg=f"{role}.{name}")


def test_export_merges_by_default_and_writes_adapters_on_request(trained, tmp_path):
    from peft import PeftModel

    module, _, ckpt = trained
    seq, attn, pos, _ = sequences()
    with torch.no_grad():
        expected = module.actor(input_ids=seq, attention_mask=attn, position_ids=pos).logits
    merged_dir = export_checkpoint(ckpt, tmp_path / "merged", critic=True)
    merged = AutoModelForCausalLM.from_pretrained(merged_dir)
    assert not any("lora" in n for n in merged.state_dict())
    synced = dict(iter_actor_params(module.actor))  # what the vLLM sync pushes: the same merged weights, bit for bit
    assert set(synced) == set(merged.state_dict())
    for name, value in merged.state_dict().items():
        assert torch.equal(value, synced[name]), name
    with torch.no_grad():  # merged W + BA vs W x + B(A x): the same function up to float round-off
        torch.testing.assert_close(merged(input_ids=seq, attention_mask=attn, position_ids=pos).logits, expected,
                                   rtol=0, atol=1e-4)
    from lit_codegen.models.critic import CriticModel

    critic = CriticModel.from_pretrained(str(merged_dir / "critic"))
    with torch.no_grad():
        torch.testing.assert_close(critic(seq, attn, pos), module.critic(seq, attn, pos), rtol=0, atol=1e-4)

    adapter_dir = export_checkpoint(ckpt, tmp_path / "adapters", adapters=True)
    assert (adapter_dir / "adapter_config.json").is_file() and (adapter_dir / "adapter_model.safetensors").is_file()
    peft_model = PeftModel.from_pretrained(load_causal_lm(str(module.model_path)), adapter_dir)
    with torch.no_grad():  # base + adapters through peft: the trainer's computation exactly
        assert torch.equal(peft_model(input_ids=seq, attention_mask=attn, position_ids=pos).logits, expected)


def test_sync_of_changed_layers_is_peft_merge_of_the_decoder_layers():
    """`iter_actor_params(lora_actor, changed_only=True)`: the adapted decoder layers merged as peft merges them,
    under the checkpoint's names; nothing LoRA leaves alone (embeddings, final norm)."""
    from peft import get_peft_model

    torch.manual_seed(0)
    actor = add_lora(load_causal_lm("tiny"), LoraArgs(rank=4, target_modules=["q_proj", "v_proj"]))
    with torch.no_grad():
        for name, p in actor.named_parameters():
            if is_adapter_param(name):
                p.normal_(std=0.1)
    reference = load_causal_lm("tiny")
    peft_model = get_peft_model(reference, lora_config(LoraArgs(rank=4, target_modules=["q_proj", "v_proj"])))
    reference.load_state_dict(actor.state_dict())
    merged = dict(peft_model.merge_and_unload().named_parameters())
    changed = dict(iter_actor_params(actor, changed_only=True))
    assert set(changed) == {n for n in merged if n.startswith("model.layers.")}  # whole layers: k_proj too
    for name, value in changed.items():
        assert torch.equal(value, merged[name]), name
    assert set(dict(iter_actor_params(actor))) == set(merged)


def test_lora_settings_are_checked():
    check_lora_args(LoraArgs())
    for bad, match in ((LoraArgs(rank=-1), "rank"), (LoraArgs(critic=True), "critic.*rank"),
                       (LoraArgs(rank=4, alpha=0), "alpha"), (LoraArgs(rank=4, dropout=1.0), "dropout"),
                       (LoraArgs(rank=4, target_modules=[]), "target_modules")):
        with pytest.raises(ValueError, match=match):
            check_lora_args(bad)
    with pytest.raises(ValueError, match=r"target_modules \['nope'\]"):
        add_lora(load_causal_lm("tiny"), LoraArgs(rank=4, target_modules=["nope"]))


def test_fsdp2_two_ranks_train_adapters_on_a_sharded_frozen_base_and_export_what_the_sync_pushes(tmp_path):
    """2 ranks (gloo), FSDP2, bf16 base + fp32 adapters, bf16-mixed, checkpointing, KL penalty (reference = the
    sharded actor, adapters off): adapters and value head train identically on both ranks, the sharded base stays
    bit-identical, and the sharded checkpoint exports (merged) the weights the vLLM sync pushes."""
    ranks = run_two_ranks("lora_dist_worker.py", tmp_path, str(tmp_path))
    assert ranks[0]["after"] == ranks[1]["after"] and ranks[0]["synced"] == ranks[1]["synced"]
    for rank in ranks:
        assert rank["sharded"] and rank["global_step"] == 2
        for role in ("actor", "critic"):
            trainable = set(rank["trainable"][role])
            assert trainable and all(is_adapter_param(n) or n.startswith("value_head.") for n in trainable)
            for name, before in rank["before"][role].items():
                if name in trainable:
                    assert rank["after"][role][name] != before, f"{role}.{name} did not train"
                else:
                    assert rank["after"][role][name] == before, f"{role}.{name} (frozen) changed"
    exported = AutoModelForCausalLM.from_pretrained(export_checkpoint(tmp_path / "lora.ckpt", tmp_path / "hf"))
    assert exported.dtype == torch.bfloat16
    weights = exported.state_dict()
    assert set(ranks[0]["synced"]) == {n for n in weights if n.startswith("model.layers.")}
    for name, checksum in ranks[0]["synced"].items():
        assert float(weights[name].double().sum()) == checksum, name


def test_sharded_lora_checkpoint_resumes_exactly(trained, tmp_path, monkeypatch):
    """FSDP2 (1 rank): 1 iteration, sharded checkpoint, resume for 1 more == the 2 straight iterations."""
    from lightning.pytorch.strategies import ModelParallelStrategy

    straight, _, _ = trained

    def run(max_steps, ckpt_path=None):
        with one_process_group(monkeypatch):
            module, data, trainer = lora_ppo(max_steps, ModelParallelStrategy(data_parallel_size=1,
                                                                              tensor_parallel_size=1))
            trainer.fit(module, datamodule=data, ckpt_path=ckpt_path)
            if ckpt_path is None:
                trainer.save_checkpoint(tmp_path / "ckpt")
        return module

    run(1)
    assert (tmp_path / "ckpt").is_dir()
    resumed = run(2, ckpt_path=tmp_path / "ckpt")
    assert resumed.ppo_iteration == 2
    for role in ("actor", "critic"):
        expected = getattr(straight, role).state_dict()
        for name, value in getattr(resumed, role).state_dict().items():
            torch.testing.assert_close(value.full_tensor(), expected[name], rtol=1e-5, atol=1e-7,
                                       msg=f"{role}.{name}")


def test_compiled_lora_trains_like_eager():
    """`compile=True` with LoRA (dynamo traces peft's layers, adapters on and off): the losses of eager."""
    metrics = {}
    for compiled in (False, True):
        module, data, trainer = lora_ppo(max_steps=2, compile=compiled)
        trainer.fit(module, datamodule=data)
        metrics[compiled] = {k: float(trainer.callback_metrics[k]) for k in
                             ("critic/score/mean", "actor/pg_loss", "critic/vf_loss", "actor/kl_loss",
                              "actor/reward_kl_penalty")}
    for key, eager in metrics[False].items():
        assert metrics[True][key] == pytest.approx(eager, rel=1e-3, abs=1e-5), key


# ------------------------------------------------------------------------------------------- the 1 x 80 GB recipe
LORA_RECIPE = Path(__file__).resolve().parents[1] / "configs" / "ppo_qwen2.5_3b_apps_lora.yaml"


def _memory_plan():
    import sys

    sys.path.insert(0, str(LORA_RECIPE.parents[1] / "scripts"))
    import memory_plan

    return memory_plan


def test_memory_plan_counts_the_adapters_peft_builds():
    """`Arch.lora_params` = the parameters peft adds to a real Qwen2 layout (3B's shapes, 2 layers)."""
    from transformers import Qwen2Config, Qwen2ForCausalLM

    memory_plan = _memory_plan()
    arch = memory_plan.Arch(**{**memory_plan.QWEN25_3B.__dict__, "layers": 2, "vocab": 64})
    config = Qwen2Config(hidden_size=arch.hidden, num_hidden_layers=arch.layers, num_attention_heads=arch.heads,
                         num_key_value_heads=arch.kv_heads, intermediate_size=arch.intermediate,
                         vocab_size=arch.vocab, tie_word_embeddings=True)
    with torch.device("meta"):
        model = Qwen2ForCausalLM(config)
    for targets in (LoraArgs().target_modules, ["q_proj", "v_proj"]):
        with torch.device("meta"):
            adapted = add_lora(Qwen2ForCausalLM(config), LoraArgs(rank=32, target_modules=targets))
        added = sum(p.numel() for p in adapted.parameters()) - sum(p.numel() for p in model.parameters())
        assert memory_plan.Arch.lora_params(arch, 32, tuple(targets)) == added


def test_lora_recipe_fits_one_80_gb_gpu_and_its_reference_costs_nothing(capsys):
    memory_plan = _memory_plan()
    assert memory_plan.main(["--config", str(LORA_RECIPE)]) == 0
    printed = capsys.readouterr().out
    assert "LoRA rank 32 on 7 projections per layer of the actor and the critic" in printed
    assert "Peak:" in printed and "DOES NOT FIT" not in printed
    config = yaml.safe_load(LORA_RECIPE.read_text())
    recipe = memory_plan.Recipe.from_config(config)
    assert (recipe.world_size, recipe.shards, recipe.lora_rank, recipe.lora_critic) == (1, 1, 32, True)
    assert recipe.uses_ref and recipe.uses_critic and recipe.rollout_sequences == 64  # the reference recipe's 64
    rows, totals = memory_plan.plan(recipe, memory_plan.QWEN25_3B)
    gib = {r.name: r.gib for r in rows}
    assert gib["Reference = actor with adapters off"] == 0
    assert "Reference weights (frozen)" not in gib
    assert gib["Actor trainable weights (fp32)"] == pytest.approx(59.9e6 * 4 / 2**30, rel=1e-2)  # rank 32, 3B
    assert gib["Actor AdamW moments"] == pytest.approx(2 * gib["Actor trainable weights (fp32)"])
    assert max(totals["generation"], totals["experience"], totals["training"]) < 0.9 * memory_plan.GPU_GIB
    # the same recipe without LoRA: the reference comes back and the state of full fine-tuning does not fit
    full = memory_plan.Recipe.from_config({**config, "model": {**config["model"], "init_args": {
        **config["model"]["init_args"], "lora": {"rank": 0}}}})
    rows_full, totals_full = memory_plan.plan(full, memory_plan.QWEN25_3B)
    assert {r.name: r.gib for r in rows_full}["Reference weights (frozen)"] == pytest.approx(
        3.0859e9 * 2 / 2**30, rel=1e-3)
    assert totals_full["training"] > totals["training"] + 30


def test_lora_recipe_runs_one_iteration_with_the_tiny_model(tmp_path):
    """The recipe as written (bf16 base, LoRA on actor and critic) with the tiny model on CPU, HF rollouts."""
    from helpers import run_cli

    root = tmp_path / "run"
    run_cli("fit", "--config", str(LORA_RECIPE), "--trainer.default_root_dir", str(root), "--trainer.accelerator",
            "cpu", "--trainer.precision", "32-true", "--trainer.logger", "false", "--trainer.max_steps", "1",
            "--validation.before_training", "false", "--validation.at_end", "false",
            "--model.init_args.model", "tiny", "--model.init_args.compile", "false",
            "--model.init_args.rollout.backend", "hf", "--model.init_args.rollout.max_new_tokens", "8",
            "--model.init_args.algorithm.mini_batch_size", "2", "--model.init_args.algorithm.micro_batch_size", "2",
            "--model.init_args.reward.workers", "1", "--data.init_args.data_dir", "null",
            "--data.init_args.train_batch_size", "2", "--data.init_args.num_workers", "0", cwd=tmp_path)
    ckpt = torch.load(root / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=False)
    assert ckpt["ppo_state"]["ppo_iteration"] == 1
    assert ckpt["hyper_parameters"]["lora"]["rank"] == 32 and ckpt["hyper_parameters"]["dtype"] == "bfloat16"
    keys = set(ckpt["state_dict"])
    assert keys and all(is_adapter_param(k) or k.startswith("critic.value_head.") for k in keys)
    # the CLI saved the settings as a dict: export still finds the adapters and merges them
    out = export_checkpoint(root / "checkpoints" / "last.ckpt", tmp_path / "hf", adapters=True)
    assert (out / "adapter_model.safetensors").is_file()


def test_readme_shows_the_lora_recipes_memory_plan_as_the_script_prints_it(capsys):
    assert _memory_plan().main(["--config", str(LORA_RECIPE)]) == 0
    assert capsys.readouterr().out.strip() in (LORA_RECIPE.parents[1] / "docs" / "scaling.md").read_text()
