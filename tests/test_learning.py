"""It learns what carries over: the CPU demo, cut short, raises the pass rate on HELD-OUT problems.

The demo (`configs/demo_cpu.yaml`) trains PPO on the procedural task's training problems and validates on its held-out
problems, new (operation, constant) combinations (`lit_codegen.data.procedural`). Here PPO runs 15 of the demo's 30
iterations and scores 40 training problems instead of 120: about a minute on 2 CPU cores. The full proof (3 seeds,
held-out and training curves, the SFT-only baseline) is `scripts/learning_curve.py`.
"""

import csv

import pytest

from helpers import ROOT, run_cli


@pytest.mark.timeout(600)
def test_demo_raises_the_held_out_pass_rate(tmp_path):
    run_cli("fit", "--config", str(ROOT / "configs" / "demo_cpu.yaml"), "--seed_everything", "0",
            "--trainer.default_root_dir", str(tmp_path), "--trainer.max_steps", "15",
            "--validation.train_problems", "40", cwd=tmp_path,
            timeout=540)
    rows = [r for path in tmp_path.rglob("metrics.csv") for r in csv.DictReader(open(path))]
    held_out = {int(r["step"]): float(r["val/pass_rate"]) for r in rows if r.get("val/pass_rate")}
    train = {int(r["step"]): float(r["val/train_pass_rate"]) for r in rows if r.get("val/train_pass_rate")}
    reward = [float(r["critic/score/mean"]) for r in rows if r.get("critic/score/mean")]
    assert sorted(held_out) == sorted(train) == [0, 5, 10, 15] and len(reward) == 15
    assert held_out[15] >= held_out[0] + 0.15, f"held-out pass rate did not rise: {held_out}"
    assert train[15] > train[0], f"training-problem pass rate did not rise: {train}"
    assert sum(reward[-3:]) / 3 > sum(reward[:3]) / 3 + 0.05, f"reward did not rise: {reward}"
