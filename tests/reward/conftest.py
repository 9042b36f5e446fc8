"""Fixtures of the reward tests: one small evaluator pool per module (helpers are in `reward_helpers`)."""

import pytest

from lit_codegen.reward import Evaluator


@pytest.fixture(scope="module")
def evaluator():
    """A 2-worker strict evaluator with tight limits, shared by a test module."""
    with Evaluator(workers=2, timeout=2.0, memory_mb=256, output_limit_mb=4) as ev:
        yield ev
