"""Shared test helpers (import as `from helpers import ...`; pytest puts tests/ on sys.path)."""

import copy
import subprocess
import sys
from pathlib import Path

import yaml

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
    for cb in cfg["trainer"]["callbacks"]:
        if cb["class_path"].endswith("ModelCheckpoint"):
            cb["init_args"]["every_n_train_steps"] = checkpoint_every
    path.write_text(yaml.safe_dump(cfg))
    return path


def run_cli(*args: str, cwd: Path, timeout: int = 600, check: bool = True) -> subprocess.CompletedProcess:
    """Run `lit-codegen ARGS` in a subprocess and return the completed process (output captured)."""
    out = subprocess.run([sys.executable, "-m", "lit_codegen.cli", *args], cwd=cwd, capture_output=True, text=True,
                         timeout=timeout)
    if check and out.returncode != 0:
        raise AssertionError(f"lit-codegen {' '.join(args)} failed:\n{out.stderr[-4000:]}")
    return out
