"""Conversion of stored completions: tools, tool calls and multi-turn survive; unusable ones are named."""

from __future__ import annotations

from shared.datasets import formats
from shared.datasets.check import check_example
from tests.shared.datasets.conftest import stored

TOOLS = [{"type": "function", "function": {"name": "weather", "parameters": {"type": "object", "properties": {}}}}]
CALL = {"id": "call_9", "type": "function", "function": {"name": "weather", "arguments": '{"city":"Oslo"}'}}


def test_multi_turn_with_tools_and_tool_calls_survives() -> None:
    messages = [
        {"role": "developer", "content": "Use tools."},
        {"role": "user", "content": "Weather in Paris?"},
        {"role": "assistant", "content": None, "tool_calls": [{**CALL, "id": "call_1"}]},
        {"role": "tool", "tool_call_id": "call_1", "content": "18C"},
        {"role": "assistant", "content": "18C."},
        {"role": "user", "content": [{"type": "text", "text": "And Oslo?"}]},
    ]
    completion = stored(
        "x",
        messages=messages,
        tools=TOOLS,
        output={"role": "assistant", "content": None, "tool_calls": [CALL], "refusal": None},
    )
    output = formats.assistant_output(completion)
    assert output == {"role": "assistant", "tool_calls": [CALL]}
    example = formats.distillation_example(completion, output)
    assert example["tools"] == TOOLS
    assert [m["role"] for m in example["messages"]] == [
        "system",
        "user",
        "assistant",
        "tool",
        "assistant",
        "user",
        "assistant",
    ]
    assert example["messages"][2] == {"role": "assistant", "tool_calls": [{**CALL, "id": "call_1"}]}
    assert example["messages"][5]["content"] == [{"type": "text", "text": "And Oslo?"}]
    assert example["messages"][-1]["tool_calls"] == [CALL]
    assert check_example(example).ok


def test_unusable_outputs_are_named() -> None:
    assert formats.assistant_output(stored("a", choices=False)) is formats.SkipReason.NO_CHOICES
    assert formats.assistant_output(stored("a", finish_reason="length")) is formats.SkipReason.FINISH_REASON_LENGTH
    assert (
        formats.assistant_output(stored("a", finish_reason="content_filter"))
        is formats.SkipReason.FINISH_REASON_CONTENT_FILTER
    )
    empty = stored("a", output={"role": "assistant", "content": "  "})
    assert formats.assistant_output(empty) is formats.SkipReason.EMPTY_OUTPUT


def test_evaluation_line_shape() -> None:
    completion = stored("What is 2+2?", metadata={"user": "ann"})
    line = formats.evaluation_line(completion, formats.assistant_output(completion))  # type: ignore[arg-type]
    assert line == {
        "item": {
            "input": [{"role": "user", "content": "What is 2+2?"}],
            "reference": "answer to What is 2+2?",
            "completion_id": completion.id,
            "metadata": {"user": "ann"},
        },
        "sample": {"output_text": "answer to What is 2+2?", "model": "gpt-4o-2024-08-06"},
    }


def test_evaluation_items_keep_the_original_roles() -> None:
    """`{{item.input}}` replays the request as it was: `developer` stays `developer` (OpenAI's Evals do)."""
    messages = [{"role": "developer", "content": "Be brief."}, {"role": "user", "content": "Hi"}]
    completion = stored("x", messages=messages)
    line = formats.evaluation_line(completion, formats.assistant_output(completion))  # type: ignore[arg-type]
    assert [m["role"] for m in line["item"]["input"]] == ["developer", "user"]
    assert formats.distillation_example(completion, {"role": "assistant", "content": "yo"})["messages"][0]["role"] == (
        "system"
    )


def test_split_is_deterministic_and_roughly_the_fraction() -> None:
    keys = [f"c:{n}" for n in range(2000)]
    first = [formats.in_validation(key, seed=1, fraction=0.2) for key in keys]
    assert first == [formats.in_validation(key, seed=1, fraction=0.2) for key in keys]
    assert 300 < sum(first) < 500
    assert first != [formats.in_validation(key, seed=2, fraction=0.2) for key in keys]
    assert not any(formats.in_validation(key, seed=1, fraction=0) for key in keys)


def test_group_key_uses_metadata_value_when_present() -> None:
    with_user, without = stored("a", metadata={"user": "ann"}), stored("b")
    assert formats.group_key(with_user, "user") == "m:ann"
    assert formats.group_key(without, "user") == f"c:{without.id}"
    assert formats.group_key(with_user, None) == f"c:{with_user.id}"
