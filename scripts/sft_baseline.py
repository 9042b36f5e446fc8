"""The SFT-only baseline of the CPU learning proof: PPO's compute spent on more SFT steps instead.

    python scripts/sft_baseline.py --seeds 0 1 2 --out outputs/sft_baseline

Starts from the demo's warm start (the same cached model PPO starts from: `configs/demo_cpu.yaml`'s
`warm_start_steps` / `warm_start_lr` on the SFT part of the training problems) and keeps fine-tuning on the same
(prompt, solution) pairs with AdamW at a constant `--lr` (default: the demo's actor lr, which is also where the warm
start's cosine schedule ends). Compute is matched by trained sequences: one PPO iteration trains the actor on
`train_batch_size x rollout.n x ppo_epochs` sequences (256 in the demo), i.e. that many / `--batch_size` SFT steps
(16). That is generous to SFT: PPO also generates, scores and trains a critic. Every `validation.every_n_iterations`
PPO iterations' worth of steps the script scores the held-out problems and the first `validation.train_problems`
training problems greedily, exactly as `PassRateValidation` does, and writes `summary.json` (the curves, x = the PPO
iteration of equal compute) for `scripts/learning_curve.py --baseline`.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch
import yaml

from lit_codegen.data.datamodule import AppsDataModule, SFTDataModule
from lit_codegen.data.prompts import extract_program
from lit_codegen.metrics import PassRateMetrics
from lit_codegen.models.loading import load_tokenizer, resolve_model_path
from lit_codegen.reward import Evaluator
from lit_codegen.rollout import HFRollout, SamplingParams
from lit_codegen.sft import SFTModule, sft_warm_start

ROOT = Path(__file__).resolve().parents[1]


def pass_rate(model, tokenizer, loader, evaluator: Evaluator, max_new_tokens: int) -> float:
    """Greedy pass rate of `model` on every prompt of `loader` (an `AppsDataModule` loader), as validation scores it."""
    engine, metrics = HFRollout(model, tokenizer), PassRateMetrics()
    model.eval()
    with torch.no_grad():
        for batch in loader:
            roll = engine.generate(batch["input_ids"], batch["attention_mask"],
                                   SamplingParams(max_new_tokens=max_new_tokens, greedy=True))
            tests = [batch["input_output"][i] for i in roll.prompt_index.tolist()]
            results = evaluator.evaluate([extract_program(t) for t in roll.texts], tests)
            metrics.update(results, [batch["difficulty"][i] for i in roll.prompt_index.tolist()])
    model.train()
    return metrics.compute()["val/pass_rate"]


def run_seed(config: dict, seed: int, lr: float, batch_size: int) -> dict:
    """Continue SFT from the demo's warm start for the PPO run's compute; held-out and train curves per iteration."""
    model_cfg, data_cfg = config["model"]["init_args"], config["data"]["init_args"]
    val_cfg, algo, rollout = config["validation"], model_cfg["algorithm"], model_cfg["rollout"]
    template, task = data_cfg["template_type"], data_cfg["builtin_task"]
    warm = sft_warm_start(resolve_model_path(model_cfg["model"]), template_type=template, builtin_task=task,
                          steps=model_cfg["warm_start_steps"], lr=model_cfg["warm_start_lr"])
    per_iteration = data_cfg["train_batch_size"] * rollout["n"] * algo["ppo_epochs"] // batch_size
    every, iterations = val_cfg["every_n_iterations"], config["trainer"]["max_steps"]
    torch.manual_seed(seed)
    tokenizer = load_tokenizer(str(warm))
    module = SFTModule(str(warm))
    module.configure_model()
    model = module.model.train()
    sft = SFTDataModule(template_type=template, builtin_task=task, batch_size=batch_size, seed=seed)
    prompts = AppsDataModule(template_type=template, builtin_task=task, val_batch_size=data_cfg["val_batch_size"])
    for data in (sft, prompts):
        data.connect(tokenizer)
        data.setup("fit")
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.0)
    curve = {"held_out": [], "train": []}
    start, step = time.perf_counter(), 0
    batches = iter(())
    with Evaluator(workers=2) as evaluator:
        for iteration in range(0, iterations + 1, every):
            while step < iteration * per_iteration:
                batch = next(batches, None)
                if batch is None:  # a new shuffled pass over the SFT pairs
                    batches = iter(sft.train_dataloader())
                    continue
                loss = module.loss(batch)
                loss.backward()
                torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
                optimizer.step()
                optimizer.zero_grad(set_to_none=True)
                step += 1
            for name, loader in (("held_out", prompts.val_dataloader()),
                                 ("train", prompts.train_eval_dataloader(val_cfg["train_problems"]))):
                curve[name].append((iteration, pass_rate(model, tokenizer, loader, evaluator,
                                                         rollout["max_new_tokens"])))
            print(f"seed {seed} SFT step {step} (= PPO iteration {iteration}): held-out "
                  f"{curve['held_out'][-1][1]:.3f}, train {curve['train'][-1][1]:.3f}", flush=True)
    return {"seed": seed, "lr": lr, "sft_steps_per_ppo_iteration": per_iteration, "sft_steps": step,
            "wall_s": time.perf_counter() - start, **curve}


def main() -> None:
    """Run the baseline for each seed, print the curves' ends and write summary.json."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--config", type=Path, default=ROOT / "configs" / "demo_cpu.yaml")
    parser.add_argument("--lr", type=float, default=None, help="constant SFT learning rate (default: the actor lr)")
    parser.add_argument("--batch_size", type=int, default=16, help="pairs per SFT step (the warm start's)")
    parser.add_argument("--out", type=Path, default=ROOT / "outputs" / "sft_baseline")
    args = parser.parse_args()
    config = yaml.safe_load(args.config.read_text())
    lr = args.lr if args.lr is not None else config["model"]["init_args"]["optim"]["actor_lr"]
    torch.set_num_threads(min(2, torch.get_num_threads()))
    runs = [run_seed(config, seed, lr, args.batch_size) for seed in args.seeds]
    for run in runs:
        print(f"seed {run['seed']}: held-out {run['held_out'][0][1]:.3f} -> {run['held_out'][-1][1]:.3f}, "
              f"train {run['train'][0][1]:.3f} -> {run['train'][-1][1]:.3f} after {run['sft_steps']} SFT steps "
              f"(lr {run['lr']:g}), {run['wall_s'] / 60:.1f} min")
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "summary.json").write_text(json.dumps(runs, indent=1))


if __name__ == "__main__":
    main()
