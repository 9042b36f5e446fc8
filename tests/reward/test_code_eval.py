"""The ``python -m lit_codegen.reward.code_eval`` command: JSONL and parquet data, solutions files, bad input."""

import json
import subprocess
import sys

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from conftest import require_data

from lit_codegen.reward.code_eval import main


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
    ],
)
def test_bad_input_is_one_line(tmp_path, content, message):
    data = require_data() / "apps" / "apps_coderl5.jsonl"
    solutions = tmp_path / "bad.jsonl"
    solutions.write_text(content)
    proc = _cli("--data", str(data), "--solutions", str(solutions))
    assert proc.returncode == 2 and message in proc.stderr and len(proc.stderr.strip().splitlines()) == 1
    missing = _cli("--data", str(tmp_path / "missing.jsonl"))
    assert missing.returncode == 2 and "not found" in missing.stderr
