"""Procedurally generated APPS-format problems whose held-out split is new combinations, not copies.

The CPU demo's task family: each problem applies one integer operation with a one-digit constant to an integer `x`
(or two in a row: `generate(seed, two_step=N)` adds N such problems; the demo uses none), as a standard-input program
or as a call-based function. The statement fully determines the program: the
operation words, the constants and the function name all appear in it, so a model can learn to copy and compose::

    Read an integer x and print x times 7.          ->  print(int(input())*7)
    Define calc(x) to return x plus 3, then mod 4.  ->  def calc(x):
                                                            return (x+3)%4

The split is by (operation, constant) pair: out of the 5 operations x 8 constants, `HELD_OUT_PAIRS` pairs (two per
operation) appear only in held-out problems. Every operation and every constant is still seen in training, with
other partners, so a held-out problem is a new combination of known parts: an unseen constant for that operation,
phrased in wordings (sentence frame x operation phrase) and formats that are each known. Training and held-out
problems never share a statement or an (operations, constants) combination (`tests/data/test_procedural.py`).

Part of the training problems (`sft_fraction`, spread evenly over the file) carry their reference program in
`solutions`: those are what the SFT warm start learns from. The others have `solutions: []` (as many APPS problems
do) and are seen only by PPO, which needs tests only. Every problem's reference program is kept by the generator
(`ProceduralProblem.program`) and passes its tests.

Everything is a pure function of `seed` (no data file in git, nothing downloaded):

    from lit_codegen.data.procedural import generate, write_procedural_parquet
    task = generate(seed=0)          # task.train, task.held_out: lists of ProceduralProblem
    write_procedural_parquet("/tmp/proc", "base")   # train.parquet (PPO + SFT) and test.parquet (held out)
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from pathlib import Path

from lit_codegen.data.apps import AppsProblem
from lit_codegen.data.preprocess import write_splits

OPERATIONS = {  # name -> (Python operator, phrases that name it in a statement; `{c}` is the constant)
    "add": ("+", ("plus {c}", "increased by {c}")),
    "sub": ("-", ("minus {c}", "decreased by {c}")),
    "mul": ("*", ("times {c}", "multiplied by {c}")),
    "div": ("//", ("divided by {c} rounded down", "floor divided by {c}")),
    "mod": ("%", ("modulo {c}", "mod {c}")),
}
CONSTANTS = tuple(range(2, 10))
"""Constants are single digits, so copying one is copying one token."""
STDIN_FRAMES = (
    "Read an integer x and print x {phrase}.",
    "Given an integer x on one line, print x {phrase}.",
    "Input: an integer x. Output: x {phrase}.",
)
CALL_FRAMES = (
    "Write {name}(x) that returns x {phrase}.",
    "Define {name}(x) to return x {phrase}.",
    "The function {name}(x) returns x {phrase}.",
)
FUNCTION_NAMES = ("f", "g", "h", "calc", "apply", "compute", "step", "value")
HELD_OUT_PAIRS = 2
"""Held-out constants per operation (10 of the 40 (operation, constant) pairs)."""
TRAIN_ID_BASE, HELD_OUT_ID_BASE = 20_000, 30_000
NUM_TESTS = 4


@dataclass(frozen=True)
class ProceduralProblem:
    """One generated problem and the choices that made it.

    Attributes:
        problem_id: Unique id (training 20000+, held-out 30000+).
        steps: The `(operation, constant)` pairs applied to `x` in order, e.g. `(("add", 3), ("mod", 4))`.
        fmt: `stdin` (read x, print the result) or `call` (a function of x returns it).
        frame: Index of the sentence frame in `STDIN_FRAMES` / `CALL_FRAMES`.
        phrases: Index of each step's phrase in `OPERATIONS[op][1]`.
        fn_name: The function the tests call (`call` format), else None.
        question: The statement.
        program: The reference program (passes every test).
        inputs: Test inputs in APPS form (stdin text, or argument lists).
        outputs: Expected outputs in APPS form.
    """

    problem_id: int
    steps: tuple[tuple[str, int], ...]
    fmt: str
    frame: int
    phrases: tuple[int, ...]
    fn_name: str | None
    question: str
    program: str
    inputs: list
    outputs: list

    def to_apps(self, with_solution: bool) -> AppsProblem:
        """The problem as an `AppsProblem` (`solutions` = [program] if `with_solution`, else [])."""
        io = {"inputs": self.inputs, "outputs": self.outputs}
        if self.fn_name:
            io["fn_name"] = self.fn_name
        return AppsProblem(
            problem_id=self.problem_id, question=self.question, solutions=[self.program] if with_solution else [],
            input_output=io, difficulty="introductory", url="lit_codegen:procedural",
            starter_code=f"def {self.fn_name}(x):\n" if self.fn_name else "",
        )


@dataclass(frozen=True)
class ProceduralTask:
    """A generated task: training problems (`sft[i]`: whether problem i is in the SFT part) and held-out problems."""

    train: list[ProceduralProblem]
    held_out: list[ProceduralProblem]
    sft: list[bool]
    held_out_pairs: frozenset[tuple[str, int]]


def apply_steps(x: int, steps: tuple[tuple[str, int], ...]) -> int:
    """The value a correct program computes for `x` (Python semantics: `//` and `%` round towards -inf)."""
    for op, c in steps:
        x = {"add": x + c, "sub": x - c, "mul": x * c, "div": x // c, "mod": x % c}[op]
    return x


def expression(var: str, steps: tuple[tuple[str, int], ...]) -> str:
    """The reference expression, e.g. `(x+3)%4` for `(("add", 3), ("mod", 4))`."""
    expr = var
    for i, (op, c) in enumerate(steps):
        expr = f"({expr})" if i else expr
        expr = f"{expr}{OPERATIONS[op][0]}{c}"
    return expr


def make_problem(problem_id: int, steps: tuple[tuple[str, int], ...], fmt: str, frame: int,
                 phrases: tuple[int, ...], fn_name: str | None, rng: random.Random) -> ProceduralProblem:
    """Build one problem: statement, reference program and `NUM_TESTS` tests with inputs drawn from `rng`."""
    phrase = ", then ".join(OPERATIONS[op][1][p].format(c=c) for (op, c), p in zip(steps, phrases))
    xs = rng.sample(range(-20, 100), NUM_TESTS)
    if fmt == "stdin":
        question = STDIN_FRAMES[frame].format(phrase=phrase)
        program = f"print({expression('int(input())', steps)})"
        inputs, outputs = [f"{x}\n" for x in xs], [f"{apply_steps(x, steps)}\n" for x in xs]
    else:
        question = CALL_FRAMES[frame].format(name=fn_name, phrase=phrase)
        program = f"def {fn_name}(x):\n    return {expression('x', steps)}"
        inputs, outputs = [[x] for x in xs], [apply_steps(x, steps) for x in xs]
    return ProceduralProblem(problem_id, steps, fmt, frame, phrases, fn_name, question, program, inputs, outputs)


def held_out_pairs(rng: random.Random) -> frozenset[tuple[str, int]]:
    """`HELD_OUT_PAIRS` constants per operation, never one constant held out for every operation."""
    counts = dict.fromkeys(CONSTANTS, 0)
    pairs = set()
    for op in OPERATIONS:
        # the constants held out least so far first, ties broken at random: spreads them over the constants
        order = sorted(CONSTANTS, key=lambda c: (counts[c], rng.random()))
        for c in order[:HELD_OUT_PAIRS]:
            pairs.add((op, c))
            counts[c] += 1
    return frozenset(pairs)


def generate(seed: int = 0, two_step: int = 0, sft_fraction: float = 0.5) -> ProceduralTask:
    """Generate the task: every one-step variant of every (operation, constant) pair, plus random two-step problems.

    One-step variants: 2 formats x 3 frames x 2 phrases per pair (12), 360 training and 120 held-out problems. A
    two-step problem is held out when either of its pairs is; training two-step problems use training pairs only.

    Args:
        seed: Seed of every random choice (held-out pairs, function names, test inputs, order, two-step problems).
        two_step: How many two-step problems to add (split between train and held-out as their pairs fall).
        sft_fraction: Fraction of the training problems (after shuffling) that carry their solution for SFT.

    Returns:
        The task; `train` is shuffled and the SFT part is spread evenly over it (every second problem at 0.5), so
        any prefix of the file, like the one `val/train_pass_rate` scores, holds both parts.
    """
    rng = random.Random(seed)
    held = held_out_pairs(rng)
    variants = []  # (steps, fmt, frame, phrases)
    for op in OPERATIONS:
        for c in CONSTANTS:
            for fmt in ("stdin", "call"):
                for frame in range(3):
                    for phrase in range(2):
                        variants.append((((op, c),), fmt, frame, (phrase,)))
    pairs = [(op, c) for op in OPERATIONS for c in CONSTANTS]
    for _ in range(two_step):
        steps = tuple(rng.sample(pairs, 2))
        variants.append((steps, rng.choice(("stdin", "call")), rng.randrange(3), (rng.randrange(2), rng.randrange(2))))
    train, held_out = [], []
    seen = set()
    for steps, fmt, frame, phrases in variants:
        fn_name = rng.choice(FUNCTION_NAMES) if fmt == "call" else None
        is_held = any(pair in held for pair in steps)
        bucket, base = (held_out, HELD_OUT_ID_BASE) if is_held else (train, TRAIN_ID_BASE)
        problem = make_problem(base + len(bucket), steps, fmt, frame, phrases, fn_name, rng)
        if problem.question in seen:  # a repeated random two-step draw
            continue
        seen.add(problem.question)
        bucket.append(problem)
    rng.shuffle(train)
    rng.shuffle(held_out)
    # problem i is in the SFT part when the running count floor(i * fraction) steps up at i
    sft = [int((i + 1) * sft_fraction) > int(i * sft_fraction) for i in range(len(train))]
    return ProceduralTask(train, held_out, sft, held)


def write_procedural_parquet(out_dir: str | Path, template_type: str = "chat", seed: int = 0) -> Path:
    """Write the generated task: `train.parquet` (all training problems) and `test.parquet` (held-out problems).

    Only the SFT part of the training problems has `solutions`; the held-out problems keep theirs (for scoring
    references with `code_eval`; nothing trains on test.parquet).

    Args:
        out_dir: Output folder (created if needed).
        template_type: `chat` or `base` prompt template.
        seed: Seed of the generator.

    Returns:
        `out_dir` as a Path.
    """
    task = generate(seed)
    train = [p.to_apps(with_solution=in_sft) for p, in_sft in zip(task.train, task.sft)]
    write_splits({"train": train, "test": [p.to_apps(with_solution=True) for p in task.held_out]}, out_dir,
                 template_type)
    return Path(out_dir)
