"""APPS execution semantics, every verdict kind, the test cap and the Evaluator API (streaming, async, lifecycle)."""

import pickle
import threading

import pytest

from lit_codegen.reward import VERDICTS, EvalResult, Evaluator
from lit_codegen.reward.sandbox_worker import apps_function_form

STDIN_ECHO_DOUBLE = {"inputs": ["3\n", "5\n"], "outputs": ["6\n", "10\n"]}


@pytest.mark.parametrize(
    "program",
    [
        "n = int(input())\nprint(2 * n)",
        "import sys\n\ndef main():\n    print(2 * int(sys.stdin.readline()))\n\n"
        "if __name__ == '__main__':\n    main()\n",
        "import sys\nprint(2 * int(sys.stdin.buffer.read().decode()))",
        "total = 0\ndef add(x):\n    global total\n    total += x\n"
        "add(2 * int(input()))\nprint(total)\nexit()\nprint('unreachable')",
        "n = int(open(0).read())\nprint(2 * n)\nraise SystemExit(0)",
        "print(Counter('aa')['a'] * int(input()))",  # the APPS header's imports are available
        "n = int(input())\nif n > 0:\n    print(2 * n)\n    return\nprint('negative')",  # top-level return
        # what the interpreter does at exit: atexit handlers, finalisers, unclosed files, a closed/detached stdout
        "import atexit, io, sys\n_buf = io.StringIO()\natexit.register(lambda: sys.stdout.write(_buf.getvalue()))\n"
        "_buf.write(str(2 * int(input())) + '\\n')",
        "f = open(1, 'w')\nf.write(str(2 * int(input())) + '\\n')",
        "class Bye:\n    def __del__(self):\n        print(2 * n)\nn = int(input())\nbye = Bye()",
        "import sys\nprint(2 * int(input()))\nsys.stdout.close()",
        "import io, sys\nsys.stdout = io.TextIOWrapper(sys.stdout.detach())\nprint(2 * int(input()))",
    ],
)
def test_stdin_program_semantics(evaluator, program):
    (result,) = evaluator.evaluate([program], [STDIN_ECHO_DOUBLE])
    assert result.outcomes == ["passed", "passed"] and result.pass_rate == 1.0


def test_call_based_semantics(evaluator):
    leetcode = (
        "class Solution:\n    def twice(self, nums: List[int], k: int) -> List[int]:\n"
        "        return [k * x for x in nums]\n"
    )
    codewars = "def is_even(n):\n    return n % 2 == 0\n"
    tuple_result = "def pair(a):\n    return (a, a + 1)\n"
    results = evaluator.evaluate(
        [leetcode, codewars, tuple_result],
        [
            {"fn_name": "twice", "inputs": [[[1, 2], 3]], "outputs": [[3, 6]]},
            {"fn_name": "is_even", "inputs": [[2], [3]], "outputs": [[True], [False]]},
            '{"fn_name": "pair", "inputs": [[1]], "outputs": [[1, 2]]}',
        ],
    )
    assert [r.pass_rate for r in results] == [1.0, 1.0, 1.0]


def test_every_verdict_kind(evaluator):
    cases = {
        "passed": "print(2 * int(input()))",
        "wrong_answer": "print(3 * int(input()))",
        "timeout": "while True:\n    pass",
        "runtime_error": "print(1 // 0)",
        "compile_error": "print(2 * int(input())",
        "memory_limit": "x = bytearray(2 * 1024**3)",
        "output_limit": "while True:\n    print('x' * 100000)",
    }
    results = evaluator.evaluate(list(cases.values()), [{"inputs": ["3\n"], "outputs": ["6\n"]}] * len(cases))
    assert {k: r.outcomes[0] for k, r in zip(cases, results)} == {k: k for k in cases}
    assert set(cases) == set(VERDICTS)
    call = evaluator.evaluate(
        ["def f():\n    return {1, 2}\n", "def f():\n    raise ValueError\n"],
        [{"fn_name": "f", "inputs": [[]], "outputs": [[1, 2]]}] * 2,
    )
    assert [r.outcomes for r in call] == [["wrong_answer"], ["runtime_error"]]  # a set is not JSON


def test_pass_rate_divides_by_every_test_whatever_its_verdict(evaluator):
    """Timeouts and errors are failed tests: one pass in four tests is 0.25 (not 1 / (passed + wrong) = 0.5)."""
    program = "n = int(input())\nif n == 3:\n    raise ValueError\nwhile n == 4:\n    pass\nprint(2 if n == 1 else 0)"
    tests = {"inputs": ["1\n", "2\n", "3\n", "4\n"], "outputs": ["2\n", "4\n", "6\n", "8\n"]}
    (result,) = evaluator.evaluate([program], [tests])
    assert result.outcomes == ["passed", "wrong_answer", "runtime_error", "timeout"]
    assert result.n_passed == 1 and result.n_tests == 4 and not result.passed
    assert result.pass_rate == 0.25


def test_pass_rate_counts_every_test_and_cap_is_deterministic():
    tests = {"fn_name": "f", "inputs": [[i] for i in range(20)], "outputs": [i if i % 4 else -1 for i in range(20)]}
    with Evaluator(workers=2, timeout=2.0, max_tests=6) as capped, Evaluator(workers=1, timeout=2.0) as full:
        (all_tests,) = full.evaluate(["def f(x):\n    return x\n"], [tests])
        first, second = (capped.evaluate(["def f(x):\n    return x\n"], [tests])[0] for _ in range(2))
    assert all_tests.n_tests == 20 and all_tests.pass_rate == 15 / 20
    assert first.n_tests == 6 and first.test_indices == second.test_indices and first.outcomes == second.outcomes
    assert first.pass_rate == sum(i % 4 != 0 for i in first.test_indices) / 6


def test_compile_error_counts_all_tests(evaluator):
    (result,) = evaluator.evaluate(["def f(:\n"], [{"fn_name": "f", "inputs": [[1]] * 11, "outputs": [1] * 11}])
    assert result.outcomes == ["compile_error"] * 11 and result.n_tests == 11 and result.pass_rate == 0.0


def test_imap_async_threads_and_order(evaluator):
    programs = [f"print({i} * int(input()))" for i in range(6)]
    tests = [{"inputs": ["2\n"], "outputs": [f"{2 * i}\n"]} for i in range(6)]
    streamed = dict(evaluator.imap(programs, tests))
    assert sorted(streamed) == list(range(6)) and all(r.passed for r in streamed.values())
    future = evaluator.evaluate_async(programs[::-1], tests)
    results = future.result(timeout=60)
    assert [r.outcomes for r in results] == [["wrong_answer"]] * 6  # reversed: program 5 - i on test i
    outputs = {}

    def worker(k):
        outputs[k] = evaluator.evaluate(programs, tests)

    threads = [threading.Thread(target=worker, args=(k,)) for k in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert all(all(r.passed for r in res) for res in outputs.values())


def test_lifecycle_pickle_and_empty_inputs():
    ev = Evaluator(workers=1, timeout=1.0)
    assert ev._pool == []  # nothing starts at construction
    clone = pickle.loads(pickle.dumps(ev))
    assert clone.timeout == 1.0 and clone._pool == []
    assert ev.evaluate([], []) == []
    (empty,) = ev.evaluate(["print(1)"], [{"inputs": [], "outputs": []}])
    assert empty == EvalResult(0.0, [], 0, [])
    assert any("timeout" in p for p in ev.protections)
    worker_proc = ev._pool[0].proc
    ev.close()
    ev.close()  # safe twice
    assert worker_proc.returncode == 0  # the worker stopped its templates and exited by itself, not killed
    with pytest.raises(RuntimeError):
        ev.evaluate(["print(1)"], [STDIN_ECHO_DOUBLE])
    with pytest.raises(ValueError):
        Evaluator(mode="lenient")


def test_integers_longer_than_pythons_default_digit_limit(evaluator):
    import math
    import sys

    default_limit = sys.get_int_max_str_digits()
    sys.set_int_max_str_digits(0)  # only to write the expected value: the evaluator (this process) keeps the default
    expected = str(math.factorial(2000))  # 5736 digits
    sys.set_int_max_str_digits(default_limit)
    tests = '{"fn_name": "f", "inputs": [[2000], [5]], "outputs": [' + expected + ', 120]}'
    (result,) = evaluator.evaluate(["import math\ndef f(n):\n    return math.factorial(n)\n"], [tests])
    assert result.outcomes == ["passed", "passed"]


def test_a_malformed_test_specification_is_named_by_its_index(evaluator):
    with pytest.raises(ValueError, match=r"tests\[1\] is not a valid APPS test specification"):
        evaluator.evaluate(["print(1)", "print(1)"], [STDIN_ECHO_DOUBLE, '{"inputs": ["1"'])


def test_numpy_return_values_count_as_the_values_they_hold(evaluator):
    """`np` comes with the APPS header; the reference compares with ==, where np.int64(3) == 3."""
    programs = ["def f(a):\n    return np.int64(sum(a))\n", "def f(a):\n    return np.bool_(True)\n",
                "def f(a):\n    return np.array(a) * 2\n", "def f(a):\n    return np.int64(sum(a)) + 1\n"]
    specs = [{"fn_name": "f", "inputs": [[[1, 2]]], "outputs": [out]} for out in (3, True, [[2, 4]], 3)]
    assert [r.pass_rate for r in evaluator.evaluate(programs, specs)] == [1.0, 1.0, 1.0, 0.0]


def test_numpy_is_there_for_programs_that_do_not_name_it(evaluator):
    """Programs that do not name numpy run in a template without it (cheaper to fork); `np` still imports it."""
    programs = [
        'print(globals()["n" + "p"].arange(int(input())).sum())',
        'm = __import__("num" + "py")\nprint(m.arange(int(input())).sum() if m is globals()["n" + "p"] else -1)',
        'import sys\nprint(sys.modules["__main__"].__dict__["n" + "p"].int64(int(input())) * 3 - 3 * 1)',
    ]
    spec = {"inputs": ["4\n"], "outputs": ["6\n"]}
    spec_call = {"fn_name": "f", "inputs": [[4]], "outputs": [6]}
    call = 'def f(n):\n    return getattr(globals()["n" + "p"], "arange")(n).sum()\n'
    results = evaluator.evaluate(programs + [call], [spec, spec, {"inputs": ["3\n"], "outputs": ["6\n"]}, spec_call])
    assert [r.outcomes for r in results] == [["passed"]] * 4


def test_a_function_taking_a_dict_with_int_keys_passes_in_strict_mode(evaluator):
    (result,) = evaluator.evaluate(["def f(d):\n    return d[1]\n"],
                                   [{"fn_name": "f", "inputs": [[{"1": 5}]], "outputs": [5]}])
    assert result.outcomes == ["passed"]


@pytest.mark.parametrize(
    "kwargs",
    [{"timeout": float("nan")}, {"timeout": 0}, {"memory_mb": 10**13}, {"memory_mb": 0}, {"output_limit_mb": -1},
     {"max_processes": -1}, {"max_processes": 2.5}, {"workers": -1}, {"workers": 0}, {"workers": 2.0},
     {"max_tests": 0}],
)
def test_settings_out_of_range_are_a_value_error_naming_them(kwargs):
    name = next(iter(kwargs))
    with pytest.raises(ValueError, match=name):
        Evaluator(**kwargs)


def test_a_per_call_test_cap_is_checked_like_the_constructors(evaluator):
    for cap in (0, -1):
        with pytest.raises(ValueError, match="max_tests must be a whole number >= 1"):
            evaluator.evaluate(["print(1)"], [STDIN_ECHO_DOUBLE], max_tests=cap)


def test_stdin_tests_that_are_not_text_name_their_index(evaluator):
    with pytest.raises(ValueError, match=r"tests\[1\] is not a valid APPS test specification: inputs\[0\]"):
        evaluator.evaluate(["print(1)", "print(1)"], [STDIN_ECHO_DOUBLE, {"inputs": [[1, 2]], "outputs": ["3"]}])


def test_a_nonzero_sys_exit_after_the_answer_is_a_runtime_error_in_strict_and_judged_in_apps():
    """The APPS reference catches every SystemExit and compares what was printed."""
    programs = ["import sys\nprint(2 * int(input()))\nsys.exit(1)", "import sys\nprint(3 * int(input()))\nsys.exit(2)",
                "import sys\nprint(2 * int(input()), end='')\nsys.exit('bye')"]
    for mode, expected in (("strict", [["runtime_error"] * 2] * 3),
                           ("apps", [["passed"] * 2, ["wrong_answer"] * 2, ["passed"] * 2])):
        with Evaluator(workers=1, mode=mode) as ev:
            assert [r.outcomes for r in ev.evaluate(programs, [STDIN_ECHO_DOUBLE] * 3)] == expected, mode


# Standard-input programs that do not compile as a module but do compile as the APPS harness's function body, modelled
# on real APPS reference solutions (problems 2015, 2050, 2382 use `nonlocal` for module-level names; 2287 returns).
NONLOCAL = "n = int(input())\ndef double():\n    nonlocal n\n    n *= 2\ndouble()\nprint(n)\n"
FUNCTION_BODY_PROGRAMS = {
    "nonlocal": (NONLOCAL, "passed"),
    "tab-indented nonlocal": (NONLOCAL.replace("    ", "\t"), "passed"),
    # leading imports stay at module level, as in the harness: `import *` is not allowed inside a function
    "leading star import": ("from heapq import *\nimport sys\n" + NONLOCAL, "passed"),
    "late star import": (NONLOCAL + "from heapq import *\n", "compile_error"),  # indented into the function
    "top-level return": ("n = int(input())\nif n:\n    print(2 * n)\n    return\nprint(0)\n", "passed"),
    # inside the function, `global` means the module globals, where the program's top-level names are not
    "global inside the wrapper": (NONLOCAL + "def show():\n    global n\n    print(n)\nshow()\n", "runtime_error"),
    "not a function body either": ("nonlocal n\nprint(2 * int(input()))\n", "compile_error"),
}


@pytest.mark.parametrize("mode", ["strict", "apps"])
def test_a_program_compiling_only_as_a_function_body_runs_as_the_apps_harness_runs_it(mode):
    programs = [program for program, _ in FUNCTION_BODY_PROGRAMS.values()]
    with Evaluator(workers=2, timeout=2.0, mode=mode) as ev:
        results = ev.evaluate(programs, [STDIN_ECHO_DOUBLE] * len(programs))
    got = {name: result.outcomes for name, result in zip(FUNCTION_BODY_PROGRAMS, results)}
    assert got == {name: [verdict] * 2 for name, (_, verdict) in FUNCTION_BODY_PROGRAMS.items()}


def test_call_based_programs_are_never_wrapped(evaluator):
    """The harness runs call-based programs as a module: `nonlocal` for a module-level name is a compile error."""
    program = "total = 0\ndef f(x):\n    nonlocal total\n    return x\n"
    (result,) = evaluator.evaluate([program], [{"fn_name": "f", "inputs": [[1]], "outputs": [1]}])
    assert result.outcomes == ["compile_error"]


def test_apps_function_form_matches_the_harness_rewrite():
    source = 'import sys\nfrom math import *\nx = 1\nimport os\ns = """a\nb"""\n'
    assert apps_function_form(source) == (
        'import sys\nfrom math import *\nstdin = sys.stdin\nstdout = sys.stdout\ndef __apps_main__():\n'
        '\tx = 1\n\timport os\n\ts = """a\n\tb"""\n\t\n'
    )


# -- scoring of replies, without processes: the verdict a test gets from what its process returned ---------------------
def deliver(mode, tests, statuses):
    """The verdicts `_Batch` gives one program's replies (`statuses`: (status, payload) per test)."""
    from lit_codegen.reward.compare import parse_tests
    from lit_codegen.reward.evaluator import _Batch, _Job

    parsed = parse_tests(tests, None)
    batch = _Batch([parsed], mode)
    batch.pending[0] = 1
    batch.deliver(_Job(batch, 0, 0, "", parsed.fn_name, parsed.inputs), statuses)
    index, result = batch.done.get_nowait()
    assert index == 0 and result.n_tests == len(statuses)
    return result.outcomes


def test_replies_are_judged_by_the_batch_s_mode_and_an_exit_only_in_apps():
    tests = {"inputs": ["", ""], "outputs": ["12\n", "12\n"]}
    statuses = [("ok", b"12\n12\n"), ("exited", b"12\n")]  # a repeat the reference ignores; sys.exit(1) after it
    assert deliver("apps", tests, statuses) == ["passed", "passed"]
    assert deliver("strict", tests, statuses) == ["wrong_answer", "runtime_error"]
    assert deliver("strict", tests, [("timeout", None), ("ok", b"12\n")]) == ["timeout", "passed"]


def test_a_reply_past_the_bound_is_wrong_unparsed_in_strict_and_for_calls():
    """Strict: a printed reply longer than REPLY_SLACK + REPLY_FACTOR x the expected answer (trailing whitespace
    aside) is wrong, even one the rules would accept; apps judges long printed output (it ignores repeats) but bounds
    call-based replies the same way, with the JSON of the expected value as its size."""
    from lit_codegen.reward.evaluator import REPLY_SLACK

    padded = b"12" + b" " * (REPLY_SLACK + 100) + b"\n3"  # equal line by line once each line is stripped
    assert deliver("strict", {"inputs": [""], "outputs": ["12\n3"]}, [("ok", padded)]) == ["wrong_answer"]
    assert deliver("apps", {"inputs": [""], "outputs": ["12\n3"]}, [("ok", padded)]) == ["passed"]
    assert deliver("strict", {"inputs": [""], "outputs": ["12\n3"]}, [("ok", padded + b" " * 10**5)]) == [
        "wrong_answer"]
    long_answer = "7" * (REPLY_SLACK + 10)  # longer than the slack, within the bound: judged, and right
    assert deliver("strict", {"inputs": [""], "outputs": [long_answer]}, [("ok", long_answer.encode() + b"\n")]) == [
        "passed"]
    spaced = b"[1," + b" " * (REPLY_SLACK + 100) + b"2]"  # JSON that parses to the expected value
    for mode in ("strict", "apps"):
        calls = {"fn_name": "f", "inputs": [[0]], "outputs": [[1, 2]]}
        assert deliver(mode, calls, [("ok", spaced)]) == ["wrong_answer"]
        assert deliver(mode, calls, [("ok", b"[1, 2]")]) == ["passed"]


@pytest.mark.parametrize("call_based", [False, True])
def test_the_reply_bound_at_its_edge(call_based):
    from lit_codegen.reward.evaluator import REPLY_FACTOR, REPLY_SLACK, _Batch

    expected = [1, 2, 3] if call_based else "abcd"
    size = len("[1, 2, 3]") if call_based else 4  # the JSON of a value; a printed answer's own length
    bound = REPLY_SLACK + REPLY_FACTOR * size
    for mode in ("strict", "apps"):
        batch = _Batch([], mode)
        judged = mode == "strict" or call_based
        assert batch._too_long(b"x" * bound + b" \n\t", expected, call_based) is False
        assert batch._too_long(b"x" * (bound + 1), expected, call_based) is judged
        assert batch._too_long(None, expected, call_based) is False
    assert _Batch([], "strict")._too_long(b"x" * bound * 2, 10**5000, True) is False  # no bound without a size


def test_a_judging_error_is_a_logged_wrong_answer(monkeypatch, caplog):
    from lit_codegen.reward import evaluator

    def broken(*args):
        raise RuntimeError("bug")

    monkeypatch.setattr(evaluator, "judge", broken)
    assert deliver("strict", {"inputs": [""], "outputs": ["1\n"]}, [("ok", b"1\n")]) == ["wrong_answer"]
    assert caplog.messages == ["judging failed"] and "RuntimeError: bug" in caplog.text


def test_limit_messages_name_the_setting_and_its_range():
    from lit_codegen.reward.evaluator import _MAX_MEMORY_MB, check_limits

    check_limits(workers=None, max_tests=None, memory_mb=_MAX_MEMORY_MB, timeout=0.5)
    for limits, message in [
        ({"timeout": 0}, "timeout must be a positive number of seconds, got 0"),
        ({"workers": 0}, "workers must be a whole number >= 1, got 0"),
        ({"memory_mb": 0}, f"memory_mb must be a whole number >= 1 and at most {_MAX_MEMORY_MB}, got 0"),
        ({"memory_mb": _MAX_MEMORY_MB + 1},
         f"memory_mb must be a whole number >= 1 and at most {_MAX_MEMORY_MB}, got {_MAX_MEMORY_MB + 1}"),
    ]:
        with pytest.raises(ValueError) as err:
            check_limits(**limits)
        assert str(err.value) == message
