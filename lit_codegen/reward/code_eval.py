"""``python -m lit_codegen.reward.code_eval``: score solutions to APPS-format problems in the sandbox.

Examples::

    # the dataset's own first solution per problem, 100 interview problems
    python -m lit_codegen.reward.code_eval --data ../shared/data/apps/apps_coderl5.jsonl --output report.json
    # model samples: one JSON line per sample {"problem_id": int, "solution": str, ...extra keys}
    python -m lit_codegen.reward.code_eval --data codeparrot/apps --solutions samples.jsonl --mode apps
        --output report.json --plot report.png

Writes ``{"summary": {...}, "results": [...]}``: one result per scored solution, in the order of the
solutions file, with ``problem_id``, ``difficulty``, ``pass_rate``, ``n_tests``, ``outcomes``, the problem's
``data_source`` when the data has one (preprocessed parquet files: the table then also has a row per source) and the
extra keys of the solution line. Exit status 0 when the run completed (whatever the scores), 2 with a one-line
reason on bad input. Bad input is found before scoring starts: bad options, an unwritable ``--output`` or
``--plot``, unreadable files, a solutions line carrying a computed key (``pass_rate``, ...) or naming a
problem_id the data holds twice, and problems without usable tests.
"""

import argparse
import bz2
import gzip
import json
import lzma
import sys
import tempfile
import time
from pathlib import Path

from lit_codegen.reward.compare import MODES, parse_tests
from lit_codegen.reward.evaluator import Evaluator, check_limits
from lit_codegen.reward.report import SCORE_BANDS, format_table, summarize


class UsageError(Exception):
    """Bad input: reported as one line, exit status 2."""


# Fields of a result that code_eval computes; a solutions line may not carry them (they would be ambiguous).
COMPUTED_KEYS = ("difficulty", "pass_rate", "n_tests", "outcomes")
_DATA_SUFFIXES = {".jsonl", ".json", ".parquet", ".gz", ".bz2", ".xz", ".zst"}


def _looks_like_path(data: str) -> bool:
    """Whether ``--data`` names a local file rather than a hub dataset (``owner/name``)."""
    return (
        data.startswith((".", "/", "~"))
        or data.count("/") > 1
        or bool(_DATA_SUFFIXES.intersection(Path(data).suffixes))
    )


def _check_input_file(path: str, flag: str) -> None:
    if not Path(path).expanduser().exists():
        raise UsageError(f"{flag} {path}: no such file")
    if not Path(path).expanduser().is_file():
        raise UsageError(f"{flag} {path}: not a file")


def load_problems(data: str, split: str = "test") -> list[dict]:
    """Load APPS-format problems from a JSONL file, a preprocessed parquet file or a hub dataset name.

    Args:
        data: a ``.jsonl``/``.json`` or ``.parquet`` path, or a hub dataset name such as ``codeparrot/apps``.
            An argument that looks like a path (a known suffix, or starting with ``.``, ``/`` or ``~``) must exist.
        split: the split of a hub dataset (its ``{split}.jsonl`` data file is read directly).

    Returns:
        Rows with at least ``problem_id`` and ``input_output``.
    """
    path = Path(data).expanduser()
    if path.exists() or _looks_like_path(data):
        _check_input_file(data, "--data")
        if path.suffix == ".parquet":
            import pyarrow as pa
            import pyarrow.parquet as pq

            try:
                rows = pq.read_table(path).to_pylist()
            except (pa.ArrowException, OSError) as exc:
                raise UsageError(f"--data {data}: cannot read parquet ({exc})".splitlines()[0]) from None
        else:
            rows = _read_jsonl(path, "data")
    else:
        import datasets

        try:
            rows = list(datasets.load_dataset("json", data_files=f"hf://datasets/{data}/{split}.jsonl", split="train"))
        except Exception as exc:  # noqa: BLE001 - any loading failure is reported as one line
            raise UsageError(f"cannot load hub dataset {data!r} split {split!r}: {exc}".splitlines()[0]) from None
    for i, row in enumerate(rows):
        if "problem_id" not in row or "input_output" not in row:
            raise UsageError(f"{data}: record {i + 1} lacks 'problem_id' or 'input_output'")
    return rows


def _open_binary(path: Path):
    """Open a data file for reading bytes, decompressing `.gz`, `.bz2` and `.xz` on the fly."""
    openers = {".gz": gzip.open, ".bz2": bz2.open, ".xz": lzma.open}
    if path.suffix == ".zst":
        raise UsageError(f"{path}: zstd-compressed files are not supported; decompress it (or use gzip)")
    return openers.get(path.suffix, open)(path, "rb")


def _read_json_array(path: Path, what: str) -> list[dict] | None:
    """The rows of a `.json` file holding one JSON array of objects; None if it does not start with `[`."""
    with _open_binary(path) as f:
        text = f.read().decode("utf-8", errors="strict").lstrip("\ufeff")
    if not text.lstrip().startswith("["):
        return None
    try:
        rows = json.loads(text)
    except json.JSONDecodeError as exc:
        raise UsageError(f"{path}: malformed JSON array in {what} file ({exc.msg} at line {exc.lineno})") from None
    for number, row in enumerate(rows, 1):
        if not isinstance(row, dict):
            raise UsageError(f"{path}: item {number} of the array is not a JSON object")
    return rows


def _read_jsonl(path: Path, what: str) -> list[dict]:
    """The objects of a JSON-lines file (or of a `.json` file holding one array of them); `.gz`/`.bz2`/`.xz` too."""
    rows = []
    try:
        if path.suffixes[-2:-1] == [".json"] or path.suffix == ".json":
            array = _read_json_array(path, what)
            if array is not None:
                return array
        with _open_binary(path) as f:
            for number, raw in enumerate(f, 1):
                try:
                    line = raw.decode("utf-8")
                except UnicodeDecodeError as exc:
                    raise UsageError(f"{path}:{number}: {what} file is not UTF-8 text ({exc.reason})") from None
                if not line.strip():
                    continue
                try:
                    row = json.loads(line)
                except json.JSONDecodeError as exc:
                    raise UsageError(f"{path}:{number}: malformed JSON in {what} file ({exc.msg})") from None
                if not isinstance(row, dict):
                    raise UsageError(f"{path}:{number}: expected a JSON object")
                rows.append(row)
    except UnicodeDecodeError as exc:
        raise UsageError(f"{path}: {what} file is not UTF-8 text ({exc.reason})") from None
    except (OSError, EOFError, lzma.LZMAError) as exc:  # also a corrupt or truncated compressed file
        raise UsageError(f"{path}: cannot read {what} file ({getattr(exc, 'strerror', None) or exc})") from None
    return rows


def load_solutions(path: str, problems: list[dict]) -> list[tuple[dict, dict]]:
    """Read a solutions file and pair every line with the one data row of its problem.

    Args:
        path: JSONL with ``{"problem_id": int, "solution": str, ...}`` per line; the other keys are copied into
            the report, except :data:`COMPUTED_KEYS`, which are rejected.
        problems: the dataset's problems.

    Returns:
        ``(solution line, problem row)`` pairs, in file order.
    """
    _check_input_file(path, "--solutions")
    by_id: dict[int, dict] = {}
    duplicates = set()
    for row in problems:
        if row["problem_id"] in by_id:
            duplicates.add(row["problem_id"])
        by_id[row["problem_id"]] = row
    pairs = []
    for number, line in enumerate(_read_jsonl(Path(path), "solutions"), 1):
        if type(line.get("problem_id")) is not int or not isinstance(line.get("solution"), str):  # true is not 1
            raise UsageError(f"{path}: line {number} needs an int 'problem_id' and a str 'solution'")
        computed = [key for key in COMPUTED_KEYS if key in line]
        if computed:
            keys = ", ".join(repr(key) for key in computed)
            raise UsageError(f"{path}: line {number}: {keys} would clash with the computed result; rename or drop")
        if line["problem_id"] not in by_id:
            raise UsageError(f"{path}: line {number}: unknown problem_id {line['problem_id']}")
        if line["problem_id"] in duplicates:
            raise UsageError(
                f"{path}: line {number}: problem_id {line['problem_id']} appears more than once in the data, "
                "so its tests are ambiguous"
            )
        pairs.append((line, by_id[line["problem_id"]]))
    return pairs


def dataset_solutions(problems: list[dict], all_solutions: bool) -> list[tuple[dict, dict]]:
    """The dataset's own reference solutions, the first of each row or all of them, each paired with its row."""
    pairs = []
    for row in problems:
        try:
            solutions = json.loads(row.get("solutions") or "[]")
        except json.JSONDecodeError:
            solutions = []
        for k, solution in enumerate(solutions[: None if all_solutions else 1]):
            pairs.append(({"problem_id": row["problem_id"], "solution": solution, "solution_index": k}, row))
    return pairs


def unusable_tests(tests) -> str | None:
    """Why an APPS ``input_output`` field cannot be scored, or None when it can.

    Args:
        tests: the JSON string or the parsed dict.

    Returns:
        A short reason ("malformed input_output JSON", "no tests", the error of :func:`parse_tests`) or None.
    """
    try:
        count = len(parse_tests(tests).inputs)
    except json.JSONDecodeError:
        return "malformed input_output JSON"
    except (ValueError, TypeError) as exc:  # parse_tests says what is wrong (lists of unequal length, ...)
        return str(exc)
    return None if count else "no tests"


def _check_tests(pairs: list[tuple[dict, dict]]) -> None:
    """One error naming every problem to be scored whose tests cannot be run (APPS has a few)."""
    bad, seen = [], set()
    for _, row in pairs:
        if id(row) not in seen:
            seen.add(id(row))
            reason = unusable_tests(row["input_output"])
            if reason:
                bad.append(f"{row['problem_id']} ({reason})")
    if bad:
        shown = ", ".join(bad[:10]) + (f" and {len(bad) - 10} more" if len(bad) > 10 else "")
        raise UsageError(f"problems without usable tests: {shown}; fix or drop them "
                         "(lit_codegen.data.preprocess drops them)")


def _check_output_path(path: str | None, flag: str) -> None:
    """Refuse a directory and create missing parent folders, so that the report is not lost after scoring."""
    if path is None:
        return
    target = Path(path)
    if target.is_dir():
        raise UsageError(f"{flag} {path}: is a directory; give a file name")
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
    except (FileExistsError, NotADirectoryError):
        raise UsageError(f"{flag} {path}: part of its folder path is a file") from None
    except OSError as exc:
        raise UsageError(f"{flag} {path}: cannot create its folder ({exc.strerror})") from None
    try:  # a real write: os.access says yes to root everywhere, also for /proc and /sys
        with tempfile.NamedTemporaryFile(dir=target.parent, prefix=".code_eval_check_"):
            pass
        if target.exists():
            with open(target, "ab"):
                pass
    except OSError as exc:
        raise UsageError(f"{flag} {path}: not writable ({exc.strerror})") from None


def check_args(args: argparse.Namespace) -> None:
    """Reject bad options before any data is loaded or scored (one-line error, exit status 2)."""
    try:  # the Evaluator's own checks, before any data is loaded
        check_limits(timeout=args.timeout, memory_mb=args.memory_mb, workers=args.workers)
    except ValueError as exc:
        raise UsageError(f"--{exc}") from None
    if args.max_problems is not None and args.max_problems < 1:
        raise UsageError(f"--max_problems must be at least 1, got {args.max_problems}")
    if args.plot:
        from matplotlib.backend_bases import FigureCanvasBase

        suffix = Path(args.plot).suffix.lstrip(".").lower()
        if suffix and suffix not in FigureCanvasBase.get_supported_filetypes():
            raise UsageError(f"--plot {args.plot}: unsupported image format {suffix!r}; use .png")
    _check_output_path(args.output, "--output")
    _check_output_path(args.plot, "--plot")


def plot_bands(summary: dict, path: str) -> None:
    """Write a PNG bar chart of the score-band distribution per difficulty."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    groups = summary["by_difficulty"]
    fig, ax = plt.subplots(figsize=(8, 4.5))
    width = 0.8 / max(len(groups), 1)
    for g, (name, stats) in enumerate(groups.items()):
        fractions = [stats["score_bands"][b] / max(stats["count"], 1) for b in SCORE_BANDS]
        ax.bar([i + g * width for i in range(len(SCORE_BANDS))], fractions, width, label=f"{name} (n={stats['count']})")
    ax.set_xticks([i + width * (len(groups) - 1) / 2 for i in range(len(SCORE_BANDS))])
    ax.set_xticklabels(
        [f"{b}\n[{i / 5:.1f}, {(i + 1) / 5:.1f}{']' if i == 4 else ')'}" for i, b in enumerate(SCORE_BANDS)]
    )
    ax.set_ylabel("fraction of solutions")
    ax.set_title(
        f"Pass-rate distribution (mean {summary['mean_pass_rate']:.3f}, "
        f"strict accuracy {summary['strict_accuracy']:.3f})"
    )
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def build_parser() -> argparse.ArgumentParser:
    """The command-line interface."""
    parser = argparse.ArgumentParser(prog="python -m lit_codegen.reward.code_eval", description=__doc__.split("\n")[0])
    parser.add_argument(
        "--data", default="codeparrot/apps", help="APPS JSONL, preprocessed parquet or hub dataset name"
    )
    parser.add_argument("--split", default="test", help="split of a hub dataset (default: test)")
    parser.add_argument("--solutions", help="JSONL of {problem_id, solution, ...}; default: the dataset's solutions")
    parser.add_argument("--all_solutions", action="store_true", help="score every dataset solution, not the first")
    parser.add_argument("--output", help="write the REPORT.json here")
    parser.add_argument("--workers", type=int, default=None, help="sandbox workers (default: available CPUs)")
    parser.add_argument("--timeout", type=float, default=4.0, help="wall-clock seconds per test (default 4)")
    parser.add_argument("--memory_mb", type=int, default=1024, help="memory cap per test (default 1024)")
    parser.add_argument("--mode", choices=MODES, default="strict", help="judging rules (default strict)")
    parser.add_argument("--max_problems", type=int, default=None, help="only the first N (selected) problems")
    parser.add_argument("--difficulty", nargs="+", help="only these difficulties (introductory interview competition)")
    parser.add_argument("--plot", help="write a PNG of the score distribution by difficulty")
    return parser


def run(args: argparse.Namespace) -> dict:
    """Check, load, score and summarise; returns the report dict (also written to ``--output``)."""
    check_args(args)
    problems = load_problems(args.data, args.split)
    selected = [row for row in problems if not args.difficulty or row.get("difficulty") in args.difficulty]
    if args.max_problems is not None:
        selected = selected[: args.max_problems]
    if args.solutions:
        selected_ids = {row["problem_id"] for row in selected}
        pairs = load_solutions(args.solutions, problems)
        pairs = [(line, row) for line, row in pairs if line["problem_id"] in selected_ids]
    else:
        pairs = dataset_solutions(selected, args.all_solutions)  # row by row: duplicate ids keep their own tests
    if not pairs:
        raise UsageError("nothing to score: no solutions for the selected problems")
    _check_tests(pairs)
    results: list[dict | None] = [None] * len(pairs)
    from tqdm import tqdm

    with Evaluator(workers=args.workers, timeout=args.timeout, mode=args.mode, memory_mb=args.memory_mb) as ev:
        protections = ev.protections
        start = time.monotonic()
        stream = ev.imap([line["solution"] for line, _ in pairs], [row["input_output"] for _, row in pairs])
        for index, result in tqdm(stream, total=len(pairs), desc="scoring", unit="solution"):
            line, row = pairs[index]
            extra = {k: v for k, v in line.items() if k not in ("problem_id", "solution")}
            results[index] = {
                **extra,  # first, so that a computed field always wins (load_solutions also rejects them)
                "problem_id": line["problem_id"],
                "difficulty": row.get("difficulty") or "unknown",  # missing, null and "" are one group
                **({"data_source": row["data_source"]} if row.get("data_source") else {}),  # parquet rows have one
                "pass_rate": result.pass_rate,
                "n_tests": result.n_tests,
                "outcomes": result.outcomes,
            }
        wall = time.monotonic() - start
    summary = summarize(results, wall_time_s=wall, protections=protections)
    n_problems = len({id(row) for _, row in pairs})
    summary.update(data=args.data, mode=args.mode, timeout_s=args.timeout, n_problems=n_problems)
    return {"summary": summary, "results": results}


def main(argv: list[str] | None = None) -> int:
    """Entry point; returns the exit status."""
    args = build_parser().parse_args(argv)
    try:
        report = run(args)
    except UsageError as exc:
        print(f"code_eval: error: {exc}", file=sys.stderr)
        return 2
    print(format_table(report["summary"]))
    if args.output:  # run() checked the path and created its folder
        with open(args.output, "w") as f:
            json.dump(report, f, indent=1)
        print(f"report written to {args.output}")
    if args.plot:
        plot_bands(report["summary"], args.plot)
        print(f"plot written to {args.plot}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
