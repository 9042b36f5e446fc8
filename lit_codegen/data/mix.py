"""Mixing several sources into one training set: cross-source deduplication, per-source weights, a date split.

Used by `lit_codegen.data.preprocess` when it is given several `--source`s, `--weights` or `--after`:

    python -m lit_codegen.data.preprocess --source BAAI/TACO livecodebench/code_generation_lite \
        --weights 1 2 --after 2024-08-01 --local_dir data/mix

- `split_by_date`: LiveCodeBench problems released after the date are the test split, everything else trains;
- `dedupe`: a problem whose normalised statement (`normalise_statement`) was already kept from another source, or
  that is in train while the same statement is in test, is dropped; the drops are counted per pair of sources;
- `apply_weights`: weight w of a source keeps floor(w) copies of each of its training problems plus a seeded random
  (w - floor(w)) share of them (0.5 keeps half, 2 repeats each problem twice; copies share their `problem_id`).
"""

from __future__ import annotations

import datetime
import hashlib
import math
import random
import re
import unicodedata
from collections import Counter
from collections.abc import Sequence

from lit_codegen.data.apps import AppsProblem, DataError

Entry = tuple[int, AppsProblem]  # (index of the --source the problem came from, problem)
_NOT_WORD = re.compile(r"[\W_]+")


def normalise_statement(text: str) -> str:
    """The dedup key of a statement: NFKC, case-folded, everything but letters and digits removed, hashed.

    So copies that differ in whitespace, punctuation, LaTeX dollars or markdown emphasis (TACO re-publishes APPS,
    DeepCoder re-publishes TACO and LiveCodeBench) share a key.
    """
    folded = _NOT_WORD.sub("", unicodedata.normalize("NFKC", text).casefold())
    return hashlib.sha1(folded.encode()).hexdigest()


def parse_date(text: str, flag: str = "--after") -> str:
    """`text` if it is a valid `YYYY-MM-DD` date, else `DataError` naming `flag`."""
    try:
        if len(text) == 10:
            return datetime.date.fromisoformat(text).isoformat()
    except ValueError:
        pass
    raise DataError(f"{flag} must be a date YYYY-MM-DD, got {text!r}")


def split_by_date(entries: Sequence[Entry], after: str) -> tuple[list[Entry], list[Entry]]:
    """(train, test): LiveCodeBench problems with `release_date` after `after` are test, the others train.

    Problems without a release date train. Raises `DataError` when no LiveCodeBench problem is that recent.
    """
    test = [e for e in entries if e[1].data_source == "livecodebench" and e[1].release_date > after]
    if not test:
        dates = sorted(e[1].release_date for e in entries if e[1].data_source == "livecodebench" and e[1].release_date)
        latest = dates[-1] if dates else "none"
        raise DataError(f"--after {after}: no LiveCodeBench problem was released after it (latest: {latest}); "
                        "add a LiveCodeBench source or give an earlier date")
    chosen = {id(e) for e in test}
    return [e for e in entries if id(e) not in chosen], test


def dedupe(test: Sequence[Entry], train: Sequence[Entry], names: Sequence[str]) -> tuple[list, list, Counter]:
    """Drop cross-source and train/test duplicates by normalised statement; test copies always win.

    A problem is dropped when its statement was kept from another source before it (test first, then train, each in
    source order), or when it is a training problem whose statement is in test. Duplicates inside one source and one
    split are kept (APPS renders some problems twice, as stdin and as call-based).

    Args:
        test: Test entries.
        train: Train entries.
        names: Name of each source index, for the counts.

    Returns:
        (test kept, train kept, counts keyed by "dropped source <- kept source" and split).
    """
    owner: dict[str, tuple[int, str]] = {}  # key -> (source index, split) of the first kept copy
    dropped: Counter = Counter()
    kept: dict[str, list[Entry]] = {"test": [], "train": []}
    for split, entries in (("test", test), ("train", train)):
        for k, problem in entries:
            key = normalise_statement(problem.question)
            first = owner.setdefault(key, (k, split))
            if first != (k, split):  # another source, or this source's test copy of a training problem
                dropped[f"{split}: {names[k]} <- {names[first[0]]} ({first[1]})"] += 1
                continue
            kept[split].append((k, problem))
    return kept["test"], kept["train"], dropped


def check_weights(weights: Sequence[float], n_sources: int) -> None:
    """Raise `DataError` unless there is one finite weight >= 0 per source and at least one is positive."""
    if len(weights) != n_sources:
        raise DataError(f"--weights needs one weight per --source: got {len(weights)} for {n_sources} sources")
    if not all(math.isfinite(w) and w >= 0 for w in weights) or not any(w > 0 for w in weights):
        raise DataError(f"--weights must be finite numbers >= 0, at least one positive, got {list(weights)}")


def apply_weights(train: Sequence[Entry], weights: Sequence[float], seed: int = 0) -> list[Entry]:
    """Resample the training entries per source: floor(w) copies of each plus a seeded (w - floor(w)) share.

    Args:
        train: Training entries in source order.
        weights: Weight of each source index.
        seed: Seed of the fractional share's pick.

    Returns:
        The resampled entries, grouped by source, copies adjacent, in the original order otherwise.
    """
    out: list[Entry] = []
    for k, weight in enumerate(weights):
        mine = [e for e in train if e[0] == k]
        whole, frac = int(weight), weight - int(weight)
        extra = set(random.Random(seed + k).sample(range(len(mine)), round(frac * len(mine))))
        for i, entry in enumerate(mine):
            out += [entry] * (whole + (i in extra))
    return out
