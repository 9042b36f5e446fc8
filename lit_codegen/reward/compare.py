"""Parsing APPS tests and judging a program's output against the expected one (``strict`` and ``apps`` modes).

Both functions here run in the evaluator process, never in the sandbox: the candidate program never sees
the expected outputs.

``strict`` (the training default): stdin/stdout problems pass when the printed text equals the expected
text after removing trailing whitespace on every line and trailing empty lines, except that numbers compare
by value (:func:`numbers_equal`): ``2.75`` passes for ``2.750000000000000``, ``240.0`` for ``240``, and a
number within an absolute or relative error of 1e-6 of an expected token written with a decimal point or an
exponent (``1.1547005`` for ``1.1547005383792515``); line structure, spacing and every other token stay exact.
Call-based problems pass when the returned value, serialised to JSON in the sandbox, equals the expected JSON
value (tuples become lists; ``true`` is not ``1``; ``1`` equals ``1.0`` because JSON has one number type;
an expected float also accepts a number within the same 1e-6). APPS wraps Codewars outputs in a one-element
list, so a one-element expected list also accepts its element.

``apps`` reproduces the judging rules of the APPS reference harness (hendrycks/apps ``eval/testing_util.py``),
for numbers comparable with papers. Its laxities, all reproduced on purpose:

1. surrounding whitespace of the whole output and of every line is ignored, and empty lines are dropped;
2. if every line parses as a number, lines are compared with ``numpy.allclose`` (rtol 1e-5, atol 1e-8);
3. finally the output passes if the *set of lines, each taken as a set of whitespace-separated tokens*
   equals the expected one: line order, token order and repetitions are ignored
   (the lines "1 2" and "2 1" together pass for the single expected line "2 1"), also after rounding
   numeric tokens to 3 decimals;
4. call-based: Python ``==`` (so ``True == 1``), the one-element-list unwrapping, dicts with int keys.
"""

import decimal
import itertools
import json
import math
import operator
import random
import re
import zlib
from dataclasses import dataclass

MODES = ("strict", "apps")

# strict: a number that is not an integer (written with a decimal point or an exponent) also accepts any number within
# this absolute or relative error, the usual "1e-6" of problem statements and of judges' float checkers.
NUMBER_TOLERANCE = 1e-6
_INTEGER = re.compile(r"-?(?:0|[1-9][0-9]*)")  # canonical form only: "007" or "+7" are text, not numbers
_DECIMAL = re.compile(r"-?(?:[0-9]+\.[0-9]*|\.[0-9]+)(?:[eE][+-]?[0-9]+)?|-?[0-9]+[eE][+-]?[0-9]+")
_SPACES = re.compile(r"(\s+)")

# Integers in test data and returned values may be longer than the 4300 digits `int(str)` accepts by default (big
# factorials); up to this many digits are read, in chunks (the cap bounds the quadratic cost of untrusted output).
MAX_INT_DIGITS = 100_000
_CHUNK_DIGITS = 4000


def loads_json(text: str | bytes):
    """`json.loads` that also reads integers of up to `MAX_INT_DIGITS` digits.

    Raises:
        ValueError: not JSON, or an integer longer than `MAX_INT_DIGITS` digits.
    """
    return json.loads(text, parse_int=_parse_int)


def _parse_int(literal: str) -> int:
    """A JSON integer literal (optional minus sign, digits) as an int, whatever its length up to the cap."""
    if len(literal) <= _CHUNK_DIGITS:
        return int(literal)
    digits = literal.lstrip("-")
    if len(digits) > MAX_INT_DIGITS:
        raise ValueError(f"integer of {len(digits)} digits (at most {MAX_INT_DIGITS} are read)")
    value = 0
    for start in range(0, len(digits), _CHUNK_DIGITS):
        chunk = digits[start : start + _CHUNK_DIGITS]
        value = value * 10 ** len(chunk) + int(chunk)
    return -value if literal.startswith("-") else value


@dataclass(frozen=True)
class ParsedTests:
    """One problem's tests, ready to run.

    Attributes:
        inputs: per test, the stdin text (str) or the argument list (list) for call-based problems.
        outputs: per test, the expected output (str for stdin problems, a JSON value for call-based).
        fn_name: the function to call, None for stdin/stdout problems.
        indices: positions of these tests in the problem's full test list.
    """

    inputs: list
    outputs: list
    fn_name: str | None
    indices: list[int]


def parse_tests(tests: str | dict, max_tests: int | None = None) -> ParsedTests:
    """Parse an APPS ``input_output`` field and pick at most ``max_tests`` tests deterministically.

    The pick is a pseudo-random subset seeded by the CRC32 of the canonical test JSON, so the same problem
    always gets the same tests (across runs and processes) and the first tests, often the examples shown in
    the problem statement, are not favoured.

    Args:
        tests: the JSON string ``{"inputs": [...], "outputs": [...], "fn_name"?: str}`` or the parsed dict.
        max_tests: cap on the number of tests; None for all.

    Returns:
        The selected tests.

    Raises:
        ValueError: malformed test specification.
    """
    spec = loads_json(tests) if isinstance(tests, str) else tests
    if (
        not isinstance(spec, dict)
        or not isinstance(spec.get("inputs"), list)
        or not isinstance(spec.get("outputs"), list)
        or len(spec["inputs"]) != len(spec["outputs"])
    ):
        raise ValueError("tests must be a dict with equally long lists 'inputs' and 'outputs'")
    fn_name = spec.get("fn_name") or None
    indices = pick_tests(spec, max_tests, tests)
    inputs, outputs = [], []
    for i in indices:
        test_input, expected = spec["inputs"][i], spec["outputs"][i]
        if fn_name is None:
            inputs.append(_stdin_text(test_input, f"inputs[{i}]"))
            outputs.append(_stdin_text(expected, f"outputs[{i}]"))
        else:
            args = test_input if isinstance(test_input, list) else [test_input]
            if len(args) == 1 and isinstance(args[0], dict):  # JSON made the int keys strings: the reference's undo
                args = [_int_keys(args[0]) or args[0]]
            inputs.append(args)
            outputs.append(expected)
    return ParsedTests(inputs, outputs, fn_name, indices)


def is_stdin_text(value) -> bool:
    """Whether a standard-input test's input or output is text: a string, or a list of lines (strings)."""
    return isinstance(value, str) or (isinstance(value, list) and all(isinstance(line, str) for line in value))


def _stdin_text(value, where: str) -> str:
    """A standard-input test's text: a string, or a list of lines joined with newlines."""
    if is_stdin_text(value):
        return value if isinstance(value, str) else "\n".join(value)
    raise ValueError(f"{where} of a standard-input problem must be a string or a list of strings, got {value!r:.80}")


def pick_tests(spec: dict, max_tests: int | None, original: str | dict | None = None) -> list[int]:
    """Indices of the tests `parse_tests` keeps: all, or `max_tests` of them chosen by the CRC32 of the tests.

    Args:
        spec: The parsed tests `{"inputs": [...], "outputs": [...], "fn_name"?}`.
        max_tests: Cap on the number of tests; None for all.
        original: The JSON text `spec` was parsed from, if any (used when an integer is too long to print).

    Returns:
        Sorted indices into `spec["inputs"]`.
    """
    count = len(spec["inputs"])
    if max_tests is None or count <= max_tests:
        return list(range(count))
    seed = zlib.crc32(_canonical(spec, original).encode())
    return sorted(random.Random(seed).sample(range(count), max_tests))


def _canonical(spec: dict, original: str | dict | None) -> str:
    """Seed text of the `max_tests` choice: the tests as sorted-key JSON, else (an int too long to print) the text."""
    try:
        return json.dumps(spec, sort_keys=True)
    except ValueError:
        return original if isinstance(original, str) else repr(sorted(spec))  # no text: the keys, a fixed seed


def judge(payload: bytes | None, expected, call_based: bool, mode: str = "strict") -> bool:
    """Whether one test's output is correct.

    Args:
        payload: what the sandbox returned: printed bytes (stdin problems) or the JSON of the returned value
            (call-based; None when the value was not JSON-serialisable).
        expected: the expected output (str for stdin problems, a JSON value for call-based).
        call_based: whether the problem is call-based.
        mode: "strict" or "apps".

    Returns:
        True when the test passes.
    """
    if payload is None:
        return False
    if call_based:
        try:
            value = loads_json(payload)
        except ValueError:
            return False
        return _apps_call_equal(value, expected) if mode == "apps" else _strict_call_equal(value, expected)
    text = payload.decode("utf-8", errors="replace")
    return _apps_text_equal(text, expected) if mode == "apps" else strict_text_equal(text, expected)


# -- strict ------------------------------------------------------------------------------------------------------------
def normalise_text(text: str) -> str:
    """Remove trailing whitespace of every line and trailing empty lines (CRLF counts as LF: the CR is trailing)."""
    return "\n".join(line.rstrip() for line in text.split("\n")).rstrip("\n")


def strict_text_equal(text: str, expected: str) -> bool:
    """The strict rule for printed output: :func:`normalise_text` equality, with numbers compared by value.

    Both texts must have the same lines and, on every line, the same whitespace between tokens; a token that
    differs must be a number equal to the expected one by :func:`numbers_equal`.

    Args:
        text: what the program printed.
        expected: the expected output.

    Returns:
        True when the output is correct.
    """
    out, want = normalise_text(text), normalise_text(expected)
    if out == want:
        return True
    out_lines, want_lines = out.split("\n"), want.split("\n")
    if len(out_lines) != len(want_lines):
        return False
    for line, wanted in zip(out_lines, want_lines):
        if line == wanted:
            continue
        parts, wanted_parts = _SPACES.split(line), _SPACES.split(wanted)  # tokens at even, whitespace at odd positions
        if len(parts) != len(wanted_parts):
            return False
        for k, (part, wanted_part) in enumerate(zip(parts, wanted_parts)):
            if part != wanted_part and (k % 2 or not numbers_equal(part, wanted_part)):
                return False
    return True


def numbers_equal(token: str, expected: str) -> bool:
    """Whether a printed token equals an expected token as a number (the strict rule for numbers).

    A number is an integer in canonical form (``-12``; not ``007`` or ``+7``, which stay text) or a decimal written
    with a point or an exponent (``2.75``, ``-.5``, ``1e-7``). Two numbers are equal when their exact decimal values
    are (``2.750000000000000`` and ``2.75``; ``240.0`` and ``240``). A non-integer expected token also accepts a
    number within an absolute or relative error of :data:`NUMBER_TOLERANCE` (``|x - y| <= 1e-6 * max(1, |y|)``).

    Args:
        token: the printed token.
        expected: the expected token.

    Returns:
        True when both are numbers and equal by these rules.
    """
    if token == expected:
        return True
    if not all(_INTEGER.fullmatch(t) or _DECIMAL.fullmatch(t) for t in (token, expected)):
        return False
    try:
        if decimal.Decimal(token) == decimal.Decimal(expected):
            return True
    except decimal.InvalidOperation:  # an exponent beyond what Decimal holds
        return False
    return not _INTEGER.fullmatch(expected) and _close(float(token), float(expected), NUMBER_TOLERANCE)


def _close(value: float, expected: float, tolerance: float) -> bool:
    """``|value - expected| <= tolerance * max(1, |expected|)``, both finite."""
    if not (math.isfinite(value) and math.isfinite(expected)):
        return False
    return abs(value - expected) <= tolerance * max(1.0, abs(expected))


def json_equal(a, b, tolerance: float = 0.0) -> bool:
    """Equality of two JSON values: booleans are not numbers, numbers compare by value, dict keys exactly.

    Args:
        a: the returned value.
        b: the expected value.
        tolerance: a float in ``b`` also accepts a number of ``a`` within this absolute or relative error.
    """
    if isinstance(a, bool) or isinstance(b, bool):
        return type(a) is type(b) and a == b
    if isinstance(a, (int, float)) and isinstance(b, (int, float)):
        if a == b:
            return True
        try:
            return isinstance(b, float) and tolerance > 0 and _close(float(a), b, tolerance)
        except OverflowError:  # an int too large for a float is far from any float
            return False
    if isinstance(a, list) and isinstance(b, list):
        return len(a) == len(b) and all(json_equal(x, y, tolerance) for x, y in zip(a, b))
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(json_equal(a[k], b[k], tolerance) for k in a)
    return type(a) is type(b) and a == b


def _strict_call_equal(value, expected) -> bool:
    if json_equal(value, expected, NUMBER_TOLERANCE):
        return True
    return isinstance(expected, list) and len(expected) == 1 and json_equal(value, expected[0], NUMBER_TOLERANCE)


# -- apps reference rules ----------------------------------------------------------------------------------------------
def _int_keys(d: dict) -> dict | None:
    """`d` with its keys made ints (`{"1": x}` -> `{1: x}`), or None when a key is not a number."""
    try:
        return {int(k): v for k, v in d.items()}
    except (TypeError, ValueError):
        return None


def _apps_call_equal(value, expected) -> bool:
    # The reference's `[{int(k): v}]` rewrites, each applied only when every key converts (else it leaves them be).
    first = expected[0] if isinstance(expected, list) and expected else None
    if isinstance(expected, dict) and _int_keys(expected) is not None:
        expected = [_int_keys(expected)]
    elif isinstance(first, dict) and _int_keys(first) is not None:
        expected = [_int_keys(first)]
    if isinstance(value, dict):  # JSON turned the program's int keys into strings; undo as the reference does
        value = _int_keys(value) or value
    if value == expected:
        return True
    return isinstance(expected, list) and bool(expected) and value == expected[0]


def _allclose(a: list[float], b: list[float]) -> bool:
    """numpy.allclose with its defaults (rtol=1e-5, atol=1e-8, NaN never close)."""
    return len(a) == len(b) and all(
        x == y or (math.isfinite(y) and abs(x - y) <= 1e-8 + 1e-5 * abs(y)) for x, y in zip(a, b)
    )  # an infinite y is close only to itself (its tolerance would be infinite)


def _floats(items) -> list[float] | None:
    try:
        return [float(x) for x in items]
    except (TypeError, ValueError):
        return None


# apps mode: outputs longer than this (beyond LONG_FACTOR x the expected output) are judged by
# `_apps_long_text_equal`, in memory bounded by the expected output instead of the reply.
LONG_SLACK, LONG_FACTOR = 64 << 10, 16
LINE_CHUNK = 1 << 16  # characters of the output split into lines at a time
_TOKEN = re.compile(r"\S+")  # the tokens of str.split(): re's \s is str.isspace


def _apps_text_equal(text: str, expected: str) -> bool:
    if len(text) > LONG_SLACK + LONG_FACTOR * len(expected):
        return _apps_long_text_equal(text, expected)
    lines = text.splitlines()
    # 1. whole output / every line stripped (custom_compare_ in the reference)
    if "\n".join(lines).strip() == expected.strip() or "\n".join(x.strip() for x in lines).strip() == expected.strip():
        return True
    # 2. non-empty stripped expected lines against output lines (as printed, then without empty lines)
    expected_lines = [x.strip() for x in expected.split("\n") if x]
    if lines == expected_lines or [x for x in lines if x] == expected_lines:
        return True
    lines = [x for x in lines if x]
    out_floats, exp_floats = _floats(lines), _floats(expected_lines)
    if out_floats is not None and exp_floats is not None and _allclose(out_floats, exp_floats):
        return True
    # 3. set of per-line token sets, exact and with numbers rounded to 3 decimals
    out_sets = {frozenset(x.split()) for x in lines if x.split()}
    exp_sets = {frozenset(x.split()) for x in expected_lines}
    if out_sets == exp_sets:
        return True
    try:
        return {frozenset(round(float(t), 3) for t in s) for s in out_sets} == {
            frozenset(round(float(t), 3) for t in s) for s in exp_sets
        }
    except ValueError:
        return False


def _line_chunks(text: str):
    """`text.splitlines()` in pieces: lists of the lines of about `LINE_CHUNK` characters, cut just after a newline."""
    start = 0
    while start < len(text):
        end = text.find("\n", start + LINE_CHUNK)
        end = len(text) if end < 0 else end + 1
        yield text[start:end].splitlines()
        start = end


def _lines(text: str):
    """`text.splitlines()`, one line at a time."""
    return itertools.chain.from_iterable(_line_chunks(text))


def _capped_set(items, cap: int) -> frozenset | None:
    """The set of `items`, or None as soon as it would hold more than `cap` elements."""
    out = set()
    for item in items:
        out.add(item)
        if len(out) > cap:
            return None
    return frozenset(out)


def _token_sets(line: str, cap: int) -> tuple[frozenset | None, frozenset | None]:
    """A line's set of tokens and of tokens rounded to 3 decimals; None for more than `cap` or a non-number token."""
    tokens = _capped_set((m.group() for m in _TOKEN.finditer(line)), cap)
    try:
        rounded = _capped_set((round(float(m.group()), 3) for m in _TOKEN.finditer(line)), cap)
    except ValueError:
        rounded = None
    return tokens, rounded


def _apps_long_text_equal(text: str, expected: str) -> bool:
    """`_apps_text_equal` for an output far longer than the expected one, without keeping its lines.

    The reference's checks, each decided the same way: 1. and 2. need the output's lines to be few (the lines
    between the first and the last one with content, or all lines, or the non-empty ones, as many as the expected
    output has), so one pass counts them and a second keeps them only where a check could still pass; 3. compares
    the set of per-line token sets, so each line's set is checked against the expected ones as it comes and only
    the expected sets it matched are kept. 16 MiB of short lines took hundreds of MiB the other way.
    """
    exp_strip = expected.strip()
    expected_lines = [x.strip() for x in expected.split("\n") if x]
    exp_sets = {frozenset(x.split()) for x in expected_lines}
    try:
        exp_rounded = {frozenset(round(float(t), 3) for t in s) for s in exp_sets}
    except ValueError:
        exp_rounded = None  # an expected token is not a number: the rounded comparison raises, as in the reference
    widest = max(map(len, exp_sets), default=0)
    n_lines = n_nonempty = span_chars = 0
    first = last = -1  # the first and the last line with content
    seen_sets, seen_rounded = set(), (set() if exp_rounded is not None else None)
    known = {}  # a few distinct lines -> (their token set, their rounded token set)
    for lines in _line_chunks(text):  # whole chunks at a time (C loops): 16 MiB of lines is millions of them
        stripped = list(map(str.strip, lines))
        content = list(filter(None, stripped))
        if content:
            leading = len(stripped) - len(list(itertools.dropwhile(operator.not_, stripped)))
            trailing = len(stripped) - len(list(itertools.dropwhile(operator.not_, reversed(stripped))))
            first = n_lines + leading if first < 0 else first
            last = n_lines + len(lines) - 1 - trailing
            span_chars += sum(map(len, content))
        n_lines += len(lines)
        n_nonempty += len(lines) - lines.count("")
        for line in set(content) if seen_sets is not None or seen_rounded is not None else ():
            if line not in known:
                tokens, rounded = _token_sets(line, widest)
                if len(known) >= 4096:
                    known.clear()
                known[line] = tokens, rounded
            tokens, rounded = known[line]
            if seen_sets is not None:
                if tokens in exp_sets:
                    seen_sets.add(tokens)
                else:
                    seen_sets = None  # an output line no expected line matches
            if seen_rounded is not None:
                if rounded in exp_rounded:
                    seen_rounded.add(rounded)
                else:
                    seen_rounded = None
    # 3. set of per-line token sets, exact and rounded: every output set is an expected one, and every one appears
    if seen_sets == exp_sets or (exp_rounded is not None and seen_rounded == exp_rounded):
        return True
    # 1. the lines with content, and those between them, joined: as long as the expected output at most
    if first < 0:
        return exp_strip == ""
    if span_chars + (last - first) <= len(exp_strip):
        span = [line for i, line in enumerate(_lines(text)) if first <= i <= last]
        if "\n".join(span).strip() == exp_strip or "\n".join(x.strip() for x in span).strip() == exp_strip:
            return True
    # 2. as many lines, or non-empty lines, as the expected output has
    if n_lines == len(expected_lines) and list(_lines(text)) == expected_lines:
        return True
    if n_nonempty != len(expected_lines):  # (non-empty lines equal to the expected ones passed 3. already)
        return False
    lines = [x for x in _lines(text) if x]
    out_floats, exp_floats = _floats(lines), _floats(expected_lines)
    return out_floats is not None and exp_floats is not None and _allclose(out_floats, exp_floats)
