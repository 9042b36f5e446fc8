"""The Qwen2.5-3B APPS recipe and the seed's shell commands: the config parses with the seed's values, one PPO
iteration of it runs on CPU with the tiny model swapped in, the memory plan adds up, the GPU bench runs in smoke mode.
"""

import inspect
import json
import os
import subprocess
import sys
from pathlib import Path

import pyarrow.parquet as pq
import pytest
import torch
import yaml
from transformers import Qwen2Config, Qwen2ForCausalLM

ROOT = Path(__file__).resolve().parents[1]
RECIPE = ROOT / "configs" / "ppo_qwen2.5_3b_apps.yaml"
SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
sys.path.insert(0, str(ROOT / "scripts"))

import memory_plan  # noqa: E402


def script_env(tmp_path: Path) -> dict[str, str]:
    """Environment for the shell scripts: this interpreter's `python`/`lit-codegen` first, wandb offline."""
    bin_dir = str(Path(sys.executable).parent)
    return {**os.environ, "PATH": f"{bin_dir}:{os.environ['PATH']}", "WANDB_MODE": "offline",
            "WANDB_DIR": str(tmp_path), "WANDB_SILENT": "true"}


def run_script(script: str, *args: str, tmp_path: Path, timeout: int = 300) -> subprocess.CompletedProcess:
    out = subprocess.run(["bash", str(ROOT / "scripts" / script), *args], cwd=tmp_path, env=script_env(tmp_path),
                         capture_output=True, text=True, timeout=timeout)
    assert out.returncode == 0, f"{script} {' '.join(args)} failed:\n{out.stdout[-2000:]}\n{out.stderr[-4000:]}"
    return out


# ------------------------------------------------------------------------------------------------ the recipe
def test_training_script_prints_the_recipe_with_the_seed_values_and_overrides(tmp_path):
    out = run_script("train/code_generation.sh", "--model.init_args.rollout.n", "4", "--trainer.log_every_n_steps", "5",
                     "--print_config", tmp_path=tmp_path)
    printed = yaml.safe_load(out.stdout)
    trainer, model, data = printed["trainer"], printed["model"]["init_args"], printed["data"]["init_args"]
    assert model["rollout"]["n"] == 4 and trainer["log_every_n_steps"] == 5  # command-line overrides win
    assert model["model"] == "Qwen/Qwen2.5-3B-Instruct"
    assert (trainer["max_epochs"], trainer["max_steps"]) == (5, -1)
    assert (trainer["devices"], trainer["num_nodes"], trainer["precision"]) == (4, 1, "bf16-mixed")
    assert trainer["strategy"]["class_path"] == "lit_codegen.parallel.AtomicModelParallelStrategy"
    assert trainer["strategy"]["init_args"]["data_parallel_size"] == trainer["devices"] * trainer["num_nodes"]
    # train_batch_size is per rank: the seed's 64 prompts per iteration over 4 GPUs
    assert data["train_batch_size"] * trainer["devices"] * trainer["num_nodes"] == 64
    assert data["val_batch_size"] == 64 and data["template_type"] == "chat" and data["data_dir"] == "data/apps"
    assert (model["optim"]["actor_lr"], model["optim"]["critic_lr"]) == (1e-6, 1e-5)
    assert model["gradient_checkpointing"] is True and model["rollout"]["backend"] == "vllm"
    assert model["rollout"]["max_new_tokens"] == 1024 and model["reward"]["max_tests"] == 16
    logger = trainer["logger"]
    assert logger["class_path"].endswith("WandbLogger") and logger["init_args"]["project"] == "lit_codegen"
    assert printed["validation"]["every_n_iterations"] == 200
    callbacks = {c["class_path"].rsplit(".", 1)[-1]: c["init_args"] for c in trainer["callbacks"]}
    ckpt = callbacks["ModelCheckpoint"]
    assert (ckpt["monitor"], ckpt["mode"], ckpt["save_last"], ckpt["every_n_train_steps"]) == (
        "val/pass_rate", "max", True, 200)


def tiny_recipe_args(root: Path) -> list[str]:
    """The recipe with the tiny model, on one CPU, HF rollouts, the bundled toy problems and tiny batches."""
    return [
        "--trainer.default_root_dir", str(root), "--trainer.accelerator", "cpu", "--trainer.devices", "1",
        "--trainer.strategy", "auto", "--trainer.precision", "32-true",
        "--model.init_args.model", "tiny", "--model.init_args.rollout.backend", "hf",
        "--model.init_args.rollout.max_new_tokens", "8", "--model.init_args.algorithm.mini_batch_size", "2",
        "--model.init_args.algorithm.micro_batch_size", "2", "--model.init_args.reward.workers", "1",
        "--data.init_args.data_dir", "null", "--data.init_args.train_batch_size", "2",
        "--data.init_args.num_workers", "0",
    ]


def test_recipe_runs_and_resumes_with_the_tiny_model(tmp_path):
    root = tmp_path / "run"
    out = run_script("train/code_generation.sh", *tiny_recipe_args(root), "--trainer.max_steps", "1",
                     tmp_path=tmp_path)
    # PassRateValidation ran before training (iteration 0) and after the only iteration (1)
    assert "[validation @ iteration 0]" in out.stdout and "[validation @ iteration 1]" in out.stdout
    # the recipe's WandbLogger (offline) got the run and the validation sample tables
    runs = list((root / "wandb").glob("offline-run-*"))
    assert len(runs) == 1 and list(runs[0].rglob("samples_*.table.json"))
    assert (root / "config.yaml").exists()
    # ModelCheckpoint(save_last) wrote the state after one PPO iteration: actor, critic, both optimizers, no reference,
    # in the recipe's fixed checkpoint folder under default_root_dir
    last = root / "checkpoints" / "last.ckpt"
    ckpt = torch.load(last, map_location="cpu", weights_only=False)
    assert ckpt["global_step"] == 1 and ckpt["ppo_state"]["ppo_iteration"] == 1
    assert len(ckpt["optimizer_states"]) == 2
    assert {k.split(".", 1)[0] for k in ckpt["state_dict"]} == {"actor", "critic"}
    # `--ckpt_path last` finds it although the new wandb run has a new id, and training continues at iteration 2
    out = run_script("train/code_generation.sh", *tiny_recipe_args(root), "--trainer.max_steps", "2",
                     "--ckpt_path", "last", tmp_path=tmp_path)
    assert "[validation @ iteration 0]" not in out.stdout and "[validation @ iteration 2]" in out.stdout
    assert torch.load(last, map_location="cpu", weights_only=False)["ppo_state"]["ppo_iteration"] == 2


# ------------------------------------------------------------------------------------------------ other scripts
@pytest.mark.skipif(not (SHARED_DATA / "apps").is_dir(), reason=f"shared test data not found at {SHARED_DATA}")
def test_preprocess_then_evaluate_scripts_with_their_defaults(tmp_path):
    # preprocess_apps.sh writes data/apps (relative to the working directory), where evaluate.sh reads by default
    run_script("preprocess_apps.sh", "--source", str(SHARED_DATA / "apps" / "apps_coderl5.jsonl"),
               "--test_size", "0.4", tmp_path=tmp_path)
    train = pq.read_table(tmp_path / "data" / "apps" / "train.parquet").to_pylist()
    test = pq.read_table(tmp_path / "data" / "apps" / "test.parquet").to_pylist()
    assert sorted(r["problem_id"] for r in train + test) == [1, 111, 2287, 2404, 4184]
    assert {r["template_type"] for r in train + test} == {"chat"}
    assert all(r["prompt"][-1]["role"] == "user" for r in train + test)
    run_script("evaluate.sh", "--workers", "2", tmp_path=tmp_path)  # the test split's own reference solutions
    report = json.loads((tmp_path / "outputs" / "eval" / "report.json").read_text())
    assert sorted(r["problem_id"] for r in report["results"]) == sorted(r["problem_id"] for r in test)
    assert all(r["pass_rate"] == 1.0 and r["n_tests"] > 0 for r in report["results"])  # reference solutions pass


def test_shell_scripts_are_strict():
    for script in ["train/code_generation.sh", "preprocess_apps.sh", "evaluate.sh"]:
        text = (ROOT / "scripts" / script).read_text()
        assert "set -euo pipefail" in text and '"$@"' in text, script
        subprocess.run(["bash", "-n", str(ROOT / "scripts" / script)], check=True)


# ------------------------------------------------------------------------------------------------ memory plan
def qwen2_param_count(arch: memory_plan.Arch) -> int:
    """Parameters of a real transformers Qwen2 model with the architecture, built on the meta device."""
    config = Qwen2Config(hidden_size=arch.hidden, num_hidden_layers=arch.layers, num_attention_heads=arch.heads,
                         num_key_value_heads=arch.kv_heads, intermediate_size=arch.intermediate,
                         vocab_size=arch.vocab, tie_word_embeddings=arch.tied_embeddings)
    with torch.device("meta"):
        return sum(p.numel() for p in Qwen2ForCausalLM(config).parameters())


@pytest.mark.parametrize("arch, billions", [(memory_plan.QWEN25_3B, 3.09), (memory_plan.QWEN25_05B, 0.49)])
def test_memory_plan_counts_the_parameters_of_the_real_architecture(arch, billions):
    assert arch.actor_params() == qwen2_param_count(arch)
    assert round(arch.actor_params() / 1e9, 2) == billions  # the model cards' figures
    untied = memory_plan.Arch(**{**arch.__dict__, "tied_embeddings": False})
    assert untied.actor_params() == qwen2_param_count(untied)


def test_memory_plan_of_the_recipe_fits_80_gb(capsys):
    assert memory_plan.main(["--config", str(RECIPE)]) == 0
    printed = capsys.readouterr().out
    assert "| Actor AdamW moments |" in printed and "KV cache this batch needs" in printed
    config = yaml.safe_load(RECIPE.read_text())
    recipe = memory_plan.Recipe.from_config(config)
    assert (recipe.shards, recipe.micro_batch_size, recipe.rollout_sequences) == (4, 4, 16)
    assert recipe.uses_critic and recipe.uses_ref and recipe.gradient_checkpointing
    rows, totals = memory_plan.plan(recipe, memory_plan.QWEN25_3B)
    gib = {r.name: r.gib for r in rows}
    # 3.09 B fp32 parameters sharded over 4 GPUs: 2.87 GiB; AdamW's two moments twice that
    assert gib["Actor weights"] == pytest.approx(3.0859e9 * 4 / 4 / 2**30, rel=1e-3)
    assert gib["Actor AdamW moments"] == pytest.approx(2 * gib["Actor weights"])
    assert gib["vLLM engine (whole budget)"] == pytest.approx(0.4 * memory_plan.GPU_GIB)
    assert gib["  KV cache this batch needs"] < gib["  of which KV cache + activations"]
    assert gib["Actor activations (1 micro-batch)"] < gib["  (activations without checkpointing)"] / 10
    assert max(totals["generation"], totals["experience"], totals["training"]) < 0.9 * memory_plan.GPU_GIB
    # gradients live only in their own model's update (PPOModule frees them after every optimizer step)
    phases = {r.name: r.phases for r in rows}
    assert (phases["Actor gradients"], phases["Critic gradients"]) == ("a", "c")
    resident = sum(r.gib for r in rows if "g" in r.phases and "a" in r.phases)
    assert totals["training"] == pytest.approx(resident + gib["FSDP all-gather working set"] + gib["Actor gradients"]
                                               + gib["Actor activations (1 micro-batch)"]
                                               + gib["Actor LM head (fused, 1 block)"]
                                               + gib.get("Packed attention mask (SDPA)", 0.0))


def test_memory_plan_grows_with_the_micro_batch_and_shrinks_with_more_gpus():
    config = yaml.safe_load(RECIPE.read_text())
    base = memory_plan.plan(memory_plan.Recipe.from_config(config), memory_plan.QWEN25_3B)[1]
    memory_plan._apply_override(config, "model.init_args.algorithm.mini_batch_size=8")
    memory_plan._apply_override(config, "model.init_args.algorithm.micro_batch_size=8")
    memory_plan._apply_override(config, "model.init_args.algorithm.max_tokens_per_micro_batch=16384")
    assert memory_plan.plan(memory_plan.Recipe.from_config(config), memory_plan.QWEN25_3B)[1]["training"] > \
        base["training"]
    memory_plan._apply_override(config, "trainer.devices=8")
    memory_plan._apply_override(config, "trainer.strategy.init_args.data_parallel_size=8")
    eight = memory_plan.plan(memory_plan.Recipe.from_config(config), memory_plan.QWEN25_3B)[1]
    assert eight["generation"] < base["generation"]


def test_memory_plan_module_defaults_match_ppo_module():
    from lit_codegen.module import PPOModule

    params = inspect.signature(PPOModule.__init__).parameters
    assert {k: params[k].default for k in memory_plan.MODULE_DEFAULTS} == memory_plan.MODULE_DEFAULTS


def test_memory_plan_unknown_model_is_one_clear_error(tmp_path, capsys):
    config = tmp_path / "c.yaml"
    config.write_text(yaml.safe_dump({"model": {"init_args": {"model": "some/other-model"}}}))
    assert memory_plan.main(["--config", str(config)]) == 2
    assert "--model_config" in capsys.readouterr().err


def run_memory_plan(capsys, *overrides: str) -> tuple[int, str, str]:
    """`memory_plan.main` on the recipe with `--set` overrides: exit status, stdout, stderr."""
    status = memory_plan.main(["--config", str(RECIPE), *(arg for o in overrides for arg in ("--set", o))])
    out, err = capsys.readouterr()
    return status, out, err


def plan_rows(out: str) -> dict[str, tuple[str, float]]:
    """Component -> (how, GiB / GPU) of a printed plan's table."""
    rows = {}
    for line in out.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) == 4 and cells[2].replace(".", "", 1).isdigit():
            rows[cells[0]] = (cells[1], float(cells[2]))
    return rows


def assert_one_error_line(status: int, err: str, *words: str) -> None:
    assert status == 2 and err.startswith("memory_plan: ") and err.count("\n") == 1, err
    assert all(w in err for w in words), err


@pytest.mark.parametrize("override, hint", [
    ("model.init_args.algorithm.micro_batch=8", "micro_batch_size"),
    ("model.init_args.rollout.max_new_token=2048", "max_new_tokens"),
    ("model.init_args.optim.actor_lrr=1e-6", "actor_lr"),
    ("trainer.device=2", "devices"),
    ("data.init_args.train_batchsize=8", "train_batch_size"),
])
def test_memory_plan_unknown_set_key_is_one_clear_error(capsys, override, hint):
    status, _, err = run_memory_plan(capsys, override)
    assert_one_error_line(status, err, override.split("=")[0], hint)


def test_memory_plan_unknown_key_in_the_yaml_is_one_clear_error(tmp_path, capsys):
    config = yaml.safe_load(RECIPE.read_text())
    config["model"]["init_args"]["rollout"]["max_new_token"] = 2048
    (tmp_path / "c.yaml").write_text(yaml.safe_dump(config))
    status = memory_plan.main(["--config", str(tmp_path / "c.yaml")])
    assert_one_error_line(status, capsys.readouterr().err, "model.init_args.rollout.max_new_token")


def test_memory_plan_sizes_the_critic_from_critic_model(capsys):
    status, out, _ = run_memory_plan(capsys, "model.init_args.critic_model=Qwen/Qwen2.5-0.5B-Instruct")
    assert status == 0
    rows, small = plan_rows(out), memory_plan.QWEN25_05B
    assert rows["Critic weights"][1] == pytest.approx(small.critic_params() * 4 / 4 / 2**30, abs=0.01)
    assert rows["Actor weights"][1] == pytest.approx(memory_plan.QWEN25_3B.actor_params() * 4 / 4 / 2**30, abs=0.01)
    assert rows["Critic activations (1 micro-batch)"][1] < rows["Actor activations (1 micro-batch)"][1]
    status, _, err = run_memory_plan(capsys, "model.init_args.critic_model=some/other-model")
    assert_one_error_line(status, err, "some/other-model", "--critic_config")


def test_memory_plan_gathers_the_actor_for_generation_only_when_fsdp_shards(capsys):
    hf_one_gpu = ("trainer.devices=1", "model.init_args.rollout.backend=hf")
    status, out, _ = run_memory_plan(capsys, *hf_one_gpu, "trainer.strategy=auto")  # parallel.gathered: a no-op
    assert status == 0 and "Actor gathered for generation" not in plan_rows(out)
    status, out, _ = run_memory_plan(capsys, *hf_one_gpu, "trainer.strategy.init_args.data_parallel_size=1")
    assert status == 0 and plan_rows(out)["Actor gathered for generation"][1] == pytest.approx(5.75, abs=0.01)


@pytest.mark.parametrize("override, words", [
    ("model.init_args.dtype=bf16", ["model.init_args.dtype", "bf16"]),
    ("trainer.precision=64-true", ["trainer.precision"]),
    ("model.init_args.rollout.backend=sglang", ["backend"]),
    ("model.init_args.rollout.vllm_gpu_memory_utilization=1.5", ["vllm_gpu_memory_utilization"]),
    ("trainer.devices=0", ["trainer.devices"]),
])
def test_memory_plan_bad_value_is_one_clear_error(capsys, override, words):
    status, _, err = run_memory_plan(capsys, override)
    assert_one_error_line(status, err, *words)


@pytest.mark.parametrize("overrides, words", [
    # Lightning: dp x tp must be devices x nodes
    (["trainer.num_nodes=2"], ["data_parallel_size 4", "trainer.devices 4 x trainer.num_nodes 2"]),
    (["trainer.strategy.init_args.data_parallel_size=auto"], ["data_parallel_size 1"]),  # auto = num_nodes
    (["trainer.strategy.init_args.tensor_parallel_size=auto"], ["tensor_parallel_size 4"]),  # auto = devices
    (["model.init_args.rollout.n=0"], ["rollout.n"]),  # check_ppo_args
    (["model.init_args.algorithm.micro_batch_size=8"], ["micro_batch_size", "mini_batch_size"]),
    (["model.init_args.algorithm.adv_estimator=grpo"], ["rollout.n >= 2"]),
])
def test_memory_plan_refuses_settings_training_would_refuse(capsys, overrides, words):
    status, _, err = run_memory_plan(capsys, *overrides)
    assert_one_error_line(status, err, *words)


def test_memory_plan_resolves_lightnings_auto_parallel_sizes(capsys):
    status, out, _ = run_memory_plan(capsys, "trainer.num_nodes=2", "trainer.strategy.init_args.data_parallel_size=8")
    assert status == 0 and "8 GPU(s), parameters/gradients/optimizer sharded over 8" in out
    # data_parallel_size auto = num_nodes (1): four tensor-parallel ranks hold whole models
    status, out, _ = run_memory_plan(capsys, "trainer.strategy.init_args.data_parallel_size=auto",
                                     "trainer.strategy.init_args.tensor_parallel_size=4")
    assert status == 0 and "sharded over 1," in out


def test_memory_plan_counts_the_hf_kv_cache_in_the_compute_dtype(capsys):
    hf_one_gpu = ("trainer.devices=1", "trainer.strategy=auto", "model.init_args.rollout.backend=hf")
    kv = {}
    for precision in ("bf16-mixed", "32-true"):
        status, out, _ = run_memory_plan(capsys, *hf_one_gpu, f"trainer.precision={precision}")
        assert status == 0
        kv[precision] = plan_rows(out)["HF generate KV cache"][1]
    kv_bytes = 2 * 36 * 2 * 128 * 16 * 2048  # keys and values, 36 layers, 2 KV heads of 128, 16 x 2048 tokens
    assert kv["bf16-mixed"] == pytest.approx(kv_bytes * 2 / 2**30, abs=0.01)
    assert kv["32-true"] == pytest.approx(kv_bytes * 4 / 2**30, abs=0.01)


# ------------------------------------------------------------------------------------------------ GPU bench
def test_gpu_bench_smoke_run_on_cpu(tmp_path):
    out = subprocess.run([sys.executable, str(ROOT / "scripts" / "bench" / "gpu_ppo.py"), "--smoke", "--json",
                          str(tmp_path / "bench.json")], cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-4000:]
    report = json.loads((tmp_path / "bench.json").read_text())
    timing = report["summary"]["timing_s"]
    for phase in ["gen", "old_log_prob", "ref", "values", "update_critic", "update_actor", "step"]:
        assert timing[phase] > 0, phase
    assert report["summary"]["generation_tokens_per_s"] > 0 and report["summary"]["training_tflops"] > 0
    assert report["parameters"] == memory_plan.Arch(64, 2, 4, 2, 128, 2048, True).actor_params()
    assert report["summary"]["mfu_training"] is None  # no peak on CPU


def test_memory_plan_of_packed_rows_is_that_of_the_token_budget():
    """Packed rows attend through `cu_seq_lens` (no (L, L) mask): a pack of the budget's tokens needs no more."""
    config = yaml.safe_load(RECIPE.read_text())
    plans = {}
    for packed in ("true", "false"):
        memory_plan._apply_override(config, f"model.init_args.algorithm.pack_sequences={packed}")
        rows, totals = memory_plan.plan(memory_plan.Recipe.from_config(config), memory_plan.QWEN25_3B)
        plans[packed] = ({r.name: r.gib for r in rows}, totals)
    assert plans["true"] == plans["false"]
    assert not any("mask" in name.lower() for name in plans["true"][0])
