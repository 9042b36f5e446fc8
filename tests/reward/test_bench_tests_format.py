"""The evaluator benchmark feeds verl's prime_code its own test format (known answers, no verl needed)."""

import importlib.util
import json
from pathlib import Path

_BENCH = Path(__file__).resolve().parents[2] / "scripts" / "bench" / "code_eval.py"
_spec = importlib.util.spec_from_file_location("bench_code_eval", _BENCH)
bench = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(bench)


def test_call_based_tests_become_json_lines_and_wrapped_json_outputs():
    spec = {"fn_name": "f", "inputs": [[[1, 2], "a"], [{"k": 1}]], "outputs": [[[1, 2], [3, 4]], True]}
    assert json.loads(bench.prime_code_tests(json.dumps(spec))) == {
        "fn_name": "f",
        "inputs": ['[1, 2]\n"a"', '{"k": 1}'],  # one JSON argument per line
        "outputs": ["[[[1, 2], [3, 4]]]", "[true]"],  # a JSON string of the one-element list
    }


def test_stdin_tests_are_passed_as_they_are():
    spec = {"inputs": ["1 2\n"], "outputs": ["3\n"]}
    assert json.loads(bench.prime_code_tests(spec)) == spec
