"""Reproduce the CPU learning proof: the demo config for several seeds, reward and validation pass rate per iteration.

    python scripts/learning_curve.py --seeds 0 1 2 --out outputs/learning_curve

Each seed runs `lit-codegen fit --config configs/demo_cpu.yaml --seed_everything S` (warm start included) in its own
folder, then this script reads `metrics.csv`, prints the first and last `val/pass_rate` and the wall time, writes
`summary.json` and a PNG with the training reward and the validation pass rate per PPO iteration.
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
    reward = read_series(metrics, "critic/score/mean")
    return {"seed": seed, "wall_s": wall, "val_first": val[0][1], "val_last": val[-1][1],
            "val_gain": val[-1][1] - val[0][1], "val": val, "reward": reward}


def plot(runs: list[dict], path: Path) -> None:
    """Reward (left) and validation pass rate (right) per PPO iteration, one line per seed."""
    fig, (ax_r, ax_v) = plt.subplots(1, 2, figsize=(11, 4))
    for run in runs:
        steps, values = zip(*run["reward"])
        ax_r.plot(steps, values, alpha=0.8, label=f"seed {run['seed']}")
        steps, values = zip(*run["val"])
        ax_v.plot(steps, values, marker="o", label=f"seed {run['seed']} (+{run['val_gain']:.2f})")
    ax_r.set(title="training reward (mean pass rate of sampled programs)", xlabel="PPO iteration", ylim=(0, 1))
    ax_v.set(title="validation pass rate (greedy)", xlabel="PPO iteration", ylim=(0, 1))
    for ax in (ax_r, ax_v):
        ax.grid(alpha=0.3)
        ax.legend()
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
    args, extra = parser.parse_known_args()
    # the runs start in the repository root; relative paths mean the caller's folder
    args.out, args.config = args.out.resolve(), str(Path(args.config).resolve())
    args.out.mkdir(parents=True, exist_ok=True)
    runs = [run_seed(seed, args.out, args.config, extra) for seed in args.seeds]
    for run in runs:
        print(f"seed {run['seed']}: val/pass_rate {run['val_first']:.3f} -> {run['val_last']:.3f} "
              f"({run['val_gain']:+.3f}) in {run['wall_s'] / 60:.1f} min")
    (args.out / "summary.json").write_text(json.dumps(runs, indent=1))
    plot(runs, args.png or args.out / "learning_curve.png")


if __name__ == "__main__":
    main()
