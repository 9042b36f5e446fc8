"""The bundled toy problems: format, size limits, and every solution checked by running it in the evaluator.

Both comparison modes of `lit_codegen.reward.Evaluator` are checked: `strict` (the training reward) and `apps` (the
APPS reference harness's lax rules), so no wrong solution slips through either.
"""

import pyarrow.parquet as pq
import pytest

from lit_codegen.data.apps import load_apps
from lit_codegen.data.toy import TOY_PROBLEMS, read_toy_records, write_toy_parquet
from lit_codegen.reward import Evaluator

RECORDS = read_toy_records()


@pytest.fixture(scope="module", params=["strict", "apps"])
def verdicts(request):
    """problem_id -> (results of the correct solutions, results of the wrong ones), every program run once."""
    programs, tests, owners = [], [], []
    for record in RECORDS:
        for kind in ("solutions", "wrong_solutions"):
            for program in record[kind]:
                programs.append(program)
                tests.append(record["input_output"])
                owners.append((record["problem_id"], kind))
    with Evaluator(workers=2, mode=request.param) as evaluator:
        results = evaluator.evaluate(programs, tests)
    by_problem = {r["problem_id"]: {"solutions": [], "wrong_solutions": []} for r in RECORDS}
    for (problem_id, kind), program, result in zip(owners, programs, results):
        by_problem[problem_id][kind].append((program, result))
    return by_problem


def test_toy_problem_set_shape():
    assert len(RECORDS) >= 24
    ids = [r["problem_id"] for r in RECORDS]
    assert len(set(ids)) == len(ids) and min(ids) >= 9000
    n_call = sum("fn_name" in r["input_output"] for r in RECORDS)
    assert 0.4 <= n_call / len(RECORDS) <= 0.6
    assert load_apps(TOY_PROBLEMS).skipped == {}


@pytest.mark.parametrize("record", RECORDS, ids=lambda r: str(r["problem_id"]))
def test_toy_problem_is_short_and_well_formed(record):
    assert record["difficulty"] == "introductory"
    assert len(record["question"].split()) <= 25
    assert 3 <= len(record["input_output"]["inputs"]) <= 6
    assert len(record["solutions"]) >= 2 and len(record["wrong_solutions"]) >= 2
    for program in record["solutions"] + record["wrong_solutions"]:
        assert 1 <= len(program.splitlines()) <= 5
    fn_name = record["input_output"].get("fn_name")
    if fn_name:
        assert record["starter_code"] == f"def {fn_name}({record['starter_code'].split('(')[1]}"
        assert all(p.startswith(f"def {fn_name}(") for p in record["solutions"])
    else:
        assert record["starter_code"] == ""
        assert len(record["solutions"][0].splitlines()) == 1  # canonical style: one line
        assert all(i.endswith("\n") for i in record["input_output"]["inputs"])


def test_correct_solutions_pass_all_and_wrong_ones_fail_some(verdicts):
    for problem_id, results in verdicts.items():
        for program, result in results["solutions"]:
            assert result.passed, f"{problem_id}: correct solution fails: {program!r} -> {result.outcomes}"
        for program, result in results["wrong_solutions"]:
            assert not result.passed, f"{problem_id}: wrong solution passes every test: {program!r}"


def test_most_wrong_solutions_earn_partial_credit(verdicts):
    wrong = [result for results in verdicts.values() for _, result in results["wrong_solutions"]]
    assert sum(0 < result.pass_rate < 1 for result in wrong) / len(wrong) >= 0.75


@pytest.mark.parametrize("template_type", ["chat", "base"])
def test_write_toy_parquet_puts_every_problem_in_both_files(tmp_path, template_type):
    out = write_toy_parquet(tmp_path, template_type)
    ids = sorted(r["problem_id"] for r in RECORDS)
    for split in ("train", "test"):
        rows = pq.read_table(out / f"{split}.parquet").to_pylist()
        assert sorted(r["problem_id"] for r in rows) == ids
        assert {r["split"] for r in rows} == {split}
        assert {r["template_type"] for r in rows} == {template_type}
