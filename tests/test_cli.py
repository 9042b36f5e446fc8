"""The `lit-codegen` CLI: every YAML parses, the demo trains end to end, checkpoints validate and export."""

import csv
import json
import math
import re
from pathlib import Path

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from helpers import run_cli, tiny_demo_config
from lit_codegen.cli import main
from lit_codegen.data.prompts import extract_program
from lit_codegen.models.critic import CriticModel
from lit_codegen.reward import VERDICTS

ROOT = Path(__file__).resolve().parents[1]
CONFIGS = sorted((ROOT / "configs").glob("*.yaml"))


@pytest.mark.parametrize("config", CONFIGS, ids=[c.name for c in CONFIGS])
def test_every_config_parses(config, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["fit", "--config", str(config), "--print_config"])
    assert exit_info.value.code == 0
    printed = capsys.readouterr().out
    assert "class_path" in printed and "trainer:" in printed


def test_wrong_config_key_is_one_clear_error(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["fit", "--config", str(ROOT / "configs/demo_cpu.yaml"), "--model.init_args.algorithm.ppo_epochz", "2"])
    assert exit_info.value.code != 0
    assert "ppo_epochz" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exit_info:  # a prefix of a real flag is refused, not guessed
        main(["fit", "--config", str(ROOT / "configs/demo_cpu.yaml"), "--trainer.max_step", "2", "--print_config"])
    assert exit_info.value.code == 2 and "--trainer.max_step" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exit_info:  # a reward setting the evaluator would refuse, refused at parse time
        main(["fit", "--config", str(ROOT / "configs/demo_cpu.yaml"), "--model.init_args.reward.timeout", "0",
              "--model.init_args.warm_start_steps", "0", "--trainer.max_steps", "0"])  # (--print_config exits first)
    assert exit_info.value.code == 2 and "--model.reward.timeout must be" in capsys.readouterr().err


@pytest.mark.parametrize("args, message", [
    (["--data.init_args.train_batch_size", "0"], "--data.train_batch_size must be a whole number >= 1, got 0"),
    (["--model.init_args.dtype", "bfloat61"], "bfloat61"),
    (["--model.init_args.reward.no_code_penalty", "-0.1"], "no_code_penalty needs the chat template"),  # base
    (["--trainer.strategy", "lightning.pytorch.strategies.ModelParallelStrategy", "--trainer.devices", "2",
      "--trainer.strategy.init_args.data_parallel_size", "4", "--trainer.strategy.init_args.tensor_parallel_size", "1"],
     "data_parallel_size 4 x tensor_parallel_size 1 must equal trainer.devices 2 x trainer.num_nodes 1"),
])
def test_settings_that_would_fail_inside_the_run_are_one_parse_error(args, message, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["fit", "--config", str(ROOT / "configs/demo_cpu.yaml"), "--model.init_args.warm_start_steps", "0",
              "--trainer.max_steps", "0", *args])
    assert exit_info.value.code == 2 and message in capsys.readouterr().err


def read_metrics(root: Path) -> list[dict]:
    files = list(root.rglob("metrics.csv"))
    assert len(files) == 1, files
    with open(files[0]) as f:
        return list(csv.DictReader(f))


@pytest.fixture(scope="module")
def demo_run(tmp_path_factory):
    root = tmp_path_factory.mktemp("demo")
    config = tiny_demo_config(root / "demo.yaml", checkpoint_every=1)
    out = run_cli("fit", "--config", str(config), "--trainer.default_root_dir", str(root), "--trainer.max_steps", "2",
                  cwd=root)
    (root / "stderr.txt").write_text(out.stderr)
    return root


def test_demo_fit_logs_metrics_and_checkpoints(demo_run):
    rows = read_metrics(demo_run)
    logged = {k for r in rows for k, v in r.items() if v}
    for key in ["critic/score/mean", "actor/pg_loss", "actor/pg_clipfrac", "actor/ppo_kl", "actor/entropy",
                "critic/vf_loss", "critic/vf_clipfrac", "critic/vf_explained_var", "response_length/mean",
                "response_length/clip_ratio", "timing_s/gen", "timing_s/reward", "timing_s/old_log_prob",
                "timing_s/values", "timing_s/update_actor", "timing_s/update_critic", "timing_s/step",
                "perf/throughput", "val/pass_rate", "val/strict_accuracy", "val/train_pass_rate"]:
        assert key in logged, f"{key} not logged"
    for row in rows:  # values, not just keys: finite, and the bounded ones in their range
        for key, value in row.items():
            if value:
                assert math.isfinite(float(value)), (key, value)
        for key in ("critic/score/mean", "actor/pg_clipfrac", "critic/vf_clipfrac", "val/pass_rate",
                    "response_length/clip_ratio"):
            if row.get(key):
                assert 0.0 <= float(row[key]) <= 1.0, (key, row[key])
        if row.get("response_length/mean"):
            assert 1.0 <= float(row["response_length/mean"]) <= 16.0  # tiny_demo_config: 16 new tokens at most
    for prefix in ("train", "val"):  # why programs fail: fractions of all tests run, one per verdict
        verdicts = [r for r in rows if r.get(f"{prefix}/verdict/passed")]
        assert verdicts, f"{prefix}/verdict/* not logged"
        for row in verdicts:
            fractions = [float(row[f"{prefix}/verdict/{v}"]) for v in VERDICTS]
            assert sum(fractions) == pytest.approx(1.0) and all(0 <= f <= 1 for f in fractions)
        assert float(verdicts[-1][f"{prefix}/verdict/passed"]) < 1  # the warm-started tiny model fails some tests
    assert any(r.get("train/no_code_ratio") for r in rows) and any(r.get("val/truncated_ratio") for r in rows)
    val_steps = sorted({int(r["step"]) for r in rows if r.get("val/pass_rate")})
    assert val_steps == [0, 2]  # before training and after the last (2nd) PPO iteration
    assert (demo_run / "checkpoints" / "last.ckpt").exists()
    (saved,) = demo_run.rglob("config.yaml")  # the resolved config beside the metrics ...
    assert "save_dir: ${trainer.default_root_dir}" in saved.read_text()  # ... with the run folder left a placeholder


def test_demo_fit_prints_no_checkpoint_warning_that_does_not_apply(demo_run):
    # Lightning warns at every periodic save under manual optimization that the checkpoint holds the weights after
    # optimizer.step(), with a code sample to save them before: after the step is what exact resume needs
    stderr = (demo_run / "stderr.txt").read_text()
    assert "Trainer.fit" in stderr  # the run's own output is there (Lightning's "`Trainer.fit` stopped")
    assert "Using ModelCheckpoint with manual optimization" not in stderr


def test_demo_fit_writes_training_sample_tables(demo_run):
    """tiny_demo_config logs 8 training rollouts after every iteration: real rows of that iteration's rollouts."""
    (path,) = demo_run.rglob("train_samples.jsonl")
    rows = [json.loads(line) for line in path.read_text().splitlines()]
    assert [r["iteration"] for r in rows] == [1] * 8 + [2] * 8
    for row in rows:
        assert row["program"] == extract_program(row["response"]) and row["prompt"]
        assert 1 <= len(row["outcomes"]) <= 4 and set(row["outcomes"]) <= set(VERDICTS)  # max_tests 4
        assert row["pass_rate"] == row["outcomes"].count("passed") / len(row["outcomes"])
        assert row["reward"] == pytest.approx(row["pass_rate"])  # no shaping in the demo


def test_validate_subcommand_on_the_demo_checkpoint(demo_run, tmp_path):
    # the config switches Lightning's validation loop off for fit (limit_val_batches: 0); validate turns it on.
    # The run's saved config.yaml is reused with another root: the logs go there, not into the first run's folder.
    (saved,) = demo_run.rglob("config.yaml")
    out = run_cli("validate", "--config", str(saved), "--trainer.default_root_dir", str(tmp_path),
                  "--ckpt_path", str(demo_run / "checkpoints" / "last.ckpt"), cwd=demo_run)
    assert re.search(r"val/pass_rate/introductory", out.stdout), out.stdout[-3000:]
    (row,) = [r for r in read_metrics(tmp_path) if r.get("val/pass_rate")]
    assert int(float(row["step"])) == 2  # logged at the checkpoint's PPO iteration
    fit_rows = [r for r in read_metrics(demo_run) if r.get("val/pass_rate") and int(r["step"]) == 2]
    assert float(row["val/pass_rate"]) == pytest.approx(float(fit_rows[0]["val/pass_rate"]))


def test_validation_schedule_and_conflicting_settings_from_the_command_line(capsys):
    config = str(ROOT / "configs/demo_cpu.yaml")
    with pytest.raises(SystemExit) as exit_info:
        main(["fit", "--config", config, "--validation.every_n_iterations", "3", "--print_config"])
    assert exit_info.value.code == 0 and "every_n_iterations: 3" in capsys.readouterr().out
    with pytest.raises(SystemExit) as exit_info:
        main(["fit", "--config", config, "--model.init_args.algorithm.adv_estimator", "grpo",
              "--model.init_args.rollout.n", "1"])
    assert exit_info.value.code == 2
    assert "error: --model.algorithm.adv_estimator grpo needs --model.rollout.n >= 2" in capsys.readouterr().err


def test_export_reloads_and_generates_like_the_checkpoint(demo_run, tmp_path):
    from lit_codegen.export import export_checkpoint, load_checkpoint

    ckpt = demo_run / "checkpoints" / "last.ckpt"
    out = export_checkpoint(ckpt, tmp_path / "hf", critic=True)
    model = AutoModelForCausalLM.from_pretrained(out)
    tok = AutoTokenizer.from_pretrained(out)
    state = load_checkpoint(ckpt)["state_dict"]
    for name, param in model.state_dict().items():
        assert torch.equal(param, state[f"actor.{name}"]), name
    ids = tok("QUESTION:\nRead an integer n and print n + 1.\n", return_tensors="pt")
    greedy = model.generate(**ids, max_new_tokens=8, do_sample=False, pad_token_id=tok.pad_token_id)
    assert greedy.shape[1] > ids["input_ids"].shape[1]
    critic = CriticModel.from_pretrained(str(out / "critic"))
    for name, param in critic.state_dict().items():
        assert torch.equal(param, state[f"critic.{name}"]), name


def test_validate_with_ckpt_path_last_and_no_checkpoint_is_an_error(tmp_path, capsys):
    """Lightning would warn and score the untrained model as if it were the run's."""
    with pytest.raises(SystemExit) as exit_info:
        main(["validate", "--config", str(ROOT / "configs/demo_cpu.yaml"), "--trainer.default_root_dir",
              str(tmp_path), "--model.init_args.warm_start_steps", "0", "--ckpt_path", "last"])
    assert exit_info.value.code == 2
    assert f"no last checkpoint in {tmp_path / 'checkpoints'}" in capsys.readouterr().err
