"""The README's shell blocks and the sample outputs that follow them, as the tests read them."""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

README = Path(__file__).resolve().parent.parent / "README.md"
_BLOCK = re.compile(r"^```(\w*)\n(.*?)^```$", re.M | re.S)


@dataclass(frozen=True)
class Example:
    commands: list[str]  # the shell block's command lines, comments and continuations joined
    output: str | None  # the plain block right after it (only blank lines or prose-free between), if any


def section(title: str) -> str:
    """The README's text under `## title`, up to the next `## `."""
    text = README.read_text()
    start = text.index(f"\n## {title}\n")
    end = text.find("\n## ", start + 1)
    return text[start:end if end != -1 else len(text)]


def examples(text: str | None = None) -> list[Example]:
    """Every ```sh block with the plain ``` block that directly follows it, if one does."""
    text = README.read_text() if text is None else text
    blocks = [(m.group(1), m.group(2), m.start(), m.end()) for m in _BLOCK.finditer(text)]
    found = []
    for i, (lang, body, _, end) in enumerate(blocks):
        if lang != "sh":
            continue
        output = None
        if i + 1 < len(blocks) and blocks[i + 1][0] == "" and not text[end:blocks[i + 1][2]].strip():
            output = blocks[i + 1][1]
        found.append(Example(command_lines(body), output))
    return found


def command_lines(body: str) -> list[str]:
    """Command lines of a shell block: `\\` continuations joined, trailing `# comments` dropped."""
    lines, current = [], ""
    for raw in body.splitlines():
        line = raw.rstrip()
        if line.endswith("\\"):
            current += line[:-1] + " "
            continue
        current += line
        command = re.sub(r"\s+#.*$", "", current).strip()
        if command and not command.startswith("#"):
            lines.append(re.sub(r"\s+", " ", command))
        current = ""
    return lines


def example_of(command: str) -> Example:
    """The README example whose last command line is `command` (after the last `&&`)."""
    for ex in examples():
        if ex.commands and ex.commands[-1].split(" && ")[-1] == command:
            return ex
    raise LookupError(f"the README shows no block ending with {command!r}")
