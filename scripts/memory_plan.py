"""Per-GPU memory plan of a PPO recipe: weights, gradients, optimizer states, activations, reference, vLLM KV cache.

    python scripts/memory_plan.py --config configs/ppo_qwen2.5_3b_apps.yaml
    python scripts/memory_plan.py --config configs/ppo_qwen2.5_3b_apps.yaml \
        --set model.init_args.algorithm.micro_batch_size=8 --set model.init_args.rollout.n=4

Reads the recipe (YAML; fields it leaves out take `lit_codegen.args` / `PPOModule` defaults) and the architecture of
its model (built-in Qwen2.5 0.5B / 3B numbers, the `config.json` of a local model directory, or
`--model_config path/config.json`), and adds up what each GPU holds
in the three phases of a PPO iteration as `lit_codegen.module.PPOModule` runs them:

- generation: resident training state + the rollout engine: vLLM's whole `vllm_gpu_memory_utilization` budget
  (bf16 weights + KV cache) and one full parameter in flight while the new weights are pushed into it; or, with HF
  generate, the actor gathered in bf16 (`PPOModule.generate`) and its KV cache;
- experience (old/ref log-probs, values; no grad): resident state + one micro-batch's forward;
- training: the critic's update, then the actor's, each with its own gradients and one micro-batch's activations
  (the actor's also one block of LM-head logits); the larger of the two is the training total. vLLM sleeps (level 2:
  weights and KV cache released) during training; the total with vLLM awake is printed too.

The output is a Markdown table (README-ready).

Assumptions (stated, not measured): FSDP2 (ModelParallelStrategy) shards parameters, gradients and AdamW moments
evenly over the data-parallel ranks (DDP / single device: no sharding); bf16-mixed computes in bf16 with the stored
dtype as master weights; a model's gradients exist only during its own update (`PPOModule._step` frees them with
`zero_grad(set_to_none=True)` after every optimizer step, so the critic's are gone before the actor's update starts
and neither is held during generation); attention is SDPA/flash (no T x T matrix); sequences are padded to prompt +
response length. Activation bytes per token per decoder layer are counted from the tensors autograd keeps in HF's
Qwen2 layer under autocast: 22*H + 4*H_kv + 8*I (RMSNorm fp32 inputs, projections' inputs, attention q/k/v/out,
SwiGLU gate/up/product). Real usage adds the CUDA context (~0.5 GiB), allocator fragmentation and NCCL buffers: keep
~10% headroom.
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import dataclass, fields
from pathlib import Path

import yaml

from lit_codegen.args import PPOArgs, RolloutArgs
from lit_codegen.models.logprob_head import BLOCK_ELEMENTS

GIB = 1024**3
DTYPE_BYTES = {"float32": 4, "bfloat16": 2, "float16": 2}
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
    rollout_backend: str
    rollout_sequences: int
    """Sequences one rank generates per iteration (prompts per rank x n)."""
    prompt_length: int
    response_length: int
    vllm_gpu_memory_utilization: float

    @property
    def sequence_length(self) -> int:
        """Padded prompt + response length."""
        return self.prompt_length + self.response_length

    @classmethod
    def from_config(cls, config: dict) -> Recipe:
        """Pick the memory-relevant settings out of a parsed `lit-codegen fit` YAML."""
        trainer = config.get("trainer") or {}
        model = (config.get("model") or {}).get("init_args") or {}
        data = (config.get("data") or {}).get("init_args") or {}
        algo = _dataclass_with(PPOArgs, model.get("algorithm"))
        rollout = _dataclass_with(RolloutArgs, model.get("rollout"))
        devices, nodes = trainer.get("devices", 1), trainer.get("num_nodes", 1)
        if not isinstance(devices, int):
            raise ValueError(f"trainer.devices must be a number of GPUs for a memory plan, got {devices!r}")
        strategy = trainer.get("strategy") or "auto"
        sharded = "ModelParallelStrategy" in str(strategy.get("class_path") if isinstance(strategy, dict) else strategy)
        dp_size = (strategy.get("init_args") or {}).get("data_parallel_size") if isinstance(strategy, dict) else None
        world = devices * nodes
        get = {**MODULE_DEFAULTS, **model}.get
        return cls(
            model=model.get("model", "tiny"),
            shards=(dp_size if isinstance(dp_size, int) else world) if sharded else 1,
            world_size=world,
            ranks_per_node=devices,
            precision=str(trainer.get("precision", "32-true")),
            dtype=get("dtype"),
            gradient_checkpointing=bool(get("gradient_checkpointing")),
            cpu_offload=bool(get("fsdp_cpu_offload")) and sharded,
            uses_critic=algo.adv_estimator == "gae",
            uses_ref=algo.kl_coef > 0 or algo.kl_loss_coef > 0,
            micro_batch_size=algo.micro_batch_size,
            rollout_backend=rollout.backend,
            rollout_sequences=data.get("train_batch_size", DATA_DEFAULTS["train_batch_size"]) * rollout.n,
            prompt_length=data.get("max_prompt_length", DATA_DEFAULTS["max_prompt_length"]),
            response_length=rollout.max_new_tokens,
            vllm_gpu_memory_utilization=rollout.vllm_gpu_memory_utilization,
        )


@dataclass(frozen=True)
class Row:
    """One line of the plan: a component, how it was computed, GiB per GPU, and the phases it is live in."""

    name: str
    detail: str
    gib: float
    phases: str
    """Any of g (generation), e (experience), c (critic update), a (actor update)."""


def plan(recipe: Recipe, arch: Arch, gpu_gib: float = GPU_GIB) -> tuple[list[Row], dict[str, float]]:
    """Memory per GPU of every component and the total of each phase.

    Args:
        recipe: The recipe's settings.
        arch: The model's architecture.
        gpu_gib: Memory of one GPU in GiB (vLLM's budget is a fraction of it).

    Returns:
        `(rows, totals)`: the components, and GiB per GPU in `generation`, `experience`, `training` (vLLM asleep),
        `training_vllm_awake`, plus `host_ram_load_gib` (CPU RAM of the whole node while the models load).
    """
    b, n = DTYPE_BYTES[recipe.dtype], recipe.shards
    bf16 = "bf16" in recipe.precision or recipe.dtype == "bfloat16"
    compute_b = 2 if bf16 else b
    on_gpu = 0.0 if recipe.cpu_offload else 1.0
    where = "CPU (offload)" if recipe.cpu_offload else f"/{n}" if n > 1 else "unsharded"
    p_actor, p_critic = arch.actor_params(), arch.critic_params()
    rows: list[Row] = []

    def add(name: str, detail: str, nbytes: float, phases: str) -> None:
        rows.append(Row(name, detail, nbytes / GIB, phases))

    # Resident training state (sharded by FSDP).
    add("Actor weights", f"{p_actor / 1e9:.2f} B x {b} B {where}", on_gpu * p_actor * b / n, "geca")
    add("Actor gradients", f"{p_actor / 1e9:.2f} B x {b} B {where}", on_gpu * p_actor * b / n, "a")
    add("Actor AdamW moments", f"2 x {p_actor / 1e9:.2f} B x {b} B {where}", on_gpu * 2 * p_actor * b / n, "geca")
    if recipe.uses_critic:
        add("Critic weights", f"{p_critic / 1e9:.2f} B x {b} B {where}", on_gpu * p_critic * b / n, "geca")
        add("Critic gradients", f"{p_critic / 1e9:.2f} B x {b} B {where}", on_gpu * p_critic * b / n, "c")
        add("Critic AdamW moments", f"2 x {p_critic / 1e9:.2f} B x {b} B {where}",
            on_gpu * 2 * p_critic * b / n, "geca")
    if recipe.uses_ref:
        add("Reference weights (frozen)", f"{p_actor / 1e9:.2f} B x {b} B {where}", on_gpu * p_actor * b / n, "geca")
    if n > 1 or recipe.cpu_offload:
        gathered = arch.vocab * arch.hidden + 2 * arch.layer_params()
        add("FSDP all-gather working set", f"embeddings + 2 layers x {compute_b} B", gathered * compute_b, "eca")

    # Generation.
    if recipe.rollout_backend == "vllm":  # weights are pushed one full (all-gathered) parameter at a time
        add("Weight sync to vLLM (largest parameter)", f"embeddings {arch.vocab} x {arch.hidden} x {b} B",
            arch.vocab * arch.hidden * b, "g")
    else:
        add("Actor gathered for generation", f"{p_actor / 1e9:.2f} B x {compute_b} B (PPOModule.generate)",
            p_actor * compute_b, "g")
    seq, kv_token = recipe.sequence_length, arch.kv_bytes_per_token()
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
    tokens = recipe.micro_batch_size * seq
    response_tokens = recipe.micro_batch_size * recipe.response_length
    per_layer = arch.layer_activation_bytes() * (compute_b / 2)
    full = arch.layers * per_layer * tokens
    ckpt = (arch.layers * arch.hidden * compute_b + per_layer) * tokens
    acts = ckpt if recipe.gradient_checkpointing else full
    how = "checkpointed: layer inputs + 1 layer" if recipe.gradient_checkpointing else "all layers"
    # The LM head is fused with the log-softmax (lit_codegen.models.logprob_head): one block of logits at a time, in
    # the compute dtype plus its float32 temporaries (eager; compiled they fuse away), and in the backward pass the
    # block's gradient and a float32 accumulator of the head's weight gradient.
    block = min(BLOCK_ELEMENTS, response_tokens * arch.vocab)
    head = block * (compute_b * 2 + 4 * 3) + arch.vocab * arch.hidden * (4 + compute_b)
    if recipe.uses_critic:  # the critic's backbone keeps the same activations; its value head is negligible
        add("Critic activations (1 micro-batch)", f"{recipe.micro_batch_size} x {seq} tokens, {how}", acts, "c")
    add("Actor activations (1 micro-batch)", f"{recipe.micro_batch_size} x {seq} tokens, {how}", acts, "a")
    add("Actor LM head (fused, 1 block)", f"{block // arch.vocab} tok x {arch.vocab} logits + their grad, "
        f"fp32 weight-grad accumulator", head, "a")
    add("  (activations without checkpointing)", f"{arch.layers} layers x {per_layer / 1024:.0f} KiB/token",
        full, "")
    add("Forward-only pass (1 micro-batch)", "old/ref log-probs, values: 1 layer + 1 block of logits",
        per_layer * tokens + block * (compute_b + 4 * 3), "e")

    def phase(p: str) -> float:
        return sum(r.gib for r in rows if p in r.phases)

    training = max(phase("c"), phase("a"))  # the critic's update, then the actor's: never both at once
    vllm_budget = sum(r.gib for r in rows if r.name.startswith("vLLM engine"))
    host_models = p_actor + (p_critic if recipe.uses_critic else 0) + (p_actor if recipe.uses_ref else 0)
    totals = {
        "generation": phase("g"),
        "experience": phase("e"),
        "training": training,
        "training_vllm_awake": training + vllm_budget,
        "host_ram_load_gib": host_models * b * recipe.ranks_per_node / GIB,
    }
    return rows, totals


def render(recipe: Recipe, arch: Arch, rows: list[Row], totals: dict[str, float], gpu_gib: float) -> str:
    """The plan as a Markdown table with the phase totals underneath."""
    lines = [
        f"Memory per GPU for `{recipe.model}` ({arch.actor_params() / 1e9:.2f} B actor parameters), "
        f"{recipe.world_size} GPU(s), parameters/gradients/optimizer sharded over {recipe.shards}, "
        f"{recipe.precision}, stored {recipe.dtype}, "
        f"gradient checkpointing {'on' if recipe.gradient_checkpointing else 'off'}, "
        f"micro-batch {recipe.micro_batch_size} x ({recipe.prompt_length} prompt + {recipe.response_length} response) "
        f"tokens, {recipe.rollout_sequences} rollout sequences per GPU, {recipe.rollout_backend} rollouts.",
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
        f"{totals['host_ram_load_gib']:.0f} GiB per node.",
    ]
    return "\n".join(lines)


def _dataclass_with(cls, values: dict | None):
    """`cls()` with the YAML's values for its known fields."""
    known = {f.name for f in fields(cls)}
    return cls(**{k: v for k, v in (values or {}).items() if k in known})


def _apply_override(config: dict, assignment: str) -> None:
    """`a.b.c=value` (value parsed as YAML) into the nested dict."""
    if "=" not in assignment:
        raise ValueError(f"--set expects key.path=value, got {assignment!r}")
    path, value = assignment.split("=", 1)
    node = config
    *parents, leaf = path.split(".")
    for key in parents:
        node = node.setdefault(key, {})
    node[leaf] = yaml.safe_load(value)


def main(argv: list[str] | None = None) -> int:
    """`python scripts/memory_plan.py --config RECIPE.yaml`: print the plan."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", required=True, help="a lit-codegen fit YAML")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="override a config value, e.g. model.init_args.algorithm.micro_batch_size=8")
    parser.add_argument("--model_config", help="config.json of the model (default: built-in Qwen2.5 0.5B/3B)")
    parser.add_argument("--gpu_gib", type=float, default=GPU_GIB, help="memory of one GPU in GiB (%(default)s)")
    args = parser.parse_args(argv)
    try:
        config = yaml.safe_load(Path(args.config).read_text()) or {}
        for assignment in args.set:
            _apply_override(config, assignment)
        recipe = Recipe.from_config(config)
        local_config = Path(recipe.model).expanduser() / "config.json"
        if args.model_config:
            arch = Arch.from_hf_config(args.model_config)
        elif local_config.is_file():  # a local HF model directory
            arch = Arch.from_hf_config(local_config)
        elif recipe.model in KNOWN_ARCHS:
            arch = KNOWN_ARCHS[recipe.model]
        else:
            raise ValueError(f"no built-in architecture for model {recipe.model!r}; pass --model_config config.json "
                             f"(built in: {', '.join(KNOWN_ARCHS)})")
    except (OSError, ValueError, KeyError, TypeError, yaml.YAMLError) as err:
        print(f"memory_plan: {err}", file=sys.stderr)
        return 2
    rows, totals = plan(recipe, arch, args.gpu_gib)
    print(render(recipe, arch, rows, totals, args.gpu_gib))
    return 0


if __name__ == "__main__":
    sys.exit(main())
