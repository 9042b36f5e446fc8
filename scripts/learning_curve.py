"""Reproduce the CPU learning proof: the demo config for several seeds, held-out and training pass rate per iteration.

    python scripts/learning_curve.py --seeds 0 1 2 --out outputs/learning_curve
    python scripts/learning_curve.py --seeds 0 1 2 --baseline outputs/sft_baseline/summary.json   # add the baseline

Each seed runs `lit-codegen fit --config configs/demo_cpu.yaml --seed_everything S` (warm start included) in its own
folder, then this script reads `metrics.csv`, prints the first and last held-out `val/pass_rate`, the training-problem
`val/train_pass_rate` and the wall time, writes `summary.json` and a PNG: the training reward, the held-out pass rate
and the training-problem pass rate per PPO iteration (with `--baseline`, the SFT-only baseline of
`scripts/sft_baseline.py` on the held-out panel, at the same compute per point).
"""

from __future__ import annotations

import argparse
import csv
import json
import subprocess
import sys
import time
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]


def read_series(metrics_csv: Path, key: str) -> list[tuple[int, float]]:
    """(step, value) pairs of one metric from a Lightning CSV log."""
    with open(metrics_csv) as f:
        return [(int(r["step"]), float(r[key])) for r in csv.DictReader(f) if r.get(key)]


def run_seed(seed: int, out: Path, config: str, extra: list[str]) -> dict:
    """Train one seed; return its curve and summary."""
    root = out / f"seed{seed}"
    cmd = [sys.executable, "-m", "lit_codegen.cli", "fit", "--config", config, "--seed_everything", str(seed),
           "--trainer.default_root_dir", str(root), *extra]
    earlier = set(root.rglob("metrics.csv"))  # a reused --out keeps older runs' logs (version_0, version_1, ...)
    start = time.perf_counter()
    subprocess.run(cmd, check=True, cwd=ROOT)
    wall = time.perf_counter() - start
    (metrics,) = set(root.rglob("metrics.csv")) - earlier  # this run's log, whatever order the folders list in
    val = read_series(metrics, "val/pass_rate")
    train = read_series(metrics, "val/train_pass_rate")
    reward = read_series(metrics, "critic/score/mean")
    return {"seed": seed, "wall_s": wall, "val_first": val[0][1], "val_last": val[-1][1],
            "val_gain": val[-1][1] - val[0][1], "train_first": train[0][1] if train else None,
            "train_last": train[-1][1] if train else None, "val": val, "train": train, "reward": reward}


def plot(runs: list[dict], path: Path, baseline: list[dict] | None = None) -> None:
    """Reward, held-out pass rate and training-problem pass rate per PPO iteration, one line per seed.

    `baseline` (the runs of `scripts/sft_baseline.py`) adds dashed SFT-only lines to the held-out panel, placed at
    the PPO iteration with the same number of trained sequences.
    """
    fig, (ax_r, ax_v, ax_t) = plt.subplots(1, 3, figsize=(16, 4.2))
    for run in runs:
        steps, values = zip(*run["reward"])
        ax_r.plot(steps, values, alpha=0.8, label=f"seed {run['seed']}")
        steps, values = zip(*run["val"])
        line = ax_v.plot(steps, values, marker="o", label=f"PPO seed {run['seed']} ({run['val_gain']:+.2f})")[0]
        if run["train"]:
            steps, values = zip(*run["train"])
            ax_t.plot(steps, values, marker="o", color=line.get_color(), label=f"PPO seed {run['seed']}")
    for run in baseline or []:
        steps, values = zip(*run["held_out"])
        ax_v.plot(steps, values, marker="x", linestyle="--", color="0.35", label=f"SFT only, seed {run['seed']}")
        steps, values = zip(*run["train"])
        ax_t.plot(steps, values, marker="x", linestyle="--", color="0.35", label=f"SFT only, seed {run['seed']}")
    ax_r.set(title="training reward (sampled programs)", xlabel="PPO iteration", ylim=(0, 1.02))
    ax_v.set(title="HELD-OUT problems: val/pass_rate (greedy)", xlabel="PPO iteration", ylim=(0, 1.02))
    ax_t.set(title="training problems: val/train_pass_rate (greedy)", xlabel="PPO iteration", ylim=(0, 1.02))
    for ax in (ax_r, ax_v, ax_t):
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main() -> None:
    """Run the seeds, print the table, write summary.json and the PNG."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--out", type=Path, default=ROOT / "outputs" / "learning_curve")
    parser.add_argument("--config", default=str(ROOT / "configs" / "demo_cpu.yaml"))
    parser.add_argument("--png", type=Path, default=None,
                        help="where to write the plot (default OUT/learning_curve.png)")
    parser.add_argument("--baseline", type=Path, default=None,
                        help="summary.json of scripts/sft_baseline.py, drawn beside the PPO curves")
    parser.add_argument("--plot_only", action="store_true", help="re-plot OUT/summary.json without training")
    args, extra = parser.parse_known_args()
    # the runs start in the repository root; relative paths mean the caller's folder
    args.out, args.config = args.out.resolve(), str(Path(args.config).resolve())
    args.out.mkdir(parents=True, exist_ok=True)
    if args.plot_only:
        runs = json.loads((args.out / "summary.json").read_text())
    else:
        runs = [run_seed(seed, args.out, args.config, extra) for seed in args.seeds]
    for run in runs:
        train = f"{run['train_first']:.3f} -> {run['train_last']:.3f}" if run["train"] else "-"
        print(f"seed {run['seed']}: held-out val/pass_rate {run['val_first']:.3f} -> {run['val_last']:.3f} "
              f"({run['val_gain']:+.3f}), val/train_pass_rate {train}, {run['wall_s'] / 60:.1f} min")
    (args.out / "summary.json").write_text(json.dumps(runs, indent=1))
    baseline = json.loads(args.baseline.read_text()) if args.baseline else None
    plot(runs, args.png or args.out / "learning_curve.png", baseline)


if __name__ == "__main__":
    main()
