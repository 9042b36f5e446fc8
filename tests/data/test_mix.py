"""Mixing sources in `preprocess`: cross-source dedup, per-source weights, the LiveCodeBench date split, the CLI."""

import json
import logging
from collections import Counter

import pyarrow.parquet as pq
import pytest

from lit_codegen.data.apps import DataError
from lit_codegen.data.mix import normalise_statement
from lit_codegen.data.preprocess import ID_STRIDE, main, preprocess
from lit_codegen.reward.code_eval import build_parser, run


def read(path):
    return pq.read_table(path).to_pylist()


def titles(rows):
    return [r["question"].split("\n")[0] for r in rows]


def test_normalised_statements_ignore_case_spacing_and_punctuation():
    assert normalise_statement("Sum of two\nGiven a and b, print a + b.") == normalise_statement(
        "SUM OF TWO\n\n  Given $a$ and $b$ print  a+b")
    assert normalise_statement("Sum of two") != normalise_statement("Sum of three")


def test_duplicates_across_sources_are_dropped_counted_and_logged(published, tmp_path, caplog):
    taco, contests = str(published["taco"]), str(published["code_contests"])
    with caplog.at_level(logging.INFO, logger="lit_codegen.data.preprocess"):
        paths = preprocess([taco, contests], tmp_path)
    train, test = read(paths["train"]), read(paths["test"])
    # CodeContests' test problem "SUM OF TWO" is TACO's training "Sum of two": the training copy goes (test wins)
    assert titles(train) == ["Count vowels", "Largest"] and titles(test) == ["Shout", "SUM OF TWO", "Words"]
    assert f"dropped 1 duplicate statements (split: dropped source <- kept source): train: {taco} <- {contests} " \
           "(test) x1" in caplog.text
    assert [r["data_source"] for r in train] == ["taco", "codecontests"]
    assert [r["problem_id"] for r in train] == [2, ID_STRIDE + 1]  # k-th source's i-th problem: k * ID_STRIDE + i
    assert train[0]["source_id"] == "count-vowels" and train[0]["tags"] == ["Strings"]
    assert test[2]["platform"] == "codechef" and test[1]["tags"] == ["math", "implementation"]


def test_after_makes_recent_livecodebench_problems_the_test_split(published, tmp_path):
    paths = preprocess([str(published["livecodebench"]), str(published["deepcoder"])], tmp_path, after="2024-01-01")
    train, test = read(paths["train"]), read(paths["test"])
    assert titles(test) == ["Spread", "Sort descending", "Double it"]  # DeepCoder's lcbv5 row is LiveCodeBench too
    assert all(r["data_source"] == "livecodebench" and r["release_date"] > "2024-01-01" for r in test)
    assert titles(train) == ["Count greater", "Minimum", "Echo twice", "Add", "Square"]
    assert [r["release_date"] for r in train] == ["2023-05-20", "", "", "", ""]
    with pytest.raises(DataError, match=r"--after 2030-01-01: no LiveCodeBench problem was released after it "
                                        r"\(latest: 2024-10-12\)"):
        preprocess(str(published["livecodebench"]), tmp_path / "x", after="2030-01-01")
    with pytest.raises(DataError, match="--after must be a date YYYY-MM-DD, got '2024-13-01'"):
        preprocess(str(published["livecodebench"]), tmp_path / "x", after="2024-13-01")


def test_weights_resample_each_sources_training_problems(published, tmp_path):
    paths = preprocess([str(published["taco"]), str(published["deepcoder"])], tmp_path, weights=[2, 0.5], seed=3)
    train, test = read(paths["train"]), read(paths["test"])
    per_source = Counter(r["problem_id"] // ID_STRIDE for r in train)
    assert per_source == {0: 2 * 2, 1: 4 // 2}  # TACO's 2 training problems twice, half of DeepCoder's 4
    assert titles(train)[:4] == ["Sum of two", "Sum of two", "Count vowels", "Count vowels"]
    assert titles(test) == ["Shout", "Minimum"]  # test is never resampled
    again = read(preprocess([str(published["taco"]), str(published["deepcoder"])], tmp_path / "again",
                            weights=[2, 0.5], seed=3)["train"])
    assert titles(again) == titles(train)  # seeded
    with pytest.raises(DataError, match="--weights needs one weight per --source: got 1 for 2 sources"):
        preprocess([str(published["taco"]), str(published["deepcoder"])], tmp_path / "x", weights=[1])
    with pytest.raises(DataError, match=r"--weights must be finite numbers >= 0, at least one positive, got \[-1.0"):
        preprocess([str(published["taco"]), str(published["deepcoder"])], tmp_path / "x", weights=[-1.0, 1.0])


def test_a_format_per_source_and_format_errors(published, tmp_path):
    sources = [str(published["taco"]), str(published["livecodebench"])]
    paths = preprocess(sources, tmp_path, formats=["taco", "livecodebench"], test_size=2, seed=0)
    assert len(read(paths["train"])) + len(read(paths["test"])) == 6
    with pytest.raises(DataError, match="--format needs one format, or one per --source: got 2 for 3"):
        preprocess([*sources, sources[0]], tmp_path / "x", formats=["taco", "livecodebench"])
    with pytest.raises(DataError, match="unknown --format 'leetcode'"):
        preprocess(sources[0], tmp_path / "x", formats="leetcode")


def test_cli_mix_then_code_eval_reports_pass_rates_per_source(published, programs, tmp_path, capsys):
    out = tmp_path / "mix"
    argv = ["--source", str(published["taco"]), str(published["livecodebench"]), "--after", "2024-01-01",
            "--weights", "1", "1", "--local_dir", str(out), "--template_type", "base"]
    assert main(argv) == 0
    assert "wrote" in capsys.readouterr().out
    train = read(out / "train.parquet")
    assert Counter(r["data_source"] for r in train) == {"taco": 3, "livecodebench": 1}
    solutions = tmp_path / "samples.jsonl"
    with solutions.open("w") as f:
        for row in train:
            title = row["question"].split("\n")[0]
            for kind in ("right", "wrong"):
                f.write(json.dumps({"problem_id": row["problem_id"], "solution": programs[title][kind],
                                    "kind": kind}) + "\n")
    args = build_parser().parse_args(["--data", str(out / "train.parquet"), "--solutions", str(solutions),
                                      "--workers", "2"])
    report = run(args)
    by_source = report["summary"]["by_source"]
    assert set(by_source) == {"taco", "livecodebench"} and by_source["taco"]["count"] == 6
    right = [r for r in report["results"] if r["kind"] == "right"]
    wrong = [r for r in report["results"] if r["kind"] == "wrong"]
    assert [r["pass_rate"] for r in right] == [1.0] * 4 and all(r["pass_rate"] < 1.0 for r in wrong)
    assert {r["data_source"] for r in right} == {"taco", "livecodebench"}
    assert by_source["livecodebench"]["strict_accuracy"] == 0.5  # the right program of its one problem, not the wrong


def test_cli_unknown_format_and_missing_file_are_one_error_line(tmp_path, capsys):
    assert main(["--source", str(tmp_path / "nope.jsonl"), "--format", "taco", "--local_dir", str(tmp_path)]) == 2
    err = capsys.readouterr().err.strip()
    assert err == f"error: data source '{tmp_path / 'nope.jsonl'}' not found: give an existing file or folder, " \
                  "or a hub name"
    with pytest.raises(SystemExit) as exit_info:
        main(["--source", "x.jsonl", "--format", "leetcode", "--local_dir", str(tmp_path)])
    assert exit_info.value.code == 2 and "invalid choice: 'leetcode'" in capsys.readouterr().err


def test_a_mix_where_only_some_sources_have_natural_splits_is_shuffled_with_a_warning(published, tmp_path, caplog):
    with caplog.at_level(logging.WARNING, logger="lit_codegen.data.preprocess"):
        paths = preprocess([str(published["taco"]), str(published["livecodebench"])], tmp_path, seed=1)
    assert len(read(paths["train"])) == 5 and len(read(paths["test"])) == 1  # 10% of 6, at least one
    assert "3 of 6 problems have no natural split (e.g. LiveCodeBench): shuffled all of them with --seed 1" in \
        caplog.text
    assert "the source has no" not in caplog.text


@pytest.mark.parametrize("fmt", ["taco", "code_contests", "deepcoder"])
def test_each_converted_parquet_scores_its_own_solutions_under_code_eval(published, tmp_path, fmt):
    paths = preprocess(str(published[fmt]), tmp_path)
    for split, path in paths.items():
        report = run(build_parser().parse_args(["--data", str(path), "--workers", "2", "--all_solutions"]))
        rates = [r["pass_rate"] for r in report["results"] if r["solution_index"] == 0 or fmt != "code_contests"]
        assert rates and rates == [1.0] * len(rates), (split, report["results"])
        assert set(report["summary"]["by_source"]) <= {"taco", "codecontests", "livecodebench", "primeintellect",
                                                       "codeforces"}
    if fmt == "code_contests":  # the Python 2 solution of "Largest" (print statement) does not run under Python 3
        report = run(build_parser().parse_args(["--data", str(paths["train"]), "--workers", "2", "--all_solutions"]))
        assert [(r["solution_index"], r["outcomes"][0]) for r in report["results"]] == [(0, "passed"),
                                                                                      (1, "compile_error")]


def test_real_apps_problems_mix_with_a_converted_source_and_their_taco_copies_are_dropped(
        shared_data, published, tmp_path, caplog):
    apps = shared_data / "apps" / "apps_coderl5.jsonl"
    records = [json.loads(line) for line in apps.read_text().splitlines()]
    # Two of the real problems re-published in TACO's layout (TACO contains APPS), reformatted statements
    taco_copy = tmp_path / "taco_copy.jsonl"
    taco_copy.write_text("".join(json.dumps({
        "question": "  " + r["question"].upper().replace("\n", "\n\n"), "solutions": r["solutions"],
        "input_output": r["input_output"], "starter_code": r.get("starter_code") or "", "difficulty": "EASY",
        "name": f"apps-{r['problem_id']}", "source": "codeforces", "tags": "[]", "skill_types": "['Sorting']",
        "raw_tags": "[]", "url": r.get("url") or "", "date": None}) + "\n" for r in records[:2]))
    with caplog.at_level(logging.WARNING, logger="lit_codegen.data.preprocess"):
        paths = preprocess([str(apps), str(taco_copy), str(published["livecodebench"])], tmp_path / "out",
                           after="2024-01-01")
    train = read(paths["train"])
    assert Counter(r["data_source"] for r in train) == {"apps": 5, "livecodebench": 1}  # the TACO copies went
    assert "dropped 2 duplicate statements" in caplog.text
    assert sorted(int(r["source_id"]) for r in train if r["data_source"] == "apps") == [1, 111, 2287, 2404, 4184]
    report = run(build_parser().parse_args(["--data", str(paths["train"]), "--workers", "2"]))
    apps_rates = [r["pass_rate"] for r in report["results"] if r["data_source"] == "apps"]
    assert apps_rates == [1.0] * 5  # each real problem's first reference solution, renumbered and mixed
    assert report["summary"]["by_source"]["apps"]["strict_accuracy"] == 1.0
