"""Validation metrics of generated programs as torchmetrics, so values aggregate exactly across ranks.

`PassRateMetrics` accumulates, over the validation prompts seen by every rank:

- `val/pass_rate`: mean fraction of tests passed (the reward), per difficulty `val/pass_rate/<difficulty>` and per
  data source `val/pass_rate/<source>` (the parquet's `data_source`, one of `SOURCES`);
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

from lit_codegen.reward.evaluator import VERDICTS
from lit_codegen.reward.report import SCORE_BANDS, score_band

DIFFICULTIES = ("introductory", "interview", "competition")
"""APPS difficulty levels; anything else is counted as `other` (metric states must be identical on every rank)."""
SOURCES = ("apps", "taco", "codecontests", "livecodebench", "primeintellect", "codeforces")
"""Data sources with a `val/pass_rate/<source>` entry (`lit_codegen.data.sources`); others count in the totals only."""


def pass_at_k(n: int, c: int, k: int) -> float:
    """Unbiased pass@k for one problem with `n` samples of which `c` are correct (Chen et al. 2021, eq. 1)."""
    if n - c < k:
        return 1.0
    return 1.0 - comb(n - c, k) / comb(n, k)


class PassRateMetrics(Metric):
    """Pass rate, strict accuracy (overall and per difficulty), score bands and pass@k of scored programs.

    Every state is a sum reduced across ranks in one sync, so every rank computes the same values and takes the same
    branches (a rank that saw no program of some difficulty must still agree on whether that difficulty is reported).
    """

    full_state_update = False

    def __init__(self, prefix: str = "val") -> None:
        super().__init__()
        self.prefix = prefix
        self.levels = (*DIFFICULTIES, "other")
        for name in ("level_pass_rate_sum", "level_solved", "level_count"):  # per level: (L,)
            self.add_state(name, default=torch.zeros(len(self.levels), dtype=torch.float64), dist_reduce_fx="sum")
        for name in ("source_pass_rate_sum", "source_count"):  # per data source: (S,)
            self.add_state(name, default=torch.zeros(len(SOURCES), dtype=torch.float64), dist_reduce_fx="sum")
        self.add_state("bands", default=torch.zeros(len(SCORE_BANDS), dtype=torch.float64), dist_reduce_fx="sum")
        # tests by verdict; responses without a code block / truncated, and how many responses those were counted over
        self.add_state("verdicts", default=torch.zeros(len(VERDICTS), dtype=torch.float64), dist_reduce_fx="sum")
        self.add_state("responses", default=torch.zeros(3, dtype=torch.float64), dist_reduce_fx="sum")
        self.add_state("pass_at_k_sum", default=torch.zeros((), dtype=torch.float64), dist_reduce_fx="sum")
        self.add_state("n_groups", default=torch.zeros((), dtype=torch.float64), dist_reduce_fx="sum")
        self.k = 1

    def update(self, results: Sequence, difficulties: Sequence[str], group_size: int = 1,
               sources: Sequence[str] | None = None, no_code: Sequence[bool] | None = None,
               truncated: Sequence[bool] | None = None) -> None:
        """Add scored programs.

        Args:
            results: One `EvalResult` per program (`pass_rate`, `outcomes`).
            difficulties: The difficulty of each program's problem.
            group_size: Consecutive programs per prompt (k of pass@k).
            sources: The `data_source` of each program's problem (None: no per-source entries).
            no_code: Whether each response lacks a fenced code block (with `truncated`: adds `no_code_ratio` and
                `truncated_ratio`; None: not reported).
            truncated: Whether each response hit the length limit.
        """
        for res in results:
            for outcome in res.outcomes:
                self.verdicts[VERDICTS.index(outcome)] += 1
        if no_code is not None and truncated is not None:
            self.responses += torch.tensor([sum(map(bool, no_code)), sum(map(bool, truncated)), len(no_code)],
                                           dtype=torch.float64)
        for res, source in zip(results, sources or ()):
            if source in SOURCES:
                self.source_pass_rate_sum[SOURCES.index(source)] += res.pass_rate
                self.source_count[SOURCES.index(source)] += 1
        self.k = group_size
        for res, level in zip(results, difficulties):
            i = self.levels.index(level) if level in self.levels else len(self.levels) - 1
            self.level_pass_rate_sum[i] += res.pass_rate
            self.level_solved[i] += float(res.pass_rate == 1.0)
            self.level_count[i] += 1
            self.bands[SCORE_BANDS.index(score_band(res.pass_rate))] += 1
        for start in range(0, len(results), group_size):
            group = results[start : start + group_size]
            self.pass_at_k_sum += pass_at_k(len(group), sum(r.pass_rate == 1.0 for r in group), len(group))
            self.n_groups += 1

    def compute(self) -> dict[str, float]:
        """Metric name -> value (per-difficulty entries only for difficulties that occurred on some rank)."""
        p, count = self.prefix, self.level_count
        total = float(count.sum())
        out = {f"{p}/pass_rate": float(self.level_pass_rate_sum.sum()) / max(total, 1.0),
               f"{p}/strict_accuracy": float(self.level_solved.sum()) / max(total, 1.0)}
        for i, level in enumerate(self.levels):
            if count[i] > 0:
                out[f"{p}/pass_rate/{level}"] = float(self.level_pass_rate_sum[i] / count[i])
                out[f"{p}/strict_accuracy/{level}"] = float(self.level_solved[i] / count[i])
        for i, source in enumerate(SOURCES):
            if self.source_count[i] > 0:
                out[f"{p}/pass_rate/{source}"] = float(self.source_pass_rate_sum[i] / self.source_count[i])
        out[f"{p}/num_programs"] = total  # all ranks' programs: checks sharding (no drops/dups)
        for name, n in zip(SCORE_BANDS, self.bands.tolist()):
            out[f"{p}/score_band/{name.lower().replace(' ', '_')}"] = n / max(total, 1.0)
        tests = float(self.verdicts.sum())
        for name, n in zip(VERDICTS, self.verdicts.tolist()):
            out[f"{p}/verdict/{name}"] = n / max(tests, 1.0)  # of all tests run
        if self.responses[2] > 0:
            out[f"{p}/no_code_ratio"] = float(self.responses[0] / self.responses[2])
            out[f"{p}/truncated_ratio"] = float(self.responses[1] / self.responses[2])
        if self.k > 1:
            out[f"{p}/pass@{self.k}"] = float(self.pass_at_k_sum / self.n_groups.clamp(min=1))
        return out


__all__ = ["PassRateMetrics", "pass_at_k", "DIFFICULTIES", "SOURCES"]
