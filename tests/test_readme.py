"""The README and docs/ cannot drift from the code.

- The README's Quickstart commands are the ones CI runs, and the demo config exists.
- Every command in a ```bash block of README.md or docs/*.md is checked: `lit-codegen` commands (also behind
  `srun`/`torchrun` and the training script) are parsed by the real CLI with `--print_config`, so jsonargparse
  validates every flag; `python -m MODULE` / `python scripts/X.py` run with `--help` and must list every `--flag`
  the command uses; shell scripts must exist and be strict; anything else must match `ALLOWED_PREFIXES`, so a new
  kind of command fails here until someone decides how to check it.
- Every relative link between README and docs (and to files of the repository) resolves, #anchors included.
"""

import functools
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

from helpers import ROOT
from lit_codegen.cli import main

TEST_COMMAND = 'pip install torch==2.13.0 -e ".[test]" && pytest -q -m "not slow"'
MAIN_JOB = "pip install torch==2.13.0 -e . && lit-codegen fit --config configs/demo_cpu.yaml"
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
README_MAX_LINES = 200  # the front door; the reference lives in docs/

# Commands that are shown but not run or parsed here, by prefix, and why.
ALLOWED_PREFIXES = {
    "pip install": "installs packages: CI runs the README's two install commands itself (.ci/run)",
    "pytest": "the test command: CI runs it (test_ci_runs_the_readme_test_command)",
    "cd ": "changes directory only",
    "python -m mutmut": "an external tool (pip install mutmut), not a dependency; scripts/mutation.sh drives it",
}
# Shell scripts that set -u and pipefail but not -e, and why.
NO_ERREXIT = {
    "scripts/bench/gpu_session.sh": "falls back to micro-batch 64 when a run fails, so a failure must not end it",
}


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


# ------------------------------------------------------------------------------------------------ page layout
def test_readme_is_a_front_door_and_every_docs_page_starts_with_a_summary():
    n_lines = len((ROOT / "README.md").read_text().splitlines())
    assert n_lines <= README_MAX_LINES, f"README.md has {n_lines} lines: move reference material to docs/"
    for page in PAGES[1:]:
        title, summary = page.read_text().split("\n\n", 2)[:2]
        assert title.startswith("# ") and "\n" not in title, page.name
        assert not summary.startswith(("#", "```", "|")) and len(summary.splitlines()) <= 4, page.name


# ------------------------------------------------------------------------------------------------ commands
def _without_code_blocks(text: str) -> str:
    return re.sub(r"^```.*?^```", "", text, flags=re.S | re.M)


def shell_commands() -> list[tuple[str, list[str]]]:
    """(where, argv) of every command in a ```bash block: continuations joined, comments dropped, split at &&."""
    found = []
    for page in PAGES:
        text = page.read_text()
        for block in re.finditer(r"^```bash\n(.*?)^```", text, flags=re.S | re.M):
            line_no = text[: block.start()].count("\n") + 2  # the block's first line
            lines = block.group(1).splitlines()
            i = 0
            while i < len(lines):
                where, line = f"{page.relative_to(ROOT)}:{line_no + i}", lines[i]
                while line.endswith("\\") and i + 1 < len(lines):
                    i += 1
                    line = line[:-1] + " " + lines[i]
                i += 1
                tokens = shlex.split(line, comments=True)
                while tokens:
                    cut = tokens.index("&&") if "&&" in tokens else len(tokens)
                    found.append((where, tokens[:cut]))
                    tokens = tokens[cut + 1 :]
    return found


COMMANDS = shell_commands()


def _flags(args: list[str]) -> list[str]:
    return [a.split("=", 1)[0] for a in args if a.startswith("--")]


@functools.lru_cache(maxsize=None)
def _help_text(target: tuple[str, ...]) -> str:
    out = subprocess.run([sys.executable, *target, "--help"], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, f"{' '.join(target)} --help failed:\n{out.stderr[-2000:]}"
    return out.stdout


def _check_help_lists_flags(target: tuple[str, ...], args: list[str]) -> None:
    if target[0] != "-m":
        assert (ROOT / target[0]).is_file(), f"{target[0]} does not exist"
    text = _help_text(target)
    missing = [f for f in _flags(args) if not re.search(rf"{re.escape(f)}(?![\w-])", text)]
    assert not missing, f"{' '.join(target)} --help does not list {missing}"


def _check_cli_parses(args: list[str], capsys) -> None:
    """Parse the command with the real CLI (`--print_config` exits before anything is built)."""
    with pytest.raises(SystemExit) as exit_info:
        main([*args, "--print_config"])
    err = capsys.readouterr().err
    assert exit_info.value.code == 0, f"lit-codegen {' '.join(args)} does not parse:\n{err[-2000:]}"


def _script_command(script: str) -> list[str] | None:
    """The argv a wrapper script execs before its "$@" (its $CONFIG default filled in), or None."""
    text = (ROOT / script).read_text()
    exec_line = re.search(r'^exec (.*) "\$@"\s*$', text.replace("\\\n", " "), flags=re.M)
    if exec_line is None:
        return None
    config = re.search(r'CONFIG="\$\{CONFIG:-\$ROOT/([^}]+)\}"', text)
    argv = shlex.split(exec_line.group(1).replace('"$CONFIG"', config.group(1) if config else '"$CONFIG"'))
    return argv[1:]  # without the interpreter


def _check_script(script: str, args: list[str], capsys) -> None:
    path = ROOT / script
    assert path.is_file(), f"{script} does not exist"
    text = path.read_text()
    strict = re.search(r"^set -(e?)uo pipefail$", text, flags=re.M)
    assert strict, f"{script} must `set -euo pipefail`"
    assert strict.group(1) or script in NO_ERREXIT, f"{script} must `set -e` (or be listed in NO_ERREXIT, with why)"
    subprocess.run(["bash", "-n", str(path)], check=True)
    inner = _script_command(script)
    if inner and inner[:2] == ["-m", "lit_codegen.cli"]:
        _check_cli_parses([*inner[2:], *args], capsys)
    elif inner and inner[0] == "-m":
        _check_help_lists_flags(tuple(inner[:2]), args)
    else:  # a script that takes its own arguments: nothing to validate them against
        assert not _flags(args), f"{script}: flags given to a script that does not pass them to a parser"


@pytest.mark.parametrize("where, argv", COMMANDS, ids=[f"{w} {' '.join(a)[:50]}" for w, a in COMMANDS])
def test_documented_command_is_checked(where, argv, capsys):
    line = " ".join(argv)
    if argv[0] == "srun":  # SLURM starts the rest once per task
        argv = argv[1:]
    if argv[0] == "torchrun":  # the launcher's own flags, then the CLI
        assert "-m" in argv and argv[argv.index("-m") + 1] == "lit_codegen.cli", where
        argv = ["lit-codegen", *argv[argv.index("-m") + 2 :]]
    if argv[0] == "lit-codegen":
        _check_cli_parses(argv[1:], capsys)
    elif argv[0] == "python" and argv[1] == "-m" and not line.startswith("python -m mutmut"):
        _check_help_lists_flags(("-m", argv[2]), argv[3:])
    elif argv[0] == "python" and argv[1].endswith(".py"):
        _check_help_lists_flags((argv[1],), argv[2:])
    elif argv[0] == "bash" and argv[1].endswith(".sh"):
        _check_script(argv[1], argv[2:], capsys)
    elif argv[0].startswith("scripts/") and argv[0].endswith(".sh"):
        _check_script(argv[0], argv[1:], capsys)
    else:
        assert line.startswith(tuple(ALLOWED_PREFIXES)), (
            f"{where}: `{line}` is neither run, parsed nor allowed: check it here or add its prefix (and why)"
            " to ALLOWED_PREFIXES"
        )


def test_every_page_shows_commands_and_each_command_kind_is_seen():
    kinds = {argv[0] for _, argv in COMMANDS}
    assert {"lit-codegen", "python", "bash", "pip", "torchrun", "srun"} <= kinds
    assert len(COMMANDS) > 30


# ------------------------------------------------------------------------------------------------ links
def github_anchor(heading: str) -> str:
    """The #anchor GitHub gives a heading: lower case, punctuation dropped, spaces to hyphens."""
    return re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")


@functools.lru_cache(maxsize=None)
def anchors(path: Path) -> frozenset[str]:
    """The anchors of a page's headings (a repeated heading gets -1, -2, ... as on GitHub)."""
    found, counts = set(), {}
    for heading in re.findall(r"^#{1,6} (.+)$", _without_code_blocks(path.read_text()), flags=re.M):
        slug = github_anchor(heading)
        found.add(slug if slug not in counts else f"{slug}-{counts[slug]}")
        counts[slug] = counts.get(slug, 0) + 1
    return frozenset(found)


def relative_links() -> list[tuple[Path, str]]:
    links = []
    for page in PAGES:
        for target in re.findall(r"\]\(([^)\s]+)\)", _without_code_blocks(page.read_text())):
            if not re.match(r"[a-z]+:", target):  # http:, https:, mailto:
                links.append((page, target))
    return links


def test_every_relative_link_resolves():
    links = relative_links()
    assert len(links) > 10
    broken = []
    for page, target in links:
        file_part, _, anchor = target.partition("#")
        path = (page.parent / file_part).resolve() if file_part else page
        if not path.exists():
            broken.append(f"{page.name}: {target} (no such file)")
        elif anchor and (path.suffix != ".md" or anchor not in anchors(path)):
            broken.append(f"{page.name}: {target} (no heading with that anchor)")
    assert not broken, "\n".join(broken)


def test_github_anchor():
    assert github_anchor("Evaluator benchmark (`scripts/bench/code_eval.py`, 2 workers)") == (
        "evaluator-benchmark-scriptsbenchcode_evalpy-2-workers"
    )
    assert github_anchor("The task (the CPU demo's): held-out") == "the-task-the-cpu-demos-held-out"
