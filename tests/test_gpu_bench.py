"""The GPU benchmarks' arithmetic (known answers) and their CPU smoke runs (the scripts run end to end)."""

import json
import subprocess
import sys
from pathlib import Path

import torch
from transformers import Qwen2Config

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "scripts" / "bench"))

import gpu_ppo  # noqa: E402


def test_multiply_adds_per_sequence_of_qwen25_05b():
    config = Qwen2Config(**gpu_ppo.QWEN25_05B)
    # by hand: layer = 2*896*896 + 2*896*128 + 3*896*4864 = 14,909,440; x 24 layers = 357,826,560
    assert gpu_ppo.matmul_params(config) == {"layer": 14_909_440, "layers": 357_826_560, "lm_head": 136_134_656}
    # T = 512: 512 x (357,826,560 + 24 x 896 x 512) = 188,844,343,296 in the decoder (causal attention included)
    decoder = 188_844_343_296
    assert gpu_ppo.sequence_macs(config, 256, 256, "response") == decoder + 256 * 136_134_656
    assert gpu_ppo.sequence_macs(config, 256, 256, "value") == decoder + 512 * 896
    assert gpu_ppo.sequence_macs(config, 256, 256, "all") == decoder + 512 * 136_134_656


def test_mfu_of_a_known_iteration():
    config = Qwen2Config(**gpu_ppo.QWEN25_05B)
    args = gpu_ppo.BenchArgs(prompts=2, prompt_len=256, new_tokens=256, warmup=0, iterations=1)
    actor = gpu_ppo.sequence_macs(config, 256, 256, "response")
    critic = gpu_ppo.sequence_macs(config, 256, 256, "value")
    train_s = 2 * 6 * (actor + critic) / 989e12 / 0.5  # a training phase at exactly 50% of the peak
    record = {"timing_s/gen": 1.0, "timing_s/update_critic": train_s / 2, "timing_s/update_actor": train_s / 2,
              "wall_s": 2.0}
    summary = gpu_ppo.summarize([record], args, config, 989.0)
    assert abs(summary["mfu_training"] - 0.5) < 1e-9
    assert summary["training_tokens_per_s"] == 2 * 512 / train_s


def test_gpu_ppo_smoke_runs_on_cpu(tmp_path):
    out = tmp_path / "smoke.json"
    proc = subprocess.run([sys.executable, str(ROOT / "scripts" / "bench" / "gpu_ppo.py"), "--smoke", "--json",
                           str(out)], cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    report = json.loads(out.read_text())
    assert len(report["iterations"]) == 1 and report["summary"]["training_tokens_per_s"] > 0
    assert report["workload"]["compile"] is False and "training:" in proc.stdout


def test_ragged_mfu_counts_useful_tokens_only():
    """Two rows of (prompt, response) = (256, 256) and (100, 50): FLOPs and tokens of those lengths, not the padding."""
    config = Qwen2Config(**gpu_ppo.QWEN25_05B)
    args = gpu_ppo.BenchArgs(prompts=2, warmup=0, iterations=1, ragged=True)
    lengths = [(256, 256), (100, 50)]
    macs = sum(gpu_ppo.sequence_macs(config, p, r, head) for p, r in lengths for head in ("response", "value"))
    train_s = 6 * macs / 989e12 / 0.25  # at exactly 25% of the peak
    record = {"timing_s/gen": 0.0, "timing_s/update_critic": train_s, "timing_s/update_actor": 0.0, "wall_s": 1.0}
    summary = gpu_ppo.summarize([record], args, config, 989.0, lengths)
    assert abs(summary["mfu_training"] - 0.25) < 1e-9
    assert summary["useful_tokens"] == 662 and summary["training_tokens_per_s"] == 662 / train_s
    assert summary["generation_tokens_per_s"] is None


def test_ragged_rollout_lengths_are_long_tailed_and_end_with_eos():
    roll = gpu_ppo.ragged_rollout(256, 64, 1024, vocab=300, low=3, eos=2, pad=0)
    lengths = roll.response_mask.sum(-1)
    assert lengths.min() >= 16 and lengths.max() <= 1024 and lengths.float().mean() > lengths.median()  # right tail
    prompts = roll.prompt_mask.sum(-1)
    assert prompts.min() >= 16 and prompts.max() <= 64 and (roll.prompt_mask[:, -1] == 1).all()  # left-padded
    ends = roll.response_ids[torch.arange(256), lengths - 1]
    assert ((ends == 2) | roll.truncated).all() and (roll.truncated == (lengths == 1024)).all()
