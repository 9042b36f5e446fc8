"""2-process CPU runs (gloo) of PPO with DDP and FSDP2 (ModelParallelStrategy): sharding, aggregation, validation."""

import math

import pytest
import torch

from helpers import run_two_ranks
from lit_codegen import ppo
from lit_codegen.data.toy import read_toy_records


@pytest.mark.parametrize("strategy", ["ddp", "fsdp"])
def test_two_process_ppo_epoch(strategy, tmp_path):
    ranks = run_two_ranks("dist_worker.py", tmp_path, strategy, str(tmp_path))
    # every toy prompt trained on exactly once in the epoch, split over the two ranks
    seen = ranks[0]["problem_ids"] + ranks[1]["problem_ids"]
    all_ids = sorted(r["problem_id"] for r in read_toy_records())
    assert sorted(seen) == all_ids
    assert not set(ranks[0]["problem_ids"]) & set(ranks[1]["problem_ids"])
    # one trainer step per PPO iteration on both ranks
    expected_iterations = math.ceil(len(all_ids) / 2 / 4)  # 2 ranks x 4 prompts per batch
    assert ranks[0]["iterations"] == ranks[1]["iterations"] == ranks[0]["global_step"] == expected_iterations
    # the logged reward is the mean over both ranks' programs, and the same on every rank
    for it, (reward0, reward1) in enumerate(zip(ranks[0]["rewards"], ranks[1]["rewards"])):
        both = ranks[0]["local_scores"][it] + ranks[1]["local_scores"][it]
        assert reward0 == pytest.approx(reward1) == pytest.approx(sum(both) / len(both))
    # validation before training: prompts sharded over ranks (no drops, no duplicates), metrics summed across ranks;
    # the worker's validation set is the toy problems but the last (27, an odd count over 2 ranks)
    assert ranks[0]["val"]["val/num_programs"] == len(all_ids) - 1
    assert ranks[0]["val"] == ranks[1]["val"] and "val/pass_rate" in ranks[0]["val"]
    # Lightning's validation loop (`lit-codegen validate`): the same sharding, 3 batches over 2 ranks
    assert ranks[0]["validated"]["val/num_programs"] == len(all_ids) - 1
    assert ranks[0]["validated"] == ranks[1]["validated"]
    # the adaptive KL coefficient follows the KL of the whole batch: it moved, and identically on both ranks
    assert ranks[0]["kl_coef"] == pytest.approx(ranks[1]["kl_coef"], rel=1e-12) and ranks[0]["kl_coef"] != 0.05
    # advantages are whitened over both ranks' tokens together (as on one device), not per rank
    for sums0, sums1 in zip(ranks[0]["advantage_sums"], ranks[1]["advantage_sums"]):
        mean, var = ppo.moments_from_sums(torch.tensor(sums0, dtype=torch.float64) + torch.tensor(sums1))
        assert float(mean) == pytest.approx(0.0, abs=1e-6) and float(var) == pytest.approx(1.0, rel=1e-4)
    local_means = [s[0] / s[2] for r in ranks for s in r["advantage_sums"]]
    assert max(abs(m) for m in local_means) > 1e-3  # per-rank whitening would make each of these 0
    # FSDP2 over 2 ranks: every decoder layer (the tiny model has 4) is its own unit, plus the root
    assert ranks[0]["fsdp_units"] == (5 if strategy == "fsdp" else 0)
    # gradients were synchronised: the replicas (or the gathered shards) end identical
    assert ranks[0]["actor_sum"] == pytest.approx(ranks[1]["actor_sum"], rel=1e-6)
    if strategy == "fsdp":  # both ranks' shards of the sharded checkpoint, swapped in whole, no staging left
        checkpoints = sorted(p.name for p in tmp_path.iterdir() if p.name.startswith("last.ckpt"))
        assert checkpoints == ["last.ckpt"]
        assert {"__0_0.distcp", "__1_0.distcp", ".metadata", "meta.pt"} <= {p.name for p in
                                                                          (tmp_path / "last.ckpt").iterdir()}


def test_two_process_resume_continues_each_ranks_random_streams(tmp_path):
    """Ranks seeded differently: 1 iteration + resume samples on every rank what a straight 2-iteration run samples
    (a checkpoint with rank 0's RNG states only makes rank 1 sample rank 0's stream after the resume)."""
    ranks = run_two_ranks("resume_dist_worker.py", tmp_path, str(tmp_path))
    for rank in ranks:
        assert len(rank["straight"]) == 2 and len(rank["first"]) == len(rank["resumed"]) == 1
        assert rank["first"][0] == rank["straight"][0]
        assert rank["resumed"][0] == rank["straight"][1]
