"""The ``python -m lit_codegen.reward.code_eval`` command: JSONL and parquet data, solutions files, bad input."""

import json
import subprocess
import sys

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from lit_codegen.reward import code_eval
from lit_codegen.reward.code_eval import build_parser, main, run
from reward_helpers import require_data


def _cli(*args):
    return subprocess.run(
        [sys.executable, "-m", "lit_codegen.reward.code_eval", *args], capture_output=True, text=True, timeout=300
    )


def test_scores_a_solutions_file_in_order_with_extra_keys(tmp_path):
    data = require_data() / "apps" / "apps_coderl5.jsonl"
    solutions = tmp_path / "samples.jsonl"
    lines = [
        {
            "problem_id": 4184,
            "solution": "def is_prime(n):\n    return n > 1 and all(n % d for d in range(2, n))",
            "sample": 0,
        },
        {"problem_id": 1, "solution": "print(-1)", "sample": 1},
        {"problem_id": 4184, "solution": "def is_prime(n):\n    return n == 2", "sample": 2},
    ]
    solutions.write_text("".join(json.dumps(line) + "\n" for line in lines))
    report_path, plot = tmp_path / "out" / "report.json", tmp_path / "dist.png"
    proc = _cli(
        "--data",
        str(data),
        "--solutions",
        str(solutions),
        "--output",
        str(report_path),
        "--plot",
        str(plot),
        "--workers",
        "2",
        "--mode",
        "strict",
    )
    assert proc.returncode == 0, proc.stderr
    assert "introductory" in proc.stdout and "ALL" in proc.stdout
    report = json.loads(report_path.read_text())
    results = report["results"]
    assert [r["sample"] for r in results] == [0, 1, 2]
    assert [r["problem_id"] for r in results] == [4184, 1, 4184]
    assert results[0]["pass_rate"] == 1.0 and results[0]["n_tests"] == 8 and results[0]["difficulty"] == "introductory"
    assert results[1]["outcomes"] == ["wrong_answer"] and results[1]["difficulty"] == "interview"
    assert 0.0 < results[2]["pass_rate"] < 1.0 and len(results[2]["outcomes"]) == 8
    summary = report["summary"]
    assert summary["count"] == 3 and summary["strict_accuracy"] == pytest.approx(1 / 3)
    assert set(summary["by_difficulty"]) == {"introductory", "interview"}
    assert sum(summary["score_bands"].values()) == 3 and summary["protections"]
    assert summary["tests_per_s"] > 0 and summary["verdicts"]["passed"] >= 8
    assert plot.read_bytes()[:4] == b"\x89PNG"


def test_parquet_dataset_solutions_with_filters(tmp_path, capsys):
    rows = [json.loads(line) for line in open(require_data() / "apps" / "apps_coderl5.jsonl")]
    parquet = tmp_path / "apps.parquet"
    pq.write_table(
        pa.Table.from_pylist(
            [{k: r[k] for k in ("problem_id", "difficulty", "input_output", "solutions")} for r in rows]
        ),
        parquet,
    )
    out = tmp_path / "r.json"
    assert (
        main(
            [
                "--data",
                str(parquet),
                "--difficulty",
                "interview",
                "competition",
                "--max_problems",
                "2",
                "--all_solutions",
                "--output",
                str(out),
                "--workers",
                "1",
            ]
        )
        == 0
    )
    results = json.loads(out.read_text())["results"]
    assert [r["problem_id"] for r in results] == [1] * 5 + [111]  # problems 1 and 111, all their solutions
    assert all(r["pass_rate"] == 1.0 for r in results) and [r["solution_index"] for r in results[:2]] == [0, 1]


@pytest.mark.parametrize(
    "content, message",
    [
        ('{"problem_id": 1, "solution": "print(1)"}\nnot json\n', "malformed JSON"),
        ('{"problem_id": 999999, "solution": "print(1)"}\n', "unknown problem_id 999999"),
        ('{"problem_id": "1", "solution": "print(1)"}\n', "needs an int 'problem_id'"),
        ('{"problem_id": true, "solution": "print(1)"}\n', "needs an int 'problem_id'"),  # not problem 1
    ],
)
def test_bad_input_is_one_line(tmp_path, content, message):
    data = require_data() / "apps" / "apps_coderl5.jsonl"
    solutions = tmp_path / "bad.jsonl"
    solutions.write_text(content)
    proc = _cli("--data", str(data), "--solutions", str(solutions))
    assert proc.returncode == 2 and message in proc.stderr and len(proc.stderr.strip().splitlines()) == 1
    missing = _cli("--data", str(tmp_path / "missing.jsonl"))
    assert missing.returncode == 2 and "no such file" in missing.stderr


# Tiny self-made problems (no shared data): an echo problem and an increment problem.
ECHO = {"inputs": ["1\n", "2\n"], "outputs": ["1\n", "2\n"]}
PLUS_ONE = {"inputs": ["1\n", "5\n"], "outputs": ["2\n", "6\n"]}


def _write_jsonl(path, rows):
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return str(path)


def _problem(problem_id, tests, solution="print(input())", difficulty="interview"):
    io = tests if isinstance(tests, str) else json.dumps(tests)
    return {"problem_id": problem_id, "input_output": io, "solutions": json.dumps([solution]), "difficulty": difficulty}


def _refuse_scoring(*args, **kwargs):
    raise AssertionError("scoring started before the input was checked")


@pytest.fixture
def no_scoring(monkeypatch):
    """Fail the test if the evaluator is started: the error must come before the (slow) scoring."""
    monkeypatch.setattr(code_eval, "Evaluator", _refuse_scoring)


def _error(capsys, argv) -> str:
    """Run the command, expect exit status 2 and exactly one error line on stderr; return that line."""
    assert main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("code_eval: error: "), err
    return err[0]


def test_solution_line_cannot_override_computed_fields(tmp_path, capsys, no_scoring):
    data = _write_jsonl(tmp_path / "d.jsonl", [_problem(1, ECHO)])
    line = {"problem_id": 1, "solution": "print(42)", "pass_rate": 1.0, "n_tests": 7, "difficulty": "competition"}
    solutions = _write_jsonl(tmp_path / "s.jsonl", [line])
    out = tmp_path / "r.json"
    message = _error(capsys, ["--data", data, "--solutions", solutions, "--output", str(out)])
    assert "line 1" in message and "'pass_rate'" in message and "'n_tests'" in message and "'difficulty'" in message
    assert not out.exists()


def test_extra_keys_are_kept_and_computed_fields_are_real(tmp_path):
    data = _write_jsonl(tmp_path / "d.jsonl", [_problem(1, ECHO)])
    solutions = _write_jsonl(tmp_path / "s.jsonl", [{"problem_id": 1, "solution": "print(42)", "score": 1.0}])
    out = tmp_path / "r.json"
    assert main(["--data", data, "--solutions", solutions, "--output", str(out), "--workers", "1"]) == 0
    (result,) = json.loads(out.read_text())["results"]
    assert result["score"] == 1.0 and result["pass_rate"] == 0.0 and result["n_tests"] == 2
    assert result["outcomes"] == ["wrong_answer", "wrong_answer"] and result["difficulty"] == "interview"


@pytest.mark.parametrize(
    "tests, reason",
    [
        ("{not json", "malformed input_output JSON"),
        ({"inputs": [], "outputs": []}, "no tests"),
        ({"inputs": ["1\n", "2\n"], "outputs": ["1\n"]}, "equally long lists 'inputs' and 'outputs'"),
        ({"inputs": "1\n", "outputs": "1\n"}, "equally long lists 'inputs' and 'outputs'"),
    ],
)
def test_problems_without_usable_tests_are_one_error(tmp_path, capsys, no_scoring, tests, reason):
    data = _write_jsonl(tmp_path / "d.jsonl", [_problem(1, ECHO), _problem(2, tests), _problem(3, tests)])
    message = _error(capsys, ["--data", data])
    assert message.startswith("code_eval: error: problems without usable tests: 2 (") and "1 (" not in message
    assert message.count(reason) == 2 and ", 3 (" in message
    # with --solutions only the problems actually scored are checked
    solutions = _write_jsonl(tmp_path / "s.jsonl", [{"problem_id": 3, "solution": "print(1)"}])
    message = _error(capsys, ["--data", data, "--solutions", solutions])
    assert message.startswith("code_eval: error: problems without usable tests: 3 (") and reason in message


def test_duplicate_problem_ids_score_row_by_row(tmp_path, capsys, monkeypatch):
    # two rows share id 1: each row's own solution must be scored against that row's own tests
    rows = [_problem(1, ECHO, "print(input())"), _problem(1, PLUS_ONE, "print(int(input()) + 1)"), _problem(2, ECHO)]
    data = _write_jsonl(tmp_path / "d.jsonl", rows)
    out = tmp_path / "r.json"
    assert main(["--data", data, "--output", str(out), "--workers", "1"]) == 0
    report = json.loads(out.read_text())
    assert [(r["problem_id"], r["pass_rate"]) for r in report["results"]] == [(1, 1.0), (1, 1.0), (2, 1.0)]
    assert report["summary"]["n_problems"] == 3
    capsys.readouterr()
    # a solutions line cannot say which of the two rows it means; an unambiguous id is fine
    lines = [{"problem_id": 2, "solution": "print(input())"}, {"problem_id": 1, "solution": "print(input())"}]
    solutions = _write_jsonl(tmp_path / "s.jsonl", lines)
    monkeypatch.setattr(code_eval, "Evaluator", _refuse_scoring)
    message = _error(capsys, ["--data", data, "--solutions", solutions])
    assert "line 2" in message and "problem_id 1 appears more than once" in message


def test_output_and_plot_paths_are_checked_before_scoring(tmp_path, capsys, no_scoring):
    data = _write_jsonl(tmp_path / "d.jsonl", [_problem(1, ECHO)])
    assert _error(capsys, ["--data", data, "--output", str(tmp_path)]).endswith(
        f"--output {tmp_path}: is a directory; give a file name"
    )
    assert _error(capsys, ["--data", data, "--plot", str(tmp_path)]).endswith(
        f"--plot {tmp_path}: is a directory; give a file name"
    )
    assert "unsupported image format 'txt'" in _error(capsys, ["--data", data, "--plot", str(tmp_path / "p.txt")])
    blocker = tmp_path / "file"
    blocker.write_text("")
    assert "part of its folder path is a file" in _error(capsys, ["--data", data, "--output", str(blocker / "r.json")])


def test_output_and_plot_folders_are_created(tmp_path):
    data = _write_jsonl(tmp_path / "d.jsonl", [_problem(1, ECHO)])
    out, plot = tmp_path / "a" / "b" / "r.json", tmp_path / "c" / "d" / "p.png"
    assert main(["--data", data, "--output", str(out), "--plot", str(plot), "--workers", "1"]) == 0
    assert json.loads(out.read_text())["results"][0]["pass_rate"] == 1.0
    assert plot.read_bytes()[:4] == b"\x89PNG"


@pytest.mark.parametrize(
    "flag, value",
    [
        ("--timeout", "0"),
        ("--timeout", "-1"),
        ("--timeout", "nan"),
        ("--memory_mb", "0"),
        ("--memory_mb", "99999999999"),  # past what RLIMIT_AS takes: the Evaluator's own limit, checked up front
        ("--workers", "-1"),
        ("--workers", "0"),
        ("--max_problems", "-1"),
        ("--max_problems", "0"),
    ],
)
def test_out_of_range_options_are_one_error(tmp_path, capsys, no_scoring, flag, value):
    data = _write_jsonl(tmp_path / "d.jsonl", [_problem(1, ECHO), _problem(2, ECHO)])
    message = _error(capsys, ["--data", data, flag, value])
    assert flag in message and value in message


def test_non_utf8_files_are_one_error(tmp_path, capsys, no_scoring):
    good = _write_jsonl(tmp_path / "d.jsonl", [_problem(1, ECHO)])
    latin1 = tmp_path / "latin1.jsonl"
    latin1.write_bytes(json.dumps(_problem(1, ECHO)).encode() + b"\n" + b'{"question": "caf\xe9"}\n')
    message = _error(capsys, ["--data", str(latin1)])
    assert "latin1.jsonl:2" in message and "not UTF-8" in message
    message = _error(capsys, ["--data", good, "--solutions", str(latin1)])
    assert "latin1.jsonl:2" in message and "solutions file is not UTF-8" in message


@pytest.mark.parametrize("name", ["data.jsonl.gz", "./x.parquet", "./apps", "data/apps/test", "~/nowhere.json"])
def test_missing_local_data_is_no_such_file(tmp_path, monkeypatch, capsys, no_scoring, name):
    monkeypatch.chdir(tmp_path)
    message = _error(capsys, ["--data", name])
    assert message == f"code_eval: error: --data {name}: no such file"


def test_unreadable_parquet_and_missing_solutions(tmp_path, capsys, no_scoring):
    fake = tmp_path / "apps.parquet"
    fake.write_text("not parquet")
    assert "cannot read parquet" in _error(capsys, ["--data", str(fake)])
    data = _write_jsonl(tmp_path / "d.jsonl", [_problem(1, ECHO)])
    message = _error(capsys, ["--data", data, "--solutions", str(tmp_path / "nope.jsonl")])
    assert message.endswith("nope.jsonl: no such file")
    assert _error(capsys, ["--data", data, "--solutions", str(tmp_path)]).endswith(": not a file")


def test_compressed_and_json_array_data_files_are_read(tmp_path):
    import bz2
    import gzip
    import lzma

    rows = [_problem(1, ECHO), _problem(2, PLUS_ONE, solution="print(int(input()) + 1)")]
    text = "".join(json.dumps(row) + "\n" for row in rows).encode()
    files = {"d.jsonl.gz": gzip.compress(text), "d.jsonl.bz2": bz2.compress(text), "d.jsonl.xz": lzma.compress(text),
             "d.json": json.dumps(rows, indent=2).encode(), "d1.json": json.dumps(rows).encode(),
             "d.json.gz": gzip.compress(json.dumps(rows).encode())}
    for name, content in files.items():
        (tmp_path / name).write_bytes(content)
        report = run(build_parser().parse_args(["--data", str(tmp_path / name), "--workers", "1"]))
        assert [r["pass_rate"] for r in report["results"]] == [1.0, 1.0], name


def test_compressed_files_that_cannot_be_read_are_one_error(tmp_path, capsys, no_scoring):
    (tmp_path / "d.jsonl.gz").write_bytes(b"not gzip at all")
    assert "cannot read data file" in _error(capsys, ["--data", str(tmp_path / "d.jsonl.gz")])
    (tmp_path / "d.jsonl.zst").write_bytes(b"\x28\xb5\x2f\xfd")
    assert "zstd-compressed files are not supported" in _error(capsys, ["--data", str(tmp_path / "d.jsonl.zst")])


def test_null_missing_and_empty_difficulty_are_one_unknown_group(tmp_path):
    rows = [_problem(1, ECHO, difficulty=None), _problem(2, ECHO), _problem(3, ECHO, difficulty="")]
    del rows[1]["difficulty"]
    report = run(build_parser().parse_args(["--data", _write_jsonl(tmp_path / "d.jsonl", rows), "--workers", "1"]))
    assert [r["difficulty"] for r in report["results"]] == ["unknown"] * 3
    assert list(report["summary"]["by_difficulty"]) == ["unknown"]


def test_an_output_path_that_cannot_be_written_is_refused_before_scoring(tmp_path, capsys, no_scoring):
    data = _write_jsonl(tmp_path / "d.jsonl", [_problem(1, ECHO)])
    assert "/proc/r.json: not writable" in _error(capsys, ["--data", data, "--output", "/proc/r.json"])
