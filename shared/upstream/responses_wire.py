"""The Responses API on the wire, for the answers Distillery makes up itself (the offline model, a
replayed stored response) and the tests' upstream stand-in: a `response` object and the server-sent
events that stream it, in the order OpenAI sends them.

Every object is checked against the `openai` SDK's own types, so a shape drifting from the API fails here.
"""

from __future__ import annotations

import json
import secrets
import time
from collections.abc import Iterator
from typing import Any

from openai.types.responses import Response, ResponseStreamEvent
from pydantic import TypeAdapter

_EVENT = TypeAdapter[Any](ResponseStreamEvent)


def response_object(
    *,
    model: str,
    text: str | None = None,
    function_calls: list[dict[str, str]] | None = None,
    request: dict[str, Any] | None = None,
    response_id: str | None = None,
    input_tokens: int = 0,
) -> dict[str, Any]:
    """A completed `response` with one assistant message (`text`) and/or function calls
    (`{"name", "arguments", "call_id"?}`), echoing the request's settings as the API does."""
    request = request or {}
    output: list[dict[str, Any]] = []
    if text is not None:
        output.append(
            {
                "type": "message",
                "id": "msg_" + secrets.token_hex(12),
                "role": "assistant",
                "status": "completed",
                "content": [{"type": "output_text", "text": text, "annotations": []}],
            }
        )
    for call in function_calls or []:
        output.append(
            {
                "type": "function_call",
                "id": "fc_" + secrets.token_hex(12),
                "call_id": call.get("call_id") or "call_" + secrets.token_hex(8),
                "name": call["name"],
                "arguments": call["arguments"],
                "status": "completed",
            }
        )
    output_tokens = len((text or "").split()) + sum(len(call["arguments"]) // 4 for call in function_calls or [])
    created = int(time.time())
    response = {
        "id": response_id or "resp_" + secrets.token_hex(16),
        "object": "response",
        "created_at": created,
        "completed_at": created,
        "status": "completed",
        "model": model,
        "output": output,
        "instructions": request.get("instructions"),
        "metadata": request.get("metadata") or {},
        "parallel_tool_calls": request.get("parallel_tool_calls", True),
        "previous_response_id": request.get("previous_response_id"),
        "temperature": request.get("temperature", 1.0),
        "top_p": request.get("top_p", 1.0),
        "tool_choice": request.get("tool_choice", "auto"),
        "tools": request.get("tools") or [],
        "store": request.get("store", True),
        "error": None,
        "incomplete_details": None,
        "usage": {
            "input_tokens": input_tokens,
            "input_tokens_details": {"cached_tokens": 0, "cache_write_tokens": 0},
            "output_tokens": output_tokens,
            "output_tokens_details": {"reasoning_tokens": 0},
            "total_tokens": input_tokens + output_tokens,
        },
    }
    return Response.model_validate(response).model_dump(mode="json", exclude_unset=True)


def stream_events(response: dict[str, Any]) -> Iterator[dict[str, Any]]:
    """The events that stream `response`: created, in progress, each output item added, its text
    deltas word by word (function-call arguments in two pieces), done, and finally completed."""
    sequence = iter(range(1_000_000))
    started = {**response, "status": "in_progress", "output": [], "usage": None, "completed_at": None}

    def event(kind: str, **fields: Any) -> dict[str, Any]:
        value = {"type": kind, "sequence_number": next(sequence), **fields}
        _EVENT.validate_python(value)
        return value

    yield event("response.created", response=started)
    yield event("response.in_progress", response=started)
    for index, item in enumerate(response.get("output") or []):
        at = {"output_index": index}
        if item["type"] == "message":
            text = "".join(part.get("text", "") for part in item["content"])
            yield event("response.output_item.added", **at, item={**item, "status": "in_progress", "content": []})
            part = {"type": "output_text", "text": "", "annotations": []}
            spot = {**at, "item_id": item["id"], "content_index": 0}
            yield event("response.content_part.added", **spot, part=part)
            for number, word in enumerate(text.split(" ")):
                yield event(
                    "response.output_text.delta", **spot, delta=word if number == 0 else " " + word, logprobs=[]
                )
            yield event("response.output_text.done", **spot, text=text, logprobs=[])
            yield event("response.content_part.done", **spot, part={**part, "text": text})
        elif item["type"] == "function_call":
            arguments = item["arguments"]
            yield event("response.output_item.added", **at, item={**item, "status": "in_progress", "arguments": ""})
            half = len(arguments) // 2
            for piece in (arguments[:half], arguments[half:]):
                yield event("response.function_call_arguments.delta", **at, item_id=item["id"], delta=piece)
            yield event("response.function_call_arguments.done", **at, item_id=item["id"], arguments=arguments)
        yield event("response.output_item.done", **at, item=item)
    yield event("response.completed", response=response)


def sse(event: dict[str, Any]) -> bytes:
    """One event as SSE, named as OpenAI names it (`event: <type>`)."""
    return f"event: {event['type']}\ndata: {json.dumps(event, separators=(',', ':'), ensure_ascii=False)}\n\n".encode()
