"""The examples of README.md as the test of them sees them: every command line of a ```bash block, every ```python
and ```csv block, and every inline `command` span in the prose, read from the README at test time.

Used by Testing/test_readme_examples.py, which runs each example or names it as not runnable here, with why.
"""
from __future__ import annotations

import re
import shlex
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"

# The first word of an inline span that makes it a command example (prose names files as `scripts/x.py`: not these).
COMMAND_WORDS = ("ecfusion", "python", "python3", "bash", "sh", "pip", "pytest", "Slicer", "import", "from", "git",
                 ".venv/bin/ecfusion", ".venv/bin/python", ".venv/bin/pip")
FENCE = re.compile(r"^```(\w*)\s*$")


@dataclass(frozen=True)
class Example:
    """One README example. ``key``: for a command line (``bash``) or an inline span (``inline``) the command
    without its trailing ``# comment``, whitespace collapsed; for a ``python``/``csv`` block its first line.
    ``text``: the command (bash, inline) or the whole block. ``comment``: a command line's trailing comment.
    ``line``: 1-based line in README.md."""
    kind: str
    key: str
    text: str
    comment: str
    line: int


def _command(line: str) -> tuple[str, str]:
    """(command, comment) of a shell line: the comment starts at a ``#`` after whitespace."""
    parts = re.split(r"\s+#\s*", line, maxsplit=1)
    return " ".join(parts[0].split()), (parts[1].strip() if len(parts) > 1 else "")


def _blocks(lines: list[str]):
    """(language, first line number, lines) of every fenced block."""
    i = 0
    while i < len(lines):
        m = FENCE.match(lines[i])
        if not m:
            i += 1
            continue
        start, body = i + 1, []
        i += 1
        while i < len(lines) and not lines[i].startswith("```"):
            body.append(lines[i])
            i += 1
        yield m.group(1), start + 1, body
        i += 1


def _bash_examples(first: int, body: list[str]) -> list[Example]:
    out, i = [], 0
    while i < len(body):
        start, line = i, body[i]
        while line.rstrip().endswith("\\") and i + 1 < len(body):  # continuation lines: one command
            i += 1
            line = line.rstrip()[:-1] + " " + body[i].strip()
        i += 1
        command, comment = _command(line)
        if command and not command.startswith("#"):  # a comment line is not a command
            out.append(Example("bash", command, command, comment, first + start))
    return out


def _inline_examples(lines: list[str], fenced: set[int]) -> list[Example]:
    """Inline code spans (one may wrap onto the next line) whose first word is a command word."""
    prose = "\n".join("" if i + 1 in fenced else line for i, line in enumerate(lines))
    out = []
    for m in re.finditer(r"`([^`]+)`", prose):
        if "\n\n" in m.group(1):
            continue
        command = " ".join(m.group(1).split())
        if command.split(" ", 1)[0] in COMMAND_WORDS:
            out.append(Example("inline", command, command, "", prose.count("\n", 0, m.start()) + 1))
    return out


def readme_examples(text: str | None = None) -> list[Example]:
    """Every example of the README (or of ``text``), in order of appearance within each kind."""
    lines = (README.read_text(encoding="utf-8") if text is None else text).splitlines()
    out, fenced = [], set()
    for language, first, body in _blocks(lines):
        fenced.update(range(first - 1, first + len(body) + 1))  # the fences too
        if language in ("bash", "sh", "console", "shell"):
            out += _bash_examples(first, body)
        elif body:
            first_line = next((b for b in body if b.strip()), "")
            out.append(Example(language or "text", first_line.strip(), "\n".join(body), "", first))
    return out + _inline_examples(lines, fenced)


def example(key: str, kind: str | None = None) -> Example:
    """The README example named ``key`` (fails when the README no longer has it)."""
    found = [e for e in readme_examples() if e.key == key and (kind is None or e.kind == kind)]
    assert found, f"README.md has no example {key!r} any more: update Testing/test_readme_examples.py"
    return found[0]


def argv(command: str) -> list[str]:
    """A command line as the shell splits it."""
    return shlex.split(command)


def without_optional(command: str) -> str:
    """The command with its ``[optional]`` parts left out."""
    return " ".join(re.sub(r"\s*\[[^\]]*\]", "", command).split())


def with_optional(command: str) -> str:
    """The command with its ``[optional]`` parts written out (brackets removed)."""
    return " ".join(re.sub(r"\[([^\]]*)\]", r"\1", command).split())


def expand_ellipsis(command: str, examples: list[Example]) -> str:
    """``ecfusion CMD ... --more``: the README's ``...`` stands for the arguments of the first example of the
    same command in the same block (the one above it)."""
    words = command.split()
    assert words[2] == "...", command
    same = next(e for e in examples if e.kind == "bash" and e.key.split()[:2] == words[:2] and "..." not in e.key)
    return " ".join([same.key, *words[3:]])
