"""Per-GPU memory plan of a PPO recipe: weights, gradients, optimizer states, activations, reference, vLLM KV cache.

    python scripts/memory_plan.py --config configs/ppo_qwen2.5_3b_apps.yaml
    python scripts/memory_plan.py --config configs/ppo_qwen2.5_3b_apps.yaml \
        --set model.init_args.algorithm.mini_batch_size=8 --set model.init_args.algorithm.micro_batch_size=8

Reads the recipe (YAML; fields it leaves out take `lit_codegen.args` / `PPOModule` defaults) and the architecture of
its model and of its critic's `critic_model` if set (built-in Qwen2.5 0.5B / 3B numbers, the `config.json` of a local
model directory, or `--model_config` / `--critic_config path/config.json`), and adds up what each GPU holds
in the three phases of a PPO iteration as `lit_codegen.module.PPOModule` runs them:

- generation: resident training state + the rollout engine: vLLM's whole `vllm_gpu_memory_utilization` budget
  (bf16 weights + KV cache) and one full parameter in flight while the new weights are pushed into it; or, with HF
  generate, its KV cache in the compute dtype and, when FSDP shards, the actor gathered (`PPOModule.generate`);
- experience (old/ref log-probs, values; no grad): resident state + one micro-batch's forward;
- training: the critic's update, then the actor's, each with its own gradients and one micro-batch's activations
  (the actor's also one block of LM-head logits); the larger of the two is the training total. vLLM sleeps (level 2:
  weights and KV cache released) during training; the total with vLLM awake is printed too.

The output is a Markdown table (README-ready). Settings that Lightning or `PPOModule` would refuse (unknown keys,
`lit_codegen.args.check_ppo_args`, data x tensor parallel != devices x nodes) are one error line, exit status 2.

Assumptions (stated, not measured): FSDP2 (ModelParallelStrategy) shards parameters, gradients and AdamW moments
evenly over the data-parallel ranks (DDP / single device: no sharding); bf16-mixed computes in bf16 with the stored
dtype as master weights; a model's gradients exist only during its own update (`PPOModule._step` frees them with
`zero_grad(set_to_none=True)` after every optimizer step, so the critic's are gone before the actor's update starts
and neither is held during generation); attention is SDPA/flash (no T x T matrix); sequences are padded to prompt +
response length. Activation bytes per token per decoder layer are counted from the tensors autograd keeps in HF's
Qwen2 layer under autocast: 22*H + 4*H_kv + 8*I (RMSNorm fp32 inputs, projections' inputs, attention q/k/v/out,
SwiGLU gate/up/product). LoRA (`model.lora.rank > 0`): the base weights are frozen in the stored dtype (no gradients,
no AdamW moments), the adapters train in float32 (weights, gradients, moments), the reference policy is the actor with
its adapters off (0 bytes), and each adapted projection keeps its input once more in the compute dtype (peft casts it
to the adapters' float32; autocast casts it back for the matmul) plus its r-wide intermediate, an upper bound
(saved-tensor hooks on one tiny-model layer, CPU autocast, r 16: 1.1 KB of the 2.8 KB per token counted); with
LoRA, vLLM sleeps at level 1 (weights to host RAM, kept). Real usage adds the CUDA context (~0.5 GiB), allocator
fragmentation and NCCL buffers: keep ~10% headroom.
"""

from __future__ import annotations

import argparse
import difflib
import json
import sys
from dataclasses import dataclass, fields, replace
from pathlib import Path

import yaml

from lit_codegen.args import LoraArgs, OptimArgs, PPOArgs, RewardArgs, RolloutArgs, check_lora_args, check_ppo_args
from lit_codegen.models.logprob_head import BLOCK_ELEMENTS
from lit_codegen.parallel import parallel_sizes

GIB = 1024**3
DTYPE_BYTES = {"float32": 4, "bfloat16": 2, "float16": 2}
# Lightning's `trainer.precision` values the plan knows; the 16-bit ones compute in 2 bytes, the others in the stored
# dtype.
PRECISIONS = ("32-true", "32", "bf16-mixed", "bf16-true", "bf16", "16-mixed", "16-true", "16")
# PPOModule's dataclass groups (`model.init_args.<group>.<field>`).
GROUPS = {"algorithm": PPOArgs, "rollout": RolloutArgs, "reward": RewardArgs, "optim": OptimArgs, "lora": LoraArgs}
# The settings the plan reads besides the groups' fields: `--set` takes these and any key the config already has.
PLAN_KEYS = {
    "trainer.devices", "trainer.num_nodes", "trainer.precision", "trainer.strategy", "trainer.strategy.class_path",
    "trainer.strategy.init_args", "trainer.strategy.init_args.data_parallel_size",
    "trainer.strategy.init_args.tensor_parallel_size", "model.init_args.model", "model.init_args.critic_model",
    "model.init_args.dtype", "model.init_args.gradient_checkpointing", "model.init_args.fsdp_cpu_offload",
    "data.init_args.max_prompt_length", "data.init_args.train_batch_size",
    *(f"model.init_args.{group}" for group in GROUPS),
}
# PPOModule's own defaults for the fields the plan reads (tests/test_recipe.py checks they match the signature).
MODULE_DEFAULTS = {"dtype": "float32", "gradient_checkpointing": False, "fsdp_cpu_offload": False}
DATA_DEFAULTS = {"max_prompt_length": 512, "train_batch_size": 64}
GPU_GIB = 79.6  # what an "80 GB" H100 reports (81559 MiB)


@dataclass(frozen=True)
class Arch:
    """Decoder-only transformer (Qwen2 layout: q/k/v biases, SwiGLU MLP, RMSNorm)."""

    hidden: int
    layers: int
    heads: int
    kv_heads: int
    intermediate: int
    vocab: int
    tied_embeddings: bool

    @property
    def head_dim(self) -> int:
        """Width of one attention head."""
        return self.hidden // self.heads

    @property
    def kv_width(self) -> int:
        """Width of the key (= value) projection: kv_heads x head_dim."""
        return self.kv_heads * self.head_dim

    def layer_params(self) -> int:
        """Parameters of one decoder layer (attention with q/k/v biases, SwiGLU MLP, two RMSNorms)."""
        h, kv = self.hidden, self.kv_width
        attention = (h * h + h) + 2 * (h * kv + kv) + h * h
        return attention + 3 * h * self.intermediate + 2 * h

    def backbone_params(self) -> int:
        """Embeddings + layers + final norm (the critic's backbone, `AutoModel`)."""
        return self.vocab * self.hidden + self.layers * self.layer_params() + self.hidden

    def actor_params(self) -> int:
        """The causal LM: backbone plus an LM head unless it is tied to the embeddings."""
        return self.backbone_params() + (0 if self.tied_embeddings else self.vocab * self.hidden)

    def critic_params(self) -> int:
        """Backbone plus the scalar value head (H weights + 1 bias)."""
        return self.backbone_params() + self.hidden + 1

    def projection_shapes(self) -> dict[str, tuple[int, int]]:
        """(in, out) features of each linear layer of a decoder layer, by the module names LoRA targets."""
        h, kv, i = self.hidden, self.kv_width, self.intermediate
        return {"q_proj": (h, h), "k_proj": (h, kv), "v_proj": (h, kv), "o_proj": (h, h), "gate_proj": (h, i),
                "up_proj": (h, i), "down_proj": (i, h)}

    def lora_params(self, rank: int, targets: tuple[str, ...]) -> int:
        """Adapter parameters over all layers: r x (in + out) per targeted projection (A: r x in, B: out x r)."""
        shapes = self.projection_shapes()
        unknown = sorted(set(targets) - set(shapes))
        if unknown:
            raise ValueError(f"model.init_args.lora.target_modules: the plan knows {', '.join(shapes)}, not "
                             f"{', '.join(unknown)}")
        return self.layers * sum(rank * sum(shapes[t]) for t in targets)

    def lora_activation_bytes(self, rank: int, targets: tuple[str, ...], compute_bytes: int) -> int:
        """Bytes per token that one decoder layer's adapters keep for backward: each input again, and the r-wide
        intermediate."""
        shapes = self.projection_shapes()
        return sum(compute_bytes * (shapes[t][0] + rank) for t in targets)

    def kv_bytes_per_token(self, dtype_bytes: int = 2) -> int:
        """KV cache of one token over all layers: keys and values of every KV head."""
        return 2 * self.layers * self.kv_width * dtype_bytes

    def layer_activation_bytes(self) -> int:
        """Bytes per token that one decoder layer keeps for backward (bf16 autocast, flash/SDPA attention)."""
        return 22 * self.hidden + 4 * self.kv_width + 8 * self.intermediate

    @classmethod
    def from_hf_config(cls, path: str | Path) -> Arch:
        """Read a model's `config.json` (Qwen2/Llama-style keys)."""
        cfg = json.loads(Path(path).read_text())
        return cls(hidden=cfg["hidden_size"], layers=cfg["num_hidden_layers"], heads=cfg["num_attention_heads"],
                   kv_heads=cfg.get("num_key_value_heads", cfg["num_attention_heads"]),
                   intermediate=cfg["intermediate_size"], vocab=cfg["vocab_size"],
                   tied_embeddings=cfg.get("tie_word_embeddings", False))


# From the models' config.json on the hub (checked against the model cards: 3.09 B / 0.49 B parameters, tied).
QWEN25_3B = Arch(hidden=2048, layers=36, heads=16, kv_heads=2, intermediate=11008, vocab=151936, tied_embeddings=True)
QWEN25_05B = Arch(hidden=896, layers=24, heads=14, kv_heads=2, intermediate=4864, vocab=151936, tied_embeddings=True)
KNOWN_ARCHS = {
    "Qwen/Qwen2.5-3B-Instruct": QWEN25_3B, "Qwen/Qwen2.5-3B": QWEN25_3B,
    "Qwen/Qwen2.5-0.5B-Instruct": QWEN25_05B, "Qwen/Qwen2.5-0.5B": QWEN25_05B,
}


@dataclass(frozen=True)
class Recipe:
    """The settings of a recipe that decide memory (one rank's view)."""

    model: str
    critic_model: str | None
    """The critic's own checkpoint; None = initialised from the actor (same architecture)."""
    sharded: bool
    """FSDP2 (ModelParallelStrategy) wraps the models, even on one rank."""
    shards: int
    """Ranks that FSDP shards parameters, gradients and optimizer states over (1 without FSDP)."""
    world_size: int
    ranks_per_node: int
    precision: str
    dtype: str
    gradient_checkpointing: bool
    cpu_offload: bool
    uses_critic: bool
    uses_ref: bool
    micro_batch_size: int
    max_tokens_per_micro_batch: int | None
    """The token budget of a micro-batch (None: `micro_batch_size` padded sequences)."""
    pack_sequences: bool
    rollout_backend: str
    rollout_sequences: int
    """Sequences one rank generates per iteration (prompts per rank x n)."""
    prompt_length: int
    response_length: int
    vllm_gpu_memory_utilization: float
    lora_rank: int = 0
    """LoRA adapters' rank; 0 = full fine-tuning."""
    lora_targets: tuple[str, ...] = ()
    lora_critic: bool = False
    """The critic's backbone trains through adapters too."""

    @property
    def sequence_length(self) -> int:
        """Padded prompt + response length."""
        return self.prompt_length + self.response_length

    @property
    def micro_batch_tokens(self) -> int:
        """Tokens of the largest micro-batch: the budget, or `micro_batch_size` padded sequences."""
        return self.max_tokens_per_micro_batch or self.micro_batch_size * self.sequence_length

    @property
    def micro_batch_detail(self) -> str:
        if self.max_tokens_per_micro_batch is None:
            return f"{self.micro_batch_size} x {self.sequence_length} tokens"
        return f"{self.max_tokens_per_micro_batch} tokens{' packed' if self.pack_sequences else ''}"

    @classmethod
    def from_config(cls, config: dict) -> Recipe:
        """Pick the memory-relevant settings out of a parsed `lit-codegen fit` YAML.

        Raises:
            ValueError: a key the recipe's groups do not have, a value the plan cannot size, or settings that
                `lit_codegen.args.check_ppo_args` or Lightning's ModelParallelStrategy would refuse.
        """
        trainer = _mapping(config, "trainer")
        model = _mapping(_mapping(config, "model"), "init_args", "model")
        data = _mapping(_mapping(config, "data"), "init_args", "data")
        algo, rollout, reward, _, lora = (_dataclass_with(cls_, model.get(group), f"model.init_args.{group}")
                                          for group, cls_ in GROUPS.items())
        # The plan does not need vLLM installed, so the backend is checked here instead of by check_ppo_args.
        if rollout.backend not in ("hf", "vllm"):
            raise ValueError(f"model.init_args.rollout.backend must be hf or vllm, got {rollout.backend!r}")
        check_ppo_args(algo, replace(rollout, backend="hf"), reward)
        check_lora_args(lora, check_installed=False)  # planning needs no peft
        if not 0 < rollout.vllm_gpu_memory_utilization <= 1:
            raise ValueError("model.init_args.rollout.vllm_gpu_memory_utilization must be in (0, 1], got "
                             f"{rollout.vllm_gpu_memory_utilization!r}")
        devices, nodes = trainer.get("devices", 1), trainer.get("num_nodes", 1)
        if not isinstance(devices, int) or devices < 1:
            raise ValueError(f"trainer.devices must be a number of GPUs for a memory plan, got {devices!r}")
        if not isinstance(nodes, int) or nodes < 1:
            raise ValueError(f"trainer.num_nodes must be a number of nodes, got {nodes!r}")
        world = devices * nodes
        strategy = trainer.get("strategy") or "auto"
        sharded = "ModelParallelStrategy" in str(strategy.get("class_path") if isinstance(strategy, dict) else strategy)
        dp_size = 1
        if sharded:  # Lightning's "auto": data parallel over the nodes, tensor parallel over each node's devices
            init = _mapping(strategy, "init_args", "trainer.strategy") if isinstance(strategy, dict) else {}
            dp_size, _ = parallel_sizes(init.get("data_parallel_size", "auto"),
                                        init.get("tensor_parallel_size", "auto"), devices, nodes)
        precision = str(trainer.get("precision", "32-true"))
        if precision not in PRECISIONS:
            raise ValueError(f"trainer.precision must be one of {', '.join(PRECISIONS)}, got {precision!r}")
        get = {**MODULE_DEFAULTS, **model}.get
        if get("dtype") not in DTYPE_BYTES:
            raise ValueError(f"model.init_args.dtype must be one of {', '.join(DTYPE_BYTES)}, got {get('dtype')!r}")
        return cls(
            model=model.get("model", "tiny"),
            critic_model=model.get("critic_model"),
            sharded=sharded,
            shards=dp_size,
            world_size=world,
            ranks_per_node=devices,
            precision=precision,
            dtype=get("dtype"),
            gradient_checkpointing=bool(get("gradient_checkpointing")),
            cpu_offload=bool(get("fsdp_cpu_offload")) and sharded,
            uses_critic=algo.adv_estimator == "gae",
            uses_ref=algo.kl_coef > 0 or algo.kl_loss_coef > 0,
            micro_batch_size=algo.micro_batch_size,
            max_tokens_per_micro_batch=algo.max_tokens_per_micro_batch,
            pack_sequences=algo.pack_sequences,
            rollout_backend=rollout.backend,
            rollout_sequences=data.get("train_batch_size", DATA_DEFAULTS["train_batch_size"]) * rollout.n,
            prompt_length=data.get("max_prompt_length", DATA_DEFAULTS["max_prompt_length"]),
            response_length=rollout.max_new_tokens,
            vllm_gpu_memory_utilization=rollout.vllm_gpu_memory_utilization,
            lora_rank=lora.rank,
            lora_targets=tuple(lora.target_modules) if lora.rank else (),
            lora_critic=lora.critic,
        )


@dataclass(frozen=True)
class Row:
    """One line of the plan: a component, how it was computed, GiB per GPU, and the phases it is live in."""

    name: str
    detail: str
    gib: float
    phases: str
    """Any of g (generation), e (experience), c (critic update), a (actor update)."""


def plan(recipe: Recipe, arch: Arch, gpu_gib: float = GPU_GIB,
         critic_arch: Arch | None = None) -> tuple[list[Row], dict[str, float]]:
    """Memory per GPU of every component and the total of each phase.

    Args:
        recipe: The recipe's settings.
        arch: The model's architecture.
        gpu_gib: Memory of one GPU in GiB (vLLM's budget is a fraction of it).
        critic_arch: The critic's architecture (`recipe.critic_model`); None = the actor's.

    Returns:
        `(rows, totals)`: the components, and GiB per GPU in `generation`, `experience`, `training` (vLLM asleep),
        `training_vllm_awake`, plus `host_ram_load_gib` (CPU RAM of the whole node while the models load) and
        `host_ram_vllm_gib` (with LoRA: vLLM's weights asleep in CPU RAM).
    """
    b, n = DTYPE_BYTES[recipe.dtype], recipe.shards
    compute_b = 2 if recipe.precision.startswith(("16", "bf16")) else b  # bytes per value of the compute dtype
    on_gpu = 0.0 if recipe.cpu_offload else 1.0
    where = "CPU (offload)" if recipe.cpu_offload else f"/{n}" if n > 1 else "unsharded"
    critic = critic_arch or arch
    p_actor, p_critic = arch.actor_params(), critic.critic_params()
    rows: list[Row] = []

    def add(name: str, detail: str, nbytes: float, phases: str) -> None:
        rows.append(Row(name, detail, nbytes / GIB, phases))

    # Resident training state (sharded by FSDP).
    lora = recipe.lora_rank > 0

    def model_state(role: str, params: int, trainable: int, phase: str) -> None:
        """Weights, gradients and AdamW moments of a model that trains `trainable` of its `params` parameters."""
        if trainable == params:  # full fine-tuning
            add(f"{role} weights", f"{params / 1e9:.2f} B x {b} B {where}", on_gpu * params * b / n, "geca")
            add(f"{role} gradients", f"{params / 1e9:.2f} B x {b} B {where}", on_gpu * params * b / n, phase)
            add(f"{role} AdamW moments", f"2 x {params / 1e9:.2f} B x {b} B {where}", on_gpu * 2 * params * b / n,
                "geca")
            return
        frozen = params - trainable  # LoRA: the base is frozen in the stored dtype, the trainable part is float32
        add(f"{role} weights (frozen base)", f"{frozen / 1e9:.2f} B x {b} B {where}", on_gpu * frozen * b / n, "geca")
        add(f"{role} trainable weights (fp32)", f"{trainable / 1e6:.1f} M x 4 B {where}", on_gpu * trainable * 4 / n,
            "geca")
        add(f"{role} gradients", f"{trainable / 1e6:.1f} M x 4 B {where}", on_gpu * trainable * 4 / n, phase)
        add(f"{role} AdamW moments", f"2 x {trainable / 1e6:.1f} M x 4 B {where}", on_gpu * 2 * trainable * 4 / n,
            "geca")

    actor_lora = arch.lora_params(recipe.lora_rank, recipe.lora_targets) if lora else 0
    model_state("Actor", p_actor + actor_lora, actor_lora or p_actor, "a")
    if recipe.uses_critic:
        critic_lora = critic.lora_params(recipe.lora_rank, recipe.lora_targets) if recipe.lora_critic else 0
        # with LoRA on the critic, its adapters and the value head (H + 1) train
        model_state("Critic", p_critic + critic_lora, critic_lora + critic.hidden + 1 if critic_lora else p_critic,
                    "c")
    if recipe.uses_ref and lora:  # AdaptersOff: the actor's forward with the adapters switched off
        add("Reference = actor with adapters off", f"no copy (full copy: {p_actor * b / n / GIB:.2f} GiB saved)", 0.0,
            "geca")
    elif recipe.uses_ref:
        add("Reference weights (frozen)", f"{p_actor / 1e9:.2f} B x {b} B {where}", on_gpu * p_actor * b / n, "geca")
    if n > 1 or recipe.cpu_offload:  # the larger model's: the critic's working set in its update may be larger
        gathered = max(a.vocab * a.hidden + 2 * a.layer_params() for a in (arch, critic))
        add("FSDP all-gather working set", f"embeddings + 2 layers x {compute_b} B", gathered * compute_b, "eca")

    # Generation.
    if recipe.rollout_backend == "vllm" and lora:  # merged in fp32 (W + BA), cast to bf16; embeddings never sent
        largest = max(i * o for i, o in arch.projection_shapes().values())
        add("Weight sync to vLLM (largest merged weight)", f"{largest / 1e6:.1f} M x (4 + 4 + 2) B (W + BA, bf16)",
            largest * 10, "g")
    elif recipe.rollout_backend == "vllm":  # one full parameter at a time, gathered in the engine's dtype (bf16)
        add("Weight sync to vLLM (largest parameter)", f"embeddings {arch.vocab} x {arch.hidden} x 2 B",
            arch.vocab * arch.hidden * 2, "g")
    elif recipe.sharded:  # `parallel.gathered` all-gathers FSDP's shards; it is a no-op on an unsharded model
        add("Actor gathered for generation", f"{p_actor / 1e9:.2f} B x {compute_b} B (PPOModule.generate)",
            p_actor * compute_b, "g")
    # vLLM's engine runs in 16 bits (dtype "auto": bf16 for Qwen2.5); HF generate in the trainer's compute dtype.
    seq = recipe.sequence_length
    kv_token = arch.kv_bytes_per_token(2 if recipe.rollout_backend == "vllm" else compute_b)
    kv_needed = recipe.rollout_sequences * seq * kv_token
    kv_detail = f"{recipe.rollout_sequences} seqs x {seq} tokens x {kv_token // 1024} KiB"
    if recipe.rollout_backend == "vllm":
        budget = recipe.vllm_gpu_memory_utilization * gpu_gib * GIB
        add("vLLM engine (whole budget)", f"{recipe.vllm_gpu_memory_utilization} x {gpu_gib} GiB", budget, "g")
        add("  of which bf16 weights", f"{p_actor / 1e9:.2f} B x 2 B", p_actor * 2, "")
        add("  of which KV cache + activations", "the rest of the budget", budget - p_actor * 2, "")
        add("  KV cache this batch needs", kv_detail, kv_needed, "")
    else:
        add("HF generate KV cache", kv_detail, kv_needed, "g")
        add("HF generate logits (one step, fp32)", f"{recipe.rollout_sequences} x {arch.vocab} x 4 B",
            recipe.rollout_sequences * arch.vocab * 4, "g")

    # One micro-batch of training (critic update, then actor update: never both at once).
    tokens = recipe.micro_batch_tokens
    response_tokens = tokens if recipe.max_tokens_per_micro_batch else recipe.micro_batch_size * recipe.response_length

    def activations(a: Arch, adapters: bool = False) -> tuple[float, float, float]:
        """Bytes of one layer's, all layers', and the kept (checkpointed or not) activations of a micro-batch."""
        per_layer = a.layer_activation_bytes() * (compute_b / 2) * tokens
        if adapters:
            per_layer += a.lora_activation_bytes(recipe.lora_rank, recipe.lora_targets, compute_b) * tokens
        full = a.layers * per_layer
        ckpt = a.layers * a.hidden * compute_b * tokens + per_layer
        return per_layer, full, ckpt if recipe.gradient_checkpointing else full

    layer, full, acts = activations(arch, lora)
    critic_layer, _, critic_acts = activations(critic, recipe.lora_critic)
    how = "checkpointed: layer inputs + 1 layer" if recipe.gradient_checkpointing else "all layers"
    # The LM head is fused with the log-softmax (lit_codegen.models.logprob_head): one block of logits at a time, in
    # the compute dtype plus its float32 temporaries (eager; compiled they fuse away), and in the backward pass the
    # block's gradient and a float32 accumulator of the head's weight gradient.
    block = min(BLOCK_ELEMENTS, response_tokens * arch.vocab)
    # (each block's weight-gradient product is added into that accumulator inside its GEMM: no (V, H) temporary)
    # (with LoRA the head is frozen: no weight gradient, so no accumulator)
    head = block * (compute_b * 2 + 4 * 3) + (0 if lora else arch.vocab * arch.hidden * 4)
    if recipe.uses_critic:  # the critic's backbone keeps a decoder's activations; its value head is negligible
        add("Critic activations (1 micro-batch)", f"{recipe.micro_batch_detail}, {how}", critic_acts, "c")
    add("Actor activations (1 micro-batch)", f"{recipe.micro_batch_detail}, {how}", acts, "a")
    add("Actor LM head (fused, 1 block)", f"{block // arch.vocab} tok x {arch.vocab} logits + their grad"
        + ("" if lora else ", fp32 weight-grad accumulator"), head, "a")
    add("  (activations without checkpointing)", f"{arch.layers} layers x {layer / tokens / 1024:.0f} KiB/token",
        full, "")
    add("Forward-only pass (1 micro-batch)", "old/ref log-probs, values: 1 layer + 1 block of logits",
        max(layer + block * (compute_b + 4 * 3), critic_layer), "e")

    def phase(p: str) -> float:
        return sum(r.gib for r in rows if p in r.phases)

    training = max(phase("c"), phase("a"))  # the critic's update, then the actor's: never both at once
    vllm_budget = sum(r.gib for r in rows if r.name.startswith("vLLM engine"))
    host_models = p_actor + (p_critic if recipe.uses_critic else 0) + (p_actor if recipe.uses_ref and not lora else 0)
    totals = {
        "generation": phase("g"),
        "experience": phase("e"),
        "training": training,
        "training_vllm_awake": training + vllm_budget,
        "host_ram_load_gib": host_models * b * recipe.ranks_per_node / GIB,
        # LoRA: vLLM sleeps at level 1, its bf16 weights offloaded to host RAM (kept: only adapted layers are re-synced)
        "host_ram_vllm_gib": p_actor * 2 * recipe.ranks_per_node / GIB if lora and recipe.rollout_backend == "vllm"
        else 0.0,
    }
    return rows, totals


def _micro_batch_words(recipe: Recipe) -> str:
    if recipe.max_tokens_per_micro_batch is None:
        return (f"micro-batch {recipe.micro_batch_size} x ({recipe.prompt_length} prompt + {recipe.response_length} "
                "response) tokens")
    return (f"micro-batches of up to {recipe.max_tokens_per_micro_batch} prompt + response tokens"
            f"{' packed without padding' if recipe.pack_sequences else ''}")


def render(recipe: Recipe, arch: Arch, rows: list[Row], totals: dict[str, float], gpu_gib: float) -> str:
    """The plan as a Markdown table with the phase totals underneath."""
    lines = [
        f"Memory per GPU for `{recipe.model}` ({arch.actor_params() / 1e9:.2f} B actor parameters"
        f"{f', critic `{recipe.critic_model}`' if recipe.uses_critic and recipe.critic_model else ''}), "
        f"{recipe.world_size} GPU(s), parameters/gradients/optimizer sharded over {recipe.shards}, "
        f"{recipe.precision}, stored {recipe.dtype}, "
        f"gradient checkpointing {'on' if recipe.gradient_checkpointing else 'off'}, "
        f"{_micro_batch_words(recipe)}, {recipe.rollout_sequences} rollout sequences per GPU, "
        f"{recipe.rollout_backend} rollouts"
        + (f", LoRA rank {recipe.lora_rank} on {len(recipe.lora_targets)} projections per layer of the actor"
           f"{' and the critic' if recipe.lora_critic and recipe.uses_critic else ''}." if recipe.lora_rank else "."),
        "",
        "| Component | How | GiB / GPU | Live in |",
        "| --- | --- | ---: | --- |",
    ]
    names = {"g": "gen", "e": "exp", "c": "critic update", "a": "actor update"}
    for r in rows:
        live = ", ".join(names[c] for c in r.phases) if r.phases else "(info)"
        lines.append(f"| {r.name} | {r.detail} | {r.gib:.2f} | {live} |")
    fits = lambda x: "fits" if x <= 0.9 * gpu_gib else ("tight" if x <= gpu_gib else "DOES NOT FIT")  # noqa: E731
    lines += [
        "",
        f"| Phase | GiB / GPU | of {gpu_gib} GiB |",
        "| --- | ---: | --- |",
        f"| Generation (rollout engine awake) | {totals['generation']:.1f} | {fits(totals['generation'])} |",
        f"| Experience (forward passes, no grad) | {totals['experience']:.1f} | {fits(totals['experience'])} |",
        f"| Training{' (vLLM asleep)' if recipe.rollout_backend == 'vllm' else ''} | {totals['training']:.1f} | "
        f"{fits(totals['training'])} |",
    ]
    if recipe.rollout_backend == "vllm":
        awake = totals["training_vllm_awake"]
        lines.append(f"| Training if vLLM stayed awake | {awake:.1f} | {fits(awake)} |")
    peak = max(totals["generation"], totals["experience"], totals["training"])
    lines += [
        "",
        f"Peak: {peak:.1f} GiB of {gpu_gib} GiB per GPU ({fits(peak)}; keep ~10% for the CUDA context, "
        "fragmentation and NCCL buffers).",
        f"Host RAM while the models load (every rank builds full {recipe.dtype} copies before sharding): "
        f"{totals['host_ram_load_gib']:.0f} GiB per node."
        + (f" While training, vLLM's weights asleep in host RAM (LoRA: sleep level 1): "
           f"{totals['host_ram_vllm_gib']:.0f} GiB per node." if totals["host_ram_vllm_gib"] else ""),
    ]
    return "\n".join(lines)


def architecture(model: str, config_json: str | None = None, flag: str = "--model_config") -> Arch:
    """The architecture of `model`: from `config_json` if given, else a local model directory's `config.json`, else
    the built-in Qwen2.5 numbers.

    Raises:
        ValueError: none of these knows the model (the message names `flag`, the option that supplies a config).
    """
    local_config = Path(model).expanduser() / "config.json"
    if config_json:
        return Arch.from_hf_config(config_json)
    if local_config.is_file():  # a local HF model directory
        return Arch.from_hf_config(local_config)
    if model in KNOWN_ARCHS:
        return KNOWN_ARCHS[model]
    raise ValueError(f"no built-in architecture for model {model!r}; pass {flag} config.json "
                     f"(built in: {', '.join(KNOWN_ARCHS)})")


def _unknown_key(path: str, known) -> ValueError:
    """The error for a key that does not exist, with the closest known name."""
    close = difflib.get_close_matches(path.rsplit(".", 1)[-1], list(known), n=1)
    return ValueError(f"unknown key {path}" + (f" (did you mean {close[0]}?)" if close else ""))


def _mapping(node: dict, key: str, where: str = "") -> dict:
    """`node[key]` (missing or null: empty), which must be a group of settings."""
    value = node.get(key) or {}
    if not isinstance(value, dict):
        raise ValueError(f"{f'{where}.' if where else ''}{key} must be a group of settings, got {value!r}")
    return value


def _dataclass_with(cls, values: dict | None, where: str):
    """`cls()` with the YAML's values at `where` (e.g. `model.init_args.algorithm`); an unknown key is an error."""
    if values is not None and not isinstance(values, dict):
        raise ValueError(f"{where} must be a group of settings, got {values!r}")
    known = {f.name for f in fields(cls)}
    for key in values or {}:
        if key not in known:
            raise _unknown_key(f"{where}.{key}", known)
    return cls(**(values or {}))


def _apply_override(config: dict, assignment: str) -> None:
    """`a.b.c=value` (value parsed as YAML) into the nested dict.

    The key must be in the config already or be one the plan reads (`PLAN_KEYS`, the fields of `GROUPS`): a misspelt
    key is an error, not a setting silently ignored.
    """
    if "=" not in assignment:
        raise ValueError(f"--set expects key.path=value, got {assignment!r}")
    path, value = assignment.split("=", 1)
    node = config
    *parents, leaf = path.split(".")
    for depth, key in enumerate(parents, 1):
        node = node.setdefault(key, {})
        if not isinstance(node, dict):
            raise ValueError(f"--set {path}: {'.'.join(parents[:depth])} is {node!r}, not a group of settings")
    group = GROUPS.get(parents[-1]) if parents[:-1] == ["model", "init_args"] else None
    if group is not None:  # a field of PPOArgs, RolloutArgs, ...
        known = {f.name for f in fields(group)}
        if leaf not in known:
            raise _unknown_key(path, known)
    elif leaf not in node and path not in PLAN_KEYS:
        parent = ".".join(parents)
        raise _unknown_key(path, {*node, *(k.rsplit(".", 1)[-1] for k in PLAN_KEYS if k.rpartition(".")[0] == parent)})
    node[leaf] = yaml.safe_load(value)


def main(argv: list[str] | None = None) -> int:
    """`python scripts/memory_plan.py --config RECIPE.yaml`: print the plan."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", required=True, help="a lit-codegen fit YAML")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="override a config value, e.g. model.init_args.rollout.max_new_tokens=2048")
    parser.add_argument("--model_config", help="config.json of the model (default: built-in Qwen2.5 0.5B/3B)")
    parser.add_argument("--critic_config", help="config.json of critic_model (default: as for the model)")
    parser.add_argument("--gpu_gib", type=float, default=GPU_GIB, help="memory of one GPU in GiB (%(default)s)")
    args = parser.parse_args(argv)
    try:
        config = yaml.safe_load(Path(args.config).read_text()) or {}
        for assignment in args.set:
            _apply_override(config, assignment)
        recipe = Recipe.from_config(config)
        arch = architecture(recipe.model, args.model_config)
        critic_arch = None
        if recipe.uses_critic and recipe.critic_model:
            critic_arch = architecture(recipe.critic_model, args.critic_config, "--critic_config")
        rows, totals = plan(recipe, arch, args.gpu_gib, critic_arch)
        text = render(recipe, arch, rows, totals, args.gpu_gib)
    except (OSError, ValueError, KeyError, TypeError, yaml.YAMLError) as err:
        print(f"memory_plan: {' '.join(str(err).splitlines())}", file=sys.stderr)
        return 2
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
