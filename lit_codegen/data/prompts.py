r"""Prompt templates for APPS problems and the inverse: extracting the program from a model response.

Two templates:

- `base`: the completion prompt of the APPS paper (Hendrycks et al. 2021, `eval/generate_gpt_codes.py`):
  `"\nQUESTION:\n" + question + ("\n" + starter_code) + "\nUse Standard Input format" | "\nUse Call-Based
  format" + "\nANSWER:\n"`; the model continues with the program.
- `chat`: a system + user message pair for instruct models asking for one fenced python block.

`extract_program` is shared with the evaluator (`lit_codegen.reward`), so what the policy is asked for and what
gets executed stay in one place.

    messages = chat_messages(question, starter_code="", fn_name=None)
    extract_program("Here:\n```python\nprint(1)\n```")  # -> 'print(1)'
"""

from __future__ import annotations

import re
import textwrap

TEMPLATE_TYPES = ("base", "chat")

# Kept short: every token of the prompt is paid for in every rollout, and the CPU demo's tiny model reads it too.
SYSTEM_PROMPT = "You are an expert Python programmer. Reply with one ```python code block."
STDIN_INSTRUCTION = "Read from standard input and print to standard output."
CALL_BASED_INSTRUCTION = "Write the function `{fn_name}`; the tests call it and check what it returns."


def base_prompt(question: str, starter_code: str = "", fn_name: str | None = None) -> str:
    r"""The APPS paper's completion prompt.

    Args:
        question: Problem statement.
        starter_code: Code the answer starts from ("" for none).
        fn_name: Function the tests call (call-based problem), or None for stdin/stdout.

    Returns:
        The prompt text, ending in `"\nANSWER:\n"`.
    """
    text = "\nQUESTION:\n" + question
    if starter_code:
        text += "\n" + starter_code
    text += "\nUse Call-Based format" if fn_name else "\nUse Standard Input format"
    return text + "\nANSWER:\n"


def chat_messages(question: str, starter_code: str = "", fn_name: str | None = None) -> list[dict[str, str]]:
    """Chat messages (system + user) asking for the solution as one fenced python block.

    Args:
        question: Problem statement.
        starter_code: Code the answer starts from ("" for none); shown in a fenced block.
        fn_name: Function the tests call (call-based problem), or None for stdin/stdout.

    Returns:
        `[{"role": "system", ...}, {"role": "user", ...}]`.
    """
    parts = [question.strip()]
    if starter_code.strip():
        parts.append("Starter code:\n```python\n" + starter_code.rstrip() + "\n```")
    parts.append(CALL_BASED_INSTRUCTION.format(fn_name=fn_name) if fn_name else STDIN_INSTRUCTION)
    return [{"role": "system", "content": SYSTEM_PROMPT}, {"role": "user", "content": "\n\n".join(parts)}]


def format_answer(program: str, template_type: str) -> str:
    """How the policy should answer: the target text of supervised fine-tuning.

    Args:
        program: A correct program.
        template_type: `chat` (a fenced python block, as `chat_messages` asks) or `base` (the raw code).

    Returns:
        The answer text; `extract_program(format_answer(p, t))` gives back `p` without surrounding blank lines.
    """
    check_template_type(template_type)
    code = program.strip("\n")
    return f"```python\n{code}\n```" if template_type == "chat" else code + "\n"


def check_template_type(template_type: str) -> None:
    """Raise a clear `ValueError` unless `template_type` is `base` or `chat`."""
    if template_type not in TEMPLATE_TYPES:
        raise ValueError(f"template_type must be one of {TEMPLATE_TYPES}, got {template_type!r}")


# An opening fence: optional indent, three or more backticks, then an info string whose first word is the language
# (```` ```python title=a.py ````). A closing fence is a line of backticks only.
_FENCE_OPEN = re.compile(r"^\s*```+\s*([^`\s]*)[^`]*$")
_FENCE_CLOSE = re.compile(r"^\s*```+\s*$")
_PYTHON_TAGS = ("python", "py", "python3", "py3")


def _blocks(lines: list[str]) -> list[tuple[str, list[str]]]:
    """The fenced blocks of a response as `(language, body lines)`, in order.

    A block closes at the next line that is only a fence. Without one it closes at the first line that ends with a
    fence (a closing fence glued to the last code line), and failing that it runs to the end (cut by the length
    limit).
    """
    blocks = []
    i = 0
    while i < len(lines):
        opened = _FENCE_OPEN.match(lines[i])
        i += 1
        if not opened:
            continue
        rest = lines[i:]
        end = next((j for j, line in enumerate(rest) if _FENCE_CLOSE.match(line)), None)
        if end is not None:
            body = rest[:end]
        else:
            end = next((j for j, line in enumerate(rest) if line.rstrip().endswith("```")), None)
            body = rest if end is None else rest[:end] + [rest[end].rstrip().rstrip("`")]
        blocks.append((opened.group(1).lower(), body))
        i += len(rest) if end is None else end + 1
    return blocks


def has_code_block(response: str) -> bool:
    """Whether a response has a fenced block `extract_program` would take: tagged python, or untagged."""
    return any(language in _PYTHON_TAGS or language == "" for language, _ in _blocks(response.splitlines()))


def extract_program(response: str) -> str:
    """Extract the program from a model response: the last fenced python block, else the raw text.

    A block opens with a line of three or more backticks and an optional info string whose first word is the
    language (```` ```python ````, ```` ```py title=a.py ````), and closes with a line that is only backticks (a
    program line that merely ends in three backticks, e.g. inside a string, does not close it). The last block
    tagged `python`, `py`, `python3` or `py3` (any case) wins; untagged blocks count only when there is no tagged
    one (an untagged block after the code is usually its output); blocks in other languages are ignored. A block
    without a closing line closes at a line ending in a glued fence (```` print(3)``` ````), else runs to the end of
    the text (generation hit the length limit). Without any such block the whole response is returned, so a
    `base`-template completion (raw code) passes through. Empty blocks are passed over when a block has code.

    Args:
        response: Decoded model output.

    Returns:
        The program text, dedented, without leading/trailing blank lines.
    """
    blocks = _blocks(response.splitlines())
    tagged = [body for language, body in blocks if language in _PYTHON_TAGS]
    untagged = [body for language, body in blocks if language == ""]
    chosen = tagged or untagged
    if not chosen:
        return response
    # an empty block (typically one just opened when the length limit hit) does not hide an earlier program
    chosen = [body for body in chosen if any(line.strip() for line in body)] or chosen
    return textwrap.dedent("\n".join(chosen[-1])).strip("\n")
