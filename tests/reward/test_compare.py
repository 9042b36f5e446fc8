"""Judging rules (strict and apps), test parsing and sampling, score bands: pure functions, no sandbox."""

import json

import pytest

from lit_codegen.reward.compare import json_equal, judge, normalise_text, numbers_equal, parse_tests
from lit_codegen.reward.report import SCORE_BANDS, format_table, score_band, score_bands, summarize


def test_strict_text_ignores_only_trailing_whitespace_and_trailing_empty_lines():
    assert judge(b"1 2  \n3\n\n\n", "1 2\n3\n", call_based=False)
    assert judge(b"1 2\r\n3", "1 2\n3\n", call_based=False)
    assert not judge(b" 1 2\n3\n", "1 2\n3\n", call_based=False)  # leading space matters
    assert not judge(b"3\n1 2\n", "1 2\n3\n", call_based=False)
    assert not judge(b"1  2\n3\n", "1 2\n3\n", call_based=False)  # so does the spacing between tokens
    assert normalise_text("a \n\nb\t\n\n") == "a\n\nb"


@pytest.mark.parametrize(
    ("printed", "expected"),
    [
        ("2.75", "2.750000000000000"),  # exact decimal value
        ("240.0", "240"),
        ("240", "240.0"),
        ("1e5", "100000"),
        ("-0.50", "-.5"),
        ("1.1547005383792517", "1.1547005383792515"),  # within 1e-6 of a non-integer expected token
        ("1.1547", "1.1547005383792515"),  # absolute error 5.4e-7
        ("1000000.5", "1000000.4"),  # relative error 1e-7
        ("0.0000009", "0.0"),
    ],
)
def test_strict_compares_numbers_by_value(printed, expected):
    assert judge(f"YES {printed}\n".encode(), f"YES {expected}\n", call_based=False)
    assert numbers_equal(printed, expected)


@pytest.mark.parametrize(
    ("printed", "expected"),
    [
        ("240.0000001", "240"),  # no tolerance for an integer expected token
        ("241", "240"),
        ("1.155", "1.1547005383792515"),
        ("1000001.5", "1000000.4"),  # relative error 1.1e-6
        ("11", "0011"),  # not a canonical integer: text (a binary string, a time, ...)
        ("11.0", "0011"),
        ("7", "+7"),
        ("1,5", "1.5"),  # a decimal comma is text
        ("inf", "1e999"),
        ("1e99999999999", "1e99999999998"),  # beyond what Decimal holds
    ],
)
def test_strict_numbers_differing_in_value_or_not_numbers_are_wrong(printed, expected):
    assert not judge(f"{printed}\n".encode(), f"{expected}\n", call_based=False)


def test_strict_numbers_by_value_keep_lines_and_spacing_exact():
    assert judge(b"2.50 3\n4.0\n", "2.5 3\n4\n", call_based=False)
    assert not judge(b"2.50  3\n4.0\n", "2.5 3\n4\n", call_based=False)
    assert not judge(b"2.5 3 4\n", "2.5 3\n4\n", call_based=False)
    assert not judge(b"4\n2.5 3\n", "2.5 3\n4\n", call_based=False)


def test_strict_call_based_floats_accept_the_same_tolerance():
    assert judge(b"1.1547005383792517", 1.1547005383792515, call_based=True)
    assert judge(b"[2.0000001, 3]", [[2.0, 3]], call_based=True)
    assert not judge(b"3.0000001", 3, call_based=True)  # an integer expected value stays exact
    assert not judge(b"2.00001", 2.0, call_based=True)
    assert not judge(b"1" + b"0" * 400, 1.5, call_based=True)  # too large for a float: not close
    assert not json_equal(2.0000001, 2.0) and json_equal(2.0000001, 2.0, tolerance=1e-6)


def test_apps_text_reproduces_reference_laxities():
    # token-set match: line order, token order and repetitions are ignored
    assert judge(b"2 1\n1 2\n", "1 2\n", call_based=False, mode="apps")
    assert not judge(b"2 1\n1 2\n", "1 2\n", call_based=False, mode="strict")
    # floats: allclose, and rounding to 3 decimals in the token-set stage
    assert judge(b"240.0\n", "240\n", call_based=False, mode="apps")
    assert judge(b"0.3333334\n", "0.3333333\n", call_based=False, mode="apps")
    assert judge(b"  1\n\n 2 \n", "1\n2\n", call_based=False, mode="apps")
    assert not judge(b"1\n3\n", "1\n2\n", call_based=False, mode="apps")


def test_strict_call_based_is_json_equality_with_codewars_unwrapping():
    assert judge(b"[1, 2]", [1, 2], call_based=True)
    assert judge(b"false", [False], call_based=True)  # Codewars outputs are wrapped in a one-element list
    assert judge(b"1.0", 1, call_based=True)  # one JSON number type
    assert not judge(b"1", True, call_based=True)  # but a boolean is not a number
    assert not judge(b"0", [False], call_based=True)
    assert not judge(None, 1, call_based=True)  # value was not JSON-serialisable
    assert not judge(b'{"1": 2}', {"1": 3}, call_based=True)
    assert json_equal({"a": [1, 2.0]}, {"a": [1.0, 2]})


def test_apps_call_based_uses_python_equality():
    assert judge(b"1", True, call_based=True, mode="apps")
    assert judge(b'{"1": "a"}', {"1": "a"}, call_based=True, mode="apps")


def test_apps_call_based_leaves_dicts_whose_keys_are_not_numbers_alone():
    """The reference rewrites `[{...}, ...]` to `[{int(k): v}]` only when int() works; else the list stays whole."""
    assert judge(b'[{"k": "a"}, {"k": "b"}]', [{"k": "a"}, {"k": "b"}], call_based=True, mode="apps")
    assert not judge(b'[{"k": "a"}]', [{"k": "a"}, {"k": "b"}], call_based=True, mode="apps")
    assert judge(b'{"1": "a"}', [{"1": "a"}], call_based=True, mode="apps")  # numeric keys: converted, unwrapped


def test_apps_allclose_treats_infinity_as_numpy_does():
    assert judge(b"inf\n", "inf\n", call_based=False, mode="apps")
    assert not judge(b"5\n", "inf\n", call_based=False, mode="apps")
    assert not judge(b"-inf\n", "inf\n", call_based=False, mode="apps")
    assert not judge(b"1e308\n", "inf\n", call_based=False, mode="apps")


def test_dict_arguments_get_their_int_keys_back_in_both_modes():
    """APPS dict arguments had int keys, which JSON turned into strings; the reference turns them back."""
    spec = {"fn_name": "f", "inputs": [[{"1": 5, "2": 6}], [{"a": 1}], [{"1": 2}, 3]], "outputs": [5, 1, 2]}
    assert parse_tests(spec).inputs == [[{1: 5, 2: 6}], [{"a": 1}], [{"1": 2}, 3]]


def test_stdin_tests_that_are_not_text_are_a_value_error():
    for bad in ({"inputs": [[1, 2]], "outputs": ["3"]}, {"inputs": ["1"], "outputs": [None]}):
        with pytest.raises(ValueError, match="must be a string or a list of strings"):
            parse_tests(bad)


def test_parse_tests_formats_and_deterministic_cap():
    spec = {"inputs": [["a", "b"], "c\n"], "outputs": [["x", "y"], "z\n"]}
    parsed = parse_tests(json.dumps(spec))
    assert parsed.inputs == ["a\nb", "c\n"] and parsed.outputs == ["x\ny", "z\n"] and parsed.fn_name is None
    big = {"fn_name": "f", "inputs": [[i] for i in range(50)], "outputs": list(range(50))}
    first = parse_tests(big, max_tests=5)
    assert first.indices == parse_tests(json.dumps(big), max_tests=5).indices  # same pick every time
    assert len(first.indices) == 5 and first.indices != [0, 1, 2, 3, 4]
    assert first.inputs == [[i] for i in first.indices] and first.outputs == first.indices
    with pytest.raises(ValueError):
        parse_tests({"inputs": [1], "outputs": []})


def test_score_bands_edges_go_to_the_higher_band():
    assert [score_band(x) for x in (0.0, 0.19, 0.2, 0.4, 0.6, 0.8, 0.99, 1.0)] == [
        "Very Poor",
        "Very Poor",
        "Poor",
        "Fair",
        "Good",
        "Excellent",
        "Excellent",
        "Excellent",
    ]
    assert score_band(1 / 5) == "Poor" and score_band(3 * 0.2) == "Good"  # float noise at the edges
    assert list(score_bands([0.1, 0.5, 1.0])) == list(SCORE_BANDS)


def test_summarize_per_difficulty():
    rows = [
        {"difficulty": "introductory", "pass_rate": 1.0, "n_tests": 2, "outcomes": ["passed"] * 2},
        {"difficulty": "introductory", "pass_rate": 0.5, "n_tests": 2, "outcomes": ["passed", "timeout"]},
        {"difficulty": "interview", "pass_rate": 0.0, "n_tests": 1, "outcomes": ["compile_error"]},
    ]
    summary = summarize(rows, wall_time_s=2.0, protections=["x"])
    assert summary["mean_pass_rate"] == pytest.approx(0.5)
    assert summary["strict_accuracy"] == pytest.approx(1 / 3)
    assert summary["by_difficulty"]["introductory"]["mean_pass_rate"] == pytest.approx(0.75)
    assert summary["by_difficulty"]["introductory"]["strict_accuracy"] == pytest.approx(0.5)
    assert summary["verdicts"] == {"passed": 3, "timeout": 1, "compile_error": 1}
    assert summary["score_bands"] == {"Very Poor": 1, "Poor": 0, "Fair": 1, "Good": 0, "Excellent": 1}
    assert summary["tests_per_s"] == pytest.approx(2.5) and summary["protections"] == ["x"]
    assert "interview" in format_table(summary)


def _random_text(rng, n_tokens: int) -> str:
    """Tokens (numbers that round together, nan, words) joined by every kind of whitespace and line break."""
    tokens = ["1", "2", "1.0", "1.0001", "1.00001", "2.0004", "-0", "nan", "inf", "a", "x y", "3e0", "0.9995", ""]
    breaks = [" ", "\t", "\x0b", "\x0c", "\x1c", "\x1e", "\x1f", "\x85", "\xa0", "\u2028", "\u3000", "\r", "\r\n", "\n"]
    return "".join(rng.choice(tokens) + rng.choice(breaks + ["\n", " "] * 7) for _ in range(n_tokens))


def test_apps_judging_of_long_outputs_gives_the_verdicts_of_the_plain_rules(monkeypatch):
    """Long outputs are judged in bounded memory by a second implementation of the reference's rules; on thousands
    of random outputs (repeats of the answer among them, which pass) both give the same verdict."""
    from lit_codegen.reward import compare

    rng = __import__("random").Random(0)
    verdicts = []
    for _ in range(4000):
        expected = _random_text(rng, rng.randint(0, 4))
        printed = _random_text(rng, rng.randint(0, 12))
        if rng.random() < 0.3:
            printed = "\n" * rng.randint(0, 2) + (expected + rng.choice(["\n", " \n"])) * rng.randint(1, 4) + "  "
        monkeypatch.setattr(compare, "LONG_SLACK", 10**9)  # the plain rules
        plain = compare._apps_text_equal(printed, expected)
        assert compare._apps_long_text_equal(printed, expected) == plain, (printed, expected)
        verdicts.append(plain)
    assert 500 < sum(verdicts) < 3500  # both verdicts are well represented


@pytest.mark.parametrize(
    ("printed", "passes"),
    [
        ("".join(f"{i}\n" for i in range(400_000)), False),  # distinct lines: one Python string each the plain way
        ("\n" * (2 << 20) + "12 \n", True),  # blank lines, then the answer
        ("12\n" * (1 << 20), True),  # the answer repeated: the reference ignores repeats
        (" ".join(["12.0001", "12.0002"] * (1 << 18)) + "\n", True),  # equal to 12 after rounding to 3 decimals
    ],
)
def test_apps_judging_of_a_long_output_stays_in_bounded_memory(printed, passes):
    """Judging runs in the evaluator: 16 MiB of short lines took it 1.2 GiB the plain way. A long output is judged
    in memory bounded by a small multiple of the reply's size (the decoded text and one chunk of it at a time),
    whatever the reply holds."""
    import tracemalloc

    payload = printed.encode()
    tracemalloc.start()
    try:
        verdict = judge(payload, "12\n", call_based=False, mode="apps")
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert verdict is passes
    assert peak < 3 * len(printed) + (1 << 20)  # measured: 1.8-2.4x the reply (10-95x the plain way)
