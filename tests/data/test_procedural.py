"""The procedural task: deterministic, a provably disjoint held-out split, statements that determine the programs,
reference programs that pass their tests, and parquet files that hold the split (SFT pairs from training only)."""

import json
import re

import pyarrow.parquet as pq
import pytest

from lit_codegen.data.apps import parse_problem
from lit_codegen.data.procedural import (
    CONSTANTS,
    OPERATIONS,
    apply_steps,
    expression,
    generate,
    write_procedural_parquet,
)
from lit_codegen.reward import Evaluator

TASK = generate(0)


def _pairs(problem) -> set[tuple[str, int]]:
    return set(problem.steps)


def test_generation_is_a_pure_function_of_the_seed():
    assert generate(0) == TASK
    other = generate(1)
    assert [p.question for p in other.train] != [p.question for p in TASK.train]
    assert other.held_out_pairs != TASK.held_out_pairs or other.train != TASK.train


def test_sizes_and_the_sft_part():
    assert (len(TASK.train), len(TASK.held_out)) == (360, 120)  # 30 and 10 pairs x 12 variants
    assert sum(TASK.sft) == 180 and TASK.sft[:4] == [False, True, False, True]  # spread over the file
    assert len(TASK.held_out_pairs) == 10
    assert {op for op, _ in TASK.held_out_pairs} == set(OPERATIONS)  # two held-out constants per operation
    ids = [p.problem_id for p in TASK.train + TASK.held_out]
    assert len(set(ids)) == len(ids)


@pytest.mark.parametrize("seed", [0, 1, 7])
def test_held_out_problems_are_new_combinations_not_copies(seed):
    task = generate(seed, two_step=40)
    train_questions = {p.question for p in task.train}
    train_pairs = set().union(*(_pairs(p) for p in task.train))
    train_combinations = {p.steps for p in task.train}
    for p in task.held_out:
        assert p.question not in train_questions
        assert p.steps not in train_combinations
        assert _pairs(p) & task.held_out_pairs  # at least one (operation, constant) pair never trained on
        assert not _pairs(p) <= train_pairs
    assert not train_pairs & task.held_out_pairs
    # ... of known parts: every operation, constant, format and sentence frame of the held-out set is trained on
    for attribute in ("fmt", "frame"):
        assert {getattr(p, attribute) for p in task.held_out} <= {getattr(p, attribute) for p in task.train}
    assert {op for op, _ in train_pairs} == set(OPERATIONS) and {c for _, c in train_pairs} == set(CONSTANTS)


def test_the_statement_determines_the_program():
    for p in TASK.train + TASK.held_out:
        assert len(p.question.split()) <= 16 and len(p.program.splitlines()) <= 2
        for op, c in p.steps:
            assert re.search(rf"\b{c}\b", p.question) and OPERATIONS[op][0] + str(c) in p.program
        if p.fmt == "call":
            assert f"{p.fn_name}(x)" in p.question and p.program.startswith(f"def {p.fn_name}(x):")
        else:
            assert p.fn_name is None and "input()" in p.program
    assert {p.fmt for p in TASK.held_out} == {"stdin", "call"}


def test_expression_and_reference_values():
    steps = (("add", 3), ("mod", 4))
    assert expression("x", steps) == "(x+3)%4"
    assert apply_steps(-6, steps) == (-6 + 3) % 4 == 1
    assert apply_steps(-7, (("div", 2),)) == -4  # floor division, as Python's //


def test_every_reference_program_passes_and_a_wrong_constant_fails():
    task = generate(0, two_step=20)
    problems = task.train + task.held_out
    wrong = [p.program.replace(str(p.steps[-1][1]), str(p.steps[-1][1] % 9 + 1)) for p in problems]
    tests = [json.dumps(p.to_apps(True).input_output) for p in problems]
    for p, io in zip(problems, tests):  # valid APPS records, as preprocess checks them
        assert parse_problem({**vars(p.to_apps(True)), "input_output": io}).input_output == json.loads(io)
    with Evaluator(workers=2) as evaluator:
        right = evaluator.evaluate([p.program for p in problems], tests)
        wrong_results = evaluator.evaluate(wrong, tests)
    assert all(r.passed for r in right)
    assert sum(not r.passed for r in wrong_results) / len(problems) >= 0.9


@pytest.mark.parametrize("template_type", ["base", "chat"])
def test_parquet_split_holds_no_held_out_statement_and_sft_pairs_come_from_training(tmp_path, template_type):
    out = write_procedural_parquet(tmp_path, template_type)
    train = pq.read_table(out / "train.parquet").to_pylist()
    test = pq.read_table(out / "test.parquet").to_pylist()
    assert (len(train), len(test)) == (360, 120)
    assert not {r["question"] for r in train} & {r["question"] for r in test}
    by_question = {p.question: p for p in TASK.train + TASK.held_out}
    train_pairs = set().union(*(_pairs(by_question[r["question"]]) for r in train))
    assert not train_pairs & set().union(*(_pairs(by_question[r["question"]]) for r in test))
    with_solutions = [r for r in train if json.loads(r["solutions"])]
    assert len(with_solutions) == 180  # the SFT part: half the training problems, nothing from test.parquet
    assert all(json.loads(r["solutions"]) == [by_question[r["question"]].program] for r in with_solutions)
    assert all(r["url"] == "lit_codegen:procedural" for r in train + test)
