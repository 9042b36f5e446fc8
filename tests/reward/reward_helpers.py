"""Helpers of the reward tests (import as `from reward_helpers import ...`: a name no other test folder uses)."""

import os
from pathlib import Path

import pytest

from lit_codegen.reward import Evaluator

DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
if not DATA.is_dir():  # CI clones the repo with shared/ beside it; a worktree may sit one level deeper
    DATA = Path(__file__).resolve().parents[3] / "shared" / "data"


def require_data() -> Path:
    """The shared data directory, or skip the test with the reason."""
    if not (DATA / "derived" / "mbpp_apps.jsonl").is_file():
        pytest.skip(f"shared test data not found at {DATA}")
    return DATA


def sandbox_leftovers(evaluator: Evaluator) -> list[int]:
    """PIDs of processes forked from the evaluator's workers (or their templates) still around (should be none)."""
    worker_pids = {w.proc.pid for w in evaluator._pool if w.proc is not None}
    # tests are the templates' children
    worker_pids |= {pid for w in evaluator._pool if w.proc is not None for pid in w.template_pids}
    leftovers = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit() or int(entry) in worker_pids:
            continue
        try:
            with open(f"/proc/{entry}/cmdline", "rb") as f:
                cmdline = f.read()
            with open(f"/proc/{entry}/stat") as f:
                ppid = int(f.read().rsplit(")", 1)[1].split()[1])
        except OSError:
            continue
        if b"sandbox_worker.py" in cmdline and (ppid in worker_pids or ppid == 1):
            leftovers.append(int(entry))
    return leftovers
