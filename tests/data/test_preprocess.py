import json
import logging
import subprocess
import sys

import pyarrow.parquet as pq
import pytest

from lit_codegen.data.apps import DataError
from lit_codegen.data.preprocess import PARQUET_SCHEMA, main, preprocess

VERL_COLUMNS = {"data_source", "prompt", "ability", "reward_model", "extra_info"}


def read(path):
    return pq.read_table(path).to_pylist()


def test_mbpp_derived_chat_writes_338_rows_split_disjointly(shared_data, tmp_path):
    source = shared_data / "derived" / "mbpp_apps.jsonl"
    assert main(["--source", str(source), "--local_dir", str(tmp_path), "--template_type", "chat"]) == 0
    train, test = read(tmp_path / "train.parquet"), read(tmp_path / "test.parquet")
    assert len(train) + len(test) == 338
    assert len(test) == 34  # default test_size 0.1
    train_ids, test_ids = {r["problem_id"] for r in train}, {r["problem_id"] for r in test}
    assert not train_ids & test_ids and len(train_ids | test_ids) == 338
    assert set(pq.read_schema(tmp_path / "train.parquet").names) == set(PARQUET_SCHEMA.names)
    assert VERL_COLUMNS <= set(PARQUET_SCHEMA.names)

    row = next(r for r in train if r["problem_id"] == 600001)
    assert row["data_source"] == "apps" and row["ability"] == "code" and row["split"] == "train"
    assert row["fn_name"] == "is_not_prime" and row["template_type"] == "chat"
    assert [m["role"] for m in row["prompt"]] == ["system", "user"]
    assert row["raw_prompt"].endswith("\nUse Call-Based format\nANSWER:\n")
    assert row["reward_model"] == {"style": "rule", "ground_truth": row["input_output"]}
    assert json.loads(row["input_output"])["fn_name"] == "is_not_prime"
    assert isinstance(json.loads(row["solutions"]), list)
    assert row["extra_info"]["problem_id"] == 600001 and row["extra_info"]["split"] == "train"
    assert [r["extra_info"]["index"] for r in train] == list(range(len(train)))
    stdin_row = next(r for r in train + test if r["problem_id"] >= 700000)
    assert stdin_row["fn_name"] is None


def test_coderl5_base_gives_5_rows(shared_data, tmp_path):
    paths = preprocess(str(shared_data / "apps" / "apps_coderl5.jsonl"), tmp_path, template_type="base")
    rows = read(paths["train"]) + read(paths["test"])
    assert sorted(r["problem_id"] for r in rows) == [1, 111, 2287, 2404, 4184]
    for row in rows:
        assert row["prompt"] == [{"role": "user", "content": row["raw_prompt"]}]
        assert row["raw_prompt"].startswith("\nQUESTION:\n")


def test_split_is_deterministic_given_seed(shared_data, tmp_path):
    source = str(shared_data / "derived" / "mbpp_apps.jsonl")

    def test_ids(out, seed):
        return [r["problem_id"] for r in read(preprocess(source, tmp_path / out, seed=seed, test_size=0.2)["test"])]

    assert test_ids("a", 1) == test_ids("b", 1)
    assert test_ids("a", 1) != test_ids("c", 2)
    assert len(test_ids("a", 1)) == round(0.2 * 338)


def test_max_tests_and_difficulties(shared_data, tmp_path):
    source = str(shared_data / "apps" / "apps_coderl5.jsonl")
    paths = preprocess(source, tmp_path, difficulties=["introductory"], max_tests=1, test_size=1)
    rows = read(paths["train"]) + read(paths["test"])
    assert sorted(r["problem_id"] for r in rows) == [2404, 4184]
    for row in rows:
        tests = json.loads(row["input_output"])
        assert len(tests["inputs"]) == len(tests["outputs"]) == 1
        assert row["reward_model"]["ground_truth"] == row["input_output"]


def test_folder_source_keeps_natural_splits(tmp_path):
    for split, ids in {"train": ["0001", "0002"], "test": ["0005"]}.items():
        for name in ids:
            d = tmp_path / "apps" / split / name
            d.mkdir(parents=True)
            (d / "question.txt").write_text("Q")
            (d / "input_output.json").write_text(json.dumps({"inputs": ["1\n"], "outputs": ["1\n"]}))
    paths = preprocess(str(tmp_path / "apps"), tmp_path / "out")
    assert [r["problem_id"] for r in read(paths["train"])] == [1, 2]
    assert [r["problem_id"] for r in read(paths["test"])] == [5]
    assert read(paths["test"])[0]["difficulty"] == ""


def test_errors_are_data_errors(shared_data, tmp_path):
    with pytest.raises(DataError, match="no valid problems left"):
        preprocess(str(shared_data / "derived" / "mbpp_apps.jsonl"), tmp_path, difficulties=["competition"])
    with pytest.raises(DataError, match="--test_size"):
        preprocess(str(shared_data / "apps" / "apps_coderl5.jsonl"), tmp_path, test_size=1.5)
    with pytest.raises(DataError, match="--max_tests"):
        preprocess(str(shared_data / "apps" / "apps_coderl5.jsonl"), tmp_path, max_tests=0)


def test_cli_bad_jsonl_is_counted_not_a_traceback(tmp_path):
    good = {
        "problem_id": 1,
        "question": "Q",
        "solutions": "[]",
        "input_output": '{"inputs": ["1\\n"], "outputs": ["1\\n"]}',
    }
    lines = [json.dumps(good), "{truncated", json.dumps({**good, "problem_id": 2, "input_output": "{bad"})]
    lines.append(json.dumps({**good, "problem_id": 3}))
    source = tmp_path / "bad.jsonl"
    source.write_text("\n".join(lines) + "\n")
    out = tmp_path / "out"
    proc = subprocess.run(
        [sys.executable, "-m", "lit_codegen.data.preprocess", "--source", str(source), "--local_dir", str(out)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    assert "Traceback" not in proc.stderr
    assert "malformed_json_line=1 (bad.jsonl line 2)" in proc.stderr
    assert "input_output_unparsable=1 (bad.jsonl line 3)" in proc.stderr
    assert len(read(out / "train.parquet")) + len(read(out / "test.parquet")) == 2


def test_cli_missing_file_is_one_line_error(tmp_path, capsys):
    assert main(["--source", str(tmp_path / "nope.jsonl"), "--local_dir", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: data source") and "nope.jsonl" in err and "\n" not in err
    assert not (tmp_path / "out").exists()


def write_jsonl(path, ids, **fields):
    tests = json.dumps({"inputs": ["1\n"], "outputs": ["1\n"]})
    records = [{"problem_id": i, "question": f"Q{i}", "solutions": "[]", "input_output": tests, **fields} for i in ids]
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    return path


def write_folder(root, splits):
    """An APPS folder: `splits` maps split -> {folder name: difficulty}."""
    for split, problems in splits.items():
        for name, difficulty in problems.items():
            d = root / split / name
            d.mkdir(parents=True)
            (d / "question.txt").write_text(f"Q{name}")
            (d / "input_output.json").write_text(json.dumps({"inputs": ["1\n"], "outputs": ["1\n"]}))
            (d / "metadata.json").write_text(json.dumps({"difficulty": difficulty, "url": ""}))
    return root


def test_failed_write_leaves_the_previous_files_untouched(tmp_path, monkeypatch):
    out = tmp_path / "out"
    preprocess(str(write_jsonl(tmp_path / "old.jsonl", range(10))), out, test_size=2)
    before = {name: (out / name).read_bytes() for name in ("train.parquet", "test.parquet")}
    real_write, writes = pq.write_table, []

    def write_then_fail(table, where, **kwargs):  # the second file fails (a full disk) after the first was written
        writes.append(where)
        if len(writes) == 2:
            raise OSError(28, "No space left on device")
        real_write(table, where, **kwargs)

    monkeypatch.setattr(pq, "write_table", write_then_fail)
    with pytest.raises(DataError, match="cannot write to --local_dir .*No space left on device"):
        preprocess(str(write_jsonl(tmp_path / "new.jsonl", range(100, 120))), out, test_size=5)
    assert len(writes) == 2
    assert {name: (out / name).read_bytes() for name in before} == before
    assert sorted(p.name for p in out.iterdir()) == ["test.parquet", "train.parquet"]  # no temporary file left


def test_problem_id_outside_int64_is_skipped_not_a_crash(tmp_path):
    source = write_jsonl(tmp_path / "ids.jsonl", [1, 2, 3])
    source.write_text(source.read_text().replace('"problem_id": 3', f'"problem_id": {2**63}'))
    assert main(["--source", str(source), "--local_dir", str(tmp_path / "out"), "--test_size", "1"]) == 0
    rows = read(tmp_path / "out" / "train.parquet") + read(tmp_path / "out" / "test.parquet")
    assert sorted(r["problem_id"] for r in rows) == [1, 2]


def test_duplicate_ids_never_land_in_both_files(tmp_path, caplog):
    source = write_jsonl(tmp_path / "dup.jsonl", [1, 2, 3, 1, 2, 1])
    with caplog.at_level(logging.WARNING):
        paths = preprocess(str(source), tmp_path / "out", test_size=0.5)
    ids = [r["problem_id"] for r in read(paths["train"]) + read(paths["test"])]
    assert sorted(ids) == [1, 2, 3]
    assert "duplicate_problem_id=3 (dup.jsonl line 4, dup.jsonl line 5, dup.jsonl line 6)" in caplog.text


def test_test_size_refuses_to_pool_natural_splits_that_share_ids(tmp_path):
    """APPS numbers its train and its test problems from 0: pooled, two problems would share an id in one file."""
    source = write_folder(tmp_path / "apps", {"train": {"0001": "interview", "0002": "interview"},
                                              "test": {"0001": "interview", "0003": "interview"}})
    with pytest.raises(DataError, match=r"1 problem ids \(e.g. 1\) occur in both natural splits"):
        preprocess(str(source), tmp_path / "out", test_size=0.5)
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").iterdir())
    paths = preprocess(str(source), tmp_path / "out")  # the natural splits are fine
    assert [r["problem_id"] for r in read(paths["test"])] == [1, 3]


def test_a_lone_surrogate_skips_its_record_and_keeps_the_others(tmp_path):
    rows = [json.loads(line) for line in write_jsonl(tmp_path / "p.jsonl", [1, 2, 3]).read_text().splitlines()]
    rows[2]["question"] = "bad \ud800 char"
    (tmp_path / "p.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    paths = preprocess(str(tmp_path / "p.jsonl"), tmp_path / "out", test_size=1)
    assert sorted(r["problem_id"] for r in read(paths["train"]) + read(paths["test"])) == [1, 2]


@pytest.mark.parametrize(
    ("splits", "difficulties", "empty", "kept"),
    [
        ({"test": {"0001": "interview", "0002": "interview", "0003": "interview"}}, None, "train", "test"),
        ({"train": {"0001": "interview", "0002": "interview", "0003": "interview"}}, None, "test", "train"),
        (
            {"train": {"0001": "introductory", "0002": "introductory"}, "test": {"0003": "interview"}},
            ["introductory"],
            "test",
            "train",
        ),
    ],
    ids=["only-test-folder", "only-train-folder", "difficulties-empty-test"],
)
def test_an_empty_natural_split_is_reshuffled_with_one_warning(tmp_path, caplog, splits, difficulties, empty, kept):
    source = write_folder(tmp_path / "apps", splits)
    with caplog.at_level(logging.WARNING, logger="lit_codegen.data.preprocess"):
        paths = preprocess(str(source), tmp_path / "out", difficulties=difficulties)
    train, test = read(paths["train"]), read(paths["test"])
    assert len(test) == 1 and len(train) >= 1
    warnings = [r.getMessage() for r in caplog.records if r.name == "lit_codegen.data.preprocess"]
    assert len(warnings) == 1
    assert warnings[0].startswith(f"the source has no {empty} problems")
    n = len(train) + 1
    assert f"shuffled its {n} {kept} problems with --seed 0 and put 1 of them in test.parquet" in warnings[0]


def test_natural_splits_are_kept_without_a_warning(tmp_path, caplog):
    source = write_folder(tmp_path / "apps", {"train": {"0001": "interview"}, "test": {"0001": "interview"}})
    with caplog.at_level(logging.WARNING, logger="lit_codegen.data.preprocess"):
        paths = preprocess(str(source), tmp_path / "out")
    assert [r["split"] for r in read(paths["train"]) + read(paths["test"])] == ["train", "test"]
    assert not caplog.records


def test_test_size_equal_to_the_problem_count_is_cut_with_a_warning(tmp_path, caplog):
    with caplog.at_level(logging.WARNING, logger="lit_codegen.data.preprocess"):
        paths = preprocess(str(write_jsonl(tmp_path / "five.jsonl", range(5))), tmp_path / "out", test_size=5)
    assert len(read(paths["train"])) == 1 and len(read(paths["test"])) == 4
    assert "--test_size 5 asks for 5 test problems of 5; using 4 so that train keeps at least one" in caplog.text


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--test_size", "nan"], "error: --test_size must be a fraction in (0, 1) or a whole count >= 1, got nan"),
        (["--test_size", "inf"], "error: --test_size must be a fraction in (0, 1) or a whole count >= 1, got inf"),
        (["--test_size=-inf"], "error: --test_size must be a fraction in (0, 1) or a whole count >= 1, got -inf"),
        (["--local_dir", "{tmp}/a_file"], "error: --local_dir {tmp}/a_file exists and is not a folder"),
        (["--source", "{tmp}/a_parquet/train.parquet"], "error: {tmp}/a_parquet/train.parquet is not UTF-8 JSONL text"),
    ],
    ids=["nan", "inf", "-inf", "local-dir-is-a-file", "parquet-as-source"],
)
def test_cli_bad_arguments_are_one_error_line(tmp_path, capsys, extra, message):
    source = write_jsonl(tmp_path / "ok.jsonl", range(4))
    (tmp_path / "a_file").write_text("keep me")
    preprocess(str(source), tmp_path / "a_parquet")
    argv = ["--source", str(source), "--local_dir", str(tmp_path / "out")] + [a.format(tmp=tmp_path) for a in extra]
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith(message.format(tmp=tmp_path)) and "\n" not in err
    assert not (tmp_path / "out").exists()
    assert (tmp_path / "a_file").read_text() == "keep me"
