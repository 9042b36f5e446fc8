"""Exact resume and crash safety: N iterations + resume for N more == 2N straight; a SIGKILLed run resumes.

The data order is checked on its own with a trivial module under a real Trainer (seconds, and across several epoch
boundaries); the PPO runs check that metrics match.
"""

import csv
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from lightning.pytorch import LightningModule, Trainer
from lightning.pytorch.callbacks import ModelCheckpoint

from helpers import run_cli, tiny_demo_config
from lit_codegen.data.datamodule import AppsDataModule
from lit_codegen.models.loading import load_tokenizer

KEYS = ["critic/score/mean", "actor/pg_loss", "critic/vf_loss", "actor/entropy", "train/num_gen_batches"]


def metrics_by_step(root: Path) -> dict[int, dict[str, float]]:
    """Training metrics per PPO iteration from the CSV log under `root` (later rows win, as after a resume)."""
    out: dict[int, dict[str, float]] = {}
    for path in root.rglob("metrics.csv"):
        with open(path) as f:
            for row in csv.DictReader(f):
                values = {k: float(row[k]) for k in KEYS if row.get(k)}
                if values:
                    out.setdefault(int(row["step"]), {}).update(values)
    return out


class _PromptOrderModule(LightningModule):
    """Records the prompt rows of every training batch; keeps `ppo_iteration` in the checkpoint as the PPO module
    does (the data module resumes its sampler from it)."""

    def __init__(self):
        super().__init__()
        self.weight = torch.nn.Parameter(torch.zeros(1))
        self.ppo_iteration = 0
        self.seen: list[list[int]] = []

    def training_step(self, batch, batch_idx):
        self.seen.append(batch["index"].tolist())
        self.ppo_iteration += 1
        return (self.weight**2).sum()

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.0)

    def on_save_checkpoint(self, checkpoint):
        checkpoint["ppo_state"] = {"ppo_iteration": self.ppo_iteration}

    def on_load_checkpoint(self, checkpoint):
        self.ppo_iteration = checkpoint["ppo_state"]["ppo_iteration"]


def _prompt_order(root: Path, max_steps: int, ckpt_path: Path | None = None) -> list[list[int]]:
    """Prompt rows of each batch of a fit on the toy problems (28 prompts, batches of 8: 8, 8, 8, 4 per epoch)."""
    data = AppsDataModule(train_batch_size=8, template_type="base")
    data.connect(load_tokenizer("tiny"))
    trainer = Trainer(max_steps=max_steps, max_epochs=-1, accelerator="cpu", logger=False, default_root_dir=root,
                      enable_progress_bar=False, enable_model_summary=False, num_sanity_val_steps=0,
                      limit_val_batches=0,
                      callbacks=[ModelCheckpoint(dirpath=root, save_last=True, every_n_train_steps=1)])
    module = _PromptOrderModule()
    trainer.fit(module, datamodule=data, ckpt_path=ckpt_path)
    return module.seen


@pytest.fixture(scope="module")
def straight_prompt_order(tmp_path_factory):
    return _prompt_order(tmp_path_factory.mktemp("straight"), max_steps=12)


@pytest.mark.parametrize("stop_at", [3, 4, 5], ids=["before-the-short-batch", "at-an-epoch-end", "mid-epoch"])
def test_resumed_run_sees_the_prompts_of_a_straight_run_across_epochs(tmp_path, straight_prompt_order, stop_at):
    assert [len(b) for b in straight_prompt_order] == [8, 8, 8, 4] * 3  # 3 epochs, each with every prompt once
    first = _prompt_order(tmp_path, max_steps=stop_at)
    second = _prompt_order(tmp_path, max_steps=12, ckpt_path=tmp_path / "last.ckpt")
    assert first == straight_prompt_order[:stop_at]
    assert second == straight_prompt_order[stop_at:]  # the later epochs keep their last, shorter batch


DYNAMIC_SAMPLING = ["--model.init_args.algorithm.adv_estimator", "grpo", "--model.init_args.algorithm.filter_groups",
                    "true", "--model.init_args.algorithm.max_num_gen_batches", "3"]


@pytest.mark.parametrize("settings", [[], DYNAMIC_SAMPLING], ids=["gae", "dynamic-sampling"])
def test_resume_reproduces_a_straight_run(tmp_path, settings):
    """Under dynamic sampling an iteration draws several prompt batches: the resumed run continues after the last
    batch drawn, not after as many batches as iterations."""
    config = tiny_demo_config(tmp_path / "demo.yaml")
    common = ["--config", str(config), "--seed_everything", "7", *settings]
    straight, resumed = tmp_path / "straight", tmp_path / "resumed"
    run_cli("fit", *common, "--trainer.default_root_dir", str(straight), "--trainer.max_steps", "4", cwd=tmp_path)
    run_cli("fit", *common, "--trainer.default_root_dir", str(resumed), "--trainer.max_steps", "2", cwd=tmp_path)
    run_cli("fit", *common, "--trainer.default_root_dir", str(resumed), "--trainer.max_steps", "4",
            "--ckpt_path", "last", cwd=tmp_path)
    a, b = metrics_by_step(straight), metrics_by_step(resumed)
    assert sorted(a) == [1, 2, 3, 4] and sorted(b) == [1, 2, 3, 4]
    for step in (3, 4):
        assert b[step].keys() == a[step].keys() and "actor/pg_loss" in a[step]
        for key in a[step]:
            assert b[step][key] == pytest.approx(a[step][key], rel=1e-4, abs=1e-6), (step, key)
    ckpt = torch.load(resumed / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=False)
    assert ckpt["ppo_state"]["ppo_iteration"] == 4 and ckpt["global_step"] == 4
    batches = ckpt["ppo_state"]["prompt_batches"]
    assert batches > 4 if settings else batches == 4, batches  # the demo's model solves some groups fully


def test_sigkill_during_training_then_resume(tmp_path):
    config = tiny_demo_config(tmp_path / "demo.yaml", checkpoint_every=1)
    root = tmp_path / "run"
    args = ["--config", str(config), "--trainer.default_root_dir", str(root)]
    proc = subprocess.Popen([sys.executable, "-m", "lit_codegen.cli", "fit", *args, "--trainer.max_steps", "50"],
                            cwd=tmp_path, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    last = root / "checkpoints" / "last.ckpt"
    deadline = time.monotonic() + 400
    try:
        while time.monotonic() < deadline and _iteration_of(last, live=True) < 2:
            time.sleep(0.5)
        time.sleep(0.7)  # land somewhere inside the next iteration (possibly inside a checkpoint write)
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    killed_at = _iteration_of(last)
    assert killed_at >= 2, "the run never wrote a checkpoint"
    target = killed_at + 2
    run_cli("fit", *args, "--trainer.max_steps", str(target), "--ckpt_path", "last", cwd=tmp_path)
    assert _iteration_of(last) == target
    assert set(range(killed_at + 1, target + 1)) <= set(metrics_by_step(root))


def _iteration_of(path: Path, live: bool = False) -> int:
    """PPO iteration stored in a checkpoint (0 if missing; with `live`, also 0 while the running job replaces it)."""
    if not path.exists():
        return 0
    try:
        return torch.load(path, map_location="cpu", weights_only=False)["ppo_state"]["ppo_iteration"]
    except Exception:
        if live:
            return 0
        raise
