"""CPU fairness between sandboxed tests (issue 16): a program that forks 31 busy processes (each in its own session)
on one worker, while a correct CPU-bound program runs on the other worker.

Without per-worker CPU groups the 31 processes took 31 shares of the CPUs and the correct program, 0.3-0.4 s alone,
took ~2.8 s beside them (a timeout at `--timeout 2`: a wrong verdict for an innocent program). With them (root, a
cgroup per worker) it keeps about its time alone. Prints both times and verdicts; run from the repository root:

    python scripts/bench/sandbox_cpu_share.py [--timeout 3]
"""

import argparse
import time

from lit_codegen.reward import Evaluator

HOG = """
import os, time
for i in range(31):
    if os.fork() == 0:
        os.setsid()
        end = time.time() + 6
        while time.time() < end:
            pass
        os._exit(0)
time.sleep(6)
print(1)
"""
HONEST = "s = 0\nfor i in range(6_000_000):\n    s += i\nprint(s % 7)"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--timeout", type=float, default=3.0)
    args = parser.parse_args()
    hog_tests = {"inputs": [""], "outputs": ["1\n"]}
    honest_tests = {"inputs": [""], "outputs": [f"{sum(range(6_000_000)) % 7}\n"]}
    with Evaluator(workers=2, timeout=args.timeout) as ev:
        ev.start()
        print("\n".join(p for p in ev.protections if p.startswith("cgroup") or p.startswith("no memory cgroup")))
        start = time.perf_counter()
        (alone,) = ev.evaluate([HONEST], [honest_tests])
        alone_s = time.perf_counter() - start
        hog = ev.evaluate_async([HOG], [hog_tests])
        time.sleep(0.5)  # the hog's processes are running
        start = time.perf_counter()
        (beside,) = ev.evaluate([HONEST], [honest_tests])
        beside_s = time.perf_counter() - start
        print(f"correct program alone: {alone.outcomes[0]} in {alone_s:.2f} s; beside the hog: {beside.outcomes[0]} in "
              f"{beside_s:.2f} s ({beside_s / alone_s:.2f}x); the hog: {hog.result()[0].outcomes[0]}")


if __name__ == "__main__":
    main()
