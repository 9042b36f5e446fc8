"""Shared test helpers (import as `from helpers import ...`; pytest puts tests/ on sys.path)."""

import copy
import json
import socket
import subprocess
import sys
from contextlib import contextmanager
from pathlib import Path

import lightning as L
import torch
import yaml
from lightning.pytorch.strategies import ModelParallelStrategy

from lit_codegen.args import OptimArgs, PPOArgs, RewardArgs, RolloutArgs
from lit_codegen.data.datamodule import AppsDataModule
from lit_codegen.module import PPOModule

ROOT = Path(__file__).resolve().parents[1]


def tiny_demo_config(path: Path, validate_every: int = 10, checkpoint_every: int = 10) -> Path:
    """Write configs/demo_cpu.yaml shrunk to seconds per iteration (short warm start, short responses)."""
    cfg = copy.deepcopy(yaml.safe_load((ROOT / "configs" / "demo_cpu.yaml").read_text()))
    model = cfg["model"]["init_args"]
    model["warm_start_steps"] = 20
    model["rollout"]["max_new_tokens"] = 16
    model["algorithm"].update(mini_batch_size=16, micro_batch_size=8, critic_warmup=1)
    cfg["data"]["init_args"]["train_batch_size"] = 4
    cfg["validation"]["every_n_iterations"] = validate_every
    cfg["validation"]["train_problems"] = 8
    for cb in cfg["trainer"]["callbacks"]:
        if cb["class_path"].endswith("ModelCheckpoint"):
            cb["init_args"]["every_n_train_steps"] = checkpoint_every
        if cb["class_path"].endswith("TrainingSamples"):
            cb["init_args"]["every_n_iterations"] = 1
    path.write_text(yaml.safe_dump(cfg))
    return path


def run_cli(*args: str, cwd: Path, timeout: int = 600, check: bool = True) -> subprocess.CompletedProcess:
    """Run `lit-codegen ARGS` in a subprocess and return the completed process (output captured)."""
    out = subprocess.run([sys.executable, "-m", "lit_codegen.cli", *args], cwd=cwd, capture_output=True, text=True,
                         timeout=timeout)
    if check and out.returncode != 0:
        raise AssertionError(f"lit-codegen {' '.join(args)} failed:\n{out.stderr[-4000:]}")
    return out


def run_two_ranks(worker: str, out: Path, *args: str, timeout: int = 900) -> list[dict]:
    """Run tests/WORKER under `torch.distributed.run` with 2 processes (WORKER ... OUT ARGS) and return the JSON each
    rank wrote to OUT/rank{0,1}.json."""
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
           str(Path(__file__).with_name(worker)), *args]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    assert proc.returncode == 0, proc.stderr[-5000:]
    return [json.loads((out / f"rank{r}.json").read_text()) for r in (0, 1)]


def free_port() -> int:
    """A free TCP port on localhost."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextmanager
def one_process_group(monkeypatch):
    """Room for Lightning's 1-process group (a free port; MASTER_* kept out of later tests), destroyed afterwards."""
    monkeypatch.setenv("MASTER_ADDR", "127.0.0.1")
    monkeypatch.setenv("MASTER_PORT", str(free_port()))
    try:
        yield
    finally:
        if torch.distributed.is_initialized():
            torch.distributed.destroy_process_group()


def tiny_sharded_ppo(max_steps: int = 1, strategy_class=ModelParallelStrategy, kl_coef: float = 0.0):
    """The tiny PPO module, the toy-problem data and a 1-device CPU trainer under FSDP2 (no logger, no callbacks).

    Returns:
        (module, data module, trainer); seeded, so two calls train the same way.
    """
    L.seed_everything(0)
    module = PPOModule(model="tiny", algorithm=PPOArgs(mini_batch_size=4, micro_batch_size=4, kl_coef=kl_coef),
                       rollout=RolloutArgs(n=1, max_new_tokens=8), reward=RewardArgs(workers=1, max_tests=2),
                       optim=OptimArgs(actor_lr=1e-2, critic_lr=1e-2))
    data = AppsDataModule(template_type="base", train_batch_size=4, val_batch_size=8)
    data.connect(module.tokenizer)
    trainer = L.Trainer(accelerator="cpu", devices=1, max_steps=max_steps, logger=False, enable_checkpointing=False,
                        enable_progress_bar=False, enable_model_summary=False, limit_val_batches=0,
                        strategy=strategy_class(data_parallel_size=1, tensor_parallel_size=1))
    return module, data, trainer
