"""Summaries of evaluation results: score bands, accuracy per difficulty and per data source, verdicts, a text table.

Pure functions on plain dicts so that the CLI and the validation callback share them.

Score bands (half-open, lower edge inclusive; 1.0 belongs to the top band): Very Poor [0, 0.2),
Poor [0.2, 0.4), Fair [0.4, 0.6), Good [0.6, 0.8), Excellent [0.8, 1.0]. An exact 0.2 is "Poor".
"""

from collections import Counter
from collections.abc import Iterable, Sequence

SCORE_BANDS = ("Very Poor", "Poor", "Fair", "Good", "Excellent")


def score_band(pass_rate: float) -> str:
    """The band name of one pass rate.

    Args:
        pass_rate: a value in [0, 1].

    Returns:
        One of :data:`SCORE_BANDS`; band edges belong to the higher band (0.2 -> "Poor"), 1.0 -> "Excellent".
    """
    return SCORE_BANDS[min(int(pass_rate * 5 + 1e-9), 4)]


def score_bands(pass_rates: Iterable[float]) -> dict[str, int]:
    """How many pass rates fall in each band, all five bands present.

    Args:
        pass_rates: values in [0, 1].

    Returns:
        ``{band name: count}`` in :data:`SCORE_BANDS` order.
    """
    counts = Counter(score_band(r) for r in pass_rates)
    return {band: counts.get(band, 0) for band in SCORE_BANDS}


def _group_stats(rows: Sequence[dict]) -> dict:
    rates = [r["pass_rate"] for r in rows]
    return {
        "count": len(rows),
        "mean_pass_rate": sum(rates) / len(rates) if rates else 0.0,
        "strict_accuracy": sum(r["n_tests"] > 0 and r["pass_rate"] == 1.0 for r in rows) / len(rows) if rows else 0.0,
        "score_bands": score_bands(rates),
    }


def summarize(results: Sequence[dict], wall_time_s: float | None = None, protections: Sequence[str] = ()) -> dict:
    """Summary of scored solutions, overall, per difficulty and per data source.

    Args:
        results: one dict per scored solution with ``pass_rate``, ``n_tests``, ``outcomes``, ``difficulty`` and,
            for problems of a preprocessed parquet file, ``data_source``.
        wall_time_s: evaluation wall time, for tests/s.
        protections: the evaluator's active protections, copied into the summary.

    Returns:
        ``{"count", "mean_pass_rate", "strict_accuracy", "score_bands", "by_difficulty": {name: same keys},
        "by_source": {data_source: same keys} (results without ``data_source`` are left out), "verdicts":
        {verdict: count}, "n_tests", "wall_time_s", "tests_per_s", "protections"}``.
    """
    summary = _group_stats(results)
    by_difficulty: dict[str, list[dict]] = {}
    for row in results:
        by_difficulty.setdefault(str(row.get("difficulty") or "unknown"), []).append(row)  # null, "" = unknown
    summary["by_difficulty"] = {name: _group_stats(rows) for name, rows in sorted(by_difficulty.items())}
    by_source: dict[str, list[dict]] = {}
    for row in results:
        if row.get("data_source"):
            by_source.setdefault(str(row["data_source"]), []).append(row)
    summary["by_source"] = {name: _group_stats(rows) for name, rows in sorted(by_source.items())}
    summary["verdicts"] = dict(Counter(v for row in results for v in row["outcomes"]).most_common())
    summary["n_tests"] = sum(row["n_tests"] for row in results)
    summary["wall_time_s"] = wall_time_s
    summary["tests_per_s"] = summary["n_tests"] / wall_time_s if wall_time_s else None
    summary["protections"] = list(protections)
    return summary


def format_table(summary: dict) -> str:
    """A plain-text table of the summary by difficulty, then by data source when there is one, plus the overall row.

    Args:
        summary: the output of :func:`summarize`.

    Returns:
        A multi-line string.
    """
    header = f"{'difficulty':<14}{'n':>6}{'pass rate':>11}{'strict acc':>12}  " + " ".join(
        f"{b:>9}" for b in SCORE_BANDS
    )
    lines = [header, "-" * len(header)]
    rows = list(summary["by_difficulty"].items())
    if summary.get("by_source"):
        rows += [("source", None)] + list(summary["by_source"].items())
    for name, stats in rows + [("ALL", summary)]:
        if stats is None:  # the header of the per-source block
            lines.append(f"{name:<14}")
            continue
        bands = " ".join(f"{stats['score_bands'][b]:>9}" for b in SCORE_BANDS)
        lines.append(
            f"{name:<14}{stats['count']:>6}{stats['mean_pass_rate']:>11.3f}{stats['strict_accuracy']:>12.3f}  {bands}"
        )
    verdicts = ", ".join(f"{k}={v}" for k, v in summary["verdicts"].items())
    lines.append(f"verdicts: {verdicts}")
    if summary.get("tests_per_s"):
        lines.append(
            f"{summary['n_tests']} tests in {summary['wall_time_s']:.1f}s ({summary['tests_per_s']:.0f} tests/s)"
        )
    return "\n".join(lines)
