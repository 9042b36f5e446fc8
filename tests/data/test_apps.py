import json
import logging

import pytest

from lit_codegen.data.apps import DataError, InvalidRecord, is_hub_name, load_apps, parse_problem


def record(**overrides):
    base = {
        "problem_id": 7,
        "question": "Print n + 1.",
        "solutions": json.dumps(["print(int(input())+1)"]),
        "input_output": json.dumps({"inputs": ["1\n", "2\n"], "outputs": ["2\n", "3\n"]}),
        "difficulty": "introductory",
        "url": "u",
        "starter_code": "",
    }
    base.update(overrides)
    return base


def test_parse_problem_stdin():
    problem = parse_problem(record())
    assert problem.problem_id == 7
    assert problem.fn_name is None
    assert problem.num_tests == 2
    assert problem.solutions == ["print(int(input())+1)"]


def test_parse_problem_call_based():
    tests = {"fn_name": "add", "inputs": [[1, 2], [3, 4]], "outputs": [3, 7]}
    problem = parse_problem(record(input_output=json.dumps(tests), starter_code="def add(a, b):\n"))
    assert problem.fn_name == "add"
    assert problem.input_output == tests


def test_parse_problem_empty_solutions_is_valid():
    assert parse_problem(record(solutions="")).solutions == []


@pytest.mark.parametrize(
    ("overrides", "reason"),
    [
        ({"input_output": "{not json"}, "input_output_unparsable"),
        ({"input_output": "[1, 2]"}, "input_output_unparsable"),
        ({"input_output": ""}, "no_tests"),
        ({"input_output": json.dumps({"inputs": [], "outputs": []})}, "no_tests"),
        ({"input_output": json.dumps({"inputs": ["1\n"]})}, "no_tests"),
        (
            {"input_output": json.dumps({"inputs": ["1\n", "2\n"], "outputs": ["2\n"]})},
            "inputs_outputs_length_mismatch",
        ),
        (
            {"input_output": json.dumps({"fn_name": "f", "inputs": ["1"], "outputs": [1]})},
            "call_based_inputs_not_lists",
        ),
        ({"input_output": json.dumps({"fn_name": "not valid", "inputs": [[1]], "outputs": [1]})}, "bad_fn_name"),
        ({"solutions": "[broken"}, "solutions_unparsable"),
        ({"solutions": json.dumps([1, 2])}, "solutions_unparsable"),
        ({"question": "  "}, "missing_question"),
        ({"problem_id": "abc"}, "bad_problem_id"),
        # only JSON integers in the int64 range: nothing is coerced into some other id
        ({"problem_id": 2**63}, "bad_problem_id"),
        ({"problem_id": -(2**63) - 1}, "bad_problem_id"),
        ({"problem_id": 1.7}, "bad_problem_id"),
        ({"problem_id": 7.0}, "bad_problem_id"),
        ({"problem_id": True}, "bad_problem_id"),
        ({"problem_id": "0042"}, "bad_problem_id"),
        ({"problem_id": None}, "bad_problem_id"),
        ({"input_output": json.dumps({"fn_name": "class", "inputs": [[1]], "outputs": [1]})}, "bad_fn_name"),
        ({"difficulty": ["x"]}, "bad_difficulty"),
        ({"url": 5}, "bad_url"),
        ({"starter_code": ["a"]}, "bad_starter_code"),
        # standard-input tests are text: numbers, nulls or objects are tests nobody can pass (or crash the reward)
        ({"input_output": json.dumps({"inputs": [[1, 2]], "outputs": ["3\n"]})}, "stdin_tests_not_text"),
        ({"input_output": json.dumps({"inputs": [None], "outputs": [None]})}, "stdin_tests_not_text"),
        ({"input_output": json.dumps({"inputs": ["1\n"], "outputs": [{"a": 1}]})}, "stdin_tests_not_text"),
        ({"input_output": json.dumps({"inputs": ["1\n"], "outputs": [2]})}, "stdin_tests_not_text"),
        # a lone surrogate (JSON "\ud800") cannot be written to parquet: the record, not the whole run, is dropped
        ({"question": "bad \ud800 char"}, "not_utf8"),
        ({"starter_code": "\udfff"}, "not_utf8"),
        ({"url": "\ud800"}, "not_utf8"),
    ],
)
def test_parse_problem_rejects_with_reason(overrides, reason):
    with pytest.raises(InvalidRecord) as err:
        parse_problem(record(**overrides))
    assert err.value.reason == reason


def test_parse_problem_keeps_int64_edges_and_treats_null_text_fields_as_empty():
    assert parse_problem(record(problem_id=2**63 - 1)).problem_id == 2**63 - 1
    assert parse_problem(record(problem_id=-(2**63))).problem_id == -(2**63)
    problem = parse_problem(record(difficulty=None, url=None, starter_code=None))
    assert (problem.difficulty, problem.url, problem.starter_code) == ("", "", "")


def test_load_real_apps_jsonl(shared_data):
    result = load_apps(shared_data / "apps" / "apps_coderl5.jsonl")
    assert [p.problem_id for p in result.problems] == [1, 111, 2287, 2404, 4184]
    assert not result.skipped
    by_id = {p.problem_id: p for p in result.problems}
    assert by_id[2404].fn_name == "findKthPositive"
    assert by_id[2404].starter_code.startswith("class Solution:")
    assert by_id[4184].fn_name == "is_prime"
    assert by_id[1].fn_name is None and by_id[1].difficulty == "interview"
    assert by_id[2287].difficulty == "competition"
    # local JSONL files have no natural split, even when records carry a `split` field
    assert {p.source_split for p in result.problems} == {None}


def test_load_mbpp_derived_jsonl(shared_data):
    problems = load_apps(shared_data / "derived" / "mbpp_apps.jsonl").problems
    assert len(problems) == 338
    assert sum(p.fn_name is not None for p in problems) == 169


def test_load_jsonl_counts_and_logs_bad_lines(tmp_path, caplog):
    lines = [
        json.dumps(record(problem_id=1)),
        "{this is not json",
        json.dumps(record(problem_id=3, input_output="{bad")),
        "",
        json.dumps(record(problem_id=5)),
        "[1, 2, 3]",
    ]
    path = tmp_path / "problems.jsonl"
    path.write_text("\n".join(lines) + "\n")
    with caplog.at_level(logging.WARNING, logger="lit_codegen.data.apps"):
        result = load_apps(path)
    assert [p.problem_id for p in result.problems] == [1, 5]
    assert result.skipped == {"malformed_json_line": 2, "input_output_unparsable": 1}
    assert result.skipped_at["malformed_json_line"] == ["problems.jsonl line 2", "problems.jsonl line 6"]
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1  # printed once, with every reason and where
    assert "malformed_json_line=2 (problems.jsonl line 2, problems.jsonl line 6)" in warnings[0]
    assert "input_output_unparsable=1 (problems.jsonl line 3)" in warnings[0]


def write_problem_dir(root, split, name, tests, difficulty="interview", starter=None, solutions=("print(1)",)):
    d = root / split / name
    d.mkdir(parents=True)
    (d / "question.txt").write_text(f"Question {name}")
    if tests is not None:
        (d / "input_output.json").write_text(tests if isinstance(tests, str) else json.dumps(tests))
    if solutions is not None:
        (d / "solutions.json").write_text(json.dumps(list(solutions)))
    (d / "metadata.json").write_text(json.dumps({"difficulty": difficulty, "url": f"http://x/{name}"}))
    if starter is not None:
        (d / "starter_code.py").write_text(starter)


def test_load_apps_folder_layout(tmp_path):
    stdin_tests = {"inputs": ["1\n"], "outputs": ["1\n"]}
    write_problem_dir(tmp_path, "train", "0000", stdin_tests, "introductory")
    write_problem_dir(
        tmp_path, "train", "0012", {"fn_name": "f", "inputs": [[1]], "outputs": [1]}, starter="def f(x):\n"
    )
    write_problem_dir(tmp_path, "train", "0013", None)  # no input_output.json
    write_problem_dir(tmp_path, "test", "0003", stdin_tests, "competition", solutions=None)
    write_problem_dir(tmp_path, "test", "0004", "{oops")
    result = load_apps(tmp_path)
    got = [(p.source_split, p.problem_id, p.difficulty, p.fn_name) for p in result.problems]
    assert got == [
        ("train", 0, "introductory", None),
        ("train", 12, "interview", "f"),
        ("test", 3, "competition", None),
    ]
    assert result.problems[1].starter_code == "def f(x):\n"
    assert result.problems[1].url == "http://x/0012"
    assert result.problems[2].solutions == []
    assert result.skipped == {"no_tests": 1, "input_output_unparsable": 1}
    assert result.skipped_at["no_tests"] == ["train/0013"]


def test_parse_problem_keeps_stdin_tests_given_as_lists_of_lines():
    problem = parse_problem(record(input_output=json.dumps({"inputs": [["1", "2"]], "outputs": [["3"]]})))
    assert problem.input_output == {"inputs": [["1", "2"]], "outputs": [["3"]]}


def test_unparsable_metadata_skips_the_problem_and_names_it(tmp_path):
    tests = {"inputs": ["1\n"], "outputs": ["1\n"]}
    for name in ("0001", "0002", "0003"):
        write_problem_dir(tmp_path, "train", name, tests, "competition")
    (tmp_path / "train" / "0002" / "metadata.json").write_text('{"difficulty": "competition", "url": "x",}')
    (tmp_path / "train" / "0003" / "metadata.json").write_text("[1, 2]")
    result = load_apps(tmp_path)
    assert [(p.problem_id, p.difficulty) for p in result.problems] == [(1, "competition")]
    assert result.skipped_at == {"metadata_unparsable": ["train/0002", "train/0003"]}


def test_max_tests_keeps_the_rewards_subset_not_the_first_tests(tmp_path):
    """The statement's examples usually come first; the cap keeps the subset `parse_tests(max_tests=)` picks."""
    from lit_codegen.reward.compare import parse_tests

    tests = {"inputs": [f"{i}\n" for i in range(20)], "outputs": [f"{i + 1}\n" for i in range(20)]}
    (tmp_path / "p.jsonl").write_text(json.dumps(record(input_output=json.dumps(tests))) + "\n")
    kept = load_apps(tmp_path / "p.jsonl", max_tests=4).problems[0].input_output
    expected = parse_tests(tests, max_tests=4)
    assert kept["inputs"] == expected.inputs and kept["outputs"] == expected.outputs
    assert kept["inputs"] != tests["inputs"][:4]


def test_missing_file_raises_data_error(tmp_path):
    with pytest.raises(DataError, match="not found"):
        load_apps(tmp_path / "missing.jsonl")


def test_folder_without_splits_raises_data_error(tmp_path):
    with pytest.raises(DataError, match="neither train/ nor test/"):
        load_apps(tmp_path)


def test_is_hub_name(tmp_path):
    assert is_hub_name("codeparrot/apps")
    assert not is_hub_name("missing/file.jsonl")
    assert not is_hub_name("/abs/path")
    assert not is_hub_name(str(tmp_path))


def test_duplicate_problem_ids_in_a_jsonl_are_skipped_after_the_first(tmp_path):
    lines = [record(problem_id=1, question="first"), record(problem_id=2), record(problem_id=1, question="copy")]
    path = tmp_path / "dup.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in lines))
    result = load_apps(path)
    assert [(p.problem_id, p.question) for p in result.problems] == [(1, "first"), (2, "Print n + 1.")]
    assert result.skipped == {"duplicate_problem_id": 1}
    assert result.skipped_at["duplicate_problem_id"] == ["dup.jsonl line 3"]


def test_duplicate_problem_ids_in_a_folder_count_within_a_split(tmp_path):
    tests = {"inputs": ["1\n"], "outputs": ["1\n"]}
    write_problem_dir(tmp_path, "train", "0001", tests)
    write_problem_dir(tmp_path, "train", "01", tests)  # the same id 1 again in train
    write_problem_dir(tmp_path, "test", "0001", tests)  # APPS numbers test problems from 0 too: not a duplicate
    result = load_apps(tmp_path)
    assert [(p.source_split, p.problem_id) for p in result.problems] == [("train", 1), ("test", 1)]
    assert result.skipped == {"duplicate_problem_id": 1}
    assert result.skipped_at["duplicate_problem_id"] == ["train/01"]


def test_jsonl_that_is_not_utf8_is_counted_per_line_and_a_bom_is_dropped(tmp_path):
    lines = [json.dumps(record(problem_id=i)).encode() for i in (1, 2, 3)]
    lines[1] = lines[1].replace(b"Print", b"Pr\xe9nt")  # latin-1 e-acute
    path = tmp_path / "mixed.jsonl"
    path.write_bytes(b"\xef\xbb\xbf" + b"\n".join(lines) + b"\n")  # UTF-8 BOM before the first record
    result = load_apps(path)
    assert [p.problem_id for p in result.problems] == [1, 3]
    assert result.skipped == {"not_utf8": 1}
    assert result.skipped_at["not_utf8"] == ["mixed.jsonl line 2"]


def test_binary_file_as_jsonl_source_is_one_data_error(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    path = tmp_path / "train.parquet"
    pq.write_table(pa.table({"problem_id": [1]}), path)
    with pytest.raises(DataError, match=r"train.parquet is not UTF-8 JSONL text \(a parquet file\)"):
        load_apps(path)


def test_folder_with_latin1_files_bom_and_odd_names(tmp_path):
    tests = {"inputs": ["1\n"], "outputs": ["1\n"]}
    write_problem_dir(tmp_path, "train", "0001", tests)
    write_problem_dir(tmp_path, "train", "0002", tests)
    (tmp_path / "train" / "0002" / "question.txt").write_bytes("Caf\xe9?".encode("latin-1"))
    write_problem_dir(tmp_path, "train", "0003", tests)
    (tmp_path / "train" / "0003" / "input_output.json").write_bytes(b"\xef\xbb\xbf" + json.dumps(tests).encode())
    (tmp_path / "train" / "0003" / "question.txt").write_bytes("\ufeffCaf\u00e9?".encode())
    write_problem_dir(tmp_path, "train", "\u00b27", tests)  # "²7": str.isdigit() is True, int() fails
    write_problem_dir(tmp_path, "train", "notes", tests)
    (tmp_path / "train" / ".cache").mkdir()  # hidden folders are not problems
    result = load_apps(tmp_path)
    assert [p.problem_id for p in result.problems] == [1, 3]
    assert result.problems[1].question == "Caf\u00e9?"
    assert result.skipped == {"not_utf8": 1, "bad_problem_id": 2}
    assert result.skipped_at == {"not_utf8": ["train/0002"], "bad_problem_id": ["train/notes", "train/\u00b27"]}
