"""Reward hooks the tests name by import path (as a user's own module would be named in YAML)."""


def the_pass_rate(problem, response, program, result):
    """Today's reward, through the hook: must train bit for bit like no hook."""
    return result.pass_rate


def by_problem(problem, response, program, result):
    """A reward that depends on the problem row: 1 for even problem ids, 0 for odd (whatever the program does)."""
    return float(problem["problem_id"] % 2 == 0)


def broken(problem, response, program, result):
    return 1 / 0


def not_a_number(problem, response, program, result):
    return "high"
