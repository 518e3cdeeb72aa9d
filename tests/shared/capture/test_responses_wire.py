"""The Responses pieces that need no host: ids of both kinds, the stream assembler, the offline
model's Responses answers (checked against the SDK's own types), and where Azure OpenAI is called."""

from __future__ import annotations

import json

import pytest
from openai.types.responses import Response, ResponseStreamEvent
from pydantic import TypeAdapter

from shared.capture.responses_request import parse_responses_request
from shared.capture.stream_assembly import ResponseAssembler
from shared.platform.errors import NotFound
from shared.store import ids
from shared.upstream import responses_wire
from shared.upstream.client import CHAT_COMPLETIONS, RESPONSES, azure_openai_url
from shared.upstream.offline_model import OFFLINE_MODEL, OfflineModel


def test_response_ids_are_time_ordered_and_kept_apart_from_chat_ids() -> None:
    response_id = ids.new_completion_id(now_us=5, kind="response")
    chat_id = ids.new_completion_id(now_us=6)
    assert response_id.startswith("resp_") and ids.is_completion_id(response_id)
    assert (ids.kind_of(response_id), ids.kind_of(chat_id)) == ("response", "chat.completion")
    assert (ids.captured_at_us(response_id), ids.captured_at_us(chat_id)) == (5, 6)
    with pytest.raises(NotFound, match="No response found"):
        ids.require_completion_id(chat_id, kind="response")
    with pytest.raises(NotFound, match="No chat completion found"):
        ids.require_completion_id(response_id, kind="chat.completion")


def test_store_defaults_to_true_and_never_goes_upstream() -> None:
    request = parse_responses_request({"model": "m", "input": "hi", "metadata": {"a": "b"}})
    assert request.storing
    assert request.upstream_body(model="dep") == {"model": "dep", "input": "hi", "store": False}
    assert not parse_responses_request({"model": "m", "input": "hi", "store": False}).storing
    history = [{"type": "message", "role": "user", "content": [{"type": "input_text", "text": "before"}]}]
    chained = parse_responses_request({"model": "m", "input": "now", "previous_response_id": "resp_x"})
    assert chained.upstream_body(model="m", history=history)["input"] == [*history, {"role": "user", "content": "now"}]
    assert "previous_response_id" not in chained.upstream_body(model="m", history=history)


def test_assembler_takes_the_final_response_and_fills_a_missing_output() -> None:
    response = responses_wire.response_object(model="m", text="hello there")
    assembler = ResponseAssembler()
    for event in responses_wire.stream_events(response):
        assert not assembler.done
        assembler.add(
            event | ({"response": {**response, "output": []}} if event["type"] == "response.completed" else {})
        )
    assert assembler.done
    assert assembler.response()["output"] == response["output"]
    failed = ResponseAssembler()
    failed.add({"type": "response.failed", "response": {**response, "status": "failed"}})
    assert failed.done and failed.response() is None


async def test_offline_model_speaks_responses_plain_and_streamed() -> None:
    model = OfflineModel()
    async with model.open(deployment="d", body={"model": "d", "input": "ping pong"}, operation=RESPONSES) as answer:
        plain = Response.model_validate(json.loads(await answer.read()))
    assert plain.model == OFFLINE_MODEL and plain.output_text == "[offline-echo] ping pong"
    body = {"model": "d", "input": [{"role": "user", "content": "ping pong"}], "stream": True}
    async with model.open(deployment="d", body=body, operation=RESPONSES) as answer:
        lines = [line async for line in answer.lines()]
    events = [TypeAdapter(ResponseStreamEvent).validate_json(line[6:]) for line in lines if line.startswith("data: ")]
    assert next(line for line in lines if line.startswith("event: ")) == "event: response.created"
    assert "".join(e.delta for e in events if e.type == "response.output_text.delta") == "[offline-echo] ping pong"
    assert events[-1].type == "response.completed" and events[-1].response.output_text == "[offline-echo] ping pong"


def test_azure_openai_is_called_on_its_v1_route_for_responses() -> None:
    url_for = azure_openai_url("https://aoai.example.com/", "2024-10-21")
    assert url_for("gpt-4o", RESPONSES) == "https://aoai.example.com/openai/v1/responses"
    assert url_for("gpt-4o", CHAT_COMPLETIONS).endswith(
        "/openai/deployments/gpt-4o/chat/completions?api-version=2024-10-21"
    )
