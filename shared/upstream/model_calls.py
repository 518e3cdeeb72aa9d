"""Whole (non-streaming) model calls for work the service does itself: eval runs and model graders.

Unlike the proxy, which relays an upstream failure to its caller at once, these calls are the
caller: a 429 or a 5xx is retried after the upstream's own `retry-after-ms` / `retry-after` (or a
short backoff when it names none), a bounded number of times and never for longer than a bounded
wait; then the failure is raised with the upstream's status, code and message, as they were.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from dataclasses import dataclass
from typing import Any

from openai.types.chat import ChatCompletion
from openai.types.responses import Response
from pydantic import ValidationError

from shared.platform.errors import DistilleryError, UpstreamRedirected, UpstreamUnavailable
from shared.upstream.client import CHAT_COMPLETIONS, EMBEDDINGS, RESPONSES, Upstream

log = logging.getLogger(__name__)

RETRYABLE_STATUSES = frozenset({408, 429, 500, 502, 503, 504})


class UpstreamCallFailed(DistilleryError):
    """A model call that failed for good: the upstream's status, code and message, and its retry-after."""

    status = 502
    type = "server_error"
    default_code = "upstream_error"

    def __init__(
        self, message: str, *, upstream_status: int, code: str | None = None, retry_after: float | None = None
    ) -> None:
        super().__init__(message, code=code)
        self.upstream_status = upstream_status
        self.retry_after = retry_after


@dataclass
class ModelCalls:
    upstream: Upstream
    max_attempts: int = 5
    max_wait_seconds: float = 60.0
    """The longest a single retry waits; an upstream asking for longer fails the call instead."""
    backoff_seconds: float = 1.0
    """First wait when the upstream names none; doubled on each retry."""

    async def chat(self, *, deployment: str, body: dict[str, Any]) -> ChatCompletion:
        raw = await self._call(deployment, {**body, "stream": False}, CHAT_COMPLETIONS)
        try:
            return ChatCompletion.model_validate_json(raw)
        except ValidationError:
            raise UpstreamCallFailed(
                "The upstream answered with something that is not a chat completion.",
                upstream_status=200,
                code="invalid_upstream_response",
            ) from None

    async def respond(self, *, deployment: str, body: dict[str, Any]) -> ChatCompletion:
        """A Responses API call (never stored upstream), its answer in the chat-completion shape that
        graders, samples and token metering read."""
        raw = await self._call(deployment, {**body, "stream": False, "store": False}, RESPONSES)
        try:
            return as_chat_completion(Response.model_validate_json(raw))
        except ValidationError:
            raise UpstreamCallFailed(
                "The upstream answered with something that is not a response.",
                upstream_status=200,
                code="invalid_upstream_response",
            ) from None

    async def embed(self, *, deployment: str, texts: list[str]) -> list[list[float]]:
        raw = await self._call(deployment, {"input": texts}, EMBEDDINGS)
        try:
            data = sorted(json.loads(raw)["data"], key=lambda embedding: embedding["index"])
            vectors = [[float(value) for value in embedding["embedding"]] for embedding in data]
        except (ValueError, KeyError, TypeError):
            vectors = []
        if len(vectors) != len(texts):
            raise UpstreamCallFailed(
                "The upstream answered with something that is not one embedding per text.",
                upstream_status=200,
                code="invalid_upstream_response",
            )
        return vectors

    async def _call(self, deployment: str, body: dict[str, Any], operation: str) -> bytes:
        backoff = self.backoff_seconds
        for attempt in range(1, self.max_attempts + 1):
            try:
                async with self.upstream.open(deployment=deployment, body=body, operation=operation) as response:
                    raw = await response.read()
                    status, headers = response.status, response.headers
            except UpstreamRedirected as exc:  # never followed, never retried: it is a configuration fault
                raise UpstreamCallFailed(exc.message, upstream_status=exc.upstream_status, code=exc.code) from exc
            except UpstreamUnavailable as exc:  # not reached, or cut off: no answer to honour
                if attempt == self.max_attempts:
                    raise UpstreamCallFailed(exc.message, upstream_status=exc.status, code=exc.code) from exc
                status, headers, raw = exc.status, {}, b""
            else:
                if 200 <= status < 300:
                    return raw
            wait = retry_after_seconds(headers)
            if status not in RETRYABLE_STATUSES or attempt == self.max_attempts or (wait or 0) > self.max_wait_seconds:
                raise _failure(status, raw, wait)
            delay = backoff if wait is None else wait
            log.info("%s on %s answered %s; retry %s in %.2fs", operation, deployment, status, attempt, delay)
            await asyncio.sleep(delay)
            backoff *= 2
        raise AssertionError("unreachable")  # the last attempt returns or raises


def as_chat_completion(response: Response) -> ChatCompletion:
    """A response as the chat completion it amounts to: its text, function calls as tool calls, usage."""
    calls = [
        {"id": item.call_id, "type": "function", "function": {"name": item.name, "arguments": item.arguments}}
        for item in response.output
        if item.type == "function_call"
    ]
    message: dict[str, Any] = {"role": "assistant", "content": response.output_text or None}
    if calls:
        message["tool_calls"] = calls
    finish = "length" if response.status == "incomplete" else "tool_calls" if calls else "stop"
    usage = response.usage
    return ChatCompletion.model_validate(
        {
            "id": response.id,
            "object": "chat.completion",
            "created": int(response.created_at),
            "model": response.model,
            "choices": [{"index": 0, "message": message, "finish_reason": finish}],
            "usage": None
            if usage is None
            else {
                "prompt_tokens": usage.input_tokens,
                "completion_tokens": usage.output_tokens,
                "total_tokens": usage.total_tokens,
            },
        }
    )


def retry_after_seconds(headers: dict[str, str]) -> float | None:
    """The wait an upstream asks for: `retry-after-ms` first (Azure OpenAI's), then `retry-after` seconds."""
    for name, scale in (("retry-after-ms", 1000.0), ("retry-after", 1.0)):
        with contextlib.suppress(KeyError, ValueError):
            return max(0.0, float(headers[name]) / scale)
    return None


def _failure(status: int, raw: bytes, retry_after: float | None) -> UpstreamCallFailed:
    message, code = f"The upstream answered HTTP {status}.", None
    with contextlib.suppress(ValueError, AttributeError, TypeError):
        error = json.loads(raw)["error"]
        message, code = str(error.get("message") or message), error.get("code") or error.get("type")
    return UpstreamCallFailed(
        message, upstream_status=status, code=str(code) if code else f"upstream_{status}", retry_after=retry_after
    )
