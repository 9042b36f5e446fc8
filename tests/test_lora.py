"""LoRA (`--model.lora.rank > 0`): only adapters and the value head train, the reference is the base with adapters off.

Behaviour on the tiny model, CPU: after PPO iterations every adapter and the value head moved while every base weight
(actor and critic backbone) is bit-identical to the checkpoint's and the reference's log-probs are those of a freshly
loaded base model; the checkpoint holds adapters and optimizer states (no base weights) and a resume continues
exactly; export writes merged weights (peft's `merge_and_unload`) or the adapters; the vLLM weight sync yields the
merged weights of the adapted layers only. FSDP2 and vLLM engines are covered in tests/test_distributed.py and
tests/test_rollout_vllm.py.
"""

import lightning as L
import pytest
import torch
from transformers import AutoModelForCausalLM

from helpers import one_process_group
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
    import json
    import subprocess
    import sys
    from pathlib import Path

    worker = Path(__file__).with_name("lora_dist_worker.py")
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", str(worker),
           str(tmp_path)]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-5000:]
    ranks = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in (0, 1)]
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
