"""`python -m bench.zero_upstream PORT`: an OpenAI-compatible upstream that answers at once.

It returns one fixed completion or response (or its stream) with no work, so a benchmark measures the proxy's
own overhead and not a model's latency.
"""

from __future__ import annotations

import json
import sys

import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response, StreamingResponse
from starlette.routing import Route

from shared.upstream import responses_wire

COMPLETION = json.dumps(
    {
        "id": "chatcmpl-zero",
        "object": "chat.completion",
        "created": 1,
        "model": "zero-latency",
        "choices": [{"index": 0, "message": {"role": "assistant", "content": "ok " * 50}, "finish_reason": "stop"}],
        "usage": {"prompt_tokens": 20, "completion_tokens": 50, "total_tokens": 70},
    }
).encode()
CHUNKS = [
    json.dumps(
        {
            "id": "chatcmpl-zero",
            "object": "chat.completion.chunk",
            "created": 1,
            "model": "zero-latency",
            "choices": [{"index": 0, "delta": {"content": "ok "}, "finish_reason": None}],
        }
    )
] * 50


RESPONSE = responses_wire.response_object(model="zero-latency", text="ok " * 50, input_tokens=20)
RESPONSE_BODY = json.dumps(RESPONSE).encode()
RESPONSE_EVENTS = [responses_wire.sse(event) for event in responses_wire.stream_events(RESPONSE)]


async def respond(request: Request) -> Response:
    body = json.loads(await request.body())
    if body.get("stream"):

        async def events():  # type: ignore[no-untyped-def]
            for event in RESPONSE_EVENTS:
                yield event

        return StreamingResponse(events(), media_type="text/event-stream")
    return Response(RESPONSE_BODY, media_type="application/json")


async def chat(request: Request) -> Response:
    body = json.loads(await request.body())
    if body.get("stream"):

        async def events():  # type: ignore[no-untyped-def]
            for chunk in CHUNKS:
                yield f"data: {chunk}\n\n".encode()
            yield b"data: [DONE]\n\n"

        return StreamingResponse(events(), media_type="text/event-stream")
    return Response(COMPLETION, media_type="application/json")


if __name__ == "__main__":
    app = Starlette(
        routes=[
            Route("/v1/chat/completions", chat, methods=["POST"]),
            Route("/v1/responses", respond, methods=["POST"]),
        ]
    )
    uvicorn.run(app, host="127.0.0.1", port=int(sys.argv[1]), log_level="warning", access_log=False)
