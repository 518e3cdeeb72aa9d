"""The fine-tuning format check: the rules of OpenAI's chat fine-tuning data-preparation cookbook.

Every line Distillery writes to a distillation file passes it, and users can run it on any JSONL
file before uploading: `python -m shared.datasets.check FILE [--max-tokens N]` prints each bad line
with the rule it breaks and exits as `distillery check-file` does: 3 when a line is bad, 2 when the file
cannot be read.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from shared.datasets.tokens import count_messages

DEFAULT_MAX_TOKENS = 65_536
EXIT_BAD_LINES = 3
"""The command-line tool's exit code for "ran and found problems"; 2 is a usage error (a file not there)."""
ROLES = frozenset({"system", "user", "assistant", "tool", "function"})
MESSAGE_KEYS = frozenset({"role", "content", "name", "tool_calls", "tool_call_id", "function_call", "weight"})
EXAMPLE_KEYS = frozenset({"messages", "tools", "parallel_tool_calls", "functions"})


@dataclass(frozen=True)
class Problem:
    rule: str
    """A stable rule name, e.g. `unrecognized_role` (the cookbook's error keys where it has one)."""
    message: str


@dataclass
class ExampleCheck:
    problems: list[Problem] = field(default_factory=list)
    tokens: int = 0

    @property
    def ok(self) -> bool:
        return not self.problems


@dataclass(frozen=True)
class LineProblem:
    line: int
    """1-based line number in the file."""
    problem: Problem


def check_example(example: Any, *, max_tokens: int = DEFAULT_MAX_TOKENS) -> ExampleCheck:
    """Every rule `example` breaks, and its token count (0 when it is not a chat example at all)."""
    result = ExampleCheck()

    def fail(rule: str, message: str) -> None:
        result.problems.append(Problem(rule, message))

    if not isinstance(example, dict):
        fail("data_type", "each line must be a JSON object")
        return result
    messages = example.get("messages")
    if not isinstance(messages, list) or not messages:
        fail("missing_messages_list", "'messages' must be a non-empty list")
        return result
    for key in sorted(set(example) - EXAMPLE_KEYS):
        fail("unrecognized_example_key", f"unrecognized key '{key}' (allowed: {', '.join(sorted(EXAMPLE_KEYS))})")
    tools = example.get("tools")
    if tools is not None and not _valid_tools(tools):
        fail("invalid_tools", "'tools' must be a list of {'type': 'function', 'function': {'name': ...}}")
    for number, message in enumerate(messages):
        for problem in _message_problems(number, message):
            result.problems.append(problem)
    if not any(isinstance(m, dict) and m.get("role") == "assistant" for m in messages):
        fail("example_missing_assistant_message", "an example needs at least one assistant message")
    result.tokens = count_messages(messages, tools if isinstance(tools, list) else None)
    if result.tokens > max_tokens:
        fail("example_too_long", f"{result.tokens} tokens, more than the limit of {max_tokens}")
    return result


def _message_problems(number: int, message: Any) -> Iterator[Problem]:
    where = f"messages[{number}]"
    if not isinstance(message, dict):
        yield Problem("message_data_type", f"{where} must be an object")
        return
    if "role" not in message:
        yield Problem("message_missing_key", f"{where} has no 'role'")
    elif message["role"] not in ROLES:
        yield Problem(
            "unrecognized_role", f"{where} has role {message['role']!r} (allowed: {', '.join(sorted(ROLES))})"
        )
    for key in sorted(set(message) - MESSAGE_KEYS):
        yield Problem("message_unrecognized_key", f"{where} has unrecognized key '{key}'")
    calls = message.get("tool_calls") or message.get("function_call")
    content = message.get("content")
    if "content" not in message and not calls:
        yield Problem("message_missing_key", f"{where} has neither 'content' nor 'tool_calls'")
    elif not calls and not _has_content(content):
        yield Problem("missing_content", f"{where} has empty or non-text content")
    if message.get("role") == "tool" and not isinstance(message.get("tool_call_id"), str):
        yield Problem("missing_tool_call_id", f"{where} is a tool message without 'tool_call_id'")
    if "weight" in message and message["weight"] not in (0, 1):
        yield Problem("invalid_weight", f"{where} has weight {message['weight']!r} (allowed: 0 or 1)")


def _has_content(content: Any) -> bool:
    if isinstance(content, str):
        return bool(content)
    return (
        isinstance(content, list)
        and bool(content)
        and all(isinstance(part, dict) and isinstance(part.get("type"), str) for part in content)
    )


def _valid_tools(tools: Any) -> bool:
    return isinstance(tools, list) and all(
        isinstance(tool, dict)
        and tool.get("type") == "function"
        and isinstance(tool.get("function"), dict)
        and isinstance(tool["function"].get("name"), str)
        for tool in tools
    )


def check_lines(lines: Iterable[str | bytes], *, max_tokens: int = DEFAULT_MAX_TOKENS) -> Iterator[LineProblem]:
    """Every problem of a JSONL stream, line by line, in one pass with flat memory."""
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            yield LineProblem(number, Problem("empty_line", "blank line"))
            continue
        try:
            example = json.loads(line)
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            yield LineProblem(number, Problem("invalid_json", f"not JSON ({exc})"))
            continue
        for problem in check_example(example, max_tokens=max_tokens).problems:
            yield LineProblem(number, problem)


def check_file(path: str | Path, *, max_tokens: int = DEFAULT_MAX_TOKENS) -> Iterator[LineProblem]:
    with Path(path).open("rb") as lines:
        yield from check_lines(lines, max_tokens=max_tokens)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m shared.datasets.check", description="Check a chat fine-tuning JSONL file."
    )
    parser.add_argument("file", type=Path)
    parser.add_argument("--max-tokens", type=int, default=DEFAULT_MAX_TOKENS, help="per-example token limit")
    args = parser.parse_args(argv)
    if not args.file.is_file():
        parser.error(f"no file {args.file}")  # exits 2
    bad_lines: set[int] = set()
    for found in check_file(args.file, max_tokens=args.max_tokens):
        bad_lines.add(found.line)
        print(f"{args.file}:{found.line}: {found.problem.rule}: {found.problem.message}")  # noqa: T201
    print(f"{len(bad_lines)} bad line(s)" if bad_lines else "ok: every line is a valid fine-tuning example")  # noqa: T201
    return EXIT_BAD_LINES if bad_lines else 0


if __name__ == "__main__":
    sys.exit(main())
