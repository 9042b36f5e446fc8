"""The bundled toy problems: 28 very easy APPS-format problems, the embedded default task of the CPU demo.

`toy_problems.jsonl` holds problems 9000-9013 (stdin/stdout, e.g. `print(int(input())+1)`) and 9014-9027
(call-based, `fn_name` set), each with 4 tests, 2 correct `solutions` and 2-3 `wrong_solutions` (an extra field;
most wrong ones pass some tests, so they earn partial reward). Questions and programs are kept short enough that a
~1.2M-parameter model trained from scratch can learn them by SFT, after which PPO has room to raise the pass rate.

The demo trains and validates on the same toy task: `write_toy_parquet` writes ALL problems to both
`train.parquet` and `test.parquet`, so the validation pass rate measures how well the policy solves the training
problems, not generalisation.

    from lit_codegen.data.toy import write_toy_parquet
    write_toy_parquet("/tmp/toy", "chat")  # -> /tmp/toy (train.parquet, test.parquet)
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from lit_codegen.data.apps import load_apps
from lit_codegen.data.preprocess import write_splits

TOY_PROBLEMS = Path(__file__).with_name("toy_problems.jsonl")


def read_toy_records() -> list[dict[str, Any]]:
    """The raw toy records with `solutions`, `wrong_solutions` and `input_output` decoded from JSON."""
    records = []
    for line in TOY_PROBLEMS.read_text(encoding="utf-8").splitlines():
        record = json.loads(line)
        for key in ("solutions", "wrong_solutions", "input_output"):
            record[key] = json.loads(record[key])
        records.append(record)
    return records


def write_toy_parquet(out_dir: str | Path, template_type: str = "chat") -> Path:
    """Preprocess the toy problems into `out_dir/train.parquet` and `out_dir/test.parquet`, both with all problems.

    Args:
        out_dir: Output folder (created if needed).
        template_type: `chat` or `base` prompt template.

    Returns:
        `out_dir` as a Path.
    """
    problems = load_apps(TOY_PROBLEMS).problems
    write_splits({"train": problems, "test": problems}, out_dir, template_type)
    return Path(out_dir)
