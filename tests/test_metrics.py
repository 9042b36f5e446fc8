"""Validation metrics: known values on one process, and the same values on every rank of a 2-process (gloo) group."""

import json
import socket
import subprocess
import sys
from math import comb
from types import SimpleNamespace

import pytest

from lit_codegen.metrics import PassRateMetrics, pass_at_k


def results(*rates):
    return [SimpleNamespace(pass_rate=r, outcomes=[]) for r in rates]


def test_verdict_fractions_and_response_ratios():
    """Fractions of all tests by verdict (over every program's tests) and of responses without code / truncated."""
    metrics = PassRateMetrics()
    programs = [SimpleNamespace(pass_rate=0.5, outcomes=["passed", "wrong_answer"]),
                SimpleNamespace(pass_rate=0.0, outcomes=["timeout", "timeout", "runtime_error", "compile_error"])]
    metrics.update(programs, ["interview"] * 2, no_code=[False, True], truncated=[True, True])
    out = metrics.compute()
    assert {k.split("/")[-1]: v for k, v in out.items() if "/verdict/" in k} == {
        "passed": 1 / 6, "wrong_answer": 1 / 6, "timeout": 2 / 6, "runtime_error": 1 / 6, "compile_error": 1 / 6,
        "memory_limit": 0.0, "output_limit": 0.0}
    assert out["val/no_code_ratio"] == 0.5 and out["val/truncated_ratio"] == 1.0
    metrics.reset()
    metrics.update(results(1.0), ["interview"])
    assert "val/no_code_ratio" not in metrics.compute()  # not given: not reported


def test_known_values_per_difficulty_and_bands():
    metrics = PassRateMetrics()
    metrics.update(results(1.0, 0.5, 0.2, 0.0), ["introductory", "interview", "interview", "mystery"])
    out = metrics.compute()
    assert out["val/pass_rate"] == pytest.approx(1.7 / 4) and out["val/strict_accuracy"] == 0.25
    assert out["val/pass_rate/interview"] == pytest.approx(0.35) and out["val/strict_accuracy/introductory"] == 1.0
    assert out["val/pass_rate/other"] == 0.0 and "val/pass_rate/competition" not in out  # no competition problem
    assert out["val/num_programs"] == 4
    # bands are half-open with the lower edge inside: 0.2 is Poor, 1.0 Excellent
    assert [out[f"val/score_band/{b}"] for b in ("very_poor", "poor", "fair", "good", "excellent")] == [
        0.25, 0.25, 0.25, 0.0, 0.25]
    metrics.reset()
    metrics.update(results(0.0), ["competition"])
    assert metrics.compute()["val/num_programs"] == 1  # reset cleared the earlier programs


def test_pass_rate_per_data_source():
    metrics = PassRateMetrics()
    metrics.update(results(1.0, 0.5, 0.0, 0.25), ["interview"] * 4,
                   sources=["livecodebench", "taco", "livecodebench", "somewhere"])
    out = metrics.compute()
    assert out["val/pass_rate/livecodebench"] == 0.5 and out["val/pass_rate/taco"] == 0.5
    assert "val/pass_rate/apps" not in out and "val/pass_rate/somewhere" not in out  # unknown: in the totals only
    assert out["val/pass_rate"] == pytest.approx(1.75 / 4)
    metrics.reset()
    metrics.update(results(1.0), ["interview"])  # no sources given: no per-source entries
    assert not any(key.endswith(("/taco", "/livecodebench")) for key in metrics.compute())


def test_pass_at_k_known_values():
    assert pass_at_k(5, 2, 2) == pytest.approx(0.7)  # 1 - C(3,2)/C(5,2) = 1 - 3/10
    assert pass_at_k(10, 3, 1) == pytest.approx(0.3)  # pass@1 is the fraction correct
    assert pass_at_k(4, 0, 2) == 0.0 and pass_at_k(4, 3, 2) == 1.0  # none correct / fewer wrong than k


def test_pass_at_k_matches_the_combinatorial_definition():
    for n in range(1, 9):
        for c in range(n + 1):
            for k in range(1, n + 1):
                expected = 1.0 - comb(n - c, k) / comb(n, k) if n - c >= k else 1.0
                assert pass_at_k(n, c, k) == pytest.approx(expected)
    metrics = PassRateMetrics()
    metrics.update(results(1.0, 0.0, 0.0, 0.5, 0.5, 0.5), ["interview"] * 6, group_size=3)  # 2 prompts x 3 samples
    assert metrics.compute()["val/pass@3"] == pytest.approx(0.5)  # the first prompt is solved, the second is not


WORKER = """
import json, os, sys
from types import SimpleNamespace as R
import torch.distributed as dist
rank = int(sys.argv[1])
dist.init_process_group("gloo", init_method=sys.argv[2], rank=rank, world_size=2)
from lit_codegen.metrics import PassRateMetrics
m = PassRateMetrics()
if rank == 0:  # only rank 0 sees an introductory problem
    m.update([R(pass_rate=1.0, outcomes=[]), R(pass_rate=0.5, outcomes=[])], ["introductory", "interview"])
else:
    m.update([R(pass_rate=0.0, outcomes=[]), R(pass_rate=0.25, outcomes=[])], ["interview", "interview"])
print(json.dumps(m.compute()))
dist.destroy_process_group()
"""


def test_ranks_that_saw_different_difficulties_agree():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        init = f"tcp://127.0.0.1:{s.getsockname()[1]}"
    procs = [subprocess.Popen([sys.executable, "-c", WORKER, str(r), init], stdout=subprocess.PIPE, text=True)
             for r in (0, 1)]
    outs = [json.loads(p.communicate(timeout=120)[0]) for p in procs]
    assert all(p.returncode == 0 for p in procs)
    assert outs[0] == outs[1]
    assert outs[0]["val/pass_rate/interview"] == pytest.approx(0.75 / 3)
    assert outs[0]["val/pass_rate/introductory"] == 1.0 and outs[0]["val/num_programs"] == 4
