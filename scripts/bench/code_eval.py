"""Benchmark of the sandboxed evaluator: throughput against baselines, and a load run for leaks.

Throughput (default): tests/s on the MBPP-derived ground-truth programs, side by side in one run, for
(1) our Evaluator with full isolation, (2) a naive runner starting one fresh interpreter per test, and
(3) verl's ``prime_code`` (``compute_score(..., continuous=True)``, as verl calls it for code data, with the tests in
its own format: :func:`prime_code_tests`), run in a separate Python <= 3.10 venv given by ``--verl_python``
(skipped with a message when unavailable):

    /root/.pyenv/versions/3.10.13/bin/python -m venv /tmp/verl_venv
    /tmp/verl_venv/bin/pip install verl==0.9.1 --no-deps && /tmp/verl_venv/bin/pip install numpy
    python scripts/bench/code_eval.py --workers 2 --verl_python /tmp/verl_venv/bin/python

Breakdown (``--breakdown``): CPU per test by process with one worker (evaluator, worker, template, test) and the
test's page faults, from /proc.

Load (``--load N``): N programs cycling through correct, wrong and hostile ones; prints wall time, leftover
sandbox processes, open file descriptors and memory of the evaluator and its workers before and after.
"""

import argparse
import concurrent.futures
import json
import os
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path

from lit_codegen.reward import Evaluator, sandbox_worker
from lit_codegen.reward.compare import judge, parse_tests

DATA = Path(__file__).resolve().parents[3] / "shared" / "data" / "derived"

# Runs one call-based test in a fresh interpreter: argv[1] = program file, argv[2] = fn_name; stdin = JSON args.
NAIVE_CALL_DRIVER = textwrap.dedent("""
    import json, sys
    namespace = {"__name__": "solution"}
    exec(compile(open(sys.argv[1]).read(), "solution.py", "exec"), namespace)
    result = namespace[sys.argv[2]](*json.loads(sys.stdin.read()))
    print(json.dumps(result))
""")

VERL_DRIVER = textwrap.dedent("""
    import concurrent.futures, importlib.util, json, sys, time
    package_dir = sys.argv[1]
    spec = importlib.util.spec_from_file_location("prime_code", package_dir + "/__init__.py",
                                                  submodule_search_locations=[package_dir])
    prime_code = importlib.util.module_from_spec(spec)
    sys.modules["prime_code"] = prime_code
    spec.loader.exec_module(prime_code)
    pairs = json.load(open(sys.argv[2]))
    start = time.monotonic()
    with concurrent.futures.ThreadPoolExecutor(int(sys.argv[3])) as pool:
        scores = list(pool.map(lambda p: prime_code.compute_score(p[0], p[1], continuous=True)[0], pairs))
    print(json.dumps({"wall": time.monotonic() - start, "scores": [float(s) for s in scores]}))
""")

HOSTILE = [
    "import time\ntime.sleep(30)",
    "import os, time\nfor _ in range(100):\n    if os.fork() == 0:\n        time.sleep(30)\n        os._exit(0)",
    "x = []\nfor _ in range(30):\n    x.append(bytearray(100 * 1024**2))",
    "import sys\nfor _ in range(100):\n    sys.stdout.write('x' * 1024**2)",
    "import os, signal\nos.kill(os.getppid(), signal.SIGKILL)",
    "import os\nos.close(1)\nprint(1)",
    "import os, time\nif os.fork() == 0:\n    os.setsid()\n"
    "    if os.fork() == 0:\n        time.sleep(30)\n    os._exit(0)",
    "import socket\nsocket.create_connection(('127.0.0.1', 22), timeout=1)",
    "open('/tmp/litcg_bench_escape', 'w').write('x')\nimport os\nos.remove('/etc/hostname')",
    "import sys\nsys.setrecursionlimit(10**8)\ndef f(n):\n    return list(map(f, [n + 1]))\nf(0)",
]


def load_mbpp() -> tuple[dict, list[dict]]:
    """MBPP-derived problems by id and the solutions file."""
    problems = {}
    with open(DATA / "mbpp_apps.jsonl") as f:
        for line in f:
            row = json.loads(line)
            problems[row["problem_id"]] = row
    with open(DATA / "mbpp_solutions.jsonl") as f:
        solutions = [json.loads(line) for line in f]
    return problems, solutions


def bench_ours(programs, tests, workers, timeout, repeat: int = 3) -> tuple[float, float]:
    """Returns (wall seconds, mean pass rate) of the Evaluator, pool start excluded: the median of `repeat` passes
    (one pass takes ~2 s, short enough for a neighbour's burst on a shared machine to show)."""
    walls = []
    with Evaluator(workers=workers, timeout=timeout) as ev:
        ev.start()
        for _ in range(repeat):
            start = time.monotonic()
            results = ev.evaluate(programs, tests)
            walls.append(time.monotonic() - start)
    return sorted(walls)[len(walls) // 2], sum(r.pass_rate for r in results) / len(results)


def _naive_test(program_file: str, fn_name, test_input, expected, timeout) -> bool:
    if fn_name is None:
        cmd, stdin = [sys.executable, program_file], test_input
    else:
        cmd, stdin = [sys.executable, "-c", NAIVE_CALL_DRIVER, program_file, fn_name], json.dumps(test_input)
    try:
        proc = subprocess.run(cmd, input=stdin.encode(), capture_output=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        return False
    return proc.returncode == 0 and judge(proc.stdout, expected, fn_name is not None)


def bench_naive(programs, tests, workers, timeout) -> tuple[float, float]:
    """One fresh interpreter per test (no isolation at all); returns (wall seconds, mean pass rate)."""
    with tempfile.TemporaryDirectory() as tmp:
        jobs = []
        for i, (program, spec) in enumerate(zip(programs, tests)):
            path = os.path.join(tmp, f"p{i}.py")
            Path(path).write_text(program)
            parsed = parse_tests(spec)
            jobs += [(i, path, parsed.fn_name, x, y) for x, y in zip(parsed.inputs, parsed.outputs)]
        start = time.monotonic()
        with concurrent.futures.ThreadPoolExecutor(workers) as pool:
            passed = list(pool.map(lambda j: _naive_test(j[1], j[2], j[3], j[4], timeout), jobs))
        wall = time.monotonic() - start
    rates = {}
    for job, ok in zip(jobs, passed):
        rates.setdefault(job[0], []).append(ok)
    return wall, sum(sum(v) / len(v) for v in rates.values()) / len(rates)


def prime_code_tests(spec: str | dict) -> str:
    """APPS tests in the form verl's ``prime_code`` reads, as the JSON string it is given.

    Standard-input tests are as in APPS. For call-based tests ``prime_code`` parses each input as one JSON-encoded
    argument per line and each output as a JSON string (its ``testing_util.run_test``); APPS argument lists and
    values fed as they are make every call-based test fail. Each output is also wrapped in a one-element list, the
    form APPS stores Codewars outputs in: ``prime_code`` accepts the element, and its only rule for a returned list
    of tuples (``[list(x) for x in output]``) compares with that element, so without the wrapping a correct
    function returning tuples fails.

    Args:
        spec: the APPS ``input_output`` JSON string or parsed dict.

    Returns:
        The JSON string to pass as ``prime_code.compute_score``'s test cases.
    """
    spec = json.loads(spec) if isinstance(spec, str) else spec
    if not spec.get("fn_name"):
        return json.dumps(spec)
    inputs = ["\n".join(json.dumps(arg) for arg in args) for args in spec["inputs"]]
    outputs = [json.dumps([o]) for o in spec["outputs"]]
    return json.dumps({"fn_name": spec["fn_name"], "inputs": inputs, "outputs": outputs})


def bench_verl(programs, tests, workers, verl_python) -> tuple[float, float] | str:
    """verl prime_code in its own interpreter; returns (wall seconds, mean score) or the reason it was skipped."""
    if not verl_python or not Path(verl_python).exists():
        return "skipped: pass --verl_python pointing at a Python <= 3.10 venv with verl==0.9.1 installed"
    find = subprocess.run(
        [
            verl_python,
            "-c",
            "import importlib.util as u, os; s = u.find_spec('verl'); "
            "print(os.path.join(os.path.dirname(s.origin), 'utils/reward_score/prime_code'))",
        ],
        capture_output=True,
        text=True,
    )
    if find.returncode != 0:
        return f"skipped: verl not importable with {verl_python}"
    with tempfile.NamedTemporaryFile("w", suffix=".json", delete=False) as f:
        json.dump([[p, prime_code_tests(t)] for p, t in zip(programs, tests)], f)
    try:
        proc = subprocess.run(
            [verl_python, "-c", VERL_DRIVER, find.stdout.strip(), f.name, str(workers)], capture_output=True, text=True
        )
    finally:
        os.unlink(f.name)
    if proc.returncode != 0:
        return "skipped: prime_code failed: " + (proc.stderr.strip().splitlines() or ["?"])[-1]
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    return out["wall"], sum(out["scores"]) / len(out["scores"])


def _rss_kb(pid: int) -> int:
    with open(f"/proc/{pid}/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith("VmRSS"))


def _leftovers(ev: Evaluator) -> int:
    """Processes started by this evaluator's workers that still exist (tests, their children or sandbox-uid
    processes), not counting each worker's templates (the long-lived processes that fork the tests)."""
    workers = {w.proc.pid for w in ev._pool}
    templates = {pid for w in ev._pool for pid in w.template_pids}
    sandbox_uids = {str(sandbox_worker.SANDBOX_UID_BASE + pid) for pid in workers}
    count = 0
    for entry in filter(str.isdigit, os.listdir("/proc")):
        if int(entry) in templates:
            continue
        try:
            with open(f"/proc/{entry}/status") as f:
                fields = dict(line.split(":", 1) for line in f if ":" in line)
        except OSError:
            continue
        if int(fields["PPid"]) in workers | templates or fields["Uid"].split()[0] in sandbox_uids:
            count += 1
    return count


def _cpu_and_faults(pid: int) -> tuple[float, float, int]:
    """A process's own CPU seconds, its reaped children's CPU seconds and its reaped children's minor page faults."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()  # fields from the third on (state, ppid, ...)
    tick = os.sysconf("SC_CLK_TCK")
    utime, stime, cutime, cstime = (int(x) for x in fields[11:15])
    return (utime + stime) / tick, (cutime + cstime) / tick, int(fields[8])


def run_breakdown(programs: list, tests: list, n_tests: int, timeout: float, repeat: int = 3) -> None:
    """Where the CPU of one test goes, by process, with one worker: the evaluator (sending, judging), the worker
    (job files, waiting, cleaning up after the test), the templates (forking) and the test's own process (setup,
    the program, exit), with the test's minor page faults (copy-on-write of the memory it shares with its template).
    Read from /proc (the templates reap the tests, so their CPU and faults are their children's)."""
    with Evaluator(workers=1, timeout=timeout) as ev:
        ev.start()
        pids = [ev._pool[0].proc.pid, *ev._pool[0].template_pids]
        before = [_cpu_and_faults(pid) for pid in pids]
        own_before, start = time.process_time(), time.monotonic()
        ev.evaluate(programs * repeat, tests * repeat)
        wall, own = time.monotonic() - start, time.process_time() - own_before
        after = [_cpu_and_faults(pid) for pid in pids]
    n = n_tests * repeat
    templates = range(1, len(pids))
    parts = {
        "evaluator (send, judge)": own,
        "worker (job, wait, clean up)": after[0][0] - before[0][0],
        "templates (fork)": sum(after[i][0] - before[i][0] for i in templates),
        "test process (setup, program, exit)": sum(after[i][1] - before[i][1] for i in templates),
    }
    print(f"one worker, {n} tests: {wall / n * 1e3:.2f} ms/test wall, CPU per test:")
    for name, seconds in parts.items():
        print(f"  {name:<38} {seconds / n * 1e3:6.2f} ms")
    print(f"  {'total':<38} {sum(parts.values()) / n * 1e3:6.2f} ms")
    faults = sum(after[i][2] - before[i][2] for i in templates)
    print(f"  test process minor page faults: {faults / n:.0f} per test")


def run_load(n: int, workers: int, timeout: float) -> None:
    """N programs cycling correct / wrong / hostile; prints leak and memory figures."""
    problems, solutions = load_mbpp()
    pool = [(s["solution"], problems[s["problem_id"]]["input_output"]) for s in solutions]
    hostile_tests = {"inputs": ["1\n"], "outputs": ["1\n"]}
    programs, tests = [], []
    for i in range(n):
        if i % 10 == 9:
            programs.append(HOSTILE[(i // 10) % len(HOSTILE)])
            tests.append(hostile_tests)
        else:
            program, spec = pool[i % len(pool)]
            programs.append(program)
            tests.append(spec)
    with Evaluator(workers=workers, timeout=timeout, memory_mb=512) as ev:
        ev.start()
        fds_before, rss_before = len(os.listdir("/proc/self/fd")), _rss_kb(os.getpid())
        worker_rss_before = [_rss_kb(w.proc.pid) for w in ev._pool]
        start = time.monotonic()
        done, verdicts = 0, {}
        for chunk in range(0, n, 500):
            for result in ev.evaluate(programs[chunk : chunk + 500], tests[chunk : chunk + 500]):
                done += 1
                for v in result.outcomes:
                    verdicts[v] = verdicts.get(v, 0) + 1
            print(
                f"  {done}/{n} programs, {time.monotonic() - start:.0f}s, parent RSS {_rss_kb(os.getpid())} kB, "
                f"leftover sandbox processes {_leftovers(ev)}",
                flush=True,
            )
        wall = time.monotonic() - start
        print(f"load run: {n} programs in {wall:.0f}s; verdicts {verdicts}")
        worker_rss_after = [_rss_kb(w.proc.pid) for w in ev._pool]
        print(
            f"open fds {fds_before} -> {len(os.listdir('/proc/self/fd'))}; parent RSS {rss_before} -> "
            f"{_rss_kb(os.getpid())} kB; worker RSS {worker_rss_before} -> {worker_rss_after} kB"
        )
        escaped = os.path.exists("/tmp/litcg_bench_escape")
        print(f"leftover sandbox processes: {_leftovers(ev)}; escaped file: {escaped}")


def main() -> None:
    """Parse arguments and run the throughput comparison or the load run."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--timeout", type=float, default=5.0)
    parser.add_argument("--verl_python", default="/tmp/verl_venv/bin/python")
    parser.add_argument("--limit", type=int, default=None, help="only the first N ground-truth programs")
    parser.add_argument("--load", type=int, default=0, help="run the load test with N programs instead")
    parser.add_argument("--breakdown", action="store_true", help="CPU per test by process (one worker) instead")
    args = parser.parse_args()
    if args.load:
        run_load(args.load, args.workers, args.timeout)
        return
    problems, solutions = load_mbpp()
    # ground truths; the slow O(n^2) amicable-numbers problem (71) is left out, it only measures CPU speed
    truths = [s for s in solutions if s["kind"] == "ground_truth" and s["problem_id"] % 1000 != 71][: args.limit]
    programs = [s["solution"] for s in truths]
    tests = [problems[s["problem_id"]]["input_output"] for s in truths]
    n_tests = sum(len(parse_tests(t).inputs) for t in tests)
    if args.breakdown:
        run_breakdown(programs, tests, n_tests, args.timeout)
        return
    print(f"{len(programs)} ground-truth programs, {n_tests} tests, {args.workers} workers")
    rows = {
        "lit_codegen Evaluator (full isolation)": bench_ours(programs, tests, args.workers, args.timeout),
        "naive: fresh interpreter per test": bench_naive(programs, tests, args.workers, args.timeout),
        "verl prime_code (continuous=True)": bench_verl(programs, tests, args.workers, args.verl_python),
    }
    ours = n_tests / rows["lit_codegen Evaluator (full isolation)"][0]
    for name, row in rows.items():
        if isinstance(row, str):
            print(f"{name:<42} {row}")
            continue
        rate = n_tests / row[0]
        print(
            f"{name:<42} {rate:8.1f} tests/s  (wall {row[0]:6.1f}s, mean score {row[1]:.3f})  ours/this = "
            f"{ours / rate:.2f}x"
        )


if __name__ == "__main__":
    main()
