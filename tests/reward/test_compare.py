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
    """Tokens (numbers that round or are allclose together, nan, words) joined by every kind of whitespace."""
    tokens = ["1", "2", "1.0", "1.0001", "1.00001", "2.0004", "-0", "nan", "inf", "a", "x y", "3e0", "0.9995", "",
              "1000000", "1000005", "1e-08", "0"]
    breaks = [" ", "\t", "\x0b", "\x0c", "\x1c", "\x1e", "\x1f", "\x85", "\xa0", "\u2028", "\u3000", "\r", "\r\n", "\n"]
    return "".join(rng.choice(tokens) + rng.choice(breaks + ["\n", " "] * 7) for _ in range(n_tokens))


@pytest.mark.parametrize("line_chunk", [1 << 16, 5])
def test_apps_judging_of_long_outputs_gives_the_verdicts_of_the_plain_rules(monkeypatch, line_chunk):
    """Long outputs are judged in bounded memory by a second implementation of the reference's rules, a chunk of
    lines at a time; on thousands of random outputs (repeats of the answer among them, which pass), in one chunk or
    in chunks of a few characters, both give the same verdict."""
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
        monkeypatch.setattr(compare, "LINE_CHUNK", line_chunk)
        assert compare._apps_long_text_equal(printed, expected) == plain, (printed, expected)
        verdicts.append(plain)
    assert 500 < sum(verdicts) < 3500  # both verdicts are well represented


@pytest.mark.parametrize(
    ("printed", "expected"),
    [
        ("\n\na\n  \nb\n\n\n", "a\n  \nb"),  # the whole output stripped (a blank expected line defeats the others)
        ("a\n  \nb\n", "a\n  \nb"),  # the same, content from the first line on
        ("\na \nb\n\n", "  \na\nb"),  # every line stripped
        ("a\n\nb", "a\n \nb"),  # the lines as printed equal the stripped expected lines
        ("1000001\n\n\n1e-08\n", "1000000\n0"),  # numpy.allclose (rtol 1e-5, atol 1e-8 at its edge); not rounded
    ],
)
@pytest.mark.parametrize("long", ["plain", "one chunk", "a chunk per line"])
def test_apps_rules_that_pass_an_output_alone(monkeypatch, printed, expected, long):
    """Outputs that pass by exactly one of the reference's rules (the others reject them), by both implementations
    (the long one with the output in one chunk and in a chunk per line); and the same output with a token changed
    fails."""
    from lit_codegen.reward import compare

    monkeypatch.setattr(compare, "LONG_SLACK", 10**9 if long == "plain" else 0)
    monkeypatch.setattr(compare, "LONG_FACTOR", 16 if long == "plain" else 0)
    monkeypatch.setattr(compare, "LINE_CHUNK", 1 if long == "a chunk per line" else 1 << 16)
    assert judge(printed.encode(), expected, call_based=False, mode="apps")
    assert not judge(printed.replace("b", "c").replace("1e-08", "2e-08").encode(), expected, False, "apps")


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


@pytest.mark.parametrize("digits", [4001, 8000, 9999, 100_000])
def test_integers_longer_than_python_reads_are_parsed_exactly(digits):
    """Expected outputs and returned values may hold integers longer than the 4300 digits `int(str)` reads; up to
    100,000 digits are read exactly, in both signs, and one more digit is refused with the count named."""
    import sys

    from lit_codegen.reward.compare import loads_json

    literal = "".join(str((7 * k + 3) % 10) for k in range(digits)).replace("0", "5", 1)
    literal = ("1" + literal[1:]) if literal[0] == "0" else literal
    previous = sys.get_int_max_str_digits()
    sys.set_int_max_str_digits(0)
    try:
        value = int(literal)
    finally:
        sys.set_int_max_str_digits(previous)
    assert loads_json(f"[{literal}, -{literal}, 7]") == [value, -value, 7]
    with pytest.raises(ValueError, match="100001 digits"):
        loads_json("1" * 100_001)


def test_parse_tests_names_what_is_wrong_and_keeps_the_call_form():
    with pytest.raises(ValueError, match="^tests must be a dict with equally long lists 'inputs' and 'outputs'$"):
        parse_tests({"inputs": "1", "outputs": ["1"]})
    with pytest.raises(ValueError, match="equally long lists 'inputs' and 'outputs'"):
        parse_tests({"inputs": ["1"], "outputs": "1"})
    with pytest.raises(ValueError, match="equally long lists"):
        parse_tests(["not", "a", "dict"])
    with pytest.raises(ValueError, match=r"outputs\[1\]"):
        parse_tests({"inputs": ["1", "2"], "outputs": ["1", 2]})
    with pytest.raises(ValueError, match=r"inputs\[0\]"):
        parse_tests({"inputs": [3], "outputs": ["1"]})
    call = parse_tests({"fn_name": "f", "inputs": [[1, 2], 5, {"a": 1}], "outputs": [3, 5, 1]})
    assert call.fn_name == "f" and call.inputs == [[1, 2], [5], [{"a": 1}]]  # a non-list input is one argument


def test_max_tests_picks_a_fixed_choice_seeded_by_the_tests():
    """Known answers of the documented rule (CRC32 of the sorted-key JSON; of the original text when an integer is
    too long to print): the same tests always give the same choice, whatever the key order."""
    from lit_codegen.reward.compare import pick_tests

    spec = {"inputs": [str(i) for i in range(10)], "outputs": [str(i) for i in range(10)], "fn_name": None}
    assert pick_tests(spec, 3) == [3, 4, 9]
    assert pick_tests(dict(reversed(list(spec.items()))), 3) == [3, 4, 9]
    assert pick_tests(spec, 10) == pick_tests(spec, None) == list(range(10))
    big = "9" * 5000  # json.dumps refuses it: the original text seeds the choice
    text = '{"fn_name": "f", "inputs": [[1], [2], [3], [4]], "outputs": [' + big + ", 1, 2, 3]}"
    reordered = '{"inputs": [[1], [2], [3], [4]], "fn_name": "f", "outputs": [' + big + ", 1, 2, 3]}"
    assert parse_tests(text, 2).indices == [0, 3]
    assert parse_tests(reordered, 2).indices == [0, 2]
    huge = {"fn_name": "f", "inputs": [[1], [2], [3], [4]], "outputs": [10**5000, 1, 2, 3]}  # and no text: fixed
    assert pick_tests(huge, 2) == pick_tests(dict(huge, outputs=[10**5000 + 1, 1, 2, 3]), 2) == [1, 2]


def test_json_values_compare_by_kind_and_value():
    from lit_codegen.reward.compare import json_equal

    assert json_equal("a", "a") and json_equal(None, None) and json_equal([1, [2.0]], [1.0, [2]])
    assert not json_equal("a", "b") and not json_equal(True, 1) and not json_equal(True, False)
    assert not json_equal("1.5", 1.5, 1e-6)  # a string is not a number, even one that parses as one
    assert not json_equal([1, 2], [1, 2, 3]) and not json_equal({"a": 1}, ["a"]) and not json_equal(["a"], {"a": 1})
    assert json_equal({"a": [1.0000001]}, {"a": [1.0]}, 1e-6)  # the tolerance reaches nested values
    assert not json_equal({"a": 1}, {"b": 1})
    assert not json_equal(2**53 + 1, float(2**53))  # no tolerance: exact, though float(2**53 + 1) == 2**53
    assert not json_equal(1.0, float("inf"), 1e-6) and not json_equal(float("inf"), 1.0, 1e-6)  # inf is close to none
    assert json_equal(float("inf"), float("inf"), 1e-6)


def test_strict_judging_edge_cases():
    assert not judge(b"a\n2\n", "a\n3\n", call_based=False)  # a later line differs after an equal one
    assert judge(b"TAX\n", "TAX", call_based=False) and not judge(b"TA\n", "TAX", call_based=False)
    assert normalise_text("TAX \n\n") == "TAX" and normalise_text("a\r\nb\r\n\r\n") == "a\nb"
    assert judge(b"12\n", "12\n", call_based=False) and not judge(b"12\n12\n", "12\n", call_based=False)  # strict
    for mode in ("strict", "apps"):
        assert not judge(b"\xff\xfeabc", "abc", call_based=False, mode=mode)  # undecodable bytes are replaced
        assert not judge(b"{not json", [1], call_based=True, mode=mode)
        assert not judge(None, "abc", call_based=False, mode=mode)
    assert numbers_equal("5", "5") and numbers_equal("0.000001", "0.0") and not numbers_equal("0.0000015", "0.0")
    huge = "1e99999999999999999999999999"  # beyond Decimal's exponents: not compared, not equal
    assert not numbers_equal(huge, huge + "0")
