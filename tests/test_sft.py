"""SFT: the loss covers answer tokens only, training on the toy problems lowers it, the export reloads and generates."""

import json
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from lightning.pytorch import Callback, Trainer
from transformers import AutoModelForCausalLM, AutoTokenizer

from lit_codegen.data.datamodule import SFTDataModule
from lit_codegen.models.tiny import build_tiny_model
from lit_codegen.rollout import HFRollout, SamplingParams
from lit_codegen.sft import SFTModule, build_optimizer, sft_warm_start


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory):
    return str(build_tiny_model(tmp_path_factory.mktemp("tiny")))


class _RecordLoss(Callback):
    def __init__(self):
        self.losses = []

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        self.losses.append(outputs["loss"].item())


def test_loss_is_cross_entropy_of_answer_tokens_only(tiny_dir):
    module = SFTModule(tiny_dir)
    module.configure_model()
    input_ids = torch.tensor([[5, 6, 7, 8, 9, 0], [10, 11, 12, 13, 14, 15]])
    labels = torch.tensor([[-100, -100, 7, 8, 9, -100], [-100, 11, 12, 13, 14, 15]])
    attention_mask = torch.tensor([[1, 1, 1, 1, 1, 0], [1, 1, 1, 1, 1, 1]])
    loss = module.loss({"input_ids": input_ids, "attention_mask": attention_mask, "labels": labels})
    logits = module.model(input_ids=input_ids, attention_mask=attention_mask).logits
    # token t is predicted from position t - 1; average over the 3 + 5 labelled tokens
    terms = [F.cross_entropy(logits[b, t - 1], input_ids[b, t]) for b in range(2) for t in range(1, 6)
             if labels[b, t] != -100]
    assert len(terms) == 8
    torch.testing.assert_close(loss, torch.stack(terms).mean())


def test_schedule_warms_up_then_decays_to_a_tenth(tiny_dir):
    optimizer, scheduler = build_optimizer(torch.nn.Linear(2, 2), lr=1.0, weight_decay=0.0, warmup_steps=4,
                                           total_steps=20)
    lrs = []
    for _ in range(20):
        lrs.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        scheduler.step()
    assert lrs[:4] == [0.25, 0.5, 0.75, 1.0]
    assert lrs[4] == pytest.approx(1.0) and all(a >= b for a, b in zip(lrs[4:], lrs[5:]))
    assert optimizer.param_groups[0]["lr"] == pytest.approx(0.1)


def test_sft_on_toy_problems_lowers_the_loss_and_exports(tiny_dir, tmp_path):
    torch.manual_seed(0)
    module = SFTModule(tiny_dir, lr=2e-3, warmup_steps=5, export_dir=str(tmp_path / "export"))
    data = SFTDataModule(batch_size=16)
    data.connect(module.tokenizer)
    record = _RecordLoss()
    trainer = Trainer(max_steps=40, accelerator="cpu", logger=False, enable_checkpointing=False,
                      enable_progress_bar=False, enable_model_summary=False, limit_val_batches=1,
                      num_sanity_val_steps=0, callbacks=[record])
    trainer.fit(module, datamodule=data)
    first, last = sum(record.losses[:3]) / 3, sum(record.losses[-3:]) / 3
    assert len(record.losses) == 40
    assert last < 0.5 * first, (first, last)
    assert trainer.callback_metrics["val/loss"] < first

    export = tmp_path / "export"
    model = AutoModelForCausalLM.from_pretrained(export)
    tokenizer = AutoTokenizer.from_pretrained(export)
    for name, param in module.model.state_dict().items():
        assert torch.equal(param, model.state_dict()[name]), name
    assert tokenizer.chat_template and tokenizer.padding_side == "left"
    prompt = tokenizer.apply_chat_template([{"role": "user", "content": "Read a line and print it unchanged."}],
                                           tokenize=False, add_generation_prompt=True)
    batch = tokenizer([prompt], return_tensors="pt")
    roll = HFRollout(model, tokenizer).generate(batch["input_ids"], batch["attention_mask"],
                                               SamplingParams(max_new_tokens=20, greedy=True))
    assert roll.response_mask.sum() > 0 and isinstance(roll.texts[0], str)


def test_warm_start_is_cached_and_leaves_the_callers_rng_alone(tiny_dir, tmp_path):
    torch.manual_seed(7)
    state = torch.get_rng_state()
    out = sft_warm_start(tiny_dir, tmp_path / "warm", steps=3, lr=1e-3, batch_size=4)
    assert torch.equal(torch.get_rng_state(), state)
    info = json.loads((out / "warm_start.json").read_text())
    assert info["steps"] == 3 and len(info["losses"]) == 3
    trained, base = AutoModelForCausalLM.from_pretrained(out), AutoModelForCausalLM.from_pretrained(tiny_dir)
    changed = [not torch.equal(p, base.state_dict()[n]) for n, p in trained.state_dict().items()]
    assert all(changed)  # 3 AdamW steps moved every weight of the base model
    stamp = (out / "model.safetensors").stat().st_mtime_ns
    assert sft_warm_start(tiny_dir, tmp_path / "warm", steps=3, lr=1e-3, batch_size=4) == out
    assert (out / "model.safetensors").stat().st_mtime_ns == stamp  # reused, not retrained
    # the same folder asked for with other settings: an error, not the 3-step model handed back as a 30-step one
    with pytest.raises(ValueError, match=r"other settings \(lr 0.001 -> 0.005, steps 3 -> 30\)"):
        sft_warm_start(tiny_dir, tmp_path / "warm", steps=30, lr=5e-3, batch_size=4)
    with pytest.raises(ValueError, match="steps >= 1"):
        sft_warm_start(tiny_dir, tmp_path / "none", steps=0)


def test_warm_start_cache_key_follows_the_settings_and_the_model_files(tiny_dir, tmp_path, monkeypatch):
    monkeypatch.setenv("LIT_CODEGEN_CACHE", str(tmp_path / "cache"))
    first = sft_warm_start(tiny_dir, steps=2, lr=1e-3, batch_size=4)
    assert sft_warm_start(tiny_dir, steps=2, lr=1e-3, batch_size=4) == first  # same settings: the cached one
    assert sft_warm_start(tiny_dir, steps=2, lr=2e-3, batch_size=4) != first  # another learning rate
    config = Path(tiny_dir) / "config.json"
    config.write_text(config.read_text())  # the model folder rewritten in place (new mtime)
    assert sft_warm_start(tiny_dir, steps=2, lr=1e-3, batch_size=4) != first


def test_warm_start_on_the_procedural_task_is_its_own_cache_entry_and_learns_from_its_sft_part(tiny_dir, tmp_path,
                                                                                               monkeypatch):
    monkeypatch.setenv("LIT_CODEGEN_CACHE", str(tmp_path / "cache"))
    toy = sft_warm_start(tiny_dir, template_type="base", steps=2, lr=1e-3, batch_size=4)
    out = sft_warm_start(tiny_dir, template_type="base", builtin_task="procedural", steps=2, lr=1e-3, batch_size=4)
    assert out != toy
    saved = json.loads((out / "warm_start.json").read_text())
    assert saved["data_stamp"].startswith("procedural-")  # the generator's code: a change to it is a new warm start
    assert (tmp_path / "cache" / "procedural_base" / "train.parquet").is_file()
