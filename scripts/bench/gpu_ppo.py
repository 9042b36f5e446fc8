"""GPU benchmark of one PPO iteration: per-phase time, generation and training tokens/s, MFU of the training phase.

    python scripts/bench/gpu_ppo.py --json bench.json                 # Qwen2.5-0.5B architecture, 1 GPU
    python scripts/bench/gpu_ppo.py --smoke --json smoke.json         # tiny dims on CPU, 1 iteration (a few seconds)

What runs: a random-init model with the Qwen2.5-0.5B architecture (built from its config values, nothing downloaded,
saved as an HF directory in a temp dir with the bundled tiny tokenizer) trained by the real `PPOModule` (GAE:
actor, critic and frozen reference) in a real `lightning.Trainer` under `ModelParallelStrategy` (FSDP2 over one
device) in bf16-mixed. Prompts are random token ids (all < the tokenizer's vocabulary, itself < the model's), every
response runs to `--new_tokens` (end-of-sequence is suppressed with `min_new_tokens`), and the reward is stubbed
(deterministic random pass rates; the sandbox is benchmarked by `scripts/bench/code_eval.py`, so `timing_s/reward`
here is ~0 and says nothing about the evaluator).

Ragged workload (`--ragged`): the rollout is prebuilt instead of generated (`ragged_rollout`: prompts of
16..`prompt_len` tokens, responses of lognormal lengths, median 128 and sigma 1, clipped to 16..`new_tokens`, ending
with end-of-sequence unless clipped), and tokens, FLOPs and MFU count the real tokens only (useful tokens), so the
padding a layout computes shows as lost MFU. Compare `--micro_batch_size M` (fixed rows, today),
`--max_tokens_per_micro_batch K` (token budget) and `--max_tokens_per_micro_batch K --pack_sequences` (+ packing).

The bench changes two things in the module and says so in its output: phase timers synchronise the GPU (otherwise a
phase's queued kernels are billed to the next phase), and the rollout engine and evaluator are the two swaps above.

Formulas (N sequences of T = prompt + response tokens, R response tokens, L layers, H hidden size, V vocabulary):

- multiply-adds per sequence of one pass: T x (decoder-layer matmul parameters + L x H x T) [causal attention: QK^T
  and AV over T / 2 keys on average] + the head: R x V x H for the actor (PPO projects only the response positions;
  the LM head is fused with the log-softmax, `lit_codegen.models.logprob_head`), T x H for the critic's value head.
- training FLOPs (update_critic + update_actor) = ppo_epochs x N x 6 x (actor + critic multiply-adds)
  [fwd + bwd = 3 x fwd, 2 FLOPs per multiply-add]. MFU = training FLOPs / training time / peak. HFU counts what the
  hardware also does: 8 instead of 6 with gradient checkpointing, and the actor head's recomputed projection in its
  backward pass (+2 x R x V x H).
- forward-only FLOPs (old log-probs, reference, values) = N x 2 x multiply-adds.
- training tokens/s = ppo_epochs x N x T / training time (each token goes through the critic's and the actor's update).
- generation tokens/s = N x R / generation time (HF generate, KV cache, batch N).
- peak: 989 TFLOP/s bf16 dense for H100 SXM and H200 (same compute), 312 for A100; `--peak_tflops` overrides.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import dataclasses
import json
import math
import statistics
import sys
import tempfile
import time
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
from lightning.pytorch import Callback, Trainer
from lightning.pytorch.strategies import ModelParallelStrategy
from torch.utils.data import DataLoader
from transformers import GenerationConfig, Qwen2Config, Qwen2ForCausalLM

import lit_codegen.module as module_lib
from lit_codegen.args import OptimArgs, PPOArgs, RewardArgs, RolloutArgs
from lit_codegen.models.loading import load_tokenizer, resolve_model_path
from lit_codegen.module import PPOModule
from lit_codegen.reward import EvalResult
from lit_codegen.rollout import HFRollout, Rollout, SamplingParams

# Qwen2.5-0.5B's config.json (hub), checked against its model card: 0.49 B parameters, tied embeddings.
QWEN25_05B = dict(hidden_size=896, num_hidden_layers=24, num_attention_heads=14, num_key_value_heads=2,
                  intermediate_size=4864, vocab_size=151936, tie_word_embeddings=True, rope_theta=1_000_000.0,
                  rms_norm_eps=1e-6, max_position_embeddings=32768)
SMOKE = dict(QWEN25_05B, hidden_size=64, num_hidden_layers=2, num_attention_heads=4, intermediate_size=128,
             vocab_size=2048)  # > the tiny tokenizer; a small vocabulary keeps the CPU smoke run in seconds
# Dense bf16 peaks (NVIDIA data sheets), most specific name first: the PCIe and NVL cards run at lower clocks.
PEAK_TFLOPS = {"H100 PCIe": 756.0, "H100 NVL": 835.0, "H200 NVL": 835.0, "H100": 989.0, "H200": 989.0, "GH200": 989.0,
               "A100": 312.0}


@dataclass
class BenchArgs:
    """The workload (one rank's view)."""

    prompts: int = 64
    prompt_len: int = 256
    new_tokens: int = 256
    n: int = 1
    iterations: int = 4
    warmup: int = 1
    micro_batch_size: int = 16
    mini_batch_size: int = 32
    ppo_epochs: int = 1
    kl_coef: float = 0.001
    gradient_checkpointing: bool = False
    compile: bool = False
    profile: bool = False  # one extra iteration (not in the means) whose update phases run under torch.profiler
    precision: str = "bf16-mixed"
    reference_steps: int = 5
    ragged: bool = False  # prebuilt rollout of ragged lengths (`ragged_rollout`) instead of generating full length
    max_tokens_per_micro_batch: int = 0  # PPOArgs' token budget (0 = micro_batch_size rows)
    pack_sequences: bool = False  # PPOArgs.pack_sequences


class FullLengthRollout(HFRollout):
    """`HFRollout` whose responses never stop early (`min_new_tokens = max_new_tokens`): a fixed token count."""

    def generation_config(self, params: SamplingParams) -> GenerationConfig:
        """The parent's config with end-of-sequence suppressed until `max_new_tokens`."""
        config = super().generation_config(params)
        config.min_new_tokens = params.max_new_tokens
        return config


class StubEvaluator:
    """Stands in for the sandbox: deterministic random pass rates in quarters, returned at once."""

    def __init__(self, seed: int = 0) -> None:
        self.generator = torch.Generator().manual_seed(seed)

    def evaluate_async(self, programs, tests, max_tests=None) -> concurrent.futures.Future:
        """A finished future with one `EvalResult` per program."""
        passed = torch.randint(0, 5, (len(programs),), generator=self.generator).tolist()
        future = concurrent.futures.Future()
        future.set_result([EvalResult(k / 4, ["passed"] * k + ["wrong_answer"] * (4 - k), 4) for k in passed])
        return future

    def close(self) -> None:
        """Nothing to stop."""


class BenchPPOModule(PPOModule):
    """`PPOModule` with the full-length HF rollout and the stub evaluator; everything else is the real module.

    With `profile_at` set, the update phases of that iteration run under `torch.profiler`; the kernel table is kept
    in `profile_table`.
    """

    profile_at: int | None = None
    profile_table: str | None = None

    def _update_critic(self, exp: dict, p_len: int) -> dict[str, float]:
        with self._profiled("update_critic"):
            return super()._update_critic(exp, p_len)

    def _update_actor(self, exp: dict, p_len: int) -> dict[str, float]:
        with self._profiled("update_actor"):
            return super()._update_actor(exp, p_len)

    @contextmanager
    def _profiled(self, name: str):
        if self.ppo_iteration != self.profile_at:
            yield
            return
        from torch.profiler import ProfilerActivity, profile

        activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if self.device.type == "cuda" else [])
        with profile(activities=activities) as prof:
            yield
        sort_by = "self_cuda_time_total" if self.device.type == "cuda" else "self_cpu_time_total"
        table = prof.key_averages().table(sort_by=sort_by, row_limit=40, max_name_column_width=100)
        self.profile_table = (self.profile_table or "") + f"=== {name} ===\n{table}\n"

    ragged: Rollout | None = None  # with --ragged: returned instead of generating (moved to the device)

    def generate(self, batch: dict, params: SamplingParams) -> Rollout:
        if self.ragged is None:
            return super().generate(batch, params)
        return dataclasses.replace(self.ragged, **{k: getattr(self.ragged, k).to(self.device) for k in
                                                   ("prompt_ids", "prompt_mask", "response_ids", "response_mask")})

    @property
    def engine(self) -> FullLengthRollout:
        """Full-length HF generate on the (gathered) actor."""
        if self._engine is None:
            self._engine = FullLengthRollout(self.actor, self.tokenizer)
        return self._engine

    @property
    def evaluator(self) -> StubEvaluator:
        """The stub reward."""
        if self._evaluator is None:
            self._evaluator = StubEvaluator()
        return self._evaluator


class IterationRecorder(Callback):
    """Per PPO iteration: the module's logged `timing_s/*` and metrics, wall time and peak GPU memory.

    At the end of training (before Lightning moves the model back to the CPU) it also runs `reference_fwd_bwd`.
    """

    def __init__(self, args: BenchArgs) -> None:
        self.args = args
        self.iterations: list[dict[str, float]] = []
        self.device = torch.device("cpu")
        self.reference: dict | None = None
        self._start = 0.0

    def on_train_start(self, trainer: Trainer, pl_module) -> None:
        """Remember the device the run trains on."""
        self.device = pl_module.device

    def on_train_batch_start(self, trainer: Trainer, pl_module, batch, batch_idx: int) -> None:
        """Start the wall clock (after the GPU is idle)."""
        _sync(pl_module.device)
        if pl_module.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(pl_module.device)
        self._start = time.perf_counter()

    def on_train_batch_end(self, trainer: Trainer, pl_module, outputs, batch, batch_idx: int) -> None:
        """Record this iteration."""
        _sync(pl_module.device)
        record = {k: float(v) for k, v in trainer.callback_metrics.items()
                  if k.startswith(("timing_s/", "actor/", "critic/"))}
        record["wall_s"] = time.perf_counter() - self._start
        if pl_module.device.type == "cuda":
            record["peak_allocated_gib"] = torch.cuda.max_memory_allocated(pl_module.device) / 2**30
            record["peak_reserved_gib"] = torch.cuda.max_memory_reserved(pl_module.device) / 2**30
        self.iterations.append(record)

    def on_train_end(self, trainer: Trainer, pl_module) -> None:
        """Measure the plain forward + backward of the actor while it is still on the device.

        A failure here (e.g. out of memory) is recorded in the report instead of losing the PPO figures.
        """
        try:
            with torch.enable_grad():
                self.reference = reference_fwd_bwd(pl_module, self.args)
        except Exception as err:  # noqa: BLE001 - the report says what went wrong
            self.reference = {"error": repr(err)}


def build_model_dir(out_dir: Path, config_values: dict, seed: int = 0, device: str = "cpu") -> Path:
    """Save a random-init Qwen2 causal LM with `config_values` and the tiny tokenizer as an HF directory (bf16).

    Args:
        out_dir: Directory to write.
        config_values: `Qwen2Config` keyword arguments (architecture).
        seed: Seed of the random initialisation.
        device: Where to run the initialisation (`cuda` is much faster for 0.5 B parameters).

    Returns:
        `out_dir`, loadable by `PPOModule(model=str(out_dir))`.
    """
    tokenizer = load_tokenizer(resolve_model_path("tiny"))
    if len(tokenizer) > config_values["vocab_size"]:
        raise ValueError(f"tokenizer has {len(tokenizer)} tokens, more than the model's {config_values['vocab_size']}")
    eos, pad = tokenizer.eos_token_id, tokenizer.pad_token_id
    config = Qwen2Config(**config_values, bos_token_id=pad, eos_token_id=eos, pad_token_id=pad)
    torch.manual_seed(seed)
    with torch.device(device):
        model = Qwen2ForCausalLM(config).to(torch.bfloat16)
    model.generation_config = GenerationConfig(eos_token_id=[eos], pad_token_id=pad)
    model.save_pretrained(out_dir)
    tokenizer.save_pretrained(out_dir)
    del model
    if device == "cuda":
        torch.cuda.empty_cache()
    return out_dir


RESPONSE_MEDIAN, RESPONSE_SIGMA, MIN_TOKENS = 128, 1.0, 16


def ragged_rollout(rows: int, max_prompt: int, max_response: int, vocab: int, low: int, eos: int, pad: int,
                   seed: int = 0) -> Rollout:
    """A rollout of ragged rows: prompts of 16..`max_prompt` random ids (uniform, left-padded), responses of
    lognormal lengths (median 128 tokens, sigma 1: long-tailed like code rollouts) clipped to 16..`max_response`,
    ending with `eos` unless clipped at `max_response` (then truncated). Fixed seed."""
    rng = np.random.default_rng(seed)
    p_lens = rng.integers(min(MIN_TOKENS, max_prompt), max_prompt + 1, rows)
    r_lens = np.clip(np.round(rng.lognormal(np.log(RESPONSE_MEDIAN), RESPONSE_SIGMA, rows)),
                     min(MIN_TOKENS, max_response), max_response).astype(int)
    P, R = int(p_lens.max()), int(r_lens.max())
    prompt_ids, prompt_mask = torch.full((rows, P), pad), torch.zeros(rows, P, dtype=torch.long)
    response_ids, response_mask = torch.full((rows, R), pad), torch.zeros(rows, R, dtype=torch.long)
    g = torch.Generator().manual_seed(seed)
    for i, (p, r) in enumerate(zip(p_lens, r_lens)):
        prompt_ids[i, P - p :], prompt_mask[i, P - p :] = torch.randint(low, vocab, (p,), generator=g), 1
        response_ids[i, :r], response_mask[i, :r] = torch.randint(low, vocab, (r,), generator=g), 1
        if r < max_response:
            response_ids[i, r - 1] = eos
    return Rollout(prompt_ids, prompt_mask, response_ids, response_mask, texts=["x"] * rows,
                   prompt_index=torch.arange(rows), truncated=torch.tensor(r_lens >= max_response))


def prompt_loader(args: BenchArgs, vocab: int, first_id: int, seed: int = 0) -> DataLoader:
    """`iterations` batches of `prompts` random prompts of exactly `prompt_len` ids in [first_id, vocab)."""
    generator = torch.Generator().manual_seed(seed)
    total = args.prompts * (args.iterations + args.profile)
    ids = torch.randint(first_id, vocab, (total, args.prompt_len), generator=generator)
    rows = [{"input_ids": ids[i], "problem_id": i} for i in range(total)]

    def collate(examples: list[dict]) -> dict:
        input_ids = torch.stack([e["input_ids"] for e in examples])
        return {"input_ids": input_ids, "attention_mask": torch.ones_like(input_ids),
                "problem_id": torch.tensor([e["problem_id"] for e in examples]),
                "input_output": ['{"inputs": [""], "outputs": [""]}'] * len(examples),
                "difficulty": ["introductory"] * len(examples)}

    return DataLoader(rows, batch_size=args.prompts, shuffle=False, collate_fn=collate)


def matmul_params(config: Qwen2Config) -> dict[str, int]:
    """Parameters of the matrix products: one decoder layer, all of them, the LM head (V x H)."""
    h, kv = config.hidden_size, config.num_key_value_heads * (config.hidden_size // config.num_attention_heads)
    layer = 2 * h * h + 2 * h * kv + 3 * h * config.intermediate_size
    return {"layer": layer, "layers": config.num_hidden_layers * layer, "lm_head": config.vocab_size * h}


def sequence_macs(config: Qwen2Config, prompt_len: int, new_tokens: int, head: str) -> float:
    """Multiply-adds of one forward pass over one sequence (see the module docstring).

    Args:
        head: `response` (the actor: LM head on the R response positions), `value` (the critic) or `all` (an LM head
            on every position, as in a plain forward that returns all logits).
    """
    seq_len = prompt_len + new_tokens
    m = matmul_params(config)
    macs = seq_len * (m["layers"] + config.num_hidden_layers * config.hidden_size * seq_len)
    head_tokens = {"response": new_tokens, "all": seq_len, "value": 0}[head]
    return macs + head_tokens * m["lm_head"] + (seq_len * config.hidden_size if head == "value" else 0)


def summarize(records: list[dict], args: BenchArgs, config: Qwen2Config, peak_tflops: float | None,
              lengths: list[tuple[int, int]] | None = None) -> dict:
    """Means over the measured iterations (after `warmup`) and the derived throughput and MFU figures.

    `lengths`: (prompt, response) tokens of each row of a ragged rollout; tokens, FLOPs and MFU then count the real
    tokens only (useful tokens), whatever padding the micro-batches compute.
    """
    measured = records[args.warmup : args.iterations] or records  # a profiled extra iteration is not measured
    mean = {k: statistics.fmean(r[k] for r in measured if k in r) for k in measured[0]}
    n_seq = args.prompts * args.n
    lengths = lengths or [(args.prompt_len, args.new_tokens)] * n_seq
    n_seq = len(lengths)
    seq_len = statistics.fmean(p + r for p, r in lengths)
    new_tokens = statistics.fmean(r for _, r in lengths)
    tokens = sum(p + r for p, r in lengths)
    actor, critic = (statistics.fmean(sequence_macs(config, p, r, head) for p, r in lengths)
                     for head in ("response", "value"))
    train_time = mean.get("timing_s/update_critic", 0.0) + mean.get("timing_s/update_actor", 0.0)
    trained_tokens = args.ppo_epochs * tokens
    model_flops = args.ppo_epochs * n_seq * 6 * (actor + critic)
    # checkpointing recomputes the decoder layers' forward (2 more FLOPs per MAC), not the LM or value head; the fused
    # LM head recomputes its projection in the backward pass
    head_macs = new_tokens * matmul_params(config)["lm_head"]
    layer_macs = actor + critic - head_macs - seq_len * config.hidden_size
    recompute = 2 * layer_macs if args.gradient_checkpointing else 0
    hardware_flops = args.ppo_epochs * n_seq * (6 * (actor + critic) + recompute + 2 * head_macs)
    forward_time = sum(mean.get(f"timing_s/{k}", 0.0) for k in ("old_log_prob", "ref", "values"))
    forward_macs = actor * (2 if "timing_s/ref" in mean else 1) + critic
    forward_flops = n_seq * 2 * forward_macs
    peak = peak_tflops * 1e12 if peak_tflops else None
    summary = {
        "iterations_measured": len(measured),
        "timing_s": {k.removeprefix("timing_s/"): v for k, v in mean.items() if k.startswith("timing_s/")},
        "wall_s_per_iteration": mean["wall_s"],
        "generation_tokens_per_s": None if args.ragged else n_seq * args.new_tokens / mean["timing_s/gen"],
        "useful_tokens": tokens,
        "training_tokens_per_s": trained_tokens / train_time if train_time else None,
        "training_tflops": model_flops / train_time / 1e12 if train_time else None,
        "mfu_training": model_flops / train_time / peak if peak and train_time else None,
        "hfu_training": hardware_flops / train_time / peak if peak and train_time else None,
        "forward_only_tflops": forward_flops / forward_time / 1e12 if forward_time else None,
        "mfu_forward_only": forward_flops / forward_time / peak if peak and forward_time else None,
        "peak_allocated_gib": max((r.get("peak_allocated_gib", 0.0) for r in records), default=0.0),
        "peak_reserved_gib": max((r.get("peak_reserved_gib", 0.0) for r in records), default=0.0),
    }
    return summary


def reference_fwd_bwd(module: PPOModule, args: BenchArgs) -> dict | None:
    """Plain forward + backward of the same sharded actor on one micro-batch: the model's own ceiling.

    Same shapes as one actor micro-batch, a log-sum-exp loss over the response positions, no optimizer step, no
    PPO bookkeeping, no host syncs inside the loop. Training-phase MFU far below this figure points at PPOModule's
    per-micro-batch overheads; close to it, at the model (eager HF layers) itself.

    Returns:
        `{"seconds_per_micro_batch", "tokens"}`, or None when `reference_steps` is 0.
    """
    if args.reference_steps <= 0:
        return None
    device, seq_len = module.device, args.prompt_len + args.new_tokens
    vocab = len(module.tokenizer)
    ids = torch.randint(max(module.tokenizer.all_special_ids) + 1, vocab, (args.micro_batch_size, seq_len),
                        device=device)
    autocast = torch.autocast(device.type, dtype=torch.bfloat16, enabled="bf16" in args.precision,
                              cache_enabled=False)  # as Lightning's precision plugin: no recompilation

    def step() -> None:
        with autocast:
            logits = module.actor(input_ids=ids, attention_mask=torch.ones_like(ids), use_cache=False).logits
            loss = logits[:, args.prompt_len - 1 : -1].float().logsumexp(-1).mean()
        loss.backward()

    step()  # warm-up
    _sync(device)
    start = time.perf_counter()
    for _ in range(args.reference_steps):
        step()
    _sync(device)
    seconds = (time.perf_counter() - start) / args.reference_steps
    module.actor.zero_grad(set_to_none=True)
    return {"seconds_per_micro_batch": seconds, "tokens": args.micro_batch_size * seq_len}


def detect_peak_tflops(device: torch.device) -> tuple[str, float | None]:
    """The device's name and its bf16 dense peak (None if unknown, e.g. CPU)."""
    if device.type != "cuda":
        return "cpu", None
    name = torch.cuda.get_device_name(device)
    return name, next((v for k, v in PEAK_TFLOPS.items() if k in name), None)


def run(args: BenchArgs, smoke: bool, peak_tflops: float | None, workdir: Path) -> dict:
    """Build the model, train `iterations` PPO iterations, return the report."""
    accelerator = "cpu" if smoke or not torch.cuda.is_available() else "gpu"
    config_values = SMOKE if smoke else QWEN25_05B
    model_dir = build_model_dir(workdir / "model", config_values, device="cuda" if accelerator == "gpu" else "cpu")
    config = Qwen2Config.from_pretrained(model_dir)
    module = BenchPPOModule(
        model=str(model_dir), dtype="float32", gradient_checkpointing=args.gradient_checkpointing, compile=args.compile,
        algorithm=PPOArgs(adv_estimator="gae", ppo_epochs=args.ppo_epochs, mini_batch_size=args.mini_batch_size,
                          micro_batch_size=args.micro_batch_size, kl_coef=args.kl_coef,
                          max_tokens_per_micro_batch=args.max_tokens_per_micro_batch or None,
                          pack_sequences=args.pack_sequences),
        rollout=RolloutArgs(backend="hf", n=args.n, temperature=1.0, max_new_tokens=args.new_tokens),
        reward=RewardArgs(workers=1, max_tests=4), optim=OptimArgs(actor_lr=1e-6, critic_lr=1e-5),
    )
    module.profile_at = args.iterations if args.profile else None  # ppo_iteration counts from 0
    if args.ragged:
        tok = module.tokenizer
        module.ragged = ragged_rollout(args.prompts * args.n, args.prompt_len, args.new_tokens, len(tok),
                                       max(tok.all_special_ids) + 1, tok.eos_token_id, tok.pad_token_id)
        roll = module.ragged
        module.lengths = list(zip(roll.prompt_mask.sum(-1).tolist(), roll.response_mask.sum(-1).tolist()))
    recorder = IterationRecorder(args)
    trainer = Trainer(
        accelerator=accelerator, devices=1,
        strategy=ModelParallelStrategy(data_parallel_size=1, tensor_parallel_size=1),
        precision=args.precision, max_steps=args.iterations + args.profile, logger=False, enable_checkpointing=False,
        enable_progress_bar=False, enable_model_summary=False, limit_val_batches=0, num_sanity_val_steps=0,
        callbacks=[recorder], default_root_dir=str(workdir),
    )
    first_id = max(module.tokenizer.all_special_ids) + 1  # no special token in a prompt
    with _synced_phase_timers():
        trainer.fit(module, train_dataloaders=prompt_loader(args, len(module.tokenizer), first_id))
    name, detected = detect_peak_tflops(recorder.device)
    peak = peak_tflops or detected
    reference = recorder.reference
    if reference is not None and "error" not in reference:
        flops = args.micro_batch_size * 6 * sequence_macs(config, args.prompt_len, args.new_tokens, "all")
        reference["tflops"] = flops / reference["seconds_per_micro_batch"] / 1e12
        reference["mfu"] = reference["tflops"] / peak if peak else None
    report = {
        "device": name,
        "torch": torch.__version__,
        "peak_tflops_bf16": peak,
        "architecture": {k: config_values[k] for k in ("hidden_size", "num_hidden_layers", "num_attention_heads",
                                                       "num_key_value_heads", "intermediate_size", "vocab_size",
                                                       "tie_word_embeddings", "rope_theta")},
        "parameters": _param_count(config),
        "matmul_parameters": matmul_params(config),
        "workload": asdict(args),
        "strategy": "ModelParallelStrategy (FSDP2, data_parallel_size=1)",
        "reward": "stubbed (deterministic random pass rates); timing_s/reward excludes the sandbox",
        "timers": "phase timers synchronise the device (bench-only patch of lit_codegen.module._timer)",
        "iterations": recorder.iterations,
        "summary": summarize(recorder.iterations, args, config, peak, getattr(module, "lengths", None)),
        "reference_fwd_bwd": reference,
        "profile": module.profile_table,
    }
    return report


def _param_count(config: Qwen2Config) -> int:
    """Parameters of the causal LM without building it (embeddings counted once when tied)."""
    h, kv = config.hidden_size, config.num_key_value_heads * (config.hidden_size // config.num_attention_heads)
    layer = (h * h + h) + 2 * (h * kv + kv) + h * h + 3 * h * config.intermediate_size + 2 * h
    head = 0 if config.tie_word_embeddings else config.vocab_size * h
    return config.vocab_size * h + config.num_hidden_layers * layer + h + head


@contextmanager
def _synced_phase_timers():
    """Make PPOModule's phase timers wait for the GPU at both ends, so each phase is billed its own kernels."""
    original = module_lib._timer

    @contextmanager
    def synced(timing: dict[str, float], key: str):
        _sync_all()
        start = time.perf_counter()
        yield
        _sync_all()
        timing[key] = timing.get(key, 0.0) + time.perf_counter() - start

    module_lib._timer = synced
    try:
        yield
    finally:
        module_lib._timer = original


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _sync_all() -> None:
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        torch.cuda.synchronize()


def format_summary(report: dict) -> str:
    """A few readable lines of the headline figures."""
    s, w = report["summary"], report["workload"]
    pct = lambda x: "n/a (no peak for this device; --peak_tflops)" if x is None else f"{100 * x:.1f}%"  # noqa: E731
    lines = [
        f"device: {report['device']}  peak bf16: {report['peak_tflops_bf16']} TFLOP/s  "
        f"params: {report['parameters'] / 1e6:.1f} M",
        f"workload: {w['prompts']} prompts x n={w['n']}, {w['prompt_len']} prompt + {w['new_tokens']} new tokens, "
        f"micro-batch {w['micro_batch_size']}, mini-batch {w['mini_batch_size']}, "
        f"checkpointing {w['gradient_checkpointing']}, compile {w['compile']}, {w['precision']}",
        "timing per iteration (s): " + "  ".join(f"{k}={v:.3f}" for k, v in s["timing_s"].items()),
        "generation: not run (prebuilt ragged rollout)" if w["ragged"] else
        f"generation: {s['generation_tokens_per_s']:.0f} tokens/s",
        f"training: {s['training_tokens_per_s']:.0f} tokens/s (critic + actor update), "
        f"{s['training_tflops']:.1f} TFLOP/s, "
        f"MFU {pct(s['mfu_training'])}, HFU {pct(s['hfu_training'])}",
        f"forward-only (old/ref log-probs, values): {s['forward_only_tflops']:.1f} TFLOP/s, "
        f"MFU {pct(s['mfu_forward_only'])}",
        f"peak memory: {s['peak_allocated_gib']:.1f} GiB allocated, {s['peak_reserved_gib']:.1f} GiB reserved",
    ]
    ref = report.get("reference_fwd_bwd")
    if ref and "error" in ref:
        lines.append(f"reference plain fwd+bwd of the actor failed: {ref['error']}")
    elif ref:
        lines.append(f"reference plain fwd+bwd of the actor (1 micro-batch): {ref['tflops']:.1f} TFLOP/s, "
                     f"MFU {pct(ref['mfu'])}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    """Command line: `python scripts/bench/gpu_ppo.py [--smoke] [--json OUT] [workload flags]`."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--smoke", action="store_true", help="tiny dims on CPU, 1 iteration: checks the script runs")
    parser.add_argument("--json", type=Path, help="write the full report here")
    parser.add_argument("--peak_tflops", type=float, help="bf16 dense peak of the device (default: by GPU name)")
    for field, default in asdict(BenchArgs()).items():
        if isinstance(default, bool):
            parser.add_argument(f"--{field}", action=argparse.BooleanOptionalAction, default=default)
        else:
            parser.add_argument(f"--{field}", type=type(default), default=default)
    ns = parser.parse_args(argv)
    args = BenchArgs(**{k: getattr(ns, k) for k in asdict(BenchArgs())})
    if ns.smoke:
        args = BenchArgs(**{**asdict(args), "prompts": 4, "prompt_len": 16, "new_tokens": 8, "iterations": 1,
                            "warmup": 0, "micro_batch_size": 2, "mini_batch_size": 4, "reference_steps": 1})
    elif not torch.cuda.is_available():
        print("gpu_ppo: no CUDA device; run with --smoke on CPU", file=sys.stderr)
        return 2
    if args.micro_batch_size > args.mini_batch_size or args.iterations <= args.warmup:
        print("gpu_ppo: need micro_batch_size <= mini_batch_size and iterations > warmup", file=sys.stderr)
        return 2
    torch.backends.cuda.matmul.allow_tf32 = True
    with tempfile.TemporaryDirectory(prefix="gpu_ppo_") as tmp:
        report = run(args, ns.smoke, ns.peak_tflops, Path(tmp))
    print(format_summary(report))
    if ns.json:
        ns.json.parent.mkdir(parents=True, exist_ok=True)
        ns.json.write_text(json.dumps(report, indent=2, default=_json_default))
        if report["profile"]:
            ns.json.with_suffix(".profile.txt").write_text(report["profile"])
    return 0


def _json_default(value):
    return None if isinstance(value, float) and math.isnan(value) else str(value)


if __name__ == "__main__":
    sys.exit(main())
