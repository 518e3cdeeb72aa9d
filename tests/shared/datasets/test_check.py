"""The fine-tuning format check: good examples pass, each bad one names the rule it breaks."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from local_host.azurite import ROOT
from shared.datasets.check import check_example, check_lines

GOOD = {
    "messages": [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "Weather in Paris?"},
        {
            "role": "assistant",
            "tool_calls": [
                {"id": "call_1", "type": "function", "function": {"name": "weather", "arguments": '{"city":"Paris"}'}}
            ],
        },
        {"role": "tool", "tool_call_id": "call_1", "content": "18C"},
        {"role": "assistant", "content": "18C and sunny.", "weight": 1},
    ],
    "tools": [{"type": "function", "function": {"name": "weather", "parameters": {"type": "object"}}}],
}


def test_good_example_passes_with_a_token_count() -> None:
    checked = check_example(GOOD)
    assert checked.ok, checked.problems
    assert 20 < checked.tokens < 200


@pytest.mark.parametrize(
    ("example", "rule"),
    [
        ([1, 2], "data_type"),
        ({"messages": []}, "missing_messages_list"),
        ({"prompt": "x", "completion": "y"}, "missing_messages_list"),
        (
            {"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "yo"}], "x": 1},
            "unrecognized_example_key",
        ),
        ({"messages": [{"content": "hi"}, {"role": "assistant", "content": "yo"}]}, "message_missing_key"),
        (
            {"messages": [{"role": "robot", "content": "hi"}, {"role": "assistant", "content": "yo"}]},
            "unrecognized_role",
        ),
        (
            {"messages": [{"role": "developer", "content": "hi"}, {"role": "assistant", "content": "yo"}]},
            "unrecognized_role",
        ),
        (
            {"messages": [{"role": "user", "content": "hi", "id": 3}, {"role": "assistant", "content": "yo"}]},
            "message_unrecognized_key",
        ),
        ({"messages": [{"role": "user", "content": ""}, {"role": "assistant", "content": "yo"}]}, "missing_content"),
        ({"messages": [{"role": "user", "content": "hi"}]}, "example_missing_assistant_message"),
        (
            {"messages": [{"role": "tool", "content": "1"}, {"role": "assistant", "content": "yo"}]},
            "missing_tool_call_id",
        ),
        (
            {
                "messages": [{"role": "user", "content": "a"}, {"role": "assistant", "content": "b"}],
                "tools": [{"x": 1}],
            },
            "invalid_tools",
        ),
    ],
)
def test_bad_example_names_the_rule(example: object, rule: str) -> None:
    assert rule in [problem.rule for problem in check_example(example).problems]


def test_token_limit_is_configurable() -> None:
    example = {"messages": [{"role": "user", "content": "word " * 50}, {"role": "assistant", "content": "ok"}]}
    assert check_example(example, max_tokens=1000).ok
    assert [p.rule for p in check_example(example, max_tokens=20).problems] == ["example_too_long"]


def test_lines_report_line_numbers_and_bad_json() -> None:
    lines = [json.dumps(GOOD), "{not json", "", json.dumps({"messages": [{"role": "user", "content": "hi"}]})]
    assert [(found.line, found.problem.rule) for found in check_lines(lines)] == [
        (2, "invalid_json"),
        (3, "empty_line"),
        (4, "example_missing_assistant_message"),
    ]


def test_cli_prints_each_bad_line_and_exits_three(tmp_path: Path) -> None:
    path = tmp_path / "data.jsonl"
    path.write_text(json.dumps(GOOD) + "\n" + json.dumps({"messages": [{"role": "robot", "content": "x"}]}) + "\n")
    run = subprocess.run(
        [sys.executable, "-m", "shared.datasets.check", str(path)], cwd=ROOT, capture_output=True, text=True
    )
    assert run.returncode == 3
    assert f"{path}:2: unrecognized_role:" in run.stdout
    assert f"{path}:2: example_missing_assistant_message:" in run.stdout
    assert ":1:" not in run.stdout
    path.write_text(json.dumps(GOOD) + "\n")
    run = subprocess.run(
        [sys.executable, "-m", "shared.datasets.check", str(path)], cwd=ROOT, capture_output=True, text=True
    )
    assert run.returncode == 0 and run.stdout.startswith("ok")
