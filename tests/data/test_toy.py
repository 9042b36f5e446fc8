"""The bundled toy problems: format, size limits, and every solution checked by running it.

The checker here is a minimal stand-in for the evaluator in `lit_codegen.reward` (strict comparison: stdout lines
with trailing whitespace removed; call-based return values compared as JSON). One subprocess per problem runs all of
its programs on all of its tests.
"""

import json
import subprocess
import sys

import pyarrow.parquet as pq
import pytest

from lit_codegen.data.apps import load_apps
from lit_codegen.data.toy import TOY_PROBLEMS, read_toy_records, write_toy_parquet

RUNNER = r"""
import io, json, sys
job = json.load(sys.stdin)
real_stdout = sys.stdout
results = []


def lines(text):
    return [line.rstrip() for line in text.rstrip().splitlines()]


for code in job["programs"]:
    row = []
    for args, expected in zip(job["inputs"], job["outputs"]):
        try:
            if job["fn_name"]:
                env = {"__name__": "__toy__"}
                exec(code, env)
                ok = json.dumps(env[job["fn_name"]](*args)) == json.dumps(expected)
            else:
                sys.stdin, sys.stdout = io.StringIO(args), io.StringIO()
                exec(code, {"__name__": "__main__"})
                ok = lines(sys.stdout.getvalue()) == lines(expected)
        except BaseException:
            ok = False
        finally:
            sys.stdout = real_stdout
        row.append(ok)
    results.append(row)
print(json.dumps(results))
"""

RECORDS = read_toy_records()


def run_programs(record, programs):
    """Per program, per test: did it pass? (list of lists of bool)."""
    io = record["input_output"]
    job = {"programs": programs, "fn_name": io.get("fn_name"), "inputs": io["inputs"], "outputs": io["outputs"]}
    proc = subprocess.run(
        [sys.executable, "-c", RUNNER], input=json.dumps(job), capture_output=True, text=True, timeout=60
    )
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout)


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


@pytest.mark.parametrize("record", RECORDS, ids=lambda r: str(r["problem_id"]))
def test_correct_solutions_pass_all_and_wrong_ones_fail_some(record):
    results = run_programs(record, record["solutions"] + record["wrong_solutions"])
    n_correct = len(record["solutions"])
    for program, passed in zip(record["solutions"], results[:n_correct]):
        assert all(passed), f"correct solution fails: {program!r} -> {passed}"
    for program, passed in zip(record["wrong_solutions"], results[n_correct:]):
        assert not all(passed), f"wrong solution passes every test: {program!r}"


def test_many_wrong_solutions_earn_partial_credit():
    partial = total = 0
    for record in RECORDS:
        for passed in run_programs(record, record["wrong_solutions"]):
            total += 1
            partial += any(passed)
    assert partial / total >= 0.5


@pytest.mark.parametrize("template_type", ["chat", "base"])
def test_write_toy_parquet_puts_every_problem_in_both_files(tmp_path, template_type):
    out = write_toy_parquet(tmp_path, template_type)
    ids = sorted(r["problem_id"] for r in RECORDS)
    for split in ("train", "test"):
        rows = pq.read_table(out / f"{split}.parquet").to_pylist()
        assert sorted(r["problem_id"] for r in rows) == ids
        assert {r["split"] for r in rows} == {split}
        assert {r["template_type"] for r in rows} == {template_type}
