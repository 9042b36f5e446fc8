"""Typed argument groups of the PPO module; LightningCLI exposes every field with its docstring as `--help`.

Defaults are general-purpose PPO settings; the reference recipe (configs/ppo_qwen2.5_3b_apps.yaml) sets its own
(e.g. KL penalty 0.001, value clip 0.5, dual clip 3.0, 1024 new tokens). Where a default differs from verl's, the
field's docstring says so. `check_ppo_args` rejects settings that cannot work together.
"""

from __future__ import annotations

import importlib.util
from dataclasses import dataclass, field
from typing import Literal

import torch


@dataclass
class PPOArgs:
    """The PPO algorithm."""

    adv_estimator: Literal["gae", "grpo", "rloo", "reinforce_plus_plus", "reinforce_plus_plus_baseline"] = "gae"
    """Advantage estimator: `gae` uses the critic; `grpo`/`rloo` use group baselines over `rollout.n` samples;
    `reinforce_plus_plus` (REINFORCE++, Hu 2025) whitens the `gamma`-discounted token returns of the KL-penalised
    reward over the batch, without baseline; `reinforce_plus_plus_baseline` subtracts the mean score of the prompt's
    `rollout.n` samples, then whitens over the batch. The REINFORCE++ ones always whiten (`whiten_advantages` is for
    `gae`)."""
    ppo_epochs: int = 1
    """Passes over each rollout batch."""
    mini_batch_size: int = 16
    """Sequences per optimizer step (after `rollout.n` expansion). The rollout batch is split into mini-batches."""
    micro_batch_size: int = 16
    """Sequences per forward/backward; gradients accumulate over a mini-batch. Ignored when
    `max_tokens_per_micro_batch` is set."""
    max_tokens_per_micro_batch: int | None = None
    """Group a mini-batch's rows into micro-batches of at most this many prompt + response tokens (padding counted
    unless `pack_sequences`), rows of similar length together, instead of `micro_batch_size` rows; a longer row gets
    one of its own (verl's `ppo_max_token_len_per_gpu`). None = `micro_batch_size` rows."""
    pack_sequences: bool = False
    """Concatenate each micro-batch's rows into one sequence without padding (positions restart per row, attention
    stays within a row; verl's `use_remove_padding`). Exact. Attention takes each row's span, no mask: flash varlen
    on CUDA, SDPA row by row elsewhere (`lit_codegen.models.packing`). A pack holds up to `max_tokens_per_micro_batch`
    real tokens (or `micro_batch_size` rows without a budget)."""
    clip_ratio_low: float = 0.2
    """Lower clip of the probability ratio (1 - clip_ratio_low)."""
    clip_ratio_high: float = 0.2
    """Upper clip of the probability ratio (1 + clip_ratio_high)."""
    dual_clip: float | None = None
    """Dual-clip constant c > 1 for negative advantages (Ye et al. 2020; verl's `clip_ratio_c`, always 3.0 there);
    None disables it."""
    policy_ratio: Literal["token", "sequence"] = "token"
    """Importance ratio of the policy loss: per token (PPO) or the length-normalised ratio of the whole response
    (`sequence` = GSPO, Zheng et al. 2025; use clip ratios of about 3e-4 / 4e-4 and `loss_agg: seq-mean`)."""
    policy_loss: Literal["ppo", "cispo"] = "ppo"
    """Policy objective: `ppo` = the clipped surrogate; `cispo` = CISPO (MiniMax-M1, 2025), which clips the
    importance weight and stops its gradient, -sg(clip(ratio, 1 - clip_ratio_low, 1 + clip_ratio_high)) * A *
    log-prob, so clipped tokens still get a gradient (verl's `policy_loss.loss_mode: cispo`, same clip fields;
    MiniMax-M1 sets no lower bound: `clip_ratio_low: 1.0`). `cispo` takes token ratios and no `dual_clip`."""
    rollout_is: Literal["token", "sequence"] | None = None
    """Rollout correction (Yao et al. 2025, truncated importance sampling): weigh each token's policy loss by
    min(pi_old / pi_rollout, rollout_is_threshold), the ratio of the trainer's to the sampler's probability, per
    token or as the product over the response (`sequence`, verl's default once rollout correction is on); None = off.
    Needs the sampler's log-probs: `rollout.backend vllm`."""
    rollout_is_threshold: float = 2.0
    """Upper cap of the rollout-correction weights (verl's `rollout_is_threshold`, same default)."""
    value_clip: float | None = 0.2
    """Clip range of the value update around the old values (verl's `cliprange_value`, 0.5 there); None = no clip."""
    gamma: float = 1.0
    """Discount factor of GAE and of the `reinforce_plus_plus` returns."""
    lam: float = 1.0
    """GAE lambda."""
    kl_coef: float = 0.0
    """Coefficient of the per-token KL penalty in the reward (0 = no penalty; verl's default is 0.001)."""
    kl_loss_coef: float = 0.0
    """Coefficient of a KL term in the actor loss (GRPO style); 0 disables it."""
    kl_estimator: Literal["k1", "k2", "k3"] = "k1"
    """KL estimator for the reward penalty; the KL loss always uses the low-variance k3."""
    kl_target: float | None = None
    """Target KL of the adaptive controller (Ziegler et al. 2019); None keeps `kl_coef` fixed. Measured as the KL of
    whole responses (summed over tokens, averaged over the batch of all ranks), as Ziegler et al. and TRL do; verl's
    controller compares the per-token mean instead, so a verl `target_kl` is about this value / response length."""
    kl_horizon: int = 10000
    """Horizon of the adaptive KL controller."""
    entropy_coef: float = 0.0
    """Entropy bonus coefficient."""
    loss_agg: Literal["token-mean", "seq-mean", "seq-mean-token-sum", "seq-mean-token-sum-norm"] = "token-mean"
    """How token losses are aggregated (verl's `loss_agg_mode`; `seq-mean` is its `seq-mean-token-mean`):
    `token-mean` (DAPO), `seq-mean` (GRPO as published), `seq-mean-token-sum`, `seq-mean-token-sum-norm` (Dr. GRPO:
    token sums over the constant `max_new_tokens`, then the mean over sequences). See `ppo.aggregate_loss`."""
    grpo_norm_by_std: bool = True
    """grpo: divide each group's centred scores by their standard deviation; False = Dr. GRPO (Liu et al. 2025),
    which removes that per-question difficulty bias."""
    filter_groups: bool = False
    """Dynamic sampling (DAPO, Yu et al. 2025): leave out of the update the prompts whose `rollout.n` samples all
    passed the same fraction of tests (`ppo.keep_groups`; before length or KL shaping), and refill the batch with the
    next prompt batches until it holds as many prompts as one data batch (surplus dropped) or
    `max_num_gen_batches` batches were generated. A PPO iteration (one trainer step) may then take several data
    batches; logged as `train/num_gen_batches`, `train/num_generated_prompts`, `train/num_dropped_prompts`."""
    max_num_gen_batches: int = 10
    """Cap on the prompt batches one iteration of `filter_groups` generates (verl's name and default; 0 = no cap).
    At the cap the batch is topped up with the last round's dropped groups (zero advantage under group baselines),
    so that every rank trains on the same number of sequences."""
    filter_truncated: bool = False
    """Overlong filtering (DAPO): truncated responses (no EOS within `rollout.max_new_tokens`) add no loss; they
    still count in their group's baseline. An alternative or addition to `reward.overlong_buffer_len`."""
    whiten_advantages: bool = True
    """Whiten GAE advantages over the batch."""
    critic_warmup: int = 0
    """PPO iterations that update only the critic before the actor starts learning (N = exactly N such iterations;
    verl's `critic_warmup: N` gives N - 1, as its step counter starts at 1). Ignored by the estimators other than `gae`,
    which have no critic (verl would let those iterations train nothing)."""


@dataclass
class RolloutArgs:
    """Generation of responses."""

    backend: Literal["hf", "vllm"] = "hf"
    """`hf` = transformers generate (CPU and GPU); `vllm` = colocated vLLM engine (GPU, `[vllm]` extra)."""
    n: int = 1
    """Samples per prompt (set > 1 for grpo/rloo)."""
    temperature: float = 1.0
    """Sampling temperature for training rollouts."""
    top_p: float = 1.0
    """Nucleus sampling threshold for training rollouts. The PPO log-probs use the full softmax(logits / temperature),
    not the truncated distribution that was sampled from (as in verl), so keep 1.0 unless you mean it."""
    max_new_tokens: int = 512
    """Maximum response length in tokens."""
    val_greedy: bool = True
    """Greedy decoding for validation."""
    val_n: int = 1
    """Samples per validation prompt; > 1 reports pass@k with the unbiased estimator (needs val_greedy: false)."""
    vllm_gpu_memory_utilization: float = 0.4
    """Fraction of GPU memory vLLM may take for weights and KV cache (vllm backend)."""


@dataclass
class RewardArgs:
    """The evaluator that turns a response into a reward."""

    workers: int | None = None
    """Sandbox worker processes; None = the CPUs available."""
    timeout: float = 4.0
    """Wall-clock seconds per test."""
    mode: Literal["strict", "apps"] = "strict"
    """Output comparison: `strict` (exact after trailing whitespace; JSON for call-based) or `apps` (reference)."""
    max_tests: int | None = 16
    """Tests per problem for the training reward (a deterministic subset); validation always uses all tests."""
    no_code_penalty: float = 0.0
    """Added to the reward of a response without a fenced python block (e.g. -0.1)."""
    memory_mb: int = 1024
    """Memory cap per program in MiB."""
    reward_fn: str | None = None
    """A reward hook: the import path (`package.module:function`) of a callable that gets, per training response,
    `problem` (its dataset row), `response`, `program` and `result` (the evaluator's, with per-test verdicts) and
    returns a float that replaces the pass rate (shaping terms still apply; see `lit_codegen.reward.hooks`). None =
    the pass rate."""
    overlong_buffer_len: int = 0
    """DAPO's soft overlong punishment (Yu et al. 2025, eq. 13): a response longer than `rollout.max_new_tokens` minus
    this many tokens loses up to `overlong_penalty_factor`, linearly with the excess (`ppo.overlong_penalty`;
    DAPO: 4096 of 20480); 0 = off (verl's `overlong_buffer.enable: false`)."""
    overlong_penalty_factor: float = 1.0
    """Penalty of a response at the length limit (verl's `overlong_buffer.penalty_factor`, same default)."""


@dataclass
class OptimArgs:
    """Optimizers and schedules (AdamW for actor and critic)."""

    actor_lr: float = 1e-6
    """Actor learning rate."""
    critic_lr: float = 1e-5
    """Critic learning rate."""
    weight_decay: float = 0.0
    """AdamW weight decay."""
    warmup_steps: int = 0
    """Linear warmup, in updates of that model (PPO iterations in which it trains, as in verl)."""
    schedule: Literal["constant", "cosine"] = "constant"
    """Learning-rate schedule after warmup; cosine decays to 10% over `total_steps`."""
    total_steps: int = 1000
    """Updates of that model (PPO iterations in which it trains) the cosine schedule spans."""
    max_grad_norm: float = 1.0
    """Gradient clipping by global norm."""


@dataclass
class LoraArgs:
    """LoRA adapters (Hu et al. 2021, via `peft`, the `[lora]` extra): train low-rank updates, freeze the base weights.

    With `rank > 0` the actor trains only its adapters and the frozen reference policy is the same model with the
    adapters switched off (no second copy of the weights); with `critic: true` the critic's backbone gets adapters
    too (its value head always trains in full).
    """

    rank: int = 0
    """Rank r of every adapter; 0 = no LoRA (full fine-tuning)."""
    alpha: float = 32.0
    """Scale numerator: the update B A is multiplied by alpha / rank (peft's `lora_alpha`)."""
    dropout: float = 0.0
    """Dropout on the adapters' input. Applies in every actor forward, the old log-prob pass included (the actor
    stays in train mode), so > 0 makes the first update's ratio differ from 1; 0 as in verl's and TRL's RL recipes."""
    target_modules: list[str] = field(
        default_factory=lambda: ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
    )
    """Names of the linear layers that get adapters (suffixes of module names, as peft matches them); default all
    linear layers of a decoder layer, which RL with LoRA needs to match full fine-tuning (Schulman et al. 2025,
    "LoRA Without Regret"); the LM head and embeddings never get one."""
    critic: bool = False
    """Also train the critic's backbone through adapters (same settings); False = the critic trains in full."""


# Checkpoints keep these groups in `hyper_parameters`: plain dataclasses, safe to load with
# `torch.load(weights_only=True)`, which Lightning's sharded-checkpoint loading uses.
torch.serialization.add_safe_globals([PPOArgs, RolloutArgs, RewardArgs, OptimArgs, LoraArgs])


def check_ppo_args(a: PPOArgs, r: RolloutArgs, reward: RewardArgs | None = None) -> None:
    """Reject PPO, rollout and reward settings that cannot work, naming the flag and the fix.

    Args:
        a: The algorithm settings (a `PPOArgs`, or the parsed config namespace with the same fields).
        r: The rollout settings (a `RolloutArgs`, or its namespace).
        reward: The evaluator settings (a `RewardArgs` or its namespace), checked as `Evaluator` would at its start.

    Raises:
        ValueError: the first problem found.
    """
    if reward is not None:
        from lit_codegen.reward.evaluator import check_limits

        try:
            check_limits(workers=reward.workers, timeout=reward.timeout, memory_mb=reward.memory_mb,
                         max_tests=reward.max_tests)
        except ValueError as err:
            raise ValueError(f"--model.reward.{err}") from None
        if not 0 <= reward.overlong_buffer_len <= r.max_new_tokens:
            raise ValueError(f"--model.reward.overlong_buffer_len must be in [0, --model.rollout.max_new_tokens "
                             f"{r.max_new_tokens}], got {reward.overlong_buffer_len}")
        if not reward.overlong_penalty_factor >= 0:
            raise ValueError(f"--model.reward.overlong_penalty_factor must be >= 0, got "
                             f"{reward.overlong_penalty_factor}")
    for group, args, names in (("algorithm", a, ("ppo_epochs", "mini_batch_size", "micro_batch_size")),
                               ("rollout", r, ("n", "val_n", "max_new_tokens"))):
        for name in names:
            if getattr(args, name) < 1:
                raise ValueError(f"--model.{group}.{name} must be at least 1, got {getattr(args, name)}")
    _check_algorithm_ranges(a)
    if not 0 < r.top_p <= 1:
        raise ValueError(f"--model.rollout.top_p must be in (0, 1], got {r.top_p}")
    if r.backend == "vllm" and importlib.util.find_spec("vllm") is None:
        raise ValueError("--model.rollout.backend vllm needs vLLM (`pip install lit_codegen[vllm]` on CPU, a vLLM "
                         "build matching your torch/CUDA on GPU); or use --model.rollout.backend hf")
    if a.rollout_is is not None and r.backend != "vllm":
        raise ValueError("--model.algorithm.rollout_is needs the sampler's log-probs, which only "
                         "--model.rollout.backend vllm returns (hf samples with the trained weights themselves); "
                         "or set --model.algorithm.rollout_is null")
    if not r.temperature > 0:
        raise ValueError(f"--model.rollout.temperature must be > 0, got {r.temperature} (validation is greedy through "
                         "--model.rollout.val_greedy)")
    if a.adv_estimator in ("grpo", "rloo", "reinforce_plus_plus_baseline") and r.n < 2:
        raise ValueError(f"--model.algorithm.adv_estimator {a.adv_estimator} needs --model.rollout.n >= 2 "
                         "(it compares samples of the same prompt)")
    if a.filter_groups and r.n < 2:
        raise ValueError("--model.algorithm.filter_groups compares the samples of each prompt: it needs "
                         "--model.rollout.n >= 2")
    if a.max_tokens_per_micro_batch is not None and a.max_tokens_per_micro_batch < 1:
        raise ValueError(f"--model.algorithm.max_tokens_per_micro_batch must be at least 1 (or null for "
                         f"micro_batch_size rows), got {a.max_tokens_per_micro_batch}")
    if a.micro_batch_size > a.mini_batch_size:
        raise ValueError("--model.algorithm.micro_batch_size must be <= --model.algorithm.mini_batch_size")
    if r.val_n > 1 and r.val_greedy:
        raise ValueError("--model.rollout.val_n > 1 needs --model.rollout.val_greedy false (greedy samples coincide)")


def _check_algorithm_ranges(a: PPOArgs) -> None:
    """Raise ValueError for a PPO setting outside the range where it means anything (as verl checks them)."""
    no_lower_bound = a.policy_loss == "cispo" and a.clip_ratio_low == 1  # MiniMax-M1's CISPO: weights may shrink
    checks = [
        ("clip_ratio_low", a.clip_ratio_low, 0 <= a.clip_ratio_low < 1 or no_lower_bound,
         "in [0, 1) (or 1 = no lower bound, with policy_loss cispo)"),
        ("clip_ratio_high", a.clip_ratio_high, a.clip_ratio_high >= 0, ">= 0"),
        ("dual_clip", a.dual_clip, a.dual_clip is None or a.dual_clip > 1, "> 1 (verl's clip_ratio_c), or null"),
        ("value_clip", a.value_clip, a.value_clip is None or a.value_clip > 0, "> 0, or null"),
        ("gamma", a.gamma, 0 <= a.gamma <= 1, "in [0, 1]"),
        ("lam", a.lam, 0 <= a.lam <= 1, "in [0, 1]"),
        ("kl_coef", a.kl_coef, a.kl_coef >= 0, ">= 0"),
        ("kl_loss_coef", a.kl_loss_coef, a.kl_loss_coef >= 0, ">= 0"),
        ("kl_target", a.kl_target, a.kl_target is None or a.kl_target > 0, "> 0, or null"),
        ("kl_horizon", a.kl_horizon, a.kl_horizon >= 1, ">= 1"),
        ("critic_warmup", a.critic_warmup, a.critic_warmup >= 0, ">= 0"),
        ("rollout_is_threshold", a.rollout_is_threshold, a.rollout_is_threshold > 0, "> 0"),
        ("max_num_gen_batches", a.max_num_gen_batches, a.max_num_gen_batches >= 0, ">= 0 (0 = no cap)"),
    ]
    for name, value, ok, wanted in checks:
        if not ok:  # NaN fails every comparison, so it lands here too
            raise ValueError(f"--model.algorithm.{name} must be {wanted}, got {value}")
    if a.policy_loss == "cispo" and (a.policy_ratio != "token" or a.dual_clip is not None):
        raise ValueError("--model.algorithm.policy_loss cispo clips token importance weights: it needs "
                         "--model.algorithm.policy_ratio token and --model.algorithm.dual_clip null")
    if a.kl_target is not None and a.kl_coef == 0:
        raise ValueError("--model.algorithm.kl_target adapts kl_coef by multiplying it, so it needs "
                         "--model.algorithm.kl_coef > 0 to start from (0 stays 0)")


def check_reward_template(reward: RewardArgs, template_type: str | None) -> None:
    """Raise ValueError for a no-code penalty with the `base` template.

    Base completions are plain code without a fence, so the penalty would hit every response alike.
    """
    if reward.no_code_penalty and template_type == "base":
        raise ValueError("--model.reward.no_code_penalty needs the chat template (--data.template_type chat): base "
                         "completions are plain code without a fenced block, so every response would be penalised")


def check_lora_args(lora: LoraArgs, check_installed: bool = True) -> None:
    """Raise ValueError for LoRA settings that cannot work (a `LoraArgs` or its parsed namespace), naming the flag.

    `check_installed`: also require peft when LoRA is on (False for tools that only read the settings).
    """
    if lora.rank < 0:
        raise ValueError(f"--model.lora.rank must be >= 0 (0 = full fine-tuning), got {lora.rank}")
    if lora.rank == 0:
        if lora.critic:
            raise ValueError("--model.lora.critic puts adapters on the critic's backbone: it needs --model.lora.rank "
                             "> 0 (or set --model.lora.critic false)")
        return
    if not lora.alpha > 0:
        raise ValueError(f"--model.lora.alpha must be > 0, got {lora.alpha}")
    if not 0 <= lora.dropout < 1:
        raise ValueError(f"--model.lora.dropout must be in [0, 1), got {lora.dropout}")
    if not lora.target_modules:
        raise ValueError("--model.lora.target_modules is empty: name the linear layers that get adapters "
                         "(e.g. [q_proj, k_proj, v_proj, o_proj, gate_proj, up_proj, down_proj])")
    if check_installed and importlib.util.find_spec("peft") is None:
        raise ValueError("--model.lora.rank > 0 needs peft: `pip install lit_codegen[lora]`; or --model.lora.rank 0")
