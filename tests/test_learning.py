"""It learns: the CPU demo (SFT warm start + PPO on the toy problems), cut to 10 iterations, raises reward and val.

The full proof (3 seeds, 30 iterations, +0.25 validation pass rate) is `scripts/learning_curve.py`.
"""

import csv

from helpers import ROOT, run_cli


def test_demo_raises_reward_and_validation_pass_rate(tmp_path):
    run_cli("fit", "--config", str(ROOT / "configs" / "demo_cpu.yaml"), "--seed_everything", "0",
            "--trainer.default_root_dir", str(tmp_path), "--trainer.max_steps", "10", cwd=tmp_path, timeout=900)
    rows = [r for path in tmp_path.rglob("metrics.csv") for r in csv.DictReader(open(path))]
    reward = [float(r["critic/score/mean"]) for r in rows if r.get("critic/score/mean")]
    val = {int(r["step"]): float(r["val/pass_rate"]) for r in rows if r.get("val/pass_rate")}
    assert len(reward) == 10 and sorted(val) == [0, 5, 10]
    first, last = sum(reward[:3]) / 3, sum(reward[-3:]) / 3
    assert last > first + 0.05, f"reward did not rise: {reward}"
    assert val[10] >= val[0] + 0.1, f"validation pass rate did not rise: {val}"
