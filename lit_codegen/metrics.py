"""Validation metrics of generated programs as torchmetrics, so values aggregate exactly across ranks.

`PassRateMetrics` accumulates, over the validation prompts seen by every rank:

- `val/pass_rate`: mean fraction of tests passed (the reward), and per difficulty `val/pass_rate/<difficulty>`;
- `val/strict_accuracy`: fraction of programs that pass every test, and per difficulty;
- `val/score_band/<band>`: share of programs in each of the five score bands of the evaluator report;
- `val/pass@k`: with k > 1 samples per prompt, the unbiased pass@k estimator of Chen et al. 2021;
- `val/num_programs`: how many programs were scored, over all ranks.
"""

from __future__ import annotations

from collections.abc import Sequence
from math import comb

import torch
from torchmetrics import Metric
from torchmetrics.aggregation import MeanMetric

from lit_codegen.reward.report import SCORE_BANDS, score_band

DIFFICULTIES = ("introductory", "interview", "competition")
"""APPS difficulty levels; anything else is counted as `other` (metric states must be identical on every rank)."""


def pass_at_k(n: int, c: int, k: int) -> float:
    """Unbiased pass@k for one problem with `n` samples of which `c` are correct (Chen et al. 2021, eq. 1)."""
    if n - c < k:
        return 1.0
    return 1.0 - comb(n - c, k) / comb(n, k)


class PassRateMetrics(Metric):
    """Pass rate, strict accuracy (overall and per difficulty), score bands and pass@k of scored programs."""

    full_state_update = False

    def __init__(self, prefix: str = "val") -> None:
        super().__init__()
        self.prefix = prefix
        self.levels = (*DIFFICULTIES, "other")
        self.pass_rate = MeanMetric()
        self.strict = MeanMetric()
        self.level_pass_rate = torch.nn.ModuleList(MeanMetric() for _ in self.levels)
        self.level_strict = torch.nn.ModuleList(MeanMetric() for _ in self.levels)
        self.add_state("bands", default=torch.zeros(len(SCORE_BANDS), dtype=torch.float64), dist_reduce_fx="sum")
        self.add_state("pass_at_k_sum", default=torch.zeros((), dtype=torch.float64), dist_reduce_fx="sum")
        self.add_state("n_groups", default=torch.zeros((), dtype=torch.float64), dist_reduce_fx="sum")
        self.k = 1

    def update(self, results: Sequence, difficulties: Sequence[str], group_size: int = 1) -> None:
        """Add scored programs.

        Args:
            results: One `EvalResult` per program (`pass_rate`, `outcomes`).
            difficulties: The difficulty of each program's problem.
            group_size: Consecutive programs per prompt (k of pass@k).
        """
        self.k = group_size
        for res, level in zip(results, difficulties):
            i = self.levels.index(level) if level in self.levels else len(self.levels) - 1
            solved = float(res.pass_rate == 1.0)
            self.pass_rate.update(res.pass_rate)
            self.strict.update(solved)
            self.level_pass_rate[i].update(res.pass_rate)
            self.level_strict[i].update(solved)
            self.bands[SCORE_BANDS.index(score_band(res.pass_rate))] += 1
        for start in range(0, len(results), group_size):
            group = results[start : start + group_size]
            self.pass_at_k_sum += pass_at_k(len(group), sum(r.pass_rate == 1.0 for r in group), len(group))
            self.n_groups += 1

    def compute(self) -> dict[str, float]:
        """Metric name -> value (per-difficulty entries only for difficulties that occurred)."""
        p = self.prefix
        out = {f"{p}/pass_rate": float(self.pass_rate.compute()), f"{p}/strict_accuracy": float(self.strict.compute())}
        for level, rate, strict in zip(self.levels, self.level_pass_rate, self.level_strict):
            if float(rate.weight) > 0:  # after sync, the same on every rank
                out[f"{p}/pass_rate/{level}"] = float(rate.compute())
                out[f"{p}/strict_accuracy/{level}"] = float(strict.compute())
        out[f"{p}/num_programs"] = float(self.bands.sum())  # all ranks' programs: checks sharding (no drops/dups)
        total = float(self.bands.sum()) or 1.0
        for name, count in zip(SCORE_BANDS, self.bands.tolist()):
            out[f"{p}/score_band/{name.lower().replace(' ', '_')}"] = count / total
        if self.k > 1:
            out[f"{p}/pass@{self.k}"] = float(self.pass_at_k_sum / self.n_groups.clamp(min=1))
        return out

    def reset(self) -> None:
        """Clear all accumulated state."""
        super().reset()
        for m in (self.pass_rate, self.strict, *self.level_pass_rate, *self.level_strict):
            m.reset()


__all__ = ["PassRateMetrics", "pass_at_k", "DIFFICULTIES"]
