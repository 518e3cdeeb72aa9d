"""The offline model: answers every deployment with an echo, so a local run needs no network.

Its answers say `"model": "offline-echo"` and start with `[offline-echo]`, so nobody mistakes them for
a real model's. It streams like a real upstream, chunk by chunk, with usage when asked. Its embeddings
(`"model": "offline-hashed-words"`) hash each word into one of 64 dimensions: texts sharing words
point the same way, which is enough for the cosine grader to run end to end, not to judge meaning.
"""

from __future__ import annotations

import hashlib
import json
import math
import time
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from openai.types.chat import ChatCompletion, ChatCompletionChunk

from shared.upstream import responses_wire
from shared.upstream.client import CHAT_COMPLETIONS, EMBEDDINGS, RESPONSES, UpstreamResponse

OFFLINE_MODEL = "offline-echo"
OFFLINE_EMBEDDING_MODEL = "offline-hashed-words"
_EMBEDDING_DIMENSIONS = 64


class OfflineModel:
    label = "offline"

    @asynccontextmanager
    async def open(
        self, *, deployment: str, body: dict[str, Any], operation: str = CHAT_COMPLETIONS
    ) -> AsyncIterator[UpstreamResponse]:
        if operation == EMBEDDINGS:
            yield _embeddings(body)
            return
        if operation == RESPONSES:
            yield _response(body)
            return
        reply = _reply_text(body.get("messages") or [])
        usage = {
            "prompt_tokens": _count_words(body.get("messages") or []),
            "completion_tokens": len(reply.split()),
        }
        usage["total_tokens"] = usage["prompt_tokens"] + usage["completion_tokens"]
        completion_id = f"chatcmpl-offline-{uuid.uuid4().hex}"
        created = int(time.time())
        headers = {"x-request-id": completion_id}
        include_usage = bool((body.get("stream_options") or {}).get("include_usage"))
        chunks = _chunks(completion_id, created, reply, usage if include_usage else None)

        async def read() -> bytes:
            completion = ChatCompletion.model_validate(
                {
                    "id": completion_id,
                    "object": "chat.completion",
                    "created": created,
                    "model": OFFLINE_MODEL,
                    "system_fingerprint": "offline",
                    "choices": [
                        {
                            "index": 0,
                            "finish_reason": "stop",
                            "message": {"role": "assistant", "content": reply},
                        }
                    ],
                    "usage": usage,
                }
            )
            return completion.model_dump_json(exclude_none=True).encode()

        async def lines() -> AsyncIterator[str]:
            for chunk in chunks:
                yield f"data: {chunk}"
                yield ""
            yield "data: [DONE]"
            yield ""

        yield UpstreamResponse(status=200, headers=headers, _read=read, _lines=lines)


def _embeddings(body: dict[str, Any]) -> UpstreamResponse:
    texts = body.get("input")
    texts = [texts] if isinstance(texts, str) else [str(text) for text in texts or []]
    data = [{"object": "embedding", "index": i, "embedding": offline_embedding(t)} for i, t in enumerate(texts)]
    words = sum(len(text.split()) for text in texts)
    payload = json.dumps(
        {
            "object": "list",
            "data": data,
            "model": OFFLINE_EMBEDDING_MODEL,
            "usage": {"prompt_tokens": words, "total_tokens": words},
        }
    ).encode()

    async def read() -> bytes:
        return payload

    async def lines() -> AsyncIterator[str]:
        yield payload.decode()

    return UpstreamResponse(status=200, headers={}, _read=read, _lines=lines)


def _response(body: dict[str, Any]) -> UpstreamResponse:
    """The Responses API: the echo of the last user input, as one message (streamed as events when asked)."""
    items = _response_input(body.get("input"))
    response = responses_wire.response_object(
        model=OFFLINE_MODEL, text=_reply_text(items), request=body, input_tokens=_count_words(items)
    )

    async def read() -> bytes:
        return json.dumps(response).encode()

    async def lines() -> AsyncIterator[str]:
        for event in responses_wire.stream_events(response):
            for line in responses_wire.sse(event).decode().split("\n")[:-1]:
                yield line

    return UpstreamResponse(status=200, headers={"x-request-id": response["id"]}, _read=read, _lines=lines)


def _response_input(value: Any) -> list[dict[str, Any]]:
    if isinstance(value, str):
        return [{"role": "user", "content": value}]
    return [item for item in value or [] if isinstance(item, dict)]


def offline_embedding(text: str) -> list[float]:
    """A unit vector of word counts hashed into 64 dimensions (zero for a text with no words)."""
    vector = [0.0] * _EMBEDDING_DIMENSIONS
    for word in text.lower().split():
        digest = hashlib.blake2b(word.encode(), digest_size=4).digest()
        vector[int.from_bytes(digest, "big") % _EMBEDDING_DIMENSIONS] += 1.0
    norm = math.sqrt(sum(value * value for value in vector))
    return [value / norm for value in vector] if norm else vector


def _reply_text(messages: list[Any]) -> str:
    for message in reversed(messages):
        if isinstance(message, dict) and message.get("role") == "user":
            return f"[offline-echo] {_text(message.get('content'))}".strip()
    return "[offline-echo] (no user message)"


def _text(content: Any) -> str:
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return " ".join(part.get("text", "") for part in content if isinstance(part, dict))
    return ""


def _count_words(messages: list[Any]) -> int:
    return sum(len(_text(message.get("content")).split()) for message in messages if isinstance(message, dict))


def _chunks(completion_id: str, created: int, reply: str, usage: dict[str, int] | None) -> list[str]:
    def chunk(choices: list[dict[str, Any]], **extra: Any) -> str:
        value = ChatCompletionChunk.model_validate(
            {
                "id": completion_id,
                "object": "chat.completion.chunk",
                "created": created,
                "model": OFFLINE_MODEL,
                "system_fingerprint": "offline",
                "choices": choices,
                **extra,
            }
        )
        return value.model_dump_json(exclude_unset=True)

    def delta(content: dict[str, Any], finish_reason: str | None = None) -> list[dict[str, Any]]:
        return [{"index": 0, "delta": content, "finish_reason": finish_reason}]

    words = reply.split(" ")
    pieces = [chunk(delta({"role": "assistant", "content": ""}))]
    pieces += [chunk(delta({"content": word if i == 0 else " " + word})) for i, word in enumerate(words)]
    pieces.append(chunk(delta({}, "stop")))
    if usage is not None:
        pieces.append(chunk([], usage=usage))
    return pieces
