"""The README's Quickstart commands are the ones CI runs and the demo config exists."""

import re

from helpers import ROOT

TEST_COMMAND = 'pip install torch==2.13.0 -e ".[test]" && pytest -q -m "not slow"'
MAIN_JOB = "pip install torch==2.13.0 -e . && lit-codegen fit --config configs/demo_cpu.yaml"


def quickstart_commands() -> list[str]:
    readme = (ROOT / "README.md").read_text()
    section = readme.split("## Quickstart", 1)[1].split("\n## ", 1)[0]
    return re.findall(r"```bash\n(.*?)\n```", section, flags=re.S)


def test_quickstart_has_exactly_the_two_commands():
    assert quickstart_commands() == [MAIN_JOB, TEST_COMMAND]


def test_ci_runs_the_readme_test_command():
    ci = (ROOT / ".ci" / "run").read_text()
    assert TEST_COMMAND in ci.splitlines()
    assert (ROOT / "configs" / "demo_cpu.yaml").is_file()
