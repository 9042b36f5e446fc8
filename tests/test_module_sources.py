"""`PPOModule.validation_step` hands each problem's `data_source` to the metrics: `val/pass_rate/<source>`.

The step runs unbound on a stand-in module (no model is built): only the wiring between the batch and the metrics is
under test; generation and scoring are stubbed.
"""

from types import SimpleNamespace

import pytest
import torch

from lit_codegen.metrics import PassRateMetrics
from lit_codegen.module import PPOModule


def test_validation_step_logs_pass_rates_per_data_source():
    batch = {"difficulty": ["easy", "hard", "EASY"], "data_source": ["livecodebench", "livecodebench", "taco"]}
    roll = SimpleNamespace(prompt_index=torch.tensor([0, 1, 2]), texts=["```python\nx = 1\n```", "x", "y"],
                           truncated=torch.tensor([False, True, False]))
    scored = [SimpleNamespace(pass_rate=r, outcomes=["passed"] if r == 1.0 else ["wrong_answer"])
              for r in (1.0, 0.0, 0.5)]
    stand_in = SimpleNamespace(
        trainer=SimpleNamespace(sanity_checking=False, num_val_batches=[1], world_size=1, global_rank=0),
        score_batch=lambda b: (roll, scored),
        rollout_args=SimpleNamespace(val_n=1),
        val_metrics=PassRateMetrics(),
    )
    PPOModule.validation_step(stand_in, batch, 0)
    out = stand_in.val_metrics.compute()
    assert out["val/pass_rate/livecodebench"] == 0.5 and out["val/pass_rate/taco"] == 0.5
    assert out["val/pass_rate"] == 0.5 and out["val/num_programs"] == 3
    assert out["val/no_code_ratio"] == pytest.approx(2 / 3) and out["val/truncated_ratio"] == pytest.approx(1 / 3)
