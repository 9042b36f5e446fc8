"""Benchmark one PPO iteration of `PPOModule` on CPU against TRL's PPOTrainer on the same workload, in one run.

    python scripts/bench/ppo_step.py --json bench.json              # TRL (own venv) and ours eager + compiled, E = 1, 4
    python scripts/bench/ppo_step.py --skip-trl --ppo-epochs 1 --modes eager   # ours only, eager only

The workload is the TRL anchor's (`shared/bench/trl_ppo_cpu.md`): a tiny random Qwen2 (vocab 300, hidden 128,
intermediate 256, 2 layers, 4 heads / 2 KV heads, tied embeddings, 334,464 parameters), 16 prompts of exactly 32
random non-special token ids without padding, exactly 64 sampled tokens per prompt (temperature 1, top-p 1, no EOS
stop), fp32 on 2 torch threads, a critic with GAE, a reference policy with a k1 KL penalty (coefficient 0.05),
lr 1e-5, mini-batch = the whole batch (one optimizer step per PPO epoch per model), 11 iterations of which the first
is warm-up; figures are medians over the other 10.

TRL runs as a subprocess of `shared/bench/trl_ppo_cpu.py` in its own venv (`--trl-venv`, created on first use with
torch 2.13.0, trl 1.12.0 and transformers 5.24.0: the last trl with PPO). Ours runs in this process through a real
`lightning.Trainer`, eager and with `PPOModule(compile=True)` (each in a fresh Trainer, right after the TRL run it is
compared with; dynamo's compiled graphs are reused across runs of one process, so only the first compiled run's
warm-up iteration pays the compilation). Two things are swapped in by subclassing `PPOModule` here (nothing in
`lit_codegen/` changes):

- the reward: an instant stand-in evaluator replaces the sandbox, so the sandbox's time is left out. TRL's
  iteration keeps its reward-model forward (inside its "scoring" phase) and reuses the generation logits for its old
  log-probs, where ours runs an old-log-prob forward: both sides time three no-grad forwards, not quite the same ones.
  The real `lit_codegen.reward.Evaluator` is then timed apart on
  the programs the iterations generated (random tokens, so they fail to compile; the figure is the sandbox's cost).
- the rollout: `HFRollout` with no stop token in the generation config (an "ignore EOS" option), so every response
  has exactly 64 tokens, as in TRL with `stop_token_id=None`. The PPO mask still ends a response at its first
  sampled EOS, as TRL's masks do; tensor shapes and compute are the same either way.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
import warnings
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "2")
os.environ.setdefault("MKL_NUM_THREADS", "2")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import torch  # noqa: E402
from lightning.pytorch import Callback, LightningDataModule, Trainer, seed_everything  # noqa: E402
from transformers import AutoModelForCausalLM, GenerationConfig  # noqa: E402

from lit_codegen.args import OptimArgs, PPOArgs, RolloutArgs  # noqa: E402
from lit_codegen.data.toy import read_toy_records  # noqa: E402
from lit_codegen.models.tiny import build_tiny_model  # noqa: E402
from lit_codegen.module import PPOModule  # noqa: E402
from lit_codegen.reward import EvalResult, Evaluator  # noqa: E402
from lit_codegen.rollout import HFRollout, SamplingParams  # noqa: E402

REPO = Path(__file__).resolve().parents[2]
TRL_SCRIPT = REPO.parent / "shared" / "bench" / "trl_ppo_cpu.py"
TRL_PINS = (["torch==2.13.0"], ["trl==1.12.0", "transformers==5.24.0"])  # torch first, as the anchor's notes say
THREADS = 2
BATCH, PROMPT_LEN, NEW_TOKENS = 16, 32, 64
MODEL_DIMS = dict(vocab_size=300, hidden_size=128, intermediate_size=256, num_hidden_layers=2, num_attention_heads=4,
                  num_key_value_heads=2)
MODES = ("eager", "compiled")
PHASES = ("gen", "old_log_prob", "ref", "values", "reward", "update_critic", "update_actor", "step")


# ----------------------------------------------------------------------------------------------------------- TRL side
def ensure_trl_venv(venv: Path) -> Path:
    """Create `venv` with the pinned torch / trl / transformers unless it already imports `trl.experimental.ppo`.

    Args:
        venv: Directory of the virtual environment.

    Returns:
        Its python interpreter.
    """
    python = venv / "bin" / "python"
    probe = [str(python), "-c", "import trl.experimental.ppo"]
    if python.exists() and subprocess.run(probe, capture_output=True).returncode == 0:
        return python
    print(f"creating {venv} with {TRL_PINS} (one-off, a few minutes)...", flush=True)
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    for pins in TRL_PINS:
        subprocess.run([str(python), "-m", "pip", "install", "-q", *pins], check=True)
    subprocess.run(probe, check=True)
    return python


def run_trl(python: Path, ppo_epochs: int, iters: int) -> dict:
    """Run the TRL anchor script for `ppo_epochs` and return its JSON figures plus the time without `gc.collect`.

    Args:
        python: Interpreter of the TRL venv.
        ppo_epochs: `num_ppo_epochs`.
        iters: Measured iterations (one warm-up iteration is added by the script).

    Returns:
        The script's JSON dict with `median_iter_s_no_gc` and `gen_tokens_per_s_no_gc` added.
    """
    if not TRL_SCRIPT.is_file():
        raise SystemExit(f"TRL anchor script not found at {TRL_SCRIPT} (the shared/ folder must sit beside the repo)")
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "trl.json"
        cmd = [str(python), str(TRL_SCRIPT), "--ppo-epochs", str(ppo_epochs), "--iters", str(iters), "--json", str(out)]
        env = dict(os.environ, OMP_NUM_THREADS=str(THREADS), MKL_NUM_THREADS=str(THREADS))
        proc = subprocess.run(cmd, env=env, capture_output=True, text=True, cwd=tmp)
        if proc.returncode != 0 or not out.is_file():
            raise SystemExit(f"TRL run failed (exit {proc.returncode}):\n{proc.stderr[-3000:]}")
        res = json.loads(out.read_text())
    # TRL calls gc.collect() twice per update; the script times those calls. Difference of medians: an estimate.
    res["median_iter_s_no_gc"] = res["median_iter_s"] - res["median_gc_collect_s_per_iter"]
    res["gen_tokens_per_s_no_gc"] = BATCH * NEW_TOKENS / res["median_iter_s_no_gc"]
    return res


# ----------------------------------------------------------------------------------------------------------- our side
def build_bench_model(out_dir: Path) -> Path:
    """The tiny Qwen2 with the TRL workload's dims and tied input/output embeddings (334,464 parameters).

    `build_tiny_model` saves an untied `lm_head` (for vLLM); here the head is tied to the embedding and re-saved, so
    parameter count and optimizer work match TRL's model. Compute per token is the same either way.
    """
    if (out_dir / "config.json").is_file():
        return out_dir
    build_tiny_model(out_dir, **MODEL_DIMS)
    model = AutoModelForCausalLM.from_pretrained(out_dir)
    model.config.tie_word_embeddings = True
    model.tie_weights()
    model.save_pretrained(out_dir)
    return out_dir


class InstantEvaluator:
    """Stands in for `lit_codegen.reward.Evaluator`: answers at once and records what it was asked to score.

    The pass rate is a fixed function of the program text (its length modulo 17, over 16), so rewards vary across
    the batch and the PPO update has real work to do; the programs and tests are kept to time the real evaluator.
    """

    def __init__(self) -> None:
        self.calls: list[tuple[list[str], list]] = []

    def evaluate_async(self, programs, tests, max_tests="default") -> concurrent.futures.Future:
        """Same signature as `Evaluator.evaluate_async`; the future is already done."""
        self.calls.append((list(programs), list(tests)))
        future: concurrent.futures.Future = concurrent.futures.Future()
        future.set_result([EvalResult(pass_rate=(len(p) % 17) / 16, outcomes=[], n_tests=0) for p in programs])
        return future

    def close(self) -> None:
        """Nothing to stop."""


class FixedLengthRollout(HFRollout):
    """`HFRollout` without stop tokens in the generation config: always exactly `max_new_tokens` tokens ("ignore EOS").

    It records the shape of every generated (N, R) response batch, so the report shows that R was always 64.
    """

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.shapes: set[tuple[int, int]] = set()

    def generate(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, params: SamplingParams):
        """`HFRollout.generate`, recording the response shape."""
        roll = super().generate(input_ids, attention_mask, params)
        self.shapes.add(tuple(roll.response_ids.shape))
        return roll

    def generation_config(self, params: SamplingParams) -> GenerationConfig:
        """The parent's config with `eos_token_id` removed."""
        config = super().generation_config(params)
        config.eos_token_id = None
        return config


class BenchPPOModule(PPOModule):
    """`PPOModule` with the instant evaluator and the fixed-length rollout (see the module docstring)."""

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self._evaluator = InstantEvaluator()

    def configure_model(self) -> None:
        """Build the models as usual, then the fixed-length rollout engine over the actor."""
        super().configure_model()
        self._engine = FixedLengthRollout(self.actor, self.tokenizer)


class SyntheticPrompts(LightningDataModule):
    """`n_batches` batches of `BATCH` prompts of exactly `PROMPT_LEN` random non-special ids, without padding.

    Batches have the keys of `AppsDataModule` batches; the tests are the bundled toy problems' (cycled), so the real
    evaluator has real tests to run the generated programs against.
    """

    def __init__(self, n_batches: int, vocab_size: int, special_ids: list[int], seed: int = 1234) -> None:
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        low = max(special_ids) + 1  # the special tokens have the lowest ids (as in the TRL script)
        toy = read_toy_records()
        self.batches = []
        for b in range(n_batches):
            rows = [toy[(b * BATCH + i) % len(toy)] for i in range(BATCH)]
            self.batches.append({
                "input_ids": torch.randint(low, vocab_size, (BATCH, PROMPT_LEN), generator=g),
                "attention_mask": torch.ones(BATCH, PROMPT_LEN, dtype=torch.long),
                "index": torch.arange(b * BATCH, (b + 1) * BATCH),
                "problem_id": [r["problem_id"] for r in rows],
                "input_output": [json.dumps(r["input_output"]) for r in rows],
                "difficulty": [r.get("difficulty") or "introductory" for r in rows],
            })

    def train_dataloader(self) -> torch.utils.data.DataLoader:
        """The prepared batches, in order (`batch_size=None`: each item already is a batch)."""
        return torch.utils.data.DataLoader(self.batches, batch_size=None, shuffle=False)


class IterationRecorder(Callback):
    """Wall-clock marks at train start and after every training batch, and the module's `timing_s/*` per iteration."""

    def __init__(self) -> None:
        self.marks: list[float] = []
        self.timings: list[dict[str, float]] = []

    def on_train_start(self, trainer, pl_module) -> None:
        self.marks.append(time.perf_counter())

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        self.marks.append(time.perf_counter())
        self.timings.append({k.removeprefix("timing_s/"): float(v) for k, v in trainer.callback_metrics.items()
                             if k.startswith("timing_s/")})


def run_ours(model_dir: Path, ppo_epochs: int, iters: int, compile: bool = False) -> tuple[dict, InstantEvaluator]:
    """Run `iters + 1` PPO iterations through a Lightning Trainer; medians over all but the first.

    Args:
        model_dir: The bench model (`build_bench_model`).
        ppo_epochs: PPO epochs per iteration.
        iters: Measured iterations.
        compile: `PPOModule(compile=True)` (the compilation lands in the warm-up iteration).

    Returns:
        `(figures, evaluator stand-in)`: per-phase medians, s/iter, tokens/s; the stand-in holds the generated programs.
    """
    seed_everything(0, verbose=False)
    module = BenchPPOModule(
        model=str(model_dir), compile=compile,
        algorithm=PPOArgs(adv_estimator="gae", ppo_epochs=ppo_epochs, mini_batch_size=BATCH, micro_batch_size=BATCH,
                          kl_coef=0.05, kl_estimator="k1", gamma=1.0, lam=0.95),  # TRL's gamma/lambda defaults
        rollout=RolloutArgs(backend="hf", n=1, temperature=1.0, top_p=1.0, max_new_tokens=NEW_TOKENS),
        optim=OptimArgs(actor_lr=1e-5, critic_lr=1e-5),
    )
    tok = module.tokenizer
    data = SyntheticPrompts(iters + 1, len(tok), tok.all_special_ids)
    recorder = IterationRecorder()
    stub = module._evaluator  # the module drops it at teardown
    trainer = Trainer(accelerator="cpu", devices=1, max_steps=iters + 1, logger=False, enable_checkpointing=False,
                      enable_progress_bar=False, enable_model_summary=False, num_sanity_val_steps=0,
                      limit_val_batches=0, callbacks=[recorder])
    t0 = time.perf_counter()
    trainer.fit(module, datamodule=data)
    wall = time.perf_counter() - t0
    iter_s = [b - a for a, b in zip(recorder.marks, recorder.marks[1:])]
    if len(iter_s) != iters + 1:
        raise RuntimeError(f"expected {iters + 1} PPO iterations, the trainer ran {len(iter_s)}")
    measured, timings = iter_s[1:], recorder.timings[1:]
    med = statistics.median
    phases = {k: med(t.get(k, 0.0) for t in timings) for k in PHASES}
    gen_tokens = BATCH * NEW_TOKENS
    return {
        "ppo_epochs": ppo_epochs, "iterations_total": len(iter_s), "warmup_s": iter_s[0],
        "iter_s_all": [round(x, 4) for x in iter_s],
        "median_iter_s": med(measured), "min_iter_s": min(measured), "max_iter_s": max(measured),
        "gen_tokens_per_s": gen_tokens / med(measured),
        "median_phase_s": phases,
        # the same split as the TRL anchor reports
        "median_generation_s": phases["gen"],
        "median_scoring_s": phases["old_log_prob"] + phases["ref"] + phases["values"] + phases["reward"],
        "median_optimisation_s": phases["update_critic"] + phases["update_actor"],
        "median_outside_step_s": med(m - t["step"] for m, t in zip(measured, timings)),
        "generation_only_tokens_per_s": gen_tokens / phases["gen"],
        "n_params_policy": sum(p.numel() for p in module.actor.parameters()),
        "response_shapes": sorted(module._engine.shapes),
        "train_wall_s": wall,
    }, stub


def time_real_evaluator(calls: list[tuple[list[str], list]], batches: int) -> dict:
    """Score the last `batches` recorded reward calls with the real sandboxed `Evaluator` (training settings).

    Args:
        calls: `(programs, tests)` per PPO iteration, as the module passed them to the evaluator.
        batches: How many of the last calls to score.

    Returns:
        Worker start-up seconds, median seconds per batch of 16 programs, and the verdict counts.
    """
    calls = calls[-batches:]
    verdicts: dict[str, int] = {}
    evaluator = Evaluator(timeout=4.0, mode="strict", memory_mb=1024)  # RewardArgs defaults; workers = CPUs
    try:
        t0 = time.perf_counter()
        evaluator.start()
        start_s = time.perf_counter() - t0
        per_batch = []
        for programs, tests in calls:
            t0 = time.perf_counter()
            results = evaluator.evaluate(programs, tests, max_tests=16)
            per_batch.append(time.perf_counter() - t0)
            for r in results:
                for v in r.outcomes:
                    verdicts[v] = verdicts.get(v, 0) + 1
        return {"workers": evaluator.workers, "start_s": start_s, "batches": len(per_batch),
                "programs_per_batch": len(calls[0][0]), "median_batch_s": statistics.median(per_batch),
                "batch_s_all": [round(x, 4) for x in per_batch], "verdicts": verdicts}
    finally:
        evaluator.close()


# ----------------------------------------------------------------------------------------------------------- report
def print_table(title: str, ours: dict[str, dict], trl: dict | None) -> None:
    """One side-by-side table for one run of one `ppo_epochs` setting: TRL, then each of our modes."""
    rows = [
        ("generation s", "median_generation_s"),
        ("scoring s (ref/value/old-logp fwd)", "median_scoring_s"),
        ("optimisation s", "median_optimisation_s"),
        ("gc.collect s / iter", "median_gc_collect_s_per_iter"),
        ("warm-up iteration s", "warmup_s"),
        ("s/iter (median of measured)", "median_iter_s"),
        ("s/iter without gc.collect", "median_iter_s_no_gc"),
        ("generated tok/s", "gen_tokens_per_s"),
        ("generated tok/s without gc", "gen_tokens_per_s_no_gc"),
    ]

    def cell(d: dict | None, key: str) -> str:
        return f"{d[key]:.3f}" if d and key in d else "-"

    print(f"\n=== {title} ===")
    print(f"{'':36s}{'TRL 1.12 PPOTrainer':>22s}" + "".join(f"{'ours, ' + mode:>18s}" for mode in ours))
    for label, key in rows:
        print(f"{label:36s}{cell(trl, key):>22s}" + "".join(f"{cell(o, key):>18s}" for o in ours.values()))
    for mode, o in ours.items():
        phases = ", ".join(f"{k} {v:.3f}" for k, v in o["median_phase_s"].items())
        print(f"ours ({mode}), by phase (median s): {phases}, outside training_step {o['median_outside_step_s']:.3f}")
        if trl:
            print(f"  throughput ratio ours ({mode}) / TRL: {o['ratio_vs_trl']:.2f}x raw, "
                  f"{o['ratio_vs_trl_no_gc']:.2f}x vs TRL without gc.collect (target >= 1.5x)")


def wait_for_load(limit: float | None, max_wait_s: float = 1200.0) -> None:
    """Wait until the 1-minute load average is below `limit` (other processes share the cores), at most `max_wait_s`.

    With 2 OpenMP threads on 2 shared cores, a busy machine slows torch by 10x or more (the threads spin-wait on each
    other while the OS runs someone else); measure on a quiet machine, or set `OMP_WAIT_POLICY=PASSIVE` for both sides.
    """
    if limit is None:
        return
    deadline = time.monotonic() + max_wait_s
    while os.getloadavg()[0] >= limit and time.monotonic() < deadline:
        time.sleep(15)
    if os.getloadavg()[0] >= limit:
        print(f"warning: load average still {_load(os.getloadavg())} after {max_wait_s:.0f} s; measuring anyway")


def main(argv: list[str] | None = None) -> None:
    """Parse arguments, run TRL and ours for each PPO-epochs setting, print the tables, write the JSON."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--ppo-epochs", type=int, nargs="+", default=[1, 4], help="PPO epochs settings to run.")
    parser.add_argument("--iters", type=int, default=10, help="Measured iterations (after one warm-up).")
    parser.add_argument("--repeats", type=int, default=1, help="Runs of each (TRL, ours) pair, one after the other.")
    parser.add_argument("--json", type=Path, default=None, help="Write all figures to this file.")
    parser.add_argument("--trl-venv", type=Path, default=Path("/work/venv-trl"), help="Venv of the TRL side.")
    parser.add_argument("--skip-trl", action="store_true", help="Run our side only.")
    parser.add_argument("--modes", nargs="+", choices=MODES, default=list(MODES),
                        help="Our side eager and/or with PPOModule(compile=True).")
    parser.add_argument("--reward-batches", type=int, default=3, help="Batches to score with the real evaluator.")
    parser.add_argument("--wait-for-load", type=float, default=None, metavar="L",
                        help="Before each run, wait (up to 20 min) until the 1-minute load average is below L.")
    args = parser.parse_args(argv)
    if args.iters < 1 or args.repeats < 1:
        parser.error("--iters and --repeats must be at least 1")

    torch.set_num_threads(THREADS)
    warnings.filterwarnings("ignore", message=".*does not have many workers.*")
    trl_python = None if args.skip_trl else ensure_trl_venv(args.trl_venv)
    report: dict = {"workload": {"batch": BATCH, "prompt_len": PROMPT_LEN, "new_tokens": NEW_TOKENS, **MODEL_DIMS,
                                 "tie_word_embeddings": True, "torch_threads": THREADS, "dtype": "float32",
                                 "iters_measured": args.iters},
                    "environment": {"torch": torch.__version__, "cpus": os.cpu_count(),
                                    "OMP_WAIT_POLICY": os.environ.get("OMP_WAIT_POLICY", "(unset)")},
                    "runs": {}}
    with tempfile.TemporaryDirectory() as tmp:
        model_dir = build_bench_model(Path(tmp) / "tiny-bench")
        evaluator_calls = []
        for epochs in args.ppo_epochs:
            for repeat in range(1, args.repeats + 1):
                run: dict = {"ppo_epochs": epochs, "repeat": repeat}
                if trl_python is not None:
                    wait_for_load(args.wait_for_load)
                    run["load_before_trl"] = os.getloadavg()
                    print(f"TRL, ppo_epochs={epochs}, run {repeat} ...", flush=True)
                    run["trl"] = run_trl(trl_python, epochs, args.iters)
                for mode in args.modes:
                    wait_for_load(args.wait_for_load)
                    run[f"load_before_ours_{mode}"] = os.getloadavg()
                    print(f"ours ({mode}), ppo_epochs={epochs}, run {repeat} ...", flush=True)
                    ours, stub = run_ours(model_dir, epochs, args.iters, compile=mode == "compiled")
                    run[f"ours_{mode}"] = ours
                    evaluator_calls = stub.calls
                    if "trl" in run:
                        ours["ratio_vs_trl"] = run["trl"]["median_iter_s"] / ours["median_iter_s"]
                        ours["ratio_vs_trl_no_gc"] = run["trl"]["median_iter_s_no_gc"] / ours["median_iter_s"]
                run["load_after"] = os.getloadavg()
                report["runs"][f"epochs{epochs}_run{repeat}"] = run
        print("real evaluator on the generated programs ...", flush=True)
        report["reward"] = time_real_evaluator(evaluator_calls, args.reward_batches)

    for run in report["runs"].values():
        ours = {mode: run[f"ours_{mode}"] for mode in args.modes}
        print_table(f"ppo_epochs = {run['ppo_epochs']}, run {run['repeat']}", ours, run.get("trl"))
        loads = [f"{k.removeprefix('load_').replace('_', ' ')} {_load(v)}" for k, v in run.items()
                 if k.startswith("load_")]
        print("load average (1/5/15 min): " + "; ".join(loads))
        if max(v[0] for k, v in run.items() if k.startswith("load_")) > 1.5:
            print("warning: the machine was busy (load > 1.5 on 2 cores); figures are unreliable, rerun when quiet")
    r = report["reward"]
    print(f"\nreward (excluded above): real Evaluator, {r['workers']} workers, start-up {r['start_s']:.2f} s, "
          f"median {r['median_batch_s']:.3f} s per batch of {r['programs_per_batch']} programs "
          f"(verdicts over {r['batches']} batches: {r['verdicts']})")
    if args.json:
        args.json.write_text(json.dumps(report, indent=1))
        print(f"figures written to {args.json}")


def _load(load: tuple[float, float, float]) -> str:
    return "/".join(f"{x:.2f}" for x in load)


if __name__ == "__main__":
    main()
