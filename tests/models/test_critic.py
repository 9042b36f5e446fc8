"""The critic: backbone from the actor checkpoint, float32 values per position, save/load round trip."""

import pytest
import torch
from transformers import AutoModelForCausalLM

from lit_codegen.models.critic import VALUE_HEAD_FILE, CriticModel
from lit_codegen.models.tiny import build_tiny_model


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory):
    return build_tiny_model(tmp_path_factory.mktemp("tiny"), num_hidden_layers=2)


def _batch():
    input_ids = torch.tensor([[0, 0, 5, 6, 7], [8, 9, 10, 11, 12]])
    attention_mask = torch.tensor([[0, 0, 1, 1, 1], [1, 1, 1, 1, 1]])
    return input_ids, attention_mask


def test_backbone_comes_from_the_actor_checkpoint(tiny_dir):
    critic = CriticModel.from_pretrained(str(tiny_dir))
    actor = AutoModelForCausalLM.from_pretrained(tiny_dir)
    for name, param in critic.backbone.state_dict().items():
        assert torch.equal(param, actor.model.state_dict()[name]), name
    assert critic.training and critic.value_head.bias.item() == 0.0


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_values_are_float32_per_position(tiny_dir, dtype):
    critic = CriticModel.from_pretrained(str(tiny_dir), dtype=dtype)
    values = critic(*_batch())
    assert values.shape == (2, 5) and values.dtype == torch.float32
    assert critic.value_head.weight.dtype == torch.float32
    assert values.abs().max() < 5 and values.std() > 0


def test_left_padding_with_position_ids_matches_unpadded(tiny_dir):
    critic = CriticModel.from_pretrained(str(tiny_dir)).eval()
    input_ids, attention_mask = _batch()
    position_ids = (attention_mask.cumsum(-1) - 1).clamp(min=0)
    padded = critic(input_ids, attention_mask, position_ids)[0, 2:]
    alone = critic(input_ids[:1, 2:], attention_mask[:1, 2:])[0]
    torch.testing.assert_close(padded, alone, rtol=1e-4, atol=1e-5)


def test_every_parameter_gets_a_gradient(tiny_dir):
    critic = CriticModel.from_pretrained(str(tiny_dir), gradient_checkpointing=True)
    critic(*_batch()).pow(2).mean().backward()
    missing = [n for n, p in critic.named_parameters() if p.grad is None or not p.grad.abs().sum() > 0]
    assert missing == []


def test_save_and_load_round_trip(tiny_dir, tmp_path):
    critic = CriticModel.from_pretrained(str(tiny_dir)).eval()
    with torch.no_grad():
        critic.value_head.bias.fill_(0.5)
        critic.backbone.norm.weight.mul_(1.5)
    critic.save_pretrained(tmp_path / "critic")
    assert (tmp_path / "critic" / VALUE_HEAD_FILE).is_file()
    again = CriticModel.from_pretrained(str(tmp_path / "critic")).eval()
    assert again.value_head.bias.item() == 0.5
    torch.testing.assert_close(again(*_batch()), critic(*_batch()))


def test_value_head_runs_in_float32_under_bf16_autocast_and_a_bf16_weight(tiny_dir):
    critic = CriticModel.from_pretrained(str(tiny_dir))
    input_ids, attention_mask = _batch()
    head = critic.value_head
    with torch.no_grad():
        hidden = critic.backbone(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
        expected = (hidden.double() @ head.weight.double().T + head.bias.double()).squeeze(-1)
        with torch.autocast("cpu", dtype=torch.bfloat16):  # Lightning's bf16-mixed
            values = critic(input_ids, attention_mask)
    assert values.dtype == torch.float32
    with torch.no_grad():  # the backbone ran in bf16 under autocast: compare the head alone on the fp32 hidden states
        assert torch.allclose(critic(input_ids, attention_mask).double(), expected, atol=1e-6)
    head.to(torch.bfloat16)  # as FSDP2's MixedPrecisionPolicy casts every parameter for the forward pass
    with torch.no_grad():
        assert critic(input_ids, attention_mask).dtype == torch.float32  # no dtype mismatch error


def test_value_head_stays_float32_under_fsdp2_bf16_mixed_precision(tiny_dir, tmp_path, monkeypatch):
    """FSDP2's bf16 parameter cast of the root unit would round the head (bias 0.123456789 -> 0.12353515625)."""
    import torch.distributed as dist
    from torch.distributed.device_mesh import init_device_mesh

    from lit_codegen.parallel import shard_model

    critic = CriticModel.from_pretrained(str(tiny_dir))
    with torch.no_grad():  # values = the bias alone, exactly, if the head computes in float32
        critic.value_head.weight.zero_()
        critic.value_head.bias.fill_(0.123456789)
    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'store'}", rank=0, world_size=1)
    try:
        shard_model(critic, init_device_mesh("cpu", (1,)), mixed_precision=True)
        with torch.no_grad():
            values = critic(*_batch())
    finally:
        dist.destroy_process_group()
    assert values.dtype == torch.float32
    assert torch.all(values == torch.tensor(0.123456789, dtype=torch.float32))
