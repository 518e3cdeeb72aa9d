"""The one stand-in the tests use: a scriptable OpenAI-compatible upstream on a loopback port.

By default it answers like a tiny model (`fake: <last user text>`), streaming when asked. Tests push
scripted replies (errors, retry headers, tool calls, slow answers) that are used once, in order, and
read back every request it received.
"""

from __future__ import annotations

import asyncio
import json
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Any

import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

from local_host.azurite import free_port

FAKE_MODEL = "fake-model-2025"


@dataclass
class Reply:
    """One scripted answer: a status with a JSON body, or (`chunks`) an SSE stream."""

    status: int = 200
    body: Any = None
    headers: dict[str, str] = field(default_factory=dict)
    chunks: list[dict[str, Any]] | None = None
    delay_seconds: float = 0.0
    message: dict[str, Any] | None = None
    """For a default-shaped completion with this assistant message (e.g. tool calls)."""
    finish_reason: str = "stop"
    hold_after_first_chunk: threading.Event | None = None
    """Stream the first chunk, then wait for this event before the rest (proves chunks are relayed live)."""


def completion(request: dict[str, Any], message: dict[str, Any], finish_reason: str = "stop") -> dict[str, Any]:
    return {
        "id": f"chatcmpl-fake-{time.time_ns()}",
        "object": "chat.completion",
        "created": int(time.time()),
        "model": FAKE_MODEL,
        "system_fingerprint": "fp_fake",
        "choices": [{"index": 0, "message": message, "finish_reason": finish_reason, "logprobs": None}],
        "usage": {"prompt_tokens": 7, "completion_tokens": 3, "total_tokens": 10},
    }


def default_message(request: dict[str, Any]) -> dict[str, Any]:
    users = [m for m in request.get("messages", []) if m.get("role") == "user"]
    text = users[-1].get("content") if users else ""
    return {"role": "assistant", "content": f"fake: {text}" if isinstance(text, str) else "fake: (parts)"}


def chunks_for(request: dict[str, Any], message: dict[str, Any], finish_reason: str) -> list[dict[str, Any]]:
    """Split a message into realistic chunks: role, content word by word, tool-call pieces, finish."""
    base = {
        "id": f"chatcmpl-fake-{time.time_ns()}",
        "object": "chat.completion.chunk",
        "created": 1,
        "model": FAKE_MODEL,
    }

    def chunk(delta: dict[str, Any], finish: str | None = None) -> dict[str, Any]:
        return {**base, "choices": [{"index": 0, "delta": delta, "finish_reason": finish}]}

    out = [chunk({"role": "assistant", "content": ""})]
    for i, word in enumerate((message.get("content") or "").split(" ") if message.get("content") else []):
        out.append(chunk({"content": word if i == 0 else " " + word}))
    for index, call in enumerate(message.get("tool_calls") or []):
        arguments = call["function"]["arguments"]
        half = len(arguments) // 2
        head = {
            "index": index,
            "id": call["id"],
            "type": "function",
            "function": {"name": call["function"]["name"], "arguments": arguments[:half]},
        }
        out.append(chunk({"tool_calls": [head]}))
        out.append(chunk({"tool_calls": [{"index": index, "function": {"arguments": arguments[half:]}}]}))
    out.append(chunk({}, finish_reason))
    if (request.get("stream_options") or {}).get("include_usage"):
        out.append({**base, "choices": [], "usage": {"prompt_tokens": 7, "completion_tokens": 3, "total_tokens": 10}})
    return out


class FakeUpstream:
    """Runs in a thread of the test process; the host under test reaches it over loopback."""

    def __init__(self) -> None:
        self.port = free_port()
        self.root_url = f"http://127.0.0.1:{self.port}"
        self.base_url = f"{self.root_url}/v1"
        self.requests: list[dict[str, Any]] = []
        self._script: deque[Reply] = deque()
        self._lock = threading.Lock()
        app = Starlette(
            routes=[
                Route("/v1/chat/completions", self._chat, methods=["POST"]),
                Route("/openai/deployments/{deployment}/chat/completions", self._chat, methods=["POST"]),
                Route("/v1/embeddings", self._embeddings, methods=["POST"]),
                Route("/openai/deployments/{deployment}/embeddings", self._embeddings, methods=["POST"]),
            ]
        )
        self._server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=self.port, log_level="warning"))
        self._thread = threading.Thread(target=self._server.run, daemon=True)

    def start(self) -> FakeUpstream:
        self._thread.start()
        deadline = time.monotonic() + 10
        while not self._server.started:
            if time.monotonic() > deadline:
                raise RuntimeError("fake upstream did not start")
            time.sleep(0.01)
        return self

    def stop(self) -> None:
        self._server.should_exit = True
        self._thread.join(timeout=5)

    def script(self, *replies: Reply) -> None:
        with self._lock:
            self._script.extend(replies)

    def reset(self) -> None:
        with self._lock:
            self._script.clear()
            self.requests.clear()

    async def _chat(self, request: Request) -> Response:
        body = json.loads(await request.body())
        with self._lock:
            self.requests.append({"body": body, "headers": dict(request.headers), "url": str(request.url)})
            reply = self._script.popleft() if self._script else Reply()
        if reply.delay_seconds:
            await asyncio.sleep(reply.delay_seconds)
        if reply.status != 200 or reply.body is not None:
            return JSONResponse(reply.body, status_code=reply.status, headers=reply.headers)
        message = reply.message or default_message(body)
        if body.get("stream"):
            chunks = reply.chunks or chunks_for(body, message, reply.finish_reason)
            return StreamingResponse(
                _sse(chunks, reply.hold_after_first_chunk), media_type="text/event-stream", headers=reply.headers
            )
        return JSONResponse(completion(body, message, reply.finish_reason), headers=reply.headers)

    async def _embeddings(self, request: Request) -> Response:
        body = json.loads(await request.body())
        with self._lock:
            self.requests.append({"body": body, "headers": dict(request.headers), "url": str(request.url)})
        texts = [body["input"]] if isinstance(body["input"], str) else body["input"]
        data = [{"object": "embedding", "index": i, "embedding": letter_embedding(t)} for i, t in enumerate(texts)]
        return JSONResponse(
            {
                "object": "list",
                "data": data,
                "model": "fake-embedding",
                "usage": {"prompt_tokens": 1, "total_tokens": 1},
            }
        )


def letter_embedding(text: str) -> list[float]:
    """The fake's embedding: how often each letter a-z occurs (tests compute cosines from it themselves)."""
    return [float(text.lower().count(letter)) for letter in "abcdefghijklmnopqrstuvwxyz"]


async def _sse(chunks: list[dict[str, Any]], hold: threading.Event | None) -> Any:
    for number, chunk in enumerate(chunks):
        yield f"data: {json.dumps(chunk)}\n\n".encode()
        await asyncio.sleep(0)
        if number == 0 and hold is not None:
            await asyncio.to_thread(hold.wait, 10)
    yield b"data: [DONE]\n\n"
