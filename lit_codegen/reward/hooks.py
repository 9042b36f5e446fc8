"""Custom rewards on top of the evaluator, and the verdict counts every run logs.

A reward hook is any Python callable named by import path in `model.init_args.reward.reward_fn`:

    # my_rewards.py (importable: on PYTHONPATH or in the working directory)
    def format_bonus(problem, response, program, result):
        return result.pass_rate + (0.1 if "```python" in response else 0.0)

    lit-codegen fit --config configs/demo_cpu.yaml --model.init_args.reward.reward_fn my_rewards:format_bonus

It is called once per training response with keyword arguments: `problem` (the dataset row of the response's
prompt: `problem_id`, `difficulty`, `input_output`, `data_source`, ...), `response` (the generated text), `program`
(the code extracted from it, as the evaluator ran it) and `result` (the `EvalResult`: `pass_rate`, per-test
`outcomes`). It returns a float, which replaces the pass rate as the base of the training reward; the reward's
shaping terms (`no_code_penalty`, the overlong punishment) are added to it as before. Validation always reports the
pass rate. `lit_codegen.reward.hooks.format_bonus` is the example above, ready to use.
"""

from __future__ import annotations

import importlib
import math
from collections.abc import Callable, Sequence

from lit_codegen.reward.evaluator import VERDICTS

RewardFn = Callable[..., float]


def load_reward_fn(path: str) -> RewardFn:
    """The callable at `path`: `package.module:function` or `package.module.function`.

    Raises:
        ValueError: One message naming the path when the module or the attribute is missing or not callable.
    """
    module_name, sep, attr = path.partition(":")
    if not sep:
        module_name, _, attr = path.rpartition(".")
    if not module_name or not attr:
        raise ValueError(f"--model.reward.reward_fn {path!r}: expected `package.module:function`")
    try:
        fn = getattr(importlib.import_module(module_name), attr)
    except (ImportError, AttributeError) as err:
        raise ValueError(f"--model.reward.reward_fn {path!r} cannot be loaded: {err}") from None
    if not callable(fn):
        raise ValueError(f"--model.reward.reward_fn {path!r} is a {type(fn).__name__}, not a function")
    return fn


def hook_rewards(fn: RewardFn, name: str, problems: Sequence[dict], responses: Sequence[str],
                 programs: Sequence[str], results: Sequence) -> list[float]:
    """`fn` applied to every response (N floats), in order.

    Raises:
        RuntimeError: naming the hook, the sample and its problem when the hook raises or returns something that is
            not a finite number (never a silent 0).
    """
    values = []
    for i, (problem, response, program, result) in enumerate(zip(problems, responses, programs, results)):
        where = f"reward hook {name} on sample {i} (problem_id {problem.get('problem_id')})"
        try:
            value = fn(problem=problem, response=response, program=program, result=result)
        except Exception as err:
            raise RuntimeError(f"{where} raised {type(err).__name__}: {err}") from err
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
            raise RuntimeError(f"{where} returned {value!r}; a reward hook must return a finite float")
        values.append(float(value))
    return values


def verdict_fractions(results: Sequence, prefix: str) -> dict[str, float]:
    """`{prefix}/verdict/<verdict>`: the fraction of all tests run (over every result) with each verdict.

    The verdicts: passed, wrong_answer, timeout, runtime_error, compile_error, memory_limit, output_limit.
    """
    counts = dict.fromkeys(VERDICTS, 0)
    for res in results:
        for outcome in res.outcomes:
            counts[outcome] = counts.get(outcome, 0) + 1
    total = max(sum(counts.values()), 1)
    return {f"{prefix}/verdict/{name}": n / total for name, n in counts.items()}


def format_bonus(problem: dict, response: str, program: str, result) -> float:
    """Example hook: the pass rate, plus 0.1 when the response puts its program in a fenced python block."""
    return result.pass_rate + (0.1 if "```python" in response else 0.0)
