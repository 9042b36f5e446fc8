"""Converting TACO, CodeContests, LiveCodeBench and DeepCoder from fixtures in their published layouts.

The fixtures (`fixtures/`, our own tiny problems, written by `fixtures/make_fixtures.py`) are laid out as the datasets
publish them (the `published` fixture of conftest); the converted problems are scored by the real evaluator with a
right and a wrong program each.
"""

import base64
import collections
import json
import logging
import pickle
import zlib
from pathlib import Path

import pytest

from lit_codegen.data.apps import DataError, InvalidRecord
from lit_codegen.data.sources import (
    MAX_TEST_BYTES,
    convert_livecodebench,
    decode_lcb_private_tests,
    detect_format,
    load_source,
)
from lit_codegen.reward import Evaluator

FIXTURES = Path(__file__).with_name("fixtures")


def by_title(problems):
    return {p.question.split("\n")[0]: p for p in problems}


def test_taco_arrow_shards_keep_splits_tags_skills_and_dates(published):
    result = load_source(published["taco"])  # format detected from the fields (skill_types)
    problems = by_title(result.problems)
    assert list(problems) == ["Shout", "Sum of two", "Count vowels"]  # test/ sorts before train/
    vowels = problems["Count vowels"]
    assert vowels.fn_name == "count_vowels" and vowels.input_output["inputs"] == [["hello"], ["xyz"], ["AEiou"]]
    assert vowels.input_output["outputs"] == [[2], [0], [5]]  # APPS/Codewars wrapping kept: the evaluator unwraps
    assert (vowels.data_source, vowels.platform, vowels.difficulty) == ("taco", "codewars", "MEDIUM")
    assert (vowels.tags, vowels.skills, vowels.release_date) == (["Strings"], [], "2019-11-02")
    total = problems["Sum of two"]
    assert (total.tags, total.skills, total.source_id, total.source_split) == (
        ["Mathematics"], ["Implementation"], "sum-two", "train")
    assert problems["Shout"].source_split == "test" and [p.problem_id for p in result.problems] == [0, 1, 2]


def test_code_contests_parquet_keeps_all_test_kinds_and_python_solutions(published):
    result = load_source(published["code_contests"], "code_contests")
    problems = by_title(result.problems)
    assert result.skipped == {"file_io": 1}  # "File" reads input.txt: not a stdin problem
    largest = problems["Largest"]
    # public, then private, then generated tests
    assert largest.input_output == {"inputs": ["3\n1 5 2\n", "1\n-4\n", "4\n9 9 1 0\n", "2\n-1 -2\n"],
                                    "outputs": ["5\n", "-4\n", "9\n", "-1\n"]}
    # Python 3 first, then Python 2 (language 1); the C++ solution (language 2) is dropped
    assert largest.solutions[0].startswith("n = int(input())") and "raw_input" in largest.solutions[1]
    assert len(largest.solutions) == 2
    assert (largest.difficulty, largest.platform, largest.tags) == ("A", "codeforces", ["implementation"])
    assert largest.url == "https://codeforces.com/problemset/problem/1/A" and largest.data_source == "codecontests"
    words = problems["Words"]
    assert (words.difficulty, words.platform, words.url, words.source_split) == ("easy", "codechef", "", "test")


def test_livecodebench_decodes_private_tests_and_turns_functional_tests_into_calls(published):
    problems = by_title(load_source(published["livecodebench"]).problems)
    count = problems["Count greater"]
    # public test, then the two private ones (base64 of zlib of a pickled JSON string); one JSON value per line
    assert count.input_output == {"inputs": [[[1, 5, 3], 3], [[], 0], [[7, 7], 6]], "outputs": [1, 0, 2],
                                  "fn_name": "countGreater"}
    assert count.starter_code.startswith("class Solution:") and count.release_date == "2023-05-20"
    assert (count.platform, count.source_id, count.difficulty, count.source_split) == ("leetcode", "3001", "easy",
                                                                                     None)
    spread = problems["Spread"]
    assert spread.fn_name is None and spread.input_output["inputs"] == ["3\n1 5 2\n", "1\n42\n", "4\n-1 8 3 8\n"]
    assert problems["Sort descending"].input_output["outputs"] == [[3, 2, 1], [], [5, 5, -1]]  # plain-JSON private


def test_deepcoder_subsets_set_the_data_source_and_each_test_shape_converts(published):
    problems = by_title(load_source(published["deepcoder"]).problems)
    assert {t: p.data_source for t, p in problems.items()} == {
        "Minimum": "codeforces", "Double it": "livecodebench", "Echo twice": "primeintellect",
        "Add": "primeintellect", "Square": "taco"}
    assert problems["Double it"].input_output == {"inputs": [[3], [-5]], "outputs": [6, -10], "fn_name": "double"}
    assert problems["Double it"].release_date == "2024-02-03"
    assert problems["Add"].input_output == {"inputs": [[1, 2], [-4, 4]], "outputs": [[3], [0]], "fn_name": "add"}
    assert problems["Echo twice"].input_output == {"inputs": ["hi\n", "x\n"], "outputs": ["hi hi\n", "x x\n"]}
    assert problems["Minimum"].source_split == "test" and problems["Square"].source_split == "train"


def test_reference_programs_pass_and_wrong_ones_fail_in_the_evaluator(published, programs):
    problems = [p for path in published.values() for p in load_source(path).problems]
    assert len(problems) == 14
    right = [programs[p.question.split("\n")[0]]["right"] for p in problems]
    wrong = [programs[p.question.split("\n")[0]]["wrong"] for p in problems]
    with Evaluator(workers=2, timeout=4.0) as ev:
        results = ev.evaluate(right + wrong, [p.input_output for p in problems] * 2)
    scores = {p.question.split("\n")[0]: (r.pass_rate, w.pass_rate)
              for p, r, w in zip(problems, results, results[len(problems):])}
    assert all(r == 1.0 for r, _ in scores.values()), scores
    assert all(w < 1.0 for _, w in scores.values()), scores
    assert scores["Count vowels"][1] == pytest.approx(2 / 3)  # partial credit: one of three tests fails
    # the dataset's own first solution, where the dataset has one, passes too
    with_solutions = [p for p in problems if p.solutions]
    with Evaluator(workers=2, timeout=4.0) as ev:
        own = ev.evaluate([p.solutions[0] for p in with_solutions], [p.input_output for p in with_solutions])
    assert [r.pass_rate for r in own] == [1.0] * len(with_solutions)


def test_format_detection_and_its_errors(published, tmp_path):
    assert {fmt: detect_format(str(path)) for fmt, path in published.items()} == {
        fmt: fmt for fmt in published}
    assert detect_format("livecodebench/code_generation_lite") == "livecodebench"
    assert detect_format("agentica-org/DeepCoder-Preview-Dataset:lcbv5") == "deepcoder"
    odd = tmp_path / "odd.jsonl"
    odd.write_text(json.dumps({"question": "Q", "input_output": "{}"}) + "\n")  # APPS or TACO? no telling fields
    with pytest.raises(DataError, match=r"cannot tell the format of .*odd.jsonl .*pass --format"):
        load_source(odd)
    with pytest.raises(DataError, match="unknown --format 'leetcode': choose one of apps, taco, code_contests"):
        load_source(odd, "leetcode")
    with pytest.raises(DataError, match=r"data source '.*missing.parquet' not found"):
        load_source(tmp_path / "missing.parquet", "code_contests")


def test_malformed_records_are_counted_by_reason(tmp_path, caplog):
    rows = [
        "{not json",
        json.dumps({"question_content": "Q", "public_test_cases": "[{]", "metadata": "{}"}),
        json.dumps({"question_content": "Q", "public_test_cases": "[]", "private_test_cases": "bm90IHpsaWI=",
                    "metadata": "{}"}),
        json.dumps({"question_content": "Q", "metadata": '{"func_name": "f"}',
                    "public_test_cases": json.dumps([{"input": "[1", "output": "1", "testtype": "functional"}])}),
        json.dumps({"question_content": "Q", "metadata": "{}",
                    "public_test_cases": json.dumps([{"input": "1", "output": "1", "testtype": "functional"}])}),
        json.dumps({"question_content": "Q", "metadata": '{"func_name": "f"}', "public_test_cases": json.dumps(
            [{"input": "1", "output": "1", "testtype": "functional"}, {"input": "1", "output": "1", "testtype": "stdin"}
             ])}),
        json.dumps({"question_content": "Q", "metadata": "{}", "public_test_cases": "[]", "private_test_cases": "[]"}),
    ]
    path = tmp_path / "test.jsonl"
    path.write_text("\n".join(rows) + "\n")
    with caplog.at_level(logging.WARNING, logger="lit_codegen.data.sources"):
        result = load_source(path, "livecodebench")
    assert result.problems == []
    assert result.skipped == {"malformed_json_line": 1, "public_tests_unparsable": 1, "private_tests_undecodable": 1,
                              "functional_input_not_json": 1, "functional_without_func_name": 1,
                              "mixed_test_types": 1, "no_tests": 1}
    assert "private_tests_undecodable=1 (test.jsonl line 3)" in caplog.text


def test_private_tests_are_unpickled_as_plain_text_only():
    tests = [{"input": "1", "output": "2", "testtype": "stdin"}]
    encoded = base64.b64encode(zlib.compress(pickle.dumps(json.dumps(tests)))).decode()
    assert decode_lcb_private_tests(encoded) == tests
    # a pickle that names a callable (here a harmless class) is refused, never called
    hostile = base64.b64encode(zlib.compress(pickle.dumps(collections.OrderedDict()))).decode()
    with pytest.raises(InvalidRecord, match="refusing to load collections.OrderedDict"):
        decode_lcb_private_tests(hostile)


def test_oversized_tests_are_dropped_and_all_oversized_skips_the_problem(tmp_path, caplog):
    big = "9" * MAX_TEST_BYTES
    record = {"question_content": "Q", "metadata": "{}", "public_test_cases": json.dumps(
        [{"input": "1\n", "output": "1\n", "testtype": "stdin"}, {"input": big, "output": "9\n", "testtype": "stdin"}])}
    only_big = {**record, "question_content": "R", "public_test_cases": json.dumps(
        [{"input": big, "output": "9\n", "testtype": "stdin"}])}
    path = tmp_path / "test.jsonl"
    path.write_text(json.dumps(record) + "\n" + json.dumps(only_big) + "\n")
    with caplog.at_level(logging.WARNING, logger="lit_codegen.data.sources"):
        result = load_source(path, "livecodebench")
    assert [p.input_output["inputs"] for p in result.problems] == [["1\n"]]
    assert result.skipped == {"tests_too_large": 1}
    assert "dropped 1 tests of 1 problems" in caplog.text


def test_a_converted_record_is_an_apps_record():
    converted = convert_livecodebench({"question_content": "Q", "metadata": json.dumps({"func_name": "f"}),
                                       "public_test_cases": json.dumps([{"input": '"a"\n[1]', "output": "null",
                                                                         "testtype": "functional"}])})
    assert converted["input_output"] == {"inputs": [["a", [1]]], "outputs": [None], "fn_name": "f"}


def test_hub_names_are_loaded_with_datasets_load_dataset(monkeypatch):
    """No download: `datasets.load_dataset` is replaced by a recorder that serves the fixture rows."""
    import datasets

    def rows(*parts):
        return [json.loads(line) for line in FIXTURES.joinpath(*parts).read_text().splitlines()]

    served = {
        ("json", None): rows("livecodebench", "test.jsonl"),
        ("arrow", None): {"train": rows("taco", "train.jsonl"), "test": rows("taco", "test.jsonl")},
        ("deepmind/code_contests", None): {"train": rows("code_contests", "train.jsonl"),
                                           "valid": rows("code_contests", "valid.jsonl")},
        ("agentica-org/DeepCoder-Preview-Dataset", "lcbv5"): {"train": rows("deepcoder", "lcbv5", "train.jsonl")},
    }
    calls = []

    def fake_load_dataset(path, name=None, **kwargs):
        calls.append((path, name, kwargs))
        return served[(path, name)]

    monkeypatch.setattr(datasets, "load_dataset", fake_load_dataset)
    lcb = load_source("livecodebench/code_generation_lite").problems
    assert [p.source_id for p in lcb] == ["3001", "abc370_a"]
    assert calls[-1] == ("json", None, {"data_files": "hf://datasets/livecodebench/code_generation_lite/test*.jsonl",
                                        "split": "train"})
    taco = load_source("BAAI/TACO").problems
    assert [(p.source_id, p.source_split) for p in taco] == [("sum-two", "train"), ("count-vowels", "train"),
                                                            ("shout", "test")]
    assert calls[-1] == ("arrow", None, {"data_files": {"train": "hf://datasets/BAAI/TACO/train/*.arrow",
                                                        "test": "hf://datasets/BAAI/TACO/test/*.arrow"}})
    contests = load_source("deepmind/code_contests").problems
    assert [(p.source_id, p.source_split) for p in contests] == [("1_A. Largest", "train"), ("3_C. Words", "test")]
    assert calls[-1] == ("deepmind/code_contests", None, {})
    deepcoder = load_source("agentica-org/DeepCoder-Preview-Dataset:lcbv5").problems
    assert [p.fn_name for p in deepcoder] == ["double"] and deepcoder[0].data_source == "livecodebench"
    assert calls[-1] == ("agentica-org/DeepCoder-Preview-Dataset", "lcbv5", {})

    def offline(*args, **kwargs):
        raise ConnectionError("offline")

    monkeypatch.setattr(datasets, "load_dataset", offline)
    with pytest.raises(DataError, match=r"could not load hub dataset 'agentica-org/DeepCoder-Preview-Dataset' "
                                        r"\(ConnectionError: offline\)"):
        load_source("agentica-org/DeepCoder-Preview-Dataset")


def test_detection_reads_past_a_first_record_that_fits_no_format(tmp_path):
    path = tmp_path / "mixed.jsonl"
    apps = {"problem_id": 1, "question": "Q", "input_output": json.dumps({"inputs": ["1\n"], "outputs": ["1\n"]})}
    path.write_text("{broken\n" + json.dumps({"question": "no tests"}) + "\n" + json.dumps(apps) + "\n")
    assert detect_format(str(path)) == "apps"
    result = load_source(path)
    assert [p.problem_id for p in result.problems] == [1]
    assert result.skipped == {"malformed_json_line": 1, "bad_problem_id": 1}
