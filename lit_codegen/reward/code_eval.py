"""``python -m lit_codegen.reward.code_eval``: score solutions to APPS-format problems in the sandbox.

Examples::

    # the dataset's own first solution per problem, 100 interview problems
    python -m lit_codegen.reward.code_eval --data ../shared/data/apps/apps_coderl5.jsonl --output report.json
    # model samples: one JSON line per sample {"problem_id": int, "solution": str, ...extra keys}
    python -m lit_codegen.reward.code_eval --data codeparrot/apps --solutions samples.jsonl --mode apps
        --output report.json --plot report.png

Writes ``{"summary": {...}, "results": [...]}``: one result per scored solution, in the order of the
solutions file, with ``problem_id``, ``difficulty``, ``pass_rate``, ``n_tests``, ``outcomes`` and the extra
keys of the solution line. Exit status 0 when the run completed (whatever the scores), 2 with a one-line
reason on bad input.
"""

import argparse
import json
import sys
import time
from pathlib import Path

from lit_codegen.reward.compare import MODES, parse_tests
from lit_codegen.reward.evaluator import Evaluator
from lit_codegen.reward.report import SCORE_BANDS, format_table, summarize


class UsageError(Exception):
    """Bad input: reported as one line, exit status 2."""


def load_problems(data: str, split: str = "test") -> list[dict]:
    """Load APPS-format problems from a JSONL file, a preprocessed parquet file or a hub dataset name.

    Args:
        data: a ``.jsonl``/``.json`` or ``.parquet`` path, or a hub dataset name such as ``codeparrot/apps``.
        split: the split of a hub dataset (its ``{split}.jsonl`` data file is read directly).

    Returns:
        Rows with at least ``problem_id`` and ``input_output``.
    """
    path = Path(data)
    if path.suffix in (".jsonl", ".json", ".parquet") or path.exists():
        if not path.is_file():
            raise UsageError(f"data file not found: {data}")
        if path.suffix == ".parquet":
            import pyarrow.parquet as pq

            rows = pq.read_table(path).to_pylist()
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


def _read_jsonl(path: Path, what: str) -> list[dict]:
    rows = []
    with open(path) as f:
        for number, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as exc:
                raise UsageError(f"{path}:{number}: malformed JSON in {what} file ({exc.msg})") from None
            if not isinstance(row, dict):
                raise UsageError(f"{path}:{number}: expected a JSON object")
            rows.append(row)
    return rows


def load_solutions(path: str, problems: dict[int, dict]) -> list[dict]:
    """Read a solutions file and check every line names a known problem.

    Args:
        path: JSONL with ``{"problem_id": int, "solution": str, ...}`` per line.
        problems: the dataset's problems by id.

    Returns:
        The solution lines, in file order.
    """
    if not Path(path).is_file():
        raise UsageError(f"solutions file not found: {path}")
    lines = _read_jsonl(Path(path), "solutions")
    for number, row in enumerate(lines, 1):
        if not isinstance(row.get("problem_id"), int) or not isinstance(row.get("solution"), str):
            raise UsageError(f"{path}: line {number} needs an int 'problem_id' and a str 'solution'")
        if row["problem_id"] not in problems:
            raise UsageError(f"{path}: line {number}: unknown problem_id {row['problem_id']}")
    return lines


def dataset_solutions(problems: list[dict], all_solutions: bool) -> list[dict]:
    """The dataset's own reference solutions: the first of each problem, or all of them."""
    lines = []
    for row in problems:
        try:
            solutions = json.loads(row.get("solutions") or "[]")
        except json.JSONDecodeError:
            solutions = []
        for k, solution in enumerate(solutions[: None if all_solutions else 1]):
            lines.append({"problem_id": row["problem_id"], "solution": solution, "solution_index": k})
    return lines


def _tests_of(row: dict) -> dict:
    try:
        parse_tests(row["input_output"])
        return row["input_output"]
    except (ValueError, TypeError):
        return {"inputs": [], "outputs": []}  # APPS has a few problems without usable tests: 0 tests, rate 0


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
    """Load, score and summarise; returns the report dict (also written to ``--output``)."""
    problems = load_problems(args.data, args.split)
    by_id = {row["problem_id"]: row for row in problems}
    selected = [row for row in problems if not args.difficulty or row.get("difficulty") in args.difficulty]
    if args.max_problems is not None:
        selected = selected[: args.max_problems]
    selected_ids = {row["problem_id"] for row in selected}
    if args.solutions:
        lines = [line for line in load_solutions(args.solutions, by_id) if line["problem_id"] in selected_ids]
    else:
        lines = dataset_solutions(selected, args.all_solutions)
    if not lines:
        raise UsageError("nothing to score: no solutions for the selected problems")
    tests_cache = {pid: _tests_of(by_id[pid]) for pid in {line["problem_id"] for line in lines}}
    results: list[dict | None] = [None] * len(lines)
    from tqdm import tqdm

    with Evaluator(workers=args.workers, timeout=args.timeout, mode=args.mode, memory_mb=args.memory_mb) as ev:
        protections = ev.protections
        start = time.monotonic()
        stream = ev.imap([line["solution"] for line in lines], [tests_cache[line["problem_id"]] for line in lines])
        for index, result in tqdm(stream, total=len(lines), desc="scoring", unit="solution"):
            line = lines[index]
            extra = {k: v for k, v in line.items() if k not in ("problem_id", "solution")}
            results[index] = {
                "problem_id": line["problem_id"],
                "difficulty": by_id[line["problem_id"]].get("difficulty", "unknown"),
                "pass_rate": result.pass_rate,
                "n_tests": result.n_tests,
                "outcomes": result.outcomes,
                **extra,
            }
        wall = time.monotonic() - start
    summary = summarize(results, wall_time_s=wall, protections=protections)
    summary.update(data=args.data, mode=args.mode, timeout_s=args.timeout, n_problems=len(tests_cache))
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
    if args.output:
        Path(args.output).parent.mkdir(parents=True, exist_ok=True)
        with open(args.output, "w") as f:
            json.dump(report, f, indent=1)
        print(f"report written to {args.output}")
    if args.plot:
        plot_bands(report["summary"], args.plot)
        print(f"plot written to {args.plot}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
