"""CPU benchmark of PPO's training passes on ragged rollouts: fixed micro-batches vs token budget vs + packing.

    python scripts/bench/ragged_cpu.py --json ragged.json            # 3 layouts, 1 warm-up + 2 measured iterations
    python scripts/bench/ragged_cpu.py --rows 8 --iterations 1       # a quick look

Workload (`gpu_ppo.ragged_rollout`, fixed seed): `--rows` sequences (n = 1), prompts of 16-64 random non-special
tokens (uniform, left-padded) and responses whose lengths are drawn from a lognormal with median 128 tokens and
sigma 1 (mean ~211), clipped to 16-1,024: long-tailed, as code rollouts are. A response ends with `<|im_end|>`
unless it hits 1,024 tokens.
Generation is not run (the rollout is prebuilt: micro-batching does not touch sampling) and the reward is an
instant stand-in, so the figures are those of the phases this changes, timed by `PPOModule` itself in a real
`lightning.Trainer`: old log-probs, reference log-probs, values, critic update and actor update (GAE, k1 KL,
1 PPO epoch, mini-batch = all rows). Model: the tiny Qwen2 of `ppo_step.py` (vocab 300, hidden 128, 2 layers,
4 heads / 2 KV heads), fp32, SDPA attention, on 2 threads.

Layouts: `fixed` = today's `micro_batch_size` rows padded to the rollout's widest row; `budget` =
`max_tokens_per_micro_batch` (rows of similar length, padding trimmed per micro-batch); `packed` = budget +
`pack_sequences` (one row per micro-batch, no padding). Reported:

- useful tokens/s = real (non-padding) prompt + response tokens of the rollout / time of the five passes, in the
  fastest measured iteration of each layout (the layouts run interleaved, `--rounds` times; the median is reported
  too), because on a shared machine the other iterations measure the neighbours' load;
- MFU on useful tokens = the multiply-adds of those tokens only (`gpu_ppo.sequence_macs` with each row's own
  lengths: 2 FLOPs per multiply-add, forward passes x 1, updates x 3) / time / peak, where the peak is this CPU's
  measured fp32 matmul rate on the same threads (CPUs have no datasheet figure for it).

Packed rows attend row by row (`lit_codegen.models.packing.varlen_attention_forward`: causal SDPA per row on CPU,
flash varlen on CUDA), so a pack may be as long as the budget; until 2026-12-04 they went through a dense (L, L) mask
and only short packs (1,024 tokens) paid.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "2")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import torch  # noqa: E402
from lightning.pytorch import Callback, LightningDataModule, Trainer, seed_everything  # noqa: E402
from transformers import Qwen2Config  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
from gpu_ppo import ragged_rollout, sequence_macs  # noqa: E402
from ppo_step import MODEL_DIMS, InstantEvaluator  # noqa: E402

from lit_codegen.args import OptimArgs, PPOArgs, RolloutArgs  # noqa: E402
from lit_codegen.models.tiny import build_tiny_model  # noqa: E402
from lit_codegen.module import PPOModule  # noqa: E402
from lit_codegen.rollout import Rollout  # noqa: E402

PASSES = ("old_log_prob", "ref", "values", "update_critic", "update_actor")
MAX_PROMPT, MAX_RESPONSE = 64, 1024


class RaggedPPOModule(PPOModule):
    """`PPOModule` whose rollout is the prebuilt ragged one and whose reward is instant."""

    def __init__(self, roll: Rollout, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.roll, self._evaluator = roll, InstantEvaluator()

    def generate(self, batch, params) -> Rollout:
        return self.roll


class OneBatch(LightningDataModule):
    """`iterations` batches with the keys `PPOModule` reads besides the prompts (which the rollout replaces)."""

    def __init__(self, rows: int, iterations: int) -> None:
        super().__init__()
        self.batches = [{"input_output": ["{}"] * rows, "difficulty": ["introductory"] * rows}] * iterations

    def train_dataloader(self):
        return torch.utils.data.DataLoader(self.batches, batch_size=None)


class Timings(Callback):
    """The module's `timing_s/*` of every iteration."""

    def __init__(self) -> None:
        self.records: list[dict[str, float]] = []

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        self.records.append({k.removeprefix("timing_s/"): float(v) for k, v in trainer.callback_metrics.items()
                             if k.startswith("timing_s/")})


def matmul_peak(size: int = 2048, repeats: int = 5) -> float:
    """Best fp32 matmul rate (FLOP/s) of this CPU on the configured threads."""
    a, b = torch.randn(size, size), torch.randn(size, size)
    a @ b
    best = min(_timed(lambda: a @ b) for _ in range(repeats))
    return 2 * size**3 / best


def _timed(fn) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def run(model_dir: Path, roll: Rollout, algo: dict, iterations: int) -> list[dict[str, float]]:
    """Train `iterations` PPO iterations on the rollout; the passes' seconds of each but the first."""
    seed_everything(0, verbose=False)
    rows = roll.response_ids.shape[0]
    algo = {"micro_batch_size": min(rows, 16)} | algo  # unused with a token budget, but checked against the mini-batch
    module = RaggedPPOModule(roll, model=str(model_dir), algorithm=PPOArgs(
        adv_estimator="gae", mini_batch_size=rows, kl_coef=0.05, kl_estimator="k1", **algo),
        rollout=RolloutArgs(n=1, max_new_tokens=roll.response_ids.shape[1]), optim=OptimArgs(actor_lr=1e-5))
    timings = Timings()
    trainer = Trainer(accelerator="cpu", devices=1, max_steps=iterations, logger=False, enable_checkpointing=False,
                      enable_progress_bar=False, enable_model_summary=False, limit_val_batches=0,
                      num_sanity_val_steps=0, callbacks=[timings])
    trainer.fit(module, datamodule=OneBatch(rows, iterations))
    return [{k: r[k] for k in PASSES} for r in timings.records[1:] or timings.records]


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=32, help="Sequences in the rollout (one mini-batch).")
    parser.add_argument("--iterations", type=int, default=4, help="PPO iterations per run; the first is warm-up.")
    parser.add_argument("--rounds", type=int, default=2, help="Runs of every layout, interleaved.")
    parser.add_argument("--micro_batch_size", type=int, default=8, help="Rows per micro-batch of `fixed`.")
    parser.add_argument("--budget_tokens", type=int, default=8192, help="Token budget of `budget` (padding counted).")
    parser.add_argument("--packed_tokens", type=int, default=8192, help="Token budget of `packed`.")
    parser.add_argument("--layouts", default="fixed,budget,packed", help="Comma-separated layouts to run.")
    parser.add_argument("--json", type=Path, help="Write the report here.")
    args = parser.parse_args(argv)
    torch.set_num_threads(int(os.environ["OMP_NUM_THREADS"]))
    with tempfile.TemporaryDirectory() as tmp:
        model_dir = build_tiny_model(Path(tmp) / "model", **MODEL_DIMS, max_position_embeddings=2048)
        config = Qwen2Config.from_pretrained(model_dir)
        from transformers import AutoTokenizer

        tok = AutoTokenizer.from_pretrained(model_dir)
        roll = ragged_rollout(args.rows, MAX_PROMPT, MAX_RESPONSE, config.vocab_size, max(tok.all_special_ids) + 1,
                              tok.eos_token_id, tok.pad_token_id)
        p_lens, r_lens = roll.prompt_mask.sum(-1).tolist(), roll.response_mask.sum(-1).tolist()
        useful = sum(p_lens) + sum(r_lens)
        padded = roll.response_ids.numel() + roll.prompt_ids.numel()
        # useful multiply-adds: forward passes actor (old), reference, critic; updates critic, actor (x 3 each)
        actor = sum(sequence_macs(config, p, r, "response") for p, r in zip(p_lens, r_lens))
        critic = sum(sequence_macs(config, p, r, "value") for p, r in zip(p_lens, r_lens))
        useful_flops = 2 * (2 * actor + critic + 3 * (actor + critic))
        peak = matmul_peak()
        layouts = {"fixed": dict(micro_batch_size=args.micro_batch_size),
                   "budget": dict(max_tokens_per_micro_batch=args.budget_tokens),
                   "packed": dict(max_tokens_per_micro_batch=args.packed_tokens, pack_sequences=True)}
        report = {"rows": args.rows, "useful_tokens": useful, "padded_tokens": padded,
                  "response_length": {"mean": statistics.fmean(r_lens), "median": statistics.median(r_lens),
                                      "max": max(r_lens)},
                  "threads": torch.get_num_threads(), "matmul_peak_gflops": peak / 1e9, "layouts": {}}
        names = args.layouts.split(",")
        records: dict[str, list[dict[str, float]]] = {name: [] for name in names}
        for _ in range(args.rounds):  # interleaved, so a change in the machine's load hits every layout alike
            for name in names:
                records[name] += run(model_dir, roll, layouts[name], args.iterations)
        for name in names:
            totals = [sum(r.values()) for r in records[name]]
            best = records[name][totals.index(min(totals))]
            seconds = min(totals)  # the least disturbed iteration: the machine is shared
            report["layouts"][name] = {"algorithm": layouts[name], "passes_s": best, "seconds": seconds,
                                       "median_seconds": statistics.median(totals), "iterations": len(totals),
                                       "useful_tokens_per_s": useful / seconds,
                                       "mfu_useful": useful_flops / seconds / peak}
            print(f"{name:7s} {seconds:7.2f} s (median {statistics.median(totals):.2f})  {useful / seconds:9.0f} "
                  f"useful tokens/s  MFU(useful) {100 * useful_flops / seconds / peak:5.2f}%  "
                  f"{ {k: round(v, 3) for k, v in best.items()} }", flush=True)
        base = report["layouts"].get("fixed", {}).get("seconds", float("nan"))
        for name, figures in report["layouts"].items():
            figures["speedup_vs_fixed"] = base / figures["seconds"]
        print(json.dumps({k: v["speedup_vs_fixed"] for k, v in report["layouts"].items()}))
    if args.json:
        args.json.write_text(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
