import pytest

from lit_codegen.data.prompts import (
    STDIN_INSTRUCTION,
    SYSTEM_PROMPT,
    base_prompt,
    chat_messages,
    extract_program,
    format_answer,
)


def test_base_prompt_stdin_matches_apps_paper_format():
    assert base_prompt("Add one.") == "\nQUESTION:\nAdd one.\nUse Standard Input format\nANSWER:\n"


def test_base_prompt_call_based_appends_starter_code_on_a_new_line():
    prompt = base_prompt("Add.", starter_code="def add(a, b):\n", fn_name="add")
    assert prompt == "\nQUESTION:\nAdd.\ndef add(a, b):\n\nUse Call-Based format\nANSWER:\n"


def test_chat_messages_stdin():
    messages = chat_messages("Print n + 1.")
    assert [m["role"] for m in messages] == ["system", "user"]
    assert messages[0]["content"] == SYSTEM_PROMPT
    assert messages[1]["content"] == "Print n + 1.\n\n" + STDIN_INSTRUCTION


def test_chat_messages_call_based_shows_starter_code_and_function_name():
    user = chat_messages("Add.", starter_code="def add(a, b):\n", fn_name="add")[1]["content"]
    assert "```python\ndef add(a, b):\n```" in user
    assert "`add`" in user
    assert STDIN_INSTRUCTION not in user


@pytest.mark.parametrize(
    ("response", "program"),
    [
        ("```python\nprint(1)\n```", "print(1)"),
        ("Sure!\n```python\nprint(1)\n```\nDone.", "print(1)"),
        ("```\nprint(2)\n```", "print(2)"),
        ("```py\nx = 1\n```", "x = 1"),
        ("```Python3\nx = 3\n```", "x = 3"),
        # the LAST python block wins
        ("```python\nfirst()\n```\nbetter:\n```python\nsecond()\n```", "second()"),
        # blocks in other languages are ignored, even when they come last
        ("```python\nprint(1)\n```\nRun with:\n```bash\npython main.py\n```", "print(1)"),
        # indentation inside the block is preserved; surrounding blank lines are dropped
        ("```python\n\ndef f(x):\n    return x\n\n```", "def f(x):\n    return x"),
        # a fence indented as part of a markdown list is dedented
        ("1. Code:\n   ```python\n   a = 1\n   print(a)\n   ```", "a = 1\nprint(a)"),
        # closing fence glued to the last code line
        ("```python\nprint(3)```", "print(3)"),
        # unterminated final block (length limit hit): the text up to the end
        ("```python\nprint(4)\nfor i in range(", "print(4)\nfor i in range("),
        ("```python\nold()\n```\n```python\nnew(", "new("),
        # no fence at all: the raw text (base template completions)
        ("n = int(input())\nprint(n + 1)\n", "n = int(input())\nprint(n + 1)\n"),
        ("", ""),
        # CRLF line endings
        ("```python\r\nprint(5)\r\n```\r\n", "print(5)"),
        # a tagged block wins over a later untagged one (usually the program's output) ...
        ("```python\nprint(3)\n```\nOutput:\n```\n3\n```", "print(3)"),
        ("```\nx = 1\n```\n```py\nx = 2\n```\n```\nx = 3\n```", "x = 2"),
        # ... and the last untagged block counts when nothing is tagged
        ("```\nfirst()\n```\n```\nsecond()\n```", "second()"),
        # the rest of the opening line is an info string: the language is its first word
        ("```python title=a.py\nprint(6)\n```", "print(6)"),
        ("```py {linenos}\nprint(7)\n```", "print(7)"),
        ("```python\nprint(1)\n```\n```bash title=run.sh\npython a.py\n```", "print(1)"),
        # only a line that is nothing but the fence closes a block; a code line ending in ``` does not
        ('```python\ns = "a```"\nt = s + "```"\n```', 's = "a```"\nt = s + "```"'),
        ("```python\nx = 1\n  ```  \nafter", "x = 1"),
        # an empty block (opened just before the length limit) does not hide the program before it
        ("```python\nprint(1)\n```\nAlternatively:\n```python\n", "print(1)"),
        ("```python\nprint(1)\n```\n```python\n   \n```", "print(1)"),
        ("```python\n```", ""),
    ],
)
def test_extract_program(response, program):
    assert extract_program(response) == program


def test_extract_program_only_other_language_returns_raw_text():
    response = "```bash\necho hi\n```"
    assert extract_program(response) == response


def test_extract_program_keeps_triple_backticks_inside_a_string_line():
    assert extract_program('```python\ns = "```x"\nprint(s)\n```') == 's = "```x"\nprint(s)'


@pytest.mark.parametrize("template_type", ["chat", "base"])
def test_format_answer_round_trips_through_extract_program(template_type):
    program = "def add(a, b):\n    return a + b\n"
    answer = format_answer(program, template_type)
    assert extract_program(answer).strip("\n") == program.strip("\n")
    if template_type == "chat":
        assert answer == "```python\ndef add(a, b):\n    return a + b\n```"


@pytest.mark.parametrize("program", ["x = 1  # ```\nprint(x)", "print('```python')\ny = 2  # ```"])
def test_chat_answer_round_trips_programs_with_backticks(program):
    # lines that end in (or contain) a fence are code: only a line that is nothing but the fence closes the block
    assert extract_program(format_answer(program, "chat")) == program


def test_format_answer_rejects_unknown_template():
    with pytest.raises(ValueError, match="template_type must be one of"):
        format_answer("print(1)", "instruct")
