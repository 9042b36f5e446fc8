"""The batch evaluator: scores many (program, tests) pairs concurrently over a pool of sandbox workers.

Each worker is a pre-imported "zygote" process (:mod:`lit_codegen.reward.sandbox_worker`) that forks one
sandboxed child per test, so a test costs ~2 ms of CPU (fork, setup, exit) instead of an interpreter start (~20 ms).
A driver thread per worker feeds it jobs (a program and a chunk of its tests) from a shared queue; the
expected outputs stay in this process, where :func:`lit_codegen.reward.compare.judge` decides each verdict.

Usage::

    with Evaluator(workers=8, timeout=4.0, mode="strict") as ev:
        results = ev.evaluate(programs, tests)          # list[EvalResult], same order as programs
        for i, result in ev.imap(programs, tests): ...  # as they finish
        future = ev.evaluate_async(programs, tests)     # concurrent.futures.Future[list[EvalResult]]
"""

import concurrent.futures
import json
import logging
import math
import os
import pickle
import queue
import select
import subprocess
import sys
import threading
import time
import weakref
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field

from lit_codegen.reward import sandbox_worker
from lit_codegen.reward.compare import MODES, ParsedTests, judge, parse_tests

log = logging.getLogger(__name__)

VERDICTS = ("passed", "wrong_answer", "timeout", "runtime_error", "compile_error", "memory_limit", "output_limit")
# Strict-mode replies longer than REPLY_SLACK + REPLY_FACTOR x the expected answer are wrong without parsing.
REPLY_SLACK, REPLY_FACTOR = 64 << 10, 16
TESTS_PER_JOB = 8  # a program's tests are split into jobs of this size so that few long programs still spread out
_WORKER_ENV = {
    "PATH": "/usr/local/bin:/usr/bin:/bin",
    "LANG": "C.UTF-8",
    "LC_ALL": "C.UTF-8",
    "PYTHONHASHSEED": "0",
    "PYTHONSAFEPATH": "1",
    "PYTHONDONTWRITEBYTECODE": "1",
    "OPENBLAS_NUM_THREADS": "1",
    "OMP_NUM_THREADS": "1",
    "MKL_NUM_THREADS": "1",
}


@dataclass
class EvalResult:
    """The verdicts of one program on one problem's tests.

    Attributes:
        pass_rate: passed tests / ``n_tests`` (0.0 when there are no tests).
        outcomes: one verdict per test, in test order: passed / wrong_answer / timeout / runtime_error /
            compile_error / memory_limit / output_limit.
        n_tests: number of tests run (all of the problem's tests, or the ``max_tests`` pick).
        test_indices: positions of the tests run in the problem's full test list.
    """

    pass_rate: float
    outcomes: list[str]
    n_tests: int
    test_indices: list[int] = field(default_factory=list)

    @property
    def n_passed(self) -> int:
        """Number of passed tests."""
        return self.outcomes.count("passed")

    @property
    def passed(self) -> bool:
        """True when there is at least one test and every test passed (strict accuracy)."""
        return self.n_tests > 0 and self.n_passed == self.n_tests


class WorkerError(RuntimeError):
    """A sandbox worker died or stopped answering."""


class _Worker:
    """One sandbox worker process and the pipe protocol to it."""

    def __init__(self, config: dict):
        self.config = config
        self.proc: subprocess.Popen | None = None
        self.protections: list[str] = []
        self.template_pids: list[int] = []  # the worker's children that fork the tests

    def start(self) -> None:
        env = dict(_WORKER_ENV)
        if os.environ.get("LITCG_SANDBOX_DEBUG"):
            env["LITCG_SANDBOX_DEBUG"] = "1"
        self.proc = subprocess.Popen(
            [sys.executable, "-s", sandbox_worker.__file__],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            env=env,
            start_new_session=True,
        )
        sandbox_worker.send_message(self.proc.stdin.fileno(), self.config)

    def wait_ready(self, timeout: float = 120.0) -> None:
        hello = self._receive(time.monotonic() + timeout)
        self.protections = hello["protections"]
        self.template_pids = hello["template_pids"]

    def run(self, request: dict, deadline: float) -> list:
        if self.proc is None or self.proc.poll() is not None:
            self.start()
            self.wait_ready()
        try:
            sandbox_worker.send_message(self.proc.stdin.fileno(), request)
        except OSError as exc:
            raise WorkerError(f"sandbox worker pipe closed: {exc}") from exc
        return self._receive(deadline)

    def _receive(self, deadline: float):
        fd = self.proc.stdout.fileno()
        if not select.select([fd], [], [], max(0.0, deadline - time.monotonic()))[0]:
            self.stop()
            raise WorkerError("sandbox worker did not answer in time")
        try:
            message = sandbox_worker.receive_message(fd)
        except pickle.UnpicklingError as exc:  # only a test writing into the pipe could send this
            self.stop()
            raise WorkerError(f"sandbox worker sent a malformed message ({exc})") from exc
        if message is None:
            self.stop()
            raise WorkerError("sandbox worker exited unexpectedly")
        return message

    def stop(self) -> None:
        if self.proc is None:
            return
        for stream in (self.proc.stdin, self.proc.stdout):
            try:
                stream.close()
            except OSError:
                pass
        try:
            self.proc.wait(timeout=10)  # closing stdin makes it finish its current test and exit
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        self.proc = None


@dataclass
class _Job:
    batch: "_Batch"
    index: int
    start: int
    source: str
    fn_name: str | None
    inputs: list


class _Batch:
    """One evaluate/imap call: collects the chunks of every program and emits each finished program."""

    def __init__(self, parsed: list[ParsedTests], mode: str):
        self.parsed = parsed
        self.mode = mode
        self.done: queue.Queue = queue.Queue()
        self.outcomes = [[None] * len(p.inputs) for p in parsed]
        self.pending = [0] * len(parsed)
        self.cancelled = False
        self.lock = threading.Lock()

    def deliver(self, job: _Job, statuses: list) -> None:
        tests = self.parsed[job.index]
        verdicts = []
        for k, (status, payload) in enumerate(statuses):
            if status == "exited":  # sys.exit(non-zero): a runtime error, but the APPS reference judges the output
                status = "ok" if self.mode == "apps" else "runtime_error"
            if status == "ok":
                try:
                    expected = tests.outputs[job.start + k]
                    ok = not self._too_long(payload, expected, tests.fn_name is not None) and judge(
                        payload, expected, tests.fn_name is not None, self.mode
                    )
                except Exception:  # noqa: BLE001 - a judging bug must not hang the batch
                    log.exception("judging failed")
                    ok = False
                status = "passed" if ok else "wrong_answer"
            verdicts.append(status)
        with self.lock:
            self.outcomes[job.index][job.start : job.start + len(verdicts)] = verdicts
            self.pending[job.index] -= 1
            finished = self.pending[job.index] == 0
        if finished:
            self.finish(job.index)

    def _too_long(self, payload: bytes | None, expected, call_based: bool) -> bool:
        """True when a reply is far longer than any right answer could be: it is wrong unparsed.

        Parsing is what costs the evaluator (16 MiB of 100,000-digit integers took 3.7 s of JSON parsing with the GIL
        held; 16 MiB of short lines grew this process by 468 MiB), and a right answer differs from the expected one
        only by trailing whitespace, number formatting or JSON spacing. So a reply longer than
        `REPLY_SLACK + REPLY_FACTOR x` the expected answer is judged wrong without being parsed: in both modes for
        call-based problems, in strict mode for printed output (`apps` mode ignores repeated lines, as the reference
        does, so a long output can be right there; `compare` judges it in bounded memory).
        """
        if (self.mode != "strict" and not call_based) or payload is None or len(payload) <= REPLY_SLACK:
            return False
        try:
            size = len(json.dumps(expected)) if call_based else len(expected)
        except ValueError:  # an expected integer beyond str()'s digit limit: no bound
            return False
        return len(payload.rstrip()) > REPLY_SLACK + REPLY_FACTOR * size

    def finish(self, index: int) -> None:
        outcomes = self.outcomes[index]
        n = len(outcomes)
        rate = outcomes.count("passed") / n if n else 0.0
        self.done.put((index, EvalResult(rate, outcomes, n, self.parsed[index].indices)))


_MAX_MEMORY_MB = 1 << 20  # 1 TiB: RLIMIT_AS past what the kernel accepts made every test a runtime error


def check_limits(**limits) -> None:
    """Raise ValueError naming the first setting that is not a positive finite number, e.g. `check_limits(timeout=0)`.

    `timeout` may be fractional; the others (`memory_mb`, `output_limit_mb`, `max_processes`, `max_tests`, `workers`)
    are whole numbers. `max_tests` and `workers` may be None (all tests, all CPUs).
    """
    for name, value in limits.items():
        if value is None and name in ("max_tests", "workers"):
            continue
        whole = name != "timeout"
        ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value) and value > 0
        if not ok or (whole and not isinstance(value, int)) or (name == "memory_mb" and value > _MAX_MEMORY_MB):
            kind = "a positive number of seconds" if not whole else "a whole number >= 1"
            if name == "memory_mb":
                kind += f" and at most {_MAX_MEMORY_MB}"
            raise ValueError(f"{name} must be {kind}, got {value!r}")


class Evaluator:
    """Sandboxed, parallel APPS test runner; the reward function of training and the validation metric.

    Workers start lazily on first use (or on reading :attr:`protections`); nothing runs at import time.
    Thread-safe: several threads may evaluate at once. Holding it on a LightningModule is fine: pickling
    keeps the configuration only, and the copy starts its own workers when used.

    Args:
        workers: number of sandbox worker processes; default: the CPUs this process may run on.
        timeout: wall-clock limit per test, seconds (CPU-time limit: ceil(timeout) + 1 s).
        mode: "strict" (default, for training: exact output, no partial credit for lucky token sets) or
            "apps" (the APPS reference harness's lax rules, for paper-comparable numbers).
        memory_mb: address-space cap per test process, above the pre-imported interpreter.
        max_tests: per-problem test cap (a deterministic pseudo-random pick per problem); None runs all.
        output_limit_mb: cap on what one test may print.
        max_processes: process/thread cap per test.
        isolation: "full" (everything this machine allows) or "none" (rlimits and timeouts only; for debugging).
    """

    def __init__(
        self,
        workers: int | None = None,
        timeout: float = 4.0,
        mode: str = "strict",
        memory_mb: int = 1024,
        max_tests: int | None = None,
        output_limit_mb: int = 16,
        max_processes: int = 32,
        isolation: str = "full",
    ):
        if mode not in MODES:
            raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
        if isolation not in ("full", "none"):
            raise ValueError(f"isolation must be 'full' or 'none', got {isolation!r}")
        check_limits(timeout=timeout, memory_mb=memory_mb, output_limit_mb=output_limit_mb,
                     max_processes=max_processes, max_tests=max_tests, workers=workers)
        self.workers = workers or len(os.sched_getaffinity(0))
        self.timeout = timeout
        self.mode = mode
        self.memory_mb = memory_mb
        self.max_tests = max_tests
        self.output_limit_mb = output_limit_mb
        self.max_processes = max_processes
        self.isolation = isolation
        self._init_runtime()

    def _init_runtime(self) -> None:
        self._lock = threading.Lock()
        self._jobs: queue.Queue = queue.Queue()
        self._pool: list[_Worker] = []
        self._threads: list[threading.Thread] = []
        self._executor: concurrent.futures.ThreadPoolExecutor | None = None
        self._closed = False
        self._finalizer = None
        self._protections: list[str] = []

    # -- pickling: configuration only ------------------------------------------------------------------------------
    def __getstate__(self) -> dict:
        keys = ("workers", "timeout", "mode", "memory_mb", "max_tests", "output_limit_mb", "max_processes", "isolation")
        return {k: getattr(self, k) for k in keys}

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update(state)
        self._init_runtime()

    # -- lifecycle -------------------------------------------------------------------------------------------------
    def start(self) -> "Evaluator":
        """Start the worker pool now (otherwise it starts on first use) and log the active protections."""
        with self._lock:
            if self._closed:
                raise RuntimeError("Evaluator is closed")
            if self._pool:
                return self
            config = {
                "timeout": self.timeout,
                "memory_mb": self.memory_mb,
                "output_limit_mb": self.output_limit_mb,
                "max_processes": self.max_processes,
                "isolation": self.isolation,
            }
            pool = [_Worker(config) for _ in range(self.workers)]
            try:
                for worker in pool:
                    worker.start()
                for worker in pool:
                    worker.wait_ready()
            except Exception:
                for worker in pool:
                    worker.stop()
                raise
            self._pool = pool
            self._protections = list(pool[0].protections)
            self._threads = [
                threading.Thread(target=self._serve, args=(w,), daemon=True, name=f"sandbox-{i}")
                for i, w in enumerate(pool)
            ]
            for thread in self._threads:
                thread.start()
            self._finalizer = weakref.finalize(self, _shutdown, self._jobs, self._pool, self._threads)
        log.info(
            "code evaluator: %d workers, mode=%s, timeout=%gs; active protections:\n  - %s",
            self.workers,
            self.mode,
            self.timeout,
            "\n  - ".join(self.protections),
        )
        if not any("uid" in p and "RUNNING AS ROOT" not in p for p in self.protections):
            log.warning("code evaluator: no unprivileged uid for sandboxed programs (see docs: sandbox levels)")
        return self

    @property
    def protections(self) -> list[str]:
        """Human-readable list of the protections active in the sandbox (starts the workers if needed)."""
        if not self._protections:
            self.start()
        return list(self._protections)

    def close(self) -> None:
        """Stop the workers and their threads. Safe to call twice; the evaluator cannot be used afterwards."""
        with self._lock:
            self._closed = True
            finalizer, self._finalizer = self._finalizer, None
            executor, self._executor = self._executor, None
        if executor is not None:
            executor.shutdown(wait=False, cancel_futures=True)
        if finalizer is not None:
            finalizer()

    def __enter__(self) -> "Evaluator":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # -- evaluation ------------------------------------------------------------------------------------------------
    def imap(
        self, programs: Sequence[str], tests: Sequence[str | dict], max_tests: int | None | str = "default"
    ) -> Iterator[tuple[int, EvalResult]]:
        """Score programs, yielding ``(index, result)`` as each program finishes (completion order).

        Args:
            programs: Python sources, one per problem instance.
            tests: per program, the APPS ``input_output`` JSON string or parsed dict.
            max_tests: per-call test cap overriding the evaluator's (None = all tests); "default" keeps it.

        Yields:
            ``(index into programs, EvalResult)``.
        """
        if len(programs) != len(tests):
            raise ValueError(f"got {len(programs)} programs but {len(tests)} test specifications")
        cap = self.max_tests if max_tests == "default" else max_tests
        check_limits(max_tests=cap)
        parsed = []
        for index, spec in enumerate(tests):
            try:
                parsed.append(parse_tests(spec, cap))
            except (ValueError, TypeError) as exc:  # TypeError: e.g. a number where a stdin line should be
                raise ValueError(f"tests[{index}] is not a valid APPS test specification: {exc}") from exc
        self.start()
        batch = _Batch(parsed, self.mode)
        jobs = []
        for index, (source, spec) in enumerate(zip(programs, parsed)):
            starts = range(0, len(spec.inputs), TESTS_PER_JOB)
            batch.pending[index] = len(starts)
            jobs += [
                _Job(batch, index, s, source or "", spec.fn_name, spec.inputs[s : s + TESTS_PER_JOB]) for s in starts
            ]
        for index, spec in enumerate(parsed):
            if not spec.inputs:
                batch.finish(index)
        for job in jobs:
            self._jobs.put(job)
        try:
            for _ in range(len(programs)):
                while True:
                    try:
                        yield batch.done.get(timeout=1.0)
                        break
                    except queue.Empty:
                        if self._closed:
                            raise RuntimeError("Evaluator was closed during evaluation") from None
        finally:
            batch.cancelled = True

    def evaluate(
        self, programs: Sequence[str], tests: Sequence[str | dict], max_tests: int | None | str = "default"
    ) -> list[EvalResult]:
        """Score programs and return their results in the order of ``programs``.

        Args:
            programs: Python sources, one per problem instance.
            tests: per program, the APPS ``input_output`` JSON string or parsed dict.
            max_tests: per-call test cap overriding the evaluator's (None = all tests); "default" keeps it.

        Returns:
            One EvalResult per program.
        """
        results: list[EvalResult | None] = [None] * len(programs)
        for index, result in self.imap(programs, tests, max_tests):
            results[index] = result
        return results

    def evaluate_async(
        self, programs: Sequence[str], tests: Sequence[str | dict], max_tests: int | None | str = "default"
    ) -> concurrent.futures.Future:
        """Like :meth:`evaluate`, in the background; the future's result is the list of EvalResult."""
        with self._lock:
            if self._closed:
                raise RuntimeError("Evaluator is closed")
            if self._executor is None:
                self._executor = concurrent.futures.ThreadPoolExecutor(4, thread_name_prefix="evaluate-async")
            return self._executor.submit(self.evaluate, list(programs), list(tests), max_tests)

    def _serve(self, worker: _Worker) -> None:
        while (job := self._jobs.get()) is not None:
            if job.batch.cancelled:
                continue
            request = {"source": job.source, "fn_name": job.fn_name, "inputs": job.inputs}
            statuses = None
            for attempt in range(2):
                deadline = time.monotonic() + len(job.inputs) * (self.timeout + 2.0) + 30.0
                try:
                    statuses = worker.run(request, deadline)
                    break
                except (WorkerError, OSError, EOFError) as exc:
                    log.warning("sandbox worker failed (%s); restarting it (attempt %d)", exc, attempt + 1)
                    worker.stop()
            if statuses is None:
                statuses = [("runtime_error", None)] * len(job.inputs)
            job.batch.deliver(job, statuses)


def _shutdown(jobs: queue.Queue, pool: list[_Worker], threads: list[threading.Thread]) -> None:
    """Stop driver threads, then workers (also runs at interpreter exit if close() was never called)."""
    try:
        while True:
            jobs.get_nowait()  # drop jobs nobody will wait for
    except queue.Empty:
        pass
    for _ in threads:
        jobs.put(None)
    for thread in threads:
        thread.join(timeout=30)
    for worker in pool:
        worker.stop()
