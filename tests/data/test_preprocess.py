import json
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
