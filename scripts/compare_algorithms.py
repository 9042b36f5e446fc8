"""The algorithm table of docs/training.md: the CPU demo trained with each recipe, same budget, several seeds.

    python scripts/compare_algorithms.py --seeds 0 1 2 --out outputs/algorithms
    python scripts/compare_algorithms.py --seeds 0 --only grpo dapo --max_steps 10     # a quick look

Every run is `lit-codegen fit --config configs/demo_cpu.yaml` (same warm start, prompts, rollouts per iteration and
PPO iterations) with the recipe's settings below on top, through `scripts/learning_curve.run_seed`. Prints and writes
(`table.md`, `summary.json`) the held-out `val/pass_rate` before and after training per seed, and their mean.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from learning_curve import run_seed  # noqa: E402

A = "--model.init_args.algorithm."
RECIPES: dict[str, list[str]] = {
    "GAE-PPO": [],  # the demo's own settings
    "GRPO": [f"{A}adv_estimator", "grpo", f"{A}loss_agg", "seq-mean"],
    "Dr. GRPO": [f"{A}adv_estimator", "grpo", f"{A}grpo_norm_by_std", "false", f"{A}loss_agg",
                 "seq-mean-token-sum-norm"],
    "DAPO": [f"{A}adv_estimator", "grpo", f"{A}clip_ratio_high", "0.28", f"{A}loss_agg", "token-mean",
             f"{A}filter_groups", "true", "--model.init_args.reward.overlong_buffer_len", "8"],
    "GSPO": [f"{A}adv_estimator", "grpo", f"{A}policy_ratio", "sequence", f"{A}clip_ratio_low", "3e-4",
             f"{A}clip_ratio_high", "4e-4", f"{A}loss_agg", "seq-mean"],
    "REINFORCE++": [f"{A}adv_estimator", "reinforce_plus_plus"],
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--out", type=Path, default=Path("outputs/algorithms"))
    parser.add_argument("--only", nargs="+", default=None, help="recipe names, lower case, e.g. grpo dapo")
    parser.add_argument("--max_steps", type=int, default=None, help="PPO iterations (default: the demo's)")
    parser.add_argument("--config", default="configs/demo_cpu.yaml")
    args = parser.parse_args()
    names = [n for n in RECIPES if args.only is None or n.lower() in args.only]
    extra = [] if args.max_steps is None else ["--trainer.max_steps", str(args.max_steps)]
    summary = {}
    for name in names:
        slug = name.lower().replace(" ", "").replace(".", "").replace("+", "p")
        runs = [run_seed(seed, args.out / slug, args.config, RECIPES[name] + extra) for seed in args.seeds]
        summary[name] = [{k: r[k] for k in ("seed", "val_first", "val_last", "wall_s")} for r in runs]
        print(name, summary[name], flush=True)
    rows = ["| recipe | held-out pass rate after (per seed) | mean | before (per seed) | wall time per run |",
            "|---|---|---|---|---|"]
    for name, runs in summary.items():
        last, first = [r["val_last"] for r in runs], [r["val_first"] for r in runs]
        wall = statistics.mean(r["wall_s"] for r in runs) / 60
        rows.append(f"| {name} | {' / '.join(f'{v:.3f}' for v in last)} | {statistics.mean(last):.3f} | "
                    f"{' / '.join(f'{v:.3f}' for v in first)} | {wall:.1f} min |")
    table = "\n".join(rows)
    print(table)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "table.md").write_text(table + "\n")
    (args.out / "summary.json").write_text(json.dumps(summary, indent=1))


if __name__ == "__main__":
    main()
