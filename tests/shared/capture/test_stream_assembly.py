from shared.capture.stream_assembly import CompletionAssembler


def _chunk(delta: dict, finish: str | None = None, index: int = 0, **extra: object) -> dict:
    return {
        "id": "c1",
        "created": 5,
        "model": "m",
        "choices": [{"index": index, "delta": delta, "finish_reason": finish}],
        **extra,
    }


def test_content_tool_calls_and_usage_are_folded() -> None:
    assembler = CompletionAssembler()
    for chunk in [
        _chunk({"role": "assistant", "content": ""}),
        _chunk({"content": "Hel"}),
        _chunk({"content": "lo"}),
        _chunk(
            {
                "tool_calls": [
                    {"index": 0, "id": "call_a", "type": "function", "function": {"name": "f", "arguments": '{"x"'}}
                ]
            }
        ),
        _chunk({"tool_calls": [{"index": 0, "function": {"arguments": ": 1}"}}]}),
        _chunk(
            {
                "tool_calls": [
                    {"index": 1, "id": "call_b", "type": "function", "function": {"name": "g", "arguments": "{}"}}
                ]
            }
        ),
        _chunk({}, "tool_calls"),
        {"id": "c1", "choices": [], "usage": {"total_tokens": 3}},
    ]:
        assembler.add(chunk)
    completion = assembler.completion()
    message = completion["choices"][0]["message"]
    assert message["content"] == "Hello"
    assert [(c["id"], c["function"]["name"], c["function"]["arguments"]) for c in message["tool_calls"]] == [
        ("call_a", "f", '{"x": 1}'),
        ("call_b", "g", "{}"),
    ]
    assert completion["choices"][0]["finish_reason"] == "tool_calls"
    assert completion["usage"] == {"total_tokens": 3}
    assert (completion["id"], completion["model"], completion["object"]) == ("c1", "m", "chat.completion")
    assert not assembler.failed


def test_several_choices_keep_their_order_and_an_error_event_marks_failure() -> None:
    assembler = CompletionAssembler()
    assembler.add(_chunk({"content": "b"}, index=1))
    assembler.add(_chunk({"content": "a"}, index=0))
    assert [c["message"]["content"] for c in assembler.completion()["choices"]] == ["a", "b"]
    assembler.add({"error": {"message": "upstream broke"}})
    assert assembler.failed
