r"""Turn code-problem sources into `train.parquet` and `test.parquet` with prompts, tests and verl-compatible columns.

    python -m lit_codegen.data.preprocess --local_dir data/apps --template_type chat
    python -m lit_codegen.data.preprocess --source problems.jsonl --local_dir data/mine --template_type base \
        --difficulties introductory --max_tests 16 --test_size 0.2 --seed 1
    python -m lit_codegen.data.preprocess --source BAAI/TACO livecodebench/code_generation_lite --weights 1 2 \
        --after 2024-08-01 --local_dir data/mix

Sources are APPS (the default), TACO, CodeContests, LiveCodeBench or DeepCoder, from their hub names or local files in
their published layouts (`--format`, detected when left out; see `lit_codegen.data.sources`). Several sources are
mixed (`lit_codegen.data.mix`): deduplicated by statement, resampled by `--weights`, and split by LiveCodeBench
release date with `--after`.

One row per valid problem; each valid problem lands in exactly one of the two files. Splits: a source with natural
splits (hub `train.jsonl`/`test.jsonl`, APPS folder `train/`/`test/`) keeps them unless `--test_size` is given;
otherwise the problems are shuffled with `--seed` and `--test_size` of them (default 0.1, at least one) go to test.
If one natural split is empty (a folder with only `train/` or only `test/`, or `--difficulties` removed all of one
side), the problems are shuffled the same way and one warning line says so. Both files are built first and then
written (temporary file + rename), so a failed run leaves the previous files of `--local_dir` untouched.
The columns (`PARQUET_SCHEMA`) are a superset of verl's RL parquet schema, see "Parquet schema" in docs/data.md.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import os
import random
import sys
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from lit_codegen.data.apps import AppsProblem, DataError
from lit_codegen.data.mix import apply_weights, check_weights, dedupe, parse_date, split_by_date
from lit_codegen.data.prompts import TEMPLATE_TYPES, base_prompt, chat_messages, check_template_type
from lit_codegen.data.sources import FORMATS, load_source

log = logging.getLogger(__name__)

DEFAULT_SOURCE = "codeparrot/apps"
DEFAULT_TEST_SIZE = 0.1
ID_STRIDE = 10**9  # problem_id of the i-th problem of the k-th --source, when ids are renumbered: k * ID_STRIDE + i

_MESSAGE = pa.struct([("role", pa.string()), ("content", pa.string())])
PARQUET_SCHEMA = pa.schema(
    [
        ("data_source", pa.string()),
        ("problem_id", pa.int64()),
        ("split", pa.string()),
        ("difficulty", pa.string()),
        ("prompt", pa.list_(_MESSAGE)),
        ("raw_prompt", pa.string()),
        ("template_type", pa.string()),
        ("question", pa.string()),
        ("starter_code", pa.string()),
        ("fn_name", pa.string()),
        ("input_output", pa.string()),
        ("solutions", pa.string()),
        ("url", pa.string()),
        ("ability", pa.string()),
        ("reward_model", pa.struct([("style", pa.string()), ("ground_truth", pa.string())])),
        (
            "extra_info",
            pa.struct(
                [("split", pa.string()), ("index", pa.int64()), ("problem_id", pa.int64()), ("difficulty", pa.string())]
            ),
        ),
        ("source_id", pa.string()),
        ("platform", pa.string()),
        ("release_date", pa.string()),
        ("tags", pa.list_(pa.string())),
        ("skills", pa.list_(pa.string())),
    ]
)


def problem_to_row(problem: AppsProblem, template_type: str, split: str, index: int) -> dict[str, Any]:
    """One parquet row (see `PARQUET_SCHEMA`) for a problem.

    Args:
        problem: A validated problem.
        template_type: `chat` (prompt = system + user messages) or `base` (prompt = one user message holding the APPS
            completion prompt, which is also `raw_prompt`).
        split: `train` or `test`.
        index: Row index within the split.

    Returns:
        Dict with the columns of `PARQUET_SCHEMA`.
    """
    check_template_type(template_type)
    raw_prompt = base_prompt(problem.question, problem.starter_code, problem.fn_name)
    if template_type == "chat":
        prompt = chat_messages(problem.question, problem.starter_code, problem.fn_name)
    else:
        prompt = [{"role": "user", "content": raw_prompt}]
    tests = json.dumps(problem.input_output)
    return {
        "data_source": problem.data_source,
        "problem_id": problem.problem_id,
        "split": split,
        "difficulty": problem.difficulty,
        "prompt": prompt,
        "raw_prompt": raw_prompt,
        "template_type": template_type,
        "question": problem.question,
        "starter_code": problem.starter_code,
        "fn_name": problem.fn_name,
        "input_output": tests,
        "solutions": json.dumps(problem.solutions),
        "url": problem.url,
        "ability": "code",
        "reward_model": {"style": "rule", "ground_truth": tests},
        "extra_info": {
            "split": split,
            "index": index,
            "problem_id": problem.problem_id,
            "difficulty": problem.difficulty,
        },
        "source_id": problem.source_id,
        "platform": problem.platform,
        "release_date": problem.release_date,
        "tags": problem.tags,
        "skills": problem.skills,
    }


def write_splits(splits: dict[str, Sequence[AppsProblem]], out_dir: str | Path, template_type: str) -> dict[str, Path]:
    """Write `out_dir/{split}.parquet` for every split, all of them or none.

    Every table is built and written to a temporary file before any is renamed into place, so a failure (a bad row, a
    full disk) leaves the previous files as they were, never a new train.parquet next to an old test.parquet; the
    renames are atomic, so concurrent readers (other ranks, parallel tests) never see a half-written file.

    Args:
        splits: Problems per split name (`train`, `test`), in row order.
        out_dir: Output folder (created if needed).
        template_type: `base` or `chat`.

    Returns:
        The path of each split's file.
    """
    tables = {
        split: pa.Table.from_pylist(
            [problem_to_row(p, template_type, split, i) for i, p in enumerate(problems)], schema=PARQUET_SCHEMA
        )
        for split, problems in splits.items()
    }
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = {split: out / f"{split}.parquet" for split in tables}
    tmps = {split: path.with_name(f".{path.name}.{os.getpid()}.tmp") for split, path in paths.items()}
    try:
        for split, table in tables.items():
            pq.write_table(table, tmps[split])
        for split, path in paths.items():
            os.replace(tmps[split], path)
    finally:
        for tmp in tmps.values():
            tmp.unlink(missing_ok=True)
    return paths


def check_test_size(test_size: float) -> None:
    """Raise `DataError` unless `test_size` is a fraction in (0, 1) or a whole count >= 1."""
    if not math.isfinite(test_size) or test_size <= 0 or (test_size >= 1 and test_size != int(test_size)):
        raise DataError(f"--test_size must be a fraction in (0, 1) or a whole count >= 1, got {test_size}")


def _check_unique_ids(problems: Sequence[AppsProblem]) -> None:
    """Raise `DataError` if two problems share an id, as the two natural splits of APPS do (both count from 0).

    Pooled and re-split, they would share ids inside one file, where the pass-rate reports and `code_eval` key
    problems by id and could not tell them apart.
    """
    counts = Counter(p.problem_id for p in problems)
    repeated = sorted(i for i, n in counts.items() if n > 1)
    if repeated:
        raise DataError(
            f"{len(repeated)} problem ids (e.g. {', '.join(map(str, repeated[:5]))}) occur in both natural splits of "
            "the source; --test_size would pool them and put problems with the same id into one file. Keep the "
            "natural splits (leave out --test_size), or preprocess one split's file or folder on its own"
        )


def split_problems(
    problems: Sequence[AppsProblem], test_size: float | None = None, seed: int = 0
) -> tuple[list[AppsProblem], list[AppsProblem]]:
    """Split problems into (train, test); every problem lands in exactly one.

    Natural splits (`source_split`) are kept when `test_size` is None, both are non-empty and every problem has one.
    Otherwise the problems are shuffled with `seed` and `test_size` of them go to test: a fraction in (0, 1) or a count
    >= 1, at least one and at most all but one. One warning line is logged when a natural split was empty (so the
    other side was shuffled), when some problems of a mix had none, and when `test_size` asked for every problem.
    Both lists keep the source order.

    Args:
        problems: Validated problems (at least 2).
        test_size: Fraction or number of test problems; None = natural splits if present, else 0.1.
        seed: Seed of the shuffle.

    Returns:
        (train, test) lists, both non-empty.

    Raises:
        DataError: If there are fewer than 2 problems or `test_size` is out of range.
    """
    natural_split = None  # the only natural split present, when the other one is empty
    if test_size is None:
        train = [p for p in problems if p.source_split == "train"]
        test = [p for p in problems if p.source_split == "test"]
        if train and test and len(train) + len(test) == len(problems):
            return train, test
        if train and test:  # a mix in which some sources have natural splits and others none
            log.warning("%d of %d problems have no natural split (e.g. LiveCodeBench): shuffled all of them with "
                        "--seed %d (or give --after for a date split)", len(problems) - len(train) - len(test),
                        len(problems), seed)
        elif train or test:  # the source has natural splits, but one of them is empty
            natural_split = "train" if train else "test"
        test_size = DEFAULT_TEST_SIZE
    check_test_size(test_size)
    _check_unique_ids(problems)
    if len(problems) < 2:
        raise DataError(f"need at least 2 valid problems to make a train and a test split, got {len(problems)}")
    wanted = round(test_size * len(problems)) if test_size < 1 else int(test_size)
    n_test = min(max(wanted, 1), len(problems) - 1)
    if n_test < wanted:
        log.warning("--test_size %g asks for %d test problems of %d; using %d so that train keeps at least one",
                    test_size, wanted, len(problems), n_test)
    elif n_test > wanted:
        log.info("--test_size %g of %d problems rounds to 0 test problems; using 1", test_size, len(problems))
    if natural_split is not None:
        empty = "test" if natural_split == "train" else "train"
        log.warning("the source has no %s problems (none in it, or none left after --difficulties): shuffled its %d "
                    "%s problems with --seed %d and put %d of them in test.parquet (--test_size %g)",
                    empty, len(problems), natural_split, seed, n_test, test_size)
    order = list(range(len(problems)))
    random.Random(seed).shuffle(order)
    test_ids = set(order[:n_test])
    train = [p for i, p in enumerate(problems) if i not in test_ids]
    test = [p for i, p in enumerate(problems) if i in test_ids]
    return train, test


def _resolve_formats(sources: Sequence[str], formats: str | Sequence[str] | None) -> list[str | None]:
    """One format (or None = detect) per source: one `--format` applies to every source."""
    if formats is None or isinstance(formats, str):
        formats = [formats] * len(sources)
    if len(formats) not in (1, len(sources)):
        raise DataError(f"--format needs one format, or one per --source: got {len(formats)} for {len(sources)}")
    formats = list(formats) * (len(sources) if len(formats) == 1 else 1)
    for fmt in formats:
        if fmt is not None and fmt not in FORMATS:
            raise DataError(f"unknown --format {fmt!r}: choose one of {', '.join(FORMATS)}")
    return formats


def _renumber(k: int, problems: list[AppsProblem]) -> list[AppsProblem]:
    """Give the k-th source's problems ids `k * ID_STRIDE + i`, keeping an APPS id in `source_id`."""
    for i, p in enumerate(problems):
        if p.data_source == "apps" and not p.source_id:
            p.source_id = str(p.problem_id)
        p.problem_id = k * ID_STRIDE + i
    return problems


def load_entries(
    sources: Sequence[str], formats: Sequence[str | None], max_tests: int | None, difficulties: Sequence[str] | None
) -> list[tuple[int, AppsProblem]]:
    """`(source index, problem)` of every valid problem of every source, after the `difficulties` filter.

    APPS problems keep their ids when APPS is the only source; otherwise problems are renumbered (`_renumber`).
    """
    entries = []
    for k, (source, fmt) in enumerate(zip(sources, formats)):
        problems = load_source(source, fmt, max_tests).problems
        if difficulties:
            kept = [p for p in problems if p.difficulty in difficulties]
            log.info("%s: kept %d of %d problems with difficulty in %s", source, len(kept), len(problems),
                     list(difficulties))
            problems = kept
        if len(sources) > 1 or any(p.data_source != "apps" for p in problems):
            problems = _renumber(k, problems)
        entries += [(k, p) for p in problems]
    return entries


def preprocess(
    source: str | Sequence[str],
    local_dir: str | Path,
    template_type: str = "chat",
    difficulties: Sequence[str] | None = None,
    max_tests: int | None = None,
    test_size: float | None = None,
    seed: int = 0,
    formats: str | Sequence[str] | None = None,
    weights: Sequence[float] | None = None,
    after: str | None = None,
) -> dict[str, Path]:
    """Load, validate, filter, mix and split sources and write `train.parquet` and `test.parquet`.

    Args:
        source: One source or several: hub dataset ids, files or folders (see `lit_codegen.data.sources`).
        local_dir: Output folder (created if needed).
        template_type: `base` or `chat`.
        difficulties: Keep only these difficulties (None keeps all; the values are each dataset's own).
        max_tests: Keep at most `max_tests` tests of each problem, a fixed pseudo-random subset (None keeps all).
        test_size: Fraction or count of problems for test; None = natural splits if present, else 0.1.
        seed: Seed of the train/test shuffle and of the `weights` resampling.
        formats: One format for all sources or one per source (`lit_codegen.data.sources.FORMATS`); None detects.
        weights: Per-source sampling weight of the training problems (`lit_codegen.data.mix.apply_weights`).
        after: `YYYY-MM-DD`: LiveCodeBench problems released after it are the test split (`test_size` is unused).

    Returns:
        `{"train": path, "test": path}`.

    Raises:
        DataError: Missing source, no problems left, bad arguments, or the output cannot be written.
    """
    check_template_type(template_type)
    sources = [str(source)] if isinstance(source, (str, Path)) else [str(s) for s in source]
    # Arguments first: a typo should not cost a 1.3 GB download.
    if not sources:
        raise DataError("--source needs at least one source")
    resolved = _resolve_formats(sources, formats)
    if max_tests is not None and max_tests < 1:
        raise DataError(f"--max_tests must be >= 1, got {max_tests}")
    if test_size is not None:
        check_test_size(test_size)
    if weights is not None:
        check_weights(weights, len(sources))
    if after is not None:
        after = parse_date(after)
    out = Path(local_dir)
    if out.exists() and not out.is_dir():
        raise DataError(f"--local_dir {out} exists and is not a folder")
    entries = load_entries(sources, resolved, max_tests, difficulties)
    if not entries:
        raise DataError(f"no valid problems left in {', '.join(sources)} "
                        f"(difficulties: {list(difficulties or []) or 'all'})")
    if after is not None:
        train_entries, test_entries = split_by_date(entries, after)
    else:
        origin = {id(p): k for k, p in entries}
        train, test = split_problems([p for _, p in entries], test_size, seed)
        train_entries, test_entries = [(origin[id(p)], p) for p in train], [(origin[id(p)], p) for p in test]
    if len(sources) > 1 or after is not None:
        test_entries, train_entries, dropped = dedupe(test_entries, train_entries, sources)
        if dropped:
            log.warning("dropped %d duplicate statements (split: dropped source <- kept source): %s",
                        sum(dropped.values()), "; ".join(f"{k} x{n}" for k, n in sorted(dropped.items())))
        else:
            log.info("no duplicate statements across sources")
    if weights is not None:
        train_entries = apply_weights(train_entries, weights, seed)
        log.info("training problems per source after --weights %s: %s", list(weights),
                 dict(Counter(sources[k] for k, _ in train_entries)))
    if not train_entries or not test_entries:
        raise DataError(f"no {'train' if not train_entries else 'test'} problems left after mixing; "
                        "check --weights, --after and the sources")
    try:
        return write_splits({"train": [p for _, p in train_entries], "test": [p for _, p in test_entries]}, out,
                            template_type)
    except OSError as err:
        raise DataError(f"cannot write to --local_dir {out}: {err}") from None


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m lit_codegen.data.preprocess", description=__doc__.split("\n")[0])
    parser.add_argument("--local_dir", required=True, help="output folder for train.parquet and test.parquet")
    parser.add_argument("--template_type", choices=TEMPLATE_TYPES, default="chat", help="prompt template")
    parser.add_argument("--source", nargs="+", default=[DEFAULT_SOURCE],
                        help="hub dataset ids, files or folders in a published layout; several are mixed "
                        "(default: %(default)s)")
    parser.add_argument("--format", nargs="+", choices=FORMATS, dest="formats", metavar="FORMAT",
                        help=f"format of the sources ({'|'.join(FORMATS)}), one for all or one per source (default: "
                        "detected from the hub name or the first record's fields)")
    parser.add_argument("--weights", nargs="+", type=float,
                        help="per-source sampling weight of the training problems: 0.5 keeps half, 2 repeats twice")
    parser.add_argument("--after", metavar="YYYY-MM-DD",
                        help="test split = LiveCodeBench problems released after this date; everything else trains")
    parser.add_argument("--difficulties", nargs="+",
                        help="keep only these difficulties (each dataset's own: APPS introductory|interview|"
                        "competition, TACO EASY|MEDIUM|..., LiveCodeBench easy|medium|hard)")
    parser.add_argument("--max_tests", type=int,
                        help="keep at most N tests of each problem: a fixed pseudo-random subset, the one the reward's "
                        "max_tests picks (not just the first ones, often the statement's examples)")
    parser.add_argument(
        "--test_size",
        type=float,
        help="fraction (0-1) or count of problems for test; default: natural splits if the source has them, else 0.1",
    )
    parser.add_argument("--seed", type=int, default=0, help="seed of the train/test shuffle (default: %(default)s)")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Command-line entry point; returns the exit status (user errors print one line and return 2)."""
    args = _parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    try:
        paths = preprocess(
            args.source,
            args.local_dir,
            args.template_type,
            args.difficulties,
            args.max_tests,
            args.test_size,
            args.seed,
            args.formats,
            args.weights,
            args.after,
        )
    except DataError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    for split, path in paths.items():
        print(f"wrote {path} ({pq.read_metadata(path).num_rows} {split} rows)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
