"""Converters from the published layouts of TACO, CodeContests, LiveCodeBench and DeepCoder to APPS problems.

Every format becomes an `AppsProblem` whose `input_output` the evaluator already runs: standard-input tests as
text, functional tests as call-based tests (`fn_name` + a list of JSON-decoded arguments per test). One converter
function per format turns a published record into an APPS record plus the extra columns a user filters on
(`data_source`, `source_id`, `platform`, `release_date`, `tags`, `skills`); `load_source` reads a hub dataset or
local files in the published layout and validates every record with `lit_codegen.data.apps.parse_problem`.

    problems = load_source("tests/data/fixtures/livecodebench/test.jsonl", "livecodebench").problems
    problems[0].fn_name, problems[0].release_date  # -> 'countGreater', '2023-05-20'

Formats (see the table in docs/data.md for fields and caveats): `apps` (handled by `lit_codegen.data.apps`), `taco`,
`code_contests`, `livecodebench`, `deepcoder`. Tests of converted formats are capped: a test whose input and output
together exceed `MAX_TEST_BYTES` is dropped, and tests are kept in order (public, then private, then generated)
only while the problem's tests stay within `MAX_PROBLEM_TEST_BYTES`.
"""

from __future__ import annotations

import ast
import base64
import dataclasses
import datetime
import io
import json
import logging
import pickle
import re
import zlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from lit_codegen.data.apps import (
    DataError,
    InvalidRecord,
    LoadResult,
    _jsonl_records,
    cap_tests,
    load_apps,
    parse_problem,
)
from lit_codegen.reward.compare import loads_json

log = logging.getLogger(__name__)

FORMATS = ("apps", "taco", "code_contests", "livecodebench", "deepcoder")
HUB_NAMES = {
    "apps": "codeparrot/apps",
    "taco": "BAAI/TACO",
    "code_contests": "deepmind/code_contests",
    "livecodebench": "livecodebench/code_generation_lite",
    "deepcoder": "agentica-org/DeepCoder-Preview-Dataset",
}
# `data_source` column per format; "codecontests" is the name verl's reward router knows.
DATA_SOURCES = {"apps": "apps", "taco": "taco", "code_contests": "codecontests", "livecodebench": "livecodebench"}
# DeepCoder's configs and the data_source of their rows (lcbv5 is LiveCodeBench v5).
DEEPCODER_SUBSETS = {"primeintellect": "primeintellect", "taco": "taco", "lcbv5": "livecodebench",
                     "codeforces": "codeforces"}
MAX_TEST_BYTES = 1 << 20  # one test's input + output; CodeContests' generated tests reach tens of MB
MAX_PROBLEM_TEST_BYTES = 16 << 20  # all of one problem's tests (one parquet cell, sent to the sandbox per job)
# deepmind/code_contests enums (ints in the parquet files, names in a JSON export); 1 = PYTHON (Python 2), 3 = PYTHON3.
CC_LANGUAGES = {1: "python2", 3: "python3", "PYTHON": "python2", "PYTHON3": "python3"}
CC_SOURCES = ("unknown", "codechef", "codeforces", "hackerearth", "codejam", "atcoder", "aizu")
CC_DIFFICULTIES = ("unknown", "easy", "medium", "hard", "harder", "hardest", "external",
                   *"ABCDEFGHIJKLMNOPQRSTUV")  # 7.. are Codeforces problem letters
_DATA_SUFFIXES = (".jsonl", ".json", ".parquet", ".arrow")
_DATASETS_METADATA = {"dataset_info.json", "state.json", "dataset_dict.json"}  # written by `save_to_disk`
_DATE = re.compile(r"^\d{4}-\d{2}-\d{2}")

Record = tuple[str, dict | None, str | None, str | None]  # (where, record, source split, reason it failed to read)


# -- small field readers --------------------------------------------------------------------------------------------
def _json(value: Any, reason: str) -> Any:
    """A field that the published files store as a JSON string (already-decoded values pass through)."""
    if not isinstance(value, str):
        return value
    try:
        return loads_json(value)
    except ValueError as err:
        raise InvalidRecord(reason, str(err)[:80]) from None


def _str_list(value: Any) -> list[str]:
    """A list of strings stored as a list, a JSON string or a Python literal (TACO writes "['Sorting']")."""
    if isinstance(value, str):
        try:
            value = json.loads(value)
        except ValueError:
            try:
                value = ast.literal_eval(value)
            except (ValueError, SyntaxError, MemoryError, RecursionError):
                return []
    if not isinstance(value, (list, tuple)):
        return []
    return [str(v) for v in value if v is not None and str(v).strip()]


def _date(value: Any) -> str:
    """`YYYY-MM-DD` of a date, datetime or ISO string ("2023-08-21T00:00:00"); "" if there is none."""
    if isinstance(value, (datetime.date, datetime.datetime)):
        return value.isoformat()[:10]
    if isinstance(value, str) and _DATE.match(value.strip()):
        return value.strip()[:10]
    return ""


def _text(value: Any) -> str:
    return value if isinstance(value, str) else ""


def _stdin_tests(pairs: list[tuple[Any, Any]]) -> dict[str, list]:
    return {"inputs": [i for i, _ in pairs], "outputs": [o for _, o in pairs]}


def _functional_args(text: str) -> list:
    """LiveCodeBench's functional input: one JSON value per line, the arguments in order."""
    try:
        return [loads_json(line) for line in text.split("\n")]
    except ValueError as err:
        raise InvalidRecord("functional_input_not_json", str(err)[:80]) from None


def _lcb_tests(tests: list, fn_name: str | None) -> dict[str, Any]:
    """LiveCodeBench test cases (`input`, `output`, `testtype` functional|stdin) as APPS tests."""
    if not tests:
        raise InvalidRecord("no_tests", "no test cases")
    kinds = {t.get("testtype") for t in tests if isinstance(t, dict)}
    if len(kinds) != 1 or len(tests) != sum(isinstance(t, dict) for t in tests):
        raise InvalidRecord("mixed_test_types", repr(sorted(map(str, kinds))))
    kind = kinds.pop()
    if kind == "stdin":
        return _stdin_tests([(t.get("input"), t.get("output")) for t in tests])
    if kind != "functional":
        raise InvalidRecord("unknown_test_type", repr(kind))
    if not fn_name:
        raise InvalidRecord("functional_without_func_name")
    try:
        outputs = [loads_json(t["output"]) for t in tests]
    except (ValueError, TypeError, KeyError) as err:
        raise InvalidRecord("functional_output_not_json", str(err)[:80]) from None
    return {"inputs": [_functional_args(_text(t.get("input"))) for t in tests], "outputs": outputs, "fn_name": fn_name}


class _TextOnlyUnpickler(pickle.Unpickler):
    """Unpickles plain data only: LiveCodeBench pickles a str; anything naming a class or function is refused."""

    def find_class(self, module: str, name: str):
        raise pickle.UnpicklingError(f"refusing to load {module}.{name} from a test field")


def decode_lcb_private_tests(text: str) -> list:
    """LiveCodeBench's `private_test_cases`: plain JSON, or base64 of zlib of a pickled JSON string.

    Args:
        text: The field as published.

    Returns:
        The list of test-case dicts.

    Raises:
        InvalidRecord: `private_tests_undecodable` if neither reading works.
    """
    try:
        return json.loads(text)
    except ValueError:
        pass
    try:
        payload = _TextOnlyUnpickler(io.BytesIO(zlib.decompress(base64.b64decode(text.encode())))).load()
        if not isinstance(payload, str):
            raise ValueError(f"pickled {type(payload).__name__}, not a JSON string")
        return json.loads(payload)
    except (ValueError, TypeError, zlib.error, pickle.UnpicklingError, EOFError) as err:
        raise InvalidRecord("private_tests_undecodable", str(err)[:80]) from None


# -- one converter per format ----------------------------------------------------------------------------------------
def convert_taco(record: dict, subset: str | None = None) -> dict:
    """A BAAI/TACO record (APPS fields plus `source`, `tags`, `skill_types`, `date`, ...) as an APPS record."""
    return {
        "question": record.get("question"),
        "solutions": _json(record.get("solutions") or [], "solutions_unparsable"),
        "input_output": record.get("input_output"),
        "difficulty": _text(record.get("difficulty")),
        "url": _text(record.get("url")),
        "starter_code": _text(record.get("starter_code")),
        "extras": {"data_source": "taco", "source_id": _text(record.get("name")),
                   "platform": _text(record.get("source")), "release_date": _date(record.get("date")),
                   "tags": _str_list(record.get("tags")), "skills": _str_list(record.get("skill_types"))},
    }


def _cc_label(value: Any, names: tuple[str, ...]) -> str:
    """A CodeContests class label: an int index (parquet) or its name (a JSON export)."""
    if isinstance(value, int) and not isinstance(value, bool) and 0 <= value < len(names):
        return names[value]
    return value.lower() if isinstance(value, str) else ""


def convert_code_contests(record: dict, subset: str | None = None) -> dict:
    """A deepmind/code_contests record as an APPS record: public, private and generated stdin tests, Python solutions.

    Python 3 solutions come first, then Python 2 ones (language 1, kept as the dataset tags them; they often fail
    under Python 3). Problems that read or write named files (`input_file`/`output_file`) are skipped as `file_io`.
    """
    if record.get("input_file") or record.get("output_file"):
        raise InvalidRecord("file_io", "reads or writes a named file, not stdin/stdout")
    pairs = []
    for key in ("public_tests", "private_tests", "generated_tests"):
        tests = record.get(key) or {}
        pairs += list(zip(tests.get("input") or [], tests.get("output") or []))
    solutions = record.get("solutions") or {}
    by_language = list(zip(solutions.get("language") or [], solutions.get("solution") or []))
    language = [CC_LANGUAGES.get(lang) for lang, _ in by_language]
    python = [s for (_, s), lang in zip(by_language, language) if lang == "python3"] + [
        s for (_, s), lang in zip(by_language, language) if lang == "python2"]
    contest, index = record.get("cf_contest_id"), _text(record.get("cf_index"))
    url = f"https://codeforces.com/problemset/problem/{contest}/{index}" if contest and index else ""
    return {
        "question": record.get("description"),
        "solutions": python,
        "input_output": _stdin_tests(pairs),
        "difficulty": _cc_label(record.get("difficulty"), CC_DIFFICULTIES),
        "url": url,
        "starter_code": "",
        "extras": {"data_source": "codecontests", "source_id": _text(record.get("name")),
                   "platform": _cc_label(record.get("source"), CC_SOURCES), "release_date": "",
                   "tags": _str_list(record.get("cf_tags")), "skills": []},
    }


def convert_livecodebench(record: dict, subset: str | None = None) -> dict:
    """A livecodebench/code_generation_lite record as an APPS record.

    Tests are the public ones then the private ones (decoded by `decode_lcb_private_tests`); functional tests call
    `Solution().<metadata func_name>` with the JSON values of the input's lines, stdin tests compare printed text.
    """
    metadata = _json(record.get("metadata") or "{}", "metadata_unparsable")
    if not isinstance(metadata, dict):
        raise InvalidRecord("metadata_unparsable", "metadata is not a JSON object")
    public = _json(record.get("public_test_cases") or "[]", "public_tests_unparsable")
    private = record.get("private_test_cases") or "[]"
    private = decode_lcb_private_tests(private) if isinstance(private, str) else private
    if not isinstance(public, list) or not isinstance(private, list):
        raise InvalidRecord("no_tests", "test cases are not lists")
    return {
        "question": record.get("question_content"),
        "solutions": [],
        "input_output": _lcb_tests(public + private, metadata.get("func_name")),
        "difficulty": _text(record.get("difficulty")),
        "url": "",
        "starter_code": _text(record.get("starter_code")),
        "extras": {"data_source": "livecodebench", "source_id": _text(record.get("question_id")),
                   "platform": _text(record.get("platform")), "release_date": _date(record.get("contest_date")),
                   "tags": [], "skills": []},
    }


def _deepcoder_tests(tests: Any, metadata: dict) -> dict[str, Any]:
    """DeepCoder's `tests`, whose shape depends on the subset it came from.

    - a dict `{"inputs", "outputs"[, "fn_name"]}`: APPS/TACO tests, unchanged;
    - a list of `{"input", "output", "testtype"[, "metadata": {"func_name"}]}`: LiveCodeBench tests (lcbv5);
    - a list of `{"input", "output", "type": "stdin_stdout"|"function_call"[, "fn_name"]}`: PrimeIntellect tests;
      a function call's input is its argument list (or its JSON text);
    - a list of `{"input", "output"}`: standard-input tests (codeforces).
    """
    if isinstance(tests, dict):
        return tests
    if not isinstance(tests, list) or not tests or not all(isinstance(t, dict) for t in tests):
        raise InvalidRecord("no_tests", "tests is not a non-empty list of objects")
    first = tests[0]
    if "testtype" in first:
        fn_name = (first.get("metadata") or {}).get("func_name") or metadata.get("func_name")
        return _lcb_tests(tests, fn_name)
    if first.get("type") == "function_call":
        fn_name = first.get("fn_name") or metadata.get("func_name")
        if not all(t.get("type") == "function_call" for t in tests):
            raise InvalidRecord("mixed_test_types")
        args = [_json(t.get("input"), "functional_input_not_json") for t in tests]
        return {"inputs": args, "outputs": [_json(t.get("output"), "functional_output_not_json") for t in tests],
                "fn_name": fn_name}
    if not all(t.get("type", "stdin_stdout") == "stdin_stdout" for t in tests):
        raise InvalidRecord("unknown_test_type", repr(sorted({str(t.get("type")) for t in tests})))
    return _stdin_tests([(t.get("input"), t.get("output")) for t in tests])


def convert_deepcoder(record: dict, subset: str | None = None) -> dict:
    """An agentica-org/DeepCoder-Preview-Dataset record (`problem`, `tests` JSON, `metadata`) as an APPS record.

    `subset` is the dataset config the record came from (`primeintellect`, `taco`, `lcbv5`, `codeforces`); it sets
    `data_source`. `solutions`, `starter_code` and the metadata keys read here (`func_name`, `difficulty`,
    `contest_date`/`date`, `tags`) are used when present; the card documents only `problem`, `tests` and `metadata`.
    """
    metadata = _json(record.get("metadata") or {}, "metadata_unparsable")
    metadata = metadata if isinstance(metadata, dict) else {}
    solutions = _json(record.get("solutions") or [], "solutions_unparsable")
    solutions = [solutions] if isinstance(solutions, str) else solutions
    return {
        "question": record.get("problem"),
        "solutions": solutions,
        "input_output": _deepcoder_tests(_json(record.get("tests"), "input_output_unparsable"), metadata),
        "difficulty": "" if metadata.get("difficulty") is None else str(metadata["difficulty"]),
        "url": _text(metadata.get("url")),
        "starter_code": _text(record.get("starter_code")) or _text(metadata.get("starter_code")),
        "extras": {"data_source": DEEPCODER_SUBSETS.get(subset or "", "deepcoder"), "source_id": "",
                   "platform": _text(metadata.get("platform") or metadata.get("source")),
                   "release_date": _date(metadata.get("contest_date") or metadata.get("date")),
                   "tags": _str_list(metadata.get("tags")), "skills": []},
    }


CONVERTERS = {"taco": convert_taco, "code_contests": convert_code_contests,
              "livecodebench": convert_livecodebench, "deepcoder": convert_deepcoder}


# -- reading the published layouts ----------------------------------------------------------------------------------
def _split_of(parts: tuple[str, ...]) -> str | None:
    """The split a published path names (`train/...`, `data/test-00000-of-00001.parquet`); `valid` counts as test."""
    for part in parts:
        name = part.lower()
        if name.startswith("train"):
            return "train"
        if name.startswith(("test", "valid")):
            return "test"
    return None


def _table_rows(path: Path) -> Iterator[dict]:
    """Rows of a parquet file or of an Arrow IPC file (`datasets` writes the streaming format)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    try:
        if path.suffix == ".parquet":
            for batch in pq.ParquetFile(path).iter_batches(batch_size=256):
                yield from batch.to_pylist()
            return
        with pa.memory_map(str(path)) as source:
            try:
                reader = pa.ipc.open_stream(source)
            except pa.ArrowInvalid:
                reader = pa.ipc.open_file(source)
                for i in range(reader.num_record_batches):
                    yield from reader.get_batch(i).to_pylist()
                return
            for batch in reader:
                yield from batch.to_pylist()
    except (pa.ArrowException, OSError) as err:
        raise DataError(f"cannot read {path}: {str(err).splitlines()[0]}") from None


def _file_records(path: Path, split: str | None, root: Path) -> Iterator[Record]:
    if path.suffix in (".parquet", ".arrow"):
        for i, row in enumerate(_table_rows(path)):
            yield f"{path.relative_to(root) if root != path else path.name} row {i}", row, split, None
    else:
        yield from _jsonl_records(path, split)


def data_files(folder: Path) -> list[Path]:
    """The data files of a folder in a published layout, sorted (hidden files and `datasets` metadata left out)."""
    files = [p for p in folder.rglob("*") if p.is_file() and p.suffix in _DATA_SUFFIXES
             and p.name not in _DATASETS_METADATA and not any(s.startswith(".") for s in p.relative_to(folder).parts)]
    return sorted(files)


def _local_records(path: Path, fmt: str) -> Iterator[tuple[Record, str | None]]:
    """`(record tuple, DeepCoder subset)` of a local file or folder; a folder's paths name splits and subsets."""
    if path.is_file():
        subset = path.parent.name if path.parent.name in DEEPCODER_SUBSETS else None
        for rec in _file_records(path, None, path):
            yield rec, subset
        return
    files = data_files(path)
    if not files:
        raise DataError(f"{path} holds no .jsonl, .json, .parquet or .arrow data files")
    for file in files:
        parts = file.relative_to(path).parts
        subset = next((p for p in parts[:-1] if p in DEEPCODER_SUBSETS), None)
        split = None if fmt == "livecodebench" else _split_of(parts)  # LiveCodeBench is split by date (--after)
        for rec in _file_records(file, split, path):
            yield rec, subset


def _hub_records(name: str, fmt: str, config: str | None) -> Iterator[tuple[Record, str | None]]:
    """Records of a hub dataset, loaded with `datasets.load_dataset` (hub layouts: docs/data.md)."""
    import datasets  # lazy: only hub sources need it

    try:
        if fmt == "livecodebench":
            # The repo's loading script does not run under current `datasets`; its data files are test.jsonl,
            # test2.jsonl, ... (one per release), which are read directly.
            loaded = {None: datasets.load_dataset("json", data_files=f"hf://datasets/{name}/test*.jsonl",
                                                  split="train")}
        elif fmt == "taco":
            # Also a loading-script repo; its data are `save_to_disk` Arrow files under train/ and test/.
            loaded = datasets.load_dataset("arrow", data_files={"train": f"hf://datasets/{name}/train/*.arrow",
                                                                "test": f"hf://datasets/{name}/test/*.arrow"})
        elif fmt == "deepcoder":
            loaded = {}
            for subset in [config] if config else list(DEEPCODER_SUBSETS):
                for split, ds in datasets.load_dataset(name, subset).items():
                    loaded[(subset, split)] = ds
        else:
            loaded = datasets.load_dataset(name, config) if config else datasets.load_dataset(name)
    except Exception as err:  # network, auth, missing repo or config: all end the same way for the user
        raise DataError(f"could not load hub dataset {name!r} ({type(err).__name__}: "
                        f"{str(err).splitlines()[0] if str(err) else ''}); if you meant a local file or folder, "
                        "it does not exist") from None
    for key, ds in loaded.items():
        subset, split = key if isinstance(key, tuple) else (None, key)
        split = _split_of((split,)) if split else None
        for i, row in enumerate(ds):
            yield (f"{name} {subset or ''}{'/' if subset else ''}{split or 'all'} row {i}", row, split, None), subset


# -- format detection -------------------------------------------------------------------------------------------------
def format_of_record(keys: set[str]) -> str | None:
    """The format whose published fields a record has, or None if none or several match."""
    matches = []
    if {"description", "public_tests"} <= keys:
        matches.append("code_contests")
    if {"question_content", "public_test_cases"} <= keys:
        matches.append("livecodebench")
    if {"problem", "tests"} <= keys:
        matches.append("deepcoder")
    if {"question", "input_output"} <= keys:
        if "skill_types" in keys or "raw_tags" in keys:
            matches.append("taco")
        elif "problem_id" in keys:
            matches.append("apps")
    return matches[0] if len(matches) == 1 else None


def _first_records(path: Path, limit: int = 50) -> Iterator[dict]:
    """Up to `limit` records of the first data file of `path` (a file or a published folder)."""
    files = [path] if path.is_file() else data_files(path)
    for file in files[:1]:
        if file.suffix in (".parquet", ".arrow"):
            rows = _table_rows(file)
        else:
            rows = (record for _, record, _, _ in _jsonl_records(file) if record is not None)
        for _, row in zip(range(limit), rows):
            yield row


def detect_format(source: str) -> str:
    """The format of a source: the hub name it is published under, else the fields of its first records.

    An unknown hub name is read as APPS (any repo with APPS's `train.jsonl`/`test.jsonl`), as before formats existed.

    Raises:
        DataError: If the local records match no format or several (pass `--format`).
    """
    name, _, _ = source.partition(":")
    for fmt, hub in HUB_NAMES.items():
        if name == hub:
            return fmt
    path = Path(source).expanduser()
    if not path.exists():
        return "apps"  # a hub id or a missing path: load_apps says which
    if path.is_dir() and ((path / "train").is_dir() or (path / "test").is_dir()) and any(
        (d / "question.txt").is_file() for split in ("train", "test") if (path / split).is_dir()
        for d in (path / split).iterdir()
    ):
        return "apps"
    if path.is_file() and path.suffix not in _DATA_SUFFIXES:
        return "apps"  # load_apps reads any JSONL file and names what is wrong with it
    record, fmt = None, None
    for record in _first_records(path):  # the first record whose fields fit exactly one format decides
        if (fmt := format_of_record(set(record))) is not None:
            break
    if fmt is None:
        keys = sorted(record)[:12] if record else []
        raise DataError(f"cannot tell the format of {source} (first record's fields: {keys}); pass --format "
                        f"{'|'.join(FORMATS)}")
    log.info("%s: detected format %s", source, fmt)
    return fmt


# -- loading -----------------------------------------------------------------------------------------------------------
def _cap_bytes(io_: dict) -> int:
    """Drop tests past `MAX_TEST_BYTES` each or `MAX_PROBLEM_TEST_BYTES` in all (in order); returns how many."""
    kept_in, kept_out, total = [], [], 0
    for test_in, test_out in zip(io_["inputs"], io_["outputs"]):
        size = len(json.dumps(test_in)) + len(json.dumps(test_out))
        if size > MAX_TEST_BYTES or total + size > MAX_PROBLEM_TEST_BYTES:
            continue
        total += size
        kept_in.append(test_in)
        kept_out.append(test_out)
    dropped = len(io_["inputs"]) - len(kept_in)
    io_["inputs"], io_["outputs"] = kept_in, kept_out
    return dropped


def load_source(source: str | Path, fmt: str | None = None, max_tests: int | None = None) -> LoadResult:
    """Load, convert and validate every problem of a source in one of `FORMATS`.

    Args:
        source: A hub name (`BAAI/TACO`, `livecodebench/code_generation_lite`, ...; `NAME:CONFIG` picks one config,
            e.g. `agentica-org/DeepCoder-Preview-Dataset:lcbv5`), or a local file or folder in the published layout.
        fmt: One of `FORMATS`; None detects it (`detect_format`).
        max_tests: Keep at most this many tests per problem, the reward's pseudo-random pick; None keeps all.

    Returns:
        The valid problems (numbered 0.. in load order; the source's own id is `source_id`) and the skip counts.

    Raises:
        DataError: Unknown format, missing source, unreadable file, or a failed hub load.
    """
    source = str(source)
    fmt = fmt or detect_format(source)
    if fmt not in FORMATS:
        raise DataError(f"unknown --format {fmt!r}: choose one of {', '.join(FORMATS)}")
    if fmt == "apps":
        return load_apps(source, max_tests)
    path = Path(source).expanduser()
    name, _, config = source.partition(":")
    if path.exists():
        records = _local_records(path, fmt)
    elif re.match(r"^[\w.-]+/[\w.-]+$", name):
        records = _hub_records(name, fmt, config or None)
    else:
        raise DataError(f"data source {source!r} not found: give an existing file or folder, or a hub name")
    result, capped, dropped = LoadResult(problems=[]), 0, 0
    for (where, record, split, pre_reason), subset in records:
        if pre_reason is not None:
            result.skip(pre_reason, where)
            continue
        try:
            converted = CONVERTERS[fmt](record, subset)
            extras = converted.pop("extras")
            problem = parse_problem({**converted, "problem_id": len(result.problems)}, split)
        except InvalidRecord as err:
            result.skip(err.reason, where)
            continue
        n = _cap_bytes(problem.input_output)
        if n and not problem.input_output["inputs"]:
            result.skip("tests_too_large", where)
            continue
        capped, dropped = capped + bool(n), dropped + n
        problem = dataclasses.replace(problem, **extras)
        cap_tests(problem, max_tests)
        result.problems.append(problem)
    if dropped:
        log.warning("%s: dropped %d tests of %d problems (over %d bytes each, or past %d bytes per problem)",
                    source, dropped, capped, MAX_TEST_BYTES, MAX_PROBLEM_TEST_BYTES)
    (log.warning if result.skipped else log.info)("%s (%s): %s", source, fmt, result.summary())
    return result
