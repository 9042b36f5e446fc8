"""Load APPS problems from the hub, a local JSONL file or the original APPS folder layout, and validate them.

Three sources, one record format (the fields of the HF dataset `codeparrot/apps`):

- hub name, e.g. `codeparrot/apps`: the repo's `train.jsonl` and `test.jsonl` are downloaded with `huggingface_hub`
  (the repo's loading script cannot run under current `datasets`, so the data files are read directly);
- `FILE.jsonl`: one JSON object per line with `problem_id`, `question`, `solutions` (JSON string of a list of
  programs), `input_output` (JSON string with `inputs`, `outputs` and, for call-based problems, `fn_name`),
  `difficulty`, `url`, `starter_code`;
- `APPS_DIR`: the original release, `train/NNNN/` and `test/NNNN/` with `question.txt`, `input_output.json`,
  `solutions.json`, `metadata.json` (`difficulty`, `url`) and `starter_code.py`.

Every record is validated; bad ones are skipped and counted per reason, and the counts are logged once per load.
Text is read as UTF-8 (a leading BOM is dropped); a line or file that is not UTF-8 is skipped as `not_utf8`. A
`problem_id` seen again in the same source split is skipped as `duplicate_problem_id` (the first one is kept).
A missing file or folder, or a binary file given as JSONL, raises `DataError` with one clear message.

    result = load_apps("/path/to/mbpp_apps.jsonl")
    result.problems[0].fn_name, result.skipped  # -> 'is_not_prime', Counter()
"""

from __future__ import annotations

import json
import keyword
import logging
import re
from collections import Counter
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from lit_codegen.reward.compare import is_stdin_text, pick_tests

log = logging.getLogger(__name__)

DIFFICULTIES = ("introductory", "interview", "competition")
HUB_SPLIT_FILES = {"train": "train.jsonl", "test": "test.jsonl"}
INT64_MIN, INT64_MAX = -(2**63), 2**63 - 1  # problem_id is an int64 parquet column
_HUB_NAME = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")


class DataError(ValueError):
    """A data source is missing or unusable; the message names the problem and the fix."""


class InvalidRecord(ValueError):
    """One record fails validation; `reason` is the short key it is counted under."""

    def __init__(self, reason: str, detail: str = "") -> None:
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason = reason


@dataclass
class AppsProblem:
    """One validated APPS problem.

    Attributes:
        problem_id: APPS id (unique within a source split; APPS train and test both number 0-4999).
        question: Problem statement.
        solutions: Reference programs (may be empty, e.g. for some APPS test problems).
        input_output: Parsed tests: `{"inputs": [...], "outputs": [...]}` plus `"fn_name"` for call-based problems.
        difficulty: `introductory`, `interview` or `competition` (free text for other sources).
        url: Where the problem comes from ("" if unknown).
        starter_code: Code the answer must start from ("" if none).
        source_split: The split the source puts the problem in (`train`/`test`), or None if it has none.
        data_source: Dataset the problem comes from (`apps`, `taco`, `codecontests`, `livecodebench`, ...).
        source_id: The source's own id of the problem ("" if none; APPS ids are `problem_id` itself).
        platform: Judge the problem was published on (`codeforces`, `leetcode`, ...; "" if unknown).
        release_date: `YYYY-MM-DD` the problem was published ("" if unknown).
        tags: Topic tags (TACO, CodeContests' `cf_tags`).
        skills: TACO's `skill_types`.
    """

    problem_id: int
    question: str
    solutions: list[str]
    input_output: dict[str, Any]
    difficulty: str = ""
    url: str = ""
    starter_code: str = ""
    source_split: str | None = None
    data_source: str = "apps"
    source_id: str = ""
    platform: str = ""
    release_date: str = ""
    tags: list[str] = field(default_factory=list)
    skills: list[str] = field(default_factory=list)

    @property
    def fn_name(self) -> str | None:
        """Name of the function the tests call, or None for a stdin/stdout problem."""
        return self.input_output.get("fn_name") or None

    @property
    def num_tests(self) -> int:
        """Number of test cases."""
        return len(self.input_output["inputs"])


@dataclass
class LoadResult:
    """Valid problems of a source plus the skipped records, counted per reason.

    Attributes:
        problems: Valid problems in source order.
        skipped: Number of skipped records per reason (e.g. `input_output_unparsable`).
        skipped_at: Where each skip happened (`line 7`, `train/0042`), per reason, for the log.
    """

    problems: list[AppsProblem]
    skipped: Counter = field(default_factory=Counter)
    skipped_at: dict[str, list[str]] = field(default_factory=dict)

    def skip(self, reason: str, where: str) -> None:
        """Count one skipped record."""
        self.skipped[reason] += 1
        self.skipped_at.setdefault(reason, []).append(where)

    def summary(self, max_places: int = 5) -> str:
        """One line: how many problems were kept and why the others were skipped."""
        text = f"{len(self.problems)} valid problems"
        if not self.skipped:
            return text
        parts = []
        for reason, count in sorted(self.skipped.items()):
            places = self.skipped_at[reason]
            shown = ", ".join(places[:max_places]) + (", ..." if len(places) > max_places else "")
            parts.append(f"{reason}={count} ({shown})")
        return f"{text}; skipped {sum(self.skipped.values())}: " + "; ".join(parts)


def _parse_json_field(value: Any, reason: str) -> Any:
    """Decode a field stored as a JSON string (HF format); already-decoded values pass through."""
    if not isinstance(value, str):
        return value
    try:
        return json.loads(value)
    except ValueError as err:  # malformed JSON, or an integer past Python's 4300-digit str -> int limit
        raise InvalidRecord(reason, str(err)) from None


def _text_field(record: dict[str, Any], key: str) -> str:
    """An optional text field: missing or null gives "", anything but a string is `bad_{key}`."""
    value = record.get(key)
    if value is None:
        return ""
    if not isinstance(value, str):
        raise InvalidRecord(f"bad_{key}", repr(value))
    return _utf8(value, key)


def _utf8(text: str, key: str) -> str:
    """`text`, if it can be written as UTF-8; a lone surrogate (from a JSON escape like backslash-ud800) cannot."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as err:
        raise InvalidRecord("not_utf8", f"{key}: {err.reason} at {err.start}") from None
    return text


def parse_problem(record: dict[str, Any], source_split: str | None = None) -> AppsProblem:
    """Validate one record with the HF APPS fields and turn it into an `AppsProblem`.

    Args:
        record: Dict with `problem_id`, `question`, `solutions`, `input_output` (JSON strings or decoded values),
            and optionally `difficulty`, `url`, `starter_code`.
        source_split: The split the source assigns the record to, if any.

    Returns:
        The validated problem.

    Raises:
        InvalidRecord: With `reason` one of `bad_problem_id` (not a JSON integer in the int64 range),
            `missing_question`, `input_output_unparsable`, `no_tests`, `inputs_outputs_length_mismatch`,
            `bad_fn_name` (not an identifier, or a keyword), `call_based_inputs_not_lists`, `stdin_tests_not_text`
            (a standard-input test that is not a string or a list of strings), `solutions_unparsable`,
            `bad_difficulty` / `bad_url` / `bad_starter_code` (present but not a string), `not_utf8` (a text with a
            lone surrogate, which no file can hold).
    """
    problem_id = record.get("problem_id")
    # Only real integers: a string "0042", a float or a bool would be coerced into some other id.
    if type(problem_id) is not int or not INT64_MIN <= problem_id <= INT64_MAX:
        raise InvalidRecord("bad_problem_id", repr(problem_id))
    question = record.get("question")
    if not isinstance(question, str) or not question.strip():
        raise InvalidRecord("missing_question")
    _utf8(question, "question")

    raw_tests = record.get("input_output")
    if not raw_tests:
        raise InvalidRecord("no_tests", "input_output is empty")
    tests = _parse_json_field(raw_tests, "input_output_unparsable")
    if not isinstance(tests, dict):
        raise InvalidRecord("input_output_unparsable", "input_output is not a JSON object")
    inputs, outputs = tests.get("inputs"), tests.get("outputs")
    if not isinstance(inputs, list) or not isinstance(outputs, list) or not inputs:
        raise InvalidRecord("no_tests", "inputs/outputs missing or empty")
    if len(inputs) != len(outputs):
        raise InvalidRecord("inputs_outputs_length_mismatch", f"{len(inputs)} inputs, {len(outputs)} outputs")
    fn_name = tests.get("fn_name")
    if fn_name is not None and (
        not isinstance(fn_name, str) or not fn_name.isidentifier() or keyword.iskeyword(fn_name)
    ):
        raise InvalidRecord("bad_fn_name", repr(fn_name))
    # Call-based tests call fn_name(*args): every input must be an argument list.
    if fn_name and not all(isinstance(args, list) for args in inputs):
        raise InvalidRecord("call_based_inputs_not_lists")
    # Standard-input tests feed text and compare printed text: `[1, 2]` or null is no test anyone can pass.
    if not fn_name and not all(map(is_stdin_text, inputs + outputs)):
        raise InvalidRecord("stdin_tests_not_text", "inputs and outputs must be strings or lists of strings")

    solutions = _parse_json_field(record.get("solutions") or [], "solutions_unparsable")
    if not isinstance(solutions, list) or not all(isinstance(s, str) for s in solutions):
        raise InvalidRecord("solutions_unparsable", "solutions is not a list of strings")

    io = {"inputs": inputs, "outputs": outputs}
    if fn_name:
        io["fn_name"] = fn_name
    return AppsProblem(
        problem_id=problem_id,
        question=question,
        solutions=solutions,
        input_output=io,
        difficulty=_text_field(record, "difficulty"),
        url=_text_field(record, "url"),
        starter_code=_text_field(record, "starter_code"),
        source_split=source_split,
    )


def _collect(records: Iterable[tuple[str, dict | None, str | None, str | None]], max_tests: int | None) -> LoadResult:
    """Validate `(where, record, source_split, pre_reason)` tuples; `pre_reason` marks records that failed to read.

    A `problem_id` already kept in the same source split is skipped as `duplicate_problem_id`: copies would otherwise
    land in both train and test. Only within a split, because APPS numbers its train and its test problems 0-4999.
    """
    result = LoadResult(problems=[])
    seen: set[tuple[str | None, int]] = set()
    for where, record, split, pre_reason in records:
        if pre_reason is not None:
            result.skip(pre_reason, where)
            continue
        try:
            problem = parse_problem(record, split)
        except InvalidRecord as err:
            result.skip(err.reason, where)
            continue
        if (split, problem.problem_id) in seen:
            result.skip("duplicate_problem_id", where)
            continue
        seen.add((split, problem.problem_id))
        cap_tests(problem, max_tests)  # cap while loading: some APPS problems carry megabytes of tests
        result.problems.append(problem)
    return result


def cap_tests(problem: AppsProblem, max_tests: int | None) -> None:
    """Keep at most `max_tests` tests of `problem`, in place; None keeps all.

    The kept tests are the reward's pseudo-random subset, not the first ones (often the prompt's examples).
    """
    if max_tests is not None:
        io = problem.input_output
        keep = pick_tests(io, max_tests)
        io["inputs"], io["outputs"] = [io["inputs"][i] for i in keep], [io["outputs"][i] for i in keep]


def _check_text_file(path: Path) -> None:
    """Raise `DataError` if `path` looks binary (a NUL byte near the start), e.g. a parquet file given as JSONL."""
    with path.open("rb") as f:
        head = f.read(8192)
    if b"\0" in head:
        what = "a parquet file" if head.startswith(b"PAR1") else "it has NUL bytes"
        raise DataError(
            f"{path} is not UTF-8 JSONL text ({what}): give a .jsonl file, an APPS folder or a hub id "
            "(a folder of preprocessed parquet files is what the data modules' data_dir takes)"
        )


def _jsonl_records(path: Path, split: str | None = None) -> Iterator[tuple[str, dict | None, str | None, str | None]]:
    """Yield the records of a JSONL file.

    A line that is not UTF-8 is reported as `not_utf8`, one that is not a JSON object as `malformed_json_line`.
    """
    _check_text_file(path)
    with path.open("rb") as f:
        for line_no, raw in enumerate(f, start=1):
            where = f"{path.name} line {line_no}"
            try:
                line = raw.decode("utf-8-sig" if line_no == 1 else "utf-8")  # utf-8-sig: drop a leading BOM
            except UnicodeDecodeError:
                yield where, None, split, "not_utf8"
                continue
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except ValueError:  # malformed JSON, or an integer longer than Python reads (4300 digits)
                yield where, None, split, "malformed_json_line"
                continue
            if not isinstance(record, dict):
                yield where, None, split, "malformed_json_line"
                continue
            yield where, record, split, None


def _read_text(path: Path) -> str:
    """A text file of the folder layout as UTF-8 (a leading BOM dropped); `InvalidRecord("not_utf8")` if it is not."""
    try:
        return path.read_text(encoding="utf-8-sig")
    except UnicodeDecodeError:
        raise InvalidRecord("not_utf8", path.name) from None


def _read_json(path: Path, reason: str) -> Any:
    """A JSON file of the folder layout; `InvalidRecord(reason)` if it does not parse."""
    try:
        return json.loads(_read_text(path))
    except ValueError:  # malformed JSON, or an integer longer than Python reads (4300 digits)
        raise InvalidRecord(reason, path.name) from None


def _folder_record(d: Path) -> dict[str, Any]:
    """One problem folder as a record with the HF fields; `InvalidRecord` if a file is missing or unreadable."""
    if not (d / "question.txt").is_file():
        raise InvalidRecord("missing_question")
    if not (d / "input_output.json").is_file():
        raise InvalidRecord("no_tests")
    record = {
        "problem_id": int(d.name),
        "question": _read_text(d / "question.txt"),
        "input_output": _read_json(d / "input_output.json", "input_output_unparsable"),
        "solutions": [],
    }
    if (d / "solutions.json").is_file():
        record["solutions"] = _read_json(d / "solutions.json", "solutions_unparsable")
    if (d / "starter_code.py").is_file():
        record["starter_code"] = _read_text(d / "starter_code.py")
    if (d / "metadata.json").is_file():
        metadata = _read_json(d / "metadata.json", "metadata_unparsable")  # optional, but not silently broken
        if not isinstance(metadata, dict):
            raise InvalidRecord("metadata_unparsable", "metadata.json is not a JSON object")
        record["difficulty"], record["url"] = metadata.get("difficulty"), metadata.get("url")
    return record


def _folder_records(root: Path) -> Iterator[tuple[str, dict | None, str | None, str | None]]:
    """Yield the records of the original APPS layout (`train/NNNN/`, `test/NNNN/`).

    Sub-folders whose names are not ASCII digits are skipped as `bad_problem_id` (hidden ones are ignored).
    """
    for split in ("train", "test"):
        split_dir = root / split
        if not split_dir.is_dir():
            continue
        problem_dirs = sorted((d for d in split_dir.iterdir() if d.is_dir() and not d.name.startswith(".")),
                              key=lambda d: d.name)
        for d in problem_dirs:
            where = f"{split}/{d.name}"
            if not (d.name.isascii() and d.name.isdigit()):  # str.isdigit alone accepts "²7", which int() rejects
                yield where, None, split, "bad_problem_id"
                continue
            try:
                record = _folder_record(d)
            except InvalidRecord as err:
                yield where, None, split, err.reason
                continue
            yield where, record, split, None


def _hub_records(name: str) -> Iterator[tuple[str, dict | None, str | None, str | None]]:
    """Download `train.jsonl` / `test.jsonl` of a hub dataset repo and yield their records with their split."""
    from huggingface_hub import hf_hub_download  # lazy: only the hub source needs it

    for split, filename in HUB_SPLIT_FILES.items():
        try:
            path = hf_hub_download(repo_id=name, filename=filename, repo_type="dataset")
        except Exception as err:  # network, auth, missing repo or file: all end the same way for the user
            raise DataError(
                f"could not download {filename} of hub dataset {name!r} ({type(err).__name__}: {err}); "
                "if you meant a local file or folder, it does not exist"
            ) from None
        yield from _jsonl_records(Path(path), split)


def is_hub_name(source: str) -> bool:
    """True if `source` is not an existing path and looks like a hub dataset id (`owner/name`)."""
    return not Path(source).exists() and bool(_HUB_NAME.match(source)) and not source.endswith((".jsonl", ".json"))


def load_apps(source: str | Path, max_tests: int | None = None) -> LoadResult:
    """Load and validate all problems of an APPS source (hub name, JSONL file or APPS folder).

    Skipped records are counted per reason and logged once (a WARNING naming lines/folders).

    Args:
        source: Hub dataset id (`codeparrot/apps`), path to a `.jsonl` file, or an APPS folder with `train/`/`test/`.
        max_tests: Keep at most `max_tests` tests of each problem, the subset the reward's `max_tests` picks
            (`lit_codegen.reward.compare.pick_tests`); None keeps all.

    Returns:
        The valid problems and the skip counts.

    Raises:
        DataError: If the file/folder does not exist, a folder has no `train/` or `test/`, a file is binary (e.g. a
            parquet file), or the hub download fails.
    """
    source = str(source)
    path = Path(source).expanduser()
    if path.is_file():
        result = _collect(_jsonl_records(path), max_tests)
    elif path.is_dir():
        if not (path / "train").is_dir() and not (path / "test").is_dir():
            raise DataError(f"APPS folder {source} has neither train/ nor test/ sub-folders")
        result = _collect(_folder_records(path), max_tests)
    elif is_hub_name(source):
        result = _collect(_hub_records(source), max_tests)
    else:
        raise DataError(f"data source {source!r} not found: give an existing .jsonl file, APPS folder or hub id")
    if result.skipped:
        log.warning("%s: %s", source, result.summary())
    else:
        log.info("%s: %s", source, result.summary())
    return result
